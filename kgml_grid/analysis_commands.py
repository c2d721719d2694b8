"""``kgml-grid budget``: regional budgets of an upscaling store (parse, check, call
:mod:`kgml_grid.analysis`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import xarray as xr

__all__ = ["BudgetResult", "add_parsers", "run_budget"]


class BudgetResult(dict):
    """Paths written by :func:`run_budget` (``table``, ``chart``, ``meta``) and ``rows``."""


def open_upscaled(store: str | Path) -> tuple[xr.Dataset, dict[str, Any]]:
    """An upscaling store (lazily) and its plan; refuses anything else, naming it."""
    from kgml_grid import outputs

    p = Path(store)
    if not p.exists():
        raise ValueError(
            f"{p}: no such store; expected an upscaling output (kgml-grid upscale --out)"
        )
    if outputs.kind_of(p) != "upscale":
        raise ValueError(
            f"{p}: not an upscaling store written by kgml-grid upscale (no kgml_plan attribute)"
        )
    ds = xr.open_zarr(str(p), consolidated=False, decode_coords="all")
    if not ds.attrs.get("kgml_complete"):
        raise ValueError(
            f"{p}: the upscaling is not finished (not marked complete); rerun it with --resume"
        )
    return ds, json.loads(ds.attrs["kgml_plan"])


def crop_of_store(plan: dict[str, Any]) -> tuple[xr.DataArray, xr.DataArray | None]:
    """Crop type (and crop share) of the run's window and years, from its crop cube."""
    from kgml_grid.analysis.budgets import crop_layers

    path = Path(plan["paths"]["crop"])
    if not path.exists():
        raise ValueError(f"the run's crop cube {path} (kgml_plan.paths.crop of the store) is missing; "
                         "per-crop budgets and crop shares need it (pass --no-crop to leave them out)")  # fmt: skip
    crop = xr.open_zarr(str(path), consolidated=False)
    w = plan["window"]
    return crop_layers(crop, {"y": slice(*w["y"]), "x": slice(*w["x"])})


def run_budget(
    store: str | Path,
    zones: str | Path,
    out: str | Path,
    *,
    by: str = "year",
    field: str | None = None,
    chart: str | Path | None = None,
    use_crop: bool = True,
    overwrite: bool = False,
) -> BudgetResult:
    """Budgets of ``store`` by the zones of ``zones``: a table (CSV/Parquet), a PNG chart
    and a JSON sidecar. Every check runs before anything is computed or written.

    Raises
    ------
    ValueError
        For a store that is not a finished upscaling, a bad zone file, ``--by``, or
        output paths that are inputs or files kgml_grid did not write
        (:func:`kgml_grid.outputs.check_files`).
    """
    from kgml_grid import cubes, outputs
    from kgml_grid.analysis.area import cell_area
    from kgml_grid.analysis.budgets import (
        BY,
        SIDECAR_KEY,
        budget_chart,
        budget_table,
        check_table_path,
        is_our_sidecar,
        sidecar_path,
        write_table,
        zone_budgets,
    )
    from kgml_grid.analysis.zones import read_zones

    out = Path(out)
    check_table_path(out)
    if by not in BY:
        raise ValueError(f"--by {by!r}: expected one of {', '.join(BY)}")
    chart = Path(chart) if chart else out.with_suffix(".png")
    meta = sidecar_path(out)
    ds, plan = open_upscaled(store)
    inputs = [
        ("the upscaling store", store),
        ("the zone file", zones),
        ("the crop cube", plan["paths"]["crop"]),
    ]
    outputs.check_files([out, chart, meta], ours=is_our_sidecar(meta), what="a budget table", inputs=inputs,
                        overwrite=overwrite)  # fmt: skip
    grid = cubes.grid_of(ds, source=str(store), layer="upscale")
    zs = read_zones(zones, grid, field=field)
    crop_type, share = crop_of_store(plan) if use_crop else (None, None)
    b = zone_budgets(ds, zs, by=by, area=cell_area(grid), share=share, crop_type=crop_type)
    table = budget_table(b)
    write_table(table, out)
    budget_chart(table, chart, by=by, title=f"{Path(store).name} by {Path(zones).name}")
    from kgml_grid import __version__

    meta.write_text(json.dumps({
        SIDECAR_KEY: 1, "package_version": __version__, "store": str(Path(store).resolve()),
        "zones": str(Path(zones).resolve()), "by": by, "crop": use_crop, "crop_share": share is not None,
        "checkpoint_hash": ds.attrs.get("kgml_checkpoint_hash"), "table": out.name, "chart": chart.name,
        "units": {"*_TgC": "Tg C per period", "*_gCm2": "g C m-2 per period (zone mean)",
                  "*_anom_gCm2": "g C m-2 per period, minus the mean over the table's years",
                  "area_km2": "km2 (cell area x crop share, pixels with values)"},
        "rows": len(table)}, indent=1) + "\n")  # fmt: skip
    return BudgetResult(table=out, chart=chart, meta=meta, rows=len(table), frame=table)


