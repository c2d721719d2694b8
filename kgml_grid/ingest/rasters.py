"""Reading GeoTIFF/COG rasters one output tile at a time, and checking them first.

:func:`inspect_raster` reads only metadata and refuses a file that cannot be used (missing,
unreadable, no CRS, rotated, a band not chosen in a multi-band file or out of range, an
unexpected CRS), naming it. NetCDF/HDF5 layers go through
:mod:`kgml_grid.ingest.ncraster` and are read the same way; HDF4 is refused with the
``gdal_translate`` to run. :func:`read_tile` then
reads, for one output tile, only the source window that covers it (plus the resampling
kernel's reach), turns raw values into physical ones (nodata -> NaN, ``raw * scale +
offset``) and reprojects that window onto the tile with ``rasterio.warp.reproject``. A whole
source raster is never read: memory is bounded by one tile's window, and GDAL's block
cache is capped by :func:`gdal_env` so it cannot grow with the raster either.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from kgml_grid.grid import GridSpec, _same_crs
from kgml_grid.ingest import ncraster
from kgml_grid.ingest import tiles as _tiles
from kgml_grid.ingest.errors import file_error
from kgml_grid.ingest.ncraster import LayerRef
from kgml_grid.ingest.tiles import PixelWindow, Tile

#: GDAL block cache while ingesting (MiB): small, so it cannot hold a whole raster.
GDAL_CACHE_MB = 32

RESAMPLING_METHODS = tuple(_tiles.KERNEL_RADIUS)

_SCALE_TAGS = ("scale_factor", "SCALE_FACTOR", "scale", "Scale")
_OFFSET_TAGS = ("add_offset", "ADD_OFFSET", "offset", "Offset")


@dataclass(frozen=True)
class ValueRule:
    """How a raster's raw values become physical values; ``None`` means "from the file".

    Attributes
    ----------
    nodata : float, optional
        Raw value meaning "no data" (overrides the file's nodata).
    scale, offset : float, optional
        ``physical = raw * scale + offset`` (override the file's band scale/offset or its
        ``scale_factor``/``add_offset`` tags).
    valid_range : tuple of float, optional
        Raw values outside ``[lo, hi]`` are no data (MODIS LAI fill classes 249-255, say).
    """

    nodata: float | None = None
    scale: float | None = None
    offset: float | None = None
    valid_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class RasterInfo:
    """What :func:`inspect_raster` learned about one file (metadata only)."""

    path: str
    crs: str
    transform: Affine
    height: int
    width: int
    dtype: str
    band: int
    nodata: float | None
    scale: float
    offset: float
    layer: LayerRef | None = None  # a NetCDF/HDF5 layer (None: read through GDAL)
    description: str | None = None  # a TIFF description naming a scale GDAL does not apply

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def values(self, rule: ValueRule) -> tuple[float | None, float, float]:
        """Effective ``(nodata, scale, offset)``: the rule's where given, else the file's."""
        nodata = rule.nodata if rule.nodata is not None else self.nodata
        scale = rule.scale if rule.scale is not None else self.scale
        offset = rule.offset if rule.offset is not None else self.offset
        return nodata, scale, offset


@functools.cache
def _libc() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> None:
    """Give freed heap pages back to the OS after a tile (glibc ``malloc_trim``; else a no-op).

    Without it glibc's adaptive mmap threshold lets each tile's freed buffers fragment the
    heap, and the resident size creeps up by a few MB per tile on a long ingestion.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # type: ignore[attr-defined]


@contextmanager
def gdal_env(cache_mb: int = GDAL_CACHE_MB) -> Iterator[None]:
    """A rasterio/GDAL environment whose block cache is capped at ``cache_mb`` MiB."""
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=int(cache_mb) * 2**20, GDAL_NUM_THREADS=1):
        yield


def _tag_float(tags: dict[str, str], keys: Sequence[str], path: str, what: str) -> float | None:
    for k in keys:
        if k in tags:
            try:
                return float(tags[k])
            except ValueError:
                raise file_error(path, f"tag {k}={tags[k]!r} is not a number ({what})") from None
    return None


