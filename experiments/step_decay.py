"""The loss settles after every learning-rate decay, the gradient and the noise do not (seed 000, Figs. 1 and 5).

Seed 000's Fig. 1 trains ImageNet models with the learning rate divided by 10 twice: the loss drops at
each decay and levels off, while the gradient norm does not shrink and the gradient noise grows.
The substitute is the "cannot fit" task of ``invariant_nn.py`` (MNIST-1D with 10% of the labels
redrawn, a scale-invariant MLP 40-64-64-10, weight decay 1e-2, batch 32, 8 seeds) trained at lr 0.4,
0.04 and 0.004 for 50 epochs each (the seed digest's S1-step). Every 2 epochs: the loss ``L^gamma`` with
its weight-decay term (eq. 3, last iterate, and eq. 2, the epoch mean of the minibatch losses) and ``L_S``
without it, ``|grad L^gamma|``, the per-example noise
``sigma`` and the sharpness (1000 examples), ``|theta|`` and test accuracy.

    python experiments/step_decay.py [--seeds 8] [--phase-epochs 50]
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from invariant_nn import BATCH, task_observables, task_problem  # noqa: E402

import dynsim as ds  # noqa: E402

RATES = (0.4, 0.04, 0.004)
EVERY = 2  # epochs between measurements


def step_decay_sgd(boundaries):
    """``optax.sgd`` whose rate is divided by 10 at each step count in ``boundaries``."""

    def sgd(learning_rate):
        def schedule(count):
            decays = sum(jnp.where(count >= b, 1.0, 0.0) for b in boundaries)
            return learning_rate * 0.1**decays

        return optax.sgd(schedule)

    return sgd


def phase_means(res, phase_epochs: int, var: str, last: int = 20):
    """Mean and sd over seeds of ``var`` over the last ``last`` epochs of each phase."""
    epoch = res.epoch.values
    rows = []
    for k in range(len(RATES)):
        end = (k + 1) * phase_epochs
        window = (epoch > end - last) & (epoch <= end)
        per_seed = res[var].isel(time=np.flatnonzero(window)).mean("time").values.ravel()
        rows.append((per_seed.mean(), per_seed.std(ddof=1)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--phase-epochs", type=int, default=50)
    parser.add_argument("--label-noise", type=float, default=0.1)
    args = _cli.parse(parser, argv)
    started = time.perf_counter()
    data = ds.problems.load_mnist1d()
    data["y"] = ds.problems.corrupt_labels(data["y"], args.label_noise, 10, seed=args.seed)
    problem = task_problem("cannot_fit", data)
    spe = problem.n_data // BATCH
    epochs = len(RATES) * args.phase_epochs
    observables = task_observables(problem, data, epochs, scale_invariant=True)
    del observables["theta"]
    boundaries = [k * args.phase_epochs * spe for k in range(1, len(RATES))]
    res = ds.simulate(
        ds.dynamics.from_optax(problem, step_decay_sgd(boundaries), batch_size=BATCH, track_batch_loss=True),
        grid={"lr": [RATES[0]]},
        n_replicas=args.seeds,
        n_steps=epochs * spe,
        record_every=EVERY * spe,
        seed=args.seed,
        observables=observables,
        checkpoint=_cli.checkpoint(args, "step_decay"),
    ).squeeze("lr", drop=True)
    res = res.assign_coords(epoch=("time", res.time.values / spe))
    ds.io.save(res, f"{args.results}/step_decay.nc")
    elapsed = time.perf_counter() - started

    print(
        f"lr {' -> '.join(map(str, RATES))}, {args.phase_epochs} epochs each, {args.seeds} seeds; "
        "means (sd over seeds) over the last 20 epochs of each phase:"
    )
    eq2 = res.eq2_batches  # (replica, epoch): eq. (2)
    names = [
        ("loss_gamma", "L^g (eq. 3)"),
        ("loss_S", "L_S"),
        ("grad_gamma", "|grad L^g|"),
        ("sigma", "sigma"),
        ("sharpness", "sharpness"),
        ("norm", "|theta|"),
        ("test_acc", "test acc"),
    ]
    for k, lr in enumerate(RATES):
        end = (k + 1) * args.phase_epochs
        eq2_phase = eq2.isel(eq2_batches_batch=slice(end - 20, end)).mean("eq2_batches_batch").values.ravel()
        cols = [f"eq. 2 {eq2_phase.mean():.4f} ({eq2_phase.std(ddof=1):.4f})"]
        for var, label in names:
            mean, sd = phase_means(res, args.phase_epochs, var)[k]
            cols.append(f"{label} {mean:.4g} ({sd:.2g})")
        print(f"  lr {lr:<6} (2/lr = {2 / lr:g}): " + "; ".join(cols))

    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    epoch = res.epoch.values
    panels = [
        ("loss_gamma", "L^γ: eq. (3) last iterate (solid), eq. (2) epoch mean of minibatch losses (dashed)"),
        ("grad_gamma", "|∇L^γ| (full batch)"),
        ("sigma", "per-example noise σ (1000 examples)"),
        ("sharpness", "sharpness λ_max (1000 examples; dotted: 2/lr)"),
        ("norm", "|θ|"),
        ("test_acc", "test accuracy"),
    ]
    for ax, (var, title) in zip(axes.ravel(), panels):
        v = res[var].values
        ax.fill_between(epoch, v.min(axis=0), v.max(axis=0), color="C0", alpha=0.25, lw=0)
        ax.plot(epoch, v.mean(axis=0), color="C0")
        for k in range(1, len(RATES)):
            ax.axvline(k * args.phase_epochs, color="k", lw=0.6, ls="--")
        ax.set(title=title, xlabel="epoch")
        ax.title.set_fontsize(9)
    axes[0, 0].plot(np.arange(1, epochs + 1), eq2.mean("replica").values, color="C1", ls="--", lw=0.8)
    sharpness = axes[1, 0]
    for k, lr in enumerate(RATES[:2]):  # 2/lr = 500 in the last phase would only flatten the panel
        sharpness.plot([k * args.phase_epochs, (k + 1) * args.phase_epochs], [2 / lr, 2 / lr], "k:", lw=1)
    sharpness.set_yscale("log")
    fig.suptitle(
        f"seed 000, Fig. 1 analogue: lr {' -> '.join(map(str, RATES))} (dashed lines), {args.seeds} seeds "
        "(band: min-max)",
        fontsize=11,
    )
    print("figure:", _cli.save_figure(fig, args, "step_decay.png"), f"({elapsed:.0f} s)")
    return res


if __name__ == "__main__":
    main()
