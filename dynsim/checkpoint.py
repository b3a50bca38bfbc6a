"""Chunk checkpoints: a run that is interrupted resumes where it stopped, and hosts can share a run.

A checkpoint is a folder. ``config.json`` fingerprints the run (dynamics, grid, steps, replicas,
seed, records, observables) and ``program-<group>.sha256`` what each compiled program computes (its
jaxprs and constants: a changed step, problem constant or observable function), and
``chunk-size-<group>.txt`` the chunk size the first process to start fixed for all. Each finished
chunk of trajectories is one ``.npz`` file holding its outputs and the global indices of its
trajectories, written to a temporary name and renamed, so a killed process never leaves a
half-written chunk. A rerun of the same call loads the chunks that exist and computes the others;
a checkpoint written by a different configuration or program is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import zipfile
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_output_path
from dynsim.io import atomic_write

__all__ = ["Checkpoint", "CarryFile", "add_program"]

_CHUNK = re.compile(r"chunk-(\d+)-(\d+)-(\d+)\.npz$")


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _refuse_other_run(path: str, stored: dict, config: dict, remedy: str) -> None:
    """Raise ``ValueError`` naming the keys in which a checkpoint's stored configuration differs from this run's."""
    if stored != config:
        keys = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        raise ValueError(f"checkpoint {path!r} belongs to a different run (differs in {keys}); {remedy}")


@contextlib.contextmanager
def _open_npz(path: str, remedy: str):
    """The ``.npz`` file ``path``, open for reading; what cannot be read in it is a ``ValueError`` naming the file."""
    try:
        with np.load(path) as z:
            yield z
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"checkpoint {path!r} cannot be read ({type(err).__name__}: {err}): it is damaged or was not written "
            f"by dynsim; {remedy}"
        ) from err


def _constants(closed):
    """The constants of a closed jaxpr and of every closed jaxpr nested in its equations (jit, loops, branches)."""
    yield from closed.consts
    stack = [closed.jaxpr]
    while stack:
        for eqn in stack.pop().eqns:
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        yield from sub.consts
                        stack.append(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        stack.append(sub)


def add_program(digest, fn, *args) -> None:
    """Add what ``fn(*args)`` computes to the hash ``digest``: its jaxpr (printed without source locations, so
    stable across processes) and the constants it closes over (a problem's data, a step's parameters)."""
    closed = jax.make_jaxpr(fn)(*args)
    digest.update(closed.jaxpr.pretty_print(source_info=False, name_stack=False).encode())
    for const in _constants(closed):
        if _is_key(const):
            const = jax.random.key_data(const)
        value = np.asarray(const)
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())


def _write_text(text: str):
    """A writer for :func:`dynsim.io.atomic_write` that stores ``text`` and closes the file."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return write


