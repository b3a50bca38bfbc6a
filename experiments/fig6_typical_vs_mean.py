"""Seed 004, Fig. 6: the typical trajectory e^{2 rho(t)} against the mean square E|w_t - w*|^2.

1-D Gaussian regression (x ~ N(0, 1), S = 1, half-squared loss, w* = 0, w_0 = 1). For
w_{t+1} = (1 - lr x_t^2) w_t, rho(t) = E log|w_t| = Lambda t with Lambda = E log|1 - lr x^2|,
while E w_t^2 = (E(1 - lr x^2)^2)^t = (1 - 2 lr + 3 lr^2)^t. At lr = 0.1 both decay; at lr = 1 the
typical run converges (Lambda = -0.417) while the mean square grows like 2^t; at lr = 3 both grow.
One simulate call, 10^4 replicas per learning rate, float64; 200 trajectories drawn.

    python experiments/fig6_typical_vs_mean.py [--replicas 10000] [--steps 60]
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import _cli  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import dynsim as ds  # noqa: E402

LRS = (0.1, 1.0, 3.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=60)
    args = _cli.parse(parser, argv)

    problem = ds.problems.linear_regression_1d()
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": np.array(LRS)},
        n_replicas=args.replicas,
        n_steps=args.steps,
        record_every=1,
        seed=args.seed,
        observables={"logdist": ds.observables.log_distance(problem.fixed_point)},
        path=os.path.join(args.results, "fig6_typical_vs_mean.nc"),
        checkpoint=_cli.checkpoint(args, "fig6_typical_vs_mean"),
    )
    est = ds.lyapunov.from_log_distance(res, transient=5)
    x = np.random.default_rng(args.seed).standard_normal(4_000_000)
    t = res.time.values
    fig = plt.figure(figsize=(12, 5.4))
    grid = fig.add_gridspec(2, len(LRS), height_ratios=(1, 0.2))
    axes = [fig.add_subplot(grid[0, i]) for i in range(len(LRS))]
    legend_ax = fig.add_subplot(grid[1, :])
    legend_ax.axis("off")
    print(f"{'lr':>5} {'Lambda (MC 4e6)':>16} {'slope/2 (sim)':>20} {'z':>6} {'sample MSE / true MSE at T':>28}")
    for ax, lr in zip(axes, LRS):
        logs = res.logdist.sel(lr=lr).values  # log w_t^2, (replica, time)
        lam, lam_se = ds.lyapunov.scalar_exponent(1 - lr * x**2, with_stderr=True)
        ms_rate = np.log(1 - 2 * lr + 3 * lr**2)
        for r in range(200):
            ax.plot(t, logs[r], color="tab:green", lw=0.3, alpha=0.4)
        # simulation: thick translucent lines; theory: thin lines drawn on top of them
        ax.plot(t, logs.mean(axis=0), color="k", lw=4, alpha=0.45)
        ax.plot(t, 2 * lam * t, color="k", ls=(0, (2, 1.5)), lw=1.3, zorder=5)
        sample_ms = np.log(np.mean(np.exp(logs), axis=0))
        ax.plot(t, sample_ms, color="tab:red", lw=4, alpha=0.45)
        ax.plot(t, ms_rate * t, color="darkred", ls=(0, (5, 2)), lw=1.3, zorder=5)
        e, se = est.exponent.sel(lr=lr).item(), est.stderr.sel(lr=lr).item()
        ax.set_title(f"lr = {lr}: Λ = {lam:.4f}, fitted {e:.4f} ± {se:.4f} (s.e.)", fontsize=9.5)
        ax.set_xlabel("step $t$")
        ax.set_ylabel(r"$\log |w_t - w^*|^2$")
        ax.tick_params(labelsize=9)
        print(
            f"{lr:5.2f} {lam:10.4f}±{lam_se:.4f} {e:13.4f}±{se:.4f} {(e - lam) / np.hypot(se, lam_se):6.2f} "
            f"{np.exp(sample_ms[-1] - ms_rate * t[-1]):28.3g}"
        )
    handles = [
        plt.Line2D([], [], color="tab:green", lw=0.8, alpha=0.6),
        plt.Line2D([], [], color="k", lw=4, alpha=0.45),
        plt.Line2D([], [], color="k", ls=(0, (2, 1.5)), lw=1.3),
        plt.Line2D([], [], color="tab:red", lw=4, alpha=0.45),
        plt.Line2D([], [], color="darkred", ls=(0, (5, 2)), lw=1.3),
    ]
    labels = [
        r"200 single runs, $\log w_t^2$",
        rf"$\log e^{{2\rho(t)}} = E \log w_t^2$, ensemble mean of {args.replicas} runs (simulated)",
        r"theory: $2\Lambda t$, $\Lambda = E\log|1 - \mathrm{lr}\, x^2|$ (Monte Carlo, $4\cdot 10^6$ draws)",
        rf"$\log$ of the sample mean of $w_t^2$ over {args.replicas} runs (simulated)",
        r"theory: $\log E w_t^2 = t \log(1 - 2\,\mathrm{lr} + 3\,\mathrm{lr}^2)$",
    ]
    legend_ax.legend(handles, labels, loc="center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(
        "Seed 004, Fig. 6: typical trajectories converge (black) long after the mean square diverges (red)",
        fontsize=11,
    )
    path = _cli.save_figure(fig, args, "fig6_typical_vs_mean.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
