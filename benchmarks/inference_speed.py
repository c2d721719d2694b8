"""Inference cost A/B (issue 16 deliverable 4): today's code against this branch's, on
the same blocks, interleaved rounds, one run.

"Today" is a clean checkout of main at ``--base-ref`` (default 0acc850) made with
``git worktree add``; each side runs in its own worker process (its own
``PYTHONPATH``, one torch thread, glibc malloc tuned as the engine's workers do) that
plans the same run and then, on each round, times

* ``compute_block``: :func:`kgml_grid.execute.compute_block` over every block of the
  plan, tile by tile with the state carried (read + assembly + model + outputs), and
* ``model``: the model loop alone over the same blocks' normalised features (today:
  the 0acc850 loop of ``compute_block``, copied below; this branch:
  :func:`kgml_grid.infer.run_model`),
* ``bench_compute_limit``: the upscaling benchmark's compute limit on the same plan
  (:func:`kgml_grid.bench.limits.run_compute_limit`, 1 process x 1 thread, wall time as
  the benchmark reports it),

in CPU seconds (``time.process_time``) and wall seconds. Rounds alternate the order
(ABBA). The first round's outputs of both sides are compared (max |difference| of the
physical outputs, the yields and the carried state).

Run from the repository root::

    .venv/bin/python benchmarks/inference_speed.py --world /tmp/16i/w --rounds 3 \\
        --out benchmarks/results/inference_speed

writes ``inference_speed.json`` and ``inference_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# worker side (runs under either checkout)
# --------------------------------------------------------------------------------------


def _old_loop(model: Any, xn: Any, ye: Any, state: Any, bsz: int) -> tuple[Any, Any, Any]:
    """The model loop of ``compute_block`` at 0acc850, verbatim apart from names."""
    import numpy as np
    import torch

    from kgml_grid.model import state_from_numpy, state_to_numpy

    n, t = xn.shape[:2]
    ye_idx = np.flatnonzero(ye)
    daily = np.empty((n, t, 4), dtype="float32")
    yld = np.full((n, ye_idx.size), np.nan, dtype="float32")
    new_model: dict[str, list[Any]] = {}
    ye_t = torch.as_tensor(ye)
    with torch.inference_mode():
        for i in range(0, n, bsz):
            xb = torch.from_numpy(xn[i : i + bsz])
            sb = None
            if state is not None:
                sb = state_from_numpy({k: v[i : i + bsz] for k, v in state.items()})
            out, st = model(xb, sb, year_end=ye_t)
            daily[i : i + bsz] = out["daily"].float().cpu().numpy()
            if ye_idx.size:
                yld[i : i + bsz] = out["yield"][:, ye_idx].float().cpu().numpy()
            for k, v in state_to_numpy(st).items():
                new_model.setdefault(k, []).append(v)
    return daily, yld, {k: np.concatenate(v) for k, v in new_model.items()}


def _new_loop(model: Any, xn: Any, ye: Any, state: Any, bsz: int) -> tuple[Any, Any, Any]:
    from kgml_grid.infer import run_model

    r = run_model(model, xn, ye, state, device="cpu", batch_pixels=bsz)
    return r.daily, r.yield_, r.state


def worker(side: str) -> None:  # pragma: no cover - run in a subprocess
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from kgml_grid.worker import tune_malloc

    tune_malloc()
    from kgml_grid.execute import _block_task, _tile_tasks, compute_block, read_block
    from kgml_grid.features import year_end_mask
    from kgml_grid.plan import make_plan
    from kgml_grid.worker import get_checkpoint

    loop = _new_loop if side == "new" else _old_loop
    ctx: dict[str, Any] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "setup":
            plan = make_plan(msg["catalog"], msg["model"], start=msg["start"], end=msg["end"],
                             bbox=[float(v) for v in msg["bbox"].split(",")], chunks=msg["chunks"])  # fmt: skip
            tiles = _tile_tasks(plan, None, "ab" + side, plan.crop_tiles)
            ckpt = get_checkpoint(plan.checkpoint, plan.checkpoint_hash)
            # pre-assembled normalised features of every block, for the model-only timing
            feats = {}
            for t in plan.crop_tiles:
                fill = None
                for c in range(plan.n_time_chunks):
                    bt = _block_task(plan, plan.blocks[0].__class__(c, *t))
                    time_, x, fill, _ = read_block(tiles[t], bt, fill, ckpt.features)
                    xn = np.ascontiguousarray(ckpt.normalizer.normalize_features(x), dtype="float32")  # fmt: skip
                    feats[(t, c)] = (xn, year_end_mask(time_))
            ctx = {"plan": plan, "tiles": tiles, "ckpt": ckpt, "feats": feats}
            pd_ = int(plan.n_crop_pixels * plan.n_days)
            print(json.dumps({"pixel_days": pd_, "blocks": plan.n_blocks, "batch_pixels": plan.batch_pixels,
                              "tile": list(plan.tile_shape) if hasattr(plan, "tile_shape") else None,
                              "time_chunks": list(plan.time_chunks)}), flush=True)  # fmt: skip
        elif msg["cmd"] == "round":
            plan, tiles, ckpt = ctx["plan"], ctx["tiles"], ctx["ckpt"]
            dump: dict[str, Any] = {}
            c0, w0 = time.process_time(), time.perf_counter()
            for t in plan.crop_tiles:
                prev = None
                for c in range(plan.n_time_chunks):
                    key = plan.blocks[0].__class__(c, *t)
                    out, prev = compute_block(tiles[t], _block_task(plan, key), prev)
                    if msg.get("dump"):
                        for k, v in out.daily.items():
                            dump[f"{t[0]}_{t[1]}_{c}_{k}"] = v
                        if out.yearly is not None:
                            dump[f"{t[0]}_{t[1]}_{c}_yearly"] = out.yearly
                        for k, v in prev.items():
                            dump[f"{t[0]}_{t[1]}_{c}_state_{k}"] = v
            cb = (time.process_time() - c0, time.perf_counter() - w0)
            c0, w0 = time.process_time(), time.perf_counter()
            for t in plan.crop_tiles:
                st = None
                for c in range(plan.n_time_chunks):
                    xn, ye = ctx["feats"][(t, c)]
                    _, _, st = loop(ckpt.model, xn, ye, st, plan.batch_pixels)
            mo = (time.process_time() - c0, time.perf_counter() - w0)
            # the upscaling benchmark's own compute limit (kgml-grid bench) on this plan
            from kgml_grid.bench.limits import run_compute_limit

            cl = run_compute_limit(plan, threads=1)
            if msg.get("dump"):
                np.savez(msg["dump"], **dump)
            print(json.dumps({"compute_block_cpu_s": cb[0], "compute_block_wall_s": cb[1],
                              "model_cpu_s": mo[0], "model_wall_s": mo[1],
                              "bench_compute_limit_wall_s": cl["wall_s"],
                              "load_1min": os.getloadavg()[0]}), flush=True)  # fmt: skip
        else:
            return


# --------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return {"lscpu_head": lscpu.splitlines()[:15], "python": platform.python_version(),
            "cores": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}  # fmt: skip


class Side:
    def __init__(self, name: str, root: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.name = name
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=str(root))  # fmt: skip

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (see its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _compare(a: Path, b: Path) -> dict[str, float]:
    """Max |a - b| per kind of output (and the largest |a| of that kind, for scale)."""
    import numpy as np

    za, zb = np.load(a), np.load(b)
    if sorted(za.files) != sorted(zb.files):
        raise RuntimeError(f"outputs differ in keys: {sorted(set(za.files) ^ set(zb.files))[:5]}")
    worst: dict[str, float] = {}
    for k in za.files:
        kind = k.split("_", 3)[3]
        kind = "state" if kind.startswith("state_m") else kind
        if kind.startswith("state_f"):
            kind = "gap_fill_state"
        x, y = za[k], zb[k]
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            raise RuntimeError(f"{k}: NaN positions differ")
        fin = np.isfinite(x)
        d = float(np.max(np.abs(x - y)[fin])) if fin.any() else 0.0
        scale = float(np.max(np.abs(x[fin]))) if fin.any() else 0.0
        worst[kind] = max(worst.get(kind, 0.0), d)
        worst[f"{kind}_max_abs_value"] = max(worst.get(f"{kind}_max_abs_value", 0.0), scale)
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--world", help="world folder (kgml-grid synth --preset demo)")
    ap.add_argument("--model", default=None, help="checkpoint (default: a random bench checkpoint)")
    ap.add_argument("--base-ref", default="0acc850")
    ap.add_argument("--base", default="/tmp/16i/base", help="clean worktree of --base-ref")
    ap.add_argument("--start", default="2012-01-01")
    ap.add_argument("--end", default="2013-12-31")
    ap.add_argument(
        "--domain", type=int, nargs=2, default=(64, 64), help="pixels from the top-left"
    )
    ap.add_argument("--chunks", default="y=16,x=16,time=365")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/inference_speed"))
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker)
        return 0
    from kgml_grid import cubes
    from kgml_grid.bench.inputs import catalog_path, make_bench_checkpoint, window_bbox
    from kgml_grid.catalog import open_catalog

    base = Path(a.base)
    if not (base / "kgml_grid").is_dir():
        subprocess.run(["git", "worktree", "add", str(base), a.base_ref], cwd=REPO, check=True)
    base_head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=base, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    new_head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    cat = catalog_path(a.world)
    work = Path(tempfile.mkdtemp(prefix="inference_speed_"))
    model = Path(a.model) if a.model else make_bench_checkpoint(cat, work / "ckpt")
    grid = cubes.grid_of(open_catalog(cat).open("satellite"), layer="satellite")
    bbox = ",".join(str(v) for v in window_bbox(grid, (0, a.domain[0], 0, a.domain[1])))
    setup = {"cmd": "setup", "catalog": str(cat.resolve()), "model": str(model.resolve()),
             "start": a.start, "end": a.end, "bbox": bbox, "chunks": a.chunks}  # fmt: skip
    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
        "machine": _machine(),
        "base": {"ref": a.base_ref, "commit": base_head},
        "new": {
            "commit": new_head,
            "note": "uncommitted changes included"
            if subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            else "clean",
        },
        "setup": {k: v for k, v in setup.items() if k != "cmd"},
        "what": "CPU seconds (process_time) per side, 1 torch thread each, rounds ABBA",
    }
    sides = {"base": Side("base", base), "new": Side("new", REPO)}
    try:
        infos = {k: s.ask(setup) for k, s in sides.items()}
        if infos["base"]["pixel_days"] != infos["new"]["pixel_days"]:
            raise RuntimeError(f"the sides planned different work: {infos}")
        result["plan"] = infos["new"]
        rounds: list[dict[str, Any]] = []
        for r in range(a.rounds):
            order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
            row: dict[str, Any] = {"order": order}
            for k in order:
                dump = str(work / f"{k}.npz") if r == 0 else None
                row[k] = sides[k].ask({"cmd": "round", "dump": dump})
            rounds.append(row)
            print(json.dumps(row), file=sys.stderr)
        result["rounds"] = rounds
        result["max_abs_difference"] = _compare(work / "base.npz", work / "new.npz")
    finally:
        for s in sides.values():
            s.close()
    pd_ = result["plan"]["pixel_days"]
    summary: dict[str, Any] = {}
    for metric in ("compute_block_cpu_s", "model_cpu_s", "bench_compute_limit_wall_s",
                   "compute_block_wall_s", "model_wall_s"):  # fmt: skip
        best = {k: min(r[k][metric] for r in rounds) for k in ("base", "new")}
        summary[metric.replace("_s", "")] = {
            "base_pixel_days_per_s": round(pd_ / best["base"]),
            "new_pixel_days_per_s": round(pd_ / best["new"]),
            "speedup": round(best["base"] / best["new"], 3),
            "speedup_per_round": [round(r["base"][metric] / r["new"][metric], 3) for r in rounds],
        }
    result["summary"] = summary
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Inference cost: today (0acc850) vs this branch, same blocks, one run",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Plan: {result['plan']}; world {a.world}, {a.start}..{a.end}, domain {a.domain}, "
        f"chunks `{a.chunks}`; 1 torch thread per side; best of {a.rounds} interleaved rounds "
        "(ABBA).",
        "",
        "| what | today pixel-days/s | new pixel-days/s | speedup (best) | speedup per round |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, v in summary.items():
        lines.append(f"| {k} | {v['base_pixel_days_per_s']:,} | {v['new_pixel_days_per_s']:,} | "
                     f"{v['speedup']} | {v['speedup_per_round']} |")  # fmt: skip
    lines += ["", f"Max |new - today| over the blocks' outputs: {result['max_abs_difference']}",
              "", f"Machine: {result['machine']['lscpu_head'][7:9]}; load average at start "
              f"{result['machine']['load_average_at_start']}, at end {result['machine']['load_average_at_end']} "
              "(the machine is shared: CPU seconds, not wall, and ratios within one run)."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
