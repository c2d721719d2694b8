"""Zarr v3 cubes: CF-annotated creation, incremental writing and validation.

A cube is one layer of the data model (weather, satellite, soil, crop, truth) stored
as a Zarr v3 group written by xarray, with CF attributes on every variable, the CRS
recorded the rioxarray way (a ``spatial_ref`` coordinate) and explicit chunks.

A store is only *complete* once the writer sets the ``kgml_complete`` attribute as its
last act; :func:`validate_layer` refuses an incomplete store, so an interrupted write
never looks like a finished cube.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import schema
from kgml_grid.grid import GridSpec, _same_crs, check_covers, spec_from_coords

COMPLETE_ATTR = "kgml_complete"


class CubeError(ValueError):
    """A cube does not conform to the schema."""


def _package_version() -> str:
    from kgml_grid import __version__

    return __version__


def global_attrs(title: str, **extra: Any) -> dict[str, Any]:
    """CF global attributes with provenance."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs = {
        "Conventions": "CF-1.8",
        "title": title,
        "institution": "kgml_grid",
        "source": f"kgml_grid {_package_version()}",
        "history": f"{now} created by kgml_grid {_package_version()}",
    }
    attrs.update(extra)
    return attrs


def annotate(ds: xr.Dataset, grid: GridSpec, *, title: str, **attrs: Any) -> xr.Dataset:
    """Apply schema CF attributes, grid coordinates and the CRS to a Dataset.

    Variables not in the schema keep their attributes. Returns a new Dataset.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    ds = ds.assign_coords(grid.coords())
    for name in ds.data_vars:
        if str(name) in schema.VARIABLES:
            ds[name].attrs.update(schema.VARIABLES[str(name)].cf_attrs())
    if "time" in ds.coords:
        ds["time"].attrs.update({"standard_name": "time", "long_name": "time", "axis": "T"})
    if "year" in ds.coords:
        ds["year"].attrs.update({"long_name": "calendar year", "units": "1"})
    ds = ds.rio.write_crs(grid.crs)
    ds = ds.rio.write_coordinate_system()
    ds.attrs = global_attrs(title, **attrs)
    return ds


def encoding_for(
    ds: xr.Dataset, chunks: Mapping[str, int], *, compressors: Any = None
) -> dict[str, dict[str, Any]]:
    """Zarr encodings with explicit chunks (clipped to each variable's shape).

    ``compressors``: Zarr v3 codecs of the data variables (default: Zarr's, Zstd level 0).
    """
    enc: dict[str, dict[str, Any]] = {}
    for key, var in ds.data_vars.items():
        if not var.dims:
            continue
        name = str(key)
        enc[name] = {"chunks": tuple(min(chunks.get(str(d), n), n) for d, n in var.sizes.items())}
        if "spatial_ref" in ds.coords and {"y", "x"} <= set(var.dims):
            # explicit encodings replace the variable's own, so carry rioxarray's link to the CRS
            enc[name]["grid_mapping"] = "spatial_ref"
        if np.issubdtype(var.dtype, np.floating):
            enc[name]["fill_value"] = np.nan
        if compressors is not None:
            enc[name]["compressors"] = compressors
    if "time" in ds.coords:
        enc["time"] = {
            "units": "days since 1970-01-01",
            "calendar": "proleptic_gregorian",
            "dtype": "int64",
        }
    return enc


def init_store(
    template: xr.Dataset,
    path: str | Path,
    chunks: Mapping[str, int],
    *,
    compressors: Any = None,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Create the store from a (lazy) template: metadata and coordinates, no data
    (``compressors``: see :func:`encoding_for`; ``encoding``: per variable, replaces
    entries of it, e.g. ``{"nee": {"chunks": inner, "shards": shard}}`` for Zarr v3
    sharding). The store is marked as kgml_grid's
    (:data:`kgml_grid.outputs.MARKER_ATTR`, default kind ``cube``)."""
    from kgml_grid.outputs import MARKER_ATTR

    template = template.copy()
    template.attrs[COMPLETE_ATTR] = 0
    template.attrs.setdefault(MARKER_ATTR, "cube")
    enc = encoding_for(template, chunks, compressors=compressors)
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)
    template.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False,
                     encoding=enc)  # fmt: skip


def write_region(block: xr.Dataset, path: str | Path, region: Mapping[str, slice]) -> None:
    """Write one block of data variables into an initialised store."""
    keep = [n for n, v in block.data_vars.items() if set(v.dims) & set(region)]
    sub = block[keep]
    drop = [c for c in sub.coords if not set(sub[c].dims) & set(region)]
    sub.drop_vars(drop).to_zarr(path, region=dict(region), zarr_format=3, consolidated=False)


