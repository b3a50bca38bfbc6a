"""dynsim.measure against closed forms and known laws."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from scipy import stats

import dynsim as ds

M = ds.measure


def test_wasserstein1_between_known_laws():
    # W1(N(0,1), N(m,1)) = |m|; W1(U(0,1), U(0,2)) = int |F1 - F2| = 0.5
    rng = np.random.default_rng(0)
    n = 200_000
    assert M.wasserstein1(rng.standard_normal(n), 0.7 + rng.standard_normal(n)) == pytest.approx(0.7, abs=0.01)
    assert M.wasserstein1(rng.uniform(0, 1, n), rng.uniform(0, 2, n)) == pytest.approx(0.5, abs=0.01)
    # exact for small samples: W1 of {0, 1} and {0, 3} is 1, and agrees with scipy
    assert M.wasserstein1([0.0, 1.0], [0.0, 3.0]) == pytest.approx(1.0)
    a, b = rng.standard_normal(50), rng.exponential(size=70)
    assert M.wasserstein1(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)


def test_circular_wasserstein1():
    # two point masses on a circle of length 1: distance along the shorter arc
    assert M.wasserstein1([0.05], [0.95], period=1.0) == pytest.approx(0.1)
    # rotating a concentrated law by s costs s; across the wrap point too
    rng = np.random.default_rng(1)
    x = 6.1 + 0.05 * rng.standard_normal(10_000)
    assert M.wasserstein1(x, x + 0.3, period=2 * np.pi) == pytest.approx(0.3, rel=1e-9)
    # the uniform law is rotation invariant: distance 0 up to sampling
    u = rng.uniform(0, 2 * np.pi, 100_000)
    assert M.wasserstein1(u, u + 0.3, period=2 * np.pi) < 0.02


def test_sliced_wasserstein1_of_a_shift():
    # shifting by s in d dims: the projection on u moves by s.u, so sliced W1 = E|s.u| = |s| E|u_1| (2/pi in 2-D);
    # the sample is shifted, not redrawn, so W1 along u is |s.u| exactly and only the directions are random
    rng = np.random.default_rng(2)
    a = rng.standard_normal((20_000, 2))
    d, se = M.sliced_wasserstein1(a, a + np.array([1.0, 0.0]), n_projections=400)
    assert abs(d - 2 / np.pi) < 4 * se


def test_detect_period_of_the_eos_toy(x64):
    # GD on tanh(20 t1^2 + t2^2) at lr = 2/39: a 2-cycle at t1 = +-0.0892893115, t2 -> 0 (seed 001, Ex. 2)
    f = lambda th: jnp.tanh(20 * th[0] ** 2 + th[1] ** 2)  # noqa: E731
    lr = 2 / 39
    step = jax.jit(lambda th: th - lr * jax.grad(f)(th))
    th = jnp.array([0.3, 0.2])
    orbit = []
    for _ in range(3000):
        th = step(th)
        orbit.append(np.asarray(th))
    found = M.detect_period(np.array(orbit), tol=1e-8, max_period=16)
    assert int(found.period) == 2
    np.testing.assert_allclose(np.sort(np.abs(found.points[:2, 0])), [0.0892893115] * 2, atol=1e-8)


def test_detect_period_on_the_torus_and_without_period():
    t = np.arange(400)
    orbit = np.stack([(t % 3) * 2.1 + 2 * np.pi * t, np.zeros(400)], axis=-1)  # period 3 mod 2 pi, drifting in R
    assert int(M.detect_period(orbit, max_period=8, period_of_space=2 * np.pi).period) == 3
    assert int(M.detect_period(orbit, max_period=8).period) == 0
    noise = np.random.default_rng(3).standard_normal((2, 400, 1))
    np.testing.assert_array_equal(M.detect_period(noise, max_period=8).period, [0, 0])


def test_rhat_and_ess():
    rng = np.random.default_rng(4)
    same = rng.standard_normal((8, 1000))
    assert abs(M.rhat(same) - 1) < 0.01
    different = same + np.arange(8)[:, None] * 0.5  # eight chains at different means
    assert M.rhat(different) > 1.1
    # iid draws: ESS ~ m n; AR(1) with coefficient a: ESS ~ m n (1 - a) / (1 + a)
    assert M.ess(same) == pytest.approx(8000, rel=0.15)
    a, x = 0.8, np.zeros((8, 4000))
    for t in range(1, 4000):
        x[:, t] = a * x[:, t - 1] + rng.standard_normal(8)
    assert M.ess(x) == pytest.approx(32000 * (1 - a) / (1 + a), rel=0.25)


def test_time_average_batch_means():
    rng = np.random.default_rng(5)
    series = rng.standard_normal((400, 2048))
    mean, se = M.time_average(series, n_batches=16)
    assert abs(se.mean() - 1 / np.sqrt(2048)) < 4 * se.std() / np.sqrt(400)
    assert abs(mean.std() - 1 / np.sqrt(2048)) < 4 / np.sqrt(2048) / np.sqrt(2 * 400)


def test_time_average_uses_every_entry_in_its_batches():
    # 63 iid entries in 32 batches: batches of 1 and 2 entries, all of them in the error bar (with
    # only the first 32 entries the standard error came out up to sqrt(2) too large: sd z = 0.74).
    # z = mean / stderr is then about Student t with 31 degrees of freedom: sd sqrt(31/29).
    series = np.random.default_rng(6).standard_normal((4000, 63))
    mean, se = M.time_average(series, n_batches=32)
    z = mean / se
    assert abs(z.std() - np.sqrt(31 / 29)) < 4 * np.sqrt(31 / 29) / np.sqrt(2 * 4000)


def test_time_average_warns_when_batches_are_shorter_than_the_correlation_time():
    # AR(1) with a = 0.99 (correlation time ~100 steps) in batches of 31 steps: the batch-means
    # error bar is several times too small, and the warning says so; iid draws raise nothing.
    rng = np.random.default_rng(7)
    a, n = 0.99, 1000
    x = np.empty((200, n))
    x[:, 0] = rng.standard_normal(200) / np.sqrt(1 - a * a)
    for t in range(1, n):
        x[:, t] = a * x[:, t - 1] + rng.standard_normal(200)
    with pytest.warns(RuntimeWarning, match="batch means are correlated"):
        M.time_average(x**2)
    y = np.empty(n)  # one series needs r > 0.5 (three of its standard errors): a = 0.999
    y[0] = rng.standard_normal() / np.sqrt(1 - 0.999**2)
    for t in range(1, n):
        y[t] = 0.999 * y[t - 1] + rng.standard_normal()
    with pytest.warns(RuntimeWarning, match="batch means are correlated"):
        M.time_average(y)
    # r of 1, 2, 3, 4: deviations -1.5, -0.5, 0.5, 1.5, so (0.75 - 0.25 + 0.75) / 5
    assert ds.observables.batch_correlation(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.time_average(rng.standard_normal((200, n)))
        M.time_average(rng.standard_normal(n))


def test_empirical_measure_bins_like_the_histogram_observable():
    # half-open bins [e_i, e_{i+1}), the last one too (np.histogram closes it): 1.0 lies outside [0, 1)
    values = xr.DataArray(np.array([[0.0, 0.5, 1.0, 1.0]]), dims=("replica", "time"))
    np.testing.assert_allclose(M.empirical_measure(values, [0.0, 0.5, 1.0]).values, [[0.25, 0.25]])


def test_empirical_measure_over_time_and_replicas():
    values = xr.DataArray(np.array([[0.1, 0.6, 0.7, 0.2], [0.9, 0.8, 0.7, 0.4]]), dims=("replica", "time"))
    over_time = M.empirical_measure(values, [0, 0.5, 1.0], over="time")
    np.testing.assert_allclose(over_time.values, [[0.5, 0.5], [0.25, 0.75]])
    pooled = M.empirical_measure(values, [0, 0.5, 1.0], over=("replica", "time"))
    np.testing.assert_allclose(pooled.values, [0.375, 0.625])


def test_vanishing_change_decays_like_one_over_sqrt_n():
    # GD with additive noise on 100 sin sin at lr = 0.04, phi = f (|phi| <= 100) (seed 000 digest, Sec. 4.2)
    f = lambda th: 100 * jnp.sin(th[0]) * jnp.sin(th[1])  # noqa: E731

    def step(th, key):
        return th - 0.04 * (jax.grad(f)(th) + 20.0 * jax.random.normal(key, (2,)))

    vc = M.vanishing_change(
        step, f, jnp.array([0.3, -1.2]), 0, [100, 1000, 4000], n_replicas=512, n_fresh=8, burn_in=200
    )
    # (i) the mean change is the boundary term, within 4 standard errors
    assert np.all(np.abs(vc.mean - vc.boundary) < 4 * vc.stderr)
    # (ii) sqrt(n) sd(Delta_n) constant within 20%
    assert vc.scaled_sd.max() / vc.scaled_sd.min() < 1.2
    # (iii) the 95% quantile of |Delta_n| is below the Azuma bound 2M/n + 2M sqrt(2 log(40)/n)
    azuma = 200 / vc.times + 200 * np.sqrt(2 * np.log(40) / vc.times)
    assert np.all(vc.quantile <= azuma)


def test_vanishing_change_of_a_deterministic_map_is_its_boundary_term(x64):
    # for a map F without noise, E_F phi(F(theta_t)) = phi(theta_{t+1}): the sum telescopes, and
    # Delta_n = (phi(theta_1) - phi(theta_{n+1}))/n exactly (seed 000 digest, Sec. 4.2), on the chaotic attractor
    f = lambda th: 100 * jnp.sin(th[0]) * jnp.sin(th[1])  # noqa: E731
    vc = M.vanishing_change(
        lambda th, key: th - 0.04 * jax.grad(f)(th), f, jnp.array([0.3, -1.2]), 0, [10, 100, 1000], n_replicas=4
    )
    np.testing.assert_allclose(vc.mean, vc.boundary, rtol=0, atol=1e-12 * 100)
    np.testing.assert_allclose(vc.per_replica, np.broadcast_to(vc.boundary, vc.per_replica.shape), atol=1e-12 * 100)
    assert np.all(np.abs(vc.boundary) > 1e-3)  # not vacuous: the terms do not vanish at these n


def test_window_distances():
    # a period-2 orbit: windows [n, 2n) and [2n, 4n) hold the same two points in equal shares for even n
    orbit = np.tile([0.3, -1.1], 512)
    n, d = M.window_distances(orbit, n_min=16)
    np.testing.assert_allclose(d, 0.0, atol=1e-15)
    # i.i.d. uniform draws: the distance falls roughly like n^-1/2
    x = np.random.default_rng(6).uniform(size=2**16)
    n, d = M.window_distances(x, n_min=64)
    slope = np.polyfit(np.log(n), np.log(d), 1)[0]
    assert -0.8 < slope < -0.3


def test_birkhoff_averages_that_do_not_converge_are_flagged(x64):
    # Seed 000, Thm. 5.3 (Yoccoz), with the seed digest's fixture: a discretised May-Leonard heteroclinic cycle,
    # y_i <- y_i + h (1 - e^y_i - a e^y_{i+1} - b e^y_{i+2}). Its running mean of x_1 = e^y_1 matches the
    # digest's table and never settles; the dyadic-window distances do not shrink. On the chaotic attractor of
    # GD on 100 sin sin at lr = 0.04 they do (about like n^-1/2).
    a, b, h = 0.8, 1.3, 0.05

    def may_leonard(y, _):
        x = jnp.exp(y)
        y = y + h * (1 - x - a * jnp.roll(x, -1) - b * jnp.roll(x, -2))
        return y, jnp.exp(y[0])

    _, x1 = jax.lax.scan(may_leonard, jnp.log(jnp.array([0.3, 0.2, 0.1])), None, length=4_000_000)
    x1 = np.asarray(x1)
    running = np.cumsum(x1) / np.arange(1, x1.size + 1)
    np.testing.assert_allclose(
        running[[999, 9_999, 99_999, 999_999, 1_999_999, 3_999_999]],
        [0.289, 0.312, 0.269, 0.293, 0.453, 0.246],
        atol=6e-4,
    )
    n, d = M.window_distances(x1, n_min=1024)
    assert d[-1] > 0.2 and np.polyfit(np.log(n), np.log(d), 1)[0] > 0

    def sin_gd(th, _):
        th = th - 0.04 * jax.grad(lambda t: 100 * jnp.sin(t[0]) * jnp.sin(t[1]))(th)
        return th, jnp.mod(th[0] + th[1], 2 * np.pi)

    _, p = jax.lax.scan(sin_gd, jnp.array([0.3, -1.2]), None, length=2**17)
    n, d = M.window_distances(np.asarray(p), period=2 * np.pi, n_min=256)
    assert np.polyfit(np.log(n), np.log(d), 1)[0] < -0.3 and d[-1] < 0.05


def test_ess_of_chains_without_information_is_nan():
    # a constant chain, or one with a NaN, has no autocorrelation to read: the floor on tau once
    # turned them into 1041 effective draws out of 400
    assert np.isnan(M.ess(np.ones((4, 100))))
    x = np.random.default_rng(0).standard_normal((4, 100))
    x[1, 0] = np.nan
    assert np.isnan(M.ess(x)) and np.isnan(M.rhat(x))


@pytest.mark.parametrize("n, q", [(50, 0.5), (200, 0.9), (7, 0.5)])
def test_quantile_interval_covers_as_the_binomial_law_says(n, q):
    # the interval [X_(j), X_(k)] covers xi_q exactly when j <= B < k, B ~ Binomial(n, q): its coverage is
    # F(k - 1) - F(j - 1) >= level, and the empirical coverage on Pareto(1.2) samples (no variance) matches it
    from scipy import stats

    rng = np.random.default_rng(4)
    reps, level = 4000, 0.95
    true = (1 - q) ** (-1 / 1.2) - 1  # Lomax(1.2) quantile
    hits = 0
    for _ in range(reps):
        x = rng.pareto(1.2, n)
        est = ds.measure.quantile_interval(x, q, level=level)
        assert est.low <= est.value <= est.high
        hits += est.low <= true <= est.high
    j = int(stats.binom.ppf((1 - level) / 2, n, q))
    k = int(stats.binom.ppf(1 - (1 - level) / 2, n, q)) + 1
    exact = stats.binom.cdf(k - 1, n, q) - (stats.binom.cdf(j - 1, n, q) if j >= 1 else 0.0)
    assert exact >= level
    assert abs(hits / reps - exact) < 4 * np.sqrt(exact * (1 - exact) / reps)
    with pytest.raises(ValueError, match="NaN"):
        ds.measure.quantile_interval([1.0, np.nan])


def _step(x, k):
    return 0.5 * x + jax.random.normal(k, x.shape, x.dtype)


_CHAINS = np.random.default_rng(0).standard_normal((4, 10))
_SERIES = xr.DataArray(np.random.default_rng(1).standard_normal((3, 100)), dims=("replica", "time"))


@pytest.mark.parametrize(
    "call, error, message",
    [
        # R-hat and ESS: 2 chains (after splitting) for the between-chain variance, 2 draws per (split) chain
        (lambda: M.rhat(_CHAINS[:, :1]), ValueError, r"at least 4 draws per chain .* got shape \(4, 1\)"),
        (lambda: M.rhat(_CHAINS[:, :2]), ValueError, r"at least 4 draws per chain .* got shape \(4, 2\)"),
        (lambda: M.rhat(_CHAINS[:, :3]), ValueError, r"at least 4 draws per chain .* got shape \(4, 3\)"),
        (lambda: M.rhat(_CHAINS[:1], split=False), ValueError, r"at least 2 chains .* got shape \(1, 10\)"),
        (lambda: M.rhat(_CHAINS[:, :1], split=False), ValueError, r"at least 2 draws per chain .* shape \(4, 1\)"),
        (lambda: M.rhat(_CHAINS[:0]), ValueError, r"at least 1 chain .* got shape \(0, 10\)"),
        (lambda: M.ess(_CHAINS[:, :1]), ValueError, r"at least 4 draws per chain .* got shape \(4, 1\)"),
        (lambda: M.ess(_CHAINS[:, :2]), ValueError, r"at least 4 draws per chain .* got shape \(4, 2\)"),
        (lambda: M.ess(_CHAINS[:, :3]), ValueError, r"at least 4 draws per chain .* got shape \(4, 3\)"),
        # time_average: discard counts entries from the start
        (
            lambda: M.time_average(np.arange(100.0), discard=-10, n_batches=4),
            ValueError,
            r"discard must be >= 0, got -10$",
        ),
        (lambda: M.time_average(np.arange(100.0), discard=1.5), TypeError, r"discard must be an integer, got 1\.5"),
        (
            lambda: M.time_average(np.arange(100.0), discard=98, n_batches=4),
            ValueError,
            r"discard=98 leaves 2 of the 100 entries .* fewer than n_batches=4",
        ),
        # empirical_measure: bin edges as observables.histogram takes them
        (lambda: M.empirical_measure(_SERIES, 50), ValueError, r"bins must be a 1-D array of at least 2 edges, got 50"),
        (lambda: M.empirical_measure(_SERIES, [0.0]), ValueError, r"at least 2 edges, got \[0\.0\]"),
        (lambda: M.empirical_measure(_SERIES, [1, 0, -1]), ValueError, r"increasing, got \[1\.0, 0\.0, -1\.0\]"),
        (lambda: M.empirical_measure(_SERIES, [0, 0, 1]), ValueError, r"strictly increasing, got \[0\.0, 0\.0, 1\.0\]"),
        (lambda: M.empirical_measure(_SERIES, [0, np.inf]), ValueError, r"bins must be finite .* got \[0\.0, inf\]"),
        # hill_tail_index: level is a probability
        (lambda: M.hill_tail_index(_SERIES.values[0], level=95), ValueError, r"level must be in \(0, 1\), got 95"),
        (lambda: M.hill_tail_index(_SERIES.values[0], level=1.0), ValueError, r"level must be in \(0, 1\), got 1\.0"),
        # ratio_of_means: paired samples
        (
            lambda: M.ratio_of_means([1.0, 2.0, 3.0], [2.0]),
            ValueError,
            r"a and b must be paired samples of one shape, got shapes \(3,\) and \(1,\)",
        ),
        # seeds: integers (Python or NumPy) >= 0, never booleans
        (
            lambda: M.vanishing_change(_step, lambda x: x[0], jnp.zeros(1), True, [2], n_replicas=2),
            TypeError,
            r"key must be a JAX key or an integer seed, got True",
        ),
        (
            lambda: M.vanishing_change(_step, lambda x: x[0], jnp.zeros(1), np.int64(-1), [2], n_replicas=2),
            ValueError,
            r"key must be a JAX key or an integer seed >= 0, got -1",
        ),
        (
            lambda: M.scaled_step_change(lambda x: x[0], lambda x, k: x, jnp.zeros((2, 1)), [1.0], key=np.int64(-1)),
            ValueError,
            r"key must be a JAX key or an integer seed >= 0, got -1",
        ),
        # sparsity: an empty array has no largest entry
        (lambda: M.sparsity([]), ValueError, r"weights must not be empty, got shape \(0,\)"),
        (lambda: M.sparsity(np.zeros((2, 0)), batched=True), ValueError, r"must not be empty, got shape \(2, 0\)"),
        (lambda: M.sparsity(3.0, batched=True), ValueError, r"batched=True needs weights with a leading axis"),
        # Wasserstein distances: between laws of finite samples
        (lambda: M.wasserstein1([np.nan, 1.0], [0.0, 1.0]), ValueError, r"a must be finite, got \[nan, 1\.0\]"),
        (lambda: M.wasserstein1([0.0, 1.0], [np.inf]), ValueError, r"b must be finite, got \[inf\]"),
        (lambda: M.wasserstein1([np.nan], [0.0], period=1.0), ValueError, r"a must be finite, got \[nan\]"),
        (
            lambda: M.sliced_wasserstein1(np.array([[0.0, np.nan], [1.0, 1.0]]), np.zeros((2, 2))),
            ValueError,
            r"a must be finite, got 1 non-finite value",
        ),
        (
            lambda: M.window_distances(np.r_[np.zeros(60), np.nan, np.zeros(3)]),
            ValueError,
            r"trajectory must be finite, got 1 non-finite value",
        ),
    ],
)
def test_invalid_arguments_are_refused_at_entry(call, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way to the error
        with pytest.raises(error, match=message):
            call()


def test_numpy_integer_seeds_are_seeds():
    one = M.vanishing_change(_step, lambda x: x[0], jnp.zeros(1), np.int64(3), [2, 4], n_replicas=2, n_fresh=1)
    other = M.vanishing_change(_step, lambda x: x[0], jnp.zeros(1), 3, [2, 4], n_replicas=2, n_fresh=1)
    np.testing.assert_array_equal(one.per_replica, other.per_replica)
    samples = jnp.linspace(0.0, 1.0, 6).reshape(3, 2)
    update = lambda x, k: jax.random.normal(k, x.shape, x.dtype)  # noqa: E731
    one = M.scaled_step_change(lambda x: jnp.sum(x**2), update, samples, [1.0], key=np.uint32(5))
    other = M.scaled_step_change(lambda x: jnp.sum(x**2), update, samples, [1.0], key=5)
    np.testing.assert_array_equal(one.per_sample, other.per_sample)


def _reference_rank_rhat(chains: np.ndarray) -> float:
    """Vehtari et al. (2021), eqs. 14-15, written out for one (chains, draws) array: split,
    rank over all draws, normal scores, BDA3's R-hat; the same for |x - median|; the larger."""
    half = chains.shape[1] // 2
    split = np.concatenate([chains[:, :half], chains[:, half : 2 * half]])

    def scores(x):  # tied values (the two draws around the median, once folded) share their average rank
        values, first, counts = np.unique(x, return_index=True, return_counts=True)
        average = np.cumsum(counts) - (counts - 1) / 2
        ranks = average[np.searchsorted(values, x)]
        return stats.norm.ppf((ranks - 3 / 8) / (x.size + 1 / 4))

    def classic(x):
        n = x.shape[1]
        w = np.mean([np.var(c, ddof=1) for c in x])
        b = n * np.var([c.mean() for c in x], ddof=1)
        return np.sqrt(((n - 1) / n * w + b / n) / w)

    return max(classic(scores(split)), classic(scores(np.abs(split - np.median(split)))))


