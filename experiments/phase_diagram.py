"""Probabilistic-stability phase diagrams of SGD at the rank-1 saddle (seed 004, Figs. 1b, 3, 4).

For the linearised two-layer net ``l = -x y sum_i u_i w_i`` the modes ``w - u`` and ``w + u``
are multiplied by ``1 - lr chi_t`` and ``1 + lr chi_t`` (``chi_t`` the batch mean of ``x y``),
so the phase of a cell is set by the signs of ``Lambda_-+ = E log|1 -+ lr chi|``: I (w - u -> 0,
correct learning; I_ms where it also converges in mean square), II (w + u -> 0), III (both:
SGD converges to the low-rank saddle), IV (neither). Theory is quadrature (N = infinity) or
the exact average over minibatches (finite N); simulation runs SGD in the mode coordinates
through ``dynsim.simulate`` and decides each mode's sign from the share of replicas that
shrank (Wilson interval; cells whose interval holds 1/2 are undecided).

    python experiments/phase_diagram.py                      # lr-mu, S = 1, N = infinity (CPU, < 2 min)
    python experiments/phase_diagram.py --diagram lr-S       # Fig. 3 right, mu = 0.06
    python experiments/phase_diagram.py --diagram finite-N   # Fig. 4, N = 3, 4, 8, 10, 24, 100
    python experiments/phase_diagram.py --diagram two-point  # Fig. 1b, x y in {1, a}
    python experiments/phase_diagram.py --preset paper       # 256 x 256 cells x 1024 replicas x 1e4 steps (GPU)
    python experiments/phase_diagram.py --engine fused       # the simulation through dynsim.fused
    python experiments/phase_diagram.py --replot             # the figure again from results/, no computation
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
import xarray as xr  # noqa: E402

import dynsim as ds  # noqa: E402
from dynsim import plot  # noqa: E402
from dynsim.stability import PHASES  # noqa: E402

PRESETS = {
    "laptop": dict(lr_points=72, second_points=41, replicas=256, steps=1000, refine=1),
    "paper": dict(lr_points=256, second_points=256, replicas=1024, steps=10_000, refine=0),
}
LR_RANGE = {"lr-mu": (0.02, 3.0), "lr-S": (0.02, 8.0), "finite-N": (0.02, 3.0), "two-point": (0.02, 6.0)}
S_VALUES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def agreement(theory: xr.DataArray, sim: xr.DataArray) -> tuple[float, float]:
    """Share of cells the simulation decides, and share of those whose phase equals theory's."""
    decided = sim.values >= 0
    agree = sim.values[decided] == theory.values[decided]
    return float(decided.mean()), float(agree.mean()) if agree.size else float("nan")


def overlay(ax, theory: xr.Dataset, *, ms: bool = True, zero_lines: bool = False):
    """Dashed: mean-square boundary E(1 - lr chi)^2 = 1. Thin: Lambda_+- = 0 from theory."""
    x, y = theory.lr.values, theory[theory.Lambda_plus.dims[1]].values
    if ms:
        ax.contour(x, y, theory.ms_minus.values.T, levels=[1.0], colors="k", linestyles="--", linewidths=1.2)
    if zero_lines:
        for var in ("Lambda_plus", "Lambda_minus"):
            ax.contour(x, y, theory[var].values.T, levels=[0.0], colors="k", linewidths=0.6)


