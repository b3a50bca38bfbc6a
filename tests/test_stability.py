"""dynsim.stability: thresholds, quadrature, phases, theory against simulation."""

import itertools

import numpy as np
import pytest
from scipy import integrate, optimize, stats

import dynsim as ds
from dynsim import prng

S = ds.stability


def test_thresholds_closed_forms():
    assert S.lambda_gd(4.0) == 0.5
    assert S.lambda_ss(1.0, 1) == 1.0 and S.lambda_ss(2.0, 3) == pytest.approx(2 * 3 / (4 * 2.0))
    for s in [1, 2, 8, 32]:
        assert S.lambda_ds_gaussian(s) == pytest.approx(2 * s / (s + 2))
        assert S.lambda_ds_gaussian(s, variance=2.0) == pytest.approx(s / (s + 2))
    # Bernoulli two-point data (x1, x2) = (10, 1): digest Sec. 4.1 numbers
    m2, m4 = (100 + 1) / 2, (1e4 + 1) / 2
    np.testing.assert_allclose([S.lambda_ds(m2, m4, s) for s in (1, 2, 8)], [2.020e-2, 2.675e-2, 3.536e-2], rtol=1e-3)
    # one outlier x_0^2 = c = 1e4 among N = 100 standard normals: lambda_DS ~ 2 S / (c (1 + (S - 1)/N)), 2/c at S = 1
    # (seed 004 eqs. 26-27 and Sec. 4.1 print 1/(N c), 100x smaller: digest erratum 5)
    x2 = np.random.default_rng(0).standard_normal(100) ** 2
    x2[0] = 1e4
    for s in (1, 4):
        approx = 2 * s / (1e4 * (1 + (s - 1) / 100))
        assert S.lambda_ds(x2.mean(), (x2**2).mean(), s) == pytest.approx(approx, rel=0.02)


@pytest.mark.parametrize("s", [1, 2, 8])
def test_lambda_ds_by_monte_carlo_on_both_sides(s):
    # E(1 - lr mean_B x^2)^2 crosses 1 at lambda_DS: below it < 1, above it > 1 (4 sigma).
    n = 400_000
    xbar = np.mean(np.random.default_rng(s).standard_normal((n, s)) ** 2, axis=1)
    lam = S.lambda_ds_gaussian(s)
    for factor, below in [(0.9, True), (1.1, False)]:
        v = (1 - factor * lam * xbar) ** 2
        mean, se = v.mean(), v.std() / np.sqrt(n)
        assert (mean < 1 - 4 * se) if below else (mean > 1 + 4 * se)


def test_gaussian_log_abs():
    assert S.gaussian_log_abs(0.0) == pytest.approx(-(np.euler_gamma + np.log(2)) / 2, rel=1e-12)
    for b in [0.3, 1.3, 4.0, 19.0, 25.0]:
        f = lambda z: np.log(abs(z + b)) * stats.norm.pdf(z)  # noqa: E731
        ref = sum(integrate.quad(f, lo, hi, limit=200)[0] for lo, hi in [(-np.inf, -b), (-b, np.inf)])
        assert S.gaussian_log_abs(b) == pytest.approx(ref, abs=1e-8)


DIGEST = [  # (lr, mu, S) -> (Lambda_+, Lambda_-), digest Sec. 4.3, 10^7-sample MC checked
    ((0.5, 0.06, 1), -0.083848, -0.114201),
    ((1.5, 0.3, 1), +0.207188, +0.068668),
    ((1.0, 0.06, 2), -0.047580, -0.093410),
    ((2.0, 0.5, 8), +0.587941, -0.809924),
    ((0.2, 0.02, 1), -0.073935, -0.082486),
    ((3.0, 0.9, 1), +0.942740, +0.090272),
]


@pytest.mark.parametrize("cell, plus, minus", DIGEST)
def test_saddle_exponents_quadrature(cell, plus, minus):
    lr, mu, s = cell
    r = S.saddle_exponents([lr], [mu], batch_size=s)
    assert r.Lambda_plus.item() == pytest.approx(plus, abs=2e-6)
    assert r.Lambda_minus.item() == pytest.approx(minus, abs=2e-6)


