"""Uncertainty from an ensemble of checkpoints (different seeds, leave-one-tower-out).

:func:`plan_ensemble` plans one run per member on the same grid, time range and chunks
and counts the ensemble's cost before anything runs (blocks, tasks, pixel-days, memory
per task); :func:`ensemble_predict` stacks the members' lazy predictions along a
``member`` dimension (:func:`kgml_grid.lazy.predict_plan`: each member is its own state
chain on the same blocks); :func:`ensemble_stats` gives per-pixel annual mean and spread;
:func:`ensemble_budgets` the zone budgets of every member and their range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    "range_table",
    "run_ensemble",
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

    tables = [
        budget_table(zone_budgets(ds.sel(member=m), zones, **kw)) for m in ds["member"].values
    ]
    return range_table(tables, [str(m) for m in ds["member"].values])


def range_table(tables: Sequence[pd.DataFrame], members: Sequence[str]) -> pd.DataFrame:
    """Members' budget tables (:func:`~kgml_grid.analysis.budgets.budget_table`) as one:
    per row, the members' mean, min and max of each number."""
    allt = pd.concat(
        [t.assign(member=m) for t, m in zip(tables, members, strict=True)], ignore_index=True
    )
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


#: Annual totals an ensemble store keeps per member (g C m-2 yr-1).
STORE_VARIABLES = ("ra", "rh", "reco", "nee")


def run_ensemble(
    catalog: Any,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    zones: str | Path | None = None,
    zone_field: str | None = None,
    table: str | Path | None = None,
    by: str = "year",
    client: Any = None,
    overwrite: bool = False,
    on_plan: Callable[[EnsemblePlan], Any] | None = None,
    **plan_kw: Any,
) -> dict[str, Any]:
    """``kgml-grid ensemble``: upscale every member together; per-pixel mean and spread
    into a Zarr store and, with ``zones``, budgets with the members' range.

    Every check (each member's plan, the store, the table, chart and sidecar against the
    run's inputs and ``overwrite``, the zone file) runs before anything is computed or
    written. The members' blocks and the budgets are one Dask computation, so every block
    runs once.

    Parameters
    ----------
    models : sequence of path
        Checkpoint directories (at least two, distinct).
    out : path
        The store: ``<v>_annual`` ``(member, year, y, x)`` and ``<v>_mean``, ``<v>_std``,
        ``<v>_range`` ``(year, y, x)`` for ``ra``, ``rh``, ``reco``, ``nee``
        (g C m-2 yr-1; NaN off crop).
    zones, zone_field, table, by
        Zone file and its naming property (:func:`~kgml_grid.analysis.zones.read_zones`), budget table (``.csv``
        or ``.parquet``; default ``<out>_budget.csv`` beside the store) and its period.
    on_plan : callable, optional
        Called with the :class:`EnsemblePlan` (its cost) once every check has passed,
        before anything is computed (the CLI prints it).
    plan_kw
        ``start``, ``end``, ``bbox``, ``bbox_crs``, ``chunks``: as
        :func:`kgml_grid.plan.make_plan`, the same for every member.

    Returns
    -------
    dict
        ``plan`` (the :class:`EnsemblePlan`), ``out``, ``stats`` (computed), and with
        zones ``table``, ``chart``, ``frame``.
    """
    import json

    import dask

    from kgml_grid import cubes, outputs
    from kgml_grid.analysis.area import cell_area
    from kgml_grid.analysis.budgets import (
        BY,
        SIDECAR_KEY,
        budget_table,
        check_table_path,
        crop_layers,
        is_our_sidecar,
        period_totals,
        sidecar_path,
        write_table,
        zone_budgets,
    )
    from kgml_grid.analysis.zones import read_zones
    from kgml_grid.execute import run_inputs

    if by not in BY:
        raise PlanError(f"--by {by!r}: expected one of {', '.join(BY)}")
    eplan = plan_ensemble(catalog, models, **plan_kw)
    out = Path(out).resolve()
    inputs = [i for p in eplan.plans for i in run_inputs(p)]
    if zones is not None:
        inputs.append(("the zone file", Path(zones)))
    decision = outputs.check_target(
        out, kind="ensemble", inputs=inputs, overwrite=overwrite, error=PlanError
    )
    files: dict[str, Path] = {}
    grid = eplan.plans[0].grid
    if zones is not None:
        t = Path(table) if table else out.with_name(out.name.removesuffix(".zarr") + "_budget.csv")
        try:
            check_table_path(t, "--table")
        except ValueError as e:
            raise PlanError(str(e)) from None
        files = {"table": t, "chart": t.with_suffix(".png"), "meta": sidecar_path(t)}
        outputs.check_files(list(files.values()), ours=is_our_sidecar(files["meta"]), what="an ensemble budget table",
                            inputs=[*inputs, ("the ensemble store", out)], overwrite=overwrite,
                            option="--table", error=PlanError)  # fmt: skip
        zs = read_zones(zones, grid, field=zone_field)
    elif table is not None:
        raise PlanError(f"--table {table}: a budget table needs --zones")
    if on_plan is not None:
        on_plan(eplan)
    ds = ensemble_predict(eplan, client=client)
    tot = period_totals(ds, STORE_VARIABLES, "year")
    lazy_budgets = []
    if zones is not None:
        iy0, iy1, ix0, ix1 = eplan.plans[0].window
        crop = xr.open_zarr(eplan.plans[0].paths["crop"], consolidated=False)
        crop_type, share = crop_layers(crop, {"y": slice(iy0, iy1), "x": slice(ix0, ix1)})
        area = cell_area(grid)
        lazy_budgets = [zone_budgets(ds.sel(member=m), zs, by=by, area=area, share=share, crop_type=crop_type)
                        for m in eplan.members]  # fmt: skip
    if client is None:
        with dask.config.set(scheduler="threads"):
            tot, *budgets = dask.compute(tot, *lazy_budgets)
    else:
        tot, *budgets = dask.compute(tot, *lazy_budgets)
    st = xr.Dataset(coords={"member": list(eplan.members), "year": tot["year"].values,
                            "y": grid.y, "x": grid.x})  # fmt: skip
    for v in STORE_VARIABLES:
        a = (
            tot[v]
            .assign_coords(y=grid.y, x=grid.x)
            .astype("float32")
            .transpose("member", "year", "y", "x")
        )
        st[f"{v}_annual"] = a
        st[f"{v}_mean"] = a.mean("member")
        st[f"{v}_std"] = a.std("member", ddof=1)
        st[f"{v}_range"] = a.max("member") - a.min("member")
        for k in ("annual", "mean", "std", "range"):
            st[f"{v}_{k}"].attrs = {"units": "g m-2 yr-1", "long_name": f"annual {v}: {k} of the members"
                                    if k != "annual" else f"annual {v} of each member"}  # fmt: skip
    st["days"] = tot["days"]
    st = st.assign_coords(checkpoint_hash=("member", [p.checkpoint_hash for p in eplan.plans]),
                          checkpoint=("member", [str(Path(p.checkpoint)) for p in eplan.plans]))  # fmt: skip
    st = cubes.annotate(st, grid, title=f"kgml_grid ensemble of {len(eplan.plans)} members")
    st.attrs.update({outputs.MARKER_ATTR: "ensemble", "kgml_plan": json.dumps(eplan.plans[0].to_dict()),
                     "kgml_members": ",".join(eplan.members), "comment": "spread: std (ddof=1) and max - min over members"})  # fmt: skip
    if decision == "replace":
        outputs.remove_output(out, "ensemble", error=PlanError)
    for c in [c for c in st.coords if st[c].dtype.kind == "U"]:
        st[c] = st[c].astype(object)
    st.to_zarr(str(out), mode="w", consolidated=False, zarr_format=3)
    res: dict[str, Any] = {"plan": eplan, "out": out, "stats": st}
    if zones is not None:
        frame = range_table([budget_table(b) for b in budgets], list(eplan.members))
        t = files["table"]
        write_table(frame, t)
        range_chart(frame, files["chart"], by=by, title=f"{out.name} by {Path(zones).name}")
        from kgml_grid import __version__

        files["meta"].write_text(json.dumps({
            SIDECAR_KEY: 1, "package_version": __version__, "store": str(out), "zones": str(Path(zones).resolve()),
            "by": by, "members": list(eplan.members), "checkpoint_hashes": [p.checkpoint_hash for p in eplan.plans],
            "table": t.name, "chart": files["chart"].name,
            "units": {"*_TgC": "Tg C per period", "*_gCm2": "g C m-2 per period (zone mean)",
                      "*_min / *_max": "the members' minimum / maximum of the same number"},
            "rows": len(frame)}, indent=1) + "\n")  # fmt: skip
        res.update(table=t, chart=files["chart"], frame=frame)
    return res