def _cmd_budget(a: argparse.Namespace) -> int:
    res = run_budget(a.store, a.zones, a.out, by=a.by, field=a.zone_field, chart=a.chart,
                     use_crop=not a.no_crop, overwrite=a.overwrite)  # fmt: skip
    t = res["frame"]
    print(
        f"budget: {res['rows']} rows ({t['zone'].nunique()} zones, crops {', '.join(t['crop'].unique())}) -> {res['table']}"
    )
    print(f"chart: {res['chart']}")
    return 0


def _cmd_attribute(a: argparse.Namespace) -> int:
    from kgml_grid.analysis.attribution import attribute

    drivers = [d.strip() for d in a.drivers.split(",") if d.strip()] if a.drivers else None
    kw = {"drivers": drivers} if drivers else {}
    res = attribute(a.catalog, a.model, a.out, start=a.start, end=a.end, bbox=a.bbox, bbox_crs=a.bbox_crs,
                    chunks=a.chunks, cluster=a.cluster, n_workers=a.workers, maps=a.maps,
                    overwrite=a.overwrite, **kw)  # fmt: skip
    ds = res["dataset"]
    for v in ("ra", "rh"):
        s = ds[f"{v}_sensitivity"].mean(("year", "y", "x"))
        parts = [f"{d} {float(s.sel(driver=d)):+.3g}/{u}" for d, u in
                 zip(s["driver"].values, s["perturbation_unit"].values, strict=True)]  # fmt: skip
        print(
            f"annual {v} sensitivity, mean over crop pixels and years (g C m-2 yr-1): "
            + ", ".join(parts)
        )
    print(f"attribution: {res['out']}")
    for p in res["maps"]:
        print(f"map: {p}")
    return 0


