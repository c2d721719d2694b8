"""Peak memory of raster ingestion: a raster of 1 output tile vs one of 16 tiles (4 x 4).

The claim measured: ingestion reprojects tile by tile, reading only the source window each
output tile needs, so peak memory does not grow with the raster. Each case runs in its own
process (``--child``) that reports its peak RSS (``resource.getrusage(RUSAGE_SELF)``):

* ``baseline``: imports and reads the raster's metadata, ingests nothing;
* ``one_tile``: ingests a raster covering one output tile;
* ``sixteen_tiles``: ingests a raster covering 4 x 4 output tiles (16 times the data);
* ``whole_raster`` (``--naive``): what the tiles replace: rioxarray reads the 16-tile
  raster whole and reprojects it in one call.

Rasters: int16 GeoTIFFs (deflate, 512 x 512 blocks, scale factor 0.01) in UTM 14N at
``250 / factor`` m, onto an EPSG:5070 grid at 250 m with space tiles of ``tile x tile``
cells, ``average`` resampling (each tile reads about ``(tile * factor)^2`` source pixels).

Run (the committed result)::

    .venv/bin/python benchmarks/ingest_memory.py --tile 512 --factor 8 --naive \\
        --out benchmarks/results/ingest_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

UTM = "EPSG:32614"
TARGET_CRS = "EPSG:5070"
RES = 250.0
CENTRE = (-98.5, 41.5)  # central Nebraska, well inside UTM zone 14


def _grid(n_tiles_side: int, tile: int):  # type: ignore[no-untyped-def]
    from kgml_grid.grid import centred_grid

    n = n_tiles_side * tile
    return centred_grid(*CENTRE, ny=n, nx=n, res=RES, crs=TARGET_CRS)


def _raster_path(work: Path, case: str) -> Path:
    return work / case / "SLOPE_GPP_2015182.tif"


def write_raster(work: Path, case: str, *, tile: int, factor: int) -> dict[str, object]:
    """The source raster of a case: covers the case's target grid (plus a margin) in UTM."""
    from affine import Affine
    from pyproj import Transformer

    from kgml_grid.ingest.examples import write_geotiff_blocks

    grid = _grid(1 if case == "one_tile" else 4, tile)
    src_res = RES / factor
    w, s, e, n = Transformer.from_crs(TARGET_CRS, UTM, always_xy=True).transform_bounds(
        *grid.bounds, densify_pts=21
    )
    margin = 4 * RES
    x0 = math.floor((w - margin) / src_res) * src_res
    y0 = math.ceil((n + margin) / src_res) * src_res
    shape = (math.ceil((y0 - s + margin) / src_res), math.ceil((e + margin - x0) / src_res))

    def fill(rows: slice, cols: slice) -> np.ndarray:  # smooth GPP-like field, 0..15 g m-2 d-1
        r = np.arange(rows.start, rows.stop)[:, None]
        c = np.arange(cols.start, cols.stop)[None, :]
        return (750 + 400 * np.sin(r / 700.0) * np.cos(c / 900.0) + (r * 7 + c * 13) % 50).astype(
            "int16"
        )

    p = _raster_path(work, case)
    write_geotiff_blocks(p, shape=shape, dtype="int16", crs=UTM, transform=Affine(src_res, 0, x0, 0, -src_res, y0),
                         fill=fill, nodata=-32768, scale=0.01)  # fmt: skip
    return {"raster_shape": list(shape), "raster_mpixels": round(shape[0] * shape[1] / 1e6, 1),
            "raster_mb_in_memory_int16": round(shape[0] * shape[1] * 2 / 2**20, 1),
            "file_mb": round(p.stat().st_size / 2**20, 1), "target_shape": list(grid.shape)}  # fmt: skip


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def child(case: str, work: Path, tile: int) -> dict[str, object]:
    """Run one case in this process and report its peak RSS."""
    t0 = time.perf_counter()
    if case == "whole_raster":
        import rioxarray

        grid = _grid(4, tile)
        da = rioxarray.open_rasterio(_raster_path(work, "sixteen_tiles"), masked=True).squeeze(
            "band", drop=True
        )
        out = da.rio.reproject(
            TARGET_CRS, shape=grid.shape, transform=_transform(grid), resampling=5
        )  # average
        tiles, n_out = 0, int(out.count())
    else:
        from kgml_grid.ingest import RasterSource, ingest_satellite
        from kgml_grid.ingest.rasters import inspect_raster

        src = _raster_path(
            work, "one_tile" if case in ("baseline", "one_tile") else "sixteen_tiles"
        )
        if case == "baseline":
            inspect_raster(src)
            tiles, n_out = 0, 0
        else:
            grid = _grid(1 if case == "one_tile" else 4, tile)
            out_path = work / case / "satellite.zarr"
            res = ingest_satellite(
                [RasterSource("gpp_sat", (str(src),), pattern="SLOPE_GPP_{date:%Y%j}.tif", resampling="average")],
                out_path, grid=grid, chunks={"time": 1, "y": tile, "x": tile}, overwrite=True,
            )  # fmt: skip
            tiles, n_out = res.tiles, -1  # counted by the parent, outside the measurement
    return {"case": case, "peak_rss_mb": round(_peak_mb(), 1), "seconds": round(time.perf_counter() - t0, 2),
            "tiles": tiles, "valid_output_cells": n_out}  # fmt: skip


