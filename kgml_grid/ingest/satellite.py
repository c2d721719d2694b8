"""Satellite time series (one GeoTIFF/COG per date) to the satellite cube on the target grid.

SLOPE GPP, GLASS/MODIS LAI and SMAP soil moisture come as one raster per date (or per
composite period). Each variable is a :class:`~kgml_grid.ingest.sources.RasterSource`
whose file-name ``pattern`` gives the date. The cube gets a *complete* daily time axis:
a day with no file is a NaN day, never a dropped one (8-day LAI composites fill one day in
eight). Values are made physical (nodata -> NaN, ``raw * scale + offset``), reprojected
tile by tile onto the target grid, and values outside the schema's valid range are set to
NaN and counted.

Appending extends the daily axis: the new files must start on the day after the cube's
last day (``fill_gap=True`` fills a gap with NaN days instead of refusing it) and may not
repeat a day the cube already has.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import cubes, schema
from kgml_grid.grid import GridSpec
from kgml_grid.ingest import store as _store
from kgml_grid.ingest.dates import compile_pattern
from kgml_grid.ingest.errors import IngestError, IngestWarning, file_error
from kgml_grid.ingest.rasters import (
    GDAL_CACHE_MB,
    RasterInfo,
    check_consistent,
    check_overlap,
    gdal_env,
    inspect_raster,
    read_tile,
    release_memory,
)
from kgml_grid.ingest.register import register_entry
from kgml_grid.ingest.result import IngestResult
from kgml_grid.ingest.sources import RasterSource, check_variables, expand_paths, mask_valid_range
from kgml_grid.ingest.target import crs_label, resolve_chunks
from kgml_grid.ingest.tiles import Tile, daily_axis, index_blocks, plan_tiles

LAYER = "satellite"


@dataclass(frozen=True)
class Series:
    """One variable's files, by date, after checking (metadata only)."""

    source: RasterSource
    files: Mapping[pd.Timestamp, RasterInfo]


@dataclass(frozen=True)
class SatellitePlan:
    """Everything an ingestion will do, decided before anything is written.

    ``axis`` holds the days to write; they go to time indices ``start_index`` onward of
    the cube (0 for a new cube, the old length when appending).
    """

    grid: GridSpec
    axis: pd.DatetimeIndex
    start_index: int
    series: Mapping[str, Series]
    variables: tuple[str, ...]
    tiles: tuple[Tile, ...]
    blocks: tuple[slice, ...]
    chunks: Mapping[str, int]

    def describe(self) -> str:
        """A printable summary of the plan."""
        days = f"{self.axis[0].date()}..{self.axis[-1].date()} ({len(self.axis)} days)"
        per = ", ".join(f"{v}: {len(s.files)} files" for v, s in self.series.items())
        return (f"satellite plan: {days} at time index {self.start_index}; {per}; "
                f"{len(self.tiles)} tiles x {len(self.blocks)} time blocks")  # fmt: skip


def _series(source: RasterSource, grid: GridSpec, first: pd.Timestamp | None,
            last: pd.Timestamp | None) -> Series:  # fmt: skip
    if not source.pattern:
        raise IngestError(
            f"{source.variable}: a file-name date pattern is needed (e.g. "
            "'SLOPE_GPP_{date:%Y%j}.tif')"
        )
    pattern = compile_pattern(source.pattern)
    paths = expand_paths(source.paths, what=source.variable)
    dated: dict[pd.Timestamp, str] = {}
    for p in paths:
        d = pattern.parse(p)
        if d in dated:
            raise file_error(p, f"date {d.date()} of {source.variable} is also given by {dated[d]}")
        dated[d] = p
    keep = {d: p for d, p in sorted(dated.items())
            if (first is None or d >= first) and (last is None or d <= last)}  # fmt: skip
    if not keep:
        raise IngestError(
            f"{source.variable}: none of the {len(paths)} files falls in "
            f"{first.date() if first is not None else '...'}..{last.date() if last is not None else '...'}"
        )
    infos = {d: inspect_raster(p, band=source.band, expect_crs=source.crs, layer=source.layer)
             for d, p in keep.items()}  # fmt: skip
    check_consistent(list(infos.values()), what=source.variable)
    first = next(iter(infos.values()))
    if first.description is not None and source.scale is None:
        warnings.warn(
            f"{first.path}: the TIFF description says {first.description!r}, a scale GDAL does not apply "
            f"(the file has no scale/offset), so {source.variable} is read raw; give the scale (GPM IMERG's "
            f"'Unit=0.1(mm) ScaleFactor=10' is --scale {source.variable}=0.1)",
            IngestWarning, stacklevel=4,
        )  # fmt: skip
    check_overlap(next(iter(infos.values())), grid)
    return Series(source, infos)


