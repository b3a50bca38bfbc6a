"""The engine: a dynamics over a hyperparameter grid x replicas x time, in one compiled program.

``simulate`` turns a single-trajectory :class:`~dynsim.dynamics.Dynamics` into an ensemble
run: ``vmap`` over trajectories (grid cells x replicas), a loop over time with the
observables reduced inside it, chunks of trajectories sized from a memory budget, and
an ``xarray.Dataset`` out. Trajectory ``(cell c, replica r)`` draws its randomness from
``fold_in(fold_in(key(seed), c), r)`` (:mod:`dynsim.prng`), so results are bitwise the
same for any chunk size.

Traced hyperparameters (learning rate, noise, ...) are arrays fed to one compiled program;
static ones (``Dynamics.static``: batch size, dataset size) split the grid into groups
compiled once per value. Compiled programs are cached across calls, keyed by the identity of
the dynamics and observable objects (as ``jax.jit`` keys on its function): reuse the objects,
built once, and a new learning rate never recompiles; observables given by name are shared.
Rebuilding them for each call (``observables={"L": ds.observables.loss()}`` inline) compiles
again, as does a chunk of another size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from dynsim import prng
from dynsim._fusion import SMALL, materialize
from dynsim._progress import PROGRESS_BLOCKS, check_progress, in_blocks, progress_bar
from dynsim._tree import check_same_type
from dynsim._validate import (
    LEARNING_RATE_NAMES,
    check_int,
    check_learning_rate,
    check_no_nan,
    check_output_path,
    check_positive,
    explain_tracing,
    grid_values,
    jsonable,
)
from dynsim.checkpoint import Checkpoint, add_program
from dynsim.dynamics.base import Dynamics, resolve_hyperparams
from dynsim.observables import (
    Context,
    Observable,
    ObservableError,
    View,
    diverged,
    final_state,
    from_name,
    record_times,
)

__all__ = ["simulate", "default_memory_budget"]

_CACHE_SIZE = 32
_PROGRAMS: OrderedDict[tuple, _Program] = OrderedDict()
# Each compiled call has a fixed cost (dispatch, and buffers of the whole ensemble state that are
# touched afresh: measured 10-30 ms for 400 nets of 80k parameters on CPU); a block of steps that
# ran faster than this doubles the next one.
_MIN_CALL_SECONDS = 0.5
_WORKING_SET_FACTOR = 4  # carry, new state, selects and step temporaries
# Chunks hold a multiple of this many trajectories (the last one padded by repetition).
# XLA compiles arrays of fewer than 4 elements to scalar code whose floating-point
# contractions can differ in the last bit from the vector code; padding keeps every
# trajectory on the vector path, so results are bitwise independent of the chunk size.
_LANES = 8


# --------------------------------------------------------------------------- validation


def _check_dynamics(dynamics: Any) -> Dynamics:
    if isinstance(dynamics, Dynamics):
        return dynamics
    raise TypeError(f"dynamics must be a dynsim.dynamics.Dynamics (init, step), got {type(dynamics).__name__}")


def _check_observables(observables: Any) -> dict[str, Observable]:
    if observables is None:
        return {"final_state": final_state(), "diverged": diverged()}
    if not isinstance(observables, Mapping):
        raise TypeError(f"observables must be a dict mapping names to observables, got {type(observables).__name__}")
    if not observables:
        raise ValueError("observables must not be empty")
    checked = {}
    for name, obs in observables.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"observable names must be identifiers, got {name!r}")
        if hasattr(xr.Dataset, name):
            warnings.warn(
                f"observable name {name!r} is also an attribute of xarray.Dataset: read the output as "
                f"result[{name!r}], since result.{name} is the Dataset's own",
                UserWarning,
                stacklevel=3,
            )
        if isinstance(obs, str):
            obs = from_name(obs)
        if callable(obs) and getattr(obs, "__module__", None) == "dynsim.observables":
            raise TypeError(f"observable {name!r} is the function {obs.__name__}: call it, {obs.__name__}(...)")
        if not isinstance(obs, Observable):
            raise ValueError(
                f"unknown observable {obs!r} for {name!r}: pass a dynsim.observables.Observable "
                "or one of the names in dynsim.observables.NAMED"
            )
        _check_observable_functions(name, obs)
        checked[name] = obs
    return checked


def _check_observable_functions(name: str, obs: Observable) -> None:
    """A record has ``record``; a reducer has ``init``, ``update`` and ``finalize``, all callable."""
    fields = ("record",) if obs.init is None else ("init", "update", "finalize")
    missing = [f for f in fields if not callable(getattr(obs, f))]
    if missing:
        what = "a record needs record(view)" if obs.init is None else "a reducer needs init, update and finalize"
        raise ObservableError(
            f"observable {name!r} has no callable {' or '.join(missing)}: {what} (see dynsim.observables.Observable)"
        )


def _finalized(name: str, obs: Observable, acc, status, ctx, keep: int) -> dict:
    """``obs.finalize(acc, status, ctx)``, checked: a dict of ``suffix: (dims, values[, coords])`` whose values
    have a leading axis over the ``keep`` trajectories, then one axis per name in ``dims``."""
    out = obs.finalize(acc, status, ctx)
    contract = "finalize(acc, status, ctx) must return {suffix: (dims, values) or (dims, values, coords)}"
    if not isinstance(out, Mapping):
        raise ObservableError(f"observable {name!r}: {contract}, got {type(out).__name__}")
    for suffix, entry in out.items():
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3) or isinstance(entry[0], str):
            raise ObservableError(f"observable {name!r}, output {suffix!r}: {contract}, got {entry!r:.200}")
        dims, shape = tuple(entry[0]), np.shape(entry[1])
        if shape[:1] != (keep,) or len(shape) != 1 + len(dims):
            raise ObservableError(
                f"observable {name!r}, output {suffix!r}: values of shape {shape} for dims {dims}; finalize "
                f"must return one row per trajectory ({keep} here) and then one axis per name in dims"
            )
    return out


class _Grid(NamedTuple):
    axes: tuple[str, ...]
    values: tuple[np.ndarray, ...]
    shape: tuple[int, ...]
    traced: tuple[str, ...]
    static: tuple[str, ...]
    constants: Mapping[str, Any]  # hyperparameters not on the grid


def _check_grid(dynamics: Dynamics, grid: Any) -> _Grid:
    if grid is None:
        grid = {}
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict mapping axis names to 1-D arrays, got {type(grid).__name__}")
    values = {}
    for name, v in grid.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"grid axis names must be identifiers, got {name!r}")
        if name in ("replica", "time"):
            raise ValueError(f"grid axis name {name!r} is reserved for the result's dimensions")
        values[name] = grid_values(name, v)
    if dynamics.hyperparams is not None:
        unknown = sorted(set(values) - set(dynamics.hyperparams))
        if unknown:
            raise ValueError(
                f"unknown grid axis {unknown} for dynamics {dynamics.name!r}; "
                f"its hyperparameters are {sorted(dynamics.hyperparams)}"
            )
    resolved = resolve_hyperparams(dynamics, {name: v[0] for name, v in values.items()})
    constants = {n: _scalar_constant(n, v) for n, v in resolved.items() if n not in values}
    for name, v in constants.items():
        if name in LEARNING_RATE_NAMES and v is not None:  # None: the optimizer's own default (optax.adafactor)
            check_learning_rate(name, v)
        check_no_nan(name, v)
    for name in dynamics.static & set(values):
        v = values[name]
        if not np.all(v == np.round(v)):
            raise ValueError(f"grid[{name!r}] changes array shapes and must hold integers, got {v.tolist()}")
        values[name] = v.astype(np.int64)
    axes = tuple(values)
    return _Grid(
        axes=axes,
        values=tuple(values[a] for a in axes),
        shape=tuple(len(values[a]) for a in axes),
        traced=tuple(a for a in axes if a not in dynamics.static),
        static=tuple(a for a in axes if a in dynamics.static),
        constants=constants,
    )


# --------------------------------------------------------------------------- the program


class _Spec(NamedTuple):
    """Everything that shapes a compiled program (the cache key, by identity and value)."""

    dynamics: Dynamics
    observables: tuple[tuple[str, Observable], ...]
    static_hp: tuple[tuple[str, Any], ...]
    ctx: Context
    bound: float | None
    n_slots: int


def _float_leaves(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def _numeric_leaves(tree):
    """The leaves that hold numbers (float, complex or integer): what ``diverged(bound)`` bounds."""
    return [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.number)]


def _all_finite(leaf) -> jax.Array:
    """``all(isfinite(leaf))``; for a large leaf, ``isfinite(leaf . 0)``, the same truth value.

    ``0 * x`` is 0 for finite ``x`` and NaN for infinite or NaN ``x``, so the dot product with a
    zero vector is finite exactly when every element is (it cannot overflow). XLA runs it as a
    matrix-vector product, several times faster than a boolean reduction on CPU (1.9 against
    3.4 ms for 400 weight matrices of 200 x 200), where the check took half of a step. The zeros
    come from an iota so that XLA cannot fold the product away.
    """
    if jnp.size(leaf) <= SMALL:
        return jnp.all(jnp.isfinite(leaf))
    flat = jnp.ravel(leaf)
    zeros = (jax.lax.iota(jnp.float32, flat.size) * 0).astype(flat.dtype)  # an iota in float16 reaches inf
    # HIGHEST: no TF32 on GPUs, whose rounding would carry a finite 3.4e38 to infinity
    return jnp.isfinite(jnp.dot(flat, zeros, precision=jax.lax.Precision.HIGHEST))


def _is_good(state, params, bound):
    ok = jnp.array(True)
    for leaf in _float_leaves(state):
        ok &= _all_finite(leaf)
    if bound is not None:
        for leaf in _numeric_leaves(params):
            ok &= jnp.all(jnp.abs(leaf) <= bound)
    return ok


class _Program:
    """The jitted pieces of one run: init, steps with records, steps, a record, the end."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        dyn = spec.dynamics
        ctx = spec.ctx
        static_hp = dict(spec.static_hp)
        records = [(n, o) for n, o in spec.observables if o.record is not None and o.every_record]
        finals = [(n, o) for n, o in spec.observables if o.record is not None and not o.every_record]
        reducers = [(n, o) for n, o in spec.observables if o.init is not None]
        self.record_names = [n for n, _ in records]
        self.final_names = [n for n, _ in finals]
        self.reducer_names = [n for n, _ in reducers]

        def hp_of(traced, data):
            hp = {**static_hp, **traced}
            if dyn.shared_data is not None:
                hp["data"] = data
            return hp

        def view_of(state, hp):
            return View(dyn.params_of(state), state, hp, dyn.data_of(state, hp), dyn.problem)

        def init_one(cell, rep, traced, root, data):
            hp = hp_of(traced, data)
            init_key, run_key = prng.init_and_run_keys(prng.trajectory_key(root, cell, rep))
            state = dyn.init(init_key, hp)
            view = view_of(state, hp)
            good = _is_good(state, view.params, spec.bound)
            acc = tuple(o.init(view, ctx) for _, o in reducers)
            rec = tuple(o.record(view) for _, o in records)
            words = jax.random.key_data(run_key)
            return state, (words[0], words[1]), good, acc, rec

        def step_one(state, run_key, alive, div_step, acc, traced, data, t):
            hp = hp_of(traced, data)
            key = prng.step_key(prng.wrap(*run_key), t)
            new = dyn.step(state, key, hp)
            check_same_type(new, state, f"the step of dynamics {dyn.name!r}")  # at trace time
            new = materialize(new)  # computed once, read by many
            ok = _is_good(new, dyn.params_of(new), spec.bound)
            keep = alive & ok
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
            div_step = jnp.where(alive & ~ok, t + 1, div_step)
            view = view_of(state, hp)
            new_acc = tuple(o.update(a, view, t + 1, ctx) for a, (_, o) in zip(acc, reducers))
            for new_a, a, (name, _) in zip(new_acc, acc, reducers):  # at trace time
                check_same_type(
                    new_a, a, f"the update(acc, view, t, ctx) of observable {name!r}", "an accumulator", ObservableError
                )
            return state, keep, div_step, new_acc

        def record_one(state, traced, data, which):
            hp = hp_of(traced, data)
            view = view_of(state, hp)
            return tuple(o.record(view) for _, o in which)

        batched_step = jax.vmap(step_one, in_axes=(0, 0, 0, 0, 0, 0, None, None))
        batched_record = jax.vmap(record_one, in_axes=(0, 0, None, None))

        def init(inputs):
            root = jax.random.wrap_key_data(inputs["root"], impl=prng.THREEFRY)
            state, run_key, good, acc, rec = jax.vmap(init_one, in_axes=(0, 0, 0, None, None))(
                inputs["cell"], inputs["rep"], inputs["hp"], root, inputs["data"]
            )
            slots = tuple(
                jax.tree_util.tree_map(lambda x: jnp.zeros((spec.n_slots, *x.shape), x.dtype).at[0].set(x), r)
                for r in rec
            )
            return {
                "state": state,
                "run_key": run_key,
                "alive": good,
                "div_step": jnp.where(good, -1, 0).astype(jnp.int32),
                "acc": acc,
                "rec": slots,
            }

        def advance(carry, inputs, t):
            state, alive, div_step, acc = batched_step(
                carry["state"],
                carry["run_key"],
                carry["alive"],
                carry["div_step"],
                carry["acc"],
                inputs["hp"],
                inputs["data"],
                t,
            )
            return {**carry, "state": state, "alive": alive, "div_step": div_step, "acc": acc}

        def write(carry, inputs, slot):
            values = batched_record(carry["state"], inputs["hp"], inputs["data"], records)
            rec = tuple(
                jax.tree_util.tree_map(lambda buf, v: buf.at[slot].set(v), buf, v)
                for buf, v in zip(carry["rec"], values)
            )
            return {**carry, "rec": rec}

        def run_steps(carry, inputs, t_from, t_to):
            return jax.lax.fori_loop(t_from, t_to, lambda t, c: advance(c, inputs, t), carry)

        def run_records(carry, inputs, r_from, r_to):
            k = ctx.record_every

            def one(r, c):
                c = jax.lax.fori_loop(r * k, (r + 1) * k, lambda t, cc: advance(cc, inputs, t), c)
                return write(c, inputs, r + 1)

            return jax.lax.fori_loop(r_from, r_to, one, carry)

        def finish(carry, inputs):
            return batched_record(carry["state"], inputs["hp"], inputs["data"], finals)

        self.shared_data = None
        if dyn.shared_data is not None:
            self.shared_data = jax.jit(lambda key: dyn.shared_data(key, dict(static_hp)))
        self.init = jax.jit(init)
        self.run_steps = jax.jit(run_steps, donate_argnums=0)
        self.run_records = jax.jit(run_records, donate_argnums=0)
        self.write = jax.jit(write, donate_argnums=0)
        self.finish = jax.jit(finish)

    def fingerprint(self, inputs_one: dict, root, outputs: str = "") -> str:
        """SHA-256 of what the programs compute: their jaxprs and the constants they close over.

        Covers the dynamics' ``init`` and ``step`` (so a problem's constants and dataset), the
        observables' records and updates, and the shared dataset's generator; a checkpoint
        compares it to refuse chunks computed by other code. Stable across processes: the
        jaxprs are printed without source locations. ``outputs`` describes what the host-side
        ``finalize`` functions return (:func:`_output_schema`), which no jaxpr shows: a chunk
        saved without an output the code now gives is refused too.
        """
        digest = hashlib.sha256(outputs.encode())
        carry = jax.eval_shape(self.init, inputs_one)
        add_program(digest, self.init, inputs_one)
        add_program(digest, self.run_steps, carry, inputs_one, 0, 1)
        add_program(digest, self.write, carry, inputs_one, 1)
        add_program(digest, self.finish, carry, inputs_one)
        if self.shared_data is not None:
            add_program(digest, self.shared_data, prng.data_key(root))
        return digest.hexdigest()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (np.ndarray, jax.Array)):  # unhashable: its dtype, shape and bytes
        arr = np.asarray(value)
        return ("array", arr.dtype.str, arr.shape, arr.tobytes())
    return value


