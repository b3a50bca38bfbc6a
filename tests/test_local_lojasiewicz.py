"""Seed 003 (SGD under a local Łojasiewicz condition): bounds, exponents, ball exits, and the theorems on quadratics.

Known answers: the digest's worked values of ``rho``, the step-size bounds and ``B_exit`` (corrected
and as printed); the Lyapunov exponent of ML-noise SGD against Monte Carlo; the exact contraction
``E F(theta_k) = rho^k F_0`` on ``|theta|^2/2`` for every noise law; exact ball-exit steps of a
deterministic orbit; the exact exit probabilities (3/4, 1/2, 0) of Thm 4.1's aligned noise; the
exact second-moment recursion of Robbins-Monro SGD (Lemma 4.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from conftest import import_experiment

import dynsim as ds
from dynsim import lojasiewicz as lj

ALPHA, C_L = 2.0, 1.0  # F = |theta|^2 / 2


@pytest.fixture(scope="module")
def experiment():
    return import_experiment("local_lojasiewicz")


def test_step_sizes_and_rates_match_the_worked_values():
    for sigma, eta_max, ms in [(0.5, 0.2, 1.6), (2, 0.125, 1.0), (8, 0.05, 0.4), (32, 1 / 68, 4 / 34)]:
        assert lj.max_learning_rate(ALPHA, C_L, sigma) == pytest.approx(eta_max, rel=1e-12)
        assert lj.mean_square_threshold(ALPHA, C_L, sigma) == pytest.approx(ms, rel=1e-12)
        # rho(eta_max) = 1 - 7 alpha^2 / (32 C_L (2 C_L + sigma)), and rho = 1 at the mean-square threshold
        rho = lj.contraction_rate(eta_max, ALPHA, C_L, sigma)
        assert rho == pytest.approx(1 - 7 * ALPHA**2 / (32 * C_L * (2 * C_L + sigma)), rel=1e-12)
        assert lj.contraction_rate(ms, ALPHA, C_L, sigma) == pytest.approx(1.0, rel=1e-12)


def test_exit_bounds_match_the_digest_table():
    x0 = np.array([0.01, 0.05, 0.1, 0.2, 0.4])
    f0, m0 = x0**2 / 2, (1 - x0) ** 2 / 2  # R = 2
    got = [lj.exit_probability_bound(0.05, ALPHA, C_L, 8.0, f, m) for f, m in zip(f0, m0)]
    printed = [lj.exit_probability_bound(0.05, ALPHA, C_L, 8.0, f, m, printed=True) for f, m in zip(f0, m0)]
    np.testing.assert_allclose(got, [0.0346, 0.1965, 0.4639, 1.322, 5.976], rtol=2e-3)
    np.testing.assert_allclose(printed, [0.0012, 0.0320, 0.1401, 0.6853, 4.592], rtol=2e-2)
    # the tail after K steps shrinks like rho^(K/2)
    tail = lj.exit_probability_bound(0.05, ALPHA, C_L, 8.0, f0[1], m0[1], after=400)
    assert tail < 1e-8


def test_max_initial_loss_inverts_the_exit_bound():
    """eq. (3.20): ``epsilon(delta)`` is where ``B_exit(F_0) = delta``; checked against the bound itself, by
    Brent's method on it (an independent inversion), and for the printed pair (3.19)/(3.20)."""
    from scipy.optimize import brentq

    lrs = np.array([0.01, 0.05])
    for delta in (0.5, 0.05, 1e-6, 1e-12):  # 1e-12: b delta << a^2, where the textbook root form cancels
        eps = lj.max_initial_loss(lrs, ALPHA, C_L, 8.0, 0.5, delta)
        np.testing.assert_allclose(lj.exit_probability_bound(lrs, ALPHA, C_L, 8.0, eps, 0.5), delta, rtol=1e-12)
        for lr, e in zip(lrs, eps):
            root = brentq(
                lambda f: lj.exit_probability_bound(lr, ALPHA, C_L, 8.0, f, 0.5) - delta, 0, 1, xtol=1e-300, rtol=1e-14
            )
            assert e == pytest.approx(root, rel=1e-10)
        printed = lj.max_initial_loss(lrs, ALPHA, C_L, 8.0, 0.5, delta, printed=True)
        np.testing.assert_allclose(
            [lj.exit_probability_bound(lr, ALPHA, C_L, 8.0, p, 0.5, printed=True) for lr, p in zip(lrs, printed)],
            delta,
            rtol=1e-12,
        )
    eps = lj.max_initial_loss(0.05, ALPHA, C_L, 8.0, 0.5, 0.05)
    assert eps == pytest.approx(1.0199e-4, rel=1e-4)
    assert lj.max_initial_loss(0.05, ALPHA, C_L, 8.0, 0.5, 0.05, printed=True) / eps == pytest.approx(20.8, rel=1e-2)
    for delta in (0.0, 1.0, np.nan):
        with pytest.raises(ValueError, match="delta"):
            lj.max_initial_loss(0.05, ALPHA, C_L, 8.0, 0.5, delta)
    with pytest.raises(ValueError, match="m0"):
        lj.max_initial_loss(0.05, ALPHA, C_L, 8.0, 0.0, 0.05)


