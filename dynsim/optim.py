"""Optimizers the seed papers define, as optax ``GradientTransformation``s (seed 002, thesis chs. 3-4).

What optax already has is composed, not rewritten: clipped SGD is ``clip_by_global_norm`` then
``sgd``, normalized SGD is ``normalize_by_update_norm`` then ``sgd``, coordinate-wise clipping is
``clip`` then ``sgd``. ACClip (thesis Algorithm 1) is new. Each constructor takes
``learning_rate`` first and numbers only, so :func:`dynsim.dynamics.from_optax` turns every
argument into a traced hyperparameter (a grid axis):

    dyn = ds.dynamics.from_optax(problem, ds.optim.clipped_sgd, threshold=0.25)
    ds.simulate(dyn, grid={"lr": lrs, "threshold": taus}, ...)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["clipped_sgd", "normalized_sgd", "coordinate_clipped_sgd", "ScaleByACClipState", "scale_by_acclip", "acclip"]


def clipped_sgd(learning_rate, threshold) -> optax.GradientTransformation:
    """GClip / clipped GD: ``x <- x - lr min(1, threshold / |g|) g`` (thesis eq. 3.5, Sec. 4.3).

    ``|g|`` is the global Euclidean norm over all parameters; the step is at most
    ``lr * threshold`` long. The thesis writes it ``h_c = min(eta_c, gamma eta_c / |g|)``:
    ``learning_rate = eta_c``, ``threshold = gamma``.
    """
    return optax.chain(optax.clip_by_global_norm(threshold), optax.sgd(learning_rate))


def normalized_sgd(learning_rate, beta) -> optax.GradientTransformation:
    """Normalized GD: ``x <- x - lr g / (|g| + beta)`` (thesis eq. 3.6).

    With ``lr = eta_n`` it is clipped GD's twin: for ``clipped_sgd(eta_n / beta, beta)`` the step
    sizes satisfy ``h_c / 2 <= h_n <= h_c``.
    """
    return optax.chain(optax.normalize_by_update_norm(1.0, eps=beta), optax.sgd(learning_rate))


def coordinate_clipped_sgd(learning_rate, threshold) -> optax.GradientTransformation:
    """CClip: ``x_i <- x_i - lr clip(g_i, -threshold, threshold)`` for every coordinate (thesis Sec. 4.5)."""
    return optax.chain(optax.clip(threshold), optax.sgd(learning_rate))


class ScaleByACClipState(NamedTuple):
    """ACClip's state: the momentum ``m`` and the running ``alpha``-moment ``tau^alpha`` of each coordinate."""

    momentum: optax.Updates
    tau_alpha: optax.Updates


def scale_by_acclip(b1=0.9, b2=0.99, alpha=1.0, eps=1e-5, tau0=1.0) -> optax.GradientTransformation:
    """The direction of ACClip (thesis Algorithm 1), elementwise, before the learning rate:

    ``m_k = b1 m_{k-1} + (1 - b1) g_k``, ``tau_k^alpha = b2 tau_{k-1}^alpha + (1 - b2) |g_k|^alpha``,
    ``ghat_k = min(tau_k / (|m_k| + eps), 1) m_k``; ``m_0 = 0``, ``tau_0^alpha = tau0^alpha``.
    """

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
    return optax.chain(scale_by_acclip(b1, b2, alpha, eps, tau0), optax.scale_by_learning_rate(learning_rate))
