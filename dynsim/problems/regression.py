"""One-dimensional problems with data: linear regression (seed 004, Sec. 2-3 and App. A.1-A.4) and the
rare-jump oracle of seed 002's lower bound for heavy-tailed noise (Thm 4.4.3)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_int, check_n_data, check_nonnegative, check_positive, check_real

from .base import Problem

__all__ = ["linear_regression_1d", "RareJumpConstants", "rare_jump_constants", "rare_jump_oracle"]


def linear_regression_1d(
    n_data: int | None = None,
    *,
    w_star: float = 0.0,
    noise_std: float = 0.0,
    x_std: float = 1.0,
    w0: float = 1.0,
    init_std: float = 0.0,
    loss_scale: float = 0.5,
    per_replica_data: bool = False,
) -> Problem:
    """Linear regression ``y = w_star x + noise_std * eps`` with one weight ``w``.

    Loss convention (seed 004, digest Sec. 0): ``l(w; x, y) = loss_scale * (w x - y)**2``
    with ``loss_scale = 1/2`` by default, so the curvature is ``h = E[x^2]``, GD is stable
    for ``lr < 2/h`` and an SGD step on a batch ``B`` of size ``S`` is

        w <- w - (lr / S) sum_{j in B} x_j (x_j w - y_j)        (seed 004, eq. 15)

    Interpolating (``noise_std = 0``): ``w_{t+1} - w_star = (1 - lr * mean_B x^2)(w_t - w_star)``
    (eq. 6, 16). Non-interpolating (``noise_std > 0``): the affine Kesten recursion of
    App. A.3, whose stationary law has a power-law tail.

    Parameters
    ----------
    n_data:
        Dataset size ``N``, or ``None`` for fresh samples every step (``N = infinity``).
    w_star:
        The teacher weight. Keep it at 0 (the default) to resolve tiny distances
        ``|w - w_star|`` in floating point: with ``w_star = 1`` float32 cannot go below 6e-8.
    noise_std:
        Label noise ``y = w_star x + noise_std * eps``, ``eps ~ N(0, 1)``.
    x_std:
        ``x ~ N(0, x_std**2)``.
    w0, init_std:
        ``w_0 = w0 + init_std * N(0, 1)``.
    loss_scale:
        ``1/2`` (default) or ``1`` (the no-half convention of seed 004, Sec. 2).
    per_replica_data:
        Redraw the finite dataset for every trajectory.

    Samples are ``{"x": x, "y": y}``; the fixed point (interpolating case) is ``w_star``.
    """
    check_n_data(n_data)
    w_star, w0 = check_real("w_star", w_star), check_real("w0", w0)
    check_nonnegative("noise_std", noise_std)
    check_positive("x_std", x_std)
    check_nonnegative("init_std", init_std)
    check_positive("loss_scale", loss_scale)

    def sample(key):
        kx, ke = jax.random.split(key)
        x = x_std * jax.random.normal(kx)
        return {"x": x, "y": w_star * x + noise_std * jax.random.normal(ke)}

    def loss(w, s, hp):
        return loss_scale * (w * s["x"] - s["y"]) ** 2

    def init(key, hp):
        return jnp.asarray(w0, dtype=jnp.result_type(float)) + init_std * jax.random.normal(key)

    return Problem(
        loss=loss,
        init=init,
        sample=sample,
        n_data=n_data,
        per_replica_data=per_replica_data,
        fixed_point=float(w_star) if noise_std == 0 else None,
        name="linear_regression_1d",
    )


class RareJumpConstants(NamedTuple):
    """The constants of :func:`rare_jump_oracle`: ``eps``, ``gamma``, the minimizer ``b``, the jump chance ``p``."""

    eps: float
    gamma: float
    b: float
    p: float


def rare_jump_constants(alpha: float, k: int, nu: int) -> RareJumpConstants:
    """``eps = 1/(16 k^((alpha-1)/alpha))``, ``gamma = (4 eps)^(1/(alpha-1))``, ``b = (2 - nu) eps``,
    ``p = gamma^alpha - 2 nu gamma eps`` (seed 002, proof of Thm 4.4.3)."""
    alpha = check_positive("alpha", alpha)
    if not 1 < alpha <= 2:
        raise ValueError(f"alpha must be in (1, 2], got {alpha}")
    k = check_int("k", k, minimum=1)
    if nu not in (0, 1):
        raise ValueError(f"nu must be 0 or 1 (the coin of the lower bound), got {nu!r}")
    eps = 1 / (16 * k ** ((alpha - 1) / alpha))
    gamma = (4 * eps) ** (1 / (alpha - 1))
    return RareJumpConstants(eps, gamma, (2 - nu) * eps, gamma**alpha - 2 * nu * gamma * eps)


def rare_jump_oracle(alpha: float, k: int, nu: int, *, x0: float = 0.25) -> Problem:
    """The strongly convex, heavy-tailed lower-bound instance of seed 002, Thm 4.4.3 (proof in Sec. 4.7).

    ``f_b(x) = (x - b)^2 / 2`` on ``[0, 1/2]`` (project onto it, e.g. with :func:`dynsim.optim.project`),
    seen only through the stochastic gradient ``g(x) = x - z / (2 gamma)``, ``z ~ Bernoulli(p)``:
    ``E g = x - p/(2 gamma) = x - b`` exactly and ``E|g|^alpha <= 1`` on the domain, with the
    constants of :func:`rare_jump_constants`. ``nu`` is the coin of the proof: ``b`` is ``2 eps`` or
    ``eps``, and an algorithm that has seen no jump cannot tell which, so after ``k`` samples every
    algorithm has ``(1/2) sum_nu E f_{b_nu}(x_k) - f* >= eps^2 / 64 = 2^-14 k^(-2(alpha-1)/alpha)``.
    A stream: each sample is one ``z``; the per-sample loss ``x^2/2 - z x/(2 gamma)`` has the gradient
    ``g``. ``fixed_point`` is ``b``; evaluate ``f_b`` as ``(x - b)^2 / 2`` (the loss differs from it by
    a random constant).
    """
    c = rare_jump_constants(alpha, k, nu)
    p, gamma = c.p, c.gamma

    def sample(key):
        return {"z": jax.random.bernoulli(key, p).astype(jnp.result_type(float))}

    def loss(w, s, hp):
        x = w[0]
        return x**2 / 2 - s["z"] * x / (2 * gamma)

    def init(key, hp):
        return jnp.full((1,), x0, jnp.result_type(float))

    return Problem(
        loss=loss,
        init=init,
        sample=sample,
        fixed_point=np.array([c.b]),
        name=f"rare_jump(alpha={alpha}, k={k}, nu={nu})",
    )