#: Words of a TIFF description that mean a scale or unit GDAL does not know (GPM IMERG's
#: ``Unit=0.1(mm) ScaleFactor=10``).
_DESCRIPTION_SCALE = re.compile(r"scale\s*factor|scale\s*=|unit\s*=", re.IGNORECASE)


def inspect_raster(
    path: str | os.PathLike[str], *, band: int | None = None, expect_crs: str | None = None,
    layer: str | None = None,
) -> RasterInfo:  # fmt: skip
    """Open ``path``, check it can be ingested, and return its metadata.

    Parameters
    ----------
    band : int, optional
        Band of a GeoTIFF (1-based); required when the file has several bands.
    layer : str, optional
        Variable of a NetCDF/HDF5 file (``group/name`` inside a group); required when
        the file has several gridded variables.

    Raises
    ------
    IngestError
        Naming the file: it does not exist, cannot be read as a raster (HDF4: with the
        conversion to run), has no CRS or no geotransform, is rotated or south-up, has
        several bands and none was chosen, lacks ``band``, or its CRS differs from
        ``expect_crs``.
    """
    import rasterio
    from rasterio.errors import RasterioError

    p = os.fspath(path)
    if "://" not in p and not Path(p).exists():
        raise file_error(p, "no such file")
    if ncraster.is_netcdf(p):
        if band not in (None, 1):
            raise file_error(p, f"band={band} applies to multi-band GeoTIFFs; choose a NetCDF/HDF5 layer with "
                                "layer= (--layer VAR=NAME)")  # fmt: skip
        info = ncraster.inspect_layer(p, layer=layer)
        _check_geo(info.crs, info.transform, p, expect_crs)
        return info
    if layer is not None:
        raise file_error(p, f"layer={layer!r} applies to NetCDF/HDF5 files; this one is read by GDAL "
                            "(for a multi-band GeoTIFF choose band=, --band VAR=N)")  # fmt: skip
    description = None
    try:
        with rasterio.open(p) as src:
            crs = src.crs
            transform = src.transform
            count = src.count
            if band is None:
                if count != 1:
                    names = ", ".join(f"{i + 1}: {d}" for i, d in enumerate(src.descriptions) if d)
                    raise file_error(
                        p, f"has {count} bands{f' ({names})' if names else ''}; choose one with band= "
                        f"(--band VAR=N, 1..{count}): a multi-band file is never read as band 1 silently"
                    )  # fmt: skip
                band = 1
            if not 1 <= band <= count:
                raise file_error(p, f"has {count} band(s); band {band} was requested")
            dtype = src.dtypes[band - 1]
            nodata = src.nodatavals[band - 1]
            scale = float(src.scales[band - 1]) if src.scales else 1.0
            offset = float(src.offsets[band - 1]) if src.offsets else 0.0
            if scale == 1.0 and offset == 0.0:
                tags = {**src.tags(), **src.tags(band)}
                scale = _tag_float(tags, _SCALE_TAGS, p, "scale factor") or 1.0
                offset = _tag_float(tags, _OFFSET_TAGS, p, "offset") or 0.0
                text = tags.get("TIFFTAG_IMAGEDESCRIPTION") or src.descriptions[band - 1] or ""
                if scale == 1.0 and offset == 0.0 and _DESCRIPTION_SCALE.search(text):
                    description = text
            height, width = src.height, src.width
    except RasterioError as e:
        if ncraster.is_hdf4(p):
            raise ncraster.hdf4_error(p) from None
        raise file_error(p, f"cannot be read as a raster: {e}") from None
    _check_geo(crs.to_wkt() if crs is not None else None, transform, p, expect_crs)
    return RasterInfo(
        p, crs.to_wkt(), transform, int(height), int(width), str(dtype), band,
        None if nodata is None else float(nodata), scale, offset, description=description,
    )  # fmt: skip


