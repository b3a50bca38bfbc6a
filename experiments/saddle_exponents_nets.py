"""Beyond seed 004: Lyapunov exponents of the full nonlinear SGD and Adam maps of u sigma(w x) at the saddle.

The phase theory linearises the net at w = u = 0 to the rank-1 saddle with chi = c0 x y (c0 = 1 for
tanh, 1/2 for swish) and predicts the top exponent max(Lambda_+, Lambda_-). Here the exponent of the
*full* update map is measured with ``dynsim.lyapunov.with_tangent`` (a tangent vector pushed by
``jax.linearize`` of the step, same minibatch) over a whole lr grid in one program:

* SGD started exactly at the saddle (the state stays there; the tangent feels the Jacobian at 0);
* SGD started near it (w, u ~ N(0, 1e-3^2)): a finite-time exponent of the nonlinear dynamics,
  which equals the linearised one where the saddle attracts (phase III) and not elsewhere;
* Adam started near it (its linearisation at the exact saddle divides by eps = 1e-8).

Runs whose parameters leave |theta| < 1e6 are frozen by the engine and left out; a learning rate
where more than half diverge gets no point.

Data: x ~ N(0, 1), y = mu x + (1 - mu) eps, eps ~ N(0, 4), mu = 0.1; S = 1, fresh samples; float64.

    python experiments/saddle_exponents_nets.py [--replicas 128] [--steps 4000]
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
import optax  # noqa: E402
import xarray as xr  # noqa: E402
from scipy import optimize  # noqa: E402

import dynsim as ds  # noqa: E402

MU = 0.1


def measure(dynamics, lrs, args, name: str):
    """Mean exponent per lr (NaN where more than half the runs diverged), its standard error (NaN with fewer
    than two finite runs), the number of finite runs per lr, and the simulation; ``name`` names its checkpoint."""
    res = ds.simulate(
        ds.lyapunov.with_tangent(dynamics, transient=args.transient),
        grid={"lr": lrs},
        n_replicas=args.replicas,
        n_steps=args.steps,
        seed=args.seed,
        observables={
            "le": ds.lyapunov.running_exponent(every_record=False),
            "norm": ds.observables.log_distance({"w": 0.0, "u": 0.0}),
            "diverged": ds.observables.diverged(bound=1e6),
        },
        checkpoint=_cli.checkpoint(args, f"saddle_exponents_nets_{name}"),
    )
    le = np.where(res.diverged.values, np.nan, res.le.values)  # diverged runs were frozen: no exponent
    n = np.sum(np.isfinite(le), axis=1)
    mean, se = np.full(len(le), np.nan), np.full(len(le), np.nan)
    kept = (n >= le.shape[1] // 2) & (n > 0)  # where every run diverged there is nothing to average
    mean[kept] = np.nanmean(le[kept], axis=1)
    spread = n >= 2
    se[spread] = np.nanstd(le[spread], axis=1, ddof=1) / np.sqrt(n[spread])
    return mean, se, n, res


def estimate(mean: float, se: float, finite: int, total: int) -> str:
    """``mean ± se``, or why a learning rate has no estimate."""
    if np.isfinite(mean):
        return f"{mean:+.4f} ± {se:.4f}"
    if finite == 0:
        return f"no finite estimate: all {total} replicas diverged"
    return f"no estimate: {total - finite} of {total} replicas diverged"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--transient", type=int, default=500)
    parser.add_argument("--lr-points", type=int, default=20)
    args = _cli.parse(parser, argv)

    lrs = np.linspace(0.05, 2.0, args.lr_points)
    adam_lrs = np.logspace(-4, -0.5, args.lr_points)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.9))
    saved = {}  # what the figure shows, for the results file
    for ax, activation in zip(axes[:2], ("tanh", "swish")):
        c0 = ds.problems.C0[activation]
        theory = ds.stability.saddle_exponents(lrs, [MU], c0=c0)
        top = np.maximum(theory.Lambda_plus.values[:, 0], theory.Lambda_minus.values[:, 0])
        phase = ds.stability.classify(
            theory.Lambda_plus.values[:, 0], theory.Lambda_minus.values[:, 0], theory.ms_minus.values[:, 0]
        )
        at = ds.problems.scalar_net(activation, init_std=0.0)
        near = ds.problems.scalar_net(activation, init_std=1e-3)
        le_at, se_at, n_at, _ = measure(ds.dynamics.sgd(at), lrs, args, f"sgd_{activation}_at_saddle")
        le_near, se_near, n_near, res_near = measure(ds.dynamics.sgd(near), lrs, args, f"sgd_{activation}_near")
        iii = phase == ds.stability.PHASES.index("III")
        saved.update(
            {
                f"{activation}_linearised": ("lr", top),
                f"{activation}_sgd_at_saddle": ("lr", le_at),
                f"{activation}_sgd_at_saddle_stderr": ("lr", se_at),
                f"{activation}_sgd_near": ("lr", le_near),
                f"{activation}_sgd_near_stderr": ("lr", se_near),
                f"{activation}_sgd_near_diverged": ("lr", res_near.diverged.mean("replica").values),
            }
        )

        def top_exponent(lr, c0=c0):
            t = ds.stability.saddle_exponents([lr], [MU], c0=c0)
            return max(float(t.Lambda_plus.values[0, 0]), float(t.Lambda_minus.values[0, 0]))

        # phase III's edges: the roots of max(Lambda+-) between the grid points where the phase changes
        changes = np.flatnonzero(iii[1:] != iii[:-1])
        roots = {i: optimize.brentq(top_exponent, lrs[i], lrs[i + 1], xtol=1e-6) for i in changes}
        bounds = ([lrs[0]] if iii[0] else []) + list(roots.values()) + ([lrs[-1]] if iii[-1] else [])
        for k, (lo, hi) in enumerate(zip(bounds[::2], bounds[1::2])):
            ax.axvspan(
                lo, hi, color="tab:green", alpha=0.15, lw=0, label=None if k else "phase III (theory; edges: roots)"
            )
        ax.plot(lrs, top, "k-", lw=2, label="linearised: max(Λ+, Λ-) (quadrature)")
        ax.errorbar(lrs, le_at, yerr=2 * se_at, fmt="o", ms=4, label="SGD map at the saddle")
        ax.errorbar(
            lrs,
            le_near,
            yerr=2 * se_near,
            fmt="s",
            ms=4,
            mfc="none",
            label="SGD from |θ0| ~ 1e-3 (runs that did not\ndiverge; none where over half did)",
        )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("learning rate λ")
        ax.set_ylabel("top Lyapunov exponent per step")
        ax.set_title(f"u {activation}(w x), c0 = {c0}, μ = {MU}", fontsize=10)
        low_y, high_y = ax.get_ylim()
        ax.set_ylim(low_y, low_y + (high_y - low_y) / 0.6)  # the upper 40% stays free for the legend
        handles, labels = ax.get_legend_handles_labels()
        diverged = res_near.diverged.values.sum(axis=1)  # per lr, of args.replicas runs from 1e-3
        if diverged.any():  # their share on a second axis, with 95% Wilson intervals
            share_ax = ax.twinx()
            low, high = ds.stability.wilson_interval(diverged, args.replicas, 0.95)
            share = diverged / args.replicas
            bars = share_ax.errorbar(
                lrs,
                share,
                yerr=(np.clip(share - low, 0, None), np.clip(high - share, 0, None)),
                fmt="x:",
                ms=5,
                lw=1,
                color="tab:red",
                alpha=0.8,
            )
            share_ax.set_ylim(-0.02, -0.02 + 1.04 / 0.6)  # the upper 40% stays free for the legend
            share_ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
            share_ax.set_ylabel("share of runs from 1e-3 that diverged (|θ| > 1e6)", color="tab:red", fontsize=9)
            share_ax.tick_params(axis="y", colors="tab:red", labelsize=8)
            handles.append(bars)
            labels.append("share diverged from 1e-3 (right axis,\n95% Wilson intervals)")
        ax.legend(handles, labels, fontsize=8, loc="upper left")
        z = (le_at - top) / se_at
        scored = np.isfinite(z)
        converged = (res_near.norm.isel(time=-1) if "time" in res_near.norm.dims else res_near.norm) < -20
        print(
            f"{activation}: at the saddle, max |z| against the linearisation over {int(scored.sum())} lrs = "
            + (f"{np.abs(z[scored]).max():.2f}" if scored.any() else "none (no finite estimate)")
            + ("" if scored.all() else f" ({len(lrs) - int(scored.sum())} of {len(lrs)} lrs without an estimate)")
        )
        for lr, t, a, sa, na, n, sn, nn, conv in zip(
            lrs[::4],
            top[::4],
            le_at[::4],
            se_at[::4],
            n_at[::4],
            le_near[::4],
            se_near[::4],
            n_near[::4],
            converged.mean("replica").values[::4],
        ):
            print(
                f"  lr {lr:.3f}: linearised {t:+.4f}, at saddle {estimate(a, sa, na, args.replicas)}, "
                f"from 1e-3 {estimate(n, sn, nn, args.replicas)} (share at |θ| < e^-10 at the end: {conv:.2f})"
            )
        print(f"  diverged from 1e-3 (|θ| > 1e6): {res_near.diverged.mean('replica').values.round(2).tolist()}")
        if iii.any():  # the upper edge of phase III: the first of Lambda_+- to cross 0 above the last III grid point
            last = int(np.flatnonzero(iii).max())
            if last + 1 < len(lrs):
                print(f"  phase III (theory) ends at lr = {roots[last]:.4f} (root of max(Λ+, Λ-))")
    ax = axes[2]
    for activation, marker in (("tanh", "o"), ("swish", "s")):
        near = ds.problems.scalar_net(activation, init_std=1e-3)
        le, se, n, _ = measure(ds.dynamics.from_optax(near, optax.adam), adam_lrs, args, f"adam_{activation}_near")
        ax.errorbar(adam_lrs, le, yerr=2 * se, fmt=marker + "-", ms=4, label=f"Adam, {activation}")
        saved.update({f"{activation}_adam_near": ("adam_lr", le), f"{activation}_adam_near_stderr": ("adam_lr", se)})
        shown = [0, int(np.argmin(np.abs(adam_lrs - 1e-2))), len(adam_lrs) - 1]
        print(
            f"Adam, {activation}: exponents from 1e-3 at lr 1e-4 / 1e-2 / 0.3: "
            + " / ".join(
                f"{le[i]:+.4f}" if np.isfinite(le[i]) else estimate(le[i], se[i], n[i], args.replicas) for i in shown
            )
        )
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("Adam learning rate")
    ax.set_ylabel("top Lyapunov exponent per step (state: θ, m, v)")
    ax.set_title("Adam from |θ0| ~ 1e-3 (no 1-D theory)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "Top Lyapunov exponent of the full update map near the saddle of u σ(w x), "
        f"{args.replicas} replicas x {args.steps} steps (± 2 s.e.)",
        fontsize=10,
    )
    path = _cli.save_figure(fig, args, "saddle_exponents_nets.png")
    results = os.path.join(args.results, "saddle_exponents_nets.nc")
    attrs = {"mu": MU, "replicas": args.replicas, "steps": args.steps, "transient": args.transient, "seed": args.seed}
    ds.io.save(xr.Dataset(saved, coords={"lr": lrs, "adam_lr": adam_lrs}, attrs=attrs), results)
    print(f"wrote {path} and {results}")


if __name__ == "__main__":
    main()
