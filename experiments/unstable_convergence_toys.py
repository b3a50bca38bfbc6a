"""Unstable convergence of GD on the toys of seed 001 (Examples 1-3, Theorem 1), in float64.

* **Example 1** - ``f = 20 t1^2 + t2^2`` (``L = 40``) from ``(1, 1)`` at ``lr = 2/39, 2/40, 2/41``:
  GD converges iff ``lr < 2/L``; ``|t1|`` against its closed form ``|1 - 40 lr|^t``.
* **Example 2** - the same quadratic flattened, ``tanh(20 t1^2 + t2^2)``, at ``lr = 2/39``: the
  minimum is linearly unstable, yet GD stays bounded on the 2-cycle ``t1 = +-a``,
  ``tanh(20 a^2) = 1/sqrt(40)``, where the loss stays at ``1/sqrt(40)``, ``RP = 0`` and
  ``(lr/2) L(t; lr grad f) = 1`` exactly, while the sharpness at the iterates is only
  ``35.067 < 2/lr = 39`` (the segment between them crosses 0, where it is 40). Basin:
  ``--starts`` starts uniform on ``[-0.5, 0.5]^2``, the share on the cycle and at the minimum.
* **Example 3** - one neuron fitting ``(x, y) = (1, 0)``, ``(t1 sigma(t2))^2``, from ``(13, 0.01)`` at
  ``lr = 2/150``: the linear network diverges, the tanh network travels along the valley of
  minima to one whose sharpness ``2 t1^2`` is just below ``2/lr``.
* **Theorem 1 and the family** ``x -> x (1 - lr L sech^2(L x^2 / 2))`` (GD on ``tanh(20 x^2)``, the
  ``t1`` map of Example 2) over ``lr L in [1.5, 5]``: bifurcation diagram, top Lyapunov exponent
  against its closed form (fixed point ``log|1 - lr L|``; 2-cycle ``log|-1 + 8 s artanh s|``,
  ``s = sqrt(1 - 2/(lr L))``, up to the period doubling at ``lr L = 2.5958``), and the share of
  starts that converge to the minimum: none once ``lr L > 2`` (Thm 1).

    python experiments/unstable_convergence_toys.py [--starts 100000] [--family-points 351]
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

L = 40.0
P = np.diag([40.0, 2.0])
CYCLE_T = 1 / np.sqrt(40)  # tanh(20 a^2) on the 2-cycle at lr = 2/39
CYCLE_A = np.sqrt(np.arctanh(CYCLE_T) / 20)


def family_exponent(lrL):
    """Closed-form exponent of ``x -> x (1 - lrL sech^2(L x^2/2))`` on its attractor, for ``lrL < 2.5958``."""
    lrL = np.asarray(lrL, float)
    out = np.full(lrL.shape, np.nan)
    fixed = lrL < 2
    out[fixed] = np.log(np.abs(1 - lrL[fixed]))
    cycle = (lrL > 2) & (lrL < 2.59584)
    s = np.sqrt(1 - 2 / lrL[cycle])
    out[cycle] = np.log(np.abs(-1 + 8 * s * np.arctanh(s)))
    return out


def gd_observables(sharpness: bool = True) -> dict:
    obs = {
        "theta": ds.observables.trajectory(),
        "loss": ds.observables.loss(),
        "progress": ds.observables.progress(),
        "diverged": ds.observables.diverged(bound=1e12),
    }
    if sharpness:
        obs["sharpness"] = ds.observables.sharpness(n_iter=2)
    return obs


def examples(args) -> dict[str, xr.Dataset]:
    run = dict(n_replicas=1, seed=args.seed, record_every=1)
    out = {}
    out["ex1"] = ds.simulate(
        ds.dynamics.gd(ds.problems.quadratic(P, theta0=(1.0, 1.0))),
        grid={"lr": [2 / 39, 2 / 40, 2 / 41]},
        n_steps=200,
        observables={"theta": ds.observables.trajectory(), "diverged": ds.observables.diverged()},
        **run,
    )
    for name, problem in [
        ("ex2_quadratic", ds.problems.quadratic(P, theta0=args.ex2_start)),
        ("ex2_tanh", ds.problems.flattened_quadratic(P, theta0=args.ex2_start)),
    ]:
        out[name] = ds.simulate(
            ds.dynamics.gd(problem), grid={"lr": [2 / 39]}, n_steps=300, observables=gd_observables(), **run
        )
    for activation in ("linear", "tanh"):
        out[f"ex3_{activation}"] = ds.simulate(
            ds.dynamics.gd(ds.problems.single_neuron(activation)),
            grid={"lr": [2 / 150]},
            n_steps=args.ex3_steps,
            observables=gd_observables(),
            **run,
        )
    return out


def basin(args, box: float = 0.5) -> xr.Dataset:
    """Example 2 from ``--starts`` starts on ``[-box, box]^2``: distance to the 2-cycle and to the minimum, and
    (for the larger box) the share frozen on the plateau, where ``|grad f|`` underflows (``sech^2(20 t1^2)``)."""
    on_cycle = ds.observables.Observable(
        "cycle_distance",
        record=lambda v: jnp.maximum(jnp.abs(jnp.abs(v.params[0]) - CYCLE_A), jnp.abs(v.params[1])),
        every_record=False,
    )
    problem = ds.problems.flattened_quadratic(P, box=box)
    frozen = ds.observables.Observable(
        "frozen",
        record=lambda v: jnp.linalg.norm(jax.grad(lambda q: problem.loss(q, None, {}))(v.params)) < 1e-12,
        every_record=False,
    )
    alternates = ds.observables.last_values(2, lambda th: th[0])
    return ds.simulate(
        ds.dynamics.gd(problem),
        grid={"lr": [2 / 39]},
        n_replicas=args.starts,
        n_steps=args.basin_steps,
        seed=args.seed,
        observables={
            "cycle_distance": on_cycle,
            "last": alternates,
            "at_minimum": ds.observables.converged(np.zeros(2), 1e-6),
            "near_zero": ds.observables.Observable(
                "near_zero", record=lambda v: jnp.linalg.norm(v.params) < 1e-6, every_record=False
            ),
            "frozen": frozen,
            "on_plateau": ds.observables.Observable(
                "on_plateau", record=lambda v: jnp.abs(v.params[0]) > 0.5, every_record=False
            ),
        },
        checkpoint=_cli.checkpoint(args, f"unstable_convergence_basin_{box:g}"),
    )


def family(args) -> xr.Dataset:
    lrL = np.linspace(1.5, 5.0, args.family_points)
    dyn = ds.lyapunov.with_tangent(ds.dynamics.gd(ds.problems.flattened_quadratic(L, box=0.5)), transient=args.burn_in)
    res = ds.simulate(
        dyn,
        grid={"lr": lrL / L},
        n_replicas=args.family_starts,
        n_steps=args.family_steps,
        seed=args.seed + 1,
        observables={
            "exponent": ds.lyapunov.running_exponent(every_record=False),
            "orbit": ds.observables.last_values(args.tail, lambda th: th[0]),
            "at_minimum": ds.observables.converged(np.zeros(1), 1e-6),
        },
        checkpoint=_cli.checkpoint(args, "unstable_convergence_family"),
    )
    return res.assign_coords(lrL=("lr", lrL))


def figure(ex: dict, bas: xr.Dataset, fam: xr.Dataset, args):
    fig, grid = plt.subplots(4, 2, figsize=(12, 15.5))
    axes = grid.ravel().reshape(2, 4)  # panels in reading order: axes[0, :] first, then axes[1, :]
    t1 = np.arange(201)

    ax = axes[0, 0]
    res = ex["ex1"]
    for i, lr in enumerate(res.lr.values):
        th = res.theta.values[i, 0, :, 0]
        ax.semilogy(res.time.values, np.abs(th), color=f"C{i}", label=f"lr = 2/{2 / lr:.0f}")
        ax.semilogy(t1, np.abs(1 - 40 * lr) ** t1, "k:", lw=1)
    ax.set_title(r"Ex. 1: $20 t_1^2 + t_2^2$ (L = 40); dotted: $|1 - 40\,\mathrm{lr}|^t$")
    ax.set_ylabel("$|t_1|$")
    ax.legend(fontsize=9)

    ax = axes[0, 1]
    for name, label in [("ex2_quadratic", "$20 t_1^2 + t_2^2$"), ("ex2_tanh", r"$\tanh(20 t_1^2 + t_2^2)$")]:
        r = ex[name].isel(lr=0, replica=0)
        stop = int(r.diverged_step) if int(r.diverged_step) >= 0 else None
        ax.semilogy(r.time.values[:stop], r.loss.values[:stop], label=label)
    ax.axhline(CYCLE_T, color="k", ls="--", lw=1, label=r"$1/\sqrt{40}$ (loss on the 2-cycle)")
    ax.set_title("Ex. 2: lr = 2/39 > 2/L")
    ax.set_ylabel(r"$f(\theta_t)$")
    ax.legend(fontsize=9)

    ax = axes[0, 2]
    r = ex["ex2_tanh"].isel(lr=0, replica=0)
    lr = 2 / 39
    ax.plot(r.time, r.progress_relative_progress, label="RP (Def. 1)")
    ax.plot(
        r.time,
        lr / 2 * r.progress_directional_smoothness,
        label=r"(lr/2) $L(\theta_t; \mathrm{lr}\,\nabla f)$ (Def. 2)",
    )
    ax.plot(r.time, lr / 2 * r.sharpness, label=r"(lr/2) $\lambda_{max}(\nabla^2 f(\theta_t))$")
    ax.axhline(lr / 2 * 40, color="gray", ls=":", label=r"(lr/2) $\lambda_{max}$ at 0 = 40/39")
    ax.set_ylim(-1.2, 1.3)
    ax.set_ylabel("RP, (lr/2) L, (lr/2) $\\lambda_{max}$")
    ax.set_title("Ex. 2, tanh: RP -> 0, (lr/2) L -> 1, sharpness stays below 2/lr")
    ax.legend(fontsize=9)

    ax = axes[0, 3]
    for activation in ("linear", "tanh"):
        r = ex[f"ex3_{activation}"].isel(lr=0, replica=0)
        stop = int(r.diverged_step) if int(r.diverged_step) >= 0 else None
        ax.semilogy(
            r.time.values[:stop],
            r.loss.values[:stop],
            label=f"{activation} ({'converges' if stop is None else 'diverges at step ' + str(stop)})",
        )
    ax.set_title(r"Ex. 3: $(t_1 \sigma(t_2))^2$, $\theta_0$ = (13, 0.01), lr = 2/150")
    ax.set_ylabel(r"$f(\theta_t)$")
    ax.legend(fontsize=9)

    ax = axes[1, 0]
    r = ex["ex3_tanh"].isel(lr=0, replica=0)
    ax.plot(r.time, r.sharpness, label=r"sharpness $\lambda_{max} = 2 t_1^2$ on the valley")
    ax.axhline(150, color="k", ls="--", lw=1, label="2/lr = 150")
    ax.set_ylabel(r"$\lambda_{max}(\nabla^2 f(\theta_t))$")
    ax2 = ax.twinx()
    ax2.plot(r.time, r.progress_relative_progress, color="C1", lw=0.8, label="RP")
    ax2.set_ylim(-1.2, 1.5)
    ax2.set_ylabel("RP", color="C1")
    final = r.isel(time=-1)
    ax.set_title(f"Ex. 3, tanh: $t_1$ -> {float(final.theta[0]):.4f}, sharpness {float(final.sharpness):.2f} < 150")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, args.ex3_steps)
    ax.legend(fontsize=9, loc="upper right")

    lrL = fam.lrL.values
    ax = axes[1, 1]
    orbit = fam.orbit.values  # (lr, replica, lag)
    for rep in range(min(4, orbit.shape[1])):
        ax.scatter(np.repeat(lrL, orbit.shape[2]), orbit[:, rep].ravel(), s=0.2, c="k", alpha=0.4)
    ax.set_ylabel(f"x, last {args.tail} iterates")
    ax.set_title(r"bifurcation diagram of $x \to x\,(1 - \mathrm{lr}\,L\,\mathrm{sech}^2(L x^2/2))$")

    ax = axes[1, 2]
    le = np.where(np.isfinite(fam.exponent.values), fam.exponent.values, np.nan)
    ax.fill_between(
        lrL, np.nanquantile(le, 0.05, axis=1), np.nanquantile(le, 0.95, axis=1), alpha=0.3, label="5-95% over starts"
    )
    ax.plot(lrL, np.nanmedian(le, axis=1), "o", ms=2, label="median (tangent method)")
    fine = np.linspace(1.5, 5.0, 3000)
    ax.plot(fine, family_exponent(fine), "k--", lw=1, label="closed form (fixed point, 2-cycle)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylim(-3, 1.2)
    ax.set_ylabel("top Lyapunov exponent")
    ax.set_title(f"{len(lrL)} step sizes x {fam.sizes['replica']} starts x {args.family_steps} steps")
    ax.legend(fontsize=9)

    ax = axes[1, 3]
    share = fam.at_minimum.mean("replica").values
    ax.plot(lrL, share, "o-", ms=2, label=f"family: share of {fam.sizes['replica']} starts at 0 (|x| < 1e-6)")
    ax.axvline(2, color="k", ls="--", lw=1, label="lr L = 2")
    cyc = bas.sel(lr=2 / 39)
    on = float((cyc.cycle_distance < 1e-8).mean())
    at = float(cyc.at_minimum.mean())
    ax.plot(
        [80 / 39], [at], "s", color="C3", label=f"Ex. 2 (2-D), lr L = 80/39: {at:.0%} at 0, {on:.2%} on the 2-cycle"
    )
    ax.set_ylabel("share converged to the minimum")
    ax.set_title(r"Thm 1: GD never settles where $\lambda_{max}$ > 2/lr")
    ax.legend(fontsize=8)
    for ax in axes[1, 1:]:
        ax.set_xlabel("lr L")
    for ax in (*axes[0], axes[1, 0]):
        ax.set_xlabel("step t")
    fig.suptitle("Unstable convergence of GD on the toys of seed 001 (float64)\n", fontsize=12)
    return fig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=100_000, help="starts for the basin of Example 2")
    parser.add_argument("--basin-steps", type=int, default=3000)
    parser.add_argument("--ex2-start", type=float, nargs=2, default=(0.3, 0.2))
    parser.add_argument("--ex3-steps", type=int, default=1000)
    parser.add_argument("--family-points", type=int, default=351)
    parser.add_argument("--family-starts", type=int, default=64)
    parser.add_argument("--family-steps", type=int, default=8000)
    parser.add_argument("--burn-in", type=int, default=3000)
    parser.add_argument("--tail", type=int, default=64)
    args = _cli.parse(parser, argv)
    started = time.perf_counter()
    with jax.enable_x64(True):
        ex = examples(args)
        bas = basin(args)
        wide = basin(args, box=2.0)
        fam = family(args)
    path = _cli.save_figure(figure(ex, bas, fam, args), args, "unstable_convergence_toys.png")
    for name, res in ex.items():
        ds.io.save(res, os.path.join(args.results, f"unstable_convergence_{name}.nc"))
    ds.io.save(bas.drop_vars("last"), os.path.join(args.results, "unstable_convergence_basin.nc"))
    ds.io.save(wide.drop_vars("last"), os.path.join(args.results, "unstable_convergence_basin_wide.nc"))
    ds.io.save(fam.drop_vars("orbit"), os.path.join(args.results, "unstable_convergence_family.nc"))

    ex1 = ex["ex1"]
    print("Example 1, |t1| after 200 steps (closed form |1 - 40 lr|^200):")
    for i, lr in enumerate(ex1.lr.values):
        print(f"  lr = 2/{2 / lr:.0f}: {abs(ex1.theta.values[i, 0, -1, 0]):.6e} ({abs(1 - 40 * lr) ** 200:.6e})")
    r = ex["ex2_tanh"].isel(lr=0, replica=0, time=-1)
    print(
        f"Example 2 (tanh), after 300 steps: |t1| = {abs(float(r.theta[0])):.10f} (a = {CYCLE_A:.10f}), "
        f"f = {float(r.loss):.10f} (1/sqrt(40) = {CYCLE_T:.10f}), RP = {float(r.progress_relative_progress):.2e}, "
        f"L_dir = {float(r.progress_directional_smoothness):.6f} (2/lr = 39), sharpness = {float(r.sharpness):.4f}"
    )
    print(
        f"  basin, {args.starts} starts on [-0.5, 0.5]^2, {args.basin_steps} steps: "
        f"{float((bas.cycle_distance < 1e-8).mean()):.4%} on the 2-cycle, {float(bas.at_minimum.mean()):.4%} at 0"
    )
    print(
        f"  basin, {args.starts} starts on [-2, 2]^2, {args.basin_steps} steps: "
        f"{float((wide.cycle_distance < 1e-8).mean()):.4%} on the 2-cycle, {float(wide.on_plateau.mean()):.4%} still "
        f"on the plateau (|t1| > 0.5; {float(wide.frozen.mean()):.4%} frozen there, |grad f| < 1e-12), "
        f"{float(wide.near_zero.mean()):.4%} within 1e-6 of 0, "
        f"{float(wide.at_minimum.mean()):.4%} converged to 0"
    )
    for activation in ("linear", "tanh"):
        r = ex[f"ex3_{activation}"].isel(lr=0, replica=0)
        step = int(r.diverged_step)  # -1: the run never diverged
        print(
            f"Example 3 ({activation}): {'never diverged' if step < 0 else f'diverged at step {step}'}; "
            f"last theta = {r.theta.values[-1]}, "
            f"sharpness = {float(r.sharpness[-1]):.3f}, RP = {float(r.progress_relative_progress[-1]):.4f}"
        )
    lrL = fam.lrL.values
    le = np.nanmedian(np.where(np.isfinite(fam.exponent.values), fam.exponent.values, np.nan), axis=1)
    theory = family_exponent(lrL)
    ok = np.isfinite(theory) & (np.abs(lrL - 2) > 0.02) & (np.abs(lrL - 2.59584) > 0.02)
    print(
        f"family: median exponent vs closed form on {ok.sum()} step sizes away from the bifurcations: "
        f"max |difference| = {np.nanmax(np.abs(le[ok] - theory[ok])):.2e}; share at 0 for lr L > 2: "
        f"{fam.at_minimum.values[lrL > 2].mean():.4f}, for lr L < 2: {fam.at_minimum.values[lrL < 2].mean():.4f}"
    )
    print(f"wrote {path} and {args.results}/unstable_convergence_*.nc in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
