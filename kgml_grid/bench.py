"""Benchmarks of the upscaling engine against its hard limits and its peers (DESIGN section 7).

Every speed claim is a ratio measured in one run, on the same data, with the same
threads. :func:`run_benchmark` measures, in this order:

1. **chunk-shape sweep** (end to end, once per shape): for each :class:`ChunkShape`
   (space tile x time chunk), :func:`kgml_grid.execute.upscale` on a ``LocalCluster``
   of ``workers`` worker processes with one thread each, Zarr in to Zarr out:
   pixel-days per second, peak memory per worker (RSS sampled every 20 ms in each
   worker), task count, wall time, where the worker time went (read, feature assembly,
   model, write, outside tasks; :func:`install_timers`), and the shape's **I/O limit**
   (the same input blocks read by Dask tasks on the same workers, no model, no
   dependency between blocks; :func:`run_io_limit`). Both start with the workers'
   chunk caches empty (:func:`kgml_grid.blockio.clear_caches`) and report their hits
   and misses. The sweep gives the recommended shape (:func:`recommend`).
2. **4x domain** at the recommended shape (peak memory per worker).
3. **rounds** (``repeats`` of them, interleaved so that slow drifts of a shared
   machine's load hit every measurement alike; medians are compared), all at the
   recommended shape on the 1x domain: end to end with ``workers`` workers and with 1
   worker; the I/O limit; peer 1, ``xarray.map_blocks`` over the satellite cube chunked
   in space with time unchunked, ``template=`` given, the checkpoint loaded inside each
   block (:func:`run_peer_map_blocks`); peer 2, a single-process loop over spatial
   patches that loads inputs, runs the model and writes Zarr, the way a user of
   xbatcher writes it (:func:`run_peer_patch_loop`); the **compute limit**, the same
   model over the same pixel-days as in-memory tensors (same batches, same time chunks,
   state carried), no I/O, no Dask, given the workers' threads two ways: one process
   with that many torch threads, and that many processes of one thread
   (:func:`run_compute_limit`); the limit is the faster.

Every cluster is started before anything runs the model in this process, so CUDA is
never initialised in the parent before a worker starts (workers are spawned anyway).

The pure parts (:func:`default_shapes`, :func:`scaling_domains`, :func:`recommend`,
:func:`acceptance`, :func:`format_markdown`) only do arithmetic on results; the
runners measure. ``kgml-grid bench`` (:mod:`kgml_grid.bench_commands`) parses its
arguments and calls :func:`run_benchmark`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time as _time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TARGETS",
    "BenchConfig",
    "ChunkShape",
    "acceptance",
    "default_shapes",
    "format_markdown",
    "format_summary",
    "install_timers",
    "machine_description",
    "make_bench_checkpoint",
    "plot_sweep",
    "recommend",
    "run_benchmark",
    "run_compute_limit",
    "run_end_to_end",
    "run_io_limit",
    "run_peer_map_blocks",
    "run_peer_patch_loop",
    "scaling_domains",
    "time_split",
]

MIB = 2**20

#: Acceptance targets of the benchmark issue: (comparison, value).
TARGETS: dict[str, tuple[str, float]] = {
    "end_to_end_vs_min_limit": (">=", 0.8),
    "end_to_end_vs_map_blocks": (">", 1.0),
    "end_to_end_vs_patch_loop": (">", 1.0),
    "workers_2_vs_1": (">=", 1.7),
    "memory_4x_vs_1x": ("<=", 1.2),
}


# --------------------------------------------------------------------------------------
# chunk shapes (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ChunkShape:
    """One chunk shape of the sweep: a space tile ``tile_y x tile_x`` and a time chunk.

    ``time=-1`` means the whole run in one chunk. Parse one with :meth:`parse`.
    """

    tile_y: int
    tile_x: int
    time: int

    def __post_init__(self) -> None:
        for name in ("tile_y", "tile_x"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"ChunkShape.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        t = self.time
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or (t < 1 and t != -1):
            raise ValueError(f"ChunkShape.time must be a positive integer or -1 (whole run), got {t!r}")
        object.__setattr__(self, "time", int(t))

    @property
    def chunks(self) -> str:
        """The ``--chunks`` string of :func:`kgml_grid.plan.make_plan`."""
        return f"y={self.tile_y},x={self.tile_x},time={self.time}"

    @property
    def label(self) -> str:
        """Short label, e.g. ``'64x64 px x 365 d'``."""
        t = "all" if self.time == -1 else str(self.time)
        return f"{self.tile_y}x{self.tile_x} px x {t} d"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, text: str | ChunkShape) -> ChunkShape:
        """``'64x365'`` (square tile x days), ``'64x128x365'`` (y x x x days) or
        ``'y=64,x=64,time=365'``.

        Raises
        ------
        ValueError
            Naming the text and the accepted spellings.
        """
        if isinstance(text, ChunkShape):
            return text
        s = str(text).strip().lower()
        hint = "write TILExDAYS (e.g. 64x365), TYxTXxDAYS (e.g. 32x64x92) or y=64,x=64,time=365"
        if "=" in s:
            from kgml_grid.plan import PlanError, parse_chunks

            try:
                c = parse_chunks(s)
            except PlanError as e:
                raise ValueError(f"chunk shape {text!r}: {e}") from None
            missing = [d for d in ("y", "x", "time") if d not in c]
            if missing or any(isinstance(v, tuple) for v in c.values()) or -1 in (c.get("y"), c.get("x")):
                raise ValueError(f"chunk shape {text!r}: give y, x and time as sizes; {hint}")
            return cls(int(c["y"]), int(c["x"]), int(c["time"]))  # type: ignore[arg-type]
        parts = s.split("x")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"-?\d+", p.strip()) for p in parts):
            raise ValueError(f"chunk shape {text!r} cannot be read; {hint}")
        nums = [int(p) for p in parts]
        if len(nums) == 2:
            nums = [nums[0], nums[0], nums[1]]
        try:
            return cls(*nums)
        except ValueError as e:
            raise ValueError(f"chunk shape {text!r}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"tile_y": self.tile_y, "tile_x": self.tile_x, "time": self.time,
                "chunks": self.chunks, "label": self.label}  # fmt: skip


def default_shapes(
    domain: tuple[int, int], n_days: int, *, cube_tile: int | None = None, quick: bool = False
) -> list[ChunkShape]:
    """The chunk shapes swept by default (at least 6; 2 with ``quick``).

    With ``b`` the base tile (the cube's spatial chunk, at most the domain's smaller
    side) and ``T`` the year-long time chunk (the run's days, at most 365): tiles
    ``b/4, b/2, b, 2b`` with time ``T``, then tile ``b`` with ``T/4`` and ``T/12`` and
    tile ``b/2`` with ``T/4``. Tiles are clipped to the domain; duplicates dropped.

    Parameters
    ----------
    domain : (ny, nx)
        Pixels of the benchmark domain.
    n_days : int
        Days of the run.
    cube_tile : int, optional
        Spatial chunk of the satellite cube (default: the domain's smaller side).
    quick : bool
        Two shapes only (``b/2 x T`` and ``b x T/4``), for smoke tests.
    """
    ny, nx = (int(v) for v in domain)
    if ny < 1 or nx < 1 or n_days < 1:
        raise ValueError(f"domain {domain} and n_days {n_days} must be positive")
    b = max(1, min(int(cube_tile or min(ny, nx)), ny, nx))
    t_year = min(int(n_days), 365)

    def tile(n: int) -> tuple[int, int]:
        n = max(1, int(n))
        return (min(n, ny), min(n, nx))

    def days(d: float) -> int:
        return max(1, math.ceil(d))

    if quick:
        cand = [(*tile(b // 2), t_year), (*tile(b), days(t_year / 4))]
    else:
        cand = [(*tile(b // 4), t_year), (*tile(b // 2), t_year), (*tile(b), t_year),
                (*tile(2 * b), t_year), (*tile(b), days(t_year / 4)),
                (*tile(b), days(t_year / 12)), (*tile(b // 2), days(t_year / 4))]  # fmt: skip
    out: list[ChunkShape] = []
    for ty, tx, t in cand:
        s = ChunkShape(ty, tx, t)
        if s not in out:
            out.append(s)
    return out


def scaling_domains(domain: tuple[int, int], grid: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``(1x, 4x)`` domains of the memory-scaling comparison, ``(ny, nx)`` each.

    ``1x`` is the benchmark domain and ``4x`` doubles both sides when that fits the
    grid; otherwise ``4x`` is the benchmark domain and ``1x`` halves both sides.
    """
    ny, nx = domain
    gy, gx = grid
    if 2 * ny <= gy and 2 * nx <= gx:
        return (ny, nx), (2 * ny, 2 * nx)
    if ny < 2 or nx < 2:
        raise ValueError(f"domain {domain} is too small to halve for the 4x comparison")
    return (ny // 2, nx // 2), (ny // 2 * 2, nx // 2 * 2)


def rate(pixel_days: float, seconds: float) -> float:
    """Pixel-days per second (0 for a zero-length measurement)."""
    return float(pixel_days) / seconds if seconds > 0 else 0.0


def recommend(rows: Sequence[Mapping[str, Any]], *, tolerance: float = 0.05) -> Mapping[str, Any]:
    """The recommended row of a sweep.

    Among the shapes whose throughput is within ``tolerance`` of the best (a margin for
    timing noise), the one with the lowest peak memory per worker, then the fewest tasks.

    Parameters
    ----------
    rows : sequence of mappings
        With ``pixel_days_per_s``, ``peak_memory_per_worker_mib`` and ``tasks``.

    Raises
    ------
    ValueError
        For an empty sweep.
    """
    if not rows:
        raise ValueError("recommend: the sweep has no rows")
    best = max(float(r["pixel_days_per_s"]) for r in rows)
    near = [r for r in rows if float(r["pixel_days_per_s"]) >= (1 - tolerance) * best]
    return min(near, key=lambda r: (float(r.get("peak_memory_per_worker_mib") or 0), int(r.get("tasks") or 0),
                                    -float(r["pixel_days_per_s"])))  # fmt: skip


def _check(op: str, value: float, target: float) -> bool:
    return {">=": value >= target, ">": value > target, "<=": value <= target}[op]


def acceptance(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The acceptance ratios of one benchmark result, each against its :data:`TARGETS`.

    Every ratio uses numbers of the same run: the recommended row of the sweep, the
    limits at that shape, the peers and the scaling runs.

    Returns
    -------
    dict
        ``name -> {value, target, op, met, numerator, denominator, what}``; a part that
        did not run is left out.
    """
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, num: float, den: float, what: str) -> None:
        op, target = TARGETS[name]
        value = num / den if den else math.inf
        out[name] = {"value": round(value, 3), "target": target, "op": op,
                     "met": bool(_check(op, value, target)), "numerator": round(num, 1),
                     "denominator": round(den, 1), "what": what}  # fmt: skip

    rec = result.get("end_to_end") or result.get("recommended")
    limits = result.get("limits", {})
    n = int((rec or {}).get("repeats", 1))
    medians = f" (medians of {n} interleaved rounds)" if n > 1 else ""
    if rec:
        e2e = float(rec["pixel_days_per_s"])
        comp = limits.get("compute", {}).get("pixel_days_per_s")
        io = limits.get("io", {}).get("pixel_days_per_s")
        if comp and io:
            which = "compute" if comp <= io else "I/O"
            put("end_to_end_vs_min_limit", e2e, min(comp, io),
                f"end-to-end at {rec['label']} / min(compute limit, I/O limit) (the {which} limit){medians}")
        peers = result.get("peers", {})
        for key, name in (("map_blocks", "end_to_end_vs_map_blocks"), ("patch_loop", "end_to_end_vs_patch_loop")):
            p = peers.get(key, {}).get("pixel_days_per_s")
            if p:
                put(name, e2e, p, f"end-to-end at {rec['label']} / peer {key}{medians}")
    sc = result.get("scaling", {})
    w1, w2 = sc.get("workers_1"), sc.get("workers_2")
    if w1 and w2:
        put("workers_2_vs_1", w2["pixel_days_per_s"], w1["pixel_days_per_s"],
            f"throughput with 2 workers / with 1 worker (same shape, same domain){medians}")
    d1, d4 = sc.get("domain_1x"), sc.get("domain_4x")
    if d1 and d4:
        put("memory_4x_vs_1x", d4["peak_memory_per_worker_mib"], d1["peak_memory_per_worker_mib"],
            "peak memory per worker (RSS) at 4x domain / at 1x domain")
    return out


def time_split(timers: Mapping[str, Sequence[float]], *, wall: float, workers: int) -> dict[str, Any]:
    """Where the workers' time went in one run, from :func:`read_timers` sums.

    Parameters
    ----------
    timers : mapping
        ``name -> (seconds, calls)`` summed over the workers (``read_block``,
        ``assemble``, ``model``, ``compute_block``, ``write_block``).
    wall, workers : float, int
        Wall time of the run and number of worker threads: the worker-seconds
        available are ``wall * workers``.

    Returns
    -------
    dict
        Seconds per part (``read``, ``assemble``, ``model``, ``compute_other``
        (normalisation, output scatter, state), ``write``, ``outside_tasks``
        (scheduling, waiting for a tile's previous block, planning, store set-up))
        and each part's share of the worker-seconds.
    """

    def s(name: str) -> float:
        v = timers.get(name)
        return float(v[0]) if v else 0.0

    read_all, asm, model = s("read_block"), s("assemble"), s("model")
    compute, write = s("compute_block"), s("write_block")
    parts = {
        "read": max(read_all - asm, 0.0),
        "assemble": asm,
        "model": model,
        "compute_other": max(compute - read_all - model, 0.0),
        "write": write,
    }
    avail = wall * workers
    parts["outside_tasks"] = max(avail - compute - write, 0.0)
    blocks = int(timers.get("compute_block", (0, 0))[1]) if timers.get("compute_block") else 0
    return {
        "seconds": {k: round(v, 3) for k, v in parts.items()},
        "share": {k: round(v / avail, 3) if avail else 0.0 for k, v in parts.items()},
        "worker_seconds": round(avail, 3),
        "blocks_timed": blocks,
        "model_seconds_per_block": round(model / blocks, 4) if blocks else None,
    }


# --------------------------------------------------------------------------------------
# reports (pure)
# --------------------------------------------------------------------------------------


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.3f} M" if v >= 1e6 else f"{v / 1e3:.1f} k"


def format_markdown(result: Mapping[str, Any]) -> str:
    """The headline tables of a result, as Markdown (for the README)."""
    cfg = result.get("config", {})
    lines = [
        f"Preset `{cfg.get('preset')}`, domain {cfg.get('domain')} px ({cfg.get('crop_pixels')} crop "
        f"pixels), {cfg.get('start')}..{cfg.get('end')} ({cfg.get('days')} days, "
        f"{cfg.get('pixel_days'):,} pixel-days), {cfg.get('workers')} workers x 1 thread, "
        f"device `{cfg.get('device')}`, model {cfg.get('model_desc')}.",
        "",
        "| chunk shape (tile x time) | pixel-days/s | I/O limit (pixel-days/s) | peak memory / worker | tasks | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rec_label = (result.get("recommended") or {}).get("label")
    for r in result.get("sweep", []):
        mark = " **(recommended)**" if r["label"] == rec_label else ""
        io = r.get("io_limit", {}).get("pixel_days_per_s")
        lines.append(
            f"| {r['label']}{mark} | {_fmt_rate(r['pixel_days_per_s'])} | {_fmt_rate(io)} | "
            f"{r['peak_memory_per_worker_mib']:.0f} MiB | {r['tasks']} | {r['wall_s']:.1f} s |"
        )
    lim = result.get("limits", {})
    peers = result.get("peers", {})
    sc = result.get("scaling", {})
    e2e = result.get("end_to_end") or {}
    reps = int(e2e.get("repeats", 1))
    lines += ["", f"Same-run comparisons at the recommended shape on the {e2e.get('domain', cfg.get('domain'))} px "
              f"domain" + (f", each the median of {reps} interleaved rounds (every round's value in brackets)"
                           if reps > 1 else "") + ":", "",
              "| measurement | pixel-days/s | wall |", "| --- | ---: | ---: |"]  # fmt: skip
    ct, cp = lim.get("compute_threads", {}), lim.get("compute_processes", {})

    def note(d: Mapping[str, Any] | None) -> str:
        if not d:
            return ""
        t = " (truncated at the time budget: rate of the part done)" if d.get("truncated") else ""
        return t + (f" [{', '.join(_fmt_rate(v) for v in d['pixel_days_per_s_each'])}]"
                    if int(d.get("repeats", 1)) > 1 else "")  # fmt: skip

    rows = [
        (f"**end-to-end** (upscale, {cfg.get('workers')} workers x 1 thread, Zarr to Zarr)", e2e),
        (f"**compute limit** = the faster of the next two ({lim.get('compute', {}).get('variant')})",
         lim.get("compute")),
        (f"compute: 1 process x {ct.get('threads')} torch threads, in-memory tensors, no I/O, no Dask", ct),
        (f"compute: {cp.get('processes')} processes x 1 torch thread, in-memory tensors", cp),
        ("**I/O limit** (same input blocks read by Dask tasks, no model)", lim.get("io")),
        ("I/O + feature assembly (read_block, no model)", lim.get("io_with_assembly")),
        ("peer: xarray.map_blocks, time unchunked, model loaded per block", peers.get("map_blocks")),
        (f"peer: single-process patch loop (xbatcher style, {peers.get('patch_loop', {}).get('threads')} "
         "torch thread(s))", peers.get("patch_loop")),
        ("scaling: 1 worker", sc.get("workers_1")),
        ("scaling: 2 workers", sc.get("workers_2")),
        (f"scaling: 4x domain {sc.get('domain_4x', {}).get('domain')}, {cfg.get('workers')} workers "
         f"(peak memory {sc.get('domain_4x', {}).get('peak_memory_per_worker_mib', 0):.0f} MiB/worker vs "
         f"{sc.get('domain_1x', {}).get('peak_memory_per_worker_mib', 0):.0f} at 1x)", sc.get("domain_4x")),
    ]
    for name, d in rows:
        if d:
            lines.append(f"| {name}{note(d)} | {_fmt_rate(d.get('pixel_days_per_s'))} | {d.get('wall_s', 0):.1f} s |")
    run = e2e or result.get("recommended") or {}
    split = (run.get("time_split") or {}).get("share")
    if split:
        lines += ["", f"Where the workers' time went end to end at {run.get('label')}: "
                  + ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in split.items()) + "."]
        if run.get("model_only_pixel_days_per_s"):
            lines[-1] += (f" Model-only rate of the same workers in the same run: "
                          f"{_fmt_rate(run['model_only_pixel_days_per_s'])} pixel-days/s; end-to-end reaches "
                          f"{run['pixel_days_per_s'] / run['model_only_pixel_days_per_s']:.2f} of it.")  # fmt: skip
    acc = result.get("acceptance", {})
    if acc:
        lines += ["", "| acceptance ratio (same run) | value | target | met |", "| --- | ---: | ---: | --- |"]
        for a in acc.values():
            lines.append(f"| {a['what']} | {a['value']:.2f} | {a['op']} {a['target']} | "
                         f"{'yes' if a['met'] else '**no**'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def format_summary(result: Mapping[str, Any]) -> str:
    """A short plain-text summary for the terminal."""
    out = [format_markdown(result)]
    rec = result.get("recommended")
    if rec:
        out.append(f"recommended chunk shape: {rec['label']} (--chunks {rec['chunks']})")
    for k in ("json", "png", "markdown"):
        if result.get("files", {}).get(k):
            out.append(f"{k}: {result['files'][k]}")
    return "\n".join(out)


def plot_sweep(result: Mapping[str, Any], path: str | Path) -> Path:
    """PNG: pixel-days/s per chunk shape with the limits and peers as horizontal lines,
    and peak memory per worker below."""
    from kgml_grid.plots import _plt

    plt = _plt()
    rows = result["sweep"]
    rec_label = (result.get("recommended") or {}).get("label")
    n = len(rows)
    xs = np.arange(n)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 8.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.3]})  # fmt: skip
    colors = ["tab:blue" if r["label"] == rec_label else "tab:gray" for r in rows]
    ax.bar(xs, [r["pixel_days_per_s"] for r in rows], color=colors, width=0.6, label="end-to-end (upscale)")
    io_each = [r.get("io_limit", {}).get("pixel_days_per_s") for r in rows]
    if any(io_each):
        ax.plot(xs, [v or np.nan for v in io_each], "v", color="tab:green", ms=7,
                label="I/O limit of each shape")  # fmt: skip
    lim, peers = result.get("limits", {}), result.get("peers", {})
    lines = [
        (lim.get("compute"), "tab:red", "-", "compute limit"),
        (lim.get("compute_threads") if lim.get("compute_threads", {}).get("pixel_days_per_s")
         != lim.get("compute", {}).get("pixel_days_per_s") else None, "tab:red", ":",
         f"compute, 1 process x {lim.get('compute_threads', {}).get('threads')} threads"),
        (lim.get("io"), "tab:green", "-", "I/O limit"),
        (peers.get("map_blocks"), "tab:purple", "--", "peer: xarray.map_blocks"),
        (peers.get("patch_loop"), "tab:orange", "--", "peer: patch loop"),
    ]
    for d, color, ls, name in lines:
        if d and d.get("pixel_days_per_s"):
            v = d["pixel_days_per_s"]
            ax.axhline(v, color=color, ls=ls, lw=1.5, label=f"{name} ({_fmt_rate(v)}/s)")
    ax.set_yscale("log")
    ax.set_ylabel("pixel-days per second")
    cfg = result.get("config", {})
    ax.set_title(f"kgml-grid bench: preset {cfg.get('preset')}, domain {cfg.get('domain')} px x "
                 f"{cfg.get('days')} days, {cfg.get('workers')} workers x 1 thread, {cfg.get('device')}"
                 + (f"\nrecommended: {rec_label}" if rec_label else ""), fontsize=10)  # fmt: skip
    for x, r in zip(xs, rows, strict=True):
        ax.annotate(_fmt_rate(r["pixel_days_per_s"]), (x, r["pixel_days_per_s"]), ha="center", va="bottom",
                    fontsize=7)  # fmt: skip
    e2e = result.get("end_to_end")
    labels = [r["label"] for r in rows]
    if e2e and rec_label in labels:
        n_rep = int(e2e.get("repeats", 1))
        ax.plot([labels.index(rec_label)], [e2e["pixel_days_per_s"]], "D", color="black", ms=7,
                label=f"end-to-end at the recommended shape, domain {e2e.get('domain')}"
                      + (f", median of {n_rep} rounds" if n_rep > 1 else "") + f" ({_fmt_rate(e2e['pixel_days_per_s'])}/s)")  # fmt: skip
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax2.bar(xs, [r["peak_memory_per_worker_mib"] for r in rows], color=colors, width=0.6)
    for x, r in zip(xs, rows, strict=True):
        ax2.annotate(f"{r['tasks']} tasks", (x, r["peak_memory_per_worker_mib"]), ha="center",
                     va="bottom", fontsize=7)  # fmt: skip
    ax2.set_ylabel("peak RSS / worker (MiB)")
    ax2.set_xticks(xs, [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# in-worker instruments: memory sampler and timers
# --------------------------------------------------------------------------------------

_MEM: dict[str, Any] = {"peak": 0, "thread": None}
_MEM_LOCK = threading.Lock()


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def mem_sampler_start(interval: float = 0.02) -> int:
    """Start (once) a thread sampling this process's RSS every ``interval`` seconds.

    Run on the workers with ``client.run``. Returns the current RSS (bytes).
    """
    with _MEM_LOCK:
        if _MEM["thread"] is None:

            def loop() -> None:
                while True:
                    r = _rss()
                    with _MEM_LOCK:
                        _MEM["peak"] = max(_MEM["peak"], r)
                    _time.sleep(interval)

            th = threading.Thread(target=loop, name="kgml-bench-rss", daemon=True)
            _MEM["thread"] = th
            th.start()
        now = _rss()
        _MEM["peak"] = max(_MEM["peak"], now)
        return now


def mem_reset() -> int:
    """Reset the peak to the current RSS; return it (bytes)."""
    now = _rss()
    with _MEM_LOCK:
        _MEM["peak"] = now
    return now


def mem_peak() -> int:
    """Peak RSS (bytes) since the last :func:`mem_reset`."""
    now = _rss()
    with _MEM_LOCK:
        _MEM["peak"] = max(_MEM["peak"], now)
        return int(_MEM["peak"])


_TIMERS: dict[str, list[float]] = {}
_TIMER_LOCK = threading.Lock()
_TLS = threading.local()


def _acc(name: str, dt: float) -> None:
    with _TIMER_LOCK:
        s = _TIMERS.setdefault(name, [0.0, 0])
        s[0] += dt
        s[1] += 1


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = _time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _acc(name, _time.perf_counter() - t)

    wrapper._kgml_bench_orig = fn  # type: ignore[attr-defined]
    return wrapper


def _hook_model(ckpt: Any) -> None:
    """Time every forward of the checkpoint's model (synchronising CUDA)."""
    import torch

    model = ckpt.model
    if getattr(model, "_kgml_bench_hooked", False):
        return
    cuda = getattr(ckpt.device, "type", "cpu") == "cuda"

    def pre(_mod: Any, _inp: Any) -> None:
        if cuda:
            torch.cuda.synchronize(ckpt.device)
        _TLS.t = _time.perf_counter()

    def post(_mod: Any, _inp: Any, _out: Any) -> None:
        if cuda:
            torch.cuda.synchronize(ckpt.device)
        _acc("model", _time.perf_counter() - getattr(_TLS, "t", _time.perf_counter()))

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)
    model._kgml_bench_hooked = True


def install_timers() -> bool:
    """Time the upscaling task's parts in this process, from the outside.

    Wraps :func:`kgml_grid.execute.read_block`, the ``assemble`` it calls,
    :func:`~kgml_grid.execute.compute_block`, :func:`~kgml_grid.execute.write_block`
    and the model's forward (hooks on the worker's checkpoint). Nothing in the engine
    changes: the wrappers are module attributes of this process only. Run on the
    workers with ``client.run``; read with :func:`read_timers`. Returns False when
    already installed.
    """
    import kgml_grid.execute as ex
    import kgml_grid.worker as wk

    if hasattr(ex.compute_block, "_kgml_bench_orig"):
        return False
    ex.read_block = _timed("read_block", ex.read_block)  # type: ignore[assignment]
    ex.assemble = _timed("assemble", ex.assemble)  # type: ignore[assignment]
    ex.compute_block = _timed("compute_block", ex.compute_block)  # type: ignore[assignment]
    ex.write_block = _timed("write_block", ex.write_block)  # type: ignore[assignment]
    orig_get = wk.get_checkpoint

    @functools.wraps(orig_get)
    def get_checkpoint(path: str, checkpoint_hash: str) -> Any:
        ckpt = orig_get(path, checkpoint_hash)
        _hook_model(ckpt)
        return ckpt

    get_checkpoint._kgml_bench_orig = orig_get  # type: ignore[attr-defined]
    wk.get_checkpoint = get_checkpoint  # type: ignore[assignment]
    return True


def read_timers(reset: bool = True) -> dict[str, list[float]]:
    """The timers of this process: ``name -> [seconds, calls]``; reset them."""
    with _TIMER_LOCK:
        out = {k: list(v) for k, v in _TIMERS.items()}
        if reset:
            _TIMERS.clear()
    return out


def _sum_timers(per_worker: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    total: dict[str, list[float]] = {}
    for timers in per_worker.values():
        for k, (s, n) in timers.items():
            t = total.setdefault(k, [0.0, 0])
            t[0] += float(s)
            t[1] += int(n)
    return total


# --------------------------------------------------------------------------------------
# machine, world, checkpoint
# --------------------------------------------------------------------------------------


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """CPU, cores, memory, library versions and the load average now.

    The GPU name is added by :func:`run_benchmark` (read after the clusters close, so
    that CUDA is never initialised before the workers start).
    """
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    import dask
    import distributed
    import torch
    import xarray
    import zarr

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "gpu": None, "device": device,
        "python": platform.python_version(), "torch": torch.__version__, "dask": dask.__version__,
        "distributed": distributed.__version__, "xarray": xarray.__version__, "zarr": zarr.__version__,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def is_bench_result(path: str | Path) -> bool:
    """Whether ``path`` is the JSON of a benchmark run (its marker key, or the keys every
    result has had)."""
    from kgml_grid.outputs import MARKER_ATTR

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and (doc.get(MARKER_ATTR) == "bench"
                                      or {"command", "machine", "acceptance"} <= set(doc))  # fmt: skip


def _catalog_path(world: str | Path) -> Path:
    p = Path(world)
    if p.is_dir():
        p = p / "catalog.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"--world {world}: no catalog (expected a catalog YAML or a folder holding catalog.yaml)")
    return p


def make_bench_checkpoint(catalog: str | Path, path: str | Path, *, hidden: int = 64, seed: int = 0,
                          max_pixels: int = 400) -> Path:  # fmt: skip
    """A randomly initialised KGML checkpoint with normalisation statistics from a
    sample of pixels (:func:`kgml_grid.checkpoint.fit_norm`); speed does not depend on
    training.

    Parameters
    ----------
    catalog : path
        Catalog of the world; its ``truth`` layer gives the target statistics when
        present (else unit statistics).
    hidden : int
        Hidden size (64 is the reference architecture).
    max_pixels : int
        About this many pixels are sampled on a regular lattice.
    """
    import dask
    import torch

    from kgml_grid.catalog import open_catalog
    from kgml_grid.checkpoint import fit_norm, save_checkpoint
    from kgml_grid.features import assemble, pixel_inputs, pixel_targets
    from kgml_grid.model import DAILY_TARGETS, ModelConfig, build_model
    from kgml_grid.schema import FEATURES, feature_units

    layers = open_catalog(catalog).open_all()
    ny, nx = layers["satellite"].sizes["y"], layers["satellite"].sizes["x"]
    step = max(1, math.ceil(math.sqrt(ny * nx / max_pixels)))
    r, c = (a.ravel() for a in np.meshgrid(np.arange(0, ny, step), np.arange(0, nx, step), indexing="ij"))
    with dask.config.set(scheduler="threads"):
        t, daily, soil, cby = pixel_inputs(layers, r, c)
        x, _ = assemble(time=t, daily=daily, soil=soil, crop_by_year=cby)
        data: dict[str, Any] = {f: x[..., i] for i, f in enumerate(FEATURES)}
        if "truth" in layers:
            y, yy = pixel_targets(layers["truth"], r, c)
            data.update({n: y[..., i] for i, n in enumerate(DAILY_TARGETS)})
            data["yield"] = yy
    norm: dict[str, Any] = fit_norm(data)
    for n in (*DAILY_TARGETS, "yield"):
        norm.setdefault(n, (0.0, 1.0))
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="kgml", n_features=len(FEATURES), hidden=hidden)
    save_checkpoint(build_model(cfg), path, config=cfg, features=FEATURES, units=feature_units(),
                    norm=norm, provenance={"note": "randomly initialised, for benchmarks"})  # fmt: skip
    return Path(path)


def _bbox(grid: Any, window: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """A bbox holding the centres of pixels ``rows iy0:iy1, columns ix0:ix1``."""
    iy0, iy1, ix0, ix1 = window
    return (float(grid.x[ix0]), float(grid.y[iy1 - 1]), float(grid.x[ix1 - 1]), float(grid.y[iy0]))


# --------------------------------------------------------------------------------------
# clusters
# --------------------------------------------------------------------------------------


def _median_run(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run of median throughput (the lower one of an even count), with every run's
    throughput and peak memory beside it."""
    order = sorted(runs, key=lambda r: r["pixel_days_per_s"])
    med = dict(order[(len(order) - 1) // 2])
    med["repeats"] = len(runs)
    med["pixel_days_per_s_each"] = [r["pixel_days_per_s"] for r in runs]
    if all("peak_memory_per_worker_mib" in r for r in runs):
        med["peak_memory_per_worker_mib_each"] = [r["peak_memory_per_worker_mib"] for r in runs]
    return med


def _local_client(n_workers: int) -> Any:
    """A LocalCluster of ``n_workers`` processes x 1 thread, with the instruments."""
    from kgml_grid.cluster import make_client

    client = make_client({"kind": "local", "n_workers": int(n_workers), "threads_per_worker": 1,
                          "dashboard_address": "127.0.0.1:0", "gpus": 0}, verbose=False)  # fmt: skip
    client.wait_for_workers(int(n_workers), timeout=180)
    client.run(mem_sampler_start)
    client.run(install_timers)
    return client


def _cache_stats(client: Any) -> dict[str, int]:
    """The workers' chunk-cache counters, summed (bytes: the largest worker's)."""
    from kgml_grid.blockio import chunk_cache

    each = client.run(lambda: chunk_cache().stats()).values()
    out = {k: sum(int(e[k]) for e in each) for k in ("hits", "misses", "evictions", "bypassed")}
    out["peak_mib_per_worker"] = round(max((int(e["peak_bytes"]) for e in each), default=0) / MIB, 1)
    return out


def _rmtree(path: Path) -> None:
    """Remove an upscaling store and its records: only ones kgml_grid wrote."""
    from kgml_grid.execute import records_dir
    from kgml_grid.outputs import remove_output

    remove_output(path, "upscale")
    remove_output(records_dir(path), "records")


# --------------------------------------------------------------------------------------
# runners
# --------------------------------------------------------------------------------------


def run_end_to_end(
    catalog: str | Path,
    model: str | Path,
    shape: ChunkShape,
    *,
    client: Any,
    out: str | Path,
    start: Any = None,
    end: Any = None,
    bbox: Any = None,
    device: str = "cpu",
    keep: bool = False,
) -> dict[str, Any]:
    """The upscaling engine, Zarr in to Zarr out, on ``client``'s workers.

    Measures the whole :func:`kgml_grid.execute.upscale` call (plan, store set-up,
    graph, run, completion), the peak RSS per worker (sampled every 20 ms in each
    worker) and the time split of the tasks (:func:`time_split`; needs
    :func:`install_timers` on the workers, as :func:`run_benchmark` does).
    """
    from kgml_grid.blockio import clear_caches
    from kgml_grid.execute import upscale

    out = Path(out)
    _rmtree(out)
    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    client.run(clear_caches)  # every run starts cold: no chunk decoded by an earlier one
    base = client.run(mem_reset)
    client.run(read_timers)
    t0 = _time.perf_counter()
    res = upscale(catalog, model, out, start=start, end=end, bbox=bbox, chunks=shape.chunks,
                  client=client, overwrite=True, progress=False, device=device)  # fmt: skip
    wall = _time.perf_counter() - t0
    peaks = client.run(mem_peak)
    timers = _sum_timers(client.run(read_timers))
    cache = _cache_stats(client)
    plan = res.plan
    pd_ = plan.n_crop_pixels * plan.n_days
    row = {
        **shape.to_dict(),
        "plan_tile": [plan.tile_y, plan.tile_x],
        "pixel_days": pd_,
        "pixel_days_per_s": round(rate(pd_, wall), 1),
        "wall_s": round(wall, 3),
        "execute_s": round(res.seconds, 3),
        "tasks": plan.n_tasks,
        "blocks": plan.n_blocks,
        "tiles": len(plan.crop_tiles),
        "batch_pixels": plan.batch_pixels,
        "peak_memory_per_worker_mib": round(max(peaks.values()) / MIB, 1),
        "peak_memory_each_worker_mib": {str(k): round(v / MIB, 1) for k, v in peaks.items()},
        "rss_at_start_mib": round(max(base.values()) / MIB, 1),
        "memory_estimate_per_task_mib": round(plan.memory_per_task / MIB, 1),
        "workers": n_workers,
        "time_split": time_split(timers, wall=wall, workers=n_workers),
        "chunk_cache": cache,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }
    model_s = float(timers.get("model", (0.0, 0))[0])
    # the rate if the workers did nothing but the model: the in-run bound on the same workers
    row["model_only_pixel_days_per_s"] = round(rate(pd_, model_s / n_workers), 1) if model_s else None
    if not keep:
        _rmtree(out)
    return row


def _io_read(bt: Any, tt: Any) -> int:
    """Read (decode) one block's inputs as the engine does, no gather, no model.

    Returns the bytes read.
    """
    from kgml_grid.execute import read_inputs

    return int(sum(v.nbytes for k, v in read_inputs(tt, bt).items() if k not in ("rr", "cc")))


def _io_read_assemble(bt: Any, tt: Any) -> int:
    """:func:`kgml_grid.execute.read_block` (read + feature assembly), no model."""
    from kgml_grid.execute import read_block

    _, x, _, _ = read_block(tt, bt, None)
    return int(x.nbytes)


def run_io_limit(plan: Any, *, client: Any, assemble: bool = False) -> dict[str, Any]:
    """The I/O limit of a plan: its input blocks read by Dask tasks on ``client``'s
    workers, no model, no writes, no dependency between blocks.

    Parameters
    ----------
    assemble : bool
        Also assemble the features (:func:`kgml_grid.execute.read_block`), still no model.
    """
    import dask

    from kgml_grid.blockio import clear_caches
    from kgml_grid.execute import _block_task, _tile_tasks

    client.run(clear_caches)  # cold, like the end-to-end runs
    run_id = uuid.uuid4().hex[:8]
    tasks = _tile_tasks(plan, None, run_id, plan.crop_tiles)
    tiles = {t: dask.delayed(tasks[t], name=(f"kgml-io-tile-{run_id}", *t), traverse=False) for t in plan.crop_tiles}
    fn = dask.delayed(_io_read_assemble if assemble else _io_read, pure=False, traverse=False)
    blocks = [fn(_block_task(plan, k), tiles[k.tile], dask_key_name=(f"kgml-io-{run_id}", k.chunk, k.ty, k.tx))
              for k in plan.blocks]  # fmt: skip
    t0 = _time.perf_counter()
    nbytes = client.gather(client.compute(blocks))
    wall = _time.perf_counter() - t0
    pd_ = plan.n_crop_pixels * plan.n_days
    return {
        "pixel_days_per_s": round(rate(pd_, wall), 1),
        "wall_s": round(wall, 3),
        "chunk_cache": _cache_stats(client),
        "mib_read": round(sum(nbytes) / MIB, 1),
        "mib_per_s": round(sum(nbytes) / MIB / wall, 1) if wall else None,
        "tasks": len(blocks) + len(tiles),
        "what": "read_block (read + feature assembly), no model" if assemble
        else "input blocks read (decompressed), no gather, no model",
    }


def _compute_work(
    checkpoint: str, device: str, counts: Sequence[int], time_bounds: Sequence[tuple[int, int]],
    year_end: np.ndarray, threads: int, max_seconds: float | None = None,
    barrier: Any = None,
) -> tuple[float, int]:  # fmt: skip
    """Run the model over batches of ``counts`` pixels (one entry per batch), each over
    every time chunk with its state carried, on random in-memory inputs.

    Returns the seconds of the model loop and the pixel-days done (fewer than all when
    ``max_seconds`` ran out first).
    """
    import torch

    from kgml_grid.checkpoint import load_checkpoint
    from kgml_grid.worker import tune_malloc

    torch.set_num_threads(int(threads))
    tune_malloc()  # as the engine's workers do (ModelPlugin.setup)
    ckpt = load_checkpoint(checkpoint, device=device)
    dev = ckpt.device
    nf = ckpt.config.n_features
    g = torch.Generator().manual_seed(0)
    shapes = {(m, b - a) for m in counts for a, b in time_bounds}
    xs = {s: torch.randn((s[0], s[1], nf), generator=g).to(dev) for s in shapes}
    ye = [torch.as_tensor(year_end[a:b], device=dev) for a, b in time_bounds]
    calls = [(k, ci, m) for k, m in enumerate(counts) for ci in range(len(time_bounds))]
    states: dict[int, Any] = {}
    done = 0
    if barrier is not None:
        barrier.wait()
    t0 = _time.perf_counter()
    with torch.inference_mode():
        for k, ci, m in calls:
            a, b = time_bounds[ci]
            out, states[k] = ckpt.model(xs[(m, b - a)], states.get(k), year_end=ye[ci])
            out["daily"].float().cpu().numpy()
            out["yield"].float().cpu().numpy()
            done += m * (b - a)
            if max_seconds is not None and _time.perf_counter() - t0 > max_seconds:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return _time.perf_counter() - t0, done


def _compute_work_star(args: tuple[Any, ...]) -> tuple[float, int]:
    return _compute_work(*args, barrier=_BARRIER.get("b"))


_BARRIER: dict[str, Any] = {}


def _pool_init(barrier: Any) -> None:
    _BARRIER["b"] = barrier


def run_compute_limit(
    plan: Any, *, threads: int, device: str = "cpu", processes: int = 1, max_seconds: float | None = None
) -> dict[str, Any]:
    """The compute limit of a plan: the model over the same pixel-days as in-memory
    tensors (same batch size, same time chunks, state carried), no I/O, no Dask.

    Parameters
    ----------
    threads : int
        Torch threads (in each process).
    processes : int
        1: in this process. More: that many spawned processes share the batches; each
        loads the model, all start together (a barrier) and the slowest sets the time.
    max_seconds : float, optional
        Stop after this long (each process) and report the rate of what was done
        (``truncated``): a guard against pathological thread settings.
    """
    from kgml_grid.features import year_end_mask

    bsz = plan.batch_pixels
    # the engine's model calls: per tile, batches of at most batch_pixels crop pixels, each
    # carried over every time chunk; batches are independent, so processes share them
    counts = [min(bsz, n - i) for t in plan.crop_tiles for n in [int(plan.crop_counts[t])] for i in range(0, n, bsz)]
    ye = year_end_mask(plan.time)
    tail = (plan.time_bounds, ye, threads, max_seconds)
    pd_all = plan.n_crop_pixels * plan.n_days
    t0 = _time.perf_counter()
    if processes <= 1:
        from kgml_grid.checkpoint import torch_threads

        with torch_threads(threads):  # restores the caller's count after _compute_work sets it
            each = [_compute_work(plan.checkpoint, device, counts, *tail)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        shares: list[list[int]] = [[] for _ in range(processes)]
        loads = [0] * processes
        for i in sorted(range(len(counts)), key=lambda i: -counts[i]):  # greedy balance of batches
            j = loads.index(min(loads))
            shares[j].append(counts[i])
            loads[j] += counts[i]
        shares = [s for s in shares if s]
        barrier = ctx.Barrier(len(shares))
        jobs = [(plan.checkpoint, device, s, *tail) for s in shares]
        with ProcessPoolExecutor(len(shares), mp_context=ctx, initializer=_pool_init,
                                 initargs=(barrier,)) as pool:  # fmt: skip
            each = list(pool.map(_compute_work_star, jobs))
    secs = max(s for s, _ in each)
    done = sum(d for _, d in each)
    return {
        "pixel_days_per_s": round(rate(done, secs), 1),
        "wall_s": round(secs, 3),
        "pixel_days_done": int(done),
        "truncated": bool(done < pd_all),
        "total_s_with_startup": round(_time.perf_counter() - t0, 3),
        "seconds_each_process": [round(s, 3) for s, _ in each],
        "threads": threads,
        "processes": max(1, len(each)),
        "batch_pixels": plan.batch_pixels,
        "time_chunk": max(plan.time_chunks),
        "device": device,
    }


# ---- peers ---------------------------------------------------------------------------


def _patch_outputs(
    ckpt: Any, sat: Any, stores: Mapping[str, Any], *, crop_index: Sequence[int], years: Sequence[int],
    batch: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """What a peer user writes for one spatial patch, whole time range at once: fine
    weather by nearest coarse cell, soil and crop of the patch, features of the crop
    pixels, the model in batches. Returns ``[T, ny, nx]`` per daily output."""
    import pandas as pd
    import torch

    from kgml_grid.features import SOIL_FEATURES, WEATHER_FEATURES, assemble, year_end_mask
    from kgml_grid.model import DAILY_TARGETS
    from kgml_grid.plan import DAILY_VARS

    time = pd.DatetimeIndex(sat["time"].values)
    ys, xs = sat["y"].values, sat["x"].values
    wx = stores["weather"][list(WEATHER_FEATURES)].sel(time=time).sel(y=ys, x=xs, method="nearest")
    soil = stores["soil"][list(SOIL_FEATURES)].sel(y=ys, x=xs, method="nearest")
    crop = np.asarray(stores["crop"]["crop_type"].isel(year=list(crop_index)).sel(y=ys, x=xs, method="nearest").values)
    rr, cc = np.nonzero((crop > 0).any(axis=0))
    t, ny, nx = len(time), len(ys), len(xs)
    out = {n: np.full((t, ny, nx), np.nan, dtype="float32") for n in DAILY_VARS}
    if rr.size == 0:
        return out
    daily = {k: np.asarray(wx[k].values)[:, rr, cc] for k in WEATHER_FEATURES}
    daily["gpp_sat"] = np.asarray(sat["gpp_sat"].values)[:, rr, cc]
    soil_v = {k: np.asarray(soil[k].values)[rr, cc] for k in SOIL_FEATURES}
    year_pos = {int(y): i for i, y in enumerate(years)}
    cby = {int(y): crop[year_pos[int(y)], rr, cc] for y in np.unique(time.year)}
    x, _ = assemble(time=time, daily=daily, soil=soil_v, crop_by_year=cby)
    xn = np.ascontiguousarray(ckpt.normalizer.normalize_features(x), dtype="float32")
    ye = torch.as_tensor(year_end_mask(time), device=ckpt.device)
    res = np.empty((rr.size, t, len(DAILY_TARGETS)), dtype="float32")
    with torch.inference_mode():
        for i in range(0, rr.size, batch):
            o, _ = ckpt.model(torch.from_numpy(xn[i : i + batch]).to(ckpt.device), None, year_end=ye)
            res[i : i + batch] = o["daily"].float().cpu().numpy()
    phys = ckpt.normalizer.denormalize_outputs(res)
    col = {n: i for i, n in enumerate(DAILY_TARGETS)}
    ra, rh = np.maximum(phys[..., col["ra"]], 0), np.maximum(phys[..., col["rh"]], 0)
    vals = {"ra": ra, "rh": rh, "reco": ra + rh, "nee": phys[..., col["nee"]],
            "gpp": np.maximum(phys[..., col["gpp"]], 0)}  # fmt: skip
    for n in DAILY_VARS:
        out[n][:, rr, cc] = vals[n].T
    return out


def _open_plain(path: str) -> Any:
    import xarray as xr

    return xr.open_zarr(path, consolidated=False, chunks=None)


def _peer_block(sat: Any, *, paths: Mapping[str, str], checkpoint: str, device: str,
                crop_index: Sequence[int], years: Sequence[int], batch: int) -> Any:  # fmt: skip
    """The ``xarray.map_blocks`` function of the first peer: opens the stores and loads
    the checkpoint inside each block, as users of ``map_blocks`` do."""
    import xarray as xr

    from kgml_grid.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, device=device)
    stores = {k: _open_plain(paths[k]) for k in ("weather", "soil", "crop")}
    out = _patch_outputs(ckpt, sat, stores, crop_index=crop_index, years=years, batch=batch)
    return xr.Dataset({n: (("time", "y", "x"), a) for n, a in out.items()}, coords=sat.coords)


def _sat_window(plan: Any, chunks: Mapping[str, int] | None) -> Any:
    import xarray as xr

    iy0, iy1, ix0, ix1 = plan.window
    sat = xr.open_zarr(plan.paths["satellite"], consolidated=False, chunks={} if chunks else None)
    sat = sat[["gpp_sat"]].isel(time=slice(plan.sat_t0, plan.sat_t0 + plan.n_days),
                                y=slice(iy0, iy1), x=slice(ix0, ix1))  # fmt: skip
    return sat.chunk(dict(chunks)) if chunks else sat


def run_peer_map_blocks(plan: Any, *, out: str | Path, device: str = "cpu",
                        tile: tuple[int, int] | None = None, client: Any = None) -> dict[str, Any]:  # fmt: skip
    """Peer 1: ``xarray.map_blocks`` over the satellite cube chunked in space (the plan's
    tile, or ``tile``) with time unchunked, ``template=`` given, the checkpoint loaded
    inside each block, outputs written with ``to_zarr``. Runs on ``client`` (default:
    Dask's default scheduler)."""
    import dask
    import xarray as xr

    from kgml_grid.outputs import MARKER_ATTR, remove_output
    from kgml_grid.plan import DAILY_VARS

    ty, tx = tile or (plan.tile_y, plan.tile_x)
    out = Path(out)
    remove_output(out, "scratch")  # only a scratch store of ours
    t0 = _time.perf_counter()
    sat = _sat_window(plan, {"time": -1, "y": ty, "x": tx})
    template = xr.Dataset({n: xr.zeros_like(sat["gpp_sat"], dtype="float32") for n in DAILY_VARS})
    for n in DAILY_VARS:
        template[n].encoding = {}
        template[n].attrs = {}
    years = list(plan.years)
    res = xr.map_blocks(
        _peer_block, sat, template=template,
        kwargs={"paths": dict(plan.paths), "checkpoint": plan.checkpoint, "device": device,
                "crop_index": [plan.crop_year_index[y] for y in years], "years": years,
                "batch": plan.batch_pixels},
    )  # fmt: skip
    n_tasks = len(res.__dask_graph__())
    res.attrs[MARKER_ATTR] = "scratch"
    with dask.config.set(scheduler=client) if client is not None else contextlib.nullcontext():
        res.to_zarr(out, mode="w", zarr_format=3, consolidated=False)
    wall = _time.perf_counter() - t0
    remove_output(out, "scratch")  # only a scratch store of ours
    pd_ = plan.n_crop_pixels * plan.n_days
    return {"pixel_days_per_s": round(rate(pd_, wall), 1), "wall_s": round(wall, 3),
            "tile": [ty, tx], "time_chunk": plan.n_days, "graph_tasks": n_tasks,
            "what": "xarray.map_blocks, time unchunked, template given, checkpoint loaded in each block"}  # fmt: skip


def run_peer_patch_loop(plan: Any, *, out: str | Path, threads: int, device: str = "cpu",
                        tile: tuple[int, int] | None = None,
                        max_seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Peer 2: one process loops over spatial patches (the plan's tile, or ``tile``),
    whole time range each: load the inputs, run the model, write the patch's region of
    a Zarr store, the way a user of xbatcher's ``BatchGenerator(input_dims={'y', 'x'})``
    writes it. Torch uses ``threads`` threads.

    ``max_seconds``: stop after the patch that crosses this time and report the rate
    of the patches done (``truncated``)."""
    import xarray as xr

    from kgml_grid import cubes
    from kgml_grid.checkpoint import load_checkpoint, torch_threads
    from kgml_grid.outputs import MARKER_ATTR, remove_output
    from kgml_grid.plan import DAILY_VARS

    ty, tx = tile or (plan.tile_y, plan.tile_x)
    out = Path(out)
    remove_output(out, "scratch")  # only a scratch store of ours
    with torch_threads(int(threads)):
        t0 = _time.perf_counter()
        ckpt = load_checkpoint(plan.checkpoint, device=device)
        sat = _sat_window(plan, None)
        stores = {k: _open_plain(plan.paths[k]) for k in ("weather", "soil", "crop")}
        lazy = _sat_window(plan, {"time": -1, "y": ty, "x": tx})
        template = xr.Dataset({n: xr.zeros_like(lazy["gpp_sat"], dtype="float32") for n in DAILY_VARS})
        for n in DAILY_VARS:
            template[n].encoding = {}
        template.attrs[MARKER_ATTR] = "scratch"
        template.to_zarr(out, mode="w", compute=False, zarr_format=3, consolidated=False)
        years = list(plan.years)
        crop_index = [plan.crop_year_index[y] for y in years]
        ny, nx = plan.grid.ny, plan.grid.nx
        patches = [(slice(y0, min(y0 + ty, ny)), slice(x0, min(x0 + tx, nx)))
                   for y0 in range(0, ny, ty) for x0 in range(0, nx, tx)]  # fmt: skip
        n_done = crop_done = 0
        for ys, xs in patches:
            o = _patch_outputs(ckpt, sat.isel(y=ys, x=xs), stores, crop_index=crop_index, years=years,
                               batch=plan.batch_pixels)  # fmt: skip
            ds = xr.Dataset({n: (("time", "y", "x"), a) for n, a in o.items()})
            cubes.write_region(ds, out, {"time": slice(0, plan.n_days), "y": ys, "x": xs})
            n_done += 1
            crop_done += int(np.isfinite(o["reco"][0]).sum())
            if max_seconds is not None and _time.perf_counter() - t0 > max_seconds:
                break
        wall = _time.perf_counter() - t0
    remove_output(out, "scratch")  # only a scratch store of ours
    pd_ = crop_done * plan.n_days
    return {"pixel_days_per_s": round(rate(pd_, wall), 1), "wall_s": round(wall, 3), "tile": [ty, tx],
            "patches": len(patches), "patches_done": n_done, "pixel_days_done": pd_,
            "truncated": n_done < len(patches), "threads": threads,
            "what": "single-process loop over spatial patches (xbatcher style): read, model, write Zarr"}  # fmt: skip


# --------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------


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
    """Run every part (see the module docstring) and write the JSON, PNG and Markdown.

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
        inputs += outputs.catalog_inputs(_catalog_path(cfg.world))
    outputs.check_files(list(files.values()), ours=is_bench_result(files["json"]), what="a benchmark's results",
                        inputs=inputs, overwrite=cfg.overwrite)  # fmt: skip
    if cfg.work is not None:
        outputs.check_target(cfg.work, kind="bench-work", inputs=inputs, overwrite=cfg.overwrite, option="--work")
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
            catalog = _catalog_path(cfg.world)
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
        model_desc = f"{ck.config.arch} hidden {ck.config.hidden}" + ("" if cfg.model else " (random init)")
        del ck
        cat = open_catalog(catalog)
        from kgml_grid import cubes

        sat = cat.open("satellite")
        grid = cubes.grid_of(sat, layer="satellite")
        enc = sat["gpp_sat"].encoding.get("chunks") or sat["gpp_sat"].encoding.get("preferred_chunks")
        if isinstance(enc, Mapping):
            enc = tuple(enc.get(d) for d in ("time", "y", "x"))
        cube_tile = int(enc[1]) if isinstance(enc, tuple | list) and len(enc) == 3 and enc[1] else None
        domain = tuple(cfg.domain) if cfg.domain else grid.shape
        if domain[0] > grid.ny or domain[1] > grid.nx or min(domain) < 1:
            raise ValueError(f"--domain {domain[0]} {domain[1]} does not fit the {grid.ny} x {grid.nx} grid")
        start, end = cfg.start, cfg.end
        if cfg.quick and start is None and end is None:
            import pandas as pd

            t = pd.DatetimeIndex(sat["time"].values)
            y0 = t[0].year + (1 if len(t) > 730 else 0)
            start, end = f"{y0}-01-01", str((pd.Timestamp(f"{y0}-01-01") + pd.Timedelta(days=89)).date())
        bbox = _bbox(grid, (0, domain[0], 0, domain[1]))
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
        client = _local_client(cfg.workers)
        clients.append(client)
        from kgml_grid.worker import register_model

        register_model(client, str(model.resolve()), probe.checkpoint_hash, device=device)  # warm: model once per worker
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
        bbox1 = _bbox(grid, (0, d1[0], 0, d1[1]))
        bbox4 = _bbox(grid, (0, d4[0], 0, d4[1]))
        # every ratio below compares runs at the recommended shape on the 1x domain
        plan1 = make_plan(catalog, model, start=start, end=end, bbox=bbox1, chunks=rshape.chunks)

        def e2e(c: Any, box: Any) -> dict[str, Any]:
            return run_end_to_end(catalog, model, rshape, client=c, out=work / "e2e.zarr", start=start, end=end,
                                  bbox=box, device=device)  # fmt: skip

        sc: dict[str, Any] = {}
        _log(cfg, f"scaling: {cfg.workers} workers, 4x domain {d4}")
        sc["domain_4x"] = {**e2e(client, bbox4), "domain": list(d4)}
        c2 = client if cfg.workers == 2 else _local_client(2)
        if c2 is not client:
            clients.append(c2)
        c1 = _local_client(1)
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
                measure("w2", "end-to-end, 2 workers", lambda: {**e2e(c2, bbox1), "domain": list(d1)})
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
            measure("compute_threads", f"compute limit: 1 process x {threads} torch thread(s)",
                    lambda: run_compute_limit(plan1, threads=threads, device=device, max_seconds=cfg.max_seconds))
        measure("io_with_assembly", "I/O + feature assembly (read_block, no model)",
                lambda: run_io_limit(plan1, client=client, assemble=True))
        for c in {id(x): x for x in (client, c2, c1)}.values():
            close_client(c)
            clients.remove(c)

        med = {k: _median_run(v) for k, v in runs.items()}
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
