"""Empirical (invariant) measures of the iterates (seed 000).

SGD's weights need not converge to a stationary point, yet the *distribution* of the iterates
can: the empirical measure of a trajectory ``mu_n = (1/n) sum_{t<=n} delta_{theta_t}`` (seed
000, eq. 5) settles on an (approximately) invariant measure of the update map ``F``. This
module estimates and checks such measures from simulation output:

* time averages with batch-means standard errors (:func:`time_average`), empirical measures
  over time or over an ensemble (:func:`empirical_measure`);
* the vanishing change ``E_{mu_n}[phi(theta) - phi(F(theta))]`` (Thm. 4.3 / B.1) and its decay
  in ``n`` (:func:`vanishing_change`);
* distances between empirical measures: exact 1-D Wasserstein-1 (on the line or a circle),
  sliced W1 in higher dimension, dyadic windows of one trajectory (:func:`window_distances`);
* periodic orbits (:func:`detect_period`);
* across trajectories: split R-hat and effective sample size (:func:`rhat`, :func:`ess`), as
  BlackJAX reports for MCMC chains;
* tail indices (:func:`hill_tail_index`);
* Thm. 5.2: from an invariant measure, a shorter step lowers the expected loss
  (:func:`scaled_step_change`);
* eq. (10)/(15), corrected: the balance of gradient and curvature that invariance forces
  (:func:`gradient_curvature_balance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy import stats

from dynsim import prng
from dynsim._tree import tree_vdot
from dynsim._validate import check_int, check_positive
from dynsim.observables import batch_means_stderr, time_batches, warn_if_correlated

__all__ = [
    "HillEstimate",
    "hill_tail_index",
    "QuantileEstimate",
    "quantile_interval",
    "time_average",
    "empirical_measure",
    "wasserstein1",
    "sliced_wasserstein1",
    "window_distances",
    "Period",
    "detect_period",
    "rhat",
    "ess",
    "VanishingChange",
    "vanishing_change",
    "StepChange",
    "scaled_step_change",
    "Balance",
    "gradient_curvature_balance",
    "ratio_of_means",
    "numerical_rank",
    "effective_rank",
    "sparsity",
]


# --------------------------------------------------------------------------- tails


class HillEstimate(NamedTuple):
    """Hill's estimate of the tail index ``alpha`` of ``P(|X| > u) ~ u^-alpha``, with a confidence interval."""

    alpha: float
    low: float
    high: float
    k: int
    threshold: float


def hill_tail_index(samples, k: int | None = None, *, level: float = 0.95) -> HillEstimate:
    """Hill (1975): ``1/alpha = (1/k) sum_{i<=k} log(X_(i) / X_(k+1))`` over the ``k`` largest ``|X|``.

    ``k`` defaults to ``round(sqrt(n))``. The interval uses the asymptotic law
    ``sqrt(k) (alpha_hat - alpha) / alpha -> N(0, 1)`` (exact Pareto tails; with
    slowly varying corrections the estimate is also biased, more so for large ``k``).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = np.sort(np.abs(np.asarray(samples, dtype=np.float64)).ravel())[::-1]
    if np.isnan(x).any() or np.isinf(x).any():
        raise ValueError(
            f"samples hold {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} infinite values: the infinite "
            "ones are the largest order statistics, which the estimate needs (dropping them made a Pareto(1) tail "
            "read 3.4); give the finite samples (the tail of the runs that did not diverge) if that is what you mean"
        )
    n = x.size
    if n < 3:
        raise ValueError(f"need at least 3 samples, got {n}")
    k = int(round(np.sqrt(n))) if k is None else check_int("k", k, minimum=2, maximum=n - 1)
    if x[k] <= 0:
        raise ValueError(f"the {k + 1}-th largest |sample| is 0: take a smaller k")
    if x[0] == x[k]:
        raise ValueError(f"the {k + 1} largest |samples| are all {x[k]!r}: no tail to measure; take a larger k")
    inverse = np.mean(np.log(x[:k] / x[k]))
    alpha = 1.0 / inverse
    z = stats.norm.ppf(0.5 + level / 2)
    half = z * alpha / np.sqrt(k)
    return HillEstimate(alpha, alpha - half, alpha + half, k, float(x[k]))


class QuantileEstimate(NamedTuple):
    """A sample quantile and its distribution-free confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float


