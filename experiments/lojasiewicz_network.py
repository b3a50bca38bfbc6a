"""A finite-width network that satisfies seed 003's Łojasiewicz assumption near its start (App. A, Thm A.1).

Seed 003 (An & Lu) verifies its local assumption for networks in Appendix A: with the
initialisation of Thm A.1 (``W_1 = 0``, all biases 0, hidden weights ``>= R``, output weights
``>= A > R/2``), every ``theta'`` in ``B(theta_0, R/2)`` that lies in the set

    Theta = {theta': (W'_1 x_i + b'_1)_j >= alpha~ |theta' - theta_0| for all i, j;  b'_l >= 0 for l >= 2}

has ``F(theta') >= K |theta' - theta_0|^2 - mean(y^2)`` (A.7), ``K = (alpha~^2/2)(A - R/2)^2 (R/2)^(2L-4)
(prod_l c_l d_l)^2``. SGD is not projected onto ``Theta``; the paper argues that "in practice" the
iterates stay in it, "as otherwise the gradient becomes small and training would terminate".

The seed digest's example (Sec. 4.3): ``L = 3``, inputs ``x_i = e_i`` in ``R^4`` (``n = 4``), widths
3 and 3 (``p = 31``), ``sigma(z) = 0.1 z + 0.9 (softplus(z) - log 2)`` (``c = 0.1``), hidden weights
``10 + U(0, 1)``, output weights ``15 + U(0, 1)``, ``alpha~ = 0.1``, ``y ~ U(-1/2, 1/2)``; the squared
loss without 1/2. Two checks, over several datasets:

* **(A.7)** at random points of ``Theta`` in the ball (drawn along directions that raise ``b_1``):
  violations, and the smallest ratio of ``F`` to the bound where the bound is positive;
* **SGD from theta_0** (batch 1, learning rates a fraction of ``2 / lambda_max(theta_0)``, many runs
  through ``ds.simulate``): the share of runs still in ``Theta`` (and in the ball) along the run,
  and the final loss; with the digest's signed targets and with positive ones.

    python experiments/lojasiewicz_network.py [--datasets 8] [--n 256] [--steps 4000]
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
from jax.flatten_util import ravel_pytree  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

import dynsim as ds  # noqa: E402

D_IN, WIDTHS = 4, (3, 3)
R, A, ALPHA_T, C = 10.0, 15.0, 0.1, 0.1
K = ALPHA_T**2 / 2 * (A - R / 2) ** 2 * (R / 2) ** (2 * 3 - 4) * np.prod([C * w for w in WIDTHS]) ** 2
FRACTIONS = np.array([0.05, 0.2, 0.5, 0.9])  # learning rates as fractions of 2 / lambda_max(theta_0)


def activation(z):
    """``0.1 z + 0.9 (softplus(z) - log 2)``: C^2, zero at 0, slope in ``(0.1, 1)``."""
    return 0.1 * z + 0.9 * (jax.nn.softplus(z) - jnp.log(2.0))


def forward(p, x):
    h = activation(p["W1"] @ x + p["b1"])
    h = activation(p["W2"] @ h + p["b2"])
    return (p["W3"] @ h + p["b3"])[0]


def start(seed: int) -> dict:
    """Thm A.1's initialisation: ``W_1 = 0``, biases 0, ``W_2 = R + U(0, 1)``, ``W_3 = A + U(0, 1)``."""
    rng = np.random.default_rng(seed)
    d1, d2 = WIDTHS
    return {
        "W1": np.zeros((d1, D_IN)),
        "b1": np.zeros(d1),
        "W2": R + rng.random((d2, d1)),
        "b2": np.zeros(d2),
        "W3": A + rng.random((1, d2)),
        "b3": np.zeros(1),
    }


def network_problem(seed: int, targets: str = "signed"):
    """The squared loss ``(y - phi(x))^2`` on ``x_i = e_i`` from Thm A.1's ``theta_0``, with ``y_i ~ U(-1/2, 1/2)``
    (``targets="signed"``, the seed digest's) or ``U(0, 1/2)`` (``"positive"``)."""
    rng = np.random.default_rng(10_000 + seed)
    y = rng.uniform(-0.5, 0.5, D_IN)
    data = {"x": np.eye(D_IN), "y": np.abs(y) if targets == "positive" else y}
    theta0 = start(seed)

    def loss(p, s, hp):
        return (s["y"] - forward(p, s["x"])) ** 2

    def init(key, hp):
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.result_type(float)), theta0)

    problem = ds.problems.Problem(loss=loss, init=init, n_data=D_IN, dataset=data, name="appendix_a_network")
    return problem, theta0, data


