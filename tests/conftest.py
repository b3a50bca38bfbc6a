import importlib
import os
import sys

import jax
import pytest

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
