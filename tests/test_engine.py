"""dynsim.simulate: known answers, chunk invariance, independence, divergence, recompilation."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsim as ds
from dynsim import prng
from dynsim.dynamics import Dynamics

obs = ds.observables


def _sampled_indices(seed, cell, replica, n_steps, batch_size, n_data):
    """The minibatch indices of SGD (no noise): drawn from step key t of trajectory (cell, replica)."""
    root = prng.key(seed)
    _, run_key = prng.init_and_run_keys(prng.trajectory_key(root, cell, replica))
    return np.stack(
        [np.asarray(prng.uniform_index(prng.step_key(run_key, t), (batch_size,), n_data)) for t in range(n_steps)]
    )


@pytest.mark.parametrize("batch_size", [1, 3])
def test_sgd_on_interpolating_regression_is_the_product(x64, batch_size):
    # w_T - w* = (w_0 - w*) prod_t (1 - lr mean_{j in B_t} x_j^2)   (seed 004, eqs. 6, 16).
    n_data, n_steps, lrs, seed = 10, 60, [0.05, 0.4, 1.3], 4
    problem = ds.problems.linear_regression_1d(n_data=n_data, w0=1.0)
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=batch_size),
        grid={"lr": lrs},
        n_replicas=3,
        n_steps=n_steps,
        seed=seed,
        observables={"w": obs.final_state()},
    )
    x = np.asarray(ds.problems.draw_dataset(problem, prng.data_key(prng.key(seed)), n_data)["x"])
    for c, lr in enumerate(lrs):
        for r in range(3):
            idx = _sampled_indices(seed, c, r, n_steps, batch_size, n_data)
            a = lr * np.mean(x[idx] ** 2, axis=1)
            expected = np.prod(1 - a)
            got = float(res.w.sel(lr=lr, replica=r))
            # First-order rounding bound: step t computes w - lr mean_j (w x_j) x_j with
            # S + 3 roundings, and the subtraction amplifies them by (1 + a_t)/|1 - a_t|;
            # the reference product rounds as often. Summed over the steps:
            eps = np.finfo(np.float64).eps
            rel = np.sum((batch_size + 5) * eps * (1 + a) / np.abs(1 - a))
            assert got == pytest.approx(expected, rel=rel, abs=0)


def _saddle_run(chunk_size=None, memory_budget=None, seed=0):
    problem = ds.problems.rank1_saddle(n_data=8, width=2)
    return ds.simulate(
        _saddle_run.dyn,
        grid={"lr": np.linspace(0.1, 1.5, 4), "mu": [0.1, 0.6]},
        n_replicas=5,
        n_steps=40,
        record_every=7,
        seed=seed,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        observables={
            "logdist": obs.log_distance(problem.fixed_point),
            "avg": obs.time_average(lambda p: p["w"][0] * p["u"][1], n_batches=4),
            "state": obs.final_state(),
            "div": obs.diverged(bound=1e6),
        },
    )


_saddle_run.dyn = ds.dynamics.sgd(ds.problems.rank1_saddle(n_data=8, width=2), batch_size=2)


def test_chunk_size_invariance_one_vs_seven_chunks():
    one = _saddle_run(chunk_size=40)
    seven = _saddle_run(chunk_size=6)  # 40 trajectories -> 7 chunks, the last one padded
    xr.testing.assert_identical(one.drop_attrs(), seven.drop_attrs())
    for name in one.data_vars:
        np.testing.assert_array_equal(one[name].values, seven[name].values)


def test_memory_budget_chunks_and_changes_nothing():
    auto = _saddle_run()
    tiny = _saddle_run(memory_budget=20_000)
    xr.testing.assert_identical(auto.drop_attrs(), tiny.drop_attrs())


@settings(max_examples=4, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=45))
def test_chunk_size_invariance_property(chunk):
    xr.testing.assert_identical(_saddle_run(chunk_size=40).drop_attrs(), _saddle_run(chunk_size=chunk).drop_attrs())


def test_chunk_size_invariance_with_fresh_normals_and_logs():
    """Fresh Gaussian samples (erfinv) and log-growth (log): XLA's vector code for these must not
    depend on how many trajectories a chunk holds (it did, by up to 158 ulp, with JAX 0.7 and 0.8)."""
    dyn = ds.dynamics.saddle_modes(ds.problems.rank1_saddle())

    def run(chunk_size):
        return ds.simulate(
            dyn,
            grid={"lr": np.linspace(0.05, 3.0, 6), "mu": np.linspace(0.0, 1.0, 4)},
            n_replicas=16,
            n_steps=50,
            chunk_size=chunk_size,
            progress=False,
            observables={"modes": obs.final_state()},
        )

    whole = run(384)
    for chunk_size in (8, 16, 24, 64):
        xr.testing.assert_identical(whole.drop_attrs(), run(chunk_size).drop_attrs())


def test_blocks_of_steps_change_nothing(monkeypatch):
    """Steps run in blocks that double while calls are fast; results are those of one step per call."""
    from dynsim import engine

    grown = _saddle_run(chunk_size=40)  # fast calls: blocks of 1, 2, 4, ... steps
    monkeypatch.setattr(engine, "_MIN_CALL_SECONDS", 0.0)
    monkeypatch.setattr(engine, "PROGRESS_BLOCKS", 10**9)  # one step per call throughout
    single = _saddle_run(chunk_size=40)
    for name in grown.data_vars:
        np.testing.assert_array_equal(grown[name].values, single[name].values)


def _normal_draws():
    """A hand-built dynamics whose state is a fresh N(0, 1) draw every step."""
    return Dynamics(
        init=lambda key, hp: jax.random.normal(key),
        step=lambda state, key, hp: jax.random.normal(key),
    )


def test_replica_and_cell_streams_are_independent():
    n = 2000
    res = ds.simulate(
        _normal_draws(),
        grid={"cell": [0.0, 1.0]},
        n_replicas=3,
        n_steps=n,
        record_every=1,
        observables={"x": obs.trajectory()},
    )
    series = res.x.values[:, :, 1:].reshape(6, n)
    corr = np.corrcoef(series)
    off_diagonal = corr[~np.eye(6, dtype=bool)]
    assert np.all(np.abs(off_diagonal) < 4 / np.sqrt(n))
    for s in series:  # within a stream, consecutive steps are independent too
        assert abs(np.corrcoef(s[1:], s[:-1])[0, 1]) < 4 / np.sqrt(n)
        assert abs(s.mean()) < 4 / np.sqrt(n)


def test_far_above_two_over_h_everything_diverges_without_nan():
    problem = ds.problems.linear_regression_1d(n_data=20)
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [200.0, 1000.0]},  # 2/h = 2
        n_replicas=16,
        n_steps=300,
        record_every=10,
        observables={
            "div": obs.diverged(),
            "logdist": obs.log_distance(problem.fixed_point),
            "loss": obs.loss(),
            "avg": obs.time_average(lambda w: w),
            "w": obs.final_state(),
        },
    )
    assert bool(res.div.all())
    assert int(res.div_step.min()) >= 1 and int(res.div_step.max()) <= 300
    for name in res.data_vars:
        if name != "avg_batch_correlation":
            assert not np.any(np.isnan(res[name].values)), name
    assert np.all(np.isnan(res.avg_batch_correlation.values))  # a frozen trajectory's batch means are no series
    # frozen at the last finite state: w stays finite
    assert np.all(np.isfinite(res.w.values))


def test_a_large_state_diverges_at_the_exact_step_and_keeps_its_last_finite_value():
    """A 12 x 12 matrix (checked by a dot product with zeros, not elementwise) doubling every
    step: its one entry 2^10 overflows float32 (2^128) at step 118; a NaN written into another
    cell's matrix at step ``nan_at`` stops it there; halving never diverges."""

    def init(key, hp):
        m = jnp.ones((12, 12), jnp.float32).at[3, 4].set(2.0**10)
        return {"m": m, "t": jnp.zeros((), jnp.int32)}

    def step(state, key, hp):
        t = state["t"] + 1
        m = state["m"] * hp["factor"]
        m = m.at[0, 0].set(jnp.where(t == hp["nan_at"], jnp.nan, m[0, 0]))
        return {"m": m, "t": t}

    res = ds.simulate(
        Dynamics(init=init, step=step),
        grid={"factor": [2.0, 0.5], "nan_at": [0.0, 37.0]},
        n_steps=200,
        observables={"div": obs.diverged(), "state": obs.final_state()},
    )
    assert res.div_step.sel(factor=2.0, nan_at=0.0).item() == 118
    assert res.div_step.sel(factor=0.5, nan_at=37.0).item() == 37
    assert res.div_step.sel(factor=2.0, nan_at=37.0).item() == 37
    assert not res.div.sel(factor=0.5, nan_at=0.0).item()
    last = res.state_m.sel(factor=2.0, nan_at=0.0).squeeze().values  # frozen at step 117
    assert last[3, 4] == 2.0**127 and last[0, 0] == 2.0**117
    assert res.state_m.sel(factor=0.5, nan_at=37.0).squeeze().values[0, 0] == 0.5**36


