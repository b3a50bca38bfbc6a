"""benchmarks/run.py runs every branch of its GPU mode (at tiny sizes) and leaves RESULTS.md alone."""

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_benchmark_smoke_runs_every_branch_and_writes_nothing():
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = open(results).read()
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--smoke"],
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
