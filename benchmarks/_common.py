"""What every benchmark shares: best-of timing, the device's name, writing a results file."""

from __future__ import annotations

import os
import platform
import time

import jax


def best_of(fn, repeats: int = 3, *, warm_up: bool = True) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` (after one untimed call: compilation, caches)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def device_name() -> str:
    """``platform: kind`` of JAX's first local device, with the core count on CPU."""
    device = jax.local_devices()[0]
    extra = f" ({os.cpu_count()} cores, {platform.machine()})" if device.platform == "cpu" else ""
    return f"{device.platform}: {device.device_kind}{extra}"


def write_results(filename: str, text: str) -> None:
    """Write ``text`` to ``benchmarks/<filename>`` and say so."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    with open(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")
