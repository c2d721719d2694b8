"""Uncertainty from an ensemble of checkpoints (different seeds, leave-one-tower-out).

:func:`plan_ensemble` plans one run per member on the same grid, time range and chunks
and counts the ensemble's cost before anything runs (blocks, tasks, pixel-days, memory
per task); :func:`ensemble_predict` stacks the members' lazy predictions along a
``member`` dimension (:func:`kgml_grid.lazy.predict_plan`: each member is its own state
chain on the same blocks); :func:`ensemble_stats` gives per-pixel annual mean and spread;
:func:`ensemble_budgets` the zone budgets of every member and their range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from kgml_grid.plan import Plan, PlanError, format_bytes, make_plan

__all__ = [
    "EnsemblePlan",
    "ensemble_budgets",
    "ensemble_predict",
    "ensemble_stats",
    "plan_ensemble",
]


@dataclass(frozen=True)
class EnsemblePlan:
    """One plan per member, same grid, time and chunks."""

    plans: tuple[Plan, ...]
    members: tuple[str, ...]

    @property
    def n_blocks(self) -> int:
        return sum(p.n_blocks for p in self.plans)

    @property
    def n_tasks(self) -> int:
        return sum(p.n_tasks for p in self.plans)

    @property
    def pixel_days(self) -> int:
        return sum(p.n_crop_pixels * p.n_days for p in self.plans)

    @property
    def memory_per_task(self) -> int:
        return max(p.memory_per_task for p in self.plans)

    def __str__(self) -> str:
        p = self.plans[0]
        return (
            f"ensemble of {len(self.plans)} members ({', '.join(self.members)})\n"
            f"  each      {p.grid.ny} x {p.grid.nx} px, {p.start.date()} .. {p.end.date()}, "
            f"{p.n_blocks} blocks, {p.n_tasks} tasks\n"
            f"  in all    {self.n_blocks} blocks, {self.n_tasks} tasks, {self.pixel_days / 1e6:.2f} M pixel-days, "
            f"~{format_bytes(self.memory_per_task)} per task"
        )


def plan_ensemble(catalog: Any, models: Sequence[str | Path], **kw: Any) -> EnsemblePlan:
    """Plan every member (:func:`kgml_grid.plan.make_plan` with the same arguments).

    Raises
    ------
    PlanError
        For fewer than two members, a repeated checkpoint, or any member's plan error
        (naming the member).
    """
    if len(models) < 2:
        raise PlanError(f"an ensemble needs at least two checkpoints, got {len(models)}")
    plans = []
    for m in models:
        try:
            plans.append(make_plan(catalog, m, **kw))
        except PlanError as e:
            raise PlanError(f"ensemble member {m}: {e}") from None
    hashes = [p.checkpoint_hash for p in plans]
    dup = [str(m) for m, h in zip(models, hashes, strict=True) if hashes.count(h) > 1]
    if dup:
        raise PlanError(
            f"ensemble members {dup} are the same checkpoint (hash {hashes[0][:12]}); give distinct ones"
        )
    names = tuple(Path(m).name for m in models)
    if len(set(names)) < len(names):
        names = tuple(f"m{i}_{n}" for i, n in enumerate(names))
    return EnsemblePlan(tuple(plans), names)


def ensemble_predict(eplan: EnsemblePlan, *, client: Any = None) -> xr.Dataset:
    """The members' lazy predictions stacked along ``member``."""
    from kgml_grid.lazy import predict_plan

    dss = [predict_plan(p, client=client) for p in eplan.plans]
    ds = xr.concat(
        dss, dim=pd.Index(list(eplan.members), name="member"), combine_attrs="drop_conflicts"
    )
    ds.attrs["kgml_ensemble"] = ",".join(p.checkpoint_hash[:12] for p in eplan.plans)
    return ds


def ensemble_stats(ds: xr.Dataset, variables: Sequence[str] = ("ra", "rh", "nee")) -> xr.Dataset:
    """Per-pixel annual totals' member mean and spread (std, ddof=1) and range, lazily."""
    from kgml_grid.analysis.budgets import period_totals

    tot = period_totals(ds, variables, "year")
    out = xr.Dataset()
    for v in variables:
        out[f"{v}_mean"] = tot[v].mean("member")
        out[f"{v}_std"] = tot[v].std("member", ddof=1)
        out[f"{v}_range"] = tot[v].max("member") - tot[v].min("member")
        for k in ("mean", "std", "range"):
            out[f"{v}_{k}"].attrs["units"] = "g m-2 yr-1"
    return out


def ensemble_budgets(ds: xr.Dataset, zones: Any, **kw: Any) -> pd.DataFrame:
    """Budget tables of every member and, per row, the members' mean, min and max of each
    number (columns ``<col>``, ``<col>_min``, ``<col>_max``)."""
    from kgml_grid.analysis.budgets import budget_table, zone_budgets

    tables = []
    for m in ds["member"].values:
        t = budget_table(zone_budgets(ds.sel(member=m), zones, **kw))
        tables.append(t.assign(member=str(m)))
    allt = pd.concat(tables, ignore_index=True)
    keys = [
        c for c in ("zone", "zone_name", "crop", "year", "season", "month") if c in allt.columns
    ]
    num = [c for c in allt.columns if c not in (*keys, "member", "days", "area_km2")
           and pd.api.types.is_numeric_dtype(allt[c])]  # fmt: skip
    g = allt.groupby(keys, sort=False)
    out = g[["days", "area_km2"]].first()
    for c in num:
        out[c] = g[c].mean()
        out[f"{c}_min"] = g[c].min()
        out[f"{c}_max"] = g[c].max()
    out["members"] = g["member"].nunique()
    return out.reset_index()
