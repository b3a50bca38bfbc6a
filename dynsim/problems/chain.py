"""The zero chain of Carmon et al. and Arjevani et al.: the nonconvex lower-bound instance of seed 002, Thm 4.4.4.

``f_d(x) = -Psi(1) Phi(x_1) + sum_{i=2}^d [Psi(-x_{i-1}) Phi(-x_i) - Psi(x_{i-1}) Phi(x_i)]`` with
``Psi(t) = exp(1 - 1/(2t - 1)^2)`` for ``t > 1/2`` (0 otherwise) and
``Phi(t) = sqrt(e) int_{-inf}^t exp(-s^2/2) ds`` (thesis Sec. 4.7.7). Its gradient only reaches one
coordinate past the last one that is already large (Lemma 4.7.9.4), and the stochastic oracle hides
even that one coordinate except with probability ``p``: an algorithm whose iterates only grow along
the gradients it has seen (SGD, GClip, Adam: "zero-respecting") needs about ``d/p`` oracle calls to
reach the end of the chain, and until then ``|grad f_d| >= 1`` (Lemma 4.7.9.5).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from dynsim._validate import check_int, check_positive

from .base import Problem

__all__ = ["zero_chain", "zero_chain_function", "zero_chain_constants", "ZeroChainConstants", "progress_index"]

SMOOTHNESS = 152.0  # Lemma 4.7.9.2: f_d is 152-smooth
GRADIENT_BOUND = 23.0  # Lemma 4.7.9.3: |grad f_d|_inf <= 23


def _psi(t):
    inside = t > 0.5
    safe = jnp.where(inside, 2 * t - 1, 1.0)
    return jnp.where(inside, jnp.exp(1 - 1 / safe**2), 0.0)


def _phi(t):
    return np.sqrt(2 * np.pi * np.e) * ndtr(t)


def zero_chain_function(x: jax.Array) -> jax.Array:
    """``f_d(x)`` for ``x`` of shape ``(d,)`` (thesis Sec. 4.7.7; Arjevani et al. 2019, eq. 9)."""
    x = jnp.asarray(x)
    first = -_psi(jnp.asarray(1.0, x.dtype)) * _phi(x[0])
    prev, cur = x[:-1], x[1:]
    return first + jnp.sum(_psi(-prev) * _phi(-cur) - _psi(prev) * _phi(cur))


def progress_index(x: jax.Array, beta: float) -> jax.Array:
    """``prog_beta(x) = max{i : |x_i| > beta}`` with coordinates numbered from 1, and 0 if there is none."""
    x = jnp.asarray(x)
    above = jnp.abs(x) > beta
    return jnp.max(jnp.where(above, jnp.arange(1, x.shape[-1] + 1), 0), axis=-1)


def zero_chain(d: int, p: float, *, scale: float = 1.0, smoothness: float = SMOOTHNESS) -> Problem:
    """The chain ``f(x) = (L lam^2 / 152) f_d(x / lam)`` seen through the probability-``p`` zero-chain oracle.

    The oracle (thesis Sec. 4.7.7) is ``g(x) = (L lam / 152) g_d(x / lam)`` with
    ``g_d(x)_i = (1 + [i = prog_{1/4}(x) + 1] (z/p - 1)) d_i f_d(x)``, ``z ~ Bernoulli(p)``: unbiased,
    and the next coordinate of the chain shows only when ``z = 1``. ``lam = scale`` and
    ``L = smoothness`` (152 and 1 give ``f_d`` itself); ``f`` is ``L``-smooth. A stream: each sample is
    one ``z``; the per-sample loss has the value ``f(x)`` and the gradient ``g(x)``. Starts at ``x = 0``.
    """
    d = check_int("d", d, minimum=1)
    p = check_positive("p", p)
    if p > 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    lam = check_positive("scale", scale)
    factor = check_positive("smoothness", smoothness) * lam**2 / SMOOTHNESS

    def sample(key):
        return {"z": jax.random.bernoulli(key, p).astype(jnp.result_type(float))}

    def loss(x, s, hp):
        # f_d at v = u + (c - 1)(u - sg(u)): the value is f_d(u), the gradient c * grad f_d(u), with
        # c = 1 except c = z/p on the frontier coordinate prog_{1/4}(u) + 1: the oracle in one gradient
        u = x / lam
        frozen = jax.lax.stop_gradient(u)
        frontier = jax.nn.one_hot(progress_index(frozen, 0.25), d, dtype=u.dtype)
        c = 1 + (s["z"] / p - 1) * frontier
        return factor * zero_chain_function(frozen + c * (u - frozen))

    def init(key, hp):
        return jnp.zeros((d,), jnp.result_type(float))

    return Problem(loss=loss, init=init, sample=sample, name=f"zero_chain(d={d}, p={p:g})")


class ZeroChainConstants(NamedTuple):
    """The instance of Thm 4.4.4 for target accuracy ``eps``: scale ``lam``, length ``d``, probability
    ``p``, and ``k_max = (d - 1)/(2p)``, the number of oracle calls below which ``E|grad f(x_k)| >= eps``."""

    lam: float
    d: int
    p: float
    k_max: float


def zero_chain_constants(alpha: float, eps: float, delta: float, smoothness: float, G: float) -> ZeroChainConstants:
    """The instance of Thm 4.4.4 (thesis Sec. 4.7.7) for accuracy ``eps``, ``f(0) - inf f <= delta``, ``L``-smooth,
    ``E|g|^alpha <= G^alpha``: ``lam = 304 eps / L``, ``d = floor(delta L / (7296 eps^2))`` and
    ``p = (5000 eps / (G - 4 sqrt(delta L)))^(alpha/(alpha-1))``.

    The thesis prints ``p = (5000 eps)^alpha / (G - 4 sqrt(delta L))^alpha``. That ``p`` also keeps
    ``E|g|^alpha <= G^alpha``, but it gives ``k_max ~ eps^-(2 + alpha)``, not the
    ``eps^-(3 alpha - 2)/(alpha - 1)`` that the theorem states and that matches Thm 4.4.1; the two
    agree only at ``alpha = 2``. The exponent ``alpha/(alpha-1)`` is the one its final display uses.
    """
    alpha = check_positive("alpha", alpha)
    if not 1 < alpha <= 2:
        raise ValueError(f"alpha must be in (1, 2], got {alpha}")
    eps, delta = check_positive("eps", eps), check_positive("delta", delta)
    L, G = check_positive("smoothness", smoothness), check_positive("G", G)
    if G <= 4 * np.sqrt(delta * L):
        raise ValueError(f"G must exceed 4 sqrt(delta L) = {4 * np.sqrt(delta * L):.4g}, got {G}")
    d = int(np.floor(delta * L / (7296 * eps**2)))
    if d < 1:
        raise ValueError(f"eps={eps} is too large for delta L = {delta * L}: the chain would be empty")
    p = min(1.0, (5000 * eps / (G - 4 * np.sqrt(delta * L))) ** (alpha / (alpha - 1)))
    return ZeroChainConstants(304 * eps / L, d, p, (d - 1) / (2 * p))
