"""dynsim: optimizers as dynamical systems, simulated by the million in JAX.

import dynsim as ds
problem = ds.problems.linear_regression_1d()
res = ds.simulate(ds.dynamics.sgd(problem), grid={"lr": [0.5, 1.0, 3.0]},
                  n_replicas=1024, n_steps=1000,
                  observables={"logdist": ds.observables.log_distance(problem.fixed_point)})
"""

__version__ = "0.1.0"

from dynsim import (  # noqa: E402
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
    "prng",
    "problems",
    "simulate",
    "stability",
]
