"""Evaluation: R2, RMSE and bias on held-out pixels, years and tower years.

The report is JSON (machine-readable, committed with results) plus PNG figures
(predicted vs observed, mean seasonal cycles).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgml_grid.model import DAILY_TARGETS
from kgml_grid.samples import Series, Split, grid_series
from kgml_grid.train import I_GPP, I_NEE, I_RA, I_RH, load_for_eval, load_towers, predict


def metrics(pred: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """R2 (1 - SSE/SST), RMSE, bias (mean pred - obs) and n over finite pairs."""
    pred = np.asarray(pred, dtype="float64").ravel()
    obs = np.asarray(obs, dtype="float64").ravel()
    ok = np.isfinite(pred) & np.isfinite(obs)
    n = int(ok.sum())
    if n < 2:
        return {"r2": float("nan"), "rmse": float("nan"), "bias": float("nan"), "n": n}
    p, o = pred[ok], obs[ok]
    sse = float(((p - o) ** 2).sum())
    sst = float(((o - o.mean()) ** 2).sum())
    return {
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
        "rmse": float(np.sqrt(sse / n)),
        "bias": float((p - o).mean()),
        "n": n,
    }


def _fluxes(daily: np.ndarray) -> dict[str, np.ndarray]:
    ra, rh = daily[..., I_RA], daily[..., I_RH]
    return {"ra": ra, "rh": rh, "reco": ra + rh, "nee": daily[..., I_NEE], "gpp": daily[..., I_GPP]}


def mass_balance_residual(daily: np.ndarray, gpp_input: np.ndarray | None = None) -> dict[str, float]:
    """Median |GPP - Reco + NEE| as a fraction of Reco.

    ``model_gpp``: against the model's own GPP estimate (what the constraint enforces);
    ``input_gpp``: against the (gap-filled, noisy) input GPP, for reference.
    """
    f = _fluxes(daily)
    reco = np.abs(f["reco"])
    ok = reco > 0.05  # relative residual is meaningless where Reco ~ 0
    out = {"model_gpp": float(np.median(np.abs(f["gpp"] - f["reco"] + f["nee"])[ok] / reco[ok]))}
    if gpp_input is not None:
        out["input_gpp"] = float(np.median(np.abs(gpp_input - f["reco"] + f["nee"])[ok] / reco[ok]))
    return out


def _year_mask(time: pd.DatetimeIndex, years: Sequence[int]) -> np.ndarray:
    return np.isin(np.asarray(time.year), list(years))


def evaluate_grid(model_dir: str | Path, catalog: str | Path, *, split: Split | None = None,
                  max_pixels: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Metrics on the held-out pixels of the checkpoint's split (all years and held-out years)."""
    from kgml_grid.catalog import open_catalog
    from kgml_grid.features import FEATURE_INDEX

    ck = load_for_eval(model_dir)
    if split is None:
        sd = ck.provenance.get("split")
        if not sd:
            raise ValueError(f"{model_dir}: the checkpoint records no pixel split; pass one explicitly")
        split = Split.from_dict(sd)
    layers = open_catalog(catalog).open_all()
    pix = split.test_pixels[:max_pixels] if max_pixels else split.test_pixels
    series = grid_series(layers, pix)
    daily, yld = predict(ck.model, ck.normalizer, series)
    pred = _fluxes(daily)
    truth = _fluxes(series.y)
    spin = series.time < pd.Timestamp(f"{series.time[0].year}-01-01") + pd.Timedelta(days=365)
    years_all = sorted(set(series.time.year))
    report: dict[str, Any] = {"pixels": len(pix), "years": years_all, "holdout_years": split.holdout_years}
    for label, mask in (("heldout_pixels_all_years", ~spin),
                        ("heldout_pixels_heldout_years", _year_mask(series.time, split.holdout_years))):  # fmt: skip
        report[label] = {v: metrics(pred[v][:, mask], truth[v][:, mask]) for v in pred}
        report[label]["yield"] = metrics(yld[:, mask], series.yld[:, mask])
    gin = series.x[..., FEATURE_INDEX["gpp_sat"]]
    report["mass_balance_residual_median_frac_of_reco"] = mass_balance_residual(daily[:, ~spin], gin[:, ~spin])
    truth_daily = series.y[:, ~spin]
    report["truth_residual_vs_input_gpp"] = mass_balance_residual(truth_daily, gin[:, ~spin])["input_gpp"]
    return report, {"series": series, "daily": daily, "yield": yld}


