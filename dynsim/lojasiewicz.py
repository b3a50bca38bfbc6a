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

import numpy as np
from scipy import optimize

from dynsim._validate import check_int, check_nonnegative, check_positive
from dynsim.stability import gaussian_log_abs

__all__ = [
    "contraction_rate",
    "max_learning_rate",
    "mean_square_threshold",
    "exit_probability_bound",
    "travel_bound",
    "quadratic_exponent",
    "quadratic_exponent_threshold",
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
    if printed and after:
        raise ValueError("printed=True is eq. (3.19) as printed, for the whole run; it has no tail (after must be 0)")
    lr, f0, rho, a = _proof_constants(lr, alpha, smoothness, sigma, f0)
    sr = np.sqrt(rho)
    if printed:
        return f0 * (a * lr * sr / (1 - sr) + rho**2 / (m0 * (1 - rho)))
    return a * lr * np.sqrt(f0) * sr**after / (1 - sr) + rho ** (after + 1) * f0 / (m0 * (1 - rho))


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