def _observable_key(o: Observable) -> tuple:
    """Observables built twice by the same builder with the same arguments share programs
    when their functions are module-level (the no-argument ones); closures differ."""
    return (o.kind, o.record, o.every_record, o.init, o.update, o.finalize, o.bound, _freeze(dict(o.config)))


def _program(spec: _Spec) -> _Program:
    key = (
        id(spec.dynamics),
        tuple((n, _observable_key(o)) for n, o in spec.observables),
        spec.static_hp,
        spec.ctx,
        spec.bound,
        spec.n_slots,
    )
    program = _PROGRAMS.get(key)
    if program is None or program.spec.dynamics is not spec.dynamics:
        program = _Program(spec)
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _CACHE_SIZE:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    return program


# --------------------------------------------------------------------------- chunking


def default_memory_budget() -> int:
    """Bytes a chunk of trajectories may use: half the free accelerator memory, or 1 GiB on CPU."""
    device = jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # pragma: no cover - backends without memory stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    return 1 << 30


def _tree_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def _chunk_size(program: _Program, inputs_one: dict, n_traj: int, budget: int) -> int:
    carry = jax.eval_shape(program.init, inputs_one)
    per_traj = _WORKING_SET_FACTOR * _tree_bytes(carry) + _tree_bytes(
        {k: v for k, v in inputs_one.items() if k in ("cell", "rep", "hp")}
    )
    return int(max(1, min(n_traj, budget // max(per_traj, 1))))


# --------------------------------------------------------------------------- outputs


def _leaf_names(tree) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = []
    for path, _ in paths:
        parts = []
        for p in path:
            for attr in ("key", "name", "idx"):
                if hasattr(p, attr):
                    parts.append(str(getattr(p, attr)))
                    break
        names.append("_".join(parts))
    return names


class _Outputs:
    """Per-variable NumPy buffers over all trajectories (cell-major, then replica)."""

    def __init__(self, n_traj: int):
        self.n_traj = n_traj
        self.vars: dict[str, np.ndarray] = {}
        self.dims: dict[str, tuple[str, ...]] = {}
        self.coords: dict[str, np.ndarray] = {}

    def put(self, name: str, dims: tuple[str, ...], index: np.ndarray, values: np.ndarray, coords=None):
        values = np.asarray(values)
        if name not in self.vars:
            self.vars[name] = np.zeros((self.n_traj, *values.shape[1:]), values.dtype)
            self.dims[name] = dims
        buf = self.vars[name]
        if buf.shape[1:] != values.shape[1:]:
            raise ValueError(
                f"observable output {name!r} changes shape across static groups ({buf.shape[1:]} vs {values.shape[1:]})"
            )
        index = np.asarray(index)
        if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
            buf[index[0] : index[0] + index.size] = values  # a copy, not a scatter (10x for large states)
        else:
            buf[index] = values
        for dim, c in (coords or {}).items():
            self.coords[dim] = np.asarray(c)


def _collect(program: _Program, carry, finals, status, keep, ctx) -> list:
    """The outputs of one chunk as ``(name, dims, values, coords)``, values over its first ``keep`` trajectories."""
    spec = program.spec
    carry = jax.device_get(carry)
    obs = dict(spec.observables)
    with_time = ctx.record_every is not None
    entries = []
    for name, rec in zip(program.record_names, carry["rec"]):
        leaves = jax.tree_util.tree_leaves(rec)
        names = _leaf_names(rec)
        for leaf, leaf_name in zip(leaves, names):
            var = f"{name}_{leaf_name}" if len(leaves) > 1 else name
            leaf = np.moveaxis(np.asarray(leaf), 0, 1)[:keep]  # (traj, slot, ...)
            if not with_time:
                leaf = leaf[:, -1]
            extra = tuple(f"{var}_dim{i}" for i in range(leaf.ndim - (2 if with_time else 1)))
            entries.append((var, (("time",) if with_time else ()) + extra, leaf, {}))
    for name, rec in zip(program.final_names, jax.device_get(finals)):
        leaves = jax.tree_util.tree_leaves(rec)
        names = _leaf_names(rec)
        for leaf, leaf_name in zip(leaves, names):
            var = f"{name}_{leaf_name}" if len(leaves) > 1 else name
            leaf = np.asarray(leaf)[:keep]
            entries.append((var, tuple(f"{var}_dim{i}" for i in range(leaf.ndim - 1)), leaf, {}))
    for name, acc in zip(program.reducer_names, carry["acc"]):
        acc = jax.tree_util.tree_map(lambda x: np.asarray(x)[:keep], acc)
        for suffix, entry in _finalized(
            name, obs[name], acc, {k: v[:keep] for k, v in status.items()}, ctx, keep
        ).items():
            dims, values = entry[0], entry[1]
            coords = entry[2] if len(entry) > 2 else {}
            var = f"{name}_{suffix}" if suffix else name
            entries.append(
                (
                    var,
                    tuple(f"{var}_{d}" for d in dims),
                    np.asarray(values),
                    {f"{var}_{d}": c for d, c in coords.items()},
                )
            )
    return entries


@contextlib.contextmanager
def _explain_user_code(names: Sequence[str]):
    """Explain the errors of a dynamics traced for one trajectory: the bare ``KeyError: 's'`` of a step that
    reads ``hp["s"]`` where no grid axis or default gives ``s`` becomes an error that says so; a traced
    hyperparameter used as a Python number or arguments in the wrong order get a hint (:func:`explain_tracing`)."""
    try:
        with explain_tracing("init(key, hp) -> state and step(state, key, hp) -> state, hp a dict of scalars"):
            yield
    except KeyError as err:
        key = err.args[0] if len(err.args) == 1 else None
        if not isinstance(key, str) or key in names:
            raise
        raise KeyError(
            f"{key!r}: the dynamics read hp[{key!r}], which is neither a grid axis nor a default of the "
            f"dynamics (hp holds {sorted(names)}); add {key!r} to the grid or to Dynamics(hyperparams=...)"
        ) from err


def _check_names(entries: list, axes: Sequence[str], keys: Sequence[str]) -> None:
    """Refuse outputs that would overwrite each other or a dimension of the result: every variable
    name distinct, and none a grid axis, ``replica``, ``time`` or another output's dimension
    (``{"d": diverged(), "d_step": time_average(f)}`` both write ``d_step``)."""

    def owners(var: str) -> list[str]:
        return sorted((k for k in keys if var == k or var.startswith(k + "_")), key=len)

    names = [entry[0] for entry in entries]
    taken = {a: f"grid axis {a!r}" for a in axes} | {"replica": "dimension 'replica'", "time": "dimension 'time'"}
    for name, dims, _, coords in entries:
        for d in (*dims, *coords):
            taken.setdefault(d, f"dimension {d!r} of {name!r}")
    for i, name in enumerate(names):
        if name in names[:i]:
            pair = " and ".join(map(repr, owners(name)))
            raise ValueError(f"observables {pair} both write the variable {name!r}: rename one")
        if name in taken:
            owner = owners(name)[-1:] or [name]
            raise ValueError(f"observable {owner[0]!r} writes {name!r}, the name of the {taken[name]}: rename it")


def _output_schema(program: _Program, inputs_one: dict, ctx: Context, axes: Sequence[str]) -> str | None:
    """The outputs of one zero-filled trajectory, named as a chunk's are, checked by :func:`_check_names` before
    the run (the records' and reducers' names and dimensions follow from shapes, not values) and described one per
    line (name, dims, dtype, shape). None where an observable's ``finalize`` cannot read zeros: the first chunk's
    outputs are then checked."""
    carry = jax.eval_shape(program.init, inputs_one)
    finals = jax.eval_shape(program.finish, carry, inputs_one)

    def zeros(tree):
        return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), tree)

    status = {"diverged_step": np.full(1, -1), "cell": np.zeros(1, int)}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            entries = _collect(program, zeros({k: carry[k] for k in ("rec", "acc")}), zeros(finals), status, 1, ctx)
    except ObservableError:
        raise
    except Exception:  # noqa: BLE001 - a finalize that cannot read zeros
        return None
    _check_names(entries, axes, [name for name, _ in program.spec.observables])
    return "\n".join(
        f"{name} {dims} {np.asarray(values).dtype} {np.shape(values)[1:]}" for name, dims, values, _ in entries
    )


def _run_chunk(program: _Program, inputs, keep: int, ctx: Context, n_slots: int, bar) -> list:
    """Run one chunk of trajectories for ``n_steps`` steps (in blocks, for the progress bar); its outputs."""
    n_steps, record_every = ctx.n_steps, ctx.record_every
    carry = program.init(inputs)
    done = 0
    if record_every is not None:
        n_rec = n_steps // record_every
        carry = in_blocks(
            lambda c, a, b: program.run_records(c, inputs, a, b),
            carry,
            0,
            n_rec,
            max(1, math.ceil(n_rec / PROGRESS_BLOCKS)),
            lambda n: bar.update(keep * n * record_every),
            _MIN_CALL_SECONDS,
        )
        done = n_rec * record_every
    carry = in_blocks(
        lambda c, a, b: program.run_steps(c, inputs, a, b),
        carry,
        done,
        n_steps,
        max(1, math.ceil((n_steps - done) / PROGRESS_BLOCKS)),
        lambda n: bar.update(keep * n),
        _MIN_CALL_SECONDS,
    )
    if done < n_steps:
        carry = program.write(carry, inputs, n_slots - 1)
    finals = program.finish(carry, inputs)
    status = {"diverged_step": np.asarray(carry["div_step"]), "cell": np.asarray(inputs["cell"])}
    return _collect(program, carry, finals, status, keep, ctx)


def _device_list(devices) -> list | None:
    if devices is None:
        return None
    if isinstance(devices, int) and not isinstance(devices, bool):
        available = jax.local_devices()  # in a multi-host run, this process's devices
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}: between 1 and the {len(available)} available devices")
        return available[:devices]
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be None, an int or a sequence of jax devices, got {devices!r}")
    return devices


