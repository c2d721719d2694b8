"""Metadata-only worlds: continental-sized cubes for planning and scale benchmarks.

:func:`metadata_world` writes a catalog of real Zarr v3 cubes (weather, satellite,
soil, crop) whose arrays are declared but, except for the crop cube, never written:
every chunk is the fill value (NaN), so a CONUS x 18-year world costs a few MB of
metadata and seconds to write. Only the crop cube holds data, and only in its *crop
chunks*: a clustered share of the spatial chunks (``crop_chunk_share``) holds crop
pixels, the rest are never written (all 0 = no crop), like US cropland, where most
of the West and the forests have none. Planning (:func:`kgml_grid.plan.make_plan`)
therefore sees a realistic number of crop tiles and crop pixels, and graphs, stores
and schedulers can be measured at the size the engine is for. Running the model on
such a world computes on NaN inputs (outputs NaN): it is for planning and
scheduling, not for values.

API
---
``metadata_world(out, *, preset=None, shape=None, years=(2001, 2018), ...) -> Path``
    Write the world under ``out`` and return its ``catalog.yaml``. ``preset`` is a
    name of :data:`PRESETS` (``"conus"``: 11,500 x 18,500 px of 250 m in EPSG:5070,
    ~25 M crop pixels, weather on a 0.125 degree lat/lon grid; ``"state"``, ``"mid"``,
    ``"small"`` for tests); keyword arguments override the preset's fields
    (:class:`MetaWorldSpec`). ``overwrite=True`` replaces an earlier world (only one
    a world's marker: :func:`kgml_grid.outputs.prepare_target`).
``world_spec(preset=None, **overrides) -> MetaWorldSpec``
    The resolved specification (pure).
``crop_chunk_mask(spec) -> bool [n_cy, n_cx]``
    Which spatial chunks of the crop cube hold crop (pure, deterministic in ``seed``).

The returned catalog's folder also holds ``world.json``: the spec, the crop
pixels and crop chunks written, and the time it took.

Example::

    from kgml_grid.bench.metaworld import metadata_world
    cat = metadata_world("/tmp/me/conus", preset="conus")
    plan = make_plan(cat, checkpoint, chunks="auto")
"""

from __future__ import annotations

import json
import math
import time as _time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

#: The value every unwritten chunk of an input variable reads as (its Zarr fill value;
#: the CF ``_FillValue`` stays NaN): typical mid-latitude cropland values, inside the
#: schema's valid ranges, so that value checks pass and a run computes finite outputs.
TYPICAL: Mapping[str, float] = {
    "tair": 10.0, "swrad": 17.5, "vpd": 5.0, "precip": 2.0,
    "gpp_sat": 3.0, "lai": 1.0, "soil_moisture": 0.3,
    "bulk_density": 1.3, "sand": 24.0, "clay": 29.0, "silt": 47.0, "field_capacity": 0.38,
    "wilting_point": 0.17, "ksat": 5.0, "soc": 7.5, "ph": 6.6, "cec": 30.0,
}  # fmt: skip

__all__ = ["PRESETS", "TYPICAL", "MetaWorldSpec", "crop_chunk_mask", "metadata_world", "world_spec"]


