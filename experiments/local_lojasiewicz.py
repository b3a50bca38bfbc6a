"""SGD under a local Łojasiewicz condition (seed 003, An & Lu): the theorems checked by Monte Carlo.

The paper has no experiments; these are the seed digest's tests (Secs. 2.3-3.5), on quadratics where
every constant is known (``alpha = 2``, ``C_L = 1``), in float64:

* **(3.8) is tight**: ``F = |theta|^2/2`` in 4-D, ML noise ``sigma = 2``, ``lr = 1/8`` (Thm 3.1's largest
  step): the mean of ``F(theta_k)`` over ``--n`` runs against ``rho^k F_0``.
* **Three nested step-size regions** (1-D, ``Z ~ N(0, 1)``): Thm 3.1's ``lr <= 1/(2(2 + sigma))``, the
  mean-``F`` region ``rho < 1`` (``lr < 4/(2 + sigma)``), and almost-sure convergence, a negative Lyapunov
  exponent (quadrature); the exponent of every cell of an ``(lr, sigma)`` grid is measured from the
  simulated ``log|theta|``.
* **Confinement (Thm 3.1)**: the share of runs that ever leave ``B(theta_0, R - 1)``, ``R = 2``, in 2-D with
  ``sigma = 8`` and ``lr = 0.05``, from ``theta_0 = (x_0, 0)``, against the corrected bound ``B_exit`` and
  the bound as the paper prints it (3.19); Gaussian and sparse (``p = 1e-4``) noise.
* **Thm 4.1's "aligned" noise**: ``F = theta^2/2``, ``theta_0 = 0.5``, Rademacher noise turned into the
  direction of ``Z_1`` (Robbins-Monro steps ``1.5/(k + 2)``): the exact exit probability is 3/4 for
  ``0.5 < r < 1.125``, 1/2 up to 1.5 and 0 beyond, not 1 as the theorem says; the unaligned control.
* **Thm 4.1, corrected**: aligned noise does exit almost surely once its mean exceeds ``sup|F'|`` on the
  ball: the pseudo-Huber ``sqrt(1 + theta^2) - 1`` with ``Z ~ N(0, 1.5^2)``, the theorem's constants for
  ``r = 1, 2``; and the aligned Gaussian variant on ``theta^2/2``, which settles at ``-sign(Z_1) sqrt(2/pi)``.
* **Lemma 4.2**: ``k^q E F(theta_k)`` with additive noise of variance 1 against its exact limit
  (``gamma^2 / (2 (2 gamma - 1))`` for ``q = 1``, ``gamma / 4`` for ``q < 1``) and the paper's constant.

    python experiments/local_lojasiewicz.py [--n 200000] [--grid 48]
    python experiments/local_lojasiewicz.py --replot   # the figure and tables again from results/, no simulation
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
from scipy import optimize  # noqa: E402

import dynsim as ds  # noqa: E402
from dynsim import lojasiewicz as lj  # noqa: E402

ALPHA, C_L = 2.0, 1.0  # F = |theta|^2 / 2
X0S = np.array([0.01, 0.05, 0.1, 0.2, 0.4])
RM_CASES = [(1.0, 1.5, 2), (1.0, 3.0, 6), (0.75, 1.5, 2), (0.6, 1.0, 2)]  # (q, gamma, n0) of Lemma 4.2


def ml_sgd(theta0, sigma: float, **noise):
    problem = ds.problems.quadratic(np.eye(len(theta0)), theta0=theta0)
    return ds.dynamics.gd(problem, noise=[ds.dynamics.multiplicative_noise(sigma, **noise)])


def tight_contraction(args) -> xr.Dataset:
    theta0 = np.full(4, 0.5)
    return ds.simulate(
        ml_sgd(theta0, 2.0),
        grid={"lr": [lj.max_learning_rate(ALPHA, C_L, 2.0)]},
        n_replicas=args.n,
        n_steps=30,
        record_every=1,
        seed=args.seed,
        observables={"loss": ds.observables.loss()},
    )


def exponent_diagram(args) -> xr.Dataset:
    lrs = np.geomspace(0.01, 5.0, args.grid)
    sigmas = np.geomspace(0.25, 128.0, args.grid // 2)
    problem = ds.problems.quadratic(1.0, theta0=1.0)
    dyn = ds.dynamics.gd(problem, noise=[ds.dynamics.multiplicative_noise()])
    res = ds.simulate(
        dyn,
        grid={"lr": lrs, "noise": sigmas},
        n_replicas=args.diagram_replicas,
        n_steps=args.diagram_steps,
        seed=args.seed + 1,
        observables={"logdist": ds.observables.log_distance(np.zeros(1)), "diverged": ds.observables.diverged()},
        checkpoint=_cli.checkpoint(args, "local_lojasiewicz_diagram"),
    )
    # exponent per run: (log|theta_T| - log|theta_0|) / T; theta_0 = 1
    per_run = res.logdist / (2 * args.diagram_steps)
    out = xr.Dataset(
        {
            "exponent": per_run.mean("replica"),
            "stderr": per_run.std("replica", ddof=1) / np.sqrt(res.sizes["replica"]),
            "clean": np.isfinite(res.logdist).all("replica") & (res.diverged_step < 0).all("replica"),
            "theory": (("lr", "noise"), np.stack([lj.quadratic_exponent(lrs, s) for s in sigmas], axis=1)),
        }
    )
    return out.rename({"noise": "sigma"})


def confinement(args) -> xr.Dataset:
    sigma, lr, R = 8.0, 0.05, 2.0
    laws = {"gaussian": {}, "sparse": {"law": "sparse", "p": args.sparse_p}}
    exits = np.zeros((len(laws), len(X0S)), dtype=np.int64)
    for i, noise in enumerate(laws.values()):
        for j, x0 in enumerate(X0S):
            theta0 = np.array([x0, 0.0])
            res = ds.simulate(
                ml_sgd(theta0, sigma, **noise),
                grid={"lr": [lr]},
                n_replicas=args.n,
                n_steps=args.confinement_steps,
                seed=args.seed + 2 + j,
                observables={"exit": ds.observables.ball_exit(theta0, [R - 1, R])},
            )
            exits[i, j] = int((res.exit.sel(exit_radius=R - 1).values >= 0).sum())
    f0, m0 = X0S**2 / 2, (R - 1 - X0S) ** 2 / 2
    bound = [lj.exit_probability_bound(lr, ALPHA, C_L, sigma, f, m) for f, m in zip(f0, m0)]
    printed = [lj.exit_probability_bound(lr, ALPHA, C_L, sigma, f, m, printed=True) for f, m in zip(f0, m0)]
    tail = [
        lj.exit_probability_bound(lr, ALPHA, C_L, sigma, f, m, after=args.confinement_steps) for f, m in zip(f0, m0)
    ]
    return xr.Dataset(
        {
            "exits": (("law", "x0"), exits),
            "bound": ("x0", np.array(bound)),
            "printed_bound": ("x0", np.array(printed)),
            "tail_after_horizon": ("x0", np.array(tail)),
        },
        coords={"law": list(laws), "x0": X0S},
        attrs={"n": args.n, "steps": args.confinement_steps, "sigma": sigma, "lr": lr, "R": R, "p": args.sparse_p},
    )


def covered_start(conf: xr.Dataset, delta: float, printed: bool = False) -> float:
    """The largest ``x_0`` of :func:`confinement`'s starts ``(x_0, 0)`` whose ``F_0 = x_0^2/2`` is at most Thm 3.1's
    ``epsilon(delta)`` (:func:`dynsim.lojasiewicz.max_initial_loss`), with the shell's ``M_0 = (R - 1 - x_0)^2/2``."""
    sigma, lr, R = (conf.attrs[k] for k in ("sigma", "lr", "R"))

    def gap(x0):
        m0 = (R - 1 - x0) ** 2 / 2
        return x0**2 / 2 - float(lj.max_initial_loss(lr, ALPHA, C_L, sigma, m0, delta, printed=printed))

    return optimize.brentq(gap, 1e-12, (R - 1) * (1 - 1e-9), xtol=1e-12)


