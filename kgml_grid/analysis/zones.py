"""Zones on the target grid: polygons (GeoJSON, GeoPackage, Shapefile) rasterised with
:func:`rasterio.features.rasterize`, or a zone raster (GeoTIFF) resampled by nearest
neighbour.

A pixel belongs to the polygon that contains its centre (rasterio's default rule); where
polygons overlap, the later feature wins. Zone ids are 1, 2, ... in file order (0: no
zone); names come from a property (``field``; by default the first of ``NAME``,
``name``, ``GEOID``, ``id`` present, else ``zone <n>``).

GeoJSON is read with the standard library (RFC 7946 coordinates are longitude/latitude;
a legacy ``crs`` member is honoured). GeoPackage and Shapefile need ``fiona``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from kgml_grid.grid import GridSpec

__all__ = ["ZoneError", "Zones", "read_zones", "zones_from_features"]

NAME_FIELDS = ("NAME", "name", "GEOID", "id")
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp")
RASTER_SUFFIXES = (".tif", ".tiff")


class ZoneError(ValueError):
    """A zone file cannot be used; nothing was written."""


@dataclass(frozen=True)
class Zones:
    """Zone ids on a grid and their names.

    Attributes
    ----------
    ids : DataArray ``(y, x)`` int32
        0 where no zone.
    names : mapping
        id -> name, every zone of the file (also those covering no pixel).
    source : str
    """

    ids: xr.DataArray
    names: Mapping[int, str]
    source: str = "<zones>"

    @property
    def codes(self) -> np.ndarray:
        return np.asarray(sorted(self.names), dtype="int32")


def _transform(grid: GridSpec) -> Any:
    from affine import Affine

    return Affine(grid.res, 0.0, grid.x0, 0.0, -grid.res, grid.y0)


def _reproject_coords(coords: Any, tr: Any) -> Any:
    if isinstance(coords, list | tuple) and coords and isinstance(coords[0], int | float):
        x, y = tr.transform(coords[0], coords[1])
        return [x, y]
    return [_reproject_coords(c, tr) for c in coords]


def _reproject_geometry(geom: Mapping[str, Any], tr: Any) -> dict[str, Any]:
    if geom.get("type") == "GeometryCollection":
        return {
            "type": "GeometryCollection",
            "geometries": [_reproject_geometry(g, tr) for g in geom["geometries"]],
        }
    return {"type": geom["type"], "coordinates": _reproject_coords(geom["coordinates"], tr)}


def _name_field(props: Iterable[Mapping[str, Any]], field: str | None, source: str) -> str | None:
    props = list(props)
    keys = set().union(*(p.keys() for p in props)) if props else set()
    if field is not None:
        if field not in keys:
            raise ZoneError(f"zones {source}: no property {field!r} (--zone-field); the features have "
                            f"{', '.join(sorted(keys)) or 'no properties'}")  # fmt: skip
        return field
    return next((f for f in NAME_FIELDS if f in keys), None)


def zones_from_features(
    features: list[Mapping[str, Any]],
    grid: GridSpec,
    *,
    crs: str = "EPSG:4326",
    field: str | None = None,
    source: str = "<features>",
) -> Zones:
    """Rasterise GeoJSON-like features (``geometry``, ``properties``) in ``crs`` onto ``grid``."""
    from pyproj import CRS, Transformer
    from rasterio.features import rasterize

    if not features:
        raise ZoneError(f"zones {source}: no features; expected polygons")
    props = [f.get("properties") or {} for f in features]
    name_field = _name_field(props, field, source)
    same = CRS.from_user_input(crs) == CRS.from_user_input(grid.crs)
    tr = None if same else Transformer.from_crs(crs, grid.crs, always_xy=True)
    shapes, names = [], {}
    for i, (feat, p) in enumerate(zip(features, props, strict=True), start=1):
        geom = feat.get("geometry")
        if not geom or geom.get("type") not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            kind = geom.get("type") if geom else None
            raise ZoneError(
                f"zones {source}: feature {i} has geometry {kind!r}; expected Polygon or MultiPolygon"
            )
        shapes.append((geom if tr is None else _reproject_geometry(geom, tr), i))
        names[i] = (
            str(p[name_field]) if name_field and p.get(name_field) is not None else f"zone {i}"
        )
    ids = rasterize(shapes, out_shape=grid.shape, transform=_transform(grid), fill=0, dtype="int32")
    return Zones(_as_array(ids, grid), names, source)


def _as_array(ids: np.ndarray, grid: GridSpec) -> xr.DataArray:
    return xr.DataArray(
        ids.astype("int32"), dims=("y", "x"), coords={"y": grid.y, "x": grid.x}, name="zone"
    )


def _read_geojson(path: Path) -> tuple[list[Mapping[str, Any]], str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ZoneError(f"zones {path}: cannot read it as GeoJSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise ZoneError(
            f"zones {path}: not a GeoJSON FeatureCollection (type {doc.get('type') if isinstance(doc, dict) else None!r})"
        )
    feats = doc["features"] if doc["type"] == "FeatureCollection" else [doc]
    crs = "EPSG:4326"
    legacy = (
        (doc.get("crs") or {}).get("properties", {}).get("name")
        if isinstance(doc.get("crs"), dict)
        else None
    )
    if legacy:
        crs = str(legacy)
    return feats, crs


def _read_fiona(path: Path) -> tuple[list[Mapping[str, Any]], str]:
    try:
        import fiona
    except ImportError:
        raise ZoneError(
            f"zones {path}: reading {path.suffix} files needs the 'fiona' package (pip install fiona), "
            f"or convert it to GeoJSON (ogr2ogr -f GeoJSON zones.geojson {path.name})"
        ) from None
    with fiona.open(path) as src:
        crs = src.crs.to_string() if src.crs else "EPSG:4326"
        feats = [{"geometry": dict(f["geometry"].__geo_interface__) if hasattr(f["geometry"], "__geo_interface__")
                  else f["geometry"], "properties": dict(f["properties"])} for f in src]  # fmt: skip
    return feats, crs


def _read_raster(path: Path, grid: GridSpec) -> Zones:
    import rasterio
    from rasterio.warp import Resampling, reproject

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise ZoneError(f"zones {path}: cannot open it as a raster: {e}") from None
    with src:
        if src.crs is None:
            raise ZoneError(
                f"zones {path}: the raster has no CRS; expected a georeferenced zone raster"
            )
        if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise ZoneError(
                f"zones {path}: band 1 is {src.dtypes[0]}; expected integer zone ids (0 = no zone)"
            )
        out = np.zeros(grid.shape, dtype="int32")
        reproject(rasterio.band(src, 1), out, dst_transform=_transform(grid), dst_crs=grid.crs,
                  dst_nodata=0, resampling=Resampling.nearest)  # fmt: skip
    out[out < 0] = 0
    names = {int(i): f"zone {int(i)}" for i in np.unique(out) if i > 0}
    if not names:
        raise ZoneError(
            f"zones {path}: no zone id > 0 falls on the grid {grid.bounds} ({grid.crs})"
        )
    return Zones(_as_array(out, grid), names, str(path))


def read_zones(path: str | Path, grid: GridSpec, *, field: str | None = None) -> Zones:
    """Zones of a polygon file or zone raster on ``grid``.

    Raises
    ------
    ZoneError
        For a missing file, an unknown suffix, non-polygon features, a missing
        ``field``, or zones that cover no pixel of the grid; naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise ZoneError(f"zones {p}: no such file")
    suffix = p.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return _read_raster(p, grid)
    if suffix not in VECTOR_SUFFIXES:
        raise ZoneError(f"zones {p}: unknown suffix {p.suffix!r}; expected one of "
                        f"{', '.join(VECTOR_SUFFIXES + RASTER_SUFFIXES)}")  # fmt: skip
    feats, crs = _read_geojson(p) if suffix in (".geojson", ".json") else _read_fiona(p)
    zones = zones_from_features(feats, grid, crs=crs, field=field, source=str(p))
    if not (zones.ids.values > 0).any():
        raise ZoneError(f"zones {p}: no polygon covers a pixel centre of the grid (bounds "
                        f"{tuple(round(b, 3) for b in grid.bounds)} in {grid.crs}); is the file's CRS right?")  # fmt: skip
    return zones