@dataclass(frozen=True)
class MetaWorldSpec:
    """What :func:`metadata_world` writes.

    Attributes
    ----------
    shape : (ny, nx)
        Fine-grid pixels.
    res : float
        Pixel size in CRS units (metres for EPSG:5070).
    crs : str
        CRS of the fine grid.
    origin : (x0, y0)
        Upper-left corner of the fine grid in its CRS.
    years : (first, last)
        Calendar years (inclusive) of the daily cubes and of the crop cube.
    weather_deg : float
        Cell size of the lat/lon (EPSG:4326) weather grid, degrees.
    crop_share : float
        Crop pixels / all pixels (CONUS: ~25 M of ~213 M, 0.117).
    crop_chunk_share : float
        Spatial chunks of the crop cube that hold any crop (clustered; the rest are
        empty and never written).
    field_px : int
        Side of the square clusters ("field blocks") crop is placed in, pixels; inside
        a crop chunk, blocks are crop or not, so small tiles can be empty too.
    chunks : mapping
        Zarr chunks of the cubes (``time``, ``y``, ``x``, ``year``); default those of
        ingested cubes (:data:`kgml_grid.ingest.target.DEFAULT_CHUNKS`, 256 x 256 px x
        365 d, one year).
    seed : int
        Seed of the crop pattern.
    """

    shape: tuple[int, int]
    res: float = 250.0
    crs: str = "EPSG:5070"
    origin: tuple[float, float] = (-2_362_500.0, 3_187_500.0)
    years: tuple[int, int] = (2001, 2018)
    weather_deg: float = 0.125
    crop_share: float = 25e6 / (11_500 * 18_500)
    crop_chunk_share: float = 0.45
    field_px: int = 32
    chunks: Mapping[str, int] = field(
        default_factory=lambda: {"time": 365, "y": 256, "x": 256, "year": 1}
    )
    seed: int = 0

    def __post_init__(self) -> None:
        ny, nx = self.shape
        if ny < 1 or nx < 1:
            raise ValueError(f"MetaWorldSpec.shape must be positive, got {self.shape}")
        if not 0 < self.crop_share <= self.crop_chunk_share <= 1:
            raise ValueError(
                f"MetaWorldSpec: need 0 < crop_share ({self.crop_share}) <= crop_chunk_share "
                f"({self.crop_chunk_share}) <= 1"
            )
        if self.years[1] < self.years[0]:
            raise ValueError(f"MetaWorldSpec.years {self.years}: last year before first")
        for d in ("time", "y", "x", "year"):
            if int(self.chunks.get(d, 0)) < 1:
                raise ValueError(f"MetaWorldSpec.chunks[{d!r}] must be >= 1, got {self.chunks}")

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def chunk_grid(self) -> tuple[int, int]:
        """Spatial chunks of the fine cubes, ``(n_cy, n_cx)``."""
        return (
            -(-self.shape[0] // int(self.chunks["y"])),
            -(-self.shape[1] // int(self.chunks["x"])),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = dict(self.chunks)
        return d


#: Named worlds. ``conus``: the issue-13 target (US cropland at 250 m, 2001-2018).
PRESETS: Mapping[str, MetaWorldSpec] = {
    "conus": MetaWorldSpec(shape=(11_500, 18_500)),
    # a large state (Iowa is ~1,300 x 2,200 px of 250 m)
    "state": MetaWorldSpec(shape=(2_048, 2_048)),
    "mid": MetaWorldSpec(shape=(1_024, 1_024)),
    "small": MetaWorldSpec(shape=(256, 256), chunks={"time": 365, "y": 64, "x": 64, "year": 1}),
}


def world_spec(preset: str | None = None, **overrides: Any) -> MetaWorldSpec:
    """The :class:`MetaWorldSpec` of ``preset`` (default ``"mid"``) with ``overrides``."""
    name = preset or "mid"
    if name not in PRESETS:
        raise ValueError(f"metadata world preset {name!r}: expected one of {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "chunks" in given:
        given["chunks"] = {**PRESETS[name].chunks, **given["chunks"]}
    for k in ("shape", "origin", "years"):
        if k in given:
            given[k] = tuple(given[k])
    return replace(PRESETS[name], **given)


# --------------------------------------------------------------------------------------
# the crop pattern (pure)
# --------------------------------------------------------------------------------------


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, passes: int = 3) -> np.ndarray:
    """Spatially correlated noise: white noise box-blurred ``passes`` times (3 x 3)."""
    f = rng.standard_normal(shape)
    for _ in range(passes):
        p = np.pad(f, 1, mode="edge")
        f = sum(p[i : i + shape[0], j : j + shape[1]] for i in range(3) for j in range(3)) / 9.0
    return f


def crop_chunk_mask(spec: MetaWorldSpec) -> np.ndarray:
    """Which spatial chunks of the crop cube hold crop: ``bool [n_cy, n_cx]``.

    A smooth random field over the chunk grid, thresholded at the share
    ``crop_chunk_share``, so crop chunks cluster (a corn belt, empty deserts).
    """
    n_cy, n_cx = spec.chunk_grid
    rng = np.random.default_rng(spec.seed)
    f = _smooth_field((n_cy, n_cx), rng)
    k = max(1, round(spec.crop_chunk_share * f.size))
    thr = np.sort(f, axis=None)[::-1][k - 1]
    return f >= thr


def _chunk_crop(
    spec: MetaWorldSpec, cy: int, cx: int, shape: tuple[int, int], density: float
) -> np.ndarray:
    """Crop presence (bool) of one crop chunk: field blocks on at a chunk-dependent rate,
    pixels inside an active block crop at ``block_density``; mean ``density``."""
    rng = np.random.default_rng((spec.seed, cy, cx))
    fp = max(1, int(spec.field_px))
    nby, nbx = -(-shape[0] // fp), -(-shape[1] // fp)
    block_density = min(1.0, math.sqrt(density) * 1.6)
    p_block = min(1.0, density / block_density)
    blocks = rng.random((nby, nbx)) < p_block
    if not blocks.any():  # a crop chunk holds crop (so that it is written)
        blocks[rng.integers(nby), rng.integers(nbx)] = True
    on = np.repeat(np.repeat(blocks, fp, axis=0), fp, axis=1)[: shape[0], : shape[1]]
    return on & (rng.random(shape, dtype=np.float32) < block_density)


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def _weather_grid(fine: Any, deg: float) -> Any:
    """The lat/lon grid of ``deg`` cells (snapped to ``deg``) covering ``fine`` plus one cell."""
    from pyproj import Transformer

    from kgml_grid.grid import GridSpec

    tr = Transformer.from_crs(fine.crs, "EPSG:4326", always_xy=True)
    w, s, e, n = tr.transform_bounds(*fine.bounds, densify_pts=101)
    x0 = math.floor(w / deg) * deg - deg
    y0 = math.ceil(n / deg) * deg + deg
    nx = math.ceil((e + deg - x0) / deg)
    ny = math.ceil((y0 - (s - deg)) / deg)
    return GridSpec("EPSG:4326", x0, y0, deg, ny, nx)


def _declare(ds: Any, path: Path, chunks: Mapping[str, int]) -> None:
    """:func:`kgml_grid.cubes.init_store` with each variable's Zarr fill value set to its
    :data:`TYPICAL` value: metadata and coordinates only, no chunk written."""
    from kgml_grid import cubes
    from kgml_grid.outputs import MARKER_ATTR

    enc = cubes.encoding_for(ds, chunks)
    for name, e in enc.items():
        if name in TYPICAL:
            e["fill_value"] = np.float32(TYPICAL[name])
    ds = ds.copy()
    ds.attrs[cubes.COMPLETE_ATTR] = 0
    ds.attrs.setdefault(MARKER_ATTR, "cube")
    for name in ds.data_vars:  # the CF missing value stays NaN (xarray masks _FillValue)
        if name in TYPICAL:
            ds[name].attrs["_FillValue"] = np.float32(np.nan)
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=enc)


def metadata_world(
    out: str | Path,
    *,
    preset: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Path:
    """Write a metadata-only world under ``out``; return its catalog path.

    Parameters
    ----------
    out : path
        Folder of the world (created). Holds ``weather.zarr``, ``satellite.zarr``,
        ``soil.zarr``, ``crop.zarr``, ``catalog.yaml`` and ``world.json``.
    preset : str, optional
        A name of :data:`PRESETS` (default ``"mid"``, 1,024 x 1,024 px).
    overwrite : bool
        Replace a world this function wrote earlier at ``out``.
    progress : bool
        Print a line per written layer.
    **overrides
        Fields of :class:`MetaWorldSpec` (``shape``, ``years``, ``crop_share``,
        ``crop_chunk_share``, ``weather_deg``, ``crs``, ``res``, ``origin``, ``chunks``,
        ``seed``, ``field_px``).

    Raises
    ------
    kgml_grid.outputs.OutputError
        When ``out`` holds anything and ``overwrite`` is false, or holds something
        other than a world (never removed).
    """
    import dask.array as da
    import pandas as pd
    import xarray as xr
    import zarr

    from kgml_grid import cubes, schema
    from kgml_grid.catalog import catalog_yaml, write_catalog
    from kgml_grid.grid import GridSpec
    from kgml_grid.outputs import prepare_target

    spec = world_spec(preset, **overrides)
    root = prepare_target(
        out, kind="world", overwrite=overwrite, fix="pass overwrite=True to replace it"
    )
    t0 = _time.perf_counter()
    ny, nx = spec.shape
    grid = GridSpec(spec.crs, float(spec.origin[0]), float(spec.origin[1]), float(spec.res), ny, nx)
    wgrid = _weather_grid(grid, spec.weather_deg)
    time = pd.date_range(f"{spec.years[0]}-01-01", f"{spec.years[1]}-12-31", freq="D")
    years = np.arange(spec.years[0], spec.years[1] + 1)
    chunks = {k: int(v) for k, v in spec.chunks.items()}

    def lazy(names: Any, g: GridSpec, dims: tuple[str, ...]) -> xr.Dataset:
        shp = {"time": time.size, "y": g.ny, "x": g.nx, "year": years.size}
        data = {}
        for n in names:
            dtype = schema.VARIABLES[n].dtype if n in schema.VARIABLES else "float32"
            shape = tuple(shp[d] for d in dims)
            # one Dask chunk per array: nothing is computed (init_store writes metadata only)
            data[n] = (dims, da.zeros(shape, chunks=shape, dtype=dtype))
        coords: dict[str, Any] = {}
        if "time" in dims:
            coords["time"] = time
        if "year" in dims:
            coords["year"] = years
        return cubes.annotate(xr.Dataset(data, coords=coords), g, title="metadata-only world",
                              kgml_metaworld=json.dumps(spec.to_dict()))  # fmt: skip

    layers = {
        "weather": lazy(schema.LAYERS["weather"].required, wgrid, ("time", "y", "x")),
        "satellite": lazy(["gpp_sat"], grid, ("time", "y", "x")),
        "soil": lazy(schema.LAYERS["soil"].required, grid, ("y", "x")),
        "crop": lazy(["crop_type"], grid, ("year", "y", "x")),
    }
    for name, ds in layers.items():
        _declare(ds, root / f"{name}.zarr", chunks)
        if progress:
            print(f"metaworld: {name} declared {dict(ds.sizes)}", flush=True)
    # crop: only the crop chunks are written, every year (corn/soybean rotation)
    mask = crop_chunk_mask(spec)
    density = spec.crop_share / spec.crop_chunk_share
    arr = zarr.open_array(str(root / "crop.zarr"), path="crop_type", mode="r+", zarr_format=3)
    cyz, cxz, yz = chunks["y"], chunks["x"], chunks["year"]
    n_crop = 0
    for cy, cx in zip(*np.nonzero(mask), strict=True):
        ys = slice(int(cy) * cyz, min(ny, (int(cy) + 1) * cyz))
        xs = slice(int(cx) * cxz, min(nx, (int(cx) + 1) * cxz))
        on = _chunk_crop(spec, int(cy), int(cx), (ys.stop - ys.start, xs.stop - xs.start), density)
        n_crop += int(on.sum())
        corn = np.where(on, np.int8(1), np.int8(0))
        soy = np.where(on, np.int8(2), np.int8(0))
        for y0 in range(0, years.size, yz):
            y1 = min(years.size, y0 + yz)
            block = np.stack([corn if (years[i] % 2) else soy for i in range(y0, y1)])
            arr[y0:y1, ys, xs] = block
    for name in layers:
        cubes.mark_complete(root / f"{name}.zarr")
    entries: dict[str, dict[str, Any]] = {
        n: {"layer": n, "path": str(root / f"{n}.zarr")} for n in layers
    }
    entries["weather"]["crs"] = "EPSG:4326"
    catalog = write_catalog(
        root / "catalog.yaml",
        catalog_yaml(entries, crs=spec.crs, description=f"metadata-only world {spec.shape}"),
    )
    info = {
        "kind": "metadata-only world (kgml_grid.bench.metaworld)",
        "spec": spec.to_dict(),
        "preset": preset or "mid",
        "grid": {"ny": ny, "nx": nx, "res": spec.res, "crs": spec.crs},
        "weather_grid": {
            "ny": wgrid.ny,
            "nx": wgrid.nx,
            "res_deg": wgrid.res,
            "bounds": list(wgrid.bounds),
        },
        "days": int(time.size),
        "crop_pixels": n_crop,
        "crop_share": n_crop / spec.n_pixels,
        "crop_chunks": int(mask.sum()),
        "chunks_total": int(mask.size),
        "seconds": round(_time.perf_counter() - t0, 2),
    }
    (root / "world.json").write_text(json.dumps(info, indent=1) + "\n")
    if progress:
        print(f"metaworld: {n_crop} crop pixels in {int(mask.sum())} of {mask.size} chunks, "
              f"{info['seconds']} s -> {catalog}", flush=True)  # fmt: skip
    return catalog