def range_chart(table: pd.DataFrame, path: Any, *, by: str = "year", variables: Sequence[str] = ("ra", "rh", "nee"),
                title: str = "") -> Any:  # fmt: skip
    """A PNG of each zone's ensemble-mean flux per period (all crops) with the members'
    min-max range as a band, one panel per variable."""
    from kgml_grid.maps import _LABELS, _plt

    plt = _plt()
    t = table[table["crop"] == "all"]
    vars_ = [v for v in variables if f"{v}_gCm2" in t.columns]
    fig, axes = plt.subplots(
        1, len(vars_), figsize=(4.6 * len(vars_), 3.8), squeeze=False, constrained_layout=True
    )
    zones = list(dict.fromkeys(t["zone"]))[:12]
    cmap = plt.get_cmap("viridis")
    period = ["year"] + ([by] if by != "year" else [])
    for ax, v in zip(axes[0], vars_, strict=True):
        for k, z in enumerate(zones):
            tz = t[t["zone"] == z]
            x = range(len(tz))
            col = cmap(k / max(len(zones) - 1, 1))
            ax.fill_between(
                x, tz[f"{v}_gCm2_min"], tz[f"{v}_gCm2_max"], color=col, alpha=0.25, lw=0
            )
            ax.plot(
                x,
                tz[f"{v}_gCm2"].values,
                marker="o",
                ms=3,
                color=col,
                label=str(tz["zone_name"].iloc[0]),
            )
            labels = ["-".join(str(r[c]) for c in period) for _, r in tz.iterrows()]
            ax.set_xticks(list(x), labels, rotation=90 if len(labels) > 8 else 0, fontsize=7)
        if v == "nee":
            ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(
            f"{_LABELS.get(v, v)}\nmean, band: members' range (g C m-2 per {by})",
            fontsize=9,
        )
        ax.set_ylabel(f"g C m-2 per {by}")
    axes[0][0].legend(fontsize=7, title="zone", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
