"""``kgml-grid budget`` on a real upscaled store of the tiny world."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kgml_grid.cli import main
from kgml_grid.execute import SerialExecutor
from kgml_grid.plan import make_plan

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

pytestmark = pytest.mark.slow  # a small upscaling per module (tens of seconds here)


@pytest.fixture(scope="module")
def store(tiny_world, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    ck = make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8, seed=2)
    plan = make_plan(tiny_world.catalog, ck, start="2010-01-01", end="2011-12-31")
    out = tmp_path_factory.mktemp("up") / "out.zarr"
    SerialExecutor().execute(plan, out)
    return out


@pytest.fixture(scope="module")
def halves(tiny_world, tmp_path_factory):
    """West and east halves of the tiny grid, in the grid's CRS (legacy GeoJSON crs member)."""
    g = tiny_world.grid
    w, s, e, n = g.bounds
    mid = g.x0 + g.res * (g.nx // 2)

    def box(x0, x1):
        return {"type": "Polygon", "coordinates": [[[x0, s], [x1, s], [x1, n], [x0, n], [x0, s]]]}

    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": g.crs}},
           "features": [{"type": "Feature", "properties": {"NAME": "west"}, "geometry": box(w, mid)},
                        {"type": "Feature", "properties": {"NAME": "east"}, "geometry": box(mid, e)}]}  # fmt: skip
    p = tmp_path_factory.mktemp("zones") / "halves.geojson"
    p.write_text(json.dumps(doc))
    return p, g.nx // 2


def test_budget_table_and_chart_match_the_store(store, halves, tmp_path, capsys):
    zones, half = halves
    out = tmp_path / "budget.csv"
    assert main(["budget", str(store), "--zones", str(zones), "--out", str(out)]) == 0
    assert "chart:" in capsys.readouterr().out
    t = pd.read_csv(out)
    assert (tmp_path / "budget.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "budget.csv.json").read_text())
    assert meta["by"] == "year" and meta["rows"] == len(t)
    ds = xr.open_zarr(store, consolidated=False)
    ra = ds["ra"].values.astype("float64")
    crop = xr.open_zarr(json.loads(ds.attrs["kgml_plan"])["paths"]["crop"], consolidated=False)[
        "crop_type"
    ]
    years = ds["time"].dt.year.values
    for zone, cols in (("west", slice(0, half)), ("east", slice(half, None))):
        for year in (2010, 2011):
            tot = np.nansum(ra[years == year][:, :, cols], axis=0)
            ok = np.isfinite(ra[years == year][:, :, cols]).any(axis=0)
            row = t[(t.zone_name == zone) & (t.year == year) & (t.crop == "all")].iloc[0]
            np.testing.assert_allclose(row.ra_TgC, (tot[ok] * 500.0**2).sum() / 1e12, rtol=1e-5)
            np.testing.assert_allclose(row.area_km2, ok.sum() * 0.25, rtol=1e-9)
            ct = crop.sel(year=year).values[:, cols]
            corn = t[(t.zone_name == zone) & (t.year == year) & (t.crop == "corn")].iloc[0]
            np.testing.assert_allclose(
                corn.ra_TgC, (tot[ok & (ct == 1)] * 500.0**2).sum() / 1e12, rtol=1e-5
            )
    assert set(t.crop) >= {"all", "corn", "soybean"}
    assert ((t.rh_reco_ratio > 0) & (t.rh_reco_ratio < 1)).all()
    # by month: twelve months a year, the months add up to the year
    mo = tmp_path / "month.csv"
    assert (
        main(["budget", str(store), "--zones", str(zones), "--by", "month", "--out", str(mo)]) == 0
    )
    m = pd.read_csv(mo)
    m = m[m.crop == "all"]
    assert m.groupby(["zone", "year"]).size().eq(12).all()
    yearly = m.groupby(["zone_name", "year"])["ra_TgC"].sum()
    ty = t[t.crop == "all"].set_index(["zone_name", "year"])["ra_TgC"]
    np.testing.assert_allclose(yearly.sort_index().values, ty.sort_index().values, rtol=1e-5)


def test_budget_refuses_before_writing(store, halves, tmp_path, capsys):
    zones, _ = halves
    out = tmp_path / "b.csv"
    # an existing budget needs --overwrite; then it is replaced
    assert main(["budget", str(store), "--zones", str(zones), "--out", str(out)]) == 0
    assert main(["budget", str(store), "--zones", str(zones), "--out", str(out)]) == 2
    assert "pass --overwrite to replace them" in capsys.readouterr().err
    assert (
        main(["budget", str(store), "--zones", str(zones), "--out", str(out), "--overwrite"]) == 0
    )
    # a file kgml_grid did not write is never replaced
    foreign = tmp_path / "mine.csv"
    foreign.write_text("keep me")
    assert (
        main(["budget", str(store), "--zones", str(zones), "--out", str(foreign), "--overwrite"])
        == 2
    )
    assert "were not written by kgml_grid" in capsys.readouterr().err
    assert foreign.read_text() == "keep me"
    # not a store, a bad table format, a bad zone file: errors naming them, nothing written
    new = tmp_path / "new.csv"
    assert main(["budget", str(tmp_path), "--zones", str(zones), "--out", str(new)]) == 2
    assert "not an upscaling store written by kgml-grid upscale" in capsys.readouterr().err
    assert (
        main(["budget", str(store), "--zones", str(zones), "--out", str(tmp_path / "t.xlsx")]) == 2
    )
    assert "unknown table format '.xlsx'; expected .csv or .parquet" in capsys.readouterr().err
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    assert main(["budget", str(store), "--zones", str(bad), "--out", str(new)]) == 2
    assert "bad.geojson: cannot read it as GeoJSON" in capsys.readouterr().err
    # the output may not be an input
    assert main(["budget", str(store), "--zones", str(zones), "--out", str(zones.with_suffix(".csv")),
                 "--chart", str(zones)]) == 2  # fmt: skip
    assert "is the zone file" in capsys.readouterr().err
    assert not new.exists() and not new.with_suffix(".png").exists()


def test_budget_parquet_table_equals_the_csv(store, halves, tmp_path, monkeypatch, capsys):
    zones, _ = halves
    pq = tmp_path / "b.parquet"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pyarrow", None)  # as if the extra were not installed
        assert main(["budget", str(store), "--zones", str(zones), "--out", str(pq)]) == 2
        assert "Parquet needs the 'pyarrow' package" in capsys.readouterr().err and not pq.exists()
    pytest.importorskip(
        "pyarrow", reason="the [analysis] extra (pyarrow) is not installed: Parquet untested"
    )
    csv = tmp_path / "c.csv"  # its own chart (c.png)
    assert main(["budget", str(store), "--zones", str(zones), "--out", str(csv)]) == 0
    assert main(["budget", str(store), "--zones", str(zones), "--out", str(pq)]) == 0
    a, b = pd.read_csv(csv), pd.read_parquet(pq)
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    num = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    np.testing.assert_allclose(
        b[num].to_numpy(float), a[num].to_numpy(float), rtol=1e-5
    )  # CSV: 6 digits
    assert (b["zone_name"] == a["zone_name"]).all() and (tmp_path / "b.png").exists()
