"""Clipping under heavy-tailed noise: rates and dimension (seed 002, thesis Thm 4.4.2, Cor 4.5.1, Thm 4.5.1).

``f(x) = |x|^2 / 2`` (``mu = 1``) on the box ``[-r, r]^d``, stochastic gradients ``g = x + s xi``
with ``xi_i`` i.i.d. symmetric Pareto of tail index ``nu = 1.75``: infinite variance, a finite
``alpha``-moment for ``alpha = 1.5``. Every method takes the theorems' steps
``eta_k = 4 / (mu (k + 1))``, projects onto the box, and outputs the weighted average
``xbar_k = sum_j j x_{j-1} / sum_j j``:

* **proj-GClip** with ``tau_k = G k^(1/alpha)`` (Thm 4.4.2; the statement's ``k^(alpha-1)`` is a
  misprint its proof does not use), for two valid moment bounds ``G^alpha >= sup_x E|g|^alpha``:
  the thesis's Lemma 4.7.4 bound ``G^alpha = d^(alpha/2) |B|_alpha^alpha`` (which gives Cor
  4.5.1), and the sharper ``G^alpha = |B|_alpha^alpha`` (``|v|_2 <= |v|_alpha`` for
  ``alpha <= 2``, so ``E|g|_2^alpha <= sum_i E|g_i|^alpha``);
* **CClip** with ``tau_{k,i} = B_i k^(1/alpha)`` (Thm 4.5.1);
* **SGD**, the same steps and projection without clipping (Remark 4.4.1's foil).

``B_i^alpha = sup_{|x_i| <= r} E|x_i + s xi_i|^alpha = E|r + s xi|^alpha`` (convex and even in
``x_i``) by quadrature. The problem is scaled with ``d`` (``r, s, x_0`` by ``d^(-1/2)``) so that
``|B|_2`` stays fixed: the CClip bound is then the same for every ``d``, GClip's grows. The figure
shows ``E f(xbar_k)`` against ``k`` (each ``d``, each method, with the theorem bounds) and against
``d`` at the last step, with standard errors over the replicas.

    python experiments/heavy_tail_rates.py [--dims 1 4 16 64 256] [--n 1000] [--steps 4000]
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import xarray as xr  # noqa: E402
from scipy import integrate  # noqa: E402

import dynsim as ds  # noqa: E402

ALPHA, NU, MU = 1.5, 1.75, 1.0
RADIUS, SCALE, START = 4.0, 1.0, 1.0  # box half-width, noise scale and start per coordinate at d = 1
RATE = 2 * (ALPHA - 1) / ALPHA  # the theorems' exponent: E f(xbar_k) <= C / (k + 1)^RATE


def coordinate_bound(radius: float, scale: float, alpha: float = ALPHA, nu: float = NU) -> float:
    """``B = (E|radius + scale xi|^alpha)^(1/alpha)`` for symmetric Pareto ``xi`` of index ``nu``, by quadrature."""

    def density(y):
        return nu / 2 * (1 + abs(y)) ** (-nu - 1)

    def integrand(y):
        return abs(radius + scale * y) ** alpha * density(y)

    kink = -radius / scale
    parts = [(-np.inf, kink), (kink, 0.0), (0.0, np.inf)] if kink < 0 else [(-np.inf, 0.0), (0.0, np.inf)]
    total = sum(integrate.quad(integrand, a, b, limit=200)[0] for a, b in parts)
    return total ** (1 / alpha)


def gclip(learning_rate, bound, alpha, radius):
    """proj-GClip of Thm 4.4.2: ``eta_k = learning_rate / (k + 1)``, ``tau_k = bound k^(1/alpha)``, box projection."""
    lr, tau = ds.optim.strongly_convex_clip_schedules(learning_rate, bound, alpha)
    return optax.chain(ds.optim.clipped_sgd(lr, tau), _box(radius))


def cclip(learning_rate, bound, alpha, radius):
    """Projected CClip of Thm 4.5.1: the same steps, ``tau_{k,i} = bound k^(1/alpha)`` per coordinate."""
    lr, tau = ds.optim.strongly_convex_clip_schedules(learning_rate, bound, alpha)
    return optax.chain(ds.optim.coordinate_clipped_sgd(lr, tau), _box(radius))


def sgd(learning_rate, radius):
    """Projected SGD with the same steps, no clipping."""
    lr, _ = ds.optim.strongly_convex_clip_schedules(learning_rate, 1.0, 2.0)  # only the step is used
    return optax.chain(optax.sgd(lr), _box(radius))


def _box(radius):
    return ds.optim.project(lambda p: optax.projections.projection_box(p, -radius, radius))


def run_dimension(d: int, args) -> xr.Dataset:
    """Every method at dimension ``d``: ``E f(xbar_k)`` over ``args.n`` replicas, recorded along the run."""
    shrink = d**-0.5
    radius, scale = RADIUS * shrink, SCALE * shrink
    b_i = coordinate_bound(radius, scale)  # = coordinate_bound(RADIUS, SCALE) / sqrt(d)
    b_alpha = d ** (1 / ALPHA) * b_i  # |B|_alpha
    problem = ds.problems.quadratic(np.full(d, MU), theta0=np.full(d, START * shrink))
    noise = [ds.dynamics.pareto_noise(scale, NU)]
    hp = {"lr": 4 / MU, "radius": radius}
    methods = {"SGD": (sgd, {}), "GClip, G from Lemma 4.7.4": (gclip, {"bound": d**0.5 * b_alpha, "alpha": ALPHA})}
    for c in args.threshold_scales:
        tag = "" if c == 1 else f", tau x {c:g}"
        methods[f"GClip, G = |B|_alpha{tag}"] = (gclip, {"bound": c * b_alpha, "alpha": ALPHA})
        methods[f"CClip{tag}"] = (cclip, {"bound": c * b_i, "alpha": ALPHA})
    loss = ds.observables.iterate_average(lambda x: 0.5 * MU * (x @ x))
    out = []
    for name, (make, extra) in methods.items():
        dyn = ds.dynamics.from_optax(problem, make, batch_size=None, noise=noise)
        res = ds.simulate(
            dyn,
            grid={k: [v] for k, v in {**hp, **extra}.items()},
            n_replicas=args.n,
            n_steps=args.steps,
            record_every=args.steps // 40,
            seed=args.seed,
            observables={"f": loss, "diverged": ds.observables.diverged()},
            checkpoint=_cli.checkpoint(args, f"heavy_tail_rates_d{d}_{name}"),
        )
        f = res.f.squeeze([k for k in res.f.dims if k not in ("replica", "f_step")], drop=True)
        n_diverged = int(res.diverged.values.sum())
        out.append(
            xr.Dataset(
                {
                    "mean": f.mean("replica"),
                    "stderr": f.std("replica") / np.sqrt(args.n),
                    "diverged": n_diverged,
                }
            )
        )
    ds_d = xr.concat(out, dim=xr.DataArray(list(methods), dims="algorithm", name="algorithm"))
    ds_d = ds_d.rename({"f_step": "k"})
    ds_d["bound_gclip_lemma"] = 16 * (d**0.5 * b_alpha) ** 2 / (MU * (ds_d.k + 1) ** RATE)
    ds_d["bound_gclip_sharp"] = 16 * b_alpha**2 / (MU * (ds_d.k + 1) ** RATE)
    ds_d["bound_cclip"] = 16 * (d**0.5 * b_i) ** 2 / (MU * (ds_d.k + 1) ** RATE)
    return ds_d.expand_dims(d=[d])


def slope(k, y, tail: float = 0.5) -> float:
    """Least-squares slope of ``log y`` on ``log k`` over the last ``tail`` of the ``k`` range (in log k)."""
    k, y = np.asarray(k, float), np.asarray(y, float)
    keep = np.log(k) >= np.log(k[0]) + (1 - tail) * (np.log(k[-1]) - np.log(k[0]))
    return float(np.polyfit(np.log(k[keep]), np.log(y[keep]), 1)[0])


# coincident series stay visible: each method its own dash pattern, width and marker (markers staggered along k)
STYLES = [
    dict(color="tab:gray", ls="-", lw=3.5, alpha=0.45, marker=None),
    dict(color="tab:red", ls="--", lw=1.6, marker="x", ms=6),
    dict(color="tab:orange", ls=":", lw=2.2, marker="+", ms=8),
    dict(color="tab:blue", ls="-", lw=1.0, marker="o", ms=5, mfc="none"),
    dict(color="goldenrod", ls="-.", lw=1.4, marker="s", ms=5, mfc="none"),
    dict(color="tab:cyan", ls=(0, (5, 1, 1, 1, 1, 1)), lw=1.2, marker="D", ms=5, mfc="none"),
]
BOUND_STYLES = [
    ("bound_cclip", "CClip bound (Thm 4.5.1)", dict(color="tab:blue", ls="--", lw=1)),
    ("bound_gclip_sharp", "GClip bound (Thm 4.4.2), G = |B|_alpha", dict(color="tab:orange", ls=(0, (1, 1)), lw=1.6)),
    ("bound_gclip_lemma", "GClip bound, G from Lemma 4.7.4", dict(color="tab:red", ls=(0, (6, 3)), lw=0.8)),
]


def coincident(values: dict[str, np.ndarray]) -> list[list[str]]:
    """Groups (two or more) of series that agree to 6 digits (float32 runs) at every point."""
    groups: list[list[str]] = []
    for name, v in values.items():
        for g in groups:
            if np.allclose(values[g[0]], v, rtol=1e-6, atol=0):
                g.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def _coincidence_note(groups: list[list[str]], tags: dict[str, str]) -> str:
    return "; ".join(" = ".join(tags[m] for m in g) for g in groups) if groups else "none"


def figure(result: xr.Dataset):
    """``E f(xbar_k)`` against ``k`` at the smallest and largest ``d`` with the theorems' bounds, and against ``d``
    at the last ``k``; standard errors over the replicas as bars; identical series named under each panel."""
    methods = list(result.algorithm.values)
    tags = {m: f"({chr(ord('a') + i)})" for i, m in enumerate(methods)}
    tags.update({var: f"({'I' * (j + 1)})" for j, (var, _, _) in enumerate(BOUND_STYLES)})
    k = result.k.values
    last = result.isel(k=-1)
    styles = dict(zip(methods, STYLES))
    fig = plt.figure(figsize=(12, 6.6))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 0.27])
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    legend_ax = fig.add_subplot(grid[1, :])  # the legend's own row: nothing hidden under it
    legend_ax.axis("off")
    for d, ax in zip([result.d.values[0], result.d.values[-1]], axes[:2]):
        row = result.sel(d=d)
        for i, m in enumerate(methods):
            ax.errorbar(
                k,
                row["mean"].sel(algorithm=m),
                yerr=row["stderr"].sel(algorithm=m),
                label=f"{tags[m]} {m}",
                markevery=(i, len(methods)),
                elinewidth=0.6,
                **styles[m],
            )
        for j, (var, label, st) in enumerate(BOUND_STYLES):
            ax.plot(k, row[var], label=f"({'I' * (j + 1)}) {label}", **st)
        curves = {m: row["mean"].sel(algorithm=m).values for m in methods}
        curves.update({var: row[var].values for var, _, _ in BOUND_STYLES})
        ax.set(xscale="log", yscale="log", xlabel="iteration k", ylabel="E f(xbar_k) (mean ± s.e.)")
        ax.set_title(
            f"d = {d}; identical curves (to 6 digits):\n{_coincidence_note(coincident(curves), tags)}", fontsize=9
        )
    ax = axes[2]
    for m in methods:
        st = dict(styles[m])
        st["marker"] = st["marker"] or "o"
        ax.errorbar(result.d, last["mean"].sel(algorithm=m), yerr=last["stderr"].sel(algorithm=m), **st)
    ax.set(xscale="log", yscale="log", xlabel="dimension d (|B|_2 fixed)", ylabel=f"E f(xbar_k), k = {k[-1]}")
    low, high = float(last.bound_cclip.min()), float(last.bound_gclip_lemma.max())
    notes = []
    for d in result.d.values:
        points = {m: last["mean"].sel(algorithm=m, d=d).values for m in methods}
        notes.append(f"d = {d}: {_coincidence_note(coincident(points), tags)}")
    ax.set_title(f"error against dimension\n(bounds {low:.2g} to {high:.2g}, off the axes)", fontsize=9)
    legend_ax.text(
        0.5,
        0.0,
        "identical points in the right panel (to 6 digits; the same noise draws; styles as in the legend): "
        + "; ".join(notes),
        transform=legend_ax.transAxes,
        fontsize=8,
        ha="center",
        va="bottom",
        wrap=True,
    )
    handles, labels = axes[0].get_legend_handles_labels()
    order = [labels.index(lab) for lab in sorted(labels, key=lambda lab: (lab.startswith("(I"), lab))]
    legend_ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper center", ncol=3, fontsize=8)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--n", type=int, default=1000, help="replicas per method and dimension")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument(
        "--threshold-scales",
        type=float,
        nargs="+",
        default=[1.0, 0.1],
        help="factors on the theorems' thresholds (1: as the theorems say; smaller: clipping that acts)",
    )
    args = _cli.parse(parser, argv)
    start = time.perf_counter()
    result = xr.concat([run_dimension(d, args) for d in args.dims], dim="d")
    result.attrs.update(alpha=ALPHA, nu=NU, mu=MU, radius=RADIUS, scale=SCALE, n_replicas=args.n)
    path = f"{args.results}/heavy_tail_rates.nc"
    result.to_netcdf(path)
    elapsed = time.perf_counter() - start

    methods = list(result.algorithm.values)
    k = result.k.values
    last = result.isel(k=-1)
    b2 = coordinate_bound(RADIUS, SCALE)
    print(f"f = |x|^2/2 on [-r, r]^d, Pareto noise nu = {NU}, alpha = {ALPHA}, |B|_2 = {b2:.4f}")
    print(f"{args.n} replicas x {args.steps} steps per method and d; E f(xbar_k) at k = {k[-1]} (+- stderr):")
    print(f"{'':>33}" + " ".join(f"{'d = ' + str(d):>20}" for d in result.d.values))
    for m in methods:
        row = last.sel(algorithm=m)
        print(f"{m:>33}" + " ".join(f"{float(a):>11.3e} +- {float(e):.0e}" for a, e in zip(row["mean"], row["stderr"])))
    for b, label in [("bound_cclip", "CClip bound"), ("bound_gclip_sharp", "GClip bound, G = |B|_alpha")]:
        print(f"{label:>33}" + " ".join(f"{float(v):>20.3e}" for v in last[b]))
    print(f"slopes of log E f(xbar_k) on log k over the last half of log k (theorem rate: <= -{RATE:.3f}):")
    for m in methods:
        print(
            f"{m:>33}" + " ".join(f"{slope(k, result['mean'].sel(algorithm=m, d=d)):>20.3f}" for d in result.d.values)
        )
    held = {
        m: bool(np.all(result["mean"].sel(algorithm=m) <= result[b]))
        for m, b in [
            ("GClip, G from Lemma 4.7.4", "bound_gclip_lemma"),
            ("GClip, G = |B|_alpha", "bound_gclip_sharp"),
            ("CClip", "bound_cclip"),
        ]
    }
    print("each method below its theorem's bound at every k and d:", held)
    print("diverged (non-finite) trajectories, all methods and d:", int(result.diverged.sum()))

    fig = figure(result)
    print("figure:", _cli.save_figure(fig, args, "heavy_tail_rates.png"), f"({elapsed:.0f} s)")
    return result


if __name__ == "__main__":
    main()
