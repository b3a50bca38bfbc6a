"""Local smoothness against gradient norm along training (seed 002, thesis Figs. 3-1 to 3-3, on digits).

The thesis plots, along the training of an LSTM and a ResNet, the smoothness met along each
update, ``Lhat_k = |grad F(x_k + d_k/2) - grad F(x_k)| / (|d_k| / 2)`` with ``d_k = x_{k+1} - x_k``
(:func:`dynsim.curvature.local_smoothness`), against ``|grad F(x_k)|``, and finds them strongly
correlated, ``Lhat ~ L0 + L1 |grad F|``, when training uses clipping with a large learning rate,
and weakly otherwise. Substitute: an MLP 64-32-32-10 (tanh) on scikit-learn's digits (1297
training images), cross-entropy, batch 32, three runs in one grid: clipped SGD with a large rate
(``lr = 1``, threshold 0.25), plain SGD with the same large rate, plain SGD with a small one
(``lr = 0.05``). ``F`` and its gradient are full-batch.

    python experiments/smoothness_vs_gradient.py [--steps 1500]
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

RUNS = [("clipped SGD, lr = 1, threshold 0.25", 1.0, 0.25), ("SGD, lr = 1", 1.0, 1e30), ("SGD, lr = 0.05", 0.05, 1e30)]


def train(args):
    data = ds.problems.load_digits()
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (32, 32), activation="tanh", n_classes=10)
    full = {"x": jnp.asarray(data["x"]), "y": jnp.asarray(data["y"])}

    def loss(params):
        return ds.problems.batch_loss(problem, params, full, {"weight_decay": 0.0})

    dyn = ds.dynamics.from_optax(problem, ds.optim.clipped_sgd, batch_size=32, threshold=1.0)
    out = []
    for _, lr, threshold in RUNS:
        res = ds.simulate(
            dyn,
            grid={"lr": [lr], "threshold": [threshold]},
            n_steps=args.steps,
            record_every=1,
            seed=args.seed,
            observables={"theta": ds.observables.trajectory(), "diverged": ds.observables.diverged()},
            checkpoint=_cli.checkpoint(args, f"smoothness_vs_gradient_lr{lr:g}_threshold{threshold:g}"),
        )
        names = [k for k in res.data_vars if k.startswith("theta_")]
        traj = {k.removeprefix("theta_"): jnp.asarray(res[k].values[0, 0, 0]) for k in names}  # (time, ...)

        @jax.jit
        def measure(traj):
            def one(k):
                x = jax.tree_util.tree_map(lambda a: a[k], traj)
                d = jax.tree_util.tree_map(lambda a: a[k + 1] - a[k], traj)
                g = jnp.linalg.norm(jax.flatten_util.ravel_pytree(jax.grad(loss)(x))[0])
                return loss(x), g, ds.curvature.local_smoothness(loss, x, d)

            return jax.lax.map(one, jnp.arange(args.steps))

        f, g, lhat = measure(traj)
        out.append((np.asarray(f), np.asarray(g), np.asarray(lhat), int(res.diverged_step.values.ravel()[0])))
    labels = [r[0] for r in RUNS]
    return xr.Dataset(
        {
            "loss": (("run", "step"), np.array([o[0] for o in out])),
            "grad_norm": (("run", "step"), np.array([o[1] for o in out])),
            "local_smoothness": (("run", "step"), np.array([o[2] for o in out])),
            "diverged_step": ("run", np.array([o[3] for o in out])),
        },
        coords={"run": labels, "step": np.arange(args.steps)},
    )


def log_correlation(g, lhat):
    ok = np.isfinite(g) & np.isfinite(lhat) & (g > 0) & (lhat > 0)
    return float(np.corrcoef(np.log(g[ok]), np.log(lhat[ok]))[0, 1]), int(ok.sum())


def figure(res):
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.2))
    axes = axes.ravel()
    for ax, run in zip(axes, res.run.values):
        r = res.sel(run=run)
        g, lhat = r.grad_norm.values, r.local_smoothness.values
        sc = ax.scatter(g, lhat, c=r.step.values, s=3, cmap="viridis", rasterized=True)
        corr, n = log_correlation(g, lhat)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$|\nabla F(x_k)|$ (full batch)")
        ax.set_ylabel(r"$\hat L_k = |\nabla F(x_k + d_k/2) - \nabla F(x_k)| \,/\, (|d_k|/2)$")
        ax.set_title(f"{run}\ncorrelation of the logs {corr:+.2f} ({n} steps)", fontsize=10)
        fig.colorbar(sc, ax=ax, label="step k")
        axes[3].semilogy(r.step, r.loss, lw=0.8, label=run)
    axes[3].set_xlabel("step k")
    axes[3].set_ylabel("full-batch training loss $F(x_k)$")
    axes[3].set_title("training loss of the three runs", fontsize=10)
    axes[3].legend(fontsize=9)
    fig.suptitle(
        "Seed 002, Figs. 3-1 to 3-3 on digits: local smoothness against gradient norm along training,\n"
        "MLP 64-32-32-10 (tanh), batch 32, $d_k = x_{k+1} - x_k$",
        fontsize=11,
    )
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    args = _cli.parse(parser, argv)
    started = time.perf_counter()
    res = train(args)
    path = _cli.save_figure(figure(res), args, "smoothness_vs_gradient.png")
    res.to_netcdf(os.path.join(args.results, "smoothness_vs_gradient.nc"))
    for run in res.run.values:
        r = res.sel(run=run)
        corr, n = log_correlation(r.grad_norm.values, r.local_smoothness.values)
        step = int(r.diverged_step)  # -1: the run never diverged
        print(
            f"{run}: correlation of log |grad F| and log Lhat {corr:+.3f} over {n} steps; |grad F| "
            f"{np.nanmin(r.grad_norm.values):.3g}-{np.nanmax(r.grad_norm.values):.3g}, Lhat "
            f"{np.nanmin(r.local_smoothness.values):.3g}-{np.nanmax(r.local_smoothness.values):.3g}; "
            f"loss {float(r.loss[0]):.3f} -> {float(r.loss[-1]):.4f}; "
            + ("never diverged" if step < 0 else f"diverged at step {step}")
        )
    print(f"wrote {path} and {args.results}/smoothness_vs_gradient.nc in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
