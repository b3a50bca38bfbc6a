"""The :class:`Dynamics` type: a pair of pure single-trajectory functions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax

from dynsim import prng
from dynsim._validate import LEARNING_RATE_NAMES, check_learning_rate

__all__ = ["Dynamics", "TrainState", "REQUIRED", "resolve_hyperparams", "bind", "Bound"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a hyperparameter that has none: it must be given (in ``grid`` or ``hp``)."""


def _identity(state):
    return state


def _no_data(state, hp):
    return None


class Dynamics(NamedTuple):
    """Update map of one trajectory: ``state = init(key, hp)``, ``state = step(state, key, hp)``.

    ``hp`` is the dict of hyperparameters of one grid cell. Values of traced
    hyperparameters (learning rate, noise level, ...) are JAX scalars, so one compiled
    program serves every value; values of the names in ``static`` (batch size, dataset
    size, width) are Python scalars, and the engine compiles once per value. A finite
    dataset shared by the whole run arrives as ``hp["data"]``.

    Only ``init`` and ``step`` are required: a hand-built ``Dynamics(init, step)`` runs
    through :func:`dynsim.simulate` with any grid axis. The other fields describe it to
    the engine and to observables.

    Attributes
    ----------
    hyperparams:
        Names the step reads, with defaults (:data:`REQUIRED` for none). ``None`` accepts
        any grid axis.
    static:
        Names whose values change array shapes.
    shared_data:
        ``shared_data(key, hp) -> data``, drawn once per run (and per static value) from
        ``dynsim.prng.data_key(seed)`` and passed to ``init``/``step`` as ``hp["data"]``.
    params_of:
        ``state -> params``, the parameters observables look at (default: the state). Give it where the
        state holds more than the parameters (a step counter, an iterate average): distances and norms
        (``log_distance``, ``final_state``) are taken over every leaf of ``params``.
    data_of:
        ``(state, hp) -> data``, the training data of the trajectory (default: none).
    problem:
        The problem the dynamics trains on, if any (observables default to it).
    check:
        ``check(hp)``, called with the resolved hyperparameters of each static group
        (traced values as NumPy arrays of every grid value) before anything is compiled;
        raises ``ValueError`` on bad values.
    name:
        A label stored with results.
    """

    init: Callable[[jax.Array, Mapping[str, Any]], Any]
    step: Callable[[Any, jax.Array, Mapping[str, Any]], Any]
    hyperparams: Mapping[str, Any] | None = None
    static: frozenset[str] = frozenset()
    shared_data: Callable[[jax.Array, Mapping[str, Any]], Any] | None = None
    params_of: Callable[[Any], Any] = _identity
    data_of: Callable[[Any, Mapping[str, Any]], Any] = _no_data
    problem: Any = None
    check: Callable[[Mapping[str, Any]], None] | None = None
    name: str = "custom"


class TrainState(NamedTuple):
    """State of the built-in dynamics: parameters, optimizer state, per-replica dataset, and (when
    asked for with ``track_batch_loss=True``) the minibatch loss of the last step."""

    params: Any
    opt_state: Any = ()
    data: Any = ()
    batch_loss: Any = ()


def resolve_hyperparams(dynamics: Dynamics, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``dynamics.hyperparams`` updated by ``given``; unknown or missing names raise."""
    if "data" in given:
        raise ValueError("'data' is reserved for the shared dataset and cannot be a hyperparameter")
    if dynamics.hyperparams is None:
        return dict(given)
    allowed = dict(dynamics.hyperparams)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for dynamics {dynamics.name!r}; allowed: {sorted(allowed)}"
        )
    resolved = {**allowed, **given}
    missing = sorted(n for n, v in resolved.items() if v is REQUIRED)
    if missing:
        raise ValueError(
            f"hyperparameter(s) {missing} of dynamics {dynamics.name!r} have no default: give them in grid (or hp)"
        )
    return resolved


class Bound(NamedTuple):
    """A dynamics with its hyperparameters (and shared data) fixed: ``step(state, key)``."""

    init: Callable[[jax.Array], Any]
    step: Callable[[Any, jax.Array], Any]
    hp: Mapping[str, Any]


def bind(dynamics: Dynamics, hp: Mapping[str, Any] | None = None, seed: int = 0) -> Bound:
    """Fix the hyperparameters of one cell, for code that wants ``step(state, key)``.

    The shared dataset, if any, is the one :func:`dynsim.simulate` uses with this ``seed``.
    """
    hp = resolve_hyperparams(dynamics, dict(hp or {}))
    for name in LEARNING_RATE_NAMES:  # as simulate does for its grid
        if hp.get(name) is not None:
            check_learning_rate(name, hp[name])
    if dynamics.check is not None:
        dynamics.check(hp)
    if dynamics.shared_data is not None:
        hp["data"] = dynamics.shared_data(prng.data_key(prng.key(seed)), hp)
    frozen = MappingProxyType(hp)

    def init(key):
        return dynamics.init(key, dict(frozen))

    @functools.cache
    def structure():
        return jax.tree_util.tree_structure(jax.eval_shape(init, prng.key(0)))

    def step(state, key):
        if jax.tree_util.tree_structure(state) != structure():
            raise TypeError(
                f"step takes a state as init(key) returns it, {structure()}; got {jax.tree_util.tree_structure(state)}"
            )
        return dynamics.step(state, key, dict(frozen))

    return Bound(init=init, step=step, hp=frozen)
