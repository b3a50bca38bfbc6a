"""Noise injected into the gradient or the minibatch of an SGD-type step.

Each noise is a :class:`Noise`: its hyperparameters (traced, so a noise level is a grid
axis like the learning rate) and a pure ``apply`` function. Pass a sequence of them as
``noise=`` to :func:`dynsim.dynamics.sgd`, :func:`~dynsim.dynamics.gd` or
:func:`~dynsim.dynamics.from_optax`. Minibatch noises act on the sampled batch before
the gradient; gradient noises are added to the (minibatch) gradient ``g``:

* :func:`gaussian_noise`: ``g + s * xi``, ``xi ~ N(0, I)``;
* :func:`student_t_noise`: ``g + s * xi``, ``xi_i ~ t_df`` i.i.d.;
* :func:`alpha_stable_noise`: ``g + s * xi``, ``xi_i`` symmetric alpha-stable;
* :func:`pareto_noise`: ``g + s * xi``, ``xi_i`` symmetric Pareto (Lomax) with tail index ``nu``;
* :func:`multiplicative_noise`: ``g + sqrt(sigma F(theta)) Z``, ``Z ~ N(0, I/d)``, uniform on
  the sphere, or sparse (the "ML" noise of seed 003, eq. 2.10);
* :func:`label_noise`: ``y_j <- y_j + s * xi_j`` for each sample of the batch, redrawn
  every step (dynamic label noise).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._tree import tree_norm
from dynsim._validate import (
    check_concrete,
    check_int,
    check_nonnegative,
    check_positive,
    check_values,
    range_check,
)

__all__ = [
    "Noise",
    "gaussian_noise",
    "uniform_noise",
    "student_t_noise",
    "alpha_stable_noise",
    "pareto_noise",
    "pareto_moment",
    "pareto_index_limit",
    "stable_index_limit",
    "student_t_df_limit",
    "multiplicative_noise",
    "label_noise",
    "label_reselect",
    "symmetric_stable",
]


class Noise(NamedTuple):
    """A noise model.

    ``kind == "gradient"``: ``apply(key, grads, hp, objective) -> grads``, where
    ``objective()`` evaluates the training objective at the current parameters.
    ``kind == "batch"``: ``apply(key, batch, hp) -> batch``.
    """

    kind: str
    apply: Callable[..., Any]
    hyperparams: Mapping[str, Any]
    name: str
    check: Callable[[Mapping[str, Any]], None] | None = None


_NONNEGATIVE = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_STABLE_INDEX = (lambda v: (v > 0) & (v <= 2), "in (0, 2]")


def _shape_name(name: str, base: str) -> str:
    """The key of a noise's shape parameter: ``base`` for the default ``name="noise"``, else
    ``name_base``, so two noises (or a noise and an optimizer's ``alpha``) can be told apart."""
    return base if name == "noise" else f"{name}_{base}"


def _add_to_leaves(key, tree, draw: Callable[[jax.Array, tuple, Any], jax.Array]):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [leaf + draw(k, jnp.shape(leaf), jnp.result_type(leaf)) for k, leaf in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def gaussian_noise(scale: float = 1.0, *, name: str = "noise") -> Noise:
    """Additive isotropic Gaussian gradient noise ``g + s xi``, ``s = hp[name]``."""
    check_nonnegative("scale", scale)

    def apply(key, grads, hp, objective):
        s = hp[name]
        return _add_to_leaves(key, grads, lambda k, shape, dt: s * jax.random.normal(k, shape, dt))

    return Noise("gradient", apply, {name: scale}, "gaussian", range_check({name: _NONNEGATIVE}))


def uniform_noise(scale: float = 1.0, *, name: str = "noise") -> Noise:
    """Additive bounded gradient noise ``g + s xi``, ``xi_i ~ U[-1, 1]`` (``s = hp[name]``): ``|g - grad f|_inf <= s``
    almost surely, the noise of seed 002's Assumption 3.4.2 (``|g - grad f| <= tau``, with ``tau = s`` in 1-D)."""
    check_nonnegative("scale", scale)

    def apply(key, grads, hp, objective):
        s = hp[name]
        return _add_to_leaves(key, grads, lambda k, shape, dt: s * jax.random.uniform(k, shape, dt, -1.0, 1.0))

    return Noise("gradient", apply, {name: scale}, "uniform", range_check({name: _NONNEGATIVE}))


def student_t_noise(scale: float = 1.0, df: float = 3.0, *, name: str = "noise") -> Noise:
    """Additive Student-t gradient noise ``g + s xi``, ``xi_i ~ t_df`` (``s = hp[name]``, ``df = hp["df"]``,
    or ``hp[name + "_df"]`` for another ``name``).

    ``Var xi_i = df / (df - 2)`` for ``df > 2``; heavy-tailed with tail index ``df``. ``df`` is at least
    :func:`student_t_df_limit` of the default float dtype (0.5103 in float32; every grid value is checked).
    """
    check_nonnegative("scale", scale)
    check_positive("df", df)
    check_values("df", df, *_student_t_df_rule())
    df_name = _shape_name(name, "df")

    def apply(key, grads, hp, objective):
        s, df_ = hp[name], hp[df_name]
        return _add_to_leaves(key, grads, lambda k, shape, dt: s * jax.random.t(k, df_, shape, dt))

    def check(hp):
        range_check({name: _NONNEGATIVE, df_name: _POSITIVE})(hp)
        range_check({df_name: _student_t_df_rule()})(hp)

    return Noise("gradient", apply, {name: scale, df_name: df}, "student_t", check)


def student_t_df_limit(dtype=None) -> float:
    """The smallest ``df`` :func:`student_t_noise` takes in ``dtype`` (default: the default float dtype): 0.5103
    in float32, 0.0627 in float64.

    ``jax.random.t`` draws ``Z / sqrt(G / df)``, ``G = 2 Gamma(df/2)``; ``G`` rounds to 0, and the draw to
    ``+-inf``, with probability about ``tiny^(df/2) / Gamma(df/2 + 1)`` (``tiny`` the smallest normal number of
    ``dtype``), far above the law's own mass beyond the dtype's range (at ``df = 0.1`` in float32, 1.3% of the
    draws against 1.2e-4; measured 2e-6 at ``df = 0.3``, as predicted). This returns the smallest ``df``
    (rounded up to 4 decimals) for which that probability is at most ``2^-32``.
    """
    return _student_t_df_limit(np.dtype(dtype or jnp.result_type(float)))


@functools.cache
def _student_t_df_limit(dtype: np.dtype) -> float:
    from scipy import optimize, special

    log_tiny = math.log(float(jnp.finfo(dtype).tiny))

    def excess(df):  # log P(infinite draw) - log 2^-32
        return df / 2 * log_tiny - special.gammaln(df / 2 + 1) + 32 * math.log(2)

    return math.ceil(optimize.brentq(excess, 1e-6, 10.0) * 1e4) / 1e4


def _student_t_df_rule(dtype=None):
    dtype = np.dtype(dtype or jnp.result_type(float))
    limit = student_t_df_limit(dtype)
    return (
        lambda v: v >= limit,
        f">= {limit:.4g} in {dtype} (below it the Gamma draw inside jax.random.t underflows to 0 and the draw is "
        f"infinite more often than once in 2^32; float64, enabled with jax.config.update('jax_enable_x64', True), "
        f"takes df down to {student_t_df_limit(np.float64):.4g})",
    )


def _uniform_angle_low(dtype) -> np.ndarray:
    """The lowest angle ``V`` :func:`symmetric_stable` draws in ``dtype``: ``-pi/2`` rounded, or the next number
    towards 0 where the rounding falls below ``-pi/2`` (float32), where ``cos V < 0``."""
    low = np.asarray(-np.pi / 2, dtype)
    if np.cos(np.float64(low)) <= 0:
        low = np.nextafter(low, np.asarray(0, dtype))
    return low


def _chambers_mallows_stuck(v, w, alpha):
    """``X = sin(alpha V) / cos(V)^(1/alpha) * (cos((1 - alpha) V) / W)^((1 - alpha)/alpha)``."""
    return jnp.sin(alpha * v) / jnp.cos(v) ** (1 / alpha) * (jnp.cos((1 - alpha) * v) / w) ** ((1 - alpha) / alpha)


def stable_index_limit(dtype=None) -> float:
    """The smallest index ``alpha`` :func:`symmetric_stable` takes in ``dtype`` (default: the default float
    dtype): 0.3084 in float32, 0.0968 in float64.

    In ``dtype`` the draws have ``|V| <= |V_low|`` (:func:`symmetric_stable`'s lowest angle) and
    ``W >= eps/2``; for ``alpha < 1`` the kernel ``sin(alpha |V|) cos((1 - alpha) V)^((1 - alpha)/alpha) /
    cos(V)^(1/alpha)`` grows with ``|V|`` and ``W^(-(1 - alpha)/alpha)`` falls with ``W``, so the largest
    draw is ``X(V_low, eps/2)``. This returns the smallest ``alpha`` (rounded up to 4 decimals) for which
    ``log2 |X(V_low, eps/2)| <= maxexp - 1``: every draw is at most ``2^(maxexp - 1)``, half the dtype's
    range (a margin for the float evaluation). Below it the largest draws overflow, and for smaller
    indices the law itself has visible mass beyond the dtype's largest number: at ``alpha = 0.1``,
    ``P(|X| > 3.4e38) = 2 Gamma(alpha) sin(pi alpha/2) / pi * 3.4e38^(-alpha) = 1.3e-4`` in float32.
    """
    return _stable_index_limit(np.dtype(dtype or jnp.result_type(float)))


@functools.cache
def _stable_index_limit(dtype: np.dtype) -> float:
    info = jnp.finfo(dtype)
    v = float(_uniform_angle_low(dtype))
    log2_w = np.log2(float(info.eps) / 2)

    def log2_largest(a):
        return (
            np.log2(abs(np.sin(a * v))) - np.log2(np.cos(v)) / a + (1 - a) / a * (np.log2(np.cos((1 - a) * v)) - log2_w)
        )

    lo, hi = 1e-6, 1.0  # log2_largest falls as alpha grows; at alpha = 1 it is log2 |tan V_low|
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if log2_largest(mid) <= info.maxexp - 1 else (mid, hi)
    return math.ceil(hi * 1e4) / 1e4


def _stable_index_rule(dtype=None):
    """The rule on a stable index: in ``(0, 2]`` and at least :func:`stable_index_limit` of ``dtype``."""
    dtype = np.dtype(dtype or jnp.result_type(float))
    limit = stable_index_limit(dtype)
    return (
        lambda v: (v >= limit) & (v <= 2),
        f"in (0, 2] and >= {limit} in {dtype} (a smaller index draws numbers beyond {dtype}'s range; "
        "float64, enabled with jax.config.update('jax_enable_x64', True), takes indices down to "
        f"{stable_index_limit(np.float64)})",
    )


def _check_stable_index(name: str, value, dtype=None) -> None:
    check_concrete(name, value, *_STABLE_INDEX)
    check_concrete(name, value, *_stable_index_rule(dtype))


def symmetric_stable(key: jax.Array, alpha, shape=(), dtype=None) -> jax.Array:
    """Standard symmetric alpha-stable draws, ``E exp(i u X) = exp(-|u|^alpha)`` (0 < alpha <= 2).

    Chambers-Mallows-Stuck (1976) with ``beta = 0``: for ``V ~ U(-pi/2, pi/2)`` and
    ``W ~ Exp(1)``,

        X = sin(alpha V) / cos(V)^(1/alpha) * (cos((1 - alpha) V) / W)^((1 - alpha)/alpha).

    ``alpha = 1`` gives the standard Cauchy law, ``alpha = 2`` gives ``N(0, 2)``. ``V`` and ``W`` are drawn
    on the open intervals (``|V| < pi/2``, ``W >= eps/2``), so the draws are finite for every index of
    ``[stable_index_limit(dtype), 2]``. A smaller one (below 0.3084 in float32, 0.0968 in float64) is
    refused: the largest draws (``V`` next to ``-pi/2``, ``W`` near 0) then overflow, and the smallest
    indices put a visible mass of the law itself beyond the dtype's largest number (``alpha = 0.1`` in
    float32: 1.3e-4 of it). ``alpha`` given as numbers is checked; a traced one is not.
    """
    dtype = dtype or jnp.result_type(float)
    _check_stable_index("alpha", alpha, dtype)
    kv, kw = jax.random.split(key)
    half_pi = np.pi / 2
    # V and W on the open intervals: -pi/2 rounds below -pi/2 in float32, where cos V < 0 and
    # cos(V)^(1/alpha) is NaN (one draw in 2^23: stable runs were flagged as diverged), and W = 0
    # gives an infinite draw for alpha < 1
    low = _uniform_angle_low(dtype)
    v = jnp.maximum(jax.random.uniform(kv, shape, dtype, -half_pi, half_pi), low)
    w = jnp.maximum(jax.random.exponential(kw, shape, dtype), np.finfo(dtype).eps / 2)
    return _chambers_mallows_stuck(v, w, jnp.asarray(alpha, dtype))


def alpha_stable_noise(scale: float = 1.0, alpha: float = 1.5, *, name: str = "noise") -> Noise:
    """Additive symmetric alpha-stable gradient noise ``g + s xi`` (``s = hp[name]``, ``alpha = hp["alpha"]``,
    or ``hp[name + "_alpha"]`` for another ``name``: say beside ACClip, whose exponent is ``alpha`` too).

    ``xi_i`` are i.i.d. :func:`symmetric_stable` draws: infinite variance for ``alpha < 2``
    (Simsekli et al. 2019's model of heavy-tailed gradient noise). ``alpha`` (every grid value too) lies in
    ``(0, 2]`` and is at least :func:`stable_index_limit` of the default float dtype (0.3084 in float32),
    below which the largest draws overflow.
    """
    check_nonnegative("scale", scale)
    check_positive("alpha", alpha)
    _check_stable_index("alpha", alpha)

    alpha_name = _shape_name(name, "alpha")

    def apply(key, grads, hp, objective):
        s, a = hp[name], hp[alpha_name]
        return _add_to_leaves(key, grads, lambda k, shape, dt: s * symmetric_stable(k, a, shape, dt))

    def check(hp):
        range_check({name: _NONNEGATIVE})(hp)
        if alpha_name in hp:
            _check_stable_index(alpha_name, hp[alpha_name])

    return Noise("gradient", apply, {name: scale, alpha_name: alpha}, "alpha_stable", check)


def pareto_noise(scale: float = 1.0, index: float = 1.5, *, name: str = "noise") -> Noise:
    """Additive symmetric Pareto gradient noise ``g + s xi`` (``s = hp[name]``, ``nu = hp["index"]``, or
    ``hp[name + "_index"]`` for another ``name``), heavy-tailed and cheap.

    ``xi_i = S_i (V_i^(-1/nu) - 1)`` with ``V_i = 1 - U_i``, ``U_i ~ U[0, 1)``, and a random sign
    ``S_i``: ``|xi_i|`` is Lomax (Pareto II), ``P(|xi_i| > x) = (1 + x)^(-nu)``, so ``E|xi_i|^a`` is
    finite iff ``a < nu`` (:func:`pareto_moment`); ``nu <= 2`` gives infinite variance with a finite
    ``alpha``-moment for every ``alpha < nu`` (the noise of seed 002, Assumption 4.4.1). Inverse-CDF
    draws, no rejection loop: far cheaper than :func:`student_t_noise` under ``vmap``. ``V >= 2^-23``
    in float32 (``2^-52`` in float64), so the tail is cut at ``|xi| <= 2^(23/nu) - 1`` (about 9,000 for
    ``nu = 1.75``, a level exceeded with probability ``2^-23``): the law above, cut at the resolution of
    the uniform draws. The cut must fit in the dtype, ``2^(23/nu) <= 2^127`` (half float32's range), so
    ``nu >= 23/127 = 0.181`` in float32 and ``nu >= 52/1023 = 0.0508`` in float64
    (:func:`pareto_index_limit`); a smaller index (every grid value is checked, in the default float
    dtype) is refused, since its law puts a visible mass beyond the largest number (``nu = 0.05``:
    ``P(|xi| > 3.4e38) = 1.2%``). With it, the draws are always finite.
    """
    check_nonnegative("scale", scale)
    check_positive("index", index)

    index_name = _shape_name(name, "index")
    check_values("index", index, *_pareto_index_rule())

    def apply(key, grads, hp, objective):
        s, nu = hp[name], hp[index_name]

        def draw(k, shape, dt):
            k_size, k_sign = jax.random.split(k)
            v = 1 - jax.random.uniform(k_size, shape, dt)
            return s * jax.random.rademacher(k_sign, shape, dt) * (v ** (-1 / jnp.asarray(nu, dt)) - 1)

        return _add_to_leaves(key, grads, draw)

    def check(hp):
        range_check({name: _NONNEGATIVE, index_name: _POSITIVE})(hp)
        range_check({index_name: _pareto_index_rule()})(hp)

    return Noise("gradient", apply, {name: scale, index_name: index}, "pareto", check)


def pareto_index_limit(dtype=None) -> float:
    """The smallest tail index :func:`pareto_noise` takes in ``dtype`` (default: the default float dtype):
    ``nmant / (maxexp - 1)``, 23/127 in float32 and 52/1023 in float64, for which the largest draw,
    ``2^(nmant/nu) - 1`` (the uniform draws are multiples of ``2^-nmant``), is below ``2^(maxexp - 1)``."""
    info = jnp.finfo(np.dtype(dtype or jnp.result_type(float)))
    return info.nmant / (info.maxexp - 1)


def _pareto_index_rule(dtype=None):
    dtype = np.dtype(dtype or jnp.result_type(float))
    info, limit = jnp.finfo(dtype), pareto_index_limit(dtype)
    return (
        lambda v: v >= limit,
        f">= {info.nmant}/{info.maxexp - 1} = {limit:.4g} in {dtype} (the largest draw 2^({info.nmant}/index) must "
        f"stay within {dtype}'s range; float64, enabled with jax.config.update('jax_enable_x64', True), takes "
        f"indices down to {pareto_index_limit(np.float64):.4g})",
    )


def pareto_moment(index: float, a: float) -> float:
    """``E|xi|^a = Gamma(a + 1) Gamma(nu - a) / Gamma(nu)`` for :func:`pareto_noise`'s ``xi`` (``nu = index``).

    Infinite for ``a >= nu``; ``a = 1`` gives ``1 / (nu - 1)``.
    """
    nu = check_positive("index", index)
    a = check_nonnegative("a", a)
    if a >= nu:
        return float("inf")
    return float(np.exp(math.lgamma(a + 1) + math.lgamma(nu - a) - math.lgamma(nu)))


def multiplicative_noise(
    sigma: float = 1.0, *, law: str = "gaussian", p: float | None = None, name: str = "noise"
) -> Noise:
    """Multiplicative ("ML") noise ``g + sqrt(sigma F(theta)) Z``, ``E Z = 0``, ``E|Z|^2 = 1`` (seed 003, eq. 2.10).

    ``F`` is the training objective at the current parameters (it must be >= 0; negative
    values are clipped at 0), ``d`` the number of parameters, ``sigma = hp[name]``. The law of
    ``Z``: ``"gaussian"``, ``N(0, I/d)``; ``"sphere"``, uniform on the unit sphere;
    ``"sparse"``, ``B U / sqrt(p)`` with ``B ~ Bernoulli(p)`` and ``U`` uniform on the sphere
    (rare, large kicks that stress-test the Markov bounds of seed 003's Thm 3.1; in float32
    ``p`` is resolved only to about 1e-7, so use float64 for ``p`` below 1e-5). The noise
    covariance has trace ``sigma F(theta)`` and vanishes where ``F = 0``. On
    ``F = |theta|^2 / 2`` one GD step gives exactly ``E[F(theta')] = ((1 - lr)^2 + lr^2 sigma / 2)
    F(theta)`` (seed 003 digest, Sec. 2.4), whatever the law.
    """
    check_nonnegative("sigma", sigma)
    if law not in ("gaussian", "sphere", "sparse"):
        raise ValueError(f"law must be 'gaussian', 'sphere' or 'sparse', got {law!r}")
    if law == "sparse":
        if p is None or not 0 < p <= 1:
            raise ValueError(f"law='sparse' needs a probability 0 < p <= 1, got p={p!r}")
        p = float(p)
    elif p is not None:
        raise ValueError(f"p is the kick probability of law='sparse'; law={law!r} takes none")

    def apply(key, grads, hp, objective):
        d = sum(int(np.prod(jnp.shape(leaf))) for leaf in jax.tree_util.tree_leaves(grads))
        variance = jnp.maximum(hp[name] * objective(), 0.0)
        if law == "gaussian":
            amplitude = jnp.sqrt(variance / d)
            return _add_to_leaves(
                key, grads, lambda k, shape, dt: amplitude.astype(dt) * jax.random.normal(k, shape, dt)
            )
        k_dir, k_kick = jax.random.split(key)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        draws = [
            jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
            for k, x in zip(jax.random.split(k_dir, len(leaves)), leaves)
        ]
        norm = tree_norm(draws)
        scale = jnp.sqrt(variance) / jnp.where(norm > 0, norm, 1.0)
        if law == "sparse":
            scale = jnp.where(jax.random.uniform(k_kick) < p, scale / np.sqrt(p), 0.0)
        return jax.tree_util.tree_unflatten(treedef, [x + scale.astype(x.dtype) * z for x, z in zip(leaves, draws)])

    return Noise("gradient", apply, {name: sigma}, "multiplicative", range_check({name: _NONNEGATIVE}))


def label_reselect(
    n_classes: int, probability: float = 0.0, *, mode: str = "reselect", name: str = "label_noise"
) -> Noise:
    """Dynamic label noise for classification, redrawn every step (seed 004, App. B.4 and Sec. 4.4).

    With probability ``p = hp[name]`` each label of the batch is ``"reselect"``-ed uniformly among
    all ``n_classes`` (it may come back correct: the flip rate is ``p (1 - 1/n_classes)``, B.4's
    wording) or ``"flip"``-ped to a uniformly chosen *different* class (flip rate ``p``, Sec. 4.4's
    wording). Needs integer labels ``"y"``.
    """
    n_classes = check_int("n_classes", n_classes, minimum=2)
    check_nonnegative("probability", probability)
    probability_range = (lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
    check_values("probability", probability, *probability_range)
    if mode not in ("reselect", "flip"):
        raise ValueError(f"mode must be 'reselect' or 'flip', got {mode!r}")

    def apply(key, batch, hp):
        y = batch["y"]
        k_hit, k_new = jax.random.split(key)
        hit = jax.random.uniform(k_hit, jnp.shape(y)) < hp[name]
        if mode == "reselect":
            new = jax.random.randint(k_new, jnp.shape(y), 0, n_classes)
        else:
            new = (y + jax.random.randint(k_new, jnp.shape(y), 1, n_classes)) % n_classes
        return {**batch, "y": jnp.where(hit, new, y).astype(y.dtype)}

    return Noise("batch", apply, {name: probability}, f"label_{mode}", range_check({name: probability_range}))


def label_noise(scale: float = 1.0, *, name: str = "label_noise") -> Noise:
    """Dynamic Gaussian label noise: ``y_j + s xi_j`` for each sample of each step's batch.

    Needs samples with a ``"y"`` entry (e.g. :func:`dynsim.problems.linear_regression_1d`).
    """
    check_nonnegative("scale", scale)

    def apply(key, batch, hp):
        y = batch["y"]
        return {**batch, "y": y + hp[name] * jax.random.normal(key, jnp.shape(y), jnp.result_type(y))}

    return Noise("batch", apply, {name: scale}, "label", range_check({name: _NONNEGATIVE}))
