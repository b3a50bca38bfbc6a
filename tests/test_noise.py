"""Injected noise: laws of the draws and exact moment identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import dynsim as ds
from dynsim import prng

obs = ds.observables
FLAT = ds.problems.quadratic([[0.0]], theta0=0.0)  # zero gradient: each step adds -lr * noise


def _increments(noise, grid, n_replicas=1000, n_steps=4):
    res = ds.simulate(
        ds.dynamics.gd(FLAT, noise=[noise]),
        grid=grid,
        n_replicas=n_replicas,
        n_steps=n_steps,
        record_every=1,
        observables={"th": obs.trajectory()},
    )
    th = res.th.values.reshape(-1, n_steps + 1)
    return np.diff(th, axis=1).ravel()


# Kolmogorov-Smirnov tests at level 1e-3 (the draws are a fixed function of the seed).
LEVEL = 1e-3


def test_gaussian_noise_law():
    inc = _increments(ds.dynamics.gaussian_noise(), {"lr": [0.5], "noise": [2.0]})
    assert stats.kstest(inc, stats.norm(scale=1.0).cdf).pvalue > LEVEL


def test_uniform_noise_law_and_bound():
    inc = _increments(ds.dynamics.uniform_noise(), {"lr": [0.5], "noise": [3.0]})  # -lr * 3 * U[-1, 1]
    assert np.abs(inc).max() <= 1.5
    assert stats.kstest(inc, stats.uniform(loc=-1.5, scale=3.0).cdf).pvalue > LEVEL


def test_student_t_noise_law():
    inc = _increments(ds.dynamics.student_t_noise(df=3.0), {"lr": [1.0], "noise": [1.0]})
    assert stats.kstest(-inc, stats.t(df=3.0).cdf).pvalue > LEVEL


@pytest.mark.parametrize("alpha, law", [(1.0, stats.cauchy()), (2.0, stats.norm(scale=np.sqrt(2)))])
def test_alpha_stable_closed_form_cases(alpha, law):
    inc = _increments(ds.dynamics.alpha_stable_noise(alpha=alpha), {"lr": [1.0]})
    assert stats.kstest(-inc, law.cdf).pvalue > LEVEL


def test_alpha_stable_against_scipy():
    x = np.asarray(ds.dynamics.symmetric_stable(prng.key(7), 1.5, (800,)), dtype=float)
    assert stats.kstest(x, stats.levy_stable(1.5, 0.0).cdf).pvalue > LEVEL


def test_multiplicative_noise_exact_identity():
    # F = |theta|^2/2, g = theta + sqrt(sigma F) Z, Z ~ N(0, I/d):
    # E F(theta_k) = rho^k F_0 with rho = (1 - lr)^2 + lr^2 sigma / 2 (seed 003 digest, Sec. 4).
    d, sigma, lr, n, k = 4, 2.0, 0.125, 20_000, 10
    problem = ds.problems.quadratic(np.eye(d), theta0=np.ones(d))
    res = ds.simulate(
        ds.dynamics.gd(problem, noise=[ds.dynamics.multiplicative_noise()]),
        grid={"lr": [lr], "noise": [sigma]},
        n_replicas=n,
        n_steps=k,
        record_every=1,
        observables={"F": obs.loss()},
    )
    F = res.F.values.reshape(n, k + 1).astype(np.float64)
    rho = (1 - lr) ** 2 + lr**2 * sigma / 2
    expected = rho ** np.arange(k + 1) * d / 2
    stderr = F.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(F.mean(axis=0) - expected) <= 4 * stderr + 1e-6 * expected)


def test_gaussian_noise_stationary_variance():
    # theta' = (1 - lr h) theta - lr s xi: Var_inf = lr^2 s^2 / (1 - (1 - lr h)^2) = 1/3 here.
    problem = ds.problems.quadratic([[1.0]], theta0=0.0)
    res = ds.simulate(
        ds.dynamics.gd(problem, noise=[ds.dynamics.gaussian_noise()]),
        grid={"lr": [0.5], "noise": [1.0]},
        n_replicas=256,
        n_steps=2000,
        observables={"m2": obs.time_average(lambda th: th[0] ** 2, discard=100)},
    )
    m2 = res.m2.values.ravel()
    assert abs(m2.mean() - 1 / 3) < 4 * m2.std(ddof=1) / np.sqrt(m2.size)


def test_label_noise_one_step_variance():
    # from w = w* = 0 on interpolating data: w_1 = lr x s xi, Var = lr^2 s^2 E[x^2] = lr^2 s^2.
    problem = ds.problems.linear_regression_1d(w0=0.0)
    lr, s, n = 0.3, 2.0, 40_000
    res = ds.simulate(
        ds.dynamics.sgd(problem, noise=[ds.dynamics.label_noise()]),
        grid={"lr": [lr], "label_noise": [s]},
        n_replicas=n,
        n_steps=1,
        observables={"w": obs.final_state()},
    )
    w = res.w.values.ravel().astype(np.float64)
    var = (lr * s) ** 2
    m4 = np.mean(w**4)
    assert abs(np.mean(w**2) - var) < 4 * np.sqrt((m4 - np.mean(w**2) ** 2) / n)


def test_noise_names_must_not_collide():
    with pytest.raises(ValueError, match="collide"):
        ds.dynamics.sgd(
            ds.problems.linear_regression_1d(), noise=[ds.dynamics.gaussian_noise(), ds.dynamics.gaussian_noise()]
        )
    ds.dynamics.sgd(
        ds.problems.linear_regression_1d(),
        noise=[ds.dynamics.gaussian_noise(), ds.dynamics.gaussian_noise(name="noise2")],
    )


def test_two_noises_with_shape_parameters_can_be_told_apart():
    # a shape parameter is named after its noise: name_df, name_alpha, name_index (the defaults
    # keep df, alpha, index); before, name= renamed the scale only and the collision stayed
    problem = ds.problems.quadratic(np.eye(2))
    dyn = ds.dynamics.gd(
        problem,
        lr=0.1,
        noise=[ds.dynamics.student_t_noise(1.0, 3.0, name="s1"), ds.dynamics.student_t_noise(1.0, 1.5, name="s2")],
    )
    assert {"s1", "s1_df", "s2", "s2_df"} <= set(dyn.hyperparams)
    # ACClip's exponent is called alpha too
    noise = ds.dynamics.alpha_stable_noise(0.5, 1.5, name="xi")
    dyn = ds.dynamics.from_optax(problem, ds.optim.acclip, lr=0.01, noise=[noise])
    assert dyn.hyperparams["xi_alpha"] == 1.5 and "alpha" in dyn.hyperparams


def test_alpha_stable_draws_are_finite():
    # float32 rounds -pi/2 below -pi/2, where cos V < 0: one draw in 2^23 was NaN (here draw 6374644),
    # and the engine took each for a divergence
    x = ds.dynamics.symmetric_stable(jax.random.PRNGKey(0), 1.5, (10_000_000,), jnp.float32)
    assert bool(jnp.all(jnp.isfinite(x)))


def test_stable_index_limit_keeps_the_largest_draw_finite():
    # the largest draw is X(V_low, eps/2): V next to -pi/2, W at its floor; at the limit it fits the dtype
    from dynsim.dynamics.noise import _chambers_mallows_stuck, _uniform_angle_low

    assert ds.dynamics.stable_index_limit(np.float32) == 0.3084
    assert ds.dynamics.stable_index_limit(np.float64) == 0.0968
    for dtype in (jnp.float32, jnp.float64):
        limit = ds.dynamics.stable_index_limit(dtype)
        with jax.enable_x64(dtype == jnp.float64):
            v = jnp.asarray(_uniform_angle_low(dtype))
            w = jnp.asarray(np.finfo(dtype).eps / 2, dtype)
            for alpha in (limit, 0.5, 0.9, 1.0, 1.5, 2.0):
                assert bool(jnp.isfinite(_chambers_mallows_stuck(v, w, jnp.asarray(alpha, dtype)))), (dtype, alpha)
            assert not bool(jnp.isfinite(_chambers_mallows_stuck(v, w, jnp.asarray(limit - 0.02, dtype))))


@pytest.mark.parametrize("alpha", [0.0, -1.0, 2.5, 0.1, 0.3, np.array([1.5, 0.2])])
def test_symmetric_stable_refuses_an_index_outside_its_range(alpha):
    # (0, 2] is the stable family; below 0.3084 float32 draws overflow (alpha = 0.1: 2e-4 of them infinite)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 2\]"):
        ds.dynamics.symmetric_stable(jax.random.PRNGKey(1), alpha, (10,), jnp.float32)


def test_symmetric_stable_takes_small_indices_in_float64_and_traced_ones(x64):
    x = ds.dynamics.symmetric_stable(jax.random.PRNGKey(1), 0.1, (100_000,), jnp.float64)
    assert bool(jnp.all(jnp.isfinite(x)))
    draw = jax.jit(lambda a: ds.dynamics.symmetric_stable(jax.random.PRNGKey(1), a, (4,), jnp.float32))
    assert draw(0.1).shape == (4,)  # traced: unchecked


def test_student_t_df_limit_from_the_rate_of_infinite_draws():
    """Infinite draws of ``jax.random.t`` in float32 come at the rate ``tiny^(df/2) / Gamma(df/2 + 1)`` (the Gamma
    draw rounding to 0): counted over 10^7 draws at df = 0.3 against that rate (Poisson, 5 s.d.); the limit is
    where the rate is 2^-32, and smaller df are refused, on a grid too."""
    from scipy import special

    n, df = 10_000_000, 0.3
    draws = jax.random.t(prng.key(0), df, (n,), jnp.float32)
    expected = n * np.exp(df / 2 * np.log(np.finfo(np.float32).tiny) - special.gammaln(df / 2 + 1))
    assert abs(int(np.sum(~np.isfinite(np.asarray(draws)))) - expected) < 5 * np.sqrt(expected)
    limit = ds.dynamics.student_t_df_limit(np.float32)
    rate = np.exp(limit / 2 * np.log(np.finfo(np.float32).tiny) - special.gammaln(limit / 2 + 1))
    assert 2.0**-32 * 0.99 < rate <= 2.0**-32 and ds.dynamics.student_t_df_limit(np.float64) < limit / 8
    with pytest.raises(ValueError, match="df must be >= 0.5103 in float32"):
        ds.dynamics.student_t_noise(df=0.3)
    with pytest.raises(ValueError, match="df must be >= 0.5103"):
        _increments(ds.dynamics.student_t_noise(df=3.0), {"lr": [1.0], "noise": [1.0], "df": [3.0, 0.3]})
