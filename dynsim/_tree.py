"""Reductions over all leaves of a pytree (parameters, gradients, updates), and a check of a map's output type."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_norm(tree) -> jax.Array:
    """``sqrt(sum_i x_i^2)`` over every entry of every leaf: the global Euclidean norm."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def tree_vdot(a, b) -> jax.Array:
    """``sum_i a_i b_i`` over every entry of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def check_same_type(new, old, what: str, returns: str = "a state", error: type[TypeError] = TypeError) -> None:
    """Raise ``error`` (a ``TypeError``) unless ``new`` has the tree structure, leaf shapes and dtypes of ``old``.

    For a map the runs carry through a loop (``what`` names it, e.g. ``"step(x, key)"``; it returns
    ``returns``): a mismatch otherwise surfaces as a loop's or a broadcast's error that names neither,
    or is silently promoted.
    Works on arrays and on abstract values (``jax.eval_shape``, tracers).
    """

    def kind(tree):
        return jax.tree_util.tree_map(lambda a: f"{jnp.result_type(a)}{list(jnp.shape(a))}", tree)

    if kind(new) != kind(old):
        raise error(
            f"{what} must return {returns} of the same structure, shapes and dtypes as it is given: "
            f"given {kind(old)}, returned {kind(new)}"
        )
