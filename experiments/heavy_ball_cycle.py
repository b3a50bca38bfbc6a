"""The heavy-ball method cycles on a strongly convex function; Nesterov's method does not (seed 002, Fig. 2-1).

Lessard, Recht and Packard (2016), whose figure the thesis reproduces in ch. 2: on the 1-D
function with ``f' = 25x`` (``x < 1``), ``x + 24`` (``1 <= x < 2``), ``25x - 24`` (``x >= 2``), which
is 1-strongly convex and 25-smooth, heavy ball with the step and momentum that are optimal on
quadratics of that class (``a = 1/9``, ``b = 4/9``: ``optax.sgd(1/9, momentum=4/9)``) settles from
some starts on a period-3 cycle instead of the minimum, while Nesterov's method (thesis eq. 2.4,
``alpha = 1/L``, ``beta = (sqrt(Q) - 1)/(sqrt(Q) + 1)``: ``optax.sgd(1/25, momentum=2/3, nesterov=True)``)
converges from every start within its guaranteed rate. One ``simulate`` call per method over a
grid of starting points (``x0`` is a grid axis), float64; the cycle is found by
``ds.measure.detect_period`` on the last iterates and checked against its exact value (a linear
system), and its Lyapunov exponents by ``ds.lyapunov.spectrum`` on the optimizer's map.

    python experiments/heavy_ball_cycle.py [--starts 4001] [--steps 3000]
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import xarray as xr  # noqa: E402

import dynsim as ds  # noqa: E402

MU, L = 1.0, 25.0
HEAVY_BALL = {
    "lr": 4 / (np.sqrt(L) + np.sqrt(MU)) ** 2,
    "momentum": ((np.sqrt(L) - np.sqrt(MU)) / (np.sqrt(L) + np.sqrt(MU))) ** 2,
}
NESTEROV = {"lr": 1 / L, "momentum": (np.sqrt(L / MU) - 1) / (np.sqrt(L / MU) + 1)}


def exact_cycle(a: float, b: float) -> np.ndarray:
    """The period-3 orbit ``p1 -> p2 -> p3``, ``p1, p2 < 1``, ``p3 >= 2``, of ``x' = x - a f'(x) + b (x - x_prev)``.

    On these pieces ``f' = 25 x`` and ``25 x - 24``, so the orbit solves a 3 x 3 linear system:
    ``p_{i+1} = (1 + b - 25 a) p_i - b p_{i-1} + 24 a [p_i >= 2]``.
    """
    c = 1 + b - 25 * a
    # unknowns (p1, p2, p3); equations for p2 (from p1, prev p3), p3 (from p2, prev p1), p1 (from p3, prev p2)
    A = np.array([[-c, 1.0, b], [b, -c, 1.0], [1.0, b, -c]])
    rhs = np.array([0.0, 0.0, 24 * a])
    p = np.linalg.solve(A, rhs)
    if not (p[0] < 1 and p[1] < 1 and p[2] >= 2):
        raise ValueError(f"no cycle with that pattern of pieces: {p}")
    return p


def method(problem, params: dict):
    """Heavy ball, or Nesterov (thesis eq. 2.4, on the points where gradients are taken), as a dynamics."""
    return ds.dynamics.from_optax(
        problem, optax.sgd, batch_size=None, momentum=params["momentum"], nesterov=params is NESTEROV
    )


def outcomes(problem, params: dict, starts: np.ndarray, n_steps: int, cycle: np.ndarray, checkpoint=None):
    """Per start: 0 = converged to the minimum, 3 = on the 3-cycle, -1 = anything else; and the last iterates.

    ``checkpoint``: the simulation's checkpoint folder, or None."""
    dyn = method(problem, params)
    res = ds.simulate(
        dyn,
        grid={"lr": [params["lr"]], "x0": starts},
        n_steps=n_steps,
        observables={"last": ds.observables.last_values(12), "f": ds.observables.loss()},
        checkpoint=checkpoint,
    )
    last = res["last"].values.reshape(len(starts), 12)
    found = ds.measure.detect_period(last[:, :, None], tol=1e-9, max_period=3, window=6)
    at_min = np.all(np.abs(last) < 1e-9, axis=1)
    on_cycle = (found.period == 3) & np.array(
        [np.allclose(np.sort(row[-3:]), np.sort(cycle), atol=1e-9, rtol=0) for row in last]
    )
    return np.where(at_min, 0, np.where(on_cycle, 3, -1)), last


