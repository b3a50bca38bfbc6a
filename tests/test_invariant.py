"""Invariant measures of GD on 100 sin(t1) sin(t2) (seed 000, Sec. 3.4) and the streaming tools they use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import dynsim as ds

obs = ds.observables


def f(th):
    return 100 * jnp.sin(th[0]) * jnp.sin(th[1])


def grad_norm(th):
    return jnp.linalg.norm(jax.grad(f)(th))


def _run(lrs, n_replicas, n_steps, burn):
    dyn = ds.lyapunov.with_tangent(ds.dynamics.gd(ds.problems.sin_product()), transient=burn)
    return ds.simulate(
        dyn,
        grid={"lr": lrs},
        n_replicas=n_replicas,
        n_steps=n_steps,
        seed=1,
        observables={
            "le": ds.lyapunov.running_exponent(every_record=False),
            "f": obs.time_average(f, discard=burn),
            "g": obs.time_average(grad_norm, discard=burn),
            "orbit": obs.last_values(64, lambda th: jnp.mod(th, 2 * np.pi)),
        },
    )


def test_sin_product_closed_forms(x64):
    # lr = 0.03: symmetric 2-cycle +-u*, sin(u*)/u* = 2/(100 lr); lr = 0.033: mirror 2-cycles with
    # <f> = 0, <|grad f|> = pi/lr, exponent (1/2) log|1 + pi^2 - (100 lr)^2| (seed 000 digest, Sec. 3.2)
    with pytest.warns(RuntimeWarning, match="batch means are correlated"):  # periodic orbits: nothing to average
        res = _run([0.005, 0.03, 0.033], 8, 6000, 1000)
    u = optimize.brentq(lambda u: np.sin(u) / u - 2 / 3, 0.5, 2.5)
    expected = {
        0.005: (-100.0, 0.0, np.log(0.5)),
        0.03: (-100 * np.cos(u), 100 * np.sin(u), np.log(abs(1 - 3 * np.cos(u)))),
        0.033: (0.0, np.pi / 0.033, 0.5 * np.log(abs(1 + np.pi**2 - 3.3**2))),
    }
    for lr, (mean_f, mean_g, le) in expected.items():
        cell = res.sel(lr=lr)
        np.testing.assert_allclose(cell.f.values, mean_f, atol=1e-6)
        np.testing.assert_allclose(cell.g.values, mean_g, atol=1e-6)
        np.testing.assert_allclose(cell.le.values, le, atol=1e-6)
    period = ds.measure.detect_period(
        res.orbit.values, tol=1e-8, max_period=16, window=32, period_of_space=2 * np.pi
    ).period
    np.testing.assert_array_equal(period, np.array([[1] * 8, [2] * 8, [2] * 8]))


def _cycle_of_the_1d_map(a: float, period: int) -> np.ndarray:
    """The attracting cycle of ``y <- y - a sin y`` (GD on ``-100 cos y`` at ``lr = a / 100``), by plain iteration:
    the 2-D map decouples into two copies of it in ``t1 + t2`` and ``t1 - t2 + pi`` (seed 000 digest, Sec. 3.1)."""
    y = 1.0
    for _ in range(20_000):
        y = y - a * np.sin(y)
    cycle = [y]
    for _ in range(period - 1):
        cycle.append(cycle[-1] - a * np.sin(cycle[-1]))
    assert abs(cycle[-1] - a * np.sin(cycle[-1]) - cycle[0]) < 1e-12  # converged onto a cycle of this period
    return np.array(cycle)


def test_sin_product_bifurcations_and_period_4_windows(x64):
    # Each side of the pitchfork at lr = pi/100 (a symmetric 2-cycle, then mirror 2-cycles with <f> = 0) and of the
    # period doubling at sqrt(pi^2 + 2)/100 = 0.0344523; the period-4 windows at 0.035 and 0.0425 (<f> = 1.248 and
    # 36.454, exponents -0.1289 and -0.3486 in the digest's table) against the cycle of the 1-D map, found by
    # iterating it in NumPy. The averages over 5000 steps (a multiple of 2 and 4) of a cycle are exact.
    lrs = [0.031, 0.032, 0.034, 0.035, 0.0425]
    assert np.pi / 100 < 0.032 and 0.034 < np.sqrt(np.pi**2 + 2) / 100 < 0.035
    res = _run(lrs, 8, 6000, 1000)
    u = optimize.brentq(lambda u: np.sin(u) / u - 2 / 3.1, 0.5, 2.5)
    expected = {
        0.031: (-100 * np.cos(u), np.log(abs(1 - 3.1 * np.cos(u)))),
        0.032: (0.0, 0.5 * np.log(abs(1 + np.pi**2 - 3.2**2))),
        0.034: (0.0, 0.5 * np.log(abs(1 + np.pi**2 - 3.4**2))),
    }
    for lr in (0.035, 0.0425):
        cycle = _cycle_of_the_1d_map(100 * lr, 4)
        expected[lr] = (np.mean(-100 * np.cos(cycle)), np.mean(np.log(np.abs(1 - 100 * lr * np.cos(cycle)))))
    np.testing.assert_allclose([expected[0.035][0], expected[0.0425][0]], [1.248, 36.454], atol=1e-3)
    np.testing.assert_allclose([expected[0.035][1], expected[0.0425][1]], [-0.1289, -0.3486], atol=1e-4)
    for lr, (mean_f, le) in expected.items():
        cell = res.sel(lr=lr)
        np.testing.assert_allclose(cell.f.values, mean_f, atol=1e-6, err_msg=str(lr))
        np.testing.assert_allclose(cell.le.values, le, atol=1e-6, err_msg=str(lr))
    period = ds.measure.detect_period(
        res.orbit.values, tol=1e-8, max_period=16, window=32, period_of_space=2 * np.pi
    ).period
    np.testing.assert_array_equal(period, np.array([[2] * 8] * 3 + [[4] * 8] * 2))


def test_every_start_converges_superstably_at_lr_0_01(x64):
    # lr = 1/h at the minima: the multiplier is 0 and GD converges cubically (y - sin y ~ y^3/6). Of 4000 uniform
    # starts all reach |grad f| < 1e-8, in 5 steps (median; 95th percentile 9, at most 15: seed 000 digest, Sec. 3.2)
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.sin_product()),
        grid={"lr": [0.01]},
        n_replicas=4000,
        n_steps=40,
        observables={"hit": obs.hitting_time(grad_norm, 1e-8)},
    )
    hit = res.hit.values.ravel()
    assert np.all(hit >= 0) and np.median(hit) == 5 and np.percentile(hit, 95) <= 9 and hit.max() <= 15


def test_chaotic_attractor_at_lr_0_04(x64):
    # not periodic (seed 000 says it is): exponent +0.0826 +- 0.001, <f> = -18.214 from every start
    res = _run([0.04], 16, 30_000, 2000).sel(lr=0.04)
    assert np.all(ds.measure.detect_period(res.orbit.values, tol=1e-7, max_period=16, window=32).period == 0)
    le = res.le.values.ravel()
    assert abs(le.mean() - 0.0826) < 4 * le.std(ddof=1) / np.sqrt(le.size) + 0.001  # reference: +- 0.001
    f_mean, f_se = res.f.values, res.f_stderr.values
    assert np.all(np.abs(f_mean + 18.214) < 4 * f_se + 0.003)
    # <|grad f|> depends on the start's band phase: one of four values (digest Sec. 3.2), so the limit measure is not
    # unique; every start lands on one of them, and these 16 starts on more than one
    g_mean, g_se = res.g.values.ravel(), res.g_stderr.values.ravel()
    values = np.array([64.047, 64.406, 66.674, 66.758])
    nearest = values[np.argmin(np.abs(g_mean[:, None] - values), axis=1)]
    assert np.all(np.abs(g_mean - nearest) < 4 * g_se + 0.001) and len(set(nearest)) > 1


def test_orbits_leave_their_cell_past_lr_0_046033(x64):
    # p = t1 + t2 follows y <- y - a sin y, a = 100 lr. Its minimum on [0, pi], at cos y = 1/a, is
    # arccos(1/a) - sqrt(a^2 - 1): above -pi the cell [-pi, pi] is invariant, below it orbits hop between 2 pi-cells
    # and are unbounded in R^2 (seed 000 digest, Sec. 3.2: a* = 4.60334). Just below and just above a*.
    a_star = optimize.brentq(lambda a: np.sqrt(a * a - 1) - np.arccos(1 / a) - np.pi, 2.0, 10.0)
    assert a_star == pytest.approx(4.60334, abs=1e-5)
    lrs = [a_star / 100 * 0.999, a_star / 100 * 1.01]
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.sin_product(low=-1.5, high=1.5)),  # |t1 + t2| < pi at the start
        grid={"lr": lrs},
        n_replicas=64,
        n_steps=20_000,
        record_every=1,
        observables={"p": obs.trajectory(lambda th: th[0] + th[1])},
    )
    reach = np.abs(res.p.values).max(axis=-1)  # (lr, replica)
    assert reach[0].max() <= np.pi + 1e-12  # below a*: every orbit stays in its cell
    assert np.mean(reach[1] > 3 * np.pi) > 0.5  # above: most orbits have hopped cells


def test_histogram2d_and_last_values_match_the_record():
    dyn = ds.dynamics.Dynamics(
        init=lambda key, hp: jax.random.normal(key, (2,)), step=lambda s, key, hp: jax.random.normal(key, (2,))
    )
    bx, by = np.linspace(-2, 2, 5), np.linspace(-1, 1, 3)
    res = ds.simulate(
        dyn,
        n_replicas=3,
        n_steps=300,
        record_every=1,
        observables={
            "x": obs.trajectory(),
            "h": obs.histogram2d(lambda s: s, bx, by, discard=50),
            "last": obs.last_values(7),
        },
    )
    for r in range(3):
        pts = res.x.values[r, 51:]
        counts, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], [bx, by])
        inside = (pts[:, 0] >= -2) & (pts[:, 0] < 2) & (pts[:, 1] >= -1) & (pts[:, 1] < 1)
        # numpy closes the last bin on the right; values hit an edge with probability 0 here
        np.testing.assert_array_equal(res.h.values[r], counts)
        assert res.h_outside.values[r] == np.sum(~inside)
        np.testing.assert_array_equal(res["last"].values[r], res.x.values[r, -7:])
    np.testing.assert_array_equal(res.last_lag.values, np.arange(294, 301))


def test_last_values_flattens_a_pytree_state():
    # a net's parameters are a pytree: the tail is one flat vector, in ravel_pytree order
    dyn = ds.dynamics.Dynamics(
        init=lambda key, hp: {"b": jnp.zeros(()), "w": jnp.zeros((2, 3))},
        step=lambda s, key, hp: {"b": s["b"] + 1.0, "w": s["w"] + jnp.arange(6.0).reshape(2, 3)},
    )
    res = ds.simulate(dyn, n_replicas=2, n_steps=10, observables={"last": obs.last_values(3)})
    from jax.flatten_util import ravel_pytree

    want = np.stack(
        [np.asarray(ravel_pytree({"b": t * 1.0, "w": t * np.arange(6.0).reshape(2, 3)})[0]) for t in (8, 9, 10)]
    )
    for r in range(2):
        np.testing.assert_array_equal(res["last"].values[r], want)


def test_with_tangent_matches_top_exponent_on_sgd():
    # SGD on 1-D Gaussian regression: the tangent multiplier is 1 - lr x_t^2 (the base step's x_t)
    lr = 1.0
    dyn = ds.lyapunov.with_tangent(ds.dynamics.sgd(ds.problems.linear_regression_1d()))
    res = ds.simulate(
        dyn,
        grid={"lr": [lr]},
        n_replicas=64,
        n_steps=1000,
        observables={"le": ds.lyapunov.running_exponent(every_record=False)},
    )
    le = res.le.values.ravel()
    assert abs(le.mean() - (-0.41699)) < 4 * le.std() / np.sqrt(le.size)


def test_gradient_curvature_balance_is_exact_on_a_trajectory(x64):
    # Seed 000's eq. (10), corrected: for GD, mean_t |grad f|^2 - lr mean_t int (1-s) g^T H g ds telescopes to
    # (f(theta_0) - f(theta_n)) / (n lr) exactly, on the chaotic attractor of 100 sin sin at lr = 0.04
    # (the samples' order is the trajectory's: a sign or pairing error breaks the telescoping).
    def f(th):
        return 100 * jnp.sin(th[0]) * jnp.sin(th[1])

    lr, n = 0.04, 300
    grad = jax.grad(f)
    starts = jax.random.uniform(jax.random.key(1), (16, 2), minval=-np.pi, maxval=np.pi)

    def run(th0):
        def body(th, _):
            return th - lr * grad(th), th

        return jax.lax.scan(body, th0, None, length=n)

    last, traj = jax.vmap(run)(starts)
    b = ds.measure.gradient_curvature_balance(f, traj.reshape(-1, 2), lr)
    telescoped = float(jnp.mean(jax.vmap(f)(starts) - jax.vmap(f)(last))) / (n * lr)
    assert b.grad_sq - b.curvature == pytest.approx(telescoped, abs=1e-9 * b.grad_sq)
    assert abs(telescoped) > 1e-3  # the check is not vacuous: a short run is far from invariant
    assert b.printed == pytest.approx(2 * b.local)


@pytest.mark.parametrize("lr, grad_sq, local", [(0.04, 4586.6, 975.0), (0.045, None, -772.0)])
def test_gradient_curvature_balance_on_the_attractor_against_the_digest(x64, lr, grad_sq, local):
    # The 1-D map y <- y - 100 lr sin y (GD on -100 cos y, to which GD on 100 sin sin decouples): E|f'|^2 = 4586.6 on
    # its attractor at lr = 0.04 while the local approximation (lr/2) E[g H g] gives 975, and -772 at lr = 0.045, as
    # steps cross the basin (seed 000 digest, Sec. 4.6). Samples: 16,000 starts, each read once after 5000 steps.
    y = np.random.default_rng(0).uniform(-np.pi, np.pi, 16_000)
    for _ in range(5000):
        y = y - 100 * lr * np.sin(y)
    b = ds.measure.gradient_curvature_balance(lambda v: -100 * jnp.cos(v[0]), jnp.asarray(y[:, None]), lr)
    assert abs(b.local - local) < 4 * b.local_stderr + 1e-3 * abs(local), (b.local, b.local_stderr)
    if grad_sq is not None:
        assert abs(b.grad_sq - grad_sq) < 4 * b.grad_sq_stderr + 1e-3 * grad_sq, (b.grad_sq, b.grad_sq_stderr)
    assert b.local < 0.25 * b.grad_sq  # the local approximation misses the balance by 4x or more
    assert abs(b.ratio - 1) < 4 * b.ratio_stderr  # the exact identity holds


def test_gradient_curvature_balance_on_a_quadratic_and_with_given_steps(x64):
    # f = theta^T P theta / 2: the Hessian is constant, so the corrected side equals the local one,
    # (lr/2) g^T P g; with steps g other than grad f, on a quartic, the right side equals the Hessian
    # integral lr int_0^1 (1 - s) g^T H(theta - s lr g) g ds, here by scipy's quadrature of the closed-form Hessian.
    from scipy.integrate import quad as integrate

    rng = np.random.default_rng(0)
    P = rng.standard_normal((3, 3))
    P = P @ P.T
    thetas = jnp.asarray(rng.standard_normal((50, 3)))

    def quad(th):
        return 0.5 * th @ (P @ th)

    b = ds.measure.gradient_curvature_balance(quad, thetas, 0.1)
    assert b.curvature == pytest.approx(b.local, rel=1e-12)
    g_all = thetas @ P
    assert b.local == pytest.approx(0.05 * float(jnp.mean(jnp.sum((g_all @ P) * g_all, axis=1))), rel=1e-12)

    def quartic(th):
        return jnp.sum(th**4) / 4 + th[0] * th[1] ** 2

    def hessian(x):  # of the quartic, by hand
        h = np.diag(3 * x**2)
        h[0, 1] = h[1, 0] = 2 * x[1]
        h[1, 1] += 2 * x[0]
        return h

    steps = rng.standard_normal((50, 3))
    lr = 0.3
    b = ds.measure.gradient_curvature_balance(quartic, thetas, lr, grads=jnp.asarray(steps))
    th = np.asarray(thetas)
    integral = [
        lr * integrate(lambda s: (1 - s) * g @ hessian(t - s * lr * g) @ g, 0, 1, epsabs=1e-13, epsrel=1e-13)[0]
        for t, g in zip(th, steps)
    ]
    assert b.curvature == pytest.approx(np.mean(integral), rel=1e-10)
    grad = np.asarray(jax.vmap(jax.grad(quartic))(thetas))
    assert b.grad_sq == pytest.approx(np.mean(np.sum(grad * steps, 1)), rel=1e-12)


def test_gradient_curvature_balance_counts_the_kinks_a_step_crosses(x64):
    # f = relu(t) + t^2/2 from t = 0.5, lr = 1: g = 1.5 and the step lands at -1. The Hessian is 1 plus a
    # unit spike at the kink, crossed at s = 1/3 with weight 1/(lr g) in s: lr int (1 - s) g^2 H ds =
    # g^2/2 + (2/3) g^2 / 1.5 = 1.125 + 1 = 2.125 (the smooth part alone is 1.125, the local side).
    def f(th):
        return jax.nn.relu(th[0]) + 0.5 * th[0] ** 2

    b = ds.measure.gradient_curvature_balance(f, jnp.array([[0.5]]), 1.0)
    assert b.curvature == pytest.approx(2.125, rel=1e-12)
    assert b.local == pytest.approx(1.125, rel=1e-12) and b.grad_sq == pytest.approx(2.25, rel=1e-12)


def test_ratio_of_means_standard_error_covers():
    # delta-method standard error of mean(a)/mean(b) from correlated pairs: z has sd 1 over replications
    rng = np.random.default_rng(3)
    reps, n = 4000, 200
    z = np.empty(reps)
    for i in range(reps):
        b = 1.0 + 0.3 * rng.standard_normal(n)
        a = 1.2 * b + 0.2 * rng.standard_normal(n)
        r, se = ds.measure.ratio_of_means(a, b)
        z[i] = (r - 1.2) / se
    assert abs(z.mean()) < 4 / np.sqrt(reps) + 0.02  # + the O(1/n) bias of a ratio
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * reps) + 0.02
    assert ds.measure.ratio_of_means([2.0, 4.0], [1.0, 2.0]) == (2.0, 0.0)


@pytest.mark.parametrize("n, largest", [(3, 0.045833), (5, 0.021111), (10, 0.0064463), (50, 0.00030604)])
def test_windowed_average_of_a_periodic_gd_orbit_never_settles(x64, n, largest):
    # Seed 002, Lemma 6.4.2 (thesis ch. 6, the invariant-measure chapter): GD with lr = 1 on the asymmetric V cycles
    # with period n + 1 through x_k = -1 + (k + 0.2)/(n + 1); the windowed average M_t of n losses keeps moving by
    # up to (0.8 n - 0.2)/(n (n+1)^2) (the digest's numbers), not the 1/(2 n) the thesis claims
    problem = ds.problems.asymmetric_v(n)
    steps = 6 * (n + 1)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [1.0]},
        n_replicas=1,
        n_steps=steps,
        record_every=1,
        observables={"x": ds.observables.trajectory(lambda p: p[0]), "f": ds.observables.loss()},
    )
    x, f = res.x.values.ravel(), res.f.values.ravel()
    k = np.arange(1, n + 1)
    np.testing.assert_allclose(x[1 : n + 1], -1 + (k + 0.2) / (n + 1), atol=1e-13)
    assert ds.measure.detect_period(x, tol=1e-12, max_period=n + 1, window=2 * (n + 1)).period == n + 1
    window = np.convolve(f, np.ones(n) / n, mode="valid")  # M_t for t = 0 .. steps - n + 1
    jump = np.abs(np.diff(window)).max()
    assert jump == pytest.approx((0.8 * n - 0.2) / (n * (n + 1) ** 2), rel=1e-10)
    assert jump == pytest.approx(largest, rel=5e-5) and jump < 1 / (2 * n)
