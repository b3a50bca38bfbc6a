"""GD on f = 100 sin(t1) sin(t2): iterates that never converge, time averages that do (seed 000, Fig. 4).

Seed 000 uses this toy to show that the loss can settle while the weights keep moving: GD
converges to a minimum iff lr < 2/L = 0.02, and above that it cycles or is chaotic, yet the
*running averages* of the loss and of the gradient norm converge. Two parts:

1. Fig. 4: one trajectory at lr = 0.01 and at lr = 0.04 (iterates coloured by time, the last
   500 iterates, loss and gradient norm with their running averages).
2. A sweep over lr in [0.005, 0.06] x 10^4 starting points in one program (float64): share of
   starts that converge to a stationary point, top Lyapunov exponent (tangent dynamics), time
   averages of f and |grad f| after a burn-in, detected period of the orbit (mod 2 pi), and a
   bifurcation diagram of p = t1 + t2 mod 2 pi (the map decouples in p and r = t1 - t2 + pi
   into y <- y - 100 lr sin y; digest Sec. 3.1).
3. The balance of gradient and curvature that invariance forces (eq. 10, corrected):
   ``E|grad f|^2 = lr E[int_0^1 (1 - s) g^T H(theta - s lr g) g ds]`` on the attractors of
   lr = 0.03 ... 0.05, against seed 000's printed ``lr E[g^T H g]`` and the local ``(lr/2) E[g^T H g]``.

    python experiments/invariant_sinsin.py [--starts 10000] [--lr-points 45] [--steps 2000]
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # periodic orbits are detected to 1e-8

import _cli  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from scipy import optimize  # noqa: E402

import dynsim as ds  # noqa: E402

TWO_PI = 2 * np.pi


def f(th):
    return 100 * jnp.sin(th[0]) * jnp.sin(th[1])


def grad_norm(th):
    return jnp.linalg.norm(jax.grad(f)(th))


def closed_form_exponent(lr: float) -> float:
    """Top exponent where the attractor is a fixed point or a 2-cycle (digest Sec. 3.2), else NaN."""
    a = 100 * lr
    if lr < 0.02:
        return np.log(abs(1 - a)) if a != 1 else -np.inf
    if lr < np.pi / 100:
        u = optimize.brentq(lambda u: np.sin(u) / u - 2 / a, 1e-9, np.pi)
        return np.log(abs(1 - a * np.cos(u)))
    if lr < np.sqrt(np.pi**2 + 2) / 100:
        return 0.5 * np.log(abs(1 + np.pi**2 - a**2))
    return np.nan


def closed_form_averages(lr: float) -> tuple[float, float]:
    """``(<f>, <|grad f|>)`` on the fixed point or the 2-cycles (tests/test_invariant.py), else NaN.

    Fixed point: ``(-100, 0)``; symmetric 2-cycle ``+-u`` (``sin u / u = 2 / (100 lr)``, lr up to pi/100):
    ``(-100 cos u, 100 sin u)``; mirror 2-cycles (up to sqrt(pi^2 + 2)/100): ``(0, pi / lr)``.
    """
    a = 100 * lr
    if a <= 2:
        return -100.0, 0.0
    if lr < np.pi / 100:
        u = optimize.brentq(lambda u: np.sin(u) / u - 2 / a, 1e-9, np.pi)
        return -100 * np.cos(u), 100 * np.sin(u)
    if lr < np.sqrt(np.pi**2 + 2) / 100:
        return 0.0, np.pi / lr
    return np.nan, np.nan


def figure4(args, problem):
    lrs = [0.01, 0.04]
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": lrs},
        n_steps=args.fig4_steps,
        record_every=1,
        seed=args.seed,
        observables={
            "theta": ds.observables.trajectory(),
            "loss": ds.observables.loss(),
            "grad_norm": ds.observables.grad_norm(),
        },
    )
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6))
    t = res.time.values
    late = t > args.burn_in  # the sweep's time averages: t = burn-in + 1 ... n_steps
    for row, lr in enumerate(lrs):
        cell = res.sel(lr=lr, replica=0)
        th = cell.theta.values
        ax = axes[row, 0]
        sc = ax.scatter(th[:, 0], th[:, 1], c=t, s=4, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="step t", pad=0.02)
        ax.set_title(f"lr = {lr}: iterates θ_t", fontsize=9)
        tail = np.mod(th[-500:] + np.pi, TWO_PI) - np.pi
        axes[row, 1].scatter(tail[:, 0], tail[:, 1], s=6, c="C3")
        axes[row, 1].set_title("last 500 iterates (mod 2π)", fontsize=9)
        for ax in axes[row, :2]:
            ax.set_xlabel("θ1 (rad)")
            ax.set_ylabel("θ2 (rad)")
        for col, (var, label, name) in enumerate(
            [("loss", "f(θ_t)", "f"), ("grad_norm", "|∇f(θ_t)|", "|∇f|")], start=2
        ):
            ax = axes[row, col]
            v = cell[var].values
            mean_late = np.mean(v[late])
            ax.plot(t, v, lw=0.5, alpha=0.6, label=label)
            ax.plot(t[1:], np.cumsum(v[1:]) / np.arange(1, len(v)), lw=2, label="running average from t = 1")
            ax.axhline(mean_late, color="k", ls="--", lw=1, label=f"mean over t > {args.burn_in}")
            ax.axvline(args.burn_in, color="gray", ls=":", lw=1)
            ax.set_xlabel("step t")
            ax.set_ylabel(label)
            ax.set_title(f"mean of {name} over t > {args.burn_in}: {mean_late:.2f}", fontsize=9)
            lo, hi = np.min(v), np.max(v)
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.6 * (hi - lo))  # headroom: the legend stays off the data
            ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(
        f"GD on f = 100 sin θ1 sin θ2 (seed 000, Fig. 4), θ0 ~ U[-π, π]² (seed {args.seed}): at lr = 0.04 the iterates "
        "never settle\n(a chaotic 12-band attractor), the running averages do; dotted line: end of the "
        f"{args.burn_in}-step burn-in",
        fontsize=10,
    )
    fig.tight_layout()
    return fig, res


def sweep(args, problem):
    lrs = np.linspace(0.005, 0.06, args.lr_points)
    dyn = ds.lyapunov.with_tangent(ds.dynamics.gd(problem), transient=args.burn_in)
    observables = {
        "exponent": ds.lyapunov.running_exponent(every_record=False),
        "mean_f": ds.observables.time_average(f, discard=args.burn_in, n_batches=16),
        "mean_grad_norm": ds.observables.time_average(grad_norm, discard=args.burn_in, n_batches=16),
        "final_grad_norm": ds.observables.Observable(
            "final_grad_norm", record=lambda v: grad_norm(v.params), every_record=False
        ),
        "orbit": ds.observables.last_values(args.tail, lambda th: jnp.mod(th[0] + th[1], TWO_PI)),
    }
    res = ds.simulate(
        dyn,
        grid={"lr": lrs},
        n_replicas=args.starts,
        n_steps=args.steps,
        seed=args.seed,
        observables=observables,
        checkpoint=_cli.checkpoint(args, "invariant_sinsin_sweep"),
    )
    period = ds.measure.detect_period(
        res.orbit.values[..., None], tol=1e-7, max_period=args.tail // 2, window=args.tail // 2, period_of_space=TWO_PI
    ).period
    res["period"] = (("lr", "replica"), period)
    res["converged"] = res.final_grad_norm < 1e-6
    return res


def bifurcation(args, problem):
    lrs = np.linspace(0.005, 0.06, args.bifurcation_points)
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": lrs},
        n_replicas=4,
        n_steps=args.steps,
        seed=args.seed + 1,
        observables={"p": ds.observables.last_values(100, lambda th: jnp.mod(th[0] + th[1] + np.pi, TWO_PI) - np.pi)},
    )
    return res


def chaos_threshold(res: xr.Dataset) -> tuple[float, float]:
    """``(3 s, s)``, ``s`` the standard deviation of one start's finite-time exponent.

    The script records no standard error per start, so ``s`` is read off the spread over starts: the sd over
    the starts of each learning rate where none has a period and the median exponent is positive, then the
    median over those rates (on one chaotic attractor the starts differ only by that finite-time fluctuation;
    the median discounts the few rates with several attractors). An orbit without a detected period counts as
    chaotic only where its exponent exceeds ``3 s``; at lr = 0.02 (period doubling) the orbits converge too
    slowly for the period test and their exponent is about 0: "no period detected", not chaos.
    """
    le, period = res.exponent.values, res.period.values
    cells = np.all(period == 0, axis=1) & (np.median(le, axis=1) > 0)
    s = float(np.median(np.std(le[cells], axis=1, ddof=1))) if cells.any() else np.nan
    return 3 * s, s


def sweep_figure(res: xr.Dataset, bif: xr.Dataset, args):
    lrs = res.lr.values
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.8))
    q = lambda v, p: np.nanquantile(np.where(np.isfinite(v), v, np.nan), p, axis=1)  # noqa: E731
    fine = np.linspace(0.005, 0.06, 2000)
    averages = np.array([closed_form_averages(x) for x in fine])  # (lr, [<f>, <|grad f|>])
    closed_label = "closed form (fixed point, 2-cycles)"

    ax = axes[0, 0]
    share = res.converged.mean("replica").values
    ax.plot(lrs, share, "o-", ms=3)
    ax.axvline(0.02, color="k", ls="--", lw=1, label="2/L = 0.02")
    ax.set_ylabel("share of starts converged")
    ax.set_title(f"converged: |∇f(θ_n)| < 1e-6 ({args.starts} starts)", fontsize=9)
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    le = res.exponent.values
    ax.fill_between(lrs, q(le, 0.05), q(le, 0.95), alpha=0.3, label="5-95% over starts")
    ax.plot(lrs, q(le, 0.5), "o-", ms=3, label="median over starts")
    ax.plot(fine, [closed_form_exponent(x) for x in fine], "k--", lw=1.2, zorder=3, label=closed_label)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylim(-3, 1.5)
    ax.set_ylabel("top Lyapunov exponent (per step)")
    ax.set_title(f"exponent after the first {args.burn_in} of {args.steps} steps", fontsize=9)

    for ax, var, label, col in [
        (axes[0, 2], "mean_f", "<f>", 0),
        (axes[1, 0], "mean_grad_norm", "<|∇f|>", 1),
    ]:
        v = res[var].values
        ax.fill_between(lrs, q(v, 0.05), q(v, 0.95), alpha=0.3, label="5-95% over starts")
        ax.plot(lrs, q(v, 0.5), "o-", ms=3, label="median over starts")
        ax.plot(fine, averages[:, col], "k--", lw=1.2, zorder=3, label=closed_label)
        ax.set_ylabel(f"time average {label}")
        ax.set_title(f"{label} over steps {args.burn_in + 1}-{args.steps} of each start", fontsize=9)

    ax = axes[1, 1]
    p = bif.p.values  # (lr, replica, lag)
    for r in range(p.shape[1]):
        ax.scatter(np.repeat(bif.lr.values, p.shape[2]), p[:, r].ravel(), s=0.2, c="k", alpha=0.5)
    ax.set_ylabel("p = θ1 + θ2 (mod 2π, in [-π, π))")
    ax.set_title(f"bifurcation diagram: last 100 iterates, {p.shape[1]} starts", fontsize=9)

    ax = axes[1, 2]
    period = res.period.values
    threshold, spread = chaos_threshold(res)
    longer = np.unique(period[period >= 3])
    longer_label = "period " + (", ".join(str(k) for k in longer) if 0 < longer.size <= 3 else f"3-{args.tail // 2}")
    classes = [
        ("fixed point", period == 1, "C0"),
        ("period 2", period == 2, "C1"),
        (longer_label, period >= 3, "C2"),
        (f"chaos: no period, exponent > {threshold:.3f}", (period == 0) & (le > threshold), "C3"),
        (f"no period detected, exponent ≤ {threshold:.3f}", (period == 0) & ~(le > threshold), "0.6"),
    ]
    bottom = np.zeros(len(lrs))
    for name, mask, color in classes:
        share = mask.mean(axis=1)
        if share.any():  # no legend entry for a class that is not drawn
            ax.bar(lrs, share, width=lrs[1] - lrs[0], bottom=bottom, label=name, color=color)
        bottom += share
    ax.set_ylim(0, 1.9)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("share of starts")
    ax.set_title(f"detected period (tolerance 1e-7, up to {args.tail // 2})", fontsize=9)
    ax.legend(
        fontsize=8,
        loc="upper left",
        title=f"{threshold:.3f} = 3 x {spread:.4f}, the sd of one start's exponent",
        title_fontsize=8,
    )
    for ax in axes.ravel():
        ax.set_xlabel("learning rate η")
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"GD on f = 100 sin θ1 sin θ2: {len(lrs)} learning rates x {args.starts} starts θ0 ~ U[-π, π]² x {args.steps} "
        "steps in one program (float64)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


BALANCE_LRS = [0.03, 0.035, 0.04, 0.045, 0.05]


def balance(args, problem):
    """Both sides of the corrected eq. (10) on the empirical measure of each attractor (after the burn-in)."""
    res = ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": BALANCE_LRS},
        n_replicas=args.balance_starts,
        n_steps=args.steps,
        record_every=1,
        seed=args.seed,
        observables={"theta": ds.observables.trajectory()},
    )
    rows = []
    for lr in BALANCE_LRS:
        theta = res.theta.sel(lr=lr).values  # (replica, time, 2)
        window = theta[:, args.burn_in : -1].reshape(-1, 2)
        b = ds.measure.gradient_curvature_balance(f, jnp.asarray(window), lr)
        ends = np.asarray(jax.vmap(f)(jnp.asarray(theta[:, args.burn_in]))) - np.asarray(
            jax.vmap(f)(jnp.asarray(theta[:, -1]))
        )
        telescoped = float(np.mean(ends)) / ((args.steps - args.burn_in) * lr)  # = grad_sq - curvature, exactly
        rows.append((lr, b, telescoped))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10_000)
    parser.add_argument("--lr-points", type=int, default=45)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--tail", type=int, default=64, help="last values kept per orbit for the period")
    parser.add_argument("--fig4-steps", type=int, default=2000)
    parser.add_argument("--bifurcation-points", type=int, default=600)
    parser.add_argument("--balance-starts", type=int, default=256, help="starts per lr for the eq. (10) check")
    args = _cli.parse(parser, argv)
    problem = ds.problems.sin_product()

    started = time.perf_counter()
    fig, res4 = figure4(args, problem)
    fig.savefig(os.path.join(args.out, "invariant_sinsin_fig4.png"), dpi=110)
    ds.io.save(res4, os.path.join(args.results, "invariant_sinsin_fig4.nc"))
    sweep_started = time.perf_counter()
    res = sweep(args, problem)
    sweep_time = time.perf_counter() - sweep_started
    bif = bifurcation(args, problem)
    fig = sweep_figure(res, bif, args)
    fig.savefig(os.path.join(args.out, "invariant_sinsin_sweep.png"), dpi=110)
    ds.io.save(res.drop_vars("orbit"), os.path.join(args.results, "invariant_sinsin_sweep.nc"))

    print(f"sweep: {res.sizes['lr']} learning rates x {args.starts} starts x {args.steps} steps in {sweep_time:.1f} s")
    print(
        f"{'lr':>7} {'converged':>9} {'exponent (median)':>18} {'<f> (median)':>13} {'<|grad f|> 5/50/95%':>24} period"
    )
    for lr in res.lr.values:
        c = res.sel(lr=lr)
        g = np.quantile(c.mean_grad_norm.values, [0.05, 0.5, 0.95])
        periods, counts = np.unique(c.period.values, return_counts=True)
        top = periods[np.argmax(counts)]
        print(
            f"{lr:7.4f} {c.converged.mean().item():9.3f} {np.median(c.exponent.values):18.4f} "
            f"{np.median(c.mean_f.values):13.3f} {g[0]:8.2f} {g[1]:7.2f} {g[2]:7.2f} {top}"
        )
    print(
        "eq. (10), corrected: E|grad f|^2 = lr E[int (1-s) g^T H(theta - s lr g) g ds] on the attractor "
        f"({args.balance_starts} starts, steps {args.burn_in}..{args.steps}); the difference is exactly "
        "(f(theta_burn) - f(theta_n)) / (n lr)"
    )
    header = f"{'lr':>6} {'E|grad f|^2':>12} {'corrected':>10} {'ratio':>8} {'difference/telescoped':>22}"
    print(header + f" {'(lr/2)E[gHg]':>13} {'printed':>9}")
    for lr, b, telescoped in balance(args, problem):
        print(
            f"{lr:6.3f} {b.grad_sq:12.1f} {b.curvature:10.1f} {b.ratio:8.5f} {b.grad_sq - b.curvature:+11.3e}"
            f"/{telescoped:+.3e} {b.local:13.1f} {b.printed:9.1f}"
        )
    print(
        f"wrote {args.out}/invariant_sinsin_fig4.png, {args.out}/invariant_sinsin_sweep.png and "
        f"{args.results}/invariant_sinsin_*.nc in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
