"""kgml_grid.predict: a lazy Dataset from the engine's blocks, equal to the upscaled store."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import kgml_grid
from kgml_grid import lazy
from kgml_grid.execute import SerialExecutor, open_output
from kgml_grid.plan import DAILY_VARS, make_plan

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

# a small upscaling per module (tens of seconds here)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

VARS = (*DAILY_VARS, "yield")
START, END = "2010-01-01", "2011-12-31"
CHUNKS = {"y": 8, "x": 8, "time": (200, 300, 230)}  # uneven: year ends inside chunks


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8, seed=1)


@pytest.fixture(scope="module")
def plan(tiny_world, ckpt):
    return make_plan(tiny_world.catalog, ckpt, start=START, end=END, chunks=CHUNKS)


@pytest.fixture(scope="module")
def store(plan, tmp_path_factory):
    out = tmp_path_factory.mktemp("up") / "out.zarr"
    SerialExecutor().execute(plan, out)
    return open_output(out)


def test_building_computes_nothing(tiny_world, ckpt, monkeypatch):
    calls = []
    real = lazy.compute_block
    monkeypatch.setattr(lazy, "compute_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = kgml_grid.predict(tiny_world.catalog, ckpt, start=START, end=END, chunks=CHUNKS)
    assert calls == []
    assert all(ds[v].chunks is not None for v in VARS)  # dask-backed
    assert ds["ra"].chunks[0] == CHUNKS["time"]
    ds["ra"].isel(time=slice(0, 5)).compute()
    assert len(calls) > 0


def test_predict_equals_the_upscaled_store(plan, store):
    ds = lazy.predict(plan)
    assert set(VARS) <= set(ds.data_vars)
    import dask

    with dask.config.set(scheduler="threads"):
        got = ds.compute()
    for v in VARS:
        a, b = got[v].values, store[v].values
        assert a.shape == b.shape, v
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=v)
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, equal_nan=True, err_msg=v)
    assert np.isfinite(got["yield"].values).any()  # yields at both year ends
    assert np.isfinite(got["ra"].values).any()
    assert got["ra"].attrs["units"] == store["ra"].attrs["units"]


def test_predict_refuses_mixed_arguments(plan, ckpt, tiny_world):
    with pytest.raises(TypeError, match="chunks are the plan's"):
        lazy.predict(plan, chunks="y=4")
    with pytest.raises(TypeError, match="give the checkpoint directory"):
        lazy.predict(tiny_world.catalog)


def test_perturbed_inputs_change_outputs_and_bad_names_are_refused(plan):
    import dask

    base = lazy.predict(plan)["rh"].isel(time=slice(0, 200))
    warm = lazy.predict(plan, perturb={"tair": ("add", 1.0)})["rh"].isel(time=slice(0, 200))
    with dask.config.set(scheduler="threads"):
        d = float(abs(warm - base).max().compute())
    assert d > 0
    bad = lazy.predict(plan, perturb={"tmax": ("add", 1.0)})["rh"].isel(time=slice(0, 5))
    with pytest.raises(
        ValueError,
        match=r"perturb: 'tmax' is not a model input read by a block \(expected one of .*tair",
    ):
        bad.compute(scheduler="sync")


def test_predict_to_zarr_round_trips(tiny_world, ckpt, tmp_path):
    import dask
    import xarray as xr

    ds = lazy.predict(
        tiny_world.catalog, ckpt, start="2010-01-01", end="2010-12-31", chunks="y=10,x=12"
    )
    with dask.config.set(scheduler="threads"):
        ds.to_zarr(tmp_path / "p.zarr", zarr_format=3, consolidated=False)
        want = ds["nee"].values
    got = xr.open_zarr(tmp_path / "p.zarr", consolidated=False)["nee"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True)
    assert np.isfinite(got).any()