# --------------------------------------------------------------------------- simulate


def _scalar_constant(name: str, value: Any) -> Any:
    """A hyperparameter held fixed (off the grid) as a Python scalar: a 0-d array or NumPy scalar becomes its
    ``item()``; an array of any other shape is refused (a run's constants key its compiled program)."""
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        if np.ndim(value):
            raise ValueError(
                f"hyperparameter {name!r} is an array of shape {np.shape(value)}; hyperparameters are scalars "
                f"(a grid axis holds one per cell): put arrays in the problem, or close over them in the step"
            )
        return np.asarray(value).item()
    return value


def _check_shard(shard, checkpoint) -> None:
    if shard is None:
        return
    if checkpoint is None:
        raise ValueError("shard needs a checkpoint folder shared by the shards")
    if not (isinstance(shard, tuple) and len(shard) == 2):
        raise TypeError(f"shard must be a tuple (index, count), got {shard!r}")
    count = check_int("shard count", shard[1], minimum=1)
    check_int("shard index", shard[0], minimum=0, maximum=count - 1)


def _per_cell(g: _Grid) -> dict[str, np.ndarray]:
    """Each grid axis's value in every cell (C order: the last axis varies fastest)."""
    mesh = np.meshgrid(*g.values, indexing="ij") if g.axes else []
    return {a: m.reshape(-1) for a, m in zip(g.axes, mesh)}


