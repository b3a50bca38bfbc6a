"""Optimizers the seed papers define, as optax ``GradientTransformation``s (seed 002, thesis chs. 3-4).

What optax already has is composed, not rewritten: clipped SGD is ``clip_by_global_norm`` then
``sgd``, normalized SGD is ``normalize_by_update_norm`` (with a zero step at ``g = 0``) then ``sgd``,
coordinate-wise clipping is ``clip`` then ``sgd``. New here: clipping thresholds that follow a schedule (the thesis's
``tau_k = G k^(1/alpha)``), :func:`project` (a projection after the step: proj-GClip), and ACClip
(thesis Algorithm 1). Each constructor takes ``learning_rate`` first and numbers only, so
:func:`dynsim.dynamics.from_optax` turns every argument into a traced hyperparameter (a grid axis):

    dyn = ds.dynamics.from_optax(problem, ds.optim.clipped_sgd, threshold=0.25)
    ds.simulate(dyn, grid={"lr": lrs, "threshold": taus}, ...)

A learning rate or threshold may also be a schedule, a function of optax's step count
``n = 0, 1, 2, ...`` (except :func:`stochastic_clipped_sgd`'s learning rate, a constant); the thesis counts its
steps ``k = n + 1``. Numbers known when a constructor is called are checked (a learning rate must be > 0 and
finite); traced values and schedules pass. A constructor of your own whose
arguments are numbers turns them into schedules and stays a grid axis:

    def proj_gclip(learning_rate, bound, alpha, radius):
        lr, tau = ds.optim.strongly_convex_clip_schedules(learning_rate, bound, alpha)
        return optax.chain(ds.optim.clipped_sgd(lr, tau), ds.optim.project(
            lambda p: optax.projections.projection_box(p, -radius, radius)))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynsim._tree import tree_norm
from dynsim._validate import check_concrete, check_int, check_positive, concrete_values

__all__ = [
    "clipped_sgd",
    "normalized_sgd",
    "coordinate_clipped_sgd",
    "clip_by_global_norm",
    "clip_by_coordinate",
    "project",
    "strongly_convex_clip_schedules",
    "NonconvexClipParameters",
    "nonconvex_clip_parameters",
    "stochastic_clipped_sgd",
    "RelaxedSmoothParameters",
    "stochastic_clip_parameters",
    "relaxed_sgd_parameters",
    "ScaleByACClipState",
    "scale_by_acclip",
    "acclip",
    "rmsprop_as_clip",
]


def _check_learning_rate(learning_rate) -> None:
    """A number (or every entry of an array) must be > 0 and finite; a schedule or a traced value passes."""
    check_concrete("learning_rate", learning_rate, *_POSITIVE)


def _scheduled_clip(threshold, factor) -> optax.GradientTransformation:
    """``u <- factor(u, threshold(n)) * u`` with the step count ``n`` in the state."""

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        tau = threshold(state.count)
        scaled = factor(updates, tau)
        return scaled, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def _check_threshold(threshold) -> None:
    """A clipping threshold given as numbers (a Python number, a NumPy scalar or array: one per coordinate)
    must be finite and > 0 in every entry: 0 gave NaN steps, a negative one steps uphill. A schedule, or a
    traced value, passes unchecked."""
    values = concrete_values(threshold)
    if values is None:
        return
    if values.dtype.kind not in "iuf" or np.any(~np.isfinite(values) | (values <= 0)):
        raise ValueError(f"threshold must be a number > 0 or a schedule, got {threshold!r}")


_POSITIVE = (lambda v: v > 0, "> 0")
_NONNEGATIVE = (lambda v: v >= 0, ">= 0")
_DECAY = (lambda v: (v >= 0) & (v < 1), "in [0, 1)")


def clip_by_global_norm(threshold) -> optax.GradientTransformation:
    """``g <- min(1, tau / |g|) g``, ``|g|`` the Euclidean norm over all leaves (the clip of GClip).

    ``threshold``: a number (then this is ``optax.clip_by_global_norm``) or a schedule
    ``tau(n)`` of the step count ``n = 0, 1, ...`` (thesis Thm 4.4.2: ``tau_k = G k^(1/alpha)``,
    ``k = n + 1``).
    """
    _check_threshold(threshold)
    if not callable(threshold):
        return optax.clip_by_global_norm(threshold)

    def factor(updates, tau):
        norm = tree_norm(updates)
        scale = jnp.where(norm <= tau, 1.0, tau / jnp.where(norm > 0, norm, 1.0))
        return jax.tree_util.tree_map(lambda u: (scale * u).astype(u.dtype), updates)

    return _scheduled_clip(threshold, factor)


def clip_by_coordinate(threshold) -> optax.GradientTransformation:
    """``g_i <- clip(g_i, -tau, tau)`` for every coordinate (the clip of CClip, thesis eq. CClip).

    ``threshold``: a number (then this is ``optax.clip``) or a schedule ``tau(n)`` of the step
    count (thesis Thm 4.5.1: ``tau_{k,i} = B_i k^(1/alpha)``); a schedule may return an array
    that broadcasts against every leaf (one threshold per coordinate).
    """
    _check_threshold(threshold)
    if not callable(threshold):
        return optax.clip(threshold)

    def factor(updates, tau):
        return jax.tree_util.tree_map(lambda u: jnp.clip(u, -tau, tau).astype(u.dtype), updates)

    return _scheduled_clip(threshold, factor)


def project(projection) -> optax.GradientTransformation:
    """After the step, project the parameters: ``x <- P(x + u)`` (proj-GClip, thesis Thm 4.4.2).

    ``projection(params) -> params`` is any projection onto a closed convex set, e.g.
    ``lambda p: optax.projections.projection_box(p, -r, r)`` for an array of parameters (for a pytree,
    ``lambda p: jax.tree_util.tree_map(lambda x: jnp.clip(x, -r, r), p)``). Chained last, it turns the update
    ``u`` into ``P(x + u) - x``, so that ``optax.apply_updates`` lands on ``P(x + u)`` (up to one
    rounding of the subtraction).
    """
    if not callable(projection):
        raise TypeError(f"projection must be a function params -> params, got {projection!r}")

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project needs the parameters: call update(updates, state, params)")
        target = projection(optax.apply_updates(params, updates))
        return jax.tree_util.tree_map(lambda t, p: (t - p).astype(p.dtype), target, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def strongly_convex_clip_schedules(scale, bound, alpha):
    """The step and threshold schedules of the thesis's Thm 4.4.2 and Thm 4.5.1, in optax's count ``n = k - 1``.

    ``eta_k = scale / (k + 1)`` (the theorems take ``scale = 4 / mu``) and
    ``tau_k = bound * k^(1/alpha)``, with ``bound`` the ``alpha``-moment bound ``G`` (GClip) or
    ``B_i`` (CClip). The theorem statements print ``tau_k = G k^(alpha - 1)``; their proofs (the
    bias-variance balance of Lemma 4.7.1) need ``k^(1/alpha)``, which is what this returns.

    Numbers are checked (traced values pass): ``scale > 0`` (a step downhill), ``bound > 0`` in every
    entry (a negative threshold steps uphill) and ``alpha`` in ``(1, 2]``, the range of Assumptions
    4.4.3 and 4.5.1 under which the theorems hold (``alpha = 0`` divides by zero).
    """
    check_concrete("scale", scale, *_POSITIVE)
    check_concrete("bound", bound, *_POSITIVE)
    check_concrete("alpha", alpha, lambda v: (v > 1) & (v <= 2), "in (1, 2]")

    def learning_rate(n):
        return scale / (n + 2)

    def threshold(n):
        return bound * (n + 1.0) ** (1.0 / alpha)

    return learning_rate, threshold


class NonconvexClipParameters(NamedTuple):
    """Thm 4.4.1's constant step ``lr`` and threshold ``threshold`` for a horizon of ``K`` steps, and its
    bound ``bound = 60 F0 / (lr K)`` on ``(1/K) sum_k E min(|grad f(x_k)|, |grad f(x_k)|^2)``."""

    lr: float
    threshold: float
    bound: float


def nonconvex_clip_parameters(smoothness, sigma, alpha, f0, horizon) -> NonconvexClipParameters:
    """GClip's parameters for an ``L``-smooth nonconvex ``f`` with ``E|g - grad f|^alpha <= sigma^alpha`` (Thm 4.4.1).

    ``lr = min{1/(4L), 1/(L (12 sigma)^(alpha/(alpha-1))),
    (F0/(sigma^2 K))^(alpha/(3 alpha-2)) / L^((2 alpha-2)/(3 alpha-2))}``,
    ``threshold = sigma (lr L)^(-1/alpha)``, ``F0 = f(x_0) - inf f``, ``K = horizon``. The bound is
    ``60 F0 / (lr K)``, the maximum of the theorem's three terms; the third, garbled in the thesis
    (it prints ``L^((2 alpha-2)/(3 alpha-2)) (F0/(K sigma^2))^(2(alpha-1)/(3 alpha-2))``, which falls
    as the noise grows), is ``60 L^((2 alpha-2)/(3 alpha-2)) F0^((2 alpha-2)/(3 alpha-2))
    sigma^(2 alpha/(3 alpha-2)) K^(-(2 alpha-2)/(3 alpha-2))``.

    The thesis states ``20``: its sum carries Case 1's decrease ``lr/4`` where the combined
    per-step inequality it has just written has ``lr/12`` (Case 2). Summing that inequality gives
    ``12 F0/(lr K) + 48 sigma^2 (lr L)^((2 alpha-2)/alpha)``, and the step makes the second term at
    most ``48 F0/(lr K)``: ``60 F0/(lr K)``.
    """
    L, sigma = check_positive("smoothness", smoothness), check_positive("sigma", sigma)
    f0, alpha = check_positive("f0", f0), check_positive("alpha", alpha)
    horizon = check_int("horizon", horizon, minimum=1)
    if not 1 < alpha <= 2:
        raise ValueError(f"alpha must be in (1, 2], got {alpha}")
    rate = alpha / (3 * alpha - 2)
    lr = min(
        1 / (4 * L),
        1 / (L * (12 * sigma) ** (alpha / (alpha - 1))),
        (f0 / (sigma**2 * horizon)) ** rate / L ** ((2 * alpha - 2) / (3 * alpha - 2)),
    )
    return NonconvexClipParameters(lr, sigma * (lr * L) ** (-1 / alpha), 60 * f0 / (lr * horizon))


def stochastic_clipped_sgd(learning_rate, clip_scale, noise_bound) -> optax.GradientTransformation:
    """Thesis Thm 3.4.4's clipped SGD: ``x <- x - min(lr, clip_scale / (|g| + noise_bound)) g``.

    The step shrinks like ``1/|g|`` once ``|g|`` is large, with ``noise_bound = tau`` (the bound on
    ``|g - grad f|``) keeping it finite; the theorem takes ``clip_scale = 1/(16 L1)`` (the statement
    prints ``1/(16 lr L1 (|g| + tau))``, which its proof does not use; seed digest, errata).

    Numbers are checked (traced values pass): ``clip_scale > 0`` (``inf``: plain SGD, the
    ``clip_scale`` of :func:`relaxed_sgd_parameters`) and ``noise_bound >= 0`` finite, since a negative
    one makes ``h`` negative (a step uphill) or infinite (``|g| = -noise_bound``).
    """
    scale = concrete_values(clip_scale)
    if scale is not None and (scale.dtype.kind not in "iuf" or np.any(np.isnan(scale) | (scale <= 0))):
        raise ValueError(f"clip_scale must be > 0 (inf: no clipping), got {clip_scale!r}")
    check_concrete("noise_bound", noise_bound, *_NONNEGATIVE)
    if callable(learning_rate):
        raise TypeError("stochastic_clipped_sgd takes a constant learning_rate (Thm 3.4.4's), got a schedule")
    _check_learning_rate(learning_rate)

    def update(updates, state, params=None):
        del params
        h = jnp.minimum(learning_rate, clip_scale / (tree_norm(updates) + noise_bound))
        return jax.tree_util.tree_map(lambda u: (-h * u).astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class RelaxedSmoothParameters(NamedTuple):
    """A step rule of the thesis's Sec. 3.4 (``lr``, and ``clip_scale`` for clipped SGD) and the theorem's bound
    on the stochastic complexity ``T_eps`` (eq. 3.8: the median first time ``|grad f| <= eps``)."""

    lr: float
    clip_scale: float
    bound: float


def _check_positive(**values) -> None:
    for name, value in values.items():
        check_positive(name, value)


def stochastic_clip_parameters(l0, l1, tau, delta, eps, horizon) -> RelaxedSmoothParameters:
    """Thm 3.4.4 for an ``(L0, L1)``-smooth ``f`` with ``|g - grad f| <= tau`` and ``f(x_0) - f* <= delta``:
    ``lr = min(1/(20 L0), 1/(128 L1 tau), 1/sqrt(T))``, ``clip_scale = 1/(16 L1)`` (for
    :func:`stochastic_clipped_sgd`), and ``T_eps <= Delta' max(128 L1/eps, 4 Delta'/eps^4, (80 L0 + 512 L1 tau)/eps^2)``
    with ``Delta' = delta + (5 L0 + 2 L1 tau) tau^2 + 9 tau L0^2 / L1``; ``T = horizon``."""
    _check_positive(l0=l0, l1=l1, tau=tau, delta=delta, eps=eps)
    horizon = check_int("horizon", horizon, minimum=1)
    lr = min(1 / (20 * l0), 1 / (128 * l1 * tau), 1 / np.sqrt(horizon))
    d = delta + (5 * l0 + 2 * l1 * tau) * tau**2 + 9 * tau * l0**2 / l1
    bound = d * max(128 * l1 / eps, 4 * d / eps**4, (80 * l0 + 512 * l1 * tau) / eps**2)
    return RelaxedSmoothParameters(lr, 1 / (16 * l1), bound)


