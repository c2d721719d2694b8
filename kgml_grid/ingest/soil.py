"""Soil property rasters (one GeoTIFF per property, e.g. from gSSURGO) to the soil cube.

Each property is a :class:`~kgml_grid.ingest.sources.RasterSource` (or just a path) in the
schema's units, or converted to them with ``scale``/``offset``. gSSURGO is 10 or 30 m, so
the default resampling onto the (coarser) target grid is ``average`` of the valid pixels.
All properties the model needs must be given (``silt`` is optional).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import xarray as xr

from kgml_grid import cubes, schema
from kgml_grid.grid import GridSpec
from kgml_grid.ingest import store as _store
from kgml_grid.ingest.errors import IngestError, IngestWarning
from kgml_grid.ingest.rasters import (
    GDAL_CACHE_MB,
    RasterInfo,
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
from kgml_grid.ingest.tiles import plan_tiles

LAYER = "soil"


def _as_source(
    name: str, src: RasterSource | str | os.PathLike[str], resampling: str
) -> RasterSource:
    if isinstance(src, RasterSource):
        if src.variable != name:
            raise IngestError(f"soil property {name!r} is given a source for {src.variable!r}")
        return src
    return RasterSource(name, (os.fspath(src),), resampling=resampling)


def plan_soil(
    properties: Mapping[str, RasterSource | str | os.PathLike[str]],
    *,
    grid: GridSpec,
    resampling: str = "average",
) -> dict[str, tuple[RasterSource, RasterInfo]]:
    """Check every property's file (metadata only); return source and metadata per property.

    Raises
    ------
    IngestError
        For an unknown or missing property, or a refused file (named).
    """
    check_variables(list(properties), LAYER, required=True)
    out: dict[str, tuple[RasterSource, RasterInfo]] = {}
    for name, src in properties.items():
        s = _as_source(name, src, resampling)
        files = expand_paths(s.paths, what=f"soil property {name}")
        if len(files) != 1:
            raise IngestError(
                f"soil property {name!r}: one raster is expected, got {len(files)}: {files[:3]}"
            )
        s = replace(s, paths=(files[0],))
        info = inspect_raster(files[0], band=s.band, expect_crs=s.crs, layer=s.layer)
        check_overlap(info, grid)
        out[name] = (s, info)
    return out


def ingest_soil(
    properties: Mapping[str, RasterSource | str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    grid: GridSpec,
    resampling: str = "average",
    chunks: Mapping[str, int] | None = None,
    overwrite: bool = False,
    catalog: str | os.PathLike[str] | None = None,
    entry: str = LAYER,
    gdal_cache_mb: int = GDAL_CACHE_MB,
) -> IngestResult:
    """Ingest one raster per soil property into the soil cube on ``grid``.

    Parameters
    ----------
    properties : mapping
        Schema property name -> path (or :class:`RasterSource` with scale, nodata, ...).
        Required: bulk_density, sand, clay, field_capacity, wilting_point, ksat, soc,
        ph, cec; optional: silt.
    out : path
        The cube (a local ``.zarr`` folder).
    grid : GridSpec
        Target grid.
    resampling : str
        For properties given as plain paths (default ``average``).
    chunks, overwrite, catalog, entry, gdal_cache_mb
        As for :func:`~kgml_grid.ingest.satellite.ingest_satellite`.

    Raises
    ------
    IngestError
        For any refused input (naming the file); nothing is written then.
    """
    ch = resolve_chunks(chunks)
    with gdal_env(gdal_cache_mb):
        _store.check_new(out, overwrite=overwrite, inputs=properties.values())
        plan = plan_soil(properties, grid=grid, resampling=resampling)
        order = [
            v for v in (*schema.LAYERS[LAYER].required, *schema.LAYERS[LAYER].optional) if v in plan
        ]
        tiles = plan_tiles(grid.shape, (ch["y"], ch["x"]))
        import dask.array as da

        tmpl = cubes.annotate(
            xr.Dataset({v: (("y", "x"), da.zeros(grid.shape, chunks=(ch["y"], ch["x"]), dtype="float32"))
                        for v in order}),
            grid, title="kgml_grid soil cube (gSSURGO properties)",
            kgml_ingest=json.dumps({v: plan[v][1].path for v in order}),
        )  # fmt: skip
        masked = dict.fromkeys(order, 0)
        with _store.new_store(out, tmpl, ch, overwrite=overwrite) as work:
            for tile in tiles:
                block = {}
                for v in order:
                    src, info = plan[v]
                    a = read_tile(info, grid, tile, rule=src.rule, resampling=src.resampling)
                    masked[v] += mask_valid_range(a, v)
                    block[v] = (("y", "x"), a)
                cubes.write_region(xr.Dataset(block), work, tile.region)
                del block
                release_memory()
    outp = Path(out)
    ds = _store.validate_output(outp, LAYER, crs=grid.crs)
    bad = {v: n for v, n in masked.items() if n}
    if bad:
        warnings.warn(
            f"{outp}: soil values outside the schema's valid range were set to NaN: "
            + ", ".join(f"{v} {n} (valid {schema.get(v).valid_range}; file {plan[v][1].path})"
                        for v, n in bad.items()),
            IngestWarning, stacklevel=2,
        )  # fmt: skip
    crs = crs_label(grid.crs)
    cat = None
    if catalog is not None:
        cat = register_entry(catalog, entry, layer=LAYER, cube=outp, crs=crs, catalog_crs=crs,
                             description="soil properties (gSSURGO) on the target grid")  # fmt: skip
    return IngestResult(
        LAYER, outp, tuple(str(v) for v in ds.data_vars), dict(ds.sizes), crs,
        files=len(plan), tiles=len(tiles), span="static", masked=masked, catalog=cat,
        entry=entry if cat is not None else None,
    )  # fmt: skip
