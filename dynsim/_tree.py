"""Reductions over all leaves of a pytree (parameters, gradients, updates)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_norm(tree) -> jax.Array:
    """``sqrt(sum_i x_i^2)`` over every entry of every leaf: the global Euclidean norm."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def tree_vdot(a, b) -> jax.Array:
    """``sum_i a_i b_i`` over every entry of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
