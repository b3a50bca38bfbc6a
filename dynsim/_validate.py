"""Input checks at the API boundary: each error names the argument, its value and what is allowed."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LEARNING_RATE_NAMES = ("lr", "learning_rate")


STATIC_HINT = (
    "A hyperparameter used as a Python number (range(hp['k']), int(hp['n']), `if hp['x'] > 0:`) must be static: "
    "declare it in Dynamics(..., static={'k'}) (for a built dynamics, dyn._replace(static=dyn.static | {'k'})), "
    "and the engine compiles once per value. A traced one (a learning "
    "rate, a noise level) is a JAX scalar: branch with jnp.where or jax.lax.cond, loop with jax.lax.fori_loop"
)


@contextlib.contextmanager
def explain_tracing(signatures: str, concretization: str | None = STATIC_HINT):
    """Add a hint to an error raised while tracing user code when its cause is a common slip: a traced value
    used as a Python number (the hint ``concretization``), or arguments in the wrong number or order, which
    JAX reports as a key indexed by a name or used as a number (``signatures`` says how dynsim calls the code)."""
    try:
        yield
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as err:
        if concretization:
            err.add_note(concretization)
        raise
    except TypeError as err:
        if any(sign in str(err) for sign in ("string indexing", "key<", "positional argument")):
            err.add_note(f"dynsim calls {signatures}: check the number and order of the arguments")
        raise


def stable_repr(value: Any) -> str:
    """``repr(value)`` without memory addresses (``<function f at 0x7f...>`` becomes ``<function f>``), so that it
    names the same object alike in every process."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def jsonable(value: Any) -> Any:
    """``value`` for a JSON configuration: NumPy and JAX scalars as numbers, arrays as nested lists, dicts, lists
    and tuples entry by entry, anything else (a function) by :func:`stable_repr`, the same in every process."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return stable_repr(value)


def check_no_nan(name: str, value: Any) -> None:
    """Refuse a numeric hyperparameter holding NaN (an infinite one may mean "off", as a clipping threshold)."""
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - not an array: nothing to check
        return
    if np.issubdtype(arr.dtype, np.inexact) and np.any(np.isnan(arr)):
        raise ValueError(f"hyperparameter {name} holds NaN: {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(name: str, value: Any) -> float:
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_values(name: str, value: Any, rule, allowed: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every entry of ``value`` (a scalar, or every grid
    value of a hyperparameter) is finite and obeys ``rule`` (an elementwise predicate), described by
    ``allowed``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    arr = np.asarray(value, dtype=float)
    bad = ~np.isfinite(arr) | ~rule(arr)
    if np.any(bad):
        shown = arr[bad].tolist() if arr.ndim else float(arr)
        raise ValueError(f"{name} must be {allowed}, got {shown}")


def concrete_values(value: Any) -> np.ndarray | None:
    """The entries of ``value`` as a NumPy array when they are known now (a Python number, a NumPy scalar or
    array, a JAX array outside a trace); ``None`` for a traced JAX value (inside ``jit``, ``vmap`` or ``grad``,
    known only when the program runs) and for a function (a schedule)."""
    if callable(value):
        return None
    try:
        return np.asarray(value)
    except jax.errors.TracerArrayConversionError:
        return None


def check_concrete(name: str, value: Any, rule, allowed: str) -> None:
    """:func:`check_values` on ``value`` when its entries are known now (:func:`concrete_values`); a traced value
    or a schedule passes unchecked (:func:`dynsim.dynamics.from_optax` checks every grid value as a number)."""
    if concrete_values(value) is not None:
        check_values(name, value, rule, allowed)


def range_check(rules: Mapping[str, tuple[Any, str]]):
    """``check(hp)`` for :class:`dynsim.dynamics.Dynamics`: each hyperparameter named in ``rules``
    (name -> (elementwise predicate, description)) that ``hp`` holds, every grid value included,
    obeys its rule (:func:`check_values`)."""

    def check(hp):
        for name, (rule, allowed) in rules.items():
            if name in hp:
                check_values(name, hp[name], rule, allowed)

    return check


def check_positive(name: str, value: Any) -> float:
    value = check_real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    value = check_real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_n_data(n_data: Any) -> int | None:
    if n_data is None:
        return None
    return check_int("n_data", n_data, minimum=1)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def grid_values(name: str, values: Any) -> np.ndarray:
    """A grid axis as a non-empty, finite, 1-D NumPy array of distinct values, integers within int32."""
    if isinstance(values, (str, bytes, Mapping)):
        raise TypeError(f"grid[{name!r}] must be a 1-D array of numbers, got {values!r}")
    try:
        arr = np.asarray(values)
    except Exception as err:  # pragma: no cover - numpy's own message is kept
        raise TypeError(f"grid[{name!r}] must be a 1-D array of numbers: {err}") from err
    if arr.ndim != 1:
        raise ValueError(f"grid[{name!r}] must be a 1-D array of numbers, got shape {arr.shape} ({values!r})")
    if arr.size == 0:
        raise ValueError(f"grid[{name!r}] must not be empty")
    if arr.dtype == bool:
        raise TypeError(
            f"grid[{name!r}] holds booleans {values!r}: a grid axis holds numbers. A switch such as {name!r} is "
            "fixed when the dynamics is built (a keyword of its builder); run one simulation per setting"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"grid[{name!r}] must hold real numbers, got dtype {arr.dtype} ({values!r})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"grid[{name!r}] must be finite, got {arr.tolist()}")
    values, counts = np.unique(arr, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"grid[{name!r}] holds {values[counts > 1].tolist()} more than once: two cells with one label, "
            "which xarray cannot tell apart (.sel would return both); for more samples of a cell, raise n_replicas"
        )
    int32 = np.iinfo(np.int32)
    if np.issubdtype(arr.dtype, np.integer) and np.any((arr < int32.min) | (arr > int32.max)):
        raise ValueError(
            f"grid[{name!r}] holds {arr[(arr < int32.min) | (arr > int32.max)].tolist()}, beyond the int32 range "
            f"the run passes integers in ({int32.min} to {int32.max}); give such values as floats"
        )
    dtype = jnp.result_type(float)  # the run's floats: float32 unless jax_enable_x64
    if np.issubdtype(arr.dtype, np.floating) and np.any(np.abs(arr) > np.finfo(dtype).max):
        big = arr[np.abs(arr) > np.finfo(dtype).max].tolist()
        raise ValueError(
            f"grid[{name!r}] holds {big}, beyond the {dtype} range (+-{np.finfo(dtype).max:.3g}) the run "
            "computes in; enable float64 with jax.config.update('jax_enable_x64', True) for such values"
        )
    if np.issubdtype(arr.dtype, np.floating):
        check_representable(name, arr, dtype)
    if name in LEARNING_RATE_NAMES and np.any(arr <= 0):
        bad = arr[arr <= 0].tolist()
        raise ValueError(f"grid[{name!r}]: learning rates must be > 0 and finite, got {bad}")
    return arr


def check_representable(name: str, arr: np.ndarray, dtype) -> None:
    """Refuse grid values the run's float ``dtype`` cannot tell apart: a nonzero value below its smallest normal
    number (flushed to 0 by CPU and GPU arithmetic: ``lr = 1e-50`` would run as ``lr = 0``), or distinct values
    that round to the same number (two cells computing the same thing under different labels)."""
    x64 = "enable float64 with jax.config.update('jax_enable_x64', True) for such values"
    tiny = (arr != 0) & (np.abs(arr) < np.finfo(dtype).tiny)
    if np.any(tiny):
        raise ValueError(
            f"grid[{name!r}] holds {arr[tiny].tolist()}, below the smallest normal {dtype} number "
            f"({np.finfo(dtype).tiny:.3g}), which the run's arithmetic flushes to 0; {x64}"
        )
    distinct = np.unique(arr)  # sorted, and rounding keeps the order: values that collide are neighbours
    equal = distinct[1:].astype(dtype) == distinct[:-1].astype(dtype)
    if np.any(equal):
        same = distinct[np.r_[equal, False] | np.r_[False, equal]].tolist()
        raise ValueError(
            f"grid[{name!r}]: the values {same} are distinct but round to the same {dtype} number, so their cells "
            f"would be the same run under different labels; {x64}"
        )


def check_learning_rate(name: str, value: Any) -> float:
    if callable(value):
        raise TypeError(
            f"{name} must be a number, got the function {value!r}: a hyperparameter is one number per "
            "cell. For a schedule, build it from numbers inside the optimizer, e.g. "
            "from_optax(problem, lambda learning_rate: optax.sgd(optax.exponential_decay(learning_rate, 100, 0.5)))"
        )
    value = check_real(name, value)
    if value <= 0:
        raise ValueError(f"{name}: learning rates must be > 0 and finite, got {value!r}")
    return value


def check_output_path(path: Any) -> str:
    """A file path that can be written: its folder exists and is writable."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory; give a file name such as {os.path.join(path, 'results.nc')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path {path!r}: folder {folder!r} does not exist")
    try:  # a real write: permission bits say nothing for root or special file systems
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"path {path!r}: folder {folder!r} is not writable ({err.strerror})") from err
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"path {path!r} exists and is not writable")
    return path
