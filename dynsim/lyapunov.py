"""Lyapunov exponents: closed forms for scalar maps, Monte Carlo slopes, tangent-space algorithms.

For a random map ``x_{t+1} = T(x_t, xi_t)`` the top Lyapunov exponent is
``lambda_1 = lim (1/t) log |J_t ... J_1 v|`` with ``J_t = dT/dx(x_t, xi_t)``. Near a fixed
point of SGD, ``J_t = I - lr H_{B_t}``: a product of i.i.d. random matrices (seed 004,
eq. 2, 48). ``lambda_1 < 0`` is convergence in probability (seed 004, Prop. 1, Thm. 1);
mean-square convergence is the stronger ``L(2) < 0``, with ``L(q) = lim (1/t) log E|...|^q``.

* Scalar maps ``x_{t+1} = a_t x_t``: :func:`scalar_exponent` ``E log|a|``,
  :func:`generalized_exponent` ``log E|a|^q``, :func:`tail_index` (Kesten's ``kappa``).
* From a simulation: :func:`from_log_distance` (slope of ``m(t) = E log|w_t - w*|^2``).
* Any differentiable map ``step(x, key) -> x`` on pytrees: :func:`top_exponent`,
  :func:`spectrum` (JVP + QR, Benettin et al. 1980), and :func:`two_trajectory`
  (Benettin et al. 1976) for maps with kinks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy import optimize, special

from dynsim import prng
from dynsim._progress import PROGRESS_BLOCKS, in_blocks, progress_bar
from dynsim._tree import check_same_type, kahan_add, scaled_norm, tree_norm
from dynsim._validate import check_int, check_positive, explain_tracing
from dynsim.checkpoint import CarryFile, add_program
from dynsim.observables import batch_means_stderr, time_batches, warn_if_correlated, warn_if_drifting

__all__ = [
    "scalar_exponent",
    "generalized_exponent",
    "tail_index",
    "from_log_distance",
    "from_log_loss",
    "SlopeEstimate",
    "top_exponent",
    "spectrum",
    "two_trajectory",
    "LyapunovEstimate",
    "with_tangent",
    "running_exponent",
    "from_running_exponent",
    "RunningEstimate",
]


# --------------------------------------------------------------------------- scalar maps


def _law(a, weights):
    """A law of the multiplier: atoms ``a`` (last axis) and probabilities ``w = weights / sum(weights)``
    (``1/n`` each if ``weights`` is None); no atom NaN, the weights finite and nonnegative with a positive sum."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        raise ValueError(f"a must hold the atoms or samples of a law along its last axis, got a scalar ({a})")
    if a.size == 0:
        raise ValueError("a must not be empty")
    if np.any(np.isnan(a)):
        raise ValueError(f"a holds {int(np.isnan(a).sum())} NaN of {a.size} atoms: a multiplier's law has none")
    if weights is None:
        w = np.full(a.shape[-1], 1.0 / a.shape[-1])
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 0 or w.shape[-1] != a.shape[-1] or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(
                f"weights must be finite, >= 0 and match a's last axis ({a.shape[-1]}), got shape {w.shape}"
            )
        total = w.sum(axis=-1, keepdims=True)
        if np.any(total <= 0):
            raise ValueError(
                "weights must have a positive sum: they are the probabilities of the atoms, up to a factor"
            )
        w = w / total
    return a, w


def scalar_exponent(a, weights=None, *, with_stderr: bool = False):
    """``E log|a|`` over the last axis: the Lyapunov exponent of ``x_{t+1} = a_t x_t`` (seed 004, eq. 7).

    ``a`` holds the atoms of the law of the multiplier (e.g. ``1 - lr x_i^2`` for every
    point of a finite dataset, with ``weights`` their probabilities: exact) or i.i.d.
    samples (a Monte Carlo estimate; ``with_stderr=True`` also returns ``sd/sqrt(n)``, ``n`` the number of
    atoms of positive weight). Atoms of weight 0 are not in the law and add nothing.
    An atom at exactly 0 gives ``-inf`` (the critical learning rates of Prop. 3).
    """
    a, w = _law(a, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.abs(a))
        value = np.sum(np.where(w > 0, w * logs, 0.0), axis=-1)  # an atom of probability 0 is not in the law
    if not with_stderr:
        return value
    n = np.sum(np.broadcast_to(w > 0, np.broadcast_shapes(a.shape, w.shape)), axis=-1)
    finite = (np.isfinite(logs) | (w == 0)).all(axis=-1) & (n > 1)  # one sample has no spread to read
    with np.errstate(invalid="ignore"):
        squares = np.where(w > 0, w * (logs - value[..., None]) ** 2, 0.0)
        sd = np.sqrt(np.sum(squares, axis=-1) * n / np.maximum(n - 1, 1))
    return value, np.where(finite, sd / np.sqrt(n), np.nan)


