"""Long statistical checks: `python -m pytest -m slow`."""

import numpy as np
import pytest

import dynsim as ds

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["simulate", "fused"])
def test_default_phase_diagram_agrees_with_theory(engine):
    lrs, mus = np.linspace(0.02, 3.0, 72), np.linspace(0.0, 1.0, 41)
    theory = ds.stability.saddle_phases(lrs, mus)
    sim = ds.stability.saddle_phases(
        lrs, mus, method="simulation", n_replicas=256, n_steps=1000, refine=1, engine=engine
    )
    coarse = lambda p: np.where(p == 1, 0, p)  # noqa: E731
    decided = sim.phase.values >= 0
    assert decided.mean() > 0.95
    np.testing.assert_array_equal(coarse(sim.phase.values)[decided], coarse(theory.phase.values)[decided])


@pytest.mark.parametrize("lr", [0.8, 1.6])
def test_kesten_tail_index_against_hill(lr):
    x = np.random.default_rng(7).standard_normal(4_000_000)
    kappa = ds.lyapunov.tail_index(1 - lr * x**2)
    problem = ds.problems.linear_regression_1d(noise_std=1.0, w0=0.0)
    res = ds.simulate(
        ds.dynamics.sgd(problem),
        grid={"lr": [lr]},
        n_replicas=200_000,
        n_steps=400,
        seed=3,
        observables={"w": ds.observables.final_state()},
    )
    hill = ds.measure.hill_tail_index(res.w.values.ravel(), k=1000, level=0.99)
    assert hill.low < kappa < hill.high, (kappa, hill)


@pytest.mark.parametrize(
    "script,args",
    [
        ("phase_diagram.py", "--engine fused --lr-points 12 --second-points 5 --replicas 32 --steps 100".split()),
        ("unstable_convergence_toys.py", ["--starts", "500", "--family-points", "11", "--family-steps", "4000"]),
        (
            "unstable_convergence_nets.py",
            ["--steps", "60", "--every", "30", "--epochs", "2", "--probe-every", "1", "--probe-m", "4"],
        ),
        (
            "local_lojasiewicz.py",
            [
                "--n",
                "2000",
                "--grid",
                "8",
                "--n-aligned",
                "500",
                "--aligned-steps",
                "500",
                "--n-lemma",
                "500",
                "--lemma-steps",
                "500",
            ],
        ),
        (
            "clipping.py",
            "--m-values 10 100 --n 2000 --heavy-steps 100 --stochastic-m 10 100 --stochastic-runs 8 "
            "--stochastic-steps 2000".split(),
        ),
        ("smoothness_vs_gradient.py", ["--steps", "50"]),
        ("heavy_tail_rates.py", ["--dims", "1", "8", "--n", "50", "--steps", "200"]),
        ("heavy_ball_cycle.py", ["--starts", "101", "--steps", "500"]),
        ("spectrum_bias.py", ["--replicas", "8", "--steps", "40", "80"]),
        ("nonconvex_heavy_tails.py", ["--n", "4", "--eps", "6e-3"]),
        ("nonstationary_noise.py", ["--n", "50", "--steps", "300"]),
        (
            "invariant_sinsin.py",
            "--starts 64 --lr-points 4 --steps 600 --burn-in 100 --fig4-steps 200 --bifurcation-points 40 "
            "--balance-starts 4".split(),
        ),
        ("invariant_nn.py", ["--seeds", "2", "--epochs-a", "10", "--epochs-b", "10", "--draws", "1"]),
        ("batch_norm_last_layer.py", "--seeds 2 --epochs 3 --vc-steps 100 --vc-runs 4".split()),
        ("step_decay.py", ["--seeds", "2", "--phase-epochs", "2"]),
        ("scale_invariance_control.py", ["--seeds", "2", "--epochs", "20"]),
        ("lojasiewicz_network.py", ["--datasets", "2", "--n", "16", "--steps", "200", "--points", "2000"]),
        (
            "nonsmooth_ingd.py",
            "--n 50 --lemma-n 200 --lemma-k 20 --thm-n 8 --sigmas 0 --seeds 2 --epochs 4".split(),
        ),
        (
            "noise_shape.py",
            ["--seeds", "2", "--steps", "20", "--n-batches", "200", "--hill-k", "20", "--n-data", "256"],
        ),
    ],
)
def test_seed_001_to_003_experiments_run_end_to_end(tmp_path, script, args):
    """Each script at tiny sizes: it runs, writes its figure and its NetCDF results (and replots them)."""
    pytest.importorskip("sklearn")
    _run_and_replot(tmp_path, script, args)
    assert len(list((tmp_path / "results").glob("*.nc"))) >= 1


