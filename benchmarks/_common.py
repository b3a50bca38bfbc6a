"""What every benchmark shares: best-of timing, the device's name and memory bandwidth, writing a results file."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp


def interleaved_best_of(fns, repeats: int = 3, *, warm_up: bool = True) -> list[float]:
    """Smallest wall time of each of ``fns`` over ``repeats`` rounds that call every function once in turn
    (after one untimed call of each, unless ``warm_up`` is off: compilation, caches), so that a burst of
    outside load hits every implementation alike."""
    if warm_up:
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [min(t) for t in times]


def best_of(fn, repeats: int = 3, *, warm_up: bool = True) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` (after one untimed call unless ``warm_up`` is off)."""
    return interleaved_best_of([fn], repeats, warm_up=warm_up)[0]


def device_name() -> str:
    """``platform: kind`` of JAX's first local device, with the core count on CPU."""
    device = jax.local_devices()[0]
    extra = f" ({os.cpu_count()} cores, {platform.machine()})" if device.platform == "cpu" else ""
    return f"{device.platform}: {device.device_kind}{extra}"


def memory_bandwidth(n_bytes: int = 1 << 29) -> float:
    """Bytes per second that JAX's first device streams through ``x <- 2 x + 1`` (read + write, float32).

    The array (``n_bytes``, default 512 MiB) is far larger than any cache and is updated in place
    (donated, as the engine's carry is: a fresh output buffer would time the page faults of its
    first touch on CPU), so this is the bound of a kernel that reads and writes its operands once.
    """
    axpy = jax.jit(lambda x: 2 * x + 1, donate_argnums=0)
    x = [jnp.ones(n_bytes // 4, jnp.float32)]

    def call():
        x[0] = axpy(x[0]).block_until_ready()

    return 2 * n_bytes / best_of(call, 5)


def write_results(filename: str, text: str) -> None:
    """Write ``text`` to ``benchmarks/<filename>`` and say so."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    with open(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")