def generalized_exponent(a, q, weights=None):
    """``L(q) = log E|a|^q = log sum_i w_i |a_i|^q`` over the last axis, computed as a log-sum-exp of
    ``log w_i + q log|a_i|`` (no overflow).

    ``L(0) = 0`` (``|a|^0 = 1``, an atom at 0 included), ``L'(0) = E log|a|``, and ``L(2) < 0`` is
    mean-square stability of ``x_{t+1} = a_t x_t``. An atom of probability 0 adds nothing; an atom at 0
    of positive probability gives ``L(q) = +inf`` for ``q < 0``. ``q`` broadcasts against the leading axes
    of ``a``: one ``q`` for all laws, or one per law; for a table of every ``q`` by every law of a 2-D ``a``,
    pass ``q[:, None]`` (shape ``(len(q), n_laws)`` out).
    """
    a, w = _law(a, weights)
    q = np.asarray(q, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        powers = np.where(q == 0, 0.0, q * np.log(np.abs(a)))  # q log|a|, with 0 log 0 = 0
        terms = np.where(w > 0, powers + np.log(w), -np.inf)
    return np.where(q[..., 0] == 0, 0.0, special.logsumexp(terms, axis=-1))  # L(0) = log sum w = 0, unrounded


def tail_index(a, weights=None) -> float:
    """Kesten's tail index: the ``kappa > 0`` with ``E|a|^kappa = 1``.

    For the affine recursion ``x_{t+1} = a_t x_t + b_t`` with ``E log|a| < 0`` and
    ``P(|a| > 1) > 0``, the stationary law has ``P(|x| > u) ~ u^-kappa`` (Kesten 1973,
    Goldie 1991; seed 004, App. A.3, whose eq. 35 gives only a lower bound). Returns
    ``inf`` if ``|a| <= 1`` almost surely (all moments finite). ``a`` is one law (1-D).
    """
    a, w = _law(a, weights)
    if a.ndim != 1:
        raise ValueError(f"tail_index takes one law (a 1-D array), got shape {a.shape}")
    m = float(scalar_exponent(a, w))
    if m >= 0:
        raise ValueError(f"E log|a| = {m:.6g} >= 0: x_t does not settle into a stationary law, so it has no tail index")
    if not np.any((np.abs(a) > 1) & (w > 0)):
        return float("inf")
    L = lambda k: float(generalized_exponent(a, k, w))  # noqa: E731
    hi = 1.0
    while L(hi) <= 0:
        hi *= 2
        if hi > 1e6:  # pragma: no cover - needs P(|a|>1) below double precision
            return float("inf")
    lo = hi / 2 if hi > 1 else 0.0
    while lo > 0 and L(lo) > 0:
        lo /= 2
    lo = max(lo, 1e-12)
    return float(optimize.brentq(L, lo, hi, xtol=1e-12, rtol=1e-12))


# --------------------------------------------------------------------------- from simulations


class SlopeEstimate(NamedTuple):
    """The exponent from the slope of a Monte Carlo ``m(t)``.

    ``exponent`` and ``stderr`` (over replicas) per grid cell; ``m``: the ensemble mean
    ``m(t)``; ``history``: the running exponent ``(m(t) - m(t_0)) / (2 (t - t_0))``, ``t_0`` the first
    record at or after the transient. Both are NaN past ``until``, where some replicas have left the float
    range: a mean over the others, or over frozen records, would be biased;
    ``transient``: steps discarded before ``t_0``; ``exact_hits``: share of replicas that
    reached the point exactly (``-inf``) during the run; ``until``: per cell, the last record
    time the fit used (see :func:`from_log_distance`); ``left_range``: share of replicas that
    diverged, hit the point exactly or were frozen during the run.
    """

    exponent: xr.DataArray
    stderr: xr.DataArray
    m: xr.DataArray
    history: xr.DataArray
    transient: int
    exact_hits: xr.DataArray
    until: xr.DataArray
    left_range: xr.DataArray


def _diverged_steps(result: xr.Dataset) -> xr.DataArray | None:
    """The divergence step of every trajectory, from a :func:`~dynsim.observables.diverged` output, if any."""
    try:
        observables = json.loads(result.attrs["config"])["observables"]
    except (KeyError, TypeError, ValueError):
        return None
    for name, spec in observables.items():
        if spec.get("kind") == "diverged" and f"{name}_step" in result:
            return result[f"{name}_step"]
    return None


def _frozen(records: xr.DataArray, after: float) -> xr.DataArray:
    """The records of a replica's final constant run, if it has one and changed before it.

    Without a :func:`~dynsim.observables.diverged` output this is how a diverged replica is told:
    the engine freezes it, so its records repeat exactly from its divergence to the end (the
    first of them holds the state of the step before the divergence, not of its own time, so it
    is flagged too). A repeat followed by a change is a coincidence of float32 records, not a
    divergence; a series that never changes from its reference record (the first at a time
    ``> after``, else the first) is a constant orbit (``|1 - lr x^2| = 1``, or a running exponent whose
    every counted step has the same growth: GD on a quadratic).
    """
    times = records.time
    ref = times.where(times > after).min() if bool((times > after).any()) else times.min()
    same_as_next = (records.diff("time", label="lower") == 0).reindex(time=times, fill_value=True)
    reverse = slice(None, None, -1)
    to_end = same_as_next.isel(time=reverse).cumprod("time").isel(time=reverse).astype(bool)
    start = times.where(to_end & (times >= ref)).min("time")  # first record of the final constant run
    return (times >= start) & (start < times.max()) & (start > ref)


def _common_window(records: xr.DataArray, diverged_step, exits: xr.DataArray, after: float = -np.inf, stacklevel=3):
    """Per cell, the last record time before the first of its replicas left; and which replicas left.

    A replica leaves at its first record flagged in ``exits`` (say, not finite: an exact hit or
    an overflow), that follows its divergence step (``diverged_step``, -1 for never), or that
    starts a final run of exact repeats (:func:`_frozen`): the engine freezes a diverged
    trajectory, and a state can also stop moving in float rounding (below the smallest normal
    number, an update too small to change it). Reading every replica of a cell up to the first exit
    of any of them keeps all replicas; dropping the ones that left would keep the slow ones only.
    Records at times ``<= after`` (constant by construction, such as a running exponent before its
    transient) are not read as frozen.
    """
    frozen = _frozen(records, after)
    if diverged_step is not None:
        diverged = (diverged_step >= 0) & (records.time >= diverged_step)
        stuck = frozen.any("time") & ~diverged.any("time")
        message = (
            f"{int(stuck.sum())} replicas stopped moving before the end without diverging (their state stuck in "
            "float rounding, e.g. below the smallest normal number): read up to their last change; float64 "
            "(jax.config.update('jax_enable_x64', True)) or a shorter run reads more of them"
        )
        exits = exits | diverged
    else:
        stuck = frozen.any("time")
        message = (
            f"{int(stuck.sum())} replicas have records that stay the same to the end, read as frozen by a divergence "
            "or by float rounding; record ds.observables.diverged() in the run to read divergences exactly"
        )
    if bool(stuck.any()):
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
    exits = exits | frozen
    first_exit = records.time.where(exits).min("time")  # NaN: never
    until = records.time.where(~(records.time >= first_exit.min("replica"))).max("time")
    return until, first_exit.notnull()


def _float_floor(values: xr.DataArray) -> float:
    """``log(tiny / eps)`` of the dtype of ``values`` (float64 if not floating): below it a quantity's
    intermediates that are ``eps`` times smaller (the smallest that still change it) are subnormal,
    so updates round or flush to zero (float32: 1.6e-31)."""
    info = np.finfo(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64)
    return float(np.log(info.tiny) - np.log(info.eps))


def _slope(logs: xr.DataArray, transient: int, scale: float, diverged_step, floor: float) -> SlopeEstimate:
    """Least-squares slopes over ``scale`` of ``log`` records, every replica of a cell on one window.

    Records below ``floor`` are exits too: there the quantity (or the state) is subnormal or
    flushed to zero, and its updates round.
    """
    if "time" not in logs.dims or "replica" not in logs.dims:
        raise ValueError(f"need a record with 'time' and 'replica' dimensions, got {logs.dims}")
    times = logs.time.values
    if transient < 0 or transient >= times[-1]:
        raise ValueError(f"transient must be in [0, {times[-1]}), got {transient}")
    logs = logs.astype(np.float64)
    until, left = _common_window(logs, diverged_step, ~np.isfinite(logs) | (logs < floor), stacklevel=4)
    window = (logs.time >= transient) & (logs.time <= until)
    kept = logs.where(window)
    n_records = window.sum("time")
    short = n_records < 2
    if bool(short.all()):
        raise ValueError(
            "fewer than 2 records after the transient and before the first replica left the float range "
            "(an exact hit, an overflow or a divergence): record more often (record_every), use float64 "
            "(jax.config.update('jax_enable_x64', True)), or estimate in log space (top_exponent, with_tangent)"
        )
    if bool(short.any()):
        warnings.warn(
            f"{int(short.sum())} cells have fewer than 2 records before the first replica left the float range: "
            "their exponent is NaN; record more often, use float64, or estimate in log space (top_exponent)",
            RuntimeWarning,
            stacklevel=3,
        )
    t = kept.time.astype(np.float64).where(window)
    tc = t - t.mean("time")
    slopes = (kept * tc).sum("time") / (tc**2).sum("time") / scale
    slopes = slopes.where(~short)
    n = logs.sizes["replica"]
    exponent = slopes.mean("replica")
    stderr = slopes.std("replica", ddof=1) / np.sqrt(n)
    same = (stderr == 0) & np.isfinite(exponent)
    if n > 1 and bool(same.any()):
        warnings.warn(
            f"{int(same.sum())} cells have replicas with the same slope (a deterministic map from one start): their "
            "standard error is 0, and says nothing of the fit's bias from the records before the slope settles; "
            "start the replicas at random points, raise the transient, or use top_exponent (errors from time batches)",
            RuntimeWarning,
            stacklevel=3,
        )
    m = logs.where(logs.time <= until).mean("replica")  # every replica is finite there; past until, NaN
    t0 = float(times[times >= transient][0])
    later = m.sel(time=m.time > t0)
    history = (later - m.sel(time=t0)) / (scale * (later.time - t0))
    hits = np.isneginf(logs).any("time").mean("replica")
    return SlopeEstimate(exponent, stderr, m, history, int(transient), hits, until, left.mean("replica"))


def from_log_distance(result: xr.Dataset, var: str = "logdist", *, transient: int = 0) -> SlopeEstimate:
    """The Lyapunov exponent from ``m_w(t) = E log|w_t - w*|^2`` (seed 004, eq. 9).

    ``result[var]`` is a :func:`dynsim.observables.log_distance` record (dimensions
    ``replica`` and ``time``). Each replica's slope of ``log|w_t - w*|^2`` over
    ``transient <= t <= until`` is fitted by least squares; the exponent is half the mean slope
    (``m_w`` is squared), its standard error the spread over replicas. For i.i.d.
    multipliers ``E log|w_t - w*|^2 = 2 Lambda t`` exactly, so the fit is unbiased.

    In float32 an iterate reaches ``w*`` exactly (``log 0 = -inf``), sinks to where its updates
    underflow, or overflows within a few hundred steps when ``|Lambda|`` is large. ``until`` is,
    per cell, the last record before the first replica of the cell left the float range: hit
    ``w*`` exactly, came within ``tiny / eps`` of it (float32: 1.6e-31; SGD on 1-D regression
    crawls there, which bent slopes by up to 100 standard errors), overflowed, was frozen by the
    engine after a divergence (read from a :func:`~dynsim.observables.diverged` output of
    ``result`` if there is one), or stopped moving (records that repeat exactly to the end, with
    a warning). Every replica is fitted on the same window, so none is selected out. Cells left
    with fewer than 2 records give NaN (a warning); record more often, use float64, or
    :func:`top_exponent`, which works in log space.
    """
    transient = check_int("transient", transient, minimum=0)
    if var not in result:
        raise ValueError(f"result has no variable {var!r}; it has {sorted(result.data_vars)}")
    records = result[var]  # log |w - w*|^2
    return _slope(records, transient, 2.0, _diverged_steps(result), 2 * _float_floor(records))


def from_log_loss(result: xr.Dataset, var: str = "loss", *, transient: int = 0) -> SlopeEstimate:
    """The exponent from ``m_L(t) = E log L(w_t)`` (seed 004, eq. 10) of a :func:`~dynsim.observables.loss` record.

    Near an interpolating minimum ``L`` is quadratic in ``w - w*``, so ``m_L`` grows like
    ``m_w``: the exponent is half the slope. The window is chosen as in :func:`from_log_distance`.
    """
    transient = check_int("transient", transient, minimum=0)
    if var not in result:
        raise ValueError(f"result has no variable {var!r}; it has {sorted(result.data_vars)}")
    with np.errstate(divide="ignore"):
        logs = np.log(result[var])
    return _slope(logs, transient, 2.0, _diverged_steps(result), _float_floor(result[var]))


class RunningEstimate(NamedTuple):
    """Top exponent per cell from a :func:`running_exponent` history, read at a common time.

    ``exponent``, ``stderr`` (over replicas) and ``until`` (the record time read) per cell;
    ``left_range``: share of replicas that diverged during the run.
    """

    exponent: xr.DataArray
    stderr: xr.DataArray
    until: xr.DataArray
    left_range: xr.DataArray


def from_running_exponent(result: xr.Dataset, var: str = "exponent") -> RunningEstimate:
    """The top exponent of every cell of a :func:`with_tangent` run, from its :func:`running_exponent` history.

    ``result[var]`` must be recorded over time (``running_exponent(every_record=True)`` and
    ``simulate(..., record_every=k)``). A diverged trajectory is frozen, tangent included, so
    its later records are the exponent of the steps before its divergence, and where divergence
    depends on growth a cell's average of final values is biased (at ``lr = 3.5`` on 1-D
    regression: 0.2745 ± 0.0046 for 0.2550). Here every replica of a cell is read at the same
    time, ``until``: its last record before the first replica diverged (from a
    :func:`~dynsim.observables.diverged` output, and from records that repeat exactly to the
    end). Records before :func:`with_tangent`'s transient are NaN and not read. ``-inf`` (an
    annihilated tangent) is a value, not an exit.
    """
    if var not in result:
        raise ValueError(f"result has no variable {var!r}; it has {sorted(result.data_vars)}")
    records = result[var]
    if "time" not in records.dims or "replica" not in records.dims:
        raise ValueError(
            f"{var!r} has dimensions {records.dims}: record its history with "
            "running_exponent(every_record=True) and simulate(..., record_every=k)"
        )
    records = records.astype(np.float64)
    # records are NaN until with_tangent's transient has passed: the last time when all are
    uncounted = records.isnull().all([d for d in records.dims if d != "time"])
    transient = float(records.time.where(uncounted).max()) if bool(uncounted.any()) else -np.inf
    exits = records.isnull() & (records.time > transient)  # frozen before its transient ended
    until, left = _common_window(records, _diverged_steps(result), exits, transient)
    short = ~(until > transient)
    if bool(short.any()):
        warnings.warn(
            f"{int(short.sum())} cells have no record after the transient (t = {transient:g}) and before their first "
            "divergence: their exponent is NaN; record more often",
            RuntimeWarning,
            stacklevel=2,
        )
    at = records.where(records.time == until).max("time").where(~short)
    n = records.sizes["replica"]
    with np.errstate(invalid="ignore"):
        stderr = at.std("replica", ddof=1) / np.sqrt(n)
    exponent = at.mean("replica")
    _warn_below_rounding(exponent.values, result[var].dtype, 3)
    return RunningEstimate(exponent, stderr, until.where(~short), left.mean("replica"))


# --------------------------------------------------------------------------- tangent methods


def with_tangent(dynamics, *, transient: int = 0):
    """``dynamics`` with a unit tangent vector and its log-growth carried in the state.

    The tangent is kept as the state's float leaves (``state["tangent"]``, a list shaped as they are).

    Each step pushes the tangent through the Jacobian of the step (``jax.linearize``, the same
    key as the base step), renormalizes it and, once ``transient`` steps have passed, adds
    ``log|J_t v_t|`` to ``log_growth`` and counts the step in ``counted``. The sum is compensated
    (Kahan): ``log_growth - log_growth_comp`` is within ``(2 u + n u^2) sum |log|J_t v_t||`` of the exact
    sum of the ``n`` rounded terms (``u`` the unit roundoff, ``2^-24`` in float32), where a plain float32
    sum drifted by 1% over 10^6 steps of GD on 1-D regression. Run it through
    :func:`dynsim.simulate` with :func:`running_exponent` (``(log_growth - log_growth_comp) / counted``,
    so the transient is given here only) to get the top Lyapunov exponent of every trajectory of a
    grid in one program. A zero multiplier (a superstable point) gives ``-inf``. Observables
    see the wrapped dynamics' parameters and data, as before. Where the top exponent is shared by
    several directions (an equal pair), the tangent follows whichever has grown most so far: an
    upward bias of ``O(1/sqrt(t))``, as for :func:`top_exponent` (see :class:`LyapunovEstimate`).
    """
    from dynsim.dynamics.base import Dynamics
    from dynsim.dynamics.saddle import LOG_ZERO

    transient = check_int("transient", transient, minimum=0)

    def init(key, hp):
        k_state, k_tangent = jax.random.split(key)
        inner = dynamics.init(k_state, hp)
        floats, _ = _float_parts(inner)
        like = floats(inner)
        v = jax.random.normal(k_tangent, (1, sum(leaf.size for leaf in like)), jnp.result_type(*like))
        zero = jnp.zeros((), jnp.result_type(float))
        return {
            "inner": inner,
            "tangent": [leaf[0] for leaf in _frame_from_rows(v / jnp.linalg.norm(v), like)],
            "log_growth": zero,
            "log_growth_comp": zero,
            "steps": jnp.zeros((), jnp.int32),
            "counted": jnp.zeros((), jnp.int32),
        }

    def step(state, key, hp):
        floats, with_floats = _float_parts(state["inner"])
        inner = state["inner"]
        new_inner, jvp = jax.linearize(lambda z: dynamics.step(with_floats(z, inner), key, hp), floats(inner))
        w = floats(jvp(state["tangent"]))
        r = tree_norm(w)
        counted = state["steps"] >= transient
        # Kahan summation: log_growth - log_growth_comp is the sum, the compensation keeping the rounding of
        # every addition; a non-finite sum (log 0 = -inf, an overflow) leaves the compensation as it was
        run, comp = state["log_growth"], state["log_growth_comp"]
        new, new_comp = kahan_add(run, comp, jnp.log(r).astype(run.dtype))
        grown = jnp.maximum(new, LOG_ZERO)
        scale = 1.0 / jnp.where(r > 0, r, 1.0)
        return {
            "inner": new_inner,
            "tangent": [jnp.where(r > 0, leaf * scale, old) for leaf, old in zip(w, state["tangent"])],
            "log_growth": jnp.where(counted, grown, run),
            "log_growth_comp": jnp.where(counted, new_comp, comp),
            "steps": state["steps"] + 1,
            "counted": state["counted"] + counted.astype(jnp.int32),
        }

    return Dynamics(
        init=init,
        step=step,
        hyperparams=dynamics.hyperparams,
        static=dynamics.static,
        shared_data=dynamics.shared_data,
        params_of=lambda s: dynamics.params_of(s["inner"]),
        data_of=lambda s, hp: dynamics.data_of(s["inner"], hp),
        problem=dynamics.problem,
        check=dynamics.check,
        name=f"with_tangent({dynamics.name}, transient={transient})",
    )


def running_exponent(*, every_record: bool = True, transient=None):
    """Observable of a :func:`with_tangent` run: ``(log_growth - log_growth_comp) / counted``, the running top
    exponent (a compensated sum over the counted steps).

    ``counted`` is the number of steps after :func:`with_tangent`'s ``transient``, the only place
    the transient is given (a second value here, out of step with it, silently gave -0.36 or -1.45
    for -0.72); NaN until a step is counted, ``-inf`` where the tangent was annihilated (a zero
    multiplier).

    A trajectory that diverges is frozen by the engine, tangent included, so its value is the
    exponent of the steps before its divergence. Where divergence depends on how fast the
    trajectory grew (an unbounded problem with a positive exponent), averaging those values
    over a cell is biased, and dropping the diverged replicas is biased too (it keeps the slow
    ones). Record the history (``every_record=True`` with ``record_every``) and read it with
    :func:`from_running_exponent`, which reads every replica of a cell before the cell's first
    divergence, or use :func:`top_exponent`, whose tangent does not stop when the state overflows.
    """
    from dynsim.dynamics.saddle import LOG_ZERO
    from dynsim.observables import Observable

    if transient is not None:
        raise TypeError("running_exponent takes no transient: give it to with_tangent(dynamics, transient=...) only")

    def record(view):
        if not (isinstance(view.state, Mapping) and "counted" in view.state):
            raise TypeError("running_exponent observes a with_tangent(dynamics) run: its state has no 'counted'")
        g, n = view.state["log_growth"], view.state["counted"]
        total = g - view.state["log_growth_comp"]
        value = jnp.where(n > 0, total / jnp.maximum(n, 1).astype(g.dtype), jnp.nan)
        return jnp.where(g <= LOG_ZERO / 2, -jnp.inf, value)

    return Observable("running_exponent", record=record, every_record=every_record)


class LyapunovEstimate(NamedTuple):
    """Exponents of a map, ``k`` largest first.

    ``exponents``: mean over replicas; ``stderr``: their standard error, by batch means over
    time: the log-growth averaged over replicas, split into :data:`TIME_BATCHES` consecutive
    batches after the transient, ``sd(batch means) / sqrt(n_batches)`` (NaN below 2 batches). It
    holds whether the replicas are independent (a stochastic map) or not: replicas of a
    deterministic map from one start differ only in their initial tangent frame and agree once it
    has aligned, and their spread (1e-17 on the Henon map) says nothing of the finite orbit's own
    fluctuation (2e-3 after 16,000 steps there). A warning says when consecutive batch means are
    correlated (the error is then too small; each exponent's series is tested alone, the replica average's
    and each replica's own, pooled over replicas) and when they drift over the run (a bias the error
    leaves out: :func:`dynsim.observables.warn_if_drifting`). Where the log-growth telescopes, as on the
    logistic map at ``r = 4`` (conjugate to the tent map, whose growth is ``log 2`` at every step), the
    estimate's error shrinks like ``1/n_steps`` and the batch-means error overstates it, by about
    ``sqrt(n_batches)`` (6.6x over 20 starts, in the tests): a safe error, not a sharp one.

    Two biases are left out of ``stderr`` (both measured by ``experiments/spectrum_bias.py``, 400
    replicas, float64):

    * the frame's alignment from its random start, ``O(1/n_steps)``: a ``transient`` of a few
      ``1 / (lambda_j - lambda_{j+1})`` steps removes it. On a product of random triangular matrices
      with exponents ``0, -0.3, -0.5``, without a transient, the errors reach 3.8 s.e. (``lambda_3``
      after 25 steps) and ``n_steps x error`` is 0.25 to 1.1 up to 200 steps (within 1.7 s.e. from 400
      on); with ``transient=50`` every error is within 1.5 s.e.;
    * equal exponents (a degenerate or complex pair of a random product): the frame's first column
      follows whichever direction has grown most so far, so the columns split the pair by
      ``O(1/sqrt(n_steps))``, whatever the number of replicas (:func:`top_exponent`, whose tangent is
      that first column, is biased up as much). For ``x' = diag(a_1, a_2) x`` with
      ``log a_i ~ N(0, s^2)`` i.i.d. (both exponents 0), ``+0.0152, -0.0131`` after 100 steps (s.e.
      0.0022, 0.0026) and ``+0.0034, -0.0028`` after 6400 (s.e. 0.0005), approaching ``+-s / sqrt(pi n)``
      (0.0035), the mean of the larger of two random walks. The batch means of both then drift (a
      warning, at 400 replicas; with a few, the drift hides in the noise).

    ``partial_sums[j - 1] = S_j = lambda_1 + ... + lambda_j`` is the growth rate of the volume spanned
    by the frame's first ``j`` columns, read without sorting. Where ``lambda_j > lambda_{j+1}`` no
    split pair biases it: a group of equal exponents ``lambda_i = ... = lambda_j`` is read as
    ``(S_j - S_{i-1}) / (j - i + 1)``, ``S_0 = 0`` (``+0.0003 +- 0.0002`` for the pair above after
    6400 steps), with ``partial_sums_stderr`` from the same time batches.
    ``per_replica``: ``(n_replicas, k)``; ``history``: ``(n_records, k)`` running
    estimates (mean over replicas) at ``times``, spread evenly up to ``until`` (fewer where the run has
    fewer blocks, or segments, see :data:`MAX_SEGMENTS`); ``transient``: steps discarded; ``until``: the
    last step read, ``n_steps`` unless a replica left the float range (every replica is then
    read up to the first exit).
    """

    exponents: np.ndarray
    stderr: np.ndarray
    per_replica: np.ndarray
    history: np.ndarray
    times: np.ndarray
    transient: int
    until: int
    partial_sums: np.ndarray
    partial_sums_stderr: np.ndarray


def _split_state(x):
    """Float leaves (the tangent space) and the rest of a pytree."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    is_float = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]
    if not any(is_float):
        raise ValueError("the state has no floating-point leaves: nothing to differentiate")
    return leaves, treedef, is_float


def _check_step(step, x0) -> None:
    """``step(x, key)`` must return a state shaped as ``x0`` (checked abstractly: nothing is run)."""
    with explain_tracing("step(x, key) -> x", "the step is traced: branch on the state with jnp.where or jax.lax.cond"):
        shape = jax.eval_shape(step, x0, prng.step_key(prng.key(0), 0))
    check_same_type(shape, jax.eval_shape(lambda x: x, x0), "step(x, key)")


def _mgs(Y, previous=None):
    """Modified Gram-Schmidt with one reorthogonalization pass on the rows of ``Y`` (k, d): ``Y^T = Q^T R``.

    Returns ``Q`` (orthonormal rows) and ``|diag R|``. Unrolled over the ``k`` rows; for wide frames
    (``d >> k``) it is far faster than a batched ``jnp.linalg.qr``, which factors large matrices one at
    a time (jax#8542). A row the map annihilates has ``R_jj = 0`` (a growth of ``log 0 = -inf``, the exponent
    of a product with a singular factor); one it maps into the span of the rows before it (a rank-deficient
    factor) keeps only rounding, within :data:`_FRAME_RESOLUTION` ``eps |Y_j|``, which lies in that span, so
    that its direction would stay there for good. Either goes on along its (unit) row of the ``previous``
    frame, as :func:`with_tangent`'s tangent does, so that a singular factor inside a transient does not
    end the run (zero without ``previous``); its growth is what is left (0, or the rounding's size, as
    near-singular factors of a random product legitimately give). That row is orthogonalized by the next
    block's factorization (not here, which would double the cost of every factorization for this rare
    case). Norms are scaled (:func:`dynsim._tree.scaled_norm`): a tangent beyond ``1.8e19`` in float32 is
    finite, though its square is not.
    """
    rows, norms = [], []
    for j in range(Y.shape[0]):
        v = Y[j]
        for _ in range(2):  # reorthogonalize
            for q in rows:
                v = v - jnp.dot(q, v) * q
        r = scaled_norm(v)
        norms.append(r)
        direction = r > _FRAME_RESOLUTION * jnp.finfo(r.dtype).eps * scaled_norm(Y[j])
        unit = v / jnp.where(direction, r, 1.0)
        rows.append(jnp.where(direction, unit, 0.0 if previous is None else previous[j]))
    return jnp.stack(rows), jnp.stack(norms)


_FRAME_RESOLUTION = 16
"""A row of a frame whose part orthogonal to the rows before it is ``<= 16 eps`` of its length has no direction of
its own (:func:`_mgs`): rounding, which lies in the span of the rows before it."""


def _as_static(step):
    """``step`` as a static argument of a compiled program: itself if hashable (the program is then reused by
    every call with the same function), else a new wrapper (compiled on every call)."""
    try:
        hash(step)
    except TypeError:
        return lambda x, key: step(x, key)
    return step


_MIN_CALL_SECONDS = 2.0
"""Calls of a tangent or clone run shown with a progress bar grow until they take this long: each call costs
about 0.1 s more than its steps (64 nets of ``benchmarks/run.py``, k = 8, on CPU), which calls of 0.5 s
made 20% of the run."""


CHECKPOINT_SECONDS = 60.0
"""A tangent or clone run with a ``checkpoint`` file saves its state after the first call that ends this long after
the last save, and at the end."""


def _run_file(path, config: dict, step, x0, key) -> CarryFile:
    """The checkpoint of a tangent or clone run (:func:`top_exponent`, :func:`spectrum`, :func:`two_trajectory`):
    its arguments ``config`` and a fingerprint of the step and of the start (the step's jaxpr and constants,
    ``x0`` and the key), with every replica's state, frame and summed log-growth."""
    digest = hashlib.sha256()
    add_program(digest, step, x0, prng.step_key(key, 0))
    for leaf in [*jax.tree_util.tree_leaves(x0), jax.random.key_data(key)]:
        value = np.asarray(leaf)
        digest.update(f"{value.dtype}{value.shape}".encode() + value.tobytes())
    config = {**config, "step_and_start": digest.hexdigest(), "x64": bool(jax.config.jax_enable_x64)}
    return CarryFile(path, config, every=CHECKPOINT_SECONDS)


