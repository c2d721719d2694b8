"""Model inputs, assembled the same way from grid cubes and from FLUXNET towers.

One function, :func:`assemble`, turns per-pixel daily series (weather already mapped
to the pixels, satellite GPP), static soil properties, the crop type of each year and
the calendar into the ``[n, T, F]`` feature array in :data:`kgml_grid.schema.FEATURES`
order, in physical units (normalisation belongs to the checkpoint's
:class:`~kgml_grid.checkpoint.Normalizer`).

Gaps in daily inputs (cloudy satellite days, missing tower weather) are filled
*causally*: with the last valid value, carried across calls in a small
:data:`FillState`, so that a series assembled in time chunks equals the series
assembled whole (what the upscaling engine's exact time chunking relies on).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import schema
from kgml_grid.grid import coarse_index
from kgml_grid.model import DAILY_TARGETS

FEATURE_INDEX: Mapping[str, int] = {n: i for i, n in enumerate(schema.FEATURES)}
WEATHER_FEATURES: tuple[str, ...] = ("tair", "swrad", "vpd", "precip")
DAILY_FEATURES: tuple[str, ...] = (*WEATHER_FEATURES, "gpp_sat")
SOIL_FEATURES: tuple[str, ...] = schema.SITE_SOIL_PROPERTIES

#: Last valid value of each daily feature per pixel: the gap-filling state.
FillState = dict[str, np.ndarray]


def causal_fill(values: np.ndarray, last: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN along axis 0 with the last valid value (``last`` before the first day).

    Parameters
    ----------
    values : ndarray ``[T, n]``
    last : ndarray ``[n]``, optional
        Last valid value before this chunk; NaN or None means none yet (filled with 0).

    Returns
    -------
    filled : ndarray ``[T, n]``
    last : ndarray ``[n]``
        The last valid value after this chunk, to pass to the next call.
    """
    values = np.asarray(values)
    t, n = values.shape
    prev = np.zeros(n, values.dtype) if last is None else np.where(np.isnan(last), 0, last).astype(values.dtype)
    if t == 0:
        return values.copy(), prev
    valid = ~np.isnan(values)
    idx = np.where(valid, np.arange(t)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    cols = np.broadcast_to(np.arange(n), (t, n))
    filled = np.where(idx >= 0, values[np.maximum(idx, 0), cols], prev[None, :])
    return filled, filled[-1].copy()


def year_end_mask(time: pd.DatetimeIndex) -> np.ndarray:
    """True on 31 December: the days on which a season's yield is predicted."""
    return np.asarray((time.month == 12) & (time.day == 31))


def assemble(
    *,
    time: pd.DatetimeIndex,
    daily: Mapping[str, np.ndarray],
    soil: Mapping[str, np.ndarray],
    crop_by_year: Mapping[int, np.ndarray],
    fill: FillState | None = None,
) -> tuple[np.ndarray, FillState]:
    """The ``[n, T, F]`` float32 feature array of ``n`` pixels over ``time``.

    Parameters
    ----------
    time : DatetimeIndex of length T (daily)
    daily : mapping
        ``tair``, ``swrad``, ``vpd``, ``precip``, ``gpp_sat``, each ``[T, n]`` in schema units.
    soil : mapping
        Each soil feature, ``[n]`` in schema units.
    crop_by_year : mapping
        Year -> crop code ``[n]`` (0 other, 1 corn, 2 soybean) for every year in ``time``.
    fill : FillState, optional
        Gap-filling state from the previous chunk.

    Returns
    -------
    x : ndarray ``[n, T, F]``
    fill : FillState
        For the next chunk.
    """
    t = len(time)
    n = next(iter(soil.values())).shape[0] if soil else 0
    x = np.empty((n, t, len(schema.FEATURES)), dtype="float32")
    new_fill: FillState = {}
    for name in DAILY_FEATURES:
        if name not in daily:
            raise ValueError(f"daily input {name!r} is missing; expected {', '.join(DAILY_FEATURES)}")
        v = np.asarray(daily[name], dtype="float32")
        if v.shape != (t, n):
            raise ValueError(f"daily input {name!r} has shape {v.shape}, expected {(t, n)}")
        filled, new_fill[name] = causal_fill(v, None if fill is None else fill.get(name))
        x[:, :, FEATURE_INDEX[name]] = filled.T
    for name in SOIL_FEATURES:
        if name not in soil:
            raise ValueError(f"soil property {name!r} is missing; expected {', '.join(SOIL_FEATURES)}")
        x[:, :, FEATURE_INDEX[name]] = np.asarray(soil[name], dtype="float32")[:, None]
    years = np.asarray(time.year)
    crop = np.empty((t, n), dtype="int8")
    for y in np.unique(years):
        if int(y) not in crop_by_year:
            raise ValueError(f"no crop type for year {int(y)}; have {sorted(crop_by_year)}")
        crop[years == y] = np.asarray(crop_by_year[int(y)])[None, :]
    x[:, :, FEATURE_INDEX["is_corn"]] = (crop == 1).T
    x[:, :, FEATURE_INDEX["is_soybean"]] = (crop == 2).T
    s, c = schema.doy_features(np.asarray(time.day_of_year))
    x[:, :, FEATURE_INDEX["doy_sin"]] = s[None, :]
    x[:, :, FEATURE_INDEX["doy_cos"]] = c[None, :]
    return x, new_fill


# --------------------------------------------------------------------------------------
# from cubes
# --------------------------------------------------------------------------------------


def pixel_inputs(
    layers: Mapping[str, xr.Dataset],
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    time: slice | None = None,
    weather_index: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray], dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Read the raw inputs of pixels ``(rows, cols)`` from opened cubes.

    Weather is read on its own grid and mapped to each pixel's cell; nothing the
    size of a fine weather cube is materialised.

    Returns
    -------
    time, daily (``[T, n]`` each), soil (``[n]`` each), crop_by_year (``[n]`` each)
    """
    from kgml_grid.cubes import grid_of

    sat = layers["satellite"]
    if time is not None:
        sat = sat.sel(time=time)
    # the period both daily inputs cover (a longer satellite or weather record is cut)
    tindex = pd.DatetimeIndex(sat["time"].values).intersection(pd.DatetimeIndex(layers["weather"]["time"].values))
    if len(tindex) == 0:
        raise ValueError("the satellite and weather cubes share no day")
    sat = sat.sel(time=tindex)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if weather_index is None:
        weather_index = coarse_index(grid_of(sat, layer="satellite"), grid_of(layers["weather"], layer="weather"))
    years = [int(y) for y in layers["crop"]["year"].values]
    if rows.size == 0:
        return (
            tindex,
            {k: np.empty((len(tindex), 0), "float32") for k in DAILY_FEATURES},
            {k: np.empty(0, "float32") for k in SOIL_FEATURES},
            {y: np.empty(0, "int8") for y in years},
        )
    # read the bounding boxes once, then gather the pixels in memory
    wr, wc = weather_index[0][rows, cols], weather_index[1][rows, cols]
    wy, wx = slice(int(wr.min()), int(wr.max()) + 1), slice(int(wc.min()), int(wc.max()) + 1)
    wblock = layers["weather"][list(WEATHER_FEATURES)].sel(time=tindex).isel(y=wy, x=wx).load()
    daily = {k: wblock[k].values[:, wr - wy.start, wc - wx.start] for k in WEATHER_FEATURES}
    fy, fx = slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)
    r, c = rows - fy.start, cols - fx.start
    daily["gpp_sat"] = sat["gpp_sat"].isel(y=fy, x=fx).values[:, r, c]
    soil_block = layers["soil"][list(SOIL_FEATURES)].isel(y=fy, x=fx).load()
    soil = {k: soil_block[k].values[r, c] for k in SOIL_FEATURES}
    crop = layers["crop"]["crop_type"].isel(y=fy, x=fx).values
    crop_by_year = {y: crop[i, r, c] for i, y in enumerate(years)}
    return tindex, daily, soil, crop_by_year


def pixel_targets(
    truth: xr.Dataset, rows: np.ndarray, cols: np.ndarray, *, time: slice | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Daily targets ``[n, T, 4]`` (:data:`~kgml_grid.model.DAILY_TARGETS` order) and
    yearly yield ``[n, Y]`` of pixels from the truth cube."""
    if time is not None:
        truth = truth.sel(time=time)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    x0, x1 = int(cols.min()), int(cols.max()) + 1
    block = truth[[*DAILY_TARGETS, "yield"]].isel(y=slice(y0, y1), x=slice(x0, x1)).load()
    y = np.stack([block[v].values[:, rows - y0, cols - x0].T for v in DAILY_TARGETS], axis=-1)
    return y.astype("float32"), block["yield"].values[:, rows - y0, cols - x0].T.astype("float32")


# --------------------------------------------------------------------------------------
# from towers
# --------------------------------------------------------------------------------------


def tower_inputs(ds: xr.Dataset) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray], dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Raw inputs of one tower from :func:`kgml_grid.fluxnet.read_fluxnet_dd` output.

    The tower's partitioned GPP stands in for satellite GPP; soil properties and
    crop types come from its site metadata (the reader attaches them).

    Raises
    ------
    ValueError
        If the site metadata is missing (soil properties or crop types).
    """
    site = ds.attrs.get("site_id", "?")
    missing = [k for k in SOIL_FEATURES if k not in ds]
    if missing or "crop_type" not in ds:
        raise ValueError(
            f"tower {site} ({ds.attrs.get('source_file', '?')}): site metadata is missing "
            f"({', '.join(missing) or 'crop_type'}); pass --site-meta FILE"
        )
    time = pd.DatetimeIndex(ds["time"].values)
    daily = {k: ds[k].values.astype("float32")[:, None] for k in DAILY_FEATURES}
    soil = {k: np.atleast_1d(ds[k].values.astype("float32")) for k in SOIL_FEATURES}
    crop_by_year = {int(y): np.atleast_1d(c) for y, c in zip(ds["year"].values, ds["crop_type"].values, strict=True)}
    return time, daily, soil, crop_by_year
