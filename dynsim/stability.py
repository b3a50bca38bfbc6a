"""Linear and probabilistic stability of SGD (seed 004): thresholds and the phases of the rank-1 saddle.

Thresholds for 1-D regression with the half-squared loss, ``h = E[x^2]``, batch size ``S``:

* ``lambda_GD = 2 / h`` (eq. 3);
* ``lambda_DS = 2 S E[x^2] / (E[x^4] + (S - 1) E[x^2]^2)``: mean-square stability,
  ``E(1 - lr mean_B x^2)^2 < 1``. The printed eqs. (4), (21), (22) are wrong for ``S > 1``
  (digest, Sec. 2.1); for Gaussian ``x`` this is ``(2 / sigma^2) S / (S + 2)``;
* ``lambda_SS = 2 S / ((S + 1) h)`` (stationary linear stability, quoted from Ziyin et al. 2022);
* ``lambda_P``: probabilistic stability, the root of the exponent
  ``m_S(lr) = E log|1 - lr mean_B x^2|`` (Prop. 1; for Gaussian ``x``, ``mean_B x^2 = sigma^2 R / S``
  with ``R ~ chi^2_S``): SGD converges in probability iff ``lr < lambda_P``, far above ``lambda_DS``.

Phases of SGD at the rank-1 saddle (Prop. 2): the modes ``w - u`` and ``w + u`` are
multiplied by ``1 - lr chi_t`` and ``1 + lr chi_t``, ``chi_t`` the batch mean of ``x y``.
With ``Lambda_-+ = E log|1 -+ lr chi|``:

====== ================== ==================================================================
phase  exponents          meaning
====== ================== ==================================================================
I_ms   L- < 0 < L+,       ``w - u -> 0`` also in mean square: ``E(1 - lr chi)^2 < 1``, i.e.
       ms- < 1            ``lr < 2 E chi / E chi^2``; "correct learning" (``E chi > 0``)
I_p    L- < 0 < L+,       ``w - u -> 0`` in probability only
       ms- >= 1
II     L+ < 0 < L-        ``w + u -> 0``: "stable but incorrect learning"
III    L- < 0, L+ < 0     both modes vanish: SGD converges to the low-rank saddle
IV     L- > 0, L+ > 0     neither: complete instability
====== ================== ==================================================================

The paper calls the mean-square sub-phase "Ia" in Sec. 4.2 and "Ib" in the Fig. 1 caption;
dynsim names it ``I_ms`` (alias ``Ia``) and the rest of phase I ``I_p`` (alias ``Ib``).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import warnings
from typing import Any

import numpy as np
import xarray as xr
from scipy import integrate, optimize, special, stats

from dynsim._validate import check_choice, check_int, check_positive, grid_values, jsonable

__all__ = [
    "PHASES",
    "ALIASES",
    "lambda_gd",
    "lambda_ds",
    "lambda_ds_gaussian",
    "lambda_ss",
    "regression_exponent",
    "lambda_p_gaussian",
    "gaussian_log_abs",
    "saddle_exponents",
    "classify",
    "saddle_phases",
    "wilson_interval",
    "MEAN_SQUARE_BATCHES",
]

PHASES = ("I_ms", "I_p", "II", "III", "IV")
ALIASES = {"Ia": "I_ms", "Ib": "I_p"}
UNDECIDED = -1


# --------------------------------------------------------------------------- thresholds


def lambda_gd(h: float) -> float:
    """``2 / h``: GD on a quadratic of curvature ``h`` converges iff ``lr < 2/h`` (seed 004, eq. 3)."""
    return 2.0 / check_positive("h", h)


def lambda_ds(second_moment: float, fourth_moment: float, batch_size: int = 1) -> float:
    """Mean-square threshold ``2 S E[x^2] / (E[x^4] + (S - 1) E[x^2]^2)`` of 1-D regression.

    ``E(1 - lr X)^2 = 1 - 2 lr E[x^2] + lr^2 (E[x^4] + (S-1) E[x^2]^2) / S`` for ``X`` the mean
    of ``S`` i.i.d. ``x^2`` (digest Sec. 2.1; the paper's eqs. 4/21/22 miscount for S > 1).
    """
    m2 = check_positive("second_moment", second_moment)
    m4 = check_positive("fourth_moment", fourth_moment)
    s = check_int("batch_size", batch_size, minimum=1)
    if m4 < m2**2:
        raise ValueError(f"no law has E[x^4] = {m4} < E[x^2]^2 = {m2**2} (Jensen)")
    return 2 * s * m2 / (m4 + (s - 1) * m2**2)


def lambda_ds_gaussian(batch_size: int = 1, variance: float = 1.0) -> float:
    """``lambda_DS`` for ``x ~ N(0, variance)``: ``(2 / variance) S / (S + 2)``."""
    v = check_positive("variance", variance)
    return lambda_ds(v, 3 * v**2, batch_size)


def lambda_ss(h: float, batch_size: int = 1) -> float:
    """``2 S / ((S + 1) h)``: stationary linear stability (Ziyin et al. 2022, quoted in seed 004)."""
    s = check_int("batch_size", batch_size, minimum=1)
    return 2 * s / ((s + 1) * check_positive("h", h))


def regression_exponent(lr, batch_size: int = 1, variance: float = 1.0) -> np.ndarray:
    """``m_S(lr) = E log|1 - lr X|``, ``X = (sigma^2 / S) R``, ``R ~ chi^2_S``: the Lyapunov exponent of SGD on
    1-D Gaussian regression (``x ~ N(0, sigma^2)``, interpolating, half-squared loss, batch ``S``; seed 004,
    Prop. 1 and eq. 7). By quadrature over ``sqrt(R)`` (chi law), split at the singularity
    ``R = S / (lr sigma^2)``; ``lr`` may be an array."""
    s = check_int("batch_size", batch_size, minimum=1)
    v = check_positive("variance", variance)
    lrs = np.asarray(lr, dtype=float)
    if np.any(~np.isfinite(lrs)) or np.any(lrs <= 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    law = stats.chi(s)  # the law of u = sqrt(R): a smooth density, also at u = 0 when S = 1
    # its mass lies within 12 of sqrt(S) (sd <= 1/sqrt(2)); integrating over [0, inf) instead missed
    # the peak for S >~ 350 (m_512(1) came out -4.10 for -3.41)
    lo, hi = max(0.0, np.sqrt(s) - 12.0), np.sqrt(s) + 12.0

    def one(rate: float) -> float:
        # log|1 - c u^2| = log sqrt(c) + log|u - u0| + log(1 + sqrt(c) u), c = rate v / S, u0 = 1/sqrt(c):
        # the logarithmic singularity at u0 goes to QUADPACK's algebraic-logarithmic weights
        c = rate * v / s
        u0 = 1 / np.sqrt(c)
        if lo < u0 < hi:
            singular = (
                integrate.quad(law.pdf, lo, u0, weight="alg-logb", wvar=(0, 0))[0]
                + integrate.quad(law.pdf, u0, hi, weight="alg-loga", wvar=(0, 0))[0]
            )
        else:
            singular = integrate.quad(lambda u: np.log(abs(u - u0)) * law.pdf(u), lo, hi, limit=200)[0]
        smooth = integrate.quad(lambda u: np.log1p(np.sqrt(c) * u) * law.pdf(u), lo, hi, limit=200)[0]
        return 0.5 * np.log(c) + singular + smooth

    return np.vectorize(one, otypes=[float])(lrs)


def lambda_p_gaussian(batch_size: int = 1, variance: float = 1.0) -> float:
    """The probabilistic threshold ``lambda_P``: the root of :func:`regression_exponent` above ``2 / sigma^2``.

    ``m_S < 0`` on ``(0, lambda_P)`` and ``> 0`` beyond: SGD converges in probability iff ``lr < lambda_P``
    (seed 004, Prop. 1), while it converges in mean square only below ``lambda_DS = (2/sigma^2) S/(S + 2)``.
    At ``lr = 2/sigma^2`` (GD's threshold) ``m_S < 0`` for every ``S``, so the root lies above it.
    """
    s = check_int("batch_size", batch_size, minimum=1)
    v = check_positive("variance", variance)
    low = 2.0 / v
    high = 2 * low
    while regression_exponent(high, s, v) <= 0:
        high *= 2
    return float(optimize.brentq(lambda rate: float(regression_exponent(rate, s, v)), low, high, xtol=1e-12))


# --------------------------------------------------------------------------- quadrature


@functools.lru_cache(maxsize=1)
def _gaussian_log_abs_table():
    b = np.linspace(0.0, 20.0, 40001)
    lam = b**2 / 2
    k = np.arange(0, 420)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = special.xlogy(k[None, :], lam[:, None]) - lam[:, None] - special.gammaln(k + 1)[None, :]
    f = 0.5 * (np.log(2) + np.sum(np.exp(log_pmf) * special.digamma(k + 0.5)[None, :], axis=1))
    return b, f


def gaussian_log_abs(b) -> np.ndarray:
    """``f(b) = E log|Z + b|`` for ``Z ~ N(0, 1)`` (digest Sec. 2.7).

    ``(Z + b)^2`` is noncentral chi-square with one degree of freedom, a Poisson(b^2/2)
    mixture of ``chi^2_{1+2k}``, and ``E log chi^2_nu = log 2 + psi(nu/2)``:
    ``f(b) = (log 2 + sum_k Pois(k; b^2/2) psi(k + 1/2)) / 2``, tabulated on ``|b| <= 20``
    (linear interpolation, error < 1e-8) and ``log|b| - 1/(2b^2) - 3/(4b^4) - 5/(2b^6)``
    beyond. ``f(0) = -(gamma + log 2)/2``.
    """
    b = np.abs(np.asarray(b, dtype=np.float64))
    grid, table = _gaussian_log_abs_table()
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.log(b) - 1 / (2 * b**2) - 3 / (4 * b**4) - 5 / (2 * b**6)
    return np.where(b <= 20.0, np.interp(np.minimum(b, 20.0), grid, table), far)


def _chi_moments(chi: str, second, noise_var: float, c0: float):
    """``E chi_1`` and ``E chi_1^2`` of one sample's ``c0 x y`` (``second`` is mu or a)."""
    if chi == "gaussian":
        mu = second
        mean = c0 * mu
        var = c0**2 * (2 * mu**2 + noise_var * (1 - mu) ** 2)
        return mean, var + mean**2
    a = second
    return c0 * (1 + a) / 2, c0**2 * (1 + a**2) / 2


@functools.lru_cache(maxsize=4)
def _legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


def _panel(a, b, n: int):
    """Gauss-Legendre nodes and weights on ``[a, b]`` (arrays of panels broadcast on a new last axis)."""
    x, w = _legendre(n)
    a, b = np.asarray(a, dtype=np.float64)[..., None], np.asarray(b, dtype=np.float64)[..., None]
    return 0.5 * (b - a) * x + 0.5 * (b + a), 0.5 * (b - a) * w


def _gaussian_exponents_infinite(lrs, mu: float, s: int, noise_var: float, c0: float, nodes: int):
    """``(Lambda_+, Lambda_-)`` for Gaussian data, N = infinity, batch S, by 1-D quadrature (digest Sec. 2.7).

    Given ``R = sum_j x_j^2 ~ chi^2_S``, the batch mean is
    ``chi | R ~ N(c0 mu R / S, c0^2 (1 - mu)^2 var_eps R / S^2)``, so with ``u = sqrt(R)``
    (chi law, S degrees of freedom) and ``c = lr c0 (1 - mu) sqrt(var_eps) u / S``,
    ``E log|1 +- lr chi| = E_u[log c + f((1 +- lr c0 mu u^2 / S) / c)]``. The ``-`` integrand
    has a narrow dip where ``1 - lr c0 mu u^2 / S = 0``: panels end there. Any real ``mu``
    (``mu > 1`` once fell back to ``mu = 1`` silently: phase I for IV at ``lr = 1, mu = 2``). ``mu = 1`` is
    ``E log|1 +- lr c0 R / S|``, whose log singularity is likewise a panel end.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    top = math.sqrt(s) + 13.0
    zero, end = np.zeros_like(lrs), np.full_like(lrs, top)

    def integral(log_abs, edges):
        total = np.zeros_like(lrs)
        for a, b in zip(edges[:-1], edges[1:]):
            u, w = _panel(a, b, nodes)
            with np.errstate(divide="ignore", invalid="ignore"):
                vals = w * stats.chi.pdf(u, s) * log_abs(u)
            total += np.sum(np.where(w > 0, vals, 0.0), axis=1)
        return total

    if mu > 0:
        root = np.minimum(np.sqrt(s / (lrs * c0 * mu)), top)  # where 1 - lr c0 mu u^2 / S = 0
        minus_edges = [zero, root, np.minimum(2 * root, top), end]
    else:
        minus_edges = [zero, end]
    if mu == 1.0:
        slope = (lrs * c0)[:, None] / s
        plus = integral(lambda u: np.log(1 + slope * u**2), [zero, end])
        minus = integral(lambda u: np.log(np.abs(1 - slope * u**2)), minus_edges)
        return plus, minus
    scale = (lrs * c0 * abs(1 - mu) * math.sqrt(noise_var) / s)[:, None]  # f is even: the sign of 1 - mu drops
    drift = (lrs * c0 * mu)[:, None] / s

    def log_abs(sign):
        return lambda u: np.log(scale * u) + gaussian_log_abs((1 + sign * drift * u**2) / (scale * u))

    return integral(log_abs(+1.0), [zero, end]), integral(log_abs(-1.0), minus_edges)


def _batch_atoms(atoms: np.ndarray, s: int, max_tuples: int, rng: np.random.Generator):
    """Batch means of ``s`` i.i.d. draws from the uniform law on ``atoms`` (last axis), with weights.

    Exact: every multiset of ``s`` draws, ``C(N + S - 1, S)`` of them (far fewer than the ``N^S``
    ordered draws: 5005 for 10^6 at ``N = 10, S = 6``), each with its multinomial probability
    ``S! / (prod_i c_i! N^S)``, when there are at most ``max_tuples``; else ``max_tuples``
    Monte Carlo draws (equal weights). Returns ``(means, weights, exact)``.
    """
    n = atoms.shape[-1]
    if s == 1:
        return atoms, np.full(n, 1.0 / n), True
    if math.comb(n + s - 1, s) <= max_tuples:
        combos = np.array(list(itertools.combinations_with_replacement(range(n), s)), dtype=np.int64)
        counts = np.zeros((len(combos), n))
        np.add.at(counts, (np.repeat(np.arange(len(combos)), s), combos.ravel()), 1.0)
        log_weights = special.gammaln(s + 1) - special.gammaln(counts + 1).sum(axis=1) - s * np.log(n)
        return atoms @ counts.T / s, np.exp(log_weights), True
    idx = rng.integers(0, n, size=(max_tuples, s))
    means = sum(atoms[..., idx[:, j]] for j in range(s)) / s  # not atoms[..., idx]: S times the memory
    return means, np.full(max_tuples, 1.0 / max_tuples), False


def saddle_exponents(
    lrs,
    mus,
    *,
    chi: str = "gaussian",
    batch_size: int = 1,
    n_data: int | None = None,
    data: dict | None = None,
    noise_var: float = 4.0,
    c0: float = 1.0,
    nodes: int = 1500,
    max_tuples: int = 2_000_000,
    seed: int = 0,
) -> xr.Dataset:
    """``Lambda_+-`` and the mean-square factors ``E(1 +- lr chi)^2`` over a grid, from theory.

    ``chi = "gaussian"``: ``mus`` are label-noise levels ``mu`` (``y = mu x + (1 - mu) eps``).
    ``chi = "two_point"``: ``mus`` are the values ``a`` of the law ``x y in {1, a}``.

    * ``n_data=None`` (N = infinity): Gaussian by quadrature (:func:`gaussian_log_abs`,
      ``nodes`` Gauss-Legendre nodes per panel); two-point exactly, a binomial sum.
    * finite ``n_data``: the dataset of :func:`dynsim.simulate` with this ``seed`` (or
      ``data``), and the exact average over all ``N^S`` minibatches drawn with replacement
      (as ``C(N + S - 1, S)`` multisets with their multinomial weights) when there are at most
      ``max_tuples`` multisets, else a Monte Carlo average over ``max_tuples`` minibatches
      (``exact = 0`` in the result; its standard error is ``Lambda_stderr``).
    """
    chi = check_choice("chi", chi, ("gaussian", "two_point"))
    lrs = grid_values("lr", lrs)
    second = grid_values("mu" if chi == "gaussian" else "a", mus)
    s = check_int("batch_size", batch_size, minimum=1)
    noise_var = check_positive("noise_var", noise_var)
    c0 = check_positive("c0", c0)
    max_tuples = check_int("max_tuples", max_tuples, minimum=1)
    seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    name = "mu" if chi == "gaussian" else "a"
    shape = (len(lrs), len(second))
    plus, minus = np.zeros(shape), np.zeros(shape)
    se_plus, se_minus = np.zeros(shape), np.zeros(shape)
    m1 = np.zeros(len(second))
    m2 = np.zeros(len(second))
    exact = True
    if n_data is None and data is None:
        for j, v in enumerate(second):
            m1[j], m2[j] = _chi_moments(chi, float(v), noise_var, c0)
            if chi == "gaussian":
                plus[:, j], minus[:, j] = _gaussian_exponents_infinite(lrs, float(v), s, noise_var, c0, nodes)
                continue
            k = np.arange(s + 1)  # number of draws equal to 1 in the batch: Binomial(S, 1/2)
            w = stats.binom.pmf(k, s, 0.5)
            means = c0 * (k + (s - k) * v) / s
            with np.errstate(divide="ignore"):
                plus[:, j] = np.log(np.abs(1 + lrs[:, None] * means)) @ w
                minus[:, j] = np.log(np.abs(1 - lrs[:, None] * means)) @ w
    else:
        atoms = _finite_chi_atoms(chi, second, n_data, data, noise_var, c0, seed)  # (len(second), N)
        m1 = atoms.mean(axis=1)
        m2 = (atoms**2).mean(axis=1)
        means, weights, exact = _batch_atoms(atoms, s, max_tuples, np.random.default_rng(seed))
        for i, lr in enumerate(lrs):
            with np.errstate(divide="ignore"):
                lp = np.log(np.abs(1 + lr * means))
                lm = np.log(np.abs(1 - lr * means))
            plus[i], minus[i] = lp @ weights, lm @ weights
            if not exact:
                se_plus[i] = lp.std(axis=1) / np.sqrt(len(weights))
                se_minus[i] = lm.std(axis=1) / np.sqrt(len(weights))
    # mean-square factors of the batch mean: E chi_B = m1, E chi_B^2 = (m2 - m1^2)/S + m1^2
    e_chi = m1[None, :]
    e_chi2 = ((m2 - m1**2) / s + m1**2)[None, :]
    lr_col = lrs[:, None]
    ms_plus = 1 + 2 * lr_col * e_chi + lr_col**2 * e_chi2
    ms_minus = 1 - 2 * lr_col * e_chi + lr_col**2 * e_chi2
    dims = ("lr", name)
    return xr.Dataset(
        {
            "Lambda_plus": (dims, plus),
            "Lambda_minus": (dims, minus),
            "Lambda_plus_stderr": (dims, se_plus),
            "Lambda_minus_stderr": (dims, se_minus),
            "ms_plus": (dims, ms_plus),
            "ms_minus": (dims, ms_minus),
        },
        coords={"lr": lrs, name: second},
        attrs={
            "chi": chi,
            "batch_size": s,
            "n_data": -1 if n_data is None and data is None else int(atoms.shape[1]),
            "noise_var": noise_var,
            "c0": c0,
            "exact": int(exact),
            "method": "theory",
        },
    )


def _finite_chi_atoms(chi, second, n_data, data, noise_var, c0, seed):
    """``chi_i`` of every point of the finite dataset, for every value of mu (or a)."""
    if data is None:
        from dynsim import prng
        from dynsim.problems import draw_dataset, rank1_saddle

        n_data = check_int("n_data", n_data, minimum=1)
        problem = rank1_saddle(chi, n_data=n_data, noise_var=noise_var, c0=c0)
        data = draw_dataset(problem, prng.data_key(prng.key(seed)), n_data)
    fields = ("x", "eps") if chi == "gaussian" else ("b",)
    if not isinstance(data, dict) or any(f not in data for f in fields):
        raise ValueError(f"data must be a dict with fields {fields} for chi={chi!r}, got {data!r:.200}")
    data = {k: np.asarray(data[k], dtype=np.float64).ravel() for k in fields}
    sizes = {k: v.size for k, v in data.items()}
    if len(set(sizes.values())) != 1 or (n_data is not None and next(iter(sizes.values())) != n_data):
        raise ValueError(f"data fields have sizes {sizes}; they must all equal n_data = {n_data}")
    v = np.asarray(second, dtype=np.float64)[:, None]
    if chi == "gaussian":
        x, eps = data["x"][None, :], data["eps"][None, :]
        return c0 * x * (v * x + (1 - v) * eps)
    b = data["b"][None, :]
    return c0 * (b + (1 - b) * v)


# --------------------------------------------------------------------------- phases


def classify(lambda_plus, lambda_minus, ms_minus) -> np.ndarray:
    """Phase codes (indices into :data:`PHASES`) from the exponents and ``E(1 - lr chi)^2``.

    A mode is stable when its exponent is < 0; ``NaN`` exponents give :data:`UNDECIDED` (-1), and
    so does a ``NaN`` ``ms_minus`` in phase I, where it splits ``I_ms`` (``< 1``) from ``I_p``.
    """
    lp, lm, ms = (np.asarray(v, dtype=np.float64) for v in (lambda_plus, lambda_minus, ms_minus))
    phase_one = (lm < 0) & (lp >= 0)
    code = np.select(
        [
            (lm < 0) & (lp >= 0) & (ms < 1),
            (lm < 0) & (lp >= 0),
            (lp < 0) & (lm >= 0),
            (lp < 0) & (lm < 0),
        ],
        [0, 1, 2, 3],
        default=4,
    )
    return np.where(np.isnan(lp) | np.isnan(lm) | (phase_one & np.isnan(ms)), UNDECIDED, code)


def wilson_interval(successes, trials, level: float = 0.99):
    """Wilson score interval for a binomial proportion (arrays broadcast)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes!r} of {trials!r}")
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


_LONG_NAMES = {
    "Lambda_plus": "Lyapunov exponent of the mode w + u (per step)",
    "Lambda_minus": "Lyapunov exponent of the mode w - u (per step)",
    "ms_minus": "E(1 - lr chi)^2, the mean-square factor of the mode w - u per step",
    "phase": "phase of SGD at the saddle",
}


def _label(ds: xr.Dataset, config: dict) -> xr.Dataset:
    """Phase labels, long names, and the call's configuration (``ds.io.config``) on a phase dataset."""
    import dynsim

    ds.phase.attrs["labels"] = ", ".join(f"{i}: {p}" for i, p in enumerate(PHASES)) + ", -1: undecided"
    for var, long_name in _LONG_NAMES.items():
        ds[var].attrs["long_name"] = long_name
    ds.attrs["phases"] = ", ".join(PHASES)
    ds.attrs["aliases"] = "Ia = I_ms (mean-square convergent part of I), Ib = I_p (the rest of I)"
    ds.attrs["config"] = json.dumps({"function": "dynsim.stability.saddle_phases", **jsonable(config)})
    ds.attrs["dynsim_version"] = dynsim.__version__
    return ds


MEAN_SQUARE_BATCHES = 8
"""Batches of the simulated mean-square factor's time average (so ``n_steps`` must be at least this)."""


@functools.lru_cache(maxsize=16)
def _phase_simulation(chi, batch_size, n_data, noise_var, c0):
    """The dynamics and observables of :func:`saddle_phases`' simulations, built once per law: the engine keys
    its compiled programs on these objects, so a later call with the same law, run length and replica
    count (a new grid or seed) reuses them instead of compiling again."""
    import dynsim as ds

    problem = ds.problems.rank1_saddle(chi, n_data=n_data, noise_var=noise_var, c0=c0)
    observables = {
        "modes": ds.observables.final_state(),
        "ms_minus": ds.observables.time_average(lambda m: m["sq_minus"], n_batches=MEAN_SQUARE_BATCHES),
    }
    return ds.dynamics.saddle_modes(problem, batch_size=batch_size), observables


def _simulate_phases(
    lrs,
    second,
    chi,
    batch_size,
    n_data,
    noise_var,
    c0,
    n_replicas,
    n_steps,
    seed,
    level,
    refine,
    progress,
    checkpoint,
    engine,
):
    import dynsim as ds

    dynamics, observables = _phase_simulation(chi, batch_size, n_data, float(noise_var), float(c0))
    name = "mu" if chi == "gaussian" else "a"

    def run(lr_values, second_values, steps, run_seed, part):
        if engine == "fused":
            res = ds.fused.saddle_modes(
                lr_values,
                second_values,
                n_replicas=n_replicas,
                n_steps=steps,
                chi=chi,
                batch_size=batch_size,
                n_data=n_data,
                noise_var=noise_var,
                c0=c0,
                seed=run_seed,
                progress=progress,
            )
            return _summarise(res, steps, level)
        res = ds.simulate(
            dynamics,
            grid={"lr": lr_values, name: second_values},
            n_replicas=n_replicas,
            n_steps=steps,
            seed=run_seed,
            observables=observables,
            progress=progress,
            checkpoint=None if checkpoint is None else os.path.join(checkpoint, part),
        )
        return _summarise(res, steps, level)

    out = run(lrs, second, n_steps, seed, "main")
    out["refined"] = (out.phase.dims, np.zeros(out.phase.shape, dtype=bool))
    steps = n_steps
    for round_ in range(refine):
        steps *= 4
        undecided = out.phase.values == UNDECIDED
        if not undecided.any():
            break
        for j in np.flatnonzero(undecided.any(axis=0)):
            rows = np.flatnonzero(undecided[:, j])
            # same seed: a finite dataset must stay the one of the first pass (and of the theory)
            again = run(lrs[rows], second[j : j + 1], steps, seed, f"refine{round_}-{j}")
            for var in again.data_vars:
                out[var].values[rows, j] = again[var].values[:, 0]
            out["refined"].values[rows, j] = True
    return out


def _summarise(res: xr.Dataset, n_steps: int, level: float) -> xr.Dataset:
    """Per cell: share of replicas whose modes shrank, Wilson intervals, exponents, phase."""
    n = res.sizes["replica"]
    out = {}
    for mode in ("plus", "minus"):
        logs = res[f"modes_log_{mode}"].astype(np.float64)
        shrank = (logs < 0).sum("replica")
        low, high = wilson_interval(shrank, n, level)
        rate = (logs / n_steps).where(logs > -1e29)  # exact hits carry no rate
        # every replica hit its mode exactly (a zero multiplier, two-point data at lr = 1/x): -inf, as in theory
        out[f"Lambda_{mode}"] = rate.mean("replica").where(rate.count("replica") > 0, -np.inf)
        out[f"Lambda_{mode}_stderr"] = rate.std("replica", ddof=1) / np.sqrt(rate.count("replica"))
        out[f"shrink_{mode}"] = shrank / n
        out[f"shrink_{mode}_low"] = xr.DataArray(low, coords=shrank.coords)
        out[f"shrink_{mode}_high"] = xr.DataArray(high, coords=shrank.coords)
    out["ms_minus"] = res.ms_minus.mean("replica")
    out["ms_minus_stderr"] = np.sqrt((res.ms_minus_stderr**2).mean("replica") / n)
    ds = xr.Dataset(out)

    def sign(mode):  # +1 shrinks (stable), -1 grows, NaN undecided
        low, high = ds[f"shrink_{mode}_low"], ds[f"shrink_{mode}_high"]
        return xr.where(low > 0.5, -1.0, xr.where(high < 0.5, 1.0, np.nan))

    # I_ms or I_p: E(1 - lr chi)^2 below or above 1 by more than its interval at `level` (a point
    # estimate put cells within 0.3% of lambda_ms on either side by the luck of the seed)
    z = stats.norm.ppf(0.5 + level / 2)
    ms, ms_se = ds.ms_minus, ds.ms_minus_stderr
    ms_sure = ms.where((np.abs(ms - 1) > z * ms_se) | np.isinf(ms))
    ds["phase"] = (ds.Lambda_plus.dims, classify(sign("plus"), sign("minus"), ms_sure))
    return ds


def saddle_phases(
    lrs,
    mus,
    batch_size: int = 1,
    n_data: int | None = None,
    method: str = "theory",
    *,
    chi: str = "gaussian",
    noise_var: float = 4.0,
    c0: float = 1.0,
    seed: int = 0,
    n_replicas: int = 256,
    n_steps: int = 1000,
    level: float = 0.99,
    refine: int = 0,
    progress: bool | None = None,
    checkpoint: str | None = None,
    engine: str = "simulate",
    **theory_options: Any,
) -> xr.Dataset:
    """Phase diagram of SGD at the rank-1 saddle over ``(lr, mu)`` (or ``(lr, a)``), seed 004 Figs. 1b, 3, 4.

    ``method="theory"``: :func:`saddle_exponents` and :func:`classify`.

    ``method="simulation"``: ``n_replicas`` trajectories per cell of
    :func:`dynsim.dynamics.saddle_modes` (SGD in the modes ``w -+ u``, in log space, with the
    minibatch law of the theory) run for ``n_steps`` through :func:`dynsim.simulate`. A mode
    is stable in a cell when the Wilson interval (``level``) of the share of replicas whose
    mode shrank lies above 1/2, unstable when below; otherwise the cell is undecided
    (phase -1). ``refine=r`` reruns undecided cells up to ``r`` times with 4x more steps
    (the sign of ``Lambda`` decides faster the longer the run). ``Lambda_+-`` are estimated
    as ``mean log|mode_T/mode_0| / T`` with standard errors, ``E(1 - lr chi)^2`` as a time
    average. ``checkpoint``: a folder where each simulation of the call checkpoints its chunks
    (in a subfolder) and resumes from them (:func:`dynsim.simulate`).

    ``engine="fused"`` runs the simulation through :func:`dynsim.fused.saddle_modes` instead
    (every step of a trajectory in one kernel: a Pallas kernel on a GPU; no checkpoint): the
    same law and the same finite dataset, another random stream.

    Returns an ``xarray.Dataset`` with ``Lambda_plus``, ``Lambda_minus``, ``ms_minus``,
    ``phase`` (indices into :data:`PHASES`) and, for simulations, the shares and intervals.
    """
    method = check_choice("method", method, ("theory", "simulation"))
    chi = check_choice("chi", chi, ("gaussian", "two_point"))
    lrs = grid_values("lr", lrs)
    second = grid_values("mu" if chi == "gaussian" else "a", mus)
    check_int("batch_size", batch_size, minimum=1)
    if n_data is not None:
        check_int("n_data", n_data, minimum=1)
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    check_int("refine", refine, minimum=0)
    check_int("n_replicas", n_replicas, minimum=1)
    check_int("n_steps", n_steps, minimum=MEAN_SQUARE_BATCHES if method == "simulation" else 1)
    seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    engine = check_choice("engine", engine, ("simulate", "fused"))
    config = dict(chi=chi, batch_size=batch_size, n_data=n_data, noise_var=noise_var, c0=c0, seed=seed, method=method)
    if method == "theory" and (checkpoint or engine != "simulate"):
        given = f"checkpoint={checkpoint!r}" if checkpoint else f"engine={engine!r}"
        raise ValueError(f"{given} is an option of method='simulation'; method='theory' runs no simulation")
    if method == "theory":
        ds = saddle_exponents(
            lrs,
            second,
            chi=chi,
            batch_size=batch_size,
            n_data=n_data,
            noise_var=noise_var,
            c0=c0,
            seed=seed,
            **theory_options,
        )
        ds["phase"] = (ds.Lambda_plus.dims, classify(ds.Lambda_plus, ds.Lambda_minus, ds.ms_minus))
        return _label(ds, {**config, **theory_options})
    if theory_options:
        raise TypeError(f"{sorted(theory_options)} are options of method='theory'")
    if engine == "fused" and checkpoint:
        raise ValueError(
            f"engine='fused' writes no checkpoints (got checkpoint={checkpoint!r}): its runs take seconds "
            "on a GPU; use engine='simulate' to checkpoint"
        )
    if wilson_interval(n_replicas, n_replicas, level)[0] <= 0.5:
        warnings.warn(
            f"n_replicas={n_replicas} can decide no cell at level={level}: even when every replica's mode shrinks, "
            "the Wilson interval of the share reaches below 1/2; use more replicas",
            RuntimeWarning,
            stacklevel=2,
        )
    ds = _simulate_phases(
        lrs,
        second,
        chi,
        batch_size,
        n_data,
        noise_var,
        c0,
        n_replicas,
        n_steps,
        seed,
        level,
        refine,
        progress,
        checkpoint,
        engine,
    )
    ds.attrs.update(
        chi=chi,
        batch_size=batch_size,
        n_data=-1 if n_data is None else n_data,
        noise_var=noise_var,
        c0=c0,
        method="simulation",
        n_replicas=n_replicas,
        n_steps=n_steps,
        seed=seed,
        level=level,
        refine=refine,
        engine=engine,
    )
    config.update(n_replicas=n_replicas, n_steps=n_steps, level=level, refine=refine, engine=engine)
    return _label(ds, config)