def test_gd_on_quadratic_diverges_iff_lr_above_two_over_lambda_max():
    P = np.diag([1.0, 4.0])  # 2 / lambda_max = 0.5
    problem = ds.problems.quadratic(P, theta0=[1.0, 1.0])
    lrs = [0.5 * (1 - 0.02), 0.5 * (1 + 0.02)]
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": lrs},
        n_steps=3000,
        observables={"div": obs.diverged(bound=1e3), "conv": obs.converged(np.zeros(2), 1e-6)},
    )
    below, above = res.sel(lr=lrs[0]), res.sel(lr=lrs[1])
    assert below.conv.item() and not below.div.item()
    assert above.div.item() and not above.conv.item()
    # |1 - lr * 4|^t first exceeds 1e3 at t = ceil(log(1e3) / log 1.04)
    assert above.div_step.item() == int(np.ceil(np.log(1e3) / np.log(1 + 4 * 0.5 * 0.02)))


def test_converged_step_known_answer():
    # theta_t = 2^-t: within 1e-3 from t = 10 on (2^-10 = 9.8e-4).
    problem = ds.problems.quadratic(1.0, theta0=1.0)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.5]},
        n_steps=30,
        observables={"conv": obs.converged(np.zeros(1), 1e-3)},
    )
    assert res.conv.item() and res.conv_step.item() == 10


