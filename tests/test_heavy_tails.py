"""Seed 002, ch. 4: scheduled clipping thresholds, projection, weighted iterate averages, Pareto noise."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import import_experiment
from scipy import integrate

import dynsim as ds


def _run_transform(transform, params, grads):
    """Apply ``transform`` to a fixed sequence of gradients, returning the parameters after each step."""
    state = transform.init(params)
    out = []
    for g in grads:
        updates, state = transform.update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.asarray(params))
    return np.array(out)


def test_scheduled_clipping_matches_the_thesis_formulas(x64):
    # x_k = x_{k-1} - eta_k min(1, tau_k / |g|) g (GClip) and x_{k,i} - eta_k clip(g_i, +-tau_k) (CClip),
    # with eta_k = c / (k + 1), tau_k = G k^(1/alpha), k = 1, 2, ... (Thm 4.4.2 / 4.5.1), in NumPy.
    rng = np.random.default_rng(0)
    grads = rng.standard_t(1.5, size=(30, 3)) * 3
    c, G, alpha = 4.0, 2.0, 1.5
    lr, tau = ds.optim.strongly_convex_clip_schedules(c, G, alpha)
    x0 = np.array([1.0, -2.0, 0.5])
    got_g = _run_transform(ds.optim.clipped_sgd(lr, tau), jnp.asarray(x0), [jnp.asarray(g) for g in grads])
    got_c = _run_transform(ds.optim.coordinate_clipped_sgd(lr, tau), jnp.asarray(x0), [jnp.asarray(g) for g in grads])
    want_g, want_c, xg, xc = [], [], x0.copy(), x0.copy()
    for k, g in enumerate(grads, start=1):
        eta, t = c / (k + 1), G * k ** (1 / alpha)
        xg = xg - eta * min(1.0, t / np.linalg.norm(g)) * g
        xc = xc - eta * np.clip(g, -t, t)
        want_g.append(xg)
        want_c.append(xc)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-12)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-12)
    # the clip fired for some steps and not for others, so both branches were checked
    norms = np.linalg.norm(grads, axis=1)
    fired = norms > G * np.arange(1, 31) ** (1 / alpha)
    assert 0 < fired.sum() < len(fired)


def test_a_constant_threshold_is_optax_clipping():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}
    params = jax.tree_util.tree_map(jnp.zeros_like, g)
    for ours, theirs in [
        (ds.optim.clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)),
        (ds.optim.clip_by_global_norm(lambda n: 2.0), optax.clip_by_global_norm(2.0)),
        (ds.optim.clip_by_coordinate(lambda n: 2.0), optax.clip(2.0)),
    ]:
        u1, _ = ours.update(g, ours.init(params), params)
        u2, _ = theirs.update(g, theirs.init(params), params)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)


def test_project_lands_on_the_projection_of_the_step():
    rng = np.random.default_rng(1)
    box = ds.optim.project(lambda p: optax.projections.projection_box(p, -1.0, 1.0))
    opt = optax.chain(optax.sgd(0.7), box)
    params = jnp.asarray(rng.uniform(-1, 1, 50), jnp.float32)
    state = opt.init(params)
    for _ in range(5):
        g = jnp.asarray(rng.standard_normal(50) * 2, jnp.float32)
        updates, state = opt.update(g, state, params)
        new = optax.apply_updates(params, updates)
        want = np.clip(np.asarray(params) - 0.7 * np.asarray(g), -1, 1)
        np.testing.assert_allclose(new, want, atol=2e-7)  # one rounding of P(x + u) - x
        assert np.all(np.abs(np.asarray(new)) <= 1 + 1e-7)
        params = new
    with pytest.raises(TypeError, match="projection"):
        ds.optim.project(1.0)
    with pytest.raises(ValueError, match="parameters"):
        box.update(g, box.init(params))


@pytest.mark.parametrize("power", [1.0, 0.0, 2.5])
def test_iterate_average_is_the_weighted_mean_of_the_recorded_trajectory(x64, power):
    # xbar_t = sum_{j=1}^t j^p theta_{j-1} / sum_j j^p, against the trajectory itself (float64).
    problem = ds.problems.quadratic(np.array([1.0, 0.3]), theta0=[1.0, -2.0])
    dyn = ds.dynamics.sgd(problem, noise=[ds.dynamics.gaussian_noise(0.5)])
    res = ds.simulate(
        dyn,
        grid={"lr": [0.2, 0.9]},
        n_replicas=3,
        n_steps=24,
        record_every=1,
        observables={
            "avg": ds.observables.iterate_average(power=power),
            "f": ds.observables.iterate_average(lambda x: 0.5 * (x[0] ** 2 + 0.3 * x[1] ** 2), power=power),
            "traj": ds.observables.trajectory(),
        },
    )
    traj = res.traj.values  # (lr, replica, time, 2), times 0..24
    steps = res.avg_step.values
    assert list(steps) == list(range(1, 25))
    w = np.arange(1, 25, dtype=float) ** power
    for i, t in enumerate(steps):
        want = np.einsum("j,abjd->abd", w[:t], traj[:, :, :t]) / w[:t].sum()
        np.testing.assert_allclose(res.avg.values[:, :, i], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            res.f.values[:, :, i], 0.5 * (want[..., 0] ** 2 + 0.3 * want[..., 1] ** 2), rtol=1e-10
        )


def test_iterate_average_records_at_record_times_and_the_end():
    problem = ds.problems.quadratic(1.0, theta0=1.0)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.5]},
        n_steps=10,
        record_every=4,
        observables={"avg": ds.observables.iterate_average(lambda x: x[0])},
    )
    assert list(res.avg_step.values) == [4, 8, 10]
    # GD on x^2/2 with lr = 1/2: theta_t = 2^-t; xbar_4 = (1 + 2/2 + 3/4 + 4/8) / 10
    np.testing.assert_allclose(res.avg.values.ravel()[0], (1 + 1 + 0.75 + 0.5) / 10, rtol=1e-6)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.5]},
        n_steps=3,
        observables={"avg": ds.observables.iterate_average(lambda x: x[0], power=0.0)},
    )
    np.testing.assert_allclose(res.avg.values.ravel(), [(1 + 0.5 + 0.25) / 3], rtol=1e-6)


def test_pareto_noise_has_the_lomax_tail_and_moments():
    # P(|xi| > x) = (1 + x)^-nu exactly; E|xi| = 1 / (nu - 1) (finite variance for nu = 3, so a
    # standard error exists); binomial and CLT margins of 4 standard errors.
    n = 400_000
    for nu in (1.5, 3.0):
        noise = ds.dynamics.pareto_noise(1.0, nu)
        xi = noise.apply(jax.random.key(int(nu * 10)), jnp.zeros(n), {"noise": 1.0, "index": nu}, None)
        xi = np.asarray(xi, dtype=float)
        assert abs(np.mean(xi > 0) - 0.5) < 4 * np.sqrt(0.25 / n)
        for x in (0.5, 3.0, 30.0):
            p = (1 + x) ** -nu
            assert abs(np.mean(np.abs(xi) > x) - p) < 4 * np.sqrt(p * (1 - p) / n), (nu, x)
        if nu > 2:
            a = np.abs(xi)
            assert abs(a.mean() - 1 / (nu - 1)) < 4 * a.std() / np.sqrt(n)


def test_pareto_noise_refuses_an_index_whose_cut_leaves_the_dtype():
    # the draws reach 2^(23/nu) - 1 in float32: nu = 0.05 gave 11,746 infinite draws in 1e6 (its law has 1.2% of its
    # mass beyond float32's largest number)
    assert ds.dynamics.pareto_index_limit(np.float32) == 23 / 127
    assert ds.dynamics.pareto_index_limit(np.float64) == 52 / 1023
    for nu in (0.05, 0.18):
        with pytest.raises(ValueError, match=r"index must be >= 23/127 = 0.1811 in float32"):
            ds.dynamics.pareto_noise(1.0, nu)
    noise = ds.dynamics.pareto_noise(1.0, 1.5)
    with pytest.raises(ValueError, match=r"index must be >= 23/127.*got \[0.1\]"):
        noise.check({"noise": 1.0, "index": np.array([1.5, 0.1])})
    # at the limit the largest draw, at V = 2^-23, is 2^127 - 1: finite, and the tail law holds
    nu = 23 / 127
    v = jnp.float32(2.0**-23)
    assert float(v ** (-1 / jnp.float32(nu)) - 1) == pytest.approx(2.0**127, rel=1e-5)
    n = 1_000_000
    noise = ds.dynamics.pareto_noise(1.0, nu)
    xi = np.asarray(noise.apply(jax.random.key(3), jnp.zeros(n), {"noise": 1.0, "index": nu}, None), dtype=float)
    assert np.all(np.isfinite(xi))
    for x in (1.0, 1e10, 1e30):
        p = (1 + x) ** -nu
        assert abs(np.mean(np.abs(xi) > x) - p) < 4 * np.sqrt(p * (1 - p) / n), x


def test_pareto_noise_takes_small_indices_in_float64(x64):
    noise = ds.dynamics.pareto_noise(1.0, 0.06)  # above 52/1023 = 0.0508
    xi = noise.apply(jax.random.key(3), jnp.zeros(100_000), {"noise": 1.0, "index": 0.06}, None)
    assert xi.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(xi)))
    with pytest.raises(ValueError, match=r"index must be >= 52/1023"):
        ds.dynamics.pareto_noise(1.0, 0.05)


@pytest.mark.parametrize("nu,a", [(1.75, 1.5), (3.0, 1.0), (2.5, 0.3)])
def test_pareto_moment_against_quadrature(nu, a):
    want = integrate.quad(lambda y: y**a * nu * (1 + y) ** (-nu - 1), 0, np.inf, limit=200)[0]
    assert math.isclose(ds.dynamics.pareto_moment(nu, a), want, rel_tol=1e-6)
    assert ds.dynamics.pareto_moment(nu, nu) == math.inf


def test_strongly_convex_schedules_use_k_to_the_one_over_alpha():
    lr, tau = ds.optim.strongly_convex_clip_schedules(4.0, 2.0, 1.5)
    n = np.arange(5)
    np.testing.assert_allclose([lr(i) for i in n], 4.0 / (n + 2))  # eta_k = 4 / (k + 1), k = n + 1
    np.testing.assert_allclose([tau(i) for i in n], 2.0 * (n + 1.0) ** (1 / 1.5))  # not k^(alpha - 1)


def test_heavy_tail_bad_input():
    with pytest.raises(ValueError, match="index"):
        ds.dynamics.pareto_noise(1.0, -1.0)
    with pytest.raises(ValueError, match="power"):
        ds.observables.iterate_average(power=float("nan"))
    with pytest.raises(ValueError, match="diagonal"):
        ds.problems.quadratic(np.array([1.0, np.inf]))


def test_rmsprop_is_coordinate_clipping_within_a_factor_two(x64):
    # Thesis ch. 7 with the corrected map: h_Adam / h_clip in [1/2, 1] at every step and
    # coordinate; both ends are approached (so a wrong map, e.g. the thesis's eta = 2 lr / A,
    # whose ratios lie in [1/4, 1/2], fails).
    rng = np.random.default_rng(3)
    lr, b2, eps = 0.01, 0.9, 1e-3
    ours, theirs = ds.optim.rmsprop_as_clip(lr, b2, eps), optax.rmsprop(lr, decay=b2, eps=eps, eps_in_sqrt=False)
    params, ratios = jnp.zeros(20), []
    for scale in 10 ** rng.uniform(-5, 1, size=100):  # the ratio nears 1/2 where eps ~ sqrt(1 - b2)|g|, v ~ 0
        s_ours, s_theirs = ours.init(params), theirs.init(params)
        for g in rng.standard_t(1.5, size=(5, 20)) * scale:
            u_clip, s_ours = ours.update(jnp.asarray(g), s_ours)
            u_adam, s_theirs = theirs.update(jnp.asarray(g), s_theirs)
            ratios.append(np.asarray(u_adam) / np.asarray(u_clip))  # = h_Adam / h_clip
    ratios = np.concatenate(ratios)
    assert np.all(ratios >= 0.5 - 1e-12) and np.all(ratios <= 1 + 1e-12)
    assert ratios.min() < 0.55 and ratios.max() > 0.99


def _least_squares(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    theta = jnp.asarray(rng.standard_normal(d))

    def loss(p, s):
        return 0.5 * (s["x"] @ p - s["y"]) ** 2

    per_example = x * (x @ np.asarray(theta) - y)[:, None]  # grad of each example's loss, exactly
    return loss, theta, {"x": x, "y": y}, per_example


def test_minibatch_noise_of_single_examples_is_one_of_the_exact_values(x64):
    loss, theta, data, g = _least_squares()
    exact = np.linalg.norm(g - g.mean(axis=0), axis=1)
    res = ds.curvature.minibatch_noise(loss, theta, data, batch_size=1, n_batches=200, key=jax.random.key(0))
    np.testing.assert_allclose(float(res.grad_norm), np.linalg.norm(g.mean(axis=0)), rtol=1e-12)
    gaps = np.abs(np.asarray(res.norms)[:, None] - exact[None, :]).min(axis=1)
    assert gaps.max() < 1e-10
    assert len(np.unique(np.round(np.asarray(res.norms), 8))) > 25  # many different examples drawn


def test_minibatch_noise_mean_square_is_the_per_example_variance_over_the_batch_size(x64):
    # Sampling with replacement: E|g_B - grad F|^2 = (1/S)(1/N) sum_i |g_i - grad F|^2, exactly.
    loss, theta, data, g = _least_squares(n=60, d=4, seed=1)
    want = np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)) / 5
    res = ds.curvature.minibatch_noise(
        loss, theta, data, batch_size=5, n_batches=20_000, key=jax.random.key(2), chunk=64
    )
    sq = np.asarray(res.norms) ** 2
    assert res.norms.shape == (20_000,)
    assert abs(sq.mean() - want) < 4 * sq.std() / np.sqrt(sq.size)


def test_zipf_markov_tokens_follow_their_laws():
    # The first token is drawn from the unigram Zipf law p(j) = j^-s / H: a chi-square-free check of
    # the most frequent ranks at 4 binomial standard errors; the chain has the stated shape and range.
    n, vocab, s = 200_000, 50, 1.1
    tokens = ds.problems.zipf_markov_tokens(n, 3, vocab, exponent=s, seed=0)
    assert tokens.shape == (n, 3) and tokens.dtype == np.int32 and tokens.min() >= 0 and tokens.max() < vocab
    p = np.arange(1, vocab + 1) ** -s
    p /= p.sum()
    freq = np.bincount(tokens[:, 0], minlength=vocab) / n
    for j in (0, 1, 5, 49):
        assert abs(freq[j] - p[j]) < 4 * np.sqrt(p[j] * (1 - p[j]) / n), j
    # with context = 0 every position is unigram; with context = 1 the next token depends on the last
    independent = ds.problems.zipf_markov_tokens(n, 2, vocab, exponent=s, context=0.0, seed=1)
    assert abs(np.mean(independent[:, 1] == 0) - p[0]) < 4 * np.sqrt(p[0] * (1 - p[0]) / n)
    chained = ds.problems.zipf_markov_tokens(n, 2, vocab, exponent=s, context=1.0, seed=2)
    after0 = chained[chained[:, 0] == 0, 1]  # the successors of token 0 follow Zipf under their own ranking
    top = np.sort(np.bincount(after0, minlength=vocab))[::-1] / after0.size
    m = after0.size
    for rank in (0, 1, 2):
        assert abs(top[rank] - p[rank]) < 4 * np.sqrt(p[rank] * (1 - p[rank]) / m) + 2 / m, rank


def test_sequence_classifier_runs_with_and_without_attention():
    tokens = ds.problems.zipf_markov_tokens(64, 9, 20, seed=0)
    for x in (tokens[:, :-1], ds.problems.gaussian_inputs(64, 8, 16)):
        for attention in (True, False):
            problem = ds.problems.sequence_classifier(x, tokens[:, -1], attention=attention, width=16, heads=2)
            params = problem.init(jax.random.key(0), {})
            value = ds.problems.objective(problem, params, problem.dataset, {})
            assert np.isfinite(value) and 1.0 < float(value) < 10.0  # near log(20) = 3.0 at init
            assert ("attention" in str(params)) == attention
    with pytest.raises(ValueError, match="width"):
        ds.problems.sequence_classifier(ds.problems.gaussian_inputs(8, 4, 12), tokens[:8, -1], width=16)
    with pytest.raises(ValueError, match="multiple of heads"):
        ds.problems.sequence_classifier(tokens[:, :-1], tokens[:, -1], width=18, heads=4)


def test_nonstationary_experiment_draws_noise_of_the_stated_scale():
    # One SGD step of the experiment's hand-built dynamics, x1 = x0 - lr (x0 + sigma_t xi): the median of
    # |xi| = |x0 - lr x0 - x1| / (lr sigma_t) is 2^(1/nu) - 1 (Lomax), at t = 0 and t = 450 (sigma = 10, 1).
    exp = import_experiment("nonstationary_noise")
    dyn = exp.nonstationary_dynamics(lambda lr: optax.sgd(lr))
    lr, n = 0.5, 20_000
    keys = jax.random.split(jax.random.key(0), n)
    for t in (0, 450):
        state0 = dyn.init(keys[0], {"lr": lr})._replace(t=jnp.int32(t))
        x1 = jax.vmap(lambda k: dyn.step(state0, k, {"lr": lr}).x)(keys)
        xi = np.abs(np.asarray(state0.x - lr * state0.x - x1, dtype=float)).ravel() / (lr * exp.noise_scale(t))
        p_above = np.mean(xi > 2 ** (1 / exp.NU) - 1)
        assert abs(p_above - 0.5) < 4 * np.sqrt(0.25 / xi.size), (t, p_above)


@pytest.mark.parametrize(
    "alpha,eps,gamma,p0,p1,moment",
    [(1.5, 0.00625, 6.25e-4, 1.5625e-5, 7.8125e-6, 0.71), (2.0, 1.976e-3, 7.906e-3, 6.25e-5, 3.125e-5, 0.50)],
)
def test_rare_jump_oracle_constants_and_moments(alpha, eps, gamma, p0, p1, moment):
    # Seed 002, Thm 4.4.3's instance at k = 1000 (the digest's table): E g = x - b exactly, and
    # sup_{x in [0, 1/2]} E|g|^alpha <= 1 (0.71 and 0.50 at nu = 0).
    c0, c1 = ds.problems.rare_jump_constants(alpha, 1000, 0), ds.problems.rare_jump_constants(alpha, 1000, 1)
    assert c0.eps == pytest.approx(eps, rel=1e-3) and c0.gamma == pytest.approx(gamma, rel=1e-3)
    assert c0.p == pytest.approx(p0, rel=1e-9) and c1.p == pytest.approx(p1, rel=1e-9)
    x = np.linspace(0, 0.5, 2001)
    for c in (c0, c1):
        assert c.p / (2 * c.gamma) == pytest.approx(c.b, rel=1e-12)  # E g = x - p/(2 gamma) = x - b
        m = c.p * np.abs(x - 1 / (2 * c.gamma)) ** alpha + (1 - c.p) * np.abs(x) ** alpha
        assert m.max() <= 1
    m0 = c0.p * np.abs(x - 1 / (2 * c0.gamma)) ** alpha + (1 - c0.p) * np.abs(x) ** alpha
    assert m0.max() == pytest.approx(moment, abs=0.01)  # the digest's value is for nu = 0, the larger p


def test_rare_jump_oracle_gradients_and_the_lower_bound(x64):
    # The sampled gradient has mean x - b (4 standard errors over 4e5 draws); and proj-GClip with Thm 4.4.2's
    # schedules, over both coins, stays above Thm 4.4.3's bound eps^2 / 64 after k = 1000 steps.
    alpha, k = 1.5, 1000
    problem = ds.problems.rare_jump_oracle(alpha, k, 0)
    c = ds.problems.rare_jump_constants(alpha, k, 0)
    keys = jax.random.split(jax.random.key(0), 400_000)
    g = jax.vmap(lambda kk: jax.grad(lambda w: problem.loss(w, problem.sample(kk), {}))(jnp.array([0.25]))[0])(keys)
    g = np.asarray(g)
    assert abs(g.mean() - (0.25 - c.b)) < 4 * g.std() / np.sqrt(g.size)

    def proj_gclip(learning_rate, bound, alpha):
        lr, tau = ds.optim.strongly_convex_clip_schedules(learning_rate, bound, alpha)
        box = ds.optim.project(lambda p: optax.projections.projection_box(p, 0.0, 0.5))
        return optax.chain(ds.optim.clipped_sgd(lr, tau), box)

    errors = []
    for nu in (0, 1):
        prob = ds.problems.rare_jump_oracle(alpha, k, nu)
        b = ds.problems.rare_jump_constants(alpha, k, nu).b
        res = ds.simulate(
            ds.dynamics.from_optax(prob, proj_gclip, batch_size=1),
            grid={"lr": [4.0], "bound": [1.0], "alpha": [alpha]},
            n_replicas=2000,
            n_steps=k,
            observables={"f": ds.observables.iterate_average(lambda x: 0.5 * (x[0] - b) ** 2)},
        )
        errors.append(float(res.f.mean()))
    assert np.mean(errors) >= c.eps**2 / 64
