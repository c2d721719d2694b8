"""Pure tile arithmetic: output tiles, their bounds, the source window that covers each.

Nothing here reads a file. The I/O in :mod:`kgml_grid.ingest.rasters` asks these functions
which part of a source raster one output tile needs, reads only that, and so holds one
tile's worth of data at a time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from affine import Affine

from kgml_grid.grid import GridSpec

#: Kernel radius in source pixels of each GDAL resampling method (at 1:1 scale).
KERNEL_RADIUS = {
    "nearest": 1, "bilinear": 1, "cubic": 2, "cubic_spline": 2, "lanczos": 3, "average": 1,
    "mode": 1, "max": 1, "min": 1, "med": 1, "q1": 1, "q3": 1, "sum": 1, "rms": 1,
}  # fmt: skip


@dataclass(frozen=True, order=True)
class Tile:
    """One rectangle of the output grid, rows ``row0:row1`` and columns ``col0:col1``.

    Immutable and hashable: the key of one unit of work, shared by planning and writing.
    """

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)

    @property
    def region(self) -> dict[str, slice]:
        """The Zarr region (``y``, ``x`` slices) of the tile."""
        return {"y": slice(self.row0, self.row1), "x": slice(self.col0, self.col1)}


@dataclass(frozen=True)
class PixelWindow:
    """A window of a source raster: rows ``row0:row1``, columns ``col0:col1``."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)


def plan_tiles(shape: tuple[int, int], tile_shape: tuple[int, int]) -> tuple[Tile, ...]:
    """Tiles of at most ``tile_shape`` covering a grid of ``shape``, row by row.

    Tiles start at multiples of ``tile_shape`` so that each one is exactly one Zarr chunk
    of a cube chunked with ``tile_shape``; the last row and column may be smaller.
    """
    ny, nx = shape
    ty, tx = tile_shape
    if ty < 1 or tx < 1:
        raise ValueError(f"tile shape must be positive, got {tile_shape}")
    return tuple(
        Tile(r, min(r + ty, ny), c, min(c + tx, nx))
        for r in range(0, ny, ty)
        for c in range(0, nx, tx)
    )


def tile_transform(grid: GridSpec, tile: Tile) -> Affine:
    """Affine transform (upper-left corner, north-up) of ``tile`` of ``grid``."""
    return Affine(
        grid.res,
        0.0,
        grid.x0 + tile.col0 * grid.res,
        0.0,
        -grid.res,
        grid.y0 - tile.row0 * grid.res,
    )


def tile_bounds(grid: GridSpec, tile: Tile) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` of ``tile`` in the grid's CRS."""
    return (
        grid.x0 + tile.col0 * grid.res,
        grid.y0 - tile.row1 * grid.res,
        grid.x0 + tile.col1 * grid.res,
        grid.y0 - tile.row0 * grid.res,
    )


def bounds_in(
    bounds: tuple[float, float, float, float], src_crs: str, dst_crs: str
) -> tuple[float, float, float, float]:
    """``bounds`` in ``src_crs`` expressed in ``dst_crs``, densified so curved edges are covered."""
    from kgml_grid.grid import _same_crs

    if _same_crs(src_crs, dst_crs):
        return bounds
    return tuple(_transformer(src_crs, dst_crs).transform_bounds(*bounds, densify_pts=21))  # type: ignore[return-value]


def source_window(
    bounds: tuple[float, float, float, float],
    transform: Affine,
    size: tuple[int, int],
    *,
    pad: int,
) -> PixelWindow | None:
    """The window of a north-up raster that covers ``bounds`` (in the raster's CRS).

    Parameters
    ----------
    bounds : tuple of float
        ``(west, south, east, north)`` in the raster's CRS.
    transform : Affine
        The raster's north-up geotransform.
    size : tuple of int
        ``(height, width)`` of the raster.
    pad : int
        Extra pixels on every side (the resampling kernel's reach).

    Returns
    -------
    PixelWindow or None
        Clipped to the raster; ``None`` when the bounds miss the raster entirely.
    """
    w, s, e, n = bounds
    col0 = math.floor((w - transform.c) / transform.a) - pad
    col1 = math.ceil((e - transform.c) / transform.a) + pad
    row0 = math.floor((transform.f - n) / -transform.e) - pad
    row1 = math.ceil((transform.f - s) / -transform.e) + pad
    height, width = size
    col0, col1 = max(col0, 0), min(col1, width)
    row0, row1 = max(row0, 0), min(row1, height)
    if col0 >= col1 or row0 >= row1:
        return None
    return PixelWindow(row0, row1, col0, col1)


def kernel_pad(resampling: str, *, src_res: float, dst_res: float) -> int:
    """Source pixels to add around a window so the resampling kernel never runs short.

    GDAL widens its kernels by the downsampling ratio when the target is coarser than
    the source, so the pad grows with ``dst_res / src_res``.
    """
    ratio = max(1.0, dst_res / src_res) if src_res > 0 else 1.0
    return KERNEL_RADIUS.get(resampling, 3) * math.ceil(ratio) + 2


def index_blocks(start: int, stop: int, chunk: int) -> tuple[slice, ...]:
    """Slices of ``start:stop`` cut at multiples of ``chunk`` (so each lies in one Zarr chunk)."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    out = []
    i = start
    while i < stop:
        j = min((i // chunk + 1) * chunk, stop)
        out.append(slice(i, j))
        i = j
    return tuple(out)


def daily_axis(first: pd.Timestamp, last: pd.Timestamp) -> pd.DatetimeIndex:
    """Every day from ``first`` to ``last`` inclusive, at midnight."""
    return pd.date_range(pd.Timestamp(first).normalize(), pd.Timestamp(last).normalize(), freq="D")


def pixel_size_in(transform: Affine, size: tuple[int, int], src_crs: str, dst_crs: str) -> float:
    """Approximate side of a source pixel (at the raster's centre) in ``dst_crs`` units."""
    from kgml_grid.grid import _same_crs

    if _same_crs(src_crs, dst_crs):
        return float(math.sqrt(abs(transform.a * transform.e)))
    h, w = size
    cx, cy = transform @ (w / 2, h / 2)
    xs = np.array([cx, cx + transform.a, cx])
    ys = np.array([cy, cy, cy + transform.e])
    x, y = _transformer(src_crs, dst_crs).transform(xs, ys)
    dx = math.hypot(x[1] - x[0], y[1] - y[0])
    dy = math.hypot(x[2] - x[0], y[2] - y[0])
    return float(math.sqrt(dx * dy))


@functools.lru_cache(maxsize=64)
def _transformer(src_crs: str, dst_crs: str):  # type: ignore[no-untyped-def]
    from pyproj import Transformer

    return Transformer.from_crs(src_crs, dst_crs, always_xy=True)
