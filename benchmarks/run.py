"""Throughput of dynsim against the code a user would otherwise write (NumPy, PyTorch), in the same run.

Trajectory-steps per second (float32) for
  (a) SGD on 1-D regression (N = 100, S = 1),
  (b) the rank-1 saddle in mode coordinates (Gaussian data, S = 1, N = infinity), through
      ``simulate`` and through the fused kernel ``dynsim.fused.saddle_modes``,
  (c) a grid of 400 200-200-200 tanh nets (fresh samples, batch 1, mean MSE, SGD),
  (d) ``dynsim.lyapunov.spectrum`` with k = 8 on the nets of (c), relative to their base step,
and the end-to-end time of the default phase diagram. The baselines are vectorized over trajectories
(NumPy; PyTorch on CUDA when present, else CPU) with hand-written gradients, and run at most
``BASELINE_STEPS`` steps (their rate per step does not depend on the count).

Each of (a)-(c) is also set against its memory bound: the engine runs one step per pass over the
ensemble, so every trajectory-step reads and writes at least its state, alive flag and divergence
step and reads its run key and traced hyperparameters (:func:`engine_bytes`); at the device's
measured bandwidth (:func:`_common.memory_bandwidth`) that caps the rate at ``bandwidth / bytes``.

With ``--gpu``: the issue's sizes, the ``--preset paper`` phase diagram (both engines), (a)-(c) at
several chunk sizes (a chunk whose state fits in the GPU's L2 cache may beat the HBM bound) and the
fused kernel at several block sizes (trajectories per Pallas program). Prints a table and
rewrites ``benchmarks/RESULTS.md`` with the device's name.

A measurement that fails is reported (in the table and at the end of RESULTS.md, exit status 1) and
the others go on; ``--save`` writes every measurement to a JSON file as it is taken, ``--resume``
takes from that file what an earlier run of the same preset on the same device measured (a run cut
short by a time limit goes on where it stopped), and ``--render`` writes RESULTS.md from such a file.

    python benchmarks/run.py                       # CPU sizes
    python benchmarks/run.py --gpu --save gpu.json # GPU sizes (4M trajectories for (a) and (b))
    python benchmarks/run.py --gpu --save gpu.json --resume  # the rest of a run cut short
    python benchmarks/run.py --render gpu.json     # RESULTS.md from saved measurements
    python benchmarks/run.py --smoke               # every branch of --gpu at tiny sizes (a minute on CPU)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from _common import best_of, device_name, interleaved_best_of, memory_bandwidth, write_results

import dynsim as ds

try:
    import torch
except ImportError:  # pragma: no cover - optional baseline
    torch = None


BASELINE_STEPS = 100
"""NumPy and PyTorch run at most this many steps (their rate per step does not depend on the count)."""


class Workload(NamedTuple):
    work: int  # trajectory-steps of one dynsim call
    run_dynsim: Callable[[], object]
    base_work: int  # trajectory-steps of one baseline call
    run_numpy: Callable[[], object]
    run_torch: Callable[[], object]
    bytes_per_step: int  # engine_bytes of the dynamics


def engine_bytes(dyn, hp: dict, traced: int) -> int:
    """Bytes one engine step moves per trajectory if it reads and writes each operand once, one step per
    pass over the ensemble.

    Reads and writes the state (``dyn.init``'s leaves), the alive flag (1 B) and the divergence
    step (4 B); reads the run key (8 B) and the ``traced`` float32 hyperparameters of the grid.
    Data shared by all trajectories (a finite dataset) stays in cache and is not counted. Not a strict
    minimum: a step that only writes part of its state reads less (the saddle's squared modes), and one
    that reads its weights twice (a batch-1 net: forward, then update) moves more unless they stay in cache.
    """
    state = jax.eval_shape(ds.dynamics.bind(dyn, hp).init, jax.random.key(0))
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state))
    return 2 * (state_bytes + 1 + 4) + 8 + 4 * traced


def torch_device():
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def sync():
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- (a) 1-D regression


def regression(m, steps, chunk_size=None):
    base = min(steps, BASELINE_STEPS)
    problem = ds.problems.linear_regression_1d(n_data=100, noise_std=0.5)
    dyn = ds.dynamics.sgd(problem)
    data = ds.dynamics.bind(dyn, {"lr": 0.1}).hp["data"]
    x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"], np.float32)
    obs = {"w": ds.observables.final_state()}

    def run_dynsim():
        return ds.simulate(
            dyn, grid={"lr": [0.1]}, n_replicas=m, n_steps=steps, observables=obs, progress=False, chunk_size=chunk_size
        )

    def run_numpy():
        rng = np.random.default_rng(0)
        w = np.ones(m, np.float32)
        for _ in range(base):
            i = rng.integers(0, 100, size=m)
            xi = x[i]
            w -= np.float32(0.1) * xi * (xi * w - y[i])
        return w

    def run_torch():
        dev = torch_device()
        xt, yt = torch.tensor(x, device=dev), torch.tensor(y, device=dev)
        w = torch.ones(m, device=dev)
        for _ in range(base):
            i = torch.randint(0, 100, (m,), device=dev)
            xi = xt[i]
            w -= 0.1 * xi * (xi * w - yt[i])
        sync()
        return w

    return Workload(m * steps, run_dynsim, m * base, run_numpy, run_torch, engine_bytes(dyn, {"lr": 0.1}, 1))


# --------------------------------------------------------------------------- (b) rank-1 saddle


def saddle(m, steps, chunk_size=None, fused=False, block_size=256):
    """(b) through ``simulate``, or with ``fused=True`` through ``dynsim.fused.saddle_modes`` (same law)."""
    base = min(steps, BASELINE_STEPS)
    dyn = ds.dynamics.saddle_modes(ds.problems.rank1_saddle())
    obs = {"modes": ds.observables.final_state()}
    lrs = np.linspace(0.05, 3.0, 16)
    reps = m // 16

    def run_dynsim():
        if fused:
            return ds.fused.saddle_modes(
                lrs, [0.1], n_replicas=reps, n_steps=steps, block_size=block_size, chunk_size=chunk_size or 1 << 22
            )
        return ds.simulate(
            dyn,
            grid={"lr": lrs, "mu": [0.1]},
            n_replicas=reps,
            n_steps=steps,
            observables=obs,
            progress=False,
            chunk_size=chunk_size,
        )

    lr = np.repeat(lrs, reps).astype(np.float32)

    @np.errstate(divide="ignore")  # an exact hit 1 -+ lr chi = 0 gives log 0 = -inf, as it should
    def run_numpy():
        rng = np.random.default_rng(0)
        plus, minus = np.zeros_like(lr), np.zeros_like(lr)
        for _ in range(base):
            xx = rng.standard_normal(lr.size, dtype=np.float32)
            eps = 2 * rng.standard_normal(lr.size, dtype=np.float32)
            chi = xx * (0.1 * xx + 0.9 * eps)
            plus += np.log(np.abs(1 + lr * chi))
            minus += np.log(np.abs(1 - lr * chi))
        return plus, minus

    def run_torch():
        dev = torch_device()
        lrt = torch.tensor(lr, device=dev)
        plus, minus = torch.zeros_like(lrt), torch.zeros_like(lrt)
        for _ in range(base):
            xx = torch.randn(lrt.shape, device=dev)
            chi = xx * (0.1 * xx + 0.9 * 2 * torch.randn(lrt.shape, device=dev))
            plus += torch.log(torch.abs(1 + lrt * chi))
            minus += torch.log(torch.abs(1 - lrt * chi))
        sync()
        return plus, minus

    bytes_per_step = 0 if fused else engine_bytes(dyn, {"lr": 1.0, "mu": 0.1}, 2)  # fused: one pass per run
    return Workload(reps * 16 * steps, run_dynsim, reps * 16 * base, run_numpy, run_torch, bytes_per_step)


# --------------------------------------------------------------------------- (c) 200-200-200 nets


def net_update_numpy(W, U, x, y, lr, outer):
    """One SGD step in place on ``cells`` nets ``U tanh(W x)`` (weights ``(cells, d, d)``, inputs and targets
    ``(cells, d)``, rates ``(cells, 1)``) with the loss ``mean((U tanh(W x) - y)^2)``, gradients by hand; the
    rank-1 updates go through the reused buffer ``outer``."""
    d = x.shape[1]
    h = np.tanh(np.einsum("cij,cj->ci", W, x))
    r = np.einsum("cij,cj->ci", U, h) - y
    df = 2 * r / d
    dh = np.einsum("cji,cj->ci", U, df) * (1 - h * h)
    U -= np.multiply((lr * df)[:, :, None], h[:, None, :], out=outer)
    W -= np.multiply((lr * dh)[:, :, None], x[:, None, :], out=outer)


def net_update_torch(W, U, x, y, lr):
    """:func:`net_update_numpy` in PyTorch, the rank-1 updates in place (``baddbmm_``)."""
    d = x.shape[1]
    h = torch.tanh(torch.bmm(W, x[:, :, None])[:, :, 0])
    r = torch.bmm(U, h[:, :, None])[:, :, 0] - y
    df = 2 * r / d
    dh = torch.bmm(U.transpose(1, 2), df[:, :, None])[:, :, 0] * (1 - h * h)
    U.baddbmm_((lr * df)[:, :, None], h[:, None, :], alpha=-1)
    W.baddbmm_((lr * dh)[:, :, None], x[:, None, :], alpha=-1)


def nets(cells, steps, chunk_size=None, d=200):
    base = min(steps, BASELINE_STEPS)
    problem = ds.problems.two_layer_net(d, d, "tanh")
    dyn = ds.dynamics.sgd(problem)
    side = int(np.sqrt(cells))
    grid = {"lr": np.linspace(0.01, 0.25, side), "mu": np.linspace(0, 0.9, cells // side)}
    obs = {"theta": ds.observables.final_state()}
    lr = np.repeat(grid["lr"], cells // side).astype(np.float32)[:, None]
    mu = np.tile(grid["mu"], side).astype(np.float32)[:, None]

    def run_dynsim():
        return ds.simulate(dyn, grid=grid, n_steps=steps, observables=obs, progress=False, chunk_size=chunk_size)

    def step_numpy(W, U, rng, outer):
        x = rng.standard_normal((cells, d), dtype=np.float32)
        y = mu * x + (1 - mu) * 2 * rng.standard_normal((cells, d), dtype=np.float32)
        net_update_numpy(W, U, x, y, lr, outer)

    def run_numpy():
        rng = np.random.default_rng(0)
        scale = np.float32(1 / np.sqrt(d))  # a float64 scalar would promote the weights to float64 (NEP 50)
        W = rng.uniform(-1, 1, (cells, d, d)).astype(np.float32) * scale
        U = rng.uniform(-1, 1, (cells, d, d)).astype(np.float32) * scale
        outer = np.empty_like(W)
        assert W.dtype == U.dtype == np.float32
        for _ in range(base):
            step_numpy(W, U, rng, outer)
        return W, U

    def run_torch():
        dev = torch_device()
        lrt, mut = torch.tensor(lr, device=dev), torch.tensor(mu, device=dev)
        W = (torch.rand(cells, d, d, device=dev) * 2 - 1) / d**0.5
        U = (torch.rand(cells, d, d, device=dev) * 2 - 1) / d**0.5
        for _ in range(base):
            x = torch.randn(cells, d, device=dev)
            y = mut * x + (1 - mut) * 2 * torch.randn(cells, d, device=dev)
            net_update_torch(W, U, x, y, lrt)
        assert W.dtype == torch.float32
        sync()
        return W, U

    bytes_per_step = engine_bytes(dyn, {"lr": 0.1, "mu": 0.1}, 2)
    return Workload(cells * steps, run_dynsim, cells * base, run_numpy, run_torch, bytes_per_step)


def spectrum_cost(cells, steps, k=8, d=200, repeats=3):
    """Seconds per step, on ``cells`` replicas of one net: the plain step (``base``), ``spectrum`` with k tangents
    orthonormalized every step (``dt=1``) and every 10 steps (``dt=10``), and the k tangents pushed with one
    orthonormalization per run (``push``: ``dt`` = the run's length), whose difference to ``dt=1`` is the QR.

    ``steps = (n1, n2)``: each cost is the marginal one, ``(T(n2) - T(n1)) / (n2 - n1)`` (``n2 = n1 + 10 (n2 - n1)``
    for the base), which cancels what a call spends outside its steps (the first orthonormalization and the
    reading of the results). The two lengths of a run are timed in interleaved rounds; the runs one after
    another, since a call that follows one which freed a large frame is slowed down.
    """
    problem = ds.problems.two_layer_net(d, d, "tanh")
    dyn = ds.dynamics.sgd(problem)
    bound = ds.dynamics.bind(dyn, {"lr": 0.1, "mu": 0.1})
    x0 = bound.init(jax.random.key(0))
    obs = {"theta": ds.observables.final_state()}

    def spectrum(dt):
        return lambda n: ds.lyapunov.spectrum(bound.step, x0, 0, n, k, n_replicas=cells, n_records=1, dt=dt or n)

    def run_base(n):
        ds.simulate(dyn, grid={"lr": [0.1], "mu": [0.1]}, n_replicas=cells, n_steps=n, observables=obs, progress=False)

    runs = {"base": run_base, "dt=1": spectrum(1), "dt=10": spectrum(10), "push": spectrum(None)}
    n1, n2 = steps
    cost = {}
    for name, run in runs.items():  # the base step is cheap: 10x the steps, for as long a clock as the others
        m1, m2 = (n1, n1 + 10 * (n2 - n1)) if name == "base" else (n1, n2)
        t1, t2 = interleaved_best_of([functools.partial(run, m1), functools.partial(run, m2)], repeats)
        cost[name] = (t2 - t1) / (m2 - m1)
    return cost


# --------------------------------------------------------------------------- main


SPECTRUM_RUNS = {
    "base": "plain SGD step (`simulate`)",
    "dt=1": "`spectrum(..., dt=1)`: push + QR every step",
    "dt=10": "`spectrum(..., dt=10)`: push + QR every 10 steps",
    "push": "push only (one QR per run)",
}

PRESETS = {
    "cpu": dict(
        a=(2**18, 1000),
        b=(2**16, 1000),
        c=(400, 20),
        d=(64, (10, 40)),
        chunks=None,
        diagram=(72, 41, 256, 1000),
        paper=None,
        repeats=3,
    ),
    "gpu": dict(
        a=(4 * 2**20, 1000),
        b=(4 * 2**20, 1000),
        c=(400, 200),
        d=(400, (50, 200)),
        chunks=dict(
            a=(2**18, 2**20, 2**22), b=(2**18, 2**20, 2**22), c=(50, 100, 200, 400), b_fused=(128, 256, 512, 1024)
        ),
        diagram=(72, 41, 256, 1000),
        paper=(256, 256, 1024, 10_000),  # experiments/phase_diagram.py --preset paper
        repeats=3,
    ),
    # every branch of --gpu at tiny sizes, to check the script before spending device time on it
    "smoke": dict(
        a=(2**10, 20),
        b=(2**10, 20),
        c=(16, 2),
        d=(4, (10, 20)),
        chunks=dict(a=(2**8, 2**10), b=(2**8, 2**10), c=(8, 16), b_fused=(64, 128)),
        diagram=(8, 5, 16, 50),
        paper=(8, 8, 16, 100),
        repeats=1,
    ),
}
"""Sizes: (trajectories, steps) of (a)-(c), (replicas, steps) of (d), chunk sizes to scan, the phase
diagrams as (lr points, mu points, replicas, steps), and the timed calls of each measurement after its
warm-up call (the smallest time is kept)."""


def diagram_seconds(n_lr, n_mu, n_replicas, n_steps, refine=0, engine="simulate"):
    """Seconds for the theory and for the simulation of a saddle phase diagram, end to end."""
    lrs, mus = np.linspace(0.02, 3.0, n_lr), np.linspace(0.0, 1.0, n_mu)
    start = time.perf_counter()
    ds.stability.saddle_phases(lrs, mus)
    theory = time.perf_counter() - start
    ds.stability.saddle_phases(
        lrs,
        mus,
        method="simulation",
        n_replicas=n_replicas,
        n_steps=n_steps,
        refine=refine,
        progress=False,
        engine=engine,
    )
    return theory, time.perf_counter() - start - theory


def _stage(results: dict, name: str, fn: Callable[[], object], save: Callable[[dict], None]):
    """``fn()``, kept in ``results["done"][name]``, unless a resumed run has it there already; its failure (say, a
    kernel that does not compile on this device) is recorded in ``results["failures"]`` and printed instead of
    raised, so that the other measurements go on. Then ``save(results)``, so that a run cut short keeps what it
    measured."""
    if name in results["done"]:
        print(f"-- {name}: measured before", flush=True)
        return results["done"][name]
    print(f"-- {name}", flush=True)
    try:
        value = fn()
    except Exception as err:  # noqa: BLE001 - any failure of one measurement is reported, not fatal
        traceback.print_exc()
        results["failures"][name] = f"{type(err).__name__}: {err}"[:1000]
        value = None
    else:
        results["done"][name] = value
    save(results)
    return value


def measure(preset: str, save: Callable[[dict], None], done: dict | None = None) -> dict:
    """Every measurement of ``preset``, most wanted first, as a JSON-able dict (see :func:`render`); ``done``:
    the measurements of an earlier run of the same preset on this device (``results["done"]``), not repeated."""
    sizes = PRESETS[preset]
    n_bytes = 1 << 24 if preset == "smoke" else 1 << 29
    torch_name = "not installed" if torch is None else f"{torch.__version__} on {torch_device()}"
    results = {
        "preset": preset,
        "device": device_name(),
        "versions": f"dynsim {ds.__version__}, JAX {jax.__version__}, NumPy {np.__version__}, PyTorch {torch_name}",
        "bandwidth_bytes": n_bytes,
        "bandwidths": [],
        "rows": [],
        "spectrum": None,
        "diagram": None,
        "paper": {},
        "chunks": [],
        "failures": {},
        "done": dict(done or {}),
    }
    bandwidth = _stage(results, "memory bandwidth", lambda: memory_bandwidth(n_bytes), save)
    if bandwidth is not None:
        results["bandwidths"].append(bandwidth)
        print(f"{results['device']}: {bandwidth * 1e-9:.3g} GB/s memory bandwidth (x <- 2x + 1)")

    def workload_row(label, build, size):
        w = build(*size)
        fns = [w.run_dynsim, w.run_numpy] + ([w.run_torch] if torch is not None else [])
        seconds = interleaved_best_of(fns, sizes["repeats"]) + ([] if torch is not None else [float("nan")])
        rates = [w.work / seconds[0], w.base_work / seconds[1], w.base_work / seconds[2]]
        print(f"{label}: dynsim {rates[0]:.3g}, NumPy {rates[1]:.3g}, PyTorch {rates[2]:.3g} traj-steps/s")
        return {"label": label, "shape": f"{size[0]:,} x {size[1]}", "rates": rates, "bytes": w.bytes_per_step}

    for label, build, size in (
        ("(a) SGD, 1-D regression", regression, sizes["a"]),
        ("(b) rank-1 saddle, modes", saddle, sizes["b"]),
        ("(b) rank-1 saddle, fused kernel", functools.partial(saddle, fused=True), sizes["b"]),
        (f"(c) {sizes['c'][0]} nets 200-200-200, tanh", nets, sizes["c"]),
    ):
        row = _stage(results, label, functools.partial(workload_row, label, build, size), save)
        results["rows"].append(row or {"label": label, "shape": f"{size[0]:,} x {size[1]}", "rates": None})
        save(results)

    cost = _stage(results, "(d) spectrum", lambda: spectrum_cost(*sizes["d"], repeats=sizes["repeats"]), save)
    if cost is not None:
        results["spectrum"] = cost
        print(
            "(d) spectrum k = 8, x the base step: " + ", ".join(f"{n} {t / cost['base']:.1f}" for n, t in cost.items())
        )

    def diagram():
        return {e: sum(diagram_seconds(*sizes["diagram"], refine=1, engine=e)) for e in ("simulate", "fused")}

    results["diagram"] = _stage(results, "phase diagram", diagram, save)
    for engine in ("simulate", "fused") if sizes["paper"] else ():
        results["paper"][engine] = _stage(
            results,
            f"--preset paper, {engine}",
            functools.partial(diagram_seconds, *sizes["paper"], engine=engine),
            save,
        )
    scans = [
        (f"({w})", functools.partial(build, *sizes[w], chunk_size=c), f"{c:,}", f"({w}) in chunks of {c:,}")
        for w, build in (("a", regression), ("b", saddle), ("c", nets))  # does a chunk in L2 beat HBM?
        for c in (sizes["chunks"] or {}).get(w, ())
    ]
    scans += [
        (
            "(b) fused",
            functools.partial(saddle, *sizes["b"], fused=True, block_size=b),
            f"{b:,} per program",
            f"(b) fused, blocks of {b:,}",
        )  # trajectories per program of the fused kernel
        for b in (sizes["chunks"] or {}).get("b_fused", ())
    ]
    for label, build, size, name in scans:

        def rate(build=build):
            w = build()
            return w.work / best_of(w.run_dynsim, sizes["repeats"])

        value = _stage(results, name, rate, save)
        if value is not None:
            results["chunks"].append([label, size, value])
            print(f"{name}: {value:.3g} traj-steps/s")
            save(results)
    bandwidth = _stage(results, "memory bandwidth, again", lambda: memory_bandwidth(n_bytes), save)
    if bandwidth is not None:  # outside load lowers it: the larger of the two is the bound
        results["bandwidths"].append(bandwidth)
        save(results)
    return results


def render(results: dict) -> str:
    """``benchmarks/RESULTS.md`` from the measurements of :func:`measure` (a failed one is said so)."""
    sizes = PRESETS[results["preset"]]
    command = "python benchmarks/run.py" + {"cpu": "", "gpu": " --gpu", "smoke": " --smoke"}[results["preset"]]
    bandwidths = results["bandwidths"]
    bandwidth = max(bandwidths) if bandwidths else None
    lines = [
        "# Benchmarks",
        "",
        f"Device: **{results['device']}**; {results['versions']}. `{command}`, float32, best of 3 calls for every "
        "implementation (compilation excluded).",
        "",
        "| workload | trajectories x steps | dynsim (traj-steps/s) | NumPy | PyTorch | dynsim / NumPy "
        "| dynsim / PyTorch | bytes / traj-step | memory bound | dynsim / bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        if row["rates"] is None:
            lines.append(f"| {row['label']} | {row['shape']} | failed (below) | | | | | | | |")
            continue
        r_ds, r_np, r_pt = row["rates"]
        memory = "- | - | -"  # the fused kernel: one pass per run, no bound per step
        if row["bytes"] and bandwidth:
            memory = f"{row['bytes']:,} | {bandwidth / row['bytes']:.3g} | {r_ds * row['bytes'] / bandwidth:.2f}"
        lines.append(
            f"| {row['label']} | {row['shape']} | {r_ds:.3g} | {r_np:.3g} | {r_pt:.3g} | {r_ds / r_np:.2f} "
            f"| {r_ds / r_pt:.2f} | {memory} |"
        )
    if bandwidth:
        lines += [
            "",
            f"Memory bound: the measured DRAM bandwidth, {bandwidth * 1e-9:.3g} GB/s (`x <- 2x + 1` on "
            f"{results['bandwidth_bytes'] >> 20} MiB, "
            f"read + write; the larger of {len(bandwidths)} measurements, at the start and the end: "
            + ", ".join(f"{b * 1e-9:.3g}" for b in bandwidths)
            + " GB/s), over the bytes one step of the engine moves per trajectory when it reads and writes "
            "each operand once (`engine_bytes`: state, alive flag and divergence step both ways, run key and traced "
            "hyperparameters read). The engine makes one pass over the ensemble per step, so a chunk "
            "larger than the caches cannot run faster than this; an ensemble that fits in the caches (here (a) and "
            "(b), a few MiB per step) can. The fused kernel (`dynsim.fused.saddle_modes`: "
            "every step of a block of trajectories in one pass, a Pallas kernel on GPU, a compiled loop "
            "elsewhere) reads and writes each trajectory once per run: no memory bound per step.",
        ]
    if results["chunks"]:
        lines += ["", "| workload | trajectories per chunk | dynsim (traj-steps/s) |", "|---|---:|---:|"]
        lines += [f"| {label} | {chunk} | {rate:.3g} |" for label, chunk, rate in results["chunks"]]
    cost = results["spectrum"]
    if cost is not None:
        lines += [
            "",
            f"(d) `lyapunov.spectrum` with k = 8 tangent vectors on {sizes['d'][0]} replicas of the net of (c), "
            f"marginal costs per step between {sizes['d'][1][0]} and {sizes['d'][1][1]} steps (compilation and the "
            "first orthonormalization are out of all), target at most k + 1 = 9x the base step:",
            "",
            "| run | ms / step | x base step |",
            "|---|---:|---:|",
            *(f"| {SPECTRUM_RUNS[n]} | {t * 1e3:.3g} | {t / cost['base']:.1f} |" for n, t in cost.items()),
            "",
            "Counted in parameter-sized passes over memory: the plain step reads and writes the weights (4 passes, "
            "W and U both ways); pushing k tangents through the Jacobian of SGD's step (a Hessian-vector product "
            "each) reads and writes each tangent (at least 2 k), and any QR reads and writes the frame at least "
            "once more (2 k). The floor at `dt=1` is thus (4 k + 4) / 4 = k + 1 plain steps, reached only by a QR "
            "fused into the push. Modified Gram-Schmidt with reorthogonalization makes k (k - 1) projections, each "
            "reading two vectors and writing one: 5 k (k - 1) = 280 passes at k = 8, the time of 70 plain steps by "
            "this count, {:.0f} measured (`dt=1` less the push). The push costs {:.1f} plain steps per tangent "
            "against a floor of 0.5. Orthonormalizing every `dt` steps, which a slowly rotating frame (SGD near a "
            "minimum) allows, takes most of the QR out.".format(
                (cost["dt=1"] - cost["push"]) / cost["base"], cost["push"] / cost["base"] / 8
            ),
        ]
    if results["diagram"] is not None:
        lines += [
            "",
            "Phase diagram ({} x {} cells, theory + simulation with {} replicas x {} steps and one refinement): "
            "{:.1f} s end to end; {:.1f} s with `engine='fused'`.".format(
                *sizes["diagram"], results["diagram"]["simulate"], results["diagram"]["fused"]
            ),
        ]
    if results["paper"]:
        n_lr, n_mu, n_replicas, n_steps = sizes["paper"]
        work = n_lr * n_mu * n_replicas * n_steps
        lines += [
            "",
            f"`--preset paper` phase diagram ({n_lr} x {n_mu} cells x {n_replicas} replicas x {n_steps} steps = "
            f"{work:.2g} trajectory-steps), target < 5 s end to end:",
        ]
        for engine, seconds in results["paper"].items():
            if seconds is None:
                lines.append(f"- `engine='{engine}'`: failed (below)")
            else:
                theory, simulation = seconds
                lines.append(
                    f"- `engine='{engine}'`: theory {theory:.1f} s, simulation {simulation:.1f} s "
                    f"({work / simulation:.3g} traj-steps/s)"
                )
    if results["failures"]:
        lines += ["", "Failed measurements:", ""]
        lines += [f"- {name}: `{message}`" for name, message in results["failures"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="GPU sizes, chunk-size scan, --preset paper diagram")
    mode.add_argument("--smoke", action="store_true", help="every branch of --gpu at tiny sizes; writes nothing")
    mode.add_argument("--render", metavar="JSON", help="write RESULTS.md from the measurements saved by --save")
    parser.add_argument(
        "--save",
        metavar="JSON",
        help="save the measurements here after each one (a run cut short "
        "keeps what it measured; --render writes RESULTS.md from it)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="with --save: keep the measurements already in that file, take the rest"
    )
    parser.add_argument("--no-write", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.resume and not args.save:
        parser.error("--resume needs --save FILE (the measurements to resume from)")
    if args.render:
        with open(args.render) as fh:
            results = json.load(fh)
    else:
        preset = "gpu" if args.gpu else "smoke" if args.smoke else "cpu"

        def save(results: dict) -> None:
            if args.save:
                with open(args.save + ".tmp", "w") as fh:
                    json.dump(results, fh, indent=1)
                os.replace(args.save + ".tmp", args.save)

        done = None
        if args.resume and os.path.exists(args.save):
            with open(args.save) as fh:
                before = json.load(fh)
            if (before["preset"], before["device"]) != (preset, device_name()):
                raise SystemExit(
                    f"{args.save} holds measurements of preset {before['preset']!r} on {before['device']!r}, not "
                    f"{preset!r} on {device_name()!r}: not resumed (give another --save file)"
                )
            done = before["done"]
        results = measure(preset, save, done)
    text = render(results)
    print(text)
    if not (args.no_write or results["preset"] == "smoke"):
        write_results("RESULTS.md", text)
    if results["failures"]:
        raise SystemExit(f"{len(results['failures'])} measurement(s) failed: {sorted(results['failures'])}")


if __name__ == "__main__":
    main()
