"""Output layout (issue 13): --frequency sums, --variables, shards, sizes and files
printed before a run, a store whose set-up does not grow with the blocks."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kgml_grid import outstore
from kgml_grid.cli import main
from kgml_grid.execute import SerialExecutor, prepare_store
from kgml_grid.plan import PlanError, make_plan

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

START, END = "2010-01-01", "2011-12-31"
FLUX = outstore.FLUX_VARIABLES


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8, seed=1)


def bbox(world):
    g = world.grid
    return (g.x[3], g.y[15], g.x[19], g.y[2])


@pytest.fixture(scope="module")
def daily(tiny_world, ckpt):
    plan = make_plan(tiny_world.catalog, ckpt, start=START, end=END, bbox=bbox(tiny_world),
                     chunks="y=7,x=9")  # fmt: skip
    return SerialExecutor().execute(plan).dataset


# --------------------------------------------------------------------------------------
# pure arithmetic
# --------------------------------------------------------------------------------------


def test_period_edges_cut_at_month_and_year_starts():
    start = pd.Timestamp("2010-01-15")
    n = (pd.Timestamp("2011-03-10") - start).days + 1
    assert outstore.period_edges(start, n, "daily").tolist() == list(range(n + 1))
    m = outstore.period_edges(start, n, "monthly")
    time, bounds = outstore.period_index(start, m)
    assert [str(t.date()) for t in time[:3]] == ["2010-01-15", "2010-02-01", "2010-03-01"]
    assert len(time) == 15 and str(pd.Timestamp(bounds[-1, 1]).date()) == "2011-03-11"
    a = outstore.period_edges(start, n, "annual")
    assert a.tolist() == [0, 351, n]  # 2010-01-15 .. 2010-12-31, 2011-01-01 .. 2011-03-10
    assert outstore.block_periods(m, 17, 45) == (1, 2)  # February of the run


def test_unknown_variables_and_frequencies_are_refused_with_the_list():
    with pytest.raises(ValueError, match=r"unknown output variable 'npp'; expected some of "
                       r"ra, rh, reco, nee, gpp, yield"):  # fmt: skip
        outstore.check_variables("nee,npp")
    with pytest.raises(ValueError, match="--variables: none given"):
        outstore.check_variables(" , ")
    assert outstore.check_variables("yield, NEE") == ("nee", "yield")  # canonical order
    with pytest.raises(ValueError, match=r"--frequency 'weekly': expected one of daily, "
                       r"monthly, annual"):  # fmt: skip
        outstore.check_frequency("weekly")


def test_inner_chunks_tile_the_shard_and_stay_small():
    for shard in [(365, 16, 16), (366, 256, 256), (12, 1024, 1024), (1, 7, 9), (18, 48, 48)]:
        inner = outstore.inner_chunks(shard)
        assert all(s % i == 0 for s, i in zip(shard, inner, strict=True)), (shard, inner)
        size = 4 * int(np.prod(inner))
        assert outstore.INNER_CHUNK_BYTES / 8 <= size <= 8 * outstore.INNER_CHUNK_BYTES or \
            inner == tuple(shard), (shard, inner, size)  # fmt: skip
    assert outstore.inner_chunks((365, 256, 256)) == (5, 256, 256)  # 1.25 MiB, not 73 days


def test_conus_layout_files_and_bytes():
    """CONUS at 250 m, 18 years, the CPU shape 16 x 16 px x 1 year, 40 % of the tiles
    with crop: the numbers the plan prints before anything runs."""
    ny, nx, tile = 11_500, 18_500, 16
    start = pd.Timestamp("2001-01-01")
    n_days = (pd.Timestamp("2018-12-31") - start).days + 1
    edges = outstore.period_edges(start, n_days, "daily")
    years = pd.date_range(start, periods=n_days, freq="D").year
    tb = [
        (int(np.argmax(years == y)), int(n_days - np.argmax(years[::-1] == y)))
        for y in range(2001, 2019)
    ]
    n_tiles = -(-ny // tile) * -(-nx // tile)
    crop_tiles = int(0.4 * n_tiles)
    lay = outstore.layout(ny=ny, nx=nx, tile_y=tile, tile_x=tile, time_bounds=tb, edges=edges,
                          n_years=18, n_crop_tiles=crop_tiles, n_crop_pixels=25_000_000,
                          variables=outstore.OUTPUT_VARIABLES, frequency="daily", n_workers=64)  # fmt: skip
    assert n_days == 6574 and lay.n_periods == 6574
    # ~3 TB of crop-pixel values for 5 daily fluxes (the figure), 28 TB as full arrays
    assert 3.2e12 < lay.bytes_crop < 3.4e12 and 2.7e13 < lay.bytes_float32 < 2.9e13
    # shards of 365 days (Zarr grids are regular): 19 per tile over 18 years with leap
    # days, so a leap year's block spills a day into the next shard (same tile, next in
    # its chain); plus one yield shard per tile
    assert lay.shard_files == crop_tiles * (5 * 19 + 1)
    assert lay.shards["nee"] == (365, 16, 16) and lay.chunks["nee"] == (365, 16, 16)
    assert lay.record_files == crop_tiles + 64 + 3
    monthly = outstore.layout(ny=ny, nx=nx, tile_y=tile, tile_x=tile, time_bounds=tb,
                              edges=outstore.period_edges(start, n_days, "monthly"), n_years=18,
                              n_crop_tiles=crop_tiles, n_crop_pixels=25_000_000,
                              variables=("nee",), frequency="monthly")  # fmt: skip
    assert monthly.n_periods == 216 and monthly.shards["nee"] == (12, 16, 16)
    annual = outstore.layout(ny=ny, nx=nx, tile_y=tile, tile_x=tile, time_bounds=tb,
                             edges=outstore.period_edges(start, n_days, "annual"), n_years=18,
                             n_crop_tiles=crop_tiles, n_crop_pixels=25_000_000,
                             variables=("nee",), frequency="annual")  # fmt: skip
    assert annual.shards["nee"] == (18, 16, 16) and annual.shard_files == crop_tiles  # all years
    assert monthly.bytes_crop == 4 * 216 * 25_000_000


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frequency", "rule"), [("monthly", "MS"), ("annual", "YS")])
def test_monthly_and_annual_sums_equal_the_daily_run(
    tiny_world, ckpt, daily, tmp_path, frequency, rule
):
    chunks = {"y": 7, "x": 9, "time": (365, 365)} if frequency == "annual" else \
        {"y": 7, "x": 9, "time": (90, 275, 365)}  # fmt: skip
    plan = make_plan(tiny_world.catalog, ckpt, start=START, end=END, bbox=bbox(tiny_world),
                     chunks=chunks, frequency=frequency)  # fmt: skip
    res = SerialExecutor().execute(plan, tmp_path / f"{frequency}.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = xr.open_zarr(tmp_path / f"{frequency}.zarr")
    want = daily[list(FLUX)].resample(time=rule).sum(skipna=False)
    assert got.sizes["time"] == want.sizes["time"] == (24 if frequency == "monthly" else 2)
    for v in FLUX:
        np.testing.assert_allclose(got[v].values, want[v].values, rtol=2e-5, atol=1e-3,
                                   equal_nan=True, err_msg=v)  # fmt: skip
        assert got[v].attrs["cell_methods"] == "time: sum"
        assert got[v].attrs["units"] == outstore.UNITS[frequency]
    np.testing.assert_allclose(
        got["yield"].values, daily["yield"].values, rtol=1e-6, equal_nan=True
    )
    b = got["time_bounds"].values
    assert pd.Timestamp(b[0, 0]) == pd.Timestamp(START) and pd.Timestamp(b[-1, 1]) == pd.Timestamp(
        "2012-01-01"
    )
    assert got["time"].attrs["bounds"] == "time_bounds"
    assert res.dataset.attrs["kgml_frequency"] == frequency


def test_chunks_that_cut_a_month_are_refused(tiny_world, ckpt):
    with pytest.raises(PlanError, match=r"--frequency monthly: time chunk 0 ends on 2010-04-10, "
                       r"inside a month; .* leave time out of --chunks"):  # fmt: skip
        make_plan(tiny_world.catalog, ckpt, start=START, end=END, chunks="time=100",
                  frequency="monthly")  # fmt: skip
    with pytest.raises(PlanError, match="time chunk 0 ends on 2010-03-31, inside a year"):
        make_plan(tiny_world.catalog, ckpt, start=START, end=END,
                  chunks={"time": (90, 275, 365)}, frequency="annual")  # fmt: skip
    with pytest.raises(PlanError, match="unknown output variable 'npp'"):
        make_plan(tiny_world.catalog, ckpt, variables="nee,npp")


def test_variables_subset_writes_only_those(tiny_world, ckpt, daily, tmp_path):
    plan = make_plan(tiny_world.catalog, ckpt, start=START, end=END, bbox=bbox(tiny_world),
                     chunks="y=7,x=9", variables="nee,yield")  # fmt: skip
    SerialExecutor().execute(plan, tmp_path / "sub.zarr")
    got = xr.open_zarr(tmp_path / "sub.zarr", decode_coords="all")
    assert sorted(got.data_vars) == ["nee", "yield"]
    np.testing.assert_allclose(got["nee"].values, daily["nee"].values, rtol=1e-6, equal_nan=True)
    assert "nee, yield daily" in str(plan)


def test_plan_and_dry_run_print_output_bytes_and_files(tiny_world, ckpt, capsys, tmp_path):
    plan = make_plan(tiny_world.catalog, ckpt, start=START, end=END, chunks="y=10,x=12")
    lay = plan.output_layout()
    assert lay.shard_files == len(plan.crop_tiles) * (5 * 2 + 1)
    text = str(plan)
    assert "ra, rh, reco, nee, gpp, yield daily (730 time steps)" in text
    assert f"{lay.files} files ({lay.shard_files} shards of 365x10x12)" in text
    rc = main(["upscale", "--catalog", str(tiny_world.catalog), "--model", str(ckpt), "--out",
               str(tmp_path / "o.zarr"), "--dry-run", "--frequency", "monthly", "--variables",
               "nee,reco"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "reco, nee monthly (" in out and "on disk (estimate)" in out
    assert not (tmp_path / "o.zarr").exists()


def test_prepare_store_writes_metadata_only_whatever_the_blocks(tiny_world, ckpt, tmp_path):
    """Set-up writes the same files for 1 block or ~200: no per-block work, no data."""
    files = {}
    for name, chunks in (("one", "y=-1,x=-1,time=-1"), ("many", "y=4,x=4,time=73")):
        plan = make_plan(tiny_world.catalog, ckpt, start=START, end=END, chunks=chunks)
        out = tmp_path / f"{name}.zarr"
        done = prepare_store(plan, out, resume=False, overwrite=False)
        assert done.shape == (*plan.crop_counts.shape, plan.n_time_chunks) and not done.any()
        files[name] = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert not any("/c/" in f for f in files[name] if f.split("/")[0] in FLUX)  # no data chunk
    assert plan.n_blocks > 150
    assert files["one"] == files["many"]
