"""NetCDF / HDF5 satellite layers read like rasters, and HDF4 refused with the conversion.

A satellite file in NetCDF or HDF5 (netCDF-4 readable) holds one date's layer: a variable
on 1-D ``y``/``x`` (or ``lat``/``lon``) coordinates, with at most singleton extra
dimensions (a ``time`` or ``band`` of length 1); the date comes from the file name as for
GeoTIFFs. :func:`inspect_layer` finds, from metadata only:

* the **variable**: the one given as ``layer`` (``group/name`` inside an HDF5 group), else the file's
  only 2-D gridded variable;
* the **CRS**: a CF ``grid_mapping`` variable (its ``crs_wkt`` / ``spatial_ref`` WKT,
  else its CF parameters), else a PROJ or WKT string in an attribute of the variable or
  of the file (``crs``, ``crs_wkt``, ``spatial_ref``, ``proj4``, ...: how rioxarray-era
  and xarray-written files such as MODIS sinusoidal subsets carry it), else EPSG:4326
  for ``lat``/``lon`` dimensions;
* the **geotransform** from the cell-centre coordinates (regular, square cells; a south-up
  ``y`` is flipped on reading);
* raw values and their meaning as GDAL gives them for a GeoTIFF: nodata from ``nodata``,
  ``_FillValue`` or ``missing_value``; ``scale_factor`` / ``add_offset``.

:func:`read_window` then reads one window of raw values (no masking or scaling: that is
:func:`kgml_grid.ingest.rasters.to_physical`'s job, as for GeoTIFFs).

HDF4 files (MODIS / VIIRS HDF-EOS granules) cannot be read by the rasterio wheels (no HDF4
driver) nor by netCDF4; :func:`hdf4_error` says which ``gdal_translate`` to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from kgml_grid.ingest.errors import IngestError, file_error

NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf", ".h5", ".hdf5", ".he5")
_MAGIC_NETCDF = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF")
_MAGIC_HDF4 = b"\x0e\x03\x13\x01"
_CRS_ATTRS = ("crs_wkt", "spatial_ref", "crs", "proj4", "proj4text", "proj4_string", "proj4_params",
              "esri_pe_string", "projection")  # fmt: skip
_Y = ("y", "lat", "latitude", "northing", "ydim", "YDim")
_X = ("x", "lon", "longitude", "easting", "xdim", "XDim")


@dataclass(frozen=True)
class LayerRef:
    """Where one layer lives in a NetCDF/HDF5 file, and how to read it north-up."""

    variable: str
    group: str | None
    ydim: str
    xdim: str
    squeeze: tuple[str, ...]
    flip_y: bool


def _magic(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError:
        return b""


def is_netcdf(path: str) -> bool:
    """NetCDF 3/4 or HDF5, by suffix or signature (a local file)."""
    return path.lower().endswith(NETCDF_SUFFIXES) or (
        "://" not in path and _magic(path) in _MAGIC_NETCDF
    )


def is_hdf4(path: str) -> bool:
    """HDF4 by its signature (MODIS/VIIRS ``.hdf`` granules)."""
    return "://" not in path and _magic(path) == _MAGIC_HDF4


def hdf4_error(path: str) -> IngestError:
    """The refusal of an HDF4 file, with the conversion to run."""
    tif = PurePath(path).with_suffix(".tif").name
    return file_error(
        path, "is HDF4 (HDF-EOS, as MODIS and VIIRS granules ship), which the rasterio wheels cannot read "
        "(their GDAL has no HDF4 driver). Convert the layer you need to GeoTIFF with a GDAL that has HDF4 "
        f"(conda-forge gdal, say): 'gdalinfo {path}' lists its subdatasets, then "
        f"gdal_translate -of GTiff 'HDF4_EOS:EOS_GRID:\"{path}\":GRID:FIELD' {tif} (for MOD09GA, GRID:FIELD "
        "is MODIS_Grid_500m_2D:sur_refl_b01_1; the HDF scale factor stays in the band metadata), and ingest "
        "that GeoTIFF"
    )  # fmt: skip


def _split(variable: str | None) -> tuple[str | None, str | None]:
    if variable is None:
        return None, None
    group, _, name = variable.rpartition("/")
    return (group or None), name


def _open(path: str, group: str | None):  # type: ignore[no-untyped-def]
    import xarray as xr

    return xr.open_dataset(path, group=group, mask_and_scale=False, decode_times=False, cache=False)


def _dims(da) -> tuple[str | None, str | None, dict[str, int]]:  # type: ignore[no-untyped-def]
    ydim = next((str(d) for d in da.dims if d in _Y), None)
    xdim = next((str(d) for d in da.dims if d in _X), None)
    extra = {str(d): int(n) for d, n in da.sizes.items() if d not in (ydim, xdim)}
    return ydim, xdim, extra


def _crs(ds, name: str, path: str, ydim: str) -> str:  # type: ignore[no-untyped-def]
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    da = ds[name]
    gm = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
    if gm:
        if gm not in ds.variables:
            raise file_error(
                path, f"variable {name!r} names grid_mapping {gm!r}, which the file does not hold"
            )
        a = dict(ds[gm].attrs)
        text = a.get("crs_wkt") or a.get("spatial_ref")
        try:
            return (CRS.from_user_input(text) if text else CRS.from_cf(a)).to_wkt()
        except CRSError as e:
            raise file_error(path, f"grid mapping {gm!r} does not give a CRS: {e}") from None
    for where, attrs in ((f"variable {name!r}", da.attrs), ("the file", ds.attrs)):
        for key in _CRS_ATTRS:
            text = attrs.get(key)
            if isinstance(text, str) and text.strip():
                try:
                    return CRS.from_user_input(text).to_wkt()
                except CRSError as e:
                    raise file_error(
                        path, f"attribute {key!r} of {where} is not a CRS ({text[:60]!r}): {e}"
                    ) from None
    if ydim in ("lat", "latitude"):
        return CRS.from_epsg(4326).to_wkt()
    raise file_error(
        path, f"variable {name!r} has no CRS: no CF grid_mapping, no PROJ/WKT attribute "
        f"({', '.join(_CRS_ATTRS)}) on it or on the file, and no lat/lon dimensions; add one (e.g. "
        "rioxarray's da.rio.write_crs) or convert to GeoTIFF with the CRS assigned"
    )  # fmt: skip


def _step(values: np.ndarray, path: str, what: str) -> tuple[float, float]:
    v = np.asarray(values, dtype="float64")
    if v.size < 2:
        raise file_error(
            path, f"{what} has {v.size} value(s); a raster needs at least 2 cells per axis"
        )
    step = (v[-1] - v[0]) / (v.size - 1)
    if step == 0 or np.abs(v - (v[0] + step * np.arange(v.size))).max() > 0.01 * abs(step):
        raise file_error(path, f"{what} coordinate is not regularly spaced")
    return float(v[0]), float(step)


def _first_number(attrs, keys: tuple[str, ...]) -> float | None:  # type: ignore[no-untyped-def]
    for k in keys:
        v = attrs.get(k)
        if v is not None and np.size(v) == 1:
            f = float(np.asarray(v).ravel()[0])
            if math.isfinite(f):
                return f
    return None


def inspect_layer(path: str, *, layer: str | None = None):  # type: ignore[no-untyped-def]
    """Metadata of one NetCDF/HDF5 layer as a :class:`~kgml_grid.ingest.rasters.RasterInfo`.

    Raises
    ------
    IngestError
        Naming the file: unreadable, no such variable, several candidate variables and
        none chosen, a non-singleton extra dimension (several dates or bands in one file),
        no x/y coordinates, irregular or non-square cells, no CRS.
    """
    from affine import Affine

    from kgml_grid.ingest.rasters import RasterInfo

    group, name = _split(layer)
    try:
        ds = _open(path, group)
    except OSError as e:
        if group is not None:
            raise file_error(path, f"has no group {group!r} (layer {layer!r}): {e}") from None
        raise file_error(path, f"cannot be read as NetCDF/HDF5: {e}") from None
    except Exception as e:  # netCDF4/HDF5 raise many types for a bad file
        raise file_error(path, f"cannot be read as NetCDF/HDF5: {e}") from None
    with ds:
        grids = [str(n) for n, v in ds.data_vars.items() if _dims(v)[0] and _dims(v)[1]]
        if name is None:
            if len(grids) != 1:
                raise file_error(
                    path, f"holds {len(grids)} gridded variables ({', '.join(grids) or 'none on y/x or lat/lon'}); "
                    "choose one with layer= (--layer VAR=NAME; GROUP/NAME inside an HDF5 group)"
                )  # fmt: skip
            name = grids[0]
        elif name not in ds.data_vars:
            raise file_error(
                path, f"has no variable {name!r}; gridded variables: {', '.join(grids) or 'none'}"
            )
        da = ds[name]
        ydim, xdim, extra = _dims(da)
        if ydim is None or xdim is None:
            raise file_error(path, f"variable {name!r} has dims {da.dims}; expected y/x or lat/lon")
        wide = {d: n for d, n in extra.items() if n != 1}
        if wide:
            what = ", ".join(f"{d!r} of {n}" for d, n in wide.items())
            raise file_error(
                path, f"variable {name!r} has dims {da.dims} with {what}: a satellite file holds one date's "
                "layer (the date comes from the file name); split it into one file per date and band first "
                "(e.g. cdo splitsel,1, or xarray's isel + to_netcdf)"
            )  # fmt: skip
        for d in (ydim, xdim):
            if d not in ds.coords:
                raise file_error(path, f"dimension {d!r} of {name!r} has no coordinate values")
        xs, ys = np.asarray(ds[xdim].values, "float64"), np.asarray(ds[ydim].values, "float64")
        if xdim in ("lon", "longitude") and (xs > 180).any():
            xs = np.where(xs > 180, xs - 360, xs)
        x0, dx = _step(xs, path, xdim)
        y0, dy = _step(ys, path, ydim)
        if dx < 0:
            raise file_error(
                path, f"{xdim} runs east to west; only west-to-east grids are supported"
            )
        flip = dy > 0
        if flip:
            y0, dy = y0 + dy * (ys.size - 1), -dy
        if not math.isclose(dx, -dy, rel_tol=1e-4):
            raise file_error(
                path, f"cells are not square ({xdim} step {dx:g}, {ydim} step {-dy:g})"
            )
        wkt = _crs(ds, name, path, ydim)
        a = da.attrs
        nodata = _first_number(a, ("nodata", "_FillValue", "missing_value"))
        scale = _first_number(a, ("scale_factor",))
        offset = _first_number(a, ("add_offset",))
        ref = LayerRef(name, group, ydim, xdim, tuple(extra), flip)
        return RasterInfo(
            path, wkt, Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2), int(ys.size), int(xs.size),
            str(da.dtype), 1, nodata, 1.0 if scale is None else scale, 0.0 if offset is None else offset,
            layer=ref,
        )  # fmt: skip


def read_window(
    path: str, ref: LayerRef, height: int, row0: int, row1: int, col0: int, col1: int
) -> np.ndarray:
    """Raw values of rows ``row0:row1`` (north-up) and columns ``col0:col1`` of one layer."""
    rows = slice(height - row1, height - row0) if ref.flip_y else slice(row0, row1)
    try:
        with _open(path, ref.group) as ds:
            da = ds[ref.variable].isel(
                {ref.ydim: rows, ref.xdim: slice(col0, col1), **dict.fromkeys(ref.squeeze, 0)}
            )
            a = np.asarray(da.transpose(ref.ydim, ref.xdim).values)
    except Exception as e:  # HDF5/netCDF errors on a damaged file
        raise file_error(
            path, f"cannot read {ref.variable!r} (rows {row0}:{row1}, cols {col0}:{col1}): {e}"
        ) from None
    return a[::-1] if ref.flip_y else a