def distance(p, theta0):
    return jnp.sqrt(sum(jnp.sum((p[k] - theta0[k]) ** 2) for k in theta0))


def theta_margin(p, theta0, data):
    """``min(min_ij (W_1 x_i + b_1)_j - alpha~ |theta - theta_0|, min b_2, min b_3)``: in ``Theta`` iff >= 0."""
    first = jnp.min(p["W1"] @ jnp.asarray(data["x"]).T + p["b1"][:, None]) - ALPHA_T * distance(p, theta0)
    return jnp.minimum(first, jnp.minimum(jnp.min(p["b2"]), jnp.min(p["b3"])))


def check_bound(problem, theta0, data, key, n: int):
    """(A.7) at random points of ``Theta`` inside ``B(theta_0, R/2)``: (accepted, violations, min F / bound)."""
    flat0, unravel = ravel_pytree(jax.tree_util.tree_map(jnp.asarray, theta0))
    b1 = np.asarray(ravel_pytree({k: np.full(v.shape, k == "b1", float) for k, v in theta0.items()})[0]) > 0
    k_dir, k_rad, k_up = jax.random.split(key, 3)
    v = jax.random.normal(k_dir, (n, flat0.size), flat0.dtype)
    v = jnp.where(b1, jnp.abs(v) * jax.random.uniform(k_up, (n, 1), flat0.dtype, 1, 20), v)  # raise b_1
    v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
    r = R / 2 * jax.random.uniform(k_rad, (n, 1), flat0.dtype)
    points = flat0 + r * v

    def evaluate(flat):
        p = unravel(flat)
        f = ds.problems.objective(problem, p, data, {})
        return f, theta_margin(p, theta0, data), distance(p, theta0)

    f, margin, dist = jax.vmap(evaluate)(points)
    inside = np.asarray(margin >= 0)
    bound = K * np.asarray(dist) ** 2 - np.mean(data["y"] ** 2)
    f = np.asarray(f)
    violations = int(np.sum(inside & (f < bound)))
    positive = inside & (bound > 0)
    ratio = float(np.min(f[positive] / bound[positive])) if positive.any() else float("nan")
    return int(inside.sum()), violations, ratio


def run_sgd(problem, theta0, data, args, seed: int, checkpoint=None) -> xr.Dataset:
    f0 = lambda p: ds.problems.objective(problem, p, data, {})  # noqa: E731
    init = jax.tree_util.tree_map(jnp.asarray, theta0)
    top = float(ds.curvature.sharpness(f0, init).value)
    lrs = FRACTIONS * 2 / top
    res = ds.simulate(
        ds.dynamics.sgd(problem, batch_size=1),
        grid={"lr": lrs},
        n_replicas=args.n,
        n_steps=args.steps,
        record_every=args.steps // 40,
        seed=seed,
        observables={
            "margin": ds.observables.trajectory(lambda p: theta_margin(p, theta0, data)),
            "distance": ds.observables.trajectory(lambda p: distance(p, theta0)),
            "loss": ds.observables.loss(),
            "diverged": ds.observables.diverged(),
        },
        checkpoint=checkpoint,
    )
    res.attrs["sharpness0"] = top
    return res


def ball_constants(problem, theta0, data, seed: int) -> dict:
    """Thm 3.1's constants of the full-batch loss on the whole ball ``B(theta_0, R/2)`` (``Theta`` or not), by
    ``ds.lojasiewicz.ball_constants``: ``alpha`` and ``M_0`` (shell ``[R/2 - 1, R/2]``) upper bounds, ``C_L`` a lower
    bound; the ``Theta`` margin where the least ``F`` on the shell was found; Thm 3.1's step bound
    ``alpha / (4 C_L (2 C_L + sigma))`` at ``sigma = 0`` from them, an upper bound on the true one."""
    loss = lambda p: ds.problems.objective(problem, p, data, {})  # noqa: E731
    c = ds.lojasiewicz.ball_constants(loss, jax.tree_util.tree_map(jnp.asarray, theta0), R / 2, key=seed)
    return {
        "alpha_hat": c.alpha,
        "smoothness_hat": c.smoothness,
        "m0_hat": c.m0,
        "m0_margin": float(theta_margin(c.m0_at, theta0, data)),
        "step_bound_hat": ds.lojasiewicz.max_learning_rate(min(c.alpha, 2 * c.smoothness), c.smoothness, 0.0),
    }


