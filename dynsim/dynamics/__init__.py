"""Update maps: :class:`Dynamics` ``(init, step)`` and the builders ``gd``, ``sgd``, ``from_optax``.

A dynamics knows nothing of grids or devices: it describes one trajectory, and
:func:`dynsim.simulate` runs millions of them.
"""

from .base import REQUIRED, Bound, Dynamics, TrainState, bind, resolve_hyperparams
from .noise import (
    Noise,
    alpha_stable_noise,
    gaussian_noise,
    label_noise,
    label_reselect,
    multiplicative_noise,
    student_t_noise,
    symmetric_stable,
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
    "saddle_modes",
    "LOG_ZERO",
    "Noise",
    "gaussian_noise",
    "student_t_noise",
    "alpha_stable_noise",
    "multiplicative_noise",
    "label_noise",
    "label_reselect",
    "symmetric_stable",
]
