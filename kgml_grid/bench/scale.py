"""Scale benchmark (issue 13): plan, store and schedule a CONUS-shaped run; run a
sub-window end to end.

:func:`run_scale` measures, in one run on this machine:

1. **planning and set-up at size**, on metadata-only cubes
   (:func:`kgml_grid.bench.metaworld.metadata_world`, preset ``conus`` by default:
   11,500 x 18,500 px, 18 years, crop in a clustered share of tiles) at the CPU and
   the GPU shapes: :func:`kgml_grid.plan.make_plan` time and client RSS, blocks and
   crop tiles, the output layout (bytes, shard files, record files;
   :mod:`kgml_grid.outstore`), the scheduling window (:mod:`kgml_grid.schedule`) and
   :func:`kgml_grid.execute.prepare_store` time and the files it wrote;
2. **scheduling at size**: the real :class:`~kgml_grid.execute.DaskExecutor` on a
   cluster of real ``dask scheduler`` / ``dask worker`` processes over that plan, for
   a bounded time (then :meth:`~kgml_grid.execute.DaskExecutor.stop`): submission
   time of the first window, time from the command to the first running block, most
   tasks the scheduler held (sampled), scheduler CPU seconds per block (of the
   scheduler process), and the blocks' own time against the wall time of the worker
   threads (the per-task overhead);
3. **acceptance**: a ``mid`` (1,024 x 1,024 px x 18 years) metadata-only plan at the
   CPU shape: seconds from the call to the first running block, with the store
   prepared and the window submitted;
4. **end to end**: a sub-window (``e2e_px`` square, ``e2e_days``) of the same cubes
   through the same path (plan, store, window, blocks, records, finish), its
   crop-pixel-days per second and its ratio to the compute limit
   (:func:`kgml_grid.bench.limits.run_compute_limit`: the same model over the same
   pixel-days in memory, the workers' processes); the per-task overhead;
5. **extrapolation** (marked as such) to the whole CONUS x 18 years at the measured
   rate.

The metadata-only cubes read as their fill values (typical values, finite
outputs): reading them decodes nothing, so the end-to-end run is a lower bound of
the I/O a real world costs, and its ratio to the compute limit is the engine's own
overhead (scheduling, feature assembly, writing, records).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import threading
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ScaleConfig", "run_scale"]


@dataclass
class ScaleConfig:
    """What :func:`run_scale` measures (defaults: the committed run).

    Attributes
    ----------
    work : path
        Scratch folder (worlds, stores, cluster logs).
    preset : str
        Metadata world (:data:`kgml_grid.bench.metaworld.PRESETS`) of parts 1-2.
    accept_preset : str
        World of the acceptance (part 3).
    shapes : dict
        Name -> chunk string: the CPU and GPU shapes.
    workers : int
        Worker processes (one thread each).
    sample_s : float
        Seconds each bounded scheduling run lasts after its first block.
    e2e_px, e2e_days : int
        Side of the end-to-end sub-window (pixels) and its days.
    hidden : int
        Hidden size of the (random) model.
    max_tasks : int
        The executor's window limit.
    memory_limit : str
        Of each worker (the GPU shape's task estimate needs ~2.4 GiB, under half of it).
    """

    work: str
    preset: str = "conus"
    accept_preset: str = "mid"
    shapes: dict[str, str] = field(
        default_factory=lambda: {"cpu": "y=16,x=16", "gpu": "y=256,x=256"}
    )
    workers: int = 2
    sample_s: float = 20.0
    e2e_px: int = 512
    e2e_days: int = 365
    hidden: int = 64
    max_tasks: int = 2000
    memory_limit: str = "6GiB"
    world_overrides: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# instruments
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _rss_peak(interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Peak RSS of this process above its RSS at entry (bytes), sampled."""
    import psutil

    proc = psutil.Process()
    out = {"base": proc.memory_info().rss, "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], proc.memory_info().rss - out["base"])
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield out
    finally:
        stop.set()
        th.join()
        out["peak"] = max(out["peak"], proc.memory_info().rss - out["base"])


def _files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _scheduler_watch(client: Any, stop: threading.Event, out: dict[str, Any]) -> None:
    """Sample the scheduler: tasks held (max), first time a block is processing; every
    10 ms until then, every 0.5 s after (a probe costs the scheduler CPU too)."""

    def probe(dask_scheduler: Any) -> tuple[int, int]:
        n_proc = sum(1 for ts in dask_scheduler.tasks.values() if ts.state == "processing")
        return len(dask_scheduler.tasks), n_proc

    while not stop.is_set():
        with contextlib.suppress(Exception):
            n, n_proc = client.run_on_scheduler(probe)
            out["max_tasks"] = max(out.get("max_tasks", 0), n)
            out["samples"] = out.get("samples", 0) + 1
            if n_proc and "first_processing" not in out:
                out["first_processing"] = _time.perf_counter()
        stop.wait(0.5 if "first_processing" in out else 0.01)


def _idle(client: Any, timeout: float = 120) -> None:
    """Wait until the scheduler holds no task (a stopped run's last blocks finish)."""
    t_end = _time.monotonic() + timeout
    while _time.monotonic() < t_end:
        if client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0:
            return
        _time.sleep(0.1)


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _round(d: dict[str, Any], n: int = 3) -> dict[str, Any]:
    return {k: round(v, n) if isinstance(v, float) else v for k, v in d.items()}


# --------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------


def plan_at_size(catalog: Path, ckpt: Path, chunks: str, out: Path) -> tuple[Any, dict[str, Any]]:
    """Part 1: plan (time, RSS), layout, window, store set-up (time, files)."""
    from kgml_grid.execute import prepare_store, records_dir
    from kgml_grid.plan import make_plan

    t0 = _time.perf_counter()
    with _rss_peak() as rss:
        plan = make_plan(catalog, ckpt, chunks=chunks)
    plan_s = _time.perf_counter() - t0
    lay = plan.output_layout()
    t1 = _time.perf_counter()
    with _rss_peak() as rss_store:
        prepare_store(plan, out, resume=False, overwrite=True)
    store_s = _time.perf_counter() - t1
    res = {
        "chunks": chunks,
        "grid": [plan.grid.ny, plan.grid.nx],
        "days": plan.n_days,
        "plan_s": plan_s,
        "plan_rss_mib": rss["peak"] / 2**20,
        "tiles": plan.n_tiles,
        "crop_tiles": len(plan.crop_tiles),
        "crop_pixels": plan.n_crop_pixels,
        "blocks": plan.n_blocks,
        "memory_per_task_mib": plan.memory_per_task / 2**20,
        "output": lay.to_dict(),
        "prepare_store_s": store_s,
        "prepare_store_rss_mib": rss_store["peak"] / 2**20,
        "store_files_after_prepare": _files(out),
        "records_files_after_prepare": _files(records_dir(out)),
    }
    return plan, _round(res)


def sample_schedule(
    client: Any, sched_pid: int, plan: Any, out: Path, *, sample_s: float, max_tasks: int,
    t_command: float | None = None, prepare: Callable[[], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Part 2/3: the executor on ``plan`` for ``sample_s`` after its first block, then
    stopped. ``t_command``: the time the command started (default: now)."""
    from kgml_grid.execute import BlockError, DaskExecutor, read_records
    from kgml_grid.plan import PlanError

    t_command = _time.perf_counter() if t_command is None else t_command
    ex = DaskExecutor(client, progress=False, max_tasks=max_tasks)
    watch: dict[str, Any] = {}
    stop = threading.Event()
    wt = threading.Thread(target=_scheduler_watch, args=(client, stop, watch), daemon=True)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            ex.execute(plan, out, overwrite=True)
        except BlockError as e:
            result["ended"] = str(e)
        except PlanError as e:  # e.g. the memory estimate refuses the shape on these workers
            result["refused"] = str(e)

    cpu0 = _cpu_s(sched_pid)
    wt.start()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    t_end = _time.perf_counter() + 600
    while "first_processing" not in watch and th.is_alive() and _time.perf_counter() < t_end:
        _time.sleep(0.01)
    first = watch.get("first_processing")
    if first is not None:
        _time.sleep(sample_s)
    ex.stop()
    th.join(timeout=600)
    stop.set()
    wt.join()
    cpu1 = _cpu_s(sched_pid)
    _idle(client)
    if "refused" in result:
        return {"refused": result["refused"]}
    recs = read_records(out)
    busy = sum(float(r["seconds"]) + float(r["write_s"]) for r in recs)
    st = ex.stats
    threads = int(st.get("threads", 1))
    run_s = float(st.get("run_s", 0.0))
    n = len(recs)
    res = {
        "ended": result.get("ended", "finished"),
        "window": st.get("window"),
        "segment": st.get("segment"),
        "first_window_blocks": st.get("first_window_blocks"),
        "first_window_submit_s": st.get("first_window_s"),
        "prepare_store_s": st.get("prepare_store_s"),
        "command_to_first_running_block_s": None if first is None else first - t_command,
        "scheduler_max_tasks_sampled": watch.get("max_tasks"),
        "scheduler_samples": watch.get("samples"),
        "blocks_done": n,
        "run_s": run_s,
        "scheduler_cpu_s": cpu1 - cpu0,
        "scheduler_cpu_ms_per_block": 1e3 * (cpu1 - cpu0) / max(n, 1),
        "block_busy_s": busy,
        "block_mean_s": busy / max(n, 1),
        "worker_threads": threads,
        "overhead_fraction": 1 - busy / max(threads * run_s, 1e-9) if n else None,
    }
    return _round(res, 4)


def end_to_end(
    client: Any, sched_pid: int, catalog: Path, ckpt: Path, chunks: str, out: Path, *,
    px: int, days: int, workers: int, max_tasks: int,
) -> dict[str, Any]:  # fmt: skip
    """Part 4: a sub-window through the whole path, and the compute limit."""
    import pandas as pd

    from kgml_grid.bench.inputs import window_bbox
    from kgml_grid.bench.limits import run_compute_limit
    from kgml_grid.catalog import open_catalog
    from kgml_grid.cubes import grid_of
    from kgml_grid.execute import DaskExecutor, read_records
    from kgml_grid.plan import make_plan

    sat = open_catalog(catalog).open_all()["satellite"]
    g = grid_of(sat, layer="satellite")
    t0 = pd.Timestamp(sat["time"].values[0])
    # the sub-window: the px x px tile with the most crop (one day's plan finds it)
    full = make_plan(catalog, ckpt, chunks=f"y={px},x={px},time=-1", start=t0,
                     end=t0 + pd.Timedelta(days=0))  # fmt: skip
    ty, tx = (int(v) for v in divmod(int(full.crop_counts.argmax()), full.crop_counts.shape[1]))
    y0, x0 = ty * px, tx * px
    bbox = window_bbox(g, (y0, min(y0 + px, g.ny), x0, min(x0 + px, g.nx)))
    plan = make_plan(catalog, ckpt, chunks=chunks, bbox=bbox, start=t0,
                     end=t0 + pd.Timedelta(days=days - 1))  # fmt: skip
    ex = DaskExecutor(client, progress=False, max_tasks=max_tasks)
    cpu0 = _cpu_s(sched_pid)
    t1 = _time.perf_counter()
    res = ex.execute(plan, out, overwrite=True)
    wall = _time.perf_counter() - t1
    cpu1 = _cpu_s(sched_pid)
    recs = read_records(out)
    busy = sum(float(r["seconds"]) + float(r["write_s"]) for r in recs)
    st = ex.stats
    pxd = plan.n_crop_pixels * plan.n_days
    limit = run_compute_limit(plan, threads=1, processes=workers)
    e2e = pxd / wall
    return _round({
        "grid": [plan.grid.ny, plan.grid.nx], "window_rows_cols": [y0, x0], "days": plan.n_days,
        "chunks": chunks, "blocks": plan.n_blocks, "crop_pixels": plan.n_crop_pixels,
        "crop_pixel_days": pxd, "wall_s": wall, "execute_s": res.seconds,
        "pixel_days_per_s": e2e, "compute_limit_pixel_days_per_s": limit["pixel_days_per_s"],
        "ratio_to_compute_limit": e2e / max(limit["pixel_days_per_s"], 1e-9),
        "compute_limit": limit, "window": st.get("window"), "segment": st.get("segment"),
        "scheduler_cpu_ms_per_block": 1e3 * (cpu1 - cpu0) / max(len(recs), 1),
        "block_busy_s": busy, "block_mean_s": busy / max(len(recs), 1),
        "worker_threads": st.get("threads"),
        "overhead_fraction": 1 - busy / max(int(st.get("threads", 1)) * float(st["run_s"]), 1e-9),
    }, 4)  # fmt: skip


def extrapolate(e2e: dict[str, Any], workers: int) -> dict[str, Any]:
    """Part 5 (extrapolated, not measured): CONUS x 18 years (the ``conus`` metadata
    world's crop pixels, 2001-2018) at the measured end-to-end rate."""
    from kgml_grid.bench.metaworld import world_spec

    spec = world_spec("conus")
    days = (_dt.date(spec.years[1], 12, 31) - _dt.date(spec.years[0], 1, 1)).days + 1
    pxd = spec.crop_share * spec.n_pixels * days
    rate = e2e["pixel_days_per_s"]
    per_thread = rate / max(workers, 1)
    return _round({
        "extrapolated": True,
        "what": f"CONUS {spec.shape[0]} x {spec.shape[1]} px, {spec.years[0]}-{spec.years[1]}",
        "crop_pixel_days": pxd,
        "at_measured_rate_hours": pxd / max(rate, 1e-9) / 3600,
        "measured_rate_pixel_days_per_s": rate,
        "worker_threads_measured": workers,
        "thread_hours": pxd / max(per_thread, 1e-9) / 3600,
        "note": "the end-to-end rate of the sub-window applied to every crop pixel-day of "
                "CONUS x 18 years; assumes linear scaling in worker threads",
    }, 2)  # fmt: skip


def _checkpoint(work: Path, hidden: int) -> Path:
    from kgml_grid.bench.inputs import make_bench_checkpoint
    from kgml_grid.synth import generate_world

    world = work / "tiny_world"
    cat = world / "catalog.yaml"
    if not cat.exists():
        cat = generate_world(world, preset="tiny", seed=0, progress=False, overwrite=True).catalog
    return make_bench_checkpoint(cat, work / f"ckpt_h{hidden}", hidden=hidden)


def run_scale(cfg: ScaleConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the scale benchmark (see the module docstring); return the result dict."""
    from distributed import Client

    from kgml_grid.bench.instruments import machine_description
    from kgml_grid.bench.metaworld import metadata_world
    from kgml_grid.cluster import process_cluster
    from kgml_grid.plan import PlanError

    say = log or (lambda m: None)
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = _time.perf_counter()
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_description("cpu")}
    result["machine"]["load_average_at_start"] = list(os.getloadavg())
    ckpt = _checkpoint(work, cfg.hidden)
    t0 = _time.perf_counter()
    world = metadata_world(work / f"world_{cfg.preset}", preset=cfg.preset, overwrite=True,
                           **cfg.world_overrides)  # fmt: skip
    result["world"] = {"preset": cfg.preset, "write_s": round(_time.perf_counter() - t0, 2)}
    say(f"world {cfg.preset}: {result['world']['write_s']} s")
    plans = {}
    result["plans"] = {}
    for name, chunks in cfg.shapes.items():
        plans[name], result["plans"][name] = plan_at_size(
            world, ckpt, chunks, work / f"out_{name}.zarr"
        )
        say(f"plan {name}: {result['plans'][name]}")
    with process_cluster(cfg.workers, directory=work / "dask", memory_limit=cfg.memory_limit) as sf, \
            Client(scheduler_file=str(sf), timeout=60) as client:  # fmt: skip
        sched_pid = int(client.run_on_scheduler(os.getpid))
        result["scheduling"] = {}
        for name in cfg.shapes:
            try:
                result["scheduling"][name] = sample_schedule(
                    client, sched_pid, plans[name], work / f"out_{name}.zarr",
                    sample_s=cfg.sample_s, max_tasks=cfg.max_tasks)  # fmt: skip
            except PlanError as e:  # the memory estimate refuses the shape on these workers
                result["scheduling"][name] = {"refused": str(e)}
            say(f"scheduling {name}: {result['scheduling'][name]}")
        # acceptance: from the call to the first running block (plan + store + window)
        from kgml_grid.plan import make_plan

        acc_world = metadata_world(work / f"world_{cfg.accept_preset}", preset=cfg.accept_preset,
                                   overwrite=True, **cfg.world_overrides)  # fmt: skip
        t_cmd = _time.perf_counter()
        acc_plan = make_plan(acc_world, ckpt, chunks=cfg.shapes["cpu"])
        acc_plan_s = _time.perf_counter() - t_cmd
        acc = sample_schedule(client, sched_pid, acc_plan, work / "out_accept.zarr",
                              sample_s=min(5.0, cfg.sample_s), max_tasks=cfg.max_tasks,
                              t_command=t_cmd)  # fmt: skip
        acc.update(grid=[acc_plan.grid.ny, acc_plan.grid.nx], days=acc_plan.n_days,
                   blocks=acc_plan.n_blocks, plan_s=round(acc_plan_s, 3),
                   within_60_s=bool(acc["command_to_first_running_block_s"] is not None
                                    and acc["command_to_first_running_block_s"] <= 60))  # fmt: skip
        result["acceptance_first_block"] = acc
        say(f"acceptance: {acc}")
        result["end_to_end"] = end_to_end(
            client, sched_pid, world, ckpt, cfg.shapes["cpu"], work / "out_e2e.zarr",
            px=cfg.e2e_px, days=cfg.e2e_days, workers=cfg.workers, max_tasks=cfg.max_tasks)  # fmt: skip
        say(f"end to end: {result['end_to_end']}")
    result["extrapolation"] = extrapolate(result["end_to_end"], cfg.workers)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["total_s"] = round(_time.perf_counter() - t_all, 1)
    return result


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    from kgml_grid.plan import format_bytes

    return format_bytes(n)


def format_markdown(r: dict[str, Any]) -> str:
    """The result as a short Markdown report (tables)."""
    m = r["machine"]
    lines = [
        "# Scale benchmark (issue 13)",
        "",
        f"Command: `{r.get('command', '?')}`  ",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; load "
        f"{m.get('load_average_at_start')} at start, {m.get('load_average_at_end')} at end "
        f"(shared machine: absolute times are inflated, counts and ratios are what matter).  ",
        f"World: metadata-only `{r['world']['preset']}` (written in {r['world']['write_s']} s); "
        f"{r['config']['workers']} worker processes x 1 thread; window limit "
        f"{r['config']['max_tasks']} tasks.",
        "",
        "## Planning and store set-up (measured)",
        "",
        "| | " + " | ".join(r["plans"]) + " |",
        "| --- | " + " | ".join("---" for _ in r["plans"]) + " |",
    ]
    rows = [
        ("chunks", lambda p: p["chunks"]),
        ("grid (px) x days", lambda p: f"{p['grid'][0]} x {p['grid'][1]} x {p['days']}"),
        ("crop tiles / tiles", lambda p: f"{p['crop_tiles']:,} / {p['tiles']:,}"),
        ("crop pixels", lambda p: f"{p['crop_pixels']:,}"),
        ("blocks (tasks)", lambda p: f"{p['blocks']:,}"),
        ("make_plan s / client RSS", lambda p: f"{p['plan_s']:.1f} s / {p['plan_rss_mib']:.0f} MiB"),
        ("memory estimate per task", lambda p: f"{p['memory_per_task_mib']:.0f} MiB"),
        ("output daily, 5 fluxes + yield", lambda p: f"{_fmt_bytes(p['output']['bytes_float32'])} float32, ~{_fmt_bytes(p['output']['bytes_estimate'])} on disk"),
        ("output files (shards + metadata)", lambda p: f"{p['output']['files']:,}"),
        ("record files / log bytes at the end", lambda p: f"{p['output']['record_files']:,} / {_fmt_bytes(p['output']['records_bytes'])}"),
        ("prepare_store s / files written", lambda p: f"{p['prepare_store_s']:.2f} s / {p['store_files_after_prepare']} + {p['records_files_after_prepare']} records"),
    ]  # fmt: skip
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(str(fn(p)) for p in r["plans"].values()) + " |")
    lines += ["", "## Scheduling at that size (measured, bounded runs then stopped)", ""]
    sch = r.get("scheduling", {})
    lines += ["| | " + " | ".join(sch) + " |", "| --- | " + " | ".join("---" for _ in sch) + " |"]
    srows = [
        ("window (tasks) / segment (chunks)", lambda s: f"{s['window']} / {s['segment']}"),
        ("first window: blocks, submit s", lambda s: f"{s['first_window_blocks']}, {s['first_window_submit_s']:.3f} s"),
        ("most tasks on the scheduler (sampled)", lambda s: f"{s['scheduler_max_tasks_sampled']} ({s['scheduler_samples']} samples)"),
        ("blocks done in the sample", lambda s: s["blocks_done"]),
        ("mean block s", lambda s: f"{s['block_mean_s']:.2f}"),
        ("scheduler CPU ms per block (with the sampling probes)", lambda s: f"{s['scheduler_cpu_ms_per_block']:.1f}"),
    ]  # fmt: skip
    for name, fn in srows:
        cells = [
            f"refused: {s.get('refused') or s.get('ended')}"
            if s.get("window") is None
            else str(fn(s))
            for s in sch.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    a = r["acceptance_first_block"]
    lines += [
        "",
        "## Acceptance: first running block (measured)",
        "",
        f"{a['grid'][0]} x {a['grid'][1]} px x {a['days']} days metadata-only, "
        f"{a['blocks']:,} blocks: make_plan {a['plan_s']:.1f} s, store prepared in "
        f"{a['prepare_store_s']:.2f} s, first window of {a['first_window_blocks']} blocks "
        f"submitted in {a['first_window_submit_s']:.3f} s; **first running block "
        f"{a['command_to_first_running_block_s']:.1f} s after the call** (target <= 60 s: "
        f"{'met' if a['within_60_s'] else 'missed'}).",
    ]
    e = r["end_to_end"]
    lines += [
        "",
        "## End to end over a sub-window (measured)",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| sub-window | {e['grid'][0]} x {e['grid'][1]} px x {e['days']} days at rows/cols {e['window_rows_cols']}, chunks {e['chunks']} |",
        f"| blocks / crop pixels | {e['blocks']:,} / {e['crop_pixels']:,} |",
        f"| wall | {e['wall_s']:.1f} s |",
        f"| end to end | {e['pixel_days_per_s']:,.0f} crop pixel-days/s |",
        f"| compute limit (same model, same pixel-days, in memory, {e['compute_limit']['processes']} processes) | {e['compute_limit_pixel_days_per_s']:,.0f} pixel-days/s |",
        f"| ratio to the compute limit | {e['ratio_to_compute_limit']:.2f} |",
        f"| per-task overhead: 1 - blocks' own time / (threads x wall) | {100 * e['overhead_fraction']:.1f} % (target <= 2 %) |",
        f"| scheduler CPU per block | {e['scheduler_cpu_ms_per_block']:.1f} ms (mean block {e['block_mean_s']:.2f} s) |",
    ]  # fmt: skip
    x = r["extrapolation"]
    lines += [
        "",
        "## CONUS x 18 years (EXTRAPOLATED from the end-to-end rate, not measured)",
        "",
        f"{x.get('what', 'CONUS')}: {x['crop_pixel_days']:,.0f} crop pixel-days at {x['measured_rate_pixel_days_per_s']:,.0f} "
        f"pixel-days/s ({x['worker_threads_measured']} threads): **{x['at_measured_rate_hours']:,.0f} h** "
        f"on this machine, {x['thread_hours']:,.0f} thread-hours ({x['note']}).",
        "",
        "## Notes",
        "",
        "- The end-to-end run and the compute limit ran one after the other, not interleaved, on "
        "a machine shared with other jobs: a ratio above 1 means the limit's processes got less "
        "CPU than the workers did, not that the engine beats the model alone.",
        "- The per-task overhead counts everything outside the blocks' own timed work (Dask, the "
        "worker's other threads, moving states, reading the saved state) against the worker "
        "threads' wall time; on a loaded machine the worker processes' other threads compete "
        "with the task thread for the same CPU.",
        "- The GPU shape runs here on CPU workers (no GPU on this machine): its blocks take "
        "minutes, so its scheduling column shows the window and submission, not throughput.",
        "- Scheduler CPU per block in the bounded runs includes the probes that sample the "
        "scheduler; the end-to-end run has no probe.",
    ]
    if r.get("report_redone"):
        lines += [f"- {r['report_redone']}."]
    return "\n".join(lines) + "\n"
