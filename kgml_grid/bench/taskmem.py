"""Measured peak memory of one upscaling task, to check :func:`kgml_grid.plan.memory_estimate`.

:func:`measure_task_memory` runs, in *this* process, the task the estimate is for: the
block of the plan's tile with the most crop pixels and its longest time chunk,
:func:`kgml_grid.execute.run_block` (read, assemble, model in batches, write the
region, the state and the record) into a scratch store. Before it, a warm-up block
(the same tile, a few days) loads torch, the checkpoint and Zarr, so that what is
measured is what a worker pays per task, not once per process. The peak is read from
the kernel: ``VmHWM`` of ``/proc/self/status`` is reset (``clear_refs``) after the
warm-up and read after the task; the figure is that high-water mark above the
resident memory just before the task.

:func:`measure_in_subprocess` does that in a fresh interpreter with the environment Dask's
nanny gives a worker (``distributed.nanny.pre-spawn-environ``: one thread,
``MALLOC_TRIM_THRESHOLD_``) and the decoded-chunk cache off (the cache is a per-worker
budget, not a per-task cost, :mod:`kgml_grid.blockio`) and returns its JSON, with the plan's estimate next to it.
Linux only (``/proc``).

Command line (what the subprocess runs)::

    python -m kgml_grid.bench.taskmem CATALOG MODEL --chunks y=64,x=64,time=365 --work DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["measure_in_subprocess", "measure_task_memory", "rss_bytes"]


def rss_bytes() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak since the last reset) of this process, bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_task_memory(
    catalog: str | Path, model: str | Path, *, chunks: str, work: str | Path, **plan_kw: Any
) -> dict[str, Any]:
    """Peak memory (bytes above the resident set before it) of the plan's largest task.

    Returns
    -------
    dict
        ``measured`` (bytes), ``estimate`` (the plan's :attr:`~kgml_grid.plan.Plan.memory`
        parts), ``ratio`` (estimate / measured), the block, its crop pixels and days,
        ``baseline_rss`` and the seconds the task took.
    """
    import numpy as np

    from kgml_grid import blockio
    from kgml_grid.execute import BlockTask, _tile_tasks, prepare_store, run_block
    from kgml_grid.plan import BlockKey, make_plan

    plan = make_plan(catalog, model, chunks=chunks, **plan_kw)
    tile = tuple(int(i) for i in np.unravel_index(int(np.argmax(plan.crop_counts)),
                                                   plan.crop_counts.shape))  # fmt: skip
    chunk = int(np.argmax(plan.time_chunks))
    t0, t1 = plan.time_bounds[chunk]
    out = Path(work) / f"taskmem_{uuid.uuid4().hex[:8]}.zarr"
    prepare_store(plan, out, resume=False, overwrite=True)
    run_id = uuid.uuid4().hex[:12]
    tt = _tile_tasks(plan, out, run_id, [tile])[tile]  # type: ignore[index]
    # warm-up: the same tile over a few days (imports, checkpoint, Zarr arrays opened)
    warm = BlockTask(BlockKey(chunk, *tile), t0, min(t1, t0 + 3))
    run_block(warm, tt, None)
    blockio.drop_run(run_id)
    import gc

    gc.collect()
    reset = _reset_peak()
    before = rss_bytes()["VmRSS"]
    s = time.perf_counter()
    run_block(BlockTask(BlockKey(chunk, *tile), t0, t1), tt, None)
    seconds = time.perf_counter() - s
    peak = rss_bytes()["VmHWM"]
    return {
        "chunks": chunks,
        "tile": [plan.tile_y, plan.tile_x],
        "block": BlockKey(chunk, *tile).name,
        "crop_pixels": int(plan.crop_counts[tile]),
        "days": t1 - t0,
        "batch_pixels": plan.batch_pixels,
        "baseline_rss": before,
        "peak_reset": reset,
        "measured": peak - before,
        "estimate": dict(plan.memory),
        "ratio": plan.memory_per_task / max(peak - before, 1),
        "task_s": round(seconds, 3),
    }


def measure_in_subprocess(
    catalog: str | Path,
    model: str | Path,
    *,
    chunks: str,
    work: str | Path,
    timeout: float = 600,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """:func:`measure_task_memory` in a fresh interpreter (one thread, no chunk cache).

    Raises
    ------
    RuntimeError
        When the subprocess fails, with its last output lines.
    """
    import dask

    # the environment Dask's nanny gives each worker (glibc returns freed heap above 64 KiB)
    worker_env = {k: str(v) for k, v in
                  (dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}).items()}  # fmt: skip
    env = dict(os.environ, **worker_env, KGML_CHUNK_CACHE="0")
    cmd = [sys.executable, "-m", "kgml_grid.bench.taskmem", str(catalog), str(model),
           "--chunks", chunks, "--work", str(work), *(extra or [])]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-15:])
        raise RuntimeError(f"task memory measurement failed ({' '.join(cmd)}):\n{tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("catalog")
    ap.add_argument("model")
    ap.add_argument("--chunks", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--batch-pixels", type=int)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    kw = {k: v for k, v in (("start", a.start), ("end", a.end), ("batch_pixels", a.batch_pixels))
          if v is not None}  # fmt: skip
    res = measure_task_memory(a.catalog, a.model, chunks=a.chunks, work=a.work, **kw)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
