"""Peak memory of sub-daily weather ingestion: 2 days vs 8 days of hourly NLDAS-2 files.

The claim measured: ``ingest weather`` aggregates hourly files to days one day of one
native tile at a time (with at most 48 files open), so peak memory does not grow with the
number of hours. The inputs are copies of the real NLDAS-2 FORA hour
``shared/data/real/rasters/nldas_clip-raster/NLDAS_FORA0125_H.A20000101.0000.002.grb.SUB.nc4``
(full 224 x 464 domain, CDO-written netCDF-4, as GES DISC ships it) with only the time
stamp changed (one file per hour); the whole native grid is ingested (no target grid) in
one time block of all days. Each case runs in its own process (``--child``) that reports
its peak RSS (``resource.getrusage``).

Run (the committed result)::

    .venv/bin/python benchmarks/ingest_hourly_memory.py --out benchmarks/results/ingest_hourly_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "real"
    / "rasters"
    / "nldas_clip-raster"
)
HOUR = REAL / "NLDAS_FORA0125_H.A20000101.0000.002.grb.SUB.nc4"


def write_hours(folder: Path, days: int) -> int:
    """``days x 24`` copies of the real hour, stamped 2000-01-01T00 onward."""
    import netCDF4
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    for t in pd.date_range("2000-01-01", periods=days * 24, freq="h"):
        p = folder / f"NLDAS_FORA0125_H.A{t:%Y%m%d}.{t:%H}00.002.grb.SUB.nc4"
        shutil.copyfile(HOUR, p)
        with netCDF4.Dataset(p, "a") as nc:
            nc["time"].units = f"hours since {t:%Y-%m-%d %H}:00:00"
    return days * 24


def child(folder: Path, out: Path) -> dict[str, object]:
    from kgml_grid.ingest import ingest_weather

    t0 = time.perf_counter()
    res = ingest_weather([folder], out, preset="nldas", chunks={"time": 366, "y": 256, "x": 256})
    return {"seconds": round(time.perf_counter() - t0, 2), "files": res.files, "days": res.sizes["time"],
            "incomplete": dict(res.incomplete), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                     / 1024, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    cases = {}
    with tempfile.TemporaryDirectory(prefix="kgml_hourly_") as tmp:
        for d in a.days:
            folder = Path(tmp) / f"d{d}"
            write_hours(folder, d)
            r = subprocess.run([sys.executable, __file__, "--child", str(folder), str(Path(tmp) / f"w{d}.zarr")],
                               check=True, capture_output=True, text=True)  # fmt: skip
            cases[f"{d}_days"] = json.loads(r.stdout.strip().splitlines()[-1])
            shutil.rmtree(folder)
    lo, hi = cases[f"{a.days[0]}_days"], cases[f"{a.days[-1]}_days"]
    result = {
        "command": " ".join(["benchmarks/ingest_hourly_memory.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
        "input": f"{HOUR.name} copied per hour (224 x 464 cells, 5 variables read)",
        "cases": cases,
        "peak_ratio": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
