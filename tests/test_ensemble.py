"""Ensemble uncertainty: the plan counts the cost; stats and budget ranges equal the members'."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from kgml_grid.analysis.budgets import budget_table, zone_budgets
from kgml_grid.analysis.ensemble import (
    ensemble_budgets,
    ensemble_predict,
    ensemble_stats,
    plan_ensemble,
)
from kgml_grid.analysis.zones import Zones
from kgml_grid.execute import SerialExecutor
from kgml_grid.plan import PlanError

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

pytestmark = pytest.mark.slow  # a small upscaling per module (tens of seconds here)

ARGS = {"start": "2010-01-01", "end": "2010-12-31", "chunks": "y=10,x=12,time=200"}


@pytest.fixture(scope="module")
def members(tiny_world, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ens")
    return [make_checkpoint(tiny_world, d / f"seed{s}", hidden=8, seed=s) for s in (4, 5, 6)]


def test_ensemble_plan_counts_cost_and_refuses_bad_members(tiny_world, members):
    ep = plan_ensemble(tiny_world.catalog, members, **ARGS)
    p = ep.plans[0]
    assert ep.n_blocks == 3 * p.n_blocks and ep.n_tasks == 3 * p.n_tasks
    assert ep.pixel_days == 3 * p.n_crop_pixels * 365
    assert "ensemble of 3 members (seed4, seed5, seed6)" in str(
        ep
    ) and f"{ep.n_tasks} tasks" in str(ep)
    with pytest.raises(PlanError, match=r"the same checkpoint \(hash"):
        plan_ensemble(tiny_world.catalog, [members[0], members[0]], **ARGS)
    with pytest.raises(PlanError, match=r"at least two checkpoints, got 1"):
        plan_ensemble(tiny_world.catalog, members[:1], **ARGS)
    with pytest.raises(PlanError, match=r"ensemble member .*nothere"):
        plan_ensemble(tiny_world.catalog, [members[0], members[0].parent / "nothere"], **ARGS)


def test_ensemble_stats_and_budget_ranges_equal_the_members(tiny_world, members):
    ep = plan_ensemble(tiny_world.catalog, members, **ARGS)
    ds = ensemble_predict(ep)
    assert ds["ra"].dims == ("member", "time", "y", "x")
    ref = [SerialExecutor().execute(p).dataset for p in ep.plans]
    annual = np.stack([r["rh"].sum("time", min_count=1).values for r in ref])
    with dask.config.set(scheduler="threads"):
        st = ensemble_stats(ds, ["rh"]).compute()
    np.testing.assert_allclose(
        st["rh_mean"].sel(year=2010).values, annual.mean(0), rtol=1e-5, equal_nan=True
    )
    np.testing.assert_allclose(st["rh_std"].sel(year=2010).values, annual.std(0, ddof=1), rtol=1e-4, atol=1e-4,
                               equal_nan=True)  # fmt: skip
    assert np.nanmax(st["rh_std"].values) > 0
    ids = np.zeros(ds["ra"].shape[2:], "int32")
    ids[:, :12], ids[:, 12:] = 1, 2
    zones = Zones(xr.DataArray(ids, dims=("y", "x")), {1: "w", 2: "e"})
    with dask.config.set(scheduler="threads"):
        t = ensemble_budgets(ds, zones, variables=("ra", "rh", "reco"))
        each = [budget_table(zone_budgets(r, zones, variables=("ra", "rh", "reco"))) for r in ref]
    for zone in (1, 2):
        vals = [float(e[(e.zone == zone) & (e.crop == "all")].rh_TgC.iloc[0]) for e in each]
        row = t[(t.zone == zone) & (t.crop == "all")].iloc[0]
        np.testing.assert_allclose([row.rh_TgC_min, row.rh_TgC, row.rh_TgC_max], [min(vals), np.mean(vals), max(vals)],
                                   rtol=1e-5)  # fmt: skip
        assert row.members == 3


def _halves(grid, path: Path) -> Path:
    """West and east halves of the grid as GeoJSON polygons in the grid's CRS."""
    import json

    w, s, e, n = grid.bounds
    m = (w + e) / 2
    boxes = {"west": (w, m), "east": (m, e)}
    feats = [{"type": "Feature", "properties": {"NAME": k}, "geometry": {"type": "Polygon",
              "coordinates": [[[a, s], [b, s], [b, n], [a, n], [a, s]]]}} for k, (a, b) in boxes.items()]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats,
                                "crs": {"type": "name", "properties": {"name": grid.crs}}}))  # fmt: skip
    return path


