"""Save and load results as NetCDF, with their configuration in the attributes."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import xarray as xr

from dynsim._validate import check_output_path

__all__ = ["save", "load", "config", "atomic_write"]

ENGINE = "h5netcdf"


def atomic_write(path: str, write, *, exclusive: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary file in the folder of ``path``, then rename it to ``path``.

    An interrupted write never leaves a truncated file under ``path``. The file gets the
    permissions a new file gets under the process's umask (``mkstemp`` alone makes it
    owner-only, which hides results and checkpoints from the other users of a shared folder).
    ``exclusive``: raise ``FileExistsError`` if ``path`` exists, as one atomic step (a hard link, not
    a rename), so that of several processes writing at once exactly one succeeds.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        if exclusive:
            os.link(tmp, path)
            os.remove(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(result: xr.Dataset, path: str | os.PathLike) -> str:
    """Write ``result`` to ``path`` (NetCDF-4 via h5netcdf) atomically: a temporary file, then a rename.

    An interrupted write never leaves a truncated file under ``path``.
    """
    if not isinstance(result, xr.Dataset):
        raise TypeError(f"result must be an xarray.Dataset, got {type(result).__name__}")
    path = check_output_path(path)
    atomic_write(path, lambda tmp: result.to_netcdf(tmp, engine=ENGINE))
    return path


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read a result written by :func:`save` (fully into memory; the file is closed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no result file at {os.fspath(path)!r}")
    with xr.open_dataset(path, engine=ENGINE) as ds:
        return ds.load()


def config(result: xr.Dataset) -> dict[str, Any]:
    """The run configuration stored by :func:`dynsim.simulate` (``attrs["config"]``), as a dict."""
    if "config" not in result.attrs:
        raise ValueError(
            "result has no 'config' attribute: it was not written by dynsim.simulate "
            f"(its attributes are {sorted(result.attrs)})"
        )
    return json.loads(result.attrs["config"])