def travel(n_runs: int = 20_000, seed: int = 0, k_max: int = 60) -> dict[str, np.ndarray]:
    """The proof's travel bounds (3.10)-(3.12) against SGD on ``F = |theta|^2/2`` in ``R^4``, ML noise ``sigma = 2``,
    ``lr = eta_max``, ``F_0 = 0.01``, the ball ``B(theta_0, 1)``: the mean length of step ``k`` of a run still in the
    ball (``1_{E_k} |theta_{k+1} - theta_k|``, with its standard error) and the stopped path length per run, with the
    corrected bounds ``A lr rho^(k/2) sqrt(F_0)`` and ``A lr sqrt(F_0) / (1 - sqrt rho)`` and the printed ones
    (``F_0`` for ``sqrt(F_0)``)."""
    sigma, d, f0 = 2.0, 4, 0.01
    lr = lj.max_learning_rate(ALPHA, C_L, sigma)
    theta0 = np.full(d, np.sqrt(2 * f0 / d))
    res = ds.simulate(
        ml_sgd(theta0, sigma),
        grid={"lr": [lr]},
        n_replicas=n_runs,
        n_steps=k_max,
        record_every=1,
        seed=seed,
        observables={"theta": ds.observables.trajectory()},
    )
    theta = res.theta.values[0]  # (replica, time, d)
    inside = np.cumprod(np.linalg.norm(theta - theta0, axis=-1) <= 1.0, axis=1)[:, :-1]  # 1_{E_k}
    steps = np.linalg.norm(np.diff(theta, axis=1), axis=-1) * inside
    return {
        "step_mean": steps.mean(axis=0),
        "step_stderr": steps.std(axis=0, ddof=1) / np.sqrt(n_runs),
        "step_bound": np.array([lj.travel_bound(lr, ALPHA, C_L, sigma, f0, k) for k in range(k_max)]),
        "step_bound_printed": np.array(
            [lj.travel_bound(lr, ALPHA, C_L, sigma, f0, k, printed=True) for k in range(k_max)]
        ),
        "path": steps.sum(axis=1),
        "path_bound": lj.travel_bound(lr, ALPHA, C_L, sigma, f0),
        "path_bound_printed": lj.travel_bound(lr, ALPHA, C_L, sigma, f0, printed=True),
    }