@pytest.mark.parametrize("lr, mu, s", [(0.8, 0.15, 3), (1.0, 2.0, 1), (0.3, 1.5, 2), (1.0, -0.5, 1)])
def test_saddle_quadrature_against_monte_carlo(lr, mu, s):
    # mu outside [0, 1] too: mu > 1 once fell back to mu = 1 (phase I for IV at lr = 1, mu = 2)
    n = 2_000_000
    rng = np.random.default_rng(5)
    x, eps = rng.standard_normal((n, s)), 2 * rng.standard_normal((n, s))
    chi = np.mean(x * (mu * x + (1 - mu) * eps), axis=1)
    r = S.saddle_exponents([lr], [mu], batch_size=s)
    for sign, var in [(1, "Lambda_plus"), (-1, "Lambda_minus")]:
        v = np.log(np.abs(1 + sign * lr * chi))
        assert abs(r[var].item() - v.mean()) < 4 * v.std() / np.sqrt(n), (var, r[var].item(), v.mean())
    ms = (1 - lr * chi) ** 2
    assert abs(r.ms_minus.item() - ms.mean()) < 4 * ms.std() / np.sqrt(n)


def _root(f, a, b):
    return optimize.brentq(f, a, b, xtol=1e-10)


def test_digest_phase_boundaries_at_mu_0_1_and_tip():
    lam_plus = lambda lr, mu=0.1: S.saddle_exponents([lr], [mu]).Lambda_plus.item()  # noqa: E731
    assert _root(lam_plus, 0.03, 0.2) == pytest.approx(0.0597, abs=1e-4)
    assert _root(lam_plus, 0.5, 0.9) == pytest.approx(0.7828, abs=1e-4)
    # III exists only for mu < 0.308 (digest: 0.3079, tip at lr ~ 0.463)
    lrs = np.linspace(0.3, 0.65, 71)
    min_plus = lambda mu: S.saddle_exponents(lrs, [mu]).Lambda_plus.min().item()  # noqa: E731
    assert min_plus(0.305) < 0 < min_plus(0.311)


@pytest.mark.parametrize(
    "mu, batch_size, noise_var, sign, bracket, expected",
    [
        (0.0, 1, 4.0, -1, (0.5, 1.0), 0.765),  # Lambda_- = 0: IV begins (digest Sec. 4.3, lambda-mu table)
        (0.1, 1, 4.0, -1, (0.85, 1.0), 0.9047),
        (0.5, 1, 4.0, -1, (1.5, 2.2), 1.8679),
        (0.9, 1, 4.0, -1, (2.4, 3.0), 2.6147),
        (1.0, 1, 4.0, -1, (2.0, 3.0), 2.4212),
        (0.02, 1, 4.0, +1, (0.005, 0.05), 0.0104),  # Lambda_+ = 0: III's edges
        (0.02, 1, 4.0, +1, (0.5, 0.78), 0.7702),
        (0.06, 8, 4.0, +1, (0.1, 0.5), 0.2625),  # lambda-S table, S = 8
        (0.06, 8, 4.0, +1, (1.5, 2.4), 2.1799),
        (0.06, 8, 4.0, -1, (2.3, 3.0), 2.5765),
        (0.0, 1, 2.0, -1, (0.9, 1.3), 1.0819),  # the Var eps = 2 reading
        (0.1, 1, 2.0, +1, (0.05, 0.3), 0.1157),
    ],
)
def test_digest_boundaries_across_mu_batch_size_and_noise(mu, batch_size, noise_var, sign, bracket, expected):
    var = "Lambda_plus" if sign > 0 else "Lambda_minus"

    def exponent(lr):
        return S.saddle_exponents([lr], [mu], batch_size=batch_size, noise_var=noise_var)[var].item()

    assert _root(exponent, *bracket) == pytest.approx(expected, abs=1e-4)