def _static_groups(dynamics: Dynamics, g: _Grid, per_cell: Mapping[str, np.ndarray]) -> dict[tuple, list[int]]:
    """The cells grouped by their static hyperparameters (one compiled program per group), each group's
    hyperparameters checked by ``dynamics.check``."""
    groups: dict[tuple, list[int]] = {}
    for c in range(math.prod(g.shape)):
        groups.setdefault(tuple(per_cell[a][c].item() for a in g.static), []).append(c)
    if dynamics.check is not None:
        for key, cells in groups.items():
            hp = {**g.constants, **dict(zip(g.static, key))}
            dynamics.check(hp | {a: np.unique(per_cell[a][cells]) for a in g.traced})
    return groups


def _trajectory_sharding(device_list: list | None) -> jax.sharding.NamedSharding | None:
    """The trajectory axis split over several devices (``None`` for one)."""
    if not device_list or len(device_list) == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(device_list), ("trajectory",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("trajectory"))


class _Trajectories(NamedTuple):
    """One static group's trajectories, cell-major then replica: each one's cell, replica and traced
    hyperparameters."""

    cell: np.ndarray
    rep: np.ndarray
    hp: dict[str, np.ndarray]

    @classmethod
    def of(cls, cells: Sequence[int], n_replicas: int, per_cell: Mapping[str, np.ndarray], traced: Sequence[str]):
        cell = np.repeat(np.asarray(cells, dtype=np.int64), n_replicas)
        float_dtype = jnp.result_type(float)
        hp = {
            a: per_cell[a][cell].astype(np.int32 if np.issubdtype(per_cell[a].dtype, np.integer) else float_dtype)
            for a in traced
        }
        return cls(cell, np.tile(np.arange(n_replicas), len(cells)), hp)

    def inputs(self, sel: np.ndarray, sharding) -> dict:
        """The trajectories ``sel`` as a chunk's inputs, split over the devices of ``sharding`` when they divide."""
        inputs = {
            "cell": jnp.asarray(self.cell[sel], jnp.int32),
            "rep": jnp.asarray(self.rep[sel], jnp.int32),
            "hp": {a: jnp.asarray(v[sel]) for a, v in self.hp.items()},
        }
        if sharding is not None and len(sel) % sharding.mesh.devices.size == 0:
            inputs = jax.device_put(inputs, sharding)
        return inputs


