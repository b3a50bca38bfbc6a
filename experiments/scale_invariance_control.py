"""Without scale invariance the gradient falls with the learning rate (seed 000's negative control, digest S1').

Seed 000 reports that a net which cannot fit its data keeps a gradient norm that does not shrink with
the learning rate. ``invariant_nn.py`` reproduces this with a scale-invariant MLP (each weight matrix
normalized, as batch norm makes a ResNet): ``|grad L^gamma|`` is 0.74-0.85 over a 16-fold range of
rates. Here is the control without that invariance: scikit-learn digits with 30% of the labels
replaced (seed 0), a plain MLP 64-32-32-10 with biases, weight decay 1e-2, batch 32, 300 epochs,
lr in {0.4, 0.1, 0.025}, 8 seeds. Means over epochs 200-300 of ``|grad L^gamma|``, the per-example
noise and the sharpness, and the slope of ``log E|grad L^gamma|^2`` against ``log lr``: textbook SGD at
a plateau gives 1 (the seed digest: 1.15).

    python experiments/scale_invariance_control.py [--seeds 8] [--epochs 300]
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from invariant_nn import BATCH, LRS  # noqa: E402

import dynsim as ds  # noqa: E402

EVERY = 10  # epochs between measurements


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--label-noise", type=float, default=0.3)
    args = _cli.parse(parser, argv)
    started = time.perf_counter()
    data = ds.problems.load_digits()
    y = ds.problems.corrupt_labels(data["y"], args.label_noise, 10, seed=0)
    problem = ds.problems.mlp_classifier(data["x"], y, (32, 32), n_classes=10, weight_decay=1e-2)
    spe = problem.n_data // BATCH
    m = min(1000, problem.n_data)
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=BATCH),
        grid={"lr": LRS},
        n_replicas=args.seeds,
        n_steps=args.epochs * spe,
        record_every=EVERY * spe,
        seed=args.seed,
        observables={
            "loss": ds.observables.loss(weight_decay=0.0),
            "grad_gamma": ds.observables.grad_norm(),
            "sigma": ds.observables.gradient_noise(m=m, weight_decay=0.0),
            "sharpness": ds.observables.sharpness(m=m, n_iter=20, weight_decay=0.0),
        },
        checkpoint=_cli.checkpoint(args, "scale_invariance_control"),
    )
    res = res.assign_coords(epoch=("time", res.time.values / spe))
    ds.io.save(res, f"{args.results}/scale_invariance_control.nc")
    elapsed = time.perf_counter() - started

    late = np.flatnonzero(res.epoch.values >= 2 / 3 * args.epochs)
    print(
        f"digits, {args.label_noise:.0%} labels replaced, plain MLP 64-32-32-10, weight decay 1e-2, {args.seeds} seeds;"
    )
    print(f"means over epochs >= {res.epoch.values[late[0]]:.0f} (sd over seeds):")
    g2 = []
    for lr in LRS:
        cell = res.sel(lr=lr).isel(time=late)
        per_seed = {v: cell[v].mean("time").values for v in ("loss", "grad_gamma", "sigma", "sharpness")}
        g2.append((cell.grad_gamma**2).mean("time").values)
        print(
            f"  lr {lr:<6}: L_S {per_seed['loss'].mean():.3f}; |grad L^g| {per_seed['grad_gamma'].mean():.4f} "
            f"({per_seed['grad_gamma'].std(ddof=1):.4f}); sigma {per_seed['sigma'].mean():.3f}; "
            f"sharpness {per_seed['sharpness'].mean():.3f} (2/lr = {2 / lr:g})"
        )
    g2 = np.array(g2)  # (lr, seed)
    slopes = np.array([np.polyfit(np.log(LRS), np.log(g2[:, r]), 1)[0] for r in range(g2.shape[1])])
    print(
        f"slope of log E|grad L^g|^2 against log lr: {slopes.mean():.3f} ± "
        f"{slopes.std(ddof=1) / np.sqrt(slopes.size):.3f} (per seed, mean ± s.e.)"
    )

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for lr, color in zip(LRS, ("C0", "C1", "C2")):
        cell = res.sel(lr=lr)
        for ax, var in zip(axes, ("grad_gamma", "sigma", "sharpness")):
            v = cell[var].values
            ax.fill_between(res.epoch, v.min(axis=0), v.max(axis=0), color=color, alpha=0.25, lw=0)
            ax.plot(res.epoch, v.mean(axis=0), color=color, label=f"lr = {lr}")
    axes[0].set(yscale="log", title="|∇L^γ|: falls with the rate (no scale invariance)", xlabel="epoch")
    axes[1].set(title="per-example noise σ (1000 examples)", xlabel="epoch")
    axes[2].set(title="sharpness λ_max (1000 examples)", xlabel="epoch")
    axes[0].legend(fontsize=8)
    print("figure:", _cli.save_figure(fig, args, "scale_invariance_control.png"), f"({elapsed:.0f} s)")
    return res


if __name__ == "__main__":
    main()