def _run_in_calls(advance, carry, n_blocks: int, steps: int, progress, desc: str, run_file: CarryFile | None = None):
    """``carry`` after ``advance(carry, a, b)`` over the blocks ``[0, n_blocks)``, with a progress bar counting
    ``steps`` per block: in one call where no bar is shown and nothing is saved, else in calls that grow while
    they are shorter than :data:`_MIN_CALL_SECONDS`. With ``run_file``, the run starts from its saved carry and
    saves after calls (:data:`CHECKPOINT_SECONDS`) and at the end; the blocks do not change the result."""
    start = 0
    if run_file is not None:
        carry, start = run_file.load(carry)
    with progress_bar((n_blocks - start) * steps, progress, desc, mininterval=1.0) as bar:
        if bar.disable and run_file is None:
            return advance(carry, 0, n_blocks)
        size = max(1, math.ceil(n_blocks / PROGRESS_BLOCKS))
        after = None if run_file is None else run_file.save
        carry = in_blocks(
            advance, carry, start, n_blocks, size, lambda n: bar.update(n * steps), _MIN_CALL_SECONDS, after
        )
    if run_file is not None and start < n_blocks:
        run_file.save(carry, n_blocks, now=True)
    return carry


def _run_tangent(step, x0, key, n_steps, k, transient, dt, n_replicas, n_records, progress, desc, checkpoint):
    """Shared driver of :func:`top_exponent` and :func:`spectrum`: checks, then :func:`_tangent_start` and
    :func:`_tangent_advance` over the blocks, in calls (saved to ``checkpoint``, if given)."""
    leaves, _, is_float = _split_state(x0)
    _check_step(step, x0)
    d = sum(int(np.prod(jnp.shape(leaf))) for leaf, f in zip(leaves, is_float) if f)
    if k > d:
        raise ValueError(f"k={k} exceeds the dimension of the state's floating-point part, {d}")
    n_blocks, transient_blocks = _blocks(n_steps, dt, transient)
    layout = _Segments.of(n_blocks, transient_blocks)
    run_file = None
    if checkpoint is not None:
        config = {"run": desc, "n_steps": n_steps, "transient": transient, "dt": dt, "n_replicas": n_replicas, "k": k}
        run_file = _run_file(checkpoint, config, step, x0, key)
    step = _as_static(step)
    carry = _tangent_start(x0, _replica_keys(key, n_replicas), k, layout.n_segments)
    carry = _run_in_calls(
        lambda c, a, b: _tangent_advance(step, c, a, b, dt, *layout.traced()),
        carry,
        n_blocks,
        dt * n_replicas,
        progress,
        desc,
        run_file,
    )
    estimate = _summarise(carry, layout, dt, n_records, stacklevel=4)
    _warn_below_rounding(estimate.exponents, jnp.result_type(*[leaf for leaf, f in zip(leaves, is_float) if f]), 4)
    return estimate