def test_ensemble_cli_writes_mean_spread_and_budget_range(
    tiny_world, members, tmp_path, capsys, monkeypatch
):
    from kgml_grid.cli import main

    zones = _halves(tiny_world.grid, tmp_path / "halves.geojson")
    out = tmp_path / "ens.zarr"
    args = ["ensemble", "--catalog", str(tiny_world.catalog), "--models", *map(str, members[:2]),
            "--out", str(out), "--zones", str(zones), "--start", ARGS["start"], "--end", ARGS["end"],
            "--chunks", ARGS["chunks"]]  # fmt: skip
    # refused before anything is written: a table of an unknown format, a table without zones
    assert main([*args, "--table", str(tmp_path / "t.txt")]) == 2
    assert "--table" in capsys.readouterr().err and not out.exists()
    assert main([*args[:8], "--table", str(tmp_path / "t.csv")]) == 2
    assert "a budget table needs --zones" in capsys.readouterr().err and not out.exists()
    assert main([*args[:7], str(members[0] / "ens.zarr"), *args[8:]]) == 2  # inside a checkpoint
    assert "checkpoint" in capsys.readouterr().err and not (members[0] / "ens.zarr").exists()

    # the ensemble's cost is printed once the checks pass, before anything is computed
    import kgml_grid.analysis.ensemble as ens

    def stop(*a, **k):
        raise RuntimeError("not computing")

    monkeypatch.setattr(ens, "ensemble_predict", stop)
    assert main(args) == 1
    printed = capsys.readouterr().out
    assert "ensemble of 2 members (seed4, seed5)" in printed and "tasks" in printed
    assert "pixel-days" in printed and not out.exists()
    monkeypatch.undo()

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "ensemble of 2 members (seed4, seed5)" in printed and "annual rh: ensemble mean" in printed
    )
    st = xr.open_zarr(out, consolidated=False)
    assert st.attrs["kgml_grid_output"] == "ensemble"
    assert st["rh_annual"].dims == ("member", "year", "y", "x")
    ep = plan_ensemble(tiny_world.catalog, members[:2], **ARGS)
    ref = np.stack(
        [
            SerialExecutor().execute(p).dataset["rh"].sum("time", min_count=1).values
            for p in ep.plans
        ]
    )
    np.testing.assert_allclose(
        st["rh_annual"].sel(year=2010).values, ref, rtol=1e-5, atol=1e-3, equal_nan=True
    )
    np.testing.assert_allclose(
        st["rh_mean"].sel(year=2010).values, ref.mean(0), rtol=1e-5, atol=1e-3, equal_nan=True
    )
    np.testing.assert_allclose(st["rh_range"].sel(year=2010).values, np.abs(ref[0] - ref[1]), rtol=1e-4, atol=1e-3,
                               equal_nan=True)  # fmt: skip
    assert np.nanmax(st["rh_std"].values) > 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "ens_budget.csv")
    assert set(table["zone_name"]) == {"west", "east"} and (table["members"] == 2).all()
    assert (table["rh_TgC_min"] <= table["rh_TgC"]).all() and (
        table["rh_TgC"] <= table["rh_TgC_max"]
    ).all()
    assert (table["rh_TgC_max"] > table["rh_TgC_min"]).any()
    assert (tmp_path / "ens_budget.png").stat().st_size > 0 and (
        tmp_path / "ens_budget.csv.json"
    ).exists()
    # an existing ensemble is kept without --overwrite and replaced with it
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
