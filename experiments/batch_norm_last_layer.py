"""Batch norm in the last layer bounds the loss, not the weights (seed 000, Thm. 4.4).

Thm. 4.4: with batch normalization ``x_L = a_L * xhat + b_L`` in the last layer (statistics of the
minibatch of size ``m``), SGD with weight decay ``gamma`` and ``lr <= 1/gamma`` started with
``|a_L| <= 2 sqrt(m) / gamma`` keeps it there, so the minibatch loss ``L_B`` stays bounded and the
one-step change of its time average vanishes like ``1/sqrt(n)`` (Thm. B.1), however large the
earlier layers grow. The setting is the "cannot fit" substitute of ``invariant_nn.py``: MNIST-1D with
10% of its labels redrawn, a ReLU MLP 40-64-64-10 with batch norm after its last linear layer, weight
decay 1e-2, batch 32, lr in {0.4, 0.1, 0.025}, 8 seeds, started at the default init (``a = 1``,
``b = 0``) and on the corners of the invariant box (``a_k, b_k = +-1/gamma``).

Measured against the bounds (per coordinate ``k``; ``d = 10`` classes):

* ``|dL_B/da_k| <= 1`` (Cauchy-Schwarz with ``sum_i xhat_ik^2 <= m``; the proof's ``2 sqrt(m)`` is
  ``2 sqrt(m)`` times looser), so ``|a_k| <= 1/gamma`` is already invariant; likewise ``|b_k| <= 1/gamma``
  (which the proof leaves out) and ``L_B <= log d + 2 (sqrt(m - 1) + 1) / gamma`` (the proof: ``4m/gamma +
  log d``, with ``b`` ignored);
* the largest ``|dL_B/da_k|`` over 1000 fresh minibatches at the end of training;
* the vanishing change ``E_{mu_n}[L_B - L_B o F]`` (``L_B`` averaged over 8 fixed minibatches, read
  as ``phi``) from the start of training, with its Azuma bound ``2M/n + 2M sqrt(2 log(40)/n)``.

    python experiments/batch_norm_last_layer.py [--seeds 8] [--epochs 100]
"""

from __future__ import annotations

import argparse
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

LRS = np.array([0.4, 0.1, 0.025])
BATCH = 32
GAMMA = 1e-2
N_CLASSES = 10
LAST = 2  # index of the normalized (last) layer: parameters a2, b2


def bounds(m: int = BATCH, gamma: float = GAMMA, d: int = N_CLASSES) -> dict[str, float]:
    """The invariant box and loss bounds of Thm. 4.4: the proof's and the tight ones derived here."""
    return {
        "box_tight": 1 / gamma,
        "box_paper": 2 * np.sqrt(m) / gamma,
        "loss_tight": np.log(d) + 2 * (np.sqrt(m - 1) + 1) / gamma,
        "loss_paper": np.log(d) + 4 * m / gamma,
    }


def make_problem(data: dict) -> ds.problems.Problem:
    y = ds.problems.corrupt_labels(data["y"], 0.1, N_CLASSES, seed=0)
    return ds.problems.mlp_classifier(
        data["x"], y, (64, 64), n_classes=N_CLASSES, batch_norm="last", weight_decay=GAMMA
    )


def fixed_batches(problem, n: int = 8, seed: int = 1) -> dict:
    """``n`` minibatches of ``BATCH`` distinct training examples, stacked on a leading axis."""
    order = np.random.default_rng(seed).permutation(problem.n_data)[: n * BATCH].reshape(n, BATCH)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a[order]), problem.dataset)


def minibatch_losses(problem, params, batches) -> jax.Array:
    """``L_B`` (no weight decay) on each of the stacked minibatches."""
    return jax.vmap(lambda b: ds.problems.batch_loss(problem, params, b, {"weight_decay": 0.0}))(batches)


def boundary_init(problem):
    """The default init with ``a_k, b_k = +-1/gamma`` (independent random signs): the invariant box's corners."""

    def init(key, hp):
        params = problem.init(key, hp)
        ka, kb = jax.random.split(jax.random.fold_in(key, 1))
        dtype = params[f"a{LAST}"].dtype
        params[f"a{LAST}"] = jax.random.rademacher(ka, (N_CLASSES,), dtype) / GAMMA
        params[f"b{LAST}"] = jax.random.rademacher(kb, (N_CLASSES,), dtype) / GAMMA
        return params

    return problem._replace(init=init)