def travel_dataset(t: dict[str, np.ndarray]) -> xr.Dataset:
    """:func:`travel`'s results as a dataset: per step ``k`` the mean step and its bounds, per run the path length,
    and the path bounds."""
    per_step = ("step_mean", "step_stderr", "step_bound", "step_bound_printed")
    return xr.Dataset(
        {name: ("k", t[name]) for name in per_step}
        | {"path": ("run", t["path"]), "path_bound": t["path_bound"], "path_bound_printed": t["path_bound_printed"]}
    )


def summary_travel(travelled: xr.Dataset) -> None:
    t = {name: travelled[name].values for name in travelled.data_vars}
    ratios = ", ".join(f"{t['step_mean'][k] / t['step_bound'][k]:.3f} at k = {k}" for k in (0, 10, 30))
    path = t["path"]
    print(
        f"travel (3.10)-(3.12): mean step of a run still in the ball over its corrected bound: {ratios}; mean path "
        f"{path.mean():.4f} ± {path.std(ddof=1) / np.sqrt(path.size):.4f} against {t['path_bound']:.4f}; with F_0 "
        f"for sqrt(F_0), as printed, the bound on the mean step 0 is "
        f"{t['step_mean'][0] / t['step_bound_printed'][0]:.2f} times below it and on the path "
        f"{path.mean() / t['path_bound_printed']:.2f} times"
    )


