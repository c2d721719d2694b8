"""Cost of the value checks of :mod:`kgml_grid.values`: the sampled check that
:func:`kgml_grid.plan.make_plan` (upscaling inputs) and :func:`kgml_grid.train.pretrain`
(inputs and targets) run, against the full check of ``kgml-grid catalog --check-values``,
and ``make_plan`` with and without its check.

Run from the repository root, on worlds made by ``kgml-grid synth``::

    .venv/bin/python benchmarks/value_check_cost.py --world /tmp/w_tiny /tmp/w_demo

writes ``benchmarks/results/value_check_cost.json`` (machine, command, per world the
median and minimum seconds over ``--repeats`` calls, chunks read, MB decoded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _time(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    ts, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3)}, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--world", required=True, nargs="+", help="world folders (or their catalog.yaml)"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "value_check_cost.json"))
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)

    from kgml_grid import values
    from kgml_grid.bench import _catalog_path, machine_description, make_bench_checkpoint
    from kgml_grid.catalog import open_catalog
    from kgml_grid.model import DAILY_TARGETS, YIELD_TARGET
    from kgml_grid.plan import make_plan

    res: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/value_check_cost.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine_description(),
        "sample_chunks": values.SAMPLE_CHUNKS,
        "worlds": {},
    }
    upscale_layers = ("satellite", "weather", "soil", "crop")
    training_vars = (*values.MODEL_INPUTS, *DAILY_TARGETS, YIELD_TARGET)
    with tempfile.TemporaryDirectory() as tmp:
        for world in a.world:
            catalog = _catalog_path(world)
            ckpt = make_bench_checkpoint(
                catalog, Path(tmp) / f"ckpt_{len(res['worlds'])}", hidden=8
            )
            cat = open_catalog(catalog)
            layers = cat.open_all()
            src = values.catalog_sources(cat)
            r: dict[str, Any] = {"sizes": {k: dict(ds.sizes) for k, ds in layers.items()}}
            cases = {
                "sample_upscaling_inputs": (
                    {k: layers[k] for k in upscale_layers},
                    "sample",
                    values.MODEL_INPUTS,
                ),
                "sample_training_inputs_and_targets": (layers, "sample", training_vars),
                "full_every_variable": (layers, "full", None),
            }
            for name, (lays, mode, variables) in cases.items():
                t, rep = _time(partial(values.check_layers, lays, sources=src, mode=mode, variables=variables),
                               a.repeats)  # fmt: skip
                r[name] = {**t, "chunks_read": sum(s.chunks_checked for s in rep.stats.values()),
                           "MB_decoded": round(sum(s.n for s in rep.stats.values()) * 4 / 1e6, 1),
                           "findings": len(rep.findings)}  # fmt: skip
            r["make_plan_with_check"], _ = _time(partial(make_plan, catalog, ckpt), a.repeats)
            real = values.check_layers
            values.check_layers = lambda *args, **kw: values.ValueReport("sample")  # type: ignore[assignment]
            try:
                r["make_plan_without_check"], _ = _time(
                    partial(make_plan, catalog, ckpt), a.repeats
                )
            finally:
                values.check_layers = real  # type: ignore[assignment]
            res["worlds"][str(world)] = r
            print(json.dumps({str(world): r}, indent=1))
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
