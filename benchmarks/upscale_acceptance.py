"""Acceptance measurements of the upscaling engine on the demo domain.

Run from the repository root::

    .venv/bin/python benchmarks/upscale_acceptance.py --work /tmp/kgml_accept \
        --json benchmarks/results/upscale_acceptance.json

Measures, in one run on this machine:

1. **2-worker upscale vs in-memory run**: the demo domain (96 x 96 pixels x 8 years)
   upscaled on a 2-worker ``LocalCluster`` (worker processes, 1 thread each) with the
   default chunks, compared with :func:`kgml_grid.execute.direct_run` (the model over
   the same pixels, whole time range, in memory, no tiles, no time chunks, no Dask):
   max abs difference per variable; then the annual maps (PNG).
2. **Kill and resume**: ``kgml-grid upscale`` run as a subprocess against real
   ``dask scheduler``/``dask worker`` processes, killed (SIGKILL) once some blocks are
   recorded, rerun with ``--resume``: blocks recomputed vs missing, and the store
   compared with the clean run of step 1 (same plan, same checkpoint).
3. **Graph of a grid 100 times larger** (960 x 960 pixels x 8 years, cubes with
   metadata only, crop types tiled from the demo): time to plan and to build the graph,
   its task count against the plan's, its pickled size.

The in-memory reference runs with one torch thread, like each worker. The checkpoint
is a randomly initialised KGML model (the engine does not care whether
it was trained) with normalization statistics from a sample of demo pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import dask
    import distributed
    import torch
    import xarray
    import zarr

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "gpu": None,
        "python": platform.python_version(), "torch": torch.__version__, "dask": dask.__version__,
        "distributed": distributed.__version__, "xarray": xarray.__version__, "zarr": zarr.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }  # fmt: skip


def make_checkpoint(world_catalog: Path, path: Path, *, hidden: int, seed: int = 0) -> Path:
    import dask
    import torch

    from kgml_grid.catalog import open_catalog
    from kgml_grid.checkpoint import fit_norm, save_checkpoint
    from kgml_grid.features import assemble, pixel_inputs, pixel_targets
    from kgml_grid.model import DAILY_TARGETS, ModelConfig, build_model
    from kgml_grid.schema import FEATURES, feature_units

    layers = open_catalog(world_catalog).open_all()
    ny, nx = layers["satellite"].sizes["y"], layers["satellite"].sizes["x"]
    r, c = (a.ravel() for a in np.meshgrid(np.arange(0, ny, 8), np.arange(0, nx, 8), indexing="ij"))
    with dask.config.set(scheduler="threads"):
        t, daily, soil, cby = pixel_inputs(layers, r, c)
        x, _ = assemble(time=t, daily=daily, soil=soil, crop_by_year=cby)
        y, yy = pixel_targets(layers["truth"], r, c)
    data = {f: x[..., i] for i, f in enumerate(FEATURES)}
    data.update({n: y[..., i] for i, n in enumerate(DAILY_TARGETS)})
    data["yield"] = yy
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="kgml", n_features=len(FEATURES), hidden=hidden)
    save_checkpoint(build_model(cfg), path, config=cfg, features=FEATURES, units=feature_units(),
                    norm=fit_norm(data), provenance={"note": "untrained, for benchmarks"})  # fmt: skip
    return path


def max_diffs(a, b, variables) -> dict:
    out = {}
    for v in variables:
        x, y = np.asarray(a[v].values, "float64"), np.asarray(b[v].values, "float64")
        same_nan = bool(np.array_equal(np.isnan(x), np.isnan(y)))
        d = np.abs(x - y)
        mag = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 0.0
        out[v] = {"max_abs": float(np.nanmax(d)) if np.isfinite(d).any() else 0.0,
                  "max_rel_to_max": float(np.nanmax(d) / mag) if mag else 0.0,
                  "nan_pattern_equal": same_nan}  # fmt: skip
    return out


def step_upscale(world: Path, ckpt: Path, work: Path) -> dict:
    from kgml_grid.cluster import close_client, make_client
    from kgml_grid.execute import direct_run, upscale
    from kgml_grid.maps import annual_maps
    from kgml_grid.plan import DAILY_VARS

    out = work / "demo_upscaled.zarr"
    t0 = time.perf_counter()
    client = make_client("local", n_workers=2)
    t_cluster = time.perf_counter() - t0
    try:
        res = upscale(world, ckpt, out, client=client, overwrite=True, progress=True)
    finally:
        close_client(client)
    t_upscale = time.perf_counter() - t0
    t1 = time.perf_counter()
    maps = annual_maps(out, work / "maps", overwrite=True)
    t_maps = time.perf_counter() - t1
    plan = res.plan
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each worker: one thread (2 threads thrash on a busy machine)
    t2 = time.perf_counter()
    try:
        ref = direct_run(plan)
    finally:
        torch.set_num_threads(threads)
    t_direct = time.perf_counter() - t2
    diffs = max_diffs(res.dataset, ref, (*DAILY_VARS, "yield"))
    return {
        "plan": str(plan),
        "blocks": plan.n_blocks, "tasks": plan.n_tasks, "crop_pixels": plan.n_crop_pixels,
        "days": plan.n_days, "memory_per_task_mib": round(plan.memory_per_task / 2**20, 1),
        "cluster_start_s": round(t_cluster, 2),
        "upscale_s_including_cluster_start": round(t_upscale, 2),
        "pixel_days_per_s": round(plan.n_crop_pixels * plan.n_days / (t_upscale - t_cluster), 1),
        "maps_s": round(t_maps, 2), "maps": [str(p) for p in maps],
        "direct_in_memory_s": round(t_direct, 2),
        "max_diff_vs_direct": diffs,
        "daily_max_abs_diff": max(diffs[v]["max_abs"] for v in DAILY_VARS),
        "out": str(out),
    }  # fmt: skip


def step_resume(world: Path, ckpt: Path, work: Path, clean: Path, kill_after: int) -> dict:
    import xarray as xr
    from distributed import Client

    from kgml_grid.cluster import process_cluster
    from kgml_grid.execute import completed_blocks, records_dir, upscale
    from kgml_grid.plan import DAILY_VARS

    out = work / "demo_resumed.zarr"
    from kgml_grid.outputs import remove_output

    remove_output(out, "upscale")  # only a store of ours (never what --work happens to hold)
    remove_output(records_dir(out), "records")
    with process_cluster(2, directory=work / "dask", memory_limit="4GiB") as sf:
        cmd = [sys.executable, "-m", "kgml_grid.cli", "upscale", "--catalog", str(world), "--model",
               str(ckpt), "--out", str(out), "--cluster", str(sf), "--quiet"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        done = records_dir(out) / "done"
        t0 = time.perf_counter()
        while proc.poll() is None:
            if done.exists() and len(list(done.glob("*.json"))) >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        t_killed = time.perf_counter() - t0
        with Client(scheduler_file=str(sf)) as c:
            while True:  # let tasks the dead client left running finish
                n = c.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
                n += sum(c.run(lambda dask_worker: len(dask_worker.state.tasks)).values())
                if n == 0:
                    break
                time.sleep(0.2)
            before = completed_blocks(out)
            t1 = time.perf_counter()
            res = upscale(world, ckpt, out, client=c, resume=True, progress=False)
            t_resume = time.perf_counter() - t1
    a = xr.open_zarr(out, consolidated=False)
    b = xr.open_zarr(clean, consolidated=False)
    identical = {
        v: bool(np.array_equal(a[v].values, b[v].values, equal_nan=True))
        for v in (*DAILY_VARS, "yield")
    }
    return {
        "killed_with_returncode": proc.returncode, "killed_after_s": round(t_killed, 2),
        "blocks_total": res.plan.n_blocks, "blocks_recorded_before_resume": len(before),
        "blocks_recomputed_by_resume": res.computed,
        "recomputed_equals_missing": res.computed == res.plan.n_blocks - len(before),
        "resume_s": round(t_resume, 2),
        "identical_to_clean_run": identical,
        "max_diff_vs_clean_run": max_diffs(a, b, (*DAILY_VARS, "yield")),
    }  # fmt: skip


def step_big_graph(demo_world: Path, ckpt: Path, work: Path, factor: int = 10) -> dict:
    """A grid factor x factor times the demo's pixels, cubes with metadata only
    (:func:`kgml_grid.bench.metaworld.metadata_world`: crop in a clustered share of tiles)."""
    import cloudpickle
    import dask
    import pandas as pd

    from kgml_grid.bench.metaworld import metadata_world
    from kgml_grid.catalog import open_catalog
    from kgml_grid.execute import build_graph
    from kgml_grid.plan import make_plan

    demo = open_catalog(demo_world).open_all()
    ny, nx = demo["satellite"].sizes["y"] * factor, demo["satellite"].sizes["x"] * factor
    t = pd.DatetimeIndex(demo["satellite"]["time"].values)
    t0 = time.perf_counter()
    catalog = metadata_world(work / "big_world", shape=(ny, nx), years=(t[0].year, t[-1].year),
                             chunks={"time": 365, "y": 48, "x": 48, "year": 1}, overwrite=True)  # fmt: skip
    t_world = time.perf_counter() - t0

    def boom(*a, **k):
        raise AssertionError("building the graph computed something")

    t1 = time.perf_counter()
    plan = make_plan(catalog, ckpt)
    t_plan = time.perf_counter() - t1
    t2 = time.perf_counter()
    with dask.config.set(scheduler=boom):
        graph = build_graph(plan, work / "big_out.zarr")
        n_tasks = len(dict(graph.dask))
    t_graph = time.perf_counter() - t2
    size = len(cloudpickle.dumps(dict(graph.dask), protocol=pickle.HIGHEST_PROTOCOL))
    return {
        "grid": [ny, nx], "pixels_vs_demo": factor * factor, "days": plan.n_days,
        "metadata_world_s": round(t_world, 2), "plan_s": round(t_plan, 2),
        "graph_build_s": round(t_graph, 2), "graph_tasks": n_tasks, "plan_tasks": plan.n_tasks,
        "tasks_match_plan": n_tasks == plan.n_tasks, "blocks": plan.n_blocks,
        "skipped_tiles": len(plan.skipped_tiles), "graph_pickled_mib": round(size / 2**20, 2),
        "computed_nothing": True,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", default="/tmp/kgml_upscale_acceptance")
    ap.add_argument(
        "--json", default=str(REPO / "benchmarks" / "results" / "upscale_acceptance.json")
    )
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the (untrained) model")
    ap.add_argument("--kill-after", type=int, default=10, help="blocks recorded before the kill")
    ap.add_argument("--skip", nargs="*", default=[], choices=["upscale", "resume", "graph"])
    ap.add_argument("--reuse-world", action="store_true", help="keep WORK/world if it is there")
    a = ap.parse_args(argv)
    from kgml_grid.synth import generate_world

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"command": " ".join([".venv/bin/python", "benchmarks/upscale_acceptance.py", *sys.argv[1:]]),
                    "machine": machine(), "hidden": a.hidden}  # fmt: skip
    t0 = time.perf_counter()
    catalog = work / "world" / "catalog.yaml"
    if not (a.reuse_world and catalog.exists()):
        catalog = generate_world(
            work / "world", preset="demo", seed=0, progress=False, overwrite=True
        ).catalog
        result["world_generation_s"] = round(time.perf_counter() - t0, 2)
    ckpt = make_checkpoint(catalog, work / f"ckpt_h{a.hidden}", hidden=a.hidden)
    if "upscale" not in a.skip:
        result["upscale_2_workers_vs_direct"] = step_upscale(catalog, ckpt, work)
        print(
            json.dumps(
                {k: v for k, v in result["upscale_2_workers_vs_direct"].items() if k != "plan"},
                indent=1,
            )
        )
    if "resume" not in a.skip:
        clean = work / "demo_upscaled.zarr"
        result["kill_and_resume"] = step_resume(catalog, ckpt, work, clean, a.kill_after)
        print(json.dumps(result["kill_and_resume"], indent=1))
    if "graph" not in a.skip:
        result["graph_100x_grid"] = step_big_graph(catalog, ckpt, work)
        print(json.dumps(result["graph_100x_grid"], indent=1))
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["total_s"] = round(time.perf_counter() - t0, 1)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
