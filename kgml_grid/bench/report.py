"""The results as people read them: Markdown tables, the terminal summary, the sweep
plot, and recognising a results file this benchmark wrote."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_markdown", "format_summary", "is_bench_result", "plot_sweep"]


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
        (
            f"**compute limit** = the faster of the next two ({lim.get('compute', {}).get('variant')})",
            lim.get("compute"),
        ),
        (
            f"compute: 1 process x {ct.get('threads')} torch threads, in-memory tensors, no I/O, no Dask",
            ct,
        ),
        (f"compute: {cp.get('processes')} processes x 1 torch thread, in-memory tensors", cp),
        ("**I/O limit** (same input blocks read by Dask tasks, no model)", lim.get("io")),
        ("I/O + feature assembly (read_block, no model)", lim.get("io_with_assembly")),
        (
            "peer: xarray.map_blocks, time unchunked, model loaded per block",
            peers.get("map_blocks"),
        ),
        (
            f"peer: single-process patch loop (xbatcher style, {peers.get('patch_loop', {}).get('threads')} "
            "torch thread(s))",
            peers.get("patch_loop"),
        ),
        ("scaling: 1 worker", sc.get("workers_1")),
        ("scaling: 2 workers", sc.get("workers_2")),
        (
            f"scaling: 4x domain {sc.get('domain_4x', {}).get('domain')}, {cfg.get('workers')} workers "
            f"(peak memory {sc.get('domain_4x', {}).get('peak_memory_per_worker_mib', 0):.0f} MiB/worker vs "
            f"{sc.get('domain_1x', {}).get('peak_memory_per_worker_mib', 0):.0f} at 1x)",
            sc.get("domain_4x"),
        ),
    ]
    for name, d in rows:
        if d:
            lines.append(
                f"| {name}{note(d)} | {_fmt_rate(d.get('pixel_days_per_s'))} | {d.get('wall_s', 0):.1f} s |"
            )
    run = e2e or result.get("recommended") or {}
    split = (run.get("time_split") or {}).get("share")
    if split:
        lines += [
            "",
            f"Where the workers' time went end to end at {run.get('label')}: "
            + ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in split.items())
            + ".",
        ]
        if run.get("model_only_pixel_days_per_s"):
            lines[-1] += (f" Model-only rate of the same workers in the same run: "
                          f"{_fmt_rate(run['model_only_pixel_days_per_s'])} pixel-days/s; end-to-end reaches "
                          f"{run['pixel_days_per_s'] / run['model_only_pixel_days_per_s']:.2f} of it.")  # fmt: skip
    acc = result.get("acceptance", {})
    if acc:
        lines += [
            "",
            "| acceptance ratio (same run) | value | target | met |",
            "| --- | ---: | ---: | --- |",
        ]
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
    ax.bar(
        xs,
        [r["pixel_days_per_s"] for r in rows],
        color=colors,
        width=0.6,
        label="end-to-end (upscale)",
    )
    io_each = [r.get("io_limit", {}).get("pixel_days_per_s") for r in rows]
    if any(io_each):
        ax.plot(xs, [v or np.nan for v in io_each], "v", color="tab:green", ms=7,
                label="I/O limit of each shape")  # fmt: skip
    lim, peers = result.get("limits", {}), result.get("peers", {})
    lines = [
        (lim.get("compute"), "tab:red", "-", "compute limit"),
        (
            lim.get("compute_threads")
            if lim.get("compute_threads", {}).get("pixel_days_per_s")
            != lim.get("compute", {}).get("pixel_days_per_s")
            else None,
            "tab:red",
            ":",
            f"compute, 1 process x {lim.get('compute_threads', {}).get('threads')} threads",
        ),
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