def mark_complete(path: str | Path, **extra_attrs: Any) -> None:
    """Set the completion marker: the last thing a writer does."""
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=3)
    g.attrs.update({**extra_attrs, COMPLETE_ATTR: 1})


def write_cube(ds: xr.Dataset, path: str | Path, chunks: Mapping[str, int]) -> None:
    """Write a whole in-memory (or dask) Dataset as a complete cube."""
    init_store(ds, path, chunks)
    region = {d: slice(0, n) for d, n in ds.sizes.items() if d in {"time", "year", "y", "x"}}
    for name, var in ds.data_vars.items():
        if not var.dims:
            raise CubeError(f"{path}: scalar variable {name!r} cannot be written as a cube")
    write_region(ds, path, region)
    mark_complete(path)


def open_cube(
    path: str | Path,
    layer: str,
    *,
    crs: str | None = None,
    chunks: Mapping[str, int] | str | None = None,
) -> xr.Dataset:
    """Open a cube lazily with Dask and validate it against the schema."""
    path = str(path)
    try:
        ds = xr.open_zarr(
            path,
            consolidated=False,
            decode_coords="all",
            chunks={} if chunks is None else (chunks if isinstance(chunks, str) else dict(chunks)),  # type: ignore[arg-type]
        )
    except FileNotFoundError:
        raise CubeError(f"{path}: no Zarr store here (layer {layer!r})") from None
    return validate_layer(ds, layer, source=path, crs=crs)


def _fail(source: str, layer: str, msg: str) -> CubeError:
    return CubeError(f"{source} (layer {layer!r}): {msg}")


def validate_layer(
    ds: xr.Dataset, layer: str, *, source: str = "<dataset>", crs: str | None = None
) -> xr.Dataset:
    """Check one cube against the schema; return it unchanged if it conforms.

    Checks (metadata only, nothing is computed): completion marker, required
    variables, dimensions, units, daily strictly increasing time, a regular grid, and
    a CRS that equals ``crs`` when given.

    Raises
    ------
    CubeError
        Naming the source, the layer, the variable and what was expected.
    """
    if layer not in schema.LAYERS:
        raise CubeError(f"{source}: unknown layer {layer!r}; known: {', '.join(schema.LAYERS)}")
    spec = schema.LAYERS[layer]
    if COMPLETE_ATTR in ds.attrs and not int(ds.attrs[COMPLETE_ATTR]):
        raise _fail(
            source, layer, "the store is incomplete (its writer did not finish); rebuild it"
        )
    for name in spec.required:
        if name not in ds.data_vars:
            raise _fail(
                source, layer,
                f"missing variable {name!r} ({schema.VARIABLES[name].long_name}); "
                f"found {sorted(map(str, ds.data_vars))}",
            )  # fmt: skip
    for name in (*spec.required, *(o for o in spec.optional if o in ds.data_vars)):
        var = schema.VARIABLES[name]
        da = ds[name]
        if tuple(da.dims) != var.dims:
            raise _fail(source, layer, f"variable {name!r} has dims {da.dims}, expected {var.dims}")
        units = da.attrs.get("units")
        if not var.accepts_units(units):
            raise _fail(
                source, layer, f"variable {name!r} has units {units!r}, expected {var.units!r}"
            )
    if "time" in ds.dims:
        _check_time(ds["time"], source, layer)
    if "year" in ds.dims:
        years = np.asarray(ds["year"].values)
        if years.size > 1 and not (np.diff(years) == 1).all():
            raise _fail(source, layer, f"year coordinate must be consecutive, got {years.tolist()}")
    ds_crs = cube_crs(ds, source=source, layer=layer)
    if crs is not None and not _same_crs(ds_crs, crs):
        raise _fail(source, layer, f"CRS is {_crs_name(ds_crs)}, expected {_crs_name(crs)}")
    grid_of(ds, source=source, layer=layer)
    return ds


def _crs_name(crs: str) -> str:
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.name


