"""SGD at the rank-1 saddle in mode coordinates, tracked in log space (seed 004, eq. 67)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dynsim._validate import check_int
from dynsim.problems.base import Problem

from .base import REQUIRED, Dynamics, TrainState
from .training import _data_of, _init_params_and_data, _minibatch, problem_dynamics

__all__ = ["saddle_modes", "LOG_ZERO"]

LOG_ZERO = -1e30
"""Stored for ``log 0``: a mode hit exactly (``1 -+ lr chi_t = 0``) stays at 0 forever. A finite
stand-in for ``-inf`` keeps the engine from taking the hit for a divergence."""


def _chi(problem: Problem):
    """``chi(sample, hp)`` of a rank-1 saddle problem, read off its loss: ``l = -chi sum_i u_i w_i``."""
    shapes = jax.eval_shape(problem.init, jax.random.key(0), dict(problem.hyperparams))
    if not (isinstance(shapes, dict) and set(shapes) == {"w", "u"}):
        raise ValueError(f"saddle_modes needs a rank-1 saddle problem with params {{'w', 'u'}}, got {shapes}")
    width = shapes["w"].shape[0]

    def chi(sample, hp):
        ones = {"w": jnp.ones(shapes["w"].shape), "u": jnp.ones(shapes["u"].shape)}
        return -problem.loss(ones, sample, hp) / width

    return chi


def _square_in_range(x):
    """``x^2``, or the dtype's largest value where it overflows."""
    return jnp.minimum(x**2, jnp.finfo(x.dtype).max)


def saddle_modes(problem: Problem, batch_size: int = 1, *, replace: bool = True, lr: float = REQUIRED) -> Dynamics:
    """SGD on :func:`dynsim.problems.rank1_saddle` in the modes ``h = w + u``, ``m = w - u``, in log space.

    The SGD step ``w <- w + lr chi_t u``, ``u <- u + lr chi_t w`` (eq. 66) multiplies the
    modes by ``1 + lr chi_t`` and ``1 - lr chi_t`` (eq. 67), ``chi_t`` the batch mean of
    ``c0 x y``. The state holds

    * ``log_plus = log(|h_t| / |h_0|)`` and ``log_minus = log(|m_t| / |m_0|)``, sums of
      ``log|1 -+ lr chi_s|``: exact at any depth (in (w, u) coordinates, phase III runs reach
      ``w == u`` bitwise and ``log|w - u| = -inf`` after a few hundred steps);
    * ``sq_plus, sq_minus = (1 -+ lr chi_t)^2`` of the last step, whose time average
      estimates the mean-square factors ``E(1 -+ lr chi)^2``; a square beyond the dtype's range (``|lr chi| >
      1.8e19`` in float32) is held at its largest value, so that the state stays finite and the log-modes go
      on (an infinite one froze the run, its exponent included: 0.31 for 42.6 at ``lr = 1e19``); its average
      is then ``inf``, as the factor's is.

    The minibatch law (batch size, replacement, finite or fresh data) and the
    hyperparameters are those of :func:`dynsim.dynamics.sgd` on the same problem.
    """
    check_int("batch_size", batch_size, minimum=1)
    chi = _chi(problem)
    data_of = _data_of(problem)

    def init(key, hp) -> TrainState:
        _, data = _init_params_and_data(problem, key, hp)
        zero = jnp.zeros((), jnp.result_type(float))
        modes = {"log_plus": zero, "log_minus": zero, "sq_plus": zero + 1, "sq_minus": zero + 1}
        return TrainState(params=modes, data=data)

    def step(state: TrainState, key, hp) -> TrainState:
        batch = _minibatch(problem, key, data_of(state, hp), hp, hp["batch_size"], replace)
        c = jnp.mean(jax.vmap(chi, in_axes=(0, None))(batch, hp))
        plus, minus = 1 + hp["lr"] * c, 1 - hp["lr"] * c
        m = state.params

        def grow(log_mode, factor):
            return jnp.maximum(log_mode + jnp.log(jnp.abs(factor)), LOG_ZERO)

        modes = {
            "log_plus": grow(m["log_plus"], plus),
            "log_minus": grow(m["log_minus"], minus),
            "sq_plus": _square_in_range(plus),
            "sq_minus": _square_in_range(minus),
        }
        return state._replace(params=modes)

    return problem_dynamics(
        problem,
        init,
        step,
        {"lr": lr, "batch_size": batch_size},
        {"batch_size"},
        replace=replace,
        name=f"saddle_modes({problem.name}, batch_size={batch_size}, replace={replace})",
    )
