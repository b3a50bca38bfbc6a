"""Data-free objectives: quadratics, ``100 sin(t1) sin(t2)`` (seed 000, Sec. 3.4), the toys of seed 001
(Examples 1-3: a quadratic flattened by ``tanh``, single-neuron networks), the two functions of
seed 002's lower bound for GD under (L0, L1)-smoothness (Thm 3.4.2), and two Lipschitz nonsmooth
functions of seed 002's ch. 5 with known (delta, eps)-stationary sets (``l1_norm``, ``zigzag``), and the
periodic GD orbit of its ch. 6 (``asymmetric_v``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_int, check_nonnegative, check_positive, check_real

from .base import Problem
from .nets import activation_fn

__all__ = [
    "lessard_function",
    "quadratic",
    "flattened_quadratic",
    "single_neuron",
    "exploding_function",
    "slow_function",
    "sin_product",
    "l1_norm",
    "zigzag",
    "asymmetric_v",
]


def quadratic(P, *, theta0=None, init_std: float = 1.0) -> Problem:
    """``F(theta) = 0.5 * theta^T P theta`` (half convention: the Hessian is ``P``).

    GD ``theta <- theta - lr P theta`` converges iff ``lr < 2 / lambda_max(P)`` (for
    ``P`` positive definite). The fixed point is 0.

    Parameters
    ----------
    P:
        Symmetric ``d x d`` matrix (a scalar means ``d = 1``), or a 1-D array of length ``d``: the
        diagonal of a diagonal ``P`` (``F = 0.5 sum_i P_i theta_i^2``, ``O(d)`` per step, not ``O(d^2)``).
    theta0:
        Fixed initial point; if ``None``, ``theta_0 ~ N(0, init_std**2 I)``.
    """
    diagonal = np.ndim(P) == 1
    if diagonal:
        P = np.asarray(P, dtype=float)
        if P.size == 0 or not np.all(np.isfinite(P)):
            raise ValueError(f"the diagonal P must be a non-empty finite 1-D array, got {P.tolist()}")
    else:
        P = _square_matrix(P)
    d = P.shape[0]
    check_nonnegative("init_std", init_std)
    if theta0 is not None:
        theta0 = np.broadcast_to(np.asarray(theta0, dtype=float), (d,)).copy()

    def loss(theta, sample, hp):
        if diagonal:
            return 0.5 * jnp.sum(jnp.asarray(P, theta.dtype) * theta**2)
        return 0.5 * theta @ (jnp.asarray(P, theta.dtype) @ theta)

    def init(key, hp):
        dtype = jnp.result_type(float)
        if theta0 is not None:
            return jnp.asarray(theta0, dtype)
        return init_std * jax.random.normal(key, (d,), dtype)

    return Problem(loss=loss, init=init, fixed_point=np.zeros(d), name="quadratic")


def _square_matrix(P) -> np.ndarray:
    P = np.atleast_2d(np.asarray(P, dtype=float))
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be a square matrix, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"P must be finite, got {P.tolist()}")
    if not np.allclose(P, P.T):
        raise ValueError("P must be symmetric")
    return P


def _fixed_or_uniform(theta0, d: int, box: float):
    check_positive("box", box)
    if theta0 is not None:
        theta0 = np.broadcast_to(np.asarray(theta0, dtype=float), (d,)).copy()

    def init(key, hp):
        dtype = jnp.result_type(float)
        if theta0 is not None:
            return jnp.asarray(theta0, dtype)
        return jax.random.uniform(key, (d,), dtype, -box, box)

    return init


def flattened_quadratic(P, *, theta0=None, box: float = 0.5) -> Problem:
    """``F(theta) = tanh(0.5 theta^T P theta)``: a quadratic flattened far from its minimum (seed 001, Example 2).

    Its Hessian at the minimum 0 is ``P`` (``tanh'(0) = 1``), the same as :func:`quadratic`'s, so
    0 is linearly unstable for ``lr > 2 / lambda_max(P)``; yet GD stays bounded, because the
    gradient vanishes far away. With ``P = diag(40, 2)`` and ``lr = 2/39`` it settles on the
    2-cycle ``theta_1 = +-a``, ``tanh(20 a^2) = 1/sqrt(40)``, where ``F = 1/sqrt(40)``, RP = 0 and
    ``L(theta; lr grad F) = 2/lr`` exactly. The initial point is ``theta0`` or uniform on
    ``[-box, box]^d``.
    """
    P = _square_matrix(P)
    d = P.shape[0]

    def loss(theta, sample, hp):
        return jnp.tanh(0.5 * theta @ (jnp.asarray(P, theta.dtype) @ theta))

    return Problem(
        loss=loss, init=_fixed_or_uniform(theta0, d, box), fixed_point=np.zeros(d), name="flattened_quadratic"
    )


def single_neuron(
    activation: str = "tanh", *, x: float = 1.0, y: float = 0.0, theta0=(13.0, 0.01), box: float = 1.0
) -> Problem:
    """``F(theta) = (theta_1 sigma(theta_2 x) - y)^2``: a one-neuron network fitting one point (seed 001, Example 3).

    With ``(x, y) = (1, 0)`` the minima are the valley ``theta_2 = 0``, where the Hessian is
    ``diag(0, 2 theta_1^2)`` for ``sigma`` linear or tanh: GD with step ``lr`` can only settle
    where ``2 theta_1^2 < 2/lr``. From ``theta0 = (13, 0.01)`` at ``lr = 2/150`` the linear network
    diverges; the tanh network travels along the valley to ``theta_1 = 8.6165``, with sharpness
    ``148.49``, just below ``2/lr = 150``. ``theta0=None`` draws the start uniformly on
    ``[-box, box]^2``. ``activation``: ``"tanh"``, ``"linear"``, ``"relu"`` or ``"swish"``.
    """
    sigma = activation_fn(activation)
    x, y = check_real("x", x), check_real("y", y)

    def loss(theta, sample, hp):
        return (theta[0] * sigma(theta[1] * x) - y) ** 2

    return Problem(loss=loss, init=_fixed_or_uniform(theta0, 2, box), name=f"single_neuron({activation})")


def exploding_function(l1: float, m: float) -> Problem:
    """The 1-D function that forces GD to take small steps (seed 002, proof of Thm 3.4.2).

    ``f(x) = l1 x^2 / 2 + 1 / (2 l1)`` for ``|x| <= 1/l1`` and ``exp(l1 |x| - 1) / l1`` beyond: C^2,
    ``(L0, L1) = (l1, l1)``-smooth (the thesis prints ``(1, l1)``; the quadratic piece needs
    ``L0 = l1``), minimum ``1/(2 l1)`` at 0. It starts at ``x0 = (log m + 1) / l1``, where
    ``f'(x0) = m``. GD with a step ``h > 2 x0 / m`` moves farther out and diverges.
    """
    l1, m = check_positive("l1", l1), check_positive("m", m)
    if m <= 1:
        raise ValueError(f"m must be > 1 (the gradient norm at the start), got {m}")
    x0 = (np.log(m) + 1) / l1

    def loss(theta, sample, hp):
        x = theta[0]
        # x itself where the quadratic piece holds (jnp.clip's derivative is 1/2 at the boundary |x| = 1/l1)
        inner = jnp.where(jnp.abs(x) <= 1 / l1, x, 0.0)
        outer = jnp.maximum(jnp.abs(x), 1 / l1)
        return jnp.where(jnp.abs(x) <= 1 / l1, l1 * inner**2 / 2 + 1 / (2 * l1), jnp.exp(l1 * outer - 1) / l1)

    return Problem(
        loss=loss, init=_fixed_or_uniform([x0], 1, 1.0), fixed_point=np.zeros(1), name=f"exploding({l1}, {m})"
    )


def slow_function(eps: float, delta: float) -> Problem:
    """The 1-D function on which small GD steps are slow (seed 002, proof of Thm 3.4.2).

    ``f(x) = (eps/4)(6 x^2 - x^4)`` for ``|x| <= 1`` and ``2 eps (|x| - 1) + 5 eps / 4`` beyond: C^2,
    ``f'' <= 3 eps``, minimum 0 at 0. From ``x0 = 1 + delta / eps`` (``f(x0) = 2 delta + 5 eps / 4``)
    the gradient is exactly ``2 eps`` until ``|x| <= 1``, so GD with step ``h`` needs
    ``delta / (2 eps^2 h)`` steps before ``|f'|`` can drop below ``2 eps``.
    """
    eps, delta = check_positive("eps", eps), check_positive("delta", delta)

    def loss(theta, sample, hp):
        x = theta[0]
        inner = jnp.where(jnp.abs(x) <= 1, x, 0.0)  # not jnp.clip: its derivative is 1/2 at |x| = 1
        return jnp.where(jnp.abs(x) <= 1, eps / 4 * (6 * inner**2 - inner**4), 2 * eps * (jnp.abs(x) - 1) + 5 * eps / 4)

    return Problem(
        loss=loss,
        init=_fixed_or_uniform([1 + delta / eps], 1, 1.0),
        fixed_point=np.zeros(1),
        name=f"slow({eps}, {delta})",
    )


def sin_product(scale: float = 100.0, *, low: float = -np.pi, high: float = np.pi) -> Problem:
    """``F(t1, t2) = scale * sin(t1) sin(t2)`` (seed 000, Sec. 3.4; no factor 1/2).

    Its Hessian has norm at most ``L = scale``, so GD converges to a minimum for almost
    every start iff ``lr < 2 / L`` (0.02 for ``scale = 100``). The initial point is uniform
    on ``[low, high]^2`` (seed 000 does not state it; ``[-pi, pi]^2`` by default).
    """
    check_positive("scale", scale)
    if check_real("low", low) >= check_real("high", high):
        raise ValueError(f"low={low!r} must be below high={high!r}")

    def loss(theta, sample, hp):
        return scale * jnp.sin(theta[0]) * jnp.sin(theta[1])

    def init(key, hp):
        return jax.random.uniform(key, (2,), jnp.result_type(float), low, high)

    return Problem(loss=loss, init=init, name="sin_product")


def l1_norm(d: int = 1, *, theta0=None, box: float = 1.0) -> Problem:
    """``f(x) = |x|_1 = sum_i |x_i|`` on ``R^d`` (``|x|`` for ``d = 1``): ``L = sqrt(d)``-Lipschitz, minimum 0 at 0.

    A test function of seed 002, ch. 5 (nonsmooth nonconvex optimization). Its Goldstein
    ``delta``-subdifferential (Def. 5.3.1, Euclidean ball ``B``) is the convex hull of the sign vectors
    ``s`` whose closed orthant meets ``x + delta B``, i.e. ``sum_{i: s_i != sign(x_i)} x_i^2 <= delta^2``.
    Hence, with ``F = {i: |x_i| <= delta}``:

    * every element has components ``sign(x_i)`` on the coordinates ``|x_i| > delta``, so
      ``d(0, df(x + delta B))^2 >= #{i: |x_i| > delta}``;
    * equality holds when ``F`` splits into two sets each with ``sum x_i^2 <= delta^2`` (always when
      ``|F| <= 2``, or when ``sum_F x_i^2 <= delta^2``): then the minimum-norm element is
      ``sign(x_i)`` on ``|x_i| > delta`` and 0 on ``F``;
    * otherwise it can be larger: three coordinates at ``0.9 delta`` (only one can change sign
      inside the ball) give ``1/sqrt(3)`` on ``F``. :func:`dynsim.nonsmooth.l1_goldstein_distance`
      computes the exact value.

    For ``d = 1`` and ``eps < 1``: ``x`` is (delta, eps)-stationary iff ``|x| <= delta``.

    The initial point is ``theta0`` or uniform on ``[-box, box]^d``.
    """
    d = check_int("d", d, minimum=1)

    def loss(theta, sample, hp):
        return jnp.sum(jnp.abs(theta))

    return Problem(loss=loss, init=_fixed_or_uniform(theta0, d, box), fixed_point=np.zeros(d), name=f"l1_norm({d})")


def zigzag(queries, lip: float = 1.0, theta: float = 0.25, *, depth: float | None = None, theta0=None) -> Problem:
    """The piecewise-linear zig-zag ``f_theta`` of seed 002, Lemma 5.7.1 (the resisting oracle of Thm 5.3.1).

    With the queries sorted, ``x_1 < ... < x_K``, ``delta = min(min_k (x_{k+1} - x_k), depth / lip)``
    and ``0 < theta < 1/2``, ``L = lip``:

    * ``f = -L (x - x_1 + 2 theta delta)`` on ``(-inf, x_1 - theta delta]``;
    * ``f = L (x - x_k)`` on ``[x_k - theta delta, (x_k + x_{k+1})/2 - theta delta]``;
    * ``f = -L (x - x_{k+1} + 2 theta delta)`` on ``[(x_k + x_{k+1})/2 - theta delta, x_{k+1} - theta delta]``;
    * ``f = L (x - x_K)`` on ``[x_K - theta delta, inf)``.

    So ``f(x_k) = 0`` and ``f'(x_k) = L`` at every query, ``|f'| = L`` off the kinks, and
    ``inf f = -L theta delta >= -depth``. For ``eps < L`` the eps-stationary points are exactly the
    kinks ``{x_k - theta delta} U {(x_k + x_{k+1})/2 - theta delta}``, different for every ``theta``;
    ``x`` is (delta', eps)-stationary (Def. 5.3.1) iff a kink lies within ``delta'`` of ``x`` (then
    ``df(x + delta' B) = [-L, L]``; otherwise it is ``{+L}`` or ``{-L}``). ``depth`` (the thesis's
    ``Delta``) is needed when there is a single query. The start is ``theta0`` (default: ``x_1``).
    """
    q = np.sort(np.asarray(queries, dtype=float).ravel())
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError(f"queries must be a non-empty sequence of finite numbers, got {queries!r}")
    if np.any(np.diff(q) == 0):
        raise ValueError(f"queries must be distinct, got {q.tolist()}")
    lip = check_positive("lip", lip)
    theta = check_real("theta", theta)
    if not 0 < theta < 0.5:
        raise ValueError(f"theta must be in (0, 1/2), got {theta!r}")
    gap = float(np.min(np.diff(q))) if q.size > 1 else np.inf
    if depth is not None:
        gap = min(gap, check_positive("depth", depth) / lip)
    elif q.size == 1:
        raise ValueError("zigzag with a single query needs depth (the thesis's Delta): delta = depth / lip")
    shift = theta * gap

    def loss(x, sample, hp):
        x = x[0]
        xs = jnp.asarray(q, x.dtype)
        k = jnp.searchsorted(xs - shift, x, side="right") - 1  # x in [x_k - shift, x_{k+1} - shift)
        left = -lip * (x - xs[0] + 2 * shift)
        kc = jnp.clip(k, 0, xs.size - 1)
        up = lip * (x - xs[kc])
        down = -lip * (x - xs[jnp.minimum(kc + 1, xs.size - 1)] + 2 * shift)
        inside = jnp.where(kc < xs.size - 1, jnp.minimum(up, down), up)
        return jnp.where(k < 0, left, inside)

    start = q[0] if theta0 is None else theta0
    return Problem(loss=loss, init=_fixed_or_uniform(start, 1, 1.0), name=f"zigzag({q.size}, theta={theta})")


def lessard_function(*, x0: float = 3.1) -> Problem:
    """The 1-D strongly convex function on which the heavy-ball method cycles (Lessard et al. 2016; seed 002, Fig. 2-1).

    ``f'(x) = 25 x`` for ``x < 1``, ``x + 24`` for ``1 <= x < 2``, ``25 x - 24`` for ``x >= 2``:
    ``mu = 1``, ``L = 25``, minimum 0 at 0. ``f = 12.5 x^2``, ``x^2/2 + 24 x - 12``,
    ``12.5 x^2 - 24 x + 36`` on the three pieces (C^1). Heavy ball with the parameters tuned for
    quadratics, ``a = 4/(sqrt(L) + sqrt(mu))^2 = 1/9`` and ``b = ((sqrt(L) - sqrt(mu))/(sqrt(L) + sqrt(mu)))^2
    = 4/9`` (``optax.sgd(1/9, momentum=4/9)``), converges on every quadratic in the class, yet from
    ``x0 = 3.1`` it settles on a period-3 cycle. The start ``x0`` is a hyperparameter (a grid axis).
    """
    x0 = check_real("x0", x0)

    def loss(theta, sample, hp):
        x = theta[0]
        low, mid, high = 12.5 * x**2, 0.5 * x**2 + 24 * x - 12, 12.5 * x**2 - 24 * x + 36
        return jnp.where(x < 1, low, jnp.where(x < 2, mid, high))

    def init(key, hp):
        return jnp.reshape(jnp.asarray(hp["x0"], jnp.result_type(float)), (1,))

    return Problem(loss=loss, init=init, fixed_point=np.zeros(1), hyperparams={"x0": x0}, name="lessard_function")


def asymmetric_v(n: int) -> Problem:
    """``f(x) = -x/(n+1)`` for ``x <= 0`` and ``n x/(n+1)`` for ``x > 0`` (seed 002, Lemma 6.4.2), 1-Lipschitz.

    GD with ``lr = 1`` from ``x_0 = 0.2/(n+1)`` (the init) steps to ``x_1 = x_0 - n/(n+1)``, then climbs by
    ``1/(n+1)`` per step: ``x_k = -1 + (k + 0.2)/(n+1)`` for ``k = 1..n`` (the thesis prints ``k - 0.8``) and
    ``x_{n+1} = x_0``, a cycle of period ``n + 1`` on a compact set. The windowed average
    ``M_t = (1/n) sum_{i=t}^{t+n-1} f(x_i)`` therefore never settles: ``M_t - M_{t-1} = (f(x_{t+n-1}) - f(x_{t-1}))/n``,
    largest at ``|f(x_1) - f(x_0)|/n = (0.8 n - 0.2)/(n (n+1)^2)``, about ``0.8/n^2``; the thesis claims
    ``1/(2n)``.
    """
    n = check_int("n", n, minimum=1)

    def loss(x, sample, hp):
        return jnp.where(x[0] > 0, n * x[0], -x[0]) / (n + 1)

    return Problem(loss=loss, init=_fixed_or_uniform(0.2 / (n + 1), 1, 1.0), name=f"asymmetric_v({n})")
