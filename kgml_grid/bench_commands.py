"""``kgml-grid bench``: parse arguments, call :func:`kgml_grid.bench.run_benchmark`."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

USAGE_EXAMPLES = """\
examples:
  kgml-grid bench --preset bench --out benchmarks/results                 # the whole bench preset
  kgml-grid bench --preset bench --out results --domain 64 128 --start 2013-01-01 --end 2013-12-31
  kgml-grid bench --preset tiny --out /tmp/b --quick --hidden 8              # smoke test (seconds)
  kgml-grid bench --preset bench --out results --shapes 64x365 32x92 --device cuda
"""


def add_arguments(
    b: argparse.ArgumentParser, *, out_default: str | None = None
) -> argparse.ArgumentParser:
    """Add the ``bench`` arguments to a parser (shared by the CLI and ``benchmarks/run_bench.py``)."""
    b.add_argument("--preset", default="bench", choices=["tiny", "demo", "bench"],
                   help="synthetic world preset (generated unless --world is given)")  # fmt: skip
    b.add_argument("--out", required=out_default is None, default=out_default,
                   help="folder of the results: bench_<preset>.json, .png, .md")  # fmt: skip
    b.add_argument("--model", default=None,
                   help="checkpoint (default: a random KGML model of --hidden, norm from a pixel sample)")  # fmt: skip
    b.add_argument("--hidden", type=int, default=64, help="hidden size of the default random model")
    b.add_argument("--workers", type=int, default=2, help="Dask worker processes (1 thread each)")
    b.add_argument("--shapes", nargs="+", metavar="SHAPE", default=None,
                   help="chunk shapes: TILExDAYS (64x365), TYxTXxDAYS (32x64x92) or y=64,x=64,time=365 "
                        "(default: 7 shapes around the cube's chunk)")  # fmt: skip
    b.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda or cuda:N")
    b.add_argument(
        "--quick",
        action="store_true",
        help="2 shapes and 90 days unless --start/--end (smoke test)",
    )
    b.add_argument("--domain", nargs=2, type=int, metavar=("NY", "NX"),
                   help="pixels of the domain from the grid's top-left corner (default: the whole grid)")  # fmt: skip
    b.add_argument(
        "--start", default=None, help="first day, YYYY-MM-DD (default: the cubes' first)"
    )
    b.add_argument("--end", default=None, help="last day, YYYY-MM-DD, inclusive")
    b.add_argument("--world", default=None, help="an existing world (catalog YAML or its folder)")
    b.add_argument(
        "--work", default=None, help="scratch folder (default: a temporary one, removed)"
    )
    b.add_argument("--overwrite", action="store_true",
                   help="replace existing results bench_<preset>.* (and a --work folder) that a benchmark wrote")  # fmt: skip
    b.add_argument("--peer-threads", type=int, default=1,
                   help="torch threads of the single-process peer (default 1; 0: --workers)")  # fmt: skip
    b.add_argument("--max-seconds", type=float, default=120.0,
                   help="time budget of each in-process measurement (patch loop, compute limits); "
                        "past it the rate of the work done is reported")  # fmt: skip
    b.add_argument("--repeats", type=int, default=1,
                   help="interleaved repeats of the 1- and 2-worker scaling runs (medians compared)")  # fmt: skip
    b.add_argument(
        "--seed", type=int, default=0, help="seed of the untrained benchmark model and the world"
    )
    b.add_argument("--note", default=None, help="a note recorded in the JSON")
    b.add_argument("--quiet", action="store_true", help="no progress messages")
    return b


def run_from_args(a: argparse.Namespace, *, command: str) -> dict[str, Any]:
    """Build the :class:`~kgml_grid.bench.BenchConfig` from parsed arguments and run it."""
    from kgml_grid.bench import BenchConfig, ChunkShape, run_benchmark

    cfg = BenchConfig(
        out=Path(a.out), preset=a.preset, world=Path(a.world) if a.world else None,
        work=Path(a.work) if a.work else None, model=Path(a.model) if a.model else None,
        hidden=a.hidden, workers=a.workers,
        shapes=tuple(ChunkShape.parse(s) for s in a.shapes) if a.shapes else None,
        device=a.device, quick=a.quick, domain=tuple(a.domain) if a.domain else None,
        start=a.start, end=a.end, seed=a.seed, command=command, note=a.note, progress=not a.quiet,
        peer_threads=a.peer_threads or None, max_seconds=a.max_seconds, repeats=a.repeats,
        overwrite=a.overwrite,
    )  # fmt: skip
    return run_benchmark(cfg)


def command_line(
    prog: Sequence[str], a: argparse.Namespace, *, out_default: str | None = None
) -> str:
    """The canonical command line of parsed arguments (every option that differs from
    its default, in the parser's order), recorded in the results."""
    words = list(prog)
    ref = add_arguments(argparse.ArgumentParser(add_help=False), out_default=out_default)
    for act in ref._actions:
        if not act.option_strings or not hasattr(a, act.dest):
            continue
        value = getattr(a, act.dest)
        if value == act.default and act.dest != "preset":  # the preset is always written
            continue
        flag = act.option_strings[0]
        if isinstance(act, argparse._StoreTrueAction):
            words.append(flag)
        elif isinstance(value, list | tuple):
            words += [flag, *(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _cmd_bench(a: argparse.Namespace) -> int:
    from kgml_grid.bench import format_summary

    res = run_from_args(a, command=command_line(["kgml-grid", "bench"], a))
    print(format_summary(res))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``kgml-grid`` sub-command parsers."""
    b = subparsers.add_parser(
        "bench",
        help="chunk-shape sweep of the upscaling against its compute and I/O limits and its peers",
        description=(
            "Sweep chunk shapes (space tile x time chunk) end to end; measure the compute limit "
            "(model over in-memory tensors) and the I/O limit (same blocks read, no model), two "
            "peers (xarray.map_blocks, a single-process patch loop) and scaling (1 vs 2 workers, "
            "1x vs 4x domain), all in one run; write JSON, a PNG plot and a Markdown table, and "
            "recommend a chunk shape."
        ),
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(b)
    b.set_defaults(func=_cmd_bench)
    return b
