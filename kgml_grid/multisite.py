"""Validation over several towers: held-out years per site, and whole sites held out.

Two questions, answered per site:

* **held-out years** (``--validation years``, what :func:`kgml_grid.train.finetune`
  always does): one model fine-tuned on every tower, each tower's last full years held
  out; each site is scored on its own held-out years;
* **leave-one-site-out** (``--validation sites``, :func:`leave_one_site_out`): for each
  site, a model fine-tuned on the *other* towers only (each with its last full year for
  early stopping and no year held out) and scored on the left-out site, on every day
  after the first year of its record and on its held-out years. That is what the model
  can do at a site no tower observed: the situation of every pixel it is upscaled to.

The pre-trained model, before fine-tuning, is scored on the same days for reference.
:func:`validate_sites` runs both and writes ``validation.json`` and ``validation.md``
(the per-site table) next to the fine-tuned model.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kgml_grid import schema
from kgml_grid.checkpoint import load_checkpoint, resolve_device, save_checkpoint, torch_threads
from kgml_grid.evaluate import _fluxes, metrics
from kgml_grid.samples import Series, tower_series
from kgml_grid.train import (
    I_GPP,
    I_NEE,
    FinetuneConfig,
    _jsonable,
    finetune,
    finetune_series,
    load_towers,
    mask_low_quality,
    predict,
    site_years,
)

__all__ = ["format_validation", "leave_one_site_out", "score_site", "validate_sites"]


def score_site(
    model: torch.nn.Module, norm: Any, s: Series, years: Sequence[int]
) -> dict[str, Any]:
    """Reco, NEE and GPP metrics of one tower's series: on every day after the first 365 of
    its record (``all_years``) and on ``years`` (``holdout_years``)."""
    daily, _ = predict(model, norm, s)
    f = _fluxes(daily)
    first, last = s.spans[0] if s.spans else (0, s.time.size - 1)
    after = np.zeros(s.time.size, bool)
    after[first + 365 : last + 1] = True
    held = np.isin(np.asarray(s.time.year), list(years))
    out: dict[str, Any] = {"holdout_years": list(years)}
    for label, m in (("all_years", after), ("holdout_years_metrics", held)):
        out[label] = {
            "reco": metrics(f["reco"][0, m], s.reco[0, m]),  # type: ignore[index]
            "nee": metrics(f["nee"][0, m], s.y[0, m, I_NEE]),
            "gpp": metrics(f["gpp"][0, m], s.y[0, m, I_GPP]),
        }
    return out


def leave_one_site_out(
    model_dir: str | Path,
    towers: Sequence[Any],
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """One fine-tuning per site on the other towers, scored on the left-out site.

    Parameters
    ----------
    model_dir : path
        The pre-trained checkpoint every fold starts from.
    towers : sequence of Dataset
        Checked towers (:func:`kgml_grid.train.load_towers`), QC-masked, at least two sites.
    out : path
        Fold models are written to ``out/<SITE>/``.

    Returns
    -------
    dict
        Site -> ``{"loso": score, "pretrained": score, "trained_on": [...], ...}`` where a
        score is :func:`score_site` on the site's own held-out years.

    Raises
    ------
    ValueError
        With fewer than two towers, or a tower too short to split.
    """
    config = config or FinetuneConfig()
    if len(towers) < 2:
        raise ValueError(f"leave-one-site-out needs at least two towers, got {len(towers)}")
    device = resolve_device(config.device)
    base = load_checkpoint(model_dir, device=device, check_schema=True)
    feats = base.features
    out = Path(out)
    names = [str(ds.attrs["site_id"]) for ds in towers]
    fold_cfg = replace(config, holdout_years=0)  # the left-out site is the test
    result: dict[str, Any] = {}
    for k, sid in enumerate(names):
        t0 = time.perf_counter()
        alone = tower_series([towers[k]], features=feats)
        years = site_years(alone, 0, config.holdout_years, config.val_years)[2]
        others = [ds for j, ds in enumerate(towers) if j != k]
        series = tower_series(others, features=feats)
        torch.manual_seed(config.seed)
        ck = load_checkpoint(model_dir, device=device, check_schema=True)
        reference = copy.deepcopy(ck.model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        history, split = finetune_series(ck.model, ck.normalizer, series, fold_cfg, reference=reference,
                                         progress=progress)  # fmt: skip
        fold = out / sid
        save_checkpoint(ck.model.cpu(), fold, config=ck.config, features=ck.features, units=ck.units, norm=ck.norm,
                        provenance={**{k2: v for k2, v in ck.provenance.items() if k2 != "history"},
                                    "stage": "finetune (leave-one-site-out fold)", "left_out_site": sid,
                                    "pretrained_from": str(Path(model_dir).resolve()),
                                    "finetune_config": _jsonable(asdict(fold_cfg)), "tower_split": split,
                                    "history": history})  # fmt: skip
        ck.model.to(device)
        result[sid] = {
            "trained_on": [n for n in names if n != sid],
            "loso": score_site(ck.model, ck.normalizer, alone, years),
            "pretrained": score_site(base.model, base.normalizer, alone, years),
            "record": f"{alone.time[0].date()}..{alone.time[-1].date()}",
            "stopped": split["stopped"],
            "fold_model": str(fold),
            "seconds": time.perf_counter() - t0,
        }
    return result


def validate_sites(
    model_dir: str | Path,
    fluxnet: Sequence[str | Path],
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    site_meta: Any = None,
    catalog: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune on every tower (held-out years per site) and run leave-one-site-out.

    The fine-tuned model is written to ``out`` (as :func:`kgml_grid.train.finetune`),
    the fold models to ``out/loso/<SITE>/``, the per-site report to
    ``out/validation.json`` and ``out/validation.md``. ``out`` is checked and replaced
    as :func:`~kgml_grid.train.finetune` does (``overwrite``).
    """
    t0 = time.perf_counter()
    config = config or FinetuneConfig()
    out = Path(out)
    with torch_threads(config.threads):
        base = load_checkpoint(model_dir, check_schema=True)
        towers = [mask_low_quality(ds, config.qc_threshold)
                  for ds in load_towers(fluxnet, site_meta, qc_threshold=config.qc_threshold,
                                        catalog=catalog, features=base.features)]  # fmt: skip
        if len(towers) < 2:
            raise ValueError(
                f"--validation sites needs at least two towers (one is left out at a time), got "
                f"{len(towers)}: {', '.join(str(ds.attrs['site_id']) for ds in towers)}"
            )
        res = finetune(model_dir, fluxnet, out, config, site_meta=site_meta, catalog=catalog, progress=progress,
                       overwrite=overwrite)  # fmt: skip
        tuned = load_checkpoint(res.model_dir, check_schema=True)
        per_site = tuned.provenance["tower_split"]["per_site"]
        years_scores = {}
        for ds in towers:
            sid = str(ds.attrs["site_id"])
            s = tower_series([ds], features=tuned.features)
            years_scores[sid] = score_site(
                tuned.model, tuned.normalizer, s, per_site[sid]["holdout_years"]
            )
        loso = leave_one_site_out(model_dir, towers, out / "loso", config, progress=progress)
    report = {
        "pretrained": str(Path(model_dir).resolve()),
        "finetuned": str(out.resolve()),
        "feature_set": schema.feature_set_name(base.features),
        "sites": list(loso),
        "per_site": {
            sid: {
                **loso[sid],
                "years": years_scores[sid],
                "feature_sources": tuned.provenance["tower_split"]["sources"].get(sid, {}),
            }
            for sid in loso
        },
        "finetune_config": _jsonable(asdict(config)),
        "seconds": time.perf_counter() - t0,
    }
    (out / "validation.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "validation.md").write_text(format_validation(report))
    return report


def _r2(score: Mapping[str, Any], part: str, v: str) -> str:
    m = score[part][v]
    return "n/a" if not np.isfinite(m["r2"]) else f"{m['r2']:.3f}"


def format_validation(report: Mapping[str, Any]) -> str:
    """Markdown table: per site, R2 of Reco and NEE under each validation."""
    lines = [
        f"# Validation per site ({report['feature_set']} features)",
        "",
        "Daily R2 of Reco / NEE. *Held-out years*: the model fine-tuned on every tower, on the "
        f"site's last {report['finetune_config']['holdout_years']} full year(s) (never trained on). "
        "*Leave-one-site-out*: a model "
        "fine-tuned on the other towers only, on the same years and on every day after the "
        "first year of the site's record. *Pre-trained*: before any fine-tuning, same years.",
        "",
        "| site | record | held-out years | pre-trained | held-out years (all towers) | "
        "leave-one-site-out, held-out years | leave-one-site-out, all years |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sid, r in report["per_site"].items():
        ys = r["years"]["holdout_years"]

        def pair(score: Mapping[str, Any], part: str) -> str:
            return f"{_r2(score, part, 'reco')} / {_r2(score, part, 'nee')}"

        yr = "-" if not ys else str(ys[0]) if len(ys) == 1 else f"{ys[0]}-{ys[-1]}"
        lines.append(
            f"| {sid} | {r['record']} | {yr} | {pair(r['pretrained'], 'holdout_years_metrics')} | "
            f"{pair(r['years'], 'holdout_years_metrics')} | {pair(r['loso'], 'holdout_years_metrics')} | "
            f"{pair(r['loso'], 'all_years')} |"
        )
    lines += ["", f"Wall time: {report['seconds']:.0f} s", ""]
    return "\n".join(lines)
