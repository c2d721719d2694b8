"""Weather NetCDF (gridMET, NLDAS-2, Daymet; daily or sub-daily) to the daily weather cube.

Weather stays on its **native grid** (a lat/lon grid, or a projected grid with a CF
``grid_mapping``); when a target grid is given only the part covering it (plus one cell)
is kept, and :func:`kgml_grid.grid.coarse_index` checks that it does cover it. Variables
are found through a **mapping table**, source name -> quantity (a preset or your own);
units are read from each variable's ``units`` attribute (or given in the mapping) and
converted to the schema's:

===========  ================================  ======================================
schema       from (quantity: accepted units)   conversion
===========  ================================  ======================================
tair degC    tair: K or degC                   K - 273.15
             or tmax and tmin                  (tmax + tmin) / 2
swrad        swrad: W m-2 (daily mean)         x 0.0864
MJ m-2 d-1   swrad: MJ m-2 d-1, J m-2 (daily)  x 1, x 1e-6
             or swrad_daylight (W m-2) + dayl  srad x dayl / 1e6 (Daymet)
vpd hPa      vpd: kPa, Pa, hPa                 x 10, / 100, x 1
             or es - e from vp (Pa, hPa, kPa), es(T) = 6.108 exp(17.27 T / (T + 237.3));
             or qair (kg kg-1) + psurf (Pa)    with tmax and tmin: (es(tmax) + es(tmin)) / 2;
                                               e = q p / (0.622 + 0.378 q); clipped at 0
precip       precip: mm, kg m-2 (daily total)  x 1
mm d-1       precip: kg m-2 s-1, mm s-1        x 86400 (mm h-1: x 24)
===========  ================================  ======================================

Presets (:data:`PRESETS`): ``gridmet`` (tmmx, tmmn, srad, vpd, pr: files named
``tmmx_2015.nc`` or ``tmmx_20190121.nc`` etc., whose single variable is found by the
file-name prefix), ``nldas`` (NLDAS-2 FORA: Tair, SWdown, Rainf, Qair, PSurf; the GRIB
names TMP, DSWRF, APCP, SPFH, PRES of the GES DISC NetCDF files too) and ``daymet`` (tmax,
tmin, srad, dayl, prcp, vp).

As the archives ship them: variables with singleton extra dimensions (NLDAS's ``height``
of 2 m temperature and humidity, ``lev``) are read at their one level; a file without a
time dimension but with a scalar date coordinate is one day; **sub-daily files** (hourly
NLDAS-2 FORA) are aggregated to days here (:mod:`kgml_grid.ingest.timesteps`: daily means
of temperature, shortwave, humidity and pressure, ``tmax``/``tmin`` from the hours,
precipitation summed), one day of one tile at a time; a day without all its steps is NaN
and counted, or refused on request. Monthly files (TerraClimate) are refused, naming the
step; GRIB files are refused with the conversion to run. Missing days become NaN days of a
complete daily axis.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import cubes, schema
from kgml_grid.grid import GridSpec, _same_crs, coarse_index
from kgml_grid.ingest import store as _store
from kgml_grid.ingest.errors import IngestError, file_error
from kgml_grid.ingest.rasters import release_memory
from kgml_grid.ingest.register import register_entry
from kgml_grid.ingest.result import IngestResult
from kgml_grid.ingest.target import crs_label, resolve_chunks
from kgml_grid.ingest.tiles import Tile, bounds_in, daily_axis, index_blocks, plan_tiles
from kgml_grid.ingest.timesteps import Steps, aggregate, check_file_step, classify, how_to_aggregate

LAYER = "weather"
OUTPUTS = ("tair", "swrad", "vpd", "precip")

#: Source quantities the mapping table can name, and the unit kind of each.
QUANTITIES: Mapping[str, str] = {
    "tair": "temperature", "tmax": "temperature", "tmin": "temperature",
    "swrad": "radiation", "swrad_daylight": "flux", "dayl": "duration",
    "vpd": "pressure", "vp": "pressure", "psurf": "pressure",
    "qair": "ratio", "precip": "precipitation",
}  # fmt: skip

#: Unit spellings (whitespace-normalised) -> (scale, offset) to the canonical unit of a kind:
#: temperature degC, radiation MJ m-2 d-1, flux W m-2, duration s, pressure hPa,
#: ratio kg kg-1, precipitation mm d-1.
UNITS: Mapping[str, Mapping[str, tuple[float, float]]] = {
    "temperature": {
        **dict.fromkeys(("K", "k", "kelvin", "Kelvin", "degK", "deg K", "degrees K", "degree_Kelvin",
                         "degrees_K"), (1.0, -273.15)),
        **dict.fromkeys(("degC", "deg C", "C", "°C", "celsius", "Celsius", "degree_Celsius",
                         "degrees C", "degrees_C", "degrees Celsius", "degree C"), (1.0, 0.0)),
    },
    "radiation": {
        **dict.fromkeys(("W m-2", "W/m2", "W m^-2", "W/m^2", "W m**-2", "w m-2", "watt m-2"),
                        (schema.W_M2_TO_MJ_M2_D, 0.0)),
        **dict.fromkeys(("MJ m-2 d-1", "MJ m-2 day-1", "MJ/m2/d", "MJ/m2/day", "MJ m-2"), (1.0, 0.0)),
        **dict.fromkeys(("J m-2", "J/m2", "J m^-2"), (1e-6, 0.0)),
    },
    "flux": dict.fromkeys(("W m-2", "W/m2", "W m^-2", "W/m^2", "W m**-2", "w m-2"), (1.0, 0.0)),
    "duration": dict.fromkeys(("s", "sec", "second", "seconds", "s/day"), (1.0, 0.0)),
    "pressure": {
        **dict.fromkeys(("Pa", "pascal", "Pascal"), (0.01, 0.0)),
        **dict.fromkeys(("hPa", "mbar", "mb", "millibar"), (1.0, 0.0)),
        **dict.fromkeys(("kPa", "kilopascal"), (10.0, 0.0)),
    },
    "ratio": {
        **dict.fromkeys(("kg kg-1", "kg/kg", "kg kg^-1", "1", "", "kg kg**-1"), (1.0, 0.0)),
        **dict.fromkeys(("g kg-1", "g/kg"), (0.001, 0.0)),
    },
    "precipitation": {
        **dict.fromkeys(("mm", "mm d-1", "mm/d", "mm/day", "mm day-1", "kg m-2", "kg/m2", "kg m^-2",
                         "kg/m^2", "kg m-2 d-1", "kg m-2 day-1", "mm/d-1"), (1.0, 0.0)),
        **dict.fromkeys(("kg m-2 s-1", "kg/m2/s", "kg m^-2 s^-1", "kg m**-2 s**-1", "mm s-1", "mm/s"),
                        (86400.0, 0.0)),
        **dict.fromkeys(("mm h-1", "mm/h", "mm/hr", "kg m-2 h-1"), (24.0, 0.0)),
        "m": (1000.0, 0.0),
    },
}  # fmt: skip

#: Mapping tables of the common products: source variable (or file-name prefix) -> quantity.
PRESETS: Mapping[str, Mapping[str, str]] = {
    "gridmet": {
        "tmmx": "tmax", "tmmn": "tmin", "srad": "swrad", "vpd": "vpd", "pr": "precip",
        "daily_maximum_temperature": "tmax", "daily_minimum_temperature": "tmin",
        "surface_downwelling_shortwave_flux_in_air": "swrad",
        "daily_mean_shortwave_radiation_at_surface": "swrad",
        "mean_vapor_pressure_deficit": "vpd", "daily_mean_vapor_pressure_deficit": "vpd",
        "precipitation_amount": "precip",
    },
    "nldas": {
        "Tair": "tair", "SWdown": "swrad", "Rainf": "precip", "Qair": "qair", "PSurf": "psurf",
        "TMP": "tair", "DSWRF": "swrad", "APCP": "precip", "SPFH": "qair", "PRES": "psurf",
    },
    "daymet": {
        "tmax": "tmax", "tmin": "tmin", "srad": "swrad_daylight", "dayl": "dayl",
        "prcp": "precip", "vp": "vp",
    },
}  # fmt: skip

_Y_DIMS = ("lat", "latitude", "y", "rlat")
_X_DIMS = ("lon", "longitude", "x", "rlon")
_T_DIMS = ("time", "day", "date", "t")


def normalize_units(units: str | None) -> str:
    """Units with runs of whitespace collapsed."""
    return " ".join(str(units if units is not None else "").split())


def unit_factor(units: str | None, quantity: str) -> tuple[float, float] | None:
    """``(scale, offset)`` taking ``units`` of ``quantity`` to its canonical unit, or None."""
    return UNITS[QUANTITIES[quantity]].get(normalize_units(units))


def saturation_vp(t_degc: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure (hPa) over water at ``t_degc`` (Tetens, as in FAO-56)."""
    return 6.108 * np.exp(17.27 * t_degc / (t_degc + 237.3))


