"""Seed 002 (thesis ch. 5): (delta, eps)-stationarity, the minimum-norm point, INGD and Stochastic INGD.

Known answers: the minimum-norm point of two vectors (closed form), of sets around 0, of random
sets (KKT condition and brute-force enumeration of supports); the Goldstein distance of ``|x|_1``
(exact by orthant counting); the zig-zag of Lemma 5.7.1; INGD on ``|x|``, whose oracle-call count
has an exact law (a deterministic run of descents, then a geometric number of inner steps);
Lemma 5.7.2's ``E|m_k|^2 / L^2 <= 3/(k+2)`` by Monte Carlo; both algorithms against plain
NumPy loops fed the same uniforms (float64); the step-length bound ``1/p`` of Algorithm 3.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import dynsim as ds
from dynsim.nonsmooth import goldstein_distance, l1_goldstein_distance, min_norm_point

# --------------------------------------------------------------------------- minimum-norm point


def _segment_min_norm(a, b):
    """Closed form: p = a + t (b - a), t = clip(<a, a - b> / |a - b|^2, 0, 1)."""
    d = b - a
    t = np.clip(-(a @ d) / (d @ d), 0.0, 1.0)
    return a + t * d


def _brute_force_min_norm(V):
    """Enumerate supports of size <= d + 1; the best affine minimizer with nonnegative weights."""
    best = np.inf
    for k in range(1, min(len(V), V.shape[1] + 1) + 1):
        for S in itertools.combinations(range(len(V)), k):
            A = V[list(S)]
            if k == 1:
                lam = np.ones(1)
            else:
                a = np.linalg.lstsq((A[1:] - A[0]).T, -A[0], rcond=None)[0]
                lam = np.concatenate([[1 - a.sum()], a])
            if np.all(lam >= -1e-12):
                best = min(best, np.linalg.norm(lam @ A))
    return best


def test_min_norm_point_of_two_vectors_is_the_closed_form(x64):
    rng = np.random.default_rng(0)
    pairs = rng.normal(size=(40, 2, 3))
    pairs[:10, 1] = pairs[:10, 0] * 3.0  # collinear, same side of 0: the shorter endpoint
    pairs[10:15, 1] = -pairs[10:15, 0] * 2.0  # opposite: 0 is on the segment
    res = min_norm_point(jnp.asarray(pairs))
    want = np.array([_segment_min_norm(a, b) for a, b in pairs])
    np.testing.assert_allclose(res.point, want, atol=1e-12)
    np.testing.assert_allclose(res.norm, np.linalg.norm(want, axis=1), atol=1e-12)
    np.testing.assert_allclose(res.lower, res.norm, atol=1e-10)  # certified at the optimum
    # float32 too
    with jax.enable_x64(False):
        res32 = min_norm_point(jnp.asarray(pairs, jnp.float32))
    np.testing.assert_allclose(res32.norm, np.linalg.norm(want, axis=1), atol=2e-6)


def test_min_norm_point_is_zero_when_the_hull_surrounds_zero():
    rng = np.random.default_rng(1)
    d = 4
    box = np.concatenate([np.eye(d), -np.eye(d)]) * rng.uniform(0.5, 2.0, size=(2 * d, 1))
    sets = np.stack([np.concatenate([box, rng.normal(size=(6, d)) + 3.0]) for _ in range(8)])
    res = min_norm_point(jnp.asarray(sets, jnp.float32))
    assert np.all(np.asarray(res.norm) <= 1e-6)
    assert np.all(np.asarray(res.lower) == 0)
    np.testing.assert_allclose(np.asarray(res.weights).sum(-1), 1.0, rtol=1e-6)


def test_min_norm_point_random_sets_satisfy_kkt_and_match_brute_force(x64):
    rng = np.random.default_rng(2)
    V = rng.normal(size=(30, 7, 3)) + rng.normal(size=(30, 1, 3))
    V[::4, 1] = V[::4, 0]  # duplicates
    res = min_norm_point(jnp.asarray(V))
    p, w = np.asarray(res.point), np.asarray(res.weights)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("sn,snd->sd", w, V), p, atol=1e-12)
    kkt = np.einsum("sd,snd->sn", p, V - p[:, None])  # <p, v_i - p> >= 0 at the optimum
    assert kkt.min() >= -1e-10
    assert np.all(np.asarray(res.lower) <= np.asarray(res.norm) + 1e-12)
    np.testing.assert_allclose(res.norm, [_brute_force_min_norm(v) for v in V], atol=1e-10)


def test_min_norm_point_ignores_masked_vectors(x64):
    V = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    res = min_norm_point(V, mask=jnp.asarray([True, True, False]))
    np.testing.assert_allclose(res.point, [0.5, 0.5], atol=1e-12)
    assert float(res.weights[2]) == 0.0
    assert float(min_norm_point(V).norm) <= 1e-12  # with the third vector, 0 is in the hull


@pytest.mark.parametrize(
    "vectors, mask",
    [
        (np.eye(2), [False, False]),
        (np.ones((3, 2, 2)), [[True, False], [False, False], [False, True]]),
        (np.ones((2, 3, 2)), [False, False, False]),  # broadcast to every set
    ],
)
def test_min_norm_point_refuses_a_set_with_no_vector(vectors, mask):
    # the hull of no vectors is empty: each set needs one vector marked True
    with pytest.raises(ValueError, match="at least one vector of each set"):
        min_norm_point(vectors, mask=np.asarray(mask))


# --------------------------------------------------------------------------- Goldstein distance


def test_l1_goldstein_distance_exact_values():
    # closed form sqrt(#{|x_i| > delta}) when the free coordinates split into two allowed halves
    assert l1_goldstein_distance([2.0, -3.0], 1.0) == pytest.approx(np.sqrt(2))
    assert l1_goldstein_distance([0.3, -2.0], 1.0) == pytest.approx(1.0)
    assert l1_goldstein_distance([0.9, 0.9, 5.0], 1.0) == pytest.approx(1.0)
    assert l1_goldstein_distance([0.5, -0.5, 0.5], 1.0) == pytest.approx(0.0, abs=1e-12)  # sum x_i^2 <= 1
    assert l1_goldstein_distance([0.0], 1.0) == 0.0
    # three coordinates at 0.9: only single sign changes fit in the ball; the hull of
    # (1,1,1), (-1,1,1), (1,-1,1), (1,1,-1) has minimum-norm point (1,1,1)/3
    assert l1_goldstein_distance([0.9, 0.9, 0.9], 1.0) == pytest.approx(1 / np.sqrt(3), abs=1e-6)
    assert l1_goldstein_distance([0.9, -0.9, 0.9, 3.0], 1.0) == pytest.approx(np.sqrt(1 + 1 / 3), abs=1e-6)


def test_goldstein_distance_on_l1_matches_the_exact_value():
    """The estimate is an upper bound, and exact once the samples reach the orthants the answer needs.

    With 64 uniform samples in a disc and a coordinate at 0.3 delta, each sample changes its sign
    with probability 0.31 (the cap beyond 0.3), so all 64 miss with probability 0.69^64 < 1e-10; the
    3-D case at 0.9 delta needs each of three caps of volume 0.73% among 2000 samples (miss
    probability e^-14.6 per cap).
    """
    grad = jax.grad(lambda x: jnp.sum(jnp.abs(x)))
    delta = 1.0
    cases = [
        ([0.3, -2.0], 64, 1.0),
        ([0.2, -0.3], 64, 0.0),
        ([2.0, 3.0], 64, np.sqrt(2)),
        ([0.9, 0.9, 0.9], 2000, 1 / np.sqrt(3)),
    ]
    for i, (x, n, want) in enumerate(cases):
        est = goldstein_distance(grad, jnp.asarray(x), delta, jax.random.key(i), n)
        assert float(est.distance) == pytest.approx(want, abs=1e-5), x
        assert want == pytest.approx(l1_goldstein_distance(x, delta), abs=1e-6)
    # an upper bound at random points, with few samples
    rng = np.random.default_rng(3)
    for j in range(20):
        x = rng.uniform(-1.5, 1.5, size=3)
        est = goldstein_distance(grad, jnp.asarray(x, jnp.float32), delta, jax.random.key(100 + j), 8)
        assert float(est.distance) >= l1_goldstein_distance(x, delta) - 1e-5


def test_goldstein_distance_samples_only_random_points_of_the_ball():
    """f(x) = relu(x) - relu(-x) = x has gradient 1 everywhere, so d(0, df(x + delta B)) = 1 at every x. Autodiff
    gives f'(0) = 0 at the kink x = 0 (a vector outside the Clarke subdifferential {1}): a gradient taken at x itself
    would put 0 in the sampled hull and give distance 0."""
    grad = jax.grad(lambda x: jnp.sum(jax.nn.relu(x) - jax.nn.relu(-x)))
    assert float(grad(jnp.zeros(1))[0]) == 0.0
    for x in (jnp.zeros(1), jnp.zeros(3), jnp.full(2, 0.5)):
        est = goldstein_distance(grad, x, 0.1, jax.random.key(0), 16)
        assert float(est.distance) == pytest.approx(np.sqrt(x.size), abs=1e-6)
        assert est.hull.weights.shape == (16,)  # one gradient per sample, none at x


@pytest.mark.parametrize(
    "delta, n_samples, match",
    [
        (-1.0, 8, "delta must be > 0"),
        (0.0, 8, "delta must be > 0"),
        (np.array(-0.5), 8, "delta"),
        (0.1, 0, "n_samples"),
    ],
)
def test_goldstein_distance_refuses_bad_numbers(delta, n_samples, match):
    grad = jax.grad(lambda x: jnp.sum(jnp.abs(x)))
    with pytest.raises(ValueError, match=match):
        goldstein_distance(grad, jnp.array([0.0, 5.0]), delta, jax.random.key(0), n_samples)


def test_goldstein_distance_takes_a_traced_delta():
    grad = jax.grad(lambda x: jnp.sum(jnp.abs(x)))
    dist = jax.jit(lambda d: goldstein_distance(grad, jnp.array([0.3, -2.0]), d, jax.random.key(0), 64).distance)
    assert float(dist(1.0)) == pytest.approx(1.0, abs=1e-5)


def test_goldstein_distance_works_on_pytrees(x64):
    grad = jax.grad(lambda p: jnp.sum(jnp.abs(p["a"])) + jnp.sum(jnp.abs(p["b"])))
    x = {"a": jnp.asarray([3.0]), "b": jnp.asarray([0.1, -4.0])}
    est = goldstein_distance(grad, x, 0.5, jax.random.key(0), 128)
    assert float(est.distance) == pytest.approx(np.sqrt(2), abs=1e-9)
    np.testing.assert_allclose(est.element["a"], [1.0], atol=1e-9)
    np.testing.assert_allclose(est.element["b"], [0.0, -1.0], atol=1e-9)


def _quadratic_goldstein_distance(P, x, delta):
    """Exact d(0, df(x + delta B)) for f = x^T P x / 2: the gradients P y, |y - x| <= delta, already form a
    convex set; min |P y| on the ball is at y = 0 if |x| <= delta, else at y = mu (P^2 + mu I)^-1 x with
    |y - x| = delta (bisection on mu > 0)."""
    if np.linalg.norm(x) <= delta:
        return 0.0
    lo, hi = 0.0, 1e12
    for _ in range(200):
        mu = np.sqrt(lo * hi) if lo > 0 else hi / 1e12
        y = mu * np.linalg.solve(P @ P + mu * np.eye(len(x)), x)
        lo, hi = (mu, hi) if np.linalg.norm(y - x) > delta else (lo, mu)
    return float(np.linalg.norm(P @ y))


def test_prop_5_3_1_smooth_delta_eps_stationarity_implies_a_small_gradient(x64):
    """On an L-smooth f, (eps/(3L), eps/3)-stationary => |grad f| <= eps (Prop. 5.3.1). The estimate is an
    upper bound of d(0, df(x + delta B)) (checked against the exact value of a quadratic), so wherever it is
    <= eps/3 the gradient must be <= eps."""
    P = np.diag([4.0, 1.0, 0.25])
    lip, eps = 4.0, 0.3
    delta = eps / (3 * lip)
    rng = np.random.default_rng(4)
    directions = rng.normal(size=(40, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    xs = np.linalg.solve(P, (directions * rng.uniform(0, 1.5 * eps, (40, 1))).T).T  # |P x| uniform on [0, 1.5 eps]
    est = jax.vmap(lambda x, k: goldstein_distance(lambda y: jnp.asarray(P) @ y, x, delta, k, 256).distance)(
        jnp.asarray(xs), jax.random.split(jax.random.key(5), 40)
    )
    est = np.asarray(est)
    exact = np.array([_quadratic_goldstein_distance(P, x, delta) for x in xs])
    assert np.all(est >= exact - 1e-9)  # an upper bound
    gnorm = np.linalg.norm(xs @ P, axis=1)
    stationary = est <= eps / 3
    assert stationary.sum() >= 5 and (~stationary).sum() >= 5
    assert np.all(gnorm[stationary] <= eps)
    assert np.all(gnorm[exact <= eps / 3] <= eps)


# --------------------------------------------------------------------------- the zig-zag of Lemma 5.7.1


def test_zigzag_has_value_zero_and_slope_lip_at_every_query(x64):
    queries, lip, theta = [0.0, 0.7, 1.0, 2.5], 2.0, 0.3
    problem = ds.problems.zigzag(queries, lip, theta)
    f = lambda x: problem.loss(jnp.atleast_1d(x), None, {})  # noqa: E731
    df = jax.grad(f)
    for q in queries:
        assert float(f(q)) == pytest.approx(0.0, abs=1e-12)
        assert float(df(q)) == pytest.approx(lip)
    shift = theta * 0.3  # delta = min gap = 0.3
    q = np.array(queries)
    kinks = np.concatenate([q - shift, (q[:-1] + q[1:]) / 2 - shift])
    assert min(float(f(k)) for k in q - shift) == pytest.approx(-lip * shift)  # inf f = -L theta delta
    xs = np.random.default_rng(0).uniform(-1, 4, 500)
    xs = xs[np.min(np.abs(xs[:, None] - kinks[None]), axis=1) > 1e-6]
    assert np.allclose(np.abs(jax.vmap(df)(jnp.asarray(xs))), lip)  # |f'| = L off the kinks
    # slopes change sign exactly at the kinks
    assert np.all(jax.vmap(df)(jnp.asarray(kinks - 1e-6)) * jax.vmap(df)(jnp.asarray(kinks + 1e-6)) < 0)
    # (delta', eps)-stationary iff a kink is within delta': Goldstein distance 0 near a kink, L away
    grad = lambda x: jax.grad(lambda y: problem.loss(y, None, {}))(x)  # noqa: E731
    near = goldstein_distance(grad, jnp.asarray([kinks[0] + 0.05]), 0.1, jax.random.key(0), 64)
    far = goldstein_distance(grad, jnp.asarray([kinks[0] + 0.15]), 0.1, jax.random.key(0), 64)
    assert float(near.distance) == pytest.approx(0.0, abs=1e-12)
    assert float(far.distance) == pytest.approx(lip)


# --------------------------------------------------------------------------- INGD (Algorithm 2)

STATUS = {"s": ds.nonsmooth.ingd_status(), "x": ds.observables.final_state()}


def test_ingd_on_abs_certifies_every_trajectory_within_delta():
    """For |x| and eps < 1, x is (delta, eps)-stationary iff |x| <= delta (one grid over delta and eps)."""
    problem = ds.problems.l1_norm(1, box=2.0)
    res = ds.simulate(
        ds.dynamics.ingd(problem, lip=1.0),
        grid={"delta": [0.05, 0.2], "eps": [0.3, 0.9]},
        n_replicas=256,
        n_steps=120,
        observables=STATUS,
    )
    assert res.s_certified.values.all()
    x = np.abs(res.x.values[..., 0])
    delta = res.delta.values[:, None, None]
    assert np.all(x <= delta * (1 + 1e-6))
    assert np.all(res.s_m_norm.values <= res.eps.values[None, :, None])


def test_ingd_on_abs_oracle_calls_follow_their_exact_law():
    """From x0 = 1.234, delta = 0.1, L = 1: 12 descents of length delta while |x_t| > 5 delta/8 (the
    descent test with |m| = 1 is delta - 2|x| < -delta/4 once |x| < delta), down to x = a delta with
    a = 0.34. There the descent never fires (m takes only the values 1 and 0: beta = 1/2 and g = +-1),
    and each inner step certifies (m = 0) with probability 1 - a: calls = 1 + 12 + Geometric(1 - a)."""
    delta, a, descents = 0.1, 0.34, 12
    res = ds.simulate(
        ds.dynamics.ingd(ds.problems.l1_norm(1, theta0=1.234), delta=delta, eps=0.5, lip=1.0),
        n_replicas=4000,
        n_steps=60,
        observables=STATUS,
    )
    assert res.s_certified.values.all()
    assert np.all(res.s_descents.values == descents)
    assert np.all(res.s_restarts.values == 0)
    np.testing.assert_allclose(res.x.values[..., 0], 1.234 - descents * delta, atol=1e-5)
    extra = res.s_calls.values.ravel() - 1 - descents  # Geometric(1 - a) on {1, 2, ...}
    n = extra.size
    mean, se = extra.mean(), extra.std() / np.sqrt(n)
    assert abs(mean - 1 / (1 - a)) <= 4 * se
    for j in range(1, 5):
        pj = a ** (j - 1) * (1 - a)
        assert abs(np.mean(extra == j) - pj) <= 4 * np.sqrt(pj * (1 - pj) / n)


def test_ingd_on_l1_certified_points_are_delta_eps_stationary():
    """Certification means |m| <= eps with m in the Goldstein set: the exact distance is at most |m|,
    and m equals sign(x_i) on every coordinate with |x_i| > delta."""
    delta, eps, d = 0.1, 1.2, 3
    problem = ds.problems.l1_norm(d, box=1.0)
    res = ds.simulate(
        ds.dynamics.ingd(problem, delta=delta, eps=eps, lip=np.sqrt(d)),
        n_replicas=64,
        n_steps=400,
        observables={**STATUS, "m": ds.observables.Observable("m", record=lambda v: v.state.m, every_record=False)},
    )
    assert res.s_certified.values.all()
    x, m = res.x.values, res.m.values
    for xi, mi, mn in zip(x, m, res.s_m_norm.values):
        assert l1_goldstein_distance(xi, delta) <= mn + 1e-5 <= eps + 2e-5
        out = np.abs(xi) > delta
        np.testing.assert_allclose(mi[out], np.sign(xi[out]), atol=1e-5)
        assert out.sum() <= eps**2


def test_ingd_oracle_calls_and_descents_respect_thm_5_4_1():
    """At most 4 Delta/(eps delta) - 1 descents (every one lowers f by more than eps delta / 4), and
    calls <= 192 Delta L^2/(eps^3 delta) log(4 Delta/(gamma delta eps)) with probability >= 1 - gamma."""
    x0, delta, eps, gamma = np.array([0.7, -0.45]), 0.1, 0.5, 0.1
    depth, lip = np.abs(x0).sum(), np.sqrt(2)
    res = ds.simulate(
        ds.dynamics.ingd(ds.problems.l1_norm(2, theta0=x0), delta=delta, eps=eps, lip=lip),
        n_replicas=512,
        n_steps=300,
        observables=STATUS,
    )
    assert res.s_certified.values.all()
    assert res.s_descents.values.max() <= 4 * depth / (eps * delta) - 1
    bound = ds.dynamics.ingd_oracle_bound(depth, lip, delta, eps, gamma)
    assert np.mean(res.s_calls.values > bound) <= gamma
    assert ds.dynamics.ingd_inner_steps(lip, eps) == 384  # K = 48 L^2 / eps^2


@pytest.mark.parametrize(
    "lip, eps, want",
    [
        (1, 1e-3, 48_000_000),  # a rounding guard x (1 - 1e-6) gave 47,999,952
        (10.0, 1e-3, 4_800_000_000),
        (1.0, 0.01, 480_000),
        (2.0, 0.1, 19_200),  # 48 * 4 / 0.1**2 = 19199.999999999996 in float64
        (1.1, 0.1, 5_808),
        (np.sqrt(2), 0.5, 384),  # 384.00000000000006 in float64
        (np.float32(1.1), np.float32(0.1), 5_808),
        (1.0, 0.3, 534),  # 533.33...
        (1.0, 7e-4, 97_959_184),  # 97,959,183.67...
        (1, 3, 6),  # integers: exact, 16/3
        (3, 2, 108),
    ],
)
def test_ingd_inner_steps_is_the_exact_ceiling(lip, eps, want):
    K = ds.dynamics.ingd_inner_steps(lip, eps)
    assert K == want and isinstance(K, int)
    # traced, in float32: exact below 2^24, within the float32 spacing above
    traced = float(jax.jit(ds.dynamics.ingd_inner_steps)(jnp.float32(lip), jnp.float32(eps)))
    assert traced == want if want < 2**24 else abs(traced - want) <= 4 * np.spacing(np.float32(want))


@pytest.mark.parametrize(
    "args, match",
    [
        ((1.0, 1.0, 1.0, 1.0, 10.0), r"gamma must be in \(0, 1\)"),  # the bound was negative
        ((1.0, 1.0, 1.0, 1.0, 1.0), r"gamma must be in \(0, 1\)"),
        ((1.0, 1.0, 1.0, 1.0, 0.0), r"gamma must be in \(0, 1\)"),
        ((-1.0, 1.0, 1.0, 1.0, 0.1), "depth must be > 0"),  # NaN
        ((0.0, 1.0, 1.0, 1.0, 0.1), "depth must be > 0"),
        ((1.0, 0.0, 1.0, 1.0, 0.1), "lip must be > 0"),
        ((1.0, 1.0, -0.1, 1.0, 0.1), "delta must be > 0"),
        ((1.0, 1.0, 1.0, 0.0, 0.1), "eps must be > 0"),
        ((0.1, 1.0, 1.0, 1.0, 0.1), r"depth must be >= eps delta / 4"),  # T = 0.4 < 1: log(T / gamma) < 1
        ((1.0, 1.0, 1.0, float("nan"), 0.1), "eps must be finite"),
    ],
)
def test_ingd_oracle_bound_refuses_arguments_outside_its_formula(args, match):
    with pytest.raises(ValueError, match=match):
        ds.dynamics.ingd_oracle_bound(*args)


def _inner_decay(problem, lip, delta, n, steps):
    res = ds.simulate(
        ds.dynamics.ingd(problem, delta=delta, eps=1e-4, lip=lip, inner_steps=10**6),
        n_replicas=n,
        n_steps=steps,
        record_every=1,
        observables={"s": ds.nonsmooth.ingd_status(every_record=True)},
    )
    assert res.s_descents.values.max() == 0 and res.s_restarts.values.max() == 0  # one local search
    cert = res.s_certified.values  # (replica, k); the lemma sets m_{t,k} = 0 once the loop has stopped
    stopped_before = np.concatenate([np.zeros_like(cert[:, :1]), cert[:, :-1]], axis=1)
    v = np.where(stopped_before, 0.0, res.s_m_norm.values.astype(float) ** 2 / lip**2)
    return v.mean(0), v.std(0, ddof=1) / np.sqrt(n)


def test_lemma_5_7_2_inner_loop_decay():
    """E|m_{t,k}|^2 / L^2 <= 3/(k+2) (Lemma 5.7.2), by Monte Carlo with a 4-standard-error margin.

    |x| at x_t = 0.6 delta (< 5 delta/8, so the descent test fails with |m| = 1, and m stays in {0, 1}):
    exactly E m_k^2 = 0.6^(k-1). A max of 7 linear pieces on the unit circle from x_t = (0.2, 0.1) delta
    (f >= cos(pi/7)|x|, so no descent while |x_t| < 0.47 delta), where m takes a continuum of values.
    """
    n, steps = 4000, 40
    k = np.arange(1, steps + 2)
    v, se = _inner_decay(ds.problems.l1_norm(1, theta0=0.06), 1.0, 0.1, n, steps)
    exact = 0.6 ** (k - 1)
    assert np.all(np.abs(v - exact) <= 4 * np.sqrt(exact * (1 - exact) / n) + 1e-12)
    assert np.all(v <= 3 / (k + 2) + 4 * se)
    angles = 2 * np.pi * np.arange(7) / 7
    A = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    polygon = ds.problems.Problem(
        loss=lambda x, s, hp: jnp.max(jnp.asarray(A, x.dtype) @ x),
        init=lambda key, hp: jnp.asarray([0.2, 0.1], jnp.result_type(float)),
        name="max_linear_7",
    )
    v, se = _inner_decay(polygon, 1.0, 1.0, n, steps)
    assert v[1] < 0.75  # it does decay: v_2 < 3/4
    assert np.all(v <= 3 / (k + 2) + 4 * se)


def _f_nonconvex(x):
    return abs(x[0]) + abs(x[1]) - 0.8 * abs(x[0] + x[1] - 0.3) + 0.5 * x[0]


def _g_nonconvex(x):
    s3 = np.sign(x[0] + x[1] - 0.3)
    return np.array([np.sign(x[0]) - 0.8 * s3 + 0.5, np.sign(x[1]) - 0.8 * s3])


def _numpy_ingd(x, delta, eps, lip, K, us):
    """Algorithm 2, line by line, one oracle call per iteration (as in dynsim.dynamics.ingd)."""
    m, fx, k, t, restarts, calls = _g_nonconvex(x), _f_nonconvex(x), 1, 1, 0, 1
    out = []
    for u in us:
        if np.linalg.norm(m) > eps:
            n = np.linalg.norm(m)
            trial = x - delta * m / n
            if _f_nonconvex(trial) - fx < -delta * n / 4:  # descent condition
                x, fx, m, k, t = trial, _f_nonconvex(trial), _g_nonconvex(trial), 1, t + 1
            elif k >= K:  # restart the local search
                m, k, restarts = _g_nonconvex(x), 1, restarts + 1
            else:
                y = x + u * (trial - x)
                beta = (4 * lip**2 - n**2) / (4 * lip**2 + 2 * n**2)
                m, k = beta * m + (1 - beta) * _g_nonconvex(y), k + 1
            calls += 1
        out.append((x.copy(), m.copy(), k, t, restarts, calls))
    return out


def test_ingd_matches_a_numpy_loop_of_algorithm_2(x64):
    delta, eps, lip, K = 0.3, 0.05, 3.0, 6
    problem = ds.problems.Problem(
        loss=lambda x, s, hp: jnp.abs(x[0]) + jnp.abs(x[1]) - 0.8 * jnp.abs(x[0] + x[1] - 0.3) + 0.5 * x[0],
        init=lambda key, hp: jnp.asarray([0.37, -0.21]),
    )
    bound = ds.dynamics.bind(ds.dynamics.ingd(problem, delta=delta, eps=eps, lip=lip, inner_steps=K))
    keys = jax.random.split(jax.random.key(7), 60)
    us = [float(jax.random.uniform(k, (), jnp.float64)) for k in keys]
    want = _numpy_ingd(np.array([0.37, -0.21]), delta, eps, lip, K, us)
    state = bound.init(jax.random.key(0))
    for key, (x, m, k, t, restarts, calls) in zip(keys, want):
        state = bound.step(state, key)
        np.testing.assert_allclose(state.params, x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state.m, m, rtol=1e-10, atol=1e-12)
        assert (int(state.k), int(state.t), int(state.restarts), int(state.calls)) == (k, t, restarts, calls)
    ks = [w[2] for w in want]
    assert want[-1][3] > 1 and want[-1][4] > 0 and max(ks) > 2  # descents, restarts and inner steps happened


def test_ingd_runs_on_pytree_params_with_a_dataset():
    """Least absolute deviations with dict parameters on a finite dataset: INGD on the full-batch objective,
    the same run as on the flat vector (``ravel_pytree`` order)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    data = {"x": x, "y": y}

    def tree_loss(p, s, hp):
        return jnp.abs(s["x"] @ p["w"] + p["b"][0] - s["y"])

    def flat_loss(v, s, hp):  # ravel_pytree order: "b" then "w"
        return jnp.abs(s["x"] @ v[1:] + v[0] - s["y"])

    tree = ds.problems.Problem(
        loss=tree_loss, init=lambda k, hp: {"w": jnp.zeros(3), "b": jnp.zeros(1)}, n_data=40, dataset=data
    )
    flat = ds.problems.Problem(loss=flat_loss, init=lambda k, hp: jnp.zeros(4), n_data=40, dataset=data)
    kw = dict(n_replicas=8, n_steps=200, seed=3)
    lip = float(np.sqrt(1 + np.mean(np.sum(x**2, 1)) * 3))
    r_tree = ds.simulate(ds.dynamics.ingd(tree, delta=0.05, eps=0.5, lip=lip), observables=STATUS, **kw)
    r_flat = ds.simulate(ds.dynamics.ingd(flat, delta=0.05, eps=0.5, lip=lip), observables=STATUS, **kw)
    np.testing.assert_allclose(r_tree.x_w.values, r_flat.x.values[:, 1:], atol=1e-6)
    np.testing.assert_allclose(r_tree.x_b.values, r_flat.x.values[:, :1], atol=1e-6)
    np.testing.assert_array_equal(r_tree.s_calls.values, r_flat.s_calls.values)
    assert r_tree.s_descents.values.min() > 0


