"""The rank-1 saddle of a two-layer net (seed 004, Sec. 4.2, App. A.6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_choice, check_int, check_n_data, check_nonnegative, check_positive

from .base import Problem

__all__ = ["rank1_saddle"]


def rank1_saddle(
    chi: str = "gaussian",
    *,
    n_data: int | None = None,
    width: int = 1,
    noise_var: float = 4.0,
    c0: float = 1.0,
    init_std: float = 1.0,
    per_replica_data: bool = False,
) -> Problem:
    """``l(w, u; x, y) = -chi * sum_i u_i w_i`` with ``chi = c0 * x * y`` (seed 004, eq. 11, 65).

    This is the two-layer net ``f(x) = sum_i u_i sigma(w_i x)`` with the half-squared loss
    ``(f - y)^2 / 2``, expanded to second order at the saddle ``w = u = 0`` (constant
    dropped; ``c0 = sigma'(0)``: 1 for tanh and linear, 1/2 for swish). An SGD step with
    batch mean ``chi_t`` is the simultaneous update (eq. 66)

        w <- w + lr chi_t u,    u <- u + lr chi_t w,

    so the modes ``w + u`` and ``w - u`` are multiplied by ``1 + lr chi_t`` and
    ``1 - lr chi_t`` (eq. 67). All ``width`` units share ``chi_t``.

    Parameters
    ----------
    chi:
        ``"gaussian"``: ``x ~ N(0, 1)``, ``eps ~ N(0, noise_var)``, ``y = mu x + (1 - mu) eps``,
        with ``mu`` a hyperparameter (default 0.5); samples are ``{"x", "eps"}`` and ``y`` is
        formed from ``mu`` inside the loss, so one dataset serves every ``mu``.
        ``"two_point"``: ``x y`` is 1 or ``a`` with probability 1/2 each (Fig. 1b), with ``a``
        a hyperparameter (default -0.5); samples are ``{"b"}``, a fair 0/1 coin.
    n_data:
        Finite dataset size, or ``None`` for fresh samples every step.
    noise_var:
        Variance of ``eps``. The paper writes ``N(0, 4)`` in Sec. 4.2 and ``N(0, sqrt(2) I)``
        in the Fig. 7 caption; dynsim reads ``N(0, 4)`` as variance 4 (std 2), the default.
    c0:
        ``sigma'(0)`` of the activation.
    init_std:
        ``w_i, u_i ~ N(0, init_std**2)`` independently.
    """
    check_choice("chi", chi, ("gaussian", "two_point"))
    check_n_data(n_data)
    width = check_int("width", width, minimum=1)
    check_positive("noise_var", noise_var)
    check_positive("c0", c0)
    check_nonnegative("init_std", init_std)
    noise_std = float(noise_var) ** 0.5

    if chi == "gaussian":

        def sample(key):
            kx, ke = jax.random.split(key)
            return {"x": jax.random.normal(kx), "eps": noise_std * jax.random.normal(ke)}

        def chi_of(s, hp):
            mu = hp["mu"]
            return c0 * s["x"] * (mu * s["x"] + (1 - mu) * s["eps"])

        hyperparams = {"mu": 0.5}
    else:

        def sample(key):
            return {"b": jax.random.bernoulli(key).astype(jnp.result_type(float))}

        def chi_of(s, hp):
            return c0 * (s["b"] + (1 - s["b"]) * hp["a"])

        hyperparams = {"a": -0.5}

    def loss(params, s, hp):
        return -chi_of(s, hp) * jnp.sum(params["u"] * params["w"])

    def init(key, hp):
        kw, ku = jax.random.split(key)
        dtype = jnp.result_type(float)
        return {
            "w": init_std * jax.random.normal(kw, (width,), dtype),
            "u": init_std * jax.random.normal(ku, (width,), dtype),
        }

    zero = {"w": np.zeros(width), "u": np.zeros(width)}
    return Problem(
        loss=loss,
        init=init,
        sample=sample,
        n_data=n_data,
        per_replica_data=per_replica_data,
        fixed_point=zero,
        hyperparams=hyperparams,
        name=f"rank1_saddle_{chi}",
    )
