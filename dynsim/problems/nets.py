"""Two-layer networks near their rank-1 saddle (seed 004, Sec. 4.3-4.4, Figs. 1a, 5, 7, 8)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_choice, check_int, check_n_data, check_nonnegative, check_positive, check_real

from .base import Problem

__all__ = ["ACTIVATIONS", "C0", "activation_fn", "scalar_net", "two_layer_net"]

ACTIVATIONS = ("tanh", "swish", "relu", "linear")
C0 = {"tanh": 1.0, "swish": 0.5, "relu": float("nan"), "linear": 1.0}
"""``sigma'(0)``: the factor ``c0`` of the saddle's ``chi = c0 x y`` (ReLU has none: digest Sec. 1.6)."""


def activation_fn(name: str):
    """The activation function named ``name`` (one of :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return {"tanh": jnp.tanh, "swish": jax.nn.swish, "relu": jax.nn.relu, "linear": lambda z: z}[name]


def scalar_net(
    activation: str = "tanh",
    *,
    data: str = "gaussian",
    n_data: int | None = None,
    noise_var: float = 4.0,
    teacher: tuple[float, float] = (0.1, 0.9),
    x_std: float = 1.0,
    init_std: float = 0.5,
    loss_scale: float = 0.5,
    per_replica_data: bool = False,
) -> Problem:
    """``f(x) = u sigma(w x)`` with scalar ``w, u`` and the loss ``loss_scale (f(x) - y)^2``.

    Near ``w = u = 0`` it is the rank-1 saddle ``-c0 x y u w`` (``c0 = sigma'(0)``, see :data:`C0`):
    :func:`dynsim.problems.rank1_saddle` is its linearisation.

    Data: ``"gaussian"``: ``x ~ N(0, 1)``, ``y = mu x + (1 - mu) eps``, ``eps ~ N(0, noise_var)`` with
    ``mu`` a hyperparameter (default 0.1); ``"teacher"``: ``y = a sigma(x) + b eps``, ``eps ~ N(0, 1)``,
    with ``(a, b) = teacher`` (seed 004's Fig. 5 uses a swish teacher with ``(0.1, 0.9)``).
    ``x ~ N(0, x_std^2)`` in both. ``w_0, u_0 ~ N(0, init_std^2)``.
    """
    sigma = activation_fn(activation)
    check_choice("data", data, ("gaussian", "teacher"))
    check_n_data(n_data)
    check_positive("noise_var", noise_var)
    check_positive("loss_scale", loss_scale)
    check_positive("x_std", x_std)
    check_nonnegative("init_std", init_std)
    noise_std = float(noise_var) ** 0.5
    a, b = (check_real(f"teacher[{i}]", v) for i, v in enumerate(teacher))

    if data == "gaussian":

        def sample(key):
            kx, ke = jax.random.split(key)
            return {"x": x_std * jax.random.normal(kx), "eps": noise_std * jax.random.normal(ke)}

        def target(s, hp):
            return hp["mu"] * s["x"] + (1 - hp["mu"]) * s["eps"]

        hyperparams = {"mu": 0.1}
    else:

        def sample(key):
            kx, ke = jax.random.split(key)
            x = x_std * jax.random.normal(kx)
            return {"x": x, "y": a * sigma(x) + b * jax.random.normal(ke)}

        def target(s, hp):
            return s["y"]

        hyperparams = {}

    def loss(params, s, hp):
        return loss_scale * (params["u"] * sigma(params["w"] * s["x"]) - target(s, hp)) ** 2

    def init(key, hp):
        kw, ku = jax.random.split(key)
        dtype = jnp.result_type(float)
        return {"w": init_std * jax.random.normal(kw, (), dtype), "u": init_std * jax.random.normal(ku, (), dtype)}

    return Problem(
        loss=loss,
        init=init,
        sample=sample,
        n_data=n_data,
        per_replica_data=per_replica_data,
        fixed_point={"w": 0.0, "u": 0.0},
        hyperparams=hyperparams,
        name=f"scalar_net({activation}, {data})",
    )


class _TwoLayer(nn.Module):
    width: int
    d_out: int
    activation: str

    @nn.compact
    def __call__(self, x):
        def uniform(fan_in):  # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1.0 / np.sqrt(fan_in)
            return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)

        h = nn.Dense(self.width, use_bias=False, kernel_init=uniform(x.shape[-1]), name="W")(x)
        h = activation_fn(self.activation)(h)
        return nn.Dense(self.d_out, use_bias=False, kernel_init=uniform(self.width), name="U")(h)


def two_layer_net(
    d: int = 200,
    width: int = 200,
    activation: str = "tanh",
    *,
    noise_var: float = 4.0,
    reduction: str = "mean",
) -> Problem:
    """``f(x) = U sigma(W x)`` (flax, no biases) on fresh samples ``x ~ N(0, I_d)``, ``y = mu x + (1 - mu) eps``.

    ``eps ~ N(0, noise_var I_d)``; ``mu`` is a hyperparameter. Loss: ``(1/d) |f(x) - y|^2``
    (``reduction="mean"``, PyTorch's ``MSELoss``; the digest shows a sum-reduced half loss diverges
    at the paper's learning rates) or ``(1/2) |f(x) - y|^2`` (``"half_sum"``). Initialisation
    ``U(+-1/sqrt(fan_in))``. The saddle is ``W = U = 0`` (``fixed_point``). Parameters: flax variables
    ``{"W": {"kernel"}, "U": {"kernel"}}`` (kernels are ``(in, out)``).
    """
    check_int("d", d, minimum=1)
    check_int("width", width, minimum=1)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("reduction", reduction, ("mean", "half_sum"))
    noise_std = float(check_positive("noise_var", noise_var)) ** 0.5
    model = _TwoLayer(width=width, d_out=d, activation=activation)

    def sample(key):
        kx, ke = jax.random.split(key)
        dtype = jnp.result_type(float)
        return {"x": jax.random.normal(kx, (d,), dtype), "eps": noise_std * jax.random.normal(ke, (d,), dtype)}

    def loss(params, s, hp):
        y = hp["mu"] * s["x"] + (1 - hp["mu"]) * s["eps"]
        r = model.apply({"params": params}, s["x"]) - y
        return jnp.mean(r**2) if reduction == "mean" else 0.5 * jnp.sum(r**2)

    def init(key, hp):
        params = model.init(key, jnp.zeros((d,), jnp.result_type(float)))["params"]
        return jax.tree_util.tree_map(lambda p: p.astype(jnp.result_type(float)), params)

    return Problem(
        loss=loss,
        init=init,
        sample=sample,
        # sigma(0) = 0 for every activation here, so every gradient vanishes at W = U = 0
        fixed_point={"W": {"kernel": np.zeros((d, width))}, "U": {"kernel": np.zeros((width, d))}},
        hyperparams={"mu": 0.1},
        name=f"two_layer_net({d}-{width}-{d}, {activation}, {reduction})",
    )
