"""Nonsmooth nonconvex optimization with INGD (seed 002, thesis ch. 5), float32.

* **(a, b) INGD's oracle complexity** (Algorithm 2, Thm 5.4.1): INGD on ``f = |x|_1`` in ``R^8``
  (``L = sqrt(8)``) from a fixed start (``Delta = f(x_1) = 4.744``), over a grid of ``delta`` and
  ``eps``, many replicas per cell: the gradient-oracle calls until the certificate ``|m| <= eps``
  against the theorem's ``192 Delta L^2/(eps^3 delta) log(4 Delta/(gamma delta eps))`` and the
  descents against ``T - 1 = 4 Delta/(eps delta) - 1``; every certified point checked against the
  exact ``d(0, df(x + delta B))`` of ``|x|_1`` (``ds.nonsmooth.l1_goldstein_distance``).
* **(c) Lemma 5.7.2**: inside one local search, ``v_k = E|m_{t,k}|^2 / L^2 <= 3/(k+2)``, by Monte Carlo
  (``m`` set to 0 once the loop stops, as in the lemma) on three functions where the descent test
  never passes: ``|x|`` at ``x_t = 0.6 delta`` (exactly ``v_k = 0.6^(k-1)``), a max of 7 linear
  pieces, and ``|x|_1`` in ``R^8`` near 0.
* **(d) Thm 5.5.1**: Stochastic INGD (Algorithm 3) with the theorem's own ``beta, p, q, T`` on ``|x|``
  with Gaussian gradient noise ``sigma``: ``(1/T) sum_t E|m_t|`` against ``eps/4``, and the share of
  iterates with ``|x_t| <= delta`` (the (delta, eps)-stationary ones; Algorithm 3 outputs one of them
  at a uniform random time, lagged by ``K``).
* **(e, f) Fig. 5-1 substitute** (ResNet20 on CIFAR-10 is out of reach): a ReLU MLP 64-128-128-10 on
  scikit-learn digits (1297 train / 500 test), batch 128, 100 epochs of ``1297 // 128`` minibatches
  (drawn with replacement), several seeds per optimizer in one ``simulate`` call each, with the
  thesis's settings: SGD with momentum (lr 0.1, momentum 0.9, lr / 10 at epochs 50 and 75, weight
  decay 5e-4), Adam (lr 1e-3, betas 0.9/0.999, eps 1e-3, weight decay 1e-6), Stochastic INGD
  (beta 0.9, p 1, q 10, weight decay 5e-4); weight decay coupled (in the gradient), as in PyTorch's
  SGD and Adam. The same seed gives the same initial network for all three.

    python experiments/nonsmooth_ingd.py [--n 2000] [--lemma-n 20000] [--thm-n 256] [--sigmas 0 0.5 1]
                                         [--seeds 8] [--epochs 100]
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import _cli  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import xarray as xr  # noqa: E402

import dynsim as ds  # noqa: E402

X1 = np.array([0.274, -0.46, -0.918, -0.967, 0.627, 0.826, 0.213, 0.459])  # (a, b): start in R^8
DELTAS = np.array([0.01, 0.02, 0.05, 0.1, 0.2])
EPSS = np.array([0.5, 1.0, 2.0])
GAMMA = 1 / 3  # Thm 5.4.1's failure probability at the complexity's 2/3-quantile (eq. 5.4)
THM_EPS, THM_DELTA, THM_X1 = 0.9, 0.5, 1.0  # (d)
BATCH = 128


# --------------------------------------------------------------------------- (a, b) oracle complexity


def oracle_complexity(args) -> xr.Dataset:
    d, lip = X1.size, float(np.sqrt(X1.size))
    depth = float(np.abs(X1).sum())
    m_record = ds.observables.Observable("m", record=lambda v: v.state.m, every_record=False)
    res = ds.simulate(
        ds.dynamics.ingd(ds.problems.l1_norm(d, theta0=X1), lip=lip),
        grid={"delta": DELTAS, "eps": EPSS},
        n_replicas=args.n,
        n_steps=args.max_calls,
        seed=args.seed,
        observables={"s": ds.nonsmooth.ingd_status(), "x": ds.observables.final_state(), "m": m_record},
        checkpoint=_cli.checkpoint(args, "nonsmooth_ingd_a"),
    )
    x = res.x.values  # (delta, eps, replica, d)
    exact = np.stack([ds.nonsmooth.l1_goldstein_distance(x[i], float(dl)) for i, dl in enumerate(DELTAS)])
    closed = np.sqrt((np.abs(x) > DELTAS[:, None, None, None]).sum(-1))  # the digest's sqrt(#{|x_i| > delta})
    sign_ok = np.all(
        np.where(np.abs(x) > DELTAS[:, None, None, None], np.abs(res.m.values - np.sign(x)) <= 1e-5, True), axis=-1
    )
    dims = ("delta", "eps", "replica")
    out = xr.Dataset(
        {
            "calls": (dims, res.s_calls.values),
            "descents": (dims, res.s_descents.values),
            "restarts": (dims, res.s_restarts.values),
            "certified": (dims, res.s_certified.values),
            "m_norm": (dims, res.s_m_norm.values),
            "exact_distance": (dims, exact),
            "closed_form": (dims, closed),
            "m_sign_ok": (dims, sign_ok),
            "bound": (
                ("delta", "eps"),
                np.array([[ds.dynamics.ingd_oracle_bound(depth, lip, dl, e, GAMMA) for e in EPSS] for dl in DELTAS]),
            ),
            "T": (("delta", "eps"), 4 * depth / (EPSS[None, :] * DELTAS[:, None])),
            "K": (("delta", "eps"), np.array([[ds.dynamics.ingd_inner_steps(lip, e) for e in EPSS] for _ in DELTAS])),
        },
        coords={"delta": DELTAS, "eps": EPSS},
        attrs={"x1": X1.tolist(), "Delta": depth, "L": lip, "gamma": GAMMA, "max_calls": args.max_calls},
    )
    return out


# --------------------------------------------------------------------------- (c) Lemma 5.7.2


def _polygon(n_sides: int = 7):
    angles = 2 * np.pi * np.arange(n_sides) / n_sides
    A = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return ds.problems.Problem(
        loss=lambda x, s, hp: jnp.max(jnp.asarray(A, x.dtype) @ x),
        init=lambda key, hp: jnp.asarray([0.2, 0.1], jnp.result_type(float)),
        name=f"max_linear_{n_sides}",
    )


LEMMA_CASES = {
    "|x|, x_t = 0.6δ (L = 1)": (lambda: ds.problems.l1_norm(1, theta0=0.06), 1.0, 0.1),
    "max of 7 linear pieces, x_t = (0.2, 0.1)δ (L = 1)": (_polygon, 1.0, 1.0),
    "|x|_1 in R^8, x_t ~ U[-0.05δ, 0.05δ]^8 (L = √8)": (lambda: ds.problems.l1_norm(8, box=0.05), np.sqrt(8), 1.0),
}


def lemma_5_7_2(args) -> xr.Dataset:
    curves, errors = [], []
    for name, (make, lip, delta) in LEMMA_CASES.items():
        res = ds.simulate(
            ds.dynamics.ingd(make(), delta=delta, eps=1e-4, lip=lip, inner_steps=10**6),
            n_replicas=args.lemma_n,
            n_steps=args.lemma_k - 1,
            record_every=1,
            seed=args.seed,
            observables={"s": ds.nonsmooth.ingd_status(every_record=True)},
        )
        stopped = (res.s_descents.values > 0) | (res.s_restarts.values > 0)  # never happens here (checked)
        if stopped.any():
            raise RuntimeError(f"{name}: the local search left x_t; the lemma's setting does not hold")
        # the lemma's convention: m_{t,k} = 0 after the loop stopped (certified) at an earlier k
        stopped_before = np.concatenate(
            [np.zeros_like(res.s_certified.values[:, :1]), res.s_certified.values[:, :-1]], 1
        )
        v = np.where(stopped_before, 0.0, res.s_m_norm.values.astype(float) ** 2 / lip**2)  # (replica, k)
        curves.append(v.mean(0))
        errors.append(v.std(0, ddof=1) / np.sqrt(v.shape[0]))
    k = np.arange(1, args.lemma_k + 1)
    return xr.Dataset(
        {
            "v": (("case", "k"), np.array(curves)),
            "stderr": (("case", "k"), np.array(errors)),
            "bound": ("k", 3 / (k + 2)),
            "exact_abs": ("k", 0.6 ** (k - 1)),
        },
        coords={"case": list(LEMMA_CASES), "k": k},
        attrs={"replicas": args.lemma_n},
    )


# --------------------------------------------------------------------------- (d) Thm 5.5.1


def theorem_5_5_1(args) -> xr.Dataset:
    rows = []
    n_batches = 64
    sigmas = np.array(args.sigmas, dtype=float)
    for sigma in sigmas:
        par = ds.dynamics.stochastic_ingd_parameters(1.0, float(sigma), THM_EPS, THM_DELTA, abs(THM_X1))
        T = int(np.ceil(par.n_steps))
        noise = [ds.dynamics.gaussian_noise(float(sigma))] if sigma > 0 else []
        dyn = ds.dynamics.stochastic_ingd(
            ds.problems.l1_norm(1, theta0=THM_X1), None, p=par.p, q=par.q, beta=par.beta, noise=noise
        )
        res = ds.simulate(
            dyn,
            n_replicas=args.thm_n,
            n_steps=T,
            seed=args.seed,
            observables={
                "m": ds.observables.time_average(
                    lambda v: jnp.sqrt(jnp.sum(v.state.m**2)), on="view", n_batches=n_batches, keep_batches=True
                ),
                "stationary": ds.observables.time_average(
                    lambda x: (jnp.abs(x[0]) <= THM_DELTA).astype(x.dtype), n_batches=n_batches
                ),
            },
            checkpoint=_cli.checkpoint(args, f"nonsmooth_ingd_thm_{sigma}"),
        )
        batches = res.m_batches.values  # (replica, batch): batch means of |m_t|
        ends = res.m_batches_batch.values
        sizes = np.diff(np.concatenate([[0], ends]))
        running = np.cumsum(batches.mean(0) * sizes) / ends  # (1/t) sum_{s <= t} E|m_s| at the batch ends
        rows.append(
            {
                "sigma": sigma,
                "G": float(np.hypot(1.0, sigma)),
                "beta": par.beta,
                "p": par.p,
                "q": par.q,
                "K": par.lag,
                "T": T,
                "mean_m": float(res.m.values.mean()),
                "mean_m_se": float(res.m.values.std(ddof=1) / np.sqrt(args.thm_n)),
                "stationary": float(res.stationary.values.mean()),
                "stationary_min": float(res.stationary.values.min()),
                "running": running,
                "ends": ends / T,
            }
        )
    scalar = [k for k in rows[0] if k not in ("sigma", "running", "ends")]
    return xr.Dataset(
        {
            **{k: ("sigma", np.array([r[k] for r in rows])) for k in scalar},
            "running_mean_m": (("sigma", "fraction"), np.array([r["running"] for r in rows])),
        },
        coords={"sigma": sigmas, "fraction": rows[0]["ends"]},
        attrs={"eps": THM_EPS, "delta": THM_DELTA, "x1": THM_X1, "replicas": args.thm_n},
    )


# --------------------------------------------------------------------------- (e, f) digits


def sgd_step_decay(learning_rate, momentum=0.9, first=0.0, second=0.0):
    """``optax.sgd`` with momentum whose rate is divided by 10 at step ``first`` and again at ``second``."""

    def schedule(count):
        return learning_rate * jnp.where(count >= first, 0.1, 1.0) * jnp.where(count >= second, 0.1, 1.0)

    return optax.sgd(schedule, momentum=momentum)


def accuracy(x, y):
    x, y = jnp.asarray(x), jnp.asarray(y)

    def record(view):
        return jnp.mean(jnp.argmax(ds.problems.mlp_forward(view.params, x), axis=-1) == y)

    return ds.observables.Observable("accuracy", record=record)


def digits(args) -> xr.Dataset:
    data = ds.problems.load_digits()
    problem = ds.problems.mlp_classifier(data["x"], data["y"], (128, 128), n_classes=10)
    spe = problem.n_data // BATCH
    first, second = (args.epochs // 2) * spe, (3 * args.epochs // 4) * spe  # epochs 50 and 75 of 100
    optimizers = {
        "SGD-m": (
            ds.dynamics.from_optax(problem, sgd_step_decay, BATCH, first=first, second=second),
            {"lr": [0.1], "weight_decay": [5e-4]},
        ),
        "Adam": (
            ds.dynamics.from_optax(problem, optax.adam, BATCH, b1=0.9, b2=0.999, eps=1e-3),
            {"lr": [1e-3], "weight_decay": [1e-6]},
        ),
        "Stochastic INGD": (
            ds.dynamics.stochastic_ingd(problem, BATCH, p=1.0, q=10.0, beta=0.9),
            {"weight_decay": [5e-4]},
        ),
    }
    observables = {
        "train_acc": accuracy(data["x"], data["y"]),
        "test_acc": accuracy(data["x_test"], data["y_test"]),
        "train_loss": ds.observables.loss(weight_decay=0.0),
    }
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])

    def correct(params):  # per test example, for a comparison paired over the examples
        return (jnp.argmax(ds.problems.mlp_forward(params, x_test), axis=-1) == y_test).astype(jnp.float32)

    out, final_correct = {}, {}
    for name, (dyn, grid) in optimizers.items():
        res = ds.simulate(
            dyn,
            grid=grid,
            n_replicas=args.seeds,
            n_steps=args.epochs * spe,
            record_every=spe,
            seed=args.seed,
            observables={**observables, "correct": ds.observables.last_values(1, correct)},
            checkpoint=_cli.checkpoint(args, f"nonsmooth_ingd_digits_{name.split()[-1]}"),
        )
        out[name] = {v: res[v].values.reshape(args.seeds, -1) for v in observables}
        final_correct[name] = res["correct"].values.reshape(args.seeds, -1)
    names = list(out)
    return xr.Dataset(
        {
            **{v: (("optimizer", "replica", "epoch"), np.array([out[n][v] for n in names])) for v in observables},
            "final_correct": (("optimizer", "replica", "example"), np.array([final_correct[n] for n in names])),
        },
        coords={"optimizer": names, "epoch": np.arange(args.epochs + 1)},
        attrs={"batch": BATCH, "steps_per_epoch": spe, "n_train": problem.n_data, "n_test": len(data["y_test"])},
    )


# --------------------------------------------------------------------------- figure and summary


def _se(v, axis=0):
    return v.std(axis=axis, ddof=1) / np.sqrt(v.shape[axis])


def figure(a, b, d, c):
    fig, axes = plt.subplots(3, 2, figsize=(12, 15))
    axes = axes.ravel()  # panels a-f in reading order
    ax = axes[0]
    for j, (e, color) in enumerate(zip(EPSS, ("C0", "C1", "C2"))):
        calls = a.calls.values[:, j]
        q = np.quantile(calls, 2 / 3, axis=-1)
        ax.loglog(DELTAS, q, "o-", color=color, label=f"$\\varepsilon$ = {e:g}: 2/3-quantile of calls")
        ax.loglog(DELTAS, calls.max(-1), "v", color=color, mfc="none", ms=5)
        ax.loglog(
            DELTAS,
            a.bound.values[:, j],
            "--",
            color=color,
            lw=1,
            label=f"$\\varepsilon$ = {e:g}: Thm 5.4.1 bound ($\\gamma$ = 1/3)",
        )
        ax.loglog(DELTAS, a.T.values[:, j], ":", color=color, lw=1)
    ax.set_xlabel(r"$\delta$")
    ax.set_ylabel(r"gradient-oracle calls until $|m| \leq \varepsilon$")
    ax.set_title(
        f"(a) INGD on $|x|_1$ in $R^{X1.size}$ ($\\Delta$ = {a.Delta:.3f}, L = $\\sqrt{{{X1.size}}}$), "
        f"{a.sizes['replica']} runs per cell:\n"
        r"2/3-quantile (o), max ($\triangledown$); dashed: $192\Delta L^2/(\varepsilon^3\delta)"
        r"\log(4\Delta/(\gamma\delta\varepsilon))$; dotted: $T = 4\Delta/(\varepsilon\delta)$",
        fontsize=10,
    )
    ax.set_ylim(8, 1e12)  # room above the bounds for the legend
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1]
    j = list(EPSS).index(1.0)
    for i, (dl, color) in enumerate(zip(DELTAS, plt.cm.viridis(np.linspace(0, 0.9, len(DELTAS))))):
        calls = np.sort(a.calls.values[i, j])
        ax.semilogx(calls, np.arange(1, calls.size + 1) / calls.size, color=color, label=f"$\\delta$ = {dl:g}")
        ax.axvline(a.T.values[i, j], color=color, ls=":", lw=1)
    ax.axhline(2 / 3, color="k", lw=0.5)
    ax.set_xlabel(r"gradient-oracle calls until $|m| \leq \varepsilon$")
    ax.set_ylabel("fraction of runs certified")
    ax.set_title(
        r"(b) $\varepsilon$ = 1: distribution of calls (dotted: $T = 4\Delta/(\varepsilon\delta)$);"
        f"\nthe Thm 5.4.1 bounds, {a.bound.values[:, j].min():.2g} to {a.bound.values[:, j].max():.2g}, "
        "are off the axis",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    ax = axes[2]
    k = b.k.values
    for i, (case, color) in enumerate(zip(b.case.values, ("C0", "C1", "C2"))):
        v, se = b.v.values[i], b.stderr.values[i]
        label = str(case).replace("|x|_1", "$|x|_1$").replace("R^8", "$R^8$").replace("]^8", "]$^8$")
        ax.loglog(k, np.maximum(v, 1e-12), color=color, label=label.replace("x_t", "$x_t$"))
        ax.fill_between(k, np.maximum(v - 2 * se, 1e-12), v + 2 * se, color=color, alpha=0.3, lw=0)
    ax.loglog(k, b.bound.values, "k--", label="Lemma 5.7.2: 3/(k+2)")
    ax.loglog(k, b.exact_abs.values, "C0:", lw=1, label="$|x|$ exact: $0.6^{k-1}$")
    ax.set_ylim(1e-7, 2)
    ax.set_xlabel("inner step k")
    ax.set_ylabel(r"$v_k = E|m_{t,k}|^2 / L^2$  (band: ±2 s.e.)")
    ax.set_title(f"(c) Lemma 5.7.2 inside one local search, {b.attrs['replicas']} runs each", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[3]
    for i, (sigma, color) in enumerate(zip(d.sigma.values, ("C0", "C1", "C2"))):
        label = f"$\\sigma$ = {sigma:g} (T = {int(d.T[i]):,})"
        ax.semilogy(d.fraction.values, d.running_mean_m.values[i], color=color, label=label)
    ax.axhline(THM_EPS / 4, color="k", ls="--", label=r"$\varepsilon/4$")
    ax.set_xlabel("t / T")
    ax.set_ylabel(r"$(1/t) \sum_{s \leq t} E|m_s|$")
    ax.set_title(
        r"(d) Thm 5.5.1: Stochastic INGD on $|x|$ + N(0, $\sigma^2$) noise, theorem's $\beta$, p, q, T"
        f"\n($\\varepsilon$ = {THM_EPS}, $\\delta$ = {THM_DELTA}, $x_1$ = {THM_X1}, {d.attrs['replicas']} runs)",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    epoch = c.epoch.values
    for ax, var, label, letter in [
        (axes[4], "train_acc", "train accuracy", "e"),
        (axes[5], "test_acc", "test accuracy", "f"),
    ]:
        for name, color in zip(c.optimizer.values, ("C0", "C1", "C2")):
            v = c[var].sel(optimizer=name).values
            mean, se = v.mean(0), _se(v)
            ax.plot(epoch, mean, color=color, label=name)
            ax.fill_between(epoch, mean - 2 * se, mean + 2 * se, color=color, alpha=0.3, lw=0)
        ax.set_ylim(0.85 if var == "test_acc" else 0.9, 1.001)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(
            f"({letter}) Fig. 5-1 substitute, {label}: MLP 64-128-128-10 (ReLU)\n"
            f"on digits, mean of {c.sizes['replica']} seeds (band: ±2 s.e.)",
            fontsize=10,
        )
        ax.legend(fontsize=9)
    fig.suptitle(r"Seed 002, ch. 5: INGD and $(\delta, \varepsilon)$-stationarity (float32)", fontsize=12)
    return fig


def summary(a, b, d, c) -> None:
    print(
        f"(a, b) INGD on |x|_1 in R^{X1.size}, Delta = {a.Delta:.3f}, L = {a.L:.4f}, {a.sizes['replica']} runs per cell"
    )
    print(
        f"{'delta':>6} {'eps':>4} {'K':>5} {'cert.':>6} {'median':>7} {'q2/3':>6} {'max':>5} {'bound(1/3)':>11} "
        f"{'bound/q':>8} {'desc.max':>8} {'T-1':>6} {'restarts':>8} {'max d_exact':>11} {'max |m|':>8}"
    )
    for i, dl in enumerate(DELTAS):
        for j, e in enumerate(EPSS):
            calls = a.calls.values[i, j]
            q = np.quantile(calls, 2 / 3)
            print(
                f"{dl:6g} {e:4g} {int(a.K.values[i, j]):5d} {a.certified.values[i, j].mean():6.3f} "
                f"{np.median(calls):7.0f} {q:6.0f} {calls.max():5d} {a.bound.values[i, j]:11.3g} "
                f"{a.bound.values[i, j] / q:8.3g} {a.descents.values[i, j].max():8d} {a.T.values[i, j] - 1:6.0f} "
                f"{a.restarts.values[i, j].sum():8d} {a.exact_distance.values[i, j].max():11.4f} "
                f"{a.m_norm.values[i, j].max():8.4f}"
            )
    cert = a.certified.values
    within = (a.exact_distance.values <= a.m_norm.values + 1e-5) & (a.m_norm.values <= EPSS[None, :, None])
    differs = np.abs(a.closed_form.values - a.exact_distance.values) > 1e-6
    print(
        f"  certified: {cert.mean():.4f} of runs; exact d(0, df(x + delta B)) <= |m| <= eps at every certified "
        f"point: {bool(np.all(within[cert]))}; m_i = sign(x_i) where |x_i| > delta: "
        f"{bool(np.all(a.m_sign_ok.values[cert]))}; the digest's closed form sqrt(#{{|x_i| > delta}}) differs "
        f"from the exact value at {differs[cert].mean():.4f} of the certified points"
    )
    for j, e in enumerate(EPSS):
        q = np.quantile(a.calls.values[:, j], 2 / 3, axis=-1)
        slope = np.polyfit(np.log(1 / DELTAS), np.log(q), 1)[0]
        print(f"  eps = {e:g}: slope of log(2/3-quantile of calls) against log(1/delta): {slope:.3f}")
    print(f"(c) Lemma 5.7.2, {b.attrs['replicas']} runs: E|m_k|^2/L^2 (+- s.e.) against 3/(k+2)")
    for i, case in enumerate(b.case.values):
        v, se, bound = b.v.values[i], b.stderr.values[i], b.bound.values
        cells = ", ".join(
            f"k={k}: {v[k - 1]:.3g} ({se[k - 1]:.1g})"
            for k in sorted({min(k, b.sizes["k"]) for k in (2, 5, 10, 50, b.sizes["k"])})
        )
        above = np.sum(v[1:] > bound[1:] + 4 * se[1:])
        print(
            f"  {case}: {cells}; k >= 2 with v_k > 3/(k+2) + 4 s.e.: {above}; max v_k (k+2)/3 (k >= 2) = "
            f"{np.max(v[1:] / bound[1:]):.3f}"
        )
    n, exact = b.attrs["replicas"], b.exact_abs.values
    seen = np.flatnonzero((exact >= 10 / n) & (b.k.values >= 2))  # where the binomial standard error is meaningful
    dev = np.abs(b.v.values[0, seen] - exact[seen]) / np.sqrt(exact[seen] * (1 - exact[seen]) / n)
    print(f"  |x|: largest deviation from 0.6^(k-1) over k = 2..{seen.max() + 1}: {dev.max():.2f} binomial s.e.")
    print(f"(d) Thm 5.5.1 on |x| (eps = {THM_EPS}, delta = {THM_DELTA}, x_1 = {THM_X1}), {d.attrs['replicas']} runs")
    for i, sigma in enumerate(d.sigma.values):
        r = d.isel(sigma=i)
        below = d.fraction.values[np.argmax(r.running_mean_m.values <= THM_EPS / 4)]
        print(
            f"  sigma = {sigma:g}: G = {float(r.G):.4f}, beta = {float(r.beta):.5f}, p = {float(r.p):.1f}, "
            f"q = {float(r.q):.1f}, K = {float(r.K):.1f}, T = {int(r.T):,}; (1/T) sum E|m_t| = {float(r.mean_m):.4f} "
            f"(+- {float(r.mean_m_se):.1g}) vs eps/4 = {THM_EPS / 4}; below eps/4 from t/T = {below:.3f}; share of "
            f"iterates with |x_t| <= delta = {float(r.stationary):.4f} (min over runs {float(r.stationary_min):.4f})"
        )
    print(f"(e, f) digits, {c.sizes['replica']} seeds, train / test accuracy (mean +- s.e.) at epochs:")
    for name in c.optimizer.values:
        tr, te = c.train_acc.sel(optimizer=name).values, c.test_acc.sel(optimizer=name).values
        loss = c.train_loss.sel(optimizer=name).values
        epochs = [e for e in (10, 25, 50, 75, int(c.epoch.values[-1])) if e <= c.epoch.values[-1]]
        cells = ", ".join(
            f"{e}: {tr[:, e].mean():.4f} / {te[:, e].mean():.4f} (+- {_se(te[:, e]):.4f})" for e in epochs
        )
        best = te.max(axis=1)
        print(
            f"  {name}: {cells}; best test {best.mean():.4f} (+- {_se(best):.4f}); final train loss "
            f"{loss[:, -1].mean():.4g}"
        )
    # final test accuracy of two methods, paired over the test examples (each example's share of correct seeds):
    # the standard error counts the draw of the test set as well as the seeds
    per_example = c.final_correct.mean("replica")
    names = list(c.optimizer.values)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            diff = (per_example.sel(optimizer=first) - per_example.sel(optimizer=second)).values
            print(
                f"  final test accuracy, {first} - {second}: {diff.mean():+.4f} +- {_se(diff):.4f} "
                f"(paired over {diff.size} test examples; {np.sum(diff != 0)} examples differ)"
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="(a, b): INGD runs per (delta, eps) cell")
    parser.add_argument("--max-calls", type=int, default=5000, help="(a, b): steps (oracle calls) per run")
    parser.add_argument("--lemma-n", type=int, default=20000, help="(c): runs per function")
    parser.add_argument("--lemma-k", type=int, default=200, help="(c): inner steps k")
    parser.add_argument("--thm-n", type=int, default=256, help="(d): runs per noise level")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="(d): noise levels")
    parser.add_argument("--seeds", type=int, default=8, help="(e, f): seeds per optimizer")
    parser.add_argument("--epochs", type=int, default=100, help="(e, f): epochs")
    args = _cli.parse(parser, argv)
    timings = {}
    started = time.perf_counter()
    a = oracle_complexity(args)
    timings["a, b"] = time.perf_counter() - started
    b = lemma_5_7_2(args)
    timings["c"] = time.perf_counter() - started - sum(timings.values())
    d = theorem_5_5_1(args)
    timings["d"] = time.perf_counter() - started - sum(timings.values())
    c = digits(args)
    timings["e, f"] = time.perf_counter() - started - sum(timings.values())
    path = _cli.save_figure(figure(a, b, d, c), args, "nonsmooth_ingd.png")
    for name, res in [("complexity", a), ("lemma", b), ("theorem", d), ("digits", c)]:
        ds.io.save(res, os.path.join(args.results, f"nonsmooth_ingd_{name}.nc"))
    summary(a, b, d, c)
    print("time per part: " + ", ".join(f"({k}) {v:.0f} s" for k, v in timings.items()))
    print(f"wrote {path} and {args.results}/nonsmooth_ingd_*.nc in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
