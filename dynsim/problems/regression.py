"""One-dimensional linear regression (seed 004, Sec. 2-3 and App. A.1-A.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dynsim._validate import check_n_data, check_nonnegative, check_positive

from .base import Problem

__all__ = ["linear_regression_1d"]


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