def relaxed_sgd_parameters(l0, l1, m, tau, delta, eps, horizon) -> RelaxedSmoothParameters:
    """Thm 3.4.5, SGD on the same class with ``M = sup{|grad f(x)| : f(x) <= f(x_0)}``: ``lr = min(1/sqrt(T),
    1/(L1 (M + tau)))`` and ``T_eps <= (delta + (5 L0 + 4 L1 M)(M + tau)^2) / eps^4``: the step, and the bound,
    depend on ``M``; ``clip_scale`` is ``inf`` (no clipping)."""
    _check_positive(l0=l0, l1=l1, m=m, tau=tau, delta=delta, eps=eps)
    horizon = check_int("horizon", horizon, minimum=1)
    lr = min(1 / np.sqrt(horizon), 1 / (l1 * (m + tau)))
    return RelaxedSmoothParameters(lr, float("inf"), (delta + (5 * l0 + 4 * l1 * m) * (m + tau) ** 2) / eps**4)


def clipped_sgd(learning_rate, threshold) -> optax.GradientTransformation:
    """GClip / clipped GD: ``x <- x - lr min(1, threshold / |g|) g`` (thesis eq. 3.5; GClip, Sec. 4.4.1).

    ``|g|`` is the global Euclidean norm over all parameters; the step is at most
    ``lr * threshold`` long. The thesis writes it ``h_c = min(eta_c, gamma eta_c / |g|)``:
    ``learning_rate = eta_c``, ``threshold = gamma``. Either may be a schedule (see the module).
    """
    _check_learning_rate(learning_rate)
    return optax.chain(clip_by_global_norm(threshold), optax.sgd(learning_rate))


