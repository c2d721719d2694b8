"""The whole benchmark: :class:`BenchConfig` and :func:`run_benchmark`, which runs every
part in the order :mod:`kgml_grid.bench` describes and writes the JSON, PNG and
Markdown."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time as _time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kgml_grid.bench.inputs import catalog_path, make_bench_checkpoint, window_bbox
from kgml_grid.bench.instruments import machine_description
from kgml_grid.bench.limits import run_compute_limit, run_io_limit
from kgml_grid.bench.peers import run_peer_map_blocks, run_peer_patch_loop
from kgml_grid.bench.ratios import acceptance, median_run, recommend
from kgml_grid.bench.report import format_markdown, is_bench_result, plot_sweep
from kgml_grid.bench.runners import local_client, run_end_to_end
from kgml_grid.bench.shapes import ChunkShape, default_shapes, scaling_domains

__all__ = ["BenchConfig", "run_benchmark"]


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`run_benchmark` measures.

    Attributes
    ----------
    out : path
        Folder of the results (``bench_<preset>.json``, ``.png``, ``.md``).
    preset : str
        World preset (generated unless ``world`` is given).
    world : path, optional
        An existing world (catalog YAML or its folder) instead of generating one.
    work : path, optional
        Scratch folder (world, checkpoint, outputs); default a temporary folder that is
        removed at the end.
    model : path, optional
        Checkpoint; default a random KGML model of ``hidden`` (:func:`make_bench_checkpoint`).
    workers : int
        Dask worker processes (1 thread each) of the sweep.
    shapes : sequence of ChunkShape, optional
        Default :func:`default_shapes`.
    device : {'cpu', 'cuda', 'cuda:N'}
        Where the model runs (workers, peers, compute limit).
    quick : bool
        Two shapes and, without ``start``/``end``, 90 days (smoke tests).
    domain : (ny, nx), optional
        Pixels of the domain, from the grid's top-left corner; default the whole grid.
    start, end : str, optional
        Days of the run (default the whole cubes).
    command : str, optional
        The command line recorded in the JSON.
    peer_threads : int, optional
        Torch threads of the single-process peer (default 1: on a busy CPU, 2 torch
        threads over a GRU's small per-step matrices are many times slower than 1);
        None: ``workers``.
    max_seconds : float, optional
        Budget of each in-process measurement (patch loop, compute limits): past it the
        rate of the work done is reported, marked ``truncated``.
    repeats : int
        Interleaved repeats of the 2-worker and 1-worker runs of the scaling part; the
        run of median throughput of each is compared (all are recorded).
    overwrite : bool
        Replace the results (``bench_<preset>.*`` that a benchmark wrote) and a given
        ``work`` folder (only a benchmark's scratch folder); without it existing ones
        are refused (:mod:`kgml_grid.outputs`).
    """

    out: Path
    preset: str = "bench"
    world: Path | None = None
    work: Path | None = None
    model: Path | None = None
    hidden: int = 64
    workers: int = 2
    shapes: tuple[ChunkShape, ...] | None = None
    device: str = "cpu"
    quick: bool = False
    domain: tuple[int, int] | None = None
    start: str | None = None
    end: str | None = None
    seed: int = 0
    command: str | None = None
    note: str | None = None
    progress: bool = True
    peer_threads: int | None = 1
    max_seconds: float | None = 120.0
    repeats: int = 1
    overwrite: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


