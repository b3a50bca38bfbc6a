"""Fused multi-step kernels: every step of a trajectory in one pass, its state never leaving the chip.

:func:`dynsim.simulate` runs one step per pass over the ensemble, so each step reads and writes
every trajectory's state in memory; on a GPU that caps the rate at the memory bandwidth over
the bytes a step moves (``benchmarks/RESULTS.md``). A fused kernel loads a block of
trajectories once, runs all ``n_steps`` steps on it with the state in registers, and writes the
results once: its rate is bound by arithmetic instead.

:func:`saddle_modes` is the fused form of :func:`dynsim.dynamics.saddle_modes` with Gaussian or
two-point data, drawn afresh each step or from a finite dataset (seed 004, eqs. 66-67): the mode exponents and
the mean-square factor behind :func:`dynsim.stability.saddle_phases`. It runs as

* ``backend="pallas"``: a Pallas (Triton) kernel on a GPU, one program per block of trajectories;
* ``backend="jax"``: the same step in plain JAX, one compiled loop per chunk (CPU, or any device);
* ``backend="interpret"``: the Pallas kernel in interpret mode (any device; for tests).

Randomness. The engine's stream (:mod:`dynsim.prng`) derives a key per step and per draw, a
Threefry hash each. Here sample ``j`` of step ``t`` of trajectory ``(c, r)`` takes the two words
``(b0, b1) = threefry2x32(k_cr, (j, t))`` of its trajectory key
``k_cr = threefry2x32(key(seed), (c, r))``, one hash, and turns each into a normal
``sqrt(2) erfinv(v)`` with ``v`` uniform on ``2**23`` points symmetric in ``(-1, 1)``, as
``jax.random.normal`` does: ``x`` from ``b0`` and ``eps / sqrt(noise_var)`` from ``b1`` (a two-point
sample is the top bit of ``b0``; a point of a finite dataset is number ``floor(b0 N / 2**32)``). The law is
the engine's up to the float32 tails (here ``|x| <= 5.29``, a tail of probability 1.2e-7; the
engine's normals stop near 5.42); the draws are not, so results agree with
:func:`dynsim.simulate` in distribution, not bit for bit. They depend only on
``(seed, c, r, t, j)``: the same for any block or chunk size and on any backend.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax import lax

from dynsim import prng
from dynsim._progress import check_progress, progress_bar
from dynsim._tree import kahan_add
from dynsim._validate import check_choice, check_int, check_positive, grid_values
from dynsim.dynamics.saddle import LOG_ZERO
from dynsim.observables import batch_means_stderr, time_batches
from dynsim.problems import draw_dataset, rank1_saddle

__all__ = ["saddle_modes", "BACKENDS", "LAWS"]

BACKENDS = ("auto", "pallas", "jax", "interpret")
_SQRT2 = np.float32(math.sqrt(2))
_STEP = np.float32(2.0**-22)
_UNROLL = 4  # batches up to this size are unrolled
LAWS = ("gaussian", "two_point")


def _uniform_open(bits):
    """``(b + 1/2) / 2**22 - 1`` of the top 23 bits ``b``: uniform on 2**23 points symmetric in (-1, 1).

    Every step is exact in float32 (``b + 1/2`` needs 24 bits), so ``|v| <= 1 - 2**-23`` and
    ``erfinv(v)`` is finite.
    """
    top = lax.shift_right_logical(bits, np.uint32(9)).astype(np.float32)
    return (top + np.float32(0.5)) * _STEP - 1


def _normal_pair(k0, k1, j, t):
    """Two independent N(0, 1) draws ``sqrt(2) erfinv(v)`` from the words of ``threefry2x32(k, (j, t))``."""
    b0, b1 = prng.threefry2x32(k0, k1, j, t)
    return _SQRT2 * lax.erf_inv(_uniform_open(b0)), _SQRT2 * lax.erf_inv(_uniform_open(b1))


def _sample_chi(k0, k1, j, t, second, data, law: str, noise_std: float):
    """One sample's ``x y / c0``: ``x (mu x + (1 - mu) eps)`` (Gaussian) or ``b + (1 - b) a`` (two-point).

    ``data`` is ``()`` for a sample drawn afresh, else the dataset's fields (``(x, eps)`` or
    ``(b,)``, arrays or Pallas refs) and the sample is point ``floor(b0 N / 2**32)`` of it.
    """
    if data:
        b0, _ = prng.threefry2x32(k0, k1, j, t)
        i = prng.mulhi32(b0, np.uint32(data[0].shape[0])).astype(np.int32)  # uniform on {0..N-1}
        if law == "gaussian":
            x, eps = data[0][i], data[1][i]
            return x * (second * x + (1 - second) * eps)
        b = data[0][i]
        return b + (1 - b) * second
    if law == "gaussian":
        x, z = _normal_pair(k0, k1, j, t)
        return x * (second * x + (1 - second) * noise_std * z)
    b0, _ = prng.threefry2x32(k0, k1, j, t)
    b = lax.shift_right_logical(b0, np.uint32(31)).astype(np.float32)  # Bernoulli(1/2)
    return b + (1 - b) * second


def _chi(k0, k1, t, second, data, *, law: str, batch_size: int, noise_std: float, c0: float):
    """``chi_t = (c0/S) sum_{j<S}`` of the samples' ``x y / c0`` (eq. 66; :func:`_sample_chi`)."""
    if batch_size <= _UNROLL:
        total = jnp.zeros_like(second)
        for j in range(batch_size):
            total = total + _sample_chi(k0, k1, np.uint32(j), t, second, data, law, noise_std)
    else:  # a loop, not S copies of the hash in the kernel
        total = lax.fori_loop(
            0,
            batch_size,
            lambda j, acc: acc + _sample_chi(k0, k1, j.astype(np.uint32), t, second, data, law, noise_std),
            jnp.zeros_like(second),
        )
    return (c0 / batch_size) * total


