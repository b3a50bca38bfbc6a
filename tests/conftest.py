import importlib
import os
import sys

import jax
import pytest


def pytest_configure(config):
    """Compiled programs are kept in JAX's persistent compilation cache under ``.pytest_cache``, shared by the xdist
    workers and the subprocesses that tests start (through the environment): many tests build the same programs
    again (``simulate`` traces afresh per call), and a cache hit skips XLA's compilation, which dominates small runs.
    The cache is keyed by the program, the JAX version and the compiler flags, so a hit runs what a compilation
    would have produced."""
    cache = getattr(config, "cache", None)  # absent under ``-p no:cacheprovider``
    if cache is None or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    settings = {
        "jax_compilation_cache_dir": str(cache.mkdir("jax-compilation-cache")),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
        jax.config.update(name, value)


EXPERIMENTS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "experiments"))


@pytest.fixture
def x64():
    """Run the test with float64 enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield


_X64_BY_DEFAULT = jax.config.jax_enable_x64  # read at collection, outside any test's enable_x64 context


def import_experiment(name: str):
    """The module of ``experiments/<name>.py`` (tests reuse the constructions an experiment states). A script that
    turns float64 on when imported (``jax.config.update``) does so for itself only: the suite's default is restored."""
    sys.path.insert(0, EXPERIMENTS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(EXPERIMENTS)
        jax.config.update("jax_enable_x64", _X64_BY_DEFAULT)