def test_phase_three_closes_between_batch_sizes_104_and_110():
    # digest Sec. 4.3 (mu = 0.06): min over lr of Lambda_+ is -0.00073 at S = 104 (lr ~ 3.85), +0.0057 at S = 110
    lrs = np.linspace(3.6, 4.2, 61)
    low = [S.saddle_exponents(lrs, [0.06], batch_size=s).Lambda_plus.min().item() for s in (104, 110)]
    np.testing.assert_allclose(low, [-0.00073, 0.0057], atol=2e-5)


def test_no_phase_two_for_gaussian_infinite_data():
    phases = S.saddle_phases(np.linspace(0.02, 4.0, 60), np.linspace(0.0, 1.0, 26)).phase.values
    assert not np.any(phases == S.PHASES.index("II"))
    assert set(np.unique(phases)) == {0, 1, 3, 4}


def test_two_point_law_exact_boundaries():
    # a = -0.5 (digest Sec. 4.4): III on (1, 1.5616), II on (1.5616, 2.5616), MS(w-u) for lr < 2(1+a)/(1+a^2)
    r = S.saddle_phases([0.5, 0.9, 1.2, 1.5, 1.7, 2.5, 2.7], [-0.5], chi="two_point")
    names = [S.PHASES[p] for p in r.phase.values[:, 0]]
    assert names == ["I_ms", "I_p", "III", "III", "II", "II", "IV"]
    assert 2 * 0.5 / 1.25 == pytest.approx(0.8)  # I_ms ends at 0.8 < 0.9
    # batch S: A+- = sum_k C(S,k) 2^-S log|1 +- lr (k + (S-k) a)/S|
    r = S.saddle_exponents([1.3], [-0.3], chi="two_point", batch_size=4)
    k = np.arange(5)
    w = stats.binom.pmf(k, 4, 0.5)
    assert r.Lambda_minus.item() == pytest.approx(np.sum(w * np.log(np.abs(1 - 1.3 * (k - 0.3 * (4 - k)) / 4))))


@pytest.mark.parametrize("a", [-0.9, -0.75, -0.5, -0.3, -0.2])
def test_two_point_law_boundaries_are_the_closed_forms(a):
    # chi = 1 or a with probability 1/2 (digest Sec. 4.4, a in (-1, 0)): w + u stable for lr in ((1 + a)/|a|, r_+),
    # w - u stable for lr < r_-, with r_-+ = [sqrt((1 + a)^2 + 8|a|) -+ (1 + a)] / (2|a|); mean-square stable for
    # lr < 2 (1 + a)/(1 + a^2). Phases one part in 10^3 inside each side of every boundary.
    root = np.sqrt((1 + a) ** 2 + 8 * abs(a))
    plus_low, plus_high, minus_high = (1 + a) / abs(a), (root + (1 + a)) / (2 * abs(a)), (root - (1 + a)) / (2 * abs(a))
    ms_high = 2 * (1 + a) / (1 + a * a)
    edges = np.array(sorted({plus_low, plus_high, minus_high, ms_high}))
    lrs = np.concatenate([edges * (1 - 1e-3), edges * (1 + 1e-3)])
    r = S.saddle_exponents(lrs, [a], chi="two_point")
    plus_stable = (lrs > plus_low) & (lrs < plus_high)
    np.testing.assert_array_equal(r.Lambda_plus.values[:, 0] < 0, plus_stable)
    np.testing.assert_array_equal(r.Lambda_minus.values[:, 0] < 0, lrs < minus_high)
    np.testing.assert_array_equal(r.ms_minus.values[:, 0] < 1, lrs < ms_high)
    # the digest's table of II = (max(plus_low, minus_high), plus_high); III = (plus_low, minus_high) where not empty
    table = {-0.9: (1.4362, 1.5473), -0.75: (1.4748, 1.8081), -0.5: (1.5616, 2.5616), -0.3: (2.3333, 4.0)}
    table[-0.2] = (4.0, 5.7417)
    np.testing.assert_allclose([max(plus_low, minus_high), plus_high], table[a], atol=1e-4)


