"""Seed 002, ch. 2 (Fig. 2-1, after Lessard et al. 2016): heavy ball cycles on a strongly convex function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import import_experiment

import dynsim as ds


@pytest.fixture(scope="module")
def experiment():
    return import_experiment("heavy_ball_cycle")


def test_lessard_function_is_c1_with_the_stated_gradient(x64):
    problem = ds.problems.lessard_function()
    f = jax.jit(lambda x: problem.loss(jnp.reshape(x, (1,)), None, {}))
    grad = jax.jit(jax.grad(f))
    for x in np.linspace(-3, 5, 161):
        want = 25 * x if x < 1 else (x + 24 if x < 2 else 25 * x - 24)
        assert float(grad(x)) == pytest.approx(want, rel=1e-12, abs=1e-12)
    for knot in (1.0, 2.0):  # value and slope continuous at the knots
        assert float(f(knot - 1e-9)) == pytest.approx(float(f(knot + 1e-9)), abs=1e-6)
        assert float(grad(knot - 1e-9)) == pytest.approx(float(grad(knot + 1e-9)), abs=1e-6)
    assert float(f(0.0)) == 0.0 and np.all(np.asarray(jax.vmap(f)(jnp.linspace(-5, 5, 101))) >= 0)


def test_heavy_ball_settles_on_the_exact_cycle_or_the_minimum(x64, experiment):
    problem = ds.problems.lessard_function()
    hb = experiment.HEAVY_BALL
    assert hb["lr"] == pytest.approx(1 / 9) and hb["momentum"] == pytest.approx(4 / 9)
    cycle = experiment.exact_cycle(hb["lr"], hb["momentum"])
    # the cycle is a fixed point of the three-step map, computed here without the linear system
    x_prev, x = cycle[2], cycle[0]
    for want in (cycle[1], cycle[2], cycle[0]):
        g = 25 * x if x < 1 else (x + 24 if x < 2 else 25 * x - 24)
        x_prev, x = x, x - hb["lr"] * g + hb["momentum"] * (x - x_prev)
        assert x == pytest.approx(want, abs=1e-12)
    starts = np.array([3.1, 3.3, 0.5, 1.5, 3.0, 3.5, 5.0])  # the digest's starts
    out, last = experiment.outcomes(problem, hb, starts, 3000, cycle)
    np.testing.assert_array_equal(out, [3, 3, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(np.sort(last[0, -3:]), np.sort(cycle), atol=1e-12)


def test_optax_nesterov_is_the_thesis_nag_and_meets_its_rate(x64, experiment):
    # Thesis eq. (2.4): y_{k+1} = x_k - a f'(x_k), x_{k+1} = (1 + b) y_{k+1} - b y_k, y_0 = x_0.
    problem = ds.problems.lessard_function()
    nag = experiment.NESTEROV
    grad = jax.grad(lambda x: problem.loss(x, None, {}))
    run = ds.dynamics.bind(experiment.method(problem, nag), {"lr": nag["lr"], "x0": -7.3})
    state = run.init(jax.random.key(0))
    x, y = -7.3, -7.3
    for t in range(40):
        assert float(state.params[0]) == pytest.approx(x, abs=1e-12)
        y_new = x - nag["lr"] * float(grad(jnp.array([x]))[0])
        x, y = (1 + nag["momentum"]) * y_new - nag["momentum"] * y, y_new
        state = run.step(state, jax.random.key(t))
    worst, *_ = experiment.nesterov_gap(problem, np.linspace(-10, 10, 41), 150)
    assert 0 < worst <= 1


def test_lyapunov_spectrum_on_the_cycle_is_the_jordan_block(x64, experiment):
    # Every cycle point lies where f'' = 25: the Jacobian of (x_prev, x) -> (x, x') is [[0, 1], [-b, 1 + b - 25 a]]
    # = a Jordan block with eigenvalue -2/3. The exponents are log(2/3) (twice); their sum, log|det| = log(4/9),
    # is exact at every step, and each converges like log(n)/n (the block's polynomial growth).
    problem = ds.problems.lessard_function()
    run = ds.dynamics.bind(experiment.method(problem, experiment.HEAVY_BALL), {"lr": 1 / 9, "x0": 3.1})
    n = 2000
    # a deterministic orbit (no noise to average) whose exponents converge like log(n)/n: correlated, drifting
    with pytest.warns(RuntimeWarning, match="batch means are correlated"), pytest.warns(RuntimeWarning, match="drift"):
        est = ds.lyapunov.spectrum(run.step, run.init(jax.random.key(0)), 0, n, 2, transient=200)
    lam = np.asarray(est.exponents)
    assert lam.sum() == pytest.approx(np.log(4 / 9), abs=1e-10)
    assert np.all(np.abs(lam - np.log(2 / 3)) < 2 * np.log(n) / n)
    assert lam[0] > np.log(2 / 3) > lam[1]  # the Jordan block splits them: not both exactly log(2/3)


def test_heavy_ball_is_optax_sgd_with_momentum(x64):
    # x_{k+1} = x_k - a f'(x_k) + b (x_k - x_{k-1}), x_{-1} = x_0, against optax.sgd(a, momentum=b)
    problem = ds.problems.lessard_function()
    grad = jax.grad(lambda x: problem.loss(x, None, {}))
    opt = optax.sgd(1 / 9, momentum=4 / 9)
    params = jnp.array([3.1])
    state = opt.init(params)
    x_prev, x = 3.1, 3.1
    for _ in range(30):
        updates, state = opt.update(grad(params), state)
        params = optax.apply_updates(params, updates)
        g = float(grad(jnp.array([x]))[0])
        x_prev, x = x, x - g / 9 + 4 / 9 * (x - x_prev)
        assert float(params[0]) == pytest.approx(x, abs=1e-12)


def test_from_optax_fixes_flag_arguments():
    # optax.sgd's nesterov is a flag, not a number: fixed when the dynamics is built, named in it,
    # and absent from the hyperparameters; an argument optax.sgd does not have is still refused.
    problem = ds.problems.lessard_function()
    dyn = ds.dynamics.from_optax(problem, optax.sgd, batch_size=None, momentum=0.5, nesterov=True)
    assert "nesterov=True" in dyn.name and "nesterov" not in dyn.hyperparams
    run = ds.dynamics.bind(dyn, {"lr": 0.01, "x0": 2.5})
    opt = optax.sgd(0.01, momentum=0.5, nesterov=True)
    grad = jax.grad(lambda x: problem.loss(x, None, {}))
    state, params = run.init(jax.random.key(0)), jnp.array([2.5])
    opt_state = opt.init(params)
    for t in range(5):
        updates, opt_state = opt.update(grad(params), opt_state)
        params = optax.apply_updates(params, updates)
        state = run.step(state, jax.random.key(t))
        np.testing.assert_array_equal(state.params, params)
    with pytest.raises(ValueError, match="unknown optimizer argument"):
        ds.dynamics.from_optax(problem, optax.sgd, batch_size=None, nesterov_typo=True)
