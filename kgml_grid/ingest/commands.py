"""The ``kgml-grid ingest`` command: parse arguments, call :mod:`kgml_grid.ingest`.

::

    kgml-grid ingest satellite --out sat.zarr --source gpp_sat='slope/*.tif' \\
        --pattern gpp_sat='SLOPE_GPP_{date:%Y%j}.tif' --scale gpp_sat=0.01 \\
        --crs EPSG:5070 --bounds -100000 1900000 50000 2050000 --res 250 \\
        --catalog real.yaml --entry satellite
    kgml-grid ingest soil --out soil.zarr --property sand=sand.tif ... --like real.yaml
    kgml-grid ingest crop --out crop.zarr 'cdl/CDL_*.tif' --like real.yaml --catalog real.yaml
    kgml-grid ingest weather --out weather.zarr 'gridmet/*.nc' --preset gridmet --like real.yaml
    kgml-grid ingest weather --out weather.zarr 'nldas/NLDAS_FORA0125_H.A2015*.nc4' --preset nldas \\
        --like real.yaml --incomplete-days refuse

Options given per variable are written ``VAR=VALUE``; without ``VAR=`` they apply to
every variable. The target grid comes from ``--crs/--bounds/--res``, else ``--like`` (a
cube or catalog), else the ``--catalog`` being written to when it already has a
fine-grid layer.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kgml_grid import schema

_SAT_VARS = (*schema.LAYERS["satellite"].required, *schema.LAYERS["satellite"].optional)
_SOIL_VARS = (*schema.LAYERS["soil"].required, *schema.LAYERS["soil"].optional)


def _per_var(values: Sequence[str] | None, names: Sequence[str], conv: Callable[[str], Any],
             option: str) -> dict[str | None, Any]:  # fmt: skip
    """``VAR=VALUE`` or ``VALUE`` (key None: every variable) -> converted values."""
    out: dict[str | None, Any] = {}
    for text in values or ():
        head, sep, rest = text.partition("=")
        key, val = (head, rest) if sep and head in names else (None, text)
        try:
            out[key] = conv(val)
        except ValueError:
            raise ValueError(f"{option} {text!r}: {val!r} is not valid") from None
    return out


def _pick(opts: dict[str | None, Any], name: str) -> Any:
    return opts.get(name, opts.get(None))


def _range(text: str) -> tuple[float, float]:
    lo, hi = text.split(",")
    return (float(lo), float(hi))


def _codes(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",") if c.strip())


def _chunks(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def _grid(a: argparse.Namespace, *, required: bool = True):  # type: ignore[no-untyped-def]
    from kgml_grid.ingest.errors import IngestError
    from kgml_grid.ingest.target import grid_like, target_grid
    from kgml_grid.outputs import check_not_input, input_paths

    # the grid's template is an input too (before it is read)
    check_not_input(a.out, input_paths("the --like file", [a.like]), error=IngestError)
    given = [a.crs is not None, a.bounds is not None, a.res is not None]
    if any(given):
        if not all(given):
            raise IngestError("the target grid needs all of --crs, --bounds and --res (or --like)")
        return target_grid(crs=a.crs, bounds=tuple(a.bounds), res=a.res, bounds_crs=a.bounds_crs)
    if a.like:
        return grid_like(a.like)
    cat = getattr(a, "catalog", None)
    if cat and Path(cat).exists() and not getattr(a, "append", False):
        try:
            return grid_like(cat)
        except IngestError:
            if required:
                raise
    return None


def _done(result: Any) -> int:
    print(result.summary())
    return 0


def _cmd_satellite(a: argparse.Namespace) -> int:
    from kgml_grid.ingest.satellite import ingest_satellite
    from kgml_grid.ingest.sources import RasterSource

    paths: dict[str, list[str]] = {}
    for text in a.source:
        var, sep, path = text.partition("=")
        if not sep or var not in _SAT_VARS:
            raise ValueError(
                f"--source {text!r}: write VAR=PATH with VAR one of {', '.join(_SAT_VARS)}"
            )
        paths.setdefault(var, []).append(path)
    pattern = _per_var(a.pattern, _SAT_VARS, str, "--pattern")
    scale = _per_var(a.scale, _SAT_VARS, float, "--scale")
    offset = _per_var(a.offset, _SAT_VARS, float, "--offset")
    nodata = _per_var(a.nodata, _SAT_VARS, float, "--nodata")
    vrange = _per_var(a.valid_range, _SAT_VARS, _range, "--valid-range")
    resampling = _per_var(a.resampling, _SAT_VARS, str, "--resampling")
    band = _per_var(a.band, _SAT_VARS, int, "--band")
    layer = _per_var(a.layer, _SAT_VARS, str, "--layer")
    sources = [
        RasterSource(
            v,
            tuple(p),
            pattern=_pick(pattern, v),
            scale=_pick(scale, v),
            offset=_pick(offset, v),
            nodata=_pick(nodata, v),
            valid_range=_pick(vrange, v),
            resampling=_pick(resampling, v) or "bilinear",
            crs=a.source_crs,
            band=_pick(band, v),
            layer=_pick(layer, v),
        )
        for v, p in paths.items()
    ]
    return _done(ingest_satellite(
        sources, a.out, grid=_grid(a, required=not a.append), chunks=_chunks(a.chunks), start=a.start,
        end=a.end, append=a.append, fill_gap=a.fill_gap, overwrite=a.overwrite, catalog=a.catalog,
        entry=a.entry or "satellite",
    ))  # fmt: skip


def _cmd_soil(a: argparse.Namespace) -> int:
    from kgml_grid.ingest.soil import ingest_soil
    from kgml_grid.ingest.sources import RasterSource

    props: dict[str, str] = {}
    for text in a.property:
        var, sep, path = text.partition("=")
        if not sep or var not in _SOIL_VARS:
            raise ValueError(
                f"--property {text!r}: write NAME=PATH with NAME one of {', '.join(_SOIL_VARS)}"
            )
        props[var] = path
    scale = _per_var(a.scale, _SOIL_VARS, float, "--scale")
    offset = _per_var(a.offset, _SOIL_VARS, float, "--offset")
    nodata = _per_var(a.nodata, _SOIL_VARS, float, "--nodata")
    resampling = _per_var(a.resampling, _SOIL_VARS, str, "--resampling")
    band = _per_var(a.band, _SOIL_VARS, int, "--band")
    layer = _per_var(a.layer, _SOIL_VARS, str, "--layer")
    sources = {
        v: RasterSource(
            v,
            (p,),
            scale=_pick(scale, v),
            offset=_pick(offset, v),
            nodata=_pick(nodata, v),
            resampling=_pick(resampling, v) or "average",
            crs=a.source_crs,
            band=_pick(band, v),
            layer=_pick(layer, v),
        )
        for v, p in props.items()
    }
    return _done(ingest_soil(sources, a.out, grid=_grid(a), chunks=_chunks(a.chunks), overwrite=a.overwrite,
                             catalog=a.catalog, entry=a.entry or "soil"))  # fmt: skip


def _cmd_crop(a: argparse.Namespace) -> int:
    from kgml_grid.ingest.cdl import CORN_CODES, SOYBEAN_CODES, YEAR_PATTERN, ingest_crop

    return _done(ingest_crop(
        a.files, a.out, grid=_grid(a, required=not a.append), pattern=a.pattern or YEAR_PATTERN,
        corn_codes=_codes(a.corn_codes) if a.corn_codes else CORN_CODES,
        soybean_codes=_codes(a.soybean_codes) if a.soybean_codes else SOYBEAN_CODES,
        extra_codes=_codes(a.extra_codes) if a.extra_codes else (), factor=a.factor,
        chunks=_chunks(a.chunks), append=a.append, overwrite=a.overwrite, catalog=a.catalog,
        entry=a.entry or "crop",
    ))  # fmt: skip


def _cmd_weather(a: argparse.Namespace) -> int:
    from kgml_grid.ingest.weather import ingest_weather

    mapping = {}
    for text in a.map or ():
        name, sep, spec = text.partition("=")
        if not sep:
            raise ValueError(f"--map {text!r}: write NAME=QUANTITY or NAME=QUANTITY:UNITS")
        mapping[name] = spec
    return _done(ingest_weather(
        a.files, a.out, preset=a.preset, mapping=mapping, grid=_grid(a, required=False),
        crs=a.source_crs, chunks=_chunks(a.chunks), start=a.start, end=a.end, append=a.append,
        fill_gap=a.fill_gap, overwrite=a.overwrite, catalog=a.catalog, entry=a.entry or "weather",
        incomplete_days=a.incomplete_days,
    ))  # fmt: skip


def _common(p: argparse.ArgumentParser, *, timed: bool = False, appendable: bool = True) -> None:
    p.add_argument("--out", required=True, help="output cube (a local .zarr folder)")
    g = p.add_argument_group("target grid")
    g.add_argument("--crs", help="target CRS, e.g. EPSG:5070")
    g.add_argument(
        "--bounds", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="target bounds"
    )
    g.add_argument("--bounds-crs", help="CRS of --bounds when not --crs (e.g. EPSG:4326)")
    g.add_argument("--res", type=float, help="target cell size in CRS units (e.g. 250)")
    g.add_argument("--like", help="take the target grid from this cube (.zarr) or catalog (.yaml)")
    p.add_argument("--chunks", help="chunks, e.g. time=365,y=256,x=256 (space tiles = y,x chunks)")
    if timed:
        p.add_argument("--start", help="first day (YYYY-MM-DD)")
        p.add_argument("--end", help="last day (YYYY-MM-DD)")
        p.add_argument(
            "--fill-gap", action="store_true", help="when appending, fill a gap with NaN days"
        )
    if appendable:
        p.add_argument(
            "--append", action="store_true", help="extend the existing cube with later dates/years"
        )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing cube (only a cube kgml_grid wrote, never a source file)",
    )
    p.add_argument("--catalog", help="catalog YAML to register the cube in (created if missing)")
    p.add_argument("--entry", help="catalog entry name (default: the layer)")
    p.add_argument("--source-crs", help="CRS the input files must have (refuse others)")


def _layer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--band",
        action="append",
        metavar="[VAR=]N",
        help="band of a multi-band GeoTIFF (required there: never band 1 silently)",
    )
    p.add_argument(
        "--layer",
        action="append",
        metavar="[VAR=]NAME",
        help="variable of a NetCDF/HDF5 file (GROUP/NAME in an HDF5 group); needed when it has several",
    )


def add_parser(subparsers: Any) -> None:
    """Register ``ingest`` and its ``satellite|soil|crop|weather`` subcommands."""
    ing = subparsers.add_parser(
        "ingest", help="real products (GeoTIFF, NetCDF) to aligned Zarr cubes"
    )
    sub = ing.add_subparsers(dest="ingest_command", required=True)

    s = sub.add_parser(
        "satellite",
        help="one GeoTIFF or NetCDF/HDF5 layer per date (SLOPE GPP, GLASS/MODIS LAI, SMAP)",
    )
    s.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="VAR=PATH",
        help=f"files of one variable ({', '.join(_SAT_VARS)}): file, folder or quoted glob; repeatable",
    )
    s.add_argument(
        "--pattern",
        action="append",
        metavar="[VAR=]PATTERN",
        help="file-name date pattern, e.g. 'SLOPE_GPP_{date:%%Y%%j}.tif' or 're:(?P<year>...)'",
    )
    s.add_argument(
        "--scale", action="append", metavar="[VAR=]F", help="scale factor (default: the file's)"
    )
    s.add_argument(
        "--offset", action="append", metavar="[VAR=]F", help="offset (default: the file's)"
    )
    s.add_argument(
        "--nodata", action="append", metavar="[VAR=]F", help="nodata value (default: the file's)"
    )
    s.add_argument("--valid-range", action="append", metavar="[VAR=]LO,HI", help="valid raw values")
    s.add_argument("--resampling", action="append", metavar="[VAR=]METHOD", help="default bilinear")
    _layer_options(s)
    _common(s, timed=True)
    s.set_defaults(func=_cmd_satellite)

    o = sub.add_parser("soil", help="one GeoTIFF per soil property (gSSURGO)")
    o.add_argument(
        "--property",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help=f"one of {', '.join(_SOIL_VARS)}; repeatable",
    )
    o.add_argument("--scale", action="append", metavar="[NAME=]F",
                   help="scale factor of a property's raw values (default: the file's)")  # fmt: skip
    o.add_argument("--offset", action="append", metavar="[NAME=]F",
                   help="offset of a property's raw values (default: the file's)")  # fmt: skip
    o.add_argument(
        "--nodata", action="append", metavar="[NAME=]F", help="nodata value (default: the file's)"
    )
    o.add_argument("--resampling", action="append", metavar="[NAME=]METHOD", help="default average")
    _layer_options(o)
    _common(o, appendable=False)
    o.set_defaults(func=_cmd_soil)

    c = sub.add_parser("crop", help="USDA CDL class rasters, one per year")
    c.add_argument("files", nargs="+", help="CDL GeoTIFFs (files, folders, quoted globs)")
    c.add_argument("--pattern", help="file-name pattern giving the year (default: first 19xx/20xx)")
    c.add_argument("--corn-codes", help="CDL codes counted as corn, e.g. 1,225,226,237 (default 1)")
    c.add_argument(
        "--soybean-codes", help="CDL codes counted as soybean, e.g. 5,26,254 (default 5)"
    )
    c.add_argument("--extra-codes", help="codes accepted beyond the published legend (as other)")
    c.add_argument(
        "--factor", type=int, help="fine cells per target cell side (default: res / CDL pixel)"
    )
    _common(c)
    c.set_defaults(func=_cmd_crop)

    w = sub.add_parser(
        "weather", help="daily or sub-daily NetCDF (gridMET, NLDAS-2, Daymet), native grid"
    )
    w.add_argument(
        "files",
        nargs="+",
        help="NetCDF files (files, folders, quoted globs); hourly files are aggregated to days",
    )
    w.add_argument(
        "--preset", choices=["gridmet", "nldas", "daymet"], help="variable mapping table"
    )
    w.add_argument(
        "--map",
        action="append",
        metavar="NAME=QUANTITY[:UNITS]",
        help="mapping entry, e.g. Rainf=precip:'kg m-2'; repeatable",
    )
    w.add_argument(
        "--incomplete-days",
        choices=["nan", "refuse"],
        default="nan",
        help="a day of sub-daily files without all its steps: NaN (default, counted) or refuse",
    )
    _common(w, timed=True)
    w.set_defaults(func=_cmd_weather)