def test_the_experiment_reads_the_largest_covered_start_off_the_corrected_bound(experiment):
    conf = xr.Dataset(attrs={"sigma": 8.0, "lr": 0.05, "R": 2.0})
    for printed in (False, True):
        x = experiment.covered_start(conf, 0.05, printed)
        f0, m0 = x**2 / 2, (1 - x) ** 2 / 2
        bound = lj.exit_probability_bound(0.05, ALPHA, C_L, 8.0, f0, m0, printed=printed)
        assert bound == pytest.approx(0.05, rel=1e-8)
    assert experiment.covered_start(conf, 0.05) == pytest.approx(0.014265, rel=1e-4)


def test_quadratic_exponent_against_monte_carlo_and_the_thresholds():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(2_000_000)
    for lr, sigma in [(0.05, 8.0), (0.7, 2.0), (1.9, 0.5), (3.0, 2.0)]:
        samples = np.log(np.abs(1 - lr - lr * np.sqrt(sigma / 2) * z))
        se = samples.std() / np.sqrt(z.size)
        assert abs(lj.quadratic_exponent(lr, sigma) - samples.mean()) < 4 * se + 1e-7
    for sigma, root, at_max in [(0.5, 2.262, -0.2311), (2, 1.731, -0.1441), (8, 0.943, -0.0569), (128, 0.213, -0.0043)]:
        assert lj.quadratic_exponent_threshold(sigma) == pytest.approx(root, abs=1e-3)
        assert lj.quadratic_exponent(lj.max_learning_rate(ALPHA, C_L, sigma), sigma) == pytest.approx(at_max, abs=1e-4)
        assert abs(lj.quadratic_exponent(lj.quadratic_exponent_threshold(sigma), sigma)) < 1e-9
        # Jensen: 2 lambda <= log rho where rho < 1
        lrs = np.linspace(0.01, 0.99, 50) * lj.mean_square_threshold(ALPHA, C_L, sigma)
        assert np.all(2 * lj.quadratic_exponent(lrs, sigma) <= np.log(lj.contraction_rate(lrs, ALPHA, C_L, sigma)))


@pytest.mark.parametrize("noise", [{}, {"law": "sphere"}, {"law": "sparse", "p": 0.2}])
def test_contraction_is_exact_on_the_isotropic_quadratic_for_every_noise_law(x64, noise):
    sigma, lr, d = 2.0, 0.3, 3
    problem = ds.problems.quadratic(np.eye(d), theta0=np.full(d, 0.5))
    res = ds.simulate(
        ds.dynamics.gd(problem, noise=[ds.dynamics.multiplicative_noise(sigma, **noise)]),
        grid={"lr": [lr]},
        n_replicas=40_000,
        n_steps=6,
        record_every=1,
        observables={"loss": ds.observables.loss()},
    )
    loss = res.loss.values[0]  # (replica, time)
    rho = lj.contraction_rate(lr, ALPHA, C_L, sigma)
    expected = rho**res.time.values * loss[0, 0]
    se = loss.std(axis=0, ddof=1) / np.sqrt(loss.shape[0])
    assert np.all(np.abs(loss.mean(axis=0) - expected) <= 4 * se + 1e-15)


