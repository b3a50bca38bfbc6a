"""Reductions over all leaves of a pytree (parameters, gradients, updates), compensated summation, and a check of a
map's output type."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def tree_norm(tree) -> jax.Array:
    """``sqrt(sum_i x_i^2)`` over every entry of every leaf: the global Euclidean norm."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def scaled_norm(tree) -> jax.Array:
    """:func:`tree_norm` without its overflow and underflow: ``2^e sqrt(sum_i (x_i / 2^e)^2)``, ``2^e`` the power of
    two just above ``max|x_i|``.

    The squares of entries beyond ``1.8e19`` (float32; ``1.3e154`` in float64) overflow, and those below
    ``1e-19`` underflow, though the norm is a normal number. Where :func:`tree_norm` is finite and above
    ``sqrt(n tiny / eps)`` (no square it dropped could matter), this is it, to the bit; elsewhere the scaled
    sum, whose scale is applied as two normal powers of two (``2^e`` alone is subnormal for the largest
    floats, and flushed to zero). ``inf`` (or NaN) where an entry is.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    dtype = jnp.result_type(*leaves)
    plain = tree_norm(leaves).astype(dtype)
    info = jnp.finfo(dtype)
    size = sum(leaf.size for leaf in leaves)
    in_range = jnp.isfinite(plain) & (plain > np.sqrt(size * float(info.tiny) / float(info.eps)))
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)).astype(dtype) for leaf in leaves]))
    ok = (m > 0) & jnp.isfinite(m)
    _, e = jnp.frexp(jnp.where(ok, m, 1))  # m = f 2^e, 1/2 <= f < 1
    low, high = jnp.exp2((e // 2).astype(dtype)), jnp.exp2((e - e // 2).astype(dtype))
    total = sum(jnp.sum(jnp.square(leaf.astype(dtype) / low / high)) for leaf in leaves)
    return jnp.where(in_range, plain, jnp.where(ok, jnp.sqrt(total) * low * high, m))


def compensated(total, comp):
    """The sums ``total - comp`` of compensated accumulators (:func:`kahan_add`), leaf by leaf."""
    return jax.tree_util.tree_map(jnp.subtract, total, comp)


def kahan_add(total, comp, value):
    """One step of compensated (Kahan) summation: ``(total, comp)`` holds the sum ``total - comp``.

    A non-finite sum keeps the old compensation (``inf - inf`` would make it NaN)."""
    y = value - comp
    new = total + y
    return new, jnp.where(jnp.isfinite(new), (new - total) - y, comp)


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
