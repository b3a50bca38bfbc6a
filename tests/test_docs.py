"""The code on the documentation pages runs and its checks hold."""

import pathlib
import re
import warnings

import numpy as np
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


def test_the_lyapunov_page_example_prints_what_it_says(capsys):
    # the spectrum of a random tanh map has no closed form: the check is that the page's comment is what the
    # code prints (to its 3 digits and 2 significant digits), so the page cannot go stale
    (code,) = python_blocks("lyapunov.md")
    exec(compile(code, "docs/lyapunov.md", "exec"), {})
    printed = [float(v) for v in re.findall(r"-?\d+\.\d+", capsys.readouterr().out)]
    comment = code.split("print(est.exponents, est.stderr)  #")[1]
    claimed = [float(v) for v in re.findall(r"-?\d+\.\d+", comment)]
    assert len(printed) == len(claimed) == 6
    np.testing.assert_allclose(printed[:3], claimed[:3], atol=5e-4)
    np.testing.assert_allclose(printed[3:], claimed[3:], rtol=0.05)


def _exact_exponent(x2: np.ndarray, lr: float, batch_size: int) -> float:
    """``E log|1 - lr mean_B x_i^2|`` over every ordered batch of ``batch_size`` points drawn with replacement,
    from the law of the batch sum (convolved point by point: at most C(B + n - 1, n - 1) distinct sums)."""
    law = {0.0: 1.0}
    for _ in range(batch_size):
        new: dict = {}
        for s, p in law.items():
            for v in x2:
                new[s + v] = new.get(s + v, 0.0) + p / len(x2)
        law = new
    sums, probs = np.array(list(law)), np.array(list(law.values()))
    return float(np.sum(probs * np.log(np.abs(1 - lr * sums / batch_size))))


def test_the_readme_example_runs_and_its_exponents_are_exact(tmp_path, monkeypatch):
    # README: "its 256 exponents have z-scores of mean 0.08 and standard deviation 0.95, none beyond 4", against
    # the exact average over every minibatch of the run's dataset. Bounds from the z-scores' law if the standard
    # errors are right: the mean of 256 standard normals within 4/16, their standard deviation within
    # 1 +- 4/sqrt(2 * 255), none beyond 5 (probability 1.5e-4 over 256 cells)
    import dynsim as ds
    from dynsim import prng

    readme = (DOCS.parent / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with pytest.warns(RuntimeWarning, match="stopped moving before the end without diverging"):
        exec(compile(code, "README.md", "exec"), namespace)
        est = ds.lyapunov.from_log_distance(namespace["result"])  # its last line, kept
    assert (tmp_path / "regression.nc").exists()
    data = namespace["dynamics"].shared_data(prng.data_key(prng.key(0)), {"batch_size": 1, "n_data": 8})
    x2 = np.asarray(data["x"], np.float64) ** 2
    z = [
        (est.exponent.sel(lr=lr, batch_size=b).item() - _exact_exponent(x2, lr, b))
        / est.stderr.sel(lr=lr, batch_size=b).item()
        for lr in est.exponent.lr.values
        for b in est.exponent.batch_size.values
    ]
    assert len(z) == 256
    assert abs(np.mean(z)) < 4 / 16 and abs(np.std(z) - 1) < 4 / np.sqrt(2 * 255) and np.max(np.abs(z)) < 5, (
        np.mean(z),
        np.std(z),
        np.max(np.abs(z)),
    )
