"""Update maps: :class:`Dynamics` ``(init, step)`` and the builders ``gd``, ``sgd``, ``from_optax``,
``ingd`` and ``stochastic_ingd``.

A dynamics knows nothing of grids or devices: it describes one trajectory, and
:func:`dynsim.simulate` runs millions of them.
"""

from .base import REQUIRED, Bound, Dynamics, TrainState, bind, resolve_hyperparams
from .ingd import (
    INGDState,
    StochasticINGDParameters,
    StochasticINGDState,
    ingd,
    ingd_inner_steps,
    ingd_oracle_bound,
    lagged_output_index,
    stochastic_ingd,
    stochastic_ingd_parameters,
)
from .noise import (
    Noise,
    alpha_stable_noise,
    gaussian_noise,
    label_noise,
    label_reselect,
    multiplicative_noise,
    pareto_index_limit,
    pareto_moment,
    pareto_noise,
    stable_index_limit,
    student_t_df_limit,
    student_t_noise,
    symmetric_stable,
    uniform_noise,
)
from .saddle import LOG_ZERO, saddle_modes
from .training import from_optax, gd, sgd

__all__ = [
    "Dynamics",
    "TrainState",
    "REQUIRED",
    "Bound",
    "bind",
    "resolve_hyperparams",
    "gd",
    "sgd",
    "from_optax",
    "ingd",
    "stochastic_ingd",
    "INGDState",
    "StochasticINGDState",
    "StochasticINGDParameters",
    "stochastic_ingd_parameters",
    "ingd_inner_steps",
    "ingd_oracle_bound",
    "lagged_output_index",
    "saddle_modes",
    "LOG_ZERO",
    "Noise",
    "gaussian_noise",
    "uniform_noise",
    "student_t_noise",
    "alpha_stable_noise",
    "pareto_noise",
    "pareto_moment",
    "pareto_index_limit",
    "stable_index_limit",
    "student_t_df_limit",
    "multiplicative_noise",
    "label_noise",
    "label_reselect",
    "symmetric_stable",
]
