"""Evaluation: R2, RMSE and bias on held-out pixels, years and tower years.

Towers are evaluated one by one, each on its own held-out years (those its fine-tuning
recorded, else the last two full years of its record), and reported per site. A FLUXNET
monthly (MM) file checks the monthly means of the model's daily predictions at its site
(:func:`evaluate_monthly`; the site's daily file supplies the inputs).

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

from kgml_grid import schema
from kgml_grid.model import DAILY_TARGETS
from kgml_grid.samples import Series, Split, grid_series
from kgml_grid.train import (
    I_GPP,
    I_NEE,
    I_RA,
    I_RH,
    load_for_eval,
    load_towers,
    predict,
    site_years,
)


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


def mass_balance_residual(
    daily: np.ndarray, gpp_input: np.ndarray | None = None, *, gpp_true: np.ndarray | None = None
) -> dict[str, float]:
    """Median |GPP - Reco + NEE| as a fraction of Reco.

    ``model_gpp``: against the model's own GPP estimate (what the constraint enforces);
    ``input_gpp``: against the (gap-filled, noisy) input GPP, for reference;
    ``true_gpp``: against the true GPP (synthetic worlds), how well the predicted Reco and
    NEE balance against the carbon actually taken up.
    """
    f = _fluxes(daily)
    reco = np.abs(f["reco"])
    ok = reco > 0.05  # relative residual is meaningless where Reco ~ 0
    out = {"model_gpp": float(np.median(np.abs(f["gpp"] - f["reco"] + f["nee"])[ok] / reco[ok]))}
    if gpp_input is not None:
        out["input_gpp"] = float(np.median(np.abs(gpp_input - f["reco"] + f["nee"])[ok] / reco[ok]))
    if gpp_true is not None:
        out["true_gpp"] = float(np.median(np.abs(gpp_true - f["reco"] + f["nee"])[ok] / reco[ok]))
    return out


def _year_mask(time: pd.DatetimeIndex, years: Sequence[int]) -> np.ndarray:
    return np.isin(np.asarray(time.year), list(years))


def grid_report(
    model: Any, norm: Any, series: Series, split: Split
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The report of :func:`evaluate_grid` for a model in memory on a held-out pixel series.

    Runs the whole series from a zero state (:func:`kgml_grid.train.predict`); the first
    365 days are spin-up and left out. Returns the report, the daily predictions and the
    yields.
    """
    from kgml_grid.features import FEATURE_INDEX

    daily, yld = predict(model, norm, series)
    pred = _fluxes(daily)
    truth = _fluxes(series.y)
    spin = series.time < pd.Timestamp(f"{series.time[0].year}-01-01") + pd.Timedelta(days=365)
    years_all = sorted(set(series.time.year))
    report: dict[str, Any] = {
        "pixels": series.n,
        "years": years_all,
        "holdout_years": split.holdout_years,
        "feature_set": schema.feature_set_name(norm.features),
    }
    for label, mask in (("heldout_pixels_all_years", ~spin),
                        ("heldout_pixels_heldout_years", _year_mask(series.time, split.holdout_years))):  # fmt: skip
        report[label] = {v: metrics(pred[v][:, mask], truth[v][:, mask]) for v in pred}
        report[label]["yield"] = metrics(yld[:, mask], series.yld[:, mask])
    gin = series.x[..., FEATURE_INDEX["gpp_sat"]]
    report["mass_balance_residual_median_frac_of_reco"] = mass_balance_residual(
        daily[:, ~spin], gin[:, ~spin], gpp_true=series.y[:, ~spin, I_GPP]
    )
    truth_daily = series.y[:, ~spin]
    report["truth_residual_vs_input_gpp"] = mass_balance_residual(truth_daily, gin[:, ~spin])[
        "input_gpp"
    ]
    return report, daily, yld


