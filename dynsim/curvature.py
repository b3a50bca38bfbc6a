"""Curvature and gradient statistics of a loss: Hessian-vector products, sharpness, gradient noise,
and the step diagnostics of unstable convergence.

Operators and algorithms are kept apart: :func:`hvp` gives the Hessian as a matvec on
pytrees; :func:`power_iteration` and :func:`lanczos` find its top eigenvalue from any
matvec; :func:`sharpness` puts them together, warm-startable and vmappable over a leading
axis of parameters (one per trajectory). :func:`gradient_noise` is the per-example noise
``sigma(theta)`` of seed 000, eq. (1); :func:`minibatch_noise` the norms ``|g_B - grad F|``
whose histograms seed 002 reads for heavy tails (Sec. 4.3).

Seed 001 (Ahn, Zhang & Sra) reads the stability of a GD step ``theta -> theta - lr grad f``
from two numbers that cost one extra gradient: the relative progress ratio ``RP``
(Def. 1) and the directional smoothness ``L(theta; lr grad f)`` (Def. 2), tied by the exact
identity of Thm 2, ``RP = -1 + (lr/2) Lbar`` (:func:`gd_progress`,
:func:`directional_smoothness`, :func:`smoothness_profile`,
:func:`averaged_directional_smoothness`); the segment sharpness ``L_t`` of Prop. 1 and
Cor. 1 (:func:`segment_sharpness`); and for SGD the expected relative progress of Def. 3
against its approximation, eq. (6) (:func:`sgd_progress`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dynsim._validate import check_choice, check_int

__all__ = [
    "hvp",
    "Eigen",
    "power_iteration",
    "lanczos",
    "sharpness",
    "gradient_norm",
    "NoiseEstimate",
    "gradient_noise",
    "MinibatchNoise",
    "minibatch_noise",
    "Minimum",
    "newton_minimize",
    "Progress",
    "gd_progress",
    "directional_smoothness",
    "smoothness_profile",
    "averaged_directional_smoothness",
    "segment_sharpness",
    "SGDProgress",
    "sgd_progress",
    "local_smoothness",
    "RelaxedSmoothness",
    "relaxed_smoothness",
]


def hvp(loss_fn: Callable[..., jax.Array], params: Any, v: Any, *args) -> Any:
    """Hessian-vector product ``(d^2 L / d theta^2) v`` by forward-over-reverse differentiation.

    Costs about two gradient evaluations and never forms the Hessian.
    """
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, *args), (params,), (v,))[1]


class Eigen(NamedTuple):
    """An eigenvalue estimate, its (unit) vector for a warm start, and the residual ``|A v - value v|``."""

    value: jax.Array
    vector: jax.Array
    residual: jax.Array


_RESTART_KEY = 0x5EED
"""Seed of the fresh directions drawn where an iteration reaches the zero vector (a breakdown)."""


def _normalize(v, j=0):
    """``v / |v|``; the zero vector (``v0 = 0``, or ``A v = 0``: ``v`` in the null space) becomes a fresh
    Gaussian direction, drawn from step ``j``'s key. (Dividing by ``max(|v|, tiny)`` instead gave NaN:
    XLA folds ``(c v) / max(|c v|, tiny)`` into ``v (c / tiny)``, and ``0 * inf``.)"""
    n = jnp.linalg.norm(v)
    fresh = jax.random.normal(jax.random.fold_in(jax.random.key(_RESTART_KEY), j), v.shape, v.dtype)
    w = jnp.where(n > 0, v, fresh)
    return w / jnp.linalg.norm(w)


def power_iteration(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, n_iter: int = 100) -> Eigen:
    """Eigenvalue of largest **absolute value** of a symmetric operator, ``v <- A v / |A v|``.

    Returns the Rayleigh quotient ``v^T A v``; ``|A v| = sqrt(value^2 + residual^2)`` estimates the
    spectral radius even where the quotient does not converge (a spectrum with ``-lambda`` and
    ``lambda``), which :func:`sharpness` uses as its shift. Where ``A v = 0`` (``v0`` in the null space,
    or ``v0 = 0``) it goes on from a fresh random direction.
    """
    n_iter = check_int("n_iter", n_iter, minimum=1)

    def body(v, j):
        return _normalize(matvec(v), j + 1), None

    v, _ = jax.lax.scan(body, _normalize(v0), jnp.arange(n_iter))
    av = matvec(v)
    value = jnp.vdot(v, av)
    return Eigen(value, v, jnp.linalg.norm(av - value * v))


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, n_iter: int = 30) -> Eigen:
    """Largest algebraic eigenvalue of a symmetric operator by ``n_iter`` Lanczos steps.

    Full reorthogonalization against the Krylov basis (``n_iter`` vectors are kept); the top
    Ritz pair of the tridiagonal matrix is returned. Negative eigenvalues of large magnitude do
    not mislead it, unlike plain power iteration. When the Krylov space becomes invariant
    (``beta`` at rounding level: a repeated or low-rank spectrum, ``v0`` in few eigenvectors) the
    next vector would be rounding noise; it is replaced by a fresh vector orthogonal to the
    basis, with ``beta = 0``, so the tridiagonal matrix stays the projection of the operator on
    an orthonormal basis. (Without this, on ``diag(10, 1, ..., 1)`` it returned 1 with a small
    residual, and more iterations made an over-parametrized least-squares Hessian worse.)
    """
    n_iter = check_int("n_iter", n_iter, minimum=1)
    d = v0.shape[0]
    k = min(n_iter, d)
    q0 = _normalize(v0)  # v0 = 0: a random start
    basis = jnp.zeros((k, d), v0.dtype).at[0].set(q0)
    tol = 1e3 * jnp.finfo(v0.dtype).eps
    restart_key = jax.random.key(_RESTART_KEY)

    def body(carry, j):
        basis, alphas, betas = carry
        kept = (jnp.arange(k) <= j)[:, None] * basis  # the basis so far

        def orthogonalize(w):
            for _ in range(2):  # full reorthogonalization, twice
                w = w - kept.T @ (kept @ w)
            return w

        q = basis[j]
        aq = matvec(q)
        alpha = jnp.vdot(q, aq)
        w = orthogonalize(aq)
        beta = jnp.linalg.norm(w)
        invariant = beta <= tol * jnp.maximum(jnp.linalg.norm(aq), jnp.abs(alpha))
        restart = lambda: orthogonalize(jax.random.normal(jax.random.fold_in(restart_key, j), (d,), v0.dtype))  # noqa: E731
        nxt = _normalize(jax.lax.cond(invariant, restart, lambda: w))  # drawn only at a breakdown
        beta = jnp.where(invariant, 0.0, beta)
        basis = jnp.where(j + 1 < k, basis.at[jnp.minimum(j + 1, k - 1)].set(nxt), basis)
        return (basis, alphas.at[j].set(alpha), betas.at[j].set(beta)), None

    init = (basis, jnp.zeros(k, v0.dtype), jnp.zeros(k, v0.dtype))
    (basis, alphas, betas), _ = jax.lax.scan(body, init, jnp.arange(k))
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    evals, evecs = jnp.linalg.eigh(T)
    vector = _normalize(basis.T @ evecs[:, -1])
    av = matvec(vector)
    value = jnp.vdot(vector, av)
    return Eigen(value, vector, jnp.linalg.norm(av - value * vector))


def sharpness(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    *args,
    method: str = "lanczos",
    n_iter: int = 30,
    v0: Any = None,
    key: jax.Array | None = None,
    batched: bool = False,
) -> Eigen:
    """Top (largest algebraic) eigenvalue of the Hessian of ``loss_fn(params, *args)``: the sharpness.

    ``method="lanczos"`` (default) or ``"power"``: power iteration for the dominant eigenvalue, with
    ``rho = |H v|`` its spectral-radius estimate, then a second run on ``H + rho I`` (eigenvalues shifted to
    >= 0, the top one dominant) for ``lambda_max + rho``; of the two Rayleigh quotients of ``H``, both at
    most ``lambda_max``, the larger is returned. (Keeping the first whenever it was >= 0 returned 0.1 for
    ``diag(1, -0.999)``: there the first quotient mixes ``+-lambda`` and never converges.) ``v0`` warm-starts from a
    previous :class:`Eigen` vector (a flat vector over all parameters, or a pytree like
    ``params``; for ``"power"``, with :data:`WARM_START_NOISE` of a random direction from ``key`` mixed in, since a
    component exactly 0 in ``v0`` would stay 0: 5 for 8 from a previous Hessian's eigenvector), else a Gaussian from
    ``key``. ``batched=True``: ``params`` (and ``v0``) carry a leading axis, one Hessian each
    (``args`` are shared).
    """
    method = check_choice("method", method, ("lanczos", "power"))
    if batched:
        n = jax.tree_util.tree_leaves(params)[0].shape[0]
        keys = jax.random.split(key if key is not None else jax.random.key(0), n)
        return jax.vmap(
            lambda p, v, k: sharpness(loss_fn, p, *args, method=method, n_iter=n_iter, v0=v, key=k),
            in_axes=(0, None if v0 is None else 0, 0),
        )(params, v0, keys)
    flat, unravel = ravel_pytree(params)
    if v0 is None:
        v0 = jax.random.normal(key if key is not None else jax.random.key(0), flat.shape, flat.dtype)
    else:  # a flat vector, or a pytree shaped like params
        v0 = jnp.asarray(v0) if getattr(v0, "ndim", None) == 1 else ravel_pytree(v0)[0]
        if v0.shape != flat.shape:
            raise ValueError(
                f"v0 must be a flat vector of {flat.size} entries (all parameters) or a pytree like params, "
                f"got {v0.shape[0]} entries"
            )
        v0 = v0.astype(flat.dtype)
        if method == "power":
            # power iteration never grows a component that is exactly 0 in v0 (a previous Hessian's eigenvector
            # often has such zeros): mix in WARM_START_NOISE of a random direction, which it then can
            noise = jax.random.normal(key if key is not None else jax.random.key(0), flat.shape, flat.dtype)
            v0 = _normalize(v0) + WARM_START_NOISE * _normalize(noise)

    def matvec(v):
        return ravel_pytree(hvp(loss_fn, params, unravel(v), *args))[0]

    if method == "lanczos":
        return lanczos(matvec, v0, n_iter)
    dominant = power_iteration(matvec, v0, n_iter)
    rho = jnp.hypot(dominant.value, dominant.residual)  # |H v|, the spectral radius as n_iter grows
    # from v0, not from the dominant vector: that is the null vector of H + rho I, from which the
    # iteration cannot leave when its other components are exactly 0 (it returned rho as the top)
    shifted = power_iteration(lambda v: matvec(v) + rho * v, v0, n_iter)
    shifted = shifted._replace(value=shifted.value - rho)  # v^T H v; the residual is H's as well
    # both are Rayleigh quotients of H, so neither exceeds lambda_max: the larger is the better estimate
    best = dominant.value >= shifted.value
    return jax.tree_util.tree_map(lambda a, b: jnp.where(best, a, b), dominant, shifted)


WARM_START_NOISE = 1e-3
"""Share of a random direction that :func:`sharpness` (``method="power"``) mixes into a warm start ``v0``."""


def gradient_norm(loss_fn: Callable[..., jax.Array], params: Any, *args) -> jax.Array:
    """``|grad L(theta)|``, the Euclidean norm over all parameters."""
    return jnp.linalg.norm(ravel_pytree(jax.grad(loss_fn)(params, *args))[0])


class NoiseEstimate(NamedTuple):
    """Per-example gradient statistics on a subset of ``m`` of the ``n`` examples.

    ``sigma``: ``sqrt((1/m) sum_i |g_i - g_bar|^2)`` around the subset mean (biased low by the
    factor ``(m-1)/m`` in squared terms); ``grad_norm``: ``|g_bar|`` (biased **high**:
    ``E|g_bar|^2 = |grad L|^2 + (sigma^2/m)(n - m)/(n - 1)``); ``grad_norm_debiased``:
    ``sqrt(max(0, |g_bar|^2 - (s^2/m)(n - m)/n))`` with ``s^2`` the unbiased variance (seed 000
    digest, Sec. 1.2); ``m`` and ``n``.
    """

    sigma: jax.Array
    grad_norm: jax.Array
    grad_norm_debiased: jax.Array
    m: int
    n: int


def gradient_noise(
    per_example_loss: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    m: int | None = None,
    key: jax.Array | None = None,
    chunk: int = 256,
) -> NoiseEstimate:
    """Per-example gradient noise ``sigma(theta)`` of seed 000, eq. (1), by ``vmap(grad)``.

    ``per_example_loss(params, sample)``; ``data``: a pytree whose leaves have the example
    axis first. ``m`` examples (default: all) are drawn without replacement from ``key``.
    Two passes over chunks of ``chunk`` examples (mean, then spread), so memory is
    ``chunk x n_params`` and float32 does not cancel.
    """
    n = int(jax.tree_util.tree_leaves(data)[0].shape[0])
    m = n if m is None else check_int("m", m, minimum=2, maximum=n)
    chunk = check_int("chunk", chunk, minimum=1)
    if m < n:
        idx = jax.random.choice(key if key is not None else jax.random.key(0), n, (m,), replace=False)
        data = jax.tree_util.tree_map(lambda a: a[idx], data)
    flat, _ = ravel_pytree(params)
    chunks, weights = _example_chunks(data, m, chunk, flat.dtype)
    grads = _per_example_flat_grads(per_example_loss, params)
    mean = _mean_gradient(grads, chunks, weights, m, flat)

    def spread_pass(total, xs):
        c, w = xs
        return total + w @ jnp.sum((grads(c) - mean) ** 2, axis=1), None

    ss, _ = jax.lax.scan(spread_pass, jnp.zeros((), flat.dtype), (chunks, weights))
    sigma2 = ss / m
    g2 = jnp.sum(mean**2)
    s2 = ss / (m - 1)
    debiased = jnp.sqrt(jnp.maximum(g2 - s2 / m * (n - m) / n, 0.0))
    return NoiseEstimate(jnp.sqrt(sigma2), jnp.sqrt(g2), debiased, m, n)


def _example_chunks(data, m: int, chunk: int, dtype):
    """The first ``m`` examples in ``ceil(m / chunk)`` chunks of ``chunk``, and 0/1 weights that drop the padding."""
    chunk = min(chunk, m)
    n_chunks = -(-m // chunk)
    rows = jnp.arange(n_chunks * chunk)
    padded = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[rows % m], data)
    weights = (rows < m).reshape(n_chunks, chunk).astype(dtype)
    return jax.tree_util.tree_map(lambda a: a.reshape(n_chunks, chunk, *a.shape[1:]), padded), weights


def _per_example_flat_grads(per_example_loss, params):
    grad_one = jax.grad(per_example_loss)
    return lambda c: jax.vmap(lambda s: ravel_pytree(grad_one(params, s))[0])(c)


def _mean_gradient(grads, chunks, weights, m: int, flat):
    def mean_pass(total, xs):
        c, w = xs
        return total + w @ grads(c), None

    total, _ = jax.lax.scan(mean_pass, jnp.zeros_like(flat), (chunks, weights))
    return total / m


class MinibatchNoise(NamedTuple):
    """Result of :func:`minibatch_noise`: ``|g_B - grad F|`` for each drawn minibatch, and ``|grad F|``."""

    norms: jax.Array
    grad_norm: jax.Array
    batch_size: int


def minibatch_noise(
    per_example_loss: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    batch_size: int,
    n_batches: int,
    key: jax.Array,
    chunk: int = 256,
) -> MinibatchNoise:
    """The norm of the minibatch gradient noise ``|g_B - grad F(theta)|`` over many minibatches (seed 002, Sec. 4.3).

    ``g_B = (1/S) sum_{i in B} grad l(theta; x_i)`` for ``n_batches`` minibatches of ``S =
    batch_size`` examples drawn uniformly with replacement from ``key``; ``grad F`` is the mean
    gradient over all of ``data`` (leaves with the example axis first). The thesis plots the
    histogram of these norms at initialization (Figs. 4-1, 4-2, 4-4) and judges their tail; their
    mean square is ``E|g_B - grad F|^2 = (1/S)(1/N) sum_i |grad l_i - grad F|^2`` exactly.
    Minibatches are processed ``chunk // batch_size`` at a time.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    n_batches = check_int("n_batches", n_batches, minimum=1)
    chunk = check_int("chunk", chunk, minimum=1)
    data = jax.tree_util.tree_map(jnp.asarray, data)
    norms, grad_norm = _minibatch_noise(per_example_loss, params, data, batch_size, n_batches, key, chunk)
    return MinibatchNoise(norms, grad_norm, batch_size)


@partial(jax.jit, static_argnums=(0, 3, 4, 6))
def _minibatch_noise(per_example_loss, params, data, batch_size, n_batches, key, chunk):
    n = int(jax.tree_util.tree_leaves(data)[0].shape[0])
    flat, _ = ravel_pytree(params)
    chunks, weights = _example_chunks(data, n, chunk, flat.dtype)
    mean = _mean_gradient(_per_example_flat_grads(per_example_loss, params), chunks, weights, n, flat)

    def batch_gradient(batch):
        def batch_loss(p):
            return jnp.mean(jax.vmap(per_example_loss, in_axes=(None, 0))(p, batch))

        return ravel_pytree(jax.grad(batch_loss)(params))[0]

    per_group = max(1, chunk // batch_size)
    n_groups = -(-n_batches // per_group)
    idx = jax.random.randint(key, (n_groups * per_group, batch_size), 0, n).reshape(n_groups, per_group, batch_size)

    def group(carry, rows):
        batches = jax.tree_util.tree_map(lambda a: a[rows], data)
        return carry, jnp.linalg.norm(jax.vmap(batch_gradient)(batches) - mean, axis=1)

    _, norms = jax.lax.scan(group, None, idx)
    return norms.reshape(-1)[:n_batches], jnp.linalg.norm(mean)


class Minimum(NamedTuple):
    """Result of :func:`newton_minimize`: the point, its loss, gradient norm and Hessian eigenvalues."""

    x: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    eigenvalues: jax.Array


def newton_minimize(loss_fn: Callable[[jax.Array], jax.Array], x0: jax.Array, n_iter: int = 100) -> Minimum:
    """Local minimum of ``loss_fn`` (a function of a small flat vector) by a modified Newton method.

    Each step solves with the Hessian's eigenvalues replaced by ``max(|e|, 1e-8)`` (a descent
    direction even at saddles and maxima) and keeps the best of the step sizes ``1, 1/2, ..., 2^-12``
    that lowers the loss. Dense Hessians: for a handful of parameters (2-D landscapes), vmappable over
    many starts. Check ``grad_norm`` and ``eigenvalues`` to accept a minimum.
    """
    n_iter = check_int("n_iter", n_iter, minimum=1)
    grad = jax.grad(loss_fn)
    hess = jax.hessian(loss_fn)
    steps = 2.0 ** -jnp.arange(13)

    def body(x, _):
        g, H = grad(x), hess(x)
        e, V = jnp.linalg.eigh(H)
        d = -V @ ((V.T @ g) / jnp.maximum(jnp.abs(e), 1e-8))
        trial = x[None, :] + steps[:, None].astype(x.dtype) * d[None, :]
        losses = jax.vmap(loss_fn)(trial)
        best = jnp.argmin(jnp.where(jnp.isfinite(losses), losses, jnp.inf))
        better = losses[best] < loss_fn(x)
        return jnp.where(better, trial[best], x), None

    x, _ = jax.lax.scan(body, x0, None, length=n_iter)
    return Minimum(x, loss_fn(x), jnp.linalg.norm(grad(x)), jnp.linalg.eigvalsh(hess(x)))


# ---------------------------------------------------------------------------------------------
# Seed 001: relative progress and directional smoothness of a GD step
# ---------------------------------------------------------------------------------------------


def _value_and_flat_grad(loss_fn, unravel, *args):
    """``flat -> (loss_fn(unravel(flat), *args), its gradient as a flat vector)``: the one way every
    step diagnostic below evaluates the loss off ``params``."""

    def fn(flat):
        value, grad = jax.value_and_grad(loss_fn)(unravel(flat), *args)
        return value, ravel_pytree(grad)[0]

    return fn


def _gauss_legendre01(n_nodes: int, dtype):
    """Nodes and weights of the ``n_nodes``-point Gauss-Legendre rule on ``[0, 1]``."""
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    return jnp.asarray((x + 1) / 2, dtype), jnp.asarray(w / 2, dtype)


class Progress(NamedTuple):
    """Diagnostics of one GD step ``theta' = theta - lr g``, ``g = grad f(theta)`` (seed 001, Sec. 4).

    ``loss`` ``f(theta)``; ``next_loss`` ``f(theta')``; ``grad_norm_sq`` ``|g|^2``;
    ``relative_progress`` ``RP = (f(theta') - f(theta)) / (lr |g|^2)`` (Def. 1), NaN where
    the loss change is below float rounding (``lr |g|^2 <= 1000 eps (|f| + |f'|)``: at and near
    stationary points RP is 0/0); ``directional_smoothness``
    ``L(theta; lr g) = <g, g - g'> / (lr |g|^2)`` with ``g' = grad f(theta')`` (Def. 2), NaN where
    ``g = 0``; ``gradient_alignment`` ``<g', g> / |g|^2``, which is ``-1`` when consecutive
    gradients are opposite (eq. 3: then ``(lr/2) L = 1``).

    Stable regime: ``RP ~ -1`` and ``(lr/2) L << 1``. Unstable convergence (edge of stability):
    ``RP`` oscillates near 0 and ``(lr/2) L`` near 1 (eq. 5: ``RP ~ -1 + (lr/2) L``, exact for
    quadratics).
    """

    loss: jax.Array
    next_loss: jax.Array
    grad_norm_sq: jax.Array
    relative_progress: jax.Array
    directional_smoothness: jax.Array
    gradient_alignment: jax.Array


def gd_progress(loss_fn: Callable[..., jax.Array], params: Any, lr, *args) -> Progress:
    """:class:`Progress` of the GD step from ``params`` (seed 001, Defs. 1 and 2): two gradient evaluations.

    ``loss_fn(params, *args)`` is the full-batch loss; ``lr`` may be traced (e.g. a grid value).
    """
    flat, unravel = ravel_pytree(params)
    value_grad = _value_and_flat_grad(loss_fn, unravel, *args)
    f0, g = value_grad(flat)
    lr = jnp.asarray(lr, flat.dtype)
    f1, g1 = value_grad(flat - lr * g)
    gg = jnp.vdot(g, g)
    step = lr * gg
    eps = jnp.finfo(flat.dtype).eps
    resolvable = step > 1000 * eps * (jnp.abs(f0) + jnp.abs(f1))
    safe_step = jnp.where(gg > 0, step, 1.0)
    rp = jnp.where(resolvable & (gg > 0), (f1 - f0) / safe_step, jnp.nan)
    smooth = jnp.where(gg > 0, jnp.vdot(g, g - g1) / safe_step, jnp.nan)
    align = jnp.where(gg > 0, jnp.vdot(g1, g) / jnp.where(gg > 0, gg, 1.0), jnp.nan)
    return Progress(f0, f1, gg, rp, smooth, align)


def directional_smoothness(loss_fn: Callable[..., jax.Array], params: Any, v: Any, *args) -> jax.Array:
    """``L(theta; v) = <v, grad f(theta) - grad f(theta - v)> / |v|^2`` for the update ``theta -> theta - v``
    (seed 001, Def. 2).

    It equals ``int_0^1 vhat^T H(theta - s v) vhat ds`` (the Hessian's Rayleigh quotient along the
    step, averaged over the segment), so it lies between the least and the largest eigenvalue
    met on the segment; for a quadratic it is ``vhat^T P vhat`` whatever the step length.
    ``v`` is a pytree like ``params``.
    """
    flat, unravel = ravel_pytree(params)
    vflat = ravel_pytree(v)[0].astype(flat.dtype)
    value_grad = _value_and_flat_grad(loss_fn, unravel, *args)
    g0, g1 = value_grad(flat)[1], value_grad(flat - vflat)[1]
    vv = jnp.vdot(vflat, vflat)
    return jnp.where(vv > 0, jnp.vdot(vflat, g0 - g1) / jnp.where(vv > 0, vv, 1.0), jnp.nan)


def _step_inner(loss_fn, params, lr, *args):
    """``tau -> <g, g - grad f(theta - lr tau g)>`` and ``|g|^2``, on flat vectors."""
    flat, unravel = ravel_pytree(params)
    value_grad = _value_and_flat_grad(loss_fn, unravel, *args)
    g = value_grad(flat)[1]
    lr = jnp.asarray(lr, flat.dtype)

    def inner(tau):
        return jnp.vdot(g, g - value_grad(flat - lr * tau * g)[1])

    return inner, jnp.vdot(g, g)


def smoothness_profile(loss_fn: Callable[..., jax.Array], params: Any, lr, taus, *args) -> jax.Array:
    """``L(theta; lr tau grad f(theta))`` for each ``tau`` in ``taus`` (seed 001, Exp. 5; one gradient each).

    Seed 001 evaluates ``tau = 0.01, 0.02, ..., 1`` and finds the profile nearly flat at the edge
    of stability, which is what makes eq. (5) a good approximation of Thm 2.
    """
    taus = jnp.asarray(taus)
    if taus.ndim != 1 or taus.shape[0] == 0:
        raise ValueError(f"taus must be a non-empty 1-D array, got shape {taus.shape}")
    inner, gg = _step_inner(loss_fn, params, lr, *args)
    dtype = gg.dtype
    taus = taus.astype(dtype)
    values = jax.lax.map(inner, taus)
    denom = jnp.asarray(lr, dtype) * taus * gg
    return jnp.where(denom != 0, values / jnp.where(denom != 0, denom, 1.0), jnp.nan)


def averaged_directional_smoothness(
    loss_fn: Callable[..., jax.Array], params: Any, lr, *args, n_nodes: int = 32
) -> jax.Array:
    """``Lbar(theta) = 2 int_0^1 tau L(theta; lr tau grad f(theta)) dtau`` (seed 001, Thm 2).

    Thm 2 is the exact identity ``RP(theta) = -1 + (lr/2) Lbar(theta)``. Computed as
    ``(2 / (lr |g|^2)) int_0^1 <g, g - grad f(theta - lr tau g)> dtau`` (``tau L`` times
    ``lr |g|^2`` is that inner product) by ``n_nodes``-point Gauss-Legendre quadrature on
    ``[0, 1]``: exact for polynomial losses of degree up to ``2 n_nodes``, and to float rounding
    for smooth nets with 32 nodes.
    """
    n_nodes = check_int("n_nodes", n_nodes, minimum=1)
    inner, gg = _step_inner(loss_fn, params, lr, *args)
    nodes, weights = _gauss_legendre01(n_nodes, gg.dtype)
    integral = jnp.vdot(weights, jax.lax.map(inner, nodes))
    denom = jnp.asarray(lr, gg.dtype) * gg
    return jnp.where(gg > 0, 2 * integral / jnp.where(gg > 0, denom, 1.0), jnp.nan)


def segment_sharpness(
    loss_fn: Callable[..., jax.Array], start: Any, end: Any, *args, n_points: int = 11, n_iter: int = 30
) -> jax.Array:
    """``max_s lambda_max(H(start + s (end - start)))`` over ``n_points`` equally spaced ``s`` in ``[0, 1]``.

    A lower estimate of the segment smoothness ``L_t = sup`` over the segment ``[theta_t, theta_{t+1}]``
    of seed 001, Prop. 1 and Cor. 1, which bounds every GD step: ``(2/lr)(RP_t + 1) <= L_t``.
    Each point costs one :func:`sharpness` (Lanczos, ``n_iter`` steps).
    """
    n_points = check_int("n_points", n_points, minimum=2)
    a, unravel = ravel_pytree(start)
    b = ravel_pytree(end)[0].astype(a.dtype)
    s = jnp.linspace(0.0, 1.0, n_points, dtype=a.dtype)

    def at(si):
        return sharpness(loss_fn, unravel(a + si * (b - a)), *args, n_iter=n_iter).value

    return jnp.max(jax.lax.map(at, s))


class SGDProgress(NamedTuple):
    """Expected relative progress of one SGD step from ``theta`` over ``M`` minibatches (seed 001, Sec. 5).

    ``expected``: ``E[RP] = (E f(theta - lr g_B) - f(theta)) / (lr |grad f|^2)`` (Def. 3, full-batch
    ``f`` and ``grad f``, the mean over the minibatches ``B``); ``predicted``: the right side of
    eq. (6), ``-1 + (1/2) E <g_B, grad f(theta) - grad f(theta - lr g_B)> / |grad f|^2``; each with
    its standard error over the ``M`` minibatches. ``exact``: the finite-sample identity of
    App. C, ``mean_B [-<g_B, grad f>/|grad f|^2 + int_0^1 <g_B, grad f - grad f(theta - s lr g_B)> ds
    / |grad f|^2]``, equal to ``expected`` up to quadrature and rounding (NaN unless ``n_nodes``
    is given); all three are NaN where ``grad f = 0``. ``fraction_descending``: the share of
    minibatch steps that lower ``f`` (Remark 6),
    with its binomial standard error. ``m``: the number of minibatches.
    """

    expected: jax.Array
    expected_stderr: jax.Array
    predicted: jax.Array
    predicted_stderr: jax.Array
    exact: jax.Array
    fraction_descending: jax.Array
    fraction_descending_stderr: jax.Array
    m: int


def sgd_progress(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    lr,
    data: Any,
    batches: Any,
    *,
    n_nodes: int | None = None,
    chunk: int = 8,
) -> SGDProgress:
    """:class:`SGDProgress` at ``params`` (seed 001, Def. 3 and eq. 6).

    ``loss_fn(params, batch)`` is the mean loss over a batch (a pytree of arrays with the
    example axis first); ``data`` is the full training set, ``batches`` a pytree of ``M``
    minibatches stacked on a leading axis (e.g. ``data`` indexed by an ``(M, B)`` array).
    Each minibatch costs one minibatch gradient and one full-batch loss and gradient, plus
    ``n_nodes`` full-batch gradients for ``exact``; minibatches run ``chunk`` at a time.
    """
    m = int(jax.tree_util.tree_leaves(batches)[0].shape[0])
    if m < 2:
        raise ValueError(f"batches must stack at least 2 minibatches on the leading axis, got {m}")
    chunk = check_int("chunk", chunk, minimum=1)
    if n_nodes is not None:
        n_nodes = check_int("n_nodes", n_nodes, minimum=1)
    flat, unravel = ravel_pytree(params)
    full = _value_and_flat_grad(loss_fn, unravel, data)
    f0, grad_f = full(flat)
    lr = jnp.asarray(lr, flat.dtype)
    gg = jnp.vdot(grad_f, grad_f)

    def one(batch):
        g = _value_and_flat_grad(loss_fn, unravel, batch)(flat)[1]
        f1, g1 = full(flat - lr * g)
        if n_nodes is None:
            exact = jnp.nan
        else:
            nodes, weights = _gauss_legendre01(n_nodes, flat.dtype)
            grads = jax.lax.map(lambda s: full(flat - s * lr * g)[1], nodes)
            exact = -jnp.vdot(g, grad_f) + jnp.vdot(weights, (grad_f[None, :] - grads) @ g)
        return f1, jnp.vdot(g, grad_f - g1), exact

    f1, inner, exact = jax.lax.map(one, batches, batch_size=min(chunk, m))
    gg = jnp.where(gg > 0, gg, jnp.nan)  # at a stationary point of f every ratio is undefined
    rp = (f1 - f0) / (lr * gg)
    rhs = -1 + 0.5 * inner / gg
    descend = (f1 < f0).astype(flat.dtype)

    def mean_se(x):
        return jnp.mean(x), jnp.std(x, ddof=1) / jnp.sqrt(m)

    (e, e_se), (p, p_se) = mean_se(rp), mean_se(rhs)
    frac = jnp.mean(descend)
    return SGDProgress(e, e_se, p, p_se, jnp.mean(exact) / gg, frac, jnp.sqrt(frac * (1 - frac) / m), m)


def local_smoothness(loss_fn: Callable[..., jax.Array], params: Any, step: Any, *args, fractions=(0.5,)) -> jax.Array:
    """``max_a |grad f(x + a d) - grad f(x)| / (a |d|)`` over ``a`` in ``fractions``: the smoothness met along a step.

    ``d = step`` is the update (a pytree like ``params``, e.g. ``x_{k+1} - x_k``). This is the
    estimator of the local smoothness that seed 002 (thesis ch. 3, Figs. 3-1 to 3-3) plots against
    the gradient norm to show that ``|hess f| <= L0 + L1 |grad f|`` ((L0, L1)-smoothness, Def. 3.2.1)
    describes training better than a global ``L``; the authors' code uses the midpoint,
    ``fractions = (1/2,)``. For a quadratic with Hessian ``P`` it is ``|P d| / |d|`` exactly. NaN where
    ``d = 0``.
    """
    fractions = jnp.asarray(fractions)
    if fractions.ndim != 1 or fractions.shape[0] == 0:
        raise ValueError(f"fractions must be a non-empty 1-D sequence, got shape {fractions.shape}")
    flat, unravel = ravel_pytree(params)
    d = ravel_pytree(step)[0].astype(flat.dtype)
    value_grad = _value_and_flat_grad(loss_fn, unravel, *args)
    g0 = value_grad(flat)[1]
    norm_d = jnp.linalg.norm(d)

    def ratio(a):
        return jnp.linalg.norm(value_grad(flat + a * d)[1] - g0) / (a * norm_d)

    values = jax.lax.map(ratio, fractions.astype(flat.dtype))
    return jnp.where(norm_d > 0, jnp.max(values), jnp.nan)


class RelaxedSmoothness(NamedTuple):
    """``l0``: the smallest ``L0`` with ``|hess f(x)| <= L0 + L1 |grad f(x)|`` at every given point (for the
    given ``L1``); ``hessian_norm`` and ``grad_norm`` at each point, and ``l1``."""

    l0: jax.Array
    hessian_norm: jax.Array
    grad_norm: jax.Array
    l1: float


def relaxed_smoothness(
    loss_fn: Callable[..., jax.Array], points: Any, l1, *args, n_iter: int = 100, key: jax.Array | None = None
) -> RelaxedSmoothness:
    """(L0, L1)-smoothness on a sample (seed 002, Def. 3.2.1): ``L0(L1) = max_x (|hess f(x)| - L1 |grad f(x)|)``.

    ``points`` is a pytree like ``loss_fn``'s parameters with a leading axis (one point per row);
    ``|hess f|`` is the operator norm, estimated as ``|H v|`` after ``n_iter`` steps of power iteration from a
    random start (a lower estimate, exact for one parameter; unlike the Rayleigh quotient ``|v^T H v|``, which
    gave 0.6 for 1 on ``diag(1, -1)``, it converges where ``H`` has eigenvalues ``-lambda`` and ``lambda``). ``f`` is
    ``(L0, L1)``-smooth on the sample for every ``L0 >= l0``: the thesis's examples are ``x^4``
    (``(16, 1)``), ``x^3`` (``(3, 1)``) and ``e^x`` (``(0, 1)``). ``l1`` may be an array (the frontier).
    """
    n_iter = check_int("n_iter", n_iter, minimum=1)
    n = jax.tree_util.tree_leaves(points)[0].shape[0]
    keys = jax.random.split(key if key is not None else jax.random.key(0), n)

    def one(p, k):
        flat, unravel = ravel_pytree(p)
        v0 = jax.random.normal(k, flat.shape, flat.dtype)
        top = power_iteration(lambda v: ravel_pytree(hvp(loss_fn, p, unravel(v), *args))[0], v0, n_iter)
        hess_norm = jnp.hypot(top.value, top.residual)  # |H v|
        return hess_norm, jnp.linalg.norm(ravel_pytree(jax.grad(loss_fn)(p, *args))[0])

    hess, grad = jax.vmap(one)(points, keys)
    l1 = jnp.asarray(l1, hess.dtype)
    l0 = jnp.max(hess - l1[..., None] * grad, axis=-1)  # one L0 per L1
    return RelaxedSmoothness(l0, hess, grad, l1)
