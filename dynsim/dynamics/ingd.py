"""Interpolated normalized gradient descent (seed 002, thesis ch. 5): ``ingd`` (Algorithm 2) and
``stochastic_ingd`` (Algorithm 3), for Lipschitz, nonsmooth, nonconvex objectives.

Both evaluate the gradient at a **uniform random point of a segment** (the interpolation that
gives the methods their name): by the path-integral identity (Lemma 5.2.2),
``E <g(y), x' - x> = f(x') - f(x)`` for ``y ~ U[x, x']``, which is what lets the proofs turn a
failed descent test into a decrease of ``|m|``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dynsim._tree import tree_norm
from dynsim._validate import check_int, check_positive, check_real, check_values, range_check
from dynsim.problems.base import Problem, objective

from .base import REQUIRED, Dynamics
from .noise import Noise
from .training import (
    _check_noise,
    _checks,
    _data_of,
    _gradient_oracle,
    _init_params_and_data,
    batch_size_axis,
    problem_dynamics,
    trajectory_data,
)

__all__ = [
    "INGDState",
    "ingd",
    "ingd_inner_steps",
    "ingd_oracle_bound",
    "StochasticINGDState",
    "stochastic_ingd",
    "StochasticINGDParameters",
    "stochastic_ingd_parameters",
    "lagged_output_index",
]


# --------------------------------------------------------------------------- validation

_RULES: Mapping[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "delta": (lambda v: v > 0, "> 0"),
    "eps": (lambda v: v > 0, "> 0"),
    "lip": (lambda v: v > 0, "> 0"),
    "inner_steps": (
        lambda v: (v >= 0) & (v == np.round(v)),
        "an integer >= 0 (0: the thesis's K = ceil(48 L^2/eps^2))",
    ),
    "p": (lambda v: v > 0, "> 0"),
    "q": (lambda v: v >= 0, ">= 0"),
    "beta": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
}


def _check_value(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless every entry of ``value`` obeys its rule (REQUIRED passes)."""
    if value is REQUIRED:
        return
    check_values(name, value, *_RULES[name])


def _with_checks(dyn: Dynamics, names: Sequence[str]) -> Dynamics:
    return dyn._replace(check=_checks(dyn.check, range_check({name: _RULES[name] for name in names})))


# --------------------------------------------------------------------------- INGD (Algorithm 2)


class INGDState(NamedTuple):
    """State of one INGD run (Algorithm 2).

    ``params``: the reference point ``x_t`` (the problem's pytree); ``m``: the direction ``m_{t,k}``
    (flat, ``ravel_pytree`` order); ``fx = f(x_t)``; ``k``: the inner index (1-based); ``t``: the outer
    index (``t - 1`` descents so far); ``restarts``: restarts of the while-loop; ``calls``: gradient
    oracle calls so far; ``certified``: ``|m_{t,k}| <= eps`` was reached (``x_t`` is then
    (delta, eps)-stationary and the state no longer changes); ``data``: the trajectory's own dataset.
    """

    params: Any
    m: jax.Array
    fx: jax.Array
    k: jax.Array
    t: jax.Array
    restarts: jax.Array
    calls: jax.Array
    certified: jax.Array
    data: Any = ()