@pytest.mark.parametrize("n, s", [(3, 2), (6, 5)])
def test_finite_data_exact_minibatch_average(n, s):
    # the average over all N^S ordered batches, computed independently here; the theory sums over the
    # C(N + S - 1, S) multisets with multinomial weights (462 for 7776 at N = 6, S = 5), so a
    # max_tuples below N^S still gives the exact value
    lr, mu, seed = 0.7, 0.25, 4
    r = S.saddle_exponents([lr], [mu], batch_size=s, n_data=n, seed=seed, max_tuples=1000)
    problem = ds.problems.rank1_saddle(n_data=n)
    data = ds.problems.draw_dataset(problem, prng.data_key(prng.key(seed)), n)
    x, eps = np.asarray(data["x"], float), np.asarray(data["eps"], float)
    chi = x * (mu * x + (1 - mu) * eps)
    batches = np.array([np.mean(chi[list(p)]) for p in itertools.product(range(n), repeat=s)])
    for sign, var in [(1, "Lambda_plus"), (-1, "Lambda_minus")]:
        assert r[var].item() == pytest.approx(np.mean(np.log(np.abs(1 + sign * lr * batches))), rel=1e-12)
    assert r.ms_minus.item() == pytest.approx(np.mean((1 - lr * batches) ** 2), rel=1e-12)
    assert r.attrs["exact"] == 1


def test_wilson_interval():
    low, high = S.wilson_interval(50, 100, 0.95)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_classify():
    codes = S.classify([1.0, 1.0, -1.0, -1.0, 1.0, np.nan], [-1.0, -1.0, 1.0, -1.0, 1.0, -1.0], [0.5, 2, 1, 1, 1, 1])
    assert codes.tolist() == [0, 1, 2, 3, 4, -1]
    # an undecided E(1 - lr chi)^2 leaves phase I undecided (I_ms or I_p), and no other phase
    codes = S.classify([1.0, -1.0, -1.0, 1.0], [-1.0, 1.0, -1.0, 1.0], [np.nan] * 4)
    assert codes.tolist() == [-1, 2, 3, 4]


def test_theory_and_simulation_agree_where_exponents_are_clear():
    lrs, mus = np.linspace(0.05, 2.5, 12), np.linspace(0.0, 0.9, 7)
    theory = S.saddle_phases(lrs, mus)
    sim = S.saddle_phases(lrs, mus, method="simulation", n_replicas=128, n_steps=1000, seed=1)
    clear = (np.abs(theory.Lambda_plus) > 0.05) & (np.abs(theory.Lambda_minus) > 0.05)
    clear_ms = clear & (np.abs(theory.ms_minus - 1) > 0.05)  # I_ms against I_p: E(1 - lr chi)^2 against 1
    assert np.all(sim.phase.values[clear_ms] >= 0)
    decided = sim.phase.values >= 0
    np.testing.assert_array_equal(sim.phase.values[decided], theory.phase.values[decided])
    # simulated exponents within 5 standard errors of the quadrature
    z = (sim.Lambda_minus - theory.Lambda_minus) / sim.Lambda_minus_stderr
    assert float(np.abs(z).max()) < 5


def test_phases_record_their_call_and_read_exact_hits_as_minus_infinity():
    # two-point data, lr = 1: drawing xy = 1 sets w - u to 0 exactly, so Lambda_- = -inf in theory and
    # in simulation (every replica hits within 50 steps but with probability 2^-50)
    for method in ("theory", "simulation"):
        res = S.saddle_phases([1.0], [0.5], chi="two_point", method=method, n_replicas=64, n_steps=50)
        assert res.Lambda_minus.item() == -np.inf
        assert ds.io.config(res)["method"] == method and res.attrs["phases"] == ", ".join(S.PHASES)
        assert "per step" in res.Lambda_plus.attrs["long_name"]
    with pytest.warns(RuntimeWarning, match="n_replicas=6 can decide no cell"):
        S.saddle_phases([1.0], [0.1], method="simulation", n_replicas=6, n_steps=10)


def test_simulation_on_finite_data_uses_the_theory_dataset():
    lrs, mus = np.linspace(0.1, 2.0, 6), [0.1, 0.5]
    theory = S.saddle_phases(lrs, mus, n_data=4, seed=2)
    sim = S.saddle_phases(lrs, mus, n_data=4, method="simulation", n_replicas=64, n_steps=1500, seed=2)
    z = (sim.Lambda_plus - theory.Lambda_plus) / sim.Lambda_plus_stderr
    assert float(np.abs(z).max()) < 5


