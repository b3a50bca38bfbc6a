"""A fusion barrier for XLA:CPU that changes no value.

XLA:CPU fuses a cheap producer into each of its consumers and recomputes it there. When a
value feeds several consumers (the new state feeds the divergence check, the freeze and
every observable; a minibatch feeds several state leaves), the whole chain behind it,
random draws and all, is recomputed once per consumer. XLA does not duplicate a division,
and dividing by an exact 1.0 that it cannot constant-fold returns every operand unchanged
(IEEE division by 1 is exact, for infinities and NaN too). ``jax.lax.optimization_barrier``
is removed before fusion on CPU and does not help. Measured on 2 CPU cores: 3x on the
rank-1 saddle, 2x on 1-D regression.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SMALL = 64
"""Leaves with more elements than this are left alone: large arrays (network weights) come out of
matrix products, which XLA stores anyway, and an extra division would cost a full pass over them."""


def materialize(tree, small: int | None = SMALL):
    """``tree`` with every floating-point leaf of at most ``small`` elements (all, for ``None``)
    divided by an exact 1.0 computed from the leaf itself.

    The divisor is ``where(isnan(x * 0), 1, x * 0 + 1)``: 1.0 for every element, infinities and
    NaN included, and nothing XLA can fold (``x * 0`` is NaN for infinite ``x``). Two earlier
    divisors failed, both measured: ``anchor * 0 + 1`` broadcast from a scalar, because XLA
    rewrites a division by a broadcast into a multiplication by its reciprocal and fuses that
    freely (a net's fresh samples were redrawn, Threefry and all, for each of the 40,000 weights
    they update); and a divisor built from the step's key, because computing it repeated the
    key's hash in every division.
    """

    def store(x):
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact) or (small is not None and jnp.size(x) > small):
            return x
        zero = x * 0
        return x / jnp.where(jnp.isnan(zero), jnp.ones_like(x), zero + 1)

    return jax.tree_util.tree_map(store, tree)
