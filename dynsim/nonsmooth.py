"""(delta, eps)-stationarity of nonsmooth functions (seed 002, thesis ch. 5).

A point ``x`` is (delta, eps)-stationary (Def. 5.3.1) when ``d(0, df(x + delta B)) <= eps``, where
``df(x + delta B) = conv(U_{y in x + delta B} df(y))`` is Goldstein's delta-subdifferential (``B`` the
Euclidean unit ball, ``df`` the Clarke generalized gradient). This module computes it:

* :func:`min_norm_point`: the minimum-norm point of the convex hull of a finite set of vectors
  (pairwise Frank-Wolfe with exact line search, then Wolfe's exact affine steps on the support), with
  a certified lower bound and the optimality gap;
* :func:`goldstein_distance`: an upper estimate of ``d(0, df(x + delta B))`` from gradients sampled
  in the ball;
* :func:`l1_goldstein_distance`: the exact value for ``f = |x|_1``;
* :func:`ingd_status`: an observable of :func:`dynsim.dynamics.ingd`'s certificate and oracle count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dynsim._validate import check_concrete, check_int, check_positive, concrete_values
from dynsim.observables import Observable

__all__ = [
    "MinNormPoint",
    "min_norm_point",
    "GoldsteinEstimate",
    "goldstein_distance",
    "sample_ball",
    "l1_goldstein_distance",
    "ingd_status",
]


class MinNormPoint(NamedTuple):
    """The minimum-norm point ``p = sum_i w_i v_i`` of ``conv{v_i}`` and its certificates.

    Attributes
    ----------
    point:
        ``p``, a point of the hull (``w >= 0``, ``sum w = 1``) whatever the number of iterations.
    norm:
        ``|p|``: an upper bound on ``d(0, conv{v_i})``.
    weights:
        ``w`` (zero on masked-out vectors).
    lower:
        ``max(0, min_i <p, v_i>) / |p|`` (0 if ``p = 0``): a lower bound on ``d(0, conv{v_i})``, since
        every unit vector ``u`` has ``min_i <u, v_i> <= <u, p*> <= |p*|``. It equals ``norm`` at the optimum.
    gap:
        The Frank-Wolfe gap ``|p|^2 - min_i <p, v_i> >= 0``; ``p`` is optimal iff it is 0 (the KKT
        condition ``<p, v_i - p> >= 0`` for all ``i``), and ``|p - p*|^2 <= 2 gap``.
    iterations:
        Frank-Wolfe iterations used.
    """

    point: jax.Array
    norm: jax.Array
    weights: jax.Array
    lower: jax.Array
    gap: jax.Array
    iterations: jax.Array


def _certificates(V, mask, w):
    p = w @ V
    s = V @ p
    pp = p @ p
    s_min = jnp.min(jnp.where(mask, s, jnp.inf))
    norm = jnp.sqrt(pp)
    lower = jnp.where(norm > 0, jnp.maximum(s_min, 0) / jnp.where(norm > 0, norm, 1), 0)
    return p, norm, lower, jnp.maximum(pp - s_min, 0)


def _pairwise_frank_wolfe(V, mask, w, tol, max_iter):
    sq = jnp.sum(V * V, axis=1)
    scale = jnp.max(jnp.where(mask, sq, 0))

    def gap_and_vertices(w):
        p = w @ V
        s = V @ p
        fw = jnp.argmin(jnp.where(mask, s, jnp.inf))  # Frank-Wolfe vertex
        away = jnp.argmax(jnp.where(w > 0, s, -jnp.inf))  # away vertex (in the support)
        return p, fw, away, p @ p - s[fw]

    def cond(carry):
        it, w, gap, stalled = carry
        return (gap > tol * scale) & (it < max_iter) & ~stalled

    def body(carry):
        it, w, _, _ = carry
        p, fw, away, _ = gap_and_vertices(w)
        direction = V[fw] - V[away]
        dd = direction @ direction
        # exact line search on |p + gamma (v_fw - v_away)|^2, gamma in [0, w_away]
        gamma = jnp.clip(-(p @ direction) / jnp.where(dd > 0, dd, 1), 0, w[away])
        gamma = jnp.where(dd > 0, gamma, 0)
        w = w.at[fw].add(gamma)
        w = w.at[away].set(jnp.where(gamma >= w[away], 0, w[away] - gamma))  # a drop step is exact
        w = w / jnp.sum(w)
        _, _, _, gap = gap_and_vertices(w)
        return it + 1, w, gap, (dd == 0) | (gamma == 0)

    _, _, _, gap0 = gap_and_vertices(w)
    it, w, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), w, gap0, jnp.array(False)))
    return w, it


def _affine_minimizer(V, support, r):
    """Barycentric coordinates (summing to 1, zero off ``support``) of the minimum-norm point of the
    affine hull of the support; ``r`` is a support index (least squares on ``v_i - v_r``)."""
    cols = support & (jnp.arange(V.shape[0]) != r)
    B = jnp.where(cols[:, None], V - V[r], 0).T  # d x n, zero columns off the support
    alpha = jnp.where(cols, jnp.linalg.lstsq(B, -V[r])[0], 0)
    return alpha.at[r].set(1 - jnp.sum(alpha))


def _minor_cycles(V, mask, w):
    """Wolfe's minor cycles (Wolfe 1976): move from ``p(w)`` towards the affine minimizer of the support
    until it is inside the hull of the support, dropping a vertex each time it is not. The norm
    decreases at every move; at most ``n`` moves. The result is kept only if it is no longer."""
    n = V.shape[0]

    def cond(carry):
        _, done, it = carry
        return ~done & (it < n)

    def body(carry):
        w, _, it = carry
        support = (w > 0) & mask
        lam = _affine_minimizer(V, support, jnp.argmax(w))
        inside = jnp.all(jnp.where(support, lam >= 0, True)) | ~jnp.all(jnp.isfinite(lam))
        leaving = support & (lam < 0)
        ratios = jnp.where(leaving, w / jnp.where(leaving, w - lam, 1), jnp.inf)
        drop = jnp.argmin(ratios)
        theta = jnp.clip(ratios[drop], 0, 1)
        moved = jnp.where(support, jnp.maximum(w + theta * (lam - w), 0), 0).at[drop].set(0)
        lam_in = jnp.where(support, jnp.maximum(lam, 0), 0)
        w_new = jnp.where(inside, jnp.where(jnp.all(jnp.isfinite(lam)), lam_in, w), moved)
        return w_new / jnp.sum(w_new), inside, it + 1

    w_new, _, _ = jax.lax.while_loop(cond, body, (w, jnp.array(False), jnp.int32(0)))
    better = jnp.sum((w_new @ V) ** 2) <= jnp.sum((w @ V) ** 2)
    return jnp.where(better, w_new, w)


def _min_norm_single(V, mask, tol, max_iter, polish):
    sq = jnp.sum(V * V, axis=1)
    scale = jnp.max(jnp.where(mask, sq, 0))
    w = jax.nn.one_hot(jnp.argmin(jnp.where(mask, sq, jnp.inf)), V.shape[0], dtype=V.dtype)
    if not polish:
        w, total = _pairwise_frank_wolfe(V, mask, w, tol, max_iter)
    else:
        # rounds of a few Frank-Wolfe steps (which bring in the vertices the answer needs) and Wolfe's
        # minor cycles (which solve exactly on the current support)
        burst = V.shape[0] + 1

        def cond(carry):
            w, total, gap, moved = carry
            return (gap > tol * scale) & (total < max_iter) & moved

        def body(carry):
            w0, total, _, _ = carry
            w, it = _pairwise_frank_wolfe(V, mask, w0, tol, jnp.minimum(burst, max_iter - total))
            w = _minor_cycles(V, mask, w)
            return w, total + jnp.maximum(it, 1), _certificates(V, mask, w)[3], jnp.any(w != w0)

        start = (w, jnp.int32(0), _certificates(V, mask, w)[3], jnp.array(True))
        w, total, _, _ = jax.lax.while_loop(cond, body, start)
    p, norm, lower, gap = _certificates(V, mask, w)
    return MinNormPoint(point=p, norm=norm, weights=w, lower=lower, gap=gap, iterations=total)


def min_norm_point(
    vectors, *, mask=None, tol: float | None = None, max_iter: int = 2000, polish: bool = True
) -> MinNormPoint:
    """The minimum-norm point of the convex hull of ``vectors``: ``argmin{|p| : p in conv{v_1, ..., v_n}}``.

    This is ``d(0, conv{v_i})``, the quantity of Def. 5.3.1 (seed 002) once the ``v_i`` are gradients
    sampled in a ball. It solves ``min_w |sum_i w_i v_i|^2`` over the simplex by pairwise Frank-Wolfe
    with exact line search (move weight from the support vector with the largest ``<p, v_i>`` to the
    vector with the smallest, which converges linearly on a polytope), until the gap
    ``|p|^2 - min_i <p, v_i>`` is at most ``tol * max_i |v_i|^2``; then ``polish`` runs Wolfe's minor
    cycles on the support (the exact minimum-norm point of its affine hull, by least squares on
    ``v_i - v_r``, moving towards it and dropping the vertices that leave the hull), which lands on
    the exact answer once the support is right; it alternates ``n + 1`` Frank-Wolfe steps and minor
    cycles until the gap is small. Pure JAX, jit- and vmap-friendly.

    Parameters
    ----------
    vectors:
        ``(..., n, d)``: sets of ``n`` vectors of dimension ``d``; leading axes are batch axes.
    mask:
        ``(..., n)`` booleans: only the vectors marked ``True`` belong to the set (at least one per set:
        the hull of no vectors is empty; checked when the mask is concrete, a traced one is not).
    tol:
        Relative gap tolerance; default ``16 * machine epsilon`` of the dtype.
    max_iter:
        Frank-Wolfe iterations at most.
    polish:
        Interleave Wolfe's minor cycles (exact affine solves on the support) with the Frank-Wolfe steps.

    Returns
    -------
    MinNormPoint
        ``point``, ``norm`` (upper bound), ``lower`` (certified lower bound), ``weights``, ``gap``,
        ``iterations``, with the leading axes of ``vectors``.
    """
    V = jnp.asarray(vectors)
    if V.ndim < 2:
        raise ValueError(f"vectors must have shape (..., n, d), got shape {V.shape}")
    if V.shape[-2] == 0:
        raise ValueError("vectors must hold at least one vector (n >= 1)")
    if not jnp.issubdtype(V.dtype, jnp.floating):
        V = V.astype(jnp.result_type(float))
    max_iter = check_int("max_iter", max_iter, minimum=0)
    if tol is None:
        tol = 16 * float(jnp.finfo(V.dtype).eps)
    else:
        tol = check_positive("tol", tol)
    known = None if mask is None else concrete_values(mask)
    if known is not None:
        empty = ~np.any(np.broadcast_to(known.astype(bool), V.shape[:-1]), axis=-1)
        if np.any(empty):
            where = "" if empty.ndim == 0 else f" (sets {np.argwhere(empty).tolist()[:5]})"
            raise ValueError(
                f"mask must mark at least one vector of each set with True; {int(empty.sum())} set(s) have none{where}"
            )
    m = jnp.ones(V.shape[:-1], bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), V.shape[:-1])
    return _min_norm_batched(V, m, tol, max_iter, polish)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _min_norm_batched(V, mask, tol, max_iter, polish):
    fn = lambda v, k: _min_norm_single(v, k, tol, max_iter, polish)
    for _ in range(V.ndim - 2):
        fn = jax.vmap(fn)
    return fn(V, mask)


class GoldsteinEstimate(NamedTuple):
    """An upper estimate of ``d(0, df(x + delta B))`` from sampled gradients (see :func:`goldstein_distance`).

    ``distance``: ``|element|``; ``element``: the minimum-norm point of the sampled hull, shaped like
    ``x``; ``gap``: its optimality gap in the sampled hull (:class:`MinNormPoint`); ``hull``: the
    full :class:`MinNormPoint` over the flattened gradients.
    """

    distance: jax.Array
    element: Any
    gap: jax.Array
    hull: MinNormPoint


def sample_ball(key, center, radius, n: int, *, inner=0.0):
    """``n`` points uniform in the Euclidean ball ``|y - center| <= radius`` (``center`` a 1-D array), or in the
    shell ``inner <= |y - center| <= radius``: direction ``z/|z|`` with ``z ~ N(0, I)``, radius
    ``radius (q + U (1 - q))^(1/d)`` with ``q = (inner / radius)^d`` (``radius U^(1/d)`` for the ball; in this
    form ``radius^d`` never overflows, whatever the dimension ``d``). Needs ``0 <= inner <= radius``
    (``inner = radius``: the sphere), checked where the numbers are known (not traced)."""
    check_concrete("radius", radius, lambda r: r > 0, "> 0")
    check_concrete("inner", inner, lambda r: r >= 0, ">= 0")
    low, high = concrete_values(inner), concrete_values(radius)
    if low is not None and high is not None and np.any(low > high):
        raise ValueError(f"inner must be at most radius, got inner={inner}, radius={radius}")
    n = check_int("n", n, minimum=1)
    d = center.shape[-1]
    k_dir, k_rad = jax.random.split(key)
    z = jax.random.normal(k_dir, (n, d), center.dtype)
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    q = (inner / radius) ** d
    r = radius * (q + jax.random.uniform(k_rad, (n, 1), center.dtype) * (1 - q)) ** (1.0 / d)
    return center + r * z


def goldstein_distance(
    grad_fn: Callable[[Any], Any],
    x: Any,
    delta,
    key: jax.Array,
    n_samples: int = 64,
    *,
    tol: float | None = None,
    max_iter: int = 2000,
    polish: bool = True,
) -> GoldsteinEstimate:
    """An upper estimate of ``d(0, df(x + delta B))``, the (delta, eps)-stationarity measure (seed 002, Def. 5.3.1).

    Draws ``n_samples`` points ``y_1, ..., y_n`` uniformly in the Euclidean ball ``x + delta B`` (over
    all leaves of ``x``, flattened), takes ``g_j = grad_fn(y_j)``, and returns the minimum-norm point of
    ``conv{g_1, ..., g_n}`` (:func:`min_norm_point`, with ``tol``, ``max_iter`` and ``polish``). A
    Lipschitz ``f`` is differentiable almost everywhere (Rademacher), and autodiff returns the gradient
    at almost every point for the piecewise-smooth functions it handles, so with probability 1 each
    ``g_j = grad f(y_j)`` lies in ``df(y_j)``; the sampled hull then lies inside ``df(x + delta B)``
    and the returned ``distance`` is an **upper bound** on ``d(0, df(x + delta B))``: ``x`` is certainly
    (delta, eps)-stationary when it is at most ``eps``, and the estimate decreases to the true value as
    the samples fill the ball's pieces (it is exact once they hit every piece whose gradients the
    minimum-norm element needs). The gradient at ``x`` itself is not taken: ``x`` is often exactly at
    a kink (a zero initialization, a ReLU at 0), where autodiff may return a vector outside the Clarke
    subdifferential (``relu(x) - relu(-x) = x`` gets the derivative 0 at 0, not 1). The seed digest
    suggests this estimator (Sec. 4.3); it is what INGD's certificate ``|m| <= eps`` provides along
    its own run.

    ``grad_fn`` maps a pytree like ``x`` to a pytree like ``x``; ``n_samples >= 1``; ``delta > 0``
    (checked when it is a number; it may be traced).
    """
    n_samples = check_int("n_samples", n_samples, minimum=1)
    check_concrete("delta", delta, lambda v: v > 0, "> 0")
    flat, unravel = ravel_pytree(x)
    ys = sample_ball(key, flat, jnp.asarray(delta, flat.dtype), n_samples)
    grads = jax.vmap(lambda y: ravel_pytree(grad_fn(unravel(y)))[0])(ys)
    hull = min_norm_point(grads, tol=tol, max_iter=max_iter, polish=polish)
    return GoldsteinEstimate(distance=hull.norm, element=unravel(hull.point), gap=hull.gap, hull=hull)


def _free_part_distance(free: np.ndarray, delta: float) -> np.ndarray:
    """``min |1 - 2 z|`` over the flip-set polytope, for rows of ``|x_i| <= delta`` values (all of one length)."""
    n_pts, m = free.shape
    w = free**2
    out = np.zeros(n_pts)
    if m == 0:
        return out
    halves = np.zeros((n_pts, 2))
    for v in np.sort(w, axis=1)[:, ::-1].T:  # greedy split into two allowed halves: sufficient for 0
        lighter = np.argmin(halves, axis=1)
        halves[np.arange(n_pts), lighter] += v
    hard = np.flatnonzero(halves.max(axis=1) > delta**2)
    if hard.size:
        sets = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(bool)
        allowed = w[hard] @ sets.T <= delta**2  # (hard, 2^m); the empty set is always allowed
        signs = jnp.asarray(1.0 - 2.0 * sets, jnp.result_type(float))
        res = min_norm_point(jnp.broadcast_to(signs, (hard.size, *signs.shape)), mask=jnp.asarray(allowed))
        out[hard] = np.asarray(res.norm, dtype=float)
    return out


def l1_goldstein_distance(x, delta: float, *, max_free: int = 12):
    """Exact ``d(0, df(x + delta B))`` for ``f = |x|_1`` and the Euclidean ball (seed 002, Def. 5.3.1).

    The generalized gradients in ``x + delta B`` are the sign vectors ``s`` whose closed orthant meets
    the ball: ``sum_{i: s_i != sign(x_i)} x_i^2 <= delta^2``. A coordinate with ``|x_i| > delta``
    therefore keeps ``s_i = sign(x_i)``; on ``F = {i: |x_i| <= delta}`` the flip sets ``S`` allowed are
    those with ``sum_{i in S} x_i^2 <= delta^2``. So

    ``d^2 = #{i: |x_i| > delta} + min{|1 - 2 z|^2 : z in conv{1_S : S allowed}}``.

    The second term is 0 when ``F`` splits into two allowed sets (e.g. ``|F| <= 2``, or
    ``sum_F x_i^2 <= delta^2``), the case where the seed digest's closed form
    ``sqrt(#{i: |x_i| > delta})`` is right; otherwise it is computed by enumerating the ``2^|F|`` flip
    sets (``|F| <= max_free``) and :func:`min_norm_point` (float64 when enabled). It can be larger:
    three coordinates at ``0.9 delta`` give ``1/sqrt(3)``.

    ``x``: one point ``(d,)`` (returns a float) or points ``(..., d)`` (returns an array of ``...``).
    """
    x = np.asarray(x, dtype=float)
    delta = check_positive("delta", delta)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"x must be a non-empty array of finite numbers, got {x.tolist()!r}")
    points = np.atleast_2d(x).reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    inside = np.abs(points) <= delta
    n_free = inside.sum(axis=1)
    if n_free.max(initial=0) > max_free:
        raise ValueError(
            f"l1_goldstein_distance: {int(n_free.max())} coordinates with |x_i| <= delta exceed max_free={max_free}"
        )
    sq = (points.shape[1] - n_free).astype(float)
    for m in np.unique(n_free):
        rows = np.flatnonzero(n_free == m)
        free = np.abs(points[rows][inside[rows]].reshape(rows.size, m))
        sq[rows] += _free_part_distance(free, delta) ** 2
    dist = np.sqrt(sq)
    return float(dist[0]) if x.ndim <= 1 else dist.reshape(x.shape[:-1])


def ingd_status(*, every_record: bool = False) -> Observable:
    """The state of :func:`dynsim.dynamics.ingd`: certificate, oracle calls, descents, restarts, ``|m|``.

    Outputs ``key_certified`` (``|m_{t,k}| <= eps`` was reached: ``x_t`` is (delta, eps)-stationary,
    Thm 5.4.1), ``key_calls`` (gradient-oracle calls, frozen at certification), ``key_descents``
    (``t - 1``: descent steps taken), ``key_restarts``, ``key_k`` (the inner index) and ``key_m_norm``
    (``|m_{t,k}|``). At the end only, or at every record time with ``every_record=True``.
    """

    def record(view):
        s = view.state
        return {
            "certified": s.certified,
            "calls": s.calls,
            "descents": s.t - 1,
            "restarts": s.restarts,
            "k": s.k,
            "m_norm": jnp.sqrt(jnp.sum(s.m**2)),
        }

    return Observable("ingd_status", record=record, every_record=every_record)
