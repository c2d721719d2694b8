"""USDA Cropland Data Layer (30 m class rasters, one per year) to the crop cube.

Each CDL class code becomes corn (code 1 by default), soybean (code 5) or other (every
other code of the published legend); codes 0 (Background) and 81 (Clouds/No Data) and the
file's nodata value are *no data* and not counted. For each target cell the 30 m classes
are counted on an intermediate grid ``factor`` times finer than the target (``factor =
round(target resolution / CDL pixel size)``, 8 for 250 m; reprojected with nearest
neighbour), giving

* ``corn_fraction``, ``soybean_fraction``, ``other_fraction``: shares of the valid fine
  cells (NaN where none is valid);
* ``crop_type`` (int8, the schema's variable): the class with the most fine cells, ties
  going to other, then corn; 0 (other) where no fine cell is valid.

A code outside the legend (or outside 0..255) is refused, naming the file and the code;
products with extra classes pass them in ``extra_codes``. Years must be consecutive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from kgml_grid import cubes, schema
from kgml_grid.grid import GridSpec
from kgml_grid.ingest import store as _store
from kgml_grid.ingest.dates import YEAR_PATTERN, compile_pattern
from kgml_grid.ingest.errors import IngestError, file_error
from kgml_grid.ingest.rasters import (
    GDAL_CACHE_MB,
    RasterInfo,
    check_overlap,
    gdal_env,
    inspect_raster,
    read_codes,
    release_memory,
)
from kgml_grid.ingest.register import register_entry
from kgml_grid.ingest.result import IngestResult
from kgml_grid.ingest.sources import expand_paths
from kgml_grid.ingest.target import crs_label, resolve_chunks
from kgml_grid.ingest.tiles import Tile, pixel_size_in, plan_tiles

LAYER = "crop"

#: The published CDL legend (USDA NASS, generic CDL attribute table), code -> class name.
CDL_LEGEND: Mapping[int, str] = {
    0: "Background", 1: "Corn", 2: "Cotton", 3: "Rice", 4: "Sorghum", 5: "Soybeans",
    6: "Sunflower", 10: "Peanuts", 11: "Tobacco", 12: "Sweet Corn", 13: "Pop or Orn Corn",
    14: "Mint", 21: "Barley", 22: "Durum Wheat", 23: "Spring Wheat", 24: "Winter Wheat",
    25: "Other Small Grains", 26: "Dbl Crop WinWht/Soybeans", 27: "Rye", 28: "Oats",
    29: "Millet", 30: "Speltz", 31: "Canola", 32: "Flaxseed", 33: "Safflower", 34: "Rape Seed",
    35: "Mustard", 36: "Alfalfa", 37: "Other Hay/Non Alfalfa", 38: "Camelina", 39: "Buckwheat",
    41: "Sugarbeets", 42: "Dry Beans", 43: "Potatoes", 44: "Other Crops", 45: "Sugarcane",
    46: "Sweet Potatoes", 47: "Misc Vegs & Fruits", 48: "Watermelons", 49: "Onions",
    50: "Cucumbers", 51: "Chick Peas", 52: "Lentils", 53: "Peas", 54: "Tomatoes",
    55: "Caneberries", 56: "Hops", 57: "Herbs", 58: "Clover/Wildflowers", 59: "Sod/Grass Seed",
    60: "Switchgrass", 61: "Fallow/Idle Cropland", 62: "Pasture/Grass", 63: "Forest",
    64: "Shrubland", 65: "Barren", 66: "Cherries", 67: "Peaches", 68: "Apples", 69: "Grapes",
    70: "Christmas Trees", 71: "Other Tree Crops", 72: "Citrus", 74: "Pecans", 75: "Almonds",
    76: "Walnuts", 77: "Pears", 81: "Clouds/No Data", 82: "Developed", 83: "Water",
    87: "Wetlands", 88: "Nonag/Undefined", 92: "Aquaculture", 111: "Open Water",
    112: "Perennial Ice/Snow", 121: "Developed/Open Space", 122: "Developed/Low Intensity",
    123: "Developed/Med Intensity", 124: "Developed/High Intensity", 131: "Barren",
    141: "Deciduous Forest", 142: "Evergreen Forest", 143: "Mixed Forest", 152: "Shrubland",
    176: "Grassland/Pasture", 190: "Woody Wetlands", 195: "Herbaceous Wetlands",
    204: "Pistachios", 205: "Triticale", 206: "Carrots", 207: "Asparagus", 208: "Garlic",
    209: "Cantaloupes", 210: "Prunes", 211: "Olives", 212: "Oranges", 213: "Honeydew Melons",
    214: "Broccoli", 215: "Avocados", 216: "Peppers", 217: "Pomegranates", 218: "Nectarines",
    219: "Greens", 220: "Plums", 221: "Strawberries", 222: "Squash", 223: "Apricots",
    224: "Vetch", 225: "Dbl Crop WinWht/Corn", 226: "Dbl Crop Oats/Corn", 227: "Lettuce",
    228: "Dbl Crop Triticale/Corn", 229: "Pumpkins", 230: "Dbl Crop Lettuce/Durum Wht",
    231: "Dbl Crop Lettuce/Cantaloupe", 232: "Dbl Crop Lettuce/Cotton",
    233: "Dbl Crop Lettuce/Barley", 234: "Dbl Crop Durum Wht/Sorghum",
    235: "Dbl Crop Barley/Sorghum", 236: "Dbl Crop WinWht/Sorghum", 237: "Dbl Crop Barley/Corn",
    238: "Dbl Crop WinWht/Cotton", 239: "Dbl Crop Soybeans/Cotton",
    240: "Dbl Crop Soybeans/Oats", 241: "Dbl Crop Corn/Soybeans", 242: "Blueberries",
    243: "Cabbage", 244: "Cauliflower", 245: "Celery", 246: "Radishes", 247: "Turnips",
    248: "Eggplants", 249: "Gourds", 250: "Cranberries", 254: "Dbl Crop Barley/Soybeans",
}  # fmt: skip

#: Codes that mean "not observed": Background and Clouds/No Data.
NO_DATA_CODES: frozenset[int] = frozenset({0, 81})
CORN_CODES: tuple[int, ...] = (1,)
SOYBEAN_CODES: tuple[int, ...] = (5,)

FRACTIONS = ("other_fraction", "corn_fraction", "soybean_fraction")
_FRACTION_ATTRS = {
    "other_fraction": "share of the cell's valid CDL pixels in other classes",
    "corn_fraction": "share of the cell's valid CDL pixels classed corn",
    "soybean_fraction": "share of the cell's valid CDL pixels classed soybean",
}


@dataclass(frozen=True)
class ClassMap:
    """CDL codes -> crop classes (-1 no data, 0 other, 1 corn, 2 soybean)."""

    lut: np.ndarray  # int8, index code + 1 (index 0 is the "outside" code -1)
    allowed: frozenset[int]
    corn: tuple[int, ...]
    soybean: tuple[int, ...]


def class_map(
    *,
    corn_codes: Iterable[int] = CORN_CODES,
    soybean_codes: Iterable[int] = SOYBEAN_CODES,
    extra_codes: Iterable[int] = (),
    nodata_codes: Iterable[int] = NO_DATA_CODES,
) -> ClassMap:
    """The lookup table from CDL codes to crop classes (pure).

    Raises
    ------
    IngestError
        For a corn/soybean code outside the legend (and ``extra_codes``), or one given
        for both crops.
    """
    extra = {int(c) for c in extra_codes}
    bad = [c for c in extra if not 0 <= c <= 255]
    if bad:
        raise IngestError(f"extra CDL codes must be in 0..255, got {bad}")
    allowed = frozenset(CDL_LEGEND) | extra
    corn, soy = tuple(int(c) for c in corn_codes), tuple(int(c) for c in soybean_codes)
    for c in (*corn, *soy):
        if c not in allowed:
            raise IngestError(
                f"CDL code {c} is not in the CDL legend; add it to extra_codes if your product uses it"
            )
    both = set(corn) & set(soy)
    if both:
        raise IngestError(f"CDL codes {sorted(both)} are given as both corn and soybean")
    lut = np.full(257, -1, dtype=np.int8)
    for c in allowed:
        lut[c + 1] = 0
    for c in corn:
        lut[c + 1] = schema.CROP_NAMES["corn"]
    for c in soy:
        lut[c + 1] = schema.CROP_NAMES["soybean"]
    for c in nodata_codes:
        lut[int(c) + 1] = -1
    return ClassMap(lut, allowed, corn, soy)


def check_codes(present: Iterable[int], cmap: ClassMap, *, path: str, year: int,
                nodata: float | None = None) -> None:  # fmt: skip
    """Refuse a class code outside the legend, naming the file, the year and the code."""
    for c in present:
        c = int(c)
        if c not in cmap.allowed and (nodata is None or c != nodata):
            raise file_error(
                path, f"class code {c} (year {year}) is not in the CDL legend; known codes: "
                f"{', '.join(map(str, sorted(cmap.allowed)))}; pass it in extra_codes "
                "(--extra-codes) if the product uses it"
            )  # fmt: skip


def aggregate(codes: np.ndarray, factor: int, cmap: ClassMap) -> tuple[np.ndarray, np.ndarray]:
    """Fractions and dominant crop of each ``factor x factor`` block of fine class codes (pure).

    Parameters
    ----------
    codes : ndarray of int
        Fine class codes, -1 for no data; sides are multiples of ``factor``.
    factor : int
        Fine cells per target cell along each side.
    cmap : ClassMap
        Code -> class lookup.

    Returns
    -------
    crop_type : ndarray of int8, shape (ny, nx)
        0 other, 1 corn, 2 soybean (0 where no fine cell is valid).
    fractions : ndarray of float32, shape (3, ny, nx)
        Shares of other, corn, soybean among valid fine cells (NaN where none).
    """
    ny, nx = codes.shape[0] // factor, codes.shape[1] // factor
    cls = cmap.lut[np.clip(codes.astype(np.int16), -1, 255) + 1]
    blocks = cls.reshape(ny, factor, nx, factor)
    counts = np.stack([(blocks == k).sum(axis=(1, 3)) for k in (0, 1, 2)]).astype(np.int32)
    valid = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(valid > 0, counts / np.maximum(valid, 1), np.nan).astype(np.float32)
    crop_type = np.where(valid > 0, counts.argmax(axis=0), 0).astype(np.int8)
    return crop_type, fractions


def default_factor(info: RasterInfo, grid: GridSpec) -> int:
    """Fine cells per target cell: target resolution over the CDL pixel size, at least 1."""
    size = pixel_size_in(info.transform, info.shape, info.crs, grid.crs)
    return int(min(64, max(1, round(grid.res / size))))


@dataclass(frozen=True)
class CropPlan:
    """Years, files and tiles of a crop ingestion, decided before anything is written."""

    grid: GridSpec
    years: tuple[int, ...]
    files: Mapping[int, RasterInfo]
    factor: int
    cmap: ClassMap
    tiles: tuple[Tile, ...]
    start_index: int
    chunks: Mapping[str, int]


def years_of(
    files: Mapping[int, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]],
    *,
    pattern: str = YEAR_PATTERN,
) -> dict[int, str]:
    """Year -> file, from a mapping or from file names (``pattern``); years must be consecutive.

    Raises
    ------
    IngestError
        Naming the file whose year does not parse or repeats, or the missing years.
    """
    if isinstance(files, Mapping):
        by_year = {int(y): os.fspath(p) for y, p in files.items()}
    else:
        pat = compile_pattern(pattern)
        by_year = {}
        for p in expand_paths(files, what="CDL"):
            y = pat.parse(p).year
            if y in by_year:
                raise file_error(p, f"year {y} is also given by {by_year[y]}")
            by_year[y] = p
    if not by_year:
        raise IngestError("no CDL files")
    years = sorted(by_year)
    gaps = sorted(set(range(years[0], years[-1] + 1)) - set(years))
    if gaps:
        raise IngestError(
            f"CDL years must be consecutive: {', '.join(map(str, gaps))} missing between "
            f"{by_year[years[0]]} and {by_year[years[-1]]}"
        )
    return {y: by_year[y] for y in years}


def plan_crop(
    files: Mapping[int, str],
    *,
    grid: GridSpec,
    chunks: Mapping[str, int],
    cmap: ClassMap,
    factor: int | None = None,
    band: int = 1,
    existing: _store.ExistingCube | None = None,
) -> CropPlan:
    """Check every CDL file's metadata and decide factor, tiles and year indices."""
    years = tuple(files)
    start_index = 0
    if existing is not None:
        last = int(existing.coord[-1])
        if years[0] != last + 1:
            raise file_error(
                files[years[0]], f"year {years[0]} does not follow the cube {existing.path}, which "
                f"ends in {last}; append {last + 1} next"
            )  # fmt: skip
        start_index = len(existing.coord)
    infos: dict[int, RasterInfo] = {}
    for y, p in files.items():
        info = inspect_raster(p, band=band)
        if not np.issubdtype(np.dtype(info.dtype), np.integer):
            raise file_error(p, f"has data type {info.dtype}; CDL rasters hold integer class codes")
        check_overlap(info, grid)
        infos[y] = info
    f = factor if factor is not None else default_factor(next(iter(infos.values())), grid)
    if f < 1:
        raise IngestError(f"factor must be >= 1, got {f}")
    return CropPlan(grid, years, infos, int(f), cmap, plan_tiles(grid.shape, (chunks["y"], chunks["x"])),
                    start_index, dict(chunks))  # fmt: skip