def ingd_inner_steps(lip, eps):
    """The thesis's inner-loop length ``K = ceil(48 L^2 / eps^2)`` (Thm 5.4.1, Lemma 5.7.2); works traced.

    ``x = 48 L^2 / eps^2`` computed in a float dtype ``d`` carries a relative error of a few units of
    ``eps_d = finfo(d).eps`` (from rounding ``L`` and ``eps``, then three operations), which ``ceil`` would turn
    into a whole extra step (``(2, 0.1)`` gives ``x = 19199.999999999996`` for 19200; ``(sqrt 2, 0.5)`` gives
    ``384.00000000000006`` for 384). So ``K = round(x)`` when ``|x - round(x)| <= 4 eps_d x``, else
    ``ceil(x)``; ``(1, 1e-3)`` gives 48,000,000. Integers give the exact ``ceil(48 L^2 / eps^2)``. Numbers
    are computed in float64 (``d`` the dtype they were given in: a NumPy float32 is resolved to ``eps_32``)
    and must be ``> 0``; traced values in their own dtype (in float32, above ``2^24`` the result is resolved
    to the spacing of float32 numbers).
    """
    if isinstance(lip, numbers.Real) and isinstance(eps, numbers.Real):  # Python and NumPy scalars
        check_positive("lip", lip), check_positive("eps", eps)
        if isinstance(lip, numbers.Integral) and isinstance(eps, numbers.Integral):
            return -(-48 * int(lip) ** 2 // int(eps) ** 2)
        dtype = np.result_type(lip, eps)
        with np.errstate(over="ignore"):
            x = float(48 * np.float64(lip) ** 2 / np.float64(eps) ** 2)
        if not math.isfinite(x):
            raise ValueError(f"48 lip^2 / eps^2 overflows float64 for lip={lip!r}, eps={eps!r}")
        nearest = round(x)
        return nearest if abs(x - nearest) <= 4 * np.finfo(dtype).eps * x else math.ceil(x)
    lip, eps = jnp.asarray(lip), jnp.asarray(eps)
    x = 48 * lip**2 / eps**2
    nearest = jnp.round(x)
    return jnp.where(jnp.abs(x - nearest) <= 4 * jnp.finfo(x.dtype).eps * x, nearest, jnp.ceil(x))


def ingd_oracle_bound(depth: float, lip: float, delta: float, eps: float, gamma: float) -> float:
    """Thm 5.4.1's bound: with probability ``1 - gamma`` INGD certifies within
    ``192 Delta L^2 / (eps^3 delta) * log(4 Delta / (gamma delta eps))`` oracle calls (``depth = Delta``,
    ``f(x_1) - inf f <= Delta``; natural log).

    It is ``T K log(T / gamma)`` with ``T = 4 Delta / (eps delta)`` outer iterations (each descent lowers
    ``f`` by more than ``eps delta / 4``) and ``K = 48 L^2 / eps^2`` inner steps, each restart failing with
    probability at most 1/4. So ``depth, lip, delta, eps > 0``, ``gamma`` in ``(0, 1)`` (a probability of
    failure) and ``T >= 1`` (``depth >= eps delta / 4``), which makes the logarithm positive.
    """
    depth, lip, delta, eps = (
        check_positive(n, v) for n, v in (("depth", depth), ("lip", lip), ("delta", delta), ("eps", eps))
    )
    gamma = check_real("gamma", gamma)
    if not 0 < gamma < 1:
        raise ValueError(f"gamma must be in (0, 1), got {gamma!r}")
    if 4 * depth < eps * delta:
        raise ValueError(
            f"depth must be >= eps delta / 4 = {eps * delta / 4!r} (at least one outer iteration, "
            f"T = 4 depth / (eps delta) >= 1), got {depth!r}"
        )
    return 192 * depth * lip**2 / (eps**3 * delta) * np.log(4 * depth / (gamma * delta * eps))


def ingd(
    problem: Problem,
    *,
    delta: float = REQUIRED,
    eps: float = REQUIRED,
    lip: float = REQUIRED,
    inner_steps: int | None = None,
) -> Dynamics:
    """Interpolated normalized gradient descent, deterministic (seed 002, Algorithm 2 / Thm 5.4.1).

    With ``m_{t,1} = g(x_t)`` (the oracle at ``x_t``; after a restart too), for ``k = 1..K``:

    * ``x_{t,k} = x_t - delta m_{t,k} / |m_{t,k}|`` (every trial point is at distance ``delta``);
    * if ``|m_{t,k}| <= eps``: stop; ``x_t`` is (delta, eps)-stationary, since ``m_{t,k}`` is a convex
      combination of gradients in ``x_t + delta B``;
    * elif ``f(x_{t,k}) - f(x_t) < -delta |m_{t,k}| / 4`` (descent condition): ``x_{t+1} = x_{t,k}``;
    * else: ``y ~ U[x_t, x_{t,k}]``, ``g = g(y)``,
      ``beta_{t,k} = (4 L^2 - |m_{t,k}|^2) / (4 L^2 + 2 |m_{t,k}|^2)``,
      ``m_{t,k+1} = beta_{t,k} m_{t,k} + (1 - beta_{t,k}) g``;
    * after ``k = K`` without either exit, restart the local search at ``x_t``.

    One ``step`` is one gradient-oracle call: an inner update, or a descent move (the oracle at
    ``x_{t+1}``), or a restart (the oracle at ``x_t``); the certificate is checked whenever ``m``
    changes, and a certified trajectory stays put. Each step also evaluates ``f(x_{t,k})``
    (``f(x_t)`` is kept in the state). So the state's ``calls`` is the oracle count of Thm 5.4.1,
    whose bound is :func:`ingd_oracle_bound`; with ``K = 48 L^2/eps^2`` the chance of a restart is at
    most 1/4 (Lemma 5.7.2: ``E|m_{t,k}|^2 <= 3 L^2/(k+2)``) and there are at most ``4 Delta/(eps delta) - 1``
    descents. All branches are computed and selected with ``jnp.where``, so it runs vmapped.

    Parameters
    ----------
    problem:
        A data-free problem, or a finite dataset (``f`` is then the full-batch objective); INGD
        needs exact function values, so a stream is refused. Parameters may be any pytree.
    delta, eps, lip:
        The radius, the stationarity level and a Lipschitz constant ``L`` of ``f`` (traced: grid axes).
    inner_steps:
        ``K``; ``None`` uses the thesis's ``K = ceil(48 L^2 / eps^2)`` of each cell (hyperparameter
        ``inner_steps`` = 0). Traced.

    Observables see ``state.params = x_t``; :func:`dynsim.nonsmooth.ingd_status` records the
    certificate and the counters.
    """
    if problem.kind == "stream":
        raise ValueError(
            f"ingd needs function values f(x): problem {problem.name!r} is a stream (n_data=None); give it a "
            "finite n_data, or use stochastic_ingd"
        )
    own = {"delta": delta, "eps": eps, "lip": lip, "inner_steps": 0 if inner_steps is None else inner_steps}
    for name, value in own.items():
        if value is not REQUIRED:
            check_real(name, value)
        _check_value(name, value)
    if inner_steps is not None:
        check_int("inner_steps", inner_steps, minimum=1)
    oracle = _gradient_oracle(problem, (), True)
    data_of = _data_of(problem)

    def value_and_flat_grad(params, data, hp):
        value, g = oracle(jax.random.key(0), params, data, hp)  # full batch: the key is not used
        return value, ravel_pytree(g)[0]

    def init(key, hp) -> INGDState:
        params, own_data = _init_params_and_data(problem, key, hp)
        data = trajectory_data(problem, own_data, hp)
        fx, m = value_and_flat_grad(params, data, hp)
        eps_ = jnp.asarray(hp["eps"], m.dtype)
        zero = jnp.int32(0)
        return INGDState(
            params=params,
            m=m,
            fx=fx,
            k=zero + 1,
            t=zero + 1,
            restarts=zero,
            calls=zero + 1,
            certified=jnp.sqrt(m @ m) <= eps_,
            data=own_data,
        )

    def step(state: INGDState, key, hp) -> INGDState:
        x, unravel = ravel_pytree(state.params)
        dtype = x.dtype
        delta_, eps_, lip_ = (jnp.asarray(hp[n], dtype) for n in ("delta", "eps", "lip"))
        K = jnp.where(hp["inner_steps"] > 0, jnp.asarray(hp["inner_steps"], dtype), ingd_inner_steps(lip_, eps_))
        data = data_of(state, hp)
        m = state.m
        norm2 = m @ m
        norm = jnp.sqrt(norm2)
        trial = x - delta_ * m / jnp.where(norm > 0, norm, 1)  # x_{t,k}
        f_trial = objective(problem, unravel(trial), data, hp)
        descent = f_trial - state.fx < -delta_ * norm / 4
        restart = ~descent & (state.k >= K)
        y = x + jax.random.uniform(key, (), dtype) * (trial - x)  # y_{t,k+1} ~ U[x_t, x_{t,k}]
        at = jnp.where(descent, trial, jnp.where(restart, x, y))
        _, g = value_and_flat_grad(unravel(at), data, hp)
        beta = (4 * lip_**2 - norm2) / (4 * lip_**2 + 2 * norm2)
        fresh = descent | restart
        m_new = jnp.where(fresh, g, beta * m + (1 - beta) * g)
        new = INGDState(
            params=unravel(jnp.where(descent, trial, x)),
            m=m_new,
            fx=jnp.where(descent, f_trial, state.fx),
            k=jnp.where(fresh, 1, state.k + 1).astype(jnp.int32),
            t=state.t + descent.astype(jnp.int32),
            restarts=state.restarts + restart.astype(jnp.int32),
            calls=state.calls + 1,
            certified=jnp.sqrt(m_new @ m_new) <= eps_,
            data=state.data,
        )
        return jax.tree_util.tree_map(lambda old, nw: jnp.where(state.certified, old, nw), state, new)

    dyn = problem_dynamics(
        problem,
        init,
        step,
        own,
        set(),
        name=f"ingd({problem.name})",
    )
    return _with_checks(dyn, list(own))


# --------------------------------------------------------------------------- stochastic INGD (Algorithm 3)


class StochasticINGDState(NamedTuple):
    """State of one Stochastic INGD run (Algorithm 3): ``params = x_t``, ``m = m_t`` (a pytree like
    ``params``), and the trajectory's own dataset."""

    params: Any
    m: Any
    data: Any = ()


def stochastic_ingd(
    problem: Problem,
    batch_size: int | None = 1,
    *,
    p: float = REQUIRED,
    q: float = REQUIRED,
    beta: float = REQUIRED,
    replace: bool = True,
    noise: Sequence[Noise] = (),
) -> Dynamics:
    """Stochastic INGD (seed 002, Algorithm 3 / Thm 5.5.1): normalized momentum with the gradient at a random point.

    ``m_1 = g(x_1)``; then, every step,

    * ``eta_t = 1 / (p |m_t| + q)``, ``x_{t+1} = x_t - eta_t m_t`` (a step of length ``|m_t|/(p|m_t| + q) <= 1/p``);
    * ``y_{t+1} ~ U[x_t, x_{t+1}]`` (uniform on the segment);
    * ``m_{t+1} = beta m_t + (1 - beta) g(y_{t+1})``, the stochastic gradient **at** ``y_{t+1}``, not at ``x_{t+1}``.

    ``g`` is the minibatch (and noise) oracle of :func:`dynsim.dynamics.sgd`: ``batch_size`` samples
    (``None``: the full dataset), ``replace``, ``noise``. Weight decay, as everywhere in dynsim, is
    the problem's (e.g. ``mlp_classifier(weight_decay=...)``, coupled: it is in ``g``). ``|m|`` is the
    Euclidean norm over all parameters. The theorem's parameters are ``G = sqrt(L^2 + sigma^2)``,
    ``beta = 1 - eps^2/(64 G^2)``, ``p = 64 G^2 ln(16 G/eps) / (delta eps^2)``, ``q = 4 G p``; the
    thesis's CIFAR-10 runs use ``beta = 0.9``, ``p = 1``, ``q = 10`` (weight decay 5e-4).

    Hyperparameters ``p``, ``q``, ``beta`` (traced), the problem's and the noises'; ``batch_size``
    and ``n_data`` static. The uniform ``U`` of step ``t`` is ``jax.random.uniform(split(key)[0])``
    and the minibatch key is ``split(key)[1]``; the initial gradient uses ``fold_in(init_key, 1)``,
    while the initial parameters come from ``init_key`` itself, as in :func:`dynsim.dynamics.sgd`
    and :func:`~dynsim.dynamics.from_optax` (same seed, same start).

    **Output rule.** Algorithm 3 returns ``x_{max(i - K, 1)}`` with ``i ~ U{1..T}`` and ``K = p delta``:
    the guarantee (``E|m_t|`` small on average, Thm 5.5.1) is about the lagged reference point
    ``x_{t-K}``, whose delta-ball contains ``x_{t-K+1}, ..., x_t``. The dynamics itself is the
    iteration; record the iterates (``ds.observables.trajectory`` with ``record_every=1``, or
    ``ds.observables.last_values``) and draw the output with :func:`lagged_output_index`.
    """
    noise = _check_noise(problem, noise)
    own: dict[str, Any] = {"p": p, "q": q, "beta": beta}
    for name, value in own.items():
        if value is not REQUIRED:
            check_real(name, value)
        _check_value(name, value)
    static = batch_size_axis(problem, batch_size, own)
    oracle = _gradient_oracle(problem, noise, replace)
    data_of = _data_of(problem)

    def init(key, hp) -> StochasticINGDState:
        params, own_data = _init_params_and_data(problem, key, hp)
        data = trajectory_data(problem, own_data, hp)
        _, m = oracle(jax.random.fold_in(key, 1), params, data, hp)  # m_1 = g(x_1)
        return StochasticINGDState(params=params, m=m, data=own_data)

    def step(state: StochasticINGDState, key, hp) -> StochasticINGDState:
        k_u, k_g = jax.random.split(key)
        leaves = jax.tree_util.tree_leaves(state.params)
        dtype = jnp.result_type(*leaves)
        p_, q_, beta_ = (jnp.asarray(hp[n], dtype) for n in ("p", "q", "beta"))
        denom = p_ * tree_norm(state.m) + q_
        eta = 1 / jnp.where(denom > 0, denom, 1)  # m = 0 and q = 0: no move
        u = jax.random.uniform(k_u, (), dtype)
        x_next = jax.tree_util.tree_map(lambda x, m: x - eta * m, state.params, state.m)
        y = jax.tree_util.tree_map(lambda x, m: x - (u * eta) * m, state.params, state.m)
        _, g = oracle(k_g, y, data_of(state, hp), hp)  # g(y_{t+1})
        m = jax.tree_util.tree_map(lambda m, gi: beta_ * m + (1 - beta_) * gi, state.m, g)
        return state._replace(params=x_next, m=m)

    dyn = problem_dynamics(
        problem,
        init,
        step,
        own,
        static,
        noise=noise,
        replace=replace,
        name=f"stochastic_ingd({problem.name}, batch_size={batch_size})",
    )
    return _with_checks(dyn, ["p", "q", "beta"])


class StochasticINGDParameters(NamedTuple):
    """Thm 5.5.1's settings of Stochastic INGD: ``beta``, ``p``, ``q``, the output lag ``K``, the run length ``T``."""

    beta: float
    p: float
    q: float
    lag: float
    n_steps: float


def stochastic_ingd_parameters(lip: float, sigma: float, eps: float, delta: float, depth: float):
    """The parameters with which Thm 5.5.1 (seed 002) guarantees ``(1/T) sum_t E|m_t| <= eps/4``.

    With ``G = sqrt(L^2 + sigma^2)`` (``lip = L``, ``sigma`` the gradient noise's standard deviation)
    and ``depth = Delta >= f(x_1) - inf f``: ``beta = 1 - eps^2/(64 G^2)``,
    ``p = 64 G^2 ln(16 G/eps)/(delta eps^2)``, ``q = 4 G p``, ``K = p delta`` and
    ``T = 2^16 G^3 Delta ln(16 G/eps)/(eps^4 delta) max(1, G delta/(8 Delta))``.
    """
    lip, eps, delta, depth = (
        check_real(n, v) for n, v in (("lip", lip), ("eps", eps), ("delta", delta), ("depth", depth))
    )
    sigma = check_real("sigma", sigma)
    for name, value in (("lip", lip), ("eps", eps), ("delta", delta), ("depth", depth)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    G = float(np.hypot(lip, sigma))
    log = np.log(16 * G / eps)
    p = 64 * G**2 * log / (delta * eps**2)
    n_steps = 2**16 * G**3 * depth * log / (eps**4 * delta) * max(1.0, G * delta / (8 * depth))
    return StochasticINGDParameters(1 - eps**2 / (64 * G**2), p, 4 * G * p, p * delta, n_steps)


def lagged_output_index(n_steps: int, lag: int, *, size=None, seed=None) -> np.ndarray:
    """Record indices of Algorithm 3's output ``x_{max(i - K, 1)}``, ``i ~ U{1..T}`` (seed 002, Algorithm 3, lines 8-9).

    With ``T = n_steps`` steps recorded at ``record_every=1``, record ``j`` (``j = 0..T``) holds the
    thesis's ``x_{j+1}``, so the output is record ``max(i - K, 1) - 1``. ``lag`` is ``K`` (``p delta``
    in Thm 5.5.1, a real number, as :func:`stochastic_ingd_parameters` returns it: rounded up to whole steps);
    ``size`` draws several (one per trajectory), from ``numpy.random.default_rng(seed)``.
    """
    n_steps = check_int("n_steps", n_steps, minimum=1)
    lag = check_real("lag", lag)
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    lag = math.ceil(lag)
    i = np.random.default_rng(seed).integers(1, n_steps + 1, size=size)
    return np.maximum(i - lag, 1) - 1
