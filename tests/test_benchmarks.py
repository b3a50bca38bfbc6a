"""benchmarks/run.py runs every branch of its GPU mode (at tiny sizes, a slow test: run it before spending device
time) and leaves RESULTS.md alone; its baselines compute what dynsim computes (the same law, the same gradient
step)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import dynsim as ds

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow  # a minute of compilation
def test_benchmark_smoke_runs_every_branch_and_writes_nothing(tmp_path):
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = open(results).read()
    saved = tmp_path / "smoke.json"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--smoke", "--save", str(saved)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    expected = ("memory bound", "trajectories per chunk", "(d) `lyapunov.spectrum`", "`--preset paper` phase diagram")
    for line in (*expected, "fused kernel", "`engine='fused'`"):
        assert line in out.stdout, line
    assert open(results).read() == before
    # what was saved renders to what was printed
    assert bench.render(json.loads(saved.read_text())) in out.stdout


def test_a_failed_measurement_is_reported_and_the_others_go_on():
    saves = []
    results = {"failures": {}, "done": {}}
    assert bench._stage(results, "(x) broken", lambda: 1 / 0, saves.append) is None
    assert bench._stage(results, "(y) fine", lambda: 2.0, saves.append) == 2.0
    assert results["failures"] == {"(x) broken": "ZeroDivisionError: division by zero"} and len(saves) == 2
    assert results["done"] == {"(y) fine": 2.0}  # a resumed run takes it from there instead of measuring again
    assert (
        bench._stage(results, "(y) fine", lambda: 1 / 0, saves.append) == 2.0 and "(y) fine" not in results["failures"]
    )
    measured = {
        "preset": "smoke",
        "device": "cpu: test",
        "versions": "-",
        "bandwidth_bytes": 1 << 24,
        "bandwidths": [1e11],
        "rows": [
            {"label": "(a) SGD", "shape": "8 x 2", "rates": [2.0, 1.0, 4.0], "bytes": 10},
            {"label": "(b) fused", "shape": "8 x 2", "rates": None},
        ],
        "spectrum": None,
        "diagram": None,
        "paper": {"simulate": [0.5, 2.0], "fused": None},
        "chunks": [],
        "failures": {"(b) fused": "RuntimeError: no kernel", "--preset paper, fused": "RuntimeError: no kernel"},
    }
    text = bench.render(measured)
    assert "| (a) SGD | 8 x 2 | 2 | 1 | 4 | 2.00 | 0.50 | 10 | 1e+10 | 0.00 |" in text
    assert "| (b) fused | 8 x 2 | failed (below) |" in text and "- `engine='fused'`: failed (below)" in text
    assert "- (b) fused: `RuntimeError: no kernel`" in text and "(d) `lyapunov.spectrum`" not in text


# --------------------------------------------------------------------------- the baselines compute the same thing

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # run.py imports its neighbour _common
_spec = importlib.util.spec_from_file_location("dynsim_benchmarks_run", os.path.join(ROOT, "benchmarks", "run.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

Z_MAX = 4.5
"""Two-sided z bound of every comparison of means below: 7e-6 false alarms each, under 1e-3 for all of them."""


def _z(a, b) -> float:
    """Welch's z of the difference of the means of two independent samples."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float((a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def _baselines(workload):
    """What the NumPy baseline (and the PyTorch one, where installed) returns, as NumPy arrays."""
    out = [workload.run_numpy()]
    if bench.torch is not None:
        result = workload.run_torch()
        out.append(tuple(t.cpu().numpy() for t in result) if isinstance(result, tuple) else result.cpu().numpy())
    return out


def test_regression_baselines_sample_the_law_dynsim_simulates():
    # (a) with as many steps for every implementation: the same start, data, rate and minibatch law, so the
    # final weights have one law; its first two moments are compared over 8192 trajectories, after 10 steps
    # (still leaving the start: a 5% change of the rate moves the mean by 6.8 standard errors) and after 50
    # (near the stationary law, whose spread the minibatch noise sets)
    for steps in (10, 50):
        workload = bench.regression(8192, steps)
        ours = workload.run_dynsim()["w"].values
        for theirs in _baselines(workload):
            for moment in (lambda w: w, np.square):
                assert abs(_z(moment(ours), moment(theirs))) < Z_MAX, (steps, theirs)


