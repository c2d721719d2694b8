"""Where inference time goes (issue 16 deliverable 1, inference side): CPU time per
module per pixel-day and FLOPs per pixel-day counted from the layers, next to the
measured rate; and the split of one engine block (read + assembly, normalisation,
model, outputs).

Each module of :class:`kgml_grid.model.KGMLModel` is timed on its own inputs, in eval
mode under ``torch.inference_mode``, one torch thread, CPU seconds
(``time.process_time``), best of ``--repeats``, at the engine's batch sizes and time
chunk, in both ways the loop can cut a chunk: one call over the whole chunk (0acc850)
and time blocks with the state carried (:func:`kgml_grid.infer.time_block_for`).

Run from the repository root::

    .venv/bin/python benchmarks/inference_profile.py --world /tmp/16i/w \\
        --out benchmarks/results/inference_profile

writes ``inference_profile.json`` and ``inference_profile.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def gru_flops(inp: int, hid: int) -> dict[str, int]:
    """FLOPs per step of one GRU layer: matrix products and gate arithmetic."""
    return {
        "matmul": 2 * 3 * hid * inp + 2 * 3 * hid * hid,
        # biases (6H), r/z pre-activations and sigmoid (2H + 2H), r * (W_hn h + b) (H),
        # n pre-activation and tanh (H + H), h' = n + z (h - n) (3H); transcendental = 1
        "elementwise": 6 * hid + 4 * hid + hid + 2 * hid + 3 * hid,
    }


def linear_flops(inp: int, out: int) -> int:
    return 2 * inp * out + out


def model_flops(cfg: Any) -> dict[str, dict[str, int]]:
    """FLOPs per pixel-day by module of a KGML model configuration."""
    f, h, yh = cfg.n_features, cfg.hidden, cfg.yield_hidden

    def stack(inp: int, layers: int) -> dict[str, int]:
        tot = {"matmul": 0, "elementwise": 0}
        for i in range(layers):
            for k, v in gru_flops(inp if i == 0 else h, h).items():
                tot[k] += v
        return tot

    out = {
        "basis": stack(f, cfg.basis_layers),
        "ra": stack(h + f, cfg.ra_layers),
        "rh": stack(h + f, cfg.rh_layers),
        "nee": stack(3 + f, cfg.nee_layers),
    }
    for k in ("ra", "rh", "nee"):
        out[k]["matmul"] += linear_flops(h, 1)
    out["gpp_head"] = {"matmul": linear_flops(h, 1), "elementwise": 0}
    # attention score per day (W h, tanh, v^T), then exp and the weighted running sum
    out["yield_head"] = {"matmul": linear_flops(h, yh) + 2 * yh, "elementwise": yh + 2 + 2 * h + 2}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("matmul", "elementwise")}
    return out


def _best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def module_times(model: Any, batch: int, days: int, block: int, repeats: int) -> dict[str, float]:
    """CPU seconds per module for ``batch`` pixels x ``days`` days in calls of ``block`` days."""
    import torch

    from kgml_grid.fastgru import run_gru  # model.basis is the bare nn.GRU: as the model calls it

    g = torch.Generator().manual_seed(0)
    nf = model.config.n_features
    x = torch.randn((batch, days, nf), generator=g)
    ye = torch.zeros((batch, days), dtype=torch.bool)
    ye[:, min(days - 1, 200)] = True
    st0 = model.initial_state(batch)
    h0 = {k: st0[k].transpose(0, 1).contiguous() for k in ("basis", "ra", "rh", "nee")}
    bounds = [(t, min(t + block, days)) for t in range(0, days, block)]
    xs = [x[:, a:b].contiguous() for a, b in bounds]
    with torch.inference_mode():
        basis = [run_gru(model.basis, xi, h0["basis"])[0] for xi in xs]
        bx = [torch.cat([b, xi], dim=-1) for b, xi in zip(basis, xs, strict=True)]
        ra = [model.ra(v, h0["ra"])[0] for v in bx]
        rh = [model.rh(v, h0["rh"])[0] for v in bx]
        gpp = [model.gpp(b) for b in basis]
        nin = [
            torch.cat([a, b, c, xi], dim=-1) for a, b, c, xi in zip(ra, rh, gpp, xs, strict=True)
        ]

        def yld() -> None:
            for b, (a, e) in zip(basis, bounds, strict=True):
                model.yield_head(b, ye[:, a:e], st0["yield_m"], st0["yield_z"], st0["yield_a"])

        parts = {
            "basis": lambda: [run_gru(model.basis, xi, h0["basis"]) for xi in xs],
            "concat [basis, x]": lambda: [torch.cat([b, xi], dim=-1) for b, xi in zip(basis, xs, strict=True)],
            "ra": lambda: [model.ra(v, h0["ra"]) for v in bx],
            "rh": lambda: [model.rh(v, h0["rh"]) for v in bx],
            "gpp_head": lambda: [model.gpp(b) for b in basis],
            "nee (with its input concat)": lambda: [
                model.nee(torch.cat([a, b, c, xi], dim=-1), h0["nee"])
                for a, b, c, xi in zip(ra, rh, gpp, xs, strict=True)
            ],
            "yield_head": yld,
            "whole forward (state carried)": lambda: _forward(model, xs, ye, bounds),
        }  # fmt: skip
        del nin
        return {k: _best(fn, repeats) for k, fn in parts.items()}


def _forward(model: Any, xs: list[Any], ye: Any, bounds: list[tuple[int, int]]) -> None:
    st = None
    for xi, (a, b) in zip(xs, bounds, strict=True):
        _, st = model(xi, st, year_end=ye[:, a:b])


def block_split(world: Path, model_dir: Path, repeats: int) -> dict[str, Any]:
    """CPU seconds of the parts of :func:`kgml_grid.execute.compute_block` over the blocks
    of one year of a 64 x 64 px window at 16 x 16 px x 365 d."""
    import numpy as np

    from kgml_grid import cubes
    from kgml_grid.bench.inputs import catalog_path, window_bbox
    from kgml_grid.catalog import open_catalog
    from kgml_grid.execute import _block_task, _tile_tasks, compute_block, read_block
    from kgml_grid.features import year_end_mask
    from kgml_grid.infer import run_model
    from kgml_grid.plan import BlockKey, make_plan
    from kgml_grid.worker import get_checkpoint

    cat = catalog_path(world)
    grid = cubes.grid_of(open_catalog(cat).open("satellite"), layer="satellite")
    plan = make_plan(cat, model_dir, start="2013-01-01", end="2013-12-31",
                     bbox=window_bbox(grid, (0, 64, 0, 64)), chunks="y=16,x=16,time=365")  # fmt: skip
    tiles = _tile_tasks(plan, None, "profile", plan.crop_tiles)
    ckpt = get_checkpoint(plan.checkpoint, plan.checkpoint_hash)
    bts = [(tiles[t], _block_task(plan, BlockKey(0, *t))) for t in plan.crop_tiles]
    feats: list[Any] = []

    def read() -> None:
        feats.clear()
        for tt, bt in bts:
            feats.append(read_block(tt, bt, None, ckpt.features))

    def norm() -> None:
        for _, x, _, _ in feats:
            ckpt.normalizer.normalize_features(x)

    xns = []
    read()
    for time_, x, _, _ in feats:
        xns.append((np.ascontiguousarray(ckpt.normalizer.normalize_features(x), dtype="float32"),
                    year_end_mask(time_)))  # fmt: skip

    def model_loop() -> None:
        for xn, ye in xns:
            run_model(ckpt.model, xn, ye, device="cpu", batch_pixels=plan.batch_pixels)

    def whole() -> None:
        for tt, bt in bts:
            compute_block(tt, bt, None)

    t = {"read_block (read + assembly)": _best(read, repeats), "normalise": _best(norm, repeats),
         "model (infer.run_model)": _best(model_loop, repeats), "compute_block (all)": _best(whole, repeats)}  # fmt: skip
    t["outputs and the rest (difference)"] = t["compute_block (all)"] - sum(
        v for k, v in t.items() if k != "compute_block (all)"
    )
    pd_ = int(plan.n_crop_pixels * plan.n_days)
    return {"pixel_days": pd_, "batch_pixels": plan.batch_pixels, "blocks": len(bts),
            "cpu_s": {k: round(v, 4) for k, v in t.items()},
            "us_per_pixel_day": {k: round(v / pd_ * 1e6, 3) for k, v in t.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="world folder (kgml-grid synth --preset demo)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", nargs="+", default=["144x365", "256x365", "1024x92"],
                    help="BATCHxDAYS: the engine's batch at 16x16 px x 365 d, a full 16x16 tile, "
                         "the facts of the brief")  # fmt: skip
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/inference_profile"))
    a = ap.parse_args(argv)
    import torch

    from kgml_grid import fastgru
    from kgml_grid.bench.inputs import catalog_path, make_bench_checkpoint
    from kgml_grid.checkpoint import load_checkpoint
    from kgml_grid.infer import time_block_for
    from kgml_grid.worker import tune_malloc

    torch.set_num_threads(1)
    tune_malloc()  # as the engine's workers
    work = Path(tempfile.mkdtemp(prefix="inference_profile_"))
    ck_dir = make_bench_checkpoint(catalog_path(a.world), work / "ckpt")
    model = load_checkpoint(ck_dir, device="cpu").model.eval()
    flops = model_flops(model.config)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    res: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
        "machine": {"lscpu_head": lscpu.splitlines()[:15], "load_average_at_start": list(os.getloadavg())},
        "what": "CPU seconds (process_time), 1 torch thread, eval + inference_mode, best of repeats; "
                "FLOPs per pixel-day counted from the layers (multiply-add = 2)",
        "model": model.config.to_dict(),
        "fused_gru": fastgru.status(),
        "flops_per_pixel_day": flops,
        "shapes": {},
    }  # fmt: skip
    for spec in a.shapes:
        b, d = (int(v) for v in spec.split("x"))
        row = {}
        tb = time_block_for(b, d, "cpu")
        for mode, block, fused in (
            ("whole chunk, nn.GRU (0acc850)", d, False),
            ("time blocks, nn.GRU", tb, False),
            ("time blocks, fused GRU", tb, True),
        ):
            with contextlib.nullcontext() if fused else fastgru.unfused():
                t = module_times(model, b, d, block, a.repeats)
            pd_ = b * d
            total = t["whole forward (state carried)"]
            row[mode] = {
                "time_block_days": block,
                "cpu_s": {k: round(v, 4) for k, v in t.items()},
                "ns_per_pixel_day": {k: round(v / pd_ * 1e9, 1) for k, v in t.items()},
                "pixel_days_per_s": round(pd_ / total),
                "gflop_per_s": round((flops["total"]["matmul"] + flops["total"]["elementwise"]) * pd_ / total / 1e9, 2),
            }  # fmt: skip
            print(spec, mode, row[mode]["pixel_days_per_s"], file=sys.stderr)
        res["shapes"][spec] = row
    res["engine_block"] = block_split(Path(a.world), ck_dir, a.repeats)
    res["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# Inference profile: time per module per pixel-day, FLOPs per pixel-day", "",
             f"Command: `{res['command']}`", "", res["what"] + ".", "",
             f"FLOPs per pixel-day (hidden {model.config.hidden}):", "",
             "| module | matmul FLOPs | elementwise FLOPs |", "| --- | --- | --- |"]  # fmt: skip
    for k, v in flops.items():
        lines.append(f"| {k} | {v['matmul']:,} | {v['elementwise']:,} |")
    for spec, row in res["shapes"].items():
        modes = list(row)
        lines += ["", f"## batch x days = {spec}", "",
                  "| module | " + " | ".join(f"{m} ({row[m]['time_block_days']} d/call), ns per pixel-day" for m in modes) + " |",
                  "| --- | " + " | ".join("---" for _ in modes) + " |"]  # fmt: skip
        for k in row[modes[0]]["ns_per_pixel_day"]:
            lines.append(
                f"| {k} | " + " | ".join(str(row[m]["ns_per_pixel_day"][k]) for m in modes) + " |"
            )
        lines.append(
            "| pixel-days/s | "
            + " | ".join(f"{row[m]['pixel_days_per_s']:,}" for m in modes)
            + " |"
        )
        lines.append(
            "| GFLOP/s achieved | " + " | ".join(str(row[m]["gflop_per_s"]) for m in modes) + " |"
        )
    eb = res["engine_block"]
    lines += ["", f"## One engine block (compute_block), {eb['blocks']} blocks of 16 x 16 px x 365 d, "
              f"batch {eb['batch_pixels']}, {eb['pixel_days']:,} pixel-days", "",
              "| part | CPU s | us per pixel-day |", "| --- | --- | --- |"]  # fmt: skip
    for k, v in eb["cpu_s"].items():
        lines.append(f"| {k} | {v} | {eb['us_per_pixel_day'][k]} |")
    lines += ["", "Each part is timed on its own (best of the repeats), so the parts do not add up "
              "exactly to the whole; a remainder within a few per cent of the whole (either sign) "
              "is below the noise of this shared machine: the model is nearly all of a block's CPU time."]  # fmt: skip
    flags = subprocess.run(
        ["grep", "-m1", "^flags", "/proc/cpuinfo"], capture_output=True, text=True, check=False
    ).stdout.split()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "?"
    lines += ["", f"Fused GRU: {res['fused_gru']['reason']}.", "",
              f"Machine: {res['machine']['lscpu_head'][7:8]}, {isa}; load average "
              f"{res['machine']['load_average_at_start']} -> {res['machine']['load_average_at_end']} "
              "(shared machine: CPU seconds)."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
