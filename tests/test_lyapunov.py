"""dynsim.lyapunov against closed forms, quadrature and independent estimates."""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr
from conftest import import_experiment
from scipy import integrate, optimize, stats

import dynsim as ds
from dynsim import prng

L = ds.lyapunov


def quad_log_abs(lr):
    """E log|1 - lr x^2|, x ~ N(0, 1), by scipy quadrature split at the singularity."""
    root = 1 / np.sqrt(lr)
    f = lambda x: np.log(abs(1 - lr * x * x)) * stats.norm.pdf(x)  # noqa: E731
    pieces = [(0, root), (root, root + 12), (root + 12, np.inf)]
    return 2 * sum(integrate.quad(f, a, b, limit=200)[0] for a, b in pieces)


@pytest.mark.parametrize("lr", [0.3, 1.0, 2.0, 3.0])
def test_scalar_exponent_against_quadrature(lr):
    x = np.random.default_rng(0).standard_normal(1_000_000)
    value, se = L.scalar_exponent(1 - lr * x**2, with_stderr=True)
    assert abs(value - quad_log_abs(lr)) < 4 * se


def test_scalar_exponent_exact_law_and_critical_rate():
    a, w = np.array([0.5, -3.0, 2.0]), np.array([0.5, 0.25, 0.25])
    assert L.scalar_exponent(a, w) == pytest.approx(0.5 * np.log(0.5) + 0.25 * np.log(3) + 0.25 * np.log(2))
    # lr = 1/x_i^2 for a data point: an exact zero multiplier, exponent -inf (seed 004, Prop. 3)
    x2 = np.array([0.25, 1.0, 4.0])
    assert L.scalar_exponent(1 - 1.0 * x2) == -np.inf
    # broadcasting over leading axes: one exponent per learning rate
    lrs = np.array([0.1, 0.2])[:, None]
    np.testing.assert_allclose(L.scalar_exponent(1 - lrs * x2), np.mean(np.log(np.abs(1 - lrs * x2)), axis=1))


def test_exact_reset_at_a_critical_rate_follows_its_geometric_law():
    # Seed 004, Prop. 3, in exact arithmetic (digest Sec. 2.2): with x_1 = 2 a power of 2 and lr = 1/x_1^2 = 1/4,
    # drawing sample 1 sets w exactly to w* = 0, and nothing moves it again; so P(w_t != w*) = (1 - 1/N)^t
    # for SGD with batch 1 and replacement, N = 8
    x = np.array([2.0, 0.3, -0.7, 1.1, -1.6, 0.9, 0.45, -1.3], np.float32)
    problem = ds.problems.linear_regression_1d(n_data=8)._replace(dataset={"x": x, "y": np.zeros(8, np.float32)})
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [0.25]},
        n_replicas=20_000,
        n_steps=30,
        record_every=1,
        observables={"moved": ds.observables.trajectory(lambda w: w != 0.0)},
    )
    share = res.moved.values[0].mean(axis=0)[1:]  # t = 1..30
    law = (7 / 8) ** np.arange(1, 31)
    assert np.all(np.abs(share - law) < 4 * np.sqrt(law * (1 - law) / 20_000) + 1e-12)


def test_generalized_exponent():
    a, w = np.array([0.5, 1.5]), np.array([0.5, 0.5])
    for q in [0.0, 1.0, 2.0, 3.5]:
        assert L.generalized_exponent(a, q, w) == pytest.approx(np.log(0.5 * 0.5**q + 0.5 * 1.5**q))
    # L(q) for huge q does not overflow
    assert L.generalized_exponent(np.array([1e10, 1.0]), 100.0) == pytest.approx(100 * np.log(1e10) + np.log(0.5))


def test_generalized_exponent_at_zero_and_atoms_of_probability_zero():
    # L(0) = log E|a|^0 = log 1 = 0, an atom at 0 included (|0|^0 = 1); 0 log 0 gave NaN
    assert L.generalized_exponent([0.0, 0.5], 0.0) == 0.0
    assert L.generalized_exponent([0.0, 0.5], 0.0, [0.3, 0.7]) == 0.0
    assert L.generalized_exponent([0.0, 0.5], -1.0) == np.inf  # E|a|^-1 with an atom at 0 of probability 1/2
    # an atom of probability 0 is not in the law, at 0 (log 0 = -inf) as anywhere else
    for q in [-1.0, 0.0, 2.0]:
        assert L.generalized_exponent([0.0, 0.5], q, [0.0, 1.0]) == pytest.approx(q * np.log(0.5), abs=1e-15)
    value, se = L.scalar_exponent([0.0, 0.5, 2.0], [0.0, 0.5, 0.5], with_stderr=True)
    assert (value, se) == L.scalar_exponent([0.5, 2.0], [0.5, 0.5], with_stderr=True)
    assert value == 0.0 and se == pytest.approx(np.log(2.0))  # sd = log 2 * sqrt(2 / 1), over sqrt(2)


def test_a_law_needs_an_axis_of_atoms_and_weights_with_a_positive_sum():
    for run in (L.scalar_exponent, L.tail_index, lambda a, w=None: L.generalized_exponent(a, 1.0, w)):
        with pytest.raises(ValueError, match="positive sum"):
            run([0.5, 2.0], [0.0, 0.0])  # returned 0.0 (scalar_exponent) or NaN
        with pytest.raises(ValueError, match="along its last axis, got a scalar"):
            run(0.5)  # an IndexError
        with pytest.raises(ValueError, match="holds 1 NaN of 2 atoms"):
            run([0.5, np.nan])  # NaN, or (tail_index) an error inside the root finder


def test_generalized_exponent_tabulates_q_by_law():
    a = np.array([[0.5, 2.0], [0.3, 1.5], [0.9, 1.1]])  # three two-atom laws
    q = np.array([0.0, 1.0, 2.0, -1.0])
    table = L.generalized_exponent(a, q[:, None])
    assert table.shape == (4, 3)
    np.testing.assert_allclose(table, [[np.log(np.mean(np.abs(r) ** k)) for r in a] for k in q], rtol=1e-12, atol=1e-15)


def test_tail_index_closed_form():
    # a in {1/4, 2} w.p. 1/2: (4^-k + 2^k)/2 = 1  <=>  y^3 - 2y^2 + 1 = 0 with y = 2^k  =>  y = golden ratio
    kappa = L.tail_index([0.25, 2.0])
    assert kappa == pytest.approx(np.log2((1 + np.sqrt(5)) / 2), rel=1e-10)
    assert L.tail_index([0.5, -0.9]) == np.inf  # |a| <= 1: every moment is finite
    with pytest.raises(ValueError, match="E log\\|a\\| = .* >= 0"):
        L.tail_index([0.5, 2.0])  # E log|a| = 0


def test_tail_index_matches_hill_on_stationary_sgd():
    # Non-interpolating 1-D regression, S = 1 (seed 004, App. A.3):
    # w' = (1 - lr x^2) w + lr x eps, a Kesten recursion with P(|w| > u) ~ u^-kappa.
    lr = 1.2
    x = np.random.default_rng(1).standard_normal(2_000_000)
    kappa = L.tail_index(1 - lr * x**2)
    problem = ds.problems.linear_regression_1d(noise_std=1.0, w0=0.0)
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [lr]},
        n_replicas=40_000,
        n_steps=300,
        observables={"w": ds.observables.final_state()},
    )
    hill = ds.measure.hill_tail_index(res.w.values.ravel(), k=400, level=0.99)
    assert hill.low < kappa < hill.high, (kappa, hill)