def test_rank_normalized_rhat_sees_scale_and_tails_and_ignores_monotone_maps():
    rng = np.random.default_rng(3)
    scale = rng.standard_normal((4, 1000)) * np.array([1, 1, 1, 5])[:, None]
    cauchy = rng.standard_cauchy((4, 1000)) + np.array([0, 0, 0, 3])[:, None]
    same = rng.standard_normal((4, 1000))
    for x in (scale, cauchy, same):
        assert M.rhat(x) == pytest.approx(_reference_rank_rhat(x), rel=1e-12)
    assert M.rhat(scale, rank=False) < 1.01 < 1.1 < M.rhat(scale)  # the classic form sees location only
    assert M.rhat(cauchy) > 1.05 and M.rhat(same) < 1.01
    # ranks: units do not matter, up to the folded tie at the median that rounding in 2 x + 7 may break (one
    # pair of ranks moved by 1/2 among 4000)
    assert M.rhat(2 * scale + 7) == pytest.approx(M.rhat(scale), rel=1e-4)
    diverged = same.copy()
    diverged[0, :10] = np.inf  # infinite draws of diverged runs are the largest, not NaN
    assert np.isfinite(M.rhat(diverged))
    # bulk ESS of independent draws is their number; Cauchy draws have one too
    assert M.ess(same, rank=True) == pytest.approx(4000, rel=0.15)
    assert M.ess(rng.standard_cauchy((4, 1000)), rank=True) == pytest.approx(4000, rel=0.15)


