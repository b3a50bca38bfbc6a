"""Long statistical checks: `python -m pytest -m slow`."""

import numpy as np
import pytest

import dynsim as ds

pytestmark = pytest.mark.slow


def test_default_phase_diagram_agrees_with_theory():
    lrs, mus = np.linspace(0.02, 3.0, 72), np.linspace(0.0, 1.0, 41)
    theory = ds.stability.saddle_phases(lrs, mus)
    sim = ds.stability.saddle_phases(lrs, mus, method="simulation", n_replicas=256, n_steps=1000, refine=1)
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
