"""Scale benchmark of issue 13 (:mod:`kgml_grid.bench.scale`): plan, store and
schedule a CONUS-shaped metadata-only run at the CPU and GPU shapes, the first
running block of a 1,024 x 1,024 px x 18-year plan, and a 512 x 512 px x 1-year
sub-window end to end against the compute limit.

Run from the repository root (about 20-30 minutes on a 2-core machine)::

    .venv/bin/python benchmarks/scale_bench.py --work /tmp/kgml_scale \
        --json benchmarks/results/scale_bench.json --md benchmarks/results/scale_bench.md

``--preset state --accept-preset small --e2e-px 64 --e2e-days 60 --sample-s 2`` runs it
small (the test does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from kgml_grid.bench.scale import ScaleConfig, format_markdown, run_scale

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", default="/tmp/kgml_scale")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "scale_bench.json"))
    ap.add_argument("--md", default=str(REPO / "benchmarks" / "results" / "scale_bench.md"))
    ap.add_argument("--preset", default="conus", help="metadata world of the size measurements")
    ap.add_argument("--accept-preset", default="mid", help="world of the first-running-block check")
    ap.add_argument("--cpu-shape", default="y=16,x=16")
    ap.add_argument("--gpu-shape", default="y=256,x=256")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample-s", type=float, default=20.0, help="seconds of each bounded run")
    ap.add_argument("--e2e-px", type=int, default=512)
    ap.add_argument("--e2e-days", type=int, default=365)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--max-tasks", type=int, default=2000)
    ap.add_argument("--memory-limit", default="6GiB", help="of each worker")
    ap.add_argument(
        "--report-from",
        metavar="JSON",
        default=None,
        help="only redo the extrapolation and the Markdown from an earlier run's JSON",
    )
    a = ap.parse_args(argv)
    if a.report_from:
        from kgml_grid.bench.scale import extrapolate

        res = json.loads(Path(a.report_from).read_text())
        res["extrapolation"] = extrapolate(res["end_to_end"], res["config"]["workers"])
        res["report_redone"] = (
            "extrapolation and Markdown recomputed from this JSON (arithmetic only)"
        )
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
        Path(a.md).write_text(format_markdown(res))
        print(f"wrote {a.json} and {a.md}")
        return 0
    cfg = ScaleConfig(work=a.work, preset=a.preset, accept_preset=a.accept_preset,
                      shapes={"cpu": a.cpu_shape, "gpu": a.gpu_shape}, workers=a.workers,
                      sample_s=a.sample_s, e2e_px=a.e2e_px, e2e_days=a.e2e_days, hidden=a.hidden,
                      max_tasks=a.max_tasks, memory_limit=a.memory_limit)  # fmt: skip
    res = run_scale(cfg, log=lambda m: print(m[:400], flush=True))
    res["command"] = " ".join(
        [
            ".venv/bin/python",
            "benchmarks/scale_bench.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")  # first: the report may fail
    print(f"wrote {a.json}")
    Path(a.md).parent.mkdir(parents=True, exist_ok=True)
    Path(a.md).write_text(format_markdown(res))
    print(f"wrote {a.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
