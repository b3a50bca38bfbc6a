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

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._tree import tree_norm
from dynsim._validate import check_int, check_nonnegative, check_positive, range_check

__all__ = [
    "Noise",
    "gaussian_noise",
    "uniform_noise",
    "student_t_noise",
    "alpha_stable_noise",
    "pareto_noise",
    "pareto_moment",
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

    ``Var xi_i = df / (df - 2)`` for ``df > 2``; heavy-tailed with tail index ``df``.
    """
    check_nonnegative("scale", scale)
    check_positive("df", df)
    df_name = _shape_name(name, "df")

    def apply(key, grads, hp, objective):
        s, df_ = hp[name], hp[df_name]
        return _add_to_leaves(key, grads, lambda k, shape, dt: s * jax.random.t(k, df_, shape, dt))

    check = range_check({name: _NONNEGATIVE, df_name: _POSITIVE})
    return Noise("gradient", apply, {name: scale, df_name: df}, "student_t", check)


def symmetric_stable(key: jax.Array, alpha, shape=(), dtype=None) -> jax.Array:
    """Standard symmetric alpha-stable draws, ``E exp(i u X) = exp(-|u|^alpha)`` (0 < alpha <= 2).

    Chambers-Mallows-Stuck (1976) with ``beta = 0``: for ``V ~ U(-pi/2, pi/2)`` and
    ``W ~ Exp(1)``,

        X = sin(alpha V) / cos(V)^(1/alpha) * (cos((1 - alpha) V) / W)^((1 - alpha)/alpha).

    ``alpha = 1`` gives the standard Cauchy law, ``alpha = 2`` gives ``N(0, 2)``.
    """
    dtype = dtype or jnp.result_type(float)
    kv, kw = jax.random.split(key)
    half_pi = np.pi / 2
    # V and W on the open intervals: -pi/2 rounds below -pi/2 in float32, where cos V < 0 and
    # cos(V)^(1/alpha) is NaN (one draw in 2^23: stable runs were flagged as diverged), and W = 0
    # gives an infinite draw for alpha < 1
    low = np.asarray(-half_pi, dtype)
    if np.cos(np.float64(low)) <= 0:
        low = np.nextafter(low, np.asarray(0, dtype))
    v = jnp.maximum(jax.random.uniform(kv, shape, dtype, -half_pi, half_pi), low)
    w = jnp.maximum(jax.random.exponential(kw, shape, dtype), np.finfo(dtype).eps / 2)
    alpha = jnp.asarray(alpha, dtype)
    return jnp.sin(alpha * v) / jnp.cos(v) ** (1 / alpha) * (jnp.cos((1 - alpha) * v) / w) ** ((1 - alpha) / alpha)


def alpha_stable_noise(scale: float = 1.0, alpha: float = 1.5, *, name: str = "noise") -> Noise:
    """Additive symmetric alpha-stable gradient noise ``g + s xi`` (``s = hp[name]``, ``alpha = hp["alpha"]``,
    or ``hp[name + "_alpha"]`` for another ``name``: say beside ACClip, whose exponent is ``alpha`` too).

    ``xi_i`` are i.i.d. :func:`symmetric_stable` draws: infinite variance for ``alpha < 2``
    (Simsekli et al. 2019's model of heavy-tailed gradient noise).
    """
    check_nonnegative("scale", scale)
    check_positive("alpha", alpha)
    if alpha > 2:
        raise ValueError(f"alpha must be in (0, 2], got {alpha!r}")

    alpha_name = _shape_name(name, "alpha")

    def apply(key, grads, hp, objective):
        s, a = hp[name], hp[alpha_name]
        return _add_to_leaves(key, grads, lambda k, shape, dt: s * symmetric_stable(k, a, shape, dt))

    check = range_check({name: _NONNEGATIVE, alpha_name: _STABLE_INDEX})
    return Noise("gradient", apply, {name: scale, alpha_name: alpha}, "alpha_stable", check)


def pareto_noise(scale: float = 1.0, index: float = 1.5, *, name: str = "noise") -> Noise:
    """Additive symmetric Pareto gradient noise ``g + s xi`` (``s = hp[name]``, ``nu = hp["index"]``, or
    ``hp[name + "_index"]`` for another ``name``), heavy-tailed and cheap.

    ``xi_i = S_i (V_i^(-1/nu) - 1)`` with ``V_i = 1 - U_i``, ``U_i ~ U[0, 1)``, and a random sign
    ``S_i``: ``|xi_i|`` is Lomax (Pareto II), ``P(|xi_i| > x) = (1 + x)^(-nu)``, so ``E|xi_i|^a`` is
    finite iff ``a < nu`` (:func:`pareto_moment`); ``nu <= 2`` gives infinite variance with a finite
    ``alpha``-moment for every ``alpha < nu`` (the noise of seed 002, Assumption 4.4.1). Inverse-CDF
    draws, no rejection loop: far cheaper than :func:`student_t_noise` under ``vmap``. ``V >= 2^-23``
    in float32 (``2^-52`` in float64), so the tail is cut at ``|xi| <= 2^(23/nu)`` (about 9,000 for
    ``nu = 1.75``, a level exceeded with probability ``2^-23``); the draws are always finite.
    """
    check_nonnegative("scale", scale)
    check_positive("index", index)

    index_name = _shape_name(name, "index")

    def apply(key, grads, hp, objective):
        s, nu = hp[name], hp[index_name]

        def draw(k, shape, dt):
            k_size, k_sign = jax.random.split(k)
            v = 1 - jax.random.uniform(k_size, shape, dt)
            return s * jax.random.rademacher(k_sign, shape, dt) * (v ** (-1 / jnp.asarray(nu, dt)) - 1)

        return _add_to_leaves(key, grads, draw)

    check = range_check({name: _NONNEGATIVE, index_name: _POSITIVE})
    return Noise("gradient", apply, {name: scale, index_name: index}, "pareto", check)


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

    probability_range = (lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
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