def _normalize_by_norm(beta) -> optax.GradientTransformation:
    """``g <- g / (|g| + beta)``, ``|g|`` the Euclidean norm over all leaves (``optax.normalize_by_update_norm``
    with ``eps = beta``), and ``g <- 0`` where ``|g| + beta = 0``: with ``beta = 0`` a zero gradient (a
    stationary point) gives a zero step, where ``0 / 0`` would give NaN.

    ``beta`` given as a number must be ``>= 0`` (a negative one reverses the step when ``|g| < -beta``);
    a traced one passes unchecked.
    """
    check_concrete("beta", beta, *_NONNEGATIVE)

    def update_fn(updates, state, params=None):
        del params
        denom = optax.tree.norm(updates) + beta
        denom = jnp.where(denom > 0, denom, 1)
        return jax.tree_util.tree_map(lambda g: (g / denom).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def normalized_sgd(learning_rate, beta) -> optax.GradientTransformation:
    """Normalized GD: ``x <- x - lr g / (|g| + beta)`` (thesis eq. 3.6), ``beta >= 0``.

    With ``lr = eta_n`` it is clipped GD's twin: for ``clipped_sgd(eta_n / beta, beta)`` the step
    sizes satisfy ``h_c / 2 <= h_n <= h_c``. With ``beta = 0`` (plain normalized GD, step length ``lr``)
    a zero gradient gives a zero step (where ``0 / 0`` would give NaN).
    """
    _check_learning_rate(learning_rate)
    return optax.chain(_normalize_by_norm(beta), optax.sgd(learning_rate))


def coordinate_clipped_sgd(learning_rate, threshold) -> optax.GradientTransformation:
    """CClip: ``x_i <- x_i - lr clip(g_i, -threshold, threshold)`` for every coordinate (thesis Sec. 4.5).

    Either argument may be a schedule (see the module and :func:`clip_by_coordinate`).
    """
    _check_learning_rate(learning_rate)
    return optax.chain(clip_by_coordinate(threshold), optax.sgd(learning_rate))


class ScaleByACClipState(NamedTuple):
    """ACClip's state: the momentum ``m`` and the running ``alpha``-moment ``tau^alpha`` of each coordinate."""

    momentum: optax.Updates
    tau_alpha: optax.Updates


def scale_by_acclip(b1=0.9, b2=0.99, alpha=1.0, eps=1e-5, tau0=1.0) -> optax.GradientTransformation:
    """The direction of ACClip (thesis Algorithm 1), elementwise, before the learning rate:

    ``m_k = b1 m_{k-1} + (1 - b1) g_k``, ``tau_k^alpha = b2 tau_{k-1}^alpha + (1 - b2) |g_k|^alpha``,
    ``ghat_k = min(tau_k / (|m_k| + eps), 1) m_k``; ``m_0 = 0``, ``tau_0^alpha = tau0^alpha``.

    ``tau_k = (b2 tau_{k-1}^alpha + (1 - b2) |g_k|^alpha)^(1/alpha)`` is a power mean of the initial
    threshold and the past gradients, defined for every exponent ``alpha > 0``; the thesis uses
    ``alpha = 1`` (a noise exponent of its Assumption 4.4.1 lies in ``(1, 2]``, but the estimator's
    ``alpha`` need not). Numbers are checked (traced values pass): ``b1`` in ``[0, 1)``, ``b2`` in
    ``[0, 1]`` (``b2 = 1`` keeps the threshold at ``tau0``), ``alpha > 0`` (``alpha = 0`` divides by
    zero), ``eps > 0`` and ``tau0 > 0`` (a negative threshold steps uphill; with ``eps = 0`` a coordinate
    whose momentum and threshold are both 0 steps by ``0 / 0``).
    """
    check_concrete("b1", b1, *_DECAY)
    check_concrete("b2", b2, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
    check_concrete("alpha", alpha, *_POSITIVE)
    check_concrete("eps", eps, *_POSITIVE)
    check_concrete("tau0", tau0, *_POSITIVE)

    def init_fn(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        tau = jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.asarray(tau0, p.dtype) ** alpha), params)
        return ScaleByACClipState(zeros, tau)

    def update_fn(updates, state, params=None):
        del params
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.momentum, updates)
        tau_a = jax.tree_util.tree_map(lambda t, g: b2 * t + (1 - b2) * jnp.abs(g) ** alpha, state.tau_alpha, updates)
        direction = jax.tree_util.tree_map(
            lambda m, t: jnp.minimum(t ** (1 / alpha) / (jnp.abs(m) + eps), 1.0) * m, m, tau_a
        )
        return direction, ScaleByACClipState(m, tau_a)

    return optax.GradientTransformation(init_fn, update_fn)