def _warn_below_rounding(exponents, dtype, stacklevel: int) -> None:
    """Warn of finite exponents below ``log eps`` of the state's float type.

    Such a tangent keeps less than one rounding unit of its length per step. Where the step's Jacobian is a
    difference, ``I - lr H`` for a gradient step, the computed growth is then rounding, and the exact exponent
    is anything lower, ``-inf`` included: GD at ``lr = 1/h`` on 100 sin sin (a superstable point, seed 000)
    gives -38.4 in float64 and -17.6 in float32.
    """
    floor = float(np.log(np.finfo(dtype).eps))
    below = np.isfinite(exponents) & (np.asarray(exponents) < floor)
    if np.any(below):
        warnings.warn(
            f"{int(np.sum(below))} exponents are below log(eps) = {floor:.2f} ({np.dtype(dtype).name}): the tangent "
            "keeps less than one rounding unit of its length per step; where the step is a difference "
            "(x - lr g(x)) that is rounding, and the exact exponent is anything lower, -inf included "
            "(a superstable point)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def _blocks(n_steps: int, dt: int, transient: int) -> tuple[int, int]:
    """``n_steps // dt`` blocks of ``dt`` steps, of which the first ``ceil(transient / dt)`` are the transient."""
    n_blocks = n_steps // dt
    if n_blocks < 1:
        raise ValueError(f"n_steps={n_steps} must be >= dt={dt}")
    transient_blocks = -(-transient // dt)
    if n_blocks - transient_blocks < 1:
        raise ValueError(f"transient={transient} leaves no steps of n_steps={n_steps} (dt={dt})")
    return n_blocks, transient_blocks


MAX_SEGMENTS = 4096
"""The log-growth of a run is summed on the device into at most this many consecutive segments of its blocks after
the transient (so its memory does not grow with the run): errors, history and the window before a replica leaves
the float range are read at that resolution, block by block in runs of at most ``MAX_SEGMENTS`` blocks."""

_NO_EXIT = np.iinfo(np.int32).max
"""``first_bad`` of a replica that never left the float range."""


class _Segments(NamedTuple):
    """Blocks ``transient <= i < n_blocks`` summed ``per`` at a time into ``n_segments`` segments (the last one may
    be shorter); block ``i < transient`` goes to a scratch segment, number ``n_segments``."""

    n_blocks: int
    transient: int
    per: int
    n_segments: int

    @classmethod
    def of(cls, n_blocks: int, transient: int) -> _Segments:
        per = -(-(n_blocks - transient) // MAX_SEGMENTS)
        return cls(n_blocks, transient, per, -(-(n_blocks - transient) // per))

    def traced(self) -> tuple[jax.Array, jax.Array]:
        """``(transient, per)`` as traced arguments: a run of another length reuses the compiled program."""
        return jnp.int32(self.transient), jnp.int32(self.per)

    def blocks(self) -> np.ndarray:
        """Blocks in each segment."""
        n_post = self.n_blocks - self.transient
        return np.minimum(self.per, n_post - self.per * np.arange(self.n_segments))


def _record_growth(growth, first_bad, i, value, transient, per):
    """Add block ``i``'s log-growth ``value`` (``(k,)`` or ``()``) to its segment, and note ``i`` as the replica's
    first bad block (after the transient) if ``value`` is NaN or ``+inf`` there and none came before."""
    post = i >= transient
    segment = jnp.where(post, (i - transient) // per, growth.shape[0] - 1)
    bad = post & jnp.any(jnp.isnan(value) | (value == jnp.inf))
    first_bad = jnp.where(bad & (first_bad == _NO_EXIT), i, first_bad)
    return growth.at[segment].add(value.astype(growth.dtype)), first_bad


def _growth_buffers(n_segments: int, k: int | None):
    """Zero log-growth of ``n_segments`` segments and the scratch one (``k`` exponents, or one), no bad block."""
    shape = (n_segments + 1,) if k is None else (n_segments + 1, k)
    return {"growth": jnp.zeros(shape, jnp.result_type(float)), "first_bad": jnp.int32(_NO_EXIT)}


def _replica_keys(key, n_replicas: int) -> jax.Array:
    """``fold_in(key, r)`` for every replica ``r``."""
    return jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(n_replicas))


def _float_parts(x):
    """``floats(x)``: the float leaves of a state shaped as ``x``; ``with_floats(new, x)``: ``x`` with them replaced."""
    leaves, treedef, is_float = _split_state(x)

    def floats(x):
        return [leaf for leaf, f in zip(jax.tree_util.tree_leaves(x), is_float) if f]

    def with_floats(new_floats, x):
        it = iter(new_floats)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if f else leaf for leaf, f in zip(jax.tree_util.tree_leaves(x), is_float)]
        )

    return floats, with_floats


def _orthonormalize(frame, previous=None):
    """The frame (float leaves with a leading ``k`` axis) orthonormalized as ``(k, d)`` rows by :func:`_mgs`,
    and ``|diag R|``; a row the map annihilated goes on along ``previous``'s (the frame before the push)."""
    k = frame[0].shape[0]

    def as_rows(f):
        return jnp.concatenate([leaf.reshape(k, -1) for leaf in f], axis=1)

    q, r = _mgs(as_rows(frame), None if previous is None else as_rows(previous))
    return _frame_from_rows(q, [leaf[0] for leaf in frame]), r


def _frame_from_rows(rows, like):
    """``(k, d)`` rows as a frame: float leaves shaped and typed as ``like`` (one state's), with a leading ``k``."""
    out, i = [], 0
    for leaf in like:
        out.append(rows[:, i : i + leaf.size].reshape(rows.shape[:1] + leaf.shape).astype(leaf.dtype))
        i += leaf.size
    return out


@functools.partial(jax.jit, static_argnames=("k", "n_segments"))
def _tangent_start(x0, keys, k, n_segments):
    """Per replica (one per key): the state ``x0``, a random orthonormal ``k``-frame, the run key, and zero
    buffers for the ``log|R_jj|`` of ``n_segments`` segments (:func:`_growth_buffers`).

    The frame is kept as the state's float leaves, each with a leading ``k`` axis, so that the tangents go
    through the linearized step leaf by leaf as the state does (one flat vector cost a slice and a
    concatenation of the whole frame per step: 1.75x the time of pushing the tangents on the nets of
    ``benchmarks/run.py``); it is laid out as ``(k, d)`` rows only to be orthonormalized.
    """
    floats, _ = _float_parts(x0)
    like = floats(x0)
    d = sum(leaf.size for leaf in like)

    def one_replica(rkey):
        frame_key, run_key = jax.random.split(rkey)
        rows = jax.random.normal(frame_key, (k, d), jnp.result_type(*like))
        frame, _ = _orthonormalize(_frame_from_rows(rows, like))
        return {"x": x0, "q": frame, "key": run_key, **_growth_buffers(n_segments, k)}

    return jax.vmap(one_replica)(keys)


@functools.partial(jax.jit, static_argnames=("step", "dt"), donate_argnames=("carry",))
def _tangent_advance(step, carry, a, b, dt, transient, per):
    """Blocks ``a <= i < b`` of every replica: ``dt`` steps of the state with the frame pushed by the JVP of
    ``step`` (same key), then the frame orthonormalized and ``log|R_jj|`` added to block ``i``'s segment.

    Compiled once per ``step`` (by identity), state shapes, ``k``, ``dt``, number of segments and replicas; the
    block bounds and the segments' layout are traced, so calls of any length and a second call with the same
    step function reuse it.
    """
    floats, with_floats = _float_parts(jax.tree_util.tree_map(lambda leaf: leaf[0], carry["x"]))

    def one_replica(x, q, growth, first_bad, run_key):
        def block(i, c):
            x, q, growth, first_bad = c

            def one_step(j, c):
                x, q = c
                skey = prng.step_key(run_key, i * dt + j)
                new_x, jvp = jax.linearize(lambda z: step(with_floats(z, x), skey), floats(x))
                return new_x, jax.vmap(lambda v: floats(jvp(v)))(q)

            x, y = jax.lax.fori_loop(0, dt, one_step, (x, q))
            q, r = _orthonormalize(y, q)
            return x, q, *_record_growth(growth, first_bad, i, jnp.log(r), transient, per)

        return jax.lax.fori_loop(a, b, block, (x, q, growth, first_bad))

    x, q, growth, first_bad = jax.vmap(one_replica)(
        carry["x"], carry["q"], carry["growth"], carry["first_bad"], carry["key"]
    )
    return {**carry, "x": x, "q": q, "growth": growth, "first_bad": first_bad}


TIME_BATCHES = 32
"""Consecutive time batches behind the standard error of :class:`LyapunovEstimate`."""


def _time_batch_stderrs(kept: np.ndarray, blocks: np.ndarray, dt: int, stacklevel: int):
    """Batch-means standard errors of the exponents and of their partial sums, from the log-growth of consecutive
    segments ``(R, segments, k)`` of ``blocks`` blocks each: the replica-averaged growth per step split into
    :data:`TIME_BATCHES` consecutive batches as :func:`dynsim.observables.time_batches` splits steps (with a
    warning when consecutive batch means of the exponents are correlated)."""
    n_batches = min(TIME_BATCHES, kept.shape[1])
    if n_batches < 2:
        nan = np.full(kept.shape[2], np.nan)
        return nan, nan
    _, bounds = time_batches(kept.shape[1], n_batches)
    steps = np.add.reduceat(blocks, bounds[:-1] - 1) * dt
    per_replica = np.add.reduceat(kept, bounds[:-1] - 1, axis=1) / steps[:, None]  # (R, batches, k)
    means = per_replica.mean(axis=0)
    # The k exponents of a frame are not independent series (on the Henon map their batch means sum to
    # log 0.3 in every batch): each is tested alone. The replica average shows a drift common to all
    # replicas (a split of equal exponents that shrinks); each replica's own series, pooled over replicas,
    # shows correlation with more power than one series, where the replicas are independent: not where
    # they share their fluctuations (a deterministic map from one start, whose replicas differ only in
    # their first frame), the batch means then varying less across replicas than along time.
    what = f"Lyapunov exponents ({n_batches} time batches)"
    exponent = np.arange(means.shape[1])
    with np.errstate(invalid="ignore"):
        warned = warn_if_correlated(means.T, 1, what, stacklevel, groups=exponent, group_name="exponents")
        independent = per_replica.var(axis=0).mean(axis=0) > 0.5 * per_replica.var(axis=1).mean(axis=0)
        if not warned and np.any(independent):
            own = per_replica[:, :, independent].transpose(2, 0, 1)  # (exponent, replica, batch)
            warn_if_correlated(own, 2, what, stacklevel, groups=exponent[independent], group_name="exponents")
        remedy = "raise transient or run longer; read equal exponents (a pair that stays close) from partial_sums"
        warn_if_drifting(means.T, 1, what, "exponent", remedy, stacklevel)
    return batch_means_stderr(means, axis=0), batch_means_stderr(np.cumsum(means, axis=1), axis=0)


def _summarise(
    carry: dict,
    layout: _Segments,
    dt: int,
    n_records: int,
    *,
    stacklevel: int = 3,
    exits="a non-finite state or tangent",
):
    """Exponents, standard errors and running history from a run's summed log-growth: ``carry["growth"]``
    ``(R, segments + 1, k)`` (:class:`_Segments`) and each replica's first bad block ``carry["first_bad"]``.

    A replica whose trajectory left the float range or the map's domain grows by NaN or
    ``+inf`` from then on. Every replica is then read over the same window, the segments before
    the first such exit (with a warning): dropping the replicas that left would keep the slow
    ones only (on ``x' = (1 - 3.5 z^2) x`` over 300 steps, 0.116 for the exponent 0.255). A
    tangent annihilated by a zero Jacobian grows by ``log 0 = -inf``: its exponent is ``-inf``,
    a value, as for :func:`with_tangent` (inside the transient nothing is counted, and the tangent goes
    on along its previous direction). ``stacklevel``: of the warnings, from here to the user's call;
    ``exits``: the ways out of the range, as the warning names them.

    Column ``j``'s mean over replicas estimates ``lambda_j``; the columns are then put in descending
    order of that mean (errors, per-replica values and history with them). Sorting each replica's
    values instead would bias the largest of near-equal exponents up by the spread of the replicas,
    however many there are.
    """
    growth = np.asarray(carry["growth"], dtype=np.float64)[:, :-1]  # the scratch segment of the transient goes
    first_bad = np.asarray(carry["first_bad"])
    n_replicas, _, k = growth.shape
    blocks = layout.blocks()
    window = layout.n_segments
    left = first_bad != _NO_EXIT
    if left.any():
        first = int(first_bad[left].min())
        window = (first - layout.transient) // layout.per
        warnings.warn(
            f"{int(left.sum())} of {n_replicas} replicas left the float range or the map's domain ({exits}), "
            f"the first after {(first - layout.transient) * dt} steps past the transient: every "
            "replica's exponent is computed over those steps, so that none is selected out; shorten the run, "
            "rescale the state, or use float64 to read more of it",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    kept, blocks = growth[:, :window], blocks[:window]
    ends = layout.transient + np.cumsum(blocks)  # the block after each segment
    until = int(ends[-1]) * dt if window else layout.transient * dt
    if window == 0:
        nan = np.full(k, np.nan)
        return LyapunovEstimate(
            nan,
            nan,
            np.full((n_replicas, k), np.nan),
            np.full((0, k), np.nan),
            np.zeros(0, int),
            layout.transient * dt,
            until,
            nan,
            nan,
        )
    steps = (ends[-1] - layout.transient) * dt
    per_replica = kept.sum(axis=1) / steps
    n_kept = min(n_records, window)  # segment ends spread evenly over the window, its end the last
    idx = -(-np.arange(1, n_kept + 1) * window // n_kept) - 1
    times = ends[idx] * dt
    running = np.cumsum(kept, axis=1)[:, idx] / ((ends[idx] - layout.transient) * dt)[None, :, None]
    history = running.mean(axis=0)
    exponents = per_replica.mean(axis=0)
    sums = np.cumsum(exponents)  # growth rates of the volume of the frame's first j + 1 columns, unsorted
    stderr, sums_stderr = _time_batch_stderrs(kept, blocks, dt, stacklevel + 1)
    stderr = np.where(np.isfinite(exponents), stderr, np.nan)
    sums_stderr = np.where(np.isfinite(sums), sums_stderr, np.nan)
    order = np.argsort(-exponents, kind="stable")
    return LyapunovEstimate(
        exponents[order],
        stderr[order],
        per_replica[:, order],
        history[:, order],
        times,
        layout.transient * dt,
        until,
        sums,
        sums_stderr,
    )


def _check_common(n_steps, transient, dt, n_replicas, n_records):
    return (
        check_int("n_steps", n_steps, minimum=1),
        check_int("transient", transient, minimum=0),
        check_int("dt", dt, minimum=1),
        check_int("n_replicas", n_replicas, minimum=1),
        check_int("n_records", n_records, minimum=1),
    )


def top_exponent(
    step: Callable[[Any, jax.Array], Any],
    x0: Any,
    key: jax.Array | int,
    n_steps: int,
    transient: int = 0,
    *,
    dt: int = 1,
    n_replicas: int = 1,
    n_records: int = 100,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> LyapunovEstimate:
    """Top Lyapunov exponent of ``x_{t+1} = step(x_t, k_t)`` by a renormalized tangent vector.

    ``v_{t+1} = J_t v_t`` with ``J_t`` the Jacobian of ``step(., k_t)`` at ``x_t``, computed by
    ``jax.jvp`` with the **same** key as the base step (the minibatch is shared); every ``dt``
    steps ``v`` is renormalized and ``log|v|`` accumulated (float64 when enabled, per-block
    sums otherwise), so exponents of +-10 per step neither overflow nor underflow.
    ``k_t = fold_in(fold_in(key, replica), t)``; the state may be any pytree (integer leaves,
    such as an optimizer's step count, are carried along but not differentiated).
    ``lambda = (1/(n - transient)) sum_{t >= transient} log(|v_{t+1}| / |v_t|)``, read over whole blocks of
    ``dt`` steps: ``transient`` is rounded up and ``n_steps`` down to multiples of ``dt`` (the estimate's
    ``transient`` and ``until`` are the steps read).
    ``progress``: a progress bar (``None``: on a terminal, for runs longer than 2 s), as for
    :func:`dynsim.simulate`; the run goes in calls of growing length, with no effect on the result.
    ``checkpoint``: a file (``.npz``) where the run saves its state every :data:`CHECKPOINT_SECONDS` and at
    the end, atomically; the same call again resumes from it, with the same result as a run never
    interrupted. A file from another run (arguments, step function, its constants, ``x0`` or key) is
    refused.
    """
    n_steps, transient, dt, n_replicas, n_records = _check_common(n_steps, transient, dt, n_replicas, n_records)
    return _run_tangent(
        step,
        x0,
        prng.as_key(key),
        n_steps,
        1,
        transient,
        dt,
        n_replicas,
        n_records,
        progress,
        "top_exponent",
        checkpoint,
    )


def spectrum(
    step: Callable[[Any, jax.Array], Any],
    x0: Any,
    key: jax.Array | int,
    n_steps: int,
    k: int,
    transient: int = 0,
    *,
    dt: int = 1,
    n_replicas: int = 1,
    n_records: int = 100,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> LyapunovEstimate:
    """The ``k`` largest Lyapunov exponents, descending, by the discrete QR method.

    A frame ``Q`` of ``k`` orthonormal tangent vectors is pushed by ``jax.jvp`` (vmapped over
    its columns, same key as the base step) and re-orthonormalized every ``dt`` steps by
    modified Gram-Schmidt with reorthogonalization; ``lambda_j = sum log|R_jj| / time``
    (Benettin et al. 1980; Shimada and Nagashima 1979). Column ``j`` converges to the
    ``j``-th exponent; over a finite run near-equal exponents can come out of order, so the
    columns' means over replicas are put in descending order (not each replica's values, which
    would bias the top of near-equal exponents up). Equal exponents are split by
    ``O(1/sqrt(n_steps))`` beyond the standard error; read them from ``partial_sums`` (see
    :class:`LyapunovEstimate`).

    **Cost and** ``dt``. Each tangent costs a Jacobian-vector product of the step (for SGD a
    Hessian-vector product), and the Gram-Schmidt makes about ``5 (k - 1)`` passes over the frame
    (``k (k - 1)`` projections, each reading two vectors and writing one): on the 200-200-200 nets
    of ``benchmarks/run.py`` (k = 8, 64 replicas, 2 CPU cores), pushing the tangents costs 22.5 plain
    steps, and with ``dt=1`` the orthonormalization 3.4 times as much again (98 plain steps in all; 29
    with ``dt=10``; ``benchmarks/RESULTS.md``). Between orthonormalizations the
    frame's condition number grows like ``exp((lambda_1 - lambda_k) dt)``; keep it well below
    ``1/eps`` of the state's dtype (``(lambda_1 - lambda_k) dt`` below about 8 in float32, 18 in
    float64) or the lower exponents are lost to rounding. A slowly rotating frame (SGD near a
    minimum, ``|lambda| << 1`` per step) allows ``dt`` in the tens.

    **Memory.** ``n_replicas (k + 1)`` copies of the state, and the log-growth summed on the device into
    at most :data:`MAX_SEGMENTS` consecutive segments of blocks per replica (52 MB in float32 for 400
    replicas and k = 8, however long the run): errors, history and the window before a replica leaves
    the float range are read at that resolution, which is block by block up to 4096 blocks.

    The program is compiled once per ``step`` function (by identity; a new lambda on every call
    compiles again), state shapes, ``k``, ``dt``, the number of segments and ``n_replicas``: a second
    call with the same step function from another start or key reuses it. ``progress`` and ``checkpoint``
    as for :func:`top_exponent`.
    """
    n_steps, transient, dt, n_replicas, n_records = _check_common(n_steps, transient, dt, n_replicas, n_records)
    k = check_int("k", k, minimum=1)
    return _run_tangent(
        step, x0, prng.as_key(key), n_steps, k, transient, dt, n_replicas, n_records, progress, "spectrum", checkpoint
    )


def two_trajectory(
    step: Callable[[Any, jax.Array], Any],
    x0: Any,
    key: jax.Array | int,
    n_steps: int,
    *,
    d0: float | None = None,
    transient: int = 0,
    dt: int = 1,
    n_replicas: int = 1,
    n_records: int = 100,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> LyapunovEstimate:
    """Top exponent without derivatives (Benettin et al. 1976), for maps with kinks (ReLU, clipping).

    A clone follows the base trajectory ``x_t`` with the same keys. Every ``dt`` steps the
    separation ``d`` is measured, ``log(d / delta)`` accumulated, and the clone pulled back along
    the separation to ``delta = d0 * max(1, |x_t|)``, a distance relative to the state's size:
    in floating point the separation must stay far above the rounding of ``x_t``
    (``eps |x_t|``), however far the state grows or shrinks. (A fixed distance fails once
    ``|x_t|`` outgrows it: on ``x' = (1 - 3.5 z^2) x`` it gave 18 for the exponent 0.255.)
    ``d0`` defaults to ``sqrt(eps)`` of the state's dtype, so ``delta`` resolves the separation
    to ``sqrt(eps)``. Biased if ``delta`` is not small relative to the scale of the
    nonlinearity. ``d0``, ``transient`` and the rest are keyword-only (``top_exponent``'s fifth
    positional argument is its transient).

    **The limit on** ``dt``. Over a block of ``dt`` steps the separation changes by about
    ``exp(lambda dt)``, from ``delta = d0 max(1, |x|)`` to ``d0 exp(lambda dt) max(1, |x|)``. It must stay far
    below the scale of the nonlinearity and far above the rounding of the state, ``eps |x|``: keep
    ``lambda dt`` well below ``log(1 / d0)`` and ``-lambda dt`` well below ``log(d0 / eps)``, both
    ``log(1 / eps) / 2`` with the default ``d0`` (about 8 in float32, 18 in float64), as ``(lambda_1 -
    lambda_k) dt`` for :func:`spectrum`. A block whose separation ends within ``16 eps |x|``
    (16 rounding units of the state) but not at 0 is an exit, as an overflow is
    (every replica read up to it, with a warning): ``log d`` is then mostly rounding. For ``|x| >= 1``
    that is a growth below ``log(16 eps / d0)`` per block, -5.2 in float32 with the default ``d0``. On
    ``tanh(3 x)``, whose exponent at its fixed point ``x* = 0.9949`` is ``log(3 (1 - x*^2)) = -3.49``,
    ``dt = 1`` reads it and ``dt = 5`` leaves float32's resolution in the first block (NaN).

    **A collapsed clone.** A clone that lands exactly on its base trajectory (``d = 0``) grows by
    ``log 0 = -inf``: that replica's exponent is ``-inf``, a value, as a tangent annihilated by a zero
    Jacobian is for :func:`top_exponent` (a map that sends a neighbourhood to one point, such as a clip
    or a constant branch, has exponent ``-inf`` there). Its clone goes on at distance ``delta`` along its
    previous direction, so the other replicas and the window read are unaffected; a warning counts such
    replicas, since on a one-to-one map ``d = 0`` is rounding (``dt`` beyond its limit).
    ``progress`` and ``checkpoint`` as for :func:`top_exponent`; compiled once per ``step`` function, as
    :func:`spectrum`.
    """
    n_steps, transient, dt, n_replicas, n_records = _check_common(n_steps, transient, dt, n_replicas, n_records)
    key = prng.as_key(key)
    leaves, _, is_float = _split_state(x0)
    _check_step(step, x0)
    if d0 is None:
        dtype = jnp.result_type(*[leaf for leaf, f in zip(leaves, is_float) if f])
        d0 = float(np.sqrt(np.finfo(dtype).eps))
    d0 = check_positive("d0", d0)
    n_blocks, transient_blocks = _blocks(n_steps, dt, transient)
    run_file = None
    if checkpoint is not None:
        config = {"run": "two_trajectory", "n_steps": n_steps, "transient": transient, "dt": dt}
        run_file = _run_file(checkpoint, {**config, "n_replicas": n_replicas, "d0": d0}, step, x0, key)
    step = _as_static(step)
    layout = _Segments.of(n_blocks, transient_blocks)
    carry = _separation_start(x0, _replica_keys(key, n_replicas), d0, layout.n_segments)
    carry = _run_in_calls(
        lambda c, a, b: _separation_advance(step, c, a, b, d0, dt, *layout.traced()),
        carry,
        n_blocks,
        dt * n_replicas,
        progress,
        "two_trajectory",
        run_file,
    )
    exits = (
        f"a non-finite state, or a clone within {_CLONE_RESOLUTION} rounding units of it: a contraction over "
        f"dt={dt} steps beyond the clone's resolution, see two_trajectory; lower dt"
    )
    estimate = _summarise({**carry, "growth": carry["growth"][:, :, None]}, layout, dt, n_records, exits=exits)
    collapsed = np.isneginf(estimate.per_replica[:, 0])
    if collapsed.any():
        warnings.warn(
            f"{int(collapsed.sum())} of {n_replicas} replicas' clones landed exactly on their base trajectory "
            "(d = 0): their exponent is -inf, that of a map that collapses nearby points; on a one-to-one map this "
            f"is rounding, a contraction over dt={dt} steps beyond the clone's resolution: lower dt, or use float64",
            RuntimeWarning,
            stacklevel=2,
        )
    return estimate


_CLONE_RESOLUTION = 16
"""A separation ``0 < d <= 16 eps |x|`` of :func:`two_trajectory`'s clone is an exit: each unit ``eps |x|`` of
rounding (of the two states, and of the step's arithmetic, several units) is then 1/16 of ``d`` or more, and
``log d`` is off by as much."""


def _separation(size, d0):
    """The clone's distance ``d0 max(1, |x|)``, relative to the size ``|x|`` of the state's float leaves."""
    return d0 * jnp.maximum(1.0, size)


@functools.partial(jax.jit, static_argnames=("n_segments",))
def _separation_start(x0, keys, d0, n_segments):
    """Per replica (one per key) of :func:`two_trajectory`: the state, its clone at distance ``delta`` in a
    random direction, ``delta``, the run key, and zero buffers for the log-growth of ``n_segments`` segments."""
    floats, with_floats = _float_parts(x0)
    like = floats(x0)

    def one_replica(rkey):
        dir_key, run_key = jax.random.split(rkey)
        u = jax.random.normal(dir_key, (1, sum(leaf.size for leaf in like)), jnp.result_type(*like))
        delta = _separation(scaled_norm(like), d0)
        u = [leaf[0] for leaf in _frame_from_rows(delta * u / jnp.linalg.norm(u), like)]
        clone = with_floats([x + v for x, v in zip(like, u)], x0)
        return {"x": x0, "y": clone, "delta": delta, "key": run_key, **_growth_buffers(n_segments, None)}

    return jax.vmap(one_replica)(keys)


@functools.partial(jax.jit, static_argnames=("step", "dt"), donate_argnames=("carry",))
def _separation_advance(step, carry, a, b, d0, dt, transient, per):
    """Blocks ``a <= i < b`` of every replica of :func:`two_trajectory`: ``dt`` steps of the state and its clone
    (same keys), then ``log(d / delta)`` added to block ``i``'s segment and the clone pulled back to the new
    ``delta``. Compiled once per ``step``, state shapes, ``dt``, number of segments and replicas."""
    floats, with_floats = _float_parts(jax.tree_util.tree_map(lambda leaf: leaf[0], carry["x"]))

    def one_replica(x, y, delta, growth, first_bad, run_key):
        def block(i, c):
            x, y, delta, growth, first_bad = c
            before = [yl - xl for xl, yl in zip(floats(x), floats(y))]  # the clone's direction, length delta

            def one_step(j, c):
                x, y = c
                skey = prng.step_key(run_key, i * dt + j)
                return step(x, skey), step(y, skey)

            x, y = jax.lax.fori_loop(0, dt, one_step, (x, y))
            xf = floats(x)
            sep = [yl - xl for xl, yl in zip(xf, floats(y))]
            d, size = scaled_norm(sep), scaled_norm(xf)
            new_delta = _separation(size, d0)
            # a collapsed clone (d = 0) has no direction of its own: it goes on along its previous one
            sep = [jnp.where(d > 0, sl, bl) for sl, bl in zip(sep, before)]
            scale = new_delta / jnp.where(d > 0, d, delta)
            y = with_floats([(xl + sl * scale).astype(xl.dtype) for xl, sl in zip(xf, sep)], y)
            # 0 < d within a few rounding units of the state: log d is rounding, an exit (NaN)
            eps = jnp.finfo(d.dtype).eps
            unresolved = (d > 0) & (d <= _CLONE_RESOLUTION * eps * size)
            value = jnp.where(unresolved, jnp.nan, jnp.log(d) - jnp.log(delta))
            growth, first_bad = _record_growth(growth, first_bad, i, value, transient, per)
            return x, y, new_delta, growth, first_bad

        return jax.lax.fori_loop(a, b, block, (x, y, delta, growth, first_bad))

    x, y, delta, growth, first_bad = jax.vmap(one_replica)(
        carry["x"], carry["y"], carry["delta"], carry["growth"], carry["first_bad"], carry["key"]
    )
    return {**carry, "x": x, "y": y, "delta": delta, "growth": growth, "first_bad": first_bad}
