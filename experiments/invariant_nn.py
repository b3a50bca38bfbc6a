"""Weights that do not converge, losses that do: SGD with weight decay on small MLPs (seed 000, Figs. 1-3, 5).

ImageNet and WT103 are out of reach; the substitutes are the seed digest's calibrated ones
(Sec. 2.3), with 8 seeds per learning rate trained in one program:

* **cannot fit** - MNIST-1D (4000 x 40, 10 classes) with 10% of the labels redrawn once,
  a scale-invariant MLP 40-64-64-10 without biases (each W used as W s / |W|_F, as batch norm
  makes a ResNet), weight decay 1e-2, constant lr in {0.4, 0.1, 0.025}, batch 32, 200 epochs;
* **can fit** - scikit-learn digits (1297 train images), MLP 64-128-128-10 with biases, weight
  decay 1e-4, the same learning rates, 150 epochs.

Every 5 epochs: training loss L_S (without weight decay) and L^gamma (with), full-gradient norms
|grad L_S| and |grad L^gamma| (they differ at a stationary point of L^gamma by gamma |theta|),
per-example noise sigma on 1000 examples, sharpness on 1000 examples (Lanczos), |theta|, train
and test accuracy; and eq. (2), the epoch mean of the minibatch losses, next to eq. (3), the
full-batch loss of the last iterate. Then Thm. 5.2: from the late iterates (an empirical
invariant measure), one SGD step of size c lr changes L^gamma by Delta(c) < 0 for small c.

    python experiments/invariant_nn.py [--seeds 8] [--epochs-a 200] [--epochs-b 150]
    python experiments/invariant_nn.py --replot   # the figures and tables again from results/, no training
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

import dynsim as ds  # noqa: E402

LRS = np.array([0.4, 0.1, 0.025])
BATCH = 32
EVERY = 5  # epochs between measurements
WEIGHT_DECAY = {"cannot_fit": 1e-2, "can_fit": 1e-4}
TASKS = ("cannot_fit", "can_fit")
SCALES = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]  # the step multiples c of Thm 5.2


def accuracy(x, y, scale_invariant):
    def record(view):
        logits = ds.problems.mlp_forward(view.params, x, scale_invariant=scale_invariant)
        return jnp.mean(jnp.argmax(logits, axis=-1) == y)

    return ds.observables.Observable("accuracy", record=record)


def task_problem(task: str, data: dict) -> ds.problems.Problem:
    """The MLP of a task: scale-invariant 40-64-64-10, weight decay 1e-2 (cannot fit), or 64-128-128-10 with
    biases, weight decay 1e-4 (can fit)."""
    cannot_fit = task == "cannot_fit"
    return ds.problems.mlp_classifier(
        data["x"],
        data["y"],
        (64, 64) if cannot_fit else (128, 128),
        n_classes=10,
        bias=not cannot_fit,
        scale_invariant=cannot_fit,
        weight_decay=WEIGHT_DECAY[task],
    )


def task_observables(problem, data: dict, epochs: int, scale_invariant: bool) -> dict:
    """Losses (eq. 3 and, per epoch, eq. 2), gradient norms, noise and sharpness on 1000 examples, |theta|,
    accuracies and the parameters, at each record."""
    m = min(1000, problem.n_data)
    return {
        "loss_S": ds.observables.loss(weight_decay=0.0),
        "loss_gamma": ds.observables.loss(),
        "grad_S": ds.observables.grad_norm(weight_decay=0.0),
        "grad_gamma": ds.observables.grad_norm(),
        "sigma": ds.observables.gradient_noise(m=m, weight_decay=0.0),
        "sharpness": ds.observables.sharpness(m=m, n_iter=20, weight_decay=0.0),
        "norm": ds.observables.trajectory(lambda p: jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p)))),
        "train_acc": accuracy(jnp.asarray(data["x"]), jnp.asarray(data["y"]), scale_invariant),
        "test_acc": accuracy(jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"]), scale_invariant),
        "eq2": ds.observables.time_average(
            lambda v: v.state.batch_loss, on="view", n_batches=epochs, keep_batches=True
        ),
        "theta": ds.observables.trajectory(),
    }


def train(task: str, data: dict, args) -> tuple:
    cannot_fit = task == "cannot_fit"
    problem = task_problem(task, data)
    steps_per_epoch = problem.n_data // BATCH
    epochs = args.epochs_a if cannot_fit else args.epochs_b
    n_steps = epochs * steps_per_epoch
    observables = task_observables(problem, data, epochs, cannot_fit)
    dynamics = ds.dynamics.sgd(problem, batch_size=BATCH, track_batch_loss=True)
    res = ds.simulate(
        dynamics,
        grid={"lr": LRS},
        n_replicas=args.seeds,
        n_steps=n_steps,
        record_every=EVERY * steps_per_epoch,
        seed=args.seed,
        observables=observables,
        checkpoint=_cli.checkpoint(args, f"invariant_nn_{task}"),
    )
    res = res.assign_coords(epoch=("time", res.time.values / steps_per_epoch))
    return problem, dynamics, res, steps_per_epoch


class LateIterates(NamedTuple):
    """The late records of a run (epochs >= 60%), read as samples of the empirical invariant measure."""

    objective: Callable  # L^gamma on the whole training set
    minibatch_gradient: Callable  # (theta, key) -> g_B + gamma theta
    samples: Callable  # (cell, replica) -> the late parameters of that run, a pytree with a leading axis
    count: int


def late_iterates(problem, res) -> LateIterates:
    late = np.flatnonzero(res.time.values >= 0.6 * res.time.values[-1])
    hp = {"weight_decay": problem.hyperparams["weight_decay"]}
    data = jax.tree_util.tree_map(jnp.asarray, problem.dataset)
    names = [v for v in res.data_vars if v.startswith("theta_")]

    def objective(p):
        return ds.problems.objective(problem, p, data, hp)

    def minibatch_gradient(p, key):
        idx = jax.random.randint(key, (BATCH,), 0, problem.n_data)
        batch = jax.tree_util.tree_map(lambda a: a[idx], data)
        return jax.grad(lambda q: ds.problems.batch_loss(problem, q, batch, hp))(p)

    def samples(cell, r):
        return {name[len("theta_") :]: jnp.asarray(cell[name].values[r, late]) for name in names}

    return LateIterates(objective, minibatch_gradient, samples, len(late))


def weight_norm_balance(problem, res):
    """The equilibrium of ``|theta|`` under weight decay for a scale-invariant net (seed 000 digest, Sec. 2.3).

    ``g_B`` is orthogonal to ``theta``, so one step gives ``|theta'|^2 = (1 - lr gamma)^2 |theta|^2 + lr^2 |g_B|^2``
    exactly; at equilibrium ``gamma (2 - lr gamma) E|theta|^2 / lr = E|g_B|^2 = E|grad L_S|^2 + E sigma^2 / B``
    (batches drawn with replacement). Means over the late records and the seeds, with ``sigma`` over all
    the training examples (the recorded one uses the first 1000, which is 3-7% low here).
    """
    gamma = problem.hyperparams["weight_decay"]
    it = late_iterates(problem, res)
    data = jax.tree_util.tree_map(jnp.asarray, problem.dataset)

    def sigma2(params):
        return (
            ds.curvature.gradient_noise(lambda q, s: problem.loss(q, s, {"weight_decay": 0.0}), params, data).sigma ** 2
        )

    sigma2_all = jax.jit(jax.vmap(sigma2))
    late = np.flatnonzero(res.time.values >= 0.6 * res.time.values[-1])
    lhs, rhs = [], []
    for lr in LRS:
        cell = res.sel(lr=lr)
        noise = np.stack([np.asarray(sigma2_all(it.samples(cell, r))) for r in range(res.sizes["replica"])])
        lhs.append(float((gamma * (2 - lr * gamma) * cell.norm.isel(time=late) ** 2 / lr).mean()))
        rhs.append(float((cell.grad_S.isel(time=late) ** 2).mean() + noise.mean() / BATCH))
    return xr.Dataset({"norm_balance_lhs": ("lr", lhs), "norm_balance_rhs": ("lr", rhs)}, coords={"lr": LRS})


def mean_over_seeds(per_seed):
    per_seed = np.array(per_seed)
    return per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1) / np.sqrt(len(per_seed))


def invariant_step_scan(problem, res, scales, args) -> xr.Dataset:
    """Thm. 5.2: Delta(c) = E[L^gamma(theta - c lr (g_B + gamma theta))] - E[L^gamma(theta)] over late iterates.

    For each seed, the late records are the samples of the empirical invariant measure
    (``args.draws`` minibatches each); the standard error is over seeds, since the records of
    one seed are correlated.
    """
    it = late_iterates(problem, res)
    means, stderrs = [], []
    for lr in LRS:

        def update(p, key, lr=lr):
            return jax.tree_util.tree_map(lambda gw: -lr * gw, it.minibatch_gradient(p, key))

        cell = res.sel(lr=lr)
        per_seed = [
            ds.measure.scaled_step_change(
                it.objective, update, it.samples(cell, r), scales, key=r, n_draws=args.draws
            ).mean
            for r in range(cell.sizes["replica"])
        ]
        mean, se = mean_over_seeds(per_seed)
        means.append(mean)
        stderrs.append(se)
    return xr.Dataset(
        {"delta": (("lr", "scale"), np.array(means)), "delta_stderr": (("lr", "scale"), np.array(stderrs))},
        coords={"lr": LRS, "scale": scales},
    )


def balance_scan(problem, res, args) -> xr.Dataset:
    """Eq. (10), corrected: ``E<grad L^g, g_B> = lr E[int (1-s) g_B^T H(theta - s lr g_B) g_B ds]`` over late iterates.

    One minibatch gradient ``g_B + gamma theta`` per late record; means over the records of each seed,
    then mean and standard error over seeds; the ratios' standard errors pair the two sides seed by seed.
    The right side is the step's Taylor remainder from loss values, which counts the ReLU kinks a step
    crosses (the Hessian does not see them).
    """
    it = late_iterates(problem, res)
    means, stderrs, ratios = [], [], []
    for lr in LRS:
        cell = res.sel(lr=lr)
        per_seed = []
        for r in range(cell.sizes["replica"]):
            samples = it.samples(cell, r)
            grads = jax.vmap(it.minibatch_gradient)(samples, jax.random.split(jax.random.key(1000 + r), it.count))
            b = ds.measure.gradient_curvature_balance(it.objective, samples, lr, grads=grads)
            per_seed.append([b.grad_sq, b.curvature, b.local])
        per_seed = np.array(per_seed)
        mean, se = mean_over_seeds(per_seed)
        means.append(mean)
        stderrs.append(se)
        ratios.append([ds.measure.ratio_of_means(per_seed[:, 0], per_seed[:, j]) for j in (1, 2)])
    ratios = np.array(ratios)  # (lr, right side, (ratio, stderr))
    return xr.Dataset(
        {
            "balance": (("lr", "term"), np.array(means)),
            "balance_stderr": (("lr", "term"), np.array(stderrs)),
            "balance_ratio": (("lr", "right_side"), ratios[..., 0]),
            "balance_ratio_stderr": (("lr", "right_side"), ratios[..., 1]),
        },
        coords={"lr": LRS, "term": ["grad_sq", "curvature", "local"], "right_side": ["curvature", "local"]},
    )


def plot_task(task, res, checks):
    """Training curves (mean over seeds, band: min-max over seeds) and Thm. 5.2's Delta(c), on a 3 x 3 grid
    whose last cell holds the legend. On the can-fit task the loss, gradient and noise span decades: log y."""
    fig, axes = plt.subplots(3, 3, figsize=(12, 10.5))
    log_y = task == "can_fit"
    colors = ("C0", "C1", "C2")
    panels = [
        ("loss_gamma", "L^γ = L_S + γ|θ|²/2", "training loss with weight decay"),
        ("grad_S", "|∇L_S| (full batch)", "gradient norm, without weight decay"),
        ("grad_gamma", "|∇L^γ| (full batch)", "gradient norm, with weight decay"),
        ("sigma", "σ (per-example gradient sd)", "per-example noise σ, on 1000 examples"),
        ("sharpness", "λ_max of the Hessian of L_S", "sharpness on 1000 examples (dotted: 2/lr)"),
        ("norm", "|θ|", "weight norm |θ|"),
        ("test_acc", "test accuracy", "test accuracy"),
    ]
    epoch = res.epoch.values
    for ax, (var, ylabel, title) in zip(axes.ravel(), panels):
        for lr, color in zip(LRS, colors):
            v = res[var].sel(lr=lr).values
            ax.fill_between(epoch, v.min(axis=0), v.max(axis=0), color=color, alpha=0.25, lw=0)
            ax.plot(epoch, v.mean(axis=0), color=color)
            if var == "sharpness":
                ax.axhline(2 / lr, color=color, ls=":", lw=1)
        if log_y and var in ("loss_gamma", "grad_S", "grad_gamma", "sigma"):
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    for lr, color in zip(LRS, colors):  # eq. (2): epoch means of the minibatch losses, weight decay included
        eq2 = res.eq2_batches.sel(lr=lr).mean("replica")
        axes[0, 0].plot(np.arange(1, eq2.size + 1), eq2.values, color=color, ls="--", lw=1, zorder=3)
    ax = axes[2, 1]
    for lr, color in zip(LRS, colors):
        means, se = checks.delta.sel(lr=lr).values, checks.delta_stderr.sel(lr=lr).values
        ax.errorbar(checks.scale.values, means, yerr=2 * se, color=color, marker="o", ms=3, capsize=2)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(1, color="k", ls=":", lw=0.5)
    ax.set_xlabel("step multiple c")
    ax.set_ylabel("Δ(c) = E[L^γ(θ - c·lr·g)] - E[L^γ(θ)]")
    ax.set_title("Thm 5.2: g = g_B + γθ, θ from the late iterates", fontsize=9)
    if log_y:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax = axes[2, 2]
    ax.axis("off")
    handles = [plt.Line2D([], [], color=c, lw=2, label=f"lr = {lr}") for lr, c in zip(LRS, colors)]
    handles += [
        plt.Line2D([], [], color="k", label="mean over seeds (loss: eq. (3),\nL^γ of the iterate θ_t, full batch)"),
        Patch(color="k", alpha=0.25, lw=0, label="min-max over seeds"),
        plt.Line2D(
            [], [], color="k", ls="--", lw=0.8, label="loss: eq. (2), epoch mean of the\nminibatch losses L^γ_B"
        ),
        plt.Line2D([], [], color="k", ls=":", lw=1, label="sharpness: 2/lr"),
        plt.Line2D([], [], color="k", marker="o", ms=3, label="Δ(c): mean ± 2 s.e. over seeds"),
    ]
    ax.legend(handles=handles, loc="center", fontsize=9, frameon=False)
    fig.suptitle(
        f"{task.replace('_', ' ')}: {int(res.attrs['seeds'])} seeds per learning rate, SGD with weight decay γ = "
        f"{WEIGHT_DECAY[task]:g}, batch {BATCH}; "
        f"records every {EVERY} epochs",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def eq2_vs_eq3(res, steps_per_epoch):
    """Spread of eq. (3) (last-iterate loss) against eq. (2) (epoch mean of minibatch losses) at the records."""
    rows = []
    rec_epochs = res.epoch.values[1:].astype(int)
    for lr in LRS:
        cell = res.sel(lr=lr)
        eq3 = cell.loss_S.values[:, 1:]
        eq2 = cell.eq2_batches.values[:, rec_epochs - 1]  # mean over the epoch ending at that record
        late = rec_epochs >= 0.6 * rec_epochs[-1]
        rows.append((lr, np.std(np.diff(eq3[:, late], axis=1)), np.std(np.diff(eq2[:, late], axis=1))))
    return rows


def compute(task: str, data: dict, args) -> tuple[xr.Dataset, xr.Dataset]:
    """Train a task and examine its late iterates: the records without the parameters (with the run's sizes and
    training time in the attributes), and the checks of Thm 5.2, eq. (10) and, on the scale-invariant net, the
    equilibrium of |theta|."""
    started = time.perf_counter()
    problem, _, res, steps_per_epoch = train(task, data, args)
    trained = time.perf_counter() - started
    checks = invariant_step_scan(problem, res, SCALES, args)
    if task == "cannot_fit":
        checks = checks.merge(weight_norm_balance(problem, res))
    checks = checks.merge(balance_scan(problem, res, args))
    records = res.drop_vars([v for v in res.data_vars if v.startswith("theta_")]).assign_attrs(
        seeds=args.seeds, draws=args.draws, steps_per_epoch=steps_per_epoch, train_seconds=trained
    )
    return records, checks


def paths(folder: str, task: str) -> tuple[str, str]:
    """The results files of a task: its records, and the checks on its late iterates."""
    return os.path.join(folder, f"invariant_nn_{task}.nc"), os.path.join(folder, f"invariant_nn_{task}_checks.nc")


def report(task: str, res: xr.Dataset, checks: xr.Dataset) -> None:
    """The tables the docs quote: the late records per lr, then the checks on the late iterates."""
    late = res.time.values >= 0.6 * res.time.values[-1]
    print(
        f"\n{task}: {res.sizes['lr']} lrs x {int(res.attrs['seeds'])} seeds x {res.time.values[-1]} steps, trained in "
        f"{float(res.attrs['train_seconds']):.0f} s; means over seeds of the late records (epochs >= 60% of the run), "
        "+- sd over seeds"
    )
    print(
        f"{'lr':>6} {'L_S':>14} {'|grad L_S|':>14} {'|grad L^g|':>14} {'sigma':>14} {'sharpness':>14} "
        f"{'|theta|':>12} {'test acc':>10}"
    )
    for lr in LRS:
        cell = res.sel(lr=lr).isel(time=np.flatnonzero(late))
        cols = []
        for var in ("loss_S", "grad_S", "grad_gamma", "sigma", "sharpness", "norm", "test_acc"):
            per_seed = cell[var].mean("time").values
            cols.append(f"{per_seed.mean():7.3f}±{per_seed.std(ddof=1):5.3f}")
        print(f"{lr:6.3f} " + " ".join(cols))
    if "norm_balance_lhs" in checks:
        for lr in LRS:
            lhs, rhs = float(checks.norm_balance_lhs.sel(lr=lr)), float(checks.norm_balance_rhs.sel(lr=lr))
            print(
                f"  |theta| at equilibrium, lr {lr}: gamma (2 - lr gamma) E|theta|^2 / lr = {lhs:.3f} vs "
                f"E|g_B|^2 = E|grad L_S|^2 + E sigma^2 / B = {rhs:.3f} (ratio {lhs / rhs:.3f})"
            )
    for lr, s3, s2 in eq2_vs_eq3(res, int(res.attrs["steps_per_epoch"])):
        print(
            f"  lr {lr}: sd of changes between records, eq. (3) last iterate {s3:.4f} vs eq. (2) epoch mean "
            f"{s2:.4f} ({s3 / s2:.1f}x smoother)"
        )
    for lr in LRS:
        cell = checks.sel(lr=lr)
        print(
            f"  Thm 5.2, lr {lr}: Delta(c) = "
            + ", ".join(
                f"{c}: {mean:+.4f}±{se:.4f}"
                for c, mean, se in zip(checks.scale.values, cell.delta.values, cell.delta_stderr.values)
            )
        )
    for lr in LRS:
        cell = checks.sel(lr=lr)
        mean, se = cell.balance.values, cell.balance_stderr.values
        (r1, r2), (r1_se, r2_se) = cell.balance_ratio.values, cell.balance_ratio_stderr.values
        print(
            f"  eq. (10), lr {lr}: E<grad L^g, g_B> = {mean[0]:.4f}±{se[0]:.4f}; exact right side "
            f"{mean[1]:.4f}±{se[1]:.4f} (ratio {r1:.3f}±{r1_se:.3f}); (lr/2)E[g^T H g] "
            f"{mean[2]:.4f}±{se[2]:.4f} (ratio {r2:.3f}±{r2_se:.3f}); as printed, lr E[g^T H g] "
            f"(ratio {r2 / 2:.3f}±{r2_se / 2:.3f})"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs-a", type=int, default=200, help="epochs on MNIST-1D (cannot fit)")
    parser.add_argument("--epochs-b", type=int, default=150, help="epochs on digits (can fit)")
    parser.add_argument("--label-noise", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=8, help="minibatches per late iterate for Thm 5.2")
    args = _cli.parse(parser, argv, replot=True)
    files = {task: paths(args.results, task) for task in TASKS}
    _cli.check_replot(parser, args, *(path for pair in files.values() for path in pair))
    if not args.replot:
        mnist = ds.problems.load_mnist1d()
        mnist["y"] = ds.problems.corrupt_labels(mnist["y"], args.label_noise, 10, seed=args.seed)
        tasks = {"cannot_fit": mnist, "can_fit": ds.problems.load_digits()}
    for task in TASKS:  # task by task, so that the first task's tables come before the second task trains
        if not args.replot:
            for dataset, path in zip(compute(task, tasks[task], args), files[task]):
                ds.io.save(dataset, path)
        res, checks = (ds.io.load(path) for path in files[task])
        fig = plot_task(task, res, checks)
        fig.savefig(os.path.join(args.out, f"invariant_nn_{task}.png"), dpi=100)
        report(task, res, checks)


if __name__ == "__main__":
    main()