def test_slope_of_m_matches_exponent(x64):
    lrs = [0.1, 1.0, 2.0]
    problem = ds.problems.linear_regression_1d()
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": lrs},
        n_replicas=2000,
        n_steps=200,
        record_every=10,
        observables={"logdist": ds.observables.log_distance(problem.fixed_point)},
    )
    est = L.from_log_distance(res, transient=20)
    for lr in lrs:
        e, se = est.exponent.sel(lr=lr).item(), est.stderr.sel(lr=lr).item()
        assert abs(e - quad_log_abs(lr)) < 3 * se, (lr, e, se)
    assert est.transient == 20 and est.history.sizes["time"] == 18
    assert float(est.exact_hits.max()) == 0.0


def _frozen_warning(expected: bool):
    """Without a diverged() output, exits are read from frozen records, with a warning."""
    return pytest.warns(RuntimeWarning, match="read as frozen") if expected else contextlib.nullcontext()


@pytest.mark.parametrize("with_diverged", [True, False])
def test_slope_stops_before_the_first_replica_leaves_the_float_range(with_diverged):
    # float32: at lr 0.5 iterates reach w* exactly (log 0) and at lr 3.5 overflow (the engine freezes
    # them) within ~150 steps. Fitting every replica up to the first exit in its cell stays unbiased;
    # dropping or freezing the ones that left gave 0.024 for 0.255 at lr 3.5 (1000 standard errors).
    lrs = [0.5, 1.5, 2.5, 3.5]
    problem = ds.problems.linear_regression_1d()
    observables = {"logdist": ds.observables.log_distance(problem.fixed_point)}
    if with_diverged:
        observables["div"] = ds.observables.diverged()
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": lrs},
        n_replicas=512,
        n_steps=600,
        record_every=50,
        observables=observables,
    )
    with _frozen_warning(not with_diverged):
        est = L.from_log_distance(res)
    assert float(est.left_range.sel(lr=3.5)) > 0.9 and float(est.exact_hits.sel(lr=0.5)) > 0.5
    assert float(est.until.sel(lr=3.5)) < 600
    for lr in lrs:
        e, se = est.exponent.sel(lr=lr).item(), est.stderr.sel(lr=lr).item()
        assert abs(e - quad_log_abs(lr)) < 4 * se, (lr, e, se)
    with pytest.raises(ValueError, match="fewer than 2 records"), _frozen_warning(not with_diverged):
        L.from_log_distance(res.sel(lr=[3.5]), transient=int(est.until.sel(lr=3.5)))


def test_slope_stops_where_float32_updates_underflow():
    # SGD with batches of 2 from 8 points, w* = 0: in float32, once |w| nears 1e-38 the products
    # x_i^2 w underflow, and w stops or crawls above the smallest normal number. Those records
    # bent the fitted slope by up to 100 standard errors; below tiny/eps (1.6e-31) they are exits.
    # Exact: the average of log|1 - lr mean_B x_i^2| over the 64 ordered batches of the dataset.
    problem = ds.problems.linear_regression_1d(n_data=8)
    dynamics = ds.dynamics.sgd(problem, batch_size=2)
    lrs = [0.9, 1.3]
    res = ds.simulate(
        dynamics,
        grid={"lr": lrs},
        n_replicas=256,
        n_steps=500,
        record_every=10,
        observables={"logdist": ds.observables.log_distance(0.0), "div": ds.observables.diverged()},
    )
    with pytest.warns(RuntimeWarning, match="stopped moving before the end without diverging"):
        est = L.from_log_distance(res)
    data = dynamics.shared_data(prng.data_key(prng.key(0)), {"batch_size": 2, "n_data": 8})
    x2 = np.asarray(data["x"], np.float64) ** 2
    batch_means = (x2[:, None] + x2[None, :]) / 2
    for lr in lrs:
        exact = np.mean(np.log(np.abs(1 - lr * batch_means)))
        e, se = est.exponent.sel(lr=lr).item(), est.stderr.sel(lr=lr).item()
        assert abs(e - exact) < 4 * se, (lr, e, exact, se)
        assert float(est.until.sel(lr=lr)) < 500


def test_a_running_exponent_constant_after_its_transient_is_read_not_taken_for_frozen():
    # GD on a quadratic is linear: every counted step grows the tangent by the same factor once it has aligned, so
    # the running exponent repeats exactly from its first record after the transient. Those records were read as
    # frozen by a divergence: the exponent was NaN, with two warnings. Exact: log max_i |1 - lr h_i|, h = (1, 3).
    dynamics = ds.dynamics.gd(ds.problems.quadratic(np.diag([1.0, 3.0])))
    res = ds.simulate(
        L.with_tangent(dynamics, transient=100),
        grid={"lr": [0.1, 0.25]},
        n_replicas=4,
        n_steps=1000,
        record_every=100,
        observables={"exponent": L.running_exponent()},
    )
    assert np.all(res.exponent.sel(time=slice(200, None)).diff("time") == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = L.from_running_exponent(res)
    np.testing.assert_allclose(est.exponent, np.log([0.9, 0.75]), rtol=1e-6)
    np.testing.assert_array_equal(est.until, [1000, 1000])


@pytest.mark.parametrize("method", ["with_tangent", "top_exponent"])
def test_a_superstable_point_is_flagged_below_rounding(method, x64):
    # GD at lr = 0.01 on 100 sin sin converges to a minimum where 1 - lr h = 0: the exact exponent is -inf (seed 000
    # digest, Sec. 3.2). I - lr H computed in float64 leaves a tangent of rounding size, about log(eps) per step.
    dynamics = ds.dynamics.gd(ds.problems.sin_product())
    with pytest.warns(RuntimeWarning, match=r"below log\(eps\) = -36.04 \(float64\).*-inf included") as record:
        if method == "with_tangent":
            res = ds.simulate(
                L.with_tangent(dynamics, transient=100),
                grid={"lr": [0.01, 0.005]},
                n_replicas=8,
                n_steps=1000,
                record_every=100,
                observables={"exponent": L.running_exponent(), "diverged": ds.observables.diverged()},
            )
            exponents = L.from_running_exponent(res).exponent.values
        else:
            bound = ds.dynamics.bind(dynamics, {"lr": 0.01})
            exponents = L.top_exponent(bound.step, bound.init(jax.random.key(0)), 0, 1000, transient=100).exponents
    assert [str(w.filename) for w in record if "log(eps)" in str(w.message)] == [__file__]
    assert exponents[0] < np.log(np.finfo(np.float64).eps)
    if method == "with_tangent":  # lr = 0.005: log|1 - 0.5| exactly, no warning for it
        assert exponents[1] == pytest.approx(np.log(0.5), abs=1e-12)


def test_identical_replicas_are_told_their_zero_error_says_nothing(x64):
    # GD on a quadratic from one start: every replica fits the same slope, so the spread-based standard error is 0,
    # while the fit from t = 0 is biased by the faster mode (-0.10581 for log 0.9 = -0.10536 over 200 steps).
    # From random starts the replicas differ and nothing is said.
    P = np.diag([1.0, 3.0])
    obs = {"logdist": ds.observables.log_distance(np.zeros(2))}
    for theta0, warns in (([1.0, 1.0], True), (None, False)):
        res = ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(P, theta0=theta0)),
            grid={"lr": [0.1]},
            n_replicas=4,
            n_steps=200,
            record_every=10,
            observables=obs,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = L.from_log_distance(res)
        said = [str(w.message) for w in caught if "same slope" in str(w.message)]
        assert len(said) == int(warns) and (est.stderr.item() == 0) == warns
        assert abs(est.exponent.item() - np.log(0.9)) < 1e-3