def test_no_recompilation_across_50_learning_rates():
    problem = ds.problems.linear_regression_1d(n_data=10)
    base = ds.dynamics.sgd(problem)
    counted = base._replace(step=chex.assert_max_traces(base.step, n=1))
    observables = {"w": obs.final_state()}
    for lr in np.linspace(0.01, 1.0, 50):
        ds.simulate(counted, grid={"lr": [lr]}, n_replicas=4, n_steps=20, observables=observables)
    # one grid of 50 values in one call: still the same single compilation
    ds.simulate(
        counted,
        grid={"lr": np.linspace(0.01, 1.0, 50)},
        n_replicas=4,
        n_steps=20,
        observables=observables,
        chunk_size=4,
    )


def test_static_axis_compiles_once_per_value():
    problem = ds.problems.linear_regression_1d(n_data=10)
    base = ds.dynamics.sgd(problem)
    counted = base._replace(step=chex.assert_max_traces(base.step, n=3))
    res = ds.simulate(
        counted,
        grid={"lr": [0.1, 0.2], "batch_size": [1, 2, 5]},
        n_replicas=2,
        n_steps=10,
        observables={"w": obs.final_state()},
    )
    assert res.w.dims == ("lr", "batch_size", "replica")
    ds.simulate(
        counted,
        grid={"lr": [0.3], "batch_size": [1, 2, 5]},
        n_replicas=2,
        n_steps=10,
        observables={"w": obs.final_state()},
    )


def test_record_times_and_coordinates():
    problem = ds.problems.quadratic(1.0, theta0=1.0)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.5]},
        n_steps=23,
        record_every=5,
        observables={"ld": obs.log_distance(np.zeros(1)), "loss": obs.loss()},
    )
    np.testing.assert_array_equal(res.time.values, [0, 5, 10, 15, 20, 23])
    # theta_t = 2^-t exactly: log|theta_t|^2 = -2 t log 2, loss = 2^(-2t) / 2
    np.testing.assert_allclose(res.ld.values[0, 0], -2 * res.time.values * np.log(2), rtol=1e-6)
    np.testing.assert_allclose(res.loss.values[0, 0], 0.5 * 4.0 ** (-res.time.values), rtol=1e-6)
    cfg = ds.io.config(res)
    assert cfg["n_steps"] == 23 and cfg["record_every"] == 5 and cfg["grid"] == {"lr": [0.5]}
    assert res.attrs["dynsim_version"] == ds.__version__ and res.attrs["seed"] == 0


def test_shared_dataset_serves_every_cell_and_per_replica_redraws():
    shared = ds.problems.linear_regression_1d(n_data=6, noise_std=0.5)
    own = shared._replace(per_replica_data=True)
    kw = dict(grid={"lr": [0.1, 0.2]}, n_replicas=3, n_steps=50, observables={"w": obs.final_state()})
    # GD from the same w_0 is deterministic given the data: replicas agree iff they share it
    same = ds.simulate(ds.dynamics.gd(shared), **kw)
    differ = ds.simulate(ds.dynamics.gd(own), **kw)
    assert np.all(same.w.std("replica") == 0)
    assert np.all(differ.w.std("replica") > 0)
    # the shared dataset is the one bind() gives, and it is the same for every mu
    saddle = ds.dynamics.sgd(ds.problems.rank1_saddle(n_data=5))
    d1 = ds.dynamics.bind(saddle, {"lr": 0.1, "mu": 0.1}, seed=3).hp["data"]
    d2 = ds.dynamics.bind(saddle, {"lr": 0.1, "mu": 0.9}, seed=3).hp["data"]
    np.testing.assert_array_equal(d1["x"], d2["x"])


