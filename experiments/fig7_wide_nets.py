"""Seed 004, Figs. 7 and 8: does SGD drive a wide two-layer net to a low-rank solution where the 1-D theory says so?

f(x) = U sigma(W x) (flax, no biases), d -> width -> d, fresh samples every step: x ~ N(0, I_d),
y = mu x + (1 - mu) eps, eps ~ N(0, 4 I_d); loss (1/d)|f - y|^2 (PyTorch's MSE); S = 1. Every
(lr, mu) cell, activation and seed is trained in one vmapped program, by SGD (lr in (0, 0.25]) and
by Adam (optax; lr on a log grid, not given by the paper). After training: the numerical rank of
the last layer U, #{s_i > 1e-3 s_max} / min(width, d). Dashed: the 1-D theory's line
lr = 2 mu / (3 mu^2 + 4 (1 - mu)^2) (the paper's "red dashed line", the mean-square boundary of the
w - u mode, which tracks the I -> III boundary for lr < 0.2).

The 1-D theory is a heuristic for this net: its saddle W = U = 0 linearises to a d-dimensional random
product, whose top exponent this script measures (``dynsim.lyapunov.with_tangent`` from the exact
saddle, same grid) and reports next to the rank.

    python experiments/fig7_wide_nets.py                   # CPU: d = width = 64, 20 000 steps
    python experiments/fig7_wide_nets.py --preset paper    # GPU: d = width = 200, 100 000 steps
    python experiments/fig7_wide_nets.py --replot          # the figure and tables again from results/, no training
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
import optax  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import dynsim as ds  # noqa: E402

PRESETS = {
    "laptop": dict(width=64, lr_points=8, mu_points=7, seeds=2, steps=20_000, exponent_steps=4000),
    "paper": dict(width=200, lr_points=25, mu_points=21, seeds=4, steps=100_000, exponent_steps=20_000),
}
TOL = 1e-3
RUNS = [("SGD", a) for a in ("linear", "tanh", "relu", "swish")] + [("Adam", a) for a in ("linear", "tanh")]
SADDLE_ACTIVATIONS = ("linear", "tanh")  # the saddle's exponent is measured for these, under SGD


def boundary(mu):
    return 2 * mu / (3 * mu**2 + 4 * (1 - mu) ** 2)


def cell_edges(centres, log: bool = False) -> np.ndarray:
    """The cell edges ``pcolormesh(shading="nearest")`` draws around ``centres`` (geometric midpoints if ``log``)."""
    c = np.log(centres) if log else np.asarray(centres, dtype=float)
    edges = np.concatenate([[1.5 * c[0] - 0.5 * c[1]], (c[1:] + c[:-1]) / 2, [1.5 * c[-1] - 0.5 * c[-2]]])
    return np.exp(edges) if log else edges


def hatch_missing(ax, x, y, values, log_x: bool = False) -> int:
    """Grey, hatched cells where ``values`` (x by y) is NaN; returns their number."""
    xe, ye = cell_edges(x, log_x), cell_edges(y)
    for i, j in zip(*np.nonzero(np.isnan(values))):
        ax.add_patch(
            Rectangle(
                (xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], facecolor="0.75", edgecolor="k", hatch="xxx", lw=0
            )
        )
    return int(np.isnan(values).sum())


def rank_of_last_layer(res: xr.Dataset, width: int) -> np.ndarray:
    U = res["theta_U_kernel"].values  # (lr, mu, replica, width, d)
    return ds.measure.numerical_rank(U, TOL) / min(width, U.shape[-1])


def train(problem, dynamics, lrs, mus, args, name):
    return ds.simulate(
        dynamics,
        grid={"lr": lrs, "mu": mus},
        n_replicas=args.seeds,
        n_steps=args.steps,
        seed=args.seed,
        observables={"theta": ds.observables.final_state(), "diverged": ds.observables.diverged(bound=1e4)},
        checkpoint=_cli.checkpoint(args, f"fig7_{name}"),
    )


def saddle_exponent(problem, lrs, mus, args):
    at_saddle = problem._replace(init=lambda key, hp: jax.tree_util.tree_map(jnp.zeros_like, problem.init(key, hp)))
    res = ds.simulate(
        ds.lyapunov.with_tangent(ds.dynamics.sgd(at_saddle), transient=500),
        grid={"lr": lrs, "mu": mus},
        n_replicas=4,
        n_steps=args.exponent_steps,
        seed=args.seed,
        observables={"le": ds.lyapunov.running_exponent(every_record=False)},
    )
    le = res.le.transpose("lr", "mu", "replica").values
    return le.mean(axis=-1), le.std(axis=-1, ddof=1) / np.sqrt(le.shape[-1])


def compute(args) -> xr.Dataset:
    """Train every (optimizer, activation) run and measure the saddle's exponents. Per run: the mean rank of U
    over the seeds that did not diverge (NaN where all did), which seeds diverged, and the seconds since the
    first run started when it ended (attribute ``seconds_<opt>_<activation>``); per activation, the top exponent
    at the saddle and its standard error."""
    lrs = np.linspace(0.25 / args.lr_points, 0.25, args.lr_points)
    lr_axes = {"SGD": lrs, "Adam": np.logspace(-4, -1.5, args.lr_points)}
    mus = np.linspace(0.0, 0.9, args.mu_points)
    variables, seconds = {}, {}
    started = time.perf_counter()
    for opt, activation in RUNS:
        problem = ds.problems.two_layer_net(args.width, args.width, activation)
        dynamics = ds.dynamics.sgd(problem) if opt == "SGD" else ds.dynamics.from_optax(problem, optax.adam)
        res = train(problem, dynamics, lr_axes[opt], mus, args, f"{opt}_{activation}")
        rank = rank_of_last_layer(res, args.width)
        rank = np.where(res.diverged.values, np.nan, rank)
        kept = np.sum(~np.isnan(rank), axis=-1)
        mean_rank = np.where(kept > 0, np.nansum(rank, axis=-1) / np.maximum(kept, 1), np.nan)  # NaN: all diverged
        variables[f"rank_{opt}_{activation}"] = ((f"lr_{opt}", "mu"), mean_rank)
        diverged_dims = tuple(f"lr_{opt}" if d == "lr" else d for d in res.diverged.dims)
        variables[f"diverged_{opt}_{activation}"] = (diverged_dims, res.diverged.values)
        seconds[f"seconds_{opt}_{activation}"] = time.perf_counter() - started
    for activation in SADDLE_ACTIVATIONS:
        le, le_se = saddle_exponent(ds.problems.two_layer_net(args.width, args.width, activation), lrs, mus, args)
        variables[f"exponent_{activation}"] = (("lr_SGD", "mu"), le)
        variables[f"exponent_{activation}_stderr"] = (("lr_SGD", "mu"), le_se)
    return xr.Dataset(
        variables,
        coords={"lr_SGD": lrs, "lr_Adam": lr_axes["Adam"], "mu": mus},
        attrs={"width": args.width, "steps": args.steps, "seeds": args.seeds, **seconds},
    )


def figure(res: xr.Dataset):
    """The rank of U per run over (lr, mu), and the saddle's top exponent under SGD, with the 1-D theory's line."""
    width, mus, lrs = int(res.attrs["width"]), res.mu.values, res.lr_SGD.values
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6))
    for ax, (opt, activation) in zip(axes.ravel(), RUNS):
        lr_axis, mean_rank = res[f"lr_{opt}"].values, res[f"rank_{opt}_{activation}"].values
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("0.75")  # NaN: every seed diverged, also hatched
        mesh = ax.pcolormesh(lr_axis, mus, mean_rank.T, cmap=cmap, vmin=0, vmax=1, shading="nearest")
        lost = hatch_missing(ax, lr_axis, mus, mean_rank, log_x=opt == "Adam")
        if opt == "SGD":
            grid = np.linspace(0, 0.9, 200)
            ax.plot(boundary(grid), grid, "r--", lw=1.5)
            ax.set_xlim(lr_axis[0] - 0.015, lr_axis[-1] + 0.015)
        else:
            ax.set_xscale("log")
        ax.set_xlabel(f"{opt} learning rate λ", fontsize=9)
        ax.set_ylabel("μ  (y = μx + (1 - μ)ε)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_title(f"{opt}, {activation}" + ("\nhatched grey: every seed diverged" if lost else ""), fontsize=9)
        bar = fig.colorbar(mesh, ax=ax, fraction=0.06, pad=0.03)
        bar.set_label(f"rank(U) / {width}", fontsize=8)
        bar.ax.tick_params(labelsize=8)
    for ax, activation in zip(axes[1, 2:], SADDLE_ACTIVATIONS):
        le, le_se = res[f"exponent_{activation}"].values, res[f"exponent_{activation}_stderr"].values
        if np.all(le > 0):  # a log scale, so that the smallest positive exponents do not look neutral
            norm, cmap = LogNorm(vmin=le.min(), vmax=le.max()), "Reds"
        elif np.all(le < 0):
            norm, cmap = Normalize(vmin=le.min(), vmax=le.max()), "Blues_r"
        else:
            norm, cmap = TwoSlopeNorm(0.0, vmin=le.min(), vmax=le.max()), "coolwarm"
        mesh = ax.pcolormesh(lrs, mus, le.T, cmap=cmap, norm=norm, shading="nearest")
        bar = fig.colorbar(mesh, ax=ax, fraction=0.06, pad=0.03)
        bar.set_label("top exponent per step" + (" (log scale)" if np.all(le > 0) else ""), fontsize=8)
        if np.all(le > 0):
            decades = 10.0 ** np.arange(np.floor(np.log10(le.min())), np.ceil(np.log10(le.max())) + 1)
            ticks = [v for v in np.outer(decades, (1, 2, 5)).ravel() if le.min() <= v <= le.max()]
            bar.set_ticks(ticks, labels=[f"{v:.0e}" for v in ticks])
            bar.ax.minorticks_off()
        bar.ax.tick_params(labelsize=8)
        grid = np.linspace(0, 0.9, 200)
        ax.plot(boundary(grid), grid, "k--", lw=1.5)
        ax.set_xlim(lrs[0] - 0.015, lrs[-1] + 0.015)
        ax.set_xlabel("SGD learning rate λ", fontsize=9)
        ax.set_ylabel("μ  (y = μx + (1 - μ)ε)", fontsize=9)
        ax.tick_params(labelsize=8)
        sign = (
            f"> 0 in every cell (≥ {np.min(le / le_se):.1f} s.e.)"
            if np.all(le > 0)
            else f"> 0 in {np.mean(le > 0):.0%} of cells"
        )
        ax.set_title(f"SGD at the saddle W = U = 0, {activation}:\ntop exponent {sign}", fontsize=9)
    fig.suptitle(
        f"Seed 004, Figs. 7-8: {width}-{width}-{width} nets, fresh samples, "
        f"{int(res.attrs['steps'])} steps, "
        f"{int(res.attrs['seeds'])} seeds per cell\nrank(U) (tol {TOL}): mean over the seeds that did not diverge; "
        "exponents: mean of 4 replicas; dashed: the 1-D theory's line λ = 2μ / (3μ² + 4(1 - μ)²)",
        fontsize=10,
    )
    return fig


def report(res: xr.Dataset) -> None:
    """Per run, the range of the rank and the share of diverged runs; per activation, the saddle's exponents."""
    width = int(res.attrs["width"])
    for opt, activation in RUNS:
        mean_rank, diverged = res[f"rank_{opt}_{activation}"].values, res[f"diverged_{opt}_{activation}"].values
        print(
            f"{opt} {activation}: rank(U)/{width} from {np.nanmin(mean_rank):.2f} to "
            f"{np.nanmax(mean_rank):.2f}; "
            f"diverged share {diverged.mean():.2f} ({float(res.attrs[f'seconds_{opt}_{activation}']):.0f} s)"
        )
    for activation in SADDLE_ACTIVATIONS:
        le, le_se = res[f"exponent_{activation}"].values, res[f"exponent_{activation}_stderr"].values
        print(
            f"saddle exponent, {activation} (4 replicas per cell): min {le.min():+.2e}, max {le.max():+.2e}, "
            f"share of cells > 0: {np.mean(le > 0):.2f}, smallest mean / s.e. over the cells {np.min(le / le_se):.1f}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="laptop")
    parser.add_argument("--width", type=int)
    parser.add_argument("--lr-points", type=int)
    parser.add_argument("--mu-points", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--exponent-steps", type=int)
    args = _cli.parse(parser, argv, replot=True)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    started = time.perf_counter()
    results = os.path.join(args.results, "fig7_wide_nets.nc")
    _cli.check_replot(parser, args, results)
    if not args.replot:
        ds.io.save(compute(args), results)
    res = ds.io.load(results)
    path = _cli.save_figure(figure(res), args, "fig7_wide_nets.png", dpi=100)
    report(res)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