class Checkpoint:
    """The checkpoint folder of one :func:`dynsim.simulate` configuration."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any]):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"checkpoint {self.path!r} exists and is not a folder")
        os.makedirs(self.path, exist_ok=True)
        self._config_text = json.dumps(config, sort_keys=True)
        self._check_config()

    def _check_config(self, write: bool = False) -> None:
        """Refuse a folder whose ``config.json`` is another run's; with ``write``, store ours if there is none.
        It is written with the first program's fingerprint, once the call's checks have passed: a call that
        fails before (a misspelled observable) leaves nothing that would refuse the corrected one."""
        config_path = os.path.join(self.path, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as fh:
                stored = json.load(fh)
            _refuse_other_run(self.path, stored, json.loads(self._config_text), "use another folder or delete this one")
        elif write:
            atomic_write(config_path, _write_text(self._config_text))

    def check_program(self, group: int, fingerprint: str) -> None:
        """Record the fingerprint of a group's compiled program, or refuse a checkpoint made by another.

        ``config.json`` holds what the call's arguments say; this catches what they cannot, such as
        an observable's function or a problem's constants that changed between runs.
        """
        self._check_config(write=True)
        path = os.path.join(self.path, f"program-{group:04d}.sha256")
        if not os.path.exists(path):
            atomic_write(path, _write_text(fingerprint))
            return
        with open(path) as fh:
            stored = fh.read().strip()
        if stored != fingerprint:
            raise ValueError(
                f"checkpoint {self.path!r} was computed by a different program (the dynamics' step, the "
                "problem's constants or data, an observable's function, or the order of the observables "
                "changed); use another folder or delete this one"
            )

    def _size_file(self, group: int) -> str:
        return os.path.join(self.path, f"chunk-size-{group:04d}.txt")

    def chunk_size(self, group: int) -> int | None:
        """The chunk size fixed for this group (:meth:`fix_chunk_size`, or that of its chunks), if any."""
        if os.path.exists(self._size_file(group)):
            with open(self._size_file(group)) as fh:
                return int(fh.read())
        for name in os.listdir(self.path):  # a checkpoint written before the size file
            m = _CHUNK.match(name)
            if m and int(m.group(1)) == group:
                return int(m.group(3))
        return None

    def fix_chunk_size(self, group: int, size: int) -> int:
        """Fix this group's chunk size at ``size``, unless another process (a shard starting at the same
        time) fixed it first: then its size, so that every shard cuts the trajectories at the same places
        (the size each host would pick depends on its free memory and its devices)."""
        with contextlib.suppress(FileExistsError):
            atomic_write(self._size_file(group), _write_text(str(size)), exclusive=True)
        return self.chunk_size(group)

    def _file(self, group: int, start: int, size: int) -> str:
        return os.path.join(self.path, f"chunk-{group:04d}-{start:012d}-{size:09d}.npz")

    def has(self, group: int, start: int, size: int) -> bool:
        return os.path.exists(self._file(group, start, size))

    def save(self, group: int, start: int, size: int, index: np.ndarray, entries: list) -> None:
        """Store a chunk: ``entries`` are ``(name, dims, values, coords)``, values over its trajectories."""
        meta = [
            {"name": n, "dims": list(d), "coords": {k: np.asarray(c).tolist() for k, c in co.items()}}
            for n, d, _, co in entries
        ]
        arrays = {f"v{i}": np.asarray(e[2]) for i, e in enumerate(entries)}

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, index=index, meta=np.array(json.dumps(meta)), **arrays)

        atomic_write(self._file(group, start, size), write)

    def load(self, group: int, start: int, size: int) -> tuple[np.ndarray, list]:
        with _open_npz(self._file(group, start, size), "delete the file to compute that chunk again") as z:
            meta = json.loads(str(z["meta"]))
            entries = [
                (m["name"], tuple(m["dims"]), z[f"v{i}"], {k: np.asarray(c) for k, c in m["coords"].items()})
                for i, m in enumerate(meta)
            ]
            return z["index"], entries


class CarryFile:
    """The checkpoint of one loop's carry (a pytree of arrays, PRNG keys included) in one ``.npz`` file: the run's
    ``config`` (JSON, with whatever fingerprints the caller puts in it), the blocks done and the carry's leaves.
    Written atomically (a temporary file, then a rename) after a call that ends ``every`` seconds after the last
    save, or when asked (``now=True``); a file from another configuration is refused.
    """

    def __init__(self, path: str | os.PathLike, config: dict[str, Any], every: float):
        self.path = check_output_path(path)
        self.config = json.loads(json.dumps(config))
        self.every = every
        self.saved_at = time.perf_counter()

    def load(self, carry) -> tuple[Any, int]:
        """The saved carry (shaped and typed as ``carry``) and blocks done, or ``carry`` and 0 where none is saved."""
        if not os.path.exists(self.path):
            return carry, 0
        remedy = "use another file or delete this one"
        with _open_npz(self.path, remedy) as z:
            stored = json.loads(str(z["config"]))
        _refuse_other_run(self.path, stored, self.config, remedy)
        leaves, treedef = jax.tree_util.tree_flatten(carry)
        with _open_npz(self.path, remedy) as z:
            done, saved = int(z["done"]), [z[f"c{i}"] for i in range(len(leaves))]
        restored = [
            jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf)) if _is_key(leaf) else jnp.asarray(value)
            for leaf, value in zip(leaves, saved)
        ]
        return jax.tree_util.tree_unflatten(treedef, restored), done

    def save(self, carry, done: int, *, now: bool = False) -> None:
        if not now and time.perf_counter() - self.saved_at < self.every:
            return
        leaves = [jax.random.key_data(leaf) if _is_key(leaf) else leaf for leaf in jax.tree_util.tree_leaves(carry)]
        arrays = {f"c{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, config=np.array(json.dumps(self.config)), done=np.array(done), **arrays)

        atomic_write(self.path, write)
        self.saved_at = time.perf_counter()