def _template(plan: CropPlan, prov: Mapping[str, object]) -> xr.Dataset:
    import dask.array as da

    shape = (len(plan.years), *plan.grid.shape)
    ch = (1, plan.chunks["y"], plan.chunks["x"])
    data = {"crop_type": (("year", "y", "x"), da.zeros(shape, chunks=ch, dtype="int8"))}
    for v in FRACTIONS:
        data[v] = (("year", "y", "x"), da.zeros(shape, chunks=ch, dtype="float32"))
    ds = cubes.annotate(xr.Dataset(data, coords={"year": list(plan.years)}),
                        plan.grid, title="kgml_grid crop cube (USDA CDL)", **prov)  # fmt: skip
    for v in FRACTIONS:
        ds[v].attrs.update({"units": "1", "long_name": _FRACTION_ATTRS[v], "valid_min": 0.0,
                            "valid_max": 1.0, "comment": "from USDA CDL classes; NaN where no valid pixel"})  # fmt: skip
    ds["crop_type"].attrs["comment"] = (
        f"dominant class of the cell's CDL pixels: corn codes {list(plan.cmap.corn)}, soybean "
        f"codes {list(plan.cmap.soybean)}, other: every other CDL class; 0 where no valid pixel"
    )
    return ds


def write_crop(plan: CropPlan, path: Path) -> None:
    """Fill the plan's years in an initialised store, one tile and year at a time."""
    for k, year in enumerate(plan.years):
        info = plan.files[year]
        i = slice(plan.start_index + k, plan.start_index + k + 1)
        for tile in plan.tiles:
            codes, present = read_codes(
                info, plan.grid, tile, factor=plan.factor, nodata=info.nodata
            )
            check_codes(present, plan.cmap, path=info.path, year=year, nodata=info.nodata)
            crop_type, fr = aggregate(codes, plan.factor, plan.cmap)
            block = {"crop_type": (("year", "y", "x"), crop_type[None])}
            for j, v in enumerate(FRACTIONS):
                block[v] = (("year", "y", "x"), fr[j][None])
            cubes.write_region(xr.Dataset(block), path, {"year": i, **tile.region})
            del codes, block
            release_memory()