def plan_satellite(
    sources: Sequence[RasterSource],
    *,
    grid: GridSpec,
    chunks: Mapping[str, int],
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    existing: _store.ExistingCube | None = None,
    fill_gap: bool = False,
) -> SatellitePlan:
    """Check every input file (metadata only) and decide the days, tiles and blocks.

    Raises
    ------
    IngestError
        Naming the file for any refused input: a name whose date does not parse, a
        repeated date, an unreadable file, a missing or different CRS, a different shape
        or grid from the other dates, no overlap with the target grid; and, when
        appending, a date the cube already has or a gap after its last day.
    """
    names = [s.variable for s in sources]
    check_variables(names, LAYER, required=existing is None)
    if existing is not None:
        extra = [n for n in names if n not in existing.variables]
        if extra:
            raise IngestError(
                f"{existing.path}: cannot append {extra}: the cube holds {list(existing.variables)}; "
                "a variable cannot be added by appending"
            )
        old_last = pd.Timestamp(existing.coord[-1])
        first = old_last + pd.Timedelta(days=1)
        if start is not None and pd.Timestamp(start) != first:
            raise IngestError(
                f"{existing.path}: appending starts on {first.date()}, the day after the cube's last "
                f"day; start={pd.Timestamp(start).date()} would break the daily axis"
            )
        series = {s.variable: _series(s, grid, None, end) for s in sources}
        for s in series.values():
            d0 = next(iter(s.files))
            if d0 <= old_last:
                raise file_error(
                    s.files[d0].path,
                    f"date {d0.date()} overlaps the cube {existing.path} (which ends {old_last.date()}); "
                    "append only later dates",
                )
        new_first = min(next(iter(s.files)) for s in series.values())
        if new_first > first and not fill_gap:
            v = next(v for v, s in series.items() if next(iter(s.files)) == new_first)
            raise file_error(
                series[v].files[new_first].path,
                f"the new dates start {new_first.date()} but the cube {existing.path} ends "
                f"{old_last.date()}: a gap of {(new_first - first).days} day(s); pass fill_gap=True "
                "(--fill-gap) to fill it with NaN days",
            )
        variables = existing.variables
        start_index = len(existing.coord)
    else:
        first = None if start is None else pd.Timestamp(start).normalize()
        series = {s.variable: _series(s, grid, first, end) for s in sources}
        if first is None:
            first = min(next(iter(s.files)) for s in series.values())
        variables = tuple(v for v in (*schema.LAYERS[LAYER].required, *schema.LAYERS[LAYER].optional)
                          if v in series)  # fmt: skip
        start_index = 0
    last = pd.Timestamp(end).normalize() if end is not None else max(
        next(reversed(s.files)) for s in series.values()
    )  # fmt: skip
    if last < first:
        raise IngestError(f"the time range {first.date()}..{last.date()} is empty")
    axis = daily_axis(first, last)
    tiles = plan_tiles(grid.shape, (chunks["y"], chunks["x"]))
    blocks = index_blocks(start_index, start_index + len(axis), chunks["time"])
    return SatellitePlan(grid, axis, start_index, series, variables, tiles, blocks, dict(chunks))


def _template(plan: SatellitePlan, title: str, prov: Mapping[str, object]) -> xr.Dataset:
    import dask.array as da

    ct, cy, cx = plan.chunks["time"], plan.chunks["y"], plan.chunks["x"]
    shape = (len(plan.axis), *plan.grid.shape)
    data = {v: (("time", "y", "x"), da.zeros(shape, chunks=(ct, cy, cx), dtype="float32"))
            for v in plan.variables}  # fmt: skip
    ds = xr.Dataset(data, coords={"time": plan.axis})
    return cubes.annotate(ds, plan.grid, title=title, **prov)


def write_satellite(plan: SatellitePlan, path: Path) -> dict[str, int]:
    """Fill the time range of ``plan`` in an initialised store, one tile and block at a time.

    Returns the count of values set to NaN as outside the valid range, per variable.
    """
    masked = dict.fromkeys(plan.variables, 0)
    for block in plan.blocks:
        days = plan.axis[block.start - plan.start_index : block.stop - plan.start_index]
        for tile in plan.tiles:
            for var in plan.variables:
                buf = np.full((len(days), *tile.shape), np.nan, dtype=np.float32)
                s = plan.series.get(var)
                if s is not None:
                    for i, day in enumerate(days):
                        info = s.files.get(day)
                        if info is not None:
                            buf[i] = read_tile(info, plan.grid, tile, rule=s.source.rule,
                                               resampling=s.source.resampling)  # fmt: skip
                    masked[var] += mask_valid_range(buf, var)
                cubes.write_region(
                    xr.Dataset({var: (("time", "y", "x"), buf)}), path,
                    {"time": block, **tile.region},
                )  # fmt: skip
                del buf
                release_memory()
    return masked


def _provenance(plan: SatellitePlan) -> dict[str, object]:
    info = {
        v: {"files": len(s.files), "pattern": s.source.pattern,
            "first": os.fspath(next(iter(s.files.values())).path),
            "scale": s.source.scale, "offset": s.source.offset, "nodata": s.source.nodata,
            "resampling": s.source.resampling}
        for v, s in plan.series.items()
    }  # fmt: skip
    return {"kgml_ingest": json.dumps(info)}