def _run(lr, second, k0, k1, data, *, bounds, law, batch_size, noise_std, c0):
    """All steps of a block of trajectories: ``log|mode_T / mode_0|`` of both modes and batch sums.

    ``log_-+ += log|1 -+ lr chi_t|`` (eq. 67; ``log 0`` kept at :data:`LOG_ZERO`), and
    ``sums[b]``, the compensated (Kahan) sum over the steps of batch ``b`` of ``(1 - lr chi_t)^2``
    (a list); ``bounds`` are the batches' first steps and the end,
    ``1 = bounds[0] < ... < bounds[-1] = n_steps + 1``. ``data``: see :func:`_sample_chi`.
    """

    def step(t, carry):
        log_plus, log_minus, total, comp = carry
        chi = _chi(
            k0, k1, t.astype(np.uint32), second, data, law=law, batch_size=batch_size, noise_std=noise_std, c0=c0
        )
        plus, minus = 1 + lr * chi, 1 - lr * chi
        log_plus = jnp.maximum(log_plus + jnp.log(jnp.abs(plus)), LOG_ZERO)
        log_minus = jnp.maximum(log_minus + jnp.log(jnp.abs(minus)), LOG_ZERO)
        # an overflowing square (|lr chi| > 1.8e19 in float32) makes the sum inf; its compensation stays finite
        return log_plus, log_minus, *kahan_add(total, comp, minus * minus)

    zero = jnp.zeros_like(lr)
    log_plus, log_minus, sums = zero, zero, []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        log_plus, log_minus, total, comp = lax.fori_loop(start, stop, step, (log_plus, log_minus, zero, zero))
        sums.append(total - comp)
    return log_plus, log_minus, sums


def _kernel(*refs, n_fields: int, **static):
    """One Pallas program: a block's ``lr, second, k0, k1``, the dataset's fields, then the outputs."""
    lr_ref, second_ref, k0_ref, k1_ref = refs[:4]
    data = refs[4 : 4 + n_fields]  # whole, gathered from by index
    plus_ref, minus_ref, sums_ref = refs[4 + n_fields :]
    log_plus, log_minus, sums = _run(lr_ref[...], second_ref[...], k0_ref[...], k1_ref[...], data, **static)
    plus_ref[...] = log_plus
    minus_ref[...] = log_minus
    for b, total in enumerate(sums):  # row by row: Triton stacks only along the last axis
        sums_ref[b, :] = total


def _pallas(inputs, data, block: int, interpret: bool, **static):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    n = inputs[0].shape[0]
    n_batches = len(static["bounds"]) - 1
    flat = pl.BlockSpec((block,), lambda i: (i,))
    whole = [pl.BlockSpec(field.shape, lambda i: (0,)) for field in data]
    return pl.pallas_call(
        functools.partial(_kernel, n_fields=len(data), **static),
        out_shape=(
            jax.ShapeDtypeStruct((n,), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.float32),
            jax.ShapeDtypeStruct((n_batches, n), jnp.float32),
        ),
        grid=(n // block,),
        in_specs=[flat] * 4 + whole,
        out_specs=(flat, flat, pl.BlockSpec((n_batches, block), lambda i: (0, i))),
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=1),
        name="dynsim_saddle_modes",
    )(*inputs, *data)