def measure(args, targets: str) -> xr.Dataset:
    """Both checks on ``args.datasets`` datasets with the given targets."""
    rows, runs = [], []
    for s in range(args.datasets):
        problem, theta0, data = network_problem(args.seed + s, targets)
        accepted, violations, ratio = check_bound(problem, theta0, data, jax.random.key(args.seed + s), args.points)
        folder = _cli.checkpoint(args, f"lojasiewicz_network_{targets}_seed{args.seed + s}")
        res = run_sgd(problem, theta0, data, args, args.seed + s, checkpoint=folder)
        in_theta = (res.margin >= -1e-12).isel(time=slice(1, None)).values.reshape(len(FRACTIONS), args.n, -1)
        in_ball = (res.distance <= R / 2).values.reshape(len(FRACTIONS), args.n, -1)
        loss = res.loss.values.reshape(len(FRACTIONS), args.n, -1)
        rows.append((accepted, violations, ratio, float(np.mean(data["y"] ** 2)), res.attrs["sharpness0"]))
        runs.append(
            xr.Dataset(
                {
                    "stays_in_theta": ("fraction", in_theta.all(axis=2).mean(axis=1)),
                    "stays_in_ball": ("fraction", in_ball.all(axis=2).mean(axis=1)),
                    "final_loss": ("fraction", np.median(loss[:, :, -1], axis=1)),
                    "in_theta": (("fraction", "time"), in_theta.mean(axis=1)),
                    "loss": (("fraction", "time"), np.median(loss[:, :, 1:], axis=1)),
                },
                coords={"fraction": FRACTIONS, "time": res.time.values[1:]},
            )
        )
    result = xr.concat(runs, dim="dataset")
    for i, name in enumerate(["accepted", "violations", "min_ratio", "mean_y2", "sharpness0"]):
        result[name] = ("dataset", [r[i] for r in rows])
    problem, theta0, data = network_problem(args.seed, targets)  # the first dataset's constants on the whole ball
    for name, value in ball_constants(problem, theta0, data, args.seed).items():
        result[name] = value
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--n", type=int, default=256, help="SGD runs per learning rate and dataset")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--points", type=int, default=200_000, help="random points for the (A.7) check")
    args = _cli.parse(parser, argv)
    jax.config.update("jax_enable_x64", True)
    begin = time.perf_counter()
    print(f"K = {K:.5f}; theta_0 on the boundary of Theta (W_1 = b_1 = 0)")
    result = xr.concat([measure(args, targets) for targets in ("signed", "positive")], dim="targets")
    result = result.assign_coords(targets=["signed", "positive"])
    ds.io.save(result, f"{args.results}/lojasiewicz_network.nc")
    elapsed = time.perf_counter() - begin

    for targets in result.targets.values:
        r = result.sel(targets=targets)
        print(f"targets {targets}: (A.7) at {args.points} random points per dataset, those in Theta and the ball:")
        for s in range(args.datasets):
            print(
                f"  dataset {s}: {int(r.accepted[s])} in Theta, {int(r.violations[s])} violations, "
                f"min F/bound {float(r.min_ratio[s]):.3g}; mean y^2 {float(r.mean_y2[s]):.4f}, "
                f"lambda_max(theta_0) {float(r.sharpness0[s]):.4g}"
            )
        print(
            f"  dataset 0 on the whole ball B(theta_0, {R / 2:g}) (Theta or not), estimated: alpha <= "
            f"{float(r.alpha_hat):.4g}, C_L >= {float(r.smoothness_hat):.4g}, M_0 <= {float(r.m0_hat):.3g} on the "
            f"shell [{R / 2 - 1:g}, {R / 2:g}] (Theta margin there {float(r.m0_margin):.3g}; on Theta (A.7) gives "
            f"M_0 >= {K * (R / 2 - 1) ** 2 - float(r.mean_y2[0]):.3g}); Thm 3.1's step bound <= "
            f"{float(r.step_bound_hat):.3g} (sigma = 0)"
        )
        print(f"  SGD (batch 1, {args.n} runs x {args.steps} steps), over the {args.datasets} datasets:")
        for j, fr in enumerate(FRACTIONS):
            row = r.isel(fraction=j)
            print(
                f"  lr = {fr:.2f} x 2/lambda_max: share of runs always in Theta after the start "
                f"{np.round(row.stays_in_theta.values, 3)}; share of time in Theta "
                f"{float(row.in_theta.mean()):.3f}; always in the ball {float(row.stays_in_ball.mean()):.3f}; "
                f"median final F {np.median(row.final_loss.values):.2e} (max over datasets "
                f"{np.max(row.final_loss.values):.2e})"
            )

    plot(result, args)
    print("figure:", os.path.join(args.out, "lojasiewicz_network.png"), f"({elapsed:.0f} s)")
    return result


