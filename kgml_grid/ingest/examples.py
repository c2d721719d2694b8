"""Writers of small files in the real formats (GeoTIFF, NetCDF), for tests, docs and benchmarks.

They write what the products look like on disk: GeoTIFFs with a CRS, nodata, band
scale/offset or ``scale_factor``/``add_offset`` tags, optionally tiled and compressed
(COG-like), written block by block so a large one never sits in memory; NetCDF files with
``time``/``day``, ``lat``/``lon`` dimensions, CF ``units`` and a ``crs`` variable, as
gridMET and NLDAS-2 ship them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from affine import Affine


def write_geotiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    crs: str | None,
    transform: Affine,
    nodata: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    tags: Mapping[str, str] | None = None,
    tiled: bool = False,
    blocksize: int = 256,
    compress: str | None = "deflate",
) -> Path:
    """Write a single-band GeoTIFF (``crs=None`` writes one without georeferencing CRS)."""
    import rasterio

    data = np.asarray(data)
    profile = {
        "driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
    }  # fmt: skip
    if compress:
        profile["compress"] = compress
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(p, "w", **profile) as dst:
        dst.write(data, 1)
        if scale is not None:
            dst.scales = (float(scale),)
        if offset is not None:
            dst.offsets = (float(offset),)
        if tags:
            dst.update_tags(**tags)
    return p


def write_geotiff_blocks(
    path: str | os.PathLike[str],
    *,
    shape: tuple[int, int],
    dtype: str,
    crs: str,
    transform: Affine,
    fill: Callable[[slice, slice], np.ndarray],
    nodata: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    blocksize: int = 512,
) -> Path:
    """Write a large tiled, deflate-compressed GeoTIFF one block row at a time.

    ``fill(rows, cols)`` returns the values of that window (shape and ``dtype`` as given).
    """
    import rasterio
    from rasterio.windows import Window

    h, w = shape
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        p, "w", driver="GTiff", width=w, height=h, count=1, dtype=dtype, crs=crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=blocksize,
        blockysize=blocksize, compress="deflate", BIGTIFF="IF_SAFER",
    ) as dst:  # fmt: skip
        for r in range(0, h, blocksize):
            rows = slice(r, min(r + blocksize, h))
            for c in range(0, w, 4 * blocksize):
                cols = slice(c, min(c + 4 * blocksize, w))
                dst.write(np.asarray(fill(rows, cols), dtype=dtype), 1,
                          window=Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start))  # fmt: skip
        if scale is not None:
            dst.scales = (float(scale),)
        if offset is not None:
            dst.offsets = (float(offset),)
    return p


def write_netcdf(
    path: str | os.PathLike[str],
    variables: Mapping[str, tuple[np.ndarray, str | None]],
    *,
    times: Sequence[pd.Timestamp] | pd.DatetimeIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    time_name: str = "time",
    lat_name: str = "lat",
    lon_name: str = "lon",
    time_units: str = "days since 1900-01-01 00:00:00",
    hours: float = 0.0,
    crs_variable: bool = True,
    grid_mapping: Mapping[str, object] | None = None,
    coord_units: tuple[str, str] = ("degrees_north", "degrees_east"),
) -> Path:
    """Write a NetCDF4 file of ``(time, lat, lon)`` variables with CF attributes.

    ``variables`` maps name -> (array, units); ``units=None`` writes no units attribute.
    ``hours`` shifts every time stamp (NLDAS daily aggregates are stamped at 12:00, say).
    ``grid_mapping`` gives the attributes of the ``crs`` variable for a projected grid
    (name the dimensions ``y``/``x`` with ``lat_name``/``lon_name`` and give
    ``coord_units``); by default it is a WGS84 ``latitude_longitude`` mapping.
    """
    import netCDF4

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    t = pd.DatetimeIndex(times) + pd.Timedelta(hours=hours)
    with netCDF4.Dataset(p, "w", format="NETCDF4") as nc:
        nc.Conventions = "CF-1.6"
        nc.createDimension(time_name, len(t))
        nc.createDimension(lat_name, len(lat))
        nc.createDimension(lon_name, len(lon))
        tv = nc.createVariable(time_name, "f8", (time_name,))
        tv.units = time_units
        tv.calendar = "standard"
        tv[:] = netCDF4.date2num(t.to_pydatetime(), time_units, "standard")
        projected = grid_mapping is not None
        la = nc.createVariable(lat_name, "f8", (lat_name,))
        la.units = coord_units[0]
        la.standard_name = "projection_y_coordinate" if projected else "latitude"
        la[:] = lat
        lo = nc.createVariable(lon_name, "f8", (lon_name,))
        lo.units = coord_units[1]
        lo.standard_name = "projection_x_coordinate" if projected else "longitude"
        lo[:] = lon
        if crs_variable:
            c = nc.createVariable("crs", "i4")
            attrs = dict(grid_mapping) if projected else {
                "grid_mapping_name": "latitude_longitude", "semi_major_axis": 6378137.0,
                "inverse_flattening": 298.257223563,
            }  # fmt: skip
            c.setncatts(attrs)
        for name, (arr, units) in variables.items():
            v = nc.createVariable(
                name, "f4", (time_name, lat_name, lon_name), fill_value=np.float32(-9999.0)
            )
            if units is not None:
                v.units = units
            if crs_variable:
                v.grid_mapping = "crs"
            v[:] = np.asarray(arr, dtype="float32")
    return p