def test_saddle_baselines_sample_the_law_dynsim_simulates():
    # (b): log|mode_T / mode_0| of both modes at each of the 16 rates, simulate and the fused kernel against
    # NumPy (and PyTorch)
    workload = bench.saddle(16 * 512, 50)
    fused = bench.saddle(16 * 512, 50, fused=True)
    ours = [workload.run_dynsim(), fused.run_dynsim()]
    for result in ours:
        for mode, theirs_index in (("plus", 0), ("minus", 1)):
            sims = result[f"modes_log_{mode}"].values[:, 0, :]
            for theirs in _baselines(workload):
                per_rate = np.asarray(theirs[theirs_index]).reshape(16, -1)
                z = [_z(sims[i], per_rate[i]) for i in range(16)]
                assert max(map(abs, z)) < Z_MAX, (mode, z)


def test_net_baselines_take_the_gradient_step_of_the_problem():
    # (c): one step of the hand-written NumPy and PyTorch updates against jax.grad of the problem's loss
    # (flax kernels are (in, out), the baselines' weights (out, in)); a wrong factor in the loss's
    # derivative (2 / d) or a transposed weight would be off by O(1), float32 rounding by ~1e-6
    d, cells = 200, 3
    problem = ds.problems.two_layer_net(d, d, "tanh")
    rng = np.random.default_rng(0)
    W, U = (rng.uniform(-1, 1, (2, cells, d, d)) / np.sqrt(d)).astype(np.float32)
    x = rng.standard_normal((cells, d)).astype(np.float32)
    eps = 2 * rng.standard_normal((cells, d)).astype(np.float32)
    lr = np.array([[0.01], [0.1], [0.25]], np.float32)
    mu = np.array([[0.0], [0.5], [0.9]], np.float32)
    y = mu * x + (1 - mu) * eps

    def jax_step(W, U, x, eps, lr, mu):
        params = {"W": {"kernel": W.T}, "U": {"kernel": U.T}}
        grad = jax.grad(problem.loss)(params, {"x": x, "eps": eps}, {"mu": mu})
        return W - lr * grad["W"]["kernel"].T, U - lr * grad["U"]["kernel"].T

    expected = [jax.vmap(jax_step)(W, U, x, eps, lr[:, 0], mu[:, 0])]
    got = []
    W_np, U_np = W.copy(), U.copy()
    bench.net_update_numpy(W_np, U_np, x, y, lr, np.empty_like(W))
    got.append((W_np, U_np))
    if bench.torch is not None:
        W_t, U_t = bench.torch.tensor(W), bench.torch.tensor(U)
        bench.net_update_torch(W_t, U_t, bench.torch.tensor(x), bench.torch.tensor(y), bench.torch.tensor(lr))
        got.append((W_t.numpy(), U_t.numpy()))
    for new_W, new_U in got:
        for new, old, exp in ((new_W, W, expected[0][0]), (new_U, U, expected[0][1])):
            step, exp_step = new - old, np.asarray(exp) - old
            scale = np.abs(exp_step).max(axis=(1, 2), keepdims=True)
            assert np.all(scale > 0)
            np.testing.assert_array_less(np.abs(step - exp_step) / scale, 1e-3)


def test_resume_needs_the_same_preset_on_the_same_device(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--resume"])
    assert "--resume needs --save" in capsys.readouterr().err
    saved = tmp_path / "m.json"
    saved.write_text(json.dumps({"preset": "gpu", "device": "gpu: NVIDIA H100", "done": {}}))
    with pytest.raises(SystemExit, match="not resumed"):
        bench.main(["--smoke", "--save", str(saved), "--resume"])
