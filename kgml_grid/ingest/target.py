"""The target grid and the chunking of the cubes ingestion writes.

The fine target grid (satellite, soil and crop cubes) is a :class:`~kgml_grid.grid.GridSpec`,
given as a CRS, bounds and a resolution (:func:`target_grid`) or taken from an existing cube
or catalog (:func:`grid_like`). Weather keeps its native grid and only uses the target to
decide which part of it to keep.

Cubes are chunked for the upscaling plan: a space tile of ``y x x`` cells and a time chunk
(one year of days by default, one year per chunk for the crop cube). Ingestion processes
the target grid in exactly these space tiles, so a tile is both the unit of memory and the
unit of writing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from kgml_grid.grid import GridSpec
from kgml_grid.ingest.errors import IngestError

#: Default chunks of ingested cubes: a 256 x 256 space tile, 365 days, one year.
DEFAULT_CHUNKS: Mapping[str, int] = {"time": 365, "year": 1, "y": 256, "x": 256}


def resolve_chunks(chunks: Mapping[str, int] | None = None) -> dict[str, int]:
    """Default chunks updated with ``chunks``, each a positive integer.

    Raises
    ------
    IngestError
        For an unknown dimension or a chunk size below 1.
    """
    out = dict(DEFAULT_CHUNKS)
    for dim, n in (chunks or {}).items():
        if dim not in DEFAULT_CHUNKS:
            raise IngestError(f"chunks: unknown dimension {dim!r}; use {', '.join(DEFAULT_CHUNKS)}")
        if int(n) != n or int(n) < 1:
            raise IngestError(f"chunks: {dim}={n!r} must be a positive integer")
        out[dim] = int(n)
    return out


def crs_label(crs: str) -> str:
    """``EPSG:nnnn`` when pyproj can identify ``crs``, else the string as given."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    code = c.to_epsg()
    return f"EPSG:{code}" if code else str(crs)


def target_grid(
    *,
    crs: str,
    bounds: tuple[float, float, float, float],
    res: float,
    bounds_crs: str | None = None,
) -> GridSpec:
    """The grid of ``res`` cells in ``crs`` covering ``bounds``, snapped to multiples of ``res``.

    Parameters
    ----------
    crs : str
        Target CRS (``"EPSG:5070"``).
    bounds : tuple of float
        ``(west, south, east, north)`` in ``bounds_crs`` (default: ``crs``).
    res : float
        Cell size in units of ``crs``.
    bounds_crs : str, optional
        CRS of ``bounds`` when they are not in ``crs`` (``"EPSG:4326"`` for lon/lat).

    Returns
    -------
    GridSpec
        Upper-left corner snapped outward to a multiple of ``res``; the grid covers the
        bounds completely.
    """
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(crs)
    except CRSError as e:
        raise IngestError(f"target CRS {crs!r} is not understood: {e}") from None
    if not res > 0:
        raise IngestError(f"target resolution must be positive, got {res}")
    w, s, e, n = (float(v) for v in bounds)
    if bounds_crs is not None:
        from pyproj import Transformer

        w, s, e, n = Transformer.from_crs(bounds_crs, crs, always_xy=True).transform_bounds(
            w, s, e, n, densify_pts=21
        )
    if not (e > w and n > s):
        raise IngestError(f"target bounds {bounds} are empty (need west < east, south < north)")
    x0 = math.floor(w / res) * res
    y0 = math.ceil(n / res) * res
    nx = max(1, math.ceil((e - x0) / res - 1e-9))
    ny = max(1, math.ceil((y0 - s) / res - 1e-9))
    return GridSpec(str(crs), float(x0), float(y0), float(res), int(ny), int(nx))


def grid_like(path: str | os.PathLike[str]) -> GridSpec:
    """The fine grid of an existing cube (a ``.zarr`` store) or catalog (a YAML file).

    Raises
    ------
    IngestError
        If ``path`` is neither, or holds no fine-grid layer.
    """
    import xarray as xr

    from kgml_grid import cubes
    from kgml_grid.catalog import CatalogError, open_catalog

    p = Path(path)
    if p.suffix.lower() in {".yaml", ".yml"}:
        try:
            return open_catalog(p).grid()
        except (CatalogError, cubes.CubeError) as e:
            raise IngestError(f"{p}: cannot take the target grid from this catalog: {e}") from None
    if not p.exists():
        raise IngestError(f"{p}: no such cube or catalog to take the target grid from")
    try:
        ds = xr.open_zarr(p, consolidated=False, decode_coords="all")
    except Exception as e:  # any unreadable store
        raise IngestError(f"{p}: not a readable Zarr cube: {e}") from None
    try:
        return cubes.grid_of(ds, source=str(p), layer="target")
    except cubes.CubeError as e:
        raise IngestError(str(e)) from None
