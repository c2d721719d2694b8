"""Ensemble uncertainty on the demo world (issue 14, deliverable 4).

Members: the pre-trained model fine-tuned on the world's towers (``kgml-grid finetune``)
with different seeds on all towers, and leave-one-tower-out (the same fine-tuning
without one tower). They are upscaled together with ``kgml-grid ensemble`` (the plan
prints the ensemble's cost first) over the whole grid and run, with the quadrant zones
of ``attribution_demo.py``: per-pixel annual mean and spread, and budgets with the
members' range.

Writes ``ensemble_demo.json`` / ``.md``, ``ensemble_demo_budget.csv`` (+ ``.json``, ``.png``)
``ensemble_demo_mean.png`` and ``ensemble_demo_spread.png`` into ``--results``.

Usage::

    python benchmarks/ensemble_demo.py --world W --model M --work DIR --results benchmarks/results \\
        [--seeds 0 1] [--leave-out SY-A01 SY-A02] [--finetune-minutes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))
from attribution_demo import _cpu_s, _machine, _quadrants


def spread_maps(sc: xr.Dataset, results: Path, title: str) -> list[Path]:
    """Maps of the ensemble mean and, on their own colour scale, the members' spread."""
    from kgml_grid.analysis.figures import field_maps

    ym = sc.mean("year")
    return [field_maps([("annual NEE", ym["nee_mean"]), ("annual Rh", ym["rh_mean"]), ("annual Ra", ym["ra_mean"])],
                       results / "ensemble_demo_mean.png", units="g C m-2 yr-1", title=f"{title}: members' mean",
                       ncol=3),
            field_maps([("std of annual NEE", ym["nee_std"]), ("std of annual Rh", ym["rh_std"]),
                        ("std of annual Ra", ym["ra_std"])],
                       results / "ensemble_demo_spread.png", units="g C m-2 yr-1",
                       title=f"{title}: members' spread (std)", ncol=3)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world", required=True)
    ap.add_argument("--model", required=True, help="the pre-trained checkpoint")
    ap.add_argument("--work", required=True, help="scratch folder (members, the ensemble store)")
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument(
        "--start", default=None, help="first day of the ensemble run (default: the cubes')"
    )
    ap.add_argument(
        "--end", default=None, help="last day of the ensemble run (default: the cubes')"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument(
        "--leave-out",
        nargs="*",
        default=["SY-A01", "SY-A04"],
        help="towers left out, one member each",
    )
    ap.add_argument(
        "--finetune-minutes", type=float, default=1.0, help="wall budget of each fine-tuning"
    )
    ap.add_argument("--holdout-years", type=int, default=2, help="each tower's last years held out")
    ap.add_argument(
        "--epochs-heads", type=int, default=5, help="heads-only epochs of each fine-tuning"
    )
    ap.add_argument("--epochs", type=int, default=8, help="all-modules epochs of each fine-tuning")
    a = ap.parse_args(argv)
    from kgml_grid.cli import main as kgml
    from kgml_grid.plan import make_plan

    t0, c0 = time.time(), _cpu_s()
    load_before = [round(x, 2) for x in os.getloadavg()]
    world, work, results = Path(a.world), Path(a.work), Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    towers = sorted((world / "towers").glob("FLX_*.csv"))
    site = {p.name.split("_")[1]: p for p in towers}
    meta = {s: world / "towers" / f"{s}_site.json" for s in site}
    jobs = [(f"seed{s}_all", s, sorted(site)) for s in a.seeds]
    jobs += [(f"loto_{t}", a.seeds[0], [s for s in sorted(site) if s != t]) for t in a.leave_out]
    members, commands, timings = [], [], {}
    for name, seed, sites in jobs:
        out = work / name
        cmd = ["finetune", "--model", a.model, "--fluxnet", *map(str, (site[s] for s in sites)),
               "--site-meta", *map(str, (meta[s] for s in sites)), "--out", str(out), "--seed", str(seed),
               "--epochs-heads", str(a.epochs_heads), "--epochs", str(a.epochs), "--holdout-years", str(a.holdout_years), "--max-minutes", str(a.finetune_minutes), "--threads", "1",
               "--quiet", "--overwrite"]  # fmt: skip
        t, c = time.time(), _cpu_s()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = kgml(cmd)
        if rc:
            raise SystemExit(f"finetune {name} failed ({rc})")
        timings[f"finetune_{name}"] = {
            "wall_s": round(time.time() - t, 1),
            "cpu_s": round(_cpu_s() - c, 1),
        }
        commands.append("kgml-grid " + " ".join(cmd))
        members.append(out)
    zones = _quadrants(
        make_plan(world / "catalog.yaml", members[0]).grid, work / "quadrants.geojson"
    )
    store = work / "ensemble.zarr"
    table = results / "ensemble_demo_budget.csv"
    cmd = ["ensemble", "--catalog", str(world / "catalog.yaml"), "--models", *map(str, members), "--out", str(store),
           "--zones", str(zones), "--table", str(table), "--chunks", "time=365", "--overwrite",
           *(["--start", a.start] if a.start else []), *(["--end", a.end] if a.end else [])]  # fmt: skip
    t, c = time.time(), _cpu_s()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = kgml(cmd)
    if rc:
        raise SystemExit(f"ensemble failed ({rc})")
    timings["ensemble"] = {"wall_s": round(time.time() - t, 1), "cpu_s": round(_cpu_s() - c, 1)}
    commands.append("kgml-grid " + " ".join(cmd))
    printed = buf.getvalue()
    st = xr.open_zarr(store, consolidated=False).load()
    first = int(st["year"].values[1])  # the first year warms the GRU state up
    sc = st.sel(year=slice(first, None))
    res: dict = {"world": str(world), "pretrained": str(Path(a.model).resolve()), "members": [m.name for m in members],
                 "member_definitions": {n: {"seed": s, "towers": ts} for n, s, ts in jobs},
                 "plan_printed": printed.split("annual")[0].strip(), "years_scored": [first, int(st["year"].values[-1])]}  # fmt: skip
    crop = np.isfinite(sc["rh_mean"].values)
    for v in ("ra", "rh", "nee"):
        mean, sd = sc[f"{v}_mean"].values[crop], sc[f"{v}_std"].values[crop]
        per_member = {
            str(m): float(np.nanmean(sc[f"{v}_annual"].sel(member=m).values[crop]))
            for m in sc["member"].values
        }
        res[v] = {"domain_mean_gCm2yr": float(mean.mean()), "pixel_std_mean_gCm2yr": float(sd.mean()),
                  "pixel_std_p90_gCm2yr": float(np.percentile(sd, 90)),
                  "pixel_cv_median": float(np.median(sd / np.abs(mean).clip(1e-6))),
                  "member_domain_means_gCm2yr": per_member}  # fmt: skip
    import pandas as pd

    b = pd.read_csv(table)
    ball = b[(b["crop"] == "all") & (b["year"] >= first)]
    res["budget"] = {"table": table.name, "chart": table.with_suffix(".png").name, "rows": len(b),
                     "quadrant_year_rows": [{k: (float(r[k]) if isinstance(r[k], (int, float, np.floating, np.integer)) else str(r[k]))
                                             for k in ("zone_name", "year", "nee_TgC", "nee_TgC_min", "nee_TgC_max",
                                                       "rh_gCm2", "rh_gCm2_min", "rh_gCm2_max")}
                                            for _, r in ball.iterrows()]}  # fmt: skip
    spread_maps(
        sc, results, f"{len(members)}-member ensemble, mean {first}-{int(st['year'].values[-1])}"
    )
    timings["total"] = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(_cpu_s() - c0, 1)}
    res.update(timings=timings, commands=commands, command="python " + " ".join(sys.argv), machine=_machine(),
               load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()])  # fmt: skip
    (results / "ensemble_demo.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# Ensemble on the demo world: {len(members)} members", "", "```", res["plan_printed"], "```", "",
             "| annual, crop pixels | ensemble mean | mean per-pixel std | p90 std | members' domain means |",
             "| --- | --: | --: | --: | --- |"]  # fmt: skip
    for v in ("ra", "rh", "nee"):
        r = res[v]
        lines.append(f"| {v} (g C m-2 yr-1) | {r['domain_mean_gCm2yr']:.1f} | {r['pixel_std_mean_gCm2yr']:.1f} | "
                     f"{r['pixel_std_p90_gCm2yr']:.1f} | " + ", ".join(f"{k} {x:.1f}" for k, x in r['member_domain_means_gCm2yr'].items()) + " |")  # fmt: skip
    lines += ["", f"Budget with the members' range: `{table.name}` (chart `{table.with_suffix('.png').name}`).", "",
              "Commands:", "", *[f"    {c}" for c in commands], "", f"Machine: {res['machine']}; load {load_before} -> "
              f"{res['load_after']}; timings {json.dumps(timings)}", ""]  # fmt: skip
    (results / "ensemble_demo.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
