"""Every bad input raises ValueError/TypeError naming the argument and value, before any compilation."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dynsim as ds
from dynsim import engine

obs = ds.observables
STAB = ds.stability
PROBLEM = ds.problems.linear_regression_1d(n_data=10)
SGD = ds.dynamics.sgd(PROBLEM)
NO_REPLACE = ds.dynamics.sgd(PROBLEM, batch_size=2, replace=False)
_rng = np.random.default_rng(0)
COUNTER = ds.dynamics.Dynamics(init=lambda key, hp: jnp.zeros(()), step=lambda x, key, hp: x + hp["k"])
BATCH_NORM = ds.problems.mlp_classifier(_rng.normal(size=(20, 3)), _rng.integers(0, 2, 20), (4,), batch_norm="last")


@pytest.fixture(autouse=True)
def no_compilation(monkeypatch):
    def refuse(self, spec):
        raise AssertionError("a program was built before the input was validated")

    monkeypatch.setattr(engine._Program, "__init__", refuse)


def run(dyn=SGD, grid=None, **kw):
    kw.setdefault("n_steps", 10)
    return ds.simulate(dyn, grid={"lr": [0.1]} if grid is None else grid, **kw)


CASES = [
    # learning rates
    ("negative lr", lambda: run(grid={"lr": [0.1, -0.5]}), ValueError, r"grid\['lr'\].*> 0.*-0.5"),
    ("zero lr", lambda: run(grid={"lr": [0.0]}), ValueError, r"grid\['lr'\].*> 0.*0.0"),
    ("nan lr", lambda: run(grid={"lr": [np.nan]}), ValueError, r"grid\['lr'\].*finite.*nan"),
    ("inf lr", lambda: run(grid={"lr": [np.inf, 0.1]}), ValueError, r"grid\['lr'\].*finite.*inf"),
    ("lr beyond float32", lambda: run(grid={"lr": [1e39]}), ValueError, r"grid\['lr'\] holds \[1e\+39\].*float32"),
    # 1e-50 is 0 in float32 (the step would not move); 1e-40 is subnormal, flushed to 0 in arithmetic
    ("lr below float32", lambda: run(grid={"lr": [1e-50, 0.1]}), ValueError, r"grid\['lr'\] holds \[1e-50\].*normal"),
    ("lr subnormal", lambda: run(grid={"lr": [1e-40]}), ValueError, r"grid\['lr'\] holds \[1e-40\].*flushes to 0"),
    (
        "cells equal in float32",
        lambda: run(grid={"lr": [0.1, 0.2, 0.1 + 1e-10]}),
        ValueError,
        r"grid\['lr'\]: the values \[0.1, 0.1000000001\] are distinct but round to the same float32",
    ),
    ("cells with one label", lambda: run(grid={"lr": [0.1, 0.2, 0.1]}), ValueError, r"holds \[0.1\] more than once"),
    (
        "integer beyond int32",
        lambda: run(COUNTER, grid={"k": np.array([1, 3_000_000_000])}),
        ValueError,
        r"grid\['k'\] holds \[3000000000\], beyond the int32 range",
    ),
    (
        "NaN constant",
        lambda: run(ds.dynamics.from_optax(PROBLEM, optax.adam, b1=np.nan)),
        ValueError,
        r"hyperparameter b1 holds NaN",
    ),
    ("lr default", lambda: ds.simulate(ds.dynamics.sgd(PROBLEM, lr=-1.0), n_steps=5), ValueError, r"lr.*> 0.*-1.0"),
    ("lr missing", lambda: ds.simulate(SGD, n_steps=5), ValueError, r"\['lr'\].*no default"),
    # an optimizer's own checks see every grid value (a traced value would pass them)
    (
        "optimizer grid value",
        lambda: run(ds.dynamics.from_optax(PROBLEM, ds.optim.clipped_sgd), grid={"lr": [0.1], "threshold": [0.5, 0.0]}),
        ValueError,
        r"clipped_sgd refuses lr=0.1, threshold=0.0: threshold must be a number > 0",
    ),
    (
        "optimizer default",
        lambda: run(ds.dynamics.from_optax(PROBLEM, ds.optim.clipped_sgd, threshold=-1.0)),
        ValueError,
        r"refuses lr=0.1, threshold=-1.0",
    ),
    (
        "lr schedule",
        lambda: ds.simulate(ds.dynamics.sgd(PROBLEM, lr=lambda n: 0.1), n_steps=5),
        TypeError,
        r"lr must be a number, got the function.*build it from numbers inside the optimizer",
    ),
    ("lr schedule, bind", lambda: ds.dynamics.bind(SGD, {"lr": lambda n: 0.1}), TypeError, r"lr must be a number"),
    # grid values
    ("empty axis", lambda: run(grid={"lr": []}), ValueError, r"grid\['lr'\] must not be empty"),
    ("2-D axis", lambda: run(grid={"lr": [[0.1, 0.2]]}), ValueError, r"grid\['lr'\].*1-D.*\(1, 2\)"),
    ("scalar axis", lambda: run(grid={"lr": 0.1}), ValueError, r"grid\['lr'\].*1-D"),
    ("string axis", lambda: run(grid={"lr": "0.1"}), TypeError, r"grid\['lr'\].*1-D"),
    ("flag axis", lambda: run(grid={"lr": [0.1], "nesterov": [True]}), TypeError, r"'nesterov' is fixed when"),
    (
        "unknown axis",
        lambda: run(grid={"lr": [0.1], "momentum": [0.9]}),
        ValueError,
        r"unknown grid axis \['momentum'\].*allowed|unknown grid axis \['momentum'\].*hyperparameters are",
    ),
    ("reserved axis", lambda: run(grid={"lr": [0.1], "replica": [1]}), ValueError, r"'replica' is reserved"),
    ("grid type", lambda: run(grid=[0.1]), TypeError, r"grid must be a dict"),
    # batch sizes
    ("batch 0", lambda: ds.dynamics.sgd(PROBLEM, batch_size=0), ValueError, r"batch_size must be >= 1, got 0"),
    (
        "batch grid 0",
        lambda: run(grid={"lr": [0.1], "batch_size": [1, 0]}),
        ValueError,
        r"batch_size must be >= 1, got 0",
    ),
    ("batch non-int", lambda: run(grid={"lr": [0.1], "batch_size": [1.5]}), ValueError, r"batch_size.*integers.*1.5"),
    (
        "batch > N without replacement",
        lambda: run(NO_REPLACE, grid={"lr": [0.1], "batch_size": [2, 11]}),
        ValueError,
        r"batch_size=11 exceeds n_data=10",
    ),
    (
        "batch > N default",
        lambda: run(ds.dynamics.sgd(PROBLEM, batch_size=12, replace=False)),
        ValueError,
        r"batch_size=12 exceeds n_data=10",
    ),
    (
        "batch norm, batch of one",
        lambda: run(ds.dynamics.sgd(BATCH_NORM, batch_size=1)),
        ValueError,
        r"couples the examples of a batch.*2 or more samples, got batch_size=1",
    ),
    (
        "batch norm, per-example noise",
        lambda: run(ds.dynamics.sgd(BATCH_NORM, batch_size=4), observables={"s": obs.gradient_noise()}),
        ValueError,
        r"gradient_noise.*couples the examples.*per-example gradients are undefined",
    ),
    (
        "batch norm choice",
        lambda: ds.problems.mlp_classifier(np.ones((4, 2)), np.zeros(4, int), batch_norm="first"),
        ValueError,
        r"batch_norm must be one of \(None, 'last', 'all'\), got 'first'",
    ),
    # run lengths
    ("n_steps 0", lambda: run(n_steps=0), ValueError, r"n_steps must be >= 1, got 0"),
    ("n_steps float", lambda: run(n_steps=10.0), TypeError, r"n_steps must be an integer, got 10.0"),
    ("n_replicas 0", lambda: run(n_replicas=0), ValueError, r"n_replicas must be >= 1, got 0"),
    ("n_replicas negative", lambda: run(n_replicas=-3), ValueError, r"n_replicas must be >= 1, got -3"),
    ("record_every 0", lambda: run(record_every=0), ValueError, r"record_every must be >= 1, got 0"),
    ("record_every > n_steps", lambda: run(record_every=11), ValueError, r"record_every must be <= 10, got 11"),
    ("seed negative", lambda: run(seed=-1), ValueError, r"seed must be >= 0, got -1"),
    ("chunk 0", lambda: run(chunk_size=0), ValueError, r"chunk_size must be >= 1, got 0"),
    ("budget negative", lambda: run(memory_budget=-5), ValueError, r"memory_budget must be > 0"),
    # observables
    (
        "unknown observable name",
        lambda: run(observables={"x": "entropy"}),
        ValueError,
        r"unknown observable 'entropy'.*known by name",
    ),
    ("unknown observable object", lambda: run(observables={"x": 3}), ValueError, r"unknown observable 3 for 'x'"),
    ("observables type", lambda: run(observables=["loss"]), TypeError, r"observables must be a dict"),
    (
        "loss of a stream",
        lambda: run(ds.dynamics.sgd(ds.problems.linear_regression_1d()), observables={"l": "loss"}),
        ValueError,
        r"loss: problem 'linear_regression_1d' is a stream",
    ),
    (
        "time_average too short",
        lambda: run(observables={"a": obs.time_average(lambda w: w, n_batches=32)}),
        ValueError,
        r"n_steps - discard = 10 must be >= n_batches = 32",
    ),
    # output path
    ("unwritable path", lambda: run(path="/proc/dynsim_results.nc"), ValueError, r"path.*not writable"),
    (
        "missing folder",
        lambda: run(path="/nonexistent/folder/out.nc"),
        ValueError,
        r"folder '/nonexistent/folder' does not exist",
    ),
    ("path is a folder", lambda: run(path="/tmp"), ValueError, r"path '/tmp' is a directory"),
    # dynamics
    (
        "not a dynamics",
        lambda: ds.simulate(lambda s: s, n_steps=3),
        TypeError,
        r"dynamics must be a dynsim.dynamics.Dynamics",
    ),
    (
        "gd on a stream",
        lambda: ds.dynamics.gd(ds.problems.linear_regression_1d()),
        ValueError,
        r"gd needs a finite dataset",
    ),
    (
        "label noise without y",
        lambda: ds.dynamics.sgd(ds.problems.rank1_saddle(), noise=[ds.dynamics.label_noise()]),
        ValueError,
        r"label noise needs samples with a 'y' entry",
    ),
    ("alpha > 2", lambda: ds.dynamics.alpha_stable_noise(alpha=2.5), ValueError, r"alpha must be in \(0, 2\], got 2.5"),
    # noise and clipping parameters, on a grid too
    (
        "stable index on a grid",
        lambda: ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(np.eye(2)), lr=0.1, noise=[ds.dynamics.alpha_stable_noise()]),
            grid={"alpha": [1.5, 2.5]},
            n_steps=5,
        ),
        ValueError,
        r"alpha must be in \(0, 2\], got \[2.5\]",
    ),
    (
        "acclip tau0 on a grid",
        lambda: ds.simulate(
            ds.dynamics.from_optax(ds.problems.quadratic(np.array([1.0, 2.0])), ds.optim.acclip, lr=0.1),
            grid={"tau0": [-1.0, 1.0]},
            n_steps=5,
        ),
        ValueError,
        r"acclip refuses .*tau0=-1.0: tau0 must be > 0, got -1.0",
    ),
    (
        "normalized beta on a grid",
        lambda: ds.simulate(
            ds.dynamics.from_optax(ds.problems.quadratic(np.array([1.0, 2.0])), ds.optim.normalized_sgd, lr=0.1),
            grid={"beta": [-0.5, 0.5]},
            n_steps=5,
        ),
        ValueError,
        r"normalized_sgd refuses .*beta=-0.5: beta must be >= 0",
    ),
    (
        "stable index below float32's limit",
        lambda: ds.dynamics.alpha_stable_noise(alpha=0.1),
        ValueError,
        r"alpha must be in \(0, 2\] and >= 0.3084 in float32.*got 0.1",
    ),
    (
        "stable index below float32's limit on a grid",
        lambda: ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(np.eye(2)), lr=0.1, noise=[ds.dynamics.alpha_stable_noise()]),
            grid={"alpha": [1.5, 0.2]},
            n_steps=5,
        ),
        ValueError,
        r"alpha must be in \(0, 2\] and >= 0.3084.*got \[0.2\]",
    ),
    (
        "pareto index on a grid",
        lambda: ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(np.eye(2)), lr=0.1, noise=[ds.dynamics.pareto_noise()]),
            grid={"index": [1.5, 0.05]},
            n_steps=5,
        ),
        ValueError,
        r"index must be >= 23/127 = 0.1811 in float32.*got \[0.05\]",
    ),
    (
        "fewer classes than labels (mlp)",
        lambda: ds.problems.mlp_classifier(np.ones((6, 2)), np.arange(6) % 5, (4,), n_classes=2),
        ValueError,
        r"n_classes must be >= 5, got 2",
    ),
    (
        "fewer classes than labels (cnn)",
        lambda: ds.problems.cnn1d_classifier(np.ones((6, 8)), np.arange(6) % 5, n_classes=2),
        ValueError,
        r"n_classes must be >= 5, got 2",
    ),
    (
        "cnn without channels",
        lambda: ds.problems.cnn1d_classifier(np.ones((6, 8)), np.arange(6) % 2, channels=(-1,)),
        ValueError,
        r"channels must be >= 1",
    ),
    (
        "negative labels",
        lambda: ds.problems.mlp_classifier(np.ones((2, 2)), np.array([0, -1])),
        ValueError,
        r"class labels 0, 1, \.\.\., got 2 labels with minimum -1",
    ),
    (
        "label noise above 1",
        lambda: ds.problems.corrupt_labels(np.zeros(4, int), 1.7, 10),
        ValueError,
        r"fraction must be a probability in \[0, 1\], got 1.7",
    ),
    (
        "label reselect p > 1",
        lambda: ds.dynamics.label_reselect(4, 1.5),
        ValueError,
        r"probability must be in \[0, 1\]",
    ),
    ("clip threshold 0", lambda: ds.optim.clipped_sgd(0.1, 0.0), ValueError, r"threshold must be a number > 0"),
    ("clip threshold < 0", lambda: ds.optim.coordinate_clipped_sgd(0.1, -1.0), ValueError, r"threshold must be"),
    (
        "n_data beyond a fixed dataset",
        lambda: ds.simulate(
            ds.dynamics.sgd(
                ds.problems.Problem(
                    loss=lambda w, s, hp: w * s["x"],
                    init=lambda k, hp: np.float32(0.0),
                    dataset={"x": np.arange(10.0)},
                    n_data=10,
                )
            ),
            grid={"lr": [1.0], "n_data": [10, 20]},
            n_steps=5,
        ),
        ValueError,
        r"n_data must be an integer in \[1, 10\].*got n_data=20",
    ),
    # stability
    ("phases: level as text", lambda: STAB.saddle_phases([1.0], [0.1], level="0.9"), ValueError, r"level.*'0.9'"),
    ("phases: seed", lambda: STAB.saddle_phases([1.0], [0.1], seed=-1), ValueError, r"seed must be >= 0"),
    ("fused: seed", lambda: ds.fused.saddle_modes([1.0], [0.1], n_replicas=1, n_steps=8, seed=-1), ValueError, "seed"),
    ("phases: n_replicas", lambda: STAB.saddle_phases([1.0], [0.1], n_replicas=0), ValueError, r"n_replicas"),
    (
        "phases: checkpoint of the theory",
        lambda: STAB.saddle_phases([1.0], [0.1], checkpoint="ck"),
        ValueError,
        r"checkpoint='ck' is an option of method='simulation'",
    ),
    (
        "phases: theory option in a simulation",
        lambda: STAB.saddle_phases([1.0], [0.1], method="simulation", nodes=10),
        TypeError,
        r"\['nodes'\] are options of method='theory'",
    ),
    (
        "theory: max_tuples",
        lambda: STAB.saddle_exponents([1.0], [0.1], n_data=4, max_tuples=0),
        ValueError,
        "max_tuples",
    ),
    (
        "theory: data fields",
        lambda: STAB.saddle_exponents([1.0], [0.1], n_data=2, data={"x": [1.0, 2.0]}),
        ValueError,
        r"fields \('x', 'eps'\)",
    ),
    (
        "theory: data size",
        lambda: STAB.saddle_exponents([1.0], [0.1], n_data=3, data={"x": [1.0, 2.0], "eps": [0.0, 1.0]}),
        ValueError,
        r"must all equal n_data = 3",
    ),
    ("sin_product: box", lambda: ds.problems.sin_product(low=1.0, high=0.0), ValueError, r"low=1.0 must be below high"),
    ("regression: w0", lambda: ds.problems.linear_regression_1d(w0=np.nan), ValueError, r"w0 must be finite"),
    ("scalar_net: init_std", lambda: ds.problems.scalar_net(init_std=-1.0), ValueError, r"init_std must be >= 0"),
    ("scalar_net: teacher", lambda: ds.problems.scalar_net(teacher=(0.1, np.inf)), ValueError, r"teacher\[1\]"),
    ("uniform_index: n = 0", lambda: ds.prng.uniform_index(ds.prng.key(0), (3,), 0), ValueError, r"n must be"),
    ("optim: negative lr", lambda: ds.optim.clipped_sgd(-0.1, 1.0), ValueError, r"learning_rate must be > 0"),
    ("optim: nan lr", lambda: ds.optim.acclip(np.nan), ValueError, r"learning_rate must be > 0.*nan"),
    ("optim: lr array", lambda: ds.optim.rmsprop_as_clip(np.array([0.1, 0.0])), ValueError, r"learning_rate.*\[0.0\]"),
    (
        "optim: scheduled stochastic clip",
        lambda: ds.optim.stochastic_clipped_sgd(lambda n: 0.1, 1.0, 0.0),
        TypeError,
        r"constant learning_rate",
    ),
    (
        "batch size without data",
        lambda: run(ds.dynamics.sgd(ds.problems.quadratic(np.eye(2))), grid={"lr": [0.1], "batch_size": [1, 4]}),
        ValueError,
        r"has no data: every batch_size gives the same run.*batch_size=4",
    ),
    ("lambda_ds: Jensen", lambda: STAB.lambda_ds(1.0, 0.5), ValueError, r"no law has E\[x\^4\]"),
    ("wilson: trials", lambda: STAB.wilson_interval(5, 3), ValueError, r"successes <= trials"),
    ("wilson: level", lambda: STAB.wilson_interval(1, 3, level=2), ValueError, r"level must be in \(0, 1\)"),
]


@pytest.mark.parametrize("name, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_before_compiling(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_points_may_be_pytrees_with_leaves_of_different_shapes():
    point = {"W": np.zeros((2, 3)), "b": np.ones(3)}
    for observable in (
        ds.observables.log_distance(point),
        ds.observables.converged(point, 1e-3),
        ds.observables.ball_exit(point, [1.0]),
    ):
        stored = observable.config.get("point", observable.config.get("center"))
        assert stored == [[[0.0] * 3] * 2, [1.0] * 3]
    # a point of one array keeps the format results already carry
    assert ds.observables.log_distance(np.zeros(2)).config["point"] == [[0.0, 0.0]]


def test_ball_samples_goldstein_points_and_rmsprop_schedules_are_checked():
    key = ds.prng.key(0)
    for kwargs, message in [
        ({"radius": 1.0, "inner": 2.0}, "inner must be at most radius"),  # it drew points outside the ball
        ({"radius": -1.0}, "radius must be > 0"),  # accepted
        ({"radius": 0.0}, "radius must be > 0"),  # ZeroDivisionError
    ]:
        with pytest.raises(ValueError, match=message):
            ds.nonsmooth.sample_ball(key, jnp.zeros(3), n=4, **kwargs)
    sphere = ds.nonsmooth.sample_ball(key, jnp.zeros(3), 2.0, 5, inner=2.0)  # inner = radius: the sphere
    np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 2.0, rtol=1e-6)
    for x in ([np.nan, 2.0], []):  # NaN counted as |x_i| > delta; an empty x failed in a reshape
        with pytest.raises(ValueError, match="x must be a non-empty array of finite numbers"):
            ds.nonsmooth.l1_goldstein_distance(x, 0.5)
    with pytest.raises(TypeError, match="rmsprop_as_clip takes a constant learning_rate"):
        ds.optim.rmsprop_as_clip(optax.exponential_decay(0.1, 5, 0.5))  # crashed at the first update