def test_frozen_replicas_are_told_from_coincidences_and_constant_orbits():
    # Without a diverged() output, a replica is read as frozen from the first record of a final
    # run of exact repeats. A repeat followed by a change (float32 records coincide by chance)
    # is not an exit, nor is a series that never changes (GD at lr = 2 on h = 1: |1 - lr h| = 1).
    times = np.arange(0, 60, 10)
    moving = [0.0, -1.0, -2.0, -2.0, -4.0, -5.0]  # a coincidence at t = 20, 30
    constant = [3.0] * 6
    frozen = [0.0, -1.0, -2.0, -3.0, -3.5, -3.5]  # diverged between t = 30 and 40
    res = xr.Dataset({"logdist": (("replica", "time"), np.array([moving, constant, frozen]))}, coords={"time": times})
    with pytest.warns(RuntimeWarning, match="1 replicas have records that stay the same"):
        est = L.from_log_distance(res)
    assert float(est.until) == 30 and float(est.left_range) == pytest.approx(1 / 3)
    slopes = np.array([np.polyfit(times[:4], np.array(r)[:4], 1)[0] for r in (moving, constant, frozen)])
    assert float(est.exponent) == pytest.approx(slopes.mean() / 2)
    # the same through the engine: exact exponents log|1 - lr| of GD, 0 at lr = 2
    gd = ds.dynamics.Dynamics(lambda key, hp: jnp.ones(()), lambda w, key, hp: (1 - hp["lr"]) * w)
    res = ds.simulate(
        gd,
        grid={"lr": [0.5, 2.0, 2.5]},
        n_replicas=4,
        n_steps=100,
        record_every=10,
        observables={"logdist": ds.observables.log_distance(0.0)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "3 cells have replicas with the same slope")  # one start: told, not wrong
        est = L.from_log_distance(res)
    np.testing.assert_allclose(est.exponent, np.log([0.5, 1.0, 1.5]), atol=1e-6)


def test_slope_history_stops_at_until():
    # Past until some replicas have left the float range: a mean over the others (or over frozen records) is
    # biased, so m and history are NaN there. The records of the test above: until = 30.
    times = np.arange(0, 60, 10)
    logs = np.array([[0.0, -1.0, -2.0, -2.0, -4.0, -5.0], [3.0] * 6, [0.0, -1.0, -2.0, -3.0, -3.5, -3.5]])
    res = xr.Dataset({"logdist": (("replica", "time"), logs)}, coords={"time": times})
    with pytest.warns(RuntimeWarning, match="read as frozen"):
        est = L.from_log_distance(res)
    assert float(est.until) == 30
    m = logs.mean(axis=0)
    np.testing.assert_allclose(est.m.values, np.r_[m[:4], np.nan, np.nan], rtol=1e-15)
    np.testing.assert_allclose(est.history.values, np.r_[(m[1:4] - m[0]) / (2 * times[1:4]), np.nan, np.nan])
    # SGD at lr 3.5 in float32: most replicas overflow within 400 steps. At until, the history is the slope
    # of E log|w_t|^2 = 2 Lambda t + c over every replica: Lambda within its standard error.
    problem = ds.problems.linear_regression_1d()
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [3.5]},
        n_replicas=512,
        n_steps=400,
        record_every=20,
        observables={"logdist": ds.observables.log_distance(problem.fixed_point), "div": ds.observables.diverged()},
    )
    est = L.from_log_distance(res)
    until = float(est.until.item())
    history = est.history.isel(lr=0)
    assert 0 < until < 400 and float(est.left_range.item()) > 0.5
    m = est.m.isel(lr=0)
    assert np.all(np.isnan(history.sel(time=history.time > until))) and np.all(np.isnan(m.sel(time=m.time > until)))
    logs = res.logdist.isel(lr=0).astype(np.float64)
    rates = (logs.sel(time=until) - logs.sel(time=0)).values / (2 * until)
    assert float(history.sel(time=until)) == pytest.approx(rates.mean(), rel=1e-9)
    se = rates.std(ddof=1) / np.sqrt(rates.size)
    assert abs(rates.mean() - quad_log_abs(3.5)) < 4 * se, (rates.mean(), se)


def test_slope_transient_must_be_an_integer():
    logs = -np.array([[1.0], [2.0]]) * np.arange(4)  # slopes -1 and -2 per record
    res = xr.Dataset({"logdist": (("replica", "time"), logs)}, coords={"time": [0, 10, 20, 30]})
    assert float(L.from_log_distance(res, transient=10).exponent) == pytest.approx(-1.5 / 20)
    for estimate in (L.from_log_distance, lambda r, transient: L.from_log_loss(r, "logdist", transient=transient)):
        with pytest.raises(TypeError, match="transient must be an integer"):
            estimate(res, transient=10.5)


@pytest.mark.parametrize("with_diverged", [True, False])
def test_running_exponent_read_before_a_cells_first_divergence(with_diverged):
    # with_tangent freezes with its trajectory; at lr 3.5 every replica overflows within ~200 steps.
    lrs = [0.5, 2.5, 3.5]
    observables = {"lam": L.running_exponent()}
    if with_diverged:
        observables["div"] = ds.observables.diverged()
    res = ds.simulate(
        L.with_tangent(ds.dynamics.sgd(ds.problems.linear_regression_1d()), transient=20),
        grid={"lr": lrs},
        n_replicas=512,
        n_steps=600,
        record_every=20,
        observables=observables,
    )
    with _frozen_warning(not with_diverged):
        est = L.from_running_exponent(res, "lam")
    assert float(est.left_range.sel(lr=3.5)) > 0.9 and float(est.until.sel(lr=3.5)) < 600
    assert float(est.until.sel(lr=0.5)) == 600
    for lr in lrs:
        e, se = est.exponent.sel(lr=lr).item(), est.stderr.sel(lr=lr).item()
        assert abs(e - quad_log_abs(lr)) < 4 * se, (lr, e, se)
    with pytest.raises(ValueError, match="every_record=True"):
        L.from_running_exponent(res.isel(time=-1), "lam")


def test_running_exponent_takes_the_transient_of_with_tangent():
    # The transient is given once, to with_tangent; a second value in running_exponent, out of step
    # with it, gave -0.36 or -1.45 for -0.72. Exact: the mean of log|1 - lr x_i^2| over the dataset.
    problem = ds.problems.linear_regression_1d(n_data=8)
    dynamics = ds.dynamics.sgd(problem)
    res = ds.simulate(
        L.with_tangent(dynamics, transient=500),
        grid={"lr": [1.0]},
        n_replicas=256,
        n_steps=1000,
        record_every=100,
        observables={"exponent": L.running_exponent()},
    )
    assert np.all(np.isnan(res.exponent.sel(time=[0, 500]))) and np.all(np.isfinite(res.exponent.sel(time=600)))
    est = L.from_running_exponent(res)
    x2 = np.asarray(dynamics.shared_data(prng.data_key(prng.key(0)), {"n_data": 8})["x"], np.float64) ** 2
    exact = np.mean(np.log(np.abs(1 - 1.0 * x2)))
    assert abs(est.exponent.item() - exact) < 4 * est.stderr.item(), (est.exponent.item(), exact)
    with pytest.raises(TypeError, match="give it to with_tangent"):
        L.running_exponent(transient=500)