def ingest_crop(
    files: Mapping[int, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    grid: GridSpec | None = None,
    pattern: str = YEAR_PATTERN,
    corn_codes: Iterable[int] = CORN_CODES,
    soybean_codes: Iterable[int] = SOYBEAN_CODES,
    extra_codes: Iterable[int] = (),
    factor: int | None = None,
    band: int = 1,
    chunks: Mapping[str, int] | None = None,
    append: bool = False,
    overwrite: bool = False,
    catalog: str | os.PathLike[str] | None = None,
    entry: str = LAYER,
    gdal_cache_mb: int = GDAL_CACHE_MB,
) -> IngestResult:
    """Ingest CDL class rasters (one per year) into the crop cube on ``grid``.

    Parameters
    ----------
    files : mapping or sequence
        Year -> CDL GeoTIFF, or files (folders, globs) whose names give the year.
    out : path
        The cube (a local ``.zarr`` folder).
    grid : GridSpec
        Target grid (the cube's when appending).
    pattern : str
        File-name pattern giving the year (default: the first 4-digit year 19xx/20xx).
    corn_codes, soybean_codes : iterable of int
        CDL codes counted as corn / soybean (default 1 / 5; double crops count as other
        unless added here, e.g. ``corn_codes=(1, 225, 226, 237)``).
    extra_codes : iterable of int
        Codes accepted in addition to the published legend (counted as other).
    factor : int, optional
        Fine cells per target cell along a side (default: target res / CDL pixel size).
    band, chunks, append, overwrite, catalog, entry, gdal_cache_mb
        As for :func:`~kgml_grid.ingest.satellite.ingest_satellite`; appending adds the
        following years.

    Raises
    ------
    IngestError
        For any refused input, naming the file; a code outside the legend is found while
        reading and leaves no cube behind (a new cube is discarded, an append undone).
    """
    cmap = class_map(corn_codes=corn_codes, soybean_codes=soybean_codes, extra_codes=extra_codes)
    by_year = years_of(files, pattern=pattern)
    with gdal_env(gdal_cache_mb):
        if append:
            existing = _store.existing_cube(out, LAYER, dim="year")
            if grid is not None and not _store.same_grid(grid, existing.grid):
                raise IngestError(
                    f"{out}: the target grid differs from the cube's grid; leave it out when appending"
                )
            plan = plan_crop(by_year, grid=existing.grid, chunks=resolve_chunks(existing.chunks), cmap=cmap,
                             factor=factor, band=band, existing=existing)  # fmt: skip
            with _store.append_store(out, _template(plan, {}), dim="year"):
                write_crop(plan, Path(out))
        else:
            _store.check_new(
                out,
                overwrite=overwrite,
                inputs=files.values() if isinstance(files, Mapping) else files,
            )
            if grid is None:
                raise IngestError(
                    "crop: a target grid is needed (grid=..., or --crs/--bounds/--res or --like)"
                )
            plan = plan_crop(
                by_year,
                grid=grid,
                chunks=resolve_chunks(chunks),
                cmap=cmap,
                factor=factor,
                band=band,
            )
            prov = {"kgml_ingest": json.dumps({str(y): i.path for y, i in plan.files.items()}),
                    "kgml_cdl_factor": plan.factor}  # fmt: skip
            with _store.new_store(
                out, _template(plan, prov), plan.chunks, overwrite=overwrite
            ) as work:
                write_crop(plan, work)
    outp = Path(out)
    ds = _store.validate_output(outp, LAYER, crs=plan.grid.crs)
    crs = crs_label(plan.grid.crs)
    cat = None
    if catalog is not None:
        cat = register_entry(catalog, entry, layer=LAYER, cube=outp, crs=crs, catalog_crs=crs,
                             description="crop type per year from USDA CDL: 0 other, 1 corn, 2 soybean, "
                             "with class fractions")  # fmt: skip
    return IngestResult(
        LAYER, outp, tuple(str(v) for v in ds.data_vars), dict(ds.sizes), crs,
        files=len(plan.files), tiles=len(plan.tiles), span=f"years {plan.years[0]}..{plan.years[-1]}",
        appended=append, catalog=cat, entry=entry if cat is not None else None,
    )  # fmt: skip
