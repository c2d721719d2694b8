"""Controlling factors: sensitivities through the engine, interannual regression, the
simulator rerun."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from kgml_grid.analysis.attribution import annual_drivers, interannual_attribution, sensitivities
from kgml_grid.plan import make_plan
from kgml_grid.synth.rerun import annual_truth

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8, seed=3)


def test_simulator_rerun_reproduces_the_truth_and_responds(tiny_world):
    base = annual_truth(tiny_world.root)
    truth = xr.open_zarr(tiny_world.root / "truth.zarr", consolidated=False)
    for v in ("ra", "rh"):
        want = truth[v].groupby("time.year").sum("time").values
        np.testing.assert_allclose(base[v].values, want, rtol=2e-5, atol=1e-3, err_msg=v)
    warm = annual_truth(tiny_world.root, tair_offset=1.0, years=(2010, 2011))
    d = (warm["rh"] - base["rh"].sel(year=slice(2010, 2011))).values
    assert np.median(d) > 0  # Q10 > 1: warmer soils respire more
    rich = annual_truth(tiny_world.root, soc_factor=1.1, years=(2010, 2010))
    assert (rich["rh"] - base["rh"].sel(year=[2010])).values.min() > 0
    with pytest.raises(ValueError, match=r"no readable world.json"):
        annual_truth(tiny_world.root / "towers")


def test_held_growth_rerun_keeps_gpp_and_changes_only_respiration(tiny_world):
    years = (2010, 2011)
    base = annual_truth(tiny_world.root, years=years)
    # no perturbation: the lockstep run is the baseline, bit for bit
    same = annual_truth(tiny_world.root, hold_growth=True, years=years)
    for v in ("ra", "rh", "gpp"):
        np.testing.assert_array_equal(same[v].values, base[v].values, err_msg=v)
    full = annual_truth(tiny_world.root, tair_offset=1.0, years=years)
    held = annual_truth(tiny_world.root, tair_offset=1.0, hold_growth=True, years=years)
    assert held.attrs["hold_growth"] == 1 and full.attrs["hold_growth"] == 0
    crop = base["gpp"].values > 0
    # the full rerun has its own growth; the held one the baseline's GPP exactly
    assert np.abs(full["gpp"].values - base["gpp"].values)[crop].max() > 1.0
    np.testing.assert_array_equal(held["gpp"].values, base["gpp"].values)
    # maintenance respiration has a Q10 > 1: with the same GPP, warmer plants respire more
    assert ((held["ra"] - base["ra"]).values[crop] > 0).all()
    assert not np.allclose(held["rh"].values, full["rh"].values)
    # Rh's two parts add up to it (each summed from float32 days)
    for ds in (base, held):
        np.testing.assert_allclose(ds["rh_residue"] + ds["rh_soc"], ds["rh"], rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_sensitivities_are_exact_across_time_chunkings(tiny_world, ckpt):
    args = dict(start="2010-01-01", end="2011-12-31", bbox=None)
    one = make_plan(tiny_world.catalog, ckpt, chunks="y=-1,x=-1,time=-1", **args)
    many = make_plan(
        tiny_world.catalog, ckpt, chunks={"y": 10, "x": 12, "time": (150, 400, 180)}, **args
    )
    with dask.config.set(scheduler="threads"):
        a = sensitivities(one, ["tair", "soc"], variables=["rh"]).compute()
        b = sensitivities(many, ["tair", "soc"], variables=["rh"]).compute()
    s = a["rh_sensitivity"]
    assert s.dims == ("driver", "year", "y", "x") and list(s["driver"].values) == ["tair", "soc"]
    assert list(s["perturbation_unit"].values) == ["degC", "+10 %"]
    np.testing.assert_allclose(s.values, b["rh_sensitivity"].values, atol=1e-4, equal_nan=True)
    crop = np.isfinite(a["rh_annual"].values)
    assert crop.any() and not crop.all()  # non-crop pixels stay NaN
    assert np.isfinite(s.values[:, crop]).all()
    assert np.abs(s.sel(driver="tair").values[crop]).max() > 0
    with pytest.raises(
        ValueError, match=r"--drivers \['wind'\]: unknown driver; expected some of tair"
    ):
        sensitivities(one, ["wind"])


def test_interannual_regression_recovers_known_controls():
    rng = np.random.default_rng(0)
    n, ny, nx = 12, 3, 4
    drv = {k: rng.standard_normal((n, ny, nx)) for k in ("tair", "precip", "swrad")}
    # left half controlled by temperature, right half by precipitation
    resp = np.where(
        np.arange(nx) < 2,
        3 * drv["tair"] + 0.5 * drv["swrad"],
        -2 * drv["precip"] + 0.3 * drv["tair"],
    )
    resp = resp + 0.05 * rng.standard_normal(resp.shape)
    resp[:, 0, 0] = np.nan  # a non-crop pixel
    coords = {"year": np.arange(2000, 2000 + n), "y": np.arange(ny), "x": np.arange(nx)}
    ds = xr.Dataset({k: (("year", "y", "x"), v) for k, v in drv.items()}, coords=coords)
    att = interannual_attribution(xr.DataArray(resp, dims=("year", "y", "x"), coords=coords), ds)
    names = list(att["driver"].values)
    dom = att["dominant"].values
    assert dom[0, 0] == -1 and np.isnan(att["r2"].values[0, 0])
    assert (dom[:, :2][1:] == names.index("tair")).all() and (
        dom[:, 2:] == names.index("precip")
    ).all()
    assert np.nanmin(att["r2"].values) > 0.98
    assert (att["beta"].sel(driver="precip").values[:, 2:] < -0.9).all()
    with pytest.raises(ValueError, match=r"4 years for 3 drivers; need at least 5 years"):
        interannual_attribution(
            xr.DataArray(
                resp[:4], dims=("year", "y", "x"), coords={**coords, "year": coords["year"][:4]}
            ),
            ds,
        )


def test_annual_drivers_on_the_plan_grid(tiny_world, ckpt):
    plan = make_plan(tiny_world.catalog, ckpt, start="2010-01-01", end="2011-12-31")
    d = annual_drivers(plan)
    assert set(d.data_vars) == {"tair", "precip", "swrad", "gpp_sat"}
    assert d["tair"].shape == (2, *plan.grid.shape)
    wx = xr.open_zarr(plan.paths["weather"], consolidated=False)
    want = float(wx["precip"].sel(time="2010").isel(y=0, x=0).sum())
    from kgml_grid.grid import coarse_index

    r, c = coarse_index(plan.grid, plan.weather_grid)
    i, j = np.argwhere((r == 0) & (c == 0))[0]
    np.testing.assert_allclose(float(d["precip"].sel(year=2010)[i, j]), want, rtol=1e-5)


@pytest.mark.slow
def test_attribute_command_writes_store_and_maps_and_refuses_before_writing(
    tiny_world, ckpt, tmp_path, capsys
):
    from kgml_grid import outputs
    from kgml_grid.cli import main

    out, maps = tmp_path / "att.zarr", tmp_path / "maps"
    args = ["attribute", "--catalog", str(tiny_world.catalog), "--model", str(ckpt), "--out", str(out),
            "--drivers", "tair,precip", "--maps", str(maps)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "annual rh sensitivity" in printed and "tair" in printed
    assert outputs.kind_of(out) == "attribution"
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["rh_sensitivity"].sizes["year"] == 4 and list(ds["driver"].values) == [
        "tair",
        "precip",
    ]
    assert set(np.unique(ds["rh_dominant"].values)) <= {-1, 0, 1}
    assert (ds["rh_dominant"].values >= 0).any()
    assert sorted(p.name for p in maps.glob("*.png")) == [
        "dominant_factor.png", "sensitivity_ra_10pct.png", "sensitivity_ra_degC.png",
        "sensitivity_rh_10pct.png", "sensitivity_rh_degC.png"]  # fmt: skip
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    bad = ["attribute", "--catalog", str(tiny_world.catalog), "--model", str(ckpt), "--out", str(tmp_path / "n.zarr"),
           "--drivers", "tair,wind"]  # fmt: skip
    assert main(bad) == 2
    assert "--drivers ['wind']: unknown driver" in capsys.readouterr().err
    cube = ["attribute", "--catalog", str(tiny_world.catalog), "--model", str(ckpt), "--out",
            str(tiny_world.root / "soil.zarr")]  # fmt: skip
    assert main(cube) == 2
    assert "is cube 'soil' of the catalog" in capsys.readouterr().err
    assert not (tmp_path / "n.zarr").exists()