def nesterov_gap(problem, starts: np.ndarray, n_steps: int, checkpoint=None):
    """``max_k (f(y_k) - f*) / bound_k`` over runs; ``bound_k = ((mu+L)/2)|x0|^2 exp(-(k-1)/sqrt(Q))`` (NAG's rate).

    ``checkpoint``: the simulation's checkpoint folder, or None."""
    f = jax.vmap(lambda x: problem.loss(x, None, {}))
    grad = jax.vmap(jax.grad(lambda x: problem.loss(x, None, {})))
    res = ds.simulate(
        method(problem, NESTEROV),
        grid={"lr": [NESTEROV["lr"]], "x0": starts},
        n_steps=n_steps,
        record_every=1,
        observables={"x": ds.observables.trajectory()},
        checkpoint=checkpoint,
    )
    x = res.x.values.reshape(len(starts), n_steps + 1, 1)  # x_0 .. x_n, where the gradients are taken
    k = np.arange(1, n_steps + 1)
    y = x[:, :-1] - NESTEROV["lr"] * np.asarray(grad(x[:, :-1].reshape(-1, 1))).reshape(x[:, :-1].shape)  # y_k
    gap = np.asarray(f(y.reshape(-1, 1))).reshape(len(starts), n_steps)
    bound = (MU + L) / 2 * starts[:, None] ** 2 * np.exp(-(k[None, :] - 1) / np.sqrt(L / MU))
    meaningful = bound > 1e-12  # below, float64 rounding of f(y) ~ 1e-16 x 25 dominates
    ratio = np.divide(gap, bound, out=np.zeros_like(gap), where=meaningful)
    return float(np.max(ratio)), k, gap, bound


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=4001, help="starting points, evenly spaced on [-10, 10]")
    parser.add_argument("--steps", type=int, default=3000)
    args = _cli.parse(parser, argv)
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    problem = ds.problems.lessard_function()
    starts = np.linspace(-10, 10, args.starts)
    cycle = exact_cycle(HEAVY_BALL["lr"], HEAVY_BALL["momentum"])
    hb, hb_last = outcomes(
        problem, HEAVY_BALL, starts, args.steps, cycle, checkpoint=_cli.checkpoint(args, "heavy_ball_cycle_heavy_ball")
    )
    nag, _ = outcomes(
        problem, NESTEROV, starts, args.steps, cycle, checkpoint=_cli.checkpoint(args, "heavy_ball_cycle_nesterov")
    )
    worst, k, gap, bound = nesterov_gap(
        problem,
        starts[:: max(1, args.starts // 200)],
        200,
        checkpoint=_cli.checkpoint(args, "heavy_ball_cycle_nesterov_gap"),
    )

    b = ds.dynamics.bind(method(problem, HEAVY_BALL), {"lr": HEAVY_BALL["lr"], "x0": 3.1})
    lyap = ds.lyapunov.spectrum(b.step, b.init(jax.random.key(0)), 0, args.steps, 2, transient=200)
    elapsed = time.perf_counter() - start

    print(f"exact 3-cycle of heavy ball (a = 1/9, b = 4/9): {np.round(cycle, 10)}")
    for name, out in [("heavy ball", hb), ("Nesterov", nag)]:
        print(
            f"{name:>10}: {np.mean(out == 0):.4f} of {len(starts)} starts in [-10, 10] converge to 0, "
            f"{np.mean(out == 3):.4f} end on the 3-cycle, {np.mean(out == -1):.4f} elsewhere"
        )
    for x0 in (3.1, 3.3, 0.5, 1.5, 3.0, 3.5, 5.0):
        i = int(np.argmin(np.abs(starts - x0)))
        end = {3: "cycle", 0: "minimum"}.get(int(hb[i]), "other")
        print(f"  heavy ball from x0 = {starts[i]:+.3f}: {end}")
    print(f"Nesterov: max over 200 runs and k of (f(y_k) - f*) / rate bound = {worst:.3f} (<= 1: the rate holds)")
    print(
        f"Lyapunov exponents on the cycle: {lyap.exponents} (both log(2/3) = {np.log(2 / 3):.6f}: the Jacobian "
        "is the same Jordan block at every point of the cycle and at the minimum); the pair's mean from the "
        f"area's growth, partial_sums[1] / 2 = {lyap.partial_sums[1] / 2:.8f}"
    )

    fig, axes = plt.subplots(1, 3, figsize=(12, 5.2))
    ax = axes[0]
    for row, out in enumerate([hb, nag]):
        for value, color, label in [(0, "tab:blue", "minimum"), (3, "tab:red", "3-cycle"), (-1, "k", "other")]:
            sel = out == value
            if sel.any():
                ax.scatter(starts[sel], np.full(sel.sum(), row), s=4, color=color, label=label if row == 0 else None)
    ax.set(yticks=[0, 1], yticklabels=["heavy ball", "Nesterov"], ylim=(-0.5, 1.5), xlabel="x0")
    ax.set_title("where each start ends")
    ax.legend(loc="center right", fontsize=8)
    ax = axes[1]
    i = int(np.argmin(np.abs(starts - 3.1)))
    orbit = b.init(jax.random.key(0))
    xs = [float(orbit.params[0])]
    for t in range(60):
        orbit = b.step(orbit, jax.random.key(t))
        xs.append(float(orbit.params[0]))
    grid = np.linspace(-3, 4, 400)
    ax.plot(grid, np.asarray(jax.vmap(lambda x: problem.loss(x[None], None, {}))(grid)), color="0.6", lw=1)
    ax.plot(
        xs,
        np.asarray(jax.vmap(lambda x: problem.loss(x[None], None, {}))(np.array(xs))),
        ".-",
        lw=0.6,
        color="tab:red",
        label=f"heavy ball from x0 = {starts[i]:.1f}",
    )
    ax.plot(
        cycle,
        np.asarray(jax.vmap(lambda x: problem.loss(x[None], None, {}))(cycle)),
        "ko",
        mfc="none",
        ms=10,
        label="exact 3-cycle",
    )
    ax.set(xlabel="x", ylabel="f(x)", title="the cycle on f")
    ax.legend(fontsize=8)
    ax = axes[2]
    n_show = 120
    for params, x0, color, label in [
        (HEAVY_BALL, 3.1, "tab:red", "heavy ball, x0 = 3.1"),
        (HEAVY_BALL, 3.0, "tab:purple", "heavy ball, x0 = 3.0"),
        (NESTEROV, 3.1, "tab:blue", "Nesterov, x0 = 3.1"),
    ]:
        run = ds.dynamics.bind(method(problem, params), {"lr": params["lr"], "x0": x0})
        state, values = run.init(jax.random.key(0)), []
        for t in range(n_show):
            values.append(float(problem.loss(state.params, None, {})))
            state = run.step(state, jax.random.key(t))
        ax.semilogy(np.arange(n_show), np.maximum(values, 1e-30), color=color, label=label)
    # the rate bound of nesterov_gap for the start drawn here (it bounds f(y_k) - f*, y_k = x_(k-1) - lr f'(x_(k-1)))
    x0_nag = 3.1
    k_show = np.arange(1, n_show + 1)
    bound_nag = (MU + L) / 2 * x0_nag**2 * np.exp(-(k_show - 1) / np.sqrt(L / MU))
    ax.semilogy(
        k_show,
        bound_nag,
        "--",
        color="tab:blue",
        lw=0.8,
        label=f"Nesterov's rate bound, x0 = {x0_nag}:\n((μ+L)/2) x0² exp(-(k-1)/√Q) on f(y_k) - f*",
    )
    ax.set(xlabel="iteration k", ylabel="f(x_k) - f*", ylim=(1e-30, 1e6), title="losses (an exact 0 is drawn at 1e-30)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: no curve hidden
    print("figure:", _cli.save_figure(fig, args, "heavy_ball_cycle.png"), f"({elapsed:.0f} s)")
    saved = xr.Dataset(
        {
            "heavy_ball": ("x0", hb),
            "nesterov": ("x0", nag),
            "heavy_ball_last": (("x0", "lag"), hb_last),
            "cycle": ("point", cycle),
            "exponents": ("exponent", np.asarray(lyap.exponents)),
            "partial_sums": ("exponent", np.asarray(lyap.partial_sums)),
        },
        coords={"x0": starts},
        attrs={"outcome": "0: minimum, 3: on the 3-cycle, -1: other", "steps": args.steps},
    )
    ds.io.save(saved, f"{args.results}/heavy_ball_cycle.nc")
    return hb, nag, cycle, lyap


if __name__ == "__main__":
    main()