def test_running_exponent_sums_the_log_growth_with_compensation():
    # x' = a x: every step adds log|a|, so the exponent is log|a| exactly (a as a float32). Summed plainly in
    # float32 over 300,000 steps, log_growth drifted by 8e-5 (each addition rounds by up to u |sum|). With
    # compensated (Kahan) summation the error is the per-step one: the renormalized tangent has |v| = 1 +- 2u
    # and r = |a v| one more rounding, so log r = log|a| +- 3u; then Kahan's 2u + n u^2 relative to the sum,
    # the logarithm's few units and the final subtraction and division (u = 2^-24).
    a = np.float32(0.97)
    n = 300_000
    dynamics = ds.dynamics.Dynamics(lambda key, hp: jnp.ones(()), lambda x, key, hp: hp["a"] * x)
    res = ds.simulate(
        L.with_tangent(dynamics),
        grid={"a": [float(a), 0.0]},
        n_replicas=1,
        n_steps=n,
        observables={"exponent": L.running_exponent(every_record=False)},
    )
    values = res.exponent.values[:, 0]
    assert values.dtype == np.float32  # the sum is the float32 one
    exact = np.log(np.float64(a))
    u = 2.0**-24
    bound = 3 * u + (8 * u + n * u**2) * abs(exact)
    plain = np.cumsum(np.full(n, np.log(a), np.float32))[-1] / n  # sequential float32 sum, as before
    assert abs(plain - exact) > 100 * bound
    assert abs(values[0] - exact) < bound, (values[0], exact, bound)
    assert values[1] == -np.inf  # a zero multiplier: log 0 stays -inf through the compensation


def test_slope_of_log_loss_on_gd():
    # GD on 0.5 h th^2: L_t = 0.5 h (1 - lr h)^(2t) th_0^2, so m_L has slope 2 log|1 - lr h| exactly
    problem = ds.problems.quadratic([[2.0]], theta0=1.0)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [0.1, 0.3]},
        n_steps=30,
        record_every=5,
        observables={"loss": ds.observables.loss()},
    )
    est = L.from_log_loss(res)
    np.testing.assert_allclose(est.exponent.values, np.log(np.abs(1 - 2 * np.array([0.1, 0.3]))), rtol=1e-5)


def test_top_exponent_of_gd_on_quadratic():
    P = np.diag([1.0, 3.0])
    problem = ds.problems.quadratic(P, theta0=[1.0, 1.0])
    for lr in [0.3, 0.6]:  # top = max_j log|1 - lr mu_j|: the small eigenvalue at 0.3, lambda_max at 0.6
        bound = ds.dynamics.bind(ds.dynamics.gd(problem), {"lr": lr})
        est = L.top_exponent(bound.step, bound.init(prng.key(0)), 0, 1000, transient=100)
        expected = max(np.log(abs(1 - lr * 1.0)), np.log(abs(1 - lr * 3.0)))
        assert est.exponents[0] == pytest.approx(expected, abs=1e-5)


def test_spectrum_of_a_fixed_linear_map():
    A = np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 0.3], [0.1, 0.0, -1.2]])
    est = L.spectrum(lambda x, k: jnp.asarray(A, x.dtype) @ x, jnp.ones(3), 0, 2000, 3, transient=200)
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(A))))[::-1]
    np.testing.assert_allclose(est.exponents, expected, atol=2e-4)


def henon(x, key):
    return jnp.stack([1 - 1.4 * x[0] ** 2 + x[1], 0.3 * x[0]])


def test_henon_map():
    # lambda_1 = 0.41922 (Sprott, Chaos and Time-Series Analysis, 2003). Four replicas from one start agree once
    # their tangent frames align, so the error bar must come from the orbit's own fluctuation (time batches):
    # their spread is about 1e-17.
    est = L.spectrum(henon, jnp.array([0.1, 0.1]), 0, 20_000, 2, transient=1000, n_replicas=4)
    assert np.ptp(est.per_replica[:, 0]) < 1e-6 < est.stderr[0] < 0.01
    assert abs(est.exponents[0] - 0.41922) < 4 * est.stderr[0]
    # lambda_1 + lambda_2 = log|det J| = log 0.3 exactly, for any orbit; the frame's area grows by |det J| at
    # every step, so the partial sum is log 0.3 up to rounding, not just up to the error bar
    assert est.exponents.sum() == pytest.approx(np.log(0.3), abs=1e-3)
    assert est.partial_sums[0] == pytest.approx(est.exponents[0], abs=1e-3)
    assert est.partial_sums[1] == pytest.approx(np.log(0.3), abs=1e-5) and est.partial_sums_stderr[1] < 1e-5
    two = L.two_trajectory(henon, jnp.array([0.1, 0.1]), 0, 20_000, transient=1000)
    assert abs(two.exponents[0] - 0.41922) < 4 * two.stderr[0] and 0 < two.stderr[0] < 0.01


def test_product_of_random_triangular_matrices():
    # For upper-triangular factors the exponents are the sorted E log|diagonal entries|.
    scales = np.array([1.5, 0.4, 1.0])

    def step(x, key):
        ku, ks, ko = jax.random.split(key, 3)
        diag = scales * jax.random.uniform(ku, (3,), minval=0.5, maxval=1.5)
        diag = diag * jnp.where(jax.random.bernoulli(ks, 0.5, (3,)), 1.0, -1.0)
        upper = jnp.triu(jax.random.normal(ko, (3, 3)), 1)
        return (upper + jnp.diag(diag)) @ x

    e_log_u = (1.5 * np.log(1.5) - 1.5) - (0.5 * np.log(0.5) - 0.5)  # E log U, U ~ U(0.5, 1.5)
    expected = np.sort(np.log(scales) + e_log_u)[::-1]
    est = L.spectrum(step, jnp.ones(3), 3, 4000, 3, transient=100, n_replicas=8)
    assert np.all(np.abs(est.exponents - expected) < 4 * est.stderr), (est.exponents, expected, est.stderr)
    z = (est.partial_sums - np.cumsum(expected)) / est.partial_sums_stderr
    assert np.all(np.abs(z) < 4.5), z


def test_equal_exponents_are_split_but_their_partial_sum_is_not(x64):
    # x' = diag(a_1, a_2, a_3) x, log a_i ~ N(m_i, 0.25) independent, m = (0.1, 0.1, -0.5): lambda_1 = lambda_2 =
    # 0.1. The frame's first column follows whichever of the first two coordinates has grown most, so the
    # columns split the pair by about s / sqrt(pi n) (0.0035 here), many standard errors of 400 replicas; the
    # growth rate of the area of the first two columns, partial_sums[1], is not biased by it.
    m = np.array([0.1, 0.1, -0.5])

    def step(x, key):
        return jnp.exp(jnp.asarray(m) + 0.5 * jax.random.normal(key, (3,), x.dtype)) * x

    # the split shrinks over time: the batch means of lambda_1 and lambda_2 drift (trend -4.8 and +3.5 s.e.)
    with pytest.warns(RuntimeWarning, match=r"the batch means of exponents 1, 2 drift over the run"):
        est = L.spectrum(step, jnp.ones(3), 1, 6450, 3, transient=50, n_replicas=400)
    split = (est.exponents[:2] - 0.1) * np.array([1, -1])
    assert np.all(split > 6 * est.stderr[:2]), (split, est.stderr)
    assert np.all(split < 0.5 / np.sqrt(np.pi * 6400) + 4 * est.stderr[:2]), split
    z = (est.partial_sums - np.cumsum(m)) / est.partial_sums_stderr
    assert np.all(np.abs(z[1:]) < 4.5), z  # S_2 = 0.2 and S_3 = -0.3 (S_1 = lambda_1 carries the split)
    assert z[0] > 4


