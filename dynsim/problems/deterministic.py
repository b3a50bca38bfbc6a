"""Data-free objectives: quadratics, ``100 sin(t1) sin(t2)`` (seed 000, Sec. 3.4), the toys of seed 001
(Examples 1-3: a quadratic flattened by ``tanh``, single-neuron networks), and the two functions of
seed 002's lower bound for GD under (L0, L1)-smoothness (Thm 3.4.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_nonnegative, check_positive, check_real

from .base import Problem
from .nets import activation_fn

__all__ = ["quadratic", "flattened_quadratic", "single_neuron", "exploding_function", "slow_function", "sin_product"]


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


def exploding_function(l1: float, m: float) -> Problem:
    """The 1-D function that forces GD to take small steps (seed 002, proof of Thm 3.4.2).

    ``f(x) = l1 x^2 / 2 + 1 / (2 l1)`` for ``|x| <= 1/l1`` and ``exp(l1 |x| - 1) / l1`` beyond: C^2,
    ``(L0, L1) = (l1, l1)``-smooth (the thesis prints ``(1, l1)``; the quadratic piece needs
    ``L0 = l1``), minimum ``1/(2 l1)`` at 0. It starts at ``x0 = (log m + 1) / l1``, where
    ``f'(x0) = m``. GD with a step ``h > 2 x0 / m`` moves farther out and diverges.
    """
    l1, m = check_positive("l1", l1), check_positive("m", m)
    if m <= 1:
        raise ValueError(f"m must be > 1 (the gradient norm at the start), got {m}")
    x0 = (np.log(m) + 1) / l1

    def loss(theta, sample, hp):
        x = theta[0]
        inner = jnp.clip(x, -1 / l1, 1 / l1)
        outer = jnp.maximum(jnp.abs(x), 1 / l1)
        return jnp.where(jnp.abs(x) <= 1 / l1, l1 * inner**2 / 2 + 1 / (2 * l1), jnp.exp(l1 * outer - 1) / l1)

    return Problem(
        loss=loss, init=_fixed_or_uniform([x0], 1, 1.0), fixed_point=np.zeros(1), name=f"exploding({l1}, {m})"
    )


def slow_function(eps: float, delta: float) -> Problem:
    """The 1-D function on which small GD steps are slow (seed 002, proof of Thm 3.4.2).

    ``f(x) = (eps/4)(6 x^2 - x^4)`` for ``|x| <= 1`` and ``2 eps (|x| - 1) + 5 eps / 4`` beyond: C^2,
    ``f'' <= 3 eps``, minimum 0 at 0. From ``x0 = 1 + delta / eps`` (``f(x0) = 2 delta + 5 eps / 4``)
    the gradient is exactly ``2 eps`` until ``|x| <= 1``, so GD with step ``h`` needs
    ``delta / (2 eps^2 h)`` steps before ``|f'|`` can drop below ``2 eps``.
    """
    eps, delta = check_positive("eps", eps), check_positive("delta", delta)

    def loss(theta, sample, hp):
        x = theta[0]
        inner = jnp.clip(x, -1.0, 1.0)
        return jnp.where(jnp.abs(x) <= 1, eps / 4 * (6 * inner**2 - inner**4), 2 * eps * (jnp.abs(x) - 1) + 5 * eps / 4)

    return Problem(
        loss=loss,
        init=_fixed_or_uniform([1 + delta / eps], 1, 1.0),
        fixed_point=np.zeros(1),
        name=f"slow({eps}, {delta})",
    )


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
