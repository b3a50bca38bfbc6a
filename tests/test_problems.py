"""dynsim.problems: loss conventions and data laws against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds
from dynsim import prng


def test_regression_loss_convention_half():
    p = ds.problems.linear_regression_1d(w_star=0.5)
    s = {"x": jnp.float32(2.0), "y": jnp.float32(1.0)}
    # l = 1/2 (w x - y)^2, dl/dw = x (w x - y)
    assert float(p.loss(3.0, s, {})) == pytest.approx(0.5 * (6 - 1) ** 2)
    assert float(jax.grad(p.loss)(3.0, s, {})) == pytest.approx(2 * (6 - 1))
    p1 = ds.problems.linear_regression_1d(loss_scale=1.0)
    assert float(p1.loss(3.0, s, {})) == pytest.approx((6 - 1) ** 2)


def test_regression_fixed_point_only_when_interpolating():
    assert ds.problems.linear_regression_1d(w_star=2.0).fixed_point == 2.0
    assert ds.problems.linear_regression_1d(noise_std=0.3).fixed_point is None


def test_datasets_are_nested_and_deterministic():
    p = ds.problems.linear_regression_1d(n_data=8)
    k = prng.key(0)
    small, large = ds.problems.draw_dataset(p, k, 5), ds.problems.draw_dataset(p, k, 8)
    np.testing.assert_array_equal(small["x"], large["x"][:5])


def test_gaussian_saddle_chi_moments():
    # chi = x (mu x + (1 - mu) eps): E chi = mu, Var chi = 2 mu^2 + Var(eps) (1 - mu)^2.
    mu, var_eps, n = 0.3, 4.0, 200_000
    p = ds.problems.rank1_saddle("gaussian", noise_var=var_eps)
    data = ds.problems.draw_dataset(p, prng.key(1), n)
    params = {"w": jnp.ones(1), "u": jnp.ones(1)}
    chi = -np.asarray(jax.vmap(p.loss, in_axes=(None, 0, None))(params, data, {"mu": mu}), dtype=np.float64)
    var = 2 * mu**2 + var_eps * (1 - mu) ** 2
    assert abs(chi.mean() - mu) < 4 * np.sqrt(var / n)
    # Var of the sample variance of chi: (m4 - var^2)/n; m4 from the sample (4 sigma).
    m4 = np.mean((chi - chi.mean()) ** 4)
    assert abs(chi.var() - var) < 4 * np.sqrt((m4 - var**2) / n)


def test_two_point_saddle_chi_law():
    p = ds.problems.rank1_saddle("two_point", c0=0.5)
    data = ds.problems.draw_dataset(p, prng.key(2), 20_000)
    params = {"w": jnp.ones(1), "u": jnp.ones(1)}
    chi = -np.asarray(jax.vmap(p.loss, in_axes=(None, 0, None))(params, data, {"a": -0.25}))
    np.testing.assert_allclose(np.unique(chi), [0.5 * -0.25, 0.5 * 1.0])
    share = np.mean(chi > 0)
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / chi.size)


def test_saddle_sgd_step_is_eq66():
    # w <- w + lr chi u, u <- u + lr chi w, simultaneously (seed 004, eq. 66).
    p = ds.problems.rank1_saddle("two_point", width=3)
    params = {"w": jnp.array([1.0, 2.0, -1.0]), "u": jnp.array([0.5, -1.0, 3.0])}
    s = {"b": jnp.float32(0.0)}
    hp = {"a": 0.7}
    g = jax.grad(p.loss)(params, s, hp)
    lr = 0.1
    np.testing.assert_allclose(params["w"] - lr * g["w"], params["w"] + lr * 0.7 * params["u"], rtol=1e-6)
    np.testing.assert_allclose(params["u"] - lr * g["u"], params["u"] + lr * 0.7 * params["w"], rtol=1e-6)


def test_quadratic_and_sin_product_values():
    q = ds.problems.quadratic([[2.0, 0.0], [0.0, 4.0]])
    th = jnp.array([1.0, -1.0])
    assert float(q.loss(th, None, {})) == pytest.approx(0.5 * (2 + 4))
    s = ds.problems.sin_product()
    assert float(s.loss(jnp.array([np.pi / 2, -np.pi / 2]), None, {})) == pytest.approx(-100.0)
    th0 = s.init(prng.key(0), {})
    assert np.all(np.abs(np.asarray(th0)) <= np.pi)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ds.problems.quadratic([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
        (lambda: ds.problems.quadratic(np.ones((2, 3))), "square"),
        (lambda: ds.problems.linear_regression_1d(n_data=0), "n_data"),
        (lambda: ds.problems.linear_regression_1d(noise_std=-1.0), "noise_std"),
        (lambda: ds.problems.rank1_saddle("uniform"), "chi"),
        (lambda: ds.problems.rank1_saddle(noise_var=0.0), "noise_var"),
        (lambda: ds.problems.rank1_saddle(width=0), "width"),
    ],
)
def test_bad_problem_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_stream_has_no_objective():
    p = ds.problems.linear_regression_1d()
    with pytest.raises(ValueError, match="stream"):
        ds.problems.objective(p, 1.0, None, {})


def test_mlp_parameter_counts_of_the_edge_of_stability_networks():
    # seed 001 digest: Cohen et al.'s CIFAR-10 network 3072-200-200-10 has 656,810 parameters, its 4-hidden-layer
    # variant 737,210; the digits substitute 64-200-200-10 has 55,210
    for n_in, widths, count in ((3072, (200, 200), 656_810), (3072, (200,) * 4, 737_210), (64, (200, 200), 55_210)):
        y = np.arange(10)
        problem = ds.problems.mlp_classifier(np.zeros((10, n_in), np.float32), y, widths)
        shapes = jax.eval_shape(problem.init, jax.random.key(0), dict(problem.hyperparams))
        assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes)) == count
