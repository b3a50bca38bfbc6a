"""The code on the documentation pages runs and its checks hold."""

import pathlib
import re
import warnings

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_the_custom_observable_example_runs_and_warns():
    (code,) = python_blocks("observables.md")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, "docs/observables.md", "exec"), {})  # its assertion checks |1 - lr|^n
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == ["excursion: above 10 at lr = 2.5"]


def test_the_diagnose_hook_sees_the_whole_run_once():
    # the same observable over a grid run in three chunks of 8 trajectories (one cell each): one message for
    # the run, naming both cells that passed the level
    import jax.numpy as jnp

    import dynsim as ds

    namespace: dict = {}
    (code,) = python_blocks("observables.md")
    exec(compile(code.split("problem = ")[0], "docs/observables.md", "exec"), namespace)
    largest = namespace["largest"]
    with pytest.warns(RuntimeWarning, match=r"^excursion: above 10 at lr = 2.5, lr = 3$") as record:
        ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(1.0, theta0=1.0)),
            grid={"lr": [0.5, 2.5, 3.0]},
            n_steps=10,
            n_replicas=8,
            chunk_size=8,
            observables={"excursion": largest(lambda th: jnp.abs(th[0]), warn_above=10.0)},
        )
    assert len([w for w in record if "excursion" in str(w.message)]) == 1
