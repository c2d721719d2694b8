"""Maps of the analyses (PNG, matplotlib Agg): perceptual colormaps, units in every
title, pixels without crop grey."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["categorical_map", "field_maps"]

GREY = "0.8"


def _extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    x, y = da["x"].values / 1e3, da["y"].values / 1e3
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[0] - y[1]) if y.size > 1 else 1.0
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] - dy / 2, y[0] + dy / 2)


def field_maps(
    panels: Sequence[tuple[str, xr.DataArray]],
    path: str | Path,
    *,
    units: str,
    title: str,
    diverging: bool = False,
    ncol: int = 3,
    dpi: int = 110,
) -> Path:
    """One panel per ``(label, DataArray (y, x))``, a shared colour scale (viridis, or
    RdBu_r centred on 0 when ``diverging``), NaN grey."""
    from kgml_grid.maps import _plt

    plt = _plt()
    vals = [np.asarray(a.values, dtype="float64") for _, a in panels]
    finite = np.concatenate([v[np.isfinite(v)] for v in vals]) if vals else np.array([])
    if diverging:
        lim = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
        vmin, vmax, cmap = -lim, lim, "RdBu_r"
    else:
        vmin = float(np.percentile(finite, 1)) if finite.size else 0.0
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        cmap = "viridis"
    cm = plt.get_cmap(cmap).with_extremes(bad=GREY)
    n = len(panels)
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 1.2, 3.2 * nrow + 0.8), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    im = None
    for ax, (label, a), v in zip(axes.ravel(), panels, vals, strict=False):
        im = ax.imshow(v, extent=_extent(a), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{label} [{units}]", fontsize=8)
        ax.set_xlabel("x (km)", fontsize=7)
        ax.set_ylabel("y (km)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85).set_label(units)
    fig.suptitle(f"{title} [{units}] (grey: no crop)", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def categorical_map(
    panels: Sequence[tuple[str, xr.DataArray]],
    names: Sequence[str],
    path: str | Path,
    *,
    title: str,
    dpi: int = 110,
) -> Path:
    """Maps of category indices (``-1``: none, grey), one colour per name (tab10)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    from kgml_grid.maps import _plt

    plt = _plt()
    colours = [plt.get_cmap("tab10")(i) for i in range(len(names))]
    cm = ListedColormap([GREY, *colours])
    norm = BoundaryNorm(np.arange(-1.5, len(names)), cm.N)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.5, 3.6), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    im = None
    for ax, (label, a) in zip(axes[0], panels, strict=True):
        im = ax.imshow(
            np.asarray(a.values), extent=_extent(a), cmap=cm, norm=norm, interpolation="nearest"
        )
        ax.set_title(f"{label} [category]", fontsize=8)
        ax.set_xlabel("x (km)", fontsize=7)
        ax.set_ylabel("y (km)", fontsize=7)
        ax.tick_params(labelsize=6)
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), ticks=np.arange(-1, len(names)), shrink=0.85)
    cb.ax.set_yticklabels(["no crop / none", *names], fontsize=7)
    fig.suptitle(f"{title} [category] (grey: no crop)", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
