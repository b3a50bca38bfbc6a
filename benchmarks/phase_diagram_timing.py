"""Time of the simulated phase diagram, against NumPy doing the same simulation, in the same run.

Workload: the default lambda-mu diagram of ``experiments/phase_diagram.py`` (rank-1 saddle,
Gaussian data, S = 1, N = infinity): per cell and replica, ``n_steps`` SGD steps in the mode
coordinates, ``log|w -+ u| += log|1 -+ lr chi_t|`` with ``chi_t = x (mu x + (1 - mu) eps)``,
``x ~ N(0, 1)``, ``eps ~ N(0, 4)``. The NumPy baseline draws the same law, vectorized over
all trajectories of the grid. Writes the Markdown table to ``benchmarks/RESULTS_phase_diagram.md``
(``--write``) with the device's name (``benchmarks/run.py`` owns ``RESULTS.md``).

    python benchmarks/phase_diagram_timing.py [--lr-points 72 --mu-points 41 --replicas 256 --steps 1000]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import device_name, write_results

import dynsim as ds


def numpy_modes(lrs, mus, n_replicas, n_steps, seed=0):
    rng = np.random.default_rng(seed)
    lr = np.repeat(np.repeat(lrs[:, None], len(mus), 1)[..., None], n_replicas, 2).ravel().astype(np.float32)
    mu = np.repeat(np.repeat(mus[None, :], len(lrs), 0)[..., None], n_replicas, 2).ravel().astype(np.float32)
    plus = np.zeros_like(lr)
    minus = np.zeros_like(lr)
    for _ in range(n_steps):
        x = rng.standard_normal(lr.size, dtype=np.float32)
        eps = 2 * rng.standard_normal(lr.size, dtype=np.float32)
        chi = x * (mu * x + (1 - mu) * eps)
        plus += np.log(np.abs(1 + lr * chi))
        minus += np.log(np.abs(1 - lr * chi))
    return plus, minus


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr-points", type=int, default=72)
    parser.add_argument("--mu-points", type=int, default=41)
    parser.add_argument("--replicas", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--numpy-steps", type=int, default=100, help="NumPy runs this many steps (it is scaled)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS_phase_diagram.md")
    args = parser.parse_args(argv)

    lrs = np.linspace(0.02, 3.0, args.lr_points)
    mus = np.linspace(0.0, 1.0, args.mu_points)
    traj = len(lrs) * len(mus) * args.replicas

    start = time.perf_counter()
    ds.stability.saddle_phases(
        lrs, mus, method="simulation", n_replicas=args.replicas, n_steps=args.steps, progress=False
    )
    first = time.perf_counter() - start
    start = time.perf_counter()
    ds.stability.saddle_phases(
        lrs, mus, method="simulation", n_replicas=args.replicas, n_steps=args.steps, progress=False
    )
    t_ds = time.perf_counter() - start
    start = time.perf_counter()
    ds.stability.saddle_phases(lrs, mus)
    t_theory = time.perf_counter() - start
    start = time.perf_counter()
    numpy_modes(lrs, mus, args.replicas, args.numpy_steps)
    t_np = (time.perf_counter() - start) * args.steps / args.numpy_steps

    name = device_name()
    rate_ds, rate_np = traj * args.steps / t_ds, traj * args.steps / t_np
    lines = [
        "# Benchmarks",
        "",
        f"Device: **{name}**; dynsim {ds.__version__}, JAX {jax.__version__}, NumPy {np.__version__}.",
        "",
        "## Simulated phase diagram (rank-1 saddle, lambda-mu, S = 1, N = infinity)",
        "",
        f"`python benchmarks/phase_diagram_timing.py`: {len(lrs)} x {len(mus)} cells x {args.replicas} replicas"
        f" x {args.steps} steps = {traj * args.steps:.3g} trajectory-steps, float32.",
        "",
        "| implementation | time (s) | trajectory-steps / s | ratio |",
        "|---|---:|---:|---:|",
        f"| dynsim (`saddle_phases(method='simulation')`, second call) | {t_ds:.1f} | {rate_ds:.3g} "
        f"| {rate_ds / rate_np:.2f} |",
        f"| NumPy, vectorized over trajectories (scaled from {args.numpy_steps} steps) | {t_np:.1f} "
        f"| {rate_np:.3g} | 1.00 |",
        "",
        f"First call including compilation: {first:.1f} s. Theory for the same grid (quadrature): {t_theory:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_results("RESULTS_phase_diagram.md", text)


if __name__ == "__main__":
    main()
