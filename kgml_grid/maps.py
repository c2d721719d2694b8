"""Annual maps of the upscaled fluxes (PNG, matplotlib Agg).

:func:`annual_maps` reads an upscaling output store (lazily), sums the daily fluxes
of each calendar year per pixel (gC m-2 yr-1; a year not covered whole by the run is
labelled with its number of days), and writes one PNG per variable with a panel per
year and a shared colour scale (NEE on a diverging scale centred on 0: blue = sink,
red = source, FLUXNET sign). Non-crop pixels are NaN and left blank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["annual_maps", "annual_totals"]

MAP_VARIABLES: tuple[str, ...] = ("ra", "rh", "nee")
_LABELS = {
    "ra": "autotrophic respiration Ra",
    "rh": "heterotrophic respiration Rh",
    "reco": "ecosystem respiration Reco",
    "nee": "net ecosystem exchange NEE (+ = source)",
    "gpp": "gross primary productivity GPP (model)",
}


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    if matplotlib.get_backend().lower() not in {"agg", "module://matplotlib_inline.backend_inline"}:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def annual_totals(ds: xr.Dataset, variable: str) -> tuple[xr.DataArray, dict[int, int]]:
    """Per-pixel annual sums of a daily flux (gC m-2 yr-1) and the days of each year.

    NaN stays NaN (a pixel is NaN in a year when all its days are NaN).
    """
    da = ds[variable]
    totals = da.groupby("time.year").sum("time", min_count=1)
    days = {
        int(y): int(n)
        for y, n in zip(*np.unique(ds["time"].dt.year.values, return_counts=True), strict=True)
    }
    return totals, days


def annual_maps(
    store: str | Path | xr.Dataset,
    out_dir: str | Path,
    *,
    variables: Sequence[str] = MAP_VARIABLES,
    prefix: str = "annual_",
    dpi: int = 110,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``<out_dir>/<prefix><variable>.png`` for each variable; return the paths.

    Parameters
    ----------
    store : path or Dataset
        An upscaling output store (``OUT.zarr``) or the Dataset opened from it.
    out_dir : path
        Created if needed; an existing one needs ``overwrite`` and is replaced only when
        it is a folder of maps kgml_grid wrote (:func:`kgml_grid.outputs.prepare_target`).
    variables : sequence of str
        Daily variables of the store (default Ra, Rh, NEE).
    """
    import dask

    ds = (
        store
        if isinstance(store, xr.Dataset)
        else xr.open_zarr(str(store), consolidated=False, decode_coords="all")
    )
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise ValueError(
            f"{store}: no variable {missing} to map; it has {sorted(map(str, ds.data_vars))}"
        )
    from kgml_grid.outputs import prepare_target

    inputs = [] if isinstance(store, xr.Dataset) else [("the output store", store)]
    out_dir = prepare_target(
        out_dir, kind="maps", inputs=inputs, overwrite=overwrite, option="--maps"
    )
    plt = _plt()
    paths = []
    km = 1e-3
    x, y = ds["x"].values * km, ds["y"].values * km
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[0] - y[1]) if y.size > 1 else 1.0
    extent = (x[0] - dx / 2, x[-1] + dx / 2, y[-1] - dy / 2, y[0] + dy / 2)
    for var in variables:
        totals, days = annual_totals(ds, var)
        with dask.config.set(scheduler="threads"):
            values = np.asarray(totals.values, dtype="float64")
        years = [int(v) for v in totals["year"].values]
        finite = values[np.isfinite(values)]
        if var == "nee":
            lim = float(np.nanpercentile(np.abs(finite), 99)) if finite.size else 1.0
            vmin, vmax, cmap = -lim, lim, "RdBu_r"
        else:
            vmin = float(np.nanpercentile(finite, 1)) if finite.size else 0.0
            vmax = float(np.nanpercentile(finite, 99)) if finite.size else 1.0
            cmap = "viridis"
        cmap = plt.get_cmap(cmap).with_extremes(bad="0.8")  # no crop: grey, not "zero"
        n = len(years)
        ncol = min(n, 4)
        nrow = math.ceil(n / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 1.2, 3.2 * nrow + 0.8),
                                 squeeze=False, constrained_layout=True)  # fmt: skip
        im = None
        for i, ax in enumerate(axes.ravel()):
            if i >= n:
                ax.axis("off")
                continue
            im = ax.imshow(values[i], extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                           interpolation="nearest")  # fmt: skip
            full = days[years[i]] >= 365
            ax.set_title(f"{years[i]}" + ("" if full else f" ({days[years[i]]} days)"), fontsize=10)
            ax.set_xlabel("x (km)", fontsize=8)
            ax.set_ylabel("y (km)", fontsize=8)
            ax.tick_params(labelsize=7)
        if im is not None:
            cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85)
            cb.set_label("g C m-2 yr-1")
        fig.suptitle(f"annual {_LABELS.get(var, var)}, g C m-2 yr-1")
        path = out_dir / f"{prefix}{var}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths
