"""One grid over the hosts of a cluster: each process runs its shard, the last to finish assembles.

The workload is the lambda-mu map of seed 004 at the rank-1 saddle (Gaussian data, S = 1,
N = infinity): SGD in the mode coordinates (``dynsim.dynamics.saddle_modes``) in every cell,
and per cell the share of replicas whose mode ``w - u`` shrank, drawn with the theory's
``Lambda_- = 0`` line (quadrature). Every process calls ``dynsim.simulate`` with
``shard=(jax.process_index(), jax.process_count())``, its own devices
(``devices=jax.local_devices()``: the chunk is split over them) and a checkpoint folder that all
of them can read; a process whose call finds every chunk in the folder gets the result, saves it
and draws the figure. A process that is killed is restarted with the same command and resumes.
The result is bitwise that of one process on one device (``tests/test_scale.py``).

    # SLURM: one task per node; each sees its node's GPUs as local devices
    srun --nodes=4 --ntasks-per-node=1 python experiments/cluster_sweep.py --distributed --results /shared/run1

    # TPU pod slice: the same command on every worker
    gcloud compute tpus tpu-vm ssh NAME --worker=all \\
        --command="cd dynsim && python experiments/cluster_sweep.py --distributed --results /shared/run1"

    # two processes on one machine (what the test runs)
    python experiments/cluster_sweep.py --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 0 &
    python experiments/cluster_sweep.py --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 1

    # one process (the default): the same grid on this machine
    python experiments/cluster_sweep.py

``--distributed`` calls ``jax.distributed.initialize()``, which reads the process count and
index from SLURM's or the TPU runtime's environment. The processes never communicate: the
shared folder is the only channel, so a slow or restarted host delays the result, not the others.
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import dynsim as ds  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr-points", type=int, default=48)
    parser.add_argument("--mu-points", type=int, default=24)
    parser.add_argument("--replicas", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=None, help="trajectories per chunk (default: from memory)")
    parser.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() from the environment")
    parser.add_argument(
        "--coordinator", default=None, help="host:port of process 0 (with --num-processes, --process-id)"
    )
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    args = _cli.parse(parser, argv, resume=False)  # always checkpoints: the shards meet in the checkpoint

    if args.coordinator is not None:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()
    me, count = jax.process_index(), jax.process_count()

    lrs = np.linspace(0.02, 3.0, args.lr_points)
    mus = np.linspace(0.0, 1.0, args.mu_points)
    dynamics = ds.dynamics.saddle_modes(ds.problems.rank1_saddle())
    result = ds.simulate(
        dynamics,
        grid={"lr": lrs, "mu": mus},
        n_replicas=args.replicas,
        n_steps=args.steps,
        seed=args.seed,
        chunk_size=args.chunk_size,
        observables={"modes": ds.observables.final_state()},
        checkpoint=os.path.join(args.results, "checkpoints", "cluster_sweep"),
        shard=(me, count),
        devices=jax.local_devices(),
        progress=me == 0,
    )
    if result is None:
        print(f"process {me}/{count}: shard done; another process assembles the result")
        return

    path = os.path.join(args.results, "cluster_sweep.nc")
    ds.io.save(result, path)
    shrink = (result.modes_log_minus < 0).mean("replica")
    theory = ds.stability.saddle_exponents(lrs, mus)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    mesh = ax.pcolormesh(lrs, mus, shrink.values.T, cmap="RdBu_r", vmin=0, vmax=1, shading="nearest")
    ax.contour(lrs, mus, theory.Lambda_minus.values.T, levels=[0.0], colors="k", linewidths=1.0)
    fig.colorbar(mesh, ax=ax, label="share of replicas with |w - u| shrunk")
    ax.set(xlabel="learning rate", ylabel="mu", title=f"{count} process(es); black: Lambda_- = 0 (quadrature)")
    figure = _cli.save_figure(fig, args, "cluster_sweep.png", dpi=130)
    print(f"process {me}/{count} assembled {path} and {figure}")


if __name__ == "__main__":
    main()
