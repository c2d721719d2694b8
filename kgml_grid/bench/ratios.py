"""Arithmetic on measured results (pure): rates, the recommended shape, the acceptance
ratios against :data:`TARGETS`, the split of the workers' time and the median of
interleaved rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TARGETS", "acceptance", "median_run", "rate", "recommend", "time_split"]

#: Acceptance targets of the benchmark issue: (comparison, value).
TARGETS: dict[str, tuple[str, float]] = {
    "end_to_end_vs_min_limit": (">=", 0.8),
    "end_to_end_vs_map_blocks": (">", 1.0),
    "end_to_end_vs_patch_loop": (">", 1.0),
    "workers_2_vs_1": (">=", 1.7),
    "memory_4x_vs_1x": ("<=", 1.2),
}


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
            put(
                "end_to_end_vs_min_limit",
                e2e,
                min(comp, io),
                f"end-to-end at {rec['label']} / min(compute limit, I/O limit) (the {which} limit){medians}",
            )
        peers = result.get("peers", {})
        for key, name in (
            ("map_blocks", "end_to_end_vs_map_blocks"),
            ("patch_loop", "end_to_end_vs_patch_loop"),
        ):
            p = peers.get(key, {}).get("pixel_days_per_s")
            if p:
                put(name, e2e, p, f"end-to-end at {rec['label']} / peer {key}{medians}")
    sc = result.get("scaling", {})
    w1, w2 = sc.get("workers_1"), sc.get("workers_2")
    if w1 and w2:
        put(
            "workers_2_vs_1",
            w2["pixel_days_per_s"],
            w1["pixel_days_per_s"],
            f"throughput with 2 workers / with 1 worker (same shape, same domain){medians}",
        )
    d1, d4 = sc.get("domain_1x"), sc.get("domain_4x")
    if d1 and d4:
        put(
            "memory_4x_vs_1x",
            d4["peak_memory_per_worker_mib"],
            d1["peak_memory_per_worker_mib"],
            "peak memory per worker (RSS) at 4x domain / at 1x domain",
        )
    return out


def time_split(
    timers: Mapping[str, Sequence[float]], *, wall: float, workers: int
) -> dict[str, Any]:
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


def median_run(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run of median throughput (the lower one of an even count), with every run's
    throughput and peak memory beside it."""
    order = sorted(runs, key=lambda r: r["pixel_days_per_s"])
    med = dict(order[(len(order) - 1) // 2])
    med["repeats"] = len(runs)
    med["pixel_days_per_s_each"] = [r["pixel_days_per_s"] for r in runs]
    if all("peak_memory_per_worker_mib" in r for r in runs):
        med["peak_memory_per_worker_mib_each"] = [r["peak_memory_per_worker_mib"] for r in runs]
    return med