# --------------------------------------------------------------------------- Stochastic INGD (Algorithm 3)


def test_stochastic_ingd_matches_a_numpy_loop_of_algorithm_3(x64):
    """m_1 = g(x_1); eta = 1/(p|m| + q); x' = x - eta m; y = x + U (x' - x); m' = beta m + (1 - beta) g(y)."""
    P = np.array([[3.0, 1.0], [1.0, 0.5]])
    p, q, beta = 2.0, 0.5, 0.7
    problem = ds.problems.quadratic(P, theta0=(1.0, -2.0))
    bound = ds.dynamics.bind(ds.dynamics.stochastic_ingd(problem, p=p, q=q, beta=beta))
    state = bound.init(jax.random.key(0))
    x = np.array([1.0, -2.0])
    m = P @ x
    np.testing.assert_allclose(ravel_pytree(state.m)[0], m, rtol=1e-14)
    for key in jax.random.split(jax.random.key(1), 30):
        u = float(jax.random.uniform(jax.random.split(key)[0], (), jnp.float64))
        eta = 1 / (p * np.linalg.norm(m) + q)
        x_next = x - eta * m
        y = x + u * (x_next - x)
        m = beta * m + (1 - beta) * (P @ y)
        x = x_next
        state = bound.step(state, key)
        np.testing.assert_allclose(state.params, x, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state.m, m, rtol=1e-12, atol=1e-14)


