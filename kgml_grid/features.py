"""Model inputs, assembled the same way from grid cubes and from FLUXNET towers.

One function, :func:`assemble`, turns per-pixel daily series (weather already mapped
to the pixels, satellite GPP, and LAI / soil moisture for models trained with those
additions), static soil properties, the crop type of each year and the calendar into
the ``[n, T, F]`` feature array in the order of a feature set
(:func:`kgml_grid.schema.feature_set`; default :data:`kgml_grid.schema.FEATURES`), in
physical units (normalisation belongs to the checkpoint's
:class:`~kgml_grid.checkpoint.Normalizer`).

Gaps in daily inputs (cloudy satellite days, missing tower weather) are filled
*causally*: with the last valid value, carried across calls in a small
:data:`FillState`, so that a series assembled in time chunks equals the series
assembled whole (what the upscaling engine's exact time chunking relies on). For the
optional additions the availability flag (``lai_available``...) says whether a value
has been seen yet; a source that has none passes an all-NaN series and gets the flag 0
(and the value 0) on every day.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import schema
from kgml_grid.grid import coarse_index
from kgml_grid.model import DAILY_TARGETS

#: Positions of the default features; the same in every feature set (additions are appended).
FEATURE_INDEX: Mapping[str, int] = {n: i for i, n in enumerate(schema.FEATURES)}
WEATHER_FEATURES: tuple[str, ...] = ("tair", "swrad", "vpd", "precip")
DAILY_FEATURES: tuple[str, ...] = (*WEATHER_FEATURES, "gpp_sat")
SOIL_FEATURES: tuple[str, ...] = schema.SITE_SOIL_PROPERTIES
#: Daily inputs of the optional additions, read from the satellite cube on the grid.
OPTIONAL_DAILY: tuple[str, ...] = tuple(schema.FEATURE_ADDITIONS)


def daily_inputs(features: Sequence[str] = schema.FEATURES) -> tuple[str, ...]:
    """The daily input series a feature set needs (weather, ``gpp_sat``, its additions)."""
    return (*DAILY_FEATURES, *schema.feature_additions(features))


def satellite_inputs(features: Sequence[str] = schema.FEATURES) -> tuple[str, ...]:
    """The satellite-cube variables a feature set reads (``gpp_sat`` and its additions)."""
    return ("gpp_sat", *schema.feature_additions(features))


def feature_index(features: Sequence[str]) -> dict[str, int]:
    """Name -> position in ``features``."""
    return {n: i for i, n in enumerate(features)}


#: Last valid value of each daily feature per pixel: the gap-filling state.
FillState = dict[str, np.ndarray]


def causal_fill(
    values: np.ndarray, last: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN along axis 0 with the last valid value (``last`` before the first day).

    Parameters
    ----------
    values : ndarray ``[T, n]``
    last : ndarray ``[n]``, optional
        Last valid value before this chunk; NaN or None means none yet (filled with 0).

    Returns
    -------
    filled : ndarray ``[T, n]``
        No NaN: days before the first valid value are 0.
    last : ndarray ``[n]``
        The last valid value after this chunk, to pass to the next call; NaN where no
        value has been seen yet (so that :func:`seen_mask` can tell).
    """
    values = np.asarray(values)
    t, n = values.shape
    prev = (
        np.full(n, np.nan, values.dtype) if last is None else np.asarray(last, dtype=values.dtype)
    )
    if t == 0:
        return values.copy(), prev.copy()
    valid = ~np.isnan(values)
    if valid.all():  # the usual case (gap-filled products): nothing to carry
        return values.copy(), values[-1].copy()
    idx = np.where(valid, np.arange(t)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    cols = np.broadcast_to(np.arange(n), (t, n))
    carried = np.where(idx >= 0, values[np.maximum(idx, 0), cols], prev[None, :])
    return np.where(np.isnan(carried), 0, carried).astype(values.dtype), carried[-1].copy()


def seen_mask(values: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """``[T, n]`` 1.0 from the first valid value on (or from the start when ``last`` holds
    one), 0.0 before: the availability flag of an optional daily input."""
    values = np.asarray(values)
    seen = ~np.isnan(values)
    np.logical_or.accumulate(seen, axis=0, out=seen)
    if last is not None:
        seen |= ~np.isnan(np.asarray(last))[None, :]
    return seen.astype("float32")


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
    features: Sequence[str] = schema.FEATURES,
) -> tuple[np.ndarray, FillState]:
    """The ``[n, T, F]`` float32 feature array of ``n`` pixels over ``time``.

    Parameters
    ----------
    time : DatetimeIndex of length T (daily)
    daily : mapping
        ``tair``, ``swrad``, ``vpd``, ``precip``, ``gpp_sat``, each ``[T, n]`` in schema
        units, plus ``lai`` / ``soil_moisture`` when ``features`` has those additions
        (all NaN where the source has none: the availability flag is then 0).
    soil : mapping
        Each soil feature, ``[n]`` in schema units.
    crop_by_year : mapping
        Year -> crop code ``[n]`` (0 other, 1 corn, 2 soybean) for every year in ``time``.
    fill : FillState, optional
        Gap-filling state from the previous chunk.
    features : sequence of str
        The feature set (a checkpoint's ``features``); checked against the schema.

    Returns
    -------
    x : ndarray ``[n, T, F]``
    fill : FillState
        For the next chunk.
    """
    features = tuple(features)
    if features != schema.FEATURES:
        schema.check_features(features, schema.feature_units(features), source="feature set")
    index = feature_index(features)
    needed = daily_inputs(features)
    t = len(time)
    n = next(iter(soil.values())).shape[0] if soil else 0
    x = np.empty((n, t, len(features)), dtype="float32")
    new_fill: FillState = {}
    for name in needed:
        if name not in daily:
            raise ValueError(f"daily input {name!r} is missing; expected {', '.join(needed)}")
        v = np.asarray(daily[name], dtype="float32")
        if v.shape != (t, n):
            raise ValueError(f"daily input {name!r} has shape {v.shape}, expected {(t, n)}")
        before = None if fill is None else fill.get(name)
        filled, new_fill[name] = causal_fill(v, before)
        x[:, :, index[name]] = filled.T
        if name in schema.FEATURE_ADDITIONS:
            x[:, :, index[f"{name}_available"]] = seen_mask(v, before).T
    for name in SOIL_FEATURES:
        if name not in soil:
            raise ValueError(
                f"soil property {name!r} is missing; expected {', '.join(SOIL_FEATURES)}"
            )
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
    features: Sequence[str] = schema.FEATURES,
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray], dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Read the raw inputs of pixels ``(rows, cols)`` from opened cubes.

    Weather is read on its own grid and mapped to each pixel's cell; nothing the
    size of a fine weather cube is materialised. ``features`` with additions also reads
    ``lai`` / ``soil_moisture`` from the satellite cube.

    Returns
    -------
    time, daily (``[T, n]`` each), soil (``[n]`` each), crop_by_year (``[n]`` each)

    Raises
    ------
    ValueError
        When the satellite cube lacks a variable the feature set needs.
    """
    from kgml_grid.cubes import grid_of

    sat = layers["satellite"]
    sat_vars = satellite_inputs(features)
    lacking = [v for v in sat_vars if v not in sat.data_vars]
    if lacking:
        raise ValueError(
            f"feature set {schema.feature_set_name(features)!r} needs {lacking} from the "
            f"satellite cube, which has {sorted(str(v) for v in sat.data_vars)}"
        )
    if time is not None:
        sat = sat.sel(time=time)
    # the period both daily inputs cover (a longer satellite or weather record is cut)
    tindex = pd.DatetimeIndex(sat["time"].values).intersection(
        pd.DatetimeIndex(layers["weather"]["time"].values)
    )
    if len(tindex) == 0:
        raise ValueError("the satellite and weather cubes share no day")
    sat = sat.sel(time=tindex)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if weather_index is None:
        weather_index = coarse_index(
            grid_of(sat, layer="satellite"), grid_of(layers["weather"], layer="weather")
        )
    years = [int(y) for y in layers["crop"]["year"].values]
    if rows.size == 0:
        return (
            tindex,
            {k: np.empty((len(tindex), 0), "float32") for k in daily_inputs(features)},
            {k: np.empty(0, "float32") for k in SOIL_FEATURES},
            {y: np.empty(0, "int8") for y in years},
        )
    # read the bounding boxes once, then gather the pixels in memory
    wr, wc = weather_index[0][rows, cols], weather_index[1][rows, cols]
    wy, wx = slice(int(wr.min()), int(wr.max()) + 1), slice(int(wc.min()), int(wc.max()) + 1)
    wblock = layers["weather"][list(WEATHER_FEATURES)].sel(time=tindex).isel(y=wy, x=wx).load()
    daily = {k: wblock[k].values[:, wr - wy.start, wc - wx.start] for k in WEATHER_FEATURES}
    fy, fx = (
        slice(int(rows.min()), int(rows.max()) + 1),
        slice(int(cols.min()), int(cols.max()) + 1),
    )
    r, c = rows - fy.start, cols - fx.start
    for k in sat_vars:
        daily[k] = sat[k].isel(y=fy, x=fx).values[:, r, c]
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


def tower_inputs(
    ds: xr.Dataset, features: Sequence[str] = schema.FEATURES
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray], dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Raw inputs of one tower from :func:`kgml_grid.fluxnet.read_fluxnet_dd` output.

    The tower's partitioned GPP stands in for satellite GPP; soil properties and
    crop types come from its site metadata (the reader attaches them). For the
    additions, :func:`tower_addition_sources` says where each series comes from; one
    the tower lacks is all NaN (availability flag 0).

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
    for name, (var, _) in tower_addition_sources(ds, features).items():
        daily[name] = (
            ds[var].values.astype("float32") if var else np.full(len(time), np.nan, "float32")
        )[:, None]
    soil = {k: np.atleast_1d(ds[k].values.astype("float32")) for k in SOIL_FEATURES}
    crop_by_year = {
        int(y): np.atleast_1d(c)
        for y, c in zip(ds["year"].values, ds["crop_type"].values, strict=True)
    }
    return time, daily, soil, crop_by_year


#: Variable a satellite sample at a tower's pixel is stored under (:func:`kgml_grid.towers.attach_satellite`).
SATELLITE_AT_TOWER = {name: f"{name}_satellite" for name in OPTIONAL_DAILY}


def tower_addition_sources(
    ds: xr.Dataset, features: Sequence[str]
) -> dict[str, tuple[str | None, str]]:
    """Where a tower's series of each addition of ``features`` comes from.

    Soil moisture: the tower's own ``SWC_F_MDS_1`` (variable ``soil_moisture``) when it
    has any value, else the satellite cube at the tower's pixel when one was attached,
    else none. LAI: the satellite cube at the tower's pixel, else none.

    Returns
    -------
    dict
        Addition -> (variable of ``ds`` to read, or None when the tower has none;
        a description of the source).
    """
    out: dict[str, tuple[str | None, str]] = {}
    for name in schema.feature_additions(features):
        own = (
            name
            if name == "soil_moisture" and name in ds and bool(np.isfinite(ds[name].values).any())
            else None
        )
        sat = SATELLITE_AT_TOWER[name]
        if own is not None:
            out[name] = (own, f"tower column {ds[name].attrs.get('fluxnet_column', name)}")
        elif sat in ds and bool(np.isfinite(ds[sat].values).any()):
            out[name] = (
                sat,
                str(ds[sat].attrs.get("source", "satellite cube at the tower's pixel")),
            )
        else:
            why = "the tower has no SWC_F_MDS_1 value; " if name == "soil_moisture" else ""
            note = ds.attrs.get("satellite_note", "no satellite cube was given")
            out[name] = (None, f"none ({why}{note}): availability flag 0")
    return out