def _cmd_ensemble(a: argparse.Namespace) -> int:
    from kgml_grid.analysis.ensemble import run_ensemble

    res = run_ensemble(a.catalog, a.models, a.out, zones=a.zones, zone_field=a.zone_field, table=a.table,
                       by=a.by, start=a.start, end=a.end, bbox=a.bbox, bbox_crs=a.bbox_crs, chunks=a.chunks,
                       overwrite=a.overwrite, on_plan=lambda ep: print(ep, flush=True))  # fmt: skip
    st = res["stats"]
    for v in ("ra", "rh", "nee"):
        m, sd = float(st[f"{v}_mean"].mean()), float(st[f"{v}_std"].mean())
        print(
            f"annual {v}: ensemble mean {m:.1f}, member spread (std) {sd:.1f} g C m-2 yr-1 (crop pixels, years)"
        )
    print(f"ensemble: {res['out']}")
    if "table" in res:
        print(f"budget: {len(res['frame'])} rows with the members' range -> {res['table']}")
        print(f"chart: {res['chart']}")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``budget``, ``attribute`` and ``ensemble`` on the ``kgml-grid`` sub-command parsers."""
    b = subparsers.add_parser(
        "budget", help="regional carbon budgets of an upscaling store by zones (table + chart)",
        description="Sum the daily fluxes of OUT.zarr by zone (polygons rasterised onto the grid, or a "
                    "zone raster) and by year, season or month: totals in Tg C and zone means in "
                    "g C m-2, per crop, Rh/Reco and anomalies against the run's mean.",
    )  # fmt: skip
    b.add_argument("store", help="upscaling output store (OUT.zarr)")
    b.add_argument(
        "--zones",
        required=True,
        help="GeoJSON, GeoPackage or Shapefile polygons, or a GeoTIFF of zone ids",
    )
    b.add_argument(
        "--zone-field",
        default=None,
        help="property naming the zones (default NAME, name, GEOID or id)",
    )
    b.add_argument(
        "--by",
        default="year",
        choices=["year", "season", "month"],
        help="period of the sums: year, season (DJF, MAM, JJA, SON) or month",
    )
    b.add_argument("--out", required=True, help="table: .csv or .parquet")
    b.add_argument("--chart", default=None, help="PNG chart (default: the table's name with .png)")
    b.add_argument("--no-crop", action="store_true", help="no per-crop rows and no crop shares")
    b.add_argument(
        "--overwrite", action="store_true", help="replace a budget table kgml_grid wrote"
    )
    b.set_defaults(func=_cmd_budget)

    t = subparsers.add_parser(
        "attribute", help="controlling factors: model sensitivities and interannual attribution (Zarr + maps)",
        description="Run the upscaling blocks again with each driver perturbed (air temperature +1 degC; "
                    "precipitation, shortwave, VPD, GPP, SOC x 1.1) on the same engine and state chain; "
                    "write the responses of annual Ra and Rh, and a per-pixel regression of their "
                    "interannual anomalies on the drivers' (dominant factor, R2).",
    )  # fmt: skip
    t.add_argument("--catalog", required=True, help="catalog of the input cubes")
    t.add_argument("--model", required=True, help="checkpoint directory")
    t.add_argument("--out", required=True, help="output Zarr store")
    t.add_argument("--start", help="first day, YYYY-MM-DD (default: first day of the cubes)")
    t.add_argument("--end", help="last day, YYYY-MM-DD (default: last day of the cubes)")
    t.add_argument("--bbox", metavar="W,S,E,N", help="sub-domain in the grid's CRS (or --bbox-crs)")
    t.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326")
    t.add_argument(
        "--chunks",
        metavar="y=N,x=N,time=N",
        help="tile and time-chunk sizes as for upscale (default: the cube's)",
    )
    t.add_argument(
        "--drivers",
        help="comma-separated subset of tair,precip,swrad,vpd,gpp_sat,soc (default all)",
    )
    t.add_argument("--cluster", default="threads",
                   help="'threads' (this process, default), 'local', tcp://HOST:PORT, a scheduler file or cluster/*.yaml")  # fmt: skip
    t.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers of a local cluster (default: one per core)",
    )
    t.add_argument(
        "--maps", metavar="DIR", help="also write sensitivity and dominant-factor maps (PNG) here"
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an attribution store (and --maps) kgml_grid wrote",
    )
    t.set_defaults(func=_cmd_attribute)

    e = subparsers.add_parser(
        "ensemble", help="uncertainty: upscale several checkpoints together (mean, spread, budget range)",
        description="Plan every member on the same grid, years and chunks (the plan prints the ensemble's "
                    "cost), upscale them together, and write per-pixel annual Ra, Rh, Reco, NEE of each "
                    "member with their mean, std and range; with --zones also a budget table whose numbers "
                    "carry the members' min and max.",
    )  # fmt: skip
    e.add_argument("--catalog", required=True, help="catalog of the input cubes")
    e.add_argument("--models", required=True, nargs="+", metavar="MODEL",
                   help="checkpoint directories (at least two: seeds, leave-one-tower-out fine-tunings)")  # fmt: skip
    e.add_argument("--out", required=True, help="output Zarr store (annual members, mean, spread)")
    e.add_argument(
        "--zones", help="GeoJSON, GeoPackage or Shapefile polygons, or a GeoTIFF of zone ids"
    )
    e.add_argument(
        "--zone-field",
        default=None,
        help="property naming the zones (default NAME, name, GEOID or id)",
    )
    e.add_argument(
        "--table", help="budget table, .csv or .parquet (default: OUT's name + _budget.csv)"
    )
    e.add_argument(
        "--by",
        default="year",
        choices=["year", "season", "month"],
        help="period of the budget sums",
    )
    e.add_argument("--start", help="first day, YYYY-MM-DD (default: first day of the cubes)")
    e.add_argument("--end", help="last day, YYYY-MM-DD (default: last day of the cubes)")
    e.add_argument("--bbox", metavar="W,S,E,N", help="sub-domain in the grid's CRS (or --bbox-crs)")
    e.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326")
    e.add_argument(
        "--chunks", metavar="y=N,x=N,time=N", help="tile and time-chunk sizes as for upscale"
    )
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an ensemble store (and table) kgml_grid wrote",
    )
    e.set_defaults(func=_cmd_ensemble)
