"""Curvature and gradient statistics of a loss: Hessian-vector products, sharpness, gradient noise.

Operators and algorithms are kept apart: :func:`hvp` gives the Hessian as a matvec on
pytrees; :func:`power_iteration` and :func:`lanczos` find its top eigenvalue from any
matvec; :func:`sharpness` puts them together, warm-startable and vmappable over a leading
axis of parameters (one per trajectory). :func:`gradient_noise` is the per-example noise
``sigma(theta)`` of seed 000, eq. (1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
    "Minimum",
    "newton_minimize",
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


def _normalize(v):
    return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(v.dtype).tiny)


def power_iteration(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, n_iter: int = 100) -> Eigen:
    """Eigenvalue of largest **absolute value** of a symmetric operator, ``v <- A v / |A v|``.

    Returns the Rayleigh quotient ``v^T A v``. Its sign tells whether the dominant eigenvalue is
    negative; :func:`sharpness` then shifts (``A + rho I``) to reach the largest algebraic one.
    """
    n_iter = check_int("n_iter", n_iter, minimum=1)

    def body(v, _):
        return _normalize(matvec(v)), None

    v, _ = jax.lax.scan(body, _normalize(v0), None, length=n_iter)
    av = matvec(v)
    value = jnp.vdot(v, av)
    return Eigen(value, v, jnp.linalg.norm(av - value * v))


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, n_iter: int = 30) -> Eigen:
    """Largest algebraic eigenvalue of a symmetric operator by ``n_iter`` Lanczos steps.

    Full reorthogonalization against the Krylov basis (``n_iter`` vectors are kept), so it is
    stable in float32; the top Ritz pair of the tridiagonal matrix is returned. Negative
    eigenvalues of large magnitude do not mislead it, unlike plain power iteration.
    """
    n_iter = check_int("n_iter", n_iter, minimum=1)
    d = v0.shape[0]
    k = min(n_iter, d)
    q0 = _normalize(v0)
    basis = jnp.zeros((k, d), v0.dtype).at[0].set(q0)

    def body(carry, j):
        basis, alphas, betas = carry
        q = basis[j]
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        mask = (jnp.arange(k) <= j)[:, None]
        for _ in range(2):  # full reorthogonalization, twice
            w = w - (mask * basis).T @ ((mask * basis) @ w)
        beta = jnp.linalg.norm(w)
        nxt = jnp.where(beta > 0, w / jnp.where(beta > 0, beta, 1.0), 0.0)
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

    ``method="lanczos"`` (default) or ``"power"``: power iteration for the dominant eigenvalue
    ``rho``; if its Rayleigh quotient is negative, a second run on ``H + |rho| I`` (all
    eigenvalues shifted to >= 0) gives ``lambda_max + |rho|``. ``v0`` warm-starts from a
    previous :class:`Eigen` vector (a flat vector over all parameters), else a Gaussian from
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

    def matvec(v):
        return ravel_pytree(hvp(loss_fn, params, unravel(v), *args))[0]

    if method == "lanczos":
        return lanczos(matvec, v0, n_iter)
    dominant = power_iteration(matvec, v0, n_iter)
    rho = jnp.abs(dominant.value)
    shifted = power_iteration(lambda v: matvec(v) + rho * v, dominant.vector, n_iter)
    top = jnp.where(dominant.value >= 0, dominant.value, shifted.value - rho)
    vector = jnp.where(dominant.value >= 0, dominant.vector, shifted.vector)
    residual = jnp.where(dominant.value >= 0, dominant.residual, shifted.residual)
    return Eigen(top, vector, residual)


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
    grad_one = jax.grad(per_example_loss)
    chunk = min(chunk, m)
    n_chunks = -(-m // chunk)
    rows = jnp.arange(n_chunks * chunk)
    padded = jax.tree_util.tree_map(lambda a: a[rows % m], data)  # padding rows get weight 0
    weights = (rows < m).reshape(n_chunks, chunk).astype(flat.dtype)
    chunks = jax.tree_util.tree_map(lambda a: a.reshape(n_chunks, chunk, *a.shape[1:]), padded)

    def grads(c):
        return jax.vmap(lambda s: ravel_pytree(grad_one(params, s))[0])(c)

    def mean_pass(total, xs):
        c, w = xs
        return total + w @ grads(c), None

    total, _ = jax.lax.scan(mean_pass, jnp.zeros_like(flat), (chunks, weights))
    mean = total / m

    def spread_pass(total, xs):
        c, w = xs
        return total + w @ jnp.sum((grads(c) - mean) ** 2, axis=1), None

    ss, _ = jax.lax.scan(spread_pass, jnp.zeros((), flat.dtype), (chunks, weights))
    sigma2 = ss / m
    g2 = jnp.sum(mean**2)
    s2 = ss / (m - 1)
    debiased = jnp.sqrt(jnp.maximum(g2 - s2 / m * (n - m) / n, 0.0))
    return NoiseEstimate(jnp.sqrt(sigma2), jnp.sqrt(g2), debiased, m, n)


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
