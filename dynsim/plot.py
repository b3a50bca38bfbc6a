"""Matplotlib figures drawn from saved results (no computation here beyond labelling)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib import patches

from dynsim.stability import PHASES

__all__ = ["PHASE_COLORS", "phase_map", "disagreement_map", "phase_legend"]

PHASE_COLORS = {
    "undecided": "#ffffff",
    "I_ms": "#9ecae1",
    "I_p": "#3182bd",
    "II": "#fd8d3c",
    "III": "#31a354",
    "IV": "#bdbdbd",
}
_ORDER = ("undecided", *PHASES)
_CMAP = mcolors.ListedColormap([PHASE_COLORS[p] for p in _ORDER])
_NORM = mcolors.BoundaryNorm(np.arange(-1.5, len(PHASES) + 0.5), _CMAP.N)
_DESCRIPTIONS = {
    "I_ms": "I, mean square (Ia)",
    "I_p": "I, in probability (Ib)",
    "II": "II: w + u -> 0",
    "III": "III: saddle",
    "IV": "IV: unstable",
    "undecided": "undecided",
}


def _edges(values: np.ndarray, log: bool = False) -> np.ndarray:
    """Cell edges halfway between grid values: arithmetic midpoints, or geometric ones for a log axis (so that
    every row of a log-spaced grid is drawn equally tall)."""
    v = np.asarray(values, dtype=float)
    if log and v.size and np.all(v > 0):
        return np.exp(_edges(np.log(v)))
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def _check_phases(name: str, phase) -> None:
    """``phase`` must be a 2-D DataArray of phase codes: -1 (undecided) or an index into ``PHASES``."""
    if not isinstance(phase, xr.DataArray) or phase.ndim != 2:
        got = f"dims {phase.dims}" if isinstance(phase, xr.DataArray) else type(phase).__name__
        raise TypeError(f"{name} must be a 2-D xarray.DataArray (the 'phase' of saddle_phases), got {got}")
    codes = phase.values
    if not np.issubdtype(codes.dtype, np.integer) or codes.min() < -1 or codes.max() >= len(PHASES):
        raise ValueError(
            f"{name} must hold phase codes, integers from -1 (undecided) to {len(PHASES) - 1} (PHASES = {PHASES}), "
            f"got {codes.dtype} values in [{codes.min()}, {codes.max()}]; draw other 2-D results with xarray, "
            "e.g. result['x'].plot(x='lr')"
        )


def phase_map(ax, phase: xr.DataArray, *, label: bool = True, y_log: bool = False):
    """Colour the phases of a 2-D ``phase`` array (dims: lr first) and write each phase's name on its largest patch."""
    _check_phases("phase", phase)
    xdim, ydim = phase.dims
    x, y = phase[xdim].values, phase[ydim].values
    ax.pcolormesh(_edges(x), _edges(y, log=y_log), phase.values.T, cmap=_CMAP, norm=_NORM, shading="flat")
    ax.set_xlabel("learning rate λ" if xdim == "lr" else xdim)
    ax.set_ylabel(
        {"mu": "signal level μ  (noise 1 - μ)", "a": "a  (x y ∈ {1, a})", "batch_size": "batch size S"}.get(ydim, ydim)
    )
    if y_log:
        ax.set_yscale("log")
    if not label:
        return
    for code, name in enumerate(PHASES):
        mask = phase.values == code
        if mask.sum() < 6:
            continue
        i, j = np.argwhere(mask).mean(axis=0)
        # nearest cell of the phase to its centroid, so the label sits inside it
        cells = np.argwhere(mask)
        i, j = cells[np.argmin((cells[:, 0] - i) ** 2 + (cells[:, 1] - j) ** 2)]
        ax.text(
            x[i],
            y[j],
            name.replace("_", " "),
            ha="center",
            va="center",
            fontsize=8,
            weight="bold",
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7),
        )


def disagreement_map(ax, theory: xr.DataArray, simulation: xr.DataArray, *, y_log: bool = False, **legend_kw):
    """Cells where the simulated phase differs from theory (red), agrees (light) or is undecided (grey).

    Agreement is of the phase itself, I_ms and I_p apart. Returns the status per cell (0 agree, 1 undecided,
    2 disagree); ``legend_kw`` go to ``ax.legend`` (``legend=False`` draws none).
    """
    _check_phases("theory", theory)
    _check_phases("simulation", simulation)
    t, s = theory.values, simulation.values
    status = np.where(s < 0, 1, np.where(s == t, 0, 2))
    xdim, ydim = theory.dims
    cmap = mcolors.ListedColormap(["#f0f0f0", "#969696", "#de2d26"])
    ax.pcolormesh(
        _edges(theory[xdim].values),
        _edges(theory[ydim].values, log=y_log),
        status.T,
        cmap=cmap,
        norm=mcolors.BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
        shading="flat",
    )
    ax.set_xlabel("learning rate λ" if xdim == "lr" else xdim)
    if y_log:
        ax.set_yscale("log")
    if legend_kw.pop("legend", True):
        labels = ["agree", "undecided", "disagree"]
        handles = [patches.Patch(facecolor=c, edgecolor="k", lw=0.3, label=lab) for c, lab in zip(cmap.colors, labels)]
        ax.legend(handles=handles, **{"fontsize": 8, "loc": "upper right", **legend_kw})
    return status


def phase_legend(where, include_undecided: bool = True, **legend_kw):
    """A legend of the phase colours of :func:`phase_map` on ``where`` (an Axes, or a Figure for one legend
    outside the panels), with "undecided" unless told not to; ``legend_kw`` go to ``where.legend``."""
    names = [p for p in _ORDER if include_undecided or p != "undecided"]
    handles = [patches.Patch(facecolor=PHASE_COLORS[p], edgecolor="k", lw=0.3, label=_DESCRIPTIONS[p]) for p in names]
    where.legend(handles=handles, **{"fontsize": 8, "loc": "upper right", "framealpha": 0.9, **legend_kw})
