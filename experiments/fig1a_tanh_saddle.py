"""Seed 004, Fig. 1a: SGD on u tanh(w x) converges to the saddle in probability while E|theta|^2 grows.

Data: x ~ N(0, 1), y = 0.1 tanh(x) + 1.8 eps, eps ~ N(0, 1) (a tanh teacher, so that the minima
are finite: with seed 004's linear target y = mu x + (1 - mu) eps the loss has no finite minimiser,
its infimum lies along u w = mu as w -> 0); loss (f - y)^2 / 2; S = 1, fresh samples. The saddle
w = u = 0 linearises to the rank-1 saddle with chi = x y; at lr = 0.4 it is in phase III: both
modes h, m = w +- u shrink, Lambda_+- = E log|1 +- lr chi| < 0 (quadrature: given x, 1 +- lr chi is
Gaussian in eps). So m(t) = E log|theta_t|^2 falls with slope about 2 max(Lambda_+-), although the
linearised mean square E|theta_t|^2 grows like (E(1 + lr chi)^2)^t.

The slope over a finite window is not exactly 2 Lambda_+, and the script prints two references from
the linearised modes, simulated in log space (NumPy, the same law of chi): in exact arithmetic the
faster mode m still dominates some runs inside the window, which steepens the slope; in floating
point w and u cannot represent a mode below about eps times the other, so the faster mode never
falls further behind and overtakes the slower one whenever 1 + lr chi is near 0, which flattens it.
The second reference (the modes floored at eps) is what a float64 simulation in (w, u) should give.

Left: the loss landscape (Monte Carlo over 10^5 samples) with its two minima (triangles) and the
saddle (star). Middle: m(t) over 4000 runs (float64) against the theory slope, a handful of runs,
the sample mean square and the linearised E|theta|^2. Right: histograms of log10|theta| before and
after training.

    python experiments/fig1a_tanh_saddle.py [--runs 4000] [--steps 3000]
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # |theta| reaches 1e-110

import _cli  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import integrate, optimize, stats  # noqa: E402

import dynsim as ds  # noqa: E402


def mode_exponent(lr: float, sign: int, a: float, b: float) -> float:
    """``E log|1 + sign lr chi|`` for ``chi = x (a tanh x + b eps)``, ``x, eps ~ N(0, 1)``, by nested quadrature
    (the inner integral over ``eps`` split at the root of ``1 + sign lr chi``)."""

    def inner(x):
        c0, c1 = 1 + sign * lr * a * x * np.tanh(x), sign * lr * b * x
        if c1 == 0:
            return np.log(abs(c0))
        root = -c0 / c1
        f = lambda e: np.log(abs(c0 + c1 * e)) * stats.norm.pdf(e)  # noqa: E731
        return integrate.quad(f, -12, 12, points=[root] if abs(root) < 12 else None, limit=400, epsabs=1e-13)[0]

    return integrate.quad(lambda x: inner(x) * stats.norm.pdf(x), -12, 12, points=[0.0], limit=400, epsabs=1e-12)[0]


def linearised_slopes(lr, a, b, runs, steps, transient, seed, floor=None):
    """Mean +- s.e. over runs of the least-squares slope of ``log|theta_t|`` over ``[transient, steps]`` for the
    linearised modes ``h, m <- (1 +- lr chi) h, m`` from ``w_0, u_0 ~ N(0, 0.5^2)``, in log space (no underflow).
    ``floor``: keep each mode at least ``floor`` times the other, as floating point does in ``(w, u)``."""
    rng = np.random.default_rng(seed)
    w, u = 0.5 * rng.standard_normal(runs), 0.5 * rng.standard_normal(runs)
    lh, lm = np.log(np.abs(w + u)), np.log(np.abs(w - u))
    logs = np.empty((steps - transient + 1, runs))
    for t in range(1, steps + 1):
        x = rng.standard_normal(runs)
        chi = x * (a * np.tanh(x) + b * rng.standard_normal(runs))
        lh, lm = lh + np.log(np.abs(1 + lr * chi)), lm + np.log(np.abs(1 - lr * chi))
        if floor is not None:
            lh, lm = np.maximum(lh, lm + np.log(floor)), np.maximum(lm, lh + np.log(floor))
        if t >= transient:
            logs[t - transient] = 0.5 * (np.logaddexp(2 * lh, 2 * lm) - np.log(2))
    slopes = np.polyfit(np.arange(transient, steps + 1), logs, 1)[0]
    return slopes.mean(), slopes.std(ddof=1) / np.sqrt(runs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=0.4)
    parser.add_argument("--teacher", type=float, nargs=2, default=(0.1, 1.8), help="y = a tanh(x) + b eps")
    args = _cli.parse(parser, argv)

    problem = ds.problems.scalar_net("tanh", data="teacher", teacher=tuple(args.teacher), init_std=0.5)
    a, b = args.teacher
    lam_plus, lam_minus = (mode_exponent(args.lr, sign, a, b) for sign in (1, -1))
    lam = max(lam_plus, lam_minus)
    # E(1 +- lr chi)^2 = 1 +- 2 lr E chi + lr^2 E chi^2, E chi = a E[x tanh x], E chi^2 = a^2 E[x^2 tanh^2 x] + b^2
    x_tanh = integrate.quad(lambda x: x * np.tanh(x) * stats.norm.pdf(x), -12, 12)[0]
    x2_tanh2 = integrate.quad(lambda x: (x * np.tanh(x)) ** 2 * stats.norm.pdf(x), -12, 12)[0]
    chi2 = a**2 * x2_tanh2 + b**2
    ms_plus, ms_minus = (1 + sign * 2 * args.lr * a * x_tanh + args.lr**2 * chi2 for sign in (1, -1))

    # landscape: Monte Carlo estimate of E[(u tanh(w x) - y)^2 / 2] over 10^5 fixed samples
    samples = ds.problems.draw_dataset(problem, ds.prng.key(args.seed + 1), 100_000)
    hp = {}
    full = jax.jit(lambda w, u: ds.problems.batch_loss(problem, {"w": w, "u": u}, samples, hp))
    grid = np.linspace(-3, 3, 121)
    W, U = np.meshgrid(grid, grid, indexing="ij")
    L = np.asarray(jax.vmap(jax.vmap(full))(jnp.asarray(W), jnp.asarray(U)))
    f = lambda z: float(full(z[0], z[1]))  # noqa: E731
    g = lambda z: np.asarray(jax.grad(lambda v: full(v[0], v[1]))(jnp.asarray(z)))  # noqa: E731
    minima = [optimize.minimize(f, z0, jac=g, method="BFGS").x for z0 in ([0.8, 0.3], [-0.8, -0.3])]

    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [args.lr]},
        n_replicas=args.runs,
        n_steps=args.steps,
        record_every=10,
        seed=args.seed,
        observables={
            "logdist": ds.observables.log_distance(problem.fixed_point),
            "theta": ds.observables.final_state(),
        },
        path=os.path.join(args.results, "fig1a_tanh_saddle.nc"),
        checkpoint=_cli.checkpoint(args, "fig1a_tanh_saddle"),
    )
    est = ds.lyapunov.from_log_distance(res, transient=500)
    slope, se = est.exponent.item(), est.stderr.item()
    logs = res.logdist.isel(lr=0).values
    t = res.time.values

    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 2.4), width_ratios=(1, 1.3, 0.9))
    ax = fig.add_subplot(grid[:, 0])
    cs = ax.contourf(W, U, L, levels=np.linspace(L.min(), L.min() + 0.02, 41), cmap="viridis", extend="max")
    bar = fig.colorbar(cs, ax=ax, format="%.3f", orientation="horizontal", pad=0.16)
    bar.set_label("loss (colour range: minimum + 0.02)", fontsize=8)
    bar.ax.tick_params(labelsize=8, rotation=30)
    for m in minima:
        ax.plot(*m, "r^", ms=10)
    ax.plot(0, 0, "w*", ms=14)
    ax.set_xlabel("w")
    ax.set_ylabel("u")
    ax.set_title(
        f"loss of u tanh(w x), y = {args.teacher[0]} tanh(x) + {args.teacher[1]} ε\n(10^5 samples): "
        "minima of this sample's loss ▲, saddle ★",
        fontsize=9,
    )

    # the fit's window and its line (it passes through the window's centroid of m(t))
    mean_logs = logs.mean(axis=0)
    window = (t >= 500) & (t <= float(est.until.item()))
    t_bar, m_bar = t[window].mean(), mean_logs[window].mean()
    top_ax = fig.add_subplot(grid[0, 1])
    # E|theta_t|^2 = (E h_t^2 + E m_t^2) / 2 for the modes h, m = w +- u, with E h_0^2 = E m_0^2 = 0.5
    linear_ms = np.log(0.25) + np.logaddexp(t * np.log(ms_plus), t * np.log(ms_minus))
    top_ax.plot(t, linear_ms, "tab:orange", lw=2)
    top_ax.set_ylabel("log E|θ_t|²", fontsize=9)
    top_ax.text(
        0.02,
        0.92,
        f"linearisation: log E|θ_t|² grows by\nlog E(1 + λχ)² = {np.log(ms_plus):.3f} per step",
        transform=top_ax.transAxes,
        va="top",
        fontsize=8,
        color="tab:orange",
    )
    top_ax.tick_params(labelbottom=False, labelsize=8)
    ax = fig.add_subplot(grid[1, 1], sharex=top_ax)
    ax.axvspan(0, 500, color="0.9", lw=0)
    for r in range(8):
        ax.plot(t, logs[r], lw=0.6, alpha=0.6, color="tab:gray", label="8 single runs" if r == 0 else None)
    ax.plot(t, mean_logs, "k", lw=2.5, label=f"m(t) = E log|θ_t|² ({args.runs} runs)")
    ax.plot(
        t[window],
        m_bar + 2 * lam * (t[window] - t_bar),
        "r--",
        lw=1.5,
        label=f"theory: slope 2 max(Λ±) = {2 * lam:.4f}, anchored at the fit",
    )
    sample_ms = np.log(np.mean(np.exp(logs), axis=0))
    ax.plot(t, sample_ms, "tab:purple", lw=1.5, label="log of the sample mean of |θ|²")
    ax.set_ylim(-950, 60)  # the bottom stays free for the legend
    ax.set_xlim(0, t[-1])
    ax.text(250, -300, "not\nfitted", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xlabel("step t")
    ax.set_ylabel("log |θ_t|²")
    ax.tick_params(labelsize=8)
    ax.set_title(f"λ = {args.lr}: slope of m(t), t ≥ 500: {2 * slope:.4f} ± {2 * se:.4f} (s.e.)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")

    ax = fig.add_subplot(grid[:, 2])
    theta_T = np.stack([res.theta_w.values.ravel(), res.theta_u.values.ravel()])
    init = np.asarray(
        jax.vmap(lambda k: jnp.stack(list(problem.init(k, hp).values())))(
            jax.random.split(jax.random.key(0), args.runs)
        )
    ).T
    ax.hist(np.log10(np.abs(init.ravel())), bins=60, alpha=0.6, label="before (t = 0)")
    ax.hist(np.log10(np.abs(theta_T.ravel()) + 1e-300), bins=60, alpha=0.6, label=f"after t = {args.steps}")
    ax.set_xlabel("log10 |w|, log10 |u|")
    ax.set_ylabel(f"count (w and u of {args.runs} runs)")
    ax.set_title("parameters collapse onto the saddle", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    path = _cli.save_figure(fig, args, "fig1a_tanh_saddle.png")
    print(f"minima: {[np.round(m, 4).tolist() for m in minima]}, loss {f(minima[0]):.4f}; saddle loss {f([0, 0]):.4f}")
    exact = linearised_slopes(args.lr, a, b, args.runs, args.steps, 500, args.seed)
    floored = linearised_slopes(args.lr, a, b, args.runs, args.steps, 500, args.seed, floor=np.finfo(np.float64).eps)
    print(
        f"Lambda+ = {lam_plus:.5f}, Lambda- = {lam_minus:.5f} (quadrature); measured exponent (half the slope of m, "
        f"t >= 500) = {slope:.4f} ± {se:.4f} ({(slope - lam) / se:+.1f} s.e. from max Lambda); the same slope for "
        f"the linearised modes: {exact[0]:.4f} ± {exact[1]:.4f} in exact arithmetic, {floored[0]:.4f} ± "
        f"{floored[1]:.4f} with each mode floored at eps times the other"
    )
    print(
        f"E(1 + lr chi)^2 = {ms_plus:.4f} > 1: the linearised mean square grows by {np.log(ms_plus):.4f} per step; "
        f"median |theta_T| = {np.median(np.abs(theta_T)):.2e}"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
