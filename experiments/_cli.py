"""Command-line options every experiment shares: the seed and where figures and results go."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


def parse(
    parser: argparse.ArgumentParser, argv=None, *, seed: int = 0, resume: bool = True, replot: bool = False
) -> argparse.Namespace:
    """Add ``--seed``, ``--out`` (figures) and ``--results`` (NetCDF), parse, and create both folders.

    ``resume``: also add ``--resume`` (for experiments whose simulations take a checkpoint, see
    :func:`checkpoint`); an experiment without simulations has nothing to resume and passes False.
    ``replot``: also add ``--replot``, for experiments that draw their figure from their results files
    (see :func:`check_replot`).
    """
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--out", default="figures", help="folder for the figures")
    parser.add_argument("--results", default="results", help="folder for the NetCDF results")
    if resume:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="checkpoint every finished chunk under the results folder and resume from it",
        )
    if replot:
        parser.add_argument(
            "--replot", action="store_true", help="draw the figure again from the saved results, computing nothing"
        )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    return args


def save_figure(fig, args: argparse.Namespace, filename: str, *, dpi: int = 110) -> str:
    """Lay out ``fig``, save it as ``<args.out>/<filename>`` and return that path."""
    fig.tight_layout()
    path = os.path.join(args.out, filename)
    fig.savefig(path, dpi=dpi)
    return path


def checkpoint(args: argparse.Namespace, name: str) -> str | None:
    """The checkpoint folder of one simulation of the experiment when ``--resume`` is given, else None."""
    return os.path.join(args.results, "checkpoints", name) if getattr(args, "resume", False) else None


def saved_results(
    parser: argparse.ArgumentParser, args: argparse.Namespace, files: dict[str, str], compute: Callable[[], dict]
) -> dict:
    """The datasets a figure is drawn from, by name: ``compute()`` (datasets by the names of ``files``) saved to
    ``files`` first, unless ``--replot``; then, either way, read back from ``files``, so that the figure and the
    printed tables come from the saved files alone."""
    import dynsim as ds

    check_replot(parser, args, *files.values())
    if not args.replot:
        for name, result in compute().items():
            ds.io.save(result, files[name])
    return {name: ds.io.load(path) for name, path in files.items()}


def check_replot(parser: argparse.ArgumentParser, args: argparse.Namespace, *paths: str) -> None:
    """With ``--replot``, stop with a usage error when a results file the figure is drawn from is missing."""
    missing = [path for path in paths if not os.path.exists(path)]
    if args.replot and missing:
        parser.error(f"--replot: no results at {', '.join(missing)}; run without --replot first")
