"""Unstable convergence of GD and SGD on an MLP (seed 001, Exps. 2-5 and 7-8, on scikit-learn's digits).

CIFAR-10 cannot be had here; the substitutes are the seed digest's calibrated ones (Sec. 7):

* **GD** (Exps. 2-5) - all 1797 digits, pixels standardized, MLP 64-200-200-10 (tanh, biases,
  PyTorch's uniform init), square loss ``0.5 |f(x) - onehot(y)|^2``, full-batch GD at a stable
  ``lr = 2/30`` and an unstable ``lr = 2/12``, both in one program. Every step: the loss, the
  relative progress ``RP`` (Def. 1) and the directional smoothness ``L(theta; lr grad f)`` (Def. 2);
  every ``--every`` steps, from the same trajectories: the sharpness (Lanczos) and the profile
  ``L(theta; lr tau grad f)`` over ``tau`` (Exp. 5). Relation (5), ``RP ~ -1 + (lr/2) L``, is
  checked on every step.
* **SGD** (Exps. 7-8) - the first 1000 digits with uniformly random labels, MLP 64-200-200-10
  (ReLU), cross-entropy, batch 32 (distinct examples) at ``lr = 2/16`` and ``2/50``. Every
  ``--probe-every`` epochs: the expected relative progress ``E[RP]`` (Def. 3) over ``--probe-m``
  random minibatches against the right side of eq. (6), each with its standard error, and the
  share of minibatch steps that lower the full-batch loss (Remark 6).

    python experiments/unstable_convergence_nets.py [--steps 1500] [--epochs 120] [--probe-m 200]
    python experiments/unstable_convergence_nets.py --replot   # the figure and tables again from results/, no training
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

import dynsim as ds  # noqa: E402

GD_LRS = np.array([2 / 30, 2 / 12])
SGD_LRS = np.array([2 / 16, 2 / 50])
TAUS = np.linspace(0.05, 1.0, 20)
WIDTHS = (200, 200)


def window_mean(x, w: int):
    """Means of ``x`` over consecutive windows of ``w`` steps (NaN-aware)."""
    n = len(x) // w * w
    return np.nanmean(np.asarray(x)[:n].reshape(-1, w), axis=1)


def gd(args) -> tuple[xr.Dataset, xr.Dataset]:
    data = ds.problems.load_digits(test_size=0, standardize=True)
    problem = ds.problems.mlp_classifier(
        data["x"], data["y"], WIDTHS, activation="tanh", loss="mse", init="uniform", n_classes=10
    )
    dyn = ds.dynamics.gd(problem)
    common = dict(grid={"lr": GD_LRS}, n_replicas=1, n_steps=args.steps, seed=args.seed)
    every_step = ds.simulate(
        dyn,
        record_every=1,
        observables={"loss": ds.observables.loss(), "gd": ds.observables.progress()},
        checkpoint=_cli.checkpoint(args, "unstable_convergence_gd_steps"),
        **common,
    )
    probes = ds.simulate(
        dyn,
        record_every=args.every,
        observables={
            "sharpness": ds.observables.sharpness(n_iter=args.lanczos),
            "gd": ds.observables.progress(taus=TAUS),
        },
        checkpoint=_cli.checkpoint(args, "unstable_convergence_gd_probes"),
        **common,
    )
    probes = probes.rename({"gd_profile_dim0": "tau"}).assign_coords(tau=TAUS).assign_attrs(lanczos=args.lanczos)
    return every_step, probes


def sgd(args) -> tuple[xr.Dataset, xr.Dataset]:
    data = ds.problems.load_digits(test_size=0, standardize=True)
    x = data["x"][: args.n_sgd]
    y = ds.problems.corrupt_labels(data["y"][: args.n_sgd], 1.0, 10, seed=args.seed)
    problem = ds.problems.mlp_classifier(x, y, WIDTHS, activation="relu", loss="cross_entropy", init="uniform")
    steps_per_epoch = args.n_sgd // 32
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=32, replace=False),
        grid={"lr": SGD_LRS},
        n_replicas=1,
        n_steps=args.epochs * steps_per_epoch,
        record_every=args.probe_every * steps_per_epoch,
        seed=args.seed,
        observables={"theta": ds.observables.trajectory(), "loss": ds.observables.loss()},
        checkpoint=_cli.checkpoint(args, "unstable_convergence_sgd"),
    )
    hp = {"weight_decay": 0.0}

    def batch_loss(params, batch):
        return ds.problems.batch_loss(problem, params, batch, hp)

    full = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    rng = np.random.default_rng(args.seed)
    probe = jax.jit(
        lambda params, lr, idx: ds.curvature.sgd_progress(
            batch_loss, params, lr, full, {"x": full["x"][idx], "y": full["y"][idx]}
        )
    )
    fields = (
        "expected",
        "expected_stderr",
        "predicted",
        "predicted_stderr",
        "fraction_descending",
        "fraction_descending_stderr",
    )
    out = {f: np.full((len(SGD_LRS), res.sizes["time"]), np.nan) for f in fields}
    names = [k for k in res.data_vars if k.startswith("theta_")]
    for i, lr in enumerate(SGD_LRS):
        for j in range(res.sizes["time"]):
            params = {k.removeprefix("theta_"): jnp.asarray(res[k].values[i, 0, j]) for k in names}
            idx = np.stack([rng.choice(args.n_sgd, 32, replace=False) for _ in range(args.probe_m)])
            p = probe(params, lr, jnp.asarray(idx))
            for f in fields:
                out[f][i, j] = float(getattr(p, f))
    probes = xr.Dataset(
        {f: (("lr", "time"), v) for f, v in out.items()},
        coords={"lr": SGD_LRS, "time": res.time.values, "epoch": ("time", res.time.values / steps_per_epoch)},
        attrs={"probe_minibatches": args.probe_m, "batch_size": 32, "n_data": args.n_sgd},
    )
    probes["loss"] = res.loss.isel(replica=0)
    return res.drop_vars(names), probes


def figure(steps: xr.Dataset, probes: xr.Dataset, sgd_probes: xr.Dataset):
    fig, grid = plt.subplots(4, 2, figsize=(12, 15.5))
    axes = grid.ravel().reshape(2, 4)  # panels in reading order: axes[0, :] first, then axes[1, :]
    t = steps.time.values
    for i, lr in enumerate(GD_LRS):
        label = f"lr = 2/{2 / lr:.0f}"
        s = steps.isel(lr=i, replica=0)
        p = probes.isel(lr=i, replica=0)
        axes[0, 0].semilogy(t, s.loss, color=f"C{i}", lw=0.8, label=label)
        axes[0, 1].plot(p.time, lr / 2 * p.sharpness, "o-", ms=2, color=f"C{i}", label=label)
        rp, sm = s.gd_relative_progress.values, lr / 2 * s.gd_directional_smoothness.values
        axes[0, 2].plot(t, rp, color=f"C{i}", lw=0.5, alpha=0.6)
        axes[0, 2].plot(t[: len(t) // 50 * 50 : 50] + 25, window_mean(rp, 50), "o-", ms=2, color=f"C{i}", label=label)
        axes[0, 3].plot(t, sm, color=f"C{i}", lw=0.5, alpha=0.6)
        prof = lr / 2 * p.gd_profile.values
        mean, sd = prof.mean(axis=1), prof.std(axis=1)
        axes[0, 3].errorbar(
            p.time, mean, yerr=sd, fmt="o", ms=2, color=f"C{i}", label=f"{label}: mean ± sd over $\\tau$"
        )
        axes[1, 0].plot(-1 + sm, rp, ".", ms=1.5, color=f"C{i}", label=label)
    axes[0, 0].set_title("GD: full-batch loss (non-monotone at the edge of stability)")
    axes[0, 0].set_ylabel(r"$f(\theta_t)$")
    axes[0, 1].axhline(1, color="k", ls="--", lw=1)
    axes[0, 1].set_title(f"sharpness (Lanczos, {int(probes.attrs['lanczos'])} steps) x lr/2")
    axes[0, 1].set_ylabel(r"(lr/2) $\lambda_{max}(\nabla^2 f(\theta_t))$")
    axes[0, 2].set_ylim(-1.2, 0.6)
    axes[0, 2].set_title("RP (Def. 1): every step, and means over 50 steps")
    axes[0, 2].set_ylabel("RP")
    axes[0, 3].set_ylim(-0.2, 1.4)
    axes[0, 3].axhline(1, color="k", ls="--", lw=1)
    axes[0, 3].set_title(r"(lr/2) $L(\theta_t; \mathrm{lr}\,\nabla f)$ every step; $\tau$-profile (Exp. 5)")
    axes[0, 3].set_ylabel(r"(lr/2) $L(\theta_t; \tau\,\mathrm{lr}\,\nabla f)$")
    for ax in axes[0]:
        ax.set_xlabel("step t")
        ax.legend(fontsize=9)
    ax = axes[1, 0]
    ax.plot([-1.1, 0.4], [-1.1, 0.4], "k--", lw=1, label="eq. (5): RP = -1 + (lr/2) L")
    ax.set_xlim(-1.1, 0.4)
    ax.set_ylim(-1.1, 0.6)
    ax.set_xlabel(r"$-1 + $(lr/2) $L(\theta_t; \mathrm{lr}\,\nabla f)$")
    ax.set_ylabel("RP at step t")
    ax.set_title("GD: relation (5), every step")
    ax.legend(fontsize=9, markerscale=6)

    ep = sgd_probes.epoch.values
    for i, lr in enumerate(SGD_LRS):
        p = sgd_probes.isel(lr=i)
        label = f"lr = 2/{2 / lr:.0f}"
        axes[1, 1].semilogy(ep, p.loss, "o-", ms=3, color=f"C{i + 2}", label=label)
        axes[1, 2].errorbar(
            ep, p.expected, yerr=p.expected_stderr, fmt="o-", ms=3, color=f"C{i + 2}", label=f"{label}: E[RP]"
        )
        axes[1, 2].errorbar(
            ep + 0.2,
            p.predicted,
            yerr=p.predicted_stderr,
            fmt="s--",
            ms=3,
            mfc="none",
            color=f"C{i + 2}",
            label=f"{label}: eq. (6)",
        )
        axes[1, 3].errorbar(
            ep, p.fraction_descending, yerr=p.fraction_descending_stderr, fmt="o-", ms=3, color=f"C{i + 2}", label=label
        )
    m = sgd_probes.attrs["probe_minibatches"]
    axes[1, 1].set_title("SGD (batch 32, random labels): full-batch loss")
    axes[1, 1].set_ylabel("full-batch training loss")
    axes[1, 2].set_ylabel("E[RP] and the right side of eq. (6)")
    axes[1, 3].set_ylabel("share of minibatch steps")
    axes[1, 2].axhline(0, color="k", lw=0.5)
    axes[1, 2].set_title(f"E[RP] (Def. 3) and eq. (6), ± s.e. over {m} minibatches")
    axes[1, 3].axhline(0.5, color="k", lw=0.5)
    axes[1, 3].set_ylim(0, 1)
    axes[1, 3].set_title("share of minibatch steps that lower f (Remark 6)")
    for ax in axes[1, 1:]:
        ax.set_xlabel("epoch")
    axes[1, 1].legend(fontsize=8)
    axes[1, 2].legend(fontsize=8, loc="upper left")
    axes[1, 3].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        "Seed 001 on digits: GD on a tanh MLP with the square loss (first five panels);\n"
        "SGD on a ReLU MLP with random labels (last three)\n",
        fontsize=12,
    )
    return fig


def summary(steps: xr.Dataset, probes: xr.Dataset, sgd_probes: xr.Dataset) -> None:
    print("GD (digits, tanh MLP, square loss):")
    for i, lr in enumerate(GD_LRS):
        s, p = steps.isel(lr=i, replica=0), probes.isel(lr=i, replica=0)
        rp, sm = s.gd_relative_progress.values, lr / 2 * s.gd_directional_smoothness.values
        loss = s.loss.values
        sharp = lr / 2 * p.sharpness.values
        crossed = p.time.values[np.argmax(sharp >= 1)] if np.any(sharp >= 1) else None
        late = slice(len(rp) // 2, None)
        ups = np.mean(loss[1:][late] > loss[:-1][late])
        err = np.abs(rp - (-1 + sm))[late]
        prof = lr / 2 * p.gd_profile.values
        rel_spread = np.nanmax(prof.std(axis=1)[len(prof) // 2 :] / np.abs(prof.mean(axis=1)[len(prof) // 2 :]))
        print(
            f"  lr = 2/{2 / lr:.0f}: (lr/2) S first >= 1 at step {crossed}; last half of the run: "
            f"window-mean RP {np.nanmean(rp[late]):+.4f}, (lr/2) L {np.nanmean(sm[late]):.4f}, "
            f"(lr/2) S {np.min(sharp[len(sharp) // 2 :]):.3f}-{np.max(sharp[len(sharp) // 2 :]):.3f}, "
            f"loss up on {ups:.1%} of steps, |RP - (-1 + (lr/2) L)| <= 0.05 on {np.mean(err <= 0.05):.1%} of steps "
            f"(max {np.nanmax(err):.3f}), tau-profile sd/mean <= {rel_spread:.1e}; loss {loss[0]:.4f} -> {loss[-1]:.4f}"
        )
    print("SGD (digits, ReLU MLP, random labels, batch 32):")
    for i, lr in enumerate(SGD_LRS):
        p = sgd_probes.isel(lr=i)
        epoch, rp, se = p.epoch.values, p.expected.values, p.expected_stderr.values
        diff = np.abs(p.expected - p.predicted).values
        print(
            f"  lr = 2/{2 / lr:.0f}: E[RP] in [{rp.min():+.3f}, {rp.max():+.3f}]; "
            f"|E[RP] - eq. (6)| max {diff.max():.3f} (median {np.median(diff):.3f}); "
            f"loss {float(p.loss[0]):.3f} -> {float(p.loss[-1]):.3f}"
        )
        half = epoch[-1] / 2
        for start, what in ((4, "from epoch 4"), (half, f"second half (epochs >= {half:g})")):
            m = epoch >= start
            z = rp[m] / se[m]
            print(
                f"    {what}: E[RP] > 0 at {np.sum(rp[m] > 0)} of {m.sum()} probes ({np.sum(z > 2)} with z > 2, "
                f"{np.sum(z < -2)} with z < -2), > -0.05 at {np.sum(rp[m] > -0.05)}"
            )
        up = rp > 0
        if up.any():
            share = p.fraction_descending.values[up]
            print(f"    share of descending minibatches where E[RP] > 0: {share.min():.2f}-{share.max():.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="GD steps")
    parser.add_argument("--every", type=int, default=50, help="GD steps between sharpness and tau-profile probes")
    parser.add_argument("--lanczos", type=int, default=20, help="Lanczos steps for the sharpness")
    parser.add_argument("--n-sgd", type=int, default=1000, help="examples for the SGD runs")
    parser.add_argument("--epochs", type=int, default=120, help="SGD epochs")
    parser.add_argument("--probe-every", type=int, default=4, help="epochs between SGD probes")
    parser.add_argument("--probe-m", type=int, default=200, help="minibatches per SGD probe")
    args = _cli.parse(parser, argv, replot=True)
    started = time.perf_counter()
    files = [
        os.path.join(args.results, f"unstable_convergence_{name}.nc")
        for name in ("gd_steps", "gd_probes", "sgd_probes")
    ]
    _cli.check_replot(parser, args, *files)
    if not args.replot:
        steps, probes = gd(args)
        gd_time = time.perf_counter() - started
        _, sgd_probes = sgd(args)
        for result, file in zip((steps, probes, sgd_probes), files):
            ds.io.save(result, file)
    steps, probes, sgd_probes = (ds.io.load(file) for file in files)
    path = _cli.save_figure(figure(steps, probes, sgd_probes), args, "unstable_convergence_nets.png")
    summary(steps, probes, sgd_probes)
    elapsed = time.perf_counter() - started
    if args.replot:
        print(f"wrote {path} in {elapsed:.1f} s")
    else:
        print(f"wrote {path} and {args.results}/unstable_convergence_*.nc in {elapsed:.1f} s (GD {gd_time:.1f} s)")


if __name__ == "__main__":
    main()
