"""The GPU benchmark behind ``benchmarks/gpu_bench.sh`` (issue 13 deliverable 7).

At the GPU shape (one large tile per task, :data:`kgml_grid.infer.CUDA_BATCH_PIXELS`
pixels per batch, time blocks only where the activation budget needs them) it measures

1. the **compute limit**: :func:`kgml_grid.infer.run_model` (pinned host buffers, side
   stream copies) over the plan's crop pixels x days as in-memory host arrays, state
   carried over the time chunks, for each precision (``fp32``, ``tf32``, ``bf16``;
   ``tf32`` only on CUDA), with each precision's **maximum deviation from fp32** on the
   same inputs (standardised outputs; and relative to their spread);
2. **end to end**: :func:`kgml_grid.execute.upscale` on a one-worker ``LocalCluster``
   (one worker per GPU), Zarr in to Zarr out, at ``fp32``.

The same code runs with ``--device cpu`` (on the tiny preset it takes about a minute),
which is how it is tested on machines without a GPU. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["compute_limit", "main", "random_inputs"]

#: CONUS x 18 years in one hour (issue 13): pixel-days per second.
GOAL_PIXEL_DAYS_PER_S = 4.4e7


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def random_inputs(
    n: int, time_bounds: list[tuple[int, int]], n_features: int, seed: int = 0
) -> list[Any]:
    """Standardised random features ``[n, T_chunk, F]`` per time chunk, on the host."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, b - a, n_features), dtype=np.float32) for a, b in time_bounds]