def test_spectrum_leads_with_top_exponent_even_for_equal_exponents(x64):
    # The columns are ordered by their means over replicas, not per replica: column 1 is the top exponent's
    # tangent, replica by replica, also where two exponents are equal (x' = diag(a_1, a_2) x, log a_i i.i.d.).
    # Sorting each replica's values made the first exponent the larger of two noisy columns (+0.024 instead
    # of +0.015 after 100 steps here, 3.6 standard errors).
    def step(x, key):
        return jnp.exp(0.5 * jax.random.normal(key, (2,), x.dtype)) * x

    spec = L.spectrum(step, jnp.ones(2), 1, 150, 2, transient=50, n_replicas=400)
    top = L.top_exponent(step, jnp.ones(2), 1, 150, 50, n_replicas=400)
    np.testing.assert_allclose(spec.per_replica[:, 0], top.per_replica[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(spec.exponents, spec.per_replica.mean(axis=0), rtol=1e-12)
    assert spec.exponents[0] >= spec.exponents[1]


def test_two_trajectory_on_a_kinked_map():
    # x' = a_t |x| + 1, a_t ~ U(0.2, 1.2): a kink at 0, bounded orbits in x > 0, where nearby
    # points separate by the factor a_t exactly: the exponent is E log U(0.2, 1.2).
    step = lambda x, key: jax.random.uniform(key, (), minval=0.2, maxval=1.2) * jnp.abs(x) + 1  # noqa: E731
    est = L.two_trajectory(step, jnp.array(1.0), 0, 4000, n_replicas=8)
    expected = (1.2 * np.log(1.2) - 1.2) - (0.2 * np.log(0.2) - 0.2)
    assert abs(est.exponents[0] - expected) < 4 * est.stderr[0]


@pytest.mark.parametrize("lr", [2.0, 3.5])
def test_two_trajectory_follows_a_state_that_grows_and_shrinks(lr):
    # x' = (1 - lr z^2) x: |x| ranges over many orders of magnitude, so a clone at a fixed
    # distance would fall below the rounding of x (this gave 0.09 and 18 for -0.116 and 0.255).
    # At lr = 3.5 most replicas overflow float32 within 300 steps: every replica is read up to
    # the first overflow, since keeping only the replicas that stayed finite gave 0.116.
    step = lambda x, key: (1 - lr * jax.random.normal(key) ** 2) * x  # noqa: E731
    if lr == 3.5:
        with pytest.warns(RuntimeWarning, match="none is selected out"):
            est = L.two_trajectory(step, jnp.ones(()), 0, 300, n_replicas=256)
        assert 0 < est.until < 300 and est.times[-1] == est.until
    else:
        est = L.two_trajectory(step, jnp.ones(()), 0, 300, n_replicas=256)
        assert est.until == 300
    assert abs(est.exponents[0] - quad_log_abs(lr)) < 4 * est.stderr[0], (est.exponents, est.stderr)


def test_a_collapsed_clone_gives_minus_inf_for_its_replica_only(x64):
    # x' = tanh(3 x), except that with probability p a step sends every state to the fixed point x* (a
    # constant branch: zero Jacobian, and the clone lands on its base, d = 0). A replica with such a step
    # has exponent -inf, as top_exponent (same keys) reads it; the others stay at x*,
    # where the exponent is log(3 (1 - x*^2)). A collapse gave NaN and cut every replica's window to nothing.
    xstar = optimize.brentq(lambda x: np.tanh(3 * x) - x, 0.5, 1.0)
    exact = np.log(3 * (1 - xstar**2))

    def step(x, key):
        return jnp.where(jax.random.uniform(key) < 0.003, jnp.full_like(x, xstar), jnp.tanh(3 * x))

    x0 = xstar * jnp.ones(1)
    with pytest.warns(RuntimeWarning, match="landed exactly on their base trajectory"):
        two = L.two_trajectory(step, x0, 0, 300, n_replicas=16)
    top = L.top_exponent(step, x0, 0, 300, n_replicas=16)
    collapsed = np.isneginf(two.per_replica[:, 0])
    np.testing.assert_array_equal(collapsed, np.isneginf(top.per_replica[:, 0]))
    assert 0 < collapsed.sum() < 16 and two.until == 300 and two.exponents[0] == -np.inf
    # per block, log(d / delta) = log f'(x*) + (f''/2f') (+-delta) + rounding: f''/2f' = -3 x*, delta = d0 =
    # sqrt(eps); each tanh within 4 units of 2^-53, over d = f'(x*) delta
    d0, ulp = np.sqrt(np.finfo(np.float64).eps), 2.0**-53
    bound = 3 * xstar * d0 + 8 * ulp / (np.exp(exact) * d0)
    assert np.all(np.abs(two.per_replica[~collapsed, 0] - exact) < bound), (two.per_replica[:, 0], exact, bound)


def test_two_trajectory_exits_where_the_clone_is_below_the_rounding_of_the_state():
    # On tanh(3 x) at x* (lambda = -3.49) a block of dt = 5 steps contracts the clone by exp(-17.4), from
    # sqrt(eps) |x| to far below eps |x| in float32: log d is rounding, and the run stops there (NaN).
    f = lambda x, key: jnp.tanh(3 * x)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="within 16 rounding units"):
        est = L.two_trajectory(f, 0.5 * jnp.ones(1), 0, 2000, transient=100, dt=5, n_replicas=2)
    assert np.isnan(est.exponents[0]) and est.until == 100


def test_two_trajectory_takes_d0_and_transient_by_keyword():
    # top_exponent's fifth positional argument is its transient; here it was d0 (a clone at distance 100)
    with pytest.raises(TypeError, match="positional argument"):
        L.two_trajectory(henon, jnp.array([0.1, 0.1]), 0, 2000, 100)


def test_long_runs_are_summed_in_segments(monkeypatch):
    # Past MAX_SEGMENTS blocks the log-growth is summed on the device per segment (its memory stays bounded):
    # the same exponents as block by block (up to the float32 rounding of the sums), the history read at the
    # segments' ends, and the window before a replica leaves the float range ending at the last whole segment.
    x0 = jnp.array([0.1, 0.1])
    fine = L.spectrum(henon, x0, 0, 1030, 2, transient=30, n_replicas=3, n_records=1000)  # 1000 blocks, one each
    monkeypatch.setattr(L, "MAX_SEGMENTS", 64)  # 62 segments of 16 blocks and one of 8
    coarse = L.spectrum(henon, x0, 0, 1030, 2, transient=30, n_replicas=3, n_records=1000)
    np.testing.assert_allclose(coarse.per_replica, fine.per_replica, rtol=1e-5)
    np.testing.assert_allclose(coarse.partial_sums, fine.partial_sums, rtol=1e-5)
    assert coarse.until == fine.until == 1030 and coarse.transient == 30
    np.testing.assert_array_equal(coarse.times, np.r_[np.arange(46, 1030, 16), 1030])
    np.testing.assert_allclose(coarse.history, fine.history[np.searchsorted(fine.times, coarse.times)], rtol=1e-5)
    assert np.all(np.isfinite(coarse.stderr)) and np.allclose(coarse.stderr, fine.stderr, rtol=0.5)

    # x' = (1 - 3.5 z^2) x overflows float32 within 300 steps in some replicas (two_trajectory then reads NaN)
    step = lambda x, key: (1 - 3.5 * jax.random.normal(key) ** 2) * x  # noqa: E731
    monkeypatch.setattr(L, "MAX_SEGMENTS", 8)  # 300 blocks: 7 segments of 38 and one of 34
    with pytest.warns(RuntimeWarning, match="none is selected out"):
        cut = L.two_trajectory(step, jnp.ones(()), 0, 300, n_replicas=64)
    monkeypatch.setattr(L, "MAX_SEGMENTS", 4096)
    with pytest.warns(RuntimeWarning, match="none is selected out"):
        exact = L.two_trajectory(step, jnp.ones(()), 0, 300, n_replicas=64)
    assert 0 < cut.until <= exact.until < 300 and cut.until % 38 == 0 and exact.until - cut.until < 38
    same_window = L.two_trajectory(step, jnp.ones(()), 0, cut.until, n_replicas=64)  # no exit before cut.until
    np.testing.assert_allclose(cut.per_replica, same_window.per_replica, rtol=1e-5)


def test_top_exponent_of_sgd_step_shares_the_minibatch():
    # The tangent map of SGD on 1-D regression is 1 - lr x_t^2 with the SAME x_t as the base step.
    lr = 1.0
    bound = ds.dynamics.bind(ds.dynamics.sgd(ds.problems.linear_regression_1d()), {"lr": lr})
    est = L.top_exponent(bound.step, bound.init(prng.key(0)), 1, 2000, n_replicas=16)
    assert abs(est.exponents[0] - quad_log_abs(lr)) < 4 * est.stderr[0]
    assert est.history.shape == (100, 1) and est.times[-1] == 2000


def test_spectrum_through_optimizer_state():
    # GD with heavy-ball momentum (optax trace): on 0.5 th^T diag(h) th the state (th, v)
    # evolves linearly, per coordinate by [[1 - lr h, -lr beta], [h, beta]].
    lr, beta, hs = 0.3, 0.5, [1.0, 3.0]
    problem = ds.problems.quadratic(np.diag(hs), theta0=[1.0, 1.0])
    bound = ds.dynamics.bind(ds.dynamics.from_optax(problem, optax.sgd, batch_size=None, momentum=beta), {"lr": lr})
    est = L.spectrum(bound.step, bound.init(prng.key(0)), 0, 3000, 4, transient=500)
    mats = [np.array([[1 - lr * h, -lr * beta], [h, beta]]) for h in hs]
    expected = np.sort(np.log(np.abs(np.concatenate([np.linalg.eigvals(m) for m in mats]))))[::-1]
    np.testing.assert_allclose(est.exponents, expected, atol=2e-3)


def test_adam_state_is_differentiated(x64):
    # Adam's state (mu, nu, count) is part of the map: the spectrum has 3 d entries for d
    # parameters; the integer count is carried along, not differentiated.
    problem = ds.problems.quadratic(np.diag([1.0, 2.0]), theta0=[3.0, -2.0])
    bound = ds.dynamics.bind(ds.dynamics.from_optax(problem, optax.adam, batch_size=None), {"lr": 1e-3})
    # 50 deterministic steps of a map that changes with the step count (Adam's bias correction)
    with pytest.warns(RuntimeWarning, match="batch means are correlated"), pytest.warns(RuntimeWarning, match="drift"):
        est = L.spectrum(bound.step, bound.init(prng.key(0)), 0, 50, 6)
    assert np.all(np.isfinite(est.exponents)) and np.all(np.diff(est.exponents) <= 0)
    with pytest.raises(ValueError, match="k=7 exceeds"):
        L.spectrum(bound.step, bound.init(prng.key(0)), 0, 50, 7)


class _UnhashableStep:
    """A step function that cannot be a static argument (``__eq__`` without ``__hash__``)."""

    def __eq__(self, other):
        return isinstance(other, _UnhashableStep)

    __hash__ = None

    def __call__(self, x, key):
        return henon(x, key)


def test_a_second_call_with_the_same_step_reuses_its_program():
    # a new start, key or replica count of the same size runs the compiled program again; the estimate
    # is the one a fresh program gives (the same step through a wrapper, compiled anew)
    start, other = jnp.array([0.1, 0.1]), jnp.array([0.2, 0.0])
    L.spectrum(henon, start, 0, 64, 2, n_replicas=3)
    tangent, separation = L._tangent_advance._cache_size(), L._separation_advance._cache_size()
    again = L.spectrum(henon, other, 5, 64, 2, n_replicas=3)
    L.two_trajectory(henon, start, 0, 64, n_replicas=3)
    L.two_trajectory(henon, other, 5, 64, n_replicas=3)
    assert L._tangent_advance._cache_size() == tangent
    assert L._separation_advance._cache_size() == separation + 1
    fresh = L.spectrum(lambda x, key: henon(x, key), other, 5, 64, 2, n_replicas=3)
    assert L._tangent_advance._cache_size() == tangent + 1
    np.testing.assert_array_equal(again.per_replica, fresh.per_replica)
    # a step that cannot be hashed is wrapped and compiled on every call, not refused
    unhashable = L.spectrum(_UnhashableStep(), other, 5, 64, 2, n_replicas=3)
    np.testing.assert_array_equal(unhashable.per_replica, fresh.per_replica)


def test_a_run_does_not_depend_on_how_its_calls_split_it(capsys):
    # the blocks of a run go in calls of growing length (for the progress bar): step t is the same
    # computation whichever call runs it, and a segment's sum the same sequence of additions (segments of 3
    # blocks after a transient of 5 here, one split inside a segment), so the log-growth is bitwise that of one call
    x0, keys = jnp.array([0.1, 0.1]), jax.vmap(lambda r: jax.random.fold_in(prng.key(3), r))(jnp.arange(2))
    layout = (jnp.int32(5), jnp.int32(3))  # 40 blocks: transient 5, then 11 segments of 3 and one of 2
    whole = L._tangent_advance(henon, L._tangent_start(x0, keys, 2, 12), 0, 40, 1, *layout)["growth"]
    first = L._tangent_advance(henon, L._tangent_start(x0, keys, 2, 12), 0, 13, 1, *layout)
    np.testing.assert_array_equal(L._tangent_advance(henon, first, 13, 40, 1, *layout)["growth"], whole)
    d0 = 1e-4
    whole = L._separation_advance(henon, L._separation_start(x0, keys, d0, 12), 0, 40, d0, 1, *layout)["growth"]
    first = L._separation_advance(henon, L._separation_start(x0, keys, d0, 12), 0, 29, d0, 1, *layout)
    np.testing.assert_array_equal(L._separation_advance(henon, first, 29, 40, d0, 1, *layout)["growth"], whole)
    # progress=True shows a bar at once and leaves the estimate as it is
    shown = L.spectrum(henon, x0, 3, 64, 2, n_replicas=2, progress=True)
    assert "spectrum" in capsys.readouterr().err
    quiet = L.spectrum(henon, x0, 3, 64, 2, n_replicas=2, progress=False)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(shown.per_replica, quiet.per_replica)
    with pytest.raises(TypeError, match="progress must be None, True or False"):
        L.top_exponent(henon, x0, 0, 10, progress="yes")


def test_bad_arguments():
    with pytest.raises(ValueError, match="transient=.* leaves no steps"):
        L.top_exponent(henon, jnp.zeros(2), 0, 10, transient=10)
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        L.top_exponent(henon, jnp.zeros(2), 0, 0)
    with pytest.raises(ValueError, match="no floating-point leaves"):
        L.top_exponent(lambda x, k: x, jnp.zeros(2, jnp.int32), 0, 5)
    for run in (L.top_exponent, L.two_trajectory):  # a step that changes the state's shape or dtype
        with pytest.raises(TypeError, match=r"given float32\[2\], returned float32\[3\]"):
            run(lambda x, k: jnp.ones(3), jnp.zeros(2), 0, 5)
    with pytest.raises(TypeError, match=r"returned .*int32\[\]"):
        L.spectrum(lambda x, k: {"w": x["w"], "n": x["n"].astype(jnp.int32)}, {"w": jnp.ones(2), "n": 0.0}, 0, 5, 1)


def test_brentq_reference_for_kesten_index():
    # tail_index agrees with an independent root solve of log E|a|^k = 0 on a continuous law
    a = 1 - 1.2 * np.random.default_rng(3).standard_normal(200_000) ** 2
    ref = optimize.brentq(lambda k: np.log(np.mean(np.abs(a) ** k)), 0.05, 5.0)
    assert L.tail_index(a) == pytest.approx(ref, rel=1e-6)


def test_small_rate_exponent_of_linear_sgd_is_minus_lr_lambda_min(x64):
    # seed 004, eq. (64) corrected (digest Sec. 2.4): SGD on interpolating regression in R^3, x ~ N(0, diag(h)),
    # w <- (I - lr x x^T) w, has top exponent -lr lambda_min(H) + O(lr^2) per step. The printed
    # -2 lr w0^T H w0 / |w0|^2 depends on the start (here -0.9 lr) and is the initial slope of the squared
    # observable, not an exponent. Lambda / lr against lr is a line through -lambda_min = -0.05.
    h = jnp.array([1.0, 0.3, 0.05])
    lrs = np.array([0.08, 0.04, 0.02, 0.01])
    ratio, se = [], []
    for lr in lrs:

        def step(w, key, lr=lr):
            x = jnp.sqrt(h) * jax.random.normal(key, (3,), w.dtype)
            return w - lr * x * (x @ w)

        est = L.top_exponent(step, jnp.ones(3), 0, 100_000, transient=5000, n_replicas=16)
        ratio.append(est.exponents[0] / lr)
        se.append(est.stderr[0] / lr)
    ratio, se = np.array(ratio), np.array(se)
    (slope, intercept), cov = np.polyfit(lrs, ratio, 1, w=1 / se, cov="unscaled")
    assert abs(intercept + 0.05) < 4 * np.sqrt(cov[1, 1])
    assert slope < 0 and abs(intercept + 0.9) > 0.8  # not the printed -2 w0^T H w0 / |w0|^2


def test_exponent_estimate_concentrates_like_one_over_t(x64):
    # seed 004, Thm 2 (Var[m_t / t] -> 0), exactly for 1-D regression with fresh samples: log|w_t| is a sum of t
    # i.i.d. terms log|1 - lr x^2|, so Var(log|w_t| / t) = v / t with v = Var log|1 - lr x^2| (by Monte Carlo here)
    lr, n = 1.0, 4000
    problem = ds.problems.linear_regression_1d()
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [lr]},
        n_replicas=n,
        n_steps=400,
        record_every=100,
        observables={"logdist": ds.observables.log_distance(problem.fixed_point)},
    )
    log_w = 0.5 * res.logdist.values[0]  # log|w_t|, (replica, time); w_0 = 1
    x = np.random.default_rng(0).standard_normal(4_000_000)
    v = np.var(np.log(np.abs(1 - lr * x**2)))
    for j, t in enumerate(res.time.values[1:], start=1):
        m = log_w[:, j] / t
        var = np.var(m, ddof=1)
        m4 = np.mean((m - m.mean()) ** 4)
        se = np.sqrt((m4 - var**2 * (n - 3) / (n - 1)) / n)  # standard error of a sample variance, any law
        assert abs(var - v / t) < 4 * se