def acclip(learning_rate, b1=0.9, b2=0.99, alpha=1.0, eps=1e-5, tau0=1.0) -> optax.GradientTransformation:
    """ACClip (thesis Algorithm 1): ``x <- x - lr ghat`` with :func:`scale_by_acclip`'s clipped momentum.

    The thesis's BERT settings are ``lr = 1e-4``, ``b1 = 0.9``, ``b2 = 0.99``, ``eps = 1e-5``, ``alpha = 1``
    ("the conservative choice ... leads to the best performance") and ``tau = 1``, read here as the
    initial threshold ``tau0``. Weight decay, if wanted, is the problem's (coupled, in the gradient).
    """
    _check_learning_rate(learning_rate)
    return optax.chain(scale_by_acclip(b1, b2, alpha, eps, tau0), optax.scale_by_learning_rate(learning_rate))


def rmsprop_as_clip(learning_rate, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """RMSProp's step read as coordinate-wise clipping (thesis ch. 7), with the map corrected.

    RMSProp moves ``x <- x - h_Adam g`` with ``h_Adam = lr / (eps + sqrt(b2 v + (1 - b2) g^2))`` and
    ``v <- b2 v + (1 - b2) g^2`` (``optax.rmsprop(lr, decay=b2, eps=eps, eps_in_sqrt=False)``). This is clipped SGD,
    ``x <- x - eta min(tau / |g|, 1) g`` per coordinate, with

        ``eta = lr / (eps + sqrt(b2 v))``,  ``tau = (eps + sqrt(b2 v)) / sqrt(1 - b2)``,

    and ``h_clip = lr / max(A, B)``, ``A = eps + sqrt(b2 v)``, ``B = sqrt(1 - b2)|g|``. Since
    ``max(A, B) <= eps + sqrt(b2 v + B^2) <= A + B``, ``h_Adam / h_clip`` lies in ``[1/2, 1]``: the
    two methods take the same steps up to a factor two. The thesis's map has ``eta = 2 lr / A``,
    which puts the ratio in ``[1/4, 1/2]`` and breaks its stated ``h_clip / 2 <= h_Adam``.

    Numbers are checked (traced values pass): ``b2`` in ``[0, 1)`` (``b2 = 1`` never updates ``v``
    and divides by ``sqrt(1 - b2) = 0``; ``b2 > 1`` makes ``v`` negative, its square root NaN) and
    ``eps > 0`` (with ``eps = 0`` the first step, at ``v = 0``, is ``0 / 0``).
    """
    if callable(learning_rate):  # the map's eta is lr / A at a fixed lr; the state keeps no step count
        raise TypeError("rmsprop_as_clip takes a constant learning_rate, got a schedule")
    _check_learning_rate(learning_rate)
    check_concrete("b2", b2, *_DECAY)
    check_concrete("eps", eps, *_POSITIVE)

    def init_fn(params):
        return optax.ScaleByRmsState(nu=jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params

        def step(g, v):
            a = eps + jnp.sqrt(b2 * v)
            tau = a / jnp.sqrt(1 - b2)
            return (-learning_rate / a * jnp.clip(g, -tau, tau)).astype(g.dtype)

        out = jax.tree_util.tree_map(step, updates, state.nu)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g**2, state.nu, updates)
        return out, optax.ScaleByRmsState(nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
