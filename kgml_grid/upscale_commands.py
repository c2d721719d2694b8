"""``kgml-grid upscale``: parse arguments, call :func:`kgml_grid.execute.upscale`."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

USAGE_EXAMPLES = """\
examples:
  kgml-grid upscale --catalog world/catalog.yaml --model ckpt --out out.zarr --dry-run
  kgml-grid upscale --catalog world/catalog.yaml --model ckpt --out out.zarr \\
      --chunks y=48,x=48,time=365 --cluster local --maps out_maps
  kgml-grid upscale ... --cluster tcp://127.0.0.1:8786          # an existing scheduler
  kgml-grid upscale ... --cluster scheduler.json                # a scheduler file
  kgml-grid upscale ... --cluster cluster/slurm.yaml            # SLURM (dask-jobqueue)
  kgml-grid upscale ... --resume                                # finish an interrupted run
"""


def _check_maps(a: argparse.Namespace) -> None:
    """Refuse a ``--maps`` folder before anything is computed (as the store itself)."""
    from kgml_grid.outputs import catalog_inputs, check_target

    inputs = [("the output store", a.out), ("the checkpoint", a.model)]
    with contextlib.suppress(ValueError, OSError):  # a bad catalog is the plan's to report
        inputs += catalog_inputs(a.catalog)
    check_target(a.maps, kind="maps", inputs=inputs, overwrite=a.overwrite, option="--maps")


def _cmd_upscale(a: argparse.Namespace) -> int:
    from kgml_grid.execute import upscale

    if a.maps and not a.dry_run:
        _check_maps(a)
    res = upscale(
        a.catalog,
        a.model,
        a.out,
        start=a.start,
        end=a.end,
        bbox=a.bbox,
        bbox_crs=a.bbox_crs,
        chunks=a.chunks,
        cluster=a.cluster,
        n_workers=a.workers,
        resume=a.resume,
        overwrite=a.overwrite,
        dry_run=a.dry_run,
        progress=not a.quiet,
        batch_pixels=a.batch_pixels,
        device=a.device,
        connect_timeout=a.connect_timeout,
        precision=a.precision,
        frequency=a.frequency,
        variables=a.variables,
        max_tasks=a.max_tasks,
    )
    print(res.summary())
    if a.maps and not a.dry_run:
        from kgml_grid.maps import annual_maps

        for p in annual_maps(a.out, a.maps, overwrite=a.overwrite):
            print(f"map: {p}")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--workers 0`` would wait forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def device_spec(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N (spelling only; nothing initialised)."""
    from kgml_grid.checkpoint import check_device_spec

    try:
        return check_device_spec(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``upscale`` on the ``kgml-grid`` sub-command parsers."""
    u = subparsers.add_parser(
        "upscale",
        help="run a checkpoint over every crop pixel of a catalog's grid (Dask, resumable Zarr)",
        description=(
            "Plan the run (blocks = space tile x time chunk; tiles without crop skipped), "
            "check it, then execute it on a Dask cluster, writing each block to OUT.zarr "
            "as soon as it is done."
        ),
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    u.add_argument("--catalog", required=True, help="catalog YAML of the cubes")
    u.add_argument("--model", required=True, help="checkpoint directory")
    u.add_argument("--out", required=True, help="output Zarr store (OUT.zarr)")
    u.add_argument("--start", help="first day, YYYY-MM-DD (default: first day of the cubes)")
    u.add_argument("--end", help="last day, YYYY-MM-DD, inclusive (default: last day of the cubes)")
    u.add_argument("--bbox", metavar="W,S,E,N",
                   help="sub-domain in the grid's CRS (or --bbox-crs); must lie inside the grid "
                        "(write --bbox=W,S,E,N when W is negative)")  # fmt: skip
    u.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326 for longitude/latitude")
    u.add_argument("--chunks", metavar="y=N,x=N,time=N|auto",
                   help="tile and time-chunk sizes; -1 = whole dimension (default: the cube's "
                        "spatial chunks, one time chunk per calendar year); auto = the shape "
                        "recommended for --device (the plan says why)")  # fmt: skip
    u.add_argument("--cluster", default="local",
                   help="'local' (default), tcp://HOST:PORT, a scheduler file, a cluster/*.yaml, "
                        "or 'serial' (no Dask)")  # fmt: skip
    u.add_argument(
        "--workers", type=positive_int, default=None, help="workers of a local cluster (>= 1)"
    )
    u.add_argument("--connect-timeout", type=positive_float, default=None, metavar="S",
                   help="seconds to wait for an existing scheduler (default 20)")  # fmt: skip
    u.add_argument(
        "--resume", action="store_true", help="finish an interrupted run: only missing blocks"
    )
    u.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT (and --maps DIR): only an upscaling store kgml_grid "
                        "wrote, never an input of the run")  # fmt: skip
    u.add_argument(
        "--dry-run", action="store_true", help="print the plan; compute and write nothing"
    )
    u.add_argument("--batch-pixels", type=positive_int, default=None, help="pixels per model batch")
    u.add_argument("--device", default="auto", type=device_spec,
                   help="worker device: auto (GPU if any), cpu, cuda or cuda:N")  # fmt: skip
    u.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                   help="model precision: fp32 (exact), tf32 (CUDA only), bf16 (autocast; deviation "
                        "from fp32 in benchmarks/results/gpu_bench_*.json)")  # fmt: skip
    u.add_argument("--frequency", default="daily", choices=("daily", "monthly", "annual"),
                   help="output time step: daily values (default) or monthly / annual sums "
                        "(time chunks must then end at month / year ends)")  # fmt: skip
    u.add_argument(
        "--variables",
        metavar="V,V",
        default=None,
        help="outputs to write, of ra, rh, reco, nee, gpp, yield (default all)",
    )
    u.add_argument(
        "--max-tasks",
        type=positive_int,
        default=2000,
        metavar="N",
        help="most blocks in the Dask scheduler at once (default 2000)",
    )
    u.add_argument("--maps", metavar="DIR", help="also write annual maps of Ra, Rh, NEE (PNG) here")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(func=_cmd_upscale)
    return u
