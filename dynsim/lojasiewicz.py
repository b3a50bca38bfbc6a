"""SGD under a local Łojasiewicz condition (seed 003, An & Lu): rates, step sizes and confinement bounds.

Setting of Thm 3.1: a loss ``F >= 0`` whose gradient is ``C_L``-Lipschitz, with
``|grad F|^2 >= alpha F`` on the ball ``B(theta_0, R)`` (the local Łojasiewicz constant of
Def. 2.1), ``F >= M_0`` on the shell ``R - 1 <= |theta - theta_0| <= R`` (Assumption 3), and
"machine-learning" noise ``g = grad F + sqrt(sigma F) Z`` with ``E Z = 0``, ``E|Z|^2 <= 1``
(eqs. 2.10-2.11; :func:`dynsim.dynamics.multiplicative_noise`). Then, with probability at least
``1 - B_exit``, SGD with a constant step ``lr <= alpha / (4 C_L (2 C_L + sigma))`` never leaves
``B(theta_0, R - 1)`` and ``F(theta_k)`` decays like ``rho^k``.

For ``F = |theta|^2 / 2`` (``alpha = 2``, ``C_L = 1``) the contraction (3.8) is an equality,
``E[F(theta_{k+1}) | theta_k] = rho F(theta_k)``, and three step-size regions nest (seed 003
digest, Sec. 2.5): Thm 3.1's ``lr <= 1/(2 (2 + sigma))`` inside the mean-``F`` region
``rho < 1``, ``lr < 4/(2 + sigma)``, inside the region where SGD still converges with
probability one, a negative Lyapunov exponent (:func:`quadratic_exponent`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import optimize

from dynsim import prng
from dynsim._validate import check_int, check_nonnegative, check_positive, check_real
from dynsim.curvature import hvp, power_iteration
from dynsim.nonsmooth import sample_ball
from dynsim.stability import gaussian_log_abs

__all__ = [
    "contraction_rate",
    "max_learning_rate",
    "mean_square_threshold",
    "exit_probability_bound",
    "max_initial_loss",
    "travel_bound",
    "quadratic_exponent",
    "quadratic_exponent_threshold",
    "BallConstants",
    "ball_constants",
]


def _constants(alpha, smoothness, sigma):
    """``alpha``, ``C_L``, ``sigma``, with ``0 < alpha <= 2 C_L`` (Lemma 2.1: no larger Łojasiewicz constant exists
    for a ``C_L``-smooth ``F``) and ``sigma >= 0``."""
    alpha, smoothness = check_positive("alpha", alpha), check_positive("smoothness", smoothness)
    if alpha > 2 * smoothness:
        raise ValueError(f"alpha must be <= 2 smoothness (Lemma 2.1), got alpha={alpha}, smoothness={smoothness}")
    return alpha, smoothness, check_nonnegative("sigma", sigma)


def _learning_rates(lr) -> np.ndarray:
    """``lr`` as a float array whose every entry is finite and > 0."""
    lr = np.asarray(lr, dtype=float)
    if not np.all(np.isfinite(lr) & (lr > 0)):
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    return lr


def contraction_rate(lr, alpha: float, smoothness: float, sigma: float):
    """``rho = 1 - lr alpha + (lr^2 / 2) C_L (2 C_L + sigma)`` (seed 003, eq. 3.2), arrays in ``lr`` broadcast.

    The factor of the conditional contraction (3.8), ``E[F(theta_{k+1}) 1_{E_{k+1}} | F_k] <=
    rho F(theta_k) 1_{E_k}``; exact (an equality without the indicators) for ``F = |theta|^2/2``.
    """
    alpha, smoothness, sigma = _constants(alpha, smoothness, sigma)
    lr = _learning_rates(lr)
    return 1 - lr * alpha + lr**2 / 2 * smoothness * (2 * smoothness + sigma)


def max_learning_rate(alpha: float, smoothness: float, sigma: float) -> float:
    """Thm 3.1's step-size condition ``lr <= min(1/alpha, alpha / (4 C_L (2 C_L + sigma)))``.

    Since ``alpha <= 2 C_L`` (Lemma 2.1) the second term always binds.
    """
    alpha, smoothness, sigma = _constants(alpha, smoothness, sigma)
    return min(1 / alpha, alpha / (4 * smoothness * (2 * smoothness + sigma)))


def mean_square_threshold(alpha: float, smoothness: float, sigma: float) -> float:
    """``2 alpha / (C_L (2 C_L + sigma))``: ``rho < 1`` exactly for ``0 < lr`` below it (8x Thm 3.1's bound)."""
    alpha, smoothness, sigma = _constants(alpha, smoothness, sigma)
    return 2 * alpha / (smoothness * (2 * smoothness + sigma))


def _proof_constants(lr, alpha, smoothness, sigma, f0):
    """``lr``, ``F_0`` (arrays), ``rho < 1`` and ``A = sqrt(2 C_L) + sqrt(sigma)``, the constants of Thm 3.1's proof."""
    alpha, smoothness, sigma = _constants(alpha, smoothness, sigma)
    lr = _learning_rates(lr)
    f0 = np.asarray(f0, dtype=float)
    if not np.all(np.isfinite(f0) & (f0 >= 0)):
        raise ValueError(f"f0 must be finite and >= 0, got {f0!r}")
    rho = contraction_rate(lr, alpha, smoothness, sigma)
    if np.any(rho >= 1):
        raise ValueError(
            f"the bound needs rho < 1; rho = {rho!r} (lr above {mean_square_threshold(alpha, smoothness, sigma)})"
        )
    return lr, f0, rho, np.sqrt(2 * smoothness) + np.sqrt(sigma)


def exit_probability_bound(
    lr, alpha: float, smoothness: float, sigma: float, f0, m0: float, *, printed: bool = False, after: int = 0
):
    """Upper bound on ``P(theta_k leaves B(theta_0, R - 1) for some k > after)`` from the proof of Thm 3.1.

    Corrected form (seed 003 digest, Sec. 2.2; the paper's (3.10)-(3.19) drop a square root and shift
    the geometric sums by one):
    ``B_exit = A lr sqrt(F_0) rho^(after/2) / (1 - sqrt(rho)) + rho^(after+1) F_0 / (M_0 (1 - rho))``,
    ``A = sqrt(2 C_L) + sqrt(sigma)``: the first term bounds exits by a jump of length >= 1 (3.14),
    the second landings on the shell where ``F >= M_0`` (3.15). ``after > 0`` gives the tail beyond a
    finite horizon. ``printed=True`` returns the bound as eq. (3.19) prints it,
    ``F_0 (A lr sqrt(rho) / (1 - sqrt(rho)) + rho^2 / (M_0 (1 - rho)))``, which is not a valid bound.
    Requires ``rho < 1``; values above 1 are vacuous.
    """
    m0 = check_positive("m0", m0)
    after = check_int("after", after, minimum=0)
    if printed and after:
        raise ValueError("printed=True is eq. (3.19) as printed, for the whole run; it has no tail (after must be 0)")
    lr, f0, rho, a = _proof_constants(lr, alpha, smoothness, sigma, f0)
    sr = np.sqrt(rho)
    if printed:
        return f0 * (a * lr * sr / (1 - sr) + rho**2 / (m0 * (1 - rho)))
    return a * lr * np.sqrt(f0) * sr**after / (1 - sr) + rho ** (after + 1) * f0 / (m0 * (1 - rho))


def max_initial_loss(
    lr, alpha: float, smoothness: float, sigma: float, m0: float, delta: float, *, printed: bool = False
):
    """The ``epsilon`` of Thm 3.1 for a confidence ``delta``: the largest ``F_0`` whose exit bound is ``delta``.

    Eq. (3.20) chooses ``epsilon`` so that :func:`exit_probability_bound` is at most ``delta`` for every
    ``F(theta_0) <= epsilon``; then SGD stays in ``B(theta_0, R - 1)`` with probability ``>= 1 - delta``.
    With ``a = A lr / (1 - sqrt(rho))``, ``b = rho / (M_0 (1 - rho))`` and ``A = sqrt(2 C_L) + sqrt(sigma)``,
    the corrected bound is ``a sqrt(F_0) + b F_0``, increasing in ``F_0``, and equals ``delta`` at
    ``sqrt(epsilon) = (-a + sqrt(a^2 + 4 b delta)) / (2 b) = 2 delta / (a + sqrt(a^2 + 4 b delta))``
    (seed 003 digest, Sec. 2.2, computed in the second form, which does not cancel when ``b delta << a^2``).
    ``printed=True`` inverts the printed (3.19) instead,
    ``epsilon = delta / (A lr sqrt(rho) / (1 - sqrt(rho)) + rho^2 / (M_0 (1 - rho)))``, which rests on a bound that
    is not one and, for small ``delta``, is far larger (20x at ``lr = 0.05``, ``alpha = 2``, ``C_L = 1``,
    ``sigma = 8``, ``M_0 = 1/2``, ``delta = 0.05``). Arrays in ``lr`` broadcast; requires ``rho < 1`` and
    ``0 < delta < 1``.
    """
    m0 = check_positive("m0", m0)
    delta = check_real("delta", delta)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    lr, _, rho, c = _proof_constants(lr, alpha, smoothness, sigma, 0.0)
    sr = np.sqrt(rho)
    if printed:
        return delta / (c * lr * sr / (1 - sr) + rho**2 / (m0 * (1 - rho)))
    a, b = c * lr / (1 - sr), rho / (m0 * (1 - rho))
    return (2 * delta / (a + np.sqrt(a**2 + 4 * b * delta))) ** 2


def travel_bound(lr, alpha: float, smoothness: float, sigma: float, f0, step: int | None = None, *, printed=False):
    """How far SGD travels before it leaves the ball (proof of Thm 3.1, (3.10)-(3.11), corrected).

    ``step = k``: ``E[|theta_{k+1} - theta_k| 1_{E_k}] <= A lr rho^(k/2) sqrt(F_0)``, the expected length of
    step ``k`` of a trajectory that has stayed in the ball so far (3.10). ``step=None``: the expected path
    length ``E[sum_k |theta_{k+1} - theta_k| 1_{E_k}] <= A lr sqrt(F_0) / (1 - sqrt(rho))`` (3.11), whose
    Markov form (3.12) bounds the ``1 - delta`` quantile by this over ``delta``. ``A = sqrt(2 C_L) + sqrt(sigma)``.
    ``printed=True`` puts ``F_0`` where Cauchy-Schwarz gives ``sqrt(F_0)``, as the paper does: not a bound
    when ``F_0 < 1`` (seed 003 digest, Sec. 2.2). Requires ``rho < 1``.
    """
    lr, f0, rho, a = _proof_constants(lr, alpha, smoothness, sigma, f0)
    size = f0 if printed else np.sqrt(f0)
    if step is None:
        return a * lr * size / (1 - np.sqrt(rho))
    step = check_int("step", step, minimum=0)
    return a * lr * rho ** (step / 2) * size


def quadratic_exponent(lr, sigma: float):
    """Lyapunov exponent of SGD with ML noise on ``F = theta^2 / 2`` (1-D): ``E log|1 - lr - lr sqrt(sigma/2) Z|``.

    With ``Z ~ N(0, 1)`` the step is ``theta <- theta (1 - lr) - lr sqrt(sigma theta^2 / 2) Z``, a random
    multiplier; ``theta_k -> 0`` almost surely iff the exponent is negative. Computed exactly as
    ``log(lr s) + E log|Z + (1 - lr)/(lr s)|``, ``s = sqrt(sigma/2)``
    (:func:`dynsim.stability.gaussian_log_abs`). Jensen: ``2 lambda <= log rho``.
    """
    sigma = check_positive("sigma", sigma)
    lr = _learning_rates(lr)
    s = np.sqrt(sigma / 2)
    return np.log(lr * s) + gaussian_log_abs((1 - lr) / (lr * s))


def quadratic_exponent_threshold(sigma: float) -> float:
    """The step size where :func:`quadratic_exponent` crosses 0 (SGD stops converging with probability one).

    Found by Brent's method between the mean-square threshold ``4/(2 + sigma)`` (below which
    ``lambda <= log(rho)/2 < 0``) and the first step size where the exponent is positive.
    """
    sigma = check_positive("sigma", sigma)
    low = 4 / (2 + sigma)
    high = 2 * low
    while quadratic_exponent(high, sigma) <= 0:
        high *= 2
    return float(optimize.brentq(lambda lr: float(quadratic_exponent(lr, sigma)), low, high, xtol=1e-12))


# --------------------------------------------------------------------------- the constants of a given loss


class BallConstants(NamedTuple):
    """Thm 3.1's constants of a loss on ``B(theta_0, R)``, estimated from points where it was evaluated.

    Each is an extremum over those points, so each errs one way only (seed 003 digest, Sec. 1.4):

    * ``alpha``: ``min |grad F|^2 / F`` over the ball (Def. 2.1, points with ``F > f_floor``): an **upper**
      bound on the local Łojasiewicz constant, found at ``alpha_at``;
    * ``smoothness``: ``max |H v|`` over unit ``v`` and the points (power iteration on the Hessian): a
      **lower** bound on ``C_L``, the Lipschitz constant of ``grad F`` on the ball;
    * ``m0``: ``min F`` over the shell ``R - width <= |theta - theta_0| <= R`` (Assumption 3, ``width = 1``
      in the paper): an **upper** bound on ``M_0``, found at ``m0_at``;
    * ``f0 = F(theta_0)``, and ``assumption_1 = 4 F(theta_0) < R^2 alpha`` (Assumption 1 with the estimate:
      optimistic, since ``alpha`` is an upper bound).

    ``alpha_at`` and ``m0_at`` are points shaped as ``theta_0``.
    """

    alpha: float
    alpha_at: Any
    smoothness: float
    m0: float
    m0_at: Any
    f0: float
    assumption_1: bool


def _project(x, center, low, high):
    """``x`` moved radially (about ``center``) into the shell ``low <= |x - center| <= high``."""
    d = x - center
    r = jnp.linalg.norm(d)
    unit = jnp.where(r > 0, d / jnp.where(r > 0, r, 1.0), jnp.zeros_like(d).at[0].set(1.0))
    return center + unit * jnp.clip(r, low, high)


def _descend(objective, starts, center, low, high, n_steps):
    """Projected normalized gradient descent on ``objective`` from each start, steps ``high / (10 sqrt(k + 1))``,
    kept in the shell ``low <= |x - center| <= high``; the lowest value met by each start and where it was met."""

    def one(x0):
        def body(carry, k):
            x, best, best_x = carry
            value, g = jax.value_and_grad(objective)(x)
            better = value < best
            best, best_x = jnp.where(better, value, best), jnp.where(better, x, best_x)
            n = jnp.linalg.norm(g)
            step = high / (10 * jnp.sqrt(k + 1.0)) * g / jnp.where(n > 0, n, 1.0)
            x = _project(jnp.where(jnp.isfinite(value) & (n > 0), x - step, x), center, low, high)
            return (x, best, best_x), None

        (x, best, best_x), _ = jax.lax.scan(body, (x0, jnp.asarray(jnp.inf, x0.dtype), x0), jnp.arange(n_steps))
        last = objective(x)
        return jnp.where(last < best, last, best), jnp.where(last < best, x, best_x)

    return jax.vmap(one)(starts)


def ball_constants(
    loss: Callable[[Any], jax.Array],
    theta0,
    radius: float,
    *,
    key=0,
    width: float = 1.0,
    n_samples: int = 2048,
    n_starts: int = 16,
    n_steps: int = 200,
    n_iter: int = 20,
    f_floor: float | None = None,
) -> BallConstants:
    """Estimate ``alpha``, ``C_L`` and ``M_0`` of ``loss`` (``F(theta) >= 0``, ``theta`` a pytree shaped as
    ``theta_0``) on ``B(theta_0, radius)`` (seed 003, Def. 2.1, Assumptions 1-3; :class:`BallConstants`).

    ``n_samples`` points uniform in the ball (and as many in the shell) are evaluated; the ``n_starts`` best of
    them (and ``theta_0``) then start ``n_steps`` of projected normalized gradient descent on
    ``log(|grad F|^2 / F)`` in the ball and on ``F`` in the shell, and every point met counts. ``C_L`` is read
    at the ball's samples, as many on its boundary sphere, and the points of the descent (``n_iter`` power
    iterations each). Points with ``F <= f_floor`` (default ``tiny / eps`` of the dtype: there
    ``|grad F|^2 / F`` is rounding) are minima, outside Def. 2.1's infimum (``alpha = inf`` if every point is
    one). ``key``: a JAX key or an integer seed. The estimates are only as good as the search: on a loss
    whose extremes are narrow, more samples and starts tighten them.

    Cost: about ``3 n_samples + 2 n_starts n_steps`` gradients and ``(2 n_samples + n_starts) n_iter``
    Hessian-vector products, in one compiled program whose memory grows like ``n_samples`` times the number of
    parameters (lower ``n_samples`` for a large network).
    """
    radius = check_positive("radius", radius)
    width = check_positive("width", width)
    for name, value in (("n_samples", n_samples), ("n_starts", n_starts), ("n_steps", n_steps), ("n_iter", n_iter)):
        check_int(name, value, minimum=1)
    center, unravel = ravel_pytree(theta0)
    center = jnp.asarray(center)
    if not jnp.issubdtype(center.dtype, jnp.floating):
        raise TypeError(f"theta0 must have floating-point leaves, got {center.dtype}")
    if center.size == 0 or not bool(jnp.all(jnp.isfinite(center))):
        raise ValueError(f"theta0 must hold at least one parameter, all finite, got {theta0!r}")
    info = np.finfo(center.dtype)
    f_floor = float(info.tiny / info.eps) if f_floor is None else check_nonnegative("f_floor", f_floor)
    k_ball, k_shell, k_sphere, k_power = jax.random.split(prng.as_key(key), 4)

    def f(x):
        return loss(unravel(x))

    def log_ratio(x):
        value, g = jax.value_and_grad(f)(x)
        ratio = jnp.vdot(g, g) / jnp.where(value > f_floor, value, 1.0)
        return jnp.where(value > f_floor, jnp.log(ratio), jnp.inf)

    def spectral(x, k):
        e = power_iteration(lambda v: hvp(f, x, v), jax.random.normal(k, x.shape, x.dtype), n_iter)
        return jnp.hypot(e.value, e.residual)  # |H v| for a unit v: <= |H|

    @jax.jit
    def run(center):
        inner = jnp.maximum(radius - width, 0.0)
        ball = jnp.concatenate([center[None], sample_ball(k_ball, center, radius, n_samples)])
        shell = sample_ball(k_shell, center, radius, n_samples, inner=inner)
        ball_values, shell_values = jax.vmap(log_ratio)(ball), jax.vmap(f)(shell)
        best_ball = jnp.concatenate([center[None], ball[jnp.argsort(ball_values)[:n_starts]]])
        best_shell = shell[jnp.argsort(shell_values)[:n_starts]]
        alpha_values, alpha_points = _descend(log_ratio, best_ball, center, 0.0, radius, n_steps)
        m0_values, m0_points = _descend(f, best_shell, center, inner, radius, n_steps)
        a_values, a_points = jnp.concatenate([ball_values, alpha_values]), jnp.concatenate([ball, alpha_points])
        m_values, m_points = jnp.concatenate([shell_values, m0_values]), jnp.concatenate([shell, m0_points])
        sphere = sample_ball(k_sphere, center, radius, n_samples, inner=radius)
        points = jnp.concatenate([ball, sphere, alpha_points])
        smooth = jnp.max(jax.vmap(spectral)(points, jax.random.split(k_power, points.shape[0])))
        ia, im = jnp.argmin(a_values), jnp.argmin(m_values)
        return jnp.exp(a_values[ia]), a_points[ia], smooth, m_values[im], m_points[im], f(center)

    alpha, alpha_x, smooth, m0, m0_x, f0 = (np.asarray(v) for v in run(center))
    alpha, f0 = float(alpha), float(f0)
    return BallConstants(
        alpha,
        unravel(jnp.asarray(alpha_x)),
        float(smooth),
        float(m0),
        unravel(jnp.asarray(m0_x)),
        f0,
        bool(4 * f0 < radius**2 * alpha),
    )
