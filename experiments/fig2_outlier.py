"""Seed 004, Fig. 2: probabilistic stability of SGD against one outlier.

Interpolating 1-D regression, S = 1, N points: x_2..x_N ~ N(0, 1) and one outlier with
x_1^2 = c. SGD converges in probability iff m = (1/N) sum_i log|1 - lr x_i^2| < 0 (Prop. 1, eq. 7);
the map of its sign over (lr, c) shows a bulk stable band barely moved by the outlier, a first
branch (0, ~2/c) once c >> N, and thin stripes around the critical rates 1/x_i^2. Overlaid:
lambda_GD = 2N / sum x_i^2 (grey), lambda_GD / N (green) and the mean-square threshold
lambda_DS = 2 sum x_i^2 / sum x_i^4 (white; seed 004's "1/(Nc)" is off by 2N, digest Sec. 2.1).
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
    fig, axes = plt.subplots(1, len(args.sizes) + 1, figsize=(5 * (len(args.sizes) + 1), 4.6))
    panels = [(n, lrs, cs, maps[n]) for n in args.sizes]
    zoom_lrs = np.logspace(-6, -1, args.lr_points)
    panels.append((args.sizes[-1], zoom_lrs, cs, exponent_map(args.sizes[-1], zoom_lrs, cs, args.seed)))
    for ax, (n, lr_axis, c_axis, m) in zip(axes, panels):
        ax.pcolormesh(lr_axis, c_axis, (m < 0).T, cmap="cividis", shading="auto", vmin=0, vmax=1)
        th = thresholds(n, c_axis, args.seed)
        ax.plot(th[:, 0], c_axis, color="grey", ls="--", lw=1.5, label="λ_GD = 2N/Σx²")
        ax.plot(th[:, 1], c_axis, color="lime", ls="--", lw=1.5, label="λ_GD/N")
        ax.plot(th[:, 2], c_axis, color="white", ls=":", lw=1.5, label="λ_DS = 2Σx²/Σx⁴")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lr_axis[0], lr_axis[-1])
        ax.set_xlabel("learning rate λ")
        ax.set_ylabel("outlier x₁² = c")
        ax.set_title(f"N = {n}" + (" (zoom)" if lr_axis is zoom_lrs else "") + ": yellow m < 0 (stable)", fontsize=10)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"Seed 004, Fig. 2: sign of m = (1/N) Σ log|1 - λx_i²|, N - 1 standard normal points (seed "
        f"{args.seed}) and one outlier",
        fontsize=10,
    )
    path = _cli.save_figure(fig, args, "fig2_outlier.png")
    ds.io.save(
        xr.Dataset({f"m_N{n}": (("lr", "c"), m) for n, m in maps.items()}, coords={"lr": lrs, "c": cs}),
        os.path.join(args.results, "fig2_outlier.nc"),
    )

    n = 100 if 100 in args.sizes else args.sizes[0]
    cells = [(0.5, 1.0), (2.0, 1.0), (3.0, 1.0), (1e-3, 1e4), (1.5e-4, 1e4), (0.03, 1e4), (0.2, 1e4), (2.0, 1e4)]
    print(f"spot checks, N = {n}: simulated top exponent of SGD ({args.replicas} replicas x {args.steps} steps) vs m")
    agree = 0
    for lr, c, m, le, se in spot_check(n, cells, args.seed, args):
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