def evaluate_grid(model_dir: str | Path, catalog: str | Path, *, split: Split | None = None,
                  max_pixels: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Metrics on the held-out pixels of the checkpoint's split (all years and held-out years)."""
    from kgml_grid.catalog import open_catalog

    ck = load_for_eval(model_dir)
    if split is None:
        sd = ck.provenance.get("split")
        if not sd:
            raise ValueError(
                f"{model_dir}: the checkpoint records no pixel split; pass one explicitly"
            )
        split = Split.from_dict(sd)
    layers = open_catalog(catalog).open_all()
    pix = split.test_pixels[:max_pixels] if max_pixels else split.test_pixels
    series = grid_series(layers, pix, features=ck.features)
    report, daily, yld = grid_report(ck.model, ck.normalizer, series, split)
    return report, {"series": series, "daily": daily, "yield": yld}


def _holdout_for(ck: Any, sid: str, s: Series, given: Any) -> list[int]:
    """Held-out years of tower ``sid``: given (per site or for all), else those its
    fine-tuning recorded, else the last two full years of its record."""
    if isinstance(given, Mapping):
        if sid in given:
            return list(given[sid])
    elif given:
        return list(given)
    split = ck.provenance.get("tower_split") or {}
    per_site = split.get("per_site") or {}
    if sid in per_site:
        return list(per_site[sid]["holdout_years"])
    if split.get("holdout_years") and not per_site:  # checkpoints before per-site splits
        return list(split["holdout_years"])
    return site_years(s, 0, 2, 1)[2]


def evaluate_towers(model_dir: str | Path, fluxnet: Sequence[str | Path], *, site_meta: Any = None,
                    holdout_years: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
                    catalog: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Reco, NEE and GPP metrics per tower on its held-out years.

    Parameters
    ----------
    fluxnet : sequence of path-like
        FLUXNET daily files, zips or folders of them.
    holdout_years : mapping site -> years, or years, optional
        Default: per site, the years the checkpoint's fine-tuning held out for it, else
        the last two full years of the tower's record.
    catalog : path-like, optional
        Satellite cube sampled at the towers for the LAI / soil-moisture additions.
    """
    from kgml_grid.samples import tower_series

    ck = load_for_eval(model_dir)
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for ds in load_towers(fluxnet, site_meta, catalog=catalog, features=ck.features):
        s = tower_series([ds], features=ck.features)
        sid = s.names[0]
        years = _holdout_for(ck, sid, s, holdout_years)
        daily, _ = predict(ck.model, ck.normalizer, s)
        m = _year_mask(s.time, years)
        f = _fluxes(daily)
        out[sid] = {
            "holdout_years": years,
            "reco": metrics(f["reco"][0, m], s.reco[0, m]),  # type: ignore[index]
            "nee": metrics(f["nee"][0, m], s.y[0, m, I_NEE]),
            "gpp": metrics(f["gpp"][0, m], s.y[0, m, I_GPP]),
            "feature_sources": s.sources[0] if s.sources else {},
        }
        extra[sid] = {"series": s, "daily": daily, "mask": m}
    return out, extra


def _month_index(time: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return time.to_period("M").to_timestamp()


def monthly_means(
    time: pd.DatetimeIndex, values: np.ndarray, *, span: tuple[int, int] | None = None
) -> pd.Series:
    """Monthly means of a daily series, only for months whose every day is in ``span``
    (the tower's record; default all of ``time``) and has a value."""
    first, last = span or (0, len(time) - 1)
    t, v = time[first : last + 1], np.asarray(values, dtype="float64")[first : last + 1]
    df = pd.DataFrame({"v": v}, index=t)
    g = df.groupby(_month_index(t))["v"]
    mean, n = g.mean(), g.count()
    days = pd.Series(mean.index.days_in_month, index=mean.index)
    return mean[n == days]


def evaluate_monthly(model_dir: str | Path, monthly: Sequence[str | Path], fluxnet: Sequence[str | Path], *,
                     site_meta: Any = None, catalog: str | Path | None = None,
                     holdout_years: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Monthly means of the model's daily predictions at a site vs its FLUXNET MM file.

    The daily inputs come from the site's daily file among ``fluxnet``; only months the
    daily record covers completely are compared. Metrics of NEE, Reco and GPP over all
    such months and over those of the site's held-out years; ``daily_file_vs_mm``
    compares the daily file's own monthly means with the MM file (how well the two files
    of a site agree; the model cannot do better than that).

    Raises
    ------
    ValueError
        When an MM file's site has no daily file among ``fluxnet``, or the two share no
        complete month.
    """
    from kgml_grid.fluxnet import read_fluxnet_mm
    from kgml_grid.samples import tower_series

    ck = load_for_eval(model_dir)
    towers = {str(ds.attrs["site_id"]): ds for ds in load_towers(fluxnet, site_meta, catalog=catalog,
                                                                  features=ck.features)}  # fmt: skip
    out: dict[str, Any] = {}
    for path in monthly:
        mm = read_fluxnet_mm(path)
        sid = str(mm.attrs["site_id"])
        if sid not in towers:
            raise ValueError(
                f"--monthly {Path(path).name}: site {sid} has no daily file among --fluxnet "
                f"({', '.join(towers) or 'none'}); the model's daily predictions need the site's "
                "daily inputs (its DD file)"
            )
        s = tower_series([towers[sid]], features=ck.features)
        daily, _ = predict(ck.model, ck.normalizer, s)
        f = _fluxes(daily)
        years = _holdout_for(ck, sid, s, holdout_years)
        obs_mm = {
            v: pd.Series(mm[v].values, index=pd.DatetimeIndex(mm["time"].values))
            for v in ("nee", "reco", "gpp")
        }
        obs_dd = {"nee": s.y[0, :, I_NEE], "reco": s.reco[0], "gpp": s.y[0, :, I_GPP]}  # type: ignore[index]
        pred = {v: monthly_means(s.time, f[v][0]) for v in ("nee", "reco", "gpp")}
        months = pred["nee"].index.intersection(obs_mm["nee"].dropna().index)
        if len(months) == 0:
            raise ValueError(
                f"--monthly {Path(path).name}: no complete month of the daily record "
                f"({s.time[0].date()}..{s.time[-1].date()}) is in the monthly file"
            )
        held = months[np.isin(months.year, years)]
        rep: dict[str, Any] = {"monthly_file": Path(path).name, "daily_file": towers[sid].attrs.get("source_file"),
                               "months": len(months), "first_month": f"{months[0]:%Y-%m}",
                               "last_month": f"{months[-1]:%Y-%m}", "holdout_years": years,
                               "holdout_months": len(held)}  # fmt: skip
        for v in ("nee", "reco", "gpp"):
            rep[v] = metrics(pred[v].reindex(months).values, obs_mm[v].reindex(months).values)
            rep[f"{v}_holdout_years"] = metrics(
                pred[v].reindex(held).values, obs_mm[v].reindex(held).values
            )
            dd = monthly_means(s.time, obs_dd[v]).reindex(months)
            diff = np.abs(dd.values - obs_mm[v].reindex(months).values)
            rep.setdefault("daily_file_vs_mm", {})[v] = {
                "months_with_complete_days": int(np.isfinite(diff).sum()),
                "max_abs_difference": float(np.nanmax(diff))
                if np.isfinite(diff).any()
                else float("nan"),
            }
        out[sid] = rep
    return out


def _plots(
    out: Path, grid: Mapping[str, Any] | None, towers: Mapping[str, Any] | None
) -> list[Path]:
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
            if m.any():
                ax.axvspan(
                    s.time[m][0], s.time[m][-1], color="gold", alpha=0.15, label="held-out years"
                )
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
    site_meta: Any = None,
    baseline: str | Path | None = None,
    monthly: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a catalog's held-out pixels and/or towers; write a report.

    ``fluxnet`` are daily files, zips or folders (one per site); each tower is reported
    on its own held-out years. ``baseline`` (another checkpoint, e.g. the pre-trained
    model) is evaluated on the same towers and years, so the report shows what
    fine-tuning changed. ``monthly`` FLUXNET MM files check monthly means of the daily
    predictions (:func:`evaluate_monthly`). The catalog's satellite cube also supplies
    LAI / soil moisture at the towers for models with those additions.

    ``out`` (the report folder) is checked before anything is computed
    (:func:`kgml_grid.outputs.check_target`): it must not be, contain or lie inside an
    input; an existing one needs ``overwrite`` and is replaced only when it is a report
    kgml_grid wrote.
    """
    from kgml_grid import outputs

    t0 = time.perf_counter()
    inputs = [*outputs.input_paths("the checkpoint", [model_dir, baseline]),
              *outputs.input_paths("the FLUXNET file", fluxnet),
              *outputs.input_paths("the FLUXNET monthly file", monthly),
              *outputs.input_paths("the site metadata", site_meta if isinstance(site_meta, (list, tuple)) else [site_meta])]  # fmt: skip
    if catalog is not None:
        inputs += outputs.catalog_inputs(catalog)
    outputs.check_target(out, kind="report", inputs=inputs, overwrite=overwrite)
    report: dict[str, Any] = {"model": str(Path(model_dir).resolve())}
    grid_extra = tower_extra = None
    if catalog is not None:
        report["grid"], grid_extra = evaluate_grid(model_dir, catalog)
    if monthly and not fluxnet:
        raise ValueError("--monthly needs the sites' daily files too (--fluxnet FILE|FOLDER): "
                         "they supply the model's inputs")  # fmt: skip
    if fluxnet:
        report["towers"], tower_extra = evaluate_towers(
            model_dir, fluxnet, site_meta=site_meta, catalog=catalog
        )
        years = {sid: r["holdout_years"] for sid, r in report["towers"].items()}
        if baseline is not None:
            base, _ = evaluate_towers(baseline, fluxnet, site_meta=site_meta, holdout_years=years,
                                      catalog=catalog)  # fmt: skip
            report["towers_baseline"] = {"model": str(Path(baseline).resolve()), **base}
        if monthly:
            report["monthly"] = evaluate_monthly(model_dir, monthly, fluxnet, site_meta=site_meta,
                                                 catalog=catalog, holdout_years=years)  # fmt: skip
    # only once everything was read and computed
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
                lines.append(
                    f"  {v:<6} R2 {m['r2']:.3f}  RMSE {m['rmse']:.3f}  bias {m['bias']:+.3f}"
                )
        mb = g["mass_balance_residual_median_frac_of_reco"]
        lines.append(
            f"  mass balance: median |GPP - Reco + NEE| / Reco = {mb['model_gpp']:.4f} (model GPP), "
            f"{mb.get('true_gpp', float('nan')):.4f} (true GPP), "
            f"{mb.get('input_gpp', float('nan')):.4f} (input GPP; the truth itself: "
            f"{g['truth_residual_vs_input_gpp']:.4f})"
        )
    towers = report.get("towers") or {}
    if towers:
        base = report.get("towers_baseline") or {}
        lines.append("towers, each on its held-out years (R2, RMSE in g C m-2 d-1):")
        head = f"  {'site':<8} {'years':<11} {'Reco R2':>8} {'RMSE':>6} {'NEE R2':>8} {'RMSE':>6}"
        if base:
            head += f"  {'before fine-tuning: Reco R2':>28} {'NEE R2':>7}"
        lines.append(head)
        for sid, r in towers.items():
            ys = r["holdout_years"]
            yr = "-" if not ys else str(ys[0]) if len(ys) == 1 else f"{ys[0]}-{ys[-1]}"
            row = (f"  {sid:<8} {yr:<11} {r['reco']['r2']:>8.3f} {r['reco']['rmse']:>6.2f} "
                   f"{r['nee']['r2']:>8.3f} {r['nee']['rmse']:>6.2f}")  # fmt: skip
            if sid in base:
                row += f"  {base[sid]['reco']['r2']:>28.3f} {base[sid]['nee']['r2']:>7.3f}"
            lines.append(row)
    for r in (report.get("monthly") or {}).values():
        lines.append(
            f"monthly means of daily predictions vs {r['monthly_file']} ({r['months']} complete months "
            f"{r['first_month']}..{r['last_month']}):"
        )
        for v in ("nee", "reco", "gpp"):
            m, h = r[v], r[f"{v}_holdout_years"]
            lines.append(f"  {v:<5} R2 {m['r2']:.3f}  RMSE {m['rmse']:.3f}  bias {m['bias']:+.3f}; "
                         f"held-out years ({h['n']} months) R2 {h['r2']:.3f}  RMSE {h['rmse']:.3f}")  # fmt: skip
        d = r["daily_file_vs_mm"]["nee"]
        lines.append(f"  (the daily file's own monthly NEE means differ from the MM file by at most "
                     f"{d['max_abs_difference']:.2g} over {d['months_with_complete_days']} months)")  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "DAILY_TARGETS",
    "evaluate",
    "evaluate_grid",
    "evaluate_monthly",
    "evaluate_towers",
    "format_report",
    "metrics",
    "monthly_means",
]
