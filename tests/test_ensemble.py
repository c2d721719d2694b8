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