def _count_valid(path: Path) -> int:
    """Output cells with a value, read one chunk at a time (checks the ingestion did its job)."""
    import xarray as xr

    da = xr.open_zarr(path, consolidated=False)["gpp_sat"]
    return int(da.notnull().sum().compute(scheduler="synchronous"))


def _transform(grid):  # type: ignore[no-untyped-def]
    from affine import Affine

    return Affine(grid.res, 0, grid.x0, 0, -grid.res, grid.y0)


def _run_child(case: str, work: Path, tile: int) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", case, "--work", str(work), "--tile", str(tile)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    """What ran the benchmark."""
    import rasterio

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gib": mem, "gpu": "none (not used)", "platform": platform.platform(),
            "python": platform.python_version(), "gdal": rasterio.__gdal_version__,
            "rasterio": rasterio.__version__}  # fmt: skip


def run(
    *, tile: int, factor: int, naive: bool, baseline: bool = True, work: Path | None = None
) -> dict[str, object]:
    """Write both rasters, measure every case in its own process, return the result."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="kgml_ingest_mem_")) if work is None else work
    try:
        rasters = {
            c: write_raster(work, c, tile=tile, factor=factor)
            for c in ("one_tile", "sixteen_tiles")
        }
        names = (
            ("baseline", "one_tile", "sixteen_tiles") if baseline else ("one_tile", "sixteen_tiles")
        )
        cases = {c: _run_child(c, work, tile) for c in names}
        for c in ("one_tile", "sixteen_tiles"):
            cases[c]["valid_output_cells"] = _count_valid(work / c / "satellite.zarr")
        if naive:
            cases["whole_raster"] = _run_child("whole_raster", work, tile)
        for c, info in rasters.items():
            cases[c].update(info)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    one, sixteen = (cases[c]["peak_rss_mb"] for c in ("one_tile", "sixteen_tiles"))
    ratio = sixteen / one  # type: ignore[operator]
    base = cases["baseline"]["peak_rss_mb"] if baseline else None
    net = None if base is None else round((sixteen - base) / max(one - base, 1e-9), 3)  # type: ignore[operator]
    return {
        "what": "peak RSS of ingesting one raster of 16 output tiles vs one of 1 tile (same tile size)",
        "machine": machine(),
        "config": {
            "tile_cells": tile,
            "source_pixels_per_cell_side": factor,
            "source_res_m": RES / factor,
            "target_res_m": RES,
            "source_crs": UTM,
            "target_crs": TARGET_CRS,
            "resampling": "average",
            "source_dtype": "int16",
            "gdal_cache_mb": 32,
        },
        "cases": cases,
        "one_tile_peak_mb": one,
        "sixteen_tiles_peak_mb": sixteen,
        "ratio": round(ratio, 3),
        "ratio_above_baseline": net,
        "bound": 2.0,
        "within_bound": ratio <= 2.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=512, help="output tile side in cells (default 512)")
    ap.add_argument(
        "--factor", type=int, default=8, help="source pixels per output cell side (default 8)"
    )
    ap.add_argument(
        "--naive", action="store_true", help="also measure a whole-raster rioxarray reprojection"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the imports-only case")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    ap.add_argument(
        "--work", default=None, help="folder for the rasters (default: a temporary one)"
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, Path(a.work), a.tile)))
        return 0
    result = run(
        tile=a.tile,
        factor=a.factor,
        naive=a.naive,
        baseline=not a.no_baseline,
        work=Path(a.work) if a.work else None,
    )
    exe = os.path.relpath(sys.executable)
    result["command"] = " ".join([exe if not exe.startswith("..") else sys.executable, *sys.argv])
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
