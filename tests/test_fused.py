"""dynsim.fused: the fused saddle kernel against quadrature, across backends and chunkings, and lowered for CUDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import dynsim as ds
from dynsim import fused

S = ds.stability


@pytest.mark.parametrize(
    "chi, second, batch_size, n_data",
    [
        ("gaussian", [0.05, 0.5], 1, None),
        ("gaussian", [0.05, 0.5], 6, None),
        ("two_point", [-0.5, 0.3], 1, None),
        ("two_point", [-0.5], 6, None),
        ("gaussian", [0.05, 0.5], 2, 4),
    ],
)
def test_exponents_and_mean_square_factor_match_theory(chi, second, batch_size, n_data):
    # Lambda_-+ = E log|1 -+ lr chi| by quadrature (Gaussian), exactly (two-point: a binomial average;
    # a finite dataset: the average over its N^S minibatches, the same dataset as the theory's);
    # E(1 - lr chi)^2 = 1 - 2 lr E chi + lr^2 E chi^2 exactly. S = 6 runs the batch as a loop.
    lrs = np.array([0.3, 0.9, 1.6, 2.4])
    theory = S.saddle_phases(lrs, second, batch_size=batch_size, chi=chi, n_data=n_data, seed=3)
    sim = S.saddle_phases(
        lrs,
        second,
        batch_size=batch_size,
        chi=chi,
        n_data=n_data,
        method="simulation",
        n_replicas=512,
        n_steps=400,
        engine="fused",
        seed=3,
    )
    assert sim.attrs["engine"] == "fused"
    for var in ("Lambda_plus", "Lambda_minus", "ms_minus"):
        z = (sim[var] - theory[var]) / sim[f"{var}_stderr"]
        assert float(np.abs(z).max()) < 4.5, (var, z.values)
    clear = (np.abs(theory.Lambda_plus) > 0.05) & (np.abs(theory.Lambda_minus) > 0.05)
    coarse = lambda p: np.where(p == 1, 0, p)  # noqa: E731 - I_ms vs I_p is a moment condition
    np.testing.assert_array_equal(coarse(sim.phase.values[clear]), coarse(theory.phase.values[clear]))


@pytest.mark.parametrize("chi, batch_size, n_data", [("gaussian", 2, None), ("two_point", 6, None), ("gaussian", 2, 5)])
def test_same_numbers_for_every_backend_chunk_and_block(chi, batch_size, n_data):
    kw = dict(n_replicas=100, n_steps=30, chi=chi, batch_size=batch_size, n_data=n_data, seed=5)
    ref = fused.saddle_modes([0.5, 2.0], [0.1, 0.6], backend="jax", **kw)
    for other in (
        fused.saddle_modes([0.5, 2.0], [0.1, 0.6], backend="jax", chunk_size=48, block_size=16, **kw),
        fused.saddle_modes([0.5, 2.0], [0.1, 0.6], backend="interpret", block_size=64, **kw),
    ):
        for var in ref.data_vars:
            np.testing.assert_array_equal(other[var].values, ref[var].values)
    # trajectory (cell c, replica r) draws from (seed, c, r) only: a one-cell grid reproduces cell 0
    one = fused.saddle_modes([0.5], [0.1], backend="jax", **kw)
    np.testing.assert_array_equal(one.modes_log_plus.values[0, 0], ref.modes_log_plus.values[0, 0])


@pytest.mark.skipif(
    jax.default_backend() != "gpu" or not fused._triton_available(),
    reason="the Pallas kernel compiles for a GPU only, with Pallas's Triton backend",
)
@pytest.mark.parametrize("chi, batch_size, n_data", [("gaussian", 2, None), ("two_point", 6, None), ("gaussian", 2, 5)])
def test_pallas_kernel_on_a_gpu_gives_the_numbers_of_the_jax_loop(chi, batch_size, n_data):
    # the same float32 operations, compiled by Triton instead of XLA: equal up to rounding (fused multiply-adds,
    # another erfinv), which over 30 steps stays far below 1e-4 on log-modes of order 1
    kw = dict(n_replicas=300, n_steps=30, chi=chi, batch_size=batch_size, n_data=n_data, seed=5)
    ref = fused.saddle_modes([0.5, 2.0], [0.1, 0.6], backend="jax", **kw)
    for block in (128, 256):
        out = fused.saddle_modes([0.5, 2.0], [0.1, 0.6], backend="pallas", block_size=block, **kw)
        for var in ref.data_vars:
            np.testing.assert_allclose(out[var].values, ref[var].values, rtol=1e-4, atol=1e-4, err_msg=var)


def test_normals_are_independent_standard_normals():
    n = 200_000
    k0 = jnp.arange(n, dtype=jnp.uint32)
    x, z = jax.jit(lambda k: fused._normal_pair(k, k ^ np.uint32(0x9E3779B9), np.uint32(0), np.uint32(7)))(k0)
    x_next, _ = jax.jit(lambda k: fused._normal_pair(k, k ^ np.uint32(0x9E3779B9), np.uint32(0), np.uint32(8)))(k0)
    x, z, x_next = (np.asarray(v, np.float64) for v in (x, z, x_next))
    for v in (x, z):
        assert stats.kstest(v, "norm").pvalue > 1e-4
        assert abs(np.mean(v**4) - 3) < 5 * np.sqrt(96 / n)  # Var(x^4) = 105 - 9
    for a, b in ((x, z), (x, x_next)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)
        assert abs(np.corrcoef(a**2, b**2)[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.parametrize("law, batch_size, n_fields", [("gaussian", 2, 0), ("two_point", 6, 0), ("gaussian", 2, 2)])
def test_pallas_kernel_lowers_to_triton_for_cuda(law, batch_size, n_fields):
    # No GPU here: lower the kernel for CUDA (Pallas -> Triton IR) to catch what Triton cannot express
    # (n_fields: a finite dataset, gathered from by index).
    from jax import export

    n, static = 1024, dict(bounds=(1, 6, 11), law=law, batch_size=batch_size, noise_std=2.0, c0=1.0)
    run = jax.jit(lambda *inputs: fused._pallas(inputs[:4], inputs[4:], 256, False, **static))
    args = [jax.ShapeDtypeStruct((n,), jnp.float32)] * 2 + [jax.ShapeDtypeStruct((n,), jnp.uint32)] * 2
    args += [jax.ShapeDtypeStruct((7,), jnp.float32)] * n_fields
    target = "__gpu$xla.gpu.triton"
    exported = export.export(run, platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])
    text = exported(*args).mlir_module()
    assert text.count(f"@{target}") == 1 and "dynsim_saddle_modes" in text


def test_bad_input():
    with pytest.raises(ValueError, match="needs a GPU"):
        fused.saddle_modes([1.0], [0.1], n_replicas=2, n_steps=10, backend="pallas")
    with pytest.raises(ValueError, match="power of 2"):
        fused.saddle_modes([1.0], [0.1], n_replicas=2, n_steps=10, block_size=100)
    with pytest.raises(ValueError, match="n_batches"):
        fused.saddle_modes([1.0], [0.1], n_replicas=2, n_steps=5)
    with pytest.raises(ValueError, match="backend"):
        fused.saddle_modes([1.0], [0.1], n_replicas=2, n_steps=10, backend="cuda")
    with pytest.raises(ValueError, match="engine='simulate'"):
        S.saddle_phases([1.0], [0.1], method="simulation", engine="fused", checkpoint="ck")
    with pytest.raises(ValueError, match="chi"):
        fused.saddle_modes([1.0], [0.1], n_replicas=2, n_steps=10, chi="cauchy")
    with pytest.raises(ValueError, match="engine"):
        S.saddle_phases([1.0], [0.1], method="simulation", engine="pallas")


def test_without_pallas_triton_a_gpu_runs_the_jax_loop(monkeypatch):
    # JAX 0.11 deprecates Pallas's Triton backend: where it is gone, "auto" on a GPU falls back to the compiled
    # loop (the same numbers) with a warning, and an explicit "pallas" is refused
    kw = dict(n_replicas=8, n_steps=10, seed=1)
    ref = fused.saddle_modes([0.5], [0.1], backend="jax", **kw)
    monkeypatch.setattr(fused.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(fused, "_triton_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="no Pallas Triton backend"):
        out = fused.saddle_modes([0.5], [0.1], **kw)
    assert out.attrs["engine"] == "dynsim.fused.saddle_modes (jax)"
    np.testing.assert_array_equal(out.modes_log_plus.values, ref.modes_log_plus.values)
    with pytest.raises(ValueError, match="needs Pallas's Triton backend"):
        fused.saddle_modes([0.5], [0.1], backend="pallas", **kw)


def test_extreme_bits_give_finite_normals():
    # v = (b + 1/2) / 2**22 - 1 for the top 23 bits b: exact in float32, so never +-1 (erfinv = +-inf)
    bits = jnp.array([0, 0x1FF, 0x200, 0x7FFFFFFF, 0x80000000, 0xFFFFFE00, 0xFFFFFFFF], jnp.uint32)
    v = np.asarray(fused._uniform_open(bits), np.float64)
    assert v.min() == -1 + 2.0**-23 and v.max() == 1 - 2.0**-23
    assert np.all(np.isfinite(np.asarray(jax.scipy.special.erfinv(fused._uniform_open(bits)))))
    np.testing.assert_allclose(v[[3, 4]], [-(2.0**-23), 2.0**-23])  # symmetric about 0