def train(problem, batches, args, start: str) -> xr.Dataset:
    if start == "boundary":
        problem = boundary_init(problem)
    steps_per_epoch = problem.n_data // BATCH
    observables = {
        "a_max": ds.observables.trajectory(lambda p: GAMMA * jnp.abs(p[f"a{LAST}"]).max()),
        "b_max": ds.observables.trajectory(lambda p: GAMMA * jnp.abs(p[f"b{LAST}"]).max()),
        "batch_loss_max": ds.observables.trajectory(lambda p: minibatch_losses(problem, p, batches).max()),
        "loss": ds.observables.loss(weight_decay=0.0),
        **{f"W{i}": ds.observables.trajectory(lambda p, i=i: jnp.linalg.norm(p[f"W{i}"])) for i in range(LAST + 1)},
        "final": ds.observables.final_state(),
    }
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=BATCH),
        grid={"lr": LRS},
        n_replicas=args.seeds,
        n_steps=args.epochs * steps_per_epoch,
        record_every=steps_per_epoch,
        seed=args.seed,
        observables=observables,
        checkpoint=_cli.checkpoint(args, f"batch_norm_last_layer_{start}"),
    )
    return res.assign_coords(epoch=("time", res.time.values / steps_per_epoch))


def largest_scale_gradient(problem, res, key, n_batches: int = 1000) -> np.ndarray:
    """``max_k |dL_B/da_k|`` over ``n_batches`` fresh minibatches at each run's last iterate, per lr and seed."""
    data = jax.tree_util.tree_map(jnp.asarray, problem.dataset)
    names = [v for v in res.data_vars if v.startswith("final_")]

    def largest(params, k):
        idx = jax.random.randint(k, (BATCH,), 0, problem.n_data)
        batch = jax.tree_util.tree_map(lambda a: a[idx], data)
        g = jax.grad(lambda p: ds.problems.batch_loss(problem, p, batch, {"weight_decay": 0.0}))(params)
        return jnp.abs(g[f"a{LAST}"]).max()

    over_batches = jax.jit(lambda p, k: jax.vmap(lambda kk: largest(p, kk))(jax.random.split(k, n_batches)).max())
    out = np.zeros((res.sizes["lr"], res.sizes["replica"]))
    for i in range(res.sizes["lr"]):
        for r in range(res.sizes["replica"]):
            params = {n[len("final_") :]: jnp.asarray(res[n].values[i, r]) for n in names}
            out[i, r] = float(over_batches(params, jax.random.fold_in(key, i * 1000 + r)))
    return out