def test_refinement_decides_more_cells():
    lrs, mus = np.linspace(0.6, 0.95, 8), [0.05]  # near the III -> IV boundaries
    once = S.saddle_phases(lrs, mus, method="simulation", n_replicas=64, n_steps=100)
    refined = S.saddle_phases(lrs, mus, method="simulation", n_replicas=64, n_steps=100, refine=2)
    assert (refined.phase.values >= 0).sum() >= (once.phase.values >= 0).sum()
    assert refined.refined.values.sum() == (once.phase.values < 0).sum()


def test_a_second_simulated_diagram_of_the_same_law_compiles_nothing():
    from dynsim import engine

    S.saddle_phases([0.5, 1.0], [0.1], method="simulation", n_replicas=64, n_steps=40, seed=1)
    programs = dict(engine._PROGRAMS)
    S.saddle_phases([0.3, 2.0], [0.4], method="simulation", n_replicas=64, n_steps=40, seed=2)
    assert dict(engine._PROGRAMS) == programs  # the same keys, the same program objects
    S.saddle_phases([0.3, 2.0], [0.4], method="simulation", n_replicas=64, n_steps=80, seed=2)
    assert set(engine._PROGRAMS) - set(programs)  # a new program: the time average's batches depend on the run length


def test_probabilistic_threshold_and_exponent_known_answers():
    # seed 004 digest Sec. 4.1-4.2 (quad + Brent, float64): lambda_P for S = 1, 2, 4, 8, 32, m_S(lr) and its minima
    np.testing.assert_allclose(
        [S.lambda_p_gaussian(s) for s in (1, 2, 4, 8, 32)], [2.4212, 2.6845, 2.6630, 2.4926, 2.1510], atol=6e-5
    )
    np.testing.assert_allclose(
        S.regression_exponent([0.05, 0.1, 0.3, 0.5, 2 / 3, 1.0, 1.5, 2.0, 3.0]),
        [-0.0547, -0.1247, -0.3946, -0.48463, -0.4864, -0.41699, -0.2662, -0.11625, 0.14386],
        atol=6e-5,
    )
    assert float(S.regression_exponent(1.0, 2)) == pytest.approx(-0.69717, abs=6e-6)
    assert float(S.regression_exponent(1.0, 8)) == pytest.approx(-1.34273, abs=6e-6)
    for s, where, low in ((1, 0.59, -0.4907), (2, 0.74, -0.742), (8, 0.92, -1.356)):
        exponent = lambda r: float(S.regression_exponent(r, s))  # noqa: E731
        best = optimize.minimize_scalar(exponent, bounds=(0.2, 1.5), method="bounded")
        assert best.x == pytest.approx(where, abs=0.01) and best.fun == pytest.approx(low, abs=6e-4)
    # m_S < 0 below lambda_P and > 0 above, for every S; lambda_P lies far above lambda_DS = 2S/(S+2)
    for s in (1, 3, 16):
        root = S.lambda_p_gaussian(s)
        assert S.regression_exponent(0.999 * root, s) < 0 < S.regression_exponent(1.001 * root, s)
        assert root > S.lambda_ds_gaussian(s) and S.lambda_p_gaussian(s, variance=4.0) == pytest.approx(root / 4)


@pytest.mark.parametrize("s", [2, 8, 512, 10_000])
def test_regression_exponent_against_monte_carlo(s):
    # S mean squares of normals are chi^2_S / S; at S >~ 350 the quadrature once missed the law's
    # narrow peak near sqrt(S) and returned -4.10 for -3.41 (S = 512, lr = 1)
    xbar = np.random.default_rng(10 + s).chisquare(s, 1_000_000) / s
    for lr in (0.001, 0.7, 1.0, 2.0, 3.0):
        value, se = ds.lyapunov.scalar_exponent(1 - lr * xbar, with_stderr=True)
        assert abs(value - float(S.regression_exponent(lr, s))) < 4 * se, (lr, value, se)
    assert 2 < S.lambda_p_gaussian(s) < 2 + 6 / s  # lambda_P -> 2/sigma^2 from above as S grows


