"""Seed 000's theorems as checks on simulations (digest Sec. 4), and the classifier problems they use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds


def test_scaled_step_from_the_invariant_measure_lowers_the_loss(x64):
    # 1-D reduction of GD on 100 sin sin at lr = 0.04: y <- y - 4 sin y on its chaotic attractor.
    # Thm. 5.2: Delta(c) < 0 for c < 1, = 0 at c = 1 (invariance), > 0 beyond (digest Sec. 4.5:
    # Delta(0.1, 0.5, 0.9) = -17.65, -50.99, -13.47 and Delta(1.1) = +12.34).
    lr = 0.04
    h = lambda y: -100 * jnp.cos(y)  # noqa: E731
    step = jax.jit(lambda y: y - lr * jax.grad(h)(y))
    y = jnp.asarray(0.3)
    for _ in range(1000):
        y = step(y)
    orbit = []
    for _ in range(60_000):
        y = step(y)
        orbit.append(float(y))
    # thinned by 7, coprime to the 12 bands the orbit visits in turn: nearly independent draws
    samples = jnp.asarray(orbit[::7])
    change = ds.measure.scaled_step_change(h, lambda y, k: -lr * jax.grad(h)(y), samples, [0.1, 0.5, 0.9, 1.0, 1.1])
    expected = [-17.65, -50.99, -13.47, 0.0, 12.34]
    assert np.all(np.abs(change.mean - expected) < 4 * change.stderr + 0.02)
    assert change.mean[1] < -3 * change.stderr[1]


def test_weight_norm_ball_is_invariant_with_weight_decay(x64):
    # Thm. 4.3 (digest Sec. 4.3): bias-free L = 4 ReLU net, |x| <= 1, CE (Lipschitz sqrt 2), weight
    # decay gamma, lr <= 1/gamma, every |W_l|_op <= w = (gamma / sqrt 2)^(1/(L-2)) stays so, and
    # SGD converges to theta = 0, where the loss is log 10.
    data = ds.problems.load_digits()
    x = data["x"] / np.linalg.norm(data["x"], axis=1).max()
    gamma = 1e-2
    w = (gamma / np.sqrt(2)) ** (1 / 2)
    problem = ds.problems.mlp_classifier(x, data["y"], (32, 32, 32), bias=False, weight_decay=gamma)

    def init(key, hp):
        params = problem.init(key, hp)
        return {k: W * w / jnp.linalg.norm(W, 2) for k, W in params.items()}

    def op_ratio(p):
        return jnp.max(jnp.stack([jnp.linalg.norm(W, 2) for W in p.values()])) / w

    res = ds.simulate(
        ds.dynamics.sgd(problem._replace(init=init), batch_size=32),
        grid={"lr": [1.0, 10.0]},
        n_replicas=4,
        n_steps=300,
        record_every=1,
        observables={"ratio": ds.observables.trajectory(op_ratio), "loss": ds.observables.loss(weight_decay=0.0)},
    )
    assert float(res.ratio.max()) <= 1 + 1e-9
    assert np.all(np.abs(res.loss.isel(time=-1).values - np.log(10)) < 1e-3)
    # the maximum is taken at the start, and the first step shrinks the ball by about 1 - lr gamma
    np.testing.assert_allclose(res.ratio.isel(time=1).values.max(axis=-1), 1 - np.array([1.0, 10.0]) * gamma, atol=2e-3)


def test_scale_invariant_mlp():
    data = ds.problems.load_digits()
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (16, 16), scale_invariant=True)
    params = problem.init(jax.random.key(0), {"weight_decay": 0.0})
    sample = {"x": jnp.asarray(data["x"][0]), "y": jnp.asarray(data["y"][0])}
    loss = lambda p: problem.loss(p, sample, {"weight_decay": 0.0})  # noqa: E731
    scaled = {k: 3.7 * v if k == "W1" else v for k, v in params.items()}
    assert float(loss(scaled)) == pytest.approx(float(loss(params)), rel=1e-5)
    g = jax.grad(loss)(params)
    for k in params:  # Euler: a scale-invariant loss has <grad_W L, W> = 0
        assert abs(float(jnp.vdot(g[k], params[k]))) < 1e-4 * float(jnp.linalg.norm(g[k]) * jnp.linalg.norm(params[k]))
    logits = ds.problems.mlp_forward(params, sample["x"], scale_invariant=True)
    assert float(loss(params)) == pytest.approx(-float(jax.nn.log_softmax(logits)[sample["y"]]), rel=1e-5)


def test_corrupt_labels_rate():
    y = np.zeros(20_000, np.int32)
    noisy = ds.problems.corrupt_labels(y, 0.3, 10, seed=1)
    changed = np.mean(noisy != y)
    assert abs(changed - 0.3 * 0.9) < 4 * np.sqrt(0.27 * 0.73 / y.size)