def test_travel_before_exit_obeys_the_corrected_bounds_not_the_printed_ones(x64, experiment):
    # (3.10)-(3.12) on F = |theta|^2/2, d = 4, ML noise sigma = 2, lr = eta_max = 0.125 (rho = 0.78125), F_0 = 0.01,
    # ball B(theta_0, R - 1 = 1): the mean length of step k of a run still in the ball is at most
    # A lr rho^(k/2) sqrt(F_0), the mean stopped path length at most A lr sqrt(F_0)/(1 - sqrt rho), its 90% quantile
    # at most ten times that. With F_0 in place of sqrt(F_0), as printed, the mean step 0 is 7x above its "bound".
    t = experiment.travel(n_runs=20_000, seed=0)
    mean, se, bound = t["step_mean"], t["step_stderr"], t["step_bound"]
    assert np.all(mean <= bound)
    assert mean[0] > 0.6 * bound[0]  # the corrected bound is within a factor 1.7 at the first step
    assert mean[0] - 4 * se[0] > 5 * t["step_bound_printed"][0]
    path = t["path"]
    assert path.mean() <= t["path_bound"] and np.quantile(path, 0.9) <= t["path_bound"] / 0.1
    assert path.mean() - 4 * path.std() / np.sqrt(path.size) > t["path_bound_printed"]


def test_ball_exit_records_the_first_step_outside_each_ball(x64):
    # GD at lr = 2.5 on theta^2/2: theta_t = (-1.5)^t, so |theta_t| > r first at t = ceil(log r / log 1.5) (+ ties)
    radii = [0.5, 1.0, 1.4, 1.6, 3.0, 10.0, 1e6]
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.quadratic(1.0, theta0=1.0)),
        grid={"lr": [2.5]},
        n_steps=12,
        observables={"exit": ds.observables.ball_exit(0.0, radii)},
    )
    dist = 1.5 ** np.arange(13)
    expected = [int(np.argmax(dist > r)) if np.any(dist > r) else -1 for r in radii]
    assert res.exit.values[0, 0].tolist() == expected
    assert res.exit_max_distance.values[0, 0] == pytest.approx(1.5**12)
    assert res.exit_radius.values.tolist() == radii


def test_a_diverged_trajectory_has_left_every_ball_and_pytree_centres_work(x64):
    # theta_t = (-1.5)^t is frozen once |theta| > 100 (t = 12): it has left even the ball of radius 1e6
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.quadratic(1.0, theta0=1.0)),
        grid={"lr": [2.5]},
        n_steps=30,
        observables={
            "exit": ds.observables.ball_exit(0.0, [10.0, 1e6]),
            "diverged": ds.observables.diverged(bound=100.0),
        },
    )
    assert int(res.diverged_step.values[0, 0]) == 12
    assert res.exit.values[0, 0].tolist() == [6, 12]
    assert np.isinf(res.exit_max_distance.values[0, 0])
    centre = {"W": np.zeros((2, 3)), "b": np.ones(3)}
    assert ds.observables.ball_exit(centre, [1.0]).config["center"] == [[[0.0] * 3] * 2, [1.0] * 3]


def test_aligned_noise_exits_with_probability_three_quarters_half_or_zero(x64, experiment):
    """Thm 4.1 says "exits almost surely"; the exact law is 3/4 for 0.5 < r < 1.125, 1/2 up to 1.5, 0 beyond."""
    radii = [0.8, 1.12, 1.125, 1.3, 1.49, 1.5, 1.8]
    res = ds.simulate(
        experiment.robbins_monro("rademacher", aligned=True),
        grid={"q": [1.0]},
        n_replicas=4000,
        n_steps=3000,
        observables={"exit": ds.observables.ball_exit(0.5, radii)},
    )
    left = (res.exit.values[0] >= 0).mean(axis=0)
    exact = np.array([0.75, 0.75, 0.5, 0.5, 0.5, 0.0, 0.0])
    se = np.sqrt(exact * (1 - exact) / 4000)
    assert np.all(np.abs(left - exact) <= 4 * se)
    # the 1/2 and 3/4 are the same runs at every radius below 1.125 (jumps are decided at steps 0 and 1)
    steps = res.exit.values[0]
    assert np.array_equal(steps[:, 0] >= 0, steps[:, 1] >= 0)


