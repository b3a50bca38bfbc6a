"""Seed 001 (unstable convergence of GD): known answers for the step diagnostics and the toys.

Closed forms: Example 1's multipliers ``1 - lr lambda``; Example 2's 2-cycle
``tanh(20 a^2) = 1/sqrt(40)`` with ``RP = 0``, ``L = 2/lr``, its Hessian and its exponents;
quadratics, where ``RP = -1 + (lr/2) g^T P g / |g|^2`` exactly. Exact identities: Theorem 2 and
its finite-sample SGD form (App. C), Corollary 1's bound, Proposition 2's Euler identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsim as ds
from dynsim import curvature as cv

P_EX1 = np.diag([40.0, 2.0])
CYCLE_T = 1 / np.sqrt(40)
CYCLE_A = np.sqrt(np.arctanh(CYCLE_T) / 20)


def _tanh_quadratic(theta):
    return jnp.tanh(20 * theta[0] ** 2 + theta[1] ** 2)


def _small_mlp(loss="mse", activation="tanh", n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = rng.integers(0, 3, n)
    return ds.problems.mlp_classifier(x, y, (8,), n_classes=3, activation=activation, loss=loss, init="uniform"), {
        "x": jnp.asarray(x, jnp.float64),
        "y": jnp.asarray(y),
    }


def _objective(problem, data):
    hp = dict(problem.hyperparams)
    return lambda p, batch=data: ds.problems.batch_loss(problem, p, batch, hp)


def _random_params(problem, seed=1):
    return problem.init(jax.random.key(seed), dict(problem.hyperparams))


def test_example1_gd_is_the_closed_form_and_converges_iff_lr_below_2_over_L(x64):
    lrs = np.linspace(2 / 45, 2 / 35, 41)
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.quadratic(P_EX1, theta0=(1.0, 1.0))),
        grid={"lr": lrs},
        n_steps=200,
        record_every=50,
        observables={"theta": ds.observables.trajectory()},
    )
    theta = res.theta.values[:, 0]  # (lr, time, 2)
    t = res.time.values
    for i, lr in enumerate(lrs):
        exact = np.stack([(1 - 40 * lr) ** t, (1 - 2 * lr) ** t], axis=-1)
        np.testing.assert_allclose(theta[i], exact, rtol=1e-12)
    assert np.array_equal(np.abs(theta[:, -1, 0]) <= 1, lrs <= 2 / 40)


def test_example2_gd_settles_on_the_two_cycle_with_rp_zero_and_L_two_over_lr(x64):
    lr = 2 / 39
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.flattened_quadratic(P_EX1, box=0.5)),
        grid={"lr": [lr]},
        n_replicas=64,
        n_steps=3000,
        observables={
            "last": ds.observables.last_values(2, lambda th: th[0]),
            "theta": ds.observables.final_state(),
            "at_zero": ds.observables.converged(np.zeros(2), 1e-6),
        },
    )
    last = res.last.values[0]  # (replica, 2)
    np.testing.assert_allclose(np.abs(last), CYCLE_A, atol=1e-8)
    assert np.all(np.sign(last[:, 0]) == -np.sign(last[:, 1]))  # alternates
    assert np.all(np.abs(res.theta.values[0, :, 1]) < 1e-12)
    assert not res.at_zero.values.any()  # Thm 1: never at the (too sharp) minimum

    theta = jnp.array([CYCLE_A, 0.0])
    p = cv.gd_progress(_tanh_quadratic, theta, lr)
    np.testing.assert_allclose(p.loss, CYCLE_T, rtol=1e-12)
    assert abs(float(p.relative_progress)) < 1e-9
    np.testing.assert_allclose(p.directional_smoothness, 39.0, rtol=1e-9)
    np.testing.assert_allclose(p.gradient_alignment, -1.0, rtol=1e-12)
    # Hessian at the cycle: diag(40 s - 2 s tanh(q) (40 a)^2, 2 s), s = sech^2(q) = 39/40: below 2/lr = 39
    s = 1 - CYCLE_T**2
    top = 40 * s - 2 * s * CYCLE_T * (40 * CYCLE_A) ** 2
    np.testing.assert_allclose(cv.sharpness(_tanh_quadratic, theta, n_iter=2).value, top, rtol=1e-10)
    assert top < 39
    # ... but the segment to the next iterate crosses 0, where the Hessian is diag(40, 2)
    np.testing.assert_allclose(cv.segment_sharpness(_tanh_quadratic, theta, -theta, n_iter=2), 40.0, rtol=1e-12)


def test_example2_lyapunov_spectrum_of_the_two_cycle(x64):
    lr = 2 / 39
    grad = jax.grad(_tanh_quadratic)
    # GD approaching a 2-cycle: no noise to average, and the exponent of its second direction still drifts
    with pytest.warns(RuntimeWarning, match="batch means are correlated"), pytest.warns(RuntimeWarning, match="drift"):
        est = ds.lyapunov.spectrum(
            lambda th, key: th - lr * grad(th), jnp.array([0.3, 0.2]), jax.random.key(0), 6000, 2, transient=2000
        )
    cycle = np.log(abs(-1 + 8 * CYCLE_T * np.arctanh(CYCLE_T)))
    theta2 = np.log(1 - 2 * lr * (1 - CYCLE_T**2))  # = log 0.9
    np.testing.assert_allclose(est.exponents, [theta2, cycle], atol=1e-3)


def test_example3_linear_net_diverges_and_tanh_net_settles_just_below_two_over_lr(x64):
    lr = 2 / 150
    obs = {"diverged": ds.observables.diverged(bound=1e20), "theta": ds.observables.final_state()}
    common = dict(grid={"lr": [lr]}, n_steps=2000, observables=obs)
    linear = ds.simulate(ds.dynamics.gd(ds.problems.single_neuron("linear")), **common)
    assert 0 < int(linear.diverged_step.values[0, 0]) <= 12
    tanh = ds.simulate(ds.dynamics.gd(ds.problems.single_neuron("tanh")), **common)
    theta = jnp.asarray(tanh.theta.values[0, 0])
    assert int(tanh.diverged_step.values[0, 0]) == -1
    assert abs(float(theta[1])) < 1e-10

    def f(th):
        return (th[0] * jnp.tanh(th[1])) ** 2

    sharp = float(cv.sharpness(f, theta, n_iter=2).value)
    np.testing.assert_allclose(sharp, 2 * float(theta[0]) ** 2, rtol=1e-8)  # Hessian diag(0, 2 t1^2) on the valley
    assert 0.97 * 150 < sharp < 150  # stable, and reached by sliding from 338 down to the edge
    # near the limit the step runs along the top eigenvector: RP -> -1 + (lr/2) * sharpness
    np.testing.assert_allclose(cv.gd_progress(f, theta, lr).relative_progress, -1 + lr / 2 * sharp, atol=1e-6)


def _numpy_gd_on_the_neuron(activation: str, n_steps: int) -> np.ndarray:
    """GD from (13, 0.01) at lr = 2/150 on (t1 s(t2))^2, s = tanh or the identity, gradients by hand: the iterates."""
    s, ds_ = (np.tanh, lambda z: 1 / np.cosh(z) ** 2) if activation == "tanh" else (lambda z: z, lambda z: 1.0)
    th = np.array([13.0, 0.01])
    out = [th]
    for _ in range(n_steps):
        r = th[0] * s(th[1])
        th = th - 2 / 150 * np.array([2 * r * s(th[1]), 2 * r * th[0] * ds_(th[1])])
        out.append(th)
    return np.array(out)


def test_example3_iterates_against_numpy_and_the_digest(x64):
    # seed 001 digest, Sec. 2.3: the linear net's iterates at steps 1-8 (multiplied by about -3.5 per step); the tanh
    # net's loss peaks at step 4 (105.8) and its theta_1 settles at 8.616500, sharpness 2 theta_1^2 = 148.488
    obs = {"theta": ds.observables.trajectory(), "loss": ds.observables.loss()}
    for activation, n_steps in (("linear", 8), ("tanh", 1000)):
        res = ds.simulate(
            ds.dynamics.gd(ds.problems.single_neuron(activation)),
            grid={"lr": [2 / 150]},
            n_steps=n_steps,
            record_every=1,
            observables=obs,
        )
        theta = res.theta.values[0, 0]
        reference = _numpy_gd_on_the_neuron(activation, n_steps)
        np.testing.assert_allclose(theta, reference, rtol=1e-9, atol=1e-12)
        if activation == "linear":
            digest = [(12.9995, 0.1230), (12.9943, -0.4312), (12.9299, 1.5102), (12.1435, -5.2227), (3.3107, 15.3148)]
            np.testing.assert_allclose(theta[2:7], digest, atol=1e-4)
            np.testing.assert_allclose(theta[7:9], [(-17.396, 10.839), (37.10, -76.63)], atol=1e-2)
        else:
            loss = res.loss.values[0, 0]
            assert int(np.argmax(loss)) == 4 and loss[4] == pytest.approx(105.8, abs=0.05)
            assert theta[-1, 0] == pytest.approx(8.616500, abs=1e-6)
            assert 2 * theta[-1, 0] ** 2 == pytest.approx(148.488, abs=1e-3)


NEURON_LR = 2 / 150


def _neuron(th):
    return (th[0] * jnp.tanh(th[1])) ** 2


def _neuron_run(n_steps: int) -> dict:
    """GD at lr = 2/150 on Example 3's tanh neuron from (13, 0.01), which slides to the edge of stability:
    per step f, |g|^2, RP and the segment sharpness L_t (201 grid points), and the final f."""

    @jax.jit
    def step(theta):
        g = jax.grad(_neuron)(theta)
        nxt = theta - NEURON_LR * g
        rp = cv.gd_progress(_neuron, theta, NEURON_LR).relative_progress
        return nxt, (
            _neuron(theta),
            jnp.sum(g**2),
            rp,
            cv.segment_sharpness(_neuron, theta, nxt, n_points=201, n_iter=2),
        )

    theta, rows = jnp.array([13.0, 0.01]), []
    for _ in range(n_steps):
        theta, row = step(theta)
        rows.append([float(v) for v in row])
    f, g2, rp, seg = map(np.array, zip(*rows))
    return {"f": np.append(f, float(_neuron(theta))), "g2": g2, "rp": rp, "seg": seg}


def test_corollary1_rp_is_bounded_by_the_segment_sharpness(x64):
    run = _neuron_run(40)
    # exact for the sup over the segment; 201 grid points can only under-estimate it, by O(h^2)
    assert np.all(2 / NEURON_LR * (run["rp"] + 1) <= run["seg"] * (1 + 1e-3))
    assert np.sum(run["rp"] > 0) >= 3  # the strongly non-monotone start: the bound is far above 2/lr there


def test_proposition1_window_inequality_with_the_corrected_left_side(x64):
    # seed 001 digest T11: summing the one-step bound f_{t+1} <= f_t - lr|g_t|^2 + (lr^2/2) L_t |g_t|^2 over a window,
    # sum |g_t|^2 L_t / sum |g_t|^2 >= (2/lr)(1 - (f_T - f_{T+K}) / (lr sum |g_t|^2)) for every C^2 f: the proof's
    # eq. (9) writes f(theta^T) - f(theta^0) where f(theta^T) - f(theta^{T+K}) belongs. Windows of 10 steps.
    run = _neuron_run(60)
    lr, g2, seg = NEURON_LR, run["g2"], run["seg"]
    for start in range(0, 50, 10):
        w = slice(start, start + 10)
        weighted = np.sum(g2[w] * seg[w]) / np.sum(g2[w])
        drop = run["f"][start] - run["f"][start + 10]
        assert weighted * (1 + 1e-3) >= 2 / lr * (1 - drop / (lr * np.sum(g2[w])))
    # and the window average sits above 2/lr once the loss stops falling: edge of stability
    assert weighted > 0.97 * 2 / lr


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.5))
def test_quadratic_rp_is_minus_one_plus_half_lr_times_the_rayleigh_quotient(seed, lr):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        A = rng.normal(size=(4, 4))
        P = A @ A.T - 1.0 * np.eye(4)  # indefinite sometimes
        theta = jnp.asarray(rng.normal(size=4))
        problem = ds.problems.quadratic(P)
        f = lambda th: problem.loss(th, None, {})  # noqa: E731
        g = P @ np.asarray(theta)
        rayleigh = g @ P @ g / (g @ g)
        p = cv.gd_progress(f, theta, lr)
        np.testing.assert_allclose(p.relative_progress, -1 + lr / 2 * rayleigh, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(p.directional_smoothness, rayleigh, rtol=1e-9, atol=1e-9)
        profile = cv.smoothness_profile(f, theta, lr, [0.01, 0.3, 1.0, 2.0])
        np.testing.assert_allclose(profile, rayleigh, rtol=1e-8, atol=1e-8)  # independent of the step length


def test_example4_gd_at_two_over_lambda_max_sits_at_rp_zero(x64):
    P = np.diag([10.0, 3.0, 1.0])
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.quadratic(P, theta0=(1.0, 1.0, 1.0))),
        grid={"lr": [2 / 10]},
        n_steps=200,
        observables={"gd": ds.observables.progress()},
    )
    np.testing.assert_allclose(res.gd_relative_progress.values, 0.0, atol=1e-8)
    np.testing.assert_allclose(res.gd_directional_smoothness.values, 10.0, rtol=1e-8)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_theorem2_identity_on_an_mlp(x64, activation):
    problem, data = _small_mlp(activation=activation)
    f = _objective(problem, data)
    for seed, lr in [(1, 0.01), (2, 0.3), (3, 2.0)]:
        params = _random_params(problem, seed)
        rp = cv.gd_progress(f, params, lr).relative_progress
        lbar = cv.averaged_directional_smoothness(f, params, lr, n_nodes=48)
        # smooth: Gauss-Legendre is exact to rounding; ReLU: kinks along the segment cost accuracy
        tol = 1e-10 if activation == "tanh" else 1e-3
        np.testing.assert_allclose(rp, -1 + lr / 2 * lbar, atol=tol)


def test_directional_smoothness_and_profile_agree_with_gd_progress(x64):
    problem, data = _small_mlp()
    f = _objective(problem, data)
    params = _random_params(problem)
    lr = 0.4
    p = cv.gd_progress(f, params, lr)
    v = jax.tree_util.tree_map(lambda g: lr * g, jax.grad(f)(params))
    np.testing.assert_allclose(cv.directional_smoothness(f, params, v), p.directional_smoothness, rtol=1e-12)
    profile = cv.smoothness_profile(f, params, lr, [0.5, 1.0])
    np.testing.assert_allclose(profile[1], p.directional_smoothness, rtol=1e-12)
    half = jax.tree_util.tree_map(lambda g: 0.5 * g, v)
    np.testing.assert_allclose(profile[0], cv.directional_smoothness(f, params, half), rtol=1e-12)


def test_sgd_progress_against_a_direct_loop_and_its_exact_identity(x64):
    problem, data = _small_mlp(loss="cross_entropy", n=60)
    f = _objective(problem, data)
    params = _random_params(problem)
    lr = 0.7
    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(60, 8, replace=False) for _ in range(12)])
    batches = {"x": data["x"][idx], "y": data["y"][idx]}
    out = cv.sgd_progress(lambda p, b: f(p, b), params, lr, data, batches, n_nodes=32, chunk=7)

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grad_f = jax.flatten_util.ravel_pytree(jax.grad(f)(params))[0]
    gg = float(grad_f @ grad_f)
    rps, rhs, down = [], [], []
    for i in range(len(idx)):
        b = {"x": batches["x"][i], "y": batches["y"][i]}
        g = jax.flatten_util.ravel_pytree(jax.grad(f)(params, b))[0]
        moved = unravel(flat - lr * g)
        rps.append((float(f(moved)) - float(f(params))) / (lr * gg))
        g1 = jax.flatten_util.ravel_pytree(jax.grad(f)(moved))[0]
        rhs.append(-1 + 0.5 * float(g @ (grad_f - g1)) / gg)
        down.append(float(f(moved)) < float(f(params)))
    np.testing.assert_allclose(out.expected, np.mean(rps), rtol=1e-10)
    np.testing.assert_allclose(out.expected_stderr, np.std(rps, ddof=1) / np.sqrt(len(rps)), rtol=1e-8)
    np.testing.assert_allclose(out.predicted, np.mean(rhs), rtol=1e-10)
    np.testing.assert_allclose(out.fraction_descending, np.mean(down))
    np.testing.assert_allclose(out.exact, out.expected, atol=1e-8)  # App. C, finite-sample form
    assert out.m == 12


def test_proposition2_scale_invariance_with_weight_decay_has_no_stationary_point(x64):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), rng.integers(0, 3, 30)
    gamma = 0.01
    problem = ds.problems.mlp_classifier(x, y, (7,), n_classes=3, scale_invariant=True, weight_decay=gamma)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    for seed in range(20):
        params = _random_params(problem, seed)
        data_grad = jax.grad(lambda p: ds.problems.batch_loss(problem, p, data, {"weight_decay": 0.0}))(params)
        for name, w in params.items():
            # Euler: the data loss is invariant to the scale of each W, so its gradient is orthogonal to W
            cosine = jnp.vdot(data_grad[name], w) / (jnp.linalg.norm(data_grad[name]) * jnp.linalg.norm(w))
            assert abs(float(cosine)) < 1e-12
        full = jax.grad(lambda p: ds.problems.batch_loss(problem, p, data, {"weight_decay": gamma}))(params)
        norm = float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(full)[0]))
        assert norm >= gamma * float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(params)[0])) * (1 - 1e-12)


def test_progress_observable_matches_gd_progress_on_the_recorded_trajectory(x64):
    problem, _ = _small_mlp()
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.2, 1.5]},
        n_steps=20,
        record_every=10,
        observables={"theta": ds.observables.trajectory(), "gd": ds.observables.progress(taus=[0.5, 1.0])},
    )
    f = _objective(problem, {"x": jnp.asarray(problem.dataset["x"]), "y": jnp.asarray(problem.dataset["y"])})
    names = [k for k in res.data_vars if k.startswith("theta_")]
    for i, lr in enumerate(res.lr.values):
        for j in range(res.sizes["time"]):
            params = {k.removeprefix("theta_"): jnp.asarray(res[k].values[i, 0, j]) for k in names}
            p = cv.gd_progress(f, params, lr)
            cell = res.isel(lr=i, replica=0, time=j)
            np.testing.assert_allclose(cell.gd_relative_progress, p.relative_progress, rtol=1e-9)
            np.testing.assert_allclose(cell.gd_directional_smoothness, p.directional_smoothness, rtol=1e-9)
            np.testing.assert_allclose(cell.gd_profile.values[1], p.directional_smoothness, rtol=1e-9)


def test_rp_is_nan_at_a_stationary_point_not_a_number_from_rounding():
    f = lambda th: jnp.sum(th**2)  # noqa: E731
    p = cv.gd_progress(f, jnp.zeros(3), 0.1)
    assert np.isnan(p.relative_progress) and np.isnan(p.directional_smoothness)
    # a converged float32 run: |g|^2 far below what the loss difference can resolve
    p = cv.gd_progress(lambda th: 1.0 + jnp.sum(th**2), jnp.full(3, 1e-6, jnp.float32), 0.1)
    assert np.isnan(p.relative_progress)


def test_mlp_classifier_square_loss_and_uniform_init():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    problem = ds.problems.mlp_classifier(x, y, (5,), n_classes=3, loss="mse", init="uniform", activation="tanh")
    params = _random_params(problem)
    for name, v in params.items():
        fan_in = 4 if name.endswith("0") else 5
        assert np.all(np.abs(np.asarray(v)) <= 1 / np.sqrt(fan_in))
    logits = np.tanh(x @ params["W0"] + params["b0"]) @ params["W1"] + params["b1"]
    expected = 0.5 * np.mean(np.sum((logits - np.eye(3)[y]) ** 2, axis=1))
    got = ds.problems.batch_loss(problem, params, {"x": jnp.asarray(x), "y": jnp.asarray(y)}, {"weight_decay": 0.0})
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bad_input_is_refused_with_a_clear_message():
    f = lambda th: jnp.sum(th**2)  # noqa: E731
    with pytest.raises(ValueError, match="taus"):
        cv.smoothness_profile(f, jnp.ones(2), 0.1, [])
    with pytest.raises(ValueError, match="n_points"):
        cv.segment_sharpness(f, jnp.ones(2), jnp.zeros(2), n_points=1)
    with pytest.raises(ValueError, match="at least 2 minibatches"):
        cv.sgd_progress(lambda p, b: f(p), jnp.ones(2), 0.1, None, {"x": jnp.ones((1, 3))})
    with pytest.raises(ValueError, match="taus"):
        ds.observables.progress(taus=[0.0, 1.0])
    with pytest.raises(ValueError, match="loss"):
        ds.problems.mlp_classifier(np.ones((3, 2)), np.array([0, 1, 0]), loss="hinge")
    with pytest.raises(ValueError, match="learning rate"):
        dyn = ds.dynamics.Dynamics(
            lambda k, hp: jnp.ones(2),
            lambda s, k, hp: s,
            hyperparams={"a": 1.0},
            problem=ds.problems.quadratic(np.eye(2)),
        )
        ds.simulate(dyn, grid={"a": [1.0]}, n_steps=2, observables={"gd": ds.observables.progress()})


@pytest.mark.slow
def test_gd_on_digits_reaches_the_edge_of_stability_at_a_large_step_only():
    """Seed 001, Exps. 2-4 on the digits substitute: RP ~ -1 when stable, ~ 0 with (lr/2) L ~ 1 at the edge."""
    pytest.importorskip("sklearn")
    data = ds.problems.load_digits(test_size=0, standardize=True)
    problem = ds.problems.mlp_classifier(
        data["x"], data["y"], (200, 200), activation="tanh", loss="mse", init="uniform"
    )
    lrs = np.array([2 / 30, 2 / 12])
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": lrs},
        n_steps=1200,
        record_every=1,
        observables={"loss": ds.observables.loss(), "gd": ds.observables.progress()},
    )
    late = slice(900, None)
    rp = res.gd_relative_progress.values[:, 0, late]
    half_l = lrs[:, None] / 2 * res.gd_directional_smoothness.values[:, 0, late]
    loss = res.loss.values[:, 0]
    assert -1.01 <= np.nanmean(rp[0]) <= -0.95 and np.nanmean(half_l[0]) <= 0.05  # stable
    assert np.all(np.diff(loss[0]) <= 0)  # monotone when stable
    assert -0.05 <= np.nanmean(rp[1]) <= 0.05 and 0.95 <= np.nanmean(half_l[1]) <= 1.05  # unstable convergence
    assert np.mean(np.diff(loss[1][late]) > 0) >= 0.05 and loss[1, -1] < loss[1, 0]  # non-monotone, yet lower
    assert np.nanmax(np.abs(rp[1] - (-1 + half_l[1]))) < 0.05  # relation (5)


def test_progress_with_an_lr_override_probes_that_step():
    # GD on h theta^2 / 2: RP(lr) = (f(theta - lr h theta) - f(theta)) / (lr |h theta|^2) = lr h / 2 - 1; the
    # override was recorded in the config but the cell's lr was used
    res = ds.simulate(
        ds.dynamics.gd(ds.problems.quadratic([[2.0]], theta0=1.0)),
        grid={"lr": [0.25]},
        n_steps=1,
        observables={"cell": ds.observables.progress(), "small": ds.observables.progress(lr=0.05)},
    )
    assert res.cell_relative_progress.item() == pytest.approx(0.25 * 2 / 2 - 1, rel=1e-5)
    assert res.small_relative_progress.item() == pytest.approx(0.05 * 2 / 2 - 1, rel=1e-5)
