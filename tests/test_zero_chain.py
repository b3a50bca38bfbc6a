"""Seed 002's nonconvex heavy-tail rate: the zero chain of its lower bound (Thm 4.4.4; Lemmas 4.7.9, 4.7.10)
and GClip's parameters (Thm 4.4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import dynsim as ds

P = ds.problems


def _f_quadrature(x):
    # an independent f_d: Phi by quadrature, Psi from its definition
    def psi(t):
        return np.exp(1 - 1 / (2 * t - 1) ** 2) if t > 0.5 else 0.0

    def phi(t):
        return np.sqrt(np.e) * quad(lambda s: np.exp(-(s**2) / 2), -np.inf, t)[0]

    return -psi(1.0) * phi(x[0]) + sum(
        psi(-x[i - 1]) * phi(-x[i]) - psi(x[i - 1]) * phi(x[i]) for i in range(1, len(x))
    )


def _random_points(rng, n, d, spread=2.0):
    # coordinates often near the transitions at +-1/2 and +-1, sometimes exactly 0
    x = rng.normal(scale=spread, size=(n, d))
    x[rng.random((n, d)) < 0.2] = 0.0
    return x


def test_chain_against_quadrature_and_its_infimum(x64):
    rng = np.random.default_rng(0)
    for x in _random_points(rng, 8, 5):
        assert float(P.zero_chain_function(jnp.asarray(x))) == pytest.approx(_f_quadrature(x), rel=1e-9, abs=1e-12)
    # f_d(0) = -Phi(0) = -sqrt(2 pi e)/2; with every x_i large, f_d -> -sqrt(2 pi e) (1 + e (d - 1)): the gap is at
    # most 12 d (Lemma 4.7.9.1)
    for d in (1, 2, 10, 100):
        gap = float(P.zero_chain_function(jnp.zeros(d)) - P.zero_chain_function(jnp.full(d, 1e5)))
        assert gap == pytest.approx(np.sqrt(2 * np.pi * np.e) * (0.5 + np.e * (d - 1)), rel=1e-9)
        assert gap <= 12 * d


def test_lemma_4_7_9_smoothness_gradient_and_chain_properties(x64):
    rng = np.random.default_rng(1)
    d = 6
    x = jnp.asarray(_random_points(rng, 2000, d))
    grad = jax.vmap(jax.grad(P.zero_chain_function))(x)
    hess = jax.vmap(jax.hessian(P.zero_chain_function))(x)
    top = np.abs(np.linalg.eigvalsh(np.asarray(hess))).max()
    assert top <= 152  # 2.
    assert float(jnp.abs(grad).max()) <= 23  # 3.
    # 4. the gradient reaches at most one coordinate past the last one above 1/2
    assert np.all(P.progress_index(grad, 0.0) <= P.progress_index(x, 0.5) + 1)
    # 5. away from the end of the chain the gradient is large
    short = P.progress_index(x, 1.0) < d
    assert np.all(np.linalg.norm(np.asarray(grad), axis=1)[np.asarray(short)] >= 1)
    # the checks see both sides: some points make progress, some reach the end
    assert 0 < short.mean() < 1 and float(top) > 10


def test_oracle_is_an_unbiased_probability_p_zero_chain(x64):
    # Lemma 4.7.10 and the zero-chain property, exactly: the two outcomes z = 0, 1 weighted 1 - p, p
    rng = np.random.default_rng(2)
    d, p, alpha = 6, 0.05, 1.5
    problem = P.zero_chain(d, p)
    x = jnp.asarray(_random_points(rng, 200, d, spread=0.8))

    def oracle(z):
        return jax.vmap(lambda xi: jax.grad(problem.loss)(xi, {"z": jnp.asarray(z)}, {}))(x)

    g0, g1 = oracle(0.0), oracle(1.0)
    grad = jax.vmap(jax.grad(P.zero_chain_function))(x)
    np.testing.assert_allclose((1 - p) * g0 + p * g1, grad, atol=1e-12)
    loss_value = jax.vmap(lambda xi: problem.loss(xi, {"z": jnp.asarray(1.0)}, {}))(x)
    np.testing.assert_allclose(loss_value, jax.vmap(P.zero_chain_function)(x), rtol=1e-12)
    frontier = P.progress_index(x, 0.25)
    assert np.all(P.progress_index(g0, 0.0) <= frontier)  # z = 0 hides the next coordinate
    assert np.all(P.progress_index(g1, 0.0) <= frontier + 1)
    assert np.any(P.progress_index(g1, 0.0) == frontier + 1)
    moment = (1 - p) * jnp.linalg.norm(g0, axis=1) ** alpha + p * jnp.linalg.norm(g1, axis=1) ** alpha
    bound = 2 * jnp.linalg.norm(grad, axis=1) ** alpha + 23**alpha * 2 / p ** (alpha - 1)
    assert np.all(moment <= bound)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_thm_4_4_4_instance_meets_its_assumptions(x64, alpha):
    # f = (L lam^2/152) f_d(x/lam) with the constants of zero_chain_constants: L-smooth, f(0) - inf f <= Delta,
    # E|g|^alpha <= G^alpha (exact over z), and |grad f| >= eps until the chain's end; k_max follows
    # eps^-(3 alpha - 2)/(alpha - 1), the rate of Thm 4.4.1.
    L, delta, G, eps = 2.0, 1.0, 40.0, 2e-3
    c = P.zero_chain_constants(alpha, eps, delta, L, G)
    assert c.d == int(delta * L / (7296 * eps**2))
    problem = P.zero_chain(c.d, c.p, scale=c.lam, smoothness=L)
    value = jax.jit(lambda x: problem.loss(x, {"z": jnp.asarray(1.0)}, {}))
    assert float(value(jnp.zeros(c.d)) - value(jnp.full(c.d, 40.0 * c.lam))) <= delta
    rng = np.random.default_rng(3)
    points = [c.lam * _random_points(rng, 1, c.d, spread=1.5)[0] for _ in range(30)]
    for k in (1, c.d // 2, c.d - 1):  # the largest gradients: the chain switched on up to k, the next coordinate at 0
        points.append(c.lam * np.concatenate([np.full(k, 1.2), np.zeros(c.d - k)]))
    oracle = jax.jit(lambda x, z: jax.grad(problem.loss)(x, {"z": z}, {}))
    for x in map(jnp.asarray, points):
        g0, g1 = oracle(x, jnp.asarray(0.0)), oracle(x, jnp.asarray(1.0))
        moment = (1 - c.p) * jnp.linalg.norm(g0) ** alpha + c.p * jnp.linalg.norm(g1) ** alpha
        assert float(moment) <= G**alpha
        if int(P.progress_index(x / c.lam, 1.0)) < c.d:
            assert float(jnp.linalg.norm(c.p * g1 + (1 - c.p) * g0)) >= eps
    rates = [P.zero_chain_constants(alpha, e, delta, L, G).k_max for e in (1e-3, 5e-4)]
    assert np.log(rates[1] / rates[0]) / np.log(2) == pytest.approx((3 * alpha - 2) / (alpha - 1), rel=0.01)


def test_zero_chain_bad_input():
    with pytest.raises(ValueError, match="p must be in"):
        P.zero_chain(4, 1.5)
    with pytest.raises(ValueError, match="G must exceed"):
        P.zero_chain_constants(1.5, 1e-3, 1.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        P.zero_chain_constants(1.0, 1e-3, 1.0, 1.0, 30.0)


def test_thm_4_4_1_parameters_by_hand():
    # L = 2, sigma = 0.5, alpha = 1.5, F0 = 1: 1/(4L) = 0.125, 1/(L (12 sigma)^3) = 1/432, and the third term
    # (F0/(sigma^2 K))^(1.5/2.5) / L^(1/2.5) = (4/K)^0.6 / 2^0.4 is the smallest once K > 6.4e4
    for K, expected in ((1000, 1 / 432), (10**6, (4 / 10**6) ** 0.6 / 2**0.4)):
        c = ds.optim.nonconvex_clip_parameters(2.0, 0.5, 1.5, 1.0, K)
        assert c.lr == pytest.approx(expected, rel=1e-12)
        assert c.threshold == pytest.approx(0.5 * (2 * expected) ** (-1 / 1.5), rel=1e-12)
        assert c.bound == pytest.approx(60 / (expected * K), rel=1e-12)  # 12 F0/(lr K) + 48 F0/(lr K)
    # in the third regime the bound falls like K^-(2 alpha - 2)/(3 alpha - 2) = K^-0.4 and grows with sigma
    b = [
        ds.optim.nonconvex_clip_parameters(2.0, s, 1.5, 1.0, K).bound
        for s, K in ((0.5, 10**7), (0.5, 10**8), (0.6, 10**8))
    ]
    assert np.log10(b[0] / b[1]) == pytest.approx(0.4, rel=1e-9) and b[2] > b[1]
    with pytest.raises(ValueError, match="alpha must be in"):
        ds.optim.nonconvex_clip_parameters(2.0, 0.5, 2.5, 1.0, 10)
