"""Why clipping helps (seed 002, thesis chs. 3-4): relaxed smoothness and heavy-tailed noise, float64.

* **GD versus clipped GD under (L0, L1)-smoothness** (Thm 3.4.2 and Thm 3.4.1): the two 1-D
  functions of the lower bound. On the *exploding* function, GD from the point where
  ``|f'| = M`` diverges for any step above ``h_crit = 2 (log M + 1) / (M L1)``; on the *slow*
  function, a step that small needs ``Delta L1 M / (4 eps^2 (log M + 1))`` iterations to bring
  ``|f'|`` below ``2 eps``. One step size must serve the whole class, so GD's complexity grows
  like ``M / log M``, while clipped GD with the theorem's parameters (``eta_c = 1/(10 L0)``,
  ``gamma eta_c = min(1, 1/(10 L1))``) does not depend on ``M``.
* **With bounded noise** (Thms 3.4.4, 3.4.5): the exploding function with ``|g - f'| <= tau = 1``
  (uniform noise); the stochastic complexity ``T_eps`` (eq. 3.8, the median first time ``|f'| <= eps``)
  of clipped SGD with Thm 3.4.4's parameters and of SGD with Thm 3.4.5's, whose step ``1/(L1 (M + tau))``
  shrinks with ``M``.
* **Heavy-tailed noise** (Remark 4.4.1): SGD on ``x^2/2`` with Student-t noise of ``df = 1.5``
  (infinite variance) has ``E x_k^2 = infinity`` for any step sizes; its sample second moment over
  ``N`` runs never settles as ``N`` grows, while GClip's does; ACClip's, with the thesis's
  settings, does not either (its threshold grows with the spike it should clip).

    python experiments/clipping.py [--m-values 10 30 100 300 1000 3000 10000] [--n 200000]
    python experiments/clipping.py --replot   # the figure and tables again from results/, no computation
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

L1 = 10.0
EPS, DELTA = 0.05, 1.0
TABLE = [(2.0, 100.0), (10.0, 1e3), (10.0, 1e5)]  # (L1, M) of the exact reference runs


def h_crit(l1, m):
    return 2 * (np.log(m) + 1) / (m * l1)


def grad_norm_of(problem):
    grad = jax.grad(lambda x: problem.loss(x, None, {}))
    return lambda x: jnp.abs(grad(x)[0])


def iterations(problem, dynamics, grid, level, n_steps) -> np.ndarray:
    res = ds.simulate(
        dynamics,
        grid=grid,
        n_steps=n_steps,
        observables={
            "hit": ds.observables.hitting_time(grad_norm_of(problem), level),
            "diverged": ds.observables.diverged(),
        },
    )
    steps = res.hit.values[..., 0].ravel()
    return np.where(res.diverged_step.values[..., 0].ravel() >= 0, -2, steps)  # -2: diverged, -1: not within n_steps


def clipped(problem, l0, l1):
    eta = 1 / (10 * l0)
    gamma = min(1.0, 1 / (10 * l1)) / eta
    return ds.dynamics.from_optax(problem, ds.optim.clipped_sgd, batch_size=None, threshold=gamma), eta


def exploding_table(args) -> xr.Dataset:
    rows = []
    for l1, m in TABLE:
        problem = ds.problems.exploding_function(l1, m)
        h = h_crit(l1, m)
        gd = iterations(problem, ds.dynamics.gd(problem), {"lr": [0.99 * h, 1.01 * h]}, 1e-3, args.max_steps)
        dyn, eta = clipped(problem, l1, l1)
        clip = iterations(problem, dyn, {"lr": [eta]}, 1e-3, args.max_steps)
        rows.append((l1, m, h, gd[0], gd[1], clip[0]))
    names = ["L1", "M", "h_crit", "gd_below", "gd_above", "clipped"]
    return xr.Dataset(
        {n: ("case", np.array(c)) for n, c in zip(names, zip(*rows))}, attrs={"max_steps": args.max_steps}
    )


def class_complexity(args) -> xr.Dataset:
    ms = np.array(args.m_values, dtype=float)
    slow = ds.problems.slow_function(EPS, DELTA)
    gd_slow, gd_exploding, clip_slow, clip_exploding = [], [], [], []
    dyn_clip, eta = clipped(slow, L1, L1)
    clip_slow = iterations(slow, dyn_clip, {"lr": [eta]}, 2 * EPS * 0.999, args.max_steps)[0]
    for m in ms:
        h = h_crit(L1, m)
        exploding = ds.problems.exploding_function(L1, m)
        # the largest step that keeps GD stable on the exploding member (a hair below h_crit)
        need = int(1.2 * DELTA / (2 * EPS**2 * 0.99 * h)) + 100
        gd_slow.append(iterations(slow, ds.dynamics.gd(slow), {"lr": [0.99 * h]}, 2 * EPS * 0.999, need)[0])
        gd_exploding.append(
            iterations(exploding, ds.dynamics.gd(exploding), {"lr": [0.99 * h]}, 2 * EPS * 0.999, need)[0]
        )
        dyn, eta = clipped(exploding, L1, L1)
        clip_exploding.append(iterations(exploding, dyn, {"lr": [eta]}, 2 * EPS * 0.999, args.max_steps)[0])
    return xr.Dataset(
        {
            "gd_slow": ("M", np.array(gd_slow)),
            "gd_exploding": ("M", np.array(gd_exploding)),
            "clipped_slow": ("M", np.full(len(ms), clip_slow)),
            "clipped_exploding": ("M", np.array(clip_exploding)),
            "gd_slow_formula": ("M", DELTA * L1 * ms / (4 * EPS**2 * (np.log(ms) + 1)) / 0.99),
        },
        coords={"M": ms},
        attrs={"L1": L1, "eps": EPS, "delta": DELTA},
    )


STOCHASTIC_EPS, TAU = 0.1, 1.0


def stochastic_complexity(args) -> xr.Dataset:
    """``T_eps`` (eq. 3.8) on the exploding function with uniform noise of bound ``TAU``, over ``--stochastic-runs``."""
    rows = []
    for m in args.stochastic_m:
        problem = ds.problems.exploding_function(L1, m)
        delta = (m - 0.5) / L1  # f(x0) - f* = M / L1 - 1 / (2 L1)
        noise = [ds.dynamics.uniform_noise(TAU)]
        clip = ds.optim.stochastic_clip_parameters(L1, L1, TAU, delta, STOCHASTIC_EPS, args.stochastic_steps)
        sgd = ds.optim.relaxed_sgd_parameters(L1, L1, m, TAU, delta, STOCHASTIC_EPS, args.stochastic_steps)
        runs = {
            "clipped": ds.dynamics.from_optax(
                problem,
                ds.optim.stochastic_clipped_sgd,
                batch_size=None,
                noise=noise,
                clip_scale=clip.clip_scale,
                noise_bound=TAU,
            ),
            "sgd": ds.dynamics.gd(problem, noise=noise),
        }
        medians, intervals = [], []
        for name, dyn in runs.items():
            res = ds.simulate(
                dyn,
                grid={"lr": [clip.lr if name == "clipped" else sgd.lr]},
                n_replicas=args.stochastic_runs,
                n_steps=args.stochastic_steps,
                seed=args.seed,
                observables={"hit": ds.observables.hitting_time(grad_norm_of(problem), STOCHASTIC_EPS)},
                checkpoint=_cli.checkpoint(args, f"clipping_stochastic_{name}_{m:g}"),
            )
            hits = res.hit.values.ravel().astype(float)
            hits[hits < 0] = np.inf  # not within the horizon
            medians.append(np.median(hits))
            intervals.append(ds.measure.quantile_interval(hits, 0.5))  # 95% order-statistic interval of T_eps
        rows.append(
            (m, clip.lr, sgd.lr, medians[0], medians[1], clip.bound, sgd.bound)
            + (intervals[0].low, intervals[0].high, intervals[1].low, intervals[1].high)
        )
    names = ["M", "clipped_lr", "sgd_lr", "clipped_T", "sgd_T", "clipped_bound", "sgd_bound"]
    names += ["clipped_T_low", "clipped_T_high", "sgd_T_low", "sgd_T_high"]
    return xr.Dataset(
        {n: ("case", np.array(c)) for n, c in zip(names, zip(*rows))},
        attrs={"runs": args.stochastic_runs, "steps": args.stochastic_steps},
    )


def heavy_tails(args) -> xr.Dataset:
    problem = ds.problems.quadratic(1.0, theta0=1.0)
    noise = [ds.dynamics.student_t_noise(1.0, df=1.5)]
    optimizers = {
        "SGD": ds.dynamics.gd(problem, noise=noise),
        "GClip (tau = 1)": ds.dynamics.from_optax(
            problem, ds.optim.clipped_sgd, batch_size=None, noise=noise, threshold=1.0
        ),
        "ACClip (alpha = 1)": ds.dynamics.from_optax(problem, ds.optim.acclip, batch_size=None, noise=noise),
    }
    sizes = np.unique(np.geomspace(1000, args.n, int(np.log10(args.n / 1000)) * 4 + 1).astype(int))
    out = {}
    for name, dyn in optimizers.items():
        res = ds.simulate(
            dyn,
            grid={"lr": [0.1]},
            n_replicas=args.n,
            n_steps=args.heavy_steps,
            seed=args.seed,
            observables={"x": ds.observables.final_state()},
            checkpoint=_cli.checkpoint(args, f"clipping_{name.split()[0]}"),
        )
        x2 = res.x.values.ravel() ** 2
        out[name] = (
            np.array([x2[:n].mean() for n in sizes]),
            np.array([x2[:n].std(ddof=1) / np.sqrt(n) for n in sizes]),  # meaningful only where E x^4 is finite
            np.array([np.median(np.sqrt(x2[:n])) for n in sizes]),
            np.array([ds.measure.quantile_interval(np.sqrt(x2[:n]), 0.5)[1:] for n in sizes]),  # 95% interval
        )
    return xr.Dataset(
        {
            "second_moment": (("optimizer", "n"), np.array([v[0] for v in out.values()])),
            "second_moment_stderr": (("optimizer", "n"), np.array([v[1] for v in out.values()])),
            "median_abs": (("optimizer", "n"), np.array([v[2] for v in out.values()])),
            "median_abs_interval": (("optimizer", "n", "bound"), np.array([v[3] for v in out.values()])),
        },
        coords={"optimizer": list(out), "n": sizes, "bound": ["low", "high"]},
        attrs={"steps": args.heavy_steps, "lr": 0.1, "df": 1.5},
    )


def figure(complexity, stochastic, heavy):
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    axes = axes.ravel()
    ax = axes[0]
    ms = complexity.M.values
    fine = np.geomspace(ms[0], ms[-1], 200)
    ax.loglog(ms, complexity.gd_slow, "o", label="GD (step 0.99 h_crit): slow function")
    ax.loglog(
        fine,
        DELTA * L1 * fine / (4 * EPS**2 * (np.log(fine) + 1)) / 0.99,
        "k--",
        lw=1,
        label="Δ L1 M / (4 ε² (log M + 1)) / 0.99",
    )
    ax.loglog(ms, complexity.gd_exploding, "s", mfc="none", label="GD (step 0.99 h_crit): exploding function")
    ax.loglog(ms, complexity.clipped_slow, "^-", label="clipped GD: slow function")
    ax.loglog(ms, complexity.clipped_exploding, "v-", label="clipped GD: exploding function")
    ax.set_xlabel("M = |f'(x0)| on the exploding function")
    ax.set_ylabel("iterations until |f'| < 2ε (deterministic)")
    ax.set_ylim(None, 1e9)  # room for the legend above the points
    ax.set_title(
        f"(L0, L1) = ({L1:g}, {L1:g}), ε = {EPS}, Δ = {DELTA}: GD ∝ M / log M,\n"
        "clipped GD flat on the slow member, ∝ log M on the exploding one",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")

    n = heavy.n.values
    colors = dict(zip(heavy.optimizer.values, ["C0", "C1", "C2"]))
    ax = axes[1]
    for name in heavy.optimizer.values:
        mean = heavy.second_moment.sel(optimizer=name).values
        if name.startswith("GClip"):  # bounded steps: E x_K^4 < inf, the standard error means something
            se = heavy.second_moment_stderr.sel(optimizer=name).values
            ax.errorbar(n, mean, yerr=2 * se, fmt="o-", ms=3, capsize=2, color=colors[name], label=f"{name} (± 2 s.e.)")
        else:
            ax.plot(n, mean, "o-", ms=3, color=colors[name], label=f"{name} (no s.e.: E x_K⁴ = ∞)")
    ax.set(xscale="log", yscale="log", xlabel="N (runs, nested)", ylabel="mean of x_K² over the first N runs")
    ax.legend(fontsize=8)
    ax.set_title(
        f"x²/2 with Student-t(1.5) gradient noise, lr = 0.1, K = {heavy.attrs['steps']}:\n"
        "E x_K² = ∞ for SGD (and for ACClip); GClip's settles",
        fontsize=10,
    )
    ax = axes[2]
    for name in heavy.optimizer.values:
        med = heavy.median_abs.sel(optimizer=name).values
        low, high = heavy.median_abs_interval.sel(optimizer=name).values.T
        ax.plot(n, med, "o-", ms=3, color=colors[name], label=name)
        ax.fill_between(n, low, high, color=colors[name], alpha=0.3, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="N (runs, nested)", ylabel="median |x_K| over the first N runs")
    ax.set_title("the medians settle for all three\n(bands: 95% order-statistic intervals)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[3]
    ms = stochastic.M.values
    for name, fmt, label in [
        ("sgd", "s-", "SGD, Thm 3.4.5's step 1/(L1 (M + τ))"),
        ("clipped", "o-", "clipped SGD, Thm 3.4.4's step"),
    ]:
        t = stochastic[f"{name}_T"].values
        low, high = stochastic[f"{name}_T_low"].values, stochastic[f"{name}_T_high"].values
        ax.errorbar(ms, t, yerr=[t - low, high - t], fmt=fmt, ms=4, capsize=3, label=label)
    ax.loglog(ms, stochastic.sgd_T.values[-1] * ms / ms[-1], "k:", lw=1, label="∝ M")
    ax.set_xlabel("M = |f'(x0)| on the exploding function")
    ax.set_ylabel(f"T_ε: median first step with |f'| <= {STOCHASTIC_EPS}")
    bounds = np.concatenate([stochastic.clipped_bound.values, stochastic.sgd_bound.values])
    ax.set_title(
        f"with bounded noise |g - f'| <= {TAU} (Thms 3.4.4, 3.4.5); bars: 95% order-\n"
        f"statistic intervals of the median over {stochastic.attrs['runs']} runs; the theorems'\n"
        f"bounds ({bounds.min():.1e} to {bounds.max():.1e}) are far above the axes",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.suptitle(
        "Seed 002: clipping under (L0, L1)-smoothness (top left, bottom right) and heavy-tailed noise "
        "(top right, bottom left); float64",
        fontsize=11,
    )
    return fig


RESULTS = ("table", "complexity", "stochastic", "heavy_tails")  # one results file each


def compute(args) -> dict[str, xr.Dataset]:
    """The results of every panel and table, in float64, by the names in ``RESULTS``."""
    with jax.enable_x64(True):
        return {
            "table": exploding_table(args),
            "complexity": class_complexity(args),
            "stochastic": stochastic_complexity(args),
            "heavy_tails": heavy_tails(args),
        }


def paths(folder: str) -> dict[str, str]:
    return {name: os.path.join(folder, f"clipping_{name}.nc") for name in RESULTS}


def report(results: dict[str, xr.Dataset]) -> None:
    """The tables the docs quote: the exact reference runs, the class complexity, the stochastic complexity and
    the heavy-tailed second moments."""
    table, complexity, stochastic, heavy = (results[name] for name in RESULTS)
    print(
        f"exploding function, iterations to |f'| <= 1e-3 (-2: diverged, -1: not within {table.attrs['max_steps']} "
        "steps):"
    )
    print(f"{'L1':>4} {'M':>8} {'h_crit':>12} {'GD 0.99 h':>10} {'GD 1.01 h':>10} {'clipped':>8}")
    for c in range(table.sizes["case"]):
        r = table.isel(case=c)
        print(
            f"{float(r.L1):4g} {float(r.M):8g} {float(r.h_crit):12.6g} {int(r.gd_below):10d} "
            f"{int(r.gd_above):10d} {int(r.clipped):8d}"
        )
    print(f"class complexity (L1 = {L1}, eps = {EPS}, delta = {DELTA}): iterations to |f'| < 2 eps")
    print(f"{'M':>8} {'GD slow':>10} {'formula':>10} {'GD expl.':>9} {'clip slow':>9} {'clip expl.':>10}")
    for i, m in enumerate(complexity.M.values):
        r = complexity.isel(M=i)
        print(
            f"{m:8g} {int(r.gd_slow):10d} {float(r.gd_slow_formula):10.0f} {int(r.gd_exploding):9d} "
            f"{int(r.clipped_slow):9d} {int(r.clipped_exploding):10d}"
        )
    print(
        f"with noise |g - f'| <= {TAU} (uniform), L0 = L1 = {L1}, T_eps = median first step with |f'| <= "
        f"{STOCHASTIC_EPS} over {stochastic.attrs['runs']} runs (inf: not within {stochastic.attrs['steps']} steps):"
    )
    print(f"{'M':>8} {'clip lr':>9} {'clip T':>8} {'Thm 3.4.4':>10} {'SGD lr':>9} {'SGD T':>8} {'Thm 3.4.5':>10}")
    for c in range(stochastic.sizes["case"]):
        r = stochastic.isel(case=c)
        print(
            f"{float(r.M):8g} {float(r.clipped_lr):9.2e} {float(r.clipped_T):8.0f} {float(r.clipped_bound):10.2e} "
            f"{float(r.sgd_lr):9.2e} {float(r.sgd_T):8.0f} {float(r.sgd_bound):10.2e}"
        )
    print(
        f"heavy tails, K = {heavy.attrs['steps']}: mean x_K^2 +- s.e. (median |x_K|) over the first N runs "
        "(the s.e. means something only where E x_K^4 is finite: GClip's bounded steps)"
    )
    for name in heavy.optimizer.values:
        h = heavy.sel(optimizer=name)
        cells = ", ".join(
            f"N={n}: {m:.4g} +- {se:.2g} ({md:.3f})"
            for n, m, se, md in zip(
                h.n.values[::4],
                h.second_moment.values[::4],
                h.second_moment_stderr.values[::4],
                h.median_abs.values[::4],
            )
        )
        print(f"  {name}: {cells}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m-values", type=float, nargs="+", default=[10, 30, 100, 300, 1000, 3000, 10000])
    parser.add_argument("--max-steps", type=int, default=60_000)
    parser.add_argument("--n", type=int, default=200_000, help="runs for the heavy-tailed panel")
    parser.add_argument("--heavy-steps", type=int, default=1000)
    parser.add_argument("--stochastic-m", type=float, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--stochastic-runs", type=int, default=200)
    parser.add_argument("--stochastic-steps", type=int, default=200_000)
    args = _cli.parse(parser, argv, replot=True)
    started = time.perf_counter()
    results = _cli.saved_results(parser, args, paths(args.results), lambda: compute(args))
    fig = figure(results["complexity"], results["stochastic"], results["heavy_tails"])
    path = _cli.save_figure(fig, args, "clipping.png")
    report(results)
    print(f"wrote {path} and {args.results}/clipping_*.nc in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