def _check_time(time: xr.DataArray, source: str, layer: str) -> None:
    if not np.issubdtype(time.dtype, np.datetime64):
        raise _fail(source, layer, f"time coordinate must be datetime64, got {time.dtype}")
    t = pd.DatetimeIndex(time.values)
    if t.size < 2:
        return
    step = np.diff(t.values).astype("timedelta64[s]").astype("int64")
    if (step <= 0).any():
        i = int(np.argmax(step <= 0))
        raise _fail(
            source, layer,
            f"time is not strictly increasing: {t[i].date()} is followed by {t[i + 1].date()}",
        )  # fmt: skip
    if (step != 86400).any():
        i = int(np.argmax(step != 86400))
        raise _fail(
            source, layer,
            f"time is not daily: {t[i].date()} is followed by {t[i + 1].date()} "
            f"({step[i] / 86400:g} days)",
        )  # fmt: skip
    if (t.hour != 0).any() or (t.minute != 0).any():
        raise _fail(source, layer, "daily time stamps must be at midnight (dates)")


def cube_crs(ds: xr.Dataset, *, source: str = "<dataset>", layer: str = "?") -> str:
    """The cube's CRS as WKT, read from its ``spatial_ref`` coordinate."""
    if "spatial_ref" not in ds.coords and "spatial_ref" not in ds.variables:
        raise _fail(source, layer, "no CRS: the 'spatial_ref' coordinate is missing")
    attrs = ds["spatial_ref"].attrs
    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    if not wkt:
        raise _fail(source, layer, "no CRS: 'spatial_ref' has no 'crs_wkt' attribute")
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_wkt(wkt)
    except CRSError as e:
        raise _fail(source, layer, f"CRS in 'spatial_ref' does not parse: {e}") from None
    return str(wkt)


def grid_of(ds: xr.Dataset, *, source: str = "<dataset>", layer: str = "?") -> GridSpec:
    """The cube's grid, refusing irregular or missing coordinates."""
    for d in ("y", "x"):
        if d not in ds.coords:
            raise _fail(source, layer, f"missing coordinate {d!r}")
    try:
        return spec_from_coords(
            ds["x"].values,
            ds["y"].values,
            cube_crs(ds, source=source, layer=layer),
            name=f"{source} (layer {layer!r})",
        )
    except ValueError as e:
        if isinstance(e, CubeError):
            raise
        raise CubeError(str(e)) from None


def validate_alignment(
    layers: Mapping[str, xr.Dataset], *, sources: Mapping[str, str] | None = None
) -> GridSpec:
    """Check that the layers fit together; return the fine target grid.

    Fine layers (satellite, soil, crop, truth) must share one grid exactly; the
    weather grid must cover it (in any CRS); time-varying layers must overlap in time.
    """
    sources = dict(sources or {})
    fine = [n for n in ("satellite", "soil", "crop", "truth") if n in layers]
    if not fine:
        raise CubeError("no fine-grid layer (satellite, soil, crop or truth) to align against")
    ref_name = fine[0]
    ref = grid_of(layers[ref_name], source=sources.get(ref_name, ref_name), layer=ref_name)
    for name in fine[1:]:
        g = grid_of(layers[name], source=sources.get(name, name), layer=name)
        if not _same_crs(g.crs, ref.crs):
            raise CubeError(
                f"{sources.get(name, name)} (layer {name!r}): CRS {_crs_name(g.crs)} differs from "
                f"layer {ref_name!r} ({_crs_name(ref.crs)})"
            )
        if g.shape != ref.shape or not np.allclose(
            (g.x0, g.y0, g.res), (ref.x0, ref.y0, ref.res), rtol=0, atol=1e-6 * ref.res
        ):
            raise CubeError(
                f"{sources.get(name, name)} (layer {name!r}): grid is misaligned with layer "
                f"{ref_name!r}: origin ({g.x0}, {g.y0}) res {g.res} shape {g.shape}, expected "
                f"origin ({ref.x0}, {ref.y0}) res {ref.res} shape {ref.shape}"
            )
    if "weather" in layers:
        w = grid_of(layers["weather"], source=sources.get("weather", "weather"), layer="weather")
        try:
            check_covers(ref, w, name=f"{sources.get('weather', 'weather')} (layer 'weather')")
        except ValueError as e:
            raise CubeError(str(e)) from None
    timed = [n for n in layers if "time" in layers[n].dims]
    if len(timed) > 1:
        start = max(pd.Timestamp(layers[n]["time"].values[0]) for n in timed)
        end = min(pd.Timestamp(layers[n]["time"].values[-1]) for n in timed)
        if start > end:
            raise CubeError(
                "time-varying layers do not overlap in time: "
                + ", ".join(
                    f"{n} {pd.Timestamp(layers[n]['time'].values[0]).date()}.."
                    f"{pd.Timestamp(layers[n]['time'].values[-1]).date()}"
                    for n in timed
                )
            )
    return ref
