"""GClip's nonconvex rate under heavy-tailed noise, on its own lower-bound instance (seed 002, Thms 4.4.1, 4.4.4).

Thm 4.4.4 builds, for an accuracy ``eps``, an ``L``-smooth chain ``f(x) = (L lam^2/152) f_d(x/lam)``
(Carmon et al., Arjevani et al.) with ``f(0) - inf f <= Delta`` whose stochastic gradient has
``E|g|^alpha <= G^alpha`` and reveals the next link of the chain only with probability ``p``: any
zero-respecting method then has ``E|grad f(x_k)| >= eps`` for every ``k <= k_max = (d-1)/(2p)``, and
``k_max ~ eps^-(3 alpha-2)/(alpha-1)`` is the rate of Thm 4.4.1's upper bound for GClip. Here
``alpha = 1.5``, ``L = 2``, ``Delta = 1``, ``G = 60`` and three accuracies (``ds.problems.zero_chain_constants``
gives ``lam, d, p``); on each chain, 256 runs of

* **GClip** with Thm 4.4.1's own constant step and threshold for the horizon ``K = max(4 k_max, 4000)``
  (``ds.optim.nonconvex_clip_parameters``, with the exact ``F0`` and the noise bound
  ``sigma^alpha = (46 eps)^alpha E|z/p - 1|^alpha``);
* **GClip** with ``lr = 1/(4L)``, the first term of the theorem's minimum alone, and the threshold
  ``sigma (lr L)^(-1/alpha)`` the theorem pairs with a step (outside the theorem: its Case 2 needs
  ``lr L tau <= 1/12``, and here ``lr L tau`` is about 0.33);
* **SGD** with ``lr = 1/(4L)``, not clipped;

all zero-respecting, from ``x = 0``. Measured: ``E|grad f(x_k)|`` against ``eps`` up to ``k_max``
(Thm 4.4.4), the share of runs that have reached the end of the chain (``prog_1(x/lam) = d``, where
Lemma 4.7.9.5 stops bounding the gradient from below), and Thm 4.4.1's left side
``(1/K) sum_k E min(|grad f|, |grad f|^2)`` against its bound ``60 F0 / (lr K)`` (the thesis prints 20;
see ``nonconvex_clip_parameters``).

    python experiments/nonconvex_heavy_tails.py [--n 256] [--eps 6e-3 4e-3 2e-3]
    python experiments/nonconvex_heavy_tails.py --replot   # the figure and table again from results/, no simulation
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

import dynsim as ds  # noqa: E402

ALPHA, L, DELTA, G = 1.5, 2.0, 1.0, 60.0
HORIZON = 4  # K = max(HORIZON * k_max, MIN_STEPS)
MIN_STEPS = 4000
RECORDS = 200


def chain_setup(eps: float) -> dict:
    """The Thm 4.4.4 instance for ``eps`` and Thm 4.4.1's GClip parameters on it."""
    c = ds.problems.zero_chain_constants(ALPHA, eps, DELTA, L, G)
    problem = ds.problems.zero_chain(c.d, c.p, scale=c.lam, smoothness=L)
    factor = L * c.lam**2 / ds.problems.chain.SMOOTHNESS

    def f(x):
        return factor * ds.problems.zero_chain_function(x / c.lam)

    # F0 = f(0) - inf f exactly: f_d(0) = -sqrt(2 pi e)/2, inf f_d = -sqrt(2 pi e)(1 + e (d - 1)) (not attained)
    f0 = factor * np.sqrt(2 * np.pi * np.e) * (0.5 + np.e * (c.d - 1))
    # E|g - grad f|^alpha = |d_j f|^alpha E|z/p - 1|^alpha on the frontier j, |d_j f| <= 2 eps * 23
    moment = c.p * (1 / c.p - 1) ** ALPHA + (1 - c.p)
    sigma = 2 * eps * ds.problems.chain.GRADIENT_BOUND * moment ** (1 / ALPHA)
    horizon = int(np.ceil(max(HORIZON * c.k_max, MIN_STEPS) / RECORDS) * RECORDS)
    clip = ds.optim.nonconvex_clip_parameters(L, sigma, ALPHA, f0, horizon)
    return {"constants": c, "problem": problem, "f": f, "f0": f0, "sigma": sigma, "horizon": horizon, "clip": clip}


