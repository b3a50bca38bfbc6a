"""Seed 004, Fig. 2: probabilistic stability of SGD against one outlier.

Interpolating 1-D regression, S = 1, N points: x_2..x_N ~ N(0, 1) and one outlier with
x_1^2 = c. SGD converges in probability iff m = (1/N) sum_i log|1 - lr x_i^2| < 0 (Prop. 1, eq. 7);
the map of its sign over (lr, c) shows a bulk stable band barely moved by the outlier, a first
branch (0, ~2/c) once c >> N, and thin stripes around the critical rates 1/x_i^2. Overlaid:
lambda_GD = 2N / sum x_i^2 (grey), lambda_GD / N (green) and the mean-square threshold
lambda_DS = 2 sum x_i^2 / sum x_i^4 (magenta; seed 004's "1/(Nc)" is off by 2N, digest Sec. 2.1).
Cells are spot-checked by simulation: the top exponent of the SGD map (``with_tangent``) over
many replicas against m.

    python experiments/fig2_outlier.py [--sizes 10 100 1000] [--lr-points 600] [--c-points 160]
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
import xarray as xr  # noqa: E402

import dynsim as ds  # noqa: E402


def dataset(n: int, c: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n)
    x[0] = np.sqrt(c)
    return x


def exponent_map(n, lrs, cs, seed):
    """m(lr, c) = E log|1 - lr x^2| over the N points (exact: the average over the dataset)."""
    out = np.empty((len(lrs), len(cs)))
    for j, c in enumerate(cs):
        x2 = dataset(n, c, seed) ** 2
        out[:, j] = ds.lyapunov.scalar_exponent(1 - lrs[:, None] * x2[None, :])
    return out


def thresholds(n, cs, seed):
    rows = []
    for c in cs:
        x2 = dataset(n, c, seed) ** 2
        rows.append((2 * n / x2.sum(), 2 / x2.sum(), 2 * x2.sum() / np.sum(x2**2)))
    return np.array(rows)


def spot_check(n, cells, seed, args):
    """Top exponent of SGD on the dataset, simulated, for (lr, c) cells."""
    rows = []
    for lr, c in cells:
        x = dataset(n, c, seed)
        problem = ds.problems.linear_regression_1d(n_data=n)._replace(dataset={"x": x, "y": np.zeros(n)})
        dyn = ds.lyapunov.with_tangent(ds.dynamics.sgd(problem))
        res = ds.simulate(
            dyn,
            grid={"lr": [lr]},
            n_replicas=args.replicas,
            n_steps=args.steps,
            seed=seed,
            observables={"le": ds.lyapunov.running_exponent(every_record=False)},
            progress=False,
            checkpoint=_cli.checkpoint(args, f"fig2_outlier_N{n}_lr{lr:g}_c{c:g}"),
        )
        le = res.le.values.ravel()
        m = float(ds.lyapunov.scalar_exponent(1 - lr * x**2))
        rows.append((lr, c, m, le.mean(), le.std(ddof=1) / np.sqrt(le.size)))
    return rows


def figure(maps, lrs, cs, n_check, checks, args):
    """The sign of m over (lr, c) for each N, and m against lr at the spot-checked c with the simulated exponents."""
    panels = len(args.sizes)
    rows = panels // 2 + 1
    fig = plt.figure(figsize=(12, 4.6 * rows + 1.1))
    grid = fig.add_gridspec(rows + 1, 2, height_ratios=(1,) * rows + (0.22,))
    axes = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(panels + 1)]
    legend_ax = fig.add_subplot(grid[rows, :])
    legend_ax.axis("off")
    lines = [
        ("grey", "--", r"$\lambda_{GD} = 2N/\sum x_i^2$ (GD's critical lr)"),
        ("lime", "--", r"$\lambda_{GD}/N$"),
        ("magenta", ":", r"$\lambda_{DS} = 2\sum x_i^2/\sum x_i^4$ (mean-square threshold)"),
    ]
    for ax, n in zip(axes, args.sizes):
        ax.pcolormesh(lrs, cs, (maps[n] < 0).T, cmap="cividis", shading="auto", vmin=0, vmax=1, rasterized=True)
        th = thresholds(n, cs, args.seed)
        for k, (color, ls, _) in enumerate(lines):
            ax.plot(th[:, k], cs, color=color, ls=ls, lw=2 if color == "magenta" else 1.5)
        if n == n_check:
            ax.plot(
                [r[0] for r in checks], [r[1] for r in checks], "o", ms=7, mfc="none", mec="red", mew=1.8, clip_on=False
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lrs[0], lrs[-1])
        ax.set_ylim(cs[0], cs[-1])
        ax.set_xlabel("learning rate lr")
        ax.set_ylabel("outlier $x_1^2 = c$")
        ax.set_title(
            f"N = {n}" + (f": red circles, the {len(checks)} cells simulated" if n == n_check else ""), fontsize=10
        )

    ax = axes[panels]
    fine = np.logspace(-6, 1, 4000)
    for c, color in ((1.0, "C0"), (1e4, "C1")):
        m = exponent_map(n_check, fine, np.array([c]), args.seed)[:, 0]
        ax.plot(fine, m, color=color, lw=1, label=f"m (exact), c = {c:g}")
        rows = [r for r in checks if r[1] == c]
        ax.errorbar(
            [r[0] for r in rows],
            [r[3] for r in rows],
            yerr=[2 * r[4] for r in rows],
            fmt="o",
            ms=6,
            mfc="none",
            mew=1.5,
            color=color,
            capsize=3,
            label=f"simulated top exponent of SGD ± 2 s.e., c = {c:g}",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlim(fine[0], fine[-1])
    ax.set_xlabel("learning rate lr")
    ax.set_ylabel("m (symlog; m < 0: stable)")
    ax.set_title(
        f"N = {n_check}: m against lr at c = 1 and 1e4, and the {len(checks)} spot checks\n"
        f"({args.replicas} replicas x {args.steps} steps each)",
        fontsize=10,
    )
    handles = [
        plt.matplotlib.patches.Patch(color=plt.cm.cividis(1.0), label="m < 0 (stable)"),
        plt.matplotlib.patches.Patch(color=plt.cm.cividis(0.0), label="m > 0 (unstable)"),
    ]
    handles += [plt.Line2D([], [], color=c, ls=ls, lw=2, label=label) for c, ls, label in lines]
    handles.append(
        plt.Line2D([], [], ls="none", marker="o", ms=7, mfc="none", mec="red", mew=1.8, label="cells simulated")
    )
    handles += ax.get_legend_handles_labels()[0]
    legend_ax.legend(handles=handles, loc="center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(
        r"Seed 004, Fig. 2: sign of $m = \frac{1}{N}\sum_i \log|1 - \mathrm{lr}\, x_i^2|$, "
        f"N - 1 standard normal points (seed {args.seed}) and one outlier",
        fontsize=11,
    )
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--lr-points", type=int, default=600)
    parser.add_argument("--c-points", type=int, default=160)
    parser.add_argument("--replicas", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4000)
    args = _cli.parse(parser, argv)

    lrs = np.logspace(-6, 1, args.lr_points)
    cs = np.logspace(0, 5, args.c_points)
    maps = {n: exponent_map(n, lrs, cs, args.seed) for n in args.sizes}
    n = 100 if 100 in args.sizes else args.sizes[0]
    cells = [(0.5, 1.0), (2.0, 1.0), (3.0, 1.0), (1e-3, 1e4), (1.5e-4, 1e4), (0.03, 1e4), (0.2, 1e4), (2.0, 1e4)]
    checks = spot_check(n, cells, args.seed, args)
    path = _cli.save_figure(figure(maps, lrs, cs, n, checks, args), args, "fig2_outlier.png")
    ds.io.save(
        xr.Dataset({f"m_N{n}": (("lr", "c"), m) for n, m in maps.items()}, coords={"lr": lrs, "c": cs}),
        os.path.join(args.results, "fig2_outlier.nc"),
    )

    print(f"spot checks, N = {n}: simulated top exponent of SGD ({args.replicas} replicas x {args.steps} steps) vs m")
    agree = 0
    for lr, c, m, le, se in checks:
        same = np.sign(le) == np.sign(m)
        agree += same
        print(
            f"  lr {lr:8.1e}  c {c:8.1e}  m = {m:+.5f}  simulated {le:+.5f} ± {se:.5f}  z = {(le - m) / se:+.2f}"
            f"  {'same sign' if same else 'SIGN DIFFERS'}"
        )
    print(f"{agree}/{len(cells)} cells: simulated sign = sign of m")
    for n in args.sizes:
        th = thresholds(n, [1e5], args.seed)[0]
        print(
            f"N = {n}, c = 1e5: lambda_GD = {th[0]:.3g}, lambda_GD/N = {th[1]:.3g}, lambda_DS = {th[2]:.3g}, "
            f"stable share of log-lr in [1e-3, 10]: "
            f"{np.mean(maps[n][(lrs >= 1e-3), -1] < 0):.3f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
