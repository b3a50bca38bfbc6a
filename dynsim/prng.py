"""Random keys: the derivation rule of every stream, and a fast Threefry implementation.

Keys are derived, never shared (DESIGN principle 3). With ``root = key(seed)``:

* trajectory ``(cell c, replica r)`` owns ``fold_in(fold_in(root, c), r)``;
  its initial state uses the first half of ``split(trajectory_key)`` and step ``t``
  uses ``fold_in(second_half, t)``;
* a finite dataset shared by a whole run comes from ``fold_in(root, DATA_STREAM)``,
  a cell index that no grid reaches (``2**32 - 1``).

Results therefore depend only on ``(seed, c, r, t)``, never on chunk size, order or
device count.

The key implementation, :data:`THREEFRY`, is bit-for-bit JAX's default
``threefry2x32`` (partitionable mode): same seeding, ``split``, ``fold_in`` and
``random_bits``. It differs only in how the hash is lowered: JAX lowers Threefry on CPU
as a rolled loop that XLA cannot fuse into a surrounding ``scan`` body, which made
per-step key derivation the dominant cost of a simulation (measured 5-10x slower than
this unrolled form on 2 CPU cores). ``tests/test_prng.py`` checks the equality with
``jax.random`` bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random

from dynsim._validate import check_concrete

__all__ = [
    "DATA_STREAM",
    "THREEFRY",
    "key",
    "trajectory_key",
    "data_key",
    "init_and_run_keys",
    "step_key",
    "threefry2x32",
    "mulhi32",
    "uniform_index",
    "wrap",
]

DATA_STREAM = 2**32 - 1

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r):
    return lax.shift_left(x, np.uint32(r)) | lax.shift_right_logical(x, np.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled.

    ``k0, k1`` are the key words, ``x0, x1`` the counter words (uint32 arrays that
    broadcast together). Returns the two output words.
    """
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r)
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _counts(shape):
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 2**32:
        raise NotImplementedError("dynsim.prng: more than 2**32 random words per call")
    lo = lax.iota(np.uint32, size).reshape(shape)
    return jnp.zeros(shape, np.uint32), lo


def _words(k):
    return lax.index_in_dim(k, 0, keepdims=False), lax.index_in_dim(k, 1, keepdims=False)


def _pair(b0, b1):
    # lax.concatenate, not jnp.stack: under vmap, stack batches as stack-then-transpose,
    # which XLA cannot fuse with the consumer's slices (a 4x slowdown of every step).
    return lax.concatenate([b0[..., None], b1[..., None]], b0.ndim)


_SMALL = 16


def _hash(k, shape):
    """Threefry of the counters ``0, 1, ..., size - 1`` (flat, row-major) under key ``k``.

    Small shapes are hashed one counter at a time and joined with ``lax.concatenate``:
    under ``vmap`` an iota of a few elements becomes a minor axis of 2-16 entries that XLA
    does not vectorize over the batch (measured 6x slower for a pair of normals).
    """
    shape = tuple(shape)
    size = int(np.prod(shape, dtype=np.int64))
    k0, k1 = _words(k)
    if size == 1:
        b0, b1 = threefry2x32(k0, k1, np.uint32(0), np.uint32(0))
        return b0.reshape(shape), b1.reshape(shape)
    if 0 < size <= _SMALL:
        words = [threefry2x32(k0, k1, np.uint32(0), np.uint32(i)) for i in range(size)]
        join = lambda xs: lax.concatenate([x[..., None] for x in xs], jnp.ndim(xs[0])).reshape(  # noqa: E731
            (*jnp.shape(xs[0]), *shape)
        )
        return join([w[0] for w in words]), join([w[1] for w in words])
    hi, lo = _counts(shape)
    return threefry2x32(k0, k1, hi, lo)


def _split(k, shape):
    # The barrier stores the new keys once: each key is read by several consumers (both of
    # its words, and whatever it is split into), and XLA:CPU would otherwise recompute the
    # whole chain of hashes behind it inside each of them (20x slower for a batch of
    # samples that each split their key).
    b0, b1 = _hash(k, shape)
    return lax.optimization_barrier(_pair(b0, b1))


def _fold_in(k, data):
    data = jnp.asarray(data).astype(np.uint32)
    b0, b1 = threefry2x32(*_words(k), np.uint32(0), data)
    return _pair(b0, b1)


def _random_bits(k, bit_width, shape):
    if bit_width not in (8, 16, 32, 64):
        raise TypeError("requires 8-, 16-, 32- or 64-bit field width.")
    b0, b1 = _hash(k, shape)
    if bit_width == 64:
        b0 = b0.astype(np.uint64)
        return lax.shift_left(b0, np.uint64(32)) | b1.astype(np.uint64)
    bits = b0 ^ b1
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