def test_stochastic_ingd_steps_are_at_most_one_over_p():
    """|x_{t+1} - x_t| = |m|/(p|m| + q) <= 1/p on every step (equal to 1/p when q = 0), for an MLP on
    digits with minibatches and weight decay, over a grid of p and q."""
    data = ds.problems.load_digits(test_size=1500)
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (16,), n_classes=10, weight_decay=5e-4)
    res = ds.simulate(
        ds.dynamics.stochastic_ingd(problem, batch_size=8, beta=0.9),
        grid={"p": [1.0, 4.0], "q": [0.0, 10.0]},
        n_replicas=2,
        n_steps=25,
        record_every=1,
        observables={"x": ds.observables.trajectory(lambda prm: ravel_pytree(prm)[0])},
    )
    steps = np.linalg.norm(np.diff(res.x.values.astype(float), axis=-2), axis=-1)  # (p, q, replica, time)
    p = res.p.values[:, None, None, None]
    assert np.all(steps <= (1 / p) * (1 + 1e-5))
    np.testing.assert_allclose(steps[:, 0], np.broadcast_to(1 / p[:, 0], steps[:, 0].shape), rtol=1e-4)


def test_lagged_output_index_law():
    """Record max(i - K, 1) - 1 with i ~ U{1..T}: record 0 with probability (K + 1)/T, each of
    records 1..T-K-1 with probability 1/T."""
    T, K, n = 20, 5, 200_000
    idx = ds.dynamics.lagged_output_index(T, K, size=n, seed=0)
    assert idx.min() == 0 and idx.max() == T - K - 1
    freq = np.bincount(idx, minlength=T - K) / n
    want = np.full(T - K, 1 / T)
    want[0] = (K + 1) / T
    assert np.all(np.abs(freq - want) <= 4 * np.sqrt(want * (1 - want) / n))
    # Thm 5.5.1's K = p delta is a real number (stochastic_ingd_parameters' lag; it was refused): whole steps up
    lag = ds.dynamics.stochastic_ingd_parameters(1.0, 1.0, 0.5, 0.5, 1.0).lag
    assert not float(lag).is_integer()
    np.testing.assert_array_equal(
        ds.dynamics.lagged_output_index(10**6, lag, size=50, seed=1),
        ds.dynamics.lagged_output_index(10**6, int(np.ceil(lag)), size=50, seed=1),
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda p: ds.dynamics.ingd(p, delta=0.0, eps=0.1, lip=1.0), r"delta must be > 0, got 0.0"),
        (lambda p: ds.dynamics.ingd(p, delta=0.1, eps=-1.0, lip=1.0), r"eps must be > 0, got -1.0"),
        (lambda p: ds.dynamics.ingd(p, delta=0.1, eps=0.1, lip=0.0), r"lip must be > 0, got 0.0"),
        (lambda p: ds.dynamics.ingd(p, delta=0.1, eps=0.1, lip=1.0, inner_steps=0), r"inner_steps must be >= 1"),
        (lambda p: ds.dynamics.stochastic_ingd(p, p=0.0, q=1.0, beta=0.5), r"p must be > 0, got 0.0"),
        (lambda p: ds.dynamics.stochastic_ingd(p, p=1.0, q=-0.1, beta=0.5), r"q must be >= 0, got -0.1"),
        (lambda p: ds.dynamics.stochastic_ingd(p, p=1.0, q=1.0, beta=1.0), r"beta must be in \[0, 1\), got 1.0"),
        (lambda p: ds.dynamics.stochastic_ingd(p, p=1.0, q=1.0, beta=-0.2), r"beta must be in \[0, 1\), got -0.2"),
    ],
)
def test_bad_hyperparameters_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build(ds.problems.l1_norm(2))