def _check_geo(wkt: str | None, transform: Affine, p: str, expect_crs: str | None) -> None:
    if wkt is None:
        raise file_error(
            p, "has no CRS (no georeferencing metadata); assign one, e.g. with "
            "'gdal_edit.py -a_srs EPSG:nnnn', before ingesting"
        )  # fmt: skip
    if transform.is_identity:
        raise file_error(
            p, "has no geotransform (pixel coordinates only); it cannot be placed on a map"
        )
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise file_error(
            p, f"has a rotated or south-up geotransform {tuple(transform)[:6]}; warp it north-up first "
            "(gdalwarp)"
        )  # fmt: skip
    if expect_crs is not None and not _same_crs(wkt, expect_crs):
        raise file_error(p, f"CRS is {_label(wkt)}, expected {_label(expect_crs)}")


def _label(crs: str) -> str:
    from kgml_grid.ingest.target import crs_label

    try:
        return crs_label(crs)
    except Exception:
        return crs[:60]


def check_consistent(infos: Sequence[RasterInfo], *, what: str) -> None:
    """Refuse files of one series (one variable's dates) whose CRS, shape or grid differ.

    The first file is the reference; the message names the odd file and the reference.
    """
    if not infos:
        return
    ref = infos[0]
    for info in infos[1:]:
        if not _same_crs(info.crs, ref.crs):
            raise file_error(
                info.path, f"CRS {_label(info.crs)} differs from {_label(ref.crs)} of the other "
                f"{what} files (first: {ref.path})"
            )  # fmt: skip
        if info.shape != ref.shape:
            raise file_error(
                info.path, f"shape {info.shape} differs from {ref.shape} of the other {what} files "
                f"(first: {ref.path})"
            )  # fmt: skip
        if not np.allclose(tuple(info.transform)[:6], tuple(ref.transform)[:6], rtol=0,
                           atol=1e-6 * abs(ref.transform.a)):  # fmt: skip
            raise file_error(
                info.path, f"grid (origin {info.transform.c}, {info.transform.f}, pixel "
                f"{info.transform.a}) differs from the other {what} files' (origin "
                f"{ref.transform.c}, {ref.transform.f}, pixel {ref.transform.a}; first: {ref.path})"
            )  # fmt: skip


def check_overlap(info: RasterInfo, grid: GridSpec) -> None:
    """Refuse a raster that does not overlap the target grid at all."""
    w, s, e, n = _tiles.bounds_in(grid.bounds, grid.crs, info.crs)
    rw, rs, re_, rn = info.bounds
    if not all(math.isfinite(v) for v in (w, s, e, n)) or w >= re_ or e <= rw or s >= rn or n <= rs:
        raise file_error(
            info.path, f"does not overlap the target grid (raster bounds {info.bounds} in its CRS "
            f"{_label(info.crs)}; target bounds {tuple(round(v, 3) for v in (w, s, e, n))} there)"
        )  # fmt: skip


def source_window(
    info: RasterInfo, grid: GridSpec, tile: Tile, *, resampling: str, dst_res: float | None = None
) -> PixelWindow | None:
    """The window of ``info`` that one output tile needs (pure: metadata only)."""
    src_res = _tiles.pixel_size_in(info.transform, info.shape, info.crs, grid.crs)
    pad = _tiles.kernel_pad(resampling, src_res=src_res, dst_res=dst_res or grid.res)
    bounds = _tiles.bounds_in(_tiles.tile_bounds(grid, tile), grid.crs, info.crs)
    if not all(math.isfinite(v) for v in bounds):
        return None
    return _tiles.source_window(bounds, info.transform, info.shape, pad=pad)