def convert(q: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The schema's weather variables from source quantities in canonical units (pure).

    Parameters
    ----------
    q : mapping
        Quantity -> array, already in canonical units (degC, MJ m-2 d-1, W m-2, s, hPa,
        kg kg-1, mm d-1); see :func:`needed_quantities` for which are used.

    Returns
    -------
    dict
        ``tair`` (degC), ``swrad`` (MJ m-2 d-1), ``vpd`` (hPa), ``precip`` (mm d-1), float32.
    """
    out: dict[str, np.ndarray] = {}
    tair = q["tair"] if "tair" in q else (q["tmax"] + q["tmin"]) / 2.0
    out["tair"] = tair
    if "swrad" in q:
        out["swrad"] = q["swrad"]
    else:
        out["swrad"] = q["swrad_daylight"] * q["dayl"] / 1e6
    if "vpd" in q:
        out["vpd"] = q["vpd"]
    else:
        es = (saturation_vp(q["tmax"]) + saturation_vp(q["tmin"])) / 2.0 if "tmax" in q and "tmin" in q \
            else saturation_vp(tair)  # fmt: skip
        if "vp" in q:
            e = q["vp"]
        else:
            qa, p = q["qair"], q["psurf"]
            e = qa * p / (0.622 + 0.378 * qa)
        out["vpd"] = np.maximum(es - e, 0.0)
    out["precip"] = q["precip"]
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def needed_quantities(available: Iterable[str]) -> tuple[str, ...]:
    """The quantities :func:`convert` will use, given those available (pure).

    Raises
    ------
    IngestError
        Saying which schema variable cannot be made and what would make it.
    """
    a = set(available)
    use: list[str] = []
    if "tair" in a:
        use.append("tair")
    elif {"tmax", "tmin"} <= a:
        use += ["tmax", "tmin"]
    else:
        raise IngestError(
            f"weather: no air temperature: need tair, or tmax and tmin (found {sorted(a)})"
        )
    if "swrad" in a:
        use.append("swrad")
    elif {"swrad_daylight", "dayl"} <= a:
        use += ["swrad_daylight", "dayl"]
    else:
        raise IngestError(f"weather: no shortwave radiation: need swrad, or swrad_daylight and dayl "
                          f"(found {sorted(a)})")  # fmt: skip
    if "vpd" in a:
        use.append("vpd")
    elif "vp" in a:
        use.append("vp")
        if {"tmax", "tmin"} <= a and "tmax" not in use:
            use += ["tmax", "tmin"]
    elif {"qair", "psurf"} <= a:
        use += ["qair", "psurf"]
        if {"tmax", "tmin"} <= a and "tmax" not in use:  # es from tmax/tmin (FAO-56) when known
            use += ["tmax", "tmin"]
    else:
        raise IngestError(f"weather: no vapour pressure deficit: need vpd, or vp, or qair and psurf "
                          f"(found {sorted(a)})")  # fmt: skip
    if "precip" not in a:
        raise IngestError(f"weather: no precipitation: need precip (found {sorted(a)})")
    use.append("precip")
    return tuple(dict.fromkeys(use))


def parse_mapping(
    mapping: Mapping[str, str] | None = None, *, preset: str | None = None
) -> dict[str, tuple[str, str | None]]:
    """Source name -> (quantity, units override) from a preset and/or ``name: "quantity[:units]"``.

    Raises
    ------
    IngestError
        For an unknown preset or quantity, or an unknown units spelling.
    """
    table: dict[str, tuple[str, str | None]] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise IngestError(f"weather: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        table.update({k: (v, None) for k, v in PRESETS[preset].items()})
    for name, spec in (mapping or {}).items():
        quantity, _, units = str(spec).partition(":")
        quantity = quantity.strip()
        if quantity not in QUANTITIES:
            raise IngestError(
                f"weather mapping {name}={spec!r}: unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}"
            )
        u = units.strip() or None
        if u is not None and unit_factor(u, quantity) is None:
            raise IngestError(f"weather mapping {name}={spec!r}: units {u!r} are not known for {quantity}; "
                              f"known: {sorted(UNITS[QUANTITIES[quantity]])}")  # fmt: skip
        table[name] = (quantity, u)
    if not table:
        raise IngestError(
            "weather: no mapping table; give preset= (gridmet, nldas, daymet) or mapping="
        )
    return table


@dataclass(frozen=True)
class WeatherVar:
    """One mapped variable of one file.

    ``times`` are the file's time stamps as given (not truncated to days); ``squeeze``
    names singleton dimensions (``height``, ``lev``) read at their only index; ``units``
    are whitespace-normalised (they decide whether sub-daily steps are summed).
    """

    path: str
    name: str
    quantity: str
    scale: float
    offset: float
    times: pd.DatetimeIndex
    units: str = ""
    squeeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeatherFile:
    """What one NetCDF file provides, on which native grid.

    ``dims`` are the time, y and x dimension names; time is ``None`` for a single-day
    file whose date is a scalar coordinate (gridMET/NCSS ``tmmx_20190121.nc``).
    """

    path: str
    grid: GridSpec
    dims: tuple[str | None, str, str]
    flip_y: bool
    variables: tuple[WeatherVar, ...]


#: File suffixes of GRIB, refused with the conversion to run (:func:`_refuse_grib`).
GRIB_SUFFIXES = (".grb", ".grb2", ".grib", ".grib2", ".grb1")


def _regular(values: np.ndarray, path: str, what: str) -> tuple[float, float]:
    v = np.asarray(values, dtype="float64")
    if v.size < 2:
        raise file_error(
            path, f"{what} has {v.size} value(s); a grid needs at least 2 cells per axis"
        )
    step = (v[-1] - v[0]) / (v.size - 1)
    if step == 0 or np.abs(v - (v[0] + step * np.arange(v.size))).max() > 0.01 * abs(step):
        raise file_error(path, f"{what} coordinate is not regularly spaced")
    return float(v[0]), float(step)


def _hashable(v: object) -> object:
    return (
        tuple(np.asarray(v).ravel().tolist())
        if np.ndim(v)
        else (v.item() if hasattr(v, "item") else v)
    )


@functools.lru_cache(maxsize=32)
def _cf_crs(attrs: tuple[tuple[str, object], ...]) -> str:
    """CRS of a CF grid mapping. gridMET/NLDAS write an unnamed lat/lon CRS on the WGS84 (or
    GRS80) ellipsoid: at weather-grid resolution that is EPSG:4326."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    a = dict(attrs)
    if (
        a.get("grid_mapping_name") == "latitude_longitude"
        and math.isclose(float(a.get("semi_major_axis", 6378137.0)), 6378137.0)
        and math.isclose(float(a.get("inverse_flattening", 298.257223563)), 298.257, rel_tol=1e-5)
    ):
        return "EPSG:4326"
    try:
        return CRS.from_cf(a).to_wkt()
    except CRSError as e:
        raise ValueError(str(e)) from None


def _crs_of(ds: xr.Dataset, names: Sequence[str], ydim: str, path: str, crs: str | None) -> str:
    for n in names:
        gm = ds[n].attrs.get("grid_mapping") or ds[n].encoding.get("grid_mapping")
        if gm and gm in ds.variables:
            try:
                return _cf_crs(tuple(sorted((k, _hashable(v)) for k, v in ds[gm].attrs.items())))
            except ValueError as e:
                raise file_error(path, f"grid mapping {gm!r} does not give a CRS: {e}") from None
    if crs is not None:
        return crs
    if ydim in ("lat", "latitude"):
        return "EPSG:4326"
    raise file_error(path, "has no CRS: no CF grid_mapping and no lat/lon dimensions; pass crs=")


def _is_grib(path: str) -> bool:
    if path.lower().endswith(GRIB_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GRIB"
    except OSError:
        return False


def _refuse_grib(path: str) -> IngestError:
    stem = PurePath(path).with_suffix(".nc4").name
    return file_error(
        path, "is GRIB, which ingest weather does not read: cfgrib with the ecCodes wheels installs, but "
        "decodes NLDAS-2's GRIB1 parameter table 130 as variables named 'unknown'. Use the NetCDF "
        "version (the GES DISC subsetter's netCDF4 output, as NLDAS_FORA0125_H.A20000101.0000.002.grb.SUB.nc4) "
        f"or convert it first: cdo -f nc4 copy {path} {stem}, then map CDO's var<code> names: "
        "--map var11=tair:K --map var51=qair:kg/kg --map var1=psurf:Pa --map var204=swrad:W/m2 "
        "--map var61=precip:kg/m2"
    )  # fmt: skip


def _time_coord(ds: xr.Dataset, path: str) -> tuple[str | None, pd.DatetimeIndex | None]:
    """The time dimension (or ``None`` with a scalar date) and its stamps, as in the file."""
    for name, c in ds.coords.items():
        if c.ndim > 1 or not (name in _T_DIMS or c.attrs.get("standard_name") == "time"):
            continue
        if c.ndim == 1 and name not in ds.dims:
            continue
        vals = c.values if c.ndim else np.asarray([c.values])
        idx = pd.Index(vals)
        if not isinstance(idx, pd.DatetimeIndex) and idx.dtype == object and idx.size:
            try:  # cftime calendars (Daymet's 365-day years)
                idx = xr.CFTimeIndex(vals).to_datetimeindex(unsafe=True)
            except (TypeError, ValueError) as e:
                raise file_error(
                    path, f"time coordinate {name!r} cannot be read as dates: {e}"
                ) from None
        if not isinstance(idx, pd.DatetimeIndex):
            raise file_error(
                path, f"time coordinate {name!r} is not made of dates (units attribute?)"
            )
        if idx.hasnans:
            raise file_error(path, f"time coordinate {name!r} has missing values")
        return (str(name) if c.ndim else None), idx
    return None, None


def _split_dims(da: xr.DataArray) -> tuple[str | None, str | None, str | None, dict[str, int]]:
    tdim = next((str(d) for d in da.dims if d in _T_DIMS), None)
    ydim = next((str(d) for d in da.dims if d in _Y_DIMS), None)
    xdim = next((str(d) for d in da.dims if d in _X_DIMS), None)
    extra = {str(d): int(n) for d, n in da.sizes.items() if d not in (tdim, ydim, xdim)}
    return tdim, ydim, xdim, extra


def inspect_weather(
    path: str | os.PathLike[str],
    table: Mapping[str, tuple[str, str | None]],
    *,
    crs: str | None = None,
) -> WeatherFile:
    """Open one NetCDF file (metadata only) and find its mapped variables, units and grid.

    A mapped variable may carry singleton extra dimensions (NLDAS's ``height`` of 2 m
    temperature, ``lev``); a file without a time dimension is one day when it has a
    scalar date coordinate (gridMET/NCSS single-day files).

    Raises
    ------
    IngestError
        Naming the file: missing, GRIB (with the conversion to run), unreadable, a time
        step longer than a day (monthly TerraClimate), no mapped variable, a mapped
        variable with a non-singleton extra dimension or without lat/lon, no date,
        missing or unknown units, an irregular or non-square grid, no CRS.
    """
    p = os.fspath(path)
    if not Path(p).exists():
        raise file_error(p, "no such file")
    if _is_grib(p):
        raise _refuse_grib(p)
    try:
        ds = xr.open_dataset(p, decode_times=True, cache=False)
    except Exception as e:  # netCDF4/HDF5 raise many types for a bad file
        raise file_error(p, f"cannot be read as NetCDF: {e}") from None
    with ds:
        tname, stamps = _time_coord(ds, p)
        if stamps is not None:
            check_file_step(stamps, p)
        prefix = PurePath(p).name.split("_")[0].split(".")[0]
        gridded = [n for n, v in ds.data_vars.items() if _split_dims(v)[1] and _split_dims(v)[2]]
        # the file-name prefix names the file's one variable (with a time axis, when any has one:
        # Daymet-style 2-D lat/lon variables do not count)
        timed = [n for n in gridded if _split_dims(ds[n])[0] is not None] or gridded
        mapped: list[tuple[str, str, str | None]] = []
        for n in gridded:
            key = n if n in table else (prefix if timed == [n] and prefix in table else None)
            if key is not None:
                mapped.append((str(n), *table[key]))
        for n, v in ds.data_vars.items():  # a mapped name without lat/lon is a real cause to name
            if n in table and n not in gridded:
                raise file_error(
                    p,
                    f"variable {n!r} ({table[n][0]}) has dims {v.dims}; expected time, lat/y, lon/x",
                )
        if not mapped:
            found = [f"{n} {tuple(map(str, ds[n].dims))}" for n in gridded]
            raise file_error(
                p, f"no variable of the mapping table ({', '.join(sorted(table))}) here; found "
                f"{found or 'no variable on a lat/lon or y/x grid'}"
            )  # fmt: skip
        dims = None
        squeezes: dict[str, tuple[str, ...]] = {}
        for n, quantity, _ in mapped:
            tdim, ydim, xdim, extra = _split_dims(ds[n])
            wide = {d: k for d, k in extra.items() if k != 1}
            if wide:
                raise file_error(
                    p, f"variable {n!r} ({quantity}) has dims {ds[n].dims} with "
                    + ", ".join(f"{d!r} of {k} levels" for d, k in wide.items())
                    + "; only one level can be read (select it first, e.g. cdo sellevel or ncks -d DIM,INDEX)"
                )  # fmt: skip
            if tdim is None and tname is not None:
                raise file_error(p, f"variable {n!r} ({quantity}) has dims {ds[n].dims}, without the time "
                                    f"dimension {tname!r}")  # fmt: skip
            if dims is None:
                dims = (tdim, ydim, xdim)
            elif (tdim, ydim, xdim) != dims:
                raise file_error(p, f"variable {n!r} has dims {ds[n].dims}; the other mapped variables have "
                                    f"{tuple(d for d in dims if d)}")  # fmt: skip
            squeezes[n] = tuple(extra)
        assert dims is not None
        tdim, ydim, xdim = dims
        if tdim is not None and tname != tdim:
            raise file_error(p, f"dimension {tdim!r} has no coordinate values (dates)")
        if stamps is None:
            raise file_error(
                p, f"variable {mapped[0][0]!r} has no dates: no time dimension and no scalar time coordinate "
                f"({', '.join(_T_DIMS)})"
            )  # fmt: skip
        if stamps.has_duplicates:
            raise file_error(p, f"time {stamps[stamps.duplicated()][0]} appears twice")
        xs = np.asarray(ds[xdim].values, dtype="float64") if xdim in ds.coords else None
        ys = np.asarray(ds[ydim].values, dtype="float64") if ydim in ds.coords else None
        if xs is None or ys is None:
            raise file_error(p, f"dimensions {ydim!r}/{xdim!r} have no coordinate values")
        wkt = _crs_of(ds, [m[0] for m in mapped], ydim, p, crs)
        for name, v in ((xdim, "x"), (ydim, "y")):  # Daymet v3 wrote its LCC x/y in km
            if str(ds[name].attrs.get("units", "")).strip().lower() in (
                "km",
                "kilometer",
                "kilometre",
                "kilometers",
            ):
                if v == "x":
                    xs = xs * 1000.0
                else:
                    ys = ys * 1000.0
        if xdim in ("lon", "longitude") and (xs > 180).any():
            xs = np.where(xs > 180, xs - 360, xs)
        x0, dx = _regular(xs, p, xdim)
        y0, dy = _regular(ys, p, ydim)
        if dx < 0:
            raise file_error(p, f"{xdim} runs east to west; only west-to-east grids are supported")
        flip = dy > 0
        if flip:
            y0, dy = y0 + dy * (ys.size - 1), -dy
        if not math.isclose(dx, -dy, rel_tol=1e-4):
            raise file_error(p, f"cells are not square ({xdim} step {dx:g}, {ydim} step {-dy:g})")
        grid = GridSpec(wkt, x0 - dx / 2, y0 + dx / 2, dx, ys.size, xs.size)
        wvars = []
        for n, quantity, units_override in mapped:
            units = units_override if units_override is not None else ds[n].attrs.get("units")
            if units is None:
                raise file_error(p, f"variable {n!r} has no units attribute; give them in the mapping "
                                    f"({n}={quantity}:UNITS)")  # fmt: skip
            f = unit_factor(units, quantity)
            if f is None:
                raise file_error(
                    p, f"variable {n!r} ({quantity}) has units {units!r}, which are not known; accepted: "
                    f"{sorted(UNITS[QUANTITIES[quantity]])}"
                )  # fmt: skip
            wvars.append(
                WeatherVar(p, n, quantity, f[0], f[1], stamps, normalize_units(units), squeezes[n])
            )
    return WeatherFile(p, grid, (tdim, ydim, xdim), flip, tuple(wvars))


@dataclass(frozen=True)
class WeatherPlan:
    """Files, quantities, the kept window of the native grid, days, tiles and blocks.

    ``sources`` maps each quantity read to its file variables; ``steps`` how those
    variables' stamps make days (:class:`~kgml_grid.ingest.timesteps.Steps`); ``derived``
    the quantities made from another's sub-daily steps (``tmax``/``tmin`` from ``tair``);
    ``incomplete`` the days of the axis with some but not all steps, per quantity (NaN).
    """

    files: tuple[WeatherFile, ...]
    sources: Mapping[str, tuple[WeatherVar, ...]]  # quantity -> variables over files
    steps: Mapping[str, Steps]
    derived: Mapping[str, str]  # derived quantity -> the quantity whose steps make it
    native: GridSpec
    rows: slice
    cols: slice
    grid: GridSpec
    axis: pd.DatetimeIndex
    start_index: int
    tiles: tuple[Tile, ...]
    blocks: tuple[slice, ...]
    chunks: Mapping[str, int]
    incomplete: Mapping[str, int]


def _window(native: GridSpec, target: GridSpec | None, files: str) -> tuple[slice, slice]:
    if target is None:
        return slice(0, native.ny), slice(0, native.nx)
    w, s, e, n = bounds_in(target.bounds, target.crs, native.crs)
    nw, ns, ne, nn = native.bounds
    if not all(math.isfinite(v) for v in (w, s, e, n)) or w < nw or e > ne or s < ns or n > nn:
        raise IngestError(
            f"weather files ({files}) do not cover the target grid: target bounds "
            f"{tuple(round(v, 4) for v in (w, s, e, n))} in the weather CRS, weather grid bounds "
            f"{tuple(round(v, 4) for v in native.bounds)}"
        )
    c0 = max(0, math.floor((w - native.x0) / native.res) - 1)
    c1 = min(native.nx, math.ceil((e - native.x0) / native.res) + 1)
    r0 = max(0, math.floor((native.y0 - n) / native.res) - 1)
    r1 = min(native.ny, math.ceil((native.y0 - s) / native.res) + 1)
    return slice(r0, r1), slice(c0, c1)


def _sub(native: GridSpec, rows: slice, cols: slice) -> GridSpec:
    return GridSpec(native.crs, native.x0 + cols.start * native.res, native.y0 - rows.start * native.res,
                    native.res, rows.stop - rows.start, cols.stop - cols.start)  # fmt: skip


#: What ``incomplete_days`` may be: NaN days counted in the result, or a refusal.
INCOMPLETE_DAYS = ("nan", "refuse")


def _derive(
    sources: Mapping[str, Sequence[WeatherVar]], steps: Mapping[str, Steps]
) -> dict[str, str]:
    """Quantities made from another's sub-daily steps: tmax/tmin from hourly tair."""
    if "tair" in steps and steps["tair"].subdaily and not ({"tmax", "tmin"} & set(sources)):
        return {"tmax": "tair", "tmin": "tair"}
    return {}


def plan_weather(
    paths: Sequence[str],
    table: Mapping[str, tuple[str, str | None]],
    *,
    chunks: Mapping[str, int],
    target: GridSpec | None = None,
    crs: str | None = None,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    existing: _store.ExistingCube | None = None,
    fill_gap: bool = False,
    incomplete_days: str = "nan",
) -> WeatherPlan:
    """Check every file (metadata only) and decide what to write.

    Sub-daily files (hourly NLDAS-2) are planned as daily values aggregated from each
    day's steps (:mod:`kgml_grid.ingest.timesteps`); a day without all its steps is NaN,
    or refused with ``incomplete_days="refuse"``.

    Raises
    ------
    IngestError
        Naming the file for a refused input, a file on another grid than the first, a
        time given twice for one quantity, a quantity that cannot be made (naming what
        was found); when appending, overlap or a gap; with ``incomplete_days="refuse"``,
        a day without all its steps.
    """
    if not paths:
        raise IngestError("weather: no input files")
    if incomplete_days not in INCOMPLETE_DAYS:
        raise IngestError(
            f"weather: incomplete_days={incomplete_days!r}; expected one of {', '.join(INCOMPLETE_DAYS)}"
        )
    files = tuple(inspect_weather(p, table, crs=crs) for p in sorted(paths))
    ref = files[0]
    for f in files[1:]:
        if not _same_crs(f.grid.crs, ref.grid.crs) or not _store.same_grid(f.grid, ref.grid):
            raise file_error(
                f.path, f"grid (origin {f.grid.x0:g}, {f.grid.y0:g}, cell {f.grid.res:g}, shape {f.grid.shape}) "
                f"differs from {ref.path} (origin {ref.grid.x0:g}, {ref.grid.y0:g}, cell {ref.grid.res:g}, "
                f"shape {ref.grid.shape})"
            )  # fmt: skip
    by_q: dict[str, list[WeatherVar]] = {}
    for f in files:
        for v in f.variables:
            by_q.setdefault(v.quantity, []).append(v)
    all_steps = {
        q: classify(q, [v.times for v in vs], [v.path for v in vs]) for q, vs in by_q.items()
    }
    derived = _derive(by_q, all_steps)
    names = ", ".join(PurePath(f.path).name for f in files[:3]) + (" ..." if len(files) > 3 else "")
    try:
        use = needed_quantities([*by_q, *derived])
    except IngestError as e:
        made = f"; {' and '.join(derived)} are made from the sub-daily tair" if derived else ""
        raise IngestError(f"{e} in {len(files)} file(s): {names}{made}") from None
    sources = {q: tuple(by_q[q]) for q in use if q in by_q}
    steps = {q: all_steps[q] for q in sources}
    derived = {q: s for q, s in derived.items() if q in use}
    if existing is not None:
        g = existing.grid
        if not _same_crs(g.crs, ref.grid.crs) or not math.isclose(
            g.res, ref.grid.res, rel_tol=1e-6
        ):
            raise IngestError(
                f"{existing.path}: cannot append: the files' grid differs from the cube's"
            )
        c0 = round((g.x0 - ref.grid.x0) / g.res)
        r0 = round((ref.grid.y0 - g.y0) / g.res)
        if c0 < 0 or r0 < 0 or c0 + g.nx > ref.grid.nx or r0 + g.ny > ref.grid.ny:
            raise IngestError(
                f"{existing.path}: cannot append: the files ({names}) do not cover the cube's grid"
            )
        rows, cols = slice(r0, r0 + g.ny), slice(c0, c0 + g.nx)
    else:
        rows, cols = _window(ref.grid, target, names)
    grid = _sub(ref.grid, rows, cols)
    if target is not None:
        try:
            coarse_index(target, grid, name=f"weather ({names})")
        except ValueError as e:
            raise IngestError(str(e)) from None
    all_days = sorted({d for s in steps.values() for d in s.days})

    def first_file(day: pd.Timestamp) -> str:
        q, s = next((q, s) for q, s in steps.items() if day in s.days)
        return sources[q][s.days[day][0][0]].path

    if existing is not None:
        old_last = pd.Timestamp(existing.coord[-1])
        first = old_last + pd.Timedelta(days=1)
        if all_days[0] <= old_last:
            raise file_error(first_file(all_days[0]), f"date {all_days[0].date()} overlaps the cube {existing.path} "
                                                      f"(which ends {old_last.date()}); append only later dates")  # fmt: skip
        if all_days[0] > first and not fill_gap:
            raise file_error(first_file(all_days[0]), f"the new dates start {all_days[0].date()} but the cube "
                                                      f"{existing.path} ends {old_last.date()}; pass fill_gap=True "
                                                      "(--fill-gap) to fill the gap with NaN days")  # fmt: skip
        start_index = len(existing.coord)
    else:
        first = pd.Timestamp(start).normalize() if start is not None else all_days[0]
        start_index = 0
    last = pd.Timestamp(end).normalize() if end is not None else all_days[-1]
    if last < first:
        raise IngestError(f"weather: the time range {first.date()}..{last.date()} is empty")
    axis = daily_axis(first, last)
    incomplete = {q: s.incomplete(axis) for q, s in steps.items() if s.subdaily}
    if incomplete_days == "refuse":
        for q, days in incomplete.items():
            if days:
                s, d = steps[q], days[0]
                got = len(s.days[d])
                raise file_error(
                    sources[q][s.days[d][0][0]].path,
                    f"{q} of {d.date()} has {got} of its {s.per_day} steps of {s.label()} "
                    f"({len(days)} incomplete day(s) in {axis[0].date()}..{axis[-1].date()}); give every step "
                    "of each day, or let such days be NaN (incomplete_days='nan', --incomplete-days nan)",
                )  # fmt: skip
    tiles = plan_tiles(grid.shape, (chunks["y"], chunks["x"]))
    blocks = index_blocks(start_index, start_index + len(axis), chunks["time"])
    return WeatherPlan(files, sources, steps, derived, ref.grid, rows, cols, grid, axis, start_index, tiles,
                       blocks, dict(chunks), {q: len(d) for q, d in incomplete.items()})  # fmt: skip


class _OpenFiles:
    """NetCDF files opened on demand, at most ``size`` at once (a year of hourly NLDAS-2
    is 8,760 files; xarray's lazy datasets each hold their metadata)."""

    def __init__(self, size: int = 48) -> None:
        self.size = size
        self._open: OrderedDict[str, xr.Dataset] = OrderedDict()

    def __call__(self, path: str) -> xr.Dataset:
        ds = self._open.pop(path, None)
        if ds is None:
            ds = xr.open_dataset(path, decode_times=False, cache=False)
            while len(self._open) >= self.size:
                self._open.popitem(last=False)[1].close()
        self._open[path] = ds
        return ds

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def _slab(plan: WeatherPlan, v: WeatherVar, f: WeatherFile, ds: xr.Dataset, steps: np.ndarray | None,
          tile: Tile) -> np.ndarray:  # fmt: skip
    """Values of ``v`` at time indices ``steps`` (None: a single-day file) over one tile,
    ``[len(steps), ny, nx]`` float64 in canonical units."""
    tdim, ydim, xdim = f.dims
    r0, r1 = plan.rows.start + tile.row0, plan.rows.start + tile.row1
    c0, c1 = plan.cols.start + tile.col0, plan.cols.start + tile.col1
    rows = slice(f.grid.ny - r1, f.grid.ny - r0) if f.flip_y else slice(r0, r1)
    sel: dict[str, object] = {ydim: rows, xdim: slice(c0, c1), **dict.fromkeys(v.squeeze, 0)}
    if tdim is not None:
        sel[tdim] = steps
    try:
        da = ds[v.name].isel(sel)
        da = (
            da.transpose(tdim, ydim, xdim)
            if tdim is not None
            else da.transpose(ydim, xdim).expand_dims("t")
        )
        a = np.asarray(da.values, dtype=np.float64)
    except Exception as e:  # HDF5/netCDF errors on a damaged file
        raise file_error(v.path, f"cannot read {v.name!r}: {e}") from None
    if f.flip_y:
        a = a[:, ::-1, :]
    return a * v.scale + v.offset


def _fill(plan: WeatherPlan, days: pd.DatetimeIndex, tile: Tile, by_path: Mapping[str, WeatherFile],
          opened: _OpenFiles) -> dict[str, np.ndarray]:  # fmt: skip
    """Daily values of every source quantity (and those derived from them) over one tile."""
    out: dict[str, np.ndarray] = {}
    sub: list[tuple[str, list[str]]] = []
    for q, s in plan.steps.items():
        made = [q, *(d for d, src in plan.derived.items() if src == q)]
        for n in made:
            out[n] = np.full((len(days), *tile.shape), np.nan, dtype=np.float64)
        if s.subdaily:
            sub.append((q, made))
            continue
        for vi, v in enumerate(
            plan.sources[q]
        ):  # one stamp per day: each file's days of this block at once
            want = [
                (i, s.days[d][0][1])
                for i, d in enumerate(days)
                if d in s.days and s.days[d][0][0] == vi
            ]
            if want:
                pos, steps = (np.array(x) for x in zip(*want, strict=True))
                f = by_path[v.path]
                out[q][pos] = _slab(plan, v, f, opened(v.path), steps if f.dims[0] else None, tile)
    # sub-daily: one day at a time (memory: a day's steps x tile), every quantity of the day
    # before the next day, so that a day's files are opened once per tile
    for i, d in enumerate(days):
        for q, made in sub:
            s, vs = plan.steps[q], plan.sources[q]
            hits = s.complete(d)
            if not hits:
                continue
            stack = np.concatenate([
                _slab(plan, vs[vi], by_path[vs[vi].path], opened(vs[vi].path),
                      np.array([k]) if by_path[vs[vi].path].dims[0] else None, tile)
                for vi, k in hits
            ])  # fmt: skip
            for n in made:
                out[n][i] = aggregate(stack, how_to_aggregate(n, vs[0].units))
    return out


def missing_days(plan: WeatherPlan) -> dict[str, int]:
    """Days of the plan's axis that no file gives, per source quantity (pure)."""
    return {q: int(sum(d not in s.days for d in plan.axis)) for q, s in plan.steps.items()}


def write_weather(plan: WeatherPlan, path: Path) -> None:
    """Fill the plan's days in an initialised store, one tile and time block at a time
    (sub-daily input: one day's steps of one tile at a time)."""
    by_path = {f.path: f for f in plan.files}
    opened = _OpenFiles()
    try:
        for block in plan.blocks:
            days = plan.axis[block.start - plan.start_index : block.stop - plan.start_index]
            for tile in plan.tiles:
                q = _fill(plan, days, tile, by_path, opened)
                with np.errstate(invalid="ignore"):
                    outv = convert(q)
                del q
                cubes.write_region(
                    xr.Dataset({n: (("time", "y", "x"), a) for n, a in outv.items()}), path,
                    {"time": block, **tile.region},
                )  # fmt: skip
                del outv
                release_memory()
    finally:
        opened.close()


def _template(plan: WeatherPlan, title: str, prov: Mapping[str, object]) -> xr.Dataset:
    import dask.array as da

    ch = (plan.chunks["time"], plan.chunks["y"], plan.chunks["x"])
    shape = (len(plan.axis), *plan.grid.shape)
    data = {n: (("time", "y", "x"), da.zeros(shape, chunks=ch, dtype="float32")) for n in OUTPUTS}
    return cubes.annotate(
        xr.Dataset(data, coords={"time": plan.axis}), plan.grid, title=title, **prov
    )


def expand_netcdf(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """NetCDF files named by paths, folders (``*.nc``, ``*.nc4``; GRIB files there too, to be
    refused) or glob patterns, sorted."""
    import glob

    out: list[str] = []
    for p in paths:
        s = os.fspath(p)
        if any(c in s for c in "*?["):
            hits = sorted(glob.glob(s))
            if not hits:
                raise IngestError(f"{s}: the pattern matches no file (weather)")
            out += hits
        elif Path(s).is_dir():
            # GRIB files are listed too, so that they are refused (with the conversion) rather than skipped
            hits = sorted(str(q) for q in Path(s).iterdir()
                          if q.suffix in (".nc", ".nc4", ".NC") or q.name.lower().endswith(GRIB_SUFFIXES))  # fmt: skip
            if not hits:
                raise IngestError(f"{s}: the folder holds no .nc/.nc4 file (weather)")
            out += hits
        else:
            out.append(s)
    return sorted(dict.fromkeys(out))


def ingest_weather(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    preset: str | None = None,
    mapping: Mapping[str, str] | None = None,
    grid: GridSpec | None = None,
    crs: str | None = None,
    chunks: Mapping[str, int] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    append: bool = False,
    fill_gap: bool = False,
    overwrite: bool = False,
    catalog: str | os.PathLike[str] | None = None,
    entry: str = LAYER,
    incomplete_days: str = "nan",
) -> IngestResult:
    """Ingest daily or sub-daily weather NetCDF files into the daily weather cube, on their
    native grid.

    Parameters
    ----------
    paths : sequence
        NetCDF files, folders or glob patterns (several variables and years together):
        daily files, single-day files (a scalar date), or sub-daily files (hourly NLDAS-2
        FORA), which are aggregated to days (:mod:`kgml_grid.ingest.timesteps`).
    out : path
        The cube (a local ``.zarr`` folder).
    preset : str, optional
        ``gridmet``, ``nldas`` or ``daymet`` mapping table.
    mapping : mapping, optional
        Extra or overriding entries ``source name -> "quantity"`` or ``"quantity:units"``.
    grid : GridSpec, optional
        Target grid: keep only the part of the native grid covering it (and check it does).
    crs : str, optional
        CRS of the files when they carry no grid mapping and are not on lat/lon.
    chunks, start, end, append, fill_gap, overwrite, catalog, entry
        As for :func:`~kgml_grid.ingest.satellite.ingest_satellite`.
    incomplete_days : {"nan", "refuse"}
        A day of sub-daily input without all its steps is NaN (counted in the result's
        ``incomplete``), or refused before anything is written.

    Raises
    ------
    IngestError
        For any refused input, naming the file; nothing is written then.
    """
    table = parse_mapping(mapping, preset=preset)
    files = expand_netcdf(paths)
    start_ts = None if start is None else pd.Timestamp(start)
    end_ts = None if end is None else pd.Timestamp(end)
    if append:
        existing = _store.existing_cube(out, LAYER, dim="time")
        plan = plan_weather(files, table, chunks=resolve_chunks(existing.chunks), target=grid, crs=crs,
                            end=end_ts, existing=existing, fill_gap=fill_gap,
                            incomplete_days=incomplete_days)  # fmt: skip
        with _store.append_store(out, _template(plan, "", {}), dim="time"):
            write_weather(plan, Path(out))
    else:
        _store.check_new(out, overwrite=overwrite, inputs=paths)
        plan = plan_weather(files, table, chunks=resolve_chunks(chunks), target=grid, crs=crs,
                            start=start_ts, end=end_ts, incomplete_days=incomplete_days)  # fmt: skip
        prov = {"kgml_ingest": json.dumps({q: sorted({v.path for v in vs}) for q, vs in plan.sources.items()}),
                "kgml_weather_mapping": json.dumps({k: list(v) for k, v in table.items()}),
                "kgml_weather_steps": json.dumps({q: s.label() for q, s in plan.steps.items()})}  # fmt: skip
        with _store.new_store(out, _template(plan, "kgml_grid weather cube (native grid)", prov),
                              plan.chunks, overwrite=overwrite) as work:  # fmt: skip
            write_weather(plan, work)
    outp = Path(out)
    ds = _store.validate_output(outp, LAYER, crs=plan.grid.crs)
    crs_out = crs_label(plan.grid.crs)
    cat = None
    if catalog is not None:
        cat = register_entry(
            catalog, entry, layer=LAYER, cube=outp, crs=crs_out,
            catalog_crs=crs_label(grid.crs) if grid is not None else crs_out,
            description="daily weather (gridMET / NLDAS-2 / Daymet) on its native grid",
        )  # fmt: skip
    return IngestResult(
        LAYER, outp, tuple(str(v) for v in ds.data_vars), dict(ds.sizes), crs_out,
        files=len(plan.files), tiles=len(plan.tiles),
        span=f"{plan.axis[0].date()}..{plan.axis[-1].date()} ({len(plan.axis)} days)",
        appended=append, missing=missing_days(plan), catalog=cat, entry=entry if cat is not None else None,
        incomplete=dict(plan.incomplete),
        aggregated={q: f"{s.per_day} steps of {s.label()}" for q, s in plan.steps.items() if s.subdaily},
    )  # fmt: skip
