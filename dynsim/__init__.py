"""dynsim: optimizers as dynamical systems, simulated by the million in JAX.

import dynsim as ds
problem = ds.problems.linear_regression_1d()
res = ds.simulate(ds.dynamics.sgd(problem), grid={"lr": [0.5, 1.0, 3.0]},
                  n_replicas=1024, n_steps=200, record_every=10,
                  observables={"logdist": ds.observables.log_distance(problem.fixed_point)})
ds.lyapunov.from_log_distance(res).exponent  # E log|1 - lr x^2| = -0.485, -0.417, +0.144

Float32 by default; ``jax.config.update("jax_enable_x64", True)`` before any computation
switches every run to float64.
"""

__version__ = "0.1.0"

from dynsim import (  # noqa: E402
    checkpoint,
    curvature,
    dynamics,
    fused,
    io,
    lojasiewicz,
    lyapunov,
    measure,
    nonsmooth,
    observables,
    optim,
    prng,
    problems,
    stability,
)
from dynsim.engine import simulate  # noqa: E402

__all__ = [
    "__version__",
    "checkpoint",
    "curvature",
    "dynamics",
    "fused",
    "io",
    "lojasiewicz",
    "lyapunov",
    "measure",
    "nonsmooth",
    "observables",
    "optim",
    "plot",
    "prng",
    "problems",
    "simulate",
    "stability",
]


def __getattr__(name: str):
    # dynsim.plot imports matplotlib: loaded on first use, so `import dynsim` stays light
    if name == "plot":
        import importlib

        return importlib.import_module("dynsim.plot")
    raise AttributeError(f"module 'dynsim' has no attribute {name!r}")