def test_sgd_equals_optax_sgd_bitwise():
    import optax

    problem = ds.problems.rank1_saddle(n_data=12, width=3)
    kw = dict(
        grid={"lr": [0.05, 0.5], "mu": [0.2, 0.7]}, n_replicas=4, n_steps=50, observables={"s": obs.final_state()}
    )
    ours = ds.simulate(ds.dynamics.sgd(problem, batch_size=2), **kw)
    theirs = ds.simulate(ds.dynamics.from_optax(problem, optax.sgd, batch_size=2), **kw)
    for name in ours.data_vars:
        np.testing.assert_array_equal(ours[name].values, theirs[name].values)
    # and the minibatch loss each keeps in its state when asked
    kw["observables"] = {"b": obs.Observable("b", record=lambda v: v.state.batch_loss)}
    ours = ds.simulate(ds.dynamics.sgd(problem, batch_size=2, track_batch_loss=True), **kw)
    theirs = ds.simulate(ds.dynamics.from_optax(problem, optax.sgd, batch_size=2, track_batch_loss=True), **kw)
    np.testing.assert_array_equal(ours.b.values, theirs.b.values)


def test_adam_first_step_known_answer(x64):
    # Adam's first step: m_hat = g, v_hat = g^2, so theta_1 = theta_0 - lr g / (|g| + eps).
    import optax

    problem = ds.problems.quadratic(np.diag([1.0, 3.0]), theta0=[2.0, -1.0])
    dyn = ds.dynamics.from_optax(problem, optax.adam, batch_size=None)
    counted = dyn._replace(step=chex.assert_max_traces(dyn.step, n=1))
    lrs = [0.01, 0.1, 0.3]
    res = ds.simulate(counted, grid={"lr": lrs, "b1": [0.9, 0.5]}, n_steps=1, observables={"s": obs.final_state()})
    g = np.array([2.0, -3.0])
    for lr in lrs:
        expected = np.array([2.0, -1.0]) - lr * g / (np.abs(g) + 1e-8)
        np.testing.assert_allclose(res.s.sel(lr=lr).values[0, 0], expected, rtol=1e-12)


def test_histogram_matches_numpy_on_the_recorded_trajectory():
    bins = np.linspace(-2, 2, 9)
    res = ds.simulate(
        _normal_draws(),
        n_replicas=4,
        n_steps=500,
        record_every=1,
        observables={"x": obs.trajectory(), "h": obs.histogram(lambda x: x, bins, discard=100)},
    )
    for r in range(4):
        values = res.x.values[r, 101:]
        counts, _ = np.histogram(values[(values >= -2) & (values < 2)], bins)
        np.testing.assert_array_equal(res.h.values[r], counts)
        assert int(res.h_underflow[r]) == np.sum(values < -2)
        assert int(res.h_overflow[r]) == np.sum(values >= 2)
    np.testing.assert_allclose(res.h_bin.values, 0.5 * (bins[1:] + bins[:-1]))


def test_histogram_bins_float32_values_as_float64_would():
    # float32(0.7) = 0.69999999 lies in [0.1, 0.7); comparing against the edge rounded to float32
    # (0.7 -> 0.69999999) put it in [0.7, 2). Edges 1 and 1 + 1e-8 coincide in float32 but must not merge.
    const = Dynamics(init=lambda key, hp: jnp.float32(0.7), step=lambda x, key, hp: x)
    res = ds.simulate(const, n_steps=5, observables={"h": obs.histogram(lambda x: x, [-3.0, 0.1, 0.7, 2.0])})
    np.testing.assert_array_equal(res.h.values[0], np.histogram(np.float32(0.7), [-3.0, 0.1, 0.7, 2.0])[0] * 5)
    one = Dynamics(init=lambda key, hp: jnp.float32(1.0), step=lambda x, key, hp: x)
    res = ds.simulate(one, n_steps=4, observables={"h": obs.histogram(lambda x: x, [1.0, 1.0 + 1e-8, 2.0])})
    np.testing.assert_array_equal(res.h.values[0], [4, 0])


