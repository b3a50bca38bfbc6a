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


def materialize(tree, anchor, small: int | None = SMALL):
    """``tree`` with every floating-point leaf of at most ``small`` elements (all, for ``None``)
    divided elementwise by ``1.0`` built from the integer ``anchor``.

    The divisor is ``where(iota >= anchor, 1, anchor * 0 + 1)``, a full array that is 1.0
    everywhere and that XLA can neither fold nor see as a broadcast: XLA rewrites a division by
    a broadcast into a multiplication by its reciprocal, which it fuses and recomputes like any
    cheap op (measured: a net's two fresh normal vectors were redrawn, Threefry and all, for
    each of the 40,000 weights they update).
    """
    anchor = jnp.asarray(anchor)
    one = anchor.astype(jnp.float32) * 0 + 1  # x * 0 is not folded: it is NaN for x = inf

    def store(x):
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact) or (small is not None and jnp.size(x) > small):
            return x
        dtype = jnp.result_type(x)
        index = jax.lax.iota(anchor.dtype, jnp.size(x)).reshape(jnp.shape(x))  # 0, 1, ..., size - 1
        return x / jnp.where(index >= anchor, jnp.ones((), dtype), one.astype(dtype))

    return jax.tree_util.tree_map(store, tree)
