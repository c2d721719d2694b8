"""Held-out accuracy against CPU-minutes of pre-training (issue 16, deliverable 3).

One pre-training run per architecture (``run``: one process, one torch thread, the
project's :func:`kgml_grid.train.prepare_pretrain` + :func:`kgml_grid.train.fit` with
:class:`kgml_grid.train.TrainConfig` defaults unless overridden), budgeted in CPU time
(``time.process_time``). When the CPU time charged crosses each mark (1, 3, 6, 12, 24
CPU-minutes) the current weights are evaluated exactly as ``kgml-grid evaluate`` does
(:func:`kgml_grid.evaluate.grid_report`: the checkpoint split's held-out pixels, whole
series from a zero state, first 365 days spin-up, all later years); that evaluation is
not charged to the budget. The learning-rate schedule (step decay per epoch) does not
depend on the budget, so the 12-minute snapshot is what a 12-minute run would have
trained, before ``fit`` restores the best validated epoch.

``merge`` gathers the per-architecture JSON into ``learning_efficiency.{json,md,png}``.

Usage (the committed run; both processes run at the same time, one core each)::

    kgml-grid synth --out /tmp/16t/demo --preset demo
    python benchmarks/learning_efficiency.py run --catalog /tmp/16t/demo/catalog.yaml \\
        --arch kgml --out /tmp/16t/le_kgml.json &
    python benchmarks/learning_efficiency.py run --catalog /tmp/16t/demo/catalog.yaml \\
        --arch gru --out /tmp/16t/le_gru.json
    python benchmarks/learning_efficiency.py merge /tmp/16t/le_kgml.json /tmp/16t/le_gru.json \\
        --out benchmarks/results/learning_efficiency
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from kgml_grid import train as T
from kgml_grid.catalog import open_catalog
from kgml_grid.checkpoint import torch_threads
from kgml_grid.evaluate import grid_report
from kgml_grid.samples import grid_series

MARKS = (1.0, 3.0, 6.0, 12.0, 24.0)
#: TrainConfig fields that ``--set name=value`` may override (A/B trials).
OVERRIDABLE = ("lr", "lr_step", "lr_gamma", "batch_size", "dropout", "response_every",
               "w_response", "w_mass_balance", "w_balance_true", "balance_floor", "hidden", "epochs", "patience")  # fmt: skip


def machine() -> dict[str, Any]:
    """CPU model and load, for the record."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:12]
    return {"lscpu": lscpu, "loadavg_1_5_15": list(os.getloadavg()),
            "platform": platform.platform(), "torch": torch.__version__}  # fmt: skip


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``name=value`` pairs of :data:`OVERRIDABLE` TrainConfig fields, typed as the defaults."""
    base = T.TrainConfig()
    out: dict[str, Any] = {}
    for it in items:
        name, _, value = it.partition("=")
        if name == "spinup_days":
            out[name] = int(value)
            continue
        if name not in OVERRIDABLE:
            raise SystemExit(f"--set {it}: {name!r} is not one of {(*OVERRIDABLE, 'spinup_days')}")
        out[name] = type(getattr(base, name))(value)
    return out


def flat(report: dict[str, Any]) -> dict[str, float]:
    """The numbers the curve shows, from a :func:`grid_report`."""
    g = report["heldout_pixels_all_years"]
    h = report["heldout_pixels_heldout_years"]
    mb = report["mass_balance_residual_median_frac_of_reco"]
    return {
        **{f"r2_{v}": g[v]["r2"] for v in ("ra", "rh", "nee", "gpp", "reco")},
        **{f"r2_{v}_heldout_years": h[v]["r2"] for v in ("ra", "rh", "nee")},
        "mb_vs_own_gpp": mb["model_gpp"],
        "mb_vs_true_gpp": mb["true_gpp"],
        "mb_vs_input_gpp": mb["input_gpp"],
    }


def run(a: argparse.Namespace) -> None:
    over = parse_overrides(a.set)
    spin = over.pop("spinup_days", None)
    marks = sorted(float(m) for m in a.minutes.split(","))
    cfg = replace(T.TrainConfig(), arch=a.arch, max_cpu_minutes=marks[-1], **over)
    if spin is not None:
        cfg = replace(cfg, split=replace(cfg.split, spinup_days=spin))
    load0 = list(os.getloadavg())
    w0 = time.perf_counter()
    head = {"arch": a.arch, "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "train_config": T._jsonable(asdict(cfg)), "load_before": load0, "machine": machine()}  # fmt: skip

    def write(body: dict[str, Any]) -> None:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({**head, **body}, indent=1))

    with torch_threads(cfg.threads):
        cat = open_catalog(a.catalog)
        setup = T.prepare_pretrain(cat, cfg, torch.device("cpu"))
        test = grid_series(cat.open_all(), setup.split.test_pixels, features=setup.features)
        snaps: list[dict[str, Any]] = []
        todo = list(marks)

        def on_step(step: int, cpu_s: float) -> None:
            if not todo or cpu_s < 60 * todo[0]:
                return
            mark = todo.pop(0)
            t = time.perf_counter()
            report, _, _ = grid_report(setup.model, setup.norm, test, setup.split)
            snaps.append({"cpu_minutes_mark": mark, "cpu_minutes": cpu_s / 60, "step": step,
                          "epochs": step / len(setup.train), "wall_s": time.perf_counter() - w0,
                          "eval_wall_s": time.perf_counter() - t, "load": list(os.getloadavg()),
                          **flat(report)})  # fmt: skip
            print(json.dumps(snaps[-1]), flush=True)
            write({"complete": False, "snapshots": snaps})  # kept if the run is cut short

        history, best, stopped = T.fit(
            setup.model, lambda b, s: T.grid_loss(setup.model, b, setup.norm, cfg, s),
            setup.train, setup.val, param_groups=[{"params": list(setup.model.parameters()),
                                                   "lr": cfg.lr}],
            epochs=cfg.epochs, patience=cfg.patience, lr_step=cfg.lr_step, lr_gamma=cfg.lr_gamma,
            max_cpu_minutes=cfg.max_cpu_minutes, progress=False, on_step=on_step,
        )  # fmt: skip
    write({"complete": True, "overrides": over | ({"spinup_days": spin} if spin else {}),
           "train_windows": len(setup.train_items), "batches_per_epoch": len(setup.train),
           "test_pixels": int(test.n), "snapshots": snaps, "history": history,
           "stopped": stopped, "best_epoch": best + 1, "wall_s": time.perf_counter() - w0,
           "load_after": list(os.getloadavg())})  # fmt: skip
    print(f"{a.out}: {stopped}")


#: Issue 16's acceptance at 12 CPU-minutes: (key, bound, at least?)
TARGETS = (("r2_ra", 0.96, True), ("r2_rh", 0.93, True), ("r2_nee", 0.94, True),
           ("mb_vs_own_gpp", 0.02, False), ("mb_vs_true_gpp", 0.10, False))  # fmt: skip


def label(r: dict[str, Any]) -> str:
    """Architecture and the ``--set`` overrides of a run, e.g. ``gru (patience=1000)``."""
    words = r["command"].split()
    sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
    return r["arch"] + (f" ({', '.join(sets)})" if sets else "")


def acceptance(runs: list[dict[str, Any]], mark: float = 12.0) -> list[str]:
    """Issue 16's targets against each run's snapshot at ``mark`` CPU-minutes (MD lines)."""
    lines = [f"## Issue 16 acceptance at {mark:g} CPU-minutes (snapshot of the run above)", "",
             "| model | " + " | ".join(k for k, _, _ in TARGETS) + " |",
             "| --- |" + " --- |" * len(TARGETS)]  # fmt: skip
    for r in runs:
        snap = next((s for s in r["snapshots"] if s["cpu_minutes_mark"] == mark), None)
        if snap is None:
            lines.append(f"| {label(r)} | " + " | ".join("not reached" for _ in TARGETS) + " |")
            continue
        cells = []
        for key, bound, at_least in TARGETS:
            ok = snap[key] >= bound if at_least else snap[key] <= bound
            cells.append(f"{snap[key]:.3f} ({'>=' if at_least else '<='} {bound:g}: "
                         f"{'met' if ok else 'missed'})")  # fmt: skip
        lines.append(f"| {label(r)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def merge(a: argparse.Namespace) -> None:
    runs = [json.loads(Path(p).read_text()) for p in a.parts]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"what": "held-out R2 and mass-balance residual against CPU-minutes of pre-training, "
                   "demo world seed 0, one torch thread per run, both runs concurrently",
           "protocol": "kgml-grid evaluate's: the split's held-out pixels, whole series from a "
                       "zero state, first 365 days spin-up, all later years (R2 also on the "
                       "held-out years 2014-2015); residual = median |GPP - Reco + NEE| / Reco "
                       "(Reco > 0.05) with the model's own GPP head and with the true GPP",
           "merge_command": " ".join(["python", *sys.argv]), "runs": runs}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [f"# Learning efficiency: {res['what']}", "", f"Protocol: {res['protocol']}.", ""]
    for r in runs:
        lines += [f"## {label(r)}", "", f"Command: `{r['command']}`", "",
                  f"Machine: {r['machine']['lscpu'][7] if len(r['machine']['lscpu']) > 7 else ''}; "
                  f"load before {r['load_before']}, after {r.get('load_after')}; wall "
                  f"{r.get('wall_s', float('nan')) / 60:.1f} min; {r.get('batches_per_epoch')} "
                  f"batches/epoch; stopped: {r.get('stopped', 'run cut short (incomplete)')}", "",
                  "| CPU-min | steps | epochs | Ra R2 | Rh R2 | NEE R2 | GPP R2 | residual vs own GPP | vs true GPP |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for s in r["snapshots"]:
            lines.append(
                f"| {s['cpu_minutes_mark']:g} | {s['step']} | {s['epochs']:.1f} | {s['r2_ra']:.3f} | "
                f"{s['r2_rh']:.3f} | {s['r2_nee']:.3f} | {s['r2_gpp']:.3f} | "
                f"{100 * s['mb_vs_own_gpp']:.1f} % | {100 * s['mb_vs_true_gpp']:.1f} % |"
            )
        lines.append("")
    lines += acceptance(runs)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    from kgml_grid.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for r in runs:
        ls = "-" if r["arch"] == "kgml" else "--"
        m = [s["cpu_minutes_mark"] for s in r["snapshots"]]
        for v, c in (("ra", "C0"), ("rh", "C1"), ("nee", "C2")):
            axes[0].plot(m, [s[f"r2_{v}"] for s in r["snapshots"]], "o" + ls, color=c,
                         label=f"{label(r)} {v}")  # fmt: skip
        axes[1].plot(m, [100 * s["mb_vs_true_gpp"] for s in r["snapshots"]], "o" + ls,
                     color="C3", label=f"{label(r)} vs true GPP")  # fmt: skip
        axes[1].plot(m, [100 * s["mb_vs_own_gpp"] for s in r["snapshots"]], "s" + ls,
                     color="C4", label=f"{label(r)} vs own GPP output")  # fmt: skip
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("CPU-minutes of pre-training (one thread)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out R2")
    axes[1].set_ylabel("median mass-balance residual, % of Reco")
    for y in (0.93, 0.94, 0.96):
        axes[0].axhline(y, color="grey", lw=0.5, ls=":")
    axes[1].axhline(10, color="grey", lw=0.5, ls=":")
    axes[1].axhline(2, color="grey", lw=0.5, ls=":")
    fig.savefig(out.with_suffix(".png"), dpi=90)
    print(out.with_suffix(".md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--catalog", required=True)
    r.add_argument("--arch", choices=("kgml", "gru"), default="kgml")
    r.add_argument("--minutes", default=",".join(f"{m:g}" for m in MARKS))
    r.add_argument("--set", action="append", default=[], help="TrainConfig override name=value")
    r.add_argument("--out", required=True)
    m = sub.add_parser("merge")
    m.add_argument("parts", nargs="+")
    m.add_argument("--out", default="benchmarks/results/learning_efficiency")
    a = ap.parse_args()
    run(a) if a.cmd == "run" else merge(a)


if __name__ == "__main__":
    main()