def test_indicators_and_counts_are_binned_and_averaged_as_numbers():
    # a boolean fn (an indicator) and an integer fn (a count) against NumPy on the recorded trajectory
    res = ds.simulate(
        _normal_draws(),
        n_replicas=3,
        n_steps=64,
        record_every=1,
        observables={
            "x": obs.trajectory(),
            "h": obs.histogram(lambda x: x > 0, [0, 1, 2]),
            "c": obs.histogram(lambda x: (x > 0).astype(jnp.int32) + (x > 1), [0, 1, 2, 3]),
            "hh": obs.histogram2d(lambda x: jnp.stack([x > 0, x > 1]), [0, 1, 2], [0, 1, 2]),
            "share": obs.time_average(lambda x: x > 0, n_batches=4),
        },
    )
    for r in range(3):
        x = res.x.values[r, 1:]
        np.testing.assert_array_equal(res.h.values[r], np.histogram((x > 0).astype(int), [0, 1, 2])[0])
        np.testing.assert_array_equal(res.c.values[r], np.histogram((x > 0).astype(int) + (x > 1), [0, 1, 2, 3])[0])
        np.testing.assert_array_equal(res.hh.values[r], np.histogram2d(x > 0, x > 1, [[0, 1, 2], [0, 1, 2]])[0])
        assert int(res.h_overflow[r]) == 0 and float(res.share[r]) == pytest.approx(np.mean(x > 0), abs=1e-6)


def test_time_average_and_batch_means_stderr_on_iid_draws():
    # iid N(0,1): the time average over T steps is N(0, 1/T); the batch-means stderr
    # estimates 1/sqrt(T) (its mean over R replicas within 4 of its own standard errors).
    n_steps, reps = 1024, 400
    res = ds.simulate(
        _normal_draws(),
        n_replicas=reps,
        n_steps=n_steps,
        observables={"m": obs.time_average(lambda x: x, n_batches=16)},
    )
    m, se = res.m.values, res.m_stderr.values
    target = 1 / np.sqrt(n_steps)
    assert abs(m.mean()) < 4 * target / np.sqrt(reps)
    assert abs(m.std() - target) < 4 * target / np.sqrt(2 * reps)
    assert abs(se.mean() - target) < 4 * se.std() / np.sqrt(reps)