def run_chain(eps: float, args) -> xr.Dataset:
    s = chain_setup(eps)
    c, f, clip = s["constants"], s["f"], s["clip"]
    grad_f = jax.grad(f)

    def grad_norm(x):
        return jnp.linalg.norm(grad_f(x))

    def lhs(x):  # Thm 4.4.1's left side, summand
        n = grad_norm(x)
        return jnp.minimum(n, n**2)

    observables = {
        "grad_norm": ds.observables.trajectory(grad_norm),
        "at_end": ds.observables.trajectory(lambda x: ds.problems.progress_index(x / c.lam, 1.0) == c.d),
        "lhs": ds.observables.time_average(lhs),
        "diverged": ds.observables.diverged(),
    }
    fast = 1 / (4 * L)  # the first term of Thm 4.4.1's step alone: larger than the theorem allows
    fast_threshold = s["sigma"] * (fast * L) ** (-1 / ALPHA)
    methods = {  # name: (optimizer, its hyperparameters)
        "GClip, Thm 4.4.1": (ds.optim.clipped_sgd, {"lr": clip.lr, "threshold": clip.threshold}),
        "GClip, lr = 1/(4L)": (ds.optim.clipped_sgd, {"lr": fast, "threshold": fast_threshold}),
        "SGD, lr = 1/(4L)": (optax.sgd, {"lr": fast}),
    }
    out = []
    for name, (make, hp) in methods.items():
        res = ds.simulate(
            ds.dynamics.from_optax(s["problem"], make, batch_size=1),
            grid={k: [v] for k, v in hp.items()},
            n_replicas=args.n,
            n_steps=s["horizon"],
            record_every=s["horizon"] // RECORDS,
            seed=args.seed,
            observables=observables,
            checkpoint=_cli.checkpoint(args, f"nonconvex_heavy_tails_{eps:g}_{name}"),
        ).squeeze(list(hp), drop=True)
        out.append(
            xr.Dataset(
                {
                    "grad_norm": res.grad_norm.mean("replica"),
                    "grad_norm_stderr": res.grad_norm.std("replica") / np.sqrt(args.n),
                    "at_end": res.at_end.mean("replica"),
                    "lhs": res.lhs.mean("replica"),
                    "lhs_stderr": res.lhs.std("replica") / np.sqrt(args.n),
                    "diverged": res.diverged.sum(),
                }
            )
        )
    result = xr.concat(out, dim=xr.DataArray(list(methods), dims="method", name="method"))
    result["k_over_kmax"] = ("time", result.time.values / c.k_max)
    for name, value in {
        "d": c.d,
        "p": c.p,
        "lam": c.lam,
        "k_max": c.k_max,
        "f0": s["f0"],
        "sigma": s["sigma"],
        "lr": clip.lr,
        "threshold": clip.threshold,
        "fast_threshold": fast_threshold,
        "bound": clip.bound,
        "horizon": s["horizon"],
    }.items():
        result[name] = value
    return result.expand_dims(eps=[eps])


def chains(result: xr.Dataset) -> list[xr.Dataset]:
    """The results of each chain (``eps`` of length 1), on its own time axis: the results file holds the chains
    on the union of their time axes, NaN where a chain has no record."""
    return [result.isel(eps=[i]).dropna("time", subset=["k_over_kmax"]) for i in range(result.sizes["eps"])]