def ingest_satellite(
    sources: Sequence[RasterSource],
    out: str | os.PathLike[str],
    *,
    grid: GridSpec | None = None,
    chunks: Mapping[str, int] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    append: bool = False,
    fill_gap: bool = False,
    overwrite: bool = False,
    catalog: str | os.PathLike[str] | None = None,
    entry: str = LAYER,
    gdal_cache_mb: int = GDAL_CACHE_MB,
) -> IngestResult:
    """Ingest satellite series (one raster per date) into the satellite cube.

    Parameters
    ----------
    sources : sequence of RasterSource
        One per variable (``gpp_sat`` required for a new cube; ``lai``,
        ``soil_moisture`` optional), each with its date ``pattern``.
    out : path
        The cube (a local ``.zarr`` folder).
    grid : GridSpec
        Target grid (see :func:`~kgml_grid.ingest.target.target_grid`); when appending it
        defaults to the cube's grid and must equal it if given.
    chunks : mapping, optional
        ``time``, ``y``, ``x`` chunks of a new cube (default
        :data:`~kgml_grid.ingest.target.DEFAULT_CHUNKS`); space tiles are processed one
        chunk at a time.
    start, end : date, optional
        Limit or extend the daily axis (files outside are skipped; days without a file
        are NaN).
    append : bool
        Extend an existing cube with later dates.
    fill_gap : bool
        When appending, fill days between the cube's end and the first new date with NaN.
    overwrite : bool
        Replace an existing cube at ``out``.
    catalog : path, optional
        Register the cube there as ``entry``.
    entry : str
        Catalog entry name.
    gdal_cache_mb : int
        GDAL block cache while reading.

    Returns
    -------
    IngestResult

    Raises
    ------
    IngestError
        For any refused input (naming the file); nothing is written then.
    """
    sources = list(sources)
    start_ts = None if start is None else pd.Timestamp(start)
    end_ts = None if end is None else pd.Timestamp(end)
    with gdal_env(gdal_cache_mb):
        if append:
            existing = _store.existing_cube(out, LAYER, dim="time")
            if grid is not None and not _store.same_grid(grid, existing.grid):
                raise IngestError(
                    f"{out}: the target grid differs from the cube's grid; leave it out when appending"
                )
            grid = existing.grid
            plan = plan_satellite(sources, grid=grid, chunks=resolve_chunks(existing.chunks),
                                  end=end_ts, start=start_ts, existing=existing, fill_gap=fill_gap)  # fmt: skip
            tmpl = _template(plan, "", {})
            with _store.append_store(out, tmpl, dim="time"):
                masked = write_satellite(plan, Path(out))
        else:
            _store.check_new(out, overwrite=overwrite, inputs=sources)
            if grid is None:
                raise IngestError(
                    "satellite: a target grid is needed (grid=..., or --crs/--bounds/--res or --like)"
                )
            plan = plan_satellite(
                sources, grid=grid, chunks=resolve_chunks(chunks), start=start_ts, end=end_ts
            )
            tmpl = _template(
                plan,
                "kgml_grid satellite cube (SLOPE GPP, GLASS/MODIS LAI, SMAP)",
                _provenance(plan),
            )
            with _store.new_store(out, tmpl, plan.chunks, overwrite=overwrite) as work:
                masked = write_satellite(plan, work)
    return _finish(plan, Path(out), masked, append=append, catalog=catalog, entry=entry)


def _finish(plan: SatellitePlan, out: Path, masked: Mapping[str, int], *, append: bool,
            catalog: str | os.PathLike[str] | None, entry: str) -> IngestResult:  # fmt: skip
    ds = _store.validate_output(out, LAYER, crs=plan.grid.crs)
    bad = {v: n for v, n in masked.items() if n}
    if bad:
        warnings.warn(
            f"{out}: values outside the schema's valid range were set to NaN: "
            + ", ".join(f"{v} {n} (valid {schema.get(v).valid_range}; first file "
                        f"{next(iter(plan.series[v].files.values())).path})" for v, n in bad.items())
            + "; check the scale factor and offset",
            IngestWarning, stacklevel=3,
        )  # fmt: skip
    crs = crs_label(plan.grid.crs)
    cat = None
    if catalog is not None:
        cat = register_entry(
            catalog, entry, layer=LAYER, cube=out, crs=crs, catalog_crs=crs,
            description="satellite GPP (SLOPE), LAI (GLASS/MODIS), soil moisture (SMAP) on the target grid",
        )  # fmt: skip
    missing = {v: int(len(plan.axis) - (len([d for d in s.files if d in plan.axis])))
               for v, s in plan.series.items()}  # fmt: skip
    return IngestResult(
        LAYER, out, tuple(str(v) for v in ds.data_vars), dict(ds.sizes), crs,
        files=sum(len(s.files) for s in plan.series.values()), tiles=len(plan.tiles),
        span=f"{plan.axis[0].date()}..{plan.axis[-1].date()} ({len(plan.axis)} days)",
        appended=append, missing=missing, masked=dict(masked), catalog=cat,
        entry=entry if cat is not None else None,
    )  # fmt: skip