def test_time_average_warns_when_batches_are_shorter_than_the_correlation_time():
    # x' = a x + z with a = 0.99: x^2 is correlated over ~100 steps, batches of 1000 / 32 = 31 steps
    # are too short and the stderr several times too small (coverage of +-2 stderr: 60%); with
    # 16 batches of 3125 steps the warning stays silent.
    a = 0.99
    ar1 = Dynamics(
        init=lambda key, hp: jax.random.normal(key) / np.sqrt(1 - a * a),
        step=lambda x, key, hp: a * x + jax.random.normal(key),
    )
    with pytest.warns(RuntimeWarning, match=r"time_average 'm' \(31-step batches\): consecutive batch means"):
        ds.simulate(ar1, n_replicas=64, n_steps=1000, observables={"m": obs.time_average(lambda x: x**2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.simulate(
            ar1, n_replicas=64, n_steps=50_000, observables={"m": obs.time_average(lambda x: x**2, n_batches=16)}
        )


def test_time_average_warns_of_one_correlated_cell_among_many():
    # x' = a x + z with a = 0.999 (correlation time ~2000 steps) in 3125-step batches: r = 0.15 in that cell,
    # the stderr too small (coverage of +-2 stderr: 88%). Pooled with four cells of a ~ 0 (r = -1/32), the mean
    # r over the grid is 0.01 and a grid-wide test stays silent; the test is per cell.
    ar1 = Dynamics(
        init=lambda key, hp: jax.random.normal(key) / jnp.sqrt(1 - hp["a"] ** 2),
        step=lambda x, key, hp: hp["a"] * x + jax.random.normal(key),
    )
    grid = {"a": [0.0, 1e-6, 2e-6, 3e-6, 0.999]}  # four independent cells (a grid holds distinct values)
    with pytest.warns(
        RuntimeWarning,
        match=r"correlated \(lag-1 autocorrelation 0.1\d over 128 series; in 1 of 5 cells, the worst \(a = 0.999\)",
    ):
        ds.simulate(ar1, grid, n_replicas=128, n_steps=100_000, observables={"m": obs.time_average(lambda x: x)})


def test_time_average_warns_once_per_run_over_all_chunks():
    # the correlated cell (a = 0.99, r ~ 0.5 in 62-step batches) among 12 independent ones, in chunks of 8
    # trajectories: one warning for the run, naming the cell by its coordinates, pooled over the run's 13
    # cells (not one warning per chunk at a per-chunk level). Each trajectory's r is an output: near the
    # independent value -1/32 where a ~ 0 (its sd over 64 series is about 0.17 / 8).
    ar1 = Dynamics(
        init=lambda key, hp: jax.random.normal(key) / jnp.sqrt(1 - hp["a"] ** 2),
        step=lambda x, key, hp: hp["a"] * x + jax.random.normal(key),
    )
    grid = {"a": [*(1e-6 * np.arange(12)), 0.99], "b": [1.0]}
    observables = {"m": obs.time_average(lambda x: x)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ds.simulate(ar1, grid, n_replicas=64, n_steps=2000, chunk_size=8, observables=observables)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "in 1 of 13 cells, the worst (a = 0.99, b = 1) shown" in messages[0]
    assert caught[0].filename == __file__  # at the caller's line
    r = res.m_batch_correlation
    assert r.dims == ("a", "b", "replica")
    independent = r.isel(a=slice(0, 12)).values
    assert abs(independent.mean() + 1 / 32) < 4 * independent.std() / np.sqrt(independent.size)
    assert float(r.isel(a=12).mean()) > 0.3


def test_correlation_warning_over_many_cells_keeps_one_cells_false_alarm_rate():
    # 25,000 cells of 4 series of 32 independent batch means: at three standard errors per cell about 30 cells
    # would be flagged by chance (24 with this seed); at the Bonferroni level (5.0) none is, while one cell of
    # 400 AR(1) series (rho = 0.5: r = 0.4) is
    rng = np.random.default_rng(0)
    cells = np.arange(100_000) // 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not obs.warn_if_correlated(rng.standard_normal((100_000, 32)), 1, "iid", groups=cells)
    ar = np.zeros((400, 32))
    for j in range(1, 32):
        ar[:, j] = 0.5 * ar[:, j - 1] + rng.standard_normal(400)
    means = np.concatenate([rng.standard_normal((100_000, 32)), ar])
    with pytest.warns(RuntimeWarning, match=r"0.4\d over 400 series; in 1 of 25001 cells"):
        obs.warn_if_correlated(means, 1, "one cell", groups=np.r_[cells, np.full(400, -1)])


def test_time_average_known_value_and_discard():
    # theta_t = 2^-t: (1/T) sum_{t>d} theta_t^2 = (1/T) sum 4^-t
    problem = ds.problems.quadratic(1.0, theta0=1.0)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.5]},
        n_steps=40,
        observables={"a": obs.time_average(lambda th: th[0] ** 2, n_batches=4, discard=2)},
    )
    t = np.arange(3, 41)
    assert res.a.item() == pytest.approx(np.mean(4.0**-t), rel=1e-5)


def test_log_distance_survives_underflow_of_squares():
    tiny = jnp.array([1e-30, -2e-30], jnp.float32)  # squares underflow in float32
    assert float(obs.log_norm_squared(tiny)) == pytest.approx(np.log(5e-60), rel=1e-6)
    assert float(obs.log_norm_squared(jnp.zeros(3))) == -np.inf


@pytest.mark.parametrize("size", [1e-300, 1e-100, 3.0, 1e100, 1e300])
def test_log_distance_over_the_float64_range(x64, size):
    x = jnp.array([size, -size, 0.0])
    assert x.dtype == jnp.float64
    assert float(jax.jit(obs.log_norm_squared)(x)) == pytest.approx(np.log(2) + 2 * np.log(size), rel=1e-12)


@pytest.mark.parametrize("top", [1e38, 3.4e38])
def test_log_distance_near_the_top_of_float32(top):
    # 1/max|x| is subnormal above 8.5e37 and flushed to zero on CPU: a scaling by 1/m would read log(0)
    big = jnp.array([top, -1.0, 0.5 * top], jnp.float32)
    exact = np.log(1.25 * np.float64(np.float32(top)) ** 2)
    assert float(obs.log_norm_squared(big)) == pytest.approx(exact, rel=1e-6)
    assert float(jax.jit(obs.log_norm_squared)(big)) == pytest.approx(exact, rel=1e-6)
    # x_t = (1.5^t, 1) recorded every step until it leaves float32 at t = 219: log(1.5^2t + 1), never -inf
    dyn = ds.dynamics.Dynamics(lambda key, hp: jnp.ones(2), lambda x, key, hp: x * jnp.array([1.5, 1.0]))
    res = ds.simulate(
        dyn, grid={"n": [0]}, n_steps=218, record_every=1, observables={"ld": obs.log_distance(jnp.zeros(2))}
    )
    t = res.time.values
    np.testing.assert_allclose(res.ld.squeeze().values, np.log(1.5 ** (2.0 * t) + 1), rtol=1e-6)


def test_netcdf_round_trip(tmp_path):
    res = _saddle_run()
    path = tmp_path / "run.nc"
    ds.io.save(res, path)
    back = ds.io.load(path)
    xr.testing.assert_identical(res, back)
    assert back.div.dtype == bool
    assert ds.io.config(back) == ds.io.config(res)
    # simulate(path=...) writes the same file content
    res2 = ds.simulate(
        _saddle_run.dyn,
        grid={"lr": [0.3]},
        n_steps=5,
        path=tmp_path / "direct.nc",
        observables={"s": obs.final_state()},
    )
    xr.testing.assert_identical(res2, ds.io.load(tmp_path / "direct.nc"))


def test_hand_built_dynamics_accepts_any_axis_and_progress_bar_runs():
    dyn = Dynamics(init=lambda key, hp: jnp.zeros(()), step=lambda s, key, hp: s + hp["speed"])
    res = ds.simulate(dyn, grid={"speed": [1.0, 2.0]}, n_steps=7, progress=True, observables={"s": obs.final_state()})
    np.testing.assert_allclose(res.s.values[:, 0], [7.0, 14.0])


def test_grad_norm_and_trajectory_known_answers():
    # GD on 0.5 th^T P th: th_t = (I - lr P)^t th_0, grad F = P th_t
    P = np.diag([1.0, 3.0])
    problem = ds.problems.quadratic(P, theta0=[1.0, -2.0])
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.1]},
        n_steps=12,
        record_every=3,
        observables={"g": obs.grad_norm(), "th": obs.trajectory(lambda th: th.sum())},
    )
    th = np.stack([np.diag((1 - 0.1 * np.diag(P)) ** t) @ [1.0, -2.0] for t in res.time.values])
    np.testing.assert_allclose(res.g.values[0, 0], np.linalg.norm(th @ P, axis=1), rtol=1e-5)
    np.testing.assert_allclose(res.th.values[0, 0], th.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_loss_and_grad_norm_with_and_without_weight_decay(x64):
    # F_gamma = F_0 + (gamma/2) |theta|^2, so grad F_gamma = grad F_0 + gamma theta; an override (weight_decay=0)
    # measures F_0 on the same trajectory. Checked on the final weights against jax.grad of F_0, built here.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.integers(0, 3, 12)
    gamma = 0.3
    problem = ds.problems.mlp_classifier(x, y, (4,), weight_decay=gamma)
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=4),
        grid={"lr": [0.2]},
        n_steps=5,
        observables={
            "loss": obs.loss(),
            "loss0": obs.loss(weight_decay=0.0),
            "g": obs.grad_norm(),
            "g0": obs.grad_norm(weight_decay=0.0),
            "theta": obs.final_state(),
        },
    )
    theta = {name: jnp.asarray(res[f"theta_{name}"].values[0, 0]) for name in ("W0", "W1", "b0", "b1")}
    data = jax.tree_util.tree_map(jnp.asarray, problem.dataset)
    loss0, grad0 = jax.value_and_grad(lambda p: ds.problems.objective(problem, p, data, {"weight_decay": 0.0}))(theta)
    flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(tree)])  # noqa: E731
    assert float(flat(grad0) @ flat(theta)) != 0  # the two norms differ
    at = res.sel(lr=0.2, replica=0)
    assert float(at.loss0) == pytest.approx(float(loss0), rel=1e-10)
    assert float(at.loss) == pytest.approx(float(loss0) + gamma / 2 * float(flat(theta) @ flat(theta)), rel=1e-10)
    assert float(at.g0) == pytest.approx(float(jnp.linalg.norm(flat(grad0))), rel=1e-10)
    assert float(at.g) == pytest.approx(float(jnp.linalg.norm(flat(grad0) + gamma * flat(theta))), rel=1e-10)