def _run_config(dynamics, g: _Grid, obs, n_steps, n_replicas, seed, record_every, bound) -> dict:
    """What defines the run, stored (as JSON) in the result's attributes and compared by a checkpoint."""
    return {
        "dynamics": dynamics.name,
        "problem": getattr(dynamics.problem, "name", None),
        "grid": {a: v.tolist() for a, v in zip(g.axes, g.values)},
        "hyperparams": {k: jsonable(v) for k, v in g.constants.items()},
        "static_axes": list(g.static),
        "n_steps": n_steps,
        "n_replicas": n_replicas,
        "seed": seed,
        "record_every": record_every,
        "observables": {n: {"kind": o.kind, **{k: jsonable(v) for k, v in o.config.items()}} for n, o in obs.items()},
        "divergence_bound": bound,
    }


class _Sweep:
    """Where each chunk's outputs come from: the checkpoint, a run (then saved), or, for a chunk of
    another ``shard``, nobody yet; and the outputs gathered over all trajectories."""

    def __init__(self, store: Checkpoint | None, shard: tuple[int, int] | None, outputs: _Outputs, bar, n_steps: int):
        self.store, self.shard, self.outputs = store, shard, outputs
        self.bar, self.n_steps = bar, n_steps
        self.chunk_number = 0
        self.loaded = 0  # trajectories read back from the checkpoint
        self.owed: list = []  # chunks of other shards, not in the checkpoint when this shard passed them

    def chunk(self, group: int, start: int, size: int, global_index: np.ndarray, run) -> list | None:
        """The outputs of one chunk (``run()`` computes them), put in place; ``None`` for another shard's."""
        mine = self.shard is None or self.chunk_number % self.shard[1] == self.shard[0]
        self.chunk_number += 1
        if self.store is not None and self.store.has(group, start, size):
            _, entries = self.store.load(group, start, size)
            self.loaded += len(global_index)
            self.bar.total -= len(global_index) * self.n_steps  # the bar counts, and times, what this call computes
            self.bar.refresh()
        elif not mine:
            self.owed.append((group, start, size, global_index))
            return None
        else:
            with warnings.catch_warnings(record=True) as caught:
                entries = run()
            for w in caught:  # an observable's warning (time batches too short, ...) at the caller's line
                warnings.warn(w.message, w.category, stacklevel=3)
            if self.store is not None:
                self.store.save(group, start, size, global_index, entries)
        for name, dims, values, coords in entries:
            self.outputs.put(name, dims, global_index, values, coords)
        return entries

    def collect_owed(self) -> bool:
        """Shards finishing together each pass the others' chunks before they are written: look again.
        Whether every chunk is now in the outputs."""
        for group, start, size, global_index in self.owed:
            if not self.store.has(group, start, size):
                return False
            for name, dims, values, coords in self.store.load(group, start, size)[1]:
                self.outputs.put(name, dims, global_index, values, coords)
        return True


