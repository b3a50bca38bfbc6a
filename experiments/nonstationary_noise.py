"""Clipping under heavy-tailed noise whose scale changes during training (seed 002, Sec. 4.5, ACClip's motivation).

The thesis motivates ACClip (Algorithm 1) by noise that is heavy-tailed *and* non-stationary (Fig.
4-2: BERT's noise concentrates over training): a fixed clipping threshold is then too loose at
one time and too tight at another, while ACClip's threshold, a running estimate of
``E|g|^alpha`` per coordinate, follows the noise. The thesis shows ACClip only on BERT and
Transformer-XL; here the claim is put to a controlled test.

``f(x) = |x|^2 / 2`` in ``d = 10`` dimensions from ``x_0 = (3, ..., 3)``; stochastic gradients
``g_t = x_t + sigma_t xi_t`` with ``xi_t`` i.i.d. symmetric Pareto of tail index 1.75 (infinite
variance; ``ds.dynamics.pareto_noise``) and a falling scale, ``sigma_t = sigma_0 / (1 + t / t_0)``
(``sigma_0 = 10``, ``t_0 = 50``: from 10 to 0.16 over the default 3000 steps). A hand-built
``ds.dynamics.Dynamics`` carries the step count (the noise depends on it) and any optax optimizer:
SGD, GClip with a fixed threshold (two values), ACClip with the thesis's settings (``alpha = 1``,
``b1 = 0.9``, ``b2 = 0.99``, ``eps = 1e-5``, ``tau0 = 1``) and Adam, each over a grid of learning rates
(a grid axis), 2000 runs each. Each method is reported at its best learning rate (lowest median
of ``f(x_T)``), with the median and the 99% quantile of ``f(x_t)`` along the run: ``f(x_T)`` has a
tail index near 1 for SGD (``x_T`` is linear in the noise), so its mean is infinite or nearly so, and a
mean and standard error would be what float32's largest Pareto draw allows, not a property of the method.

    python experiments/nonstationary_noise.py [--n 2000] [--steps 3000]
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

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

D, X0, NU = 10, 3.0, 1.75
SIGMA0, T0 = 10.0, 50.0
LRS = np.geomspace(1e-3, 1.0, 13)
METHODS = {
    "SGD": lambda lr: optax.sgd(lr),
    "GClip, tau = 1": lambda lr: ds.optim.clipped_sgd(lr, 1.0),
    "GClip, tau = 30": lambda lr: ds.optim.clipped_sgd(lr, 30.0),
    "ACClip (thesis settings)": lambda lr: ds.optim.acclip(lr),
    "Adam": lambda lr: optax.adam(lr),
}


class State(NamedTuple):
    x: jax.Array
    opt_state: object
    t: jax.Array


def noise_scale(t):
    """``sigma_t = sigma_0 / (1 + t / t_0)``."""
    return SIGMA0 / (1 + t / T0)


def nonstationary_dynamics(make_optimizer) -> ds.dynamics.Dynamics:
    """SGD-type dynamics on ``|x|^2/2`` with Pareto noise of scale ``noise_scale(t)``; ``lr`` a grid axis."""
    pareto = ds.dynamics.pareto_noise(1.0, NU)

    def init(key, hp):
        x = jnp.full((D,), X0, jnp.result_type(float))
        return State(x, make_optimizer(hp["lr"]).init(x), jnp.zeros((), jnp.int32))

    def step(state, key, hp):
        sigma = noise_scale(state.t.astype(state.x.dtype))
        g = pareto.apply(key, state.x, {"noise": sigma, "index": NU}, None)  # grad f(x) = x, plus noise
        updates, opt_state = make_optimizer(hp["lr"]).update(g, state.opt_state, state.x)
        return State(optax.apply_updates(state.x, updates), opt_state, state.t + 1)

    return ds.dynamics.Dynamics(init, step, hyperparams={"lr": ds.dynamics.REQUIRED}, params_of=lambda s: s.x)


def run(args) -> xr.Dataset:
    out = []
    for name, make in METHODS.items():
        res = ds.simulate(
            nonstationary_dynamics(make),
            grid={"lr": LRS},
            n_replicas=args.n,
            n_steps=args.steps,
            record_every=args.steps // 60,
            seed=args.seed,
            observables={"f": ds.observables.trajectory(lambda x: 0.5 * x @ x), "diverged": ds.observables.diverged()},
            checkpoint=_cli.checkpoint(args, f"nonstationary_noise_{name}"),
        )
        out.append(xr.Dataset({"f": res.f, "diverged": res.diverged}))
    result = xr.concat(out, dim=xr.DataArray(list(METHODS), dims="algorithm", name="algorithm"))
    result.attrs.update(d=D, x0=X0, nu=NU, sigma0=SIGMA0, t0=T0, n_replicas=args.n)
    return result


def best_rates(result: xr.Dataset) -> dict[str, float]:
    """Each method's learning rate with the lowest median final loss (diverged runs count as infinite)."""
    final = result.f.isel(time=-1).where(~result.diverged, np.inf)
    median = final.median("replica")
    return {m: float(median.sel(algorithm=m).idxmin("lr")) for m in result.algorithm.values}


def _quantile_band(values: np.ndarray, q: float) -> np.ndarray:
    """``(value, low, high)`` of the ``q``-quantile of each row (runs along the last axis), 95% order-statistic
    interval (``ds.measure.quantile_interval``); runs flagged as diverged must be ``inf`` already."""
    return np.array([ds.measure.quantile_interval(row, q) for row in values]).T