def _trajectories(start, n_traj, n_replicas, lrs, second, root, chunk: int):
    """``lr``, ``second`` and key words of trajectories ``start, ..., start + chunk - 1`` (mod ``n_traj``).

    Trajectory ``i`` is ``(cell c, replica r) = (i // n_replicas, i % n_replicas)``, cells
    row-major over ``(lr, second)``; its key is ``threefry2x32(key(seed), (c, r))``. Computed on the
    device per chunk, so no per-trajectory array is built on the host or copied to the device;
    the last chunk is padded by repetition.
    """
    i = (start + jnp.arange(chunk, dtype=jnp.uint32)) % n_traj
    cell, replica = i // n_replicas, i % n_replicas
    k0, k1 = prng.threefry2x32(root[0], root[1], cell, replica)
    return lrs[cell // second.shape[0]], second[cell % second.shape[0]], k0, k1


@functools.lru_cache(maxsize=32)
def _compiled(
    backend: str, block: int, chunk: int, bounds: tuple, law: str, batch_size: int, noise_std: float, c0: float
):
    """The jitted runner ``(start, n_traj, n_replicas, lrs, second, root, data) -> outputs`` of one chunk (cached)."""
    static = dict(bounds=bounds, law=law, batch_size=batch_size, noise_std=noise_std, c0=c0)

    def run(start, n_traj, n_replicas, lrs, second, root, data):
        inputs = _trajectories(start, n_traj, n_replicas, lrs, second, root, chunk)
        if backend == "jax":
            log_plus, log_minus, sums = _run(*inputs, data, **static)
            return log_plus, log_minus, jnp.stack(sums)
        return _pallas(inputs, data, block, backend == "interpret", **static)

    return jax.jit(run)


def _triton_available() -> bool:
    """Whether this JAX still has Pallas's Triton backend (deprecated in JAX 0.11, to be removed)."""
    try:
        from jax.experimental.pallas import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    backend = check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        if jax.default_backend() != "gpu":
            return "jax"
        if not _triton_available():
            warnings.warn(
                f"JAX {jax.__version__} has no Pallas Triton backend: the fused kernel runs as one compiled JAX "
                "loop instead (backend='jax', the same numbers)",
                RuntimeWarning,
                stacklevel=3,
            )
            return "jax"
        return "pallas"
    if backend == "pallas" and jax.default_backend() != "gpu":
        raise ValueError(
            f"backend='pallas' compiles a Triton kernel and needs a GPU; JAX's default backend is "
            f"{jax.default_backend()!r}. Use backend='jax' (same results) or 'interpret'."
        )
    if backend == "pallas" and not _triton_available():
        raise ValueError(f"backend='pallas' needs Pallas's Triton backend, which JAX {jax.__version__} does not have")
    return backend


def saddle_modes(
    lrs,
    second,
    *,
    n_replicas: int,
    n_steps: int,
    chi: str = "gaussian",
    batch_size: int = 1,
    n_data: int | None = None,
    noise_var: float = 4.0,
    c0: float = 1.0,
    seed: int = 0,
    n_batches: int = 8,
    backend: str = "auto",
    block_size: int = 256,
    chunk_size: int = 1 << 16,
    progress: bool | None = None,
) -> xr.Dataset:
    """SGD at the rank-1 saddle with data drawn afresh, every step fused (seed 004, eqs. 66-67).

    Trajectory ``(lr_i, second_j, replica r)`` multiplies its modes ``h = w + u`` and ``m = w - u``
    by ``1 + lr chi_t`` and ``1 - lr chi_t`` at step ``t = 1..n_steps``, with ``chi_t`` the mean of
    ``S = batch_size`` samples' ``c0 x y``:

    * ``chi="gaussian"`` (Figs. 3, 4): ``x (mu x + (1 - mu) eps)``, ``x ~ N(0, 1)``,
      ``eps ~ N(0, noise_var)``; ``second`` holds the values of ``mu``;
    * ``chi="two_point"`` (Fig. 1b): ``1`` or ``a`` with probability 1/2 each; ``second`` holds ``a``.

    With ``n_data = N`` the samples are drawn with replacement from one dataset of ``N`` points,
    the one :func:`dynsim.simulate` and :func:`dynsim.stability.saddle_exponents` use with this
    ``seed`` (``fold_in(key(seed), 2**32 - 1)``), shared by every cell (Fig. 4). That is the law of
    ``dynsim.dynamics.saddle_modes(dynsim.problems.rank1_saddle(chi, n_data=...), S)``.

    Returns an ``xarray.Dataset`` over ``(lr, mu or a, replica)`` with the variables of
    :func:`dynsim.simulate`'s output for that dynamics with the observables of
    :func:`dynsim.stability.saddle_phases` that the phases are read from (not the state's
    ``modes_sq_plus``/``modes_sq_minus``, the last step's squared factors):

    * ``modes_log_plus``, ``modes_log_minus``: ``log|h_T/h_0|``, ``log|m_T/m_0|``, sums of
      ``log|1 -+ lr chi_t|`` (:data:`~dynsim.dynamics.saddle.LOG_ZERO` once a mode is hit exactly);
    * ``ms_minus``, ``ms_minus_stderr``: the time average of ``(1 - lr chi_t)^2`` and its
      standard error from ``n_batches`` batch means.

    ``backend``: ``"pallas"`` (GPU), ``"jax"``, ``"interpret"``, or ``"auto"`` (Pallas on a GPU,
    else JAX); all give the same numbers up to float32 rounding. ``block_size`` (a power of 2):
    trajectories per Pallas program. ``chunk_size``: trajectories per compiled call (the
    progress bar advances per chunk; ``None``: shown on a terminal for runs longer than 2 s).
    Randomness: see the module docstring; results do not depend on ``block_size`` or
    ``chunk_size``. Computed in float32 whatever ``jax_enable_x64`` says.
    """
    law = check_choice("chi", chi, LAWS)
    name = "mu" if law == "gaussian" else "a"
    lrs, second = grid_values("lr", lrs), grid_values(name, second)
    n_replicas = check_int("n_replicas", n_replicas, minimum=1)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if n_data is not None:
        n_data = check_int("n_data", n_data, minimum=1)
    n_batches = check_int("n_batches", n_batches, minimum=2)
    if n_steps < n_batches:
        raise ValueError(f"n_steps = {n_steps} must be >= n_batches = {n_batches}")
    if n_steps >= 2**32:
        raise ValueError(f"n_steps = {n_steps} must be < 2**32 (the step counter is 32 bits)")
    check_positive("noise_var", noise_var)
    check_positive("c0", c0)
    block_size = check_int("block_size", block_size, minimum=1)
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of 2, got {block_size}")
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    check_progress(progress)
    backend = _resolve_backend(backend)

    counts, bounds = time_batches(n_steps, n_batches)
    n_traj = lrs.size * second.size * n_replicas
    if n_traj >= 2**32:
        raise ValueError(f"{n_traj} trajectories: at most 2**32 - 1 (the trajectory counter is 32 bits)")
    data = ()
    if n_data is not None:
        problem = rank1_saddle(law, n_data=n_data, noise_var=noise_var, c0=c0)
        dataset = draw_dataset(problem, prng.data_key(prng.key(seed)), n_data)
        data = tuple(jnp.asarray(dataset[f], jnp.float32) for f in (("x", "eps") if law == "gaussian" else ("b",)))
    grid = (np.uint32(n_traj), np.uint32(n_replicas), lrs.astype(np.float32), second.astype(np.float32))
    root = jax.random.key_data(prng.key(seed))

    chunk = min(-(-chunk_size // block_size) * block_size, -(-n_traj // block_size) * block_size)
    run = _compiled(
        backend, block_size, chunk, tuple(int(b) for b in bounds), law, batch_size, float(noise_var) ** 0.5, float(c0)
    )
    outs = []
    bar = progress_bar(n_traj * n_steps, progress, "fused")
    with bar:
        for start in range(0, n_traj, chunk):
            outs.append([np.asarray(o) for o in run(np.uint32(start), *grid, root, data)])
            bar.update((min(start + chunk, n_traj) - start) * n_steps)
    log_plus, log_minus, sums = (np.concatenate(parts, axis=-1)[..., :n_traj] for parts in zip(*outs))
    means = sums.astype(np.float64).T / counts  # (trajectory, batch)
    ms_minus = means @ counts / counts.sum()
    ms_stderr = batch_means_stderr(means)

    shape = (lrs.size, second.size, n_replicas)
    dims = ("lr", name, "replica")
    return xr.Dataset(
        {
            "modes_log_plus": (dims, log_plus.reshape(shape)),
            "modes_log_minus": (dims, log_minus.reshape(shape)),
            "ms_minus": (dims, ms_minus.reshape(shape)),
            "ms_minus_stderr": (dims, ms_stderr.reshape(shape)),
        },
        coords={"lr": lrs, name: second, "replica": np.arange(n_replicas)},
        attrs=dict(
            engine=f"dynsim.fused.saddle_modes ({backend})",
            chi=law,
            n_data=-1 if n_data is None else n_data,
            n_steps=n_steps,
            batch_size=batch_size,
            noise_var=noise_var,
            c0=c0,
            seed=seed,
        ),
    )