def test_sgd_with_batch_four_converges_in_probability_up_to_lambda_p():
    # SGD on interpolating 1-D Gaussian regression, batch 4: log|w_t - w*| has slope m_4(lr), negative at lr = 2.5
    # (above lambda_DS = 1.33, where the mean square diverges) and positive at 2.9 (above lambda_P = 2.663)
    problem = ds.problems.linear_regression_1d()
    lrs = [2.5, 2.9]
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=4),
        grid={"lr": lrs},
        n_replicas=4000,
        n_steps=300,
        record_every=10,
        observables={
            "logdist": ds.observables.log_distance(problem.fixed_point),
            "diverged": ds.observables.diverged(),
        },
    )
    with pytest.warns(RuntimeWarning, match="stopped moving"):  # a few float32 distances underflow at lr = 2.5
        est = ds.lyapunov.from_log_distance(res, transient=20)
    for lr in lrs:
        e, se = est.exponent.sel(lr=lr).item(), est.stderr.sel(lr=lr).item()
        assert abs(e - float(S.regression_exponent(lr, 4))) < 4 * se, (lr, e, se)
    assert est.exponent.sel(lr=2.5).item() < 0 < est.exponent.sel(lr=2.9).item()


def test_saddle_phases_records_numpy_scalars_and_datasets_in_its_config():
    """The configuration is JSON: NumPy scalars and a ``data=`` dataset were not serializable, a TypeError
    raised after the whole computation."""
    import json

    x, eps = np.array([0.3, -1.2, 0.8]), np.array([0.5, 0.1, -0.7])
    res = S.saddle_phases(
        [0.5, 1.0],
        [0.1, 0.5],
        batch_size=np.int64(2),
        n_data=np.int64(3),
        noise_var=np.float32(1.0),
        data={"x": x, "eps": eps},
        nodes=np.int64(100),
    )
    config = json.loads(res.attrs["config"])
    assert config["batch_size"] == 2 and config["n_data"] == 3 and config["data"]["x"] == x.tolist()
    with pytest.raises(ValueError, match="n_steps must be >= 8"):
        S.saddle_phases([0.5, 1.0], [0.1, 0.5], method="simulation", n_steps=5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr-points", "1"], "--lr-points must be >= 2"),
        (["--steps", "5"], "--steps must be >= 8"),
        (["--diagram", "finite-N", "--datasets", "0"], "--datasets must be >= 1"),
        (["--diagram", "finite-N", "--n-data", "3", "3"], "--n-data values must be distinct"),
        (["--diagram", "lr-S", "--second-points", "5"], "--second-points do not apply"),
        (["--engine", "fused", "--resume"], "drop --resume"),
    ],
)
def test_phase_diagram_refuses_unusable_options_before_running(argv, message, tmp_path, capsys):
    from conftest import import_experiment

    experiment = import_experiment("phase_diagram")
    with pytest.raises(SystemExit):
        experiment.main([*argv, "--out", str(tmp_path), "--results", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing computed, nothing written


@pytest.mark.parametrize("engine", ["simulate", "fused"])
def test_simulated_exponents_at_learning_rates_whose_squares_overflow_float32(engine):
    """At ``|lr chi| > 1.8e19`` the mean-square factor's square overflows float32: the run froze with it, and the
    exponent read 0.31 for 42.6 (``lr = 1e19``) and 0 beyond."""
    lrs, mus = [1e19, 1e25], [0.5]
    theory = S.saddle_phases(lrs, mus)
    sim = S.saddle_phases(lrs, mus, method="simulation", n_replicas=256, n_steps=1000, engine=engine)
    z = (sim.Lambda_plus - theory.Lambda_plus) / sim.Lambda_plus_stderr
    assert np.all(np.abs(z.values) < 4), z.values
    assert np.all(sim.phase.values == S.PHASES.index("IV")) and np.all(np.isinf(sim.ms_minus.values))
