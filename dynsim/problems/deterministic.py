"""Data-free objectives: quadratics and ``100 sin(t1) sin(t2)`` (seed 000, Sec. 3.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_nonnegative, check_positive

from .base import Problem

__all__ = ["quadratic", "sin_product"]


def quadratic(P, *, theta0=None, init_std: float = 1.0) -> Problem:
    """``F(theta) = 0.5 * theta^T P theta`` (half convention: the Hessian is ``P``).

    GD ``theta <- theta - lr P theta`` converges iff ``lr < 2 / lambda_max(P)`` (for
    ``P`` positive definite). The fixed point is 0.

    Parameters
    ----------
    P:
        Symmetric ``d x d`` matrix (a scalar means ``d = 1``).
    theta0:
        Fixed initial point; if ``None``, ``theta_0 ~ N(0, init_std**2 I)``.
    """
    P = np.atleast_2d(np.asarray(P, dtype=float))
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be a square matrix, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"P must be finite, got {P.tolist()}")
    if not np.allclose(P, P.T):
        raise ValueError("P must be symmetric")
    d = P.shape[0]
    check_nonnegative("init_std", init_std)
    if theta0 is not None:
        theta0 = np.broadcast_to(np.asarray(theta0, dtype=float), (d,)).copy()

    def loss(theta, sample, hp):
        return 0.5 * theta @ (jnp.asarray(P, theta.dtype) @ theta)

    def init(key, hp):
        dtype = jnp.result_type(float)
        if theta0 is not None:
            return jnp.asarray(theta0, dtype)
        return init_std * jax.random.normal(key, (d,), dtype)

    return Problem(loss=loss, init=init, fixed_point=np.zeros(d), name="quadratic")


def sin_product(scale: float = 100.0, *, low: float = -np.pi, high: float = np.pi) -> Problem:
    """``F(t1, t2) = scale * sin(t1) sin(t2)`` (seed 000, Sec. 3.4; no factor 1/2).

    Its Hessian has norm at most ``L = scale``, so GD converges to a minimum for almost
    every start iff ``lr < 2 / L`` (0.02 for ``scale = 100``). The initial point is uniform
    on ``[low, high]^2`` (seed 000 does not state it; ``[-pi, pi]^2`` by default).
    """
    check_positive("scale", scale)

    def loss(theta, sample, hp):
        return scale * jnp.sin(theta[0]) * jnp.sin(theta[1])

    def init(key, hp):
        return jax.random.uniform(key, (2,), jnp.result_type(float), low, high)

    return Problem(loss=loss, init=init, name="sin_product")