THREEFRY = jex_random.define_prng_impl(
    key_shape=(2,),
    seed=jex_random.threefry_prng_impl.seed,
    split=_split,
    random_bits=_random_bits,
    fold_in=_fold_in,
    name="dynsim_threefry2x32",
    tag="dfry",
)


def key(seed: int) -> jax.Array:
    """Root key of a run: ``jax.random.key(seed)`` with the unrolled Threefry lowering.

    The key data are the seed's high and low 32-bit words, ``[seed >> 32, seed & (2**32 - 1)]``,
    as JAX makes them with 64-bit types enabled, in either mode: without them JAX keeps the low
    word only, and every seed ``s >= 2**32`` gave the stream of ``s mod 2**32``.
    """
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    words = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    return jax.random.wrap_key_data(words, impl=THREEFRY)


def as_key(key_or_seed) -> jax.Array:
    """A key from an integer seed (Python or NumPy, >= 0; :func:`key`) or a JAX key (typed, or raw ``uint32``
    data as ``jax.random.PRNGKey`` makes), returned as given."""
    if isinstance(key_or_seed, (bool, np.bool_)):
        raise TypeError(f"key must be a JAX key or an integer seed, got {key_or_seed!r}")
    if isinstance(key_or_seed, (int, np.integer)):
        if key_or_seed < 0:
            raise ValueError(f"key must be a JAX key or an integer seed >= 0, got {key_or_seed}")
        return key(int(key_or_seed))
    dtype = getattr(key_or_seed, "dtype", None)
    if dtype is None or not (jnp.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.uint32):
        raise TypeError(
            f"key must be a JAX key (jax.random.key(0)) or an integer seed, got {key_or_seed!r} "
            f"({type(key_or_seed).__name__})"
        )
    return key_or_seed


def wrap(word0: jax.Array, word1: jax.Array) -> jax.Array:
    """The key whose data are the two uint32 words (kept apart, they vectorize better)."""
    return jax.random.wrap_key_data(_pair(word0, word1), impl=THREEFRY)


def trajectory_key(root: jax.Array, cell, replica) -> jax.Array:
    """``fold_in(fold_in(root, cell), replica)``: the stream of one trajectory."""
    return jax.random.fold_in(jax.random.fold_in(root, cell), replica)


def data_key(root: jax.Array) -> jax.Array:
    """Key of the dataset shared by every trajectory of a run."""
    return jax.random.fold_in(root, DATA_STREAM)


def init_and_run_keys(traj_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split a trajectory key into the key of its initial state and its run key."""
    k = jax.random.split(traj_key)
    return k[0], k[1]


def step_key(run_key: jax.Array, t) -> jax.Array:
    """Key of step ``t`` (0-based) of a trajectory: ``fold_in(run_key, t)``."""
    return jax.random.fold_in(run_key, t)


def mulhi32(a, b):
    """High 32 bits of the 64-bit product of two uint32 arrays, in uint32 arithmetic."""
    mask = np.uint32(0xFFFF)
    a_lo, a_hi = a & mask, lax.shift_right_logical(a, np.uint32(16))
    b_lo, b_hi = b & mask, lax.shift_right_logical(b, np.uint32(16))
    lo_lo = a_lo * b_lo
    hi_lo = a_hi * b_lo
    lo_hi = a_lo * b_hi
    cross = lax.shift_right_logical(lo_lo, np.uint32(16)) + (hi_lo & mask) + lo_hi
    return a_hi * b_hi + lax.shift_right_logical(hi_lo, np.uint32(16)) + lax.shift_right_logical(cross, np.uint32(16))


def uniform_index(k: jax.Array, shape, n) -> jax.Array:
    """Indices uniform on ``{0, ..., n-1}``: ``floor(b * n / 2**32)`` for 32 random bits ``b``.

    One hash per index (``jax.random.randint`` spends four). Each index has
    probability ``floor(2**32/n)/2**32`` or ``ceil(2**32/n)/2**32``, i.e. within
    ``2**-32`` of ``1/n``. ``n`` may be a traced integer (``1 <= n < 2**31``).
    """
    check_concrete("n", n, lambda v: (v >= 1) & (v < 2**31) & (v == np.floor(v)), "an integer in [1, 2**31)")
    bits = jax.random.bits(k, tuple(shape), np.uint32)
    idx = mulhi32(bits, jnp.asarray(n).astype(np.uint32)).astype(np.int32)
    # rem(idx, n) == idx. XLA counts a remainder as expensive, so the index is then computed
    # once and stored, instead of being recomputed (two hashes) inside every gather that
    # reads it: twice as fast for a dataset with two fields.
    return lax.rem(idx, jnp.asarray(n).astype(np.int32))
