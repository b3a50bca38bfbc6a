"""Seed 000's theorems as checks on simulations (digest Sec. 4), and the classifier problems they use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

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
    # the rest of the thesis's table (Sec. 6.5 check): D(0.75, 0.25, 0.01) = -32.8, -38.9, -1.83, and the slope
    # at c -> 0 is -lr E|grad f|^2 = -0.04 * 4587 (the derivative of f(theta - c lr grad f) at c = 0)
    more = ds.measure.scaled_step_change(h, lambda y, k: -lr * jax.grad(h)(y), samples, [0.75, 0.25, 0.01, 1e-4])
    assert np.all(np.abs(more.mean[:3] - [-32.8, -38.9, -1.83]) < 4 * more.stderr[:3] + 0.05)
    grad_sq = float(jnp.mean(jax.vmap(jax.grad(h))(samples) ** 2))
    assert grad_sq == pytest.approx(4587, rel=2e-3)
    assert more.mean[3] / (1e-4 * lr) == pytest.approx(-grad_sq, rel=1e-3)


def test_scaled_step_from_a_two_cycle_closed_form(x64):
    # lr = 0.03: the symmetric 2-cycle +-u*, sin(u*)/u* = 2/(100 lr) (seed 000 digest Sec. 4.5): a step of c lr from the
    # cycle lowers h = -100 cos exactly when c < 1; Delta(0.5) = -92.5
    lr = 0.03
    h = lambda y: -100 * jnp.cos(y)  # noqa: E731
    u = optimize.brentq(lambda v: np.sin(v) / v - 2 / (100 * lr), 0.5, 2.5)
    samples = jnp.array([u, -u])
    change = ds.measure.scaled_step_change(h, lambda y, k: -lr * jax.grad(h)(y), samples, [0.25, 0.5, 0.99, 1.0, 1.01])
    closed = -100 * np.cos(u - np.array([0.25, 0.5, 0.99, 1.0, 1.01]) * lr * 100 * np.sin(u)) + 100 * np.cos(u)
    np.testing.assert_allclose(change.mean, closed, atol=1e-9)
    assert change.mean[1] == pytest.approx(-92.5, abs=0.05)
    assert np.all(change.mean[:3] < 0) and abs(change.mean[3]) < 1e-9 and change.mean[4] > 0


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


def test_scale_invariant_weights_obey_the_norm_recursion(x64):
    # g_B is orthogonal to every scale-invariant W, so an SGD step with weight decay gamma gives, per layer and
    # exactly, |W'|^2 = (1 - lr gamma)^2 |W|^2 + lr^2 |g_B|^2: the recursion whose fixed point is
    # gamma (2 - lr gamma) E|theta|^2 / lr = E|g_B|^2 (invariant_nn.weight_norm_balance)
    data = ds.problems.load_digits()
    gamma, lr = 1e-2, 0.3
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (16, 16), scale_invariant=True, weight_decay=gamma)
    bound = ds.dynamics.bind(ds.dynamics.sgd(problem, batch_size=8), {"lr": lr})
    state = bound.init(jax.random.key(0))
    for t in range(5):
        key = jax.random.fold_in(jax.random.key(1), t)
        new = bound.step(state, key)
        # the step's own minibatch gradient, without weight decay: g_B = -(W' - (1 - lr gamma) W) / lr
        for name, w in state.params.items():
            g = -(new.params[name] - (1 - lr * gamma) * w) / lr
            assert abs(float(jnp.vdot(g, w))) < 1e-10 * float(jnp.linalg.norm(g) * jnp.linalg.norm(w))
            expected = (1 - lr * gamma) ** 2 * jnp.sum(w**2) + lr**2 * jnp.sum(g**2)
            assert float(jnp.sum(new.params[name] ** 2)) == pytest.approx(float(expected), rel=1e-12)
        state = new


def test_lemma_4_1_cross_entropy_bounds_on_random_logits(x64):
    # seed 000, Lemma 4.1 (digest Sec. 4.3): l(z, y) <= (max z - min z) + log d, and the gradient softmax(z) - e_y
    # has norm <= sqrt 2 (the Lipschitz constant c_l); both nearly reached: the label on the lowest logit with the
    # others tied at the top, and all the mass on one wrong class
    rng = np.random.default_rng(0)
    d = 10
    z = jnp.asarray(rng.standard_normal((20_000, d)) * 10.0 ** rng.uniform(-1, 2, (20_000, 1)))
    y = jnp.asarray(rng.integers(0, d, 20_000))
    loss = jax.vmap(ds.problems.cross_entropy)(z, y)
    grad = jax.vmap(jax.grad(ds.problems.cross_entropy))(z, y)
    assert np.all(np.asarray(loss) <= np.asarray(z.max(1) - z.min(1)) + np.log(d) + 1e-12)
    assert float(jnp.linalg.norm(grad, axis=1).max()) <= np.sqrt(2)
    worst = jnp.zeros(d).at[0].set(-50.0)  # label 0 on the lowest logit, the others tied at 0
    assert float(ds.problems.cross_entropy(worst, 0)) == pytest.approx(50 + np.log(d - 1), rel=1e-12)
    wrong = jnp.zeros(d).at[3].set(60.0)
    assert float(jnp.linalg.norm(jax.grad(ds.problems.cross_entropy)(wrong, 0))) == pytest.approx(np.sqrt(2), rel=1e-12)


def test_corrupt_labels_rate():
    y = np.zeros(20_000, np.int32)
    noisy = ds.problems.corrupt_labels(y, 0.3, 10, seed=1)
    changed = np.mean(noisy != y)
    assert abs(changed - 0.3 * 0.9) < 4 * np.sqrt(0.27 * 0.73 / y.size)


# --------------------------------------------------------------------------- Thm. 4.4: batch norm in the last layer


def test_batch_norm_coordinates_are_at_most_sqrt_m_minus_1(x64):
    # digest Sec. 4.4 (a): |xhat_ik| <= sqrt(m - 1) (the proof of Thm. 4.4 uses sqrt(m)), attained by a batch
    # with one outlier; and the layer is (h - mean) / sqrt(var + eps) against a NumPy computation
    rng = np.random.default_rng(0)
    m = 32
    for heavy in (False, True):
        h = rng.standard_cauchy((m, 50)) if heavy else rng.normal(size=(m, 50))
        xhat = np.asarray(ds.problems.batch_norm(jnp.asarray(h), 1.0, 0.0, eps=0.0))
        assert np.abs(xhat).max() <= np.sqrt(m - 1) * (1 + 1e-12)
        np.testing.assert_allclose(xhat, (h - h.mean(0)) / h.std(0), rtol=1e-10, atol=1e-12)
    outlier = np.zeros((m, 1))
    outlier[7] = 3.0
    xhat = ds.problems.batch_norm(jnp.asarray(outlier), 1.0, 0.0, eps=0.0)
    assert float(xhat[7, 0]) == pytest.approx(np.sqrt(m - 1), rel=1e-12)
    with pytest.raises(ValueError, match="needs a batch"):
        ds.problems.batch_norm(jnp.ones(3), 1.0, 0.0)


def _numpy_bn_mlp_loss(params, x, y, eps):
    h = np.maximum(x @ params["W0"] + params["b0"], 0.0)
    z = h @ params["W1"]
    z = params["a1"] * (z - z.mean(0)) / np.sqrt(z.var(0) + eps) + params["b1"]
    z = z - z.max(1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])


def test_batch_norm_mlp_is_a_batch_coupled_problem(x64):
    data = ds.problems.load_digits()
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (16,), batch_norm="last", batch_norm_eps=1e-3)
    assert problem.batch_coupled and sorted(problem.init(jax.random.key(0), {"weight_decay": 0.0})) == [
        "W0",
        "W1",
        "a1",
        "b0",
        "b1",
    ]
    params = problem.init(jax.random.key(0), {"weight_decay": 0.0})
    params = {k: v + 0.3 * jax.random.normal(jax.random.key(1), v.shape) for k, v in params.items()}
    p_np = {k: np.asarray(v) for k, v in params.items()}
    x, y = data["x"][:40].astype(np.float64), data["y"][:40]
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    # L_B, the loss of the batch with its own statistics, and the objective with the whole set's
    assert float(ds.problems.batch_loss(problem, params, batch, {"weight_decay": 0.0})) == pytest.approx(
        _numpy_bn_mlp_loss(p_np, x, y, 1e-3), rel=1e-10
    )
    full = {"x": jnp.asarray(data["x"], jnp.float64), "y": jnp.asarray(data["y"])}
    assert float(ds.problems.objective(problem, params, full, {"weight_decay": 0.0})) == pytest.approx(
        _numpy_bn_mlp_loss(p_np, data["x"].astype(np.float64), data["y"], 1e-3), rel=1e-10
    )
    # with batch norm after every layer (eps = 0), L_B is invariant to the scale of each W
    every = ds.problems.mlp_classifier(data["x"], data["y"], (16,), batch_norm="all", batch_norm_eps=0.0)
    p_all = every.init(jax.random.key(2), {"weight_decay": 0.0})
    assert sorted(p_all) == ["W0", "W1", "a0", "a1", "b0", "b1"]
    scaled = {**p_all, "W0": 7.0 * p_all["W0"], "W1": 0.2 * p_all["W1"]}
    assert float(ds.problems.batch_loss(every, scaled, batch, {"weight_decay": 0.0})) == pytest.approx(
        float(ds.problems.batch_loss(every, p_all, batch, {"weight_decay": 0.0})), rel=1e-12
    )
    # a batch of two halves is not the mean of the halves: the statistics couple the examples
    halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 20), slice(20, 40))]
    mean_of_halves = np.mean([float(ds.problems.batch_loss(problem, params, b, {"weight_decay": 0.0})) for b in halves])
    assert abs(mean_of_halves - _numpy_bn_mlp_loss(p_np, x, y, 1e-3)) > 1e-3


def test_thm_4_4_gradient_bounds_are_one_and_tight(x64):
    # |dL_B/da_k| = |(1/m) sum_i xhat_ik (p_ik - [y_i = k])| <= (1/m) sqrt(sum xhat^2) sqrt(sum (p - e)^2) <= 1
    # by Cauchy-Schwarz (sum_i xhat_ik^2 <= m); |dL_B/db|_2 <= sqrt 2. The proof of Thm. 4.4 bounds the first by
    # 2 sqrt(m). Random nets and batches stay below 1; a confidently wrong, balanced batch reaches it.
    m, d = 32, 10
    rng = np.random.default_rng(3)
    x = rng.normal(size=(m, d))
    y = rng.integers(0, d, m).astype(np.int32)
    problem = ds.problems.mlp_classifier(x, y, (), n_classes=d, batch_norm="last", batch_norm_eps=0.0)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

    def grads(params):
        return jax.grad(lambda p: ds.problems.batch_loss(problem, p, batch, {"weight_decay": 0.0}))(params)

    worst_a = worst_b = 0.0
    for seed in range(200):
        k = jax.random.split(jax.random.key(seed), 3)
        scale = 10.0 ** rng.uniform(-1, 2)
        params = {
            "W0": jax.random.normal(k[0], (d, d)),
            "a0": scale * jax.random.normal(k[1], (d,)),
            "b0": scale * jax.random.normal(k[2], (d,)),
        }
        g = grads(params)
        worst_a = max(worst_a, float(jnp.abs(g["a0"]).max()))
        worst_b = max(worst_b, float(jnp.linalg.norm(g["b0"])))
    assert worst_a <= 1.0 and worst_b <= np.sqrt(2)
    # half the batch is class 0, and the logit of class 0 is +50 exactly on the other half
    y = np.where(np.arange(m) < m // 2, 0, 1).astype(np.int32)
    x = np.where(np.arange(m)[:, None] < m // 2, -1.0, 1.0) * np.eye(d)[0] + 1e-3 * rng.normal(size=(m, d))
    x[:, 0] = np.where(np.arange(m) < m // 2, -1.0, 1.0)
    problem = ds.problems.mlp_classifier(x, y, (), n_classes=d, batch_norm="last", batch_norm_eps=0.0)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    params = {"W0": jnp.eye(d), "a0": jnp.zeros(d).at[0].set(50.0), "b0": jnp.zeros(d)}
    assert float(grads(params)["a0"][0]) == pytest.approx(1.0, abs=1e-6)


def test_thm_4_4_scale_and_shift_stay_in_their_invariant_box(x64):
    # digest Sec. 4.4 (b): SGD with weight decay gamma and lr <= 1/gamma keeps |a_k| <= G / gamma for any G >= 1 (the
    # gradient bound above): the paper's 2 sqrt(m) / gamma and the tight 1 / gamma; likewise |b_k| <= 1 / gamma, and
    # then L_B <= log d + 2 (sqrt(m - 1) + 1) / gamma. Started on the tight box's corners, 400 steps. The earlier
    # layers are not bounded (|W_1| reaches 1e143 at lr = 1/gamma), as the theorem allows.
    data = ds.problems.load_digits()
    gamma, m = 0.05, 16
    problem = ds.problems.mlp_classifier(
        data["x"], data["y"], (16,), batch_norm="last", batch_norm_eps=0.0, weight_decay=gamma
    )

    def init(key, hp):
        params = problem.init(key, hp)
        ka, kb = jax.random.split(jax.random.fold_in(key, 1))
        params["a1"] = jax.random.rademacher(ka, (10,), jnp.float64) / gamma
        params["b1"] = jax.random.rademacher(kb, (10,), jnp.float64) / gamma
        return params

    def box(p):
        return jnp.maximum(jnp.abs(p["a1"]).max(), jnp.abs(p["b1"]).max()) * gamma

    def data_loss(p, batch):
        return ds.problems.batch_loss(problem, p, batch, {"weight_decay": 0.0})

    order = np.random.default_rng(0).permutation(len(data["y"]))[: 8 * m].reshape(8, m)
    batches = {"x": jnp.asarray(data["x"][order], jnp.float64), "y": jnp.asarray(data["y"][order])}

    res = ds.simulate(
        ds.dynamics.sgd(problem._replace(init=init), batch_size=m),
        grid={"lr": [1.0, 5.0, 1 / gamma, 1.5 / gamma]},
        n_replicas=8,
        n_steps=400,
        record_every=1,
        observables={
            "box": ds.observables.trajectory(box),
            "batch_loss": ds.observables.trajectory(lambda p: jnp.max(jax.vmap(lambda b: data_loss(p, b))(batches))),
        },
    )
    kept = res.isel(lr=slice(0, 3))
    assert float(kept.box.max()) <= 1 + 1e-12
    assert float(kept.batch_loss.max()) <= np.log(10) + 2 * (np.sqrt(m - 1) + 1) / gamma
    # a step shrinks the box by at most the factor 1 - lr gamma ...
    assert np.all(kept.box.isel(time=1).min("replica").values >= 1 - np.array([1.0, 5.0, 1 / gamma]) * gamma - 1e-12)
    # ... and the condition lr <= 1/gamma is needed: at 1.5/gamma, |a'| = |a| / 2 + lr |g| leaves the box
    assert float(res.box.isel(lr=3).max()) > 1.5


def test_thm_4_4_change_of_the_minibatch_loss_vanishes():
    # digest Sec. 4.4 (c): Thm. B.1 with phi = L_B (batch statistics, mean over 4 fixed minibatches), from the
    # default init, for SGD with weight decay on a digits MLP with batch norm last. The running change is the
    # telescoped boundary term plus a martingale (mean within 4 s.e. of the boundary), it shrinks with n, and it
    # stays below Azuma's bound with M the loss bound log d + 2 (sqrt(m - 1) + 1) / gamma.
    data = ds.problems.load_digits()
    gamma, m = 1e-2, 16
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (16,), batch_norm="last", weight_decay=gamma)
    bound = ds.dynamics.bind(ds.dynamics.sgd(problem, batch_size=m), {"lr": 0.1})
    order = np.random.default_rng(0).permutation(len(data["y"]))[: 4 * m].reshape(4, m)
    batches = {"x": jnp.asarray(data["x"][order]), "y": jnp.asarray(data["y"][order])}

    def phi(state):
        losses = jax.vmap(lambda b: ds.problems.batch_loss(problem, state.params, b, {"weight_decay": 0.0}))(batches)
        return jnp.mean(losses)

    vc = ds.measure.vanishing_change(
        bound.step, phi, bound.init(jax.random.key(0)), 0, [50, 200, 800], n_replicas=64, n_fresh=4, burn_in=200
    )
    assert np.all(np.abs(vc.mean - vc.boundary) < 4 * vc.stderr)
    assert np.all(np.diff(vc.quantile) < 0)
    M = np.log(10) + 2 * (np.sqrt(m - 1) + 1) / gamma
    assert np.all(vc.quantile <= 2 * M / vc.times + 2 * M * np.sqrt(2 * np.log(40) / vc.times))