def run_pair(lrs, second, args, **kw):
    theory = ds.stability.saddle_phases(lrs, second, seed=args.seed, **kw)
    sim = ds.stability.saddle_phases(
        lrs,
        second,
        method="simulation",
        n_replicas=args.replicas,
        n_steps=args.steps,
        seed=args.seed,
        refine=args.refine,
        checkpoint=_cli.checkpoint(args, f"phase_{args.diagram}-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))),
        engine=args.engine,
        **kw,
    )
    return theory, sim


def save(name: str, theory: xr.Dataset, sim: xr.Dataset, args, extra: dict) -> str:
    """Theory and simulation in one NetCDF file (variables ``theory_*`` and ``sim_*``), with what the figure
    needs to be drawn again from it alone (``--replot``)."""
    merged = xr.merge(
        [
            theory.rename({v: f"theory_{v}" for v in theory.data_vars}),
            sim.rename({v: f"sim_{v}" for v in sim.data_vars}),
        ],
        compat="override",
        combine_attrs="drop",
    )
    merged.attrs.update({k: v for k, v in extra.items()})
    merged.attrs.update(
        dynsim_version=ds.__version__,
        seed=args.seed,
        replicas=args.replicas,
        steps=args.steps,
        refine=args.refine,
        engine=args.engine,
        batch_size=args.batch_size,
        datasets=args.datasets,
    )
    path = os.path.join(args.results, f"phase_diagram_{name}.nc")
    ds.io.save(merged, path)
    return path


def load(path: str) -> tuple[xr.Dataset, xr.Dataset, dict]:
    """The theory, the simulation and the attributes of a file written by :func:`save`."""
    merged = ds.io.load(path)

    def part(prefix):
        names = [v for v in merged.data_vars if v.startswith(prefix)]
        return merged[names].rename({v: v.removeprefix(prefix) for v in names})

    return part("theory_"), part("sim_"), dict(merged.attrs)


def three_panels(theory, sim, meta, *, y_log=False):
    """Theory, simulation and where they differ, side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), sharey=True)
    plot.phase_map(axes[0], theory.phase, y_log=y_log)
    overlay(axes[0], theory)
    axes[0].set_title("theory (quadrature / exact average)")
    plot.phase_map(axes[1], sim.phase, y_log=y_log)
    overlay(axes[1], theory, zero_lines=True)
    axes[1].set_title(f"simulation: {meta['replicas']} replicas x {meta['steps']} steps")
    plot.disagreement_map(axes[2], theory.phase, sim.phase, y_log=y_log, legend=False)
    axes[2].set_title("simulation vs theory")
    plot.phase_legend(fig, loc="lower center", ncol=6, bbox_to_anchor=(0.5, 0.0), frameon=False)
    decided, agree = agreement(theory.phase, sim.phase)
    fig.suptitle(
        f"{meta['title']}: {decided:.1%} of cells decided, {agree:.2%} of those agree with theory\n"
        "dashed: mean-square boundary of w - u; thin: Λ± = 0; right: agree (light), undecided (grey), "
        "disagree (red)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def finite_n_panels(theory, sim, meta):
    """Theory above simulation, one column per dataset size N."""
    sizes = theory.n_data.values
    fig, axes = plt.subplots(2, len(sizes), figsize=(2.2 * len(sizes), 5.4), sharex=True, sharey=True, squeeze=False)
    for col, n in enumerate(sizes):
        t, s = theory.sel(n_data=n), sim.sel(n_data=n)
        decided, agree = agreement(t.phase, s.phase)
        plot.phase_map(axes[0, col], t.phase)
        overlay(axes[0, col], t)
        axes[0, col].set_title(f"N = {n}: theory")
        plot.phase_map(axes[1, col], s.phase)
        overlay(axes[1, col], t, ms=False, zero_lines=True)
        axes[1, col].set_title(f"simulation: {decided:.1%} decided,\n{agree:.1%} of those agree", fontsize=9)
    for ax in axes[:, 1:].ravel():
        ax.set_ylabel("")
    for ax in axes[0]:
        ax.set_xlabel("")
    plot.phase_legend(fig, loc="lower center", ncol=6, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(
        f"{meta['title']}: one dataset per N (seed {meta['seed']}) shared by all μ.\n"
        f"Mean phase shares over {meta['datasets']} datasets are printed and stored with the results.",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def draw(name: str, theory: xr.Dataset, sim: xr.Dataset, meta: dict):
    """The figure of diagram ``name`` (``lr_mu``, ``lr_S``, ``finite_N``, ``two_point``, or ``..._fused``)."""
    if name.startswith("finite_N"):
        return finite_n_panels(theory, sim, meta)
    return three_panels(theory, sim, meta, y_log=name.startswith("lr_S"))


def lr_mu(args):
    lrs = np.linspace(*LR_RANGE["lr-mu"], args.lr_points)
    mus = np.linspace(0.0, 1.0, args.second_points)
    theory, sim = run_pair(lrs, mus, args, batch_size=args.batch_size)
    decided, agree = agreement(theory.phase, sim.phase)
    title = f"λ-μ phases, S = {args.batch_size}, N = ∞, Var ε = 4"
    return "lr_mu", theory, sim, dict(title=title, decided=decided, agree=agree)


def lr_s(args):
    lrs = np.linspace(*LR_RANGE["lr-S"], args.lr_points)
    theories, sims = [], []
    for s in S_VALUES:
        t, m = run_pair(lrs, [args.mu], args, batch_size=s)
        theories.append(t.isel(mu=0).expand_dims(batch_size=[s]).transpose("lr", "batch_size"))
        sims.append(m.isel(mu=0).expand_dims(batch_size=[s]).transpose("lr", "batch_size"))
    theory = xr.concat(theories, "batch_size", combine_attrs="drop_conflicts")
    sim = xr.concat(sims, "batch_size", combine_attrs="drop_conflicts")
    decided, agree = agreement(theory.phase, sim.phase)
    title = f"λ-S phases at μ = {args.mu}, N = ∞"
    return "lr_S", theory, sim, dict(title=title, decided=decided, agree=agree, mu=args.mu)


def finite_n(args):
    lrs = np.linspace(*LR_RANGE["finite-N"], args.lr_points)
    mus = np.linspace(0.0, 1.0, args.second_points)
    theories, sims, summary = [], [], {"title": f"Finite datasets, S = {args.batch_size}"}
    for n in args.n_data:
        theory, sim = run_pair(lrs, mus, args, batch_size=args.batch_size, n_data=n)
        summary[f"N{n}_decided"], summary[f"N{n}_agree"] = agreement(theory.phase, sim.phase)
        theories.append(theory.expand_dims(n_data=[n]))
        sims.append(sim.expand_dims(n_data=[n]))
        print(
            f"  N = {n:4d}: share of cells per phase (theory) "
            + ", ".join(f"{p} {np.mean(theory.phase.values == i):.3f}" for i, p in enumerate(PHASES))
        )
    print(f"  mean share of cells per phase over {args.datasets} datasets (theory, seeds {args.seed}..):")
    for n in args.n_data:
        shares = np.array(
            [
                [
                    np.mean(
                        ds.stability.saddle_phases(
                            lrs, mus, batch_size=args.batch_size, n_data=n, seed=args.seed + k
                        ).phase.values
                        == i
                    )
                    for i in range(len(PHASES))
                ]
                for k in range(args.datasets)
            ]
        )
        summary.update({f"N{n}_share_{p}": float(shares[:, i].mean()) for i, p in enumerate(PHASES)})
        summary[f"N{n}_share_II_max"] = float(shares[:, PHASES.index("II")].max())
        print(
            f"  N = {n:4d}: "
            + ", ".join(f"{p} {shares[:, i].mean():.3f}" for i, p in enumerate(PHASES))
            + f"  (II: {shares[:, 2].min():.3f} to {shares[:, 2].max():.3f})"
        )
    theory = xr.concat(theories, "n_data", combine_attrs="drop_conflicts")
    sim = xr.concat(sims, "n_data", combine_attrs="drop_conflicts")
    return "finite_N", theory, sim, summary


def two_point(args):
    lrs = np.linspace(*LR_RANGE["two-point"], args.lr_points)
    a = np.linspace(-0.95, 1.0, args.second_points)
    theory, sim = run_pair(lrs, a, args, batch_size=args.batch_size, chi="two_point")
    decided, agree = agreement(theory.phase, sim.phase)
    title = f"λ-a phases, x y ∈ {{1, a}}, S = {args.batch_size}"
    return "two_point", theory, sim, dict(title=title, decided=decided, agree=agree)


DIAGRAMS = {"lr-mu": lr_mu, "lr-S": lr_s, "finite-N": finite_n, "two-point": two_point}


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set[str]) -> None:
    """Refuse sizes the run cannot use before it starts (as a usage error naming the option, not a traceback
    after the work); ``given``: the preset's options set on the command line."""
    smallest = {
        "--lr-points": (args.lr_points, 2, "a contour needs two points per axis"),
        "--second-points": (args.second_points, 2, "a contour needs two points per axis"),
        "--replicas": (args.replicas, 1, ""),
        "--steps": (
            args.steps,
            ds.stability.MEAN_SQUARE_BATCHES,
            "the mean-square factor is averaged in that many batches",
        ),
        "--refine": (args.refine, 0, ""),
        "--batch-size": (args.batch_size, 1, ""),
        "--datasets": (args.datasets, 1, ""),
        "--n-data": (min(args.n_data), 1, ""),
    }
    for option, (value, minimum, why) in smallest.items():
        if value < minimum:
            parser.error(f"{option} must be >= {minimum}{f' ({why})' if why else ''}, got {value}")
    if len(set(args.n_data)) < len(args.n_data):
        parser.error(f"--n-data values must be distinct, got {args.n_data}")
    if args.diagram == "lr-S" and (args.batch_size != 1 or "second_points" in given):
        parser.error(
            "the lr-S diagram's axes are lr and the batch size (S = 1 to 128) at one --mu: "
            "--batch-size and --second-points do not apply"
        )
    if args.engine == "fused" and args.resume:
        parser.error("--engine fused writes no checkpoints (its runs take seconds on a GPU): drop --resume")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diagram", choices=sorted(DIAGRAMS), default="lr-mu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="laptop")
    parser.add_argument("--lr-points", type=int, help="learning rates on the grid")
    parser.add_argument("--second-points", type=int, help="values of mu (or a) on the grid")
    parser.add_argument("--replicas", type=int, help="trajectories per cell")
    parser.add_argument("--steps", type=int, help="SGD steps per trajectory")
    parser.add_argument("--refine", type=int, help="reruns of undecided cells with 4x more steps")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--mu", type=float, default=0.06, help="mu of the lr-S diagram")
    parser.add_argument("--n-data", type=int, nargs="+", default=[3, 4, 8, 10, 24, 100])
    parser.add_argument("--datasets", type=int, default=20, help="finite-N: datasets averaged for the shares")
    parser.add_argument(
        "--engine",
        choices=("simulate", "fused"),
        default="simulate",
        help="fused: every step of a trajectory in one kernel (Pallas on GPU); no checkpoints; "
        "writes phase_diagram_<name>_fused.png/.nc",
    )
    args = _cli.parse(parser, argv, replot=True)
    given = {key for key in PRESETS[args.preset] if getattr(args, key) is not None}
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_options(parser, args, given)

    name = {"lr-mu": "lr_mu", "lr-S": "lr_S", "finite-N": "finite_N", "two-point": "two_point"}[args.diagram]
    if args.engine == "fused":  # kept apart from the default engine's files
        name = f"{name}_fused"
    results = os.path.join(args.results, f"phase_diagram_{name}.nc")
    _cli.check_replot(parser, args, results)
    if not args.replot:
        started = time.perf_counter()
        _, theory, sim, summary = DIAGRAMS[args.diagram](args)
        elapsed = time.perf_counter() - started
        save(name, theory, sim, args, {**summary, "elapsed_seconds": elapsed})
        cells = int(np.prod(sim.phase.shape))
        print(
            f"{args.diagram} ({summary['title']}): {cells} cells x {args.replicas} replicas x {args.steps} steps "
            f"({cells * args.replicas * args.steps:.3g} trajectory-steps, plus refinement) in {elapsed:.1f} s"
        )
        for key, value in summary.items():
            if key == "title":
                continue
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    theory, sim, meta = load(results)  # the figure is drawn from the saved file, never from memory
    figure = os.path.join(args.out, f"phase_diagram_{name}.png")
    draw(name, theory, sim, meta).savefig(figure, dpi=120)
    print(f"wrote {figure} and {results}" if not args.replot else f"wrote {figure} from {results}")


if __name__ == "__main__":
    main()
