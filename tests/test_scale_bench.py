"""The scale benchmark (issue 13) runs end to end at a tiny size and reports what the
committed run reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.cluster
def test_scale_bench_runs_small_and_writes_json_and_md(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale_bench import main

    js, md = tmp_path / "scale.json", tmp_path / "scale.md"
    rc = main(["--work", str(tmp_path / "w"), "--json", str(js), "--md", str(md),
               "--preset", "small", "--accept-preset", "small", "--cpu-shape", "y=16,x=16",
               "--gpu-shape", "y=64,x=64", "--e2e-px", "64", "--e2e-days", "31",
               "--sample-s", "1", "--hidden", "8", "--max-tasks", "40"])  # fmt: skip
    assert rc == 0
    r = json.loads(js.read_text())
    cpu, gpu = r["plans"]["cpu"], r["plans"]["gpu"]
    assert cpu["blocks"] > gpu["blocks"] > 0 and cpu["grid"] == [256, 256]
    # set-up is metadata only: the same files whatever the number of blocks
    assert cpu["store_files_after_prepare"] == gpu["store_files_after_prepare"]
    sch = r["scheduling"]["cpu"]
    assert sch["scheduler_max_tasks_sampled"] <= sch["window"] <= 40
    assert sch["blocks_done"] >= 1 and sch["command_to_first_running_block_s"] > 0
    e = r["end_to_end"]
    assert e["crop_pixel_days"] > 0 and e["pixel_days_per_s"] > 0
    assert 0 < e["ratio_to_compute_limit"] < 2
    assert r["extrapolation"]["extrapolated"] is True
    acc = r["acceptance_first_block"]
    assert acc["command_to_first_running_block_s"] >= acc["plan_s"] > 0
    text = md.read_text()
    assert "EXTRAPOLATED" in text and "first running block" in text
