"""Chunk-size sweep of the upscaling against its compute and I/O limits, peers and scaling.

Run from the repository root (the same as ``kgml-grid bench``; results go to
``benchmarks/results/`` unless ``--out`` says otherwise)::

    .venv/bin/python benchmarks/run_bench.py --preset bench --domain 64 128 \
        --start 2013-01-01 --end 2013-12-31 --world /tmp/kgml_bench/world_bench

writes ``benchmarks/results/bench_<preset>.json`` (machine, exact command, every
measurement, the acceptance ratios), ``.png`` (pixel-days/s per chunk shape with the
limits and peers as horizontal lines) and ``.md`` (the headline tables). See
:mod:`kgml_grid.bench` for what each part measures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from kgml_grid.bench import format_summary
    from kgml_grid.bench_commands import add_arguments, command_line, run_from_args

    out_default = str(REPO / "benchmarks" / "results")
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap, out_default=out_default)
    a = ap.parse_args(argv)
    cmd = command_line([".venv/bin/python", "benchmarks/run_bench.py"], a, out_default=out_default)
    res = run_from_args(a, command=cmd)
    print(format_summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