def _run_and_replot(tmp_path, script: str, args: list[str]) -> None:
    """Run ``experiments/<script>`` with ``args`` into ``tmp_path``; it must write a figure. A script with ``--replot``
    must draw the same figures, byte for byte, again from its results files alone (``args`` are passed again: they
    choose which results, e.g. ``--engine fused``, and sizes must not matter to a replot)."""
    import os
    import subprocess
    import sys

    path = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", script)
    out, res = tmp_path / "figures", tmp_path / "results"
    done = subprocess.run(
        [sys.executable, path, *args, "--out", str(out), "--results", str(res)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = sorted(out.glob("*.png"))
    assert len(figures) >= 1
    with open(path) as f:
        if "replot=True" not in f.read():
            return
    again = tmp_path / "again"
    done = subprocess.run(
        [sys.executable, path, *args, "--replot", "--out", str(again), "--results", str(res)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for figure in figures:
        assert (again / figure.name).read_bytes() == figure.read_bytes(), figure.name


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args",
    [
        ("fig1a_tanh_saddle.py", ["--runs", "200", "--steps", "600"]),
        ("saddle_exponents_nets.py", "--replicas 8 --steps 600 --transient 100 --lr-points 4".split()),
        ("tail_index.py", ["--chains", "2000", "--steps", "400"]),
        ("engine_demo.py", ["--replicas", "256", "--steps", "50"]),
        ("fig5_swish.py", "--replicas 8 --steps 200 --lr-points 4".split()),  # the 200-dataset search stays
        ("fig7_wide_nets.py", "--width 8 --lr-points 2 --mu-points 2 --seeds 1 --steps 50 --exponent-steps 50".split()),
        ("fig9_rank_noise.py", ["--steps", "50", "--seeds", "2"]),
    ],
)
def test_seed_004_experiments_draw_their_figures(tmp_path, script, args):
    """Each script at tiny sizes runs to the end and writes its figure (the drawing code sees shares of 0 and 1,
    cells where every run diverged, and too few points to fit), and replots it from its results files."""
    _run_and_replot(tmp_path, script, args)


@pytest.mark.slow
def test_lyapunov_time_batch_errors_are_calibrated():
    # x' = a_t x, a_t ~ U(0.5, 1.5): the exponent is E log U exactly; over 150 independent estimates (4 replicas x
    # 2000 steps each) z = (estimate - truth) / stderr has mean 0 and sd 1 within their sampling errors
    import warnings

    import jax
    import jax.numpy as jnp

    truth = (1.5 * np.log(1.5) - 1.5) - (0.5 * np.log(0.5) - 0.5)

    def step(x, key):
        return jax.random.uniform(key, x.shape, minval=0.5, maxval=1.5) * x

    z = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(150):
            est = ds.lyapunov.top_exponent(step, jnp.ones(1), seed, 2000, n_replicas=4)
            z.append((est.exponents[0] - truth) / est.stderr[0])
    # the correlated-batches warning is a 3-sigma test on one series (false alarms ~0.13% per estimate,
    # 0.2 expected here): more than 2 would mean the increments are not independent
    assert sum("correlated" in str(w.message) for w in caught) <= 2
    z = np.array(z)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.std(ddof=1) - 1) < 4 / np.sqrt(2 * z.size) + 0.02  # + the t-law's excess with 31 df