def quantile_interval(samples, q: float = 0.5, *, level: float = 0.95) -> QuantileEstimate:
    """The ``q``-quantile of i.i.d. ``samples`` with a confidence interval from order statistics.

    The number ``B`` of samples at or below the true quantile ``xi_q`` is Binomial(n, q), and
    ``X_(j) <= xi_q <= X_(k)`` whenever ``j <= B < k``: with ``j`` the largest index such that
    ``P(B < j) <= (1 - level)/2`` and ``k`` the smallest such that ``P(B >= k) <= (1 - level)/2``,
    the interval covers ``xi_q`` with probability at least ``level`` for any continuous law
    (David and Nagaraja, *Order Statistics*, Sec. 7.1). Unlike a mean and its standard error, it
    needs no moment: use it for heavy tails, whose mean may be infinite. A bound that needs an order
    statistic beyond the sample is infinite. NaN samples are an error (diverged runs: drop them or
    set them to ``inf`` first).
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    if x.size == 0 or np.isnan(x).any():
        raise ValueError("samples must be non-empty and hold no NaN")
    n, tail = x.size, (1 - level) / 2
    j = int(stats.binom.ppf(tail, n, q))  # P(B < j) = P(B <= j - 1) < tail
    k = int(stats.binom.ppf(1 - tail, n, q)) + 1  # P(B >= k) <= tail
    low = x[j - 1] if j >= 1 else -np.inf
    high = x[k - 1] if k <= n else np.inf
    return QuantileEstimate(_linear_quantile(x, q), float(low), float(high))


def _linear_quantile(x: np.ndarray, q: float) -> float:
    """``np.quantile(x, q)`` of sorted ``x`` (``x_(i) + w (x_(i+1) - x_(i))`` at ``q (n - 1) = i + w``), also where
    an order statistic is infinite: ``x_(i)`` if ``w = 0``, else ``inf`` next to ``inf`` (NumPy gave NaN, from
    ``0 * inf`` or ``inf - inf``); NaN only between ``-inf`` and ``inf``."""
    pos = q * (x.size - 1)
    i = int(np.floor(pos))
    w = pos - i
    if w == 0 or i + 1 >= x.size:
        return float(x[i])
    a, b = x[i], x[i + 1]
    if np.isfinite(a) and np.isfinite(b):
        return float(a + w * (b - a))
    return float(np.nan if (a == -np.inf and b == np.inf) else (b if np.isinf(b) else a))


# --------------------------------------------------------------------------- averages and measures


def time_average(series, *, n_batches: int = 32, discard: int = 0, axis: int = -1):
    """``(mean, stderr)`` of a recorded series along ``axis``, after dropping ``discard`` entries.

    The standard error is the batch-means estimate ``sd(batch means) / sqrt(n_batches)`` over
    ``n_batches`` consecutive batches of all the entries (sizes differing by at most one), valid
    when a batch is much longer than the correlation time; a warning says when consecutive batch
    means are correlated (:func:`dynsim.observables.warn_if_correlated`). The same estimator as
    :func:`dynsim.observables.time_average`, for saved records.
    """
    n_batches = check_int("n_batches", n_batches, minimum=2)
    discard = check_int("discard", discard, minimum=0)
    x = np.moveaxis(np.asarray(series, dtype=np.float64), axis, -1)
    if x.shape[-1] - discard < n_batches:
        raise ValueError(
            f"discard={discard} leaves {max(x.shape[-1] - discard, 0)} of the {x.shape[-1]} entries along axis "
            f"{axis}, fewer than n_batches={n_batches}"
        )
    x = x[..., discard:]
    counts, bounds = time_batches(x.shape[-1], n_batches)
    means = np.add.reduceat(x, bounds[:-1] - 1, axis=-1) / counts
    warn_if_correlated(means, -1, f"measure.time_average ({counts.min()}-entry batches)")
    return x.mean(axis=-1), batch_means_stderr(means)


def empirical_measure(values: xr.DataArray, bins, over: str | Sequence[str] = "time") -> xr.DataArray:
    """The empirical measure of ``values`` on ``bins``, pooling the dimensions in ``over``.

    ``over="time"``: the measure of each trajectory over time (seed 000, eq. 5);
    ``over="replica"``: the ensemble's measure at each time; both: everything pooled. Returns
    probabilities per bin ``[e_i, e_{i+1})`` (half-open, the last one too, as the
    :func:`~dynsim.observables.histogram` observable counts; dimension ``bin``, coordinate: bin
    centres) among the finite values; values outside the bins are counted in no bin, so the
    total can be below 1.
    """
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"bins must be a 1-D array of at least 2 edges, got {bins!r}")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be finite and strictly increasing, got {edges.tolist()}")
    over = [over] if isinstance(over, str) else list(over)
    missing = [d for d in over if d not in values.dims]
    if missing:
        raise ValueError(f"dimensions {missing} not in {values.dims}")

    def hist(x):
        x = x[np.isfinite(x)]
        slot = np.searchsorted(edges, x, side="right") - 1  # [e_i, e_{i+1}): e_last is outside
        return np.bincount(slot[(slot >= 0) & (slot < edges.size - 1)], minlength=edges.size - 1) / max(x.size, 1)

    out = xr.apply_ufunc(
        lambda a: np.apply_along_axis(hist, -1, a.reshape(*a.shape[: a.ndim - len(over)], -1)),
        values,
        input_core_dims=[over],
        output_core_dims=[["bin"]],
        dask="forbidden",
    )
    return out.assign_coords(bin=0.5 * (edges[1:] + edges[:-1]))


# --------------------------------------------------------------------------- distances


def _finite_samples(name: str, x: np.ndarray) -> np.ndarray:
    """``x``, once checked finite: an empirical law with a NaN or infinite sample is at no finite distance."""
    bad = ~np.isfinite(x)
    if np.any(bad):
        count = int(np.count_nonzero(bad))
        shown = f"{count} non-finite value{'s' * (count > 1)} of {x.size}"
        shown = x.tolist() if x.ndim == 1 and x.size <= 8 else shown
        raise ValueError(
            f"{name} must be finite, got {shown}: a distance between laws needs finite samples (drop diverged "
            "ones and count them apart)"
        )
    return x


def wasserstein1(a, b, *, period: float | None = None) -> float:
    """Exact Wasserstein-1 distance between the empirical laws of the samples ``a`` and ``b``.

    On the line, ``W1 = int |F_a(x) - F_b(x)| dx``. With ``period=L`` the samples live on the
    circle ``R / L Z`` (e.g. angles mod ``2 pi``) and ``W1 = min_c int_0^L |F_a - F_b - c| dx``,
    attained at a weighted median of ``F_a - F_b`` (Rabin, Delon and Gousseau 2011). NaN or infinite
    samples are an error (diverged runs: drop them and count them apart).
    """
    a = _finite_samples("a", np.asarray(a, dtype=np.float64).ravel())
    b = _finite_samples("b", np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError(f"both samples must be non-empty, got sizes {a.size} and {b.size}")
    if period is not None:
        period = check_positive("period", period)
        a, b = np.mod(a, period), np.mod(b, period)
        grid = np.concatenate([[0.0], np.sort(np.concatenate([a, b])), [period]])
    else:
        grid = np.sort(np.concatenate([a, b]))
    lengths = np.diff(grid)
    left = grid[:-1]
    diff = (
        np.searchsorted(np.sort(a), left, side="right") / a.size
        - np.searchsorted(np.sort(b), left, side="right") / b.size
    )
    if period is None:
        return float(np.sum(np.abs(diff) * lengths))
    order = np.argsort(diff)
    cum = np.cumsum(lengths[order])
    c = diff[order][np.searchsorted(cum, cum[-1] / 2)]
    return float(np.sum(np.abs(diff - c) * lengths))


def sliced_wasserstein1(a, b, *, n_projections: int = 128, seed: int = 0) -> tuple[float, float]:
    """Sliced W1 between samples ``a (n, d)`` and ``b (m, d)``: the mean over random unit directions
    ``u`` of ``W1(a u, b u)``, with its standard error over the directions.

    That error bar covers the random directions only, not the sampling error of ``a`` and ``b``
    (nor the bias of W1 between finite samples, which is positive even for two samples of one law):
    for that, recompute on independent samples or bootstrap them.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be (n, d) and (m, d) arrays, got {a.shape} and {b.shape}")
    a, b = _finite_samples("a", a), _finite_samples("b", b)
    n_projections = check_int("n_projections", n_projections, minimum=2)
    u = np.random.default_rng(seed).standard_normal((n_projections, a.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    d = np.array([wasserstein1(a @ v, b @ v) for v in u])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(n_projections))


def window_distances(trajectory, *, period: float | None = None, n_min: int = 16):
    """``W1(mu_[n, 2n), mu_[2n, 4n))`` between dyadic windows of one scalar trajectory, for ``n = n_min, 2 n_min, ...``.

    Returns ``(n, distances)``. On an ergodic attractor the distance shrinks (about like
    ``n^-1/2``; like ``1/n`` on a periodic orbit); Birkhoff averages that do not converge
    (seed 000, Thm. 5.3) keep it from shrinking. The trajectory must be finite (cut a diverged one first).
    """
    x = _finite_samples("trajectory", np.asarray(trajectory, dtype=np.float64).ravel())
    ns, out = [], []
    n = check_int("n_min", n_min, minimum=1)
    while 4 * n <= x.size:
        ns.append(n)
        out.append(wasserstein1(x[n : 2 * n], x[2 * n : 4 * n], period=period))
        n *= 2
    return np.array(ns), np.array(out)


# --------------------------------------------------------------------------- periodic orbits


class Period(NamedTuple):
    """``period``: smallest ``p`` with the tail of the orbit ``p``-periodic within ``tol`` (0: none
    found up to ``max_period``); ``points``: the ``p`` points of the cycle (NaN where none)."""

    period: np.ndarray
    points: np.ndarray


def detect_period(
    orbit, tol: float = 1e-7, *, max_period: int = 128, window: int | None = None, period_of_space: float | None = None
) -> Period:
    """Periodic orbits from the last ``window`` points of ``orbit (..., T, d)`` (a 1-D array is one scalar orbit).

    The period is the smallest ``p <= max_period`` with ``|theta_t - theta_{t-p}| < tol`` for every
    ``t`` in the window (``window`` defaults to ``2 max_period``; distances are taken mod
    ``period_of_space`` on a torus). Leading axes are independent orbits.
    """
    x = np.asarray(orbit, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    max_period = check_int("max_period", max_period, minimum=1)
    window = 2 * max_period if window is None else check_int("window", window, minimum=1)
    T = x.shape[-2]
    if T < window + max_period:
        raise ValueError(f"orbit of {T} points is shorter than window + max_period = {window + max_period}")
    tail = x[..., T - window - max_period :, :]
    lead = x.shape[:-2]
    period = np.zeros(lead, dtype=np.int64)
    for p in range(max_period, 0, -1):  # descending: the smallest period wins
        diff = tail[..., max_period:, :] - tail[..., max_period - p : max_period - p + window, :]
        if period_of_space is not None:
            diff = (diff + period_of_space / 2) % period_of_space - period_of_space / 2
        ok = np.all(np.max(np.abs(diff), axis=-1) < tol, axis=-1)
        period = np.where(ok, p, period)
    points = np.full((*lead, max_period, x.shape[-1]), np.nan)
    for idx in np.ndindex(*lead):
        p = period[idx]
        if p > 0:
            points[idx][:p] = x[idx][T - p :]
    return Period(period, points)


# --------------------------------------------------------------------------- across trajectories


def _chains(samples, split: bool):
    """``samples (..., chains, draws)`` as chains, each split in two halves if ``split``. R-hat and ESS need two
    chains (after splitting) for the variance between chains, and two draws in each for the variance within."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"samples must be a (..., chains, draws) array, got shape {x.shape}")
    chains, draws = x.shape[-2:]
    if split and chains < 1:
        raise ValueError(f"samples must hold at least 1 chain (split in two halves), got shape {x.shape}")
    if not split and chains < 2:
        raise ValueError(
            f"samples must hold at least 2 chains (split=False compares whole chains), got shape {x.shape}"
        )
    if split and draws < 4:
        raise ValueError(
            f"samples must hold at least 4 draws per chain (2 in each half of a split chain), got shape {x.shape}"
        )
    if not split and draws < 2:
        raise ValueError(f"samples must hold at least 2 draws per chain (split=False), got shape {x.shape}")
    if split:
        half = x.shape[-1] // 2
        x = np.concatenate([x[..., :half], x[..., half : 2 * half]], axis=-2)
    return x


def _rank_normalize(x: np.ndarray) -> np.ndarray:
    """``Phi^-1((r - 3/8) / (S + 1/4))`` of the ranks ``r`` (ties averaged) of each set of ``S`` draws ``(..., chains,
    draws)``, pooled over chains (Vehtari et al. 2021, eq. 14); NaN where a draw is NaN."""
    flat = x.reshape(*x.shape[:-2], -1)
    ranks = stats.rankdata(flat, axis=-1, nan_policy="propagate")
    return stats.norm.ppf((ranks - 0.375) / (flat.shape[-1] + 0.25)).reshape(x.shape)


def _split_rhat(x: np.ndarray) -> np.ndarray:
    """``sqrt(var_plus / W)``, ``var_plus = (n - 1)/n W + B/n`` of chains ``(..., chains, draws)`` (Gelman et al.,
    *Bayesian Data Analysis*, 3rd ed., eq. 11.4)."""
    n = x.shape[-1]
    means = x.mean(axis=-1)
    within = x.var(axis=-1, ddof=1).mean(axis=-1)
    between = n * means.var(axis=-1, ddof=1)
    var_plus = (n - 1) / n * within + between / n
    return np.sqrt(var_plus / within)


def rhat(samples, *, split: bool = True, rank: bool = True) -> np.ndarray:
    """Potential scale reduction R-hat of ``samples (..., chains, draws)``: near 1 when every chain samples the
    same law; the usual alarm threshold is 1.01.

    ``rank=True``: the rank-normalized split R-hat of Vehtari et al. (2021, eq. 15), the larger of the split
    R-hats of the rank-normalized draws (bulk) and of the rank-normalized ``|x - median|`` (tails): it sees
    chains that differ in location, in scale or in their tails, needs no moment (Cauchy draws, infinite values
    of diverged runs), and its bulk part is unchanged by any increasing transformation of the draws. ``rank=False``: the
    classic split R-hat of the draws themselves (Gelman et al., *BDA3*), which sees differences of location
    only (1.0002 for three chains of N(0, 1) and one of N(0, 25), where the rank form gives 1.25). Needs 2 chains
    of 2 draws after splitting: 4 draws per chain (one chain will do, its halves compared), or with
    ``split=False`` 2 chains of 2 draws.
    """
    x = _chains(samples, split)
    if not rank:
        return _split_rhat(x)
    with np.errstate(invalid="ignore"):
        folded = np.abs(x - np.median(x, axis=(-2, -1), keepdims=True))
    return np.maximum(_split_rhat(_rank_normalize(x)), _split_rhat(_rank_normalize(folded)))


def ess(samples, *, rank: bool = False) -> np.ndarray:
    """Effective sample size of ``samples (..., chains, draws)`` from the autocorrelations pooled
    over chains, truncated by Geyer's initial positive sequence (as Stan and BlackJAX do). Chains are
    split in halves, as for :func:`rhat`: at least 4 draws per chain.

    ``rank=False``: the ESS of the draws, the one for the standard error of their mean,
    ``sd / sqrt(ESS)`` (meaningless without a finite variance). ``rank=True``: the bulk ESS of Vehtari et
    al. (2021), that of the rank-normalized draws, for medians and quantiles, defined for any law.
    """
    x = _chains(samples, split=True)
    if rank:
        x = _rank_normalize(x)
    m, n = x.shape[-2], x.shape[-1]
    centred = x - x.mean(axis=-1, keepdims=True)
    f = np.fft.rfft(centred, n=2 * n, axis=-1)
    acov = np.fft.irfft(f * np.conj(f), axis=-1)[..., :n] / n
    within = x.var(axis=-1, ddof=1).mean(axis=-1)
    var_plus = (n - 1) / n * within + n * x.mean(axis=-1).var(axis=-1, ddof=1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1 - (within[..., None] - acov.mean(axis=-2)) / var_plus[..., None]
    rho[..., 0] = 1.0
    # Geyer: sum pairs rho_{2k} + rho_{2k+1} while positive (and monotone)
    pairs = rho[..., : (n // 2) * 2].reshape(*rho.shape[:-1], -1, 2).sum(axis=-1)
    pairs = np.minimum.accumulate(np.where(np.cumprod(pairs > 0, axis=-1) > 0, pairs, 0.0), axis=-1)
    tau = -1 + 2 * pairs.sum(axis=-1)
    # NaN for chains with a non-finite draw or no variance (the floor below once turned those into
    # m n log10(m n) draws, more than there are)
    informative = np.isfinite(var_plus) & (var_plus > 0)
    return np.where(informative, m * n / np.maximum(tau, 1.0 / np.log10(m * n)), np.nan)


# --------------------------------------------------------------------------- vanishing change


class VanishingChange(NamedTuple):
    """``Delta_n = (1/n) sum_{t<=n} [phi(theta_t) - E_F phi(F(theta_t))]`` at each ``n`` in ``times``.

    ``mean``/``stderr`` over replicas; ``scaled_sd = sqrt(n) sd(Delta_n)`` (constant when the
    change decays like ``1/sqrt(n)``); ``quantile``: the ``1 - delta`` quantile of ``|Delta_n|``;
    ``boundary``: mean of ``(phi(theta_1) - phi(theta_{n+1}))/n``, the deterministic part;
    ``per_replica``: ``(R, len(times))``.
    """

    times: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    scaled_sd: np.ndarray
    quantile: np.ndarray
    boundary: np.ndarray
    per_replica: np.ndarray


def vanishing_change(
    step: Callable[[Any, jax.Array], Any],
    phi: Callable[[Any], jax.Array],
    x0: Any,
    key: jax.Array | int,
    times: Sequence[int],
    *,
    n_replicas: int = 256,
    n_fresh: int = 8,
    burn_in: int = 0,
    delta: float = 0.05,
) -> VanishingChange:
    """The one-step change of time averages, seed 000 Thm. 4.3 / B.1, read correctly (digest Sec. 4.2).

    Runs ``n_replicas`` trajectories of ``step(x, key)``; after ``burn_in`` steps, each step
    adds ``phi(theta_t) - (1/K) sum_k phi(F_k(theta_t))`` with ``K = n_fresh`` pushes through
    ``step`` with fresh keys (an unbiased estimate of ``E_F[phi(F(theta_t)) | theta_t]``).
    Telescoping, ``Delta_n = (phi(theta_1) - phi(theta_{n+1}))/n + (1/n) sum_t D_t`` with martingale
    differences ``|D_t| <= 2M`` for ``|phi| <= M``, so by Azuma
    ``|Delta_n| <= 2M/n + 2M sqrt(2 log(2/delta)/n)`` with probability ``1 - delta``.
    """
    times = np.asarray(sorted(set(int(t) for t in times)))
    if times.size == 0 or times[0] < 1:
        raise ValueError(f"times must be positive integers, got {times.tolist()}")
    n_replicas = check_int("n_replicas", n_replicas, minimum=2)
    n_fresh = check_int("n_fresh", n_fresh, minimum=1)
    burn_in = check_int("burn_in", burn_in, minimum=0)
    key = prng.as_key(key)
    total = int(times[-1])

    def one(rkey):
        def burn(x, t):
            return step(x, prng.step_key(rkey, t)), None

        x, _ = jax.lax.scan(burn, x0, jnp.arange(burn_in))
        first = phi(x)

        def body(carry, t):
            x, s = carry
            k = prng.step_key(rkey, burn_in + t)
            fresh = jax.random.split(jax.random.fold_in(k, 1), n_fresh)
            pushed = jnp.mean(jax.vmap(lambda kk: phi(step(x, kk)))(fresh))
            s = s + phi(x) - pushed
            x = step(x, k)
            n = t + 1
            return (x, s), (s / n, (first - phi(x)) / n)

        _, (running, boundary) = jax.lax.scan(body, (x, jnp.zeros_like(first)), jnp.arange(total))
        return running, boundary

    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(n_replicas))
    running, boundary = jax.jit(jax.vmap(one))(keys)
    running = np.asarray(running, dtype=np.float64)[:, times - 1]
    boundary = np.asarray(boundary, dtype=np.float64)[:, times - 1]
    sd = running.std(axis=0, ddof=1)
    return VanishingChange(
        times=times,
        mean=running.mean(axis=0),
        stderr=sd / np.sqrt(n_replicas),
        scaled_sd=np.sqrt(times) * sd,
        quantile=np.quantile(np.abs(running), 1 - delta, axis=0),
        boundary=boundary.mean(axis=0),
        per_replica=running,
    )


# --------------------------------------------------------------------------- network diagnostics


def _singular_values(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError(f"matrix holds {int((~np.isfinite(matrix)).sum())} non-finite entries (NaN or inf)")
    return np.linalg.svd(matrix, compute_uv=False)


def numerical_rank(matrix, tol: float = 1e-3) -> np.ndarray:
    """``#{i : s_i > tol * s_max}`` for the singular values ``s`` of ``matrix (..., m, n)`` (batched)."""
    s = _singular_values(matrix)
    return np.sum(s > tol * s[..., :1], axis=-1)


def effective_rank(matrix) -> np.ndarray:
    """``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum s`` (Roy and Vetterli 2007), batched; 0 for a
    zero matrix, as :func:`numerical_rank` gives."""
    s = _singular_values(matrix)
    total = s.sum(axis=-1)
    p = s / np.maximum(total[..., None], 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        rank = np.exp(-np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1))
    return np.where(total > 0, rank, 0.0)


def sparsity(weights, rel_tol: float = 1e-3, *, batched: bool = False):
    """Share of the entries of ``weights`` with ``|w| < rel_tol * max|w|`` (1 for all zeros, NaN with a NaN).

    A float for the whole array; ``batched=True``: one share per index of the leading axis.
    (A 2-D matrix was read as a batch of rows: ``[[1, 1e-9], [1e-9, 1e-9]]`` gave ``[0.5, 0]``.)
    """
    w = np.abs(np.asarray(weights, dtype=np.float64))
    if batched and w.ndim == 0:
        raise ValueError(f"batched=True needs weights with a leading axis, got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"weights must not be empty, got shape {w.shape}")
    flat = w.reshape(w.shape[0], -1) if batched else w.reshape(1, -1)
    top = flat.max(axis=1, keepdims=True)
    share = np.where(top[:, 0] > 0, np.mean(flat < rel_tol * top, axis=1), 1.0)
    share = np.where(np.isnan(flat).any(axis=1), np.nan, share)
    return share if batched else float(share[0])


# --------------------------------------------------------------------------- Thm 5.2


class StepChange(NamedTuple):
    """``Delta(c)`` for each step multiple in ``scales``: ``mean``, ``stderr`` (over samples), ``per_sample``."""

    scales: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    per_sample: np.ndarray


def scaled_step_change(
    objective: Callable[[Any], jax.Array],
    update: Callable[[Any, jax.Array], Any],
    samples: Any,
    scales: Sequence[float],
    *,
    key: jax.Array | int = 0,
    n_draws: int = 1,
) -> StepChange:
    """``Delta(c) = E_{theta ~ mu} E_xi[f(theta + c u(theta, xi))] - E_{theta ~ mu}[f(theta)]`` (seed 000, Thm. 5.2).

    ``samples``: draws from an (empirical) invariant measure ``mu``, a pytree with a leading
    sample axis; ``update(theta, key)``: the displacement of one step of the map, e.g.
    ``-lr g_B(theta)`` for SGD (``n_draws`` minibatches per sample, paired across ``c``).
    If ``mu`` is invariant for ``c = 1``, ``Delta(1) = 0``; Thm. 5.2 says ``Delta(c) < 0`` for
    every ``c`` below some ``c* > 0``. The standard error treats samples as independent
    (thin correlated samples first).
    """
    scales = np.asarray(scales, dtype=np.float64)
    if scales.ndim != 1 or scales.size == 0:
        raise ValueError(f"scales must be a non-empty 1-D sequence of numbers c, got {scales.tolist()!r}")
    n_draws = check_int("n_draws", n_draws, minimum=1)
    key = prng.as_key(key)
    n = int(jax.tree_util.tree_leaves(samples)[0].shape[0])

    def one(theta, k):
        base = objective(theta)
        keys = jax.random.split(k, n_draws)

        def moved(c):
            return (
                jnp.mean(
                    jax.vmap(
                        lambda kk: objective(jax.tree_util.tree_map(lambda p, u: p + c * u, theta, update(theta, kk)))
                    )(keys)
                )
                - base
            )

        return jax.vmap(moved)(jnp.asarray(scales, jnp.result_type(float)))

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    per = np.asarray(jax.jit(jax.vmap(one))(samples, keys), dtype=np.float64)  # (n, len(scales))
    return StepChange(scales, per.mean(axis=0), per.std(axis=0, ddof=1) / np.sqrt(n), per)


class Balance(NamedTuple):
    """Result of :func:`gradient_curvature_balance`: both sides of the exact identity and two approximations.

    ``grad_sq``: ``E|grad f|^2`` (for SGD, ``E<grad f, g>``); ``curvature``: the Taylor remainder
    of the step, ``E[f(theta - lr g) - f(theta) + lr <grad f, g>] / lr`` (``lr E[int_0^1 (1 - s)
    g^T H(theta - s lr g) g ds]`` where ``f`` is twice differentiable along the step), equal to
    ``grad_sq`` under an invariant measure; ``local``: ``(lr/2) E[g^T H(theta) g]``, the corrected
    approximation (Hessian constant along the step); ``printed``: ``lr E[g^T H(theta) g]``, seed
    000's eq. (10) as printed (twice ``local``); each with its standard error over the samples
    (``*_stderr``); ``ratio = grad_sq / curvature`` and ``ratio_stderr``, its delta-method standard
    error from the paired samples.
    """

    grad_sq: float
    grad_sq_stderr: float
    curvature: float
    curvature_stderr: float
    local: float
    local_stderr: float
    printed: float
    printed_stderr: float
    ratio: float
    ratio_stderr: float


def ratio_of_means(a, b) -> tuple[float, float]:
    """``mean(a) / mean(b)`` and its delta-method standard error from paired samples ``(a_i, b_i)``:
    ``se^2 = Var(a - r b) / (n mean(b)^2)``, ``r`` the ratio (NaN for fewer than two pairs)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired samples of one shape, got shapes {a.shape} and {b.shape}")
    mb = b.mean()
    r = a.mean() / mb if mb != 0 else np.nan
    if a.size < 2 or not np.isfinite(r):
        return float(r), float("nan")
    return float(r), float(np.std(a - r * b, ddof=1) / (np.sqrt(a.size) * abs(mb)))


def gradient_curvature_balance(loss_fn: Callable[[Any], jax.Array], samples: Any, lr, *, grads: Any = None) -> Balance:
    """The balance of gradient and curvature that an invariant measure forces (seed 000, eqs. 10 and 15, corrected).

    If ``mu`` is invariant for ``F(theta) = theta - lr g(theta)``, ``E_mu[f(F(theta))] = E_mu[f(theta)]``,
    and Taylor's formula with integral remainder, ``f(theta - lr g) - f(theta) = -lr <grad f, g> +
    lr^2 int_0^1 (1 - s) g^T H(theta - s lr g) g ds``, gives the exact identity

        E_mu <grad f, g> = lr E_mu[int_0^1 (1 - s) g^T H(theta - s lr g) g ds]

    (``E|grad f|^2`` on the left for GD, or for SGD once averaged over minibatches). Seed 000's
    eq. (10) drops the factor ``(1 - s)`` (a ``t`` in its double-integral form, eq. 15) and reads
    ``|grad f|^2 ~ lr L G^2`` with ``L`` the curvature along ``g``; with the Hessian frozen at
    ``theta`` the identity gives half of that. ``samples``: draws of ``theta`` from the (empirical)
    measure, a pytree with a leading axis; ``grads``: the step directions ``g`` at those samples
    (default: ``grad f``, i.e. GD); ``loss_fn(theta)`` the full loss.

    The right side is computed from loss values, ``(f(theta - lr g) - f(theta) + lr <grad f, g>) /
    lr``, which is exact for any ``f`` with an absolutely continuous gradient along the step, kinks
    included: a ReLU net's Hessian misses the jumps of its gradient where the step crosses a kink
    (on ``relu(t) + t^2/2`` from ``t = 0.5`` with ``lr = 1`` the Hessian integral gives 1.125 for
    the remainder 2.125). Its rounding is about ``eps |f| / lr`` per sample. For a finite
    trajectory of GD the two sides differ by exactly ``(f(theta_0) - f(theta_n)) / (n lr)``.
    """
    grad = jax.grad(loss_fn)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(samples))
    lr = jnp.asarray(lr, dtype)

    def one(theta, g):
        value, gf = jax.value_and_grad(loss_fn)(theta)
        g = gf if g is None else g
        along = tree_vdot(gf, g)
        moved = loss_fn(jax.tree_util.tree_map(lambda p, v: p - lr * v, theta, g))
        remainder = (moved - value) / lr + along
        curvature_here = tree_vdot(g, jax.jvp(grad, (theta,), (g,))[1])  # g^T H(theta) g
        return jnp.stack([along, remainder, lr / 2 * curvature_here])

    if grads is None:
        per = jax.jit(jax.vmap(lambda t: one(t, None)))(samples)
    else:
        per = jax.jit(jax.vmap(one))(samples, grads)
    per = np.asarray(per, dtype=np.float64)
    n = per.shape[0]
    mean = per.mean(axis=0)
    err = per.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(3, np.nan)
    ratio, ratio_err = ratio_of_means(per[:, 0], per[:, 1])
    return Balance(
        grad_sq=float(mean[0]),
        grad_sq_stderr=float(err[0]),
        curvature=float(mean[1]),
        curvature_stderr=float(err[1]),
        local=float(mean[2]),
        local_stderr=float(err[2]),
        printed=float(2 * mean[2]),
        printed_stderr=float(2 * err[2]),
        ratio=ratio,
        ratio_stderr=ratio_err,
    )