def evaluate_towers(model_dir: str | Path, fluxnet: Sequence[str | Path], *, site_meta: str | Path | None = None,
                    holdout_years: Sequence[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Reco and NEE metrics per tower on its held-out years (from the fine-tuning split)."""
    from kgml_grid.samples import tower_series
    from kgml_grid.train import tower_years

    ck = load_for_eval(model_dir)
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for path in fluxnet:
        ds = load_towers([path], site_meta)[0]
        s = tower_series([ds])
        recorded = (ck.provenance.get("tower_split") or {}).get("holdout_years")
        years = list(holdout_years or recorded or tower_years(s, 2, 1)[2])
        daily, _ = predict(ck.model, ck.normalizer, s)
        m = _year_mask(s.time, years)
        f = _fluxes(daily)
        sid = s.names[0]
        out[sid] = {
            "holdout_years": years,
            "reco": metrics(f["reco"][0, m], s.reco[0, m]),  # type: ignore[index]
            "nee": metrics(f["nee"][0, m], s.y[0, m, I_NEE]),
            "gpp": metrics(f["gpp"][0, m], s.y[0, m, I_GPP]),
        }
        extra[sid] = {"series": s, "daily": daily, "mask": m}
    return out, extra


def _plots(out: Path, grid: Mapping[str, Any] | None, towers: Mapping[str, Any] | None) -> list[Path]:
    from kgml_grid.plots import _plt

    plt = _plt()
    paths = []
    if grid:
        s: Series = grid["series"]
        pred, truth = _fluxes(grid["daily"]), _fluxes(s.y)
        fig, axes = plt.subplots(2, 4, figsize=(16, 7.5), constrained_layout=True)
        rng = np.random.default_rng(0)
        for k, v in enumerate(("ra", "rh", "reco", "nee")):
            ax = axes[0, k]
            p, o = pred[v].ravel(), truth[v].ravel()
            idx = rng.choice(p.size, size=min(20000, p.size), replace=False)
            ax.plot(o[idx], p[idx], ",", alpha=0.3)
            lo, hi = np.nanmin(o[idx]), np.nanmax(o[idx])
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            r2 = metrics(p, o)["r2"]
            ax.set_title(f"{v}: R2 = {r2:.3f} (held-out pixels)", fontsize=10)
            ax.set_xlabel("truth (g C m-2 d-1)")
            ax.set_ylabel("predicted")
            doy = np.asarray(s.time.day_of_year)
            ax2 = axes[1, k]
            for lab, arr, st in (("truth", truth[v], "-"), ("predicted", pred[v], "--")):
                clim = pd.Series(np.nanmean(arr, axis=0)).groupby(doy).mean()
                ax2.plot(clim.index, clim.values, st, label=lab)
            ax2.set_title(f"mean seasonal cycle of {v}", fontsize=10)
            ax2.set_xlabel("day of year")
            ax2.legend(fontsize=8)
        p = out / "grid_pred_vs_truth.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    for sid, t in (towers or {}).items():
        s, daily, m = t["series"], t["daily"], t["mask"]
        f = _fluxes(daily)
        fig, axes = plt.subplots(2, 1, figsize=(12, 6), constrained_layout=True, sharex=True)
        for ax, v, obs in ((axes[0], "reco", s.reco[0]), (axes[1], "nee", s.y[0, :, I_NEE])):
            ax.plot(s.time, obs, ".", ms=2, color="0.5", label="observed")
            ax.plot(s.time, f[v][0], lw=0.8, label="model")
            if v == "reco":
                ax.plot(s.time, f["rh"][0], lw=0.6, label="model Rh")
            ax.axvspan(s.time[m][0], s.time[m][-1], color="gold", alpha=0.15, label="held-out years")
            ax.set_ylabel(f"{v} (g C m-2 d-1)")
            ax.legend(fontsize=8, ncol=4)
        axes[0].set_title(f"tower {sid}")
        p = out / f"tower_{sid}.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths


def evaluate(
    model_dir: str | Path,
    out: str | Path,
    *,
    catalog: str | Path | None = None,
    fluxnet: Sequence[str | Path] = (),
    site_meta: str | Path | None = None,
    baseline: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a catalog's held-out pixels and/or towers; write a report.

    ``baseline`` (another checkpoint, e.g. the pre-trained model) is evaluated on the
    same towers, so the report shows what fine-tuning changed.

    ``out`` (the report folder) is checked before anything is computed
    (:func:`kgml_grid.outputs.check_target`): it must not be, contain or lie inside an
    input; an existing one needs ``overwrite`` and is replaced only when it is a report
    kgml_grid wrote.
    """
    from kgml_grid import outputs

    t0 = time.perf_counter()
    inputs = [*outputs.input_paths("the checkpoint", [model_dir, baseline]),
              *outputs.input_paths("the FLUXNET file", fluxnet), *outputs.input_paths("the site metadata", [site_meta])]  # fmt: skip
    if catalog is not None:
        inputs += outputs.catalog_inputs(catalog)
    outputs.check_target(out, kind="report", inputs=inputs, overwrite=overwrite)
    report: dict[str, Any] = {"model": str(Path(model_dir).resolve())}
    grid_extra = tower_extra = None
    if catalog is not None:
        report["grid"], grid_extra = evaluate_grid(model_dir, catalog)
    if fluxnet:
        report["towers"], tower_extra = evaluate_towers(model_dir, fluxnet, site_meta=site_meta)
        if baseline is not None:
            years = {sid: r["holdout_years"] for sid, r in report["towers"].items()}
            base, _ = evaluate_towers(baseline, fluxnet, site_meta=site_meta,
                                      holdout_years=next(iter(years.values())))  # fmt: skip
            report["towers_baseline"] = {"model": str(Path(baseline).resolve()), **base}
    out = outputs.prepare_target(out, kind="report", inputs=inputs, overwrite=overwrite)
    report["figures"] = [str(p) for p in _plots(out, grid_extra, tower_extra)]
    report["seconds"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """A short human-readable table of a report."""
    lines = []
    g = report.get("grid")
    if g:
        for label in ("heldout_pixels_all_years", "heldout_pixels_heldout_years"):
            lines.append(f"grid, {label.replace('_', ' ')} ({g['pixels']} pixels):")
            for v in ("ra", "rh", "reco", "nee", "gpp", "yield"):
                m = g[label][v]
                lines.append(f"  {v:<6} R2 {m['r2']:.3f}  RMSE {m['rmse']:.3f}  bias {m['bias']:+.3f}")
        mb = g["mass_balance_residual_median_frac_of_reco"]
        lines.append(
            f"  mass balance: median |GPP - Reco + NEE| / Reco = {mb['model_gpp']:.4f} (model GPP), "
            f"{mb.get('input_gpp', float('nan')):.4f} (input GPP; the truth itself: "
            f"{g['truth_residual_vs_input_gpp']:.4f})"
        )
    for key, title in (("towers", "towers"), ("towers_baseline", "towers, before fine-tuning")):
        for sid, r in (report.get(key) or {}).items():
            if sid == "model":
                continue
            lines.append(f"{title}: {sid}, held-out years {r['holdout_years']}:")
            for v in ("reco", "nee"):
                m = r[v]
                lines.append(f"  {v:<6} R2 {m['r2']:.3f}  RMSE {m['rmse']:.3f}  bias {m['bias']:+.3f}")
    return "\n".join(lines)


__all__ = ["DAILY_TARGETS", "evaluate", "evaluate_grid", "evaluate_towers", "format_report", "metrics"]
