"""The memory claim, measured small: a raster of 16 tiles costs at most twice one of 1 tile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "ingest_memory.py"


def test_peak_memory_of_16_tiles_is_within_twice_one_tile(tmp_path):
    out = tmp_path / "mem.json"
    r = subprocess.run(
        [sys.executable, str(BENCH), "--tile", "96", "--factor", "4", "--no-baseline", "--out", str(out),
         "--work", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.exists(), r.stderr[-2000:]
    res = json.loads(out.read_text())
    one, sixteen = res["cases"]["one_tile"], res["cases"]["sixteen_tiles"]
    assert one["tiles"] == 1 and sixteen["tiles"] == 16
    assert sixteen["valid_output_cells"] == 16 * one["valid_output_cells"] == 16 * 96 * 96
    assert sixteen["raster_mpixels"] > 12 * one["raster_mpixels"]
    assert res["ratio"] <= 2.0, res
    assert r.returncode == 0
