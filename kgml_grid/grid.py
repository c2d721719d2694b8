"""Grid arithmetic: fine target grids, coarse weather grids and the mapping between them.

Pure functions on metadata only. Coordinates are cell centres; ``y`` runs north to
south (descending) as in rasters, ``x`` west to east.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class GridSpec:
    """A regular grid in a projected or geographic CRS.

    Attributes
    ----------
    crs : str
        Any CRS string pyproj understands (``"EPSG:5070"``).
    x0, y0 : float
        Upper-left corner (west edge, north edge) in CRS units.
    res : float
        Cell size in CRS units (square cells).
    ny, nx : int
        Number of rows and columns.
    """

    crs: str
    x0: float
    y0: float
    res: float
    ny: int
    nx: int

    def __post_init__(self) -> None:
        if self.ny < 1 or self.nx < 1:
            raise ValueError(f"grid shape must be positive, got ny={self.ny}, nx={self.nx}")
        if not self.res > 0:
            raise ValueError(f"grid resolution must be positive, got {self.res}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def x(self) -> np.ndarray:
        return self.x0 + self.res * (np.arange(self.nx) + 0.5)

    @property
    def y(self) -> np.ndarray:
        return self.y0 - self.res * (np.arange(self.ny) + 0.5)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north)."""
        return (self.x0, self.y0 - self.res * self.ny, self.x0 + self.res * self.nx, self.y0)

    def coarsen(self, factor: int) -> GridSpec:
        """The grid whose cells each cover ``factor x factor`` of these cells.

        The coarse grid shares the upper-left corner and covers the whole fine grid
        (its last row/column may stick out when the shape is not a multiple).
        """
        if factor < 1:
            raise ValueError(f"coarsening factor must be >= 1, got {factor}")
        return GridSpec(
            self.crs,
            self.x0,
            self.y0,
            self.res * factor,
            -(-self.ny // factor),
            -(-self.nx // factor),
        )

    def coords(self) -> dict[str, xr.DataArray]:
        """CF-annotated ``x``/``y`` coordinate variables."""
        units = "degrees" if _is_geographic(self.crs) else "m"
        xname, yname = (
            ("longitude", "latitude")
            if _is_geographic(self.crs)
            else ("projection_x_coordinate", "projection_y_coordinate")
        )
        return {
            "y": xr.DataArray(
                self.y, dims="y", attrs={"standard_name": yname, "units": units, "axis": "Y"}
            ),
            "x": xr.DataArray(
                self.x, dims="x", attrs={"standard_name": xname, "units": units, "axis": "X"}
            ),
        }


def _is_geographic(crs: str) -> bool:
    from pyproj import CRS

    return CRS.from_user_input(crs).is_geographic


def spec_from_coords(x: np.ndarray, y: np.ndarray, crs: str, *, name: str = "grid") -> GridSpec:
    """Recover a :class:`GridSpec` from 1-D centre coordinates, refusing irregular ones."""
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    if x.size < 1 or y.size < 1:
        raise ValueError(f"{name}: empty x or y coordinate")
    res = _regular_step(x, f"{name}: x") if x.size > 1 else None
    yres = _regular_step(-y, f"{name}: y") if y.size > 1 else None
    if res is None:
        res = yres
    if res is None:
        raise ValueError(f"{name}: a 1x1 grid has no resolution")
    if yres is not None and not np.isclose(res, yres, rtol=1e-6):
        raise ValueError(f"{name}: cells are not square (dx={res}, dy={yres})")
    return GridSpec(crs, float(x[0] - res / 2), float(y[0] + res / 2), float(res), y.size, x.size)


def _regular_step(v: np.ndarray, what: str) -> float:
    d = np.diff(v)
    if not (d > 0).all():
        raise ValueError(
            f"{what} coordinate must be strictly "
            f"{'decreasing (north to south)' if 'y' in what.split(':')[-1] else 'increasing'}"
        )
    if not np.allclose(d, d[0], rtol=1e-6, atol=0):
        raise ValueError(f"{what} coordinate is not regularly spaced (steps {d.min()}..{d.max()})")
    return float(d[0])


def coarse_index(
    fine: GridSpec, coarse: GridSpec, *, name: str = "weather"
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the coarse cell holding each fine pixel centre.

    Works across CRSs (a lat/lon weather grid over an Albers target grid) by
    transforming the fine centres. Returns two int arrays of shape ``fine.shape``.

    Raises
    ------
    ValueError
        If any fine pixel falls outside the coarse grid.
    """
    yy, xx = np.meshgrid(fine.y, fine.x, indexing="ij")
    if not _same_crs(fine.crs, coarse.crs):
        from pyproj import Transformer

        tr = Transformer.from_crs(fine.crs, coarse.crs, always_xy=True)
        xx, yy = tr.transform(xx, yy)
    col = np.floor((xx - coarse.x0) / coarse.res).astype("int64")
    row = np.floor((coarse.y0 - yy) / coarse.res).astype("int64")
    bad = (row < 0) | (row >= coarse.ny) | (col < 0) | (col >= coarse.nx)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} grid does not cover the target grid: fine pixel (y={fine.y[r]:.6g}, "
            f"x={fine.x[c]:.6g}) falls outside {name} bounds {coarse.bounds} "
            f"({int(bad.sum())} pixels outside)"
        )
    return row, col


def check_covers(fine: GridSpec, coarse: GridSpec, *, name: str = "weather") -> None:
    """Refuse a coarse grid that does not hold every fine pixel centre, in bounded memory.

    Same test and message as :func:`coarse_index`, without its per-pixel arrays: only the
    outer ring of fine pixel centres is transformed (the image of the fine rectangle is
    bounded by the image of its edges, and the coarse grid is a rectangle in its own
    CRS, so a ring inside means every centre inside). Only when the ring is not inside
    are the pixels counted, strip by strip, to name the first one outside. On a CONUS
    grid (2e8 pixels) this takes milliseconds where :func:`coarse_index` takes minutes
    and gigabytes.

    Raises
    ------
    ValueError
        If any fine pixel falls outside the coarse grid (first pixel, row-major, and count).
    """
    rows = np.concatenate([np.zeros(fine.nx, int), np.full(fine.nx, fine.ny - 1),
                           np.arange(fine.ny), np.arange(fine.ny)])  # fmt: skip
    cols = np.concatenate([np.arange(fine.nx), np.arange(fine.nx),
                           np.zeros(fine.ny, int), np.full(fine.ny, fine.nx - 1)])  # fmt: skip
    if not _outside(fine, coarse, fine.y[rows], fine.x[cols]).any():
        return
    first: tuple[int, int] | None = None
    n_bad = 0
    step = max(1, 2_000_000 // fine.nx)  # rows per strip: ~2e6 pixels
    for r0 in range(0, fine.ny, step):
        yy, xx = np.meshgrid(fine.y[r0 : r0 + step], fine.x, indexing="ij")
        bad = _outside(fine, coarse, yy, xx)
        n_bad += int(bad.sum())
        if first is None and bad.any():
            r, c = np.argwhere(bad)[0]
            first = (r0 + int(r), int(c))
    assert first is not None  # the ring found one
    raise ValueError(
        f"{name} grid does not cover the target grid: fine pixel (y={fine.y[first[0]]:.6g}, "
        f"x={fine.x[first[1]]:.6g}) falls outside {name} bounds {coarse.bounds} "
        f"({n_bad} pixels outside)"
    )


def _outside(fine: GridSpec, coarse: GridSpec, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Which fine-CRS points ``(yy, xx)`` fall outside the coarse grid's cells."""
    if not _same_crs(fine.crs, coarse.crs):
        xx, yy = _transformer(fine.crs, coarse.crs).transform(xx, yy)
    col = np.floor((np.asarray(xx) - coarse.x0) / coarse.res)
    row = np.floor((coarse.y0 - np.asarray(yy)) / coarse.res)
    # NaN/inf (outside the transform's area of use) compare False: count them as outside
    return ~((row >= 0) & (row < coarse.ny) & (col >= 0) & (col < coarse.nx))


def cells_spanned(
    fine: GridSpec, coarse: GridSpec, tile: tuple[int, int], *, samples: int = 3
) -> tuple[int, int]:
    """At most how many coarse rows and columns one tile of ``tile`` fine pixels touches.

    In one CRS that is ``ceil(tile * fine.res / coarse.res) + 2`` per side (the ``+ 2``
    for a tile that straddles cell edges). Across CRSs the two resolutions are in
    different units (metres and degrees), so the tile's footprint is transformed into the
    coarse CRS instead (edges densified, so curved edges are covered) at ``samples x
    samples`` positions over the grid (corners, edge middles, centre: a map projection's
    scale changes monotonically over a region this size), and the largest extent is
    taken. Pure: metadata only.

    Returns
    -------
    (rows, cols) : tuple of int
    """
    ty, tx = min(tile[0], fine.ny), min(tile[1], fine.nx)
    if _same_crs(fine.crs, coarse.crs):
        ratio = fine.res / coarse.res
        return math.ceil(ty * ratio) + 2, math.ceil(tx * ratio) + 2
    tr = _transformer(fine.crs, coarse.crs)
    rows = cols = 0
    for r0 in {round(i * (fine.ny - ty) / max(samples - 1, 1)) for i in range(samples)}:
        for c0 in {round(j * (fine.nx - tx) / max(samples - 1, 1)) for j in range(samples)}:
            w, n = fine.x0 + c0 * fine.res, fine.y0 - r0 * fine.res
            b = tr.transform_bounds(w, n - ty * fine.res, w + tx * fine.res, n, densify_pts=21)
            cols = max(cols, math.ceil((b[2] - b[0]) / coarse.res) + 2)
            rows = max(rows, math.ceil((b[3] - b[1]) / coarse.res) + 2)
    return rows, cols


@functools.lru_cache(maxsize=32)
def _transformer(src: str, dst: str):  # type: ignore[no-untyped-def]
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _same_crs(a: str, b: str) -> bool:
    if a == b:
        return True
    from pyproj import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def lonlat(grid: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of every cell centre, shape ``grid.shape``."""
    from pyproj import Transformer

    yy, xx = np.meshgrid(grid.y, grid.x, indexing="ij")
    if _is_geographic(grid.crs):
        return xx, yy
    tr = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(xx, yy)
    return np.asarray(lon), np.asarray(lat)


def centred_grid(lon: float, lat: float, *, ny: int, nx: int, res: float, crs: str) -> GridSpec:
    """A grid of ``ny x nx`` cells of size ``res`` centred on (lon, lat), snapped to ``res``."""
    from pyproj import Transformer

    cx, cy = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    x0 = np.floor((cx - nx * res / 2) / res) * res
    y0 = np.ceil((cy + ny * res / 2) / res) * res
    return GridSpec(crs, float(x0), float(y0), float(res), ny, nx)
