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
import os
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from invariant_nn import BATCH, LRS  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

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

    # the scale-invariant net of invariant_nn.py (its default run's results, if there), same estimator
    # over its late records (epochs >= 60%, the window its table uses)
    invariant = None
    path = f"{args.results}/invariant_nn_cannot_fit.nc"
    if os.path.exists(path):
        inv = ds.io.load(path)
        inv_late = np.flatnonzero(inv.epoch.values >= 0.6 * inv.epoch.values[-1])
        inv_g2 = (inv.grad_gamma.isel(time=inv_late) ** 2).mean("time").values  # (lr, seed)
        inv_lrs = inv.lr.values
        inv_fits = np.array([np.polyfit(np.log(inv_lrs), np.log(inv_g2[:, r]), 1) for r in range(inv_g2.shape[1])])
        invariant = (inv_lrs, inv_g2, inv_fits, float(inv.epoch.values[inv_late[0]]), float(inv.epoch.values[-1]))
        print(
            f"scale-invariant net (invariant_nn.py's {path}, epochs >= {invariant[3]:.0f}): slope "
            f"{inv_fits[:, 0].mean():.3f} ± {inv_fits[:, 0].std(ddof=1) / np.sqrt(len(inv_fits)):.3f}"
        )
    else:
        print(f"no {path} (run invariant_nn.py first): the figure shows the control only")
    fits = np.array([np.polyfit(np.log(LRS), np.log(g2[:, r]), 1) for r in range(g2.shape[1])])
    plot(res, args, g2, fits, late, invariant)
    print("figure:", os.path.join(args.out, "scale_invariance_control.png"), f"({elapsed:.0f} s)")
    return res


def _mean_se(x):
    """Mean and standard error over the last axis (the seeds)."""
    return x.mean(axis=-1), x.std(axis=-1, ddof=1) / np.sqrt(x.shape[-1])


def plot(res, args, g2, fits, late, invariant) -> None:
    """Training curves, the sharpness against 2/lr, and the late-training E|grad L^g|^2 against lr for both nets."""
    colors = ("C0", "C1", "C2")
    n = res.sizes["replica"]
    e0, e1 = res.epoch.values[late[0]], res.epoch.values[-1]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2))
    panels = (
        (axes[0, 0], "loss", "training loss $L_S$ (full batch, no weight decay)", "$L_S$", False),
        (axes[0, 1], "grad_gamma", "gradient norm, falls with the rate", r"$|\nabla L^\gamma|$ (full batch)", True),
        (axes[1, 0], "sigma", "per-example gradient noise (1000 examples)", r"$\sigma$", False),
        (
            axes[1, 1],
            "sharpness",
            r"sharpness against $2/\mathrm{lr}$ (dashed)",
            r"$\lambda_{\max}$ (1000 examples)",
            True,
        ),
    )
    for lr, color in zip(LRS, colors):
        cell = res.sel(lr=lr)
        for ax, var, *_ in panels:
            v = cell[var].values
            ax.fill_between(res.epoch, v.min(axis=0), v.max(axis=0), color=color, alpha=0.25, lw=0)
            ax.plot(res.epoch, v.mean(axis=0), color=color)
        axes[1, 1].axhline(2 / lr, color=color, ls="--", lw=1.2)
    for ax, _, title, ylabel, log in panels:
        ax.axvspan(e0, res.epoch.values[-1], color="0.9", zorder=0)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title, yscale="log" if log else "linear")
        ax.title.set_fontsize(10)
    axes[1, 1].set_ylim(2, 120)

    ax = axes[0, 2]  # the headline: late-training E|grad L^g|^2 against lr, both nets
    grid = np.geomspace(LRS.min() / 1.3, LRS.max() * 1.3, 50)
    m, se = _mean_se(g2)
    slope, slope_se = _mean_se(fits[:, 0])
    ax.errorbar(LRS, m, yerr=se, fmt="o", color="k", capsize=3, ms=5)
    ax.plot(grid, np.exp(fits[:, 1].mean()) * grid ** fits[:, 0].mean(), color="k", lw=1.2)
    handles = [
        plt.Line2D([], [], color="k", marker="o", label=f"plain MLP (this control): slope {slope:.2f} ± {slope_se:.2f}")
    ]
    if invariant is not None:
        inv_lrs, inv_g2, inv_fits, inv_e0, inv_e1 = invariant
        im, ise = _mean_se(inv_g2)
        islope, islope_se = _mean_se(inv_fits[:, 0])
        ax.errorbar(inv_lrs, im, yerr=ise, fmt="s", color="C3", mfc="none", capsize=3, ms=5)
        ax.plot(grid, np.exp(inv_fits[:, 1].mean()) * grid ** inv_fits[:, 0].mean(), color="C3", lw=1.2)
        handles.append(
            plt.Line2D(
                [],
                [],
                color="C3",
                marker="s",
                mfc="none",
                label=f"scale-invariant MLP, MNIST-1D (invariant_nn.py,\nepochs {inv_e0:.0f}-{inv_e1:.0f}): slope "
                f"{islope:.2f} ± {islope_se:.2f}",
            )
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="learning rate lr",
        ylabel=r"late-training $\mathrm{E}|\nabla L^\gamma|^2$",
        title=rf"late $\mathrm{{E}}|\nabla L^\gamma|^2$ against lr (control: epochs {e0:.0f}-{e1:.0f})",
    )
    ax.title.set_fontsize(10)
    ax.set_xticks(LRS, [f"{v:g}" for v in LRS])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0.004, 8)
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.text(
        0.03,
        0.97,
        f"points: mean ± s.e. over {n} seeds\n"
        r"lines: fit of $\log \mathrm{E}|\nabla L^\gamma|^2$ on $\log$ lr"
        "\n(slope: mean ± s.e. of per-seed fits)",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )

    ax = axes[1, 2]
    ax.axis("off")
    key = [plt.Line2D([], [], color=c, lw=2, label=f"lr = {lr}") for lr, c in zip(LRS, colors)]
    key += [
        plt.Line2D([], [], color="k", lw=1.5, label=f"mean over {n} seeds"),
        Patch(color="k", alpha=0.25, lw=0, label="min-max over seeds"),
        plt.Line2D([], [], color="k", ls="--", lw=1.2, label="2/lr (sharpness panel)"),
        Patch(color="0.9", label=f"late window (epochs {e0:.0f}-{res.epoch.values[-1]:.0f})"),
    ]
    ax.legend(handles=key, loc="center", fontsize=9, frameon=False)
    fig.suptitle(
        f"Control without scale invariance: digits, {args.label_noise:.0%} labels replaced, plain MLP 64-32-32-10, "
        f"weight decay 1e-2, batch {BATCH}",
        fontsize=11,
    )
    _cli.save_figure(fig, args, "scale_invariance_control.png")


if __name__ == "__main__":
    main()