def robbins_monro(law: str, aligned: bool, *, loss: str = "quadratic", scale: float = 1.0) -> ds.dynamics.Dynamics:
    """SGD with steps ``gamma/(k + n0)^q`` and additive noise from ``theta_0 = 0.5``, Thm 4.1's alignment optional.

    ``theta <- theta - lr_k (F'(theta) + xi_k)``, ``F = theta^2/2`` (``loss="quadratic"``) or the pseudo-Huber
    ``F = sqrt(1 + theta^2) - 1`` (``|F'| < 1``); ``xi_k = scale Z_k``, ``Z_k`` Rademacher or N(0, 1).
    Aligned: from ``k = 1`` on, ``xi_k = |xi_k| sign(Z_1)`` (in 1-D the rotation O_k of eq. 4.15 is a sign),
    ``xi_0 = scale Z_0``.
    """
    grad = {"quadratic": lambda t: t, "pseudo_huber": lambda t: t / jnp.sqrt(1 + t * t)}[loss]

    def draw(key):
        if law == "rademacher":
            return jnp.where(jax.random.bernoulli(key), 1.0, -1.0)
        return jax.random.normal(key, (), jnp.result_type(float))

    def init(key, hp):
        return {"theta": jnp.asarray(0.5, jnp.result_type(float)), "sign": jnp.asarray(0.0), "k": jnp.asarray(0)}

    def step(state, key, hp):
        z = scale * draw(key)
        k = state["k"]
        sign = jnp.where(k == 1, jnp.sign(z), state["sign"])
        xi = jnp.where((k >= 1) & aligned, jnp.abs(z) * sign, z)
        lr = hp["gamma"] / (k + hp["n0"]) ** hp["q"]
        return {"theta": state["theta"] - lr * (grad(state["theta"]) + xi), "sign": sign, "k": k + 1}

    return ds.dynamics.Dynamics(
        init,
        step,
        hyperparams={"gamma": 1.5, "n0": 2.0, "q": 1.0},
        params_of=lambda s: s["theta"],
        name=f"robbins_monro({law}, aligned={aligned}, {loss})",
    )


HUBER_CASES = [(1.0, 1.0, 2.5, 6), (1.0, 0.75, 2.5, 11), (2.0, 1.0, 4.0, 16), (2.0, 0.75, 4.0, 40)]  # (r, q, gamma, n0)


def corrected_condition(args) -> xr.Dataset:
    """The provable form of Thm 4.1 (seed 003 digest, Sec. 3.5): aligned noise exits a.s. when its mean ``m``
    exceeds ``sup |F'|`` on the ball. Pseudo-Huber (``|F'| < 1``), ``Z ~ N(0, 1.5^2)`` (``m = 1.197``), the
    theorem's constants for ``r = 1, 2`` and ``q = 1, 0.75``; and the aligned Gaussian variant on ``theta^2/2``
    (``q = 0.75``), whose runs settle at ``-sign(Z_1) sqrt(2/pi)`` inside large balls instead."""
    rows = []
    for r, q, gamma, n0 in HUBER_CASES:
        res = ds.simulate(
            robbins_monro("normal", True, loss="pseudo_huber", scale=1.5),
            grid={"q": [q], "gamma": [gamma], "n0": [float(n0)]},
            n_replicas=args.n_aligned,
            n_steps=args.huber_steps,
            seed=args.seed + 20,
            observables={"exit": ds.observables.ball_exit(0.5, [r])},
        )
        rows.append(res.exit.values.reshape(-1))
    gauss = ds.simulate(
        robbins_monro("normal", True),
        grid={"q": [0.75]},
        n_replicas=args.n_aligned,
        n_steps=args.aligned_steps,
        seed=args.seed + 30,
        observables={"exit": ds.observables.ball_exit(0.5, [0.6, 1.0, 2.0]), "last": ds.observables.final_state()},
    )
    return xr.Dataset(
        {
            "huber_exit_step": (("case", "run"), np.array(rows)),
            "gauss_exit": (("radius",), (gauss.exit.values.reshape(-1, 3) >= 0).mean(axis=0)),
            "gauss_abs_last": np.abs(gauss.last.values).mean(),
        },
        coords={
            "case": [f"r={r:g}, q={q:g}" for r, q, _, _ in HUBER_CASES],
            "radius": [0.6, 1.0, 2.0],
        },
        attrs={"n": args.n_aligned},
    )


def aligned_noise(args) -> dict[str, xr.Dataset]:
    radii = np.round(np.arange(0.51, 2.0001, 0.01), 2)
    out = {}
    for name, law, aligned in [("aligned", "rademacher", True), ("control", "normal", False)]:
        out[name] = ds.simulate(
            robbins_monro(law, aligned),
            grid={"q": [1.0]},
            n_replicas=args.n_aligned,
            n_steps=args.aligned_steps,
            seed=args.seed + 10,
            observables={"exit": ds.observables.ball_exit(0.5, radii)},
        )
    return out


