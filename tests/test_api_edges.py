"""Edges of the public API: seeds of any integer type, points of the wrong shape, zero Jacobians, names."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr

import dynsim as ds

PROBLEM = ds.problems.linear_regression_1d()


def test_log_distance_refuses_a_point_of_another_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\) where the parameters have \(\)"):
        ds.simulate(
            ds.dynamics.sgd(PROBLEM),
            grid={"lr": [0.1]},
            n_steps=1,
            observables={"ld": ds.observables.log_distance(np.zeros(3))},
        )


def test_bind_checks_learning_rates_as_simulate_does():
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        ds.dynamics.bind(ds.dynamics.sgd(PROBLEM), {"lr": -0.1})


def test_lyapunov_takes_numpy_seeds_and_refuses_negative_ones():
    step = lambda x, k: 0.5 * x  # noqa: E731
    a = ds.lyapunov.top_exponent(step, jnp.ones(2), np.int64(3), 20)
    b = ds.lyapunov.top_exponent(step, jnp.ones(2), 3, 20)
    np.testing.assert_array_equal(a.per_replica, b.per_replica)
    np.testing.assert_allclose(a.exponents, np.log(0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="seed >= 0"):
        ds.lyapunov.top_exponent(step, jnp.ones(2), -1, 20)


def test_a_zero_jacobian_gives_minus_infinity():
    est = ds.lyapunov.top_exponent(lambda x, k: 0 * x, jnp.ones(2), 0, 10, n_replicas=2)
    assert est.exponents.tolist() == [-np.inf]
    est = ds.lyapunov.spectrum(lambda x, k: jnp.stack([0 * x[0], 0.5 * x[1]]), jnp.ones(2), 0, 400, 2, transient=50)
    assert est.exponents[1] == -np.inf and est.exponents[0] == pytest.approx(np.log(0.5), abs=1e-5)


def test_observable_named_like_a_dataset_method_warns():
    with pytest.warns(UserWarning, match=r"result\['mean'\]"):
        res = ds.simulate(
            ds.dynamics.sgd(PROBLEM), grid={"lr": [0.1]}, n_steps=2, observables={"mean": ds.observables.final_state()}
        )
    assert "mean" in res.data_vars


def test_optax_dtype_arguments_are_not_hyperparameters():
    dyn = ds.dynamics.from_optax(PROBLEM, optax.adam)
    assert "mu_dtype" not in dyn.hyperparams and {"lr", "b1", "b2", "eps"} <= set(dyn.hyperparams)


def test_goldstein_distance_names_its_own_options():
    assert {"tol", "max_iter", "polish"} <= set(inspect.signature(ds.nonsmooth.goldstein_distance).parameters)
    with pytest.raises(TypeError, match="goldstein_distance"):
        ds.nonsmooth.goldstein_distance(lambda x: x, jnp.ones(2), 0.1, ds.prng.key(0), n=8)


def test_plot_and_checkpoint_are_reachable_from_the_package():
    assert callable(ds.plot.phase_map) and ds.checkpoint.Checkpoint


@pytest.mark.parametrize("activation", ["tanh", "swish", "relu", "linear"])
def test_two_layer_net_fixed_point_is_stationary(activation):
    import jax

    problem = ds.problems.two_layer_net(6, 5, activation)
    params = problem.init(ds.prng.key(0), {"mu": 0.1})
    point = jax.tree_util.tree_map(jnp.asarray, problem.fixed_point)
    assert jax.tree_util.tree_structure(point) == jax.tree_util.tree_structure(params)
    sample = problem.sample(ds.prng.key(1))
    grad = jax.grad(problem.loss)(point, sample, {"mu": 0.1})
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grad))


def test_a_schedule_built_from_the_learning_rate_is_a_grid_axis():
    # GD on a fixed dataset with lr_t = lr * 0.5^(t / 4): w_{t+1} = (1 - lr_t h) w_t, h = mean x^2
    problem = ds.problems.linear_regression_1d(n_data=8)
    dyn = ds.dynamics.from_optax(
        problem, lambda learning_rate: optax.sgd(optax.exponential_decay(learning_rate, 4, 0.5)), batch_size=None
    )
    res = ds.simulate(dyn, grid={"lr": [0.3, 0.9]}, n_steps=12)
    h = float(np.mean(np.asarray(ds.dynamics.bind(dyn, {"lr": 0.3}).hp["data"]["x"], dtype=np.float64) ** 2))
    for lr, got in zip([0.3, 0.9], res.final_state.values[:, 0]):
        want = np.prod([1 - lr * 0.5 ** (t / 4) * h for t in range(12)])
        assert got == pytest.approx(want, rel=1e-5)
    # optax's own name for the rate is accepted where dynsim's is
    adam = ds.dynamics.from_optax(PROBLEM, optax.adam, learning_rate=0.01)
    assert adam.hyperparams["lr"] == 0.01
    with pytest.raises(ValueError, match="not both"):
        ds.dynamics.from_optax(PROBLEM, optax.adam, learning_rate=0.01, lr=0.1)


AR1 = ds.dynamics.Dynamics(lambda key, hp: jnp.zeros(()), lambda x, key, hp: hp["a"] * x + jax.random.normal(key, ()))


@pytest.mark.parametrize(
    "observables, message",
    [
        # diverged() writes d and d_step: a time average keyed d_step would overwrite it
        (
            {"d": "diverged", "d_step": ds.observables.time_average(lambda x: x)},
            "'d' and 'd_step' both write the variable 'd_step'",
        ),
        (
            {"m": ds.observables.time_average(lambda x: x), "m_stderr": "final_state"},
            "both write the variable 'm_stderr'",
        ),
        ({"a": "final_state"}, "'a' writes 'a', the name of the grid axis 'a'"),
        ({"replica": "final_state"}, "the name of the dimension 'replica'"),
        (
            {"h": ds.observables.histogram(lambda x: x, [-1.0, 0.0, 1.0]), "h_bin": "final_state"},
            "'h_bin' writes 'h_bin', the name of the dimension 'h_bin' of 'h'",
        ),
    ],
)
def test_outputs_that_would_overwrite_each_other_are_refused_before_the_run(observables, message, monkeypatch):
    monkeypatch.setattr(ds.engine, "_run_chunk", lambda *a: pytest.fail("the run started"))
    with pytest.raises(ValueError, match=message):
        ds.simulate(AR1, {"a": [0.5]}, n_steps=64, n_replicas=3, observables=observables)


def test_a_hyperparameter_the_step_reads_but_nobody_gives_is_named():
    noisy = AR1._replace(step=lambda x, key, hp: hp["a"] * x + hp["s"] * jax.random.normal(key, ()))
    with pytest.raises(KeyError, match=r"hp\['s'\], which is neither a grid axis nor a default.*\['a'\]"):
        ds.simulate(noisy, {"a": [0.5]}, n_steps=4)


def test_config_of_a_file_dynsim_did_not_write_says_so():
    with pytest.raises(ValueError, match="not written by dynsim.simulate"):
        ds.io.config(xr.Dataset(attrs={"title": "x"}))


def test_a_damaged_checkpoint_chunk_is_named(tmp_path):
    run = dict(grid={"a": [0.5]}, n_steps=8, n_replicas=4, checkpoint=tmp_path / "ck")
    ds.simulate(AR1, **run)
    (chunk,) = tmp_path.glob("ck/chunk-*.npz")
    chunk.write_bytes(b"not a zip file")
    with pytest.raises(
        ValueError, match=f"checkpoint '{chunk}' cannot be read.*delete the file to compute that chunk again"
    ):
        ds.simulate(AR1, **run)


def test_a_folder_given_as_output_path_gets_a_file_name_hint(tmp_path):
    with pytest.raises(ValueError, match=f"such as '{tmp_path / 'results.nc'}'"):
        ds.simulate(AR1, {"a": [0.5]}, n_steps=4, path=tmp_path)


def test_a_bound_step_given_a_bare_array_says_what_it_takes():
    bound = ds.dynamics.bind(ds.dynamics.gd(ds.problems.linear_regression_1d(n_data=8)), {"lr": 0.1})
    with pytest.raises(TypeError, match=r"step takes a state as init\(key\) returns it.*TrainState"):
        bound.step(jnp.ones(()), jax.random.key(1))


def test_an_observables_warning_points_at_the_callers_line():
    with pytest.warns(RuntimeWarning, match="batch means are correlated") as record:
        ds.simulate(AR1, {"a": [0.99]}, n_steps=64, n_replicas=3, observables={"m": ds.observables.time_average(abs)})
    assert record[0].filename == __file__


def _reducer(update=lambda acc, view, t, ctx: acc + 1, finalize=lambda acc, status, ctx: {"": ((), acc)}):
    return ds.observables.Observable("counter", init=lambda view, ctx: jnp.zeros(()), update=update, finalize=finalize)


@pytest.mark.parametrize(
    "observable, message",
    [
        (_reducer(finalize=lambda acc, status, ctx: acc), r"'o': finalize\(acc, status, ctx\) must return \{suffix"),
        # a sum over the chunk's trajectories would be broadcast to each of them
        (_reducer(finalize=lambda acc, status, ctx: {"": ((), acc.sum())}), r"'o', output '': values of shape \(\)"),
        (_reducer(finalize=lambda acc, status, ctx: {"": (("bin",), acc)}), r"shape \(1,\) for dims \('bin',\)"),
        (_reducer(finalize=None), "'o' has no callable finalize: a reducer needs init, update and finalize"),
    ],
)
def test_an_observable_that_breaks_its_contract_is_named_before_the_run(observable, message, monkeypatch):
    monkeypatch.setattr(ds.engine, "_run_chunk", lambda *a: pytest.fail("the run started"))
    with pytest.raises(ds.observables.ObservableError, match=message):
        ds.simulate(AR1, {"a": [0.5]}, n_steps=4, n_replicas=3, observables={"o": observable})


def test_an_update_that_changes_its_accumulator_is_named():
    to_float = _reducer(update=lambda acc, view, t, ctx: acc + view.params)
    ints = to_float._replace(init=lambda view, ctx: jnp.zeros((), jnp.int32))
    with pytest.raises(ds.observables.ObservableError, match=r"update\(acc, view, t, ctx\) of observable 'o' must"):
        ds.simulate(AR1, {"a": [0.5]}, n_steps=4, observables={"o": ints})


@pytest.mark.parametrize(
    "run, note",
    [
        # the arguments of step in the wrong order: hp is a key, indexed by a name
        (
            lambda: ds.simulate(AR1._replace(step=lambda x, hp, key: hp["a"] * x), {"a": [0.5]}, n_steps=4),
            r"dynsim calls init\(key, hp\) -> state and step\(state, key, hp\) -> state",
        ),
        (
            lambda: ds.simulate(AR1._replace(step=lambda x, key: x), {"a": [0.5]}, n_steps=4),
            "check the number and order of the arguments",
        ),
        (
            lambda: ds.simulate(
                AR1._replace(step=lambda x, key, hp: x / len(range(hp["a"]))), {"a": [1, 2]}, n_steps=4
            ),
            r"must be static: declare it in Dynamics\(..., static=",
        ),
        (
            lambda: ds.lyapunov.top_exponent(lambda key, x: 0.5 * x, jnp.ones(2), 0, 10),
            r"dynsim calls step\(x, key\) -> x",
        ),
    ],
)
def test_common_slips_in_a_hand_written_step_get_a_hint(run, note):
    with pytest.raises(TypeError) as err:  # JAX's own errors, with a note
        run()
    assert any(re.search(note, n) for n in getattr(err.value, "__notes__", [])), err.value


def test_phase_maps_refuse_what_is_not_a_phase_code():
    import matplotlib.pyplot as plt

    share = xr.DataArray(np.full((2, 3), 0.4), dims=("lr", "mu"), coords={"lr": [0.1, 0.2], "mu": [0.0, 0.5, 1.0]})
    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match=r"must hold phase codes.*got float64 values in \[0.4, 0.4\]"):
            ds.plot.phase_map(ax, share)
        with pytest.raises(TypeError, match=r"2-D xarray.DataArray.*dims \('lr',\)"):
            ds.plot.disagreement_map(ax, share.isel(mu=0), share.isel(mu=0))
        ds.plot.phase_map(ax, (share * 10).astype(int) - 1)  # codes -1 .. 3 are drawn
    finally:
        plt.close(fig)


def test_phase_maps_draw_log_rows_equally_tall_and_tell_i_ms_from_i_p():
    import matplotlib.pyplot as plt

    from dynsim.plot import _edges
    from dynsim.stability import PHASES

    edges = _edges(np.array([1.0, 2.0, 4.0, 8.0]), log=True)
    np.testing.assert_allclose(edges, 2.0 ** np.arange(-0.5, 4.0))  # geometric midpoints: every row one octave
    np.testing.assert_allclose(_edges(np.array([1.0, 2.0, 4.0])), [0.5, 1.5, 3.0, 5.0])
    coords = {"lr": [0.1, 0.2], "mu": [0.0, 1.0]}
    theory = xr.DataArray([[PHASES.index("I_ms"), 3], [0, 1]], dims=("lr", "mu"), coords=coords)
    sim = xr.DataArray([[PHASES.index("I_p"), 3], [-1, 1]], dims=("lr", "mu"), coords=coords)
    fig, ax = plt.subplots()
    try:
        status = ds.plot.disagreement_map(ax, theory, sim, legend=False)
    finally:
        plt.close(fig)
    np.testing.assert_array_equal(status, [[2, 0], [1, 0]])  # I_ms against I_p disagrees, as in the agreement count


def test_a_constructor_given_where_its_result_is_due_and_back():
    with pytest.raises(TypeError, match=r"'f' is the function final_state: call it, final_state\(...\)"):
        ds.simulate(AR1, {"a": [0.5]}, n_steps=4, observables={"f": ds.observables.final_state})
    with pytest.raises(TypeError, match=r"the optimizer's constructor, e.g. optax.adam, not an optimizer built"):
        ds.dynamics.from_optax(PROBLEM, optax.adam(1e-3))


def test_an_observable_may_keep_arrays_in_its_config():
    # the config keys the compiled-program cache (arrays by dtype, shape and bytes) and is stored in the results
    def offset(point):
        return ds.observables.Observable(
            "offset", record=lambda view: view.params - jnp.asarray(point), config={"point": np.asarray(point)}
        )

    dyn = ds.dynamics.gd(ds.problems.quadratic(1.0, theta0=1.0))
    for point in (np.zeros(1), jnp.full(1, 0.25)):
        res = ds.simulate(dyn, grid={"lr": [0.5]}, n_steps=2, observables={"o": offset(point)})
        np.testing.assert_allclose(res.o.values[..., -1], 0.25 - np.asarray(point)[0])


def _final(dyn, n_steps, **kw):
    return ds.simulate(dyn, n_steps=n_steps, observables={"x": ds.observables.final_state()}, **kw).x.values


def test_optax_learning_rate_may_be_a_schedule_fixed_when_built():
    """A schedule is not a number: it is passed to the optimizer as optax's ``learning_rate`` (it was passed as
    dynsim's ``lr``, a TypeError), and gives what the schedule built inside a constructor gives."""
    problem = ds.problems.quadratic(np.array([1.0, 2.0]))
    schedule = optax.exponential_decay(0.1, 10, 0.5)
    fixed = ds.dynamics.from_optax(problem, optax.sgd, batch_size=None, learning_rate=schedule)
    assert "lr" not in fixed.hyperparams
    built = ds.dynamics.from_optax(
        problem, lambda learning_rate: optax.sgd(optax.exponential_decay(learning_rate, 10, 0.5)), None, lr=0.1
    )
    np.testing.assert_array_equal(_final(fixed, 5), _final(built, 5))