def compute_limit(
    model: Any,
    xs: list[Any],
    time_bounds: list[tuple[int, int]],
    year_end: Any,
    *,
    device: Any,
    batch_pixels: int,
    precision: str,
    reference: list[Any] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """:func:`kgml_grid.infer.run_model` over the host arrays ``xs`` (one per chunk of
    ``time_bounds``, :func:`random_inputs`; the same for every precision), state carried.

    Returns the measurement and the daily outputs per chunk (for the deviations).
    """
    import numpy as np

    from kgml_grid.infer import run_model

    n = xs[0].shape[0]
    # warm-up (CUDA context, cuDNN plans, allocator) on a small slice
    run_model(model, xs[0][: min(n, 1024), : min(30, xs[0].shape[1])], year_end[: min(30, xs[0].shape[1])],
              device=device, batch_pixels=batch_pixels, precision=precision)  # fmt: skip
    _sync(device)
    state = None
    outs = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    calls = 0
    for x, (a, b) in zip(xs, time_bounds, strict=True):
        r = run_model(model, x, year_end[a:b], state, device=device, batch_pixels=batch_pixels,
                      precision=precision)  # fmt: skip
        state, calls = r.state, calls + r.calls
        outs.append(r.daily)
    _sync(device)
    wall = time.perf_counter() - t0
    pd_ = n * sum(b - a for a, b in time_bounds)
    res: dict[str, Any] = {
        "pixel_days": int(pd_),
        "wall_s": round(wall, 3),
        "cpu_s": round(time.process_time() - c0, 3),
        "pixel_days_per_s": round(pd_ / wall, 1),
        "pixel_days_per_cpu_s": round(pd_ / max(time.process_time() - c0, 1e-9), 1),
        "model_calls": calls,
    }
    if reference is not None:
        dev = max(float(np.max(np.abs(o - r_))) for o, r_ in zip(outs, reference, strict=True))
        spread = float(np.std(np.concatenate([r_.ravel() for r_ in reference])))
        res["max_abs_deviation_from_fp32"] = dev
        res["max_deviation_over_output_std"] = round(dev / spread, 6) if spread else None
    return res, outs


def _machine(device: str) -> dict[str, Any]:
    import torch

    from kgml_grid.bench.instruments import machine_description

    m = machine_description(device)
    if torch.device(device).type == "cuda":
        p = torch.cuda.get_device_properties(torch.device(device))
        m["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--preset", default="bench", choices=["tiny", "demo", "bench"])
    ap.add_argument("--world", default=None, help="an existing world (default: synthesised)")
    ap.add_argument("--start", default=None, help="first day (default: the world's second year)")
    ap.add_argument("--end", default=None, help="last day, inclusive (default: start + 2 years)")
    ap.add_argument("--chunks", default="y=-1,x=-1,time=365",
                    help="the GPU shape: one tile of the whole domain per task, a year per chunk")  # fmt: skip
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="default fp32 tf32 bf16 on CUDA, fp32 bf16 on CPU")  # fmt: skip
    ap.add_argument("--compute-pixels", type=int, default=None,
                    help="pixels of the compute limit (default: the plan's crop pixels, at least "
                         "one CUDA batch on CUDA: the GPU shape does not depend on the world's size)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of this process on CPU (default 1, as the engine's workers)")  # fmt: skip
    ap.add_argument("--no-end-to-end", action="store_true")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)
    t_all = time.perf_counter()
    import numpy as np
    import pandas as pd
    import torch

    from kgml_grid.bench.inputs import catalog_path, make_bench_checkpoint
    from kgml_grid.checkpoint import load_checkpoint
    from kgml_grid.features import year_end_mask
    from kgml_grid.infer import batch_pixels_for_device, check_precision, time_block_for
    from kgml_grid.plan import make_plan
    from kgml_grid.worker import tune_malloc

    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, a.threads))
    tune_malloc()  # as the engine's workers do
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: CUDA is not available here (use --device cpu)")
    precs = a.precisions or (
        ["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    )
    for p in precs:
        check_precision(p, device)
    if precs[0] != "fp32":
        precs = ["fp32", *[p for p in precs if p != "fp32"]]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if a.world:
        world = Path(a.world)
    else:
        from kgml_grid.synth import generate_world

        world = work / "world"
        if not (world / "catalog.yaml").exists():
            generate_world(world, preset=a.preset, progress=False)
    timings["world_s"] = round(time.perf_counter() - t, 1)
    cat = catalog_path(world)
    t = time.perf_counter()
    ck_dir = work / "ckpt"
    if not (ck_dir / "model.json").exists():
        make_bench_checkpoint(cat, ck_dir)
    timings["checkpoint_s"] = round(time.perf_counter() - t, 1)
    start, end = a.start, a.end
    if start is None:
        from kgml_grid.catalog import open_catalog

        tt = pd.DatetimeIndex(open_catalog(cat).open("satellite")["time"].values)
        y0 = tt[0].year + (1 if tt[-1].year > tt[0].year + 1 else 0)
        start = f"{y0}-01-01"
        end = end or f"{min(y0 + 1, tt[-1].year)}-12-31"
    plan = make_plan(cat, ck_dir, start=start, end=end, chunks=a.chunks)
    bsz = batch_pixels_for_device(plan.batch_pixels, device)
    n_crop = int(plan.n_crop_pixels)
    n = a.compute_pixels or (max(n_crop, bsz) if device.type == "cuda" else n_crop)
    ye = year_end_mask(plan.time)
    bounds = list(plan.time_bounds)
    ckpt = load_checkpoint(ck_dir, device=device)
    model = ckpt.model.eval()
    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
        "machine": _machine(str(device)),
        "world": str(world),
        "preset": a.preset if not a.world else None,
        "shape": {
            "chunks": a.chunks,
            "tiles": len(plan.crop_tiles),
            "blocks": plan.n_blocks,
            "crop_pixels": n_crop,
            "compute_limit_pixels": n,
            "days": plan.n_days,
            "batch_pixels": bsz,
            "time_block_days": time_block_for(min(bsz, n), max(b - a_ for a_, b in bounds), device),
        },
        "goal_pixel_days_per_s": GOAL_PIXEL_DAYS_PER_S,
        "compute_limit": {},
    }
    ref = None
    xs = random_inputs(n, bounds, model.config.n_features)
    for p in precs:
        try:
            res, outs = compute_limit(model, xs, bounds, ye, device=device, batch_pixels=bsz,
                                      precision=p, reference=ref)  # fmt: skip
        except Exception as e:  # a precision the device or its libraries refuse: say so
            if p == "fp32":
                raise
            result["compute_limit"][p] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"compute limit {p}: failed: {e}", file=sys.stderr)
            continue
        if p == "fp32":
            ref = outs
        result["compute_limit"][p] = res
        print(f"compute limit {p}: {res['pixel_days_per_s']:,.0f} pixel-days/s", file=sys.stderr)
    del ref, xs
    if not a.no_end_to_end:
        from kgml_grid.execute import upscale

        out = work / "out.zarr"
        t = time.perf_counter()
        r = upscale(cat, ck_dir, out, start=start, end=end, chunks=a.chunks, cluster="local",
                    n_workers=1, device=str(device), overwrite=True, progress=False)  # fmt: skip
        wall = time.perf_counter() - t
        pd_ = n_crop * plan.n_days
        result["end_to_end"] = {
            "what": "kgml_grid.execute.upscale, LocalCluster of 1 worker (1 per GPU), Zarr in to Zarr out, fp32",
            "wall_s": round(wall, 3),
            "pixel_days": int(pd_),
            "pixel_days_per_s": round(pd_ / wall, 1),
            "ratio_to_compute_limit": round(pd_ / wall / result["compute_limit"]["fp32"]["pixel_days_per_s"], 4),
            "blocks": r.computed,
        }  # fmt: skip
        import xarray as xr

        ds = xr.open_zarr(out, consolidated=False)
        ok = float(np.isfinite(ds["nee"].isel(time=0).values).sum())
        result["end_to_end"]["finite_pixels_day0"] = int(ok)
        print(f"end to end: {pd_ / wall:,.0f} pixel-days/s", file=sys.stderr)
    result["timings"] = {**timings, "total_s": round(time.perf_counter() - t_all, 1)}
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("shape", "compute_limit")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
