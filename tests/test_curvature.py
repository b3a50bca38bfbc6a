"""dynsim.curvature against dense linear algebra and direct loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynsim as ds

C = ds.curvature


def _quadratic(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    P = q @ np.diag(eigs) @ q.T
    return jnp.asarray(P, jnp.float32), (lambda th: 0.5 * th @ (jnp.asarray(P, th.dtype) @ th))


def test_hvp_of_a_quadratic_is_P_v():
    P, loss = _quadratic([3.0, 1.0, -2.0, 0.5])
    v = jnp.arange(4.0)
    np.testing.assert_allclose(C.hvp(loss, jnp.ones(4), v), P @ v, rtol=1e-5)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_sharpness_is_the_top_eigenvalue(method):
    _, loss = _quadratic(np.linspace(-1.0, 5.0, 12))
    est = C.sharpness(loss, jnp.ones(12), method=method, n_iter=200 if method == "power" else 12)
    assert float(est.value) == pytest.approx(5.0, rel=1e-3)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_sharpness_with_a_dominant_negative_eigenvalue(method):
    # eigenvalues -10, 3, 1, 0.5: power iteration alone would report -10; sharpness is 3
    _, loss = _quadratic([-10.0, 3.0, 1.0, 0.5])
    est = C.sharpness(loss, jnp.ones(4), method=method, n_iter=300 if method == "power" else 4)
    assert float(est.value) == pytest.approx(3.0, rel=1e-3)
    dominant = C.power_iteration(lambda v: C.hvp(loss, jnp.ones(4), v), jnp.ones(4), 300)
    assert float(dominant.value) == pytest.approx(-10.0, rel=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_lanczos_through_an_invariant_krylov_space(seed):
    # repeated and low-rank spectra make the Krylov space invariant within a few steps; the rounding
    # noise that came next gave 1 for 10 on diag(10, 1, ..., 1), and 5.39 for 89.7 on an
    # over-parametrized least squares with more iterations (n_iter >= 20)
    P = jnp.diag(jnp.array([10.0] + [1.0] * 9))
    est = C.sharpness(lambda t: 0.5 * t @ P @ t, jnp.ones(10), key=jax.random.key(seed))
    assert float(est.value) == pytest.approx(10.0, rel=1e-5)
    rng = np.random.default_rng(seed)
    X, y = jnp.asarray(rng.standard_normal((5, 50)), jnp.float32), jnp.asarray(rng.standard_normal(5), jnp.float32)
    loss = lambda t: 0.5 * jnp.sum((X @ t - y) ** 2)  # noqa: E731
    exact = np.linalg.eigvalsh(np.asarray(X, np.float64).T @ np.asarray(X, np.float64))[-1]
    for n_iter in (6, 20, 50):
        assert float(C.sharpness(loss, jnp.zeros(50), n_iter=n_iter).value) == pytest.approx(exact, rel=1e-5)
        assert float(C.sharpness(lambda t: -loss(t), jnp.zeros(50), n_iter=n_iter).value) == pytest.approx(0, abs=1e-3)
    _, rotated = _quadratic([-1.0] * 19 + [0.5], seed)
    assert float(C.sharpness(rotated, jnp.ones(20), n_iter=30).value) == pytest.approx(0.5, rel=1e-5)


def test_power_method_leaves_the_dominant_negative_direction():
    # the shifted run started from the dominant eigenvector, the null vector of H + |rho| I, and on an
    # axis-aligned Hessian could never leave it: -10 for 1
    est = C.sharpness(lambda t: 0.5 * (-10 * t[0] ** 2 + t[1] ** 2), jnp.ones(2), method="power", n_iter=100)
    assert float(est.value) == pytest.approx(1.0, rel=1e-5)


def test_power_method_on_a_spectrum_with_minus_lambda_and_lambda():
    # the first run's Rayleigh quotient mixes the eigenvalues 1 and -0.999 and never converges (0.1 from
    # (1, 1)); it was kept because it was >= 0. The shift by |H v| reaches the top one.
    est = C.sharpness(lambda t: 0.5 * (t[0] ** 2 - 0.999 * t[1] ** 2), jnp.zeros(2), method="power", v0=jnp.ones(2))
    assert float(est.value) == pytest.approx(1.0, rel=1e-5) and float(est.residual) < 1e-5
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 50))
    A = (A + A.T) / 2  # eigenvalues -9.55 to 9.66 (was 8.44 with a residual of 4.7)
    est = C.sharpness(lambda t: 0.5 * t @ (jnp.asarray(A, t.dtype) @ t), jnp.zeros(50), method="power", n_iter=300)
    assert float(est.value) == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-4)


def test_a_start_in_the_null_space_or_at_zero_goes_on_from_a_fresh_direction():
    # A v0 = 0 gave the zero vector with residual 0 (a false convergence), and a warm start from it NaN
    null = C.sharpness(lambda t: 2.5 * (t[0] - t[1]) ** 2, jnp.zeros(2), method="power", v0=jnp.ones(2))
    assert float(null.value) == pytest.approx(10.0, rel=1e-5)
    flat = C.sharpness(lambda t: jnp.sum(t), jnp.zeros(3), method="power")  # a zero Hessian
    assert float(flat.value) == 0 and float(jnp.linalg.norm(flat.vector)) == pytest.approx(1.0, rel=1e-6)
    warm = C.sharpness(lambda t: 2.5 * jnp.sum(t**2), jnp.zeros(3), method="power", v0=flat.vector)
    assert float(warm.value) == pytest.approx(5.0, rel=1e-6)
    for method in ("lanczos", "power"):
        est = C.sharpness(
            lambda t: -0.5 * jnp.sum(jnp.arange(1.0, 4.0) * t**2), jnp.zeros(3), method=method, v0=jnp.zeros(3)
        )
        assert float(est.value) == pytest.approx(-1.0, rel=1e-4), method


def test_relaxed_smoothness_reads_the_operator_norm_of_an_indefinite_hessian():
    # H = diag(1, -1) at every point: |H| = 1, where the Rayleigh quotient from a random start is |a^2 - b^2| < 1
    saddle = lambda t: 0.5 * (t[0] ** 2 - t[1] ** 2)  # noqa: E731
    est = C.relaxed_smoothness(saddle, jnp.zeros((8, 2)), 0.0, n_iter=5)
    np.testing.assert_allclose(est.hessian_norm, 1.0, rtol=1e-6)


def test_sharpness_batched_and_warm_started():
    def loss(th, scale):
        return 0.5 * scale * jnp.sum(jnp.array([4.0, 1.0]) * th**2) + jnp.sum(th**4)

    params = jnp.stack([jnp.zeros(2), jnp.ones(2)])  # Hessians diag(4, 1) and diag(16, 13)
    est = C.sharpness(loss, params, 1.0, batched=True, n_iter=2)
    np.testing.assert_allclose(est.value, [4.0, 16.0], rtol=1e-5)
    again = C.sharpness(loss, params, 1.0, batched=True, n_iter=1, v0=est.vector, method="power")
    np.testing.assert_allclose(again.value, [4.0, 16.0], rtol=1e-4)


def test_gradient_noise_against_a_direct_loop():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((300, 5)), rng.standard_normal(300)
    data = {"x": jnp.asarray(X, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    w = jnp.asarray(rng.standard_normal(5), jnp.float32)

    def ell(w, s):
        return 0.5 * (s["x"] @ w - s["y"]) ** 2

    grads = np.array([(X[i] @ np.asarray(w) - y[i]) * X[i] for i in range(300)])
    est = C.gradient_noise(ell, w, data, chunk=64)
    mean = grads.mean(axis=0)
    assert float(est.sigma) == pytest.approx(np.sqrt(np.mean(np.sum((grads - mean) ** 2, axis=1))), rel=1e-4)
    assert float(est.grad_norm) == pytest.approx(np.linalg.norm(mean), rel=1e-4)
    full = C.gradient_norm(lambda w: jnp.mean(jax.vmap(ell, (None, 0))(w, data)), w)
    assert float(full) == pytest.approx(np.linalg.norm(mean), rel=1e-4)
    # on a subset of m examples: the same formulas on those examples
    sub = C.gradient_noise(ell, w, data, m=100, key=jax.random.key(3))
    idx = np.asarray(jax.random.choice(jax.random.key(3), 300, (100,), replace=False))
    g = grads[idx]
    assert float(sub.sigma) == pytest.approx(np.sqrt(np.mean(np.sum((g - g.mean(0)) ** 2, axis=1))), rel=1e-4)
    assert sub.m == 100 and sub.n == 300


def test_subset_estimates_are_biased_as_derived_and_the_correction_is_unbiased(x64):
    # seed 000 digest Sec. 1.2: on m of N examples drawn without replacement, E|g_bar_m|^2 = |grad L|^2 +
    # (sigma^2/m)(N - m)/(N - 1) (biased high: the paper's Jensen remark), E sigma_m^2 = sigma^2 (m-1)/m N/(N-1)
    # (biased low), and |g_bar|^2 - (s^2/m)(N - m)/N is unbiased for |grad L|^2. Over 4000 random subsets.
    rng = np.random.default_rng(5)
    n, m = 40, 16
    X, y = rng.standard_normal((n, 3)), rng.standard_normal(n)
    data = {"x": jnp.asarray(X), "y": jnp.asarray(y)}
    w = jnp.asarray([3.0, -2.0, 5.0])  # far from the fit: the mean gradient dominates the subset noise

    def ell(w, s):
        return 0.5 * (s["x"] @ w - s["y"]) ** 2

    grads = (X @ np.asarray(w) - y)[:, None] * X
    true_g2 = np.sum(grads.mean(0) ** 2)
    sigma2 = np.mean(np.sum((grads - grads.mean(0)) ** 2, axis=1))
    keys = jax.random.split(jax.random.key(0), 4000)
    est = jax.vmap(lambda k: C.gradient_noise(ell, w, data, m=m, key=k))(keys)
    assert float(est.grad_norm_debiased.min()) > 0  # the clamp at 0 never acts here: the mean below is exact
    for values, expected in (
        (est.grad_norm**2, true_g2 + sigma2 / m * (n - m) / (n - 1)),
        (est.sigma**2, sigma2 * (m - 1) / m * n / (n - 1)),
        (est.grad_norm_debiased**2, true_g2),
    ):
        values = np.asarray(values)
        assert abs(values.mean() - expected) < 4 * values.std() / np.sqrt(values.size), (values.mean(), expected)
    assert np.mean(np.asarray(est.grad_norm) ** 2) > true_g2 * 1.1  # the naive estimate's bias is visible


def test_relaxed_smoothness_constants_of_the_thesis_examples(x64):
    # seed 002, Lemma 3.2.1 and the digest's constants: x^4 is (16, 1)-smooth (max 12x^2 - 4|x|^3 at |x| = 2),
    # x^3 is (3, 1)-smooth (max 6|x| - 3x^2 at |x| = 1), e^x is (0, 1)-smooth; none is L-smooth (L0 at L1 = 0 grows
    # with the range). A 2-D quadratic is (L, 0)-smooth with L its largest |eigenvalue| (negative here).
    x = jnp.linspace(-5.0, 5.0, 2001)[:, None]  # contains |x| = 1 and 2
    cases = [(lambda t: t[0] ** 4, 16.0), (lambda t: t[0] ** 3, 3.0), (lambda t: jnp.exp(t[0]), 0.0)]
    for f, expected in cases:
        est = C.relaxed_smoothness(f, x, 1.0)
        assert float(est.l0) == pytest.approx(expected, abs=1e-9)
        assert float(C.relaxed_smoothness(f, x, 0.0).l0) > 20  # not L-smooth on a wide range
    frontier = C.relaxed_smoothness(lambda t: t[0] ** 4, x, jnp.array([0.5, 1.0, 2.0])).l0
    np.testing.assert_allclose(frontier, [12 * 4**2 - 0.5 * 4 * 4**3, 16.0, 12 * 1**2 - 2 * 4 * 1**3], atol=1e-9)
    quad = lambda t: 0.5 * (2.0 * t[0] ** 2 - 7.0 * t[1] ** 2)  # noqa: E731
    pts = jax.random.normal(jax.random.key(0), (50, 2))
    est = C.relaxed_smoothness(quad, pts, 0.0)
    assert float(est.l0) == pytest.approx(7.0, rel=1e-9)


def test_power_warm_start_from_a_stale_eigenvector_and_of_another_dtype(x64):
    """A previous Hessian's top eigenvector ``e_1`` has exact zeros, where power iteration never grows the new top
    direction: 5 (residual 0) for 8. And a float64 ``v0`` for float32 parameters (or an integer one) crashed."""

    def old(x):
        return 0.5 * (5 * x[0] ** 2 + x[1] ** 2 + 0.5 * x[2] ** 2)

    def new(x):
        return 0.5 * (5 * x[0] ** 2 + 8 * x[1] ** 2 + 0.5 * x[2] ** 2)

    stale = C.sharpness(old, jnp.ones(3), method="power", n_iter=100).vector
    assert float(C.sharpness(new, jnp.ones(3), method="power", v0=stale).value) == pytest.approx(8.0, rel=1e-4)
    params = jnp.ones(3, jnp.float32)
    for v0 in (np.array([1.0, 1.0, 0.0]), jnp.array([1, 1, 0])):
        for method in ("power", "lanczos"):
            est = C.sharpness(new, params, method=method, v0=v0)
            assert est.value.dtype == jnp.float32 and float(est.value) == pytest.approx(8.0, rel=1e-4)