def figure(result: xr.Dataset, best: dict[str, float]):
    """Median and 99% quantile along the run at each method's best rate, and the final median against the rate,
    each with its 95% order-statistic interval (shaded or as bars)."""
    t = result.time.values
    n = result.sizes["replica"]
    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 0.16])
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    legend_ax = fig.add_subplot(grid[1, :])  # a row of its own for the legend, so no curve is hidden
    legend_ax.axis("off")
    colors = dict(zip(result.algorithm.values, ["tab:gray", "tab:orange", "tab:red", "tab:blue", "tab:green"]))
    for m in result.algorithm.values:
        row = result.sel(algorithm=m, lr=best[m])
        # (time, replica), diverged runs at +inf as in the printed table
        f = row.f.where(~row.diverged, np.inf).transpose("time", "replica", ...).values.reshape(len(t), -1)
        for ax, q in [(axes[0], 0.5), (axes[1], 0.99)]:
            value, low, high = _quantile_band(f, q)
            high = np.where(np.isfinite(high), high, np.nan)  # an upper limit beyond the sample: not drawn
            ax.fill_between(t, low, high, color=colors[m], alpha=0.3, lw=0)
            ax.semilogy(t, value, color=colors[m], lw=1.2, label=f"{m} (lr {best[m]:.3g})" if q == 0.5 else None)
        final = result.f.sel(algorithm=m).isel(time=-1).where(~result.diverged.sel(algorithm=m), np.inf)
        final = final.transpose("lr", "replica", ...).values.reshape(len(LRS), -1)
        value, low, high = _quantile_band(final, 0.5)
        shown = np.isfinite(value)
        axes[2].errorbar(
            LRS[shown],
            value[shown],
            yerr=[
                value[shown] - low[shown],
                np.where(np.isfinite(high[shown]), high[shown], value[shown]) - value[shown],
            ],
            fmt="o-",
            color=colors[m],
            ms=3,
            capsize=2,
            lw=1,
        )
    axes[0].set(xlabel="step t", ylabel="median f(x_t)", title="median loss, each method at its best lr")
    axes[1].set(xlabel="step t", ylabel="99% quantile of f(x_t)", title="99% quantile of the loss (rare large kicks)")
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="learning rate",
        ylabel=f"median f(x_T), T = {t[-1]}",
        title="final loss against the rate\n(diverged runs count as +inf)",
    )
    ax2 = axes[0].twinx()
    ax2.plot(t, noise_scale(t), "k:", lw=1)
    ax2.set_yscale("log")
    ax2.set_ylabel("noise scale sigma_t (dotted)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.3, lw=0))
    labels.append(f"95% order-statistic interval (bands, bars), {n} runs per lr")
    legend_ax.legend(handles, labels, loc="center", ncol=3, fontsize=8)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="runs per method and learning rate")
    parser.add_argument("--steps", type=int, default=3000)
    args = _cli.parse(parser, argv)
    start = time.perf_counter()
    result = run(args)
    ds.io.save(result, f"{args.results}/nonstationary_noise.nc")
    elapsed = time.perf_counter() - start

    best = best_rates(result)
    t = result.time.values
    print(f"f = |x|^2/2, d = {D}, Pareto noise (index {NU}) with sigma_t = {SIGMA0}/(1 + t/{T0:g}), {args.n} runs")
    print(
        "final loss f(x_T) at each method's best rate: median and 99% quantile with 95% order-statistic intervals; "
        "Hill tail index of f(x_T) (95% interval); the mean +- s.e. only where the index is surely above 2 "
        "(below 1 the mean is infinite, below 2 its standard error is)"
    )
    print(
        f"{'method':>26} {'best lr':>8} {'median [95% CI]':>30} {'q99 [95% CI]':>30} {'tail index':>18} "
        f"{'mean +- s.e.':>20} {'diverged':>9}"
    )
    for m in result.algorithm.values:
        row = result.sel(algorithm=m, lr=best[m])
        final = row.f.isel(time=-1).where(~row.diverged, np.inf).values.ravel()
        med, q99 = (ds.measure.quantile_interval(final, q) for q in (0.5, 0.99))
        hill = ds.measure.hill_tail_index(final[np.isfinite(final)])
        mean = f"{final.mean():.3e} +- {final.std() / np.sqrt(final.size):.1e}" if hill.low > 2 else "-"
        print(
            f"{m:>26} {best[m]:>8.4f} {med.value:>10.3e} [{med.low:.3e}, {med.high:.3e}] "
            f"{q99.value:>10.3e} [{q99.low:.3e}, {q99.high:.3e}] {hill.alpha:>6.2f} [{hill.low:.2f}, {hill.high:.2f}] "
            f"{mean:>20} {int(row.diverged.sum()):>9}"
        )
    print(f"median f(x_t) at the best rate, early / middle / late (t = {t[6]}, {t[30]}, {t[-1]}):")
    for m in result.algorithm.values:
        med = result.f.sel(algorithm=m, lr=best[m]).median("replica").values.ravel()
        print(f"{m:>26} {med[6]:>11.3e} {med[30]:>11.3e} {med[-1]:>11.3e}")

    fig = figure(result, best)
    print("figure:", _cli.save_figure(fig, args, "nonstationary_noise.png"), f"({elapsed:.0f} s)")
    return result


if __name__ == "__main__":
    main()