def report(runs: list[xr.Dataset], n: int) -> None:
    """The table the docs quote: per chain its constants, per method the gradient norm, the share at the chain's
    end and Thm 4.4.1's left side."""
    print(f"alpha = {ALPHA}, L = {L}, Delta = {DELTA}, G = {G}; {n} runs per chain and method")
    for r in runs:
        r = r.squeeze("eps")
        eps = float(r.eps)
        early = r.time.values <= float(r.k_max)
        print(
            f"eps = {eps:g}: d = {int(r.d)}, p = {float(r.p):.3g}, k_max = (d-1)/(2p) = {float(r.k_max):.0f}; "
            f"GClip lr = {float(r.lr):.3g}, threshold = {float(r.threshold):.3g} (sigma = {float(r.sigma):.3g}, "
            f"F0 = {float(r.f0):.3f}), K = {int(r.horizon)}; at lr = 1/(4L) the threshold is "
            f"{float(r.fast_threshold):.3g}"
        )
        for j, m in enumerate(r.method.values):
            row = r.isel(method=j)
            reached = row.at_end.values
            first = r.k_over_kmax.values[np.argmax(reached >= 0.5)] if (reached >= 0.5).any() else np.inf
            print(
                f"  {m:18}: min E|grad f(x_k)|/eps over k <= k_max {float(row.grad_norm[early].min()) / eps:.2f}; "
                f"at K {float(row.grad_norm[-1]) / eps:.3f}; share at the chain's end at k_max "
                f"{float(reached[early][-1]):.3f}, at K {float(reached[-1]):.3f}; half there at k = {first:.2f} k_max; "
                f"Thm 4.4.1's left side {float(row.lhs):.3g} ± {float(row.lhs_stderr):.1g} (its bound for the "
                f"theorem's parameters {float(r.bound):.3g}); diverged {int(row.diverged)}"
            )


def figure(runs: list[xr.Dataset]):
    """Per chain and method: the gradient norm and the share at the chain's end over time, and Thm 4.4.1's left side
    against its bound."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, r in enumerate(runs):
        r = r.squeeze("eps")
        eps = float(r.eps)
        for j, (m, style) in enumerate(zip(r.method.values, ("-", "--", ":"))):
            row = r.isel(method=j)
            x = r.k_over_kmax.values[1:]
            label = f"{m}, eps = {eps:g} (d = {int(r.d)})"
            axes[0].loglog(x, row.grad_norm.values[1:] / eps, style, color=f"C{i}", lw=1.2, label=label)
            axes[1].semilogx(x, row.at_end.values[1:], style, color=f"C{i}", lw=1.2, label=label)
            axes[2].errorbar(
                i + 0.15 * (j - 1),
                float(row.lhs),
                yerr=float(row.lhs_stderr),
                fmt="osd"[j],
                color=f"C{i}",
                label=m if i == 0 else None,
            )
        axes[2].plot(
            [i - 0.3, i + 0.3], [float(r.bound)] * 2, "k-", lw=1.5, label="Thm 4.4.1 bound" if i == 0 else None
        )
    for ax in axes[:2]:
        ax.axvline(1.0, color="k", lw=0.8, ls=":")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set(xlabel="k / k_max", ylabel="E|grad f(x_k)| / eps", title="Thm 4.4.4: above eps until k_max (dotted)")
    axes[1].set(xlabel="k / k_max", ylabel="share of runs", title="at the end of the chain (prog_1 = d)")
    axes[2].set(
        yscale="log",
        xticks=range(len(runs)),
        xticklabels=[f"eps = {float(r.eps[0]):g}" for r in runs],
        ylabel="(1/K) sum_k E min(|grad f|, |grad f|^2)",
        title="Thm 4.4.1: left side against its bound",
    )
    axes[1].legend(fontsize=7, loc="center left")
    axes[2].legend(fontsize=8)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="runs per chain and method")
    parser.add_argument("--eps", type=float, nargs="+", default=[6e-3, 4e-3, 2e-3])
    args = _cli.parse(parser, argv, replot=True)
    results = os.path.join(args.results, "nonconvex_heavy_tails.nc")
    _cli.check_replot(parser, args, results)
    jax.config.update("jax_enable_x64", True)
    begin = time.perf_counter()
    if not args.replot:
        runs = [run_chain(eps, args) for eps in args.eps]
        ds.io.save(xr.concat(runs, dim="eps", join="outer", coords="minimal").assign_attrs(n=args.n), results)
    result = ds.io.load(results)
    runs = chains(result)
    elapsed = time.perf_counter() - begin

    report(runs, int(result.attrs["n"]))
    print("figure:", _cli.save_figure(figure(runs), args, "nonconvex_heavy_tails.png"), f"({elapsed:.0f} s)")
    return runs


if __name__ == "__main__":
    main()