def lemma42(args) -> xr.Dataset:
    rows = []
    for case, (q, gamma, n0) in enumerate(RM_CASES):
        res = ds.simulate(
            robbins_monro("normal", False),
            grid={"q": [q], "gamma": [gamma], "n0": [float(n0)]},
            n_replicas=args.n_lemma,
            n_steps=args.lemma_steps,
            seed=args.seed + 20 + case,
            observables={"theta": ds.observables.final_state()},
        )
        f = res.theta.values.ravel() ** 2 / 2  # one cell
        k = args.lemma_steps
        # exact second moment: m_{j+1} = (1 - lr_j)^2 m_j + lr_j^2, m_0 = 0.25
        m = 0.25
        for j in range(k):
            lr = gamma / (j + n0) ** q
            m = (1 - lr) ** 2 * m + lr**2
        limit = gamma**2 / (2 * (2 * gamma - 1)) if q == 1 else gamma / 4
        paper = gamma**2 * C_L / (ALPHA * gamma - 2) if q == 1 else gamma**2 * C_L / (ALPHA * gamma)
        rows.append((q, gamma, n0, k**q * f.mean(), k**q * f.std(ddof=1) / np.sqrt(f.size), k**q * m / 2, limit, paper))
    names = ["q", "gamma", "n0", "simulated", "stderr", "exact", "limit", "paper"]
    return xr.Dataset(
        {n: ("case", np.array(col)) for n, col in zip(names, zip(*rows))},
        attrs={"n": args.n_lemma, "steps": args.lemma_steps},
    )


def contraction_ratio(tight: xr.Dataset) -> xr.Dataset:
    """The mean of ``F(theta_k)`` over the ``n`` runs divided by ``rho^k F_0`` (``ratio``, with its ``stderr``) per
    step ``k``; ``lr``, ``rho`` and ``n`` in the attributes."""
    lr = float(tight.lr[0])
    rho = float(lj.contraction_rate(lr, ALPHA, C_L, 2.0))
    loss = tight.loss.isel(lr=0).values  # (replica, time)
    k = tight.time.values
    exact = rho**k * loss[0, 0]
    return xr.Dataset(
        {
            "ratio": ("k", loss.mean(axis=0) / exact),
            "stderr": ("k", loss.std(axis=0, ddof=1) / np.sqrt(loss.shape[0]) / exact),
        },
        coords={"k": k},
        attrs={"lr": lr, "rho": rho, "n": loss.shape[0]},
    )


def unpack_contraction(contraction: xr.Dataset):
    """``(lr, rho, k, ratio, stderr, n)`` of :func:`contraction_ratio`'s dataset."""
    a = contraction.attrs
    k, ratio, se = contraction.k.values, contraction.ratio.values, contraction.stderr.values
    return float(a["lr"]), float(a["rho"]), k, ratio, se, int(a["n"])


