"""Regional carbon budgets: daily fluxes summed by zone and by year, season or month.

Two grouped reductions, both with flox (lazy on Dask arrays, so a lazy
:func:`kgml_grid.predict` or an opened store go straight in):

1. per pixel, the daily fluxes (g C m-2 d-1) summed over each period: g C m-2 per
   period (``nansum``; a pixel with no value in a period, a non-crop pixel, is left out);
2. per zone, those totals times each pixel's weight (cell area in m2, times its crop
   share where the crop cube has fractions) summed over the zone's pixels: g C per
   period; the weights of the valid pixels summed the same way give the zone's area.

The zone's mean flux is then total / area (g C m-2 per period), its total in Tg C is
total / 1e12. Per crop: the same sums over the pixels whose crop type *of that year*
is corn, soybean or other (``crop='all'``: every pixel). Seasons are DJF, MAM, JJA, SON
of each calendar year (December with its own year). The table adds Rh/Reco (ratio of
the totals) and anomalies of the mean flux against the run's climatology (the mean over
the table's years of the same zone, crop and season/month).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid.analysis.zones import Zones
from kgml_grid.schema import CROP_CODES

__all__ = [
    "BY",
    "SIDECAR_KEY",
    "TABLE_SUFFIXES",
    "budget_chart",
    "budget_table",
    "check_table_path",
    "is_our_sidecar",
    "period_totals",
    "sidecar_path",
    "write_table",
    "zone_budgets",
]

BY = ("year", "season", "month")
SEASONS = ("DJF", "MAM", "JJA", "SON")
VARIABLES = ("ra", "rh", "reco", "nee", "gpp")
G_PER_TG = 1e12
#: Formats of a budget table, and the key marking its JSON sidecar as written by kgml_grid.
TABLE_SUFFIXES = (".csv", ".parquet")
SIDECAR_KEY = "kgml_grid_budget"
#: flox method: "map-reduce" everywhere. flox 0.11.2's automatic choice ("cohorts") gave
#: wrong zone sums over a space-chunked (y, x) reduction (found by the property test).
METHOD = "map-reduce"


def _check_by(by: str) -> None:
    if by not in BY:
        raise ValueError(f"--by {by!r}: expected one of {', '.join(BY)}")


def period_totals(ds: xr.Dataset, variables: Sequence[str], by: str = "year") -> xr.Dataset:
    """Per-pixel sums of daily fluxes over each period (g C m-2 per period), lazily.

    Returns
    -------
    Dataset
        The variables ``(year[, season | month], y, x)``, NaN where a pixel has no
        value in the period, and ``days`` ``(year[, season | month])``.
    """
    from flox.xarray import xarray_reduce

    _check_by(by)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise ValueError(
            f"no variable {missing} in the dataset; it has {sorted(map(str, ds.data_vars))}"
        )
    # float64 sums: a float32 year of daily values loses ~1e-4 g C m-2 to the order of the
    # additions, which depends on the chunking (and a sensitivity is a difference of two sums)
    sub = ds[list(variables)].drop_vars("year", errors="ignore").astype("float64")
    sub = sub.drop_vars(
        [c for c in sub.coords if c not in sub.dims]
    )  # spatial_ref etc.: not in tables
    time = sub["time"]
    keys = [time.dt.year.rename("year")]
    groups: list[Any] = [np.unique(time.dt.year.values)]
    if by == "season":
        keys.append(time.dt.season.rename("season"))
        groups.append(np.asarray(SEASONS))
    elif by == "month":
        keys.append(time.dt.month.rename("month"))
        groups.append(np.arange(1, 13))
    ones = xr.DataArray(np.ones(time.size), dims="time", coords={"time": time})
    count = xarray_reduce(ones, *keys, func="sum", dim="time", expected_groups=tuple(groups), fill_value=0,
                            method=METHOD)  # fmt: skip
    valid = sub[variables[0]].notnull().astype("float32")
    # periods with no day in the run (a month before the start) are filled: NaN / 0 days
    tot = xarray_reduce(sub, *keys, func="nansum", dim="time", expected_groups=tuple(groups), fill_value=np.nan,
                        method=METHOD)  # fmt: skip
    n_valid = xarray_reduce(valid, *keys, func="sum", dim="time", expected_groups=tuple(groups), fill_value=0,
                            method=METHOD)  # fmt: skip
    tot = tot.where(n_valid > 0)
    tot["days"] = count.astype("int32")
    for v in variables:
        tot[v].attrs = {"units": f"g m-2 per {by}", "long_name": f"{v} summed over each {by}"}
    return tot


def zone_budgets(
    ds: xr.Dataset,
    zones: Zones,
    *,
    by: str = "year",
    variables: Sequence[str] = VARIABLES,
    area: xr.DataArray | None = None,
    share: xr.DataArray | None = None,
    crop_type: xr.DataArray | None = None,
) -> xr.Dataset:
    """Zone totals of the fluxes (g C per period) and zone areas (m2), lazily.

    Parameters
    ----------
    ds : Dataset
        Daily fluxes ``(time, y, x)`` in g C m-2 d-1 (an upscaling store or
        :func:`kgml_grid.predict`).
    zones : Zones
        On the dataset's grid.
    area : DataArray ``(y, x)``, optional
        Cell areas in m2 (:func:`kgml_grid.analysis.area.cell_area`); default 1 m2
        (the sums are then of g C m-2 over pixels).
    share : DataArray ``([year,] y, x)``, optional
        Crop share of each cell (0..1), multiplied into the weights.
    crop_type : DataArray ``(year, y, x)``, optional
        Crop type codes of each year: adds ``crop`` groups corn, soybean, other.

    Returns
    -------
    Dataset
        ``<variable>_g`` and ``area_m2`` with dims ``zone``, ``crop``, ``year``
        (and ``season`` or ``month``); ``days``.
    """
    from flox.xarray import xarray_reduce

    tot = period_totals(ds, variables, by)
    ids = zones.ids
    if ids.shape != (ds.sizes["y"], ds.sizes["x"]):
        raise ValueError(
            f"zones {zones.source}: shape {ids.shape} is not the grid's {(ds.sizes['y'], ds.sizes['x'])}"
        )
    ids = ids.assign_coords(y=ds["y"].values, x=ds["x"].values).rename("zone")
    w = (
        xr.ones_like(ids, dtype="float64")
        if area is None
        else area.assign_coords(y=ds["y"].values, x=ds["x"].values)
    )
    if share is not None:
        w = w * share.assign_coords(y=ds["y"].values, x=ds["x"].values)
    valid = tot[variables[0]].notnull()
    crops: dict[str, xr.DataArray | None] = {"all": None}
    if crop_type is not None:
        ct = crop_type.assign_coords(y=ds["y"].values, x=ds["x"].values).sel(
            year=tot["year"].values
        )
        for code, name in CROP_CODES.items():
            crops[name] = ct == code
    codes = zones.codes
    parts = []
    for name, mask in crops.items():
        sel = valid if mask is None else valid & mask
        weight = w.where(sel)
        data = {f"{v}_g": tot[v] * weight for v in variables}
        data["area_m2"] = weight
        summed = xarray_reduce(xr.Dataset(data), ids, func="nansum", dim=("y", "x"),
                               expected_groups=(codes,), fill_value=0, method=METHOD)  # fmt: skip
        parts.append(summed.expand_dims(crop=[name]))
    out = xr.concat(parts, dim="crop")
    out["days"] = tot["days"]
    out = out.assign_coords(zone_name=("zone", [zones.names[int(z)] for z in codes]))
    out.attrs.update(by=by, zones=zones.source, variables=",".join(variables))
    return out


def budget_table(budgets: xr.Dataset) -> pd.DataFrame:
    """The budgets as a tidy table (computes them): one row per zone, crop and period.

    Columns: ``zone``, ``zone_name``, ``crop``, ``year`` (``season``/``month``),
    ``days``, ``area_km2``; per variable ``<v>_TgC`` (total), ``<v>_gCm2`` (mean flux
    over the zone's valid area, per period) and ``<v>_anom_gCm2`` (against the mean
    over years of the same zone, crop and season/month); ``rh_reco_ratio``. Rows
    whose area is 0 (no pixel of that crop in that zone) are left out.
    """
    import dask

    by = budgets.attrs.get("by", "year")
    variables = [v for v in str(budgets.attrs.get("variables", "")).split(",") if v]
    with dask.config.set(scheduler=dask.config.get("scheduler", "threads")):
        b = budgets.compute()
    dims = ["zone", "crop", "year"] + ([by] if by != "year" else [])
    df = b.drop_vars("days").to_dataframe().reset_index()
    days = b["days"].to_dataframe().reset_index()
    df = df.merge(days, on=[d for d in dims if d in days.columns], how="left")
    df = df[df["area_m2"] > 0].copy()
    df["area_km2"] = df.pop("area_m2") / 1e6
    keys = ["zone", "crop"] + ([by] if by != "year" else [])
    for v in variables:
        g = df.pop(f"{v}_g")
        df[f"{v}_TgC"] = g / G_PER_TG
        df[f"{v}_gCm2"] = g / (df["area_km2"] * 1e6)
        df[f"{v}_anom_gCm2"] = df[f"{v}_gCm2"] - df.groupby(keys)[f"{v}_gCm2"].transform("mean")
    if "rh" in variables and "reco" in variables:
        df["rh_reco_ratio"] = df["rh_TgC"] / df["reco_TgC"]
    front = ["zone", "zone_name", "crop", *dims[2:], "days", "area_km2"]
    cols = front + [c for c in df.columns if c not in front]
    crop_order = {c: i for i, c in enumerate(["all", *CROP_CODES.values()])}
    df = df[cols].sort_values(
        ["zone", "crop", *dims[2:]], key=lambda s: s.map(crop_order) if s.name == "crop" else s
    )
    return df.reset_index(drop=True)


def budget_chart(table: pd.DataFrame, path: Any, *, by: str = "year", variables: Sequence[str] = ("ra", "rh", "nee"),
                 max_zones: int = 12, title: str = "") -> Any:  # fmt: skip
    """A PNG of the zones' mean fluxes (all crops) per period, one panel per variable."""
    from kgml_grid.maps import _LABELS, _plt

    plt = _plt()
    t = table[table["crop"] == "all"]
    zones = t.groupby("zone")["area_km2"].mean().sort_values(ascending=False).index[:max_zones]
    vars_ = [v for v in variables if f"{v}_gCm2" in t.columns]
    fig, axes = plt.subplots(
        1, len(vars_), figsize=(4.6 * len(vars_), 3.8), squeeze=False, constrained_layout=True
    )
    cmap = plt.get_cmap("viridis")
    period = ["year"] + ([by] if by != "year" else [])
    for ax, v in zip(axes[0], vars_, strict=True):
        for k, z in enumerate(zones):
            tz = t[t["zone"] == z]
            label = [str(r) if len(period) == 1 else f"{r[0]}-{r[1]}" for r in
                     (tz[period[0]] if len(period) == 1 else zip(tz["year"], tz[by], strict=True))]  # fmt: skip
            ax.plot(range(len(label)), tz[f"{v}_gCm2"].values, marker="o", ms=3,
                    color=cmap(k / max(len(zones) - 1, 1)), label=str(tz["zone_name"].iloc[0]))  # fmt: skip
            ax.set_xticks(
                range(len(label)), label, rotation=90 if len(label) > 8 else 0, fontsize=7
            )
        if v == "nee":
            ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(f"{_LABELS.get(v, v)}\ng C m-2 per {by}", fontsize=9)
        ax.set_ylabel(f"g C m-2 per {by}")
    axes[0][0].legend(fontsize=7, title="zone", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def crop_layers(
    crop: xr.Dataset, window: Mapping[str, slice] | None = None
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """Crop type ``(year, y, x)`` and, where the cube has ``*_fraction`` layers, the crop
    share (corn + soybean fraction) of each cell."""
    c = crop if window is None else crop.isel(window)
    share = None
    if "corn_fraction" in c and "soybean_fraction" in c:
        share = (c["corn_fraction"] + c["soybean_fraction"]).clip(0, 1)
    return c["crop_type"], share


def sidecar_path(table: Path) -> Path:
    """The JSON sidecar of a budget table (``<table>.json``)."""
    return table.with_name(table.name + ".json")


def is_our_sidecar(meta: Path) -> bool:
    """Whether ``meta`` is a budget sidecar kgml_grid wrote (so its table may be replaced)."""
    try:
        return bool(json.loads(meta.read_text()).get(SIDECAR_KEY))
    except (OSError, ValueError, AttributeError):
        return False


def check_table_path(table: Path, option: str = "--out") -> None:
    """Refuse a table path of an unknown format, or Parquet without pyarrow, naming it."""
    if table.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(
            f"{option} {table}: unknown table format {table.suffix!r}; expected .csv or .parquet"
        )
    if table.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(f"{option} {table}: Parquet needs the 'pyarrow' package (pip install pyarrow); "
                             "or write a .csv table") from None  # fmt: skip


def write_table(frame: pd.DataFrame, table: Path) -> None:
    """Write a budget table as CSV or Parquet (by its suffix)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    if table.suffix.lower() == ".csv":
        frame.to_csv(table, index=False, float_format="%.6g")
    else:
        frame.to_parquet(table, index=False)
