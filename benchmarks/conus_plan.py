"""Planning at CONUS size: ``make_plan`` and ``kgml-grid upscale --dry-run`` on a
metadata-only CONUS world (11,500 x 18,500 px of 250 m, 2001-2018, weather on 0.125 deg).

Run from the repository root::

    .venv/bin/python benchmarks/conus_plan.py --work /tmp/conus_plan \
        --json benchmarks/results/conus_plan.json

Each measurement runs in a fresh interpreter (``/usr/bin/time``-style: wall time, CPU
time and peak RSS of the whole process from ``resource.getrusage`` of the child), so
that imports and the catalog open are counted as a user pays them:

1. the world (:func:`kgml_grid.bench.metaworld.metadata_world`, preset ``conus``);
2. ``make_plan`` with the cube's chunks (256 px x one year), with ``--chunks auto``
   for ``--device cpu`` and for ``--device cuda``: time, peak RSS, tiles, crop tiles,
   blocks, tasks, memory per task;
3. ``kgml-grid upscale --dry-run --chunks auto`` (the CLI end to end) for cpu and cuda.

The checkpoint is a randomly initialised KGML model (hidden 64) with statistics from a
tiny synthetic world: planning reads only its configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAN_SNIPPET = """
import json, sys, time, resource
t0, c0 = time.perf_counter(), time.process_time()
from kgml_grid.plan import make_plan
p = make_plan(sys.argv[1], sys.argv[2], chunks=None if sys.argv[3] == "default" else sys.argv[3],
              device=sys.argv[4])
t1, c1 = time.perf_counter(), time.process_time()
text = str(p)
d = p.to_dict()
print(json.dumps({"make_plan_s": round(t1 - t0, 2), "make_plan_cpu_s": round(c1 - c0, 2),
                  "print_and_to_dict_s": round(time.perf_counter() - t1, 3),
                  "chunks": f"y={p.tile_y},x={p.tile_x},time={max(p.time_chunks)}",
                  "tiles": p.n_tiles, "crop_tiles": p.n_crop_tiles, "skipped_tiles": p.n_skipped_tiles,
                  "crop_pixels": p.n_crop_pixels, "blocks": p.n_blocks, "tasks": p.n_tasks,
                  "batch_pixels": p.batch_pixels,
                  "memory_per_task_gib": round(p.memory_per_task / 2**30, 3),
                  "gpu_activations_gib": round(p.memory.get("device", 0) / 2**30, 3),
                  "max_crop_pixels_per_task": p.max_crop_pixels,
                  "mean_crop_pixels_per_task": round(p.n_crop_pixels / max(p.n_crop_tiles, 1)),
                  "sizing": list(p.sizing), "plan_text": text}))
"""


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[dict, str]:
    """Run ``cmd``; its wall time, CPU time and peak RSS (the child's own rusage, from
    ``os.wait4``)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, etext = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(text + etext)[-3000:]}")
    return {
        "process_wall_s": round(wall, 2),
        "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", default="/tmp/kgml_conus_plan")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "conus_plan.json"))
    ap.add_argument("--reuse-world", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    py = sys.executable
    lscpu = subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:16]
    result: dict = {
        "command": " ".join([".venv/bin/python", "benchmarks/conus_plan.py", *(argv or sys.argv[1:])]),
        "machine": {"lscpu": lscpu, "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": list(os.getloadavg()),
                    "note": "shared 2-core machine: other jobs ran at the same time (see load "
                            "averages); CPU seconds are the steadier figure"},
        "targets": {"make_plan_s": 60, "peak_rss_gib": 2},
    }  # fmt: skip
    world = work / "conus"
    cat = world / "catalog.yaml"
    if not (a.reuse_world and cat.exists()):
        code = ("from kgml_grid.bench.metaworld import metadata_world; "
                f"metadata_world({str(world)!r}, preset='conus', overwrite=True)")  # fmt: skip
        stats, _ = run_child([py, "-c", code], env)
        result["world"] = {**stats, **json.loads((world / "world.json").read_text())}
        print("world", result["world"]["process_wall_s"], "s", flush=True)
    ckpt = work / "ckpt_h64"
    if not ckpt.exists():
        tiny = work / "tiny"
        subprocess.run([py, "-m", "kgml_grid.cli", "synth", "--out", str(tiny), "--preset", "tiny",
                        "--overwrite"], env=env, check=True, capture_output=True)  # fmt: skip
        code = (
            "from kgml_grid.bench.inputs import make_bench_checkpoint; "
            f"make_bench_checkpoint({str(tiny / 'catalog.yaml')!r}, {str(ckpt)!r}, hidden=64)"
        )
        subprocess.run([py, "-c", code], env=env, check=True)
    result["plans"] = {}
    for label, chunks, device in (("cube_chunks", "default", "cpu"), ("auto_cpu", "auto", "cpu"),
                                  ("auto_gpu", "auto", "cuda")):  # fmt: skip
        stats, out = run_child([py, "-c", PLAN_SNIPPET, str(cat), str(ckpt), chunks, device], env)
        rec = {**stats, **json.loads(out.strip().splitlines()[-1])}
        result["plans"][label] = rec
        print(label, {k: v for k, v in rec.items() if k not in ("plan_text", "sizing")}, flush=True)
    result["dry_run"] = {}
    for device in ("cpu", "cuda"):
        cmd = [py, "-m", "kgml_grid.cli", "upscale", "--catalog", str(cat), "--model", str(ckpt),
               "--out", str(work / "out.zarr"), "--chunks", "auto", "--device", device, "--dry-run"]  # fmt: skip
        stats, out = run_child(cmd, env)
        result["dry_run"][device] = {**stats, "command": " ".join(["kgml-grid", *cmd[3:]]),
                                     "wrote_nothing": not (work / "out.zarr").exists(),
                                     "output": out.strip().splitlines()}  # fmt: skip
        print("dry-run", device, stats, flush=True)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