def figure(contraction, diagram, conf, aligned, lemma):
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.6))

    ax = axes[0, 0]
    lr, rho, k, ratio, se, n = unpack_contraction(contraction)
    ax.fill_between(k, ratio - 2 * se, ratio + 2 * se, alpha=0.3, label="± 2 s.e.")
    ax.plot(k, ratio, "o-", ms=3, label=f"mean of {n} runs / (rho^k F_0)")
    ax.axhline(1, color="k", ls="--", lw=1)
    ax.set_xlabel("step k")
    ax.set_ylabel("mean F(θ_k) / (ρ^k F_0)")
    ax.set_title(f"(3.8) is an equality on |θ|²/2:\n4-D, σ = 2, lr = {lr}, ρ = {rho}")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[0, 1]
    lrs, sig = diagram.lr.values, diagram.sigma.values
    z = 2.58 * diagram.stderr.values
    sim = np.where(diagram.exponent.values + z < 0, -1, np.where(diagram.exponent.values - z > 0, 1, 0))
    ax.pcolormesh(sig, lrs, sim, cmap="coolwarm", vmin=-1.5, vmax=1.5, shading="nearest")
    fine = np.geomspace(sig[0], sig[-1], 200)
    ax.plot(fine, [lj.max_learning_rate(ALPHA, C_L, s) for s in fine], "k-", lw=1.5, label="Thm 3.1: lr = 1/(2(2+σ))")
    ax.plot(fine, [lj.mean_square_threshold(ALPHA, C_L, s) for s in fine], "k--", lw=1.5, label="ρ = 1: lr = 4/(2+σ)")
    ax.plot(fine, [lj.quadratic_exponent_threshold(s) for s in fine], "k:", lw=2, label="exponent = 0 (quadrature)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ (ML noise level)")
    ax.set_ylabel("lr")
    ax.set_title("1-D exponent: blue < 0, red > 0 (99%),\ngrey undecided")
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[0, 2]
    j = int(np.argmin(np.abs(sig - 2.0)))
    ax.errorbar(
        lrs,
        diagram.exponent.values[:, j],
        yerr=2 * diagram.stderr.values[:, j],
        fmt="o",
        ms=3,
        label=f"simulated (± 2 s.e.), σ = {sig[j]:.2f}",
    )
    edge = lj.quadratic_exponent_threshold(sig[j])
    ax.axvline(edge, color="gray", ls="-.", lw=1, label=f"exponent = 0 at lr = {edge:.3f} (σ = {sig[j]:.2f})")
    fine_lr = np.geomspace(lrs[0], lrs[-1], 400)
    ax.plot(fine_lr, lj.quadratic_exponent(fine_lr, sig[j]), "k-", lw=1, label="E log|1 - lr - lr √(σ/2) Z|")
    rho_line = lj.contraction_rate(fine_lr, ALPHA, C_L, sig[j])
    ax.plot(fine_lr, 0.5 * np.log(rho_line), "C1--", lw=1, label="½ log ρ (Jensen: an upper bound)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xscale("log")
    ax.set_ylim(-2.5, 1.5)
    ax.set_xlabel("lr")
    ax.set_ylabel("Lyapunov exponent of |θ_k|")
    ax.set_title(f"a.s. convergence far beyond ρ < 1\n(σ = {sig[j]:.2f}: the diagram's σ nearest 2)")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    n = conf.attrs["n"]
    for i, law in enumerate(conf.law.values):
        e = conf.exits.values[i]
        lo, hi = ds.stability.wilson_interval(e, n, level=0.95)
        p = e / n
        shown = np.where(p > 0, p, np.nan)
        if (e > 0).any():  # no legend entry for a series with nothing to draw
            ax.errorbar(
                conf.x0,
                shown,
                yerr=[np.nan_to_num(shown - lo), np.nan_to_num(hi - shown)],
                fmt="o",
                color=f"C{i}",
                capsize=3,
                label=f"{law} Z: share that left (95% Wilson)",
            )
        none = e == 0
        if none.any():
            ax.plot(conf.x0[none], hi[none], "v", color=f"C{i}", ms=5, label=f"{law} Z: none left; 95% upper limit")
    ax.plot(conf.x0, conf.bound, "k-", label="B_exit (corrected)")
    ax.plot(conf.x0, conf.printed_bound, "k:", label="eq. (3.19) as printed")
    ax.axhline(1, color="gray", lw=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("x_0 (θ_0 = (x_0, 0), F_0 = x_0²/2)")
    ax.set_ylabel("P(leave B(θ_0, R-1))")
    ax.set_title(f"confinement: 2-D, σ = 8, lr = 0.05, R = 2,\n{n} runs x {conf.attrs['steps']} steps")
    ax.set_ylim(1e-10, 1e2)  # room for the legend below the points
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[1, 1]
    for name, res, style in [
        ("aligned Rademacher (Thm 4.1)", aligned["aligned"], "o"),
        ("unaligned N(0,1) control", aligned["control"], "s"),
    ]:
        e = res.exit.isel(q=0).values >= 0
        r = res.exit_radius.values
        p = e.mean(axis=0)
        se = np.sqrt(p * (1 - p) / e.shape[0])
        ax.errorbar(r, p, yerr=2 * se, fmt=style, ms=2, elinewidth=0.5, label=f"{name} (± 2 s.e.)")
    r = np.linspace(0.5, 2.0, 1000)
    ax.plot(r, np.where(r < 1.125, 0.75, np.where(r < 1.5, 0.5, 0.0)), "k-", lw=1, label="exact (aligned)")
    ax.axhline(1, color="gray", ls=":", label="Thm 4.1 as stated")
    ax.set_xlabel("radius r")
    ax.set_ylabel("P(leave B(θ_0, r))")
    ax.set_ylim(-0.05, 1.4)  # room for the legend above the curves
    ax.set_title(f"Thm 4.1: θ²/2, θ_0 = 0.5, lr_k = 1.5/(k+2),\n{ds.io.config(aligned['aligned'])['n_steps']} steps")
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1, 2]
    x = np.arange(lemma.sizes["case"])
    ax.errorbar(
        x - 0.1, lemma.simulated, yerr=2 * lemma.stderr, fmt="o", label=f"simulated ({lemma.attrs['n']} runs, ± 2 s.e.)"
    )
    ax.plot(x, lemma.exact, "k_", ms=20, mew=2, label=f"exact at k = {lemma.attrs['steps']}")
    ax.plot(x + 0.1, lemma.limit, "s", mfc="none", label="exact limit k → ∞")
    ax.plot(x, lemma.paper, "v", color="C3", label="Lemma 4.2's constant (a bound)")
    ax.set_xticks(
        x,
        [f"q={q:g}\nγ={g:g}, n0={n:g}" for q, g, n in zip(lemma.q.values, lemma.gamma.values, lemma.n0.values)],
        fontsize=8,
    )
    ax.set_ylabel("k^q E F(θ_k)")
    ax.set_title("Lemma 4.2: additive noise of variance 1")
    ax.legend(fontsize=8)
    fig.suptitle("Seed 003 (SGD under a local Łojasiewicz condition) on quadratics, float64", fontsize=11)
    return fig


RESULTS = ("contraction", "diagram", "confinement", "aligned", "control", "corrected", "lemma42", "travel")


def compute(args) -> dict[str, xr.Dataset]:
    """Every panel's and table's results, in float64, by the names in ``RESULTS``."""
    with jax.enable_x64(True):
        return {
            "contraction": contraction_ratio(tight_contraction(args)),
            "diagram": exponent_diagram(args),
            "confinement": confinement(args),
            **aligned_noise(args),
            "corrected": corrected_condition(args),
            "lemma42": lemma42(args),
            "travel": travel_dataset(travel(seed=args.seed)),
        }


def paths(folder: str) -> dict[str, str]:
    return {name: os.path.join(folder, f"local_lojasiewicz_{name}.nc") for name in RESULTS}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="runs for the contraction and confinement panels")
    parser.add_argument("--grid", type=int, default=48, help="learning rates of the diagram (half as many sigmas)")
    parser.add_argument("--diagram-replicas", type=int, default=512)
    parser.add_argument(
        "--diagram-steps", type=int, default=200, help="short enough that |theta| neither over- nor underflows float64"
    )
    parser.add_argument("--confinement-steps", type=int, default=400)
    parser.add_argument("--sparse-p", type=float, default=1e-4)
    parser.add_argument("--n-aligned", type=int, default=20_000)
    parser.add_argument("--aligned-steps", type=int, default=20_000)
    parser.add_argument("--huber-steps", type=int, default=3000)
    parser.add_argument("--n-lemma", type=int, default=20_000)
    parser.add_argument("--lemma-steps", type=int, default=20_000)
    args = _cli.parse(parser, argv, replot=True)
    started = time.perf_counter()
    results = _cli.saved_results(parser, args, paths(args.results), lambda: compute(args))
    panels = [results[name] for name in ("contraction", "diagram", "confinement")]
    panels += [{name: results[name] for name in ("aligned", "control")}, results["lemma42"]]
    path = _cli.save_figure(figure(*panels), args, "local_lojasiewicz.png")
    summary(*panels)
    summary_corrected(results["corrected"])
    summary_travel(results["travel"])
    print(f"wrote {path} and {args.results}/local_lojasiewicz_*.nc in {time.perf_counter() - started:.1f} s")


