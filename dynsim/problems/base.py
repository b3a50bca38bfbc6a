"""The :class:`Problem` type: a per-sample (or per-minibatch) loss, where its data come from, and an init."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Problem", "draw_dataset", "objective", "batch_loss"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Problem(NamedTuple):
    """A loss and the law of its data, for one trajectory.

    Attributes
    ----------
    loss:
        ``loss(params, sample, hp) -> scalar``, the loss of **one** sample. ``hp`` is the
        dict of hyperparameters of the cell (it holds, e.g., the label-noise level ``mu``
        of the rank-1 saddle, so that one dataset serves every ``mu``). Data-free problems
        receive ``sample=None``.
    init:
        ``init(key, hp) -> params``, the initial parameters (any pytree).
    sample:
        ``sample(key) -> sample``, one draw from the data law, a pytree of arrays. It must
        not depend on ``hp``: a dataset is drawn once and shared by all grid cells.
        ``None`` for a data-free (deterministic) objective.
    n_data:
        Size ``N`` of a finite dataset, drawn once per run from the data fold of the seed
        (``dynsim.prng.data_key``) and shared by all cells and replicas. ``None`` means
        a stream: fresh samples every step (``N = infinity``).
    per_replica_data:
        Draw a fresh finite dataset for every trajectory (from its own key) instead,
        to average over datasets.
    fixed_point:
        The known fixed point of the dynamics, if any (a pytree like ``params``).
    hyperparams:
        Hyperparameters the loss reads, with their defaults (e.g. ``{"mu": 0.5}``).
    name:
        A short label stored with results.
    dataset:
        A fixed dataset (a pytree of arrays with the example axis first), used instead of
        drawing one from ``sample``: real data such as scikit-learn's digits.
    batch_coupled:
        ``True`` when the loss of a minibatch is not the mean of per-sample losses, as with
        batch normalization in training mode, whose statistics couple the examples of a
        batch. ``loss(params, batch, hp)`` then receives the whole minibatch (example axis
        first) and returns its loss ``L_B``; the training objective is ``L`` on the whole
        dataset (full-batch statistics). Per-example quantities (per-example gradients,
        their noise) are undefined and refused, and a minibatch must hold 2 or more samples.
    """

    loss: Callable[..., jax.Array]
    init: Callable[..., Any]
    sample: Callable[[jax.Array], Any] | None = None
    n_data: int | None = None
    per_replica_data: bool = False
    fixed_point: Any = None
    hyperparams: Mapping[str, Any] = _EMPTY
    name: str = "problem"
    dataset: Any = None
    batch_coupled: bool = False

    @property
    def kind(self) -> str:
        """``"deterministic"`` (no data), ``"finite"`` (N samples) or ``"stream"``."""
        if self.dataset is not None:
            return "finite"
        if self.sample is None:
            return "deterministic"
        return "stream" if self.n_data is None else "finite"


def draw_dataset(problem: Problem, key: jax.Array, n: int) -> Any:
    """``n`` i.i.d. samples ``problem.sample(k_i)`` with ``k_i = split(key, n)[i]``.

    The keys are Threefry "fold-like" splits, so the first ``n`` samples of a larger
    dataset drawn from the same key are the same: datasets of different sizes are nested.
    A problem with a fixed ``dataset`` returns its first ``n`` examples.
    """
    if problem.dataset is not None:
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[:n], problem.dataset)
    return jax.vmap(problem.sample)(jax.random.split(key, n))


def batch_loss(problem: Problem, params: Any, batch: Any, hp: Mapping[str, Any]) -> jax.Array:
    """Mean per-sample loss over a batch (leading axis); the loss itself if data-free or
    :attr:`Problem.batch_coupled`."""
    if batch is None or problem.batch_coupled:
        return problem.loss(params, batch, hp)
    losses = jax.vmap(problem.loss, in_axes=(None, 0, None))(params, batch, hp)
    return jnp.mean(losses)


def objective(problem: Problem, params: Any, data: Any, hp: Mapping[str, Any]) -> jax.Array:
    """The training objective ``F(params) = (1/N) sum_i loss(params, x_i)``.

    For a data-free problem, the loss itself. A stream has no finite objective:
    a ``ValueError`` says so.
    """
    if problem.kind == "stream":
        raise ValueError(
            f"problem {problem.name!r} is a stream (n_data=None: fresh samples every step) and has "
            "no finite training objective; give it a finite n_data"
        )
    return batch_loss(problem, params, data, hp)
