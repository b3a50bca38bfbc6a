"""How far ``ds.lyapunov.spectrum`` is from the exponents beyond its standard error: two biases, measured.

Random products with exact exponents, float64, many replicas (so the standard error is small):

* **Alignment.** ``x' = A_t x`` with ``A_t`` upper triangular, ``log|A_ii| ~ N(m_i, s^2)`` and
  ``A_ij ~ N(0, 1)`` above the diagonal: the exponents are ``m = (0, -0.3, -0.5)`` exactly. The
  frame starts at random, and until it has aligned its growth is not that of the exponents: an
  ``O(1/n)`` bias without a transient, gone with ``transient = 50`` steps (a few
  ``1 / (lambda_j - lambda_{j+1})``).
* **Equal exponents.** ``x' = diag(a_1, a_2) x`` with ``log a_i ~ N(0, s^2)`` i.i.d.: both exponents
  are 0. The frame's first column follows whichever coordinate has grown most so far, so the
  columns split the pair by ``O(1/sqrt(n))``: for independent random walks from one start,
  ``E max(S_1, S_2) / n = s / sqrt(pi n)``, which the first column approaches once ``n`` is far
  beyond the transient. More replicas do not shrink it. The pair's sum, ``partial_sums[1]``,
  the growth of the frame's area, has no such bias.

    python experiments/spectrum_bias.py [--replicas 400] [--steps 25 50 ... 6400]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

import dynsim as ds  # noqa: E402

TRIANGULAR_MEANS = np.array([0.0, -0.3, -0.5])
SIGMA = 0.5
TRANSIENT = 50


def triangular(x, key):
    """``A_t x``, ``A_t`` upper triangular with ``log|A_ii| ~ N(m_i, SIGMA^2)``: exponents ``m`` (sorted)."""
    k_diag, k_upper = jax.random.split(key)
    diag = jnp.exp(TRIANGULAR_MEANS + SIGMA * jax.random.normal(k_diag, (3,)))
    return (jnp.diag(diag) + jnp.triu(jax.random.normal(k_upper, (3, 3)), 1)) @ x


def diagonal(x, key):
    """``diag(a_1, a_2) x``, ``log a_i ~ N(0, SIGMA^2)`` i.i.d.: two exponents equal to 0."""
    return jnp.exp(SIGMA * jax.random.normal(key, (2,))) * x


def measure(step, dim: int, steps, transient: int, replicas: int, seed: int) -> xr.Dataset:
    """Exponents, partial sums and their standard errors of ``spectrum`` over ``n`` steps after ``transient``;
    ``warned``: whether ``spectrum`` warned that its time batches are correlated or drift (its errors then
    too small, or leaving out a bias)."""
    rows, warned = [], []
    for n in steps:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = ds.lyapunov.spectrum(
                step, jnp.ones(dim), seed, n + transient, dim, transient=transient, n_replicas=replicas, progress=False
            )
        warned.append(any(word in str(w.message) for w in caught for word in ("correlated", "drift")))
        rows.append([est.exponents, est.stderr, est.partial_sums, est.partial_sums_stderr])
    rows = np.array(rows)  # (n, 4, exponent)
    dims = ("n", "exponent")
    names = ["exponents", "stderr", "partial_sums", "partial_sums_stderr"]
    return xr.Dataset(
        {**{name: (dims, rows[:, i]) for i, name in enumerate(names)}, "warned": ("n", np.array(warned))},
        coords={"n": np.asarray(steps), "exponent": np.arange(1, dim + 1)},
        attrs=dict(transient=transient, replicas=replicas, seed=seed, sigma=SIGMA),
    )


def _fmt(values, digits: int = 4) -> str:
    return "[" + ", ".join(f"{v:+.{digits}f}" for v in np.atleast_1d(values)) + "]"


def _flag(row) -> str:
    return " (warned: time batches correlated or drifting)" if bool(row.warned) else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=400)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200, 400, 800, 1600, 3200, 6400])
    args = _cli.parse(parser, argv, seed=1, resume=False)
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    steps = sorted(args.steps)
    aligned = {t: measure(triangular, 3, steps, t, args.replicas, args.seed) for t in (0, TRANSIENT)}
    pair = measure(diagonal, 2, steps, TRANSIENT, args.replicas, args.seed)
    elapsed = time.perf_counter() - start

    print(f"x' = A_t x, A_t upper triangular, exponents {TRIANGULAR_MEANS}; {args.replicas} replicas, float64")
    for t, res in aligned.items():
        for n in steps:
            row = res.sel(n=n)
            error = row.exponents.values - TRIANGULAR_MEANS
            print(
                f"  transient {t:>3}, n = {n:>5}: error {_fmt(error)} = {_fmt(error / row.stderr.values, 1)} s.e.;"
                f" n x error {_fmt(n * error, 2)}{_flag(row)}"
            )
    print(f"x' = diag(a_1, a_2) x, log a_i ~ N(0, {SIGMA}^2): both exponents 0; transient {TRANSIENT}")
    for n in steps:
        row = pair.sel(n=n)
        print(
            f"  n = {n:>5}: exponents {_fmt(row.exponents.values)} (s.e. {_fmt(row.stderr.values)}; "
            f"s / sqrt(pi n) = {SIGMA / np.sqrt(np.pi * n):.4f}); pair mean partial_sums[1] / 2 = "
            f"{float(row.partial_sums[1]) / 2:+.4f} +- {float(row.partial_sums_stderr[1]) / 2:.4f}{_flag(row)}"
        )
    print(f"{elapsed:.1f} s")

    results = xr.concat([res.expand_dims(transient=[t]) for t, res in aligned.items()], dim="transient")
    results.to_netcdf(os.path.join(args.results, "spectrum_bias_alignment.nc"))
    pair.to_netcdf(os.path.join(args.results, "spectrum_bias_equal_pair.nc"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for t, style in ((0, "o-"), (TRANSIENT, "s--")):
        res = aligned[t]
        for j, color in enumerate(colors):
            err = res.exponents.values[:, j] - TRIANGULAR_MEANS[j]
            ax.errorbar(
                steps,
                np.asarray(steps) * err,
                yerr=2 * np.asarray(steps) * res.stderr.values[:, j],
                fmt=style,
                color=color,
                ms=4,
                capsize=2,
                label=f"lambda_{j + 1}, transient {t}",
            )
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="steps n after the transient", ylabel="n x (estimate - exact)")
    ax.set_title("alignment: an O(1/n) bias, removed by a transient\n(triangular product, bars 2 s.e.)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for j, color in enumerate(colors[:2]):
        ax.errorbar(
            steps,
            pair.exponents.values[:, j],
            yerr=2 * pair.stderr.values[:, j],
            fmt="o-",
            color=color,
            ms=4,
            capsize=2,
            label=f"lambda_{j + 1}",
        )
    ax.errorbar(
        steps,
        pair.partial_sums.values[:, 1] / 2,
        yerr=pair.partial_sums_stderr.values[:, 1],
        fmt="s-",
        color="k",
        ms=4,
        capsize=2,
        label="(lambda_1 + lambda_2) / 2 from partial_sums",
    )
    grid = np.geomspace(steps[0], steps[-1], 100)
    for sign in (1, -1):
        ax.plot(
            grid,
            sign * SIGMA / np.sqrt(np.pi * grid),
            ":",
            color="0.4",
            label="+- s / sqrt(pi n)" if sign > 0 else None,
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="steps n after the transient", ylabel="estimate (exact: 0)")
    ax.set_title(
        "equal exponents: split by O(1/sqrt(n)); their sum is not biased\n(diag product, bars 2 s.e.)", fontsize=10
    )
    ax.legend(fontsize=7)
    print("wrote", _cli.save_figure(fig, args, "spectrum_bias.png"))


if __name__ == "__main__":
    main()