def test_quantiles_and_tails_with_infinite_samples():
    """Infinite samples (diverged runs set to inf) are the largest order statistics: the median of
    {1, 2, inf, inf} is inf (NumPy's interpolation gave NaN), and the Hill estimate refuses them rather
    than dropping them, which made a Pareto(1) tail read 3.4."""
    assert M.quantile_interval([1, np.inf, np.inf], 0.5).value == np.inf
    assert M.quantile_interval([1, 2, np.inf, np.inf], 0.5).value == np.inf
    assert M.quantile_interval([1, 2, 3, np.inf], 0.5).value == 2.5
    assert M.quantile_interval([1, 2, 3, np.inf], 1 / 3).value == 2.0
    x = np.random.default_rng(0).pareto(1.0, 10_000) + 1
    x[x > np.quantile(x, 0.99)] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        M.hill_tail_index(x, 100)
    with pytest.raises(ValueError, match="no tail"):
        M.hill_tail_index(np.r_[np.full(5, 2.0), np.ones(20)], 3)


def test_ranks_of_non_finite_matrices_and_step_change_scales_are_refused_by_name():
    with pytest.raises(ValueError, match="non-finite"):
        M.numerical_rank(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        M.effective_rank(np.array([[1.0, np.inf], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="scales must be a non-empty 1-D"):
        M.scaled_step_change(lambda x: x**2, lambda x, k: -x, jnp.ones(3), 1.0)
