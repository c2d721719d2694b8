"""The end-to-end runner: the upscaling engine, Zarr in to Zarr out, on an instrumented
``LocalCluster``."""

from __future__ import annotations

import os
import time as _time
from pathlib import Path
from typing import Any

from kgml_grid.bench.instruments import (
    MIB,
    cache_stats,
    install_timers,
    mem_peak,
    mem_reset,
    mem_sampler_start,
    read_timers,
    sum_timers,
)
from kgml_grid.bench.ratios import rate, time_split
from kgml_grid.bench.shapes import ChunkShape

__all__ = ["local_client", "run_end_to_end"]


def local_client(n_workers: int) -> Any:
    """A LocalCluster of ``n_workers`` processes x 1 thread, with the instruments."""
    from kgml_grid.cluster import make_client

    client = make_client({"kind": "local", "n_workers": int(n_workers), "threads_per_worker": 1,
                          "dashboard_address": "127.0.0.1:0", "gpus": 0}, verbose=False)  # fmt: skip
    client.wait_for_workers(int(n_workers), timeout=180)
    client.run(mem_sampler_start)
    client.run(install_timers)
    return client


def _rmtree(path: Path) -> None:
    """Remove an upscaling store and its records: only ones kgml_grid wrote."""
    from kgml_grid.execute import records_dir
    from kgml_grid.outputs import remove_output

    remove_output(path, "upscale")
    remove_output(records_dir(path), "records")


def run_end_to_end(
    catalog: str | Path,
    model: str | Path,
    shape: ChunkShape,
    *,
    client: Any,
    out: str | Path,
    start: Any = None,
    end: Any = None,
    bbox: Any = None,
    device: str = "cpu",
    keep: bool = False,
) -> dict[str, Any]:
    """The upscaling engine, Zarr in to Zarr out, on ``client``'s workers.

    Measures the whole :func:`kgml_grid.execute.upscale` call (plan, store set-up,
    graph, run, completion), the peak RSS per worker (sampled every 20 ms in each
    worker) and the time split of the tasks (:func:`time_split`; needs
    :func:`install_timers` on the workers, as :func:`run_benchmark` does).
    """
    from kgml_grid.blockio import clear_caches
    from kgml_grid.execute import upscale

    out = Path(out)
    _rmtree(out)
    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    client.run(clear_caches)  # every run starts cold: no chunk decoded by an earlier one
    base = client.run(mem_reset)
    client.run(read_timers)
    t0 = _time.perf_counter()
    res = upscale(catalog, model, out, start=start, end=end, bbox=bbox, chunks=shape.chunks,
                  client=client, overwrite=True, progress=False, device=device)  # fmt: skip
    wall = _time.perf_counter() - t0
    peaks = client.run(mem_peak)
    timers = sum_timers(client.run(read_timers))
    cache = cache_stats(client)
    plan = res.plan
    pd_ = plan.n_crop_pixels * plan.n_days
    row = {
        **shape.to_dict(),
        "plan_tile": [plan.tile_y, plan.tile_x],
        "pixel_days": pd_,
        "pixel_days_per_s": round(rate(pd_, wall), 1),
        "wall_s": round(wall, 3),
        "execute_s": round(res.seconds, 3),
        "tasks": plan.n_tasks,
        "blocks": plan.n_blocks,
        "tiles": len(plan.crop_tiles),
        "batch_pixels": plan.batch_pixels,
        "peak_memory_per_worker_mib": round(max(peaks.values()) / MIB, 1),
        "peak_memory_each_worker_mib": {str(k): round(v / MIB, 1) for k, v in peaks.items()},
        "rss_at_start_mib": round(max(base.values()) / MIB, 1),
        "memory_estimate_per_task_mib": round(plan.memory_per_task / MIB, 1),
        "workers": n_workers,
        "time_split": time_split(timers, wall=wall, workers=n_workers),
        "chunk_cache": cache,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }
    model_s = float(timers.get("model", (0.0, 0))[0])
    # the rate if the workers did nothing but the model: the in-run bound on the same workers
    row["model_only_pixel_days_per_s"] = (
        round(rate(pd_, model_s / n_workers), 1) if model_s else None
    )
    if not keep:
        _rmtree(out)
    return row
