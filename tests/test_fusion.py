"""The fusion barrier: fresh samples are drawn once per step, not inside every consumer."""

import re

import jax
import numpy as np
import pytest

import dynsim as ds
from dynsim import prng
from dynsim._fusion import materialize


def _fusions(hlo: str) -> dict[str, str]:
    """Body of every fused computation of an optimized HLO module, by name."""
    return dict(re.findall(r"\n(%fused[\w.\-]*) \(.*?\{\n(.*?)\n\}", hlo, flags=re.S))


@pytest.mark.parametrize("width", [16, 100])
def test_net_samples_are_hashed_once_not_inside_the_weight_update(width):
    """XLA:CPU fused the Threefry hash of a net's input sample into the rank-1 weight update
    ``W - lr dh x^T``, redrawing ``x`` for each of the ``width**2`` weights (2.8x slower at 200)."""
    problem = ds.problems.two_layer_net(width, width, "tanh")
    dyn = ds.dynamics.sgd(problem)
    hp = ds.dynamics.bind(dyn, {"lr": 0.1, "mu": 0.1}).hp
    n = 8
    state = jax.vmap(lambda k: dyn.init(k, hp))(jax.random.split(prng.key(0), n))
    words = jax.random.key_data(jax.random.split(prng.key(1), n))

    def step(state, words, t):
        keys = jax.vmap(lambda w: prng.step_key(prng.wrap(w[0], w[1]), t))(words)
        return jax.vmap(lambda s, k: dyn.step(s, k, hp))(state, keys)

    hlo = jax.jit(step).lower(state, words, 3).compile().as_text()
    weight = f"f32[{n},{width},{width}]"
    updates = {name: body for name, body in _fusions(hlo).items() if body.split("\n")[-1].find(weight) >= 0}
    assert updates, "no fused weight update found"
    for name, body in updates.items():
        assert "shift-left" not in body, f"{name} recomputes a Threefry hash per weight"


def test_materialize_changes_no_value():
    """Division by an exact 1.0: every value comes back bit for bit, as XLA's own ``x * 1`` gives it
    (XLA:CPU flushes subnormals to zero in all of its arithmetic)."""
    a = np.array([0.0, -0.0, 1.5, -3e38, np.inf, -np.inf, np.nan, 1e-45], np.float32)
    times_one = np.asarray(jax.jit(lambda x, one: x * one)(a, np.float32(1)))
    out = jax.jit(lambda x: materialize(x, small=None))({"a": a, "i": np.arange(3)})
    np.testing.assert_array_equal(np.asarray(out["a"]).view(np.uint32), times_one.view(np.uint32))
    np.testing.assert_array_equal(out["i"], np.arange(3))