def test_observables_by_name_share_compiled_programs():
    # a named observable is one object for every call, so a new learning rate reuses the program
    traces = []

    def step(x, key, hp):
        traces.append(1)
        return x * (1 - hp["lr"])

    dyn = Dynamics(init=lambda key, hp: jnp.ones(()), step=step)
    ds.simulate(dyn, grid={"lr": [0.1, 0.2]}, n_steps=3, observables={"x": "final_state"})
    before = len(traces)
    res = ds.simulate(dyn, grid={"lr": [0.3, 0.4]}, n_steps=3, observables={"x": "final_state"})
    assert len(traces) == before
    np.testing.assert_allclose(res.x.values[:, 0], [0.7**3, 0.6**3], rtol=1e-6)


# --------------------------------------------------------------------------- integer states, long runs


def test_time_batches_is_the_partition_of_its_formula_and_costs_nothing_for_long_runs():
    for n_steps in (1, 7, 32, 100, 1001):
        for n_batches in (2, 3, 32):
            for discard in (0, 1, 5):
                if n_steps - discard < n_batches:
                    continue
                t = np.arange(discard + 1, n_steps + 1)
                expected = np.bincount((t - discard - 1) * n_batches // (n_steps - discard), minlength=n_batches)
                counts, bounds = obs.time_batches(n_steps, n_batches, discard)
                np.testing.assert_array_equal(counts, expected)
                assert bounds[0] == discard + 1 and bounds[-1] == n_steps + 1
    counts, bounds = obs.time_batches(10**12, 32, 3)  # an arange of the steps would take 8 TB
    assert counts.sum() == 10**12 - 3 and counts.max() - counts.min() <= 1


def test_time_average_keeps_its_batches_when_steps_times_batches_pass_int32():
    """200,000 steps x 20,000 batches = 4e9 > 2**31: the batch index was an int32 product that wrapped."""
    dyn = Dynamics(lambda key, hp: jnp.float32(0.0), lambda x, key, hp: x + 1.0)
    n_steps, n_batches = 200_000, 20_000
    with pytest.warns(RuntimeWarning, match="correlated"):  # a line is as correlated as a series gets
        res = ds.simulate(
            dyn,
            n_steps=n_steps,
            observables={"ta": obs.time_average(lambda p: p, n_batches=n_batches, keep_batches=True)},
        )
    _, bounds = obs.time_batches(n_steps, n_batches)
    np.testing.assert_array_equal(res.ta_batches.values.ravel(), (bounds[:-1] + bounds[1:] - 1) / 2)
    assert res.ta.values.item() == (n_steps + 1) / 2


def test_iterate_average_keeps_float32_precision_over_millions_of_steps():
    """theta_t = 1 for the first half of 4e6 steps, then 0: the uniform average 1/2 and the linearly weighted
    (h(h+1)/2)/(T(T+1)/2). The uncompensated running mean gave 0.50345 and 0.25062."""
    n_steps, half = 4_000_000, 2_000_000
    dyn = Dynamics(
        lambda key, hp: jnp.int32(0), lambda t, key, hp: t + 1, params_of=lambda t: (t < half).astype(jnp.float32)
    )
    res = ds.simulate(
        dyn,
        n_steps=n_steps,
        observables={"p0": obs.iterate_average(power=0.0), "p1": obs.iterate_average(power=1.0)},
    )
    assert res.p0.values.item() == pytest.approx(0.5, rel=1e-6)
    assert res.p1.values.item() == pytest.approx(half * (half + 1) / (n_steps * (n_steps + 1)), rel=1e-6)


def test_integer_states_are_measured_as_numbers():
    """An int32 state: distances to a fractional point are not truncated to the integers, squares do not wrap,
    and ``diverged(bound)`` bounds integer leaves too."""
    four = Dynamics(lambda key, hp: jnp.int32(4), lambda x, key, hp: x)
    res = ds.simulate(
        four,
        n_steps=2,
        observables={
            "logdist": obs.log_distance(0.5),
            "near": obs.converged(3.6, 0.5),
            "exit": obs.ball_exit(4.4, [0.3, 1.0]),
        },
    )
    np.testing.assert_allclose(res.logdist.values.ravel(), np.log(3.5**2), rtol=1e-6)
    assert bool(res.near.values.item())
    np.testing.assert_allclose(res.exit_max_distance.values.item(), 0.4, rtol=1e-6)
    np.testing.assert_array_equal(res.exit.values.ravel(), [0, -1])
    big = Dynamics(lambda key, hp: jnp.array([50_000, 0], jnp.int32), lambda x, key, hp: x)
    res = ds.simulate(big, n_steps=1, observables={"exit": obs.ball_exit(jnp.zeros(2, jnp.int32), [1e5])})
    assert res.exit_max_distance.values.item() == 50_000 and res.exit.values.item() == -1
    doubling = Dynamics(lambda key, hp: jnp.int32(1), lambda x, key, hp: 2 * x)
    res = ds.simulate(doubling, n_steps=10, observables={"x": obs.final_state(), "div": obs.diverged(bound=100)})
    assert res.div_step.values.item() == 7 and res.x.values.item() == 64


def test_a_fixed_hyperparameter_may_be_a_zero_dimensional_array_but_not_a_vector():
    def step(x, key, hp):
        return x * hp["c"]

    scalar = Dynamics(lambda key, hp: jnp.float32(1.0), step, hyperparams={"c": jnp.float32(0.5)})
    res = ds.simulate(scalar, n_steps=3, observables={"x": obs.final_state()})
    assert res.x.values.item() == 0.125
    same = Dynamics(lambda key, hp: jnp.float32(1.0), step, hyperparams={"c": np.float64(0.5)})
    assert ds.simulate(same, n_steps=3, observables={"x": obs.final_state()}).x.values.item() == 0.125
    vector = Dynamics(lambda key, hp: jnp.ones(2), step, hyperparams={"c": np.array([0.5, 2.0])})
    with pytest.raises(ValueError, match=r"hyperparameter 'c' is an array of shape \(2,\)"):
        ds.simulate(vector, n_steps=3)
