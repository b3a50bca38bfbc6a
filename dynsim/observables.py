"""Streaming observables: what :func:`dynsim.simulate` measures along each trajectory.

Memory is O(ensemble), never O(steps x ensemble), except for the records a user asks for.
Each observable becomes one or more data variables of the result, named after its key in
``observables={...}`` (``key`` and ``key_<suffix>``). Two families:

* **records**: a function of the current state, stored at ``t = 0, k, 2k, ...`` and at
  ``n_steps`` when ``record_every=k`` is given (dimension ``time``), else only at the end:
  :func:`log_distance`, :func:`loss`, :func:`grad_norm`, :func:`trajectory`;
  :func:`final_state` is always the end value;
* **reducers**: a running accumulator updated after every step: :func:`time_average`,
  :func:`iterate_average`, :func:`histogram`, :func:`converged`, :func:`diverged`.

A trajectory that diverges (non-finite state, or beyond the bound of :func:`diverged`) is
frozen at its last finite state by the engine, so the state and every reduction of it stay
finite; the step at which it diverged is kept (``diverged``). A quantity computed from that
state can still overflow (the loss or gradient of a state of size 1e18 in float32): such
records are ``inf`` or NaN, and the ``diverged`` output says which trajectories they belong to.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._tree import compensated, kahan_add
from dynsim._validate import LEARNING_RATE_NAMES, check_int, check_nonnegative, check_positive, check_real
from dynsim.problems.base import Problem, objective

__all__ = [
    "View",
    "Context",
    "Observable",
    "ObservableError",
    "final_state",
    "trajectory",
    "log_distance",
    "log_norm_squared",
    "loss",
    "grad_norm",
    "sharpness",
    "gradient_noise",
    "progress",
    "time_average",
    "time_batches",
    "batch_means_stderr",
    "batch_correlation",
    "warn_if_correlated",
    "correlated_batches_message",
    "warn_if_drifting",
    "iterate_average",
    "histogram",
    "histogram2d",
    "last_values",
    "converged",
    "ball_exit",
    "hitting_time",
    "diverged",
    "record_times",
    "from_name",
    "NAMED",
]


class View(NamedTuple):
    """What an observable sees of one trajectory at one time."""

    params: Any
    state: Any
    hp: Mapping[str, Any]
    data: Any
    problem: Problem | None


class Context(NamedTuple):
    """Static facts about the run."""

    n_steps: int
    record_every: int | None


class Observable(NamedTuple):
    """A streaming measurement.

    Records: ``record(view) -> value`` (any pytree of arrays), stored at every record time
    (``every_record=True``) or only at the end.

    Reducers: ``init(view, ctx) -> acc`` at ``t = 0``, ``update(acc, view, t, ctx) -> acc``
    after step ``t`` (1-based), and ``finalize(acc, status, ctx) -> {suffix: entry}`` on
    the host, with NumPy arrays whose leading axis runs over trajectories. ``status`` holds
    ``"diverged_step"`` (-1 if never) and ``"cell"`` (the grid cell's index, in C order). An
    entry is ``(dims, array)`` or ``(dims, array, coords)``; ``dims`` names the trailing axes.

    :func:`dynsim.simulate` checks the contract before the run (on one trajectory's outputs) and
    raises :class:`ObservableError` naming the observable that breaks it.

    ``bound``: a trajectory whose parameters exceed it in absolute value counts as
    diverged. ``check(dynamics, ctx)`` validates before compilation. ``config`` is stored in
    the result's attributes. ``diagnose(result, name, ctx) -> [message]`` reads the whole result
    (every chunk, shard and resumed part) once it is assembled; :func:`dynsim.simulate` warns each
    message (:func:`time_average`: cells whose batch means are correlated).
    """

    kind: str
    record: Callable[[View], Any] | None = None
    every_record: bool = True
    init: Callable[[View, Context], Any] | None = None
    update: Callable[[Any, View, Any, Context], Any] | None = None
    finalize: Callable[[Any, Mapping[str, np.ndarray], Context], Mapping[str, tuple]] | None = None
    bound: float | None = None
    check: Callable[[Any, Context], None] | None = None
    config: Mapping[str, Any] = MappingProxyType({})
    diagnose: Callable[[Any, str, Context], list[str]] | None = None


class ObservableError(TypeError):
    """An observable that does not keep the contract of :class:`Observable`: a reducer without ``update`` or
    ``finalize``, an ``update`` that changes its accumulator's structure, shapes or dtypes, a ``finalize``
    that returns other than ``{suffix: (dims, values[, coords])}`` with one row of ``values`` per trajectory.
    Raised by :func:`dynsim.simulate` before the run, naming the observable."""


def _flat(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]) if leaves else jnp.zeros((0,))


def _real(value) -> jax.Array:
    """``value`` as an array of a real floating dtype: a boolean (an indicator) or an integer (a count) becomes
    the default float, so that it can be averaged and compared with bin edges; a float keeps its dtype."""
    value = jnp.asarray(value)
    return value if jnp.issubdtype(value.dtype, jnp.inexact) else value.astype(jnp.result_type(float))


def _difference(params, point):
    """``params - point`` leaf by leaf, in a floating dtype (an integer or boolean leaf is a number like any
    other: ``4 - 0.5`` is 3.5, and squares do not overflow); a scalar leaf of ``point`` broadcasts, any other
    shape must match."""

    def leaf(p, q):
        if np.ndim(q) and np.shape(q) != np.shape(p):
            raise ValueError(f"the point has a leaf of shape {np.shape(q)} where the parameters have {np.shape(p)}")
        dtype = jnp.result_type(p, float)
        return jnp.asarray(p, dtype) - jnp.asarray(q, dtype)

    return jax.tree_util.tree_map(leaf, params, point)


def _point_config(point) -> list:
    """A point (any pytree) for a result's attributes: one nested list per leaf, whatever their shapes."""
    return [np.asarray(leaf, dtype=float).tolist() for leaf in jax.tree_util.tree_leaves(point)]


def _distance(params, point) -> jax.Array:
    """``|params - point|``, the Euclidean norm over all leaves."""
    return jnp.sqrt(jnp.sum(_flat(_difference(params, point)) ** 2))


def _first_time(steps, event, t):
    """``t`` where ``event`` happens for the first time (``steps`` still -1), else ``steps`` unchanged."""
    return jnp.where((steps < 0) & event, t, steps).astype(jnp.int32)


def log_norm_squared(tree) -> jax.Array:
    """``log sum_i x_i^2`` over all leaves, computed as ``2 e log 2 + log sum (x_i / 2^e)^2``, ``2^e`` the power
    of two just above ``m = max|x_i|``.

    The scaling keeps it exact where ``x_i^2`` itself would underflow (``|x| < 1e-19`` in float32) or overflow.
    It divides by two normal powers of two, ``2^(e//2)`` and ``2^(e - e//2)``, since a division by ``m`` is
    compiled as a product with ``1/m``, which is subnormal, and flushed to zero by the CPU, once
    ``m > 8.5e37`` in float32. It is ``-inf`` only when every ``x_i`` is 0 (or subnormal, which the CPU flushes
    to zero).
    """
    x = _flat(tree)
    m = jnp.max(jnp.abs(x))
    _, e = jnp.frexp(jnp.where(m > 0, m, 1))  # m = f 2^e, 1/2 <= f < 1
    half = e // 2
    scaled = x / jnp.exp2(half.astype(x.dtype)) / jnp.exp2((e - half).astype(x.dtype))
    return jnp.where(m > 0, jnp.log(jnp.sum(scaled**2)) + (2 * np.log(2)) * e.astype(x.dtype), -jnp.inf)


def _need_point(point, what: str):
    if point is None:
        raise ValueError(f"{what}: point is None (the problem has no known fixed point); give one")
    return point


def _params(view: View):
    return view.params


def final_state() -> Observable:
    """The parameters at the end of the run (one variable per leaf)."""
    return Observable("final_state", record=_params, every_record=False)


def trajectory(fn: Callable[[Any], Any] | None = None) -> Observable:
    """``fn(params)`` (default: the parameters) at every record time: a trajectory record."""
    if fn is None:
        return Observable("trajectory", record=_params)
    return Observable("trajectory", record=lambda v: fn(v.params))


def log_distance(point) -> Observable:
    """``log |x_t - point|^2`` (Euclidean norm over all parameters), in log space.

    The ensemble mean of this record is ``m_w(t) = E log|w_t - w*|^2`` of seed 004, eq. (9);
    half of its slope is the Lyapunov exponent. See :func:`log_norm_squared` for the scaling
    that avoids underflow; an exact hit of the point gives ``-inf``.
    """
    point = _need_point(point, "log_distance")
    return Observable(
        "log_distance",
        record=lambda v: log_norm_squared(_difference(v.params, point)),
        config={"point": _point_config(point)},
    )


def _problem_of(problem: Problem | None, view: View) -> Problem:
    return problem if problem is not None else view.problem


def _check_objective(problem: Problem | None, what: str):
    def check(dynamics, ctx: Context):
        p = problem if problem is not None else getattr(dynamics, "problem", None)
        if p is None:
            raise ValueError(f"{what}: the dynamics has no problem; pass one ({what}(problem))")
        if p.kind == "stream":
            raise ValueError(
                f"{what}: problem {p.name!r} is a stream (n_data=None) and has no finite training "
                "objective; give it a finite n_data"
            )

    return check


def _with(hp, overrides):
    return {**hp, **overrides} if overrides else hp


def loss(problem: Problem | None = None, **overrides) -> Observable:
    """The training objective ``F(theta) = (1/N) sum_i l(theta; x_i)`` (the loss of a data-free problem).

    ``problem`` defaults to the dynamics' own; the data are the trajectory's (shared or
    per-replica). Keyword arguments override hyperparameters for the measurement only, e.g.
    ``loss(weight_decay=0.0)`` for the loss without its weight-decay term.
    """
    return Observable(
        "loss",
        record=lambda v: objective(_problem_of(problem, v), v.params, v.data, _with(v.hp, overrides)),
        check=_check_objective(problem, "loss"),
        config=dict(overrides),
    )


def grad_norm(problem: Problem | None = None, **overrides) -> Observable:
    """``|grad F(theta)|``, the Euclidean norm of the full training gradient (overrides as in :func:`loss`)."""

    def record(v: View):
        hp = _with(v.hp, overrides)
        g = jax.grad(lambda p: objective(_problem_of(problem, v), p, v.data, hp))(v.params)
        return jnp.sqrt(jnp.sum(_flat(g) ** 2))

    return Observable("grad_norm", record=record, check=_check_objective(problem, "grad_norm"), config=dict(overrides))


def _subset(data, m):
    return data if m is None else jax.tree_util.tree_map(lambda a: a[:m], data)


def sharpness(problem: Problem | None = None, *, m: int | None = None, n_iter: int = 20, **overrides) -> Observable:
    """Top Hessian eigenvalue of the training objective (Lanczos, ``n_iter`` steps, from a fixed start vector),
    on the first ``m`` examples of the data (all by default); overrides as in :func:`loss`."""
    from dynsim.curvature import sharpness as top_eigenvalue

    n_iter = check_int("n_iter", n_iter, minimum=1)

    def record(v: View):
        hp = _with(v.hp, overrides)
        data = _subset(v.data, m)
        p = _problem_of(problem, v)
        return top_eigenvalue(lambda q: objective(p, q, data, hp), v.params, n_iter=n_iter).value

    return Observable(
        "sharpness",
        record=record,
        check=_check_objective(problem, "sharpness"),
        config={"m": m, "n_iter": n_iter, **overrides},
    )


def gradient_noise(problem: Problem | None = None, *, m: int | None = None, **overrides) -> Observable:
    """Per-example gradient noise ``sigma(theta) = sqrt((1/m) sum_i |grad l_i - g_bar|^2)`` on the first ``m``
    examples (seed 000, eq. 1; see :func:`dynsim.curvature.gradient_noise`); overrides as in :func:`loss`."""
    from dynsim.curvature import gradient_noise as noise

    def record(v: View):
        hp = _with(v.hp, overrides)
        p = _problem_of(problem, v)
        return noise(lambda q, s: p.loss(q, s, hp), v.params, _subset(v.data, m)).sigma

    check_objective = _check_objective(problem, "gradient_noise")

    def check(dynamics, ctx: Context):
        check_objective(dynamics, ctx)
        p = problem if problem is not None else dynamics.problem
        if p.batch_coupled:
            raise ValueError(
                f"gradient_noise: problem {p.name!r} couples the examples of a batch (batch_coupled=True, "
                "e.g. batch normalization), so per-example gradients are undefined"
            )

    return Observable("gradient_noise", record=record, check=check, config={"m": m, **overrides})


def _learning_rate(hp, what: str):
    for name in LEARNING_RATE_NAMES:
        if name in hp:
            return hp[name]
    raise ValueError(f"{what}: the dynamics has no learning rate (a hyperparameter named one of {LEARNING_RATE_NAMES})")


def progress(problem: Problem | None = None, *, taus: Sequence[float] | None = None, **overrides) -> Observable:
    """Seed 001's diagnostics of the GD step ``theta -> theta - lr grad F(theta)`` at each record time.

    ``lr`` is the cell's learning rate (hyperparameter ``lr`` or ``learning_rate``), or the
    ``lr=`` override, which probes a step of that size; ``F`` the training objective (other
    overrides as in :func:`loss`). Outputs ``key_relative_progress``
    (``RP``, Def. 1), ``key_directional_smoothness`` (``L(theta; lr grad F)``, Def. 2) and
    ``key_gradient_alignment`` (``<g', g>/|g|^2``), see :class:`dynsim.curvature.Progress`;
    with ``taus``, also ``key_profile``, ``L(theta; lr tau grad F)`` for each ``tau`` (Exp. 5,
    dimension ``key_profile_dim0``). Two gradients per record, plus one per ``tau``.
    """
    from dynsim.curvature import gd_progress, smoothness_profile

    taus = None if taus is None else np.asarray(taus, dtype=float)
    if taus is not None and (taus.ndim != 1 or taus.size == 0 or not np.all(taus > 0)):
        raise ValueError(f"taus must be a non-empty 1-D sequence of positive numbers, got {taus!r}")

    def record(v: View):
        hp = _with(v.hp, overrides)
        p = _problem_of(problem, v)
        lr = _learning_rate(hp, "progress")  # an lr override probes a step of that size (it was ignored)

        def fn(q):
            return objective(p, q, v.data, hp)

        out = gd_progress(fn, v.params, lr)
        values = {
            "relative_progress": out.relative_progress,
            "directional_smoothness": out.directional_smoothness,
            "gradient_alignment": out.gradient_alignment,
        }
        if taus is not None:
            values["profile"] = smoothness_profile(fn, v.params, lr, taus)
        return values

    check_objective = _check_objective(problem, "progress")

    def check(dynamics, ctx: Context):
        check_objective(dynamics, ctx)
        names = dynamics.hyperparams
        if names is not None and not any(n in names for n in LEARNING_RATE_NAMES):
            raise ValueError(
                f"progress: dynamics {dynamics.name!r} has no learning rate (one of {LEARNING_RATE_NAMES})"
            )

    return Observable(
        "progress",
        record=record,
        check=check,
        config={"taus": None if taus is None else taus.tolist(), **overrides},
    )


def time_batches(n_steps: int, n_batches: int, discard: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """How :func:`time_average` splits steps ``discard+1..n_steps`` into ``n_batches`` consecutive batches.

    Step ``t`` is in batch ``floor((t - discard - 1) n_batches / T)``, ``T = n_steps - discard``, so batch
    ``b`` starts at ``discard + 1 + ceil(b T / n_batches)`` (sizes differ by at most one). Returns
    ``(counts, bounds)``: the steps in each batch, and the first step of each batch followed by
    ``n_steps + 1`` (batch ``b`` holds ``bounds[b] <= t < bounds[b+1]``), in exact integer arithmetic.
    """
    n_steps, n_batches, discard = int(n_steps), int(n_batches), int(discard)
    total = n_steps - discard
    bounds = np.array([discard + 1 + -(-b * total // n_batches) for b in range(n_batches + 1)], dtype=np.int64)
    return np.diff(bounds), bounds


def batch_means_stderr(means: np.ndarray, axis: int = -1) -> np.ndarray:
    """Batch-means standard error ``sd(batch means) / sqrt(n_batches)`` along ``axis``.

    ``inf`` where a batch mean is not finite. Valid when a batch is much longer than the
    correlation time; :func:`batch_correlation` tells when it is not.
    """
    finite = np.all(np.isfinite(means), axis=axis)
    with np.errstate(invalid="ignore"):
        spread = means.std(axis=axis, ddof=1) / np.sqrt(means.shape[axis])
    return np.where(finite, spread, np.inf)


def batch_correlation(means: np.ndarray, axis: int = -1) -> np.ndarray:
    """Lag-1 autocorrelation ``r`` of consecutive batch means along ``axis``.

    Near ``-1/n_batches`` when batches are much longer than the correlation time. A positive
    ``r`` means neighbouring batches share fluctuations and :func:`batch_means_stderr` is too
    small, by about ``sqrt((1 + r) / (1 - r))`` (an AR(1) law of the batch means).
    """
    m = np.moveaxis(np.asarray(means, dtype=np.float64), axis, -1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        d = m - m.mean(axis=-1, keepdims=True)
        return (d[..., 1:] * d[..., :-1]).sum(axis=-1) / (d**2).sum(axis=-1)


CORRELATED_BATCHES = 0.1
"""Mean lag-1 autocorrelation of batch means above which :func:`warn_if_correlated` warns
(standard errors then about 10% or more too small)."""


def warn_if_correlated(
    means: np.ndarray,
    axis: int,
    what: str,
    stacklevel: int = 2,
    *,
    groups: np.ndarray | None = None,
    group_name: str = "cells",
) -> bool:
    """Warn when the batch means of a set of series are correlated (:func:`batch_correlation`).

    ``r`` is computed for every series (``means`` along ``axis``) and pooled within each group (``groups``
    labels the first axis of ``r``, i.e. of ``means`` without ``axis``; one group if ``None``); see
    :func:`correlated_batches_message` for when a group is flagged. Series that are not independent of each
    other (the ``k`` exponents of one frame) belong in different groups. One warning names the number of
    flagged groups (``group_name``) and the worst. Returns whether it warned.
    """
    n_batches = np.shape(means)[axis]
    if n_batches < 8:
        return False
    r = batch_correlation(means, axis)
    message = correlated_batches_message(r, n_batches, what, groups=groups, group_name=group_name)
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)
    return message is not None


def correlated_batches_message(
    r: np.ndarray,
    n_batches: int,
    what: str,
    *,
    groups: np.ndarray | None = None,
    group_name: str = "cells",
    describe: Callable[[Any], str] | None = None,
) -> str | None:
    """The warning of :func:`warn_if_correlated` for the lag-1 autocorrelations ``r`` of series of
    ``n_batches`` batch means (NaN: no series), or None where no group is flagged.

    ``groups`` labels the first axis of ``r`` (one group if ``None``). A group is flagged when its mean
    ``r`` exceeds :data:`CORRELATED_BATCHES` and lies more than three of its standard errors above the
    independent value ``-1/n_batches``; more for many groups, so that the chance of a false alarm among them
    all stays that of one group, 0.13%. The standard deviation of one ``r`` is the spread over the group's
    series, at least ``1/sqrt(n_batches)`` (its value for independent batches): one series is flagged only for
    ``r > 0.5`` with 32 batches. ``describe(label)`` names the worst group in the message.
    """
    r = np.asarray(r, dtype=np.float64)
    if n_batches < 8 or r.size == 0:
        return None
    r = r.reshape(len(r), -1) if r.ndim else r.reshape(1, 1)
    labels = np.zeros(len(r), int) if groups is None else np.asarray(groups)
    # every group at once: a grid of 1e5 cells is not a Python loop over 1e5 masks
    group_ids, group = np.unique(np.repeat(labels, r.shape[1]), return_inverse=True)
    n_groups = len(group_ids)
    finite = np.isfinite(r.ravel())
    values, group = r.ravel()[finite], group[finite]
    count = np.bincount(group, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(group, values, n_groups) / count
        var = (np.bincount(group, values**2, n_groups) - count * mean**2) / (count - 1)
        # each r has sd ~ 1/sqrt(n_batches) for independent batches: a floor for the spread of a few series
        sd = np.maximum(np.sqrt(np.where(count > 1, np.maximum(var, 0), 0)), 1 / np.sqrt(n_batches))
        # three standard errors for one group; for many, the level that keeps the chance of any false alarm
        # at that of one group (0.13%; Bonferroni): 4.3 for 100 cells, 5.0 for 25,000
        z = NormalDist().inv_cdf(1 - NormalDist().cdf(-3) / n_groups)
        flagged = (count > 0) & (mean > CORRELATED_BATCHES) & (mean + 1 / n_batches > z * sd / np.sqrt(count))
    if not np.any(flagged):
        return None
    worst = np.flatnonzero(flagged)[np.argmax(mean[flagged])]
    name = f" ({describe(group_ids[worst])})" if describe is not None else ""
    mean, size = float(mean[worst]), int(count[worst])
    series = f"over {size} series" if size > 1 else "of one series"
    where = f"; in {flagged.sum()} of {n_groups} {group_name}, the worst{name} shown" if n_groups > 1 else ""
    return (
        f"{what}: consecutive batch means are correlated (lag-1 autocorrelation {mean:.2f} {series}{where}): the "
        f"batches are not much longer than the correlation time, so the batch-means standard error is too "
        f"small (by about {np.sqrt((1 + mean) / (1 - mean)):.1f}x, or more); run longer or use fewer batches"
    )


DRIFTING_BATCHES = 4.0
"""``|t|`` of the trend of batch means above which :func:`warn_if_drifting` warns (by chance: about 4e-4 of
series of 32 stationary, independent batch means)."""


def warn_if_drifting(
    means: np.ndarray,
    axis: int,
    what: str,
    name: str = "series",
    remedy: str = "discard a longer transient or run longer",
    stacklevel: int = 2,
) -> bool:
    """Warn when batch means drift: a least-squares line through each series (``means`` along ``axis``) whose
    slope is more than :data:`DRIFTING_BATCHES` standard errors (from the residuals) from 0. The estimate then
    still depends on the run's length (an unfinished transient, a split of equal exponents that shrinks
    like ``1/sqrt(n)``), a bias its batch-means standard error leaves out. ``name`` names one series (the
    first axis of ``means`` without ``axis``, numbered from 1); ``remedy`` ends the message. Returns whether
    it warned."""
    m = np.moveaxis(np.asarray(means, dtype=np.float64), axis, -1)
    n = m.shape[-1]
    if n < 8 or m.size == 0:
        return False
    x = np.arange(n) - (n - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        centred = m - m.mean(axis=-1, keepdims=True)
        slope = (centred * x).sum(axis=-1) / (x**2).sum()
        residuals = centred - slope[..., None] * x
        t = np.atleast_1d(slope / np.sqrt((residuals**2).sum(axis=-1) / (n - 2) / (x**2).sum()))
    drifting = np.flatnonzero(np.isfinite(t) & (np.abs(t) > DRIFTING_BATCHES))
    if drifting.size == 0:
        return False
    worst = drifting[np.argmax(np.abs(t[drifting]))]
    which = f"{name}{'s' if drifting.size > 1 else ''} {', '.join(str(i + 1) for i in drifting)}"
    warnings.warn(
        f"{what}: the batch means of {which} drift over the run (trend {t[worst]:+.1f} standard errors over {n} "
        f"batches, {name} {worst + 1}): the estimate still changes with the run's length, a bias its standard "
        f"error leaves out; {remedy}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def time_average(
    fn: Callable[[Any], Any], *, n_batches: int = 32, discard: int = 0, on: str = "params", keep_batches: bool = False
) -> Observable:
    """``(1/T) sum_{t=discard+1}^{n_steps} fn(theta_t)`` per trajectory, with a batch-means standard error.

    The ``T = n_steps - discard`` steps are split into ``n_batches`` consecutive batches;
    ``stderr = sd(batch means) / sqrt(n_batches)``, valid when a batch is much longer than
    the correlation time. Sums are compensated (Kahan), so float32 runs of 1e7 steps keep
    their precision. Outputs ``key``, ``key_stderr`` and ``key_batch_correlation``, the lag-1
    autocorrelation of the trajectory's batch means (:func:`batch_correlation`; near
    ``-1/n_batches`` when the standard error is valid, NaN for a diverged trajectory). Once the run
    is assembled, one warning names the cells whose batch means are correlated, the worst by its
    coordinates (:func:`correlated_batches_message`; needs ``n_batches >= 8``). Frozen (diverged)
    trajectories keep adding their last finite value. A value that overflows makes the average
    ``inf`` (and its standard error ``inf``), never NaN (a trajectory whose start is already NaN, with no finite
    value to keep, averages to NaN). A boolean ``fn`` (an indicator) averages to the fraction
    of steps where it holds.

    ``on="view"`` calls ``fn`` with the whole :class:`View` (state, hyperparameters, data)
    instead of the parameters. ``keep_batches=True`` also outputs the batch means
    (``key_batches``, dimension ``key_batches_batch`` holding each batch's last step): with one batch
    per epoch and ``fn`` the minibatch loss, seed 000's eq. (2) epoch-mean loss.
    """
    n_batches = check_int("n_batches", n_batches, minimum=2)
    discard = check_int("discard", discard, minimum=0)
    if on not in ("params", "view"):
        raise ValueError(f"on must be 'params' or 'view', got {on!r}")
    evaluate = (lambda view: fn(view.params)) if on == "params" else fn

    def check(dynamics, ctx: Context):
        if ctx.n_steps - discard < n_batches:
            raise ValueError(
                f"time_average: n_steps - discard = {ctx.n_steps - discard} must be >= n_batches = {n_batches}"
            )

    def init(view: View, ctx: Context):
        value = _real(evaluate(view))
        zeros = jnp.zeros((n_batches, *value.shape), value.dtype)
        return {"sum": zeros, "comp": zeros, "run": zeros[0], "run_comp": zeros[0]}

    def update(acc, view: View, t, ctx: Context):
        # Kahan summation into a running batch sum, stored into its slot when the batch ends. t is
        # the same for every trajectory, so the end of a batch is a scalar condition and the store
        # a real branch (not a select): each step touches two numbers per value, not 2 n_batches.
        value = _real(evaluate(view))
        run, run_comp = acc["run"], acc["run_comp"]
        new, new_comp = kahan_add(run, run_comp, value.astype(run.dtype))
        active = t > discard
        run = jnp.where(active, new, run)
        run_comp = jnp.where(active, new_comp, run_comp)
        # the batch of step t from the batches' last steps, never from t * n_batches (an int32 product that
        # overflows past 2**31, at 6.7e7 steps with 32 batches)
        last = jnp.asarray(time_batches(ctx.n_steps, n_batches, discard)[1][1:] - 1, jnp.int32)
        b = jnp.minimum(jnp.sum(t > last), n_batches - 1)
        ends = jnp.any(t == last)

        def store(a):
            return {
                "sum": a["sum"].at[b].set(run),
                "comp": a["comp"].at[b].set(run_comp),
                "run": jnp.zeros_like(run),
                "run_comp": jnp.zeros_like(run_comp),
            }

        acc = {**acc, "run": run, "run_comp": run_comp}
        return jax.lax.cond(active & ends, store, lambda a: a, acc)

    def finalize(acc, status, ctx: Context):
        counts, _ = time_batches(ctx.n_steps, n_batches, discard)
        sums = np.asarray(acc["sum"], dtype=np.float64) - np.asarray(acc["comp"], dtype=np.float64)
        shape = (1, n_batches) + (1,) * (sums.ndim - 2)
        means = sums / counts.reshape(shape)
        total = sums.sum(axis=1) / counts.sum()
        stderr = batch_means_stderr(means, axis=1)
        correlation = batch_correlation(means, axis=1)
        frozen = np.asarray(status["diverged_step"]) >= 0  # a frozen trajectory's means are not a series
        correlation[frozen] = np.nan
        extra = tuple(f"dim{i}" for i in range(sums.ndim - 2))
        out = {"": (extra, total), "stderr": (extra, stderr), "batch_correlation": (extra, correlation)}
        if keep_batches:
            ends = discard + np.cumsum(counts)
            out["batches"] = (("batch", *extra), means, {"batch": ends})
        return out

    def diagnose(result, name: str, ctx: Context) -> list[str]:
        r = result.get(f"{name}_batch_correlation")
        if r is None:  # a checkpoint written before the output existed
            return []
        lead = r.dims.index("replica")
        cells, shape = r.dims[:lead], r.shape[:lead]

        def describe(cell) -> str:
            values = (r[d].values[i] for d, i in zip(cells, np.unravel_index(cell, shape)))
            return ", ".join(f"{d} = {v:g}" if np.isreal(v) else f"{d} = {v}" for d, v in zip(cells, values))

        counts, _ = time_batches(ctx.n_steps, n_batches, discard)
        message = correlated_batches_message(
            r.values.reshape(math.prod(shape), -1),
            n_batches,
            f"time_average {name!r} ({counts.min()}-step batches)",
            groups=np.arange(math.prod(shape)),
            describe=describe,
        )
        return [] if message is None else [message]

    return Observable(
        "time_average",
        init=init,
        update=update,
        finalize=finalize,
        check=check,
        config={"n_batches": n_batches, "discard": discard, "on": on},
        diagnose=diagnose,
    )


def record_times(n_steps: int, record_every: int | None) -> np.ndarray:
    """The steps at which records are stored: ``0, k, 2k, ..., n_steps`` (``k = record_every``), or
    ``0, n_steps`` without ``record_every``."""
    if record_every is None:
        return np.array([0, n_steps])
    times = np.arange(0, n_steps + 1, record_every)
    return times if times[-1] == n_steps else np.append(times, n_steps)


def _average_times(ctx: Context) -> np.ndarray:
    return record_times(ctx.n_steps, ctx.record_every)[1:]  # an average needs at least one step


def iterate_average(fn: Callable[[Any], Any] | None = None, *, power: float = 1.0) -> Observable:
    """``fn(xbar_t)``, ``xbar_t = sum_{j=1}^t j^p theta_{j-1} / sum_{j=1}^t j^p`` the weighted average of the iterates.

    ``power = p = 1`` is the output of seed 002's Thm 4.4.2 and Thm 4.5.1 (``xbar_k = sum_j j x_{j-1}
    / sum_j j``), ``p = 0`` the uniform (Polyak-Ruppert) average of ``theta_0, ..., theta_{t-1}``.
    ``fn`` (default: the parameters, flattened) must return one array; evaluate the loss at the
    average here, since the loss of the average is not the average of the loss. Stored at
    ``t = k, 2k, ..., n_steps`` when ``record_every=k`` is given, else at ``n_steps``: output
    ``key`` with dimension ``key_step``. The average is kept as a running mean,
    ``xbar <- xbar + (w_t / W_t)(theta_t - xbar)``, with ``W_t`` and ``xbar`` both summed with compensation
    (Kahan), so float32 runs of many steps keep their precision (uncompensated, ``W_t`` stops growing at
    ``2**24`` steps and updates below ``xbar``'s rounding unit are lost: 0.44 for 0.5 after 2 x 10^7 steps).
    """
    power = check_real("power", power)
    evaluate = fn or _flat

    def weight(t):
        return (jnp.asarray(t, jnp.result_type(float)) + 1) ** power

    def init(view: View, ctx: Context):
        avg = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.result_type(float)), view.params)
        value = jnp.asarray(evaluate(avg))
        buf = jnp.full((len(_average_times(ctx)), *value.shape), jnp.nan, jnp.result_type(value, float))
        zeros = jax.tree_util.tree_map(jnp.zeros_like, avg)
        total = weight(0)
        return {"avg": avg, "avg_comp": zeros, "total": total, "total_comp": jnp.zeros_like(total), "buf": buf}

    def update(acc, view: View, t, ctx: Context):
        times = _average_times(ctx)
        slot = jnp.searchsorted(jnp.asarray(times), t)
        recorded = jax.lax.cond(
            jnp.asarray(times)[jnp.minimum(slot, len(times) - 1)] == t,
            lambda b: b.at[slot].set(jnp.asarray(evaluate(compensated(acc["avg"], acc["avg_comp"])), b.dtype)),
            lambda b: b,
            acc["buf"],
        )
        w = weight(t)
        total, total_comp = kahan_add(acc["total"], acc["total_comp"], w)
        share = w / (total - total_comp)

        def move(a, c, x):  # a - c is the average so far
            return kahan_add(a, c, share.astype(a.dtype) * (jnp.asarray(x, a.dtype) - (a - c)))

        moved = jax.tree_util.tree_map(move, acc["avg"], acc["avg_comp"], view.params)
        avg, avg_comp = (jax.tree_util.tree_map(lambda _, m: m[i], acc["avg"], moved) for i in (0, 1))
        return {"avg": avg, "avg_comp": avg_comp, "total": total, "total_comp": total_comp, "buf": recorded}

    def finalize(acc, status, ctx: Context):
        buf = np.asarray(acc["buf"])
        extra = tuple(f"dim{i}" for i in range(buf.ndim - 2))
        return {"": (("step", *extra), buf, {"step": _average_times(ctx)})}

    return Observable("iterate_average", init=init, update=update, finalize=finalize, config={"power": power})


def _edges_in(edges: np.ndarray, dtype) -> jax.Array:
    """``edges`` in ``dtype``, each rounded up: for a value ``v`` of that dtype, ``v < edge`` then holds
    exactly as in float64 (a float32 0.69999999 fell in ``[0.7, 2)`` when 0.7 was rounded to it), and
    edges that are distinct in float64 stay distinct."""
    dtype = np.dtype(dtype)
    rounded = edges.astype(dtype)
    below = rounded.astype(np.float64) < edges
    rounded[below] = np.nextafter(rounded[below], dtype.type(np.inf))
    return jnp.asarray(rounded)


def histogram(fn: Callable[[Any], Any], bins: Sequence[float], *, discard: int = 0) -> Observable:
    """Counts of ``fn(theta_t)`` (a scalar) in the bins ``[e_i, e_{i+1})`` over ``t = discard+1, ..., n_steps``.

    Outputs ``key`` (counts, dimension ``key_bin`` with the bin centres as coordinate),
    ``key_underflow`` and ``key_overflow`` (values below ``e_0`` / at or above ``e_last``,
    NaN included in the latter). Per trajectory: sum over ``replica`` for the ensemble.
    """
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"bins must be a 1-D array of at least 2 edges, got {bins!r}")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be finite and strictly increasing, got {edges.tolist()}")
    discard = check_int("discard", discard, minimum=0)
    n = edges.size - 1

    def slot(view: View):
        value = _real(fn(view.params))
        if value.ndim != 0:
            raise ValueError(f"histogram: fn must return a scalar, got shape {value.shape}")
        e = _edges_in(edges, value.dtype)
        return jnp.where(jnp.isnan(value), n + 1, jnp.searchsorted(e, value, side="right"))

    def check(dynamics, ctx: Context):
        if ctx.n_steps <= discard:
            raise ValueError(f"histogram: discard={discard} must be < n_steps={ctx.n_steps}")

    def init(view: View, ctx: Context):
        return jnp.zeros((n + 2,), jnp.int32)

    def update(acc, view: View, t, ctx: Context):
        return acc + ((jnp.arange(n + 2) == slot(view)) & (t > discard)).astype(jnp.int32)

    def finalize(acc, status, ctx: Context):
        counts = np.asarray(acc)
        centres = 0.5 * (edges[1:] + edges[:-1])
        return {
            "": (("bin",), counts[:, 1:-1], {"bin": centres}),
            "underflow": ((), counts[:, 0]),
            "overflow": ((), counts[:, -1]),
        }

    return Observable(
        "histogram",
        init=init,
        update=update,
        finalize=finalize,
        check=check,
        config={"bins": edges.tolist(), "discard": discard},
    )


def histogram2d(
    fn: Callable[[Any], Any], bins_x: Sequence[float], bins_y: Sequence[float], *, discard: int = 0
) -> Observable:
    """Counts of the pair ``fn(theta_t) = (u, v)`` in the cells ``[x_i, x_{i+1}) x [y_j, y_{j+1})``, per trajectory.

    Outputs ``key`` (dimensions ``key_x``, ``key_y`` with the cell centres) and ``key_outside``
    (pairs in no cell, NaN included). Memory is ``n_x n_y`` counters per trajectory: keep the
    grid coarse for large ensembles, or sum over ``replica`` afterwards.
    """
    ex, ey = (np.asarray(b, dtype=float) for b in (bins_x, bins_y))
    for name, e in (("bins_x", ex), ("bins_y", ey)):
        if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
            raise ValueError(f"{name} must be a finite, strictly increasing 1-D array of >= 2 edges")
    discard = check_int("discard", discard, minimum=0)
    nx, ny = ex.size - 1, ey.size - 1

    def cell(view: View):
        pair = _real(fn(view.params))
        if pair.shape != (2,):
            raise ValueError(f"histogram2d: fn must return two scalars (u, v), got shape {pair.shape}")
        u, v = pair
        i = jnp.searchsorted(_edges_in(ex, u.dtype), u, side="right") - 1
        j = jnp.searchsorted(_edges_in(ey, v.dtype), v, side="right") - 1
        inside = (i >= 0) & (i < nx) & (j >= 0) & (j < ny)
        return jnp.where(inside, i * ny + j, nx * ny)  # the last slot counts the outside

    def check(dynamics, ctx: Context):
        if ctx.n_steps <= discard:
            raise ValueError(f"histogram2d: discard={discard} must be < n_steps={ctx.n_steps}")

    def update(acc, view: View, t, ctx: Context):
        return acc.at[cell(view)].add(jnp.where(t > discard, 1, 0).astype(jnp.int32))

    def finalize(acc, status, ctx: Context):
        counts = np.asarray(acc)
        cx, cy = 0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1])
        return {
            "": (("x", "y"), counts[:, :-1].reshape(-1, nx, ny), {"x": cx, "y": cy}),
            "outside": ((), counts[:, -1]),
        }

    return Observable(
        "histogram2d",
        init=lambda view, ctx: jnp.zeros((nx * ny + 1,), jnp.int32),
        update=update,
        finalize=finalize,
        check=check,
        config={"bins_x": ex.tolist(), "bins_y": ey.tolist(), "discard": discard},
    )


def last_values(n: int, fn: Callable[[Any], Any] | None = None) -> Observable:
    """The last ``n`` values of ``fn(theta_t)`` (default: the parameters), oldest first.

    A ring buffer in the scan: the tail of every orbit without recording the whole run (for
    periodic-orbit detection and bifurcation diagrams). Output dimension ``key_lag`` holds the
    steps ``n_steps - n + 1, ..., n_steps``; entries before step 1 are NaN. A value that is a
    pytree of several arrays (the parameters of a net) is recorded as one flat vector, in the
    order of ``jax.flatten_util.ravel_pytree``.
    """
    n = check_int("n", n, minimum=1)
    fn = fn or (lambda p: p)

    def value(view: View):
        leaves = jax.tree_util.tree_leaves(fn(view.params))
        if len(leaves) == 1:
            return jnp.asarray(leaves[0])
        return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])

    def init(view: View, ctx: Context):
        return jnp.full((n, *value(view).shape), jnp.nan, jnp.result_type(float))

    def update(acc, view: View, t, ctx: Context):
        return acc.at[(t - 1) % n].set(value(view).astype(acc.dtype))

    def finalize(acc, status, ctx: Context):
        shift = ctx.n_steps % n
        buf = np.roll(np.asarray(acc), -shift, axis=1)
        extra = tuple(f"dim{i}" for i in range(buf.ndim - 2))
        return {"": (("lag", *extra), buf, {"lag": np.arange(ctx.n_steps - n + 1, ctx.n_steps + 1)})}

    return Observable("last_values", init=init, update=update, finalize=finalize, config={"n": n})


def converged(point, eps: float) -> Observable:
    """Whether ``|theta_T - point| <= eps`` at the end, and since when it has stayed so.

    Outputs ``key`` (bool) and ``key_step``: the first ``t`` from which the trajectory
    stayed within ``eps`` up to the end (-1 if it is outside at the end).
    """
    point = _need_point(point, "converged")
    eps = check_nonnegative("eps", eps)

    def inside(view: View):
        return _distance(view.params, point) <= eps

    def init(view: View, ctx: Context):
        return jnp.where(inside(view), 0, -1).astype(jnp.int32)

    def update(acc, view: View, t, ctx: Context):
        return jnp.where(inside(view), jnp.where(acc < 0, t, acc), -1).astype(jnp.int32)

    def finalize(acc, status, ctx: Context):
        step = np.asarray(acc)
        return {"": ((), step >= 0), "step": ((), step)}

    return Observable(
        "converged",
        init=init,
        update=update,
        finalize=finalize,
        config={"eps": eps, "point": _point_config(point)},
    )


def hitting_time(fn: Callable[[Any], Any], level: float) -> Observable:
    """First step ``t`` (``0 <= t <= n_steps``) with ``fn(theta_t) <= level``; -1 if it never happens.

    ``fn`` returns a scalar (for an array, its largest entry counts).

    E.g. ``hitting_time(lambda p: |grad f(p)|, eps)`` is the iteration complexity ``T_eps`` of one
    run (seed 002, eq. 3.7); the median over replicas, with -1 read as "later than ``n_steps``", is
    the stochastic ``T_eps`` of eq. 3.8.
    """
    level = check_real("level", level)

    def hit(view: View):
        return jnp.max(jnp.asarray(fn(view.params))) <= level

    def init(view: View, ctx: Context):
        return _first_time(jnp.asarray(-1, jnp.int32), hit(view), 0)

    def update(acc, view: View, t, ctx: Context):
        return _first_time(acc, hit(view), t)

    def finalize(acc, status, ctx: Context):
        return {"": ((), np.asarray(acc))}

    return Observable("hitting_time", init=init, update=update, finalize=finalize, config={"level": level})


def ball_exit(center, radii: Sequence[float]) -> Observable:
    """First exit from the closed balls ``|theta - center| <= r``, one per radius (seed 003's confinement events).

    Outputs ``key``, the first step ``0 <= t <= n_steps`` with ``|theta_t - center| > r`` (-1 if
    the trajectory never left), over dimension ``key_radius``, and ``key_max_distance``
    (``max_t |theta_t - center|``). ``P(never leave B(theta_0, R - 1))`` is the share of -1; an
    exit from ``R - 1`` at the step that also leaves ``R`` is a jump over the shell, otherwise a
    landing on it (seed 003, eqs. 3.14-3.15). A trajectory that diverges (and is frozen by the
    engine) has left every ball: its exit step is at most its divergence step, and its
    ``key_max_distance`` is ``inf``.
    """
    center = _need_point(center, "ball_exit")
    radii = np.asarray(radii, dtype=float)
    if radii.ndim != 1 or radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError(f"radii must be a non-empty 1-D sequence of finite numbers >= 0, got {radii!r}")

    def outside(dist):
        return dist > jnp.asarray(radii, dist.dtype)

    def init(view: View, ctx: Context):
        dist = _distance(view.params, center)
        return {"step": _first_time(jnp.full(radii.shape, -1, jnp.int32), outside(dist), 0), "max": dist}

    def update(acc, view: View, t, ctx: Context):
        dist = _distance(view.params, center)
        return {"step": _first_time(acc["step"], outside(dist), t), "max": jnp.maximum(acc["max"], dist)}

    def finalize(acc, status, ctx: Context):
        step, far = np.asarray(acc["step"]), np.asarray(acc["max"])
        diverged = np.asarray(status["diverged_step"])
        gone = diverged >= 0
        step = np.where(gone[:, None] & (step < 0), diverged[:, None], step)
        return {
            "": (("radius",), step, {"radius": radii}),
            "max_distance": ((), np.where(gone, np.inf, far)),
        }

    return Observable(
        "ball_exit",
        init=init,
        update=update,
        finalize=finalize,
        config={"center": _point_config(center), "radii": radii.tolist()},
    )


def diverged(bound: float | None = None) -> Observable:
    """Whether the trajectory diverged: a non-finite state, or ``max |theta_i| > bound``.

    Outputs ``key`` (bool) and ``key_step``: the step whose result was non-finite or out
    of bounds (-1 if never). The engine freezes the trajectory at its last good state, so
    no aggregate turns into NaN.
    """
    if bound is not None:
        bound = check_positive("bound", bound)
    return Observable(
        "diverged",
        init=_no_accumulator,
        update=_keep_accumulator,
        finalize=_diverged_finalize,
        bound=bound,
        config={"bound": bound},
    )


def _no_accumulator(view: View, ctx: Context):
    return ()


def _keep_accumulator(acc, view: View, t, ctx: Context):
    return acc


def _diverged_finalize(acc, status, ctx: Context):
    step = np.asarray(status["diverged_step"])
    return {"": ((), step >= 0), "step": ((), step)}


NAMED: Mapping[str, Callable[[], Observable]] = MappingProxyType(
    {
        "final_state": final_state,
        "trajectory": trajectory,
        "loss": loss,
        "grad_norm": grad_norm,
        "progress": progress,
        "diverged": diverged,
    }
)


_BY_NAME: dict[str, Observable] = {}


def from_name(name: str) -> Observable:
    """The observable with default arguments called ``name`` (see :data:`NAMED`).

    The same object for every call, so that runs asking for it by name share compiled programs.
    """
    if name not in NAMED:
        raise ValueError(f"unknown observable {name!r}; known by name: {sorted(NAMED)} (or pass an Observable)")
    if name not in _BY_NAME:
        _BY_NAME[name] = NAMED[name]()
    return _BY_NAME[name]