def plot(result: xr.Dataset, args) -> None:
    """Per dataset and learning rate: the share of runs that stay in Theta at every record after the start (colour)
    and the share of (run, record) pairs in Theta; and the training loss over the datasets."""
    n_sets = result.sizes["dataset"]
    cmap = ListedColormap(plt.cm.RdYlGn(np.linspace(0.15, 0.85, 256)))
    fig, axes = plt.subplots(1, 3, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1, 1.25]}, layout="constrained")
    for ax, targets in zip(axes[:2], result.targets.values):
        r = result.sel(targets=targets)
        stays = r.stays_in_theta.transpose("dataset", "fraction").values
        time_in = r.in_theta.mean("time").transpose("dataset", "fraction").values
        mesh = ax.pcolormesh(stays, cmap=cmap, vmin=0, vmax=1)
        for i in range(stays.shape[0]):
            for j in range(stays.shape[1]):
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    f"{stays[i, j]:.2f}\n({time_in[i, j]:.2f})",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
        count = (stays == 1).sum(axis=0)
        ax.set_xticks(
            np.arange(len(FRACTIONS)) + 0.5,
            [f"{fr:g}\n{c} of {n_sets}" for fr, c in zip(FRACTIONS, count)],
        )
        ax.set_yticks(np.arange(n_sets) + 0.5, [str(s) for s in range(n_sets)])
        ax.invert_yaxis()
        ax.tick_params(labelsize=9)
        ax.set(
            xlabel="lr / (2/λ_max(θ_0))\n(below: datasets where every run stays in Θ)",
            ylabel="dataset",
        )
        span = "U(-1/2, 1/2)" if targets == "signed" else "U(0, 1/2)"
        ax.set_title(
            f"{targets} targets y ~ {span}:\nshare of runs in Θ at every record\n"
            "(in brackets: share of all records in Θ)",
            fontsize=9,
        )
    cbar = fig.colorbar(mesh, ax=axes[:2], fraction=0.04, pad=0.01)
    cbar.set_label(f"share of the {args.n} runs in Θ at every record after the start", fontsize=8)
    cbar.ax.tick_params(labelsize=8)

    ax = axes[2]
    t = result.time.values
    for j in range(len(FRACTIONS)):
        color = plt.cm.viridis(j / (len(FRACTIONS) - 1))
        for targets, ls in zip(result.targets.values, ("-", "--")):
            loss = result.sel(targets=targets).loss.isel(fraction=j).values  # (dataset, time)
            if targets == "signed":
                ax.fill_between(t, loss.min(axis=0), loss.max(axis=0), color=color, alpha=0.25, lw=0)
            ax.plot(t, np.median(loss, axis=0), color=color, ls=ls, lw=1.2)
    ax.set_yscale("log")
    ax.set(
        xlabel="SGD step",
        ylabel="F (median over runs)",
        title="training loss F (squared loss) along SGD",
        xlim=(0, t[-1]),
    )
    ax.title.set_fontsize(9)
    handles = [
        plt.Line2D([], [], color=plt.cm.viridis(j / (len(FRACTIONS) - 1)), lw=2, label=f"lr = {fr:g} x 2/λ_max(θ_0)")
        for j, fr in enumerate(FRACTIONS)
    ]
    handles += [
        plt.Line2D([], [], color="k", lw=1.2, label="signed targets: median\nover datasets (band: min-max)"),
        plt.Line2D([], [], color="k", ls="--", lw=1.2, label="positive targets: median\nover datasets"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="center right")
    fig.suptitle(
        f"Thm A.1's set Θ along batch-1 SGD from θ_0 ({n_sets} datasets x {args.n} runs x {args.steps} steps, "
        f"records every {args.steps // 40} steps)",
        fontsize=10,
    )
    fig.savefig(os.path.join(args.out, "lojasiewicz_network.png"), dpi=110)


if __name__ == "__main__":
    main()