def test_history_has_n_records_rows_ending_at_the_last_step_read():
    # 2000 steps in blocks of 7 with transient 500: blocks 72..284 are read (steps 504 to 1995), 213 blocks
    est = L.top_exponent(henon, jnp.array([0.1, 0.1]), 0, 2000, transient=500, dt=7, n_records=100)
    assert (est.transient, est.until) == (504, 1995)
    assert est.history.shape == (100, 1) and est.times[-1] == 1995 and np.all(np.diff(est.times) > 0)
    assert est.history[-1, 0] == pytest.approx(est.exponents[0], rel=1e-12)
    few = L.top_exponent(henon, jnp.array([0.1, 0.1]), 0, 2000, n_records=7)
    np.testing.assert_array_equal(few.times, [286, 572, 858, 1143, 1429, 1715, 2000])  # ceil(2000 i / 7)


def test_a_checkpointed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    # Saved after every call (CHECKPOINT_SECONDS = 0), interrupted at the 4th call, run again: the same numbers,
    # bit for bit, as a run without a checkpoint. The file then answers the same call at once, and refuses
    # another run: other arguments, another step function, another start.
    args = dict(step=henon, x0=jnp.array([0.1, 0.1]), key=0, n_steps=3000, k=2, transient=100, n_replicas=4)
    plain = L.spectrum(**args)
    path = tmp_path / "spectrum.npz"
    monkeypatch.setattr(L, "CHECKPOINT_SECONDS", 0.0)
    advance, calls = L._tangent_advance, []

    def interrupted(*a, **kw):
        calls.append(a[2:4])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return advance(*a, **kw)

    monkeypatch.setattr(L, "_tangent_advance", interrupted)
    with pytest.raises(KeyboardInterrupt):
        L.spectrum(**args, checkpoint=path)
    assert int(np.load(path)["done"]) == calls[2][1] < 3000  # the end of the last whole call
    monkeypatch.setattr(L, "_tangent_advance", advance)
    resumed = L.spectrum(**args, checkpoint=path)
    for field in ("exponents", "stderr", "per_replica", "history", "times", "partial_sums", "partial_sums_stderr"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(plain, field), err_msg=field)
    monkeypatch.setattr(L, "_tangent_advance", lambda *a, **kw: pytest.fail("a finished run ran again"))
    np.testing.assert_array_equal(L.spectrum(**args, checkpoint=path).per_replica, plain.per_replica)
    for change, differs in [
        (dict(n_steps=4000), r"\['n_steps'\]"),
        (dict(x0=jnp.array([0.2, 0.1])), r"\['step_and_start'\]"),
        (dict(step=lambda x, key: henon(x, key) * 1.0), r"\['step_and_start'\]"),
    ]:
        with pytest.raises(ValueError, match=f"belongs to a different run \\(differs in {differs}\\)"):
            L.spectrum(**{**args, **change}, checkpoint=path)
    with pytest.raises(ValueError, match=r"belongs to a different run \(differs in \['d0', 'k', 'run'\]\)"):
        L.two_trajectory(henon, args["x0"], 0, 3000, transient=100, n_replicas=4, checkpoint=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        L.spectrum(**args, checkpoint=path)


def test_gaussian_tail_index_of_the_experiment_against_even_moments():
    # x ~ N(0, 1): E(1 - lam x^2)^2 = 1 - 2 lam + 3 lam^2 = 1 at lam = 2/3 (kappa = 2), and
    # E(1 - lam x^2)^4 = 1 - 4 lam + 18 lam^2 - 60 lam^3 + 105 lam^4 = 1 at the real root of 105 l^2 - 60 l + 18 - 4/l
    # (kappa = 4); at lam = 0.2 an independent quadrature (scipy quad over the whole line) gave 8.3026, 2e6 normals 8.13
    kappa = import_experiment("tail_index").gaussian_tail_index
    assert kappa(2 / 3) == pytest.approx(2.0, abs=1e-7)
    lam4 = optimize.brentq(lambda lam: 105 * lam**3 - 60 * lam**2 + 18 * lam - 4, 0.1, 1.0)
    assert kappa(lam4) == pytest.approx(4.0, abs=1e-7)
    assert kappa(0.2) == pytest.approx(8.3026, abs=1e-4)


def test_tied_exponents_raise_no_false_correlation_warning():
    # x' = diag(a, 1/a) x, log a ~ N(0.3, 0.25): lambda = +-0.3 and the two columns' batch means are tied
    # (they sum to 0 in every batch, as the Henon map's sum to log 0.3), so their lag-1 correlations are equal.
    # Pooling the k columns as independent series put the standard error of their mean r near 0 and warned
    # whenever r > 0.1 by chance (about 1 run in 6); each column tested alone, false alarms are about 0.3%.
    def step(x, key):
        log_a = 0.3 + 0.5 * jax.random.normal(key, (), x.dtype)
        return jnp.exp(jnp.stack([log_a, -log_a])) * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(30):
            est = L.spectrum(step, jnp.ones(2), seed, 1000, 2, n_replicas=4)
            np.testing.assert_allclose(est.exponents, [0.3, -0.3], atol=6 * est.stderr.max())
    assert sum("correlated" in str(w.message) for w in caught) <= 1


def test_a_telescoping_growth_gets_a_safe_error(x64):
    # logistic map at r = 4: log|f'(x_t)| = log 2 + c(x_{t+1}) - c(x_t) (conjugacy to the tent map), so the
    # estimate's error is a boundary term / n, while each batch mean carries its own: the batch-means error
    # overstates it by about sqrt(32). Over 20 starts, z = (estimate - log 2) / stderr has sd well below 1.
    def logistic(x, key):
        return 4.0 * x * (1.0 - x)

    starts = np.random.default_rng(3).uniform(0.05, 0.95, 20)
    z = []
    for x0 in starts:
        est = L.top_exponent(logistic, jnp.array([x0]), 0, 16_000, transient=100)
        z.append((est.exponents[0] - np.log(2)) / est.stderr[0])
    assert np.all(np.abs(z) < 2) and np.std(z) < 0.5, np.std(z)  # 0.15: the error is 6.6x too large


def test_replicas_of_a_deterministic_orbit_raise_no_false_correlation_warning(x64):
    # 16 replicas of the Henon map from one start differ only in their first frame: once it has aligned they
    # are one series, not 16 independent ones, and pooling them would make the error of r vanish (7 false
    # warnings in 30 starts); they are tested as the one series they are
    x = jnp.array([0.1, 0.1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            for _ in range(137):
                x = henon(x, None)
            L.spectrum(henon, x, 0, 2000, 2, transient=100, n_replicas=16)
    assert sum("correlated" in str(w.message) for w in caught) <= 1


def test_a_singular_factor_inside_the_transient_does_not_end_the_run():
    # x' = clip(x, -0.1, 0.1) at t = 0 (zero Jacobian at x = (3, 2)), then x' = diag(0.5, 0.2) x: the exponents
    # after the transient are log 0.5 and log 0.2, up to the O(1)/n of the frame's start; with the singular factor
    # inside the window the product is 0 and they are -inf. The tangents stayed 0 after the transient (-inf).
    def step(s, key):
        x, t = s
        return jnp.where(t < 1, jnp.clip(x, -0.1, 0.1), jnp.array([0.5, 0.2]) * x), t + 1

    x0 = (jnp.array([3.0, 2.0]), jnp.array(0, jnp.int32))
    exact = np.log([0.5, 0.2])
    top = L.top_exponent(step, x0, 0, 400, transient=5)
    spec = L.spectrum(step, x0, 0, 400, 2, transient=5)
    np.testing.assert_allclose(top.exponents, exact[:1], atol=5 / 395)
    np.testing.assert_allclose(spec.exponents, exact, atol=5 / 395)
    assert np.all(np.isneginf(L.spectrum(step, x0, 0, 400, 2).exponents))


def test_a_rank_deficient_factor_inside_the_transient_does_not_end_the_run(x64):
    """Step 0 overwrites z with a constant (rank 2), then (x, y)' = B (x, y), z' = z / 2: the exponents after the
    transient are log 0.6, log 0.5, log 0.3. The third row's remainder after step 0 was rounding inside the plane
    of the other two, where it stayed: -inf."""
    B = jnp.array([[0.6, 0.1], [0.0, 0.3]])

    def step(s, key):
        x, t = s
        xy = jnp.where(t == 0, jnp.array([[0.8, 0.3], [0.2, 0.9]]) @ x[:2], B @ x[:2])
        return jnp.concatenate([xy, jnp.where(t == 0, 1.0, 0.5 * x[2])[None]]), t + 1

    x0 = (jnp.array([1.0, -0.5, 2.0]), jnp.array(0, jnp.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch means of a deterministic frame settling: correlated
        spec = L.spectrum(step, x0, 0, 200, 3, transient=10, n_replicas=4)
    np.testing.assert_allclose(spec.exponents, np.log([0.6, 0.5, 0.3]), atol=5 / 190)


def test_two_trajectory_on_a_state_with_leaves_of_two_float_dtypes(x64):
    """``x' = 0.5 x`` on a float64 leaf and ``y' = 0.25 y`` on a float32 one (optax's ``mu_dtype``, ``MultiSteps``
    under x64): the rescaled clone kept the wider dtype, which the loop refused."""

    def step(s, key):
        return (0.5 * s[0], (0.25 * s[1]).astype(jnp.float32))

    x0 = (jnp.ones(2, jnp.float64), jnp.ones(2, jnp.float32))
    est = L.two_trajectory(step, x0, 0, 200, transient=20, n_replicas=2)
    np.testing.assert_allclose(est.exponents, np.log(0.5), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:.*batch means are correlated")  # the rounding of an exact product's log-sums
def test_growth_beyond_the_square_root_of_the_float_range_is_measured():
    """Float32 squares overflow at 1.8e19: a tangent grown 100x per step over a block of 10 steps had an infinite
    norm, and read -inf without a warning; the clone of x' = 1.5 x stopped at step 108 of 200 (|x| = 1e19)."""
    for a in (100.0, 0.01):
        top = L.top_exponent(lambda x, key, a=a: a * x, jnp.ones(2, jnp.float32), 0, 120, dt=10, n_replicas=2)
        np.testing.assert_allclose(top.exponents, np.log(a), rtol=1e-6)
        spec = L.spectrum(lambda x, key, a=a: a * x, jnp.ones(2, jnp.float32), 0, 120, 2, dt=10, n_replicas=2)
        np.testing.assert_allclose(spec.exponents, np.log(a), rtol=1e-6)
    clone = L.two_trajectory(lambda x, key: 1.5 * x, jnp.ones(2, jnp.float32), 0, 200, n_replicas=2)
    assert clone.until == 200
    np.testing.assert_allclose(clone.exponents, np.log(1.5), rtol=1e-4)


def test_near_singular_factors_of_a_float32_random_product_keep_their_growth():
    """``[[1, b], [0, a]]``, ``a ~ U(0, 1)``, ``b ~ N(0, 1)``: exponents 0 and ``E log a = -1``. Blocks where a is
    tiny leave the second row a remainder of rounding size, which is its true growth, not an annihilation."""

    def step(x, key):
        k1, k2 = jax.random.split(key)
        a = jax.random.uniform(k1, (), x.dtype)
        return jnp.stack([x[0] + jax.random.normal(k2, (), x.dtype) * x[1], a * x[1]])

    est = L.spectrum(step, jnp.ones(2, jnp.float32), 0, 20_000, 2, 100, n_replicas=8)
    assert np.all(np.isfinite(est.per_replica))
    assert abs(est.exponents[1] + 1) < 4 * est.stderr[1]


def test_scalar_exponent_error_of_one_sample_and_of_a_table_of_laws():
    value, stderr = L.scalar_exponent([2.0], with_stderr=True)  # one sample: no spread to read (it was 0)
    assert value == pytest.approx(np.log(2.0)) and np.isnan(stderr)
    a, w = np.array([0.5, 2.0]), np.array([[1.0, 1.0], [1.0, 3.0]])  # one law per row (it raised a NumPy error)
    value, stderr = L.scalar_exponent(a, w, with_stderr=True)
    np.testing.assert_allclose(value, [0.0, 0.5 * np.log(2.0)], atol=1e-15)
    np.testing.assert_allclose(stderr, [np.log(2.0), np.sqrt(2 * 3 / 16) * 2 * np.log(2.0) / np.sqrt(2)])
    for bad in ("a", 1.5, None):
        with pytest.raises(TypeError, match="key must be a JAX key"):
            L.top_exponent(lambda x, key: 0.5 * x, jnp.ones(2), bad, 10)