def _dataset(outputs: _Outputs, g: _Grid, n_replicas: int, times: np.ndarray | None, attrs: dict) -> xr.Dataset:
    """The outputs as labeled arrays: the grid axes, ``replica``, then ``time`` for records."""
    shape, lead = (*g.shape, n_replicas), (*g.axes, "replica")
    data_vars = {
        name: (lead + outputs.dims[name], buf.reshape(shape + buf.shape[1:])) for name, buf in outputs.vars.items()
    }
    coords: dict[str, Any] = dict(zip(g.axes, g.values))
    coords["replica"] = np.arange(n_replicas)
    if times is not None:
        coords["time"] = times
    coords.update(outputs.coords)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def simulate(
    dynamics: Dynamics,
    grid: Mapping[str, Any] | None = None,
    *,
    n_steps: int,
    n_replicas: int = 1,
    observables: Mapping[str, Observable | str] | None = None,
    seed: int = 0,
    record_every: int | None = None,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    progress: bool | None = None,
    path: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    shard: tuple[int, int] | None = None,
    devices: int | Sequence[jax.Device] | None = None,
) -> xr.Dataset | None:
    """Run ``n_replicas`` trajectories of ``dynamics`` in every cell of ``grid`` for ``n_steps`` steps.

    Parameters
    ----------
    dynamics:
        A :class:`~dynsim.dynamics.Dynamics`, e.g. ``dynsim.dynamics.sgd(problem)``.
    grid:
        ``{name: 1-D values}``; the cells are the Cartesian product, in this order. Each
        name must be a hyperparameter of the dynamics; the others keep their defaults.
    n_steps, n_replicas:
        Steps per trajectory and trajectories per cell (>= 1).
    observables:
        ``{name: Observable}`` (see :mod:`dynsim.observables`); default
        ``{"final_state": final_state(), "diverged": diverged()}``.
    seed:
        Root of every random stream: trajectory ``(c, r)`` uses
        ``fold_in(fold_in(key(seed), c), r)``, the shared dataset ``fold_in(key(seed), 2**32-1)``.
    record_every:
        Store record observables at ``t = 0, k, 2k, ...`` and ``n_steps`` (dimension
        ``time``); if ``None``, only their final value.
    chunk_size:
        Trajectories per compiled call; by default as many as ``memory_budget`` allows.
        Rounded up to a multiple of 8 times the number of devices (the last chunk is padded):
        XLA compiles fewer than 4 lanes to scalar code whose rounding can differ, so this keeps
        results bitwise independent of it.
    memory_budget:
        Bytes for one chunk (default :func:`default_memory_budget`).
    progress:
        Show a progress bar (``None``: on a terminal, for runs longer than 2 s).
    path:
        Also save the result to this NetCDF file.
    checkpoint:
        A folder where every finished chunk is written atomically; calling again with the same
        arguments resumes from it, and a different configuration is refused
        (:mod:`dynsim.checkpoint`).
    shard:
        ``(index, count)``: run only the chunks ``index, index + count, ...`` (with a shared
        ``checkpoint``), e.g. one shard per host of a cluster. Returns ``None`` until every
        chunk is in the checkpoint; a call without ``shard`` then assembles the result.
    devices:
        Split every chunk over these devices (an int takes the first ones), sharding the
        trajectory axis; results are bitwise the same as on one device.

    Returns
    -------
    xarray.Dataset
        One dimension per grid axis, then ``replica``, then ``time`` for records; ``attrs``
        hold the configuration (JSON), the seed and the dynsim version.
    """
    from dynsim import __version__, io

    dynamics = _check_dynamics(dynamics)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    n_replicas = check_int("n_replicas", n_replicas, minimum=1)
    seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    if record_every is not None:
        record_every = check_int("record_every", record_every, minimum=1, maximum=n_steps)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    budget = int(check_positive("memory_budget", memory_budget)) if memory_budget is not None else None
    if path is not None:
        path = check_output_path(path)
    check_progress(progress)
    _check_shard(shard, checkpoint)
    device_list = _device_list(devices)
    obs = _check_observables(observables)
    g = _check_grid(dynamics, grid)
    ctx = Context(n_steps=n_steps, record_every=record_every)
    for o in obs.values():
        if o.check is not None:
            o.check(dynamics, ctx)
    bounds = [o.bound for o in obs.values() if o.bound is not None]
    bound = min(bounds) if bounds else None

    n_slots = len(record_times(n_steps, record_every))
    per_cell = _per_cell(g)
    groups = _static_groups(dynamics, g, per_cell)
    config = _run_config(dynamics, g, obs, n_steps, n_replicas, seed, record_every, bound)
    store = Checkpoint(checkpoint, {**config, "x64": bool(jax.config.jax_enable_x64)}) if checkpoint else None
    sharding = _trajectory_sharding(device_list)
    lanes = _LANES * (len(device_list) if device_list else 1)
    root = jax.random.key_data(prng.key(seed))
    started = time.perf_counter()
    with progress_bar(math.prod(g.shape) * n_replicas * n_steps, progress, "dynsim", mininterval=1.0) as bar:
        sweep = _Sweep(store, shard, _Outputs(math.prod(g.shape) * n_replicas), bar, n_steps)
        for group, (key, cells) in enumerate(groups.items()):
            static_hp = tuple(sorted({**g.constants, **dict(zip(g.static, key))}.items()))
            program = _program(_Spec(dynamics, tuple(obs.items()), static_hp, ctx, bound, n_slots))
            trajectories = _Trajectories.of(cells, n_replicas, per_cell, g.traced)
            n_traj = len(trajectories.cell)
            data = None if program.shared_data is None else program.shared_data(prng.data_key(prng.key(seed)))

            def inputs_for(sel):
                return {**trajectories.inputs(sel, sharding), "root": root, "data": data}

            hp_names = [*dict(static_hp), *g.traced] + (["data"] if program.shared_data is not None else [])
            inputs_one = inputs_for(np.arange(1))
            with _explain_user_code(hp_names):
                schema = _output_schema(program, inputs_one, ctx, g.axes)
            names_checked = schema is not None
            if store is not None:
                store.check_program(group, program.fingerprint(inputs_one, prng.key(seed), schema or ""))
            size = store.chunk_size(group) if store else None
            if size is None:
                size = chunk_size or _chunk_size(program, inputs_one, n_traj, budget or default_memory_budget())
                size = lanes * math.ceil(min(size, n_traj) / lanes)
                if store is not None:  # the first shard to get here fixes it for all
                    size = store.fix_chunk_size(group, size)
            for start in range(0, n_traj, size):
                keep = int(min(size, n_traj - start))
                index = start + np.arange(keep)
                sel = np.minimum(np.arange(start, start + size), n_traj - 1)  # pad by repeating a trajectory

                def run(sel=sel, keep=keep):
                    with _explain_user_code(hp_names):
                        return _run_chunk(program, inputs_for(sel), keep, ctx, n_slots, bar)

                entries = sweep.chunk(
                    group, start, size, trajectories.cell[index] * n_replicas + trajectories.rep[index], run
                )
                if entries is not None and not names_checked:
                    _check_names(entries, g.axes, list(obs))
                    names_checked = True
    elapsed = time.perf_counter() - started
    if not sweep.collect_owed():
        return None  # other shards still owe chunks; a call without ``shard`` assembles the result

    attrs = {
        "config": json.dumps(config),
        "seed": seed,
        "dynsim_version": __version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.local_devices()[0].device_kind),
        "x64": int(bool(jax.config.jax_enable_x64)),
        "elapsed_seconds": elapsed,  # this call's: chunks computed by earlier calls are not timed
        "resumed_trajectories": sweep.loaded,
    }
    result = _dataset(
        sweep.outputs, g, n_replicas, record_times(n_steps, record_every) if record_every else None, attrs
    )
    for name, o in obs.items():  # on the whole run: one warning, not one per chunk
        for message in o.diagnose(result, name, ctx) if o.diagnose is not None else []:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    if path is not None:
        io.save(result, path)
    return result
