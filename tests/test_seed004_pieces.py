"""Library pieces behind the seed 004 figures: nets at their saddle, label reselection, rank, Newton."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds


@pytest.mark.parametrize("activation, c0", [("tanh", 1.0), ("swish", 0.5), ("linear", 1.0)])
def test_scalar_net_linearises_to_the_rank1_saddle(activation, c0):
    # at w = u = 0 the Hessian of (u sigma(w x) - y)^2 / 2 is [[0, -c0 x y], [-c0 x y, 0]] (seed 004, eq. 65)
    problem = ds.problems.scalar_net(activation, data="gaussian")
    s = {"x": jnp.asarray(0.7), "eps": jnp.asarray(-1.3)}
    hp = {"mu": 0.2}
    y = 0.2 * 0.7 + 0.8 * -1.3
    f = lambda z: problem.loss({"w": z[0], "u": z[1]}, s, hp)  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(jnp.zeros(2)), 0.0, atol=1e-7)
    np.testing.assert_allclose(jax.hessian(f)(jnp.zeros(2)), [[0, -c0 * 0.7 * y], [-c0 * 0.7 * y, 0]], atol=1e-6)


def test_two_layer_net_saddle_is_a_fixed_point():
    problem = ds.problems.two_layer_net(6, 5, "tanh")
    params = jax.tree_util.tree_map(jnp.zeros_like, problem.init(jax.random.key(0), {"mu": 0.3}))
    s = problem.sample(jax.random.key(1))
    y = 0.3 * s["x"] + 0.7 * s["eps"]
    assert float(problem.loss(params, s, {"mu": 0.3})) == pytest.approx(float(jnp.mean(y**2)), rel=1e-6)
    g = jax.grad(problem.loss)(params, s, {"mu": 0.3})
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree_util.tree_leaves(g))
    assert params["U"]["kernel"].shape == (5, 6) and params["W"]["kernel"].shape == (6, 5)


@pytest.mark.parametrize("mode, rate", [("reselect", 0.5 * 0.9), ("flip", 0.5)])
def test_label_reselect_rates(mode, rate):
    noise = ds.dynamics.label_reselect(10, mode=mode)
    y = jnp.zeros(40_000, jnp.int32)
    out = noise.apply(jax.random.key(0), {"x": y, "y": y}, {"label_noise": 0.5})["y"]
    changed = float(jnp.mean(out != 0))
    assert abs(changed - rate) < 4 * np.sqrt(rate * (1 - rate) / y.size)
    assert int(out.min()) >= 0 and int(out.max()) <= 9


def test_rank_measures():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((100, 2)) @ rng.standard_normal((2, 30))  # rank 2
    assert ds.measure.numerical_rank(m) == 2
    assert ds.measure.numerical_rank(np.stack([m, np.eye(100, 30)])).tolist() == [2, 30]
    assert ds.measure.effective_rank(np.eye(8)) == pytest.approx(8.0)
    assert ds.measure.effective_rank(np.zeros((3, 3))) == 0.0 == ds.measure.numerical_rank(np.zeros((3, 3)))
    w = np.array([[1.0, 0.0, 1e-5, 0.5], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(ds.measure.sparsity(w, batched=True), [0.5, 0.5])
    assert ds.measure.sparsity(w) == pytest.approx(4 / 8)  # the whole matrix: 0, 1e-5, 0, 0 of max 2
    assert ds.measure.sparsity([[1.0, 1e-9], [1e-9, 1e-9]]) == pytest.approx(0.75)
    assert ds.measure.sparsity(np.zeros(4)) == 1.0 and np.isnan(ds.measure.sparsity([1.0, np.nan]))


def test_newton_minimize_finds_minima_and_leaves_saddles():
    rosenbrock = lambda z: (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2  # noqa: E731
    found = ds.curvature.newton_minimize(rosenbrock, jnp.array([-1.2, 1.0]), n_iter=200)
    np.testing.assert_allclose(found.x, [1.0, 1.0], atol=2e-3)
    # from the saddle of x^2 - y^2 + y^4 / 4 it moves to a minimum (0, +-sqrt 2)
    f = lambda z: z[0] ** 2 - z[1] ** 2 + z[1] ** 4 / 4  # noqa: E731
    found = ds.curvature.newton_minimize(f, jnp.array([0.3, 1e-3]), n_iter=100)
    # float32: a minimiser is located to about sqrt(eps) = 3.5e-4 (the loss is flat to second order)
    np.testing.assert_allclose(jnp.abs(found.x), [0.0, np.sqrt(2)], atol=5e-4)
    assert float(found.eigenvalues.min()) > 0


def test_cnn_convolution_is_a_same_convolution():
    x = np.random.default_rng(1).standard_normal((1, 40)).astype(np.float32)
    problem, features = ds.problems.cnn1d_classifier(x, np.zeros(1, np.int32), channels=(1,), features=1, n_classes=2)
    params = problem.init(jax.random.key(0), {})
    k = np.asarray(params["conv0"]["kernel"])[:, 0]  # taps for x[t-1], x[t], x[t+1]
    b = float(params["conv0"]["bias"][0])
    conv = np.maximum(np.convolve(x[0], k[::-1], mode="same") + b, 0)
    z = np.maximum(
        conv.mean() * np.asarray(params["penultimate"]["kernel"])[0, 0] + float(params["penultimate"]["bias"][0]), 0
    )
    np.testing.assert_allclose(np.asarray(features(params, jnp.asarray(x[0])))[0], z, rtol=1e-5, atol=1e-6)


def test_stripe_half_width_around_a_critical_rate(x64):
    # Seed 004 eq. (8), corrected (digest Sec. 2.3): near lambda_c = 1/x_i^2, m(lambda) =
    # (1/N) sum_j log|1 - lambda x_j^2| is negative iff |delta lambda| x_i^2 < exp(-R_i), with
    # R_i = sum_{j != i} log|1 - lambda x_j^2|: the stable stripe has half-width exp(-R_i)/x_i^2 (to first
    # order); the printed x_i^2 / x_out^2 is the relative width of an outlier-dominated case. Roots of m by
    # bisection on each side of lambda_c, on N = 10 Gaussian x.
    from scipy import optimize

    x2 = np.random.default_rng(0).standard_normal(10) ** 2

    def m(lam):
        return float(ds.lyapunov.scalar_exponent(1 - lam * x2))

    checked = 0
    for i in np.argsort(x2)[:4]:  # the smallest x_i^2: critical rates beyond the bulk
        lam_c = 1 / x2[i]
        others = np.delete(x2, i)
        r_i = np.sum(np.log(np.abs(1 - lam_c * others)))
        if m(lam_c * (1 + 1e-3)) < 0 or m(lam_c * (1 - 1e-3)) < 0:
            continue  # inside the stable bulk: no isolated stripe
        predicted = np.exp(-r_i) / x2[i]
        scale = 10 * predicted
        left = optimize.brentq(m, lam_c - scale, lam_c * (1 - 1e-15), xtol=1e-22, rtol=1e-15)
        right = optimize.brentq(m, lam_c * (1 + 1e-15), lam_c + scale, xtol=1e-22, rtol=1e-15)
        for width in (lam_c - left, right - lam_c):
            assert width == pytest.approx(predicted, rel=0.01)
            assert width < 0.1 * x2[i] / x2.max()  # the printed eq. (8), x_i^2 / x_out^2, is 10x or more too wide
        checked += 1
    assert checked >= 2
