"""Data-free objectives: quadratics, ``100 sin(t1) sin(t2)`` (seed 000, Sec. 3.4), and the toys of
seed 001 (Examples 1-3): a quadratic flattened by ``tanh`` and single-neuron networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_nonnegative, check_positive, check_real

from .base import Problem
from .nets import activation_fn

__all__ = ["quadratic", "flattened_quadratic", "single_neuron", "sin_product"]


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
    P = _square_matrix(P)
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


def _square_matrix(P) -> np.ndarray:
    P = np.atleast_2d(np.asarray(P, dtype=float))
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be a square matrix, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"P must be finite, got {P.tolist()}")
    if not np.allclose(P, P.T):
        raise ValueError("P must be symmetric")
    return P


def _fixed_or_uniform(theta0, d: int, box: float):
    check_positive("box", box)
    if theta0 is not None:
        theta0 = np.broadcast_to(np.asarray(theta0, dtype=float), (d,)).copy()

    def init(key, hp):
        dtype = jnp.result_type(float)
        if theta0 is not None:
            return jnp.asarray(theta0, dtype)
        return jax.random.uniform(key, (d,), dtype, -box, box)

    return init


def flattened_quadratic(P, *, theta0=None, box: float = 0.5) -> Problem:
    """``F(theta) = tanh(0.5 theta^T P theta)``: a quadratic flattened far from its minimum (seed 001, Example 2).

    Its Hessian at the minimum 0 is ``P`` (``tanh'(0) = 1``), the same as :func:`quadratic`'s, so
    0 is linearly unstable for ``lr > 2 / lambda_max(P)``; yet GD stays bounded, because the
    gradient vanishes far away. With ``P = diag(40, 2)`` and ``lr = 2/39`` it settles on the
    2-cycle ``theta_1 = +-a``, ``tanh(20 a^2) = 1/sqrt(40)``, where ``F = 1/sqrt(40)``, RP = 0 and
    ``L(theta; lr grad F) = 2/lr`` exactly. The initial point is ``theta0`` or uniform on
    ``[-box, box]^d``.
    """
    P = _square_matrix(P)
    d = P.shape[0]

    def loss(theta, sample, hp):
        return jnp.tanh(0.5 * theta @ (jnp.asarray(P, theta.dtype) @ theta))

    return Problem(
        loss=loss, init=_fixed_or_uniform(theta0, d, box), fixed_point=np.zeros(d), name="flattened_quadratic"
    )


def single_neuron(
    activation: str = "tanh", *, x: float = 1.0, y: float = 0.0, theta0=(13.0, 0.01), box: float = 1.0
) -> Problem:
    """``F(theta) = (theta_1 sigma(theta_2 x) - y)^2``: a one-neuron network fitting one point (seed 001, Example 3).

    With ``(x, y) = (1, 0)`` the minima are the valley ``theta_2 = 0``, where the Hessian is
    ``diag(0, 2 theta_1^2)`` for ``sigma`` linear or tanh: GD with step ``lr`` can only settle
    where ``2 theta_1^2 < 2/lr``. From ``theta0 = (13, 0.01)`` at ``lr = 2/150`` the linear network
    diverges; the tanh network travels along the valley to ``theta_1 = 8.6165``, with sharpness
    ``148.49``, just below ``2/lr = 150``. ``theta0=None`` draws the start uniformly on
    ``[-box, box]^2``. ``activation``: ``"tanh"``, ``"linear"``, ``"relu"`` or ``"swish"``.
    """
    sigma = activation_fn(activation)
    x, y = check_real("x", x), check_real("y", y)

    def loss(theta, sample, hp):
        return (theta[0] * sigma(theta[1] * x) - y) ** 2

    return Problem(loss=loss, init=_fixed_or_uniform(theta0, 2, box), name=f"single_neuron({activation})")


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
