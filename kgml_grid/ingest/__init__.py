"""Real data ingestion: satellite, soil, crop-mask and weather files to aligned Zarr cubes.

Users bring real products in their real formats; this turns them into the cubes the rest
of kgml_grid reads (see ``docs/ingest.md``):

===============================  ===========================  =============================
function                         input                        cube
===============================  ===========================  =============================
:func:`ingest_satellite`         GeoTIFF/COG or NetCDF/HDF5   satellite (time, y, x), target
                                 layer per date (SLOPE GPP,
                                 GLASS/MODIS LAI, SMAP)
:func:`ingest_soil`              GeoTIFF per property         soil (y, x), target grid
                                 (gSSURGO)
:func:`ingest_crop`              CDL class GeoTIFF per year   crop (year, y, x), target grid
:func:`ingest_weather`           daily or hourly NetCDF       weather (time, y, x), native
                                 (gridMET, NLDAS-2, Daymet)   grid, daily
===============================  ===========================  =============================

Rasters are reprojected onto the target grid (:func:`target_grid`, :func:`grid_like`) one
output tile at a time, reading only the source window each tile needs, so memory is
bounded by a tile, not by the raster. Every input is checked before anything is written
and every refusal (:class:`IngestError`) names the file. Cubes are created complete or not
at all, appends extend the daily (or yearly) axis contiguously, and each cube can be
registered in a catalog (:func:`register_entry`).
"""

from __future__ import annotations

from kgml_grid.ingest.cdl import CDL_LEGEND, aggregate, class_map, ingest_crop
from kgml_grid.ingest.dates import compile_pattern
from kgml_grid.ingest.errors import IngestError, IngestWarning
from kgml_grid.ingest.register import register_entry
from kgml_grid.ingest.result import IngestResult
from kgml_grid.ingest.satellite import ingest_satellite, plan_satellite
from kgml_grid.ingest.soil import ingest_soil
from kgml_grid.ingest.sources import RasterSource
from kgml_grid.ingest.target import DEFAULT_CHUNKS, grid_like, target_grid
from kgml_grid.ingest.weather import PRESETS, convert, ingest_weather

__all__ = [
    "CDL_LEGEND",
    "DEFAULT_CHUNKS",
    "PRESETS",
    "IngestError",
    "IngestResult",
    "IngestWarning",
    "RasterSource",
    "aggregate",
    "class_map",
    "compile_pattern",
    "convert",
    "grid_like",
    "ingest_crop",
    "ingest_satellite",
    "ingest_soil",
    "ingest_weather",
    "plan_satellite",
    "register_entry",
    "target_grid",
]
