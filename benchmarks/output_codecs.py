"""Compression ratio and encode/decode time of Zarr codecs on one block of the engine's
real outputs (the five daily variables of a 32 x 32 px x 92 d block, the one with the
most crop pixels in the top-left 64 x 64 px; NaN outside crop pixels): the measurement behind the output store's Zstd level 1.

Run from the repository root, on a world made by ``kgml-grid synth``::

    .venv/bin/python benchmarks/output_codecs.py --world /tmp/kgml_bench/world_bench

writes ``benchmarks/results/output_codecs.json`` (machine, command, every codec's ratio
and median times over ``--repeats`` encodes/decodes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world", required=True, help="a world folder (or its catalog.yaml)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "output_codecs.json"))
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args(argv)

    import numcodecs
    from zarr.codecs import BloscCodec, ZstdCodec

    from kgml_grid import cubes
    from kgml_grid.bench import (
        catalog_path,
        machine_description,
        make_bench_checkpoint,
        window_bbox,
    )
    from kgml_grid.catalog import open_catalog
    from kgml_grid.execute import _block_task, _tile_tasks, compute_block
    from kgml_grid.plan import make_plan

    catalog = catalog_path(a.world)
    grid = cubes.grid_of(open_catalog(catalog).open("satellite"))
    with tempfile.TemporaryDirectory() as tmp:
        ck = make_bench_checkpoint(catalog, Path(tmp) / "ckpt")
        window = (0, min(64, grid.ny), 0, min(64, grid.nx))
        plan = make_plan(catalog, ck, bbox=window_bbox(grid, window), chunks="y=32,x=32,time=92")
        tasks = _tile_tasks(plan, None, "codecs", plan.crop_tiles)
        key = max(plan.blocks, key=lambda k: int(plan.crop_counts[k.tile]))
        output, _ = compute_block(tasks[key.tile], _block_task(plan, key), None)
    blocks = {n: np.ascontiguousarray(v) for n, v in output.daily.items()}
    codecs = {
        "zstd level 0 (Zarr's default)": (numcodecs.Zstd(level=0), ZstdCodec(level=0)),
        "zstd level 1 (the engine's output)": (numcodecs.Zstd(level=1), ZstdCodec(level=1)),
        "zstd level 3": (numcodecs.Zstd(level=3), ZstdCodec(level=3)),
        "blosc lz4 level 5, byte shuffle": (
            numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
            BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        ),
    }

    def median_ms(fn) -> float:
        fn()
        ts = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return round(1e3 * float(np.median(ts)), 3)

    rows = {}
    raw = sum(v.nbytes for v in blocks.values())
    for name, (codec, zcodec) in codecs.items():
        enc = {n: codec.encode(v) for n, v in blocks.items()}
        rows[name] = {
            "zarr_codec": zcodec.to_dict(),
            "ratio": round(raw / sum(len(e) for e in enc.values()), 3),
            "encode_ms_block": round(
                sum(median_ms(lambda v=v, c=codec: c.encode(v)) for v in blocks.values()), 3
            ),
            "decode_ms_block": round(
                sum(median_ms(lambda e=e, c=codec: c.decode(e)) for e in enc.values()), 3
            ),
        }
    res = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/output_codecs.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine_description(),
        "block": {
            "key": key.name,
            "shape": list(blocks["ra"].shape),
            "variables": list(blocks),
            "crop_pixels": output.n_crop,
            "nan_fraction": round(float(np.isnan(blocks["ra"]).mean()), 3),
            "bytes": raw,
            "model": "random-init KGML hidden 64 (as kgml-grid bench)",
        },
        "codecs": rows,
    }
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    for name, r in rows.items():
        print(f"{name:40s} ratio {r['ratio']:6.2f}  encode {r['encode_ms_block']:7.2f} ms  "
              f"decode {r['decode_ms_block']:6.2f} ms per block")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