def summary(contraction, diagram, conf, aligned, lemma) -> None:
    _, _, k, ratio, se, _ = unpack_contraction(contraction)
    z = (ratio[1:] - 1) / se[1:]
    print(
        f"(3.8): mean F_k / (rho^k F_0) in [{ratio.min():.4f}, {ratio.max():.4f}], "
        f"|z| <= {np.abs(z).max():.2f} over k = 1..{k[-1]}"
    )
    e, s, th = diagram.exponent.values, diagram.stderr.values, diagram.theory.values
    decided = np.abs(e) > 2.58 * s
    agree = np.sign(e[decided]) == np.sign(th[decided])
    clean = diagram.clean.values
    zz = ((e - th) / s)[clean]
    print(
        f"diagram: {decided.mean():.1%} of {e.size} cells decided at 99%, {agree.mean():.1%} of them agree with the "
        f"sign of the quadrature exponent; on the {clean.sum()} cells without divergence or underflow, "
        f"(simulated - quadrature)/stderr has median |z| {np.median(np.abs(zz)):.2f}, max {np.max(np.abs(zz)):.2f}"
    )
    n = conf.attrs["n"]
    print(f"confinement ({n} runs, {conf.attrs['steps']} steps):  x0   gaussian   sparse   B_exit   printed   tail")
    for j, x0 in enumerate(conf.x0.values):
        g, sp = conf.exits.values[:, j]
        print(
            f"  {x0:5.2f}  {g / n:9.2e} {sp / n:9.2e} {float(conf.bound[j]):8.4f} {float(conf.printed_bound[j]):8.4f} "
            f"{float(conf.tail_after_horizon[j]):.1e}"
        )
    x_eps = covered_start(conf, delta=0.05)
    print(
        f"Thm 3.1 with delta = 0.05 (eq. 3.20, corrected): confinement with probability >= 95% is guaranteed for "
        f"x0 <= {x_eps:.4f} (F_0 <= {x_eps**2 / 2:.2e}); as printed, x0 <= {covered_start(conf, 0.05, True):.4f}"
    )
    for name, res in aligned.items():
        p = (res.exit.isel(q=0).values >= 0).mean(axis=0)
        r = res.exit_radius.values
        picks = [np.argmin(np.abs(r - v)) for v in (0.6, 1.0, 1.12, 1.13, 1.49, 1.5, 2.0)]
        print(f"{name}: P(exit) at r = " + ", ".join(f"{r[i]:.2f}: {p[i]:.4f}" for i in picks))
    for row in range(lemma.sizes["case"]):
        c = lemma.isel(case=row)
        print(
            f"Lemma 4.2 q={float(c.q):g} gamma={float(c.gamma):g} n0={float(c.n0):g}: "
            f"k^q E F = {float(c.simulated):.4f} ± {float(c.stderr):.4f}, exact {float(c.exact):.4f}, "
            f"limit {float(c.limit):.4f}, paper {float(c.paper):.4f}"
        )


def summary_corrected(corrected) -> None:
    for case in corrected.case.values:
        steps = corrected.huber_exit_step.sel(case=case).values
        left = steps >= 0  # -1: the run never left the ball
        if left.any():
            q50, q90 = np.quantile(steps[left], [0.5, 0.9])
            exits = f"exit step median {q50:.0f}, 90% {q90:.0f}, max {steps[left].max()}"
        else:
            exits = "no run left the ball"
        print(f"Thm 4.1 corrected (pseudo-Huber, m = 1.197 > sup|F'|), {case}: P(exit) = {left.mean():.4f}; {exits}")
    g = corrected.gauss_exit.values
    print(
        f"aligned Gaussian on theta^2/2 (q = 0.75): P(exit) = {g[0]:.4f} (r = 0.6), {g[1]:.4f} (r = 1), "
        f"{g[2]:.4f} (r = 2); mean |theta_K| = {float(corrected.gauss_abs_last):.4f} "
        f"(sqrt(2/pi) = {np.sqrt(2 / np.pi):.4f})"
    )


if __name__ == "__main__":
    main()
