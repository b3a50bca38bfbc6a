"""Trajectory-steps per second: dynsim.simulate vs NumPy vectorized over trajectories, same run.

Workload: minibatch SGD (S = 1, with replacement) on 1-D linear regression with a finite
dataset of N = 100 points, ``w <- w - lr x_i (x_i w - y_i)``, float32, M independent
trajectories. The NumPy baseline is what a user would write: one vectorized update per step
over all trajectories, indices from ``Generator.integers``.

    python benchmarks/engine_vs_numpy.py [--steps 1000] [--sizes 16384 262144 1048576]

Prints a Markdown table (time excludes compilation; the first call's compile time is shown
separately).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _common import best_of, device_name

import dynsim as ds

N_DATA = 100
LR = 0.1


def numpy_sgd(x: np.ndarray, y: np.ndarray, n_traj: int, n_steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.ones(n_traj, np.float32)
    lr = np.float32(LR)
    for _ in range(n_steps):
        i = rng.integers(0, len(x), size=n_traj)
        xi = x[i]
        w -= lr * xi * (xi * w - y[i])
    return w


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2**14, 2**18, 2**20])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    problem = ds.problems.linear_regression_1d(n_data=N_DATA, noise_std=0.5)
    dyn = ds.dynamics.sgd(problem, batch_size=1)
    observables = {"w": ds.observables.final_state()}
    data = ds.dynamics.bind(dyn, {"lr": LR}).hp["data"]
    x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"], np.float32)

    print(f"# dynsim {ds.__version__}, jax {jax.__version__}, numpy {np.__version__}, {device_name()}")
    print(f"# SGD on 1-D regression (N = {N_DATA}, S = 1), {args.steps} steps, float32, best of {args.repeats}\n")
    print(
        "| trajectories | dynsim (traj-steps/s) | NumPy (traj-steps/s) | dynsim / NumPy "
        "| dynsim compile + first run (s) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for m in args.sizes:

        def run_dynsim(m=m):
            return ds.simulate(
                dyn, grid={"lr": [LR]}, n_replicas=m, n_steps=args.steps, observables=observables, progress=False
            )

        start = time.perf_counter()
        run_dynsim()
        first = time.perf_counter() - start
        t_ds = best_of(run_dynsim, args.repeats, warm_up=False)
        t_np = best_of(lambda m=m: numpy_sgd(x, y, m, args.steps), args.repeats, warm_up=False)
        rate_ds, rate_np = m * args.steps / t_ds, m * args.steps / t_np
        print(f"| {m:,} | {rate_ds:.3g} | {rate_np:.3g} | {rate_ds / rate_np:.2f} | {first:.2f} |")


if __name__ == "__main__":
    main()
