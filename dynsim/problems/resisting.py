"""Resisting oracles for the delta-dependence of nonsmooth optimization (seed 002, Thm 5.5.2, proof in Sec. 5.7.6).

Thm 5.5.2: an algorithm that sees only (generalized) gradients of a 1-Lipschitz ``f`` with
``sup_k f(x_k) - inf f <= Delta`` needs at least ``Delta / (8 delta)`` of them to find a
(delta, eps)-stationary point, ``eps < 1``. The proof answers every query with ``f'(x_k) = 1`` and then
builds two functions consistent with those answers that share no (delta, eps)-stationary point, so no
output can serve both. On a 1-D function whose slopes are ``+-1``, ``x`` is (delta, eps)-stationary for
``eps < 1`` exactly when a kink lies within ``delta`` of ``x`` (the Goldstein subdifferential over
``[x - delta, x + delta]`` is then ``[-1, 1]``, else ``{1}`` or ``{-1}``), so everything here is a
statement about kinks.

The proof's pair does not work, in two ways (:func:`resisting_pair` builds it with ``variant="thesis"``):

* its second function is the first shifted by ``1.5 delta``, less than the ``2 delta`` that two
  ``delta``-balls need to be disjoint: ``c + 0.75 delta`` is (delta, eps)-stationary for both, for any
  kink ``c`` - and the algorithm knows ``c = x_1 - 2 delta`` from its own first query;
* between two distant queries ``f`` falls with slope -1 to the midpoint, so ``inf f`` is not at
  ``x_1 - 2 delta`` as the proof says, and ``sup_k f(x_k) - inf f`` grows with the distance.

``variant="repaired"`` keeps the idea with other constants: plateaus of slope +1 of radius ``3 delta``
around the queries, the shift ``2.5 delta`` (inside the plateaus, so both functions answer 1 at every
query), a gap between plateaus longer than ``9 delta`` filled with zig-zags of half-period in
``(4.5 delta, 9 delta]`` (kinks more than ``4.5 delta = shift + 2 delta`` apart, so no point is within
``delta`` of a kink of both), a shorter gap left at slope +1. Then ``sup_k f(x_k) - inf f <= 15 delta K``,
and the bound reads ``K >= Delta / (15 delta)``: still ``Omega(Delta / delta)``, with a smaller constant.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_choice, check_positive

from .base import Problem

__all__ = ["alternating_slopes", "resisting_pair", "ResistingPair"]


def alternating_slopes(kinks, *, theta0: float | None = None) -> Problem:
    """The 1-Lipschitz ``f`` with slope -1 left of the first kink and slopes alternating at each kink:
    ``f(x) = -(x - c_1) + 2 sum_j (-1)^(j+1) max(0, x - c_j)`` for sorted kinks ``c_1 < ... < c_m``.
    Starts at ``theta0`` (default: the first kink)."""
    c = np.sort(np.asarray(kinks, dtype=float).ravel())
    if c.size == 0 or not np.all(np.isfinite(c)) or np.any(np.diff(c) <= 0):
        raise ValueError(f"kinks must be distinct finite numbers, got {kinks!r}")
    signs = np.where(np.arange(c.size) % 2 == 0, 2.0, -2.0)
    start = float(c[0] if theta0 is None else theta0)

    def loss(x, sample, hp):
        xs = jnp.asarray(c, x.dtype)
        return -(x[0] - xs[0]) + jnp.sum(jnp.asarray(signs, x.dtype) * jnp.maximum(0.0, x[0] - xs))

    def init(key, hp):
        return jnp.full((1,), start, jnp.result_type(float))

    return Problem(loss=loss, init=init, name=f"alternating_slopes({c.size} kinks)")


class ResistingPair(NamedTuple):
    """Two functions with ``f'(x_k) = g'(x_k) = 1`` at every query: ``g(x) = f(x - shift)``."""

    f: Problem
    g: Problem
    kinks_f: np.ndarray
    kinks_g: np.ndarray
    shift: float


def _gap_kinks(a: float, b: float, min_half_period: float | None) -> list[float]:
    """Kinks of the descent-ascent that fills the gap ``(a, b)`` between two plateaus of slope +1."""
    if min_half_period is None:  # the thesis: down to the midpoint, up again
        return [a, (a + b) / 2]
    length = b - a
    if length <= 2 * min_half_period:
        return []  # too short for zig-zags whose kinks are far enough apart: slope +1 throughout
    n = int(np.ceil(length / (4 * min_half_period)))  # n down-up pairs, half-period in (m, 2m]
    return list(a + np.arange(2 * n) * length / (2 * n))


def resisting_pair(queries, delta: float, *, variant: str = "repaired") -> ResistingPair:
    """The two functions of Thm 5.5.2's resisting oracle for the queries ``x_1 < ... < x_K``.

    ``variant="thesis"`` (Sec. 5.7.6): ``f' = 1`` within ``2 delta`` of a query and right of the last,
    ``f' = -1`` left of ``x_1 - 2 delta`` and on ``[x_k + 2 delta, (x_k + x_{k+1})/2]``, ``f' = 1`` on
    ``[(x_k + x_{k+1})/2, x_{k+1} - 2 delta]``; ``g`` is ``f`` shifted by ``1.5 delta``. ``variant="repaired"``:
    plateaus of radius ``3 delta``, shift ``2.5 delta``, and zig-zags of half-period in ``(4.5 delta, 9 delta]``
    in gaps longer than ``9 delta`` (see the module). Overlapping plateaus merge.
    """
    q = np.sort(np.asarray(queries, dtype=float).ravel())
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError(f"queries must be a non-empty sequence of finite numbers, got {queries!r}")
    delta = check_positive("delta", delta)
    variant = check_choice("variant", variant, ("thesis", "repaired"))
    radius, shift, min_half_period = (
        (2 * delta, 1.5 * delta, None) if variant == "thesis" else (3 * delta, 2.5 * delta, 4.5 * delta)
    )
    kinks = [q[0] - radius]
    for left, right in zip(q[:-1], q[1:]):
        a, b = left + radius, right - radius
        if b > a:
            kinks += _gap_kinks(a, b, min_half_period)
    kinks_f = np.asarray(kinks)
    kinks_g = kinks_f + shift
    return ResistingPair(alternating_slopes(kinks_f), alternating_slopes(kinks_g), kinks_f, kinks_g, shift)
