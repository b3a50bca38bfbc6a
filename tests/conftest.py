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


def import_experiment(name: str):
    """The module of ``experiments/<name>.py`` (tests reuse the constructions an experiment states)."""
    sys.path.insert(0, EXPERIMENTS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(EXPERIMENTS)