def test_bad_grid_values_raise_before_compiling():
    dyn = ds.dynamics.ingd(ds.problems.l1_norm(1), eps=0.5, lip=1.0)
    with pytest.raises(ValueError, match=r"delta must be > 0, got \[-0.1\]"):
        ds.simulate(dyn, grid={"delta": [-0.1, 0.2]}, n_steps=2)
    sto = ds.dynamics.stochastic_ingd(ds.problems.l1_norm(1), p=1.0, q=1.0)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got \[1.5\]"):
        ds.simulate(sto, grid={"beta": [0.5, 1.5]}, n_steps=2)
    stream = ds.problems.linear_regression_1d()  # fresh samples: no function values
    with pytest.raises(ValueError, match="ingd needs function values"):
        ds.dynamics.ingd(stream, delta=0.1, eps=0.1, lip=1.0)
    with pytest.raises(ValueError, match=r"vectors must have shape \(\.\.\., n, d\)"):
        min_norm_point(jnp.ones(3))
    with pytest.raises(ValueError, match="queries must be distinct"):
        ds.problems.zigzag([0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"theta must be in \(0, 1/2\), got 0.5"):
        ds.problems.zigzag([0.0, 1.0], theta=0.5)
    with pytest.raises(ValueError, match="kinks must be distinct finite numbers"):
        ds.problems.alternating_slopes([1.0, 1.0])
    with pytest.raises(ValueError, match="variant must be one of"):
        ds.problems.resisting_pair([0.0], 0.1, variant="paper")
    with pytest.raises(ValueError, match="delta must be > 0"):
        ds.problems.resisting_pair([0.0], 0.0)


def test_stochastic_ingd_parameters_follow_thm_5_5_1():
    # G = sqrt(L^2 + sigma^2) = 5 for (L, sigma) = (3, 4); eps = 1, delta = 0.5, Delta = 2:
    # ln(16 G / eps) = ln 80, p = 64 * 25 * ln 80 / 0.5, q = 4 G p, K = p delta,
    # T = 2^16 * 125 * 2 * ln 80 / 0.5 * max(1, 5 * 0.5 / 16) (the max is 1 here).
    par = ds.dynamics.stochastic_ingd_parameters(3.0, 4.0, 1.0, 0.5, 2.0)
    log = np.log(80.0)
    assert par.beta == pytest.approx(1 - 1 / (64 * 25), rel=1e-14)
    assert par.p == pytest.approx(3200 * log, rel=1e-14)
    assert par.q == pytest.approx(20 * par.p, rel=1e-14) and par.lag == pytest.approx(0.5 * par.p, rel=1e-14)
    assert par.n_steps == pytest.approx(2**16 * 125 * 2 * log / 0.5, rel=1e-14)
    big = ds.dynamics.stochastic_ingd_parameters(3.0, 4.0, 1.0, 0.5, 0.01)  # G delta / (8 Delta) = 31.25 > 1
    assert big.n_steps == pytest.approx(2**16 * 125 * 0.01 * log / 0.5 * 31.25, rel=1e-14)
    # the proof's intermediate fact: momentum forgets in K steps, beta^K <= eps / (16 G) (digest Sec. 4.2)
    for eps, delta in ((1.0, 0.5), (0.1, 0.01), (0.9, 3.0)):
        q = ds.dynamics.stochastic_ingd_parameters(3.0, 4.0, eps, delta, 2.0)
        assert q.beta**q.lag <= eps / (16 * 5.0)
    with pytest.raises(ValueError, match="sigma"):
        ds.dynamics.stochastic_ingd_parameters(1.0, -1.0, 1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- Thm 5.5.2: the resisting pair


def _query_sets(rng, delta):
    """Clustered, spread and mixed queries (gaps from 0.1 delta to 200 delta)."""
    yield np.array([0.0])
    yield np.cumsum(rng.uniform(0.1, 3.0, 12)) * delta
    yield np.cumsum(rng.uniform(5.0, 200.0, 8)) * delta
    for _ in range(20):
        yield np.cumsum(np.exp(rng.uniform(np.log(0.1), np.log(200.0), rng.integers(2, 15)))) * delta


def _stationary(x, kinks, delta):
    # slopes +-1: x is (delta, eps)-stationary for eps < 1 iff a kink lies within delta
    return np.min(np.abs(np.asarray(x)[:, None] - kinks[None]), axis=1) <= delta


def _slope_sign(x, kinks):
    # slope -1 left of the first kink, alternating at each: +1 after an odd number of kinks
    return np.where(np.searchsorted(kinks, x, side="right") % 2 == 1, 1.0, -1.0)


def _value_range(queries, kinks):
    # sup_k f(x_k) - inf f for the slope +-1 function through its kinks (its minima are kinks), integrated in NumPy
    def f(x):
        signs = np.where(np.arange(kinks.size) % 2 == 0, 2.0, -2.0)
        return -(x - kinks[0]) + np.sum(signs * np.maximum(0.0, np.asarray(x)[..., None] - kinks), axis=-1)

    at_queries = f(np.asarray(queries))
    return at_queries.max() - min(f(kinks).min(), at_queries.min())


def test_thesis_pair_shares_stationary_points_and_leaves_its_class(x64):
    # Seed 002, proof of Thm 5.5.2 as printed: both functions answer f' = 1 at every query, yet c + 0.75 delta is
    # (delta, eps)-stationary for both for every kink c, e.g. x_1 - 1.25 delta after one query; and with distant
    # queries sup_k f(x_k) - inf f exceeds Delta = 8 delta K.
    delta = 0.01
    rng = np.random.default_rng(0)
    for i, q in enumerate(_query_sets(rng, delta)):
        pair = ds.problems.resisting_pair(q, delta, variant="thesis")
        for kinks in (pair.kinks_f, pair.kinks_g):
            np.testing.assert_array_equal(_slope_sign(q, kinks), 1.0)
        for problem in (pair.f, pair.g) if i < 4 else ():  # the Problem's own gradient, on a few sets
            slopes = jax.vmap(jax.grad(lambda x: problem.loss(x[None], None, {})))(jnp.asarray(q))
            np.testing.assert_array_equal(np.asarray(slopes), 1.0)
        common = pair.kinks_f + 0.75 * delta
        assert np.all(_stationary(common, pair.kinks_f, delta) & _stationary(common, pair.kinks_g, delta))
    # checked independently with the sampled Goldstein subdifferential at the one-query output
    pair = ds.problems.resisting_pair([0.0], delta, variant="thesis")
    for problem in (pair.f, pair.g):
        grad = jax.grad(lambda x: problem.loss(x, None, {}))
        est = ds.nonsmooth.goldstein_distance(grad, jnp.array([-1.25 * delta]), delta, jax.random.key(1), 256)
        assert float(est.distance) < 1e-9
    far = ds.problems.resisting_pair([0.0, 100 * delta], delta, variant="thesis")
    assert _value_range([0.0, 100 * delta], far.kinks_f) == pytest.approx(50 * delta, rel=1e-9)
    assert 50 * delta > 8 * delta * 2


def test_repaired_pair_has_no_common_stationary_point(x64):
    # plateaus of radius 3 delta, shift 2.5 delta, zig-zags of half-period in (4.5 delta, 9 delta]: both answer
    # f' = 1 at every query, their kinks are more than 2 delta apart across the pair (no point is within delta
    # of both), and sup_k f(x_k) - inf f <= 15 delta K, so Thm 5.5.2 holds with Delta / (15 delta)
    delta = 0.01
    rng = np.random.default_rng(1)
    tightest = np.inf
    for i, q in enumerate(_query_sets(rng, delta)):
        pair = ds.problems.resisting_pair(q, delta)
        for kinks in (pair.kinks_f, pair.kinks_g):
            np.testing.assert_array_equal(_slope_sign(q, kinks), 1.0)
        for problem in (pair.f, pair.g) if i < 4 else ():
            slopes = jax.vmap(jax.grad(lambda x: problem.loss(x[None], None, {})))(jnp.asarray(q))
            np.testing.assert_array_equal(np.asarray(slopes), 1.0)
        separation = np.min(np.abs(pair.kinks_f[:, None] - pair.kinks_g[None]))
        assert separation > 2 * delta
        tightest = min(tightest, separation)
        grid = np.linspace(q.min() - 10 * delta, q.max() + 10 * delta, 20_001)
        assert not np.any(_stationary(grid, pair.kinks_f, delta) & _stationary(grid, pair.kinks_g, delta))
        for kinks in (pair.kinks_f, pair.kinks_g):
            assert _value_range(q, kinks) <= 15 * delta * len(q) + 1e-12
    # kinks of f 4.5 delta + apart minus the shift 2.5 delta: the margin over 2 delta is used, not wasted
    assert 2 * delta < tightest < 2.25 * delta
    # the Goldstein estimate agrees: a kink of f is stationary for f, not for g
    pair = ds.problems.resisting_pair([0.0], delta)
    x = jnp.array([pair.kinks_f[0]])
    for problem, expected in ((pair.f, 0.0), (pair.g, 1.0)):
        grad = jax.grad(lambda y: problem.loss(y, None, {}))
        est = ds.nonsmooth.goldstein_distance(grad, x, delta, jax.random.key(2), 256)
        assert float(est.distance) == pytest.approx(expected, abs=1e-9)


def test_sample_ball_draws_a_shell_uniformly_by_volume():
    # radii in [inner, radius], with P(|y - c| < r) = (r^d - inner^d) / (radius^d - inner^d) (4 standard errors);
    # in 500 dimensions radius^d overflows, which the radius law must not compute
    c = jnp.array([1.0, -2.0, 0.5])
    r = np.linalg.norm(np.asarray(ds.nonsmooth.sample_ball(jax.random.key(0), c, 5.0, 40_000, inner=4.0) - c), axis=1)
    assert 4.0 - 1e-5 <= r.min() and r.max() <= 5.0 + 1e-5
    p = (4.5**3 - 4.0**3) / (5.0**3 - 4.0**3)
    assert abs(np.mean(r < 4.5) - p) < 4 * np.sqrt(p * (1 - p) / r.size)
    wide = ds.nonsmooth.sample_ball(jax.random.key(1), jnp.zeros(500), 5.0, 16, inner=4.0)
    assert np.all(np.isfinite(np.asarray(wide)))