def _log(cfg: BenchConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[bench {_time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check_device(device: str) -> str:
    from kgml_grid.checkpoint import resolve_device

    dev = str(device).strip().lower()
    if dev not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", dev):
        raise ValueError(f"--device {device!r}: use cpu, cuda or cuda:N")
    resolve_device(dev)  # refuses cuda without a GPU, naming torch's build
    return dev


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run every part (see :mod:`kgml_grid.bench`) and write the JSON, PNG and Markdown.

    Returns
    -------
    dict
        The result (also written to ``cfg.out / f"bench_{preset}.json"``).

    Raises
    ------
    ValueError
        For a device that is not available, an unknown preset, a domain larger than the
        grid, before anything runs.
    """
    from kgml_grid.catalog import open_catalog
    from kgml_grid.checkpoint import load_checkpoint
    from kgml_grid.cluster import close_client
    from kgml_grid.plan import make_plan
    from kgml_grid.synth.world import PRESETS

    device = _check_device(cfg.device)
    if cfg.world is None and cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    if cfg.workers < 1:
        raise ValueError(f"--workers {cfg.workers}: need at least 1")
    # --- targets, before anything runs ----------------------------------------------------
    from kgml_grid import outputs

    out_dir = Path(cfg.out)
    stem = f"bench_{cfg.preset}"
    files = {"json": str(out_dir / f"{stem}.json"), "png": str(out_dir / f"{stem}.png"),
             "markdown": str(out_dir / f"{stem}.md")}  # fmt: skip
    inputs = outputs.input_paths("the checkpoint", [cfg.model])
    if cfg.world is not None:
        inputs += outputs.catalog_inputs(catalog_path(cfg.world))
    outputs.check_files(list(files.values()), ours=is_bench_result(files["json"]), what="a benchmark's results",
                        inputs=inputs, overwrite=cfg.overwrite)  # fmt: skip
    if cfg.work is not None:
        outputs.check_target(
            cfg.work, kind="bench-work", inputs=inputs, overwrite=cfg.overwrite, option="--work"
        )
    t_all = _time.perf_counter()
    result: dict[str, Any] = {
        outputs.MARKER_ATTR: "bench",
        "command": cfg.command or " ".join(["kgml-grid", *sys.argv[1:]]),
        "machine": machine_description(device),
    }
    if cfg.note:
        result["note"] = cfg.note
    out_dir.mkdir(parents=True, exist_ok=True)
    own_work = cfg.work is None
    if own_work:
        work = outputs.prepare_target(tempfile.mkdtemp(prefix="kgml-bench-"), kind="bench-work")
    else:
        work = outputs.prepare_target(cfg.work, kind="bench-work", inputs=inputs, overwrite=cfg.overwrite,
                                      option="--work")  # fmt: skip
    clients: list[Any] = []
    try:
        # --- world and checkpoint ---------------------------------------------------------
        if cfg.world is not None:
            catalog = catalog_path(cfg.world)
        else:
            from kgml_grid.synth import generate_world

            _log(cfg, f"generating the {cfg.preset} world in {work}")
            t0 = _time.perf_counter()
            catalog = generate_world(work / f"world_{cfg.preset}", preset=cfg.preset, seed=cfg.seed,
                                     progress=False).catalog  # fmt: skip
            result["world_generation_s"] = round(_time.perf_counter() - t0, 1)
        model = Path(cfg.model) if cfg.model else make_bench_checkpoint(
            catalog, work / f"ckpt_h{cfg.hidden}", hidden=cfg.hidden, seed=cfg.seed)  # fmt: skip
        ck = load_checkpoint(model, device="cpu")
        model_desc = f"{ck.config.arch} hidden {ck.config.hidden}" + (
            "" if cfg.model else " (random init)"
        )
        del ck
        cat = open_catalog(catalog)
        from kgml_grid import cubes

        sat = cat.open("satellite")
        grid = cubes.grid_of(sat, layer="satellite")
        enc = sat["gpp_sat"].encoding.get("chunks") or sat["gpp_sat"].encoding.get(
            "preferred_chunks"
        )
        if isinstance(enc, Mapping):
            enc = tuple(enc.get(d) for d in ("time", "y", "x"))
        cube_tile = (
            int(enc[1]) if isinstance(enc, tuple | list) and len(enc) == 3 and enc[1] else None
        )
        domain = tuple(cfg.domain) if cfg.domain else grid.shape
        if domain[0] > grid.ny or domain[1] > grid.nx or min(domain) < 1:
            raise ValueError(
                f"--domain {domain[0]} {domain[1]} does not fit the {grid.ny} x {grid.nx} grid"
            )
        start, end = cfg.start, cfg.end
        if cfg.quick and start is None and end is None:
            import pandas as pd

            t = pd.DatetimeIndex(sat["time"].values)
            y0 = t[0].year + (1 if len(t) > 730 else 0)
            start, end = (
                f"{y0}-01-01",
                str((pd.Timestamp(f"{y0}-01-01") + pd.Timedelta(days=89)).date()),
            )
        bbox = window_bbox(grid, (0, domain[0], 0, domain[1]))
        probe = make_plan(catalog, model, start=start, end=end, bbox=bbox)
        shapes = list(cfg.shapes) if cfg.shapes else default_shapes(domain, probe.n_days, cube_tile=cube_tile,
                                                                    quick=cfg.quick)  # fmt: skip
        d1, d4 = scaling_domains(domain, grid.shape)
        result["config"] = {
            "preset": cfg.preset, "world": str(catalog), "domain": list(domain), "grid": list(grid.shape),
            "start": str(probe.start.date()), "end": str(probe.end.date()), "days": probe.n_days,
            "crop_pixels": probe.n_crop_pixels, "pixel_days": probe.n_crop_pixels * probe.n_days,
            "workers": cfg.workers, "threads_per_worker": 1, "device": device,
            "model": str(model), "model_desc": model_desc, "shapes": [s.chunks for s in shapes],
            "scaling_domains": {"1x": list(d1), "4x": list(d4)}, **dict(cfg.extra),
        }  # fmt: skip
        _log(cfg, f"domain {domain} px, {probe.n_days} days, {probe.n_crop_pixels} crop pixels, "
                  f"{len(shapes)} shapes, {cfg.workers} workers, device {device}")  # fmt: skip

        # --- sweep + I/O limit per shape -------------------------------------------------
        client = local_client(cfg.workers)
        clients.append(client)
        from kgml_grid.worker import register_model

        register_model(
            client, str(model.resolve()), probe.checkpoint_hash, device=device
        )  # warm: model once per worker
        sweep = []
        for s in shapes:
            _log(cfg, f"end-to-end {s.label}")
            row = run_end_to_end(catalog, model, s, client=client, out=work / "e2e.zarr", start=start, end=end,
                                 bbox=bbox, device=device)  # fmt: skip
            plan = make_plan(catalog, model, start=start, end=end, bbox=bbox, chunks=s.chunks)
            row["io_limit"] = run_io_limit(plan, client=client)
            row["io_with_assembly"] = run_io_limit(plan, client=client, assemble=True)
            _log(cfg, f"  {row['pixel_days_per_s']:.0f} pixel-days/s, {row['wall_s']:.1f} s, "
                      f"peak {row['peak_memory_per_worker_mib']:.0f} MiB/worker, {row['tasks']} tasks; "
                      f"I/O limit {row['io_limit']['pixel_days_per_s']:.0f} pixel-days/s")  # fmt: skip
            sweep.append(row)
        result["sweep"] = sweep
        rec = dict(recommend(sweep))
        result["recommended"] = {k: rec[k] for k in ("label", "chunks", "tile_y", "tile_x", "time",
                                                     "pixel_days_per_s", "peak_memory_per_worker_mib", "tasks",
                                                     "wall_s", "time_split", "model_only_pixel_days_per_s")}  # fmt: skip
        result["recommended"]["rule"] = ("highest throughput, or within 5% of it with the lowest peak memory "
                                         "per worker, then the fewest tasks")  # fmt: skip
        rshape = ChunkShape(rec["tile_y"], rec["tile_x"], rec["time"])
        bbox1 = window_bbox(grid, (0, d1[0], 0, d1[1]))
        bbox4 = window_bbox(grid, (0, d4[0], 0, d4[1]))
        # every ratio below compares runs at the recommended shape on the 1x domain
        plan1 = make_plan(catalog, model, start=start, end=end, bbox=bbox1, chunks=rshape.chunks)

        def e2e(c: Any, box: Any) -> dict[str, Any]:
            return run_end_to_end(catalog, model, rshape, client=c, out=work / "e2e.zarr", start=start, end=end,
                                  bbox=box, device=device)  # fmt: skip

        sc: dict[str, Any] = {}
        _log(cfg, f"scaling: {cfg.workers} workers, 4x domain {d4}")
        sc["domain_4x"] = {**e2e(client, bbox4), "domain": list(d4)}
        c2 = client if cfg.workers == 2 else local_client(2)
        if c2 is not client:
            clients.append(c2)
        c1 = local_client(1)
        clients.append(c1)

        # --- rounds: every same-run comparison, interleaved ---------------------------------------
        # (slow drifts of a shared machine's load then hit every measurement alike; the
        # medians are compared. Clusters are all started: CUDA in this process is safe now.)
        threads = cfg.workers
        pthreads = cfg.peer_threads or threads
        reps = max(1, cfg.repeats)
        runs: dict[str, list[dict[str, Any]]] = {}

        def measure(name: str, what: str, fn: Callable[[], dict[str, Any]]) -> None:
            _log(cfg, what)
            runs.setdefault(name, []).append(fn())
            _log(cfg, f"  {runs[name][-1]['pixel_days_per_s']:.0f} pixel-days/s")

        for i in range(reps):
            _log(cfg, f"round {i + 1} of {reps}")
            measure("e2e", f"end-to-end {rshape.label}, {cfg.workers} workers, domain {d1}",
                    lambda: {**e2e(client, bbox1), "domain": list(d1)})  # fmt: skip
            if cfg.workers != 2:
                measure(
                    "w2", "end-to-end, 2 workers", lambda: {**e2e(c2, bbox1), "domain": list(d1)}
                )
            measure("w1", "end-to-end, 1 worker", lambda: {**e2e(c1, bbox1), "domain": list(d1)})
            measure("io", "I/O limit", lambda: run_io_limit(plan1, client=client))
            measure("map_blocks", "peer: xarray.map_blocks",
                    lambda: run_peer_map_blocks(plan1, out=work / "peer_map_blocks.zarr", device=device,
                                                client=client))  # fmt: skip
            measure("patch_loop", f"peer: single-process patch loop ({pthreads} torch threads)",
                    lambda: run_peer_patch_loop(plan1, out=work / "peer_patch_loop.zarr", threads=pthreads,
                                                device=device, max_seconds=cfg.max_seconds))  # fmt: skip
            if threads > 1:
                measure("compute_processes", f"compute limit: {threads} processes x 1 torch thread",
                        lambda: run_compute_limit(plan1, threads=1, device=device, processes=threads,
                                                  max_seconds=cfg.max_seconds))  # fmt: skip
            # (on a busy CPU, several torch threads in one process can be many times slower:
            # the time budget bounds what that costs)
            measure(
                "compute_threads",
                f"compute limit: 1 process x {threads} torch thread(s)",
                lambda: run_compute_limit(
                    plan1, threads=threads, device=device, max_seconds=cfg.max_seconds
                ),
            )
        measure(
            "io_with_assembly",
            "I/O + feature assembly (read_block, no model)",
            lambda: run_io_limit(plan1, client=client, assemble=True),
        )
        for c in {id(x): x for x in (client, c2, c1)}.values():
            close_client(c)
            clients.remove(c)

        med = {k: median_run(v) for k, v in runs.items()}
        result["end_to_end"] = {**med["e2e"], "shape": rshape.label,
                                "what": f"upscale at the recommended shape, {cfg.workers} workers, domain {list(d1)}"}  # fmt: skip
        sc["domain_1x"] = result["end_to_end"]
        sc["workers_2"] = result["end_to_end"] if cfg.workers == 2 else med["w2"]
        sc["workers_1"] = med["w1"]
        result["scaling"] = sc
        result["peers"] = {"map_blocks": med["map_blocks"], "patch_loop": med["patch_loop"]}
        lim = result["limits"] = {"io": med["io"], "io_with_assembly": med["io_with_assembly"]}
        lim["compute_threads"] = med["compute_threads"]
        variants = [lim["compute_threads"]]
        if "compute_processes" in med:
            lim["compute_processes"] = med["compute_processes"]
            variants.append(lim["compute_processes"])
        best = max(variants, key=lambda v: v["pixel_days_per_s"])
        lim["compute"] = {**best, "variant": f"{best['processes']} process(es) x {best['threads']} thread(s)",
                          "rule": f"the faster way of giving the model the same {threads} threads"}  # fmt: skip
        if device.startswith("cuda"):
            import torch

            result["machine"]["gpu"] = torch.cuda.get_device_name(torch.device(device))
    finally:
        for c in clients:
            close_client(c)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    result["acceptance"] = acceptance(result)
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result["total_s"] = round(_time.perf_counter() - t_all, 1)
    result["files"] = {k: os.path.relpath(v, out_dir) for k, v in files.items()}
    plot_sweep(result, files["png"])
    Path(files["markdown"]).write_text(format_markdown(result))
    Path(files["json"]).write_text(json.dumps(result, indent=1, default=str) + "\n")
    result["files"] = files
    return result