def test_optax_optimizer_whose_learning_rate_defaults_to_none():
    """``optax.adafactor``'s ``learning_rate=None`` (its own relative step) was refused as "lr must be a real
    number"; against optax's own loop, full batch on ``F = (x_1^2 + 2 x_2^2)/2``."""
    h = np.array([1.0, 2.0])
    x = np.array([1.0, -1.0], np.float32)
    dyn = ds.dynamics.from_optax(ds.problems.quadratic(h, theta0=x), optax.adafactor, batch_size=None)
    got = _final(dyn, 5).ravel()
    opt = optax.adafactor()
    state = opt.init(x)
    for _ in range(5):
        updates, state = opt.update(h * x, state, x)
        x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(got, x, rtol=1e-6)
    ds.simulate(dyn, grid={"lr": [0.01, 0.1]}, n_steps=2)  # given, it is a grid axis


def test_optax_argument_given_an_array_is_fixed_not_a_hyperparameter():
    """One clipping threshold per coordinate (``ds.optim.coordinate_clipped_sgd``) is an array: fixed when the
    dynamics is built; it was taken for a hyperparameter and crashed the run's cache."""
    h, tau = np.array([1.0, 2.0]), np.array([0.1, 0.2])
    problem = ds.problems.quadratic(h, theta0=np.array([1.0, -1.0]))
    dyn = ds.dynamics.from_optax(problem, ds.optim.coordinate_clipped_sgd, None, lr=0.1, threshold=tau)
    assert "threshold" not in dyn.hyperparams
    x = np.array([1.0, -1.0])
    for _ in range(3):
        x = x - 0.1 * np.clip(h * x, -tau, tau)
    np.testing.assert_allclose(_final(dyn, 3).ravel(), x, rtol=1e-6)
