"""Progress bars and runs in calls of growing length, shared by every long-running entry point."""

from __future__ import annotations

import time

import jax
from tqdm.auto import tqdm

PROGRESS_BLOCKS = 20
"""A run shown with a bar starts with calls of 1/20 of its blocks."""


def check_progress(progress) -> None:
    if progress not in (None, True, False):
        raise TypeError(f"progress must be None, True or False, got {progress!r}")


def progress_bar(total: int, progress: bool | None, desc: str, **options) -> tqdm:
    """A bar counting ``total`` trajectory-steps. ``progress``: ``None`` shows it on a terminal once a run has
    taken 2 s, ``True`` at once and anywhere, ``False`` never."""
    check_progress(progress)
    return tqdm(
        total=total,
        unit="traj-step",
        unit_scale=True,
        delay=0.0 if progress else 2.0,
        disable={None: None, True: False, False: True}[progress],
        desc=desc,
        **options,
    )


def in_blocks(call, carry, start: int, stop: int, size: int, on_block, min_seconds: float, after=None):
    """``carry`` after ``call(carry, a, b)`` over consecutive blocks ``[a, b)`` covering ``[start, stop)``.

    Blocks start at ``size`` and double while a call takes less than ``min_seconds``, so a
    short run is not dominated by per-call costs and a long one still reports progress often.
    Results do not depend on the blocks: step ``t`` is the same computation in any of them.
    ``after(carry, b)``, if given, sees the carry after each call (to save it).
    """
    a = start
    while a < stop:
        b = min(stop, a + size)
        began = time.perf_counter()
        carry = jax.block_until_ready(call(carry, a, b))
        on_block(b - a)
        if after is not None:
            after(carry, b)
        if time.perf_counter() - began < min_seconds:
            size *= 2
        a = b
    return carry