def test_robbins_monro_second_moment_follows_its_exact_recursion(x64, experiment):
    q, gamma, n0, k = 0.75, 1.5, 2.0, 400
    res = ds.simulate(
        experiment.robbins_monro("normal", aligned=False),
        grid={"q": [q], "gamma": [gamma], "n0": [n0]},
        n_replicas=20_000,
        n_steps=k,
        observables={"theta": ds.observables.final_state()},
    )
    f = res.theta.values.ravel() ** 2 / 2
    m = 0.25
    for j in range(k):
        lr = gamma / (j + n0) ** q
        m = (1 - lr) ** 2 * m + lr**2
    assert abs(f.mean() - m / 2) <= 4 * f.std(ddof=1) / np.sqrt(f.size)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="rho < 1"):
        lj.exit_probability_bound(1.5, ALPHA, C_L, 2.0, 0.01, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        lj.contraction_rate(0.1, 0.0, C_L, 2.0)
    with pytest.raises(ValueError, match="law"):
        ds.dynamics.multiplicative_noise(1.0, law="cauchy")
    with pytest.raises(ValueError, match="p"):
        ds.dynamics.multiplicative_noise(1.0, law="sparse")
    with pytest.raises(ValueError, match="radii"):
        ds.observables.ball_exit(0.0, [])
    with pytest.raises(ValueError, match="lr"):
        lj.quadratic_exponent(-0.1, 2.0)
    with pytest.raises(ValueError, match="after"):
        lj.exit_probability_bound(0.05, ALPHA, C_L, 8.0, 0.01, 0.5, printed=True, after=10)
    # NaN passed the "lr <= 0" and "f0 < 0" tests; alpha > 2 C_L contradicts Lemma 2.1
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        lj.contraction_rate(np.array([0.1, np.nan]), ALPHA, C_L, 2.0)
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        lj.quadratic_exponent(np.nan, 2.0)
    with pytest.raises(ValueError, match="f0 must be finite and >= 0"):
        lj.travel_bound(0.05, ALPHA, C_L, 2.0, np.nan)
    with pytest.raises(ValueError, match=r"alpha must be <= 2 smoothness \(Lemma 2.1\)"):
        lj.max_learning_rate(3.0, 1.0, 2.0)


def test_bounds_accept_arrays():
    lrs = np.array([0.01, 0.05])
    out = lj.exit_probability_bound(lrs, ALPHA, C_L, 8.0, 1e-3, 0.4)
    assert out.shape == (2,) and np.all(np.isfinite(out))
    assert jax.numpy.asarray(lj.contraction_rate(lrs, ALPHA, C_L, 8.0)).shape == (2,)


def test_appendix_a_network_constants_and_start(x64):
    # Thm A.1 on the seed digest's example: K = (alpha~^2/2)(A - R/2)^2 (R/2)^2 (c d_1 c d_2)^2 = 0.10125,
    # phi(x, theta_0) = 0 (W_1 = 0, sigma(0) = 0, zero biases), so F(theta_0) = mean(y^2), and theta_0 lies on
    # the boundary of Theta (margin exactly 0); the activation's slope stays in (0.1, 1).
    net = import_experiment("lojasiewicz_network")
    assert net.K == pytest.approx(0.10125, rel=1e-12)
    problem, theta0, data = net.network_problem(3)
    params = problem.init(jax.random.key(0), {})
    f0 = ds.problems.objective(problem, params, data, {})
    assert float(f0) == pytest.approx(np.mean(data["y"] ** 2), rel=1e-12)
    assert float(net.theta_margin(params, theta0, data)) == 0.0
    slopes = jax.vmap(jax.grad(net.activation))(jnp.linspace(-30.0, 30.0, 601))
    assert float(slopes.min()) > 0.1 and float(slopes.max()) < 1.0 and float(net.activation(0.0)) == 0.0
    # a point that raises b_1 by more than alpha~ times its distance is in Theta (margin >= 0; the zero
    # biases b_2, b_3 keep it at 0), one that lowers it is not
    up = {**params, "b1": params["b1"] + 0.5}
    down = {**params, "b1": params["b1"] - 0.5}
    assert float(net.theta_margin(up, theta0, data)) >= 0 > float(net.theta_margin(down, theta0, data))


def test_corrected_condition_of_thm_4_1_exits_surely(x64, experiment):
    # seed 003 digest Sec. 3.5.5: when the aligned noise's mean m = 1.5 sqrt(2/pi) = 1.197 exceeds sup|F'| (< 1 for the
    # pseudo-Huber), every run leaves the ball; the digest's median exit steps are 4, 4, 24, 17. The aligned Gaussian
    # variant on theta^2/2 settles at -sign(Z_1) sqrt(2/pi) instead, leaving the balls of radius 0.6, 1, 2 with
    # probability 0.940, 0.705, 0.0999 (digest, 2e4 runs).
    import argparse

    args = argparse.Namespace(n_aligned=2000, aligned_steps=4000, huber_steps=600, seed=0, resume=False)
    c = experiment.corrected_condition(args)
    steps = c.huber_exit_step.values
    assert np.all(steps >= 0)  # P(exit) = 1 in every case
    for row, digest in zip(steps, [4, 4, 24, 17]):  # each median's 99.9% order-statistic interval holds the digest's
        median = ds.measure.quantile_interval(row, 0.5, level=0.999)
        assert median.low <= digest <= median.high
    se = np.sqrt(np.array([0.940, 0.705, 0.0999]) * (1 - np.array([0.940, 0.705, 0.0999])) * (1 / 2000 + 1 / 20_000))
    assert np.all(np.abs(c.gauss_exit.values - [0.940, 0.705, 0.0999]) < 4 * se)
    assert float(c.gauss_abs_last) == pytest.approx(np.sqrt(2 / np.pi), abs=0.005)


def _ring(theta):
    return 0.25 * (jnp.sum(theta**2) - 1) ** 2


@pytest.mark.parametrize("center", [2.0, 3.0])
def test_ball_constants_of_the_ring_are_its_closed_forms(x64, center):
    # F = (|theta|^2 - 1)^2 / 4 in 3-D (seed 003 digest, Sec. 1.3): |grad F|^2 / F = 4 |theta|^2, so
    # alpha(theta_0, R) = 4 (|theta_0| - R)^2 at the point nearest the origin; the Hessian (|theta|^2 - 1) I +
    # 2 theta theta^T has norm 3 |theta|^2 - 1, largest at |theta| = |theta_0| + R; M_0 is F at the shell's point
    # nearest the unit sphere, 0 where the shell crosses it. theta_0 = (c, 0, 0), R = 1.5.
    radius = 1.5
    c = lj.ball_constants(_ring, jnp.array([center, 0.0, 0.0]), radius)
    assert c.alpha == pytest.approx(4 * (center - radius) ** 2, rel=1e-9)
    np.testing.assert_allclose(c.alpha_at, [center - radius, 0.0, 0.0], atol=1e-6)
    c_l = 3 * (center + radius) ** 2 - 1
    assert 0.99 * c_l < c.smoothness <= c_l * (1 + 1e-9)  # a lower bound, from points near the far pole
    m0 = 0.0 if center - radius <= 1 else 0.25 * ((center - radius) ** 2 - 1) ** 2
    assert m0 <= c.m0 <= m0 + 1e-5  # an upper bound
    assert c.f0 == pytest.approx(0.25 * (center**2 - 1) ** 2) and not c.assumption_1


def test_ball_constants_of_a_quadratic_on_a_pytree(x64):
    # F = |theta|^2 / 2: |grad F|^2 / F = 2 everywhere, C_L = 1, M_0 = (|theta_0| - R)^2 / 2 on the shell [R - 1, R];
    # Assumption 1 (4 F_0 < R^2 alpha) holds near the minimum, not far from it
    def loss(p):
        return 0.5 * (jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))

    near = lj.ball_constants(loss, {"w": 0.1 * jnp.ones(5), "b": 0.1 * jnp.ones(3)}, 2.0)
    assert near.alpha == pytest.approx(2.0, rel=1e-9) and near.smoothness == pytest.approx(1.0, rel=1e-9)
    assert near.assumption_1 and set(near.alpha_at) == {"w", "b"}
    far = lj.ball_constants(loss, {"w": jnp.ones(5), "b": jnp.ones(3)}, 2.0)
    m0 = 0.5 * (np.sqrt(8) - 2) ** 2
    assert m0 <= far.m0 <= m0 * (1 + 1e-4) and not far.assumption_1
    at = np.concatenate([far.m0_at["w"], far.m0_at["b"]])
    assert np.linalg.norm(at - 1) == pytest.approx(2.0, abs=1e-9)  # on the shell's outer sphere, |. - theta_0| = R


