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


def _limits(values: np.ndarray, diverging: bool) -> tuple[float, float, str]:
    """Colour limits from the 1-99th percentiles of the finite values (symmetric about 0
    and RdBu_r when ``diverging``, else viridis)."""
    finite = values[np.isfinite(values)]
    if diverging:
        lim = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
        return -lim, lim, "RdBu_r"
    lo = float(np.percentile(finite, 1)) if finite.size else 0.0
    hi = float(np.percentile(finite, 99)) if finite.size else 1.0
    return lo, hi, "viridis"


def field_maps(
    panels: Sequence[tuple[str, xr.DataArray]],
    path: str | Path,
    *,
    units: str,
    title: str,
    diverging: bool | Sequence[bool] = False,
    shared_scale: bool = True,
    ncol: int = 3,
    dpi: int = 110,
) -> Path:
    """One panel per ``(label, DataArray (y, x))``, NaN grey.

    Parameters
    ----------
    diverging : bool or one bool per panel
        RdBu_r centred on 0 (a flux whose sign matters, such as NEE), else viridis.
    shared_scale : bool
        One colour scale and colour bar for all panels (panels of one quantity, to be
        compared); False gives each panel its own (different quantities side by side,
        such as Rh and NEE). A shared scale needs one ``diverging`` for all panels.
    """
    from kgml_grid.maps import _plt

    n = len(panels)
    div = [bool(diverging)] * n if isinstance(diverging, bool) else [bool(d) for d in diverging]
    if len(div) != n:
        raise ValueError(f"field_maps: {len(div)} diverging flags for {n} panels")
    if shared_scale and len(set(div)) > 1:
        raise ValueError(
            "field_maps: a shared colour scale needs one diverging setting for all panels, "
            f"got {div}; pass shared_scale=False"
        )
    plt = _plt()
    vals = [np.asarray(a.values, dtype="float64") for _, a in panels]
    if shared_scale:
        allv = np.concatenate([v.ravel() for v in vals]) if vals else np.array([])
        limits = [_limits(allv, bool(div and div[0]))] * n
    else:
        limits = [_limits(v, d) for v, d in zip(vals, div, strict=True)]
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 1.2, 3.2 * nrow + 0.8), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    im = None
    for ax, (label, a), v, (vmin, vmax, cmap) in zip(
        axes.ravel(), panels, vals, limits, strict=False
    ):
        cm = plt.get_cmap(cmap).with_extremes(bad=GREY)
        im = ax.imshow(v, extent=_extent(a), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{label} [{units}]", fontsize=8)
        ax.set_xlabel("x (km)", fontsize=7)
        ax.set_ylabel("y (km)", fontsize=7)
        ax.tick_params(labelsize=6)
        if not shared_scale:
            fig.colorbar(im, ax=ax, shrink=0.85).ax.tick_params(labelsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if shared_scale and im is not None:
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
