"""Cell areas of a target grid (m2), for area-weighted budgets.

A projected grid's cells are ``res x res`` in the CRS's own units (metres): the
projected area, exact for an equal-area CRS such as EPSG:5070 (CONUS Albers, the
grid of the synthetic worlds and of the CDL). A geographic grid's cells are
lon/lat rectangles whose area on the CRS's ellipsoid is computed exactly
(:meth:`pyproj.Geod.polygon_area_perimeter`, one row at a time: every cell of a row
has the same area).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from kgml_grid.grid import GridSpec

__all__ = ["cell_area"]


def cell_area(grid: GridSpec) -> xr.DataArray:
    """Area of every cell ``(y, x)`` in m2.

    Raises
    ------
    ValueError
        For a projected CRS whose unit is not the metre (the area would not be m2).
    """
    from pyproj import CRS, Geod

    crs = CRS.from_user_input(grid.crs)
    if crs.is_geographic:
        geod = crs.get_geod() or Geod(ellps="WGS84")
        half = grid.res / 2
        rows = np.empty(grid.ny)
        for i, lat in enumerate(grid.y):
            lons = [0.0, grid.res, grid.res, 0.0]
            lats = [lat - half, lat - half, lat + half, lat + half]
            rows[i] = abs(geod.polygon_area_perimeter(lons, lats)[0])
        area = np.repeat(rows[:, None], grid.nx, axis=1)
    else:
        unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
        if unit not in ("metre", "meter"):
            raise ValueError(f"grid CRS {grid.crs}: axis unit {unit!r}; cell areas need metres")
        area = np.full(grid.shape, grid.res * grid.res)
    return xr.DataArray(area, dims=("y", "x"), coords={"y": grid.y, "x": grid.x},
                        attrs={"units": "m2", "long_name": "cell area"})  # fmt: skip