def to_physical(
    raw: np.ndarray,
    *,
    nodata: float | None,
    scale: float,
    offset: float,
    valid_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """``raw * scale + offset`` as float32, NaN where raw is nodata, non-finite or out of range.

    A float32 ``raw`` is converted in place (its memory is reused), others are copied once.
    """
    bad = np.zeros(raw.shape, dtype=bool)
    if nodata is not None:
        bad |= np.isnan(raw) if math.isnan(nodata) else raw == nodata
    if raw.dtype.kind == "f":
        bad |= ~np.isfinite(raw)
    if valid_range is not None:
        bad |= (raw < valid_range[0]) | (raw > valid_range[1])
    out = raw.astype(np.float32, copy=False)  # reuses float32 input: raw is ours to spend
    if scale != 1.0:
        out *= np.float32(scale)
    if offset != 0.0:
        out += np.float32(offset)
    out[bad] = np.nan
    return out


def _read_window(info: RasterInfo, win: PixelWindow) -> np.ndarray:
    if info.layer is not None:
        return ncraster.read_window(
            info.path, info.layer, info.height, win.row0, win.row1, win.col0, win.col1
        )
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    try:
        with rasterio.open(info.path) as src:
            return src.read(
                info.band,
                window=Window(win.col0, win.row0, win.col1 - win.col0, win.row1 - win.row0),
            )
    except RasterioError as e:
        raise file_error(info.path, f"cannot be read (window rows {win.row0}:{win.row1}, cols "
                                    f"{win.col0}:{win.col1}): {e}") from None  # fmt: skip


def _window_transform(info: RasterInfo, win: PixelWindow) -> Affine:
    return info.transform @ Affine.translation(win.col0, win.row0)


def read_tile(
    info: RasterInfo,
    grid: GridSpec,
    tile: Tile,
    *,
    rule: ValueRule = ValueRule(),
    resampling: str = "bilinear",
) -> np.ndarray:
    """One output tile of ``info`` reprojected onto ``grid``: float32, NaN where no data.

    Only the source window covering the tile is read.
    """
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    out = np.full(tile.shape, np.nan, dtype=np.float32)
    win = source_window(info, grid, tile, resampling=resampling)
    if win is None:
        return out
    nodata, scale, offset = info.values(rule)
    vals = to_physical(_read_window(info, win), nodata=nodata, scale=scale, offset=offset,
                       valid_range=rule.valid_range)  # fmt: skip
    reproject(
        vals, out,
        src_transform=_window_transform(info, win), src_crs=info.crs, src_nodata=np.nan,
        dst_transform=_tiles.tile_transform(grid, tile), dst_crs=grid.crs, dst_nodata=np.nan,
        resampling=Resampling[resampling], num_threads=1,
    )  # fmt: skip
    return out


def read_codes(
    info: RasterInfo, grid: GridSpec, tile: Tile, *, factor: int, nodata: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Class codes of one tile on a grid ``factor`` times finer than ``grid`` (nearest).

    Returns
    -------
    codes : ndarray of int16, shape ``(ny * factor, nx * factor)``
        The class code of each fine cell; -1 where the raster has no data.
    raw_codes : ndarray of int64
        The distinct raw values of the window read (for checking them against a legend).

    Raises
    ------
    IngestError
        Naming the file when a value is not an integer class code in 0..255.
    """
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    fy, fx = tile.shape[0] * factor, tile.shape[1] * factor
    out = np.full((fy, fx), -1, dtype=np.int16)
    fine_res = grid.res / factor
    win = source_window(info, grid, tile, resampling="nearest", dst_res=fine_res)
    if win is None:
        return out, np.zeros(0, dtype=np.int64)
    raw = _read_window(info, win)
    if raw.size:
        lo, hi = raw.min(), raw.max()
        if lo < 0 or hi > 255:
            code = lo if lo < 0 else hi
            raise file_error(info.path, f"class code {code} is outside the CDL table 0..255")
    counts = np.zeros(256, dtype=np.int64)
    for r in range(0, raw.shape[0], 256):  # bincount copies to int64: a band of rows at a time
        counts += np.bincount(raw[r : r + 256].ravel().astype(np.int64), minlength=256)
    present = np.flatnonzero(counts)
    t = _tiles.tile_transform(grid, tile)
    fine = Affine(fine_res, 0.0, t.c, 0.0, -fine_res, t.f)
    reproject(
        raw.astype(np.int16), out,
        src_transform=_window_transform(info, win), src_crs=info.crs,
        src_nodata=None if nodata is None else int(nodata),
        dst_transform=fine, dst_crs=grid.crs, dst_nodata=-1,
        resampling=Resampling.nearest, num_threads=1,
    )  # fmt: skip
    return out, present
