"""Does the attribution mean something? Model vs simulator on the demo world (issue 14).

The trained model's sensitivities of annual Rh and Ra to +1 degC air temperature and to
SOC x 1.1 (the upscaling blocks run again on perturbed inputs,
:func:`kgml_grid.lazy.predict_plan` with ``perturb``, minus the upscaled store of the same
plan, which equals the unperturbed prediction) are compared with the simulator's own
(:func:`kgml_grid.synth.rerun.annual_truth`, the same random streams, the same
perturbation) over the crop pixel-years: R2 (simulator as reference), bias, correlation,
per pixel-year and for the multi-year mean map.

Like for like: the model's +1 degC changes its air-temperature input only (VPD,
shortwave, precipitation and the satellite-GPP input are held), so the reference is the
simulator rerun with ``hold_growth=True``: +1 degC on the air temperature it sees, with
the baseline's phenology and GPP imposed day by day (temperature acts through
respiration and evaporation only). The simulator's *full* response (its own phenology and
GPP change too) is reported next to it. SOC x 1.1 needs no such care: GPP does not depend
on the SOC pool in the simulator.

The dominant factor of the interannual Ra/Rh anomalies (standardised regression on the
annual drivers) is computed for the model's annual fluxes and for the truth's, and their
agreement is the share of crop pixels with the same factor. The upscaled store (serial
executor) gets its regional budget by four quadrant "counties", every year.

Writes ``attribution_demo.json`` / ``.md``, ``attribution_demo_sensitivity_tair.png`` (Rh),
``attribution_demo_sensitivity_tair_ra.png``, ``attribution_demo_sensitivity_soc.png``,
``attribution_demo_dominant.png``, ``budget_demo.csv`` (+ ``.json``), ``budget_demo.png`` and
``budget_demo_zones.geojson`` into ``--results``.

Usage::

    python benchmarks/attribution_demo.py --world W --model M --work DIR --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import xarray as xr


def _score(model: np.ndarray, sim: np.ndarray) -> dict[str, float | int | None]:
    """R2 with the simulator as reference, bias (model - simulator), correlation."""
    ok = np.isfinite(model) & np.isfinite(sim)
    m, s = model[ok].astype("float64"), sim[ok].astype("float64")
    ss_res = float(((m - s) ** 2).sum())
    ss_tot = float(((s - s.mean()) ** 2).sum())
    varies = ss_tot > 0 and float(m.std()) > 0
    # null (JSON) where the simulator does not respond at all (Ra does not depend on SOC)
    return {"n": int(ok.sum()), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "bias": float((m - s).mean()), "corr": float(np.corrcoef(m, s)[0, 1]) if varies else None,
            "model_mean": float(m.mean()), "simulator_mean": float(s.mean()),
            "model_sd": float(m.std()), "simulator_sd": float(s.std())}  # fmt: skip


def _quadrants(grid, path: Path) -> Path:
    w, s, e, n = grid.bounds
    mx, my = (w + e) / 2, (s + n) / 2
    boxes = {"NW": (w, my, mx, n), "NE": (mx, my, e, n), "SW": (w, s, mx, my), "SE": (mx, s, e, my)}
    feats = [{"type": "Feature", "properties": {"NAME": k},
              "geometry": {"type": "Polygon", "coordinates": [[[a, b], [c, b], [c, d], [a, d], [a, b]]]}}
             for k, (a, b, c, d) in boxes.items()]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": grid.crs}},
                                "features": feats}, indent=1))  # fmt: skip
    return path


def _cpu_s() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
            "?",
        )
    except OSError:
        model = platform.processor() or platform.machine()
    return f"{platform.node()}: {model}, {os.cpu_count()} cores (shared with other jobs), no GPU"


def _md(res: dict) -> str:
    s = res["sensitivity"]
    rows = [("Rh per +1 degC, like for like (GPP held)", "rh_tair_held"),
            ("Rh per +1 degC, simulator's full response", "rh_tair_full"),
            ("Rh per SOC x 1.1", "rh_soc"),
            ("Ra per +1 degC, like for like (GPP held)", "ra_tair_held"),
            ("Ra per +1 degC, simulator's full response", "ra_tair_full")]  # fmt: skip

    def f(x, fmt="{:+.1f}"):
        return "n/a" if x is None else fmt.format(x)

    lines = [f"# Attribution validation, model vs simulator: {res['domain']} of {Path(res['world']).name}", "",
             f"Model `{res['model']}`; years scored {res['years_scored'][0]}-{res['years_scored'][1]}, "
             f"{res['crop_pixels']} crop pixels. Annual responses in g C m-2 yr-1 (mean over crop "
             "pixel-years). R2 with the simulator as reference; the map columns are for the "
             "multi-year mean per pixel.", "",
             "| annual response | model | simulator | bias | R2 (r) pixel-years | R2 (r) mean map |",
             "| --- | --: | --: | --: | --: | --: |"]  # fmt: skip
    for label, k in rows:
        a, b = s[k], s[k + "_map"]
        lines.append(f"| {label} | {f(a['model_mean'])} | {f(a['simulator_mean'])} | {f(a['bias'])} | "
                     f"{f(a['r2'], '{:.2f}')} ({f(a['corr'], '{:.2f}')}) | {f(b['r2'], '{:.2f}')} ({f(b['corr'], '{:.2f}')}) |")  # fmt: skip
    d = res["dominant_factor"]
    if not d:
        return "\n".join([*lines, "", "Too few years for the interannual attribution.", ""])
    lines += ["", f"Dominant factor of interannual anomalies, agreement with the truth's: Ra "
              f"{100 * d['ra']['agreement_share']:.1f} %, Rh {100 * d['rh']['agreement_share']:.1f} % of "
              f"{d['rh']['pixels']} crop pixels.", "", "Command: `" + res["command"] + "`", "",
              f"Machine: {res['machine']}; load {res['load_before']} -> {res['load_after']}.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True, help="scratch folder (the upscaled store)")
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--bbox-px", type=int, nargs=4, default=None, metavar=("R0", "R1", "C0", "C1"),
                    help="window rows/columns of the world grid (default: the whole grid)")  # fmt: skip
    ap.add_argument("--start", default=None, help="default: the cubes' first day")
    ap.add_argument("--end", default=None, help="default: the cubes' last day")
    ap.add_argument("--score-from", type=int, default=None,
                    help="first year scored (default: the run's second; the first warms up the GRU state)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=2, help="Dask threads of the perturbed runs")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from kgml_grid.analysis.attribution import (
        INTERANNUAL_DRIVERS,
        annual_drivers,
        interannual_attribution,
    )
    from kgml_grid.analysis.budgets import period_totals
    from kgml_grid.analysis.figures import categorical_map, field_maps
    from kgml_grid.analysis_commands import run_budget
    from kgml_grid.execute import SerialExecutor
    from kgml_grid.lazy import predict_plan
    from kgml_grid.plan import make_plan
    from kgml_grid.synth.rerun import annual_truth

    t0, c0 = time.time(), _cpu_s()
    load_before = [round(x, 2) for x in os.getloadavg()]
    world = Path(a.world)
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    cat = world / "catalog.yaml"
    truth = xr.open_zarr(world / "truth.zarr", consolidated=False)
    ny, nx = truth.sizes["y"], truth.sizes["x"]
    r0, r1, c0_, c1 = a.bbox_px or (0, ny, 0, nx)
    gx, gy = truth["x"].values, truth["y"].values
    bbox = (
        None
        if a.bbox_px is None
        else (float(gx[c0_]), float(gy[r1 - 1]), float(gx[c1 - 1]), float(gy[r0]))
    )
    plan = make_plan(cat, a.model, start=a.start, end=a.end, bbox=bbox, chunks="time=365")
    years = list(plan.years)
    first = a.score_from or years[1]
    scored = slice(first, years[-1])
    timings: dict[str, float] = {}

    # the upscaled store: the unperturbed run (and the budget below)
    t = time.time()
    out = Path(a.work) / "upscaled.zarr"
    SerialExecutor().execute(plan, out, overwrite=True)
    timings["upscale_serial_s"] = round(time.time() - t, 1)
    store = xr.open_zarr(out, consolidated=False)
    with dask.config.set(scheduler="threads", num_workers=a.workers):
        base = period_totals(store, ["ra", "rh"], "year").compute()
        t = time.time()
        pert = {d: period_totals(predict_plan(plan, perturb={d: op}), ["ra", "rh"], "year").compute()
                for d, op in (("tair", ("add", 1.0)), ("soc", ("mul", 1.1)))}  # fmt: skip
        timings["model_perturbed_runs_s"] = round(time.time() - t, 1)
    t = time.time()
    win = {"y": slice(r0, r1), "x": slice(c0_, c1)}
    yr = (years[0], years[-1])
    sim0 = annual_truth(world, years=yr).isel(win)
    sim = {"tair_held": annual_truth(world, tair_offset=1.0, hold_growth=True, years=yr).isel(win),
           "tair_full": annual_truth(world, tair_offset=1.0, years=yr).isel(win),
           "soc": annual_truth(world, soc_factor=1.1, years=yr).isel(win)}  # fmt: skip
    timings["simulator_reruns_s"] = round(time.time() - t, 1)

    crop = np.isfinite(base["rh"].sel(year=scored).values)
    res: dict = {"world": str(world), "model": str(Path(a.model).resolve()),
                 "domain": "whole demo grid" if a.bbox_px is None else f"window rows {r0}:{r1}, cols {c0_}:{c1}",
                 "window_px": [r0, r1, c0_, c1], "years_run": [years[0], years[-1]],
                 "years_scored": [first, years[-1]], "crop_pixels": int(crop.any(axis=0).sum()),
                 "definitions": {
                     "model": "perturbed prediction (tair + 1 degC, or soil soc x 1.1, every other input held, "
                              "satellite GPP included) minus the upscaled store, annual sums",
                     "tair_held": "simulator rerun, +1 degC on its air temperature with the baseline's phenology "
                                  "(growing degree days) and GPP imposed on every day (synth.rerun hold_growth): "
                                  "the like-for-like reference",
                     "tair_full": "simulator rerun, +1 degC with its own phenology and GPP (season length, "
                                  "harvest date, biomass change too)",
                     "soc": "simulator rerun with the initial SOC pool x 1.1 (GPP does not depend on it)"},
                 "sensitivity": {}}  # fmt: skip
    # the simulator's Rh response split into residue (litter) and SOC decomposition
    res["simulator_rh_split"] = {
        k: {part: float(np.nanmean(np.where(crop, (ds[part] - sim0[part]).sel(year=scored).values, np.nan)))
            for part in ("rh_residue", "rh_soc")} for k, ds in sim.items()}  # fmt: skip
    res["simulator_rh_split"]["base"] = {
        part: float(np.nanmean(np.where(crop, sim0[part].sel(year=scored).values, np.nan)))
        for part in ("rh_residue", "rh_soc")}  # fmt: skip
    m_sens = {
        d: {v: (pert[d][v] - base[v]).sel(year=scored).values for v in ("ra", "rh")} for d in pert
    }
    s_sens = {k: {v: np.where(crop, (ds[v] - sim0[v]).sel(year=scored).values, np.nan) for v in ("ra", "rh")}
              for k, ds in sim.items()}  # fmt: skip
    for v in ("rh", "ra"):
        for k in ("tair_held", "tair_full", "soc"):
            m = m_sens["tair" if k.startswith("tair") else "soc"][v]
            s = s_sens[k][v]
            res["sensitivity"][f"{v}_{k}"] = _score(m, s)
            with warnings.catch_warnings():  # all-NaN pixels (never crop) give NaN means
                warnings.simplefilter("ignore", RuntimeWarning)
                res["sensitivity"][f"{v}_{k}_map"] = _score(
                    np.nanmean(m, axis=0), np.nanmean(s, axis=0)
                )
    like = base["rh"].sel(year=scored).mean("year")

    def panel(name: str, arr: np.ndarray) -> tuple[str, xr.DataArray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return name, like.copy(data=np.nanmean(arr, axis=0))

    span = f"mean {first}-{years[-1]}"
    field_maps([panel("model", m_sens["tair"]["rh"]), panel("simulator, GPP held (like for like)", s_sens["tair_held"]["rh"]),
                panel("simulator, full response", s_sens["tair_full"]["rh"])],
               results / "attribution_demo_sensitivity_tair.png", units="g C m-2 yr-1 per degC",
               title=f"annual Rh response to +1 degC, {span}", diverging=True, ncol=3)  # fmt: skip
    field_maps([panel("model", m_sens["tair"]["ra"]), panel("simulator, GPP held (like for like)", s_sens["tair_held"]["ra"]),
                panel("simulator, full response", s_sens["tair_full"]["ra"])],
               results / "attribution_demo_sensitivity_tair_ra.png", units="g C m-2 yr-1 per degC",
               title=f"annual Ra response to +1 degC, {span}", diverging=True, ncol=3)  # fmt: skip
    field_maps([panel("model", m_sens["soc"]["rh"]), panel("simulator", s_sens["soc"]["rh"])],
               results / "attribution_demo_sensitivity_soc.png", units="g C m-2 yr-1 per +10 % SOC",
               title=f"annual Rh response to SOC x 1.1, {span}", diverging=True, ncol=2)  # fmt: skip

    # dominant factor of interannual variation: model's annual fluxes vs the truth's
    drv = annual_drivers(plan, INTERANNUAL_DRIVERS).sel(year=scored)
    dom: dict = {}
    n_years = years[-1] - first + 1
    for v in ("ra", "rh") if n_years >= len(INTERANNUAL_DRIVERS) + 2 else ():
        att_m = interannual_attribution(
            base[v].sel(year=scored).assign_coords(y=drv["y"].values, x=drv["x"].values), drv
        )
        truth_v = (
            sim0[v].sel(year=scored).where(crop).assign_coords(y=drv["y"].values, x=drv["x"].values)
        )
        att_s = interannual_attribution(truth_v, drv)
        dm, ds_ = att_m["dominant"].values, att_s["dominant"].values
        both = (dm >= 0) & (ds_ >= 0)
        names = list(att_m["driver"].values)
        dom[v] = {"agreement_share": float((dm == ds_)[both].mean()), "pixels": int(both.sum()),
                  "simulator_dominant_shares": {n: float((ds_[both] == i).mean()) for i, n in enumerate(names)},
                  "model_dominant_shares": {n: float((dm[both] == i).mean()) for i, n in enumerate(names)},
                  "model_median_r2": float(np.nanmedian(att_m["r2"].values)),
                  "simulator_median_r2": float(np.nanmedian(att_s["r2"].values))}  # fmt: skip
        if v == "rh":
            categorical_map([("model Rh", att_m["dominant"]), ("simulator (truth) Rh", att_s["dominant"])], names,
                            results / "attribution_demo_dominant.png",
                            title=f"dominant factor of interannual Rh, {first}-{years[-1]}")  # fmt: skip
    res["dominant_factor"] = dom
    res["interannual_drivers"] = list(INTERANNUAL_DRIVERS)

    # the upscaled store's budget by quadrants, every year of the run
    t = time.time()
    zones = _quadrants(plan.grid, results / "budget_demo_zones.geojson")
    b = run_budget(out, zones, results / "budget_demo.csv", overwrite=True)
    timings["budget_s"] = round(time.time() - t, 1)
    tab = b["frame"]
    allc = tab[tab["crop"] == "all"]
    res["budget"] = {"table": "budget_demo.csv", "chart": "budget_demo.png", "rows": b["rows"],
                     "store": str(out), "executor": "SerialExecutor (kgml-grid upscale --cluster serial)",
                     "domain_TgC_per_year": {str(y): {k: float(allc[allc["year"] == y][f"{k}_TgC"].sum())
                                                      for k in ("ra", "rh", "nee")} for y in sorted(allc["year"].unique())}}  # fmt: skip
    timings["total_wall_s"] = round(time.time() - t0, 1)
    timings["total_cpu_s"] = round(_cpu_s() - c0, 1)
    res["timings"] = timings
    res["command"] = "python " + " ".join(sys.argv)
    res["machine"] = _machine()
    res["load_before"], res["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
    res["caveats"] = [
        "interannual regressions: few years, 4 drivers: R2 is inflated by the short series",
        "the model's unperturbed annual fluxes come from the upscaled store of the same plan "
        "(predict == store to 1e-6, tests/test_lazy.py); the perturbed ones from predict_plan(perturb=...)",
    ]
    (results / "attribution_demo.json").write_text(json.dumps(res, indent=1) + "\n")
    (results / "attribution_demo.md").write_text(_md(res))
    print(json.dumps(res["sensitivity"], indent=1))
    print(json.dumps(res["dominant_factor"], indent=1), timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
