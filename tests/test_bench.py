"""Benchmarks: the pure arithmetic (shapes, recommendation, ratios) and one run of every
benchmark part on the tiny preset, through ``kgml-grid bench``, so that none can
silently break."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from kgml_grid.bench import (
    TARGETS,
    BenchConfig,
    ChunkShape,
    acceptance,
    default_shapes,
    format_markdown,
    recommend,
    run_benchmark,
    scaling_domains,
    time_split,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("64x365", ChunkShape(64, 64, 365)),
        ("32x64x92", ChunkShape(32, 64, 92)),
        ("y=48,x=24,time=30", ChunkShape(48, 24, 30)),
        ("16x-1", ChunkShape(16, 16, -1)),
    ],
)
def test_chunk_shape_parse(text, shape):
    assert ChunkShape.parse(text) == shape
    assert ChunkShape.parse(shape.chunks) == shape


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("64", "cannot be read"),
        ("64x0", "time must be a positive integer or -1"),
        ("0x365", "tile_y must be a positive integer"),
        ("y=64,time=365", "give y, x and time"),
        ("y=64,x=64,t=365", "unknown dimension 't'"),
    ],
)
def test_chunk_shape_parse_refuses(text, match):
    with pytest.raises(ValueError, match=match):
        ChunkShape.parse(text)


def test_default_shapes():
    shapes = default_shapes((64, 128), 365, cube_tile=64)
    assert len(shapes) >= 6 and len(set(shapes)) == len(shapes)
    assert ChunkShape(64, 128, 365) in shapes  # 2b clipped to the domain: one tile
    assert {s.time for s in shapes} == {365, 92, 31}
    assert all(s.tile_y <= 64 and s.tile_x <= 128 for s in shapes)
    quick = default_shapes((20, 24), 90, cube_tile=20, quick=True)
    assert quick == [ChunkShape(10, 10, 90), ChunkShape(20, 20, 23)]
    long = default_shapes((320, 320), 1461, cube_tile=64)
    assert max(s.time for s in long) == 365  # a year at most per chunk by default


def test_scaling_domains():
    assert scaling_domains((64, 128), (320, 320)) == ((64, 128), (128, 256))
    assert scaling_domains((20, 24), (20, 24)) == ((10, 12), (20, 24))
    with pytest.raises(ValueError, match="too small to halve"):
        scaling_domains((1, 24), (1, 24))


def test_recommend_prefers_less_memory_within_noise():
    rows = [
        {"label": "a", "pixel_days_per_s": 100.0, "peak_memory_per_worker_mib": 900, "tasks": 10},
        {"label": "b", "pixel_days_per_s": 97.0, "peak_memory_per_worker_mib": 500, "tasks": 40},
        {"label": "c", "pixel_days_per_s": 60.0, "peak_memory_per_worker_mib": 100, "tasks": 5},
    ]
    assert recommend(rows)["label"] == "b"
    assert recommend(rows, tolerance=0.0)["label"] == "a"
    with pytest.raises(ValueError, match="no rows"):
        recommend([])


def _fake_result():
    row = {"label": "8x8 px x 30 d", "chunks": "y=8,x=8,time=30", "pixel_days_per_s": 80.0,
           "peak_memory_per_worker_mib": 400.0, "tasks": 12, "wall_s": 1.0,
           "io_limit": {"pixel_days_per_s": 300.0}}  # fmt: skip
    return {
        "config": {"preset": "tiny", "domain": [8, 8], "pixel_days": 1000, "workers": 2},
        "sweep": [row],
        "recommended": row,
        "limits": {"compute": {"pixel_days_per_s": 90.0, "variant": "2 x 1"}, "io": {"pixel_days_per_s": 300.0}},
        "peers": {"map_blocks": {"pixel_days_per_s": 40.0}, "patch_loop": {"pixel_days_per_s": 100.0}},
        "scaling": {
            "workers_1": {"pixel_days_per_s": 50.0}, "workers_2": {"pixel_days_per_s": 80.0},
            "domain_1x": {"peak_memory_per_worker_mib": 400.0}, "domain_4x": {"peak_memory_per_worker_mib": 500.0},
        },
    }  # fmt: skip


def test_acceptance_ratios():
    acc = acceptance(_fake_result())
    assert set(acc) == set(TARGETS)
    assert acc["end_to_end_vs_min_limit"]["value"] == pytest.approx(80 / 90, abs=1e-3)
    assert acc["end_to_end_vs_min_limit"]["met"] is True
    assert "the compute limit" in acc["end_to_end_vs_min_limit"]["what"]
    assert acc["end_to_end_vs_map_blocks"]["met"] is True
    assert acc["end_to_end_vs_patch_loop"] == {
        **acc["end_to_end_vs_patch_loop"],
        "value": 0.8,
        "met": False,
    }
    assert acc["workers_2_vs_1"]["value"] == pytest.approx(1.6) and not acc["workers_2_vs_1"]["met"]
    assert (
        acc["memory_4x_vs_1x"]["value"] == pytest.approx(1.25) and not acc["memory_4x_vs_1x"]["met"]
    )
    md = format_markdown({**_fake_result(), "acceptance": acc})
    assert "| 8x8 px x 30 d **(recommended)** |" in md and "**no**" in md


def test_median_run():
    from kgml_grid.bench import median_run as _median_run

    runs = [
        {"pixel_days_per_s": v, "peak_memory_per_worker_mib": m}
        for v, m in ((5, 1), (9, 2), (7, 3), (1, 4))
    ]
    med = _median_run(runs)
    assert (
        med["pixel_days_per_s"] == 5 and med["peak_memory_per_worker_mib"] == 1
    )  # lower median of 4
    assert med["repeats"] == 4 and med["pixel_days_per_s_each"] == [5, 9, 7, 1]
    assert _median_run(runs[:3])["pixel_days_per_s"] == 7


def test_time_split_adds_up():
    timers = {"read_block": [3.0, 4], "assemble": [1.0, 4], "model": [5.0, 8], "compute_block": [9.0, 4],
              "write_block": [2.0, 4]}  # fmt: skip
    ts = time_split(timers, wall=10.0, workers=2)
    sec = ts["seconds"]
    assert sec == {"read": 2.0, "assemble": 1.0, "model": 5.0, "compute_other": 1.0, "write": 2.0,
                   "outside_tasks": 9.0}  # fmt: skip
    assert sum(sec.values()) == pytest.approx(ts["worker_seconds"]) == 20.0
    assert ts["blocks_timed"] == 4 and ts["model_seconds_per_block"] == 1.25


def test_cuda_refused_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_benchmark(BenchConfig(out=tmp_path, preset="tiny", device="cuda"))
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


def test_cli_registers_bench():
    from kgml_grid.cli import build_parser

    a = build_parser().parse_args(["bench", "--preset", "tiny", "--out", "x", "--shapes", "10x30", "8x12x45",
                                   "--device", "cuda", "--workers", "1"])  # fmt: skip
    assert a.command == "bench" and a.shapes == ["10x30", "8x12x45"] and a.device == "cuda"
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_bench
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as e:
        run_bench.main(["--help"])
    assert e.value.code == 0


# --------------------------------------------------------------------------------------
# the package layout
# --------------------------------------------------------------------------------------

#: Every name of the former single module ``kgml_grid/bench.py`` that a caller may
#: import (benchmarks/*.py import the three private ones).
FORMER_NAMES = (
    "MIB", "TARGETS", "BenchConfig", "ChunkShape", "acceptance", "default_shapes", "format_markdown",
    "format_summary", "install_timers", "is_bench_result", "machine_description", "make_bench_checkpoint",
    "mem_peak", "mem_reset", "mem_sampler_start", "plot_sweep", "rate", "read_timers", "recommend",
    "run_benchmark", "run_compute_limit", "run_end_to_end", "run_io_limit", "run_peer_map_blocks",
    "run_peer_patch_loop", "scaling_domains", "time_split", "_bbox", "_catalog_path", "_median_run",
)  # fmt: skip


def test_bench_package_keeps_the_former_names():
    import kgml_grid.bench as bench

    missing = [n for n in (*FORMER_NAMES, *bench.__all__) if not hasattr(bench, n)]
    assert not missing
    assert bench._median_run is bench.median_run and bench._bbox is bench.window_bbox
    assert bench._catalog_path is bench.catalog_path
    assert bench.run_benchmark.__module__ == "kgml_grid.bench.benchmark"


def _bench_imports() -> dict[str, set[str]]:
    """``module -> the kgml_grid.bench modules it imports`` (anywhere in the file)."""
    import ast

    pkg = REPO / "kgml_grid" / "bench"
    graph: dict[str, set[str]] = {}
    for f in sorted(pkg.glob("*.py")):
        if f.name == "__init__.py":
            continue
        deps = graph.setdefault(f.stem, set())
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                deps.add(f"<relative import, line {node.lineno}>")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n == "kgml_grid.bench" or n.startswith("kgml_grid.bench."):
                    deps.add(
                        n.removeprefix("kgml_grid.bench").removeprefix(".").split(".")[0]
                        or "__init__"
                    )
    return graph


def test_bench_package_imports_run_one_way():
    import graphlib

    graph = _bench_imports()
    assert {
        "shapes",
        "ratios",
        "report",
        "instruments",
        "limits",
        "peers",
        "runners",
        "benchmark",
    } <= set(graph)
    for mod, deps in graph.items():
        assert "__init__" not in deps, f"kgml_grid.bench.{mod} imports the package itself"
        assert not [d for d in deps if d.startswith("<")], f"kgml_grid.bench.{mod}: {deps}"
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index("shapes") < order.index("runners") < order.index("benchmark")
    for f in (REPO / "kgml_grid" / "bench").glob("*.py"):
        assert len(f.read_text().splitlines()) < 600, f.name


def test_import_graph_check_sees_a_cycle():
    """The check above can fail: a cycle makes graphlib refuse."""
    import graphlib

    graph = _bench_imports()
    graph["shapes"] = {*graph["shapes"], "benchmark"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


# --------------------------------------------------------------------------------------
# every part once, on the tiny preset
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_result(tiny_world, tmp_path_factory):
    """``kgml-grid bench --quick`` on the tiny world: 2 shapes, 90 days, hidden-8 model."""
    from kgml_grid.cli import main

    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--preset", "tiny", "--world", str(tiny_world.catalog), "--out", str(out), "--quick",
               "--hidden", "8", "--max-seconds", "20", "--quiet"])  # fmt: skip
    assert rc == 0
    return out, json.loads((out / "bench_tiny.json").read_text())


def test_tiny_run_structure(tiny_result):
    _, res = tiny_result
    cfg = res["config"]
    assert cfg["domain"] == [20, 24] and cfg["days"] == 90 and cfg["workers"] == 2
    assert res["command"].startswith("kgml-grid bench --preset tiny --out ")
    assert res["command"].endswith(
        "--hidden 8 --quick --world " + cfg["world"] + " --max-seconds 20.0 --quiet"
    )
    for k in ("cpu", "cores", "load_average_at_start", "load_average_at_end", "torch"):
        assert k in res["machine"]
    assert (
        [r["chunks"] for r in res["sweep"]]
        == cfg["shapes"]
        == ["y=10,x=10,time=90", "y=20,x=20,time=23"]
    )
    for r in res["sweep"]:
        assert r["pixel_days_per_s"] > 0 and r["wall_s"] > 0 and r["tasks"] > 0
        assert r["pixel_days"] == cfg["pixel_days"]
        assert 50 < r["peak_memory_per_worker_mib"] < 8000
        assert r["io_limit"]["pixel_days_per_s"] > 0 and r["io_limit"]["mib_read"] > 0
        for run in (r, r["io_limit"]):  # each measurement starts with cold chunk caches
            assert run["chunk_cache"]["misses"] > 0 and run["chunk_cache"]["hits"] > 0
        split = r["time_split"]
        assert split["blocks_timed"] == r["blocks"] and split["seconds"]["model"] > 0
        assert sum(split["seconds"].values()) == pytest.approx(split["worker_seconds"], abs=0.05)
        assert r["model_only_pixel_days_per_s"] > r["pixel_days_per_s"]
    assert res["recommended"]["label"] in {r["label"] for r in res["sweep"]}
    lim = res["limits"]
    for k in ("compute", "compute_threads", "compute_processes", "io", "io_with_assembly"):
        assert lim[k]["pixel_days_per_s"] > 0, k
    assert lim["compute"]["pixel_days_per_s"] == max(lim["compute_threads"]["pixel_days_per_s"],
                                                     lim["compute_processes"]["pixel_days_per_s"])  # fmt: skip
    assert lim["compute_threads"]["threads"] == 2 and lim["compute_processes"]["threads"] == 1
    assert lim["compute_processes"]["processes"] in (
        1,
        2,
    )  # as many as there are batches to share, at most 2
    for k in ("compute_threads", "compute_processes"):
        assert lim[k]["pixel_days_done"] == res["end_to_end"]["pixel_days"] or lim[k]["truncated"]
    for k in ("map_blocks", "patch_loop"):
        assert res["peers"][k]["pixel_days_per_s"] > 0
    e2e = res["end_to_end"]
    assert (
        e2e["chunks"] == res["recommended"]["chunks"]
        and e2e["domain"] == [10, 12]
        and e2e["repeats"] == 1
    )
    assert (
        e2e["pixel_days"] < cfg["pixel_days"]
    )  # the 1x domain of the scaling part (half the sides)
    sc = res["scaling"]
    assert sc["domain_1x"] == e2e == sc["workers_2"]
    assert sc["domain_1x"]["domain"] == [10, 12] and sc["domain_4x"]["domain"] == [20, 24]
    assert sc["workers_1"]["workers"] == 1 and sc["workers_2"]["workers"] == 2
    assert sc["workers_1"]["repeats"] == 1 and len(sc["workers_2"]["pixel_days_per_s_each"]) == 1
    for k in ("workers_1", "workers_2", "domain_1x", "domain_4x"):
        assert sc[k]["pixel_days_per_s"] > 0 and sc[k]["peak_memory_per_worker_mib"] > 0


def test_tiny_ratios_from_the_same_run(tiny_result):
    _, res = tiny_result
    acc = res["acceptance"]
    assert set(acc) == set(TARGETS)
    rec, lim = res["end_to_end"], res["limits"]
    want = rec["pixel_days_per_s"] / min(
        lim["compute"]["pixel_days_per_s"], lim["io"]["pixel_days_per_s"]
    )
    assert acc["end_to_end_vs_min_limit"]["value"] == pytest.approx(want, abs=1.5e-3)
    assert acc["end_to_end_vs_map_blocks"]["value"] == pytest.approx(
        rec["pixel_days_per_s"] / res["peers"]["map_blocks"]["pixel_days_per_s"], abs=1.5e-3
    )
    sc = res["scaling"]
    assert acc["workers_2_vs_1"]["value"] == pytest.approx(
        sc["workers_2"]["pixel_days_per_s"] / sc["workers_1"]["pixel_days_per_s"], abs=1.5e-3
    )
    assert acc["memory_4x_vs_1x"]["value"] == pytest.approx(
        sc["domain_4x"]["peak_memory_per_worker_mib"]
        / sc["domain_1x"]["peak_memory_per_worker_mib"],
        abs=1.5e-3,
    )
    for a in acc.values():
        assert isinstance(a["met"], bool) and math.isfinite(a["value"])


def test_tiny_files(tiny_result):
    out, res = tiny_result
    png = out / "bench_tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (out / "bench_tiny.md").read_text()
    assert "(recommended)" in md and "compute limit" in md and "acceptance ratio" in md
    assert "**end-to-end** (upscale, 2 workers" in md
    assert res["files"] == {
        "json": "bench_tiny.json",
        "png": "bench_tiny.png",
        "markdown": "bench_tiny.md",
    }


def test_output_codec_benchmark_runs_and_names_the_engines_codec(tiny_world, tmp_path):
    """``benchmarks/output_codecs.py`` once on the tiny world (the claim behind the
    output store's Zstd level 1)."""
    from kgml_grid.execute import _output_compressors

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import output_codecs
    finally:
        sys.path.pop(0)
    out = tmp_path / "codecs.json"
    assert (
        output_codecs.main(
            ["--world", str(tiny_world.catalog), "--out", str(out), "--repeats", "2"]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["block"]["crop_pixels"] > 0 and 0 < res["block"]["nan_fraction"] < 1
    engine = [c.to_dict() for c in _output_compressors()]
    assert [r["zarr_codec"] for n, r in res["codecs"].items() if "engine" in n] == engine
    for r in res["codecs"].values():
        assert r["ratio"] > 1 and r["encode_ms_block"] > 0 and r["decode_ms_block"] > 0