def vanishing(problem, batches, args) -> xr.Dataset:
    """Thm. B.1 with ``phi = L_B`` (mean over the fixed minibatches) from the default init, for each lr."""
    times = np.unique(np.geomspace(10, args.vc_steps, 9).astype(int))
    rows = []
    for lr in LRS:
        bound = ds.dynamics.bind(ds.dynamics.sgd(problem, batch_size=BATCH), {"lr": float(lr)}, seed=args.seed)

        def phi(state):
            return jnp.mean(minibatch_losses(problem, state.params, batches))

        vc = ds.measure.vanishing_change(
            bound.step, phi, bound.init(jax.random.key(args.seed)), args.seed, times, n_replicas=args.vc_runs, n_fresh=4
        )
        rows.append(
            xr.Dataset(
                {
                    "mean": ("n", vc.mean),
                    "stderr": ("n", vc.stderr),
                    "boundary": ("n", vc.boundary),
                    "quantile95": ("n", vc.quantile),
                    "scaled_sd": ("n", vc.scaled_sd),
                },
                coords={"n": vc.times},
            )
        )
    out = xr.concat(rows, dim="lr").assign_coords(lr=LRS)
    M = bounds()["loss_tight"]
    out["azuma"] = ("n", 2 * M / out.n.values + 2 * M * np.sqrt(2 * np.log(40) / out.n.values))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--vc-steps", type=int, default=2000, help="longest time of the vanishing-change check")
    parser.add_argument("--vc-runs", type=int, default=32, help="runs of the vanishing-change check")
    args = _cli.parse(parser, argv)
    begin = time.perf_counter()
    problem = make_problem(ds.problems.load_mnist1d())
    batches = fixed_batches(problem)
    b = bounds()
    runs = {start: train(problem, batches, args, start) for start in ("default", "boundary")}
    grad_a = largest_scale_gradient(problem, runs["default"], jax.random.key(args.seed + 1))
    vc = vanishing(problem, batches, args)
    result = xr.concat(
        [r.drop_vars([v for v in r.data_vars if v.startswith("final_")]) for r in runs.values()], dim="start"
    ).assign_coords(start=list(runs))
    result["largest_scale_gradient"] = (("lr", "replica"), grad_a)
    ds.io.save(result, f"{args.results}/batch_norm_last_layer.nc")
    ds.io.save(vc, f"{args.results}/batch_norm_last_layer_vanishing_change.nc")
    elapsed = time.perf_counter() - begin

    print(
        f"Thm. 4.4 with m = {BATCH}, gamma = {GAMMA}: box |a_k| <= {b['box_tight']:.0f} (tight) or "
        f"{b['box_paper']:.0f} (the proof's); L_B <= {b['loss_tight']:.1f} (tight) or {b['loss_paper']:.1f}"
    )
    for start, res in runs.items():
        print(
            f"start: {start} ({args.seeds} seeds x {args.epochs} epochs); "
            "gamma max|a_k|, gamma max|b_k| are shares of the tight box"
        )
        for i, lr in enumerate(LRS):
            r = res.isel(lr=i)
            weights = ", ".join(
                f"|W{i}| {float(r[f'W{i}'].isel(time=0).mean()):.2f} -> {float(r[f'W{i}'].isel(time=-1).mean()):.2f}"
                for i in range(LAST + 1)
            )
            print(
                f"  lr {lr:<5}: gamma max|a_k| <= {float(r.a_max.max()):.4f} "
                f"(end {float(r.a_max.isel(time=-1).mean()):.4f}), "
                f"gamma max|b_k| <= {float(r.b_max.max()):.4f}; max L_B {float(r.batch_loss_max.max()):.3f}; "
                f"L (full batch) {float(r.loss.isel(time=-1).mean()):.3f}; {weights}"
            )
    print(
        "largest |dL_B/da_k| over 1000 minibatches at the last iterates, per lr (max over seeds): "
        + ", ".join(f"{lr}: {grad_a[i].max():.3f}" for i, lr in enumerate(LRS))
        + f" (bound 1; the proof's {2 * np.sqrt(BATCH):.1f})"
    )
    print(f"vanishing change E_mu_n[L_B - L_B o F] ({args.vc_runs} runs from the default init), mean ± s.e.:")
    for i, lr in enumerate(LRS):
        r = vc.isel(lr=i)
        print(
            f"  lr {lr:<5}: "
            + "; ".join(
                f"n={n}: {m:+.2e} ± {s:.1e} (q95 {q:.1e})"
                for n, m, s, q in zip(r.n.values, r["mean"].values, r.stderr.values, r.quantile95.values)
                if n in (r.n.values[0], r.n.values[len(r.n) // 2], r.n.values[-1])
            )
        )
    print(
        f"  Azuma bound with M = {b['loss_tight']:.0f}: {vc.azuma.values[0]:.0f} at n = {int(vc.n[0])}, "
        f"{vc.azuma.values[-1]:.1f} at n = {int(vc.n[-1])}"
    )

    fig = plt.figure(figsize=(12, 9.6))
    grid = fig.add_gridspec(3, 2, height_ratios=(1, 1, 0.1))
    axes = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
    legend_ax = fig.add_subplot(grid[2, :])
    legend_ax.axis("off")
    for i in range(len(LRS)):
        color = f"C{i}"
        for start, style in (("default", "-"), ("boundary", "--")):
            r = runs[start].isel(lr=i)
            epoch = r.epoch.values
            axes[0].semilogy(epoch, r.a_max.max("replica"), style, color=color, lw=1.2)
            axes[2].semilogy(epoch, r.batch_loss_max.max("replica"), style, color=color, lw=1.2)
        r = runs["default"].isel(lr=i)
        for i_w, ls in zip(range(LAST + 1), (":", "-.", "-")):
            axes[1].semilogy(r.epoch, r[f"W{i_w}"].mean("replica"), ls, color=color, lw=1.2)
        v = vc.isel(lr=i)
        mean = v["mean"].values
        axes[3].errorbar(
            v.n + i * 0.04 * v.n,  # a small offset per lr so that the error bars do not overlap
            np.abs(mean),
            yerr=v.stderr.values,
            fmt="o",
            ms=4,
            color=color,
            capsize=2,
            label="|mean| ± s.e." if i == 0 else None,
        )
        axes[3].loglog(
            v.n,
            v.quantile95,
            "x-",
            color=color,
            lw=0.6,
            ms=4,
            alpha=0.5,
            label="95% quantile of $|\\Delta_n|$" if i == 0 else None,
        )
        axes[3].loglog(
            v.n, np.abs(v.boundary), ":", color=color, lw=1.2, label="boundary term (dotted)" if i == 0 else None
        )
    for y, text in ((1.0, r"tight box $1/\gamma$"), (2 * np.sqrt(BATCH), r"proof's box $2\sqrt{m}/\gamma$")):
        axes[0].axhline(y, color="k", lw=0.8, ls="--" if y > 1 else "-")
        axes[0].text(0, y * 1.15, text, fontsize=9)
    for y, text in ((b["loss_tight"], "tight bound"), (b["loss_paper"], r"proof's bound $4m/\gamma + \log d$")):
        axes[2].axhline(y, color="k", lw=0.8, ls="-" if y == b["loss_tight"] else "--")
        axes[2].text(0, y * 1.15, text, fontsize=9)
    axes[3].loglog(vc.n, vc.azuma, "k--", lw=1, label="Azuma bound (M = tight loss bound)")
    n = vc.n.values
    axes[3].loglog(n, np.abs(vc["mean"].isel(lr=1).values[0]) * n[0] / n, "k:", lw=1, label="slope $n^{-1}$")
    axes[3].loglog(
        n, np.abs(vc["mean"].isel(lr=1).values[0]) * np.sqrt(n[0] / n), "k-.", lw=1, label="slope $n^{-1/2}$"
    )
    axes[0].set(
        xlabel="epoch",
        ylabel=r"$\gamma \max_k |a_k|$ (max over seeds)",
        title="batch-norm scale, against its invariant box",
    )
    axes[1].set(
        xlabel="epoch",
        ylabel=r"$\|W_l\|_F$ (mean over seeds)",
        title="earlier layers (default start): not bounded by the theorem",
    )
    axes[2].set(
        xlabel="epoch",
        ylabel=r"$\max L_B$ over 8 fixed minibatches and the seeds",
        title="minibatch loss, against its bound",
    )
    axes[3].set(
        xlabel="n (SGD steps)",
        ylabel=r"$|E_{\mu_n}[L_B - L_B \circ F]|$",
        title=f"vanishing change from the default start, {args.vc_runs} runs",
    )
    for ax in axes:
        ax.title.set_fontsize(10)
    axes[0].legend(
        [plt.Line2D([], [], color="k", ls=ls) for ls in ("-", "--")],
        ["default start (a = 1, b = 0)", r"start on the box's corners ($\pm 1/\gamma$)"],
        fontsize=8,
        loc="upper right",
        bbox_to_anchor=(1, 0.93),
    )
    axes[1].legend(
        [plt.Line2D([], [], color="k", ls=ls) for ls in (":", "-.", "-")],
        [f"$\\|W_{i_w}\\|_F$" for i_w in range(LAST + 1)],
        fontsize=9,
        loc="best",
    )
    axes[3].legend(fontsize=8, loc="upper right", bbox_to_anchor=(1, 0.72))
    legend_ax.legend(
        [plt.Line2D([], [], color=f"C{i}", lw=2) for i in range(len(LRS))],
        [f"lr = {lr}" for lr in LRS],
        loc="center",
        ncol=len(LRS),
        fontsize=10,
        frameon=False,
        title="colour: learning rate (all panels)",
        title_fontsize=9,
    )
    fig.suptitle(
        f"Seed 000, Thm. 4.4: batch norm in the last layer, MNIST-1D (10% labels redrawn), "
        rf"$\gamma$ = {GAMMA}, m = {BATCH}, {args.seeds} seeds x {args.epochs} epochs",
        fontsize=11,
    )
    print("figure:", _cli.save_figure(fig, args, "batch_norm_last_layer.png"), f"({elapsed:.0f} s)")
    return result, vc


if __name__ == "__main__":
    main()