def test_ball_constants_refuse_bad_input():
    with pytest.raises(ValueError, match="radius must be > 0"):
        lj.ball_constants(_ring, jnp.zeros(3), 0.0)
    with pytest.raises(TypeError, match="floating-point"):
        lj.ball_constants(_ring, jnp.zeros(3, jnp.int32), 1.0)
    with pytest.raises(ValueError, match="n_starts"):
        lj.ball_constants(_ring, jnp.zeros(3), 1.0, n_starts=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_ball_constants_bound_a_random_quadratic_from_the_right_side(x64, seed):
    # F = theta^T P theta / 2, P = Q diag(h) Q^T: |grad F|^2 / F = 2 v^T P^2 v / v^T P v lies in [2 h_min, 2 h_max],
    # with 2 h_min the infimum over a ball around 0; C_L = h_max. Every estimate must be on its side of the truth.
    rng = np.random.default_rng(seed)
    h = np.sort(rng.uniform(0.5, 3.0, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    P = jnp.asarray(q @ np.diag(h) @ q.T)
    c = lj.ball_constants(lambda t: 0.5 * t @ P @ t, jnp.asarray(rng.normal(size=6) * 0.1), 1.5)
    assert 2 * h[0] * (1 - 1e-9) <= c.alpha <= 2 * h[0] * 1.05  # an upper bound, close
    assert h[-1] * 0.95 <= c.smoothness <= h[-1] * (1 + 1e-9)  # a lower bound, close


def test_ball_constants_in_many_dimensions(x64):
    # 500 parameters and R = 5: 5^500 overflows float64, which the shell's radius law once raised to the power d
    # (every sample NaN); a quadratic keeps alpha = 2, C_L = 1 and M_0 = (|theta_0| - R)^2 / 2 exactly
    d, radius = 500, 5.0
    c = lj.ball_constants(lambda t: 0.5 * t @ t, jnp.ones(d), radius, n_samples=64, n_starts=2, n_iter=5)
    assert c.alpha == pytest.approx(2.0, rel=1e-9) and c.smoothness == pytest.approx(1.0, rel=1e-9)
    m0 = 0.5 * (np.sqrt(d) - radius) ** 2
    assert m0 <= c.m0 <= m0 * 1.01  # an upper bound; in 500 dimensions the descent ends within 0.2%


def test_exit_tail_and_ball_start_are_checked():
    for after in (-1, 1.5):  # a negative horizon gave a bound above the whole run's; a fraction ran silently
        with pytest.raises((ValueError, TypeError), match="after"):
            lj.exit_probability_bound(0.1, ALPHA, C_L, 2.0, 0.1, 0.5, after=after)
    for theta0 in (jnp.array([np.nan, 0.0]), {}):  # NaN gave alpha = inf, no error; {} a ZeroDivisionError
        with pytest.raises(ValueError, match="theta0 must hold at least one parameter, all finite"):
            lj.ball_constants(lambda t: 0.5 * jnp.sum(t**2), theta0, 2.0, key=0)
