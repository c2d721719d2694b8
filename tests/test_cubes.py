"""Cube writing, round trips and refusal of malformed cubes."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from kgml_grid import cubes
from kgml_grid.cubes import CubeError
from kgml_grid.grid import GridSpec

GRID = GridSpec("EPSG:5070", -40000.0, 2020000.0, 500.0, 6, 5)


def _sat(n_days=10, grid=GRID, start="2012-01-01"):
    t = pd.date_range(start, periods=n_days, freq="D")
    rng = np.random.default_rng(0)
    data = {
        v: (("time", "y", "x"), rng.random((n_days, grid.ny, grid.nx)).astype("float32"))
        for v in ("gpp_sat", "lai", "soil_moisture")
    }
    return cubes.annotate(xr.Dataset(data, coords={"time": t}), grid, title="test")


def _soil(grid=GRID):
    from kgml_grid import schema

    data = {}
    for v in schema.LAYERS["soil"].required:
        lo, hi = schema.VARIABLES[v].valid_range
        data[v] = (("y", "x"), np.full(grid.shape, (lo + hi) / 2, "float32"))
    return cubes.annotate(xr.Dataset(data), grid, title="soil")


@pytest.fixture(scope="module")
def sat_store(tmp_path_factory):
    p = tmp_path_factory.mktemp("cubes") / "satellite.zarr"
    cubes.write_cube(_sat(), p, {"time": 4, "y": 3, "x": 5})
    return p


def test_round_trip_keeps_values_attrs_crs_and_chunks(sat_store):
    ds = cubes.open_cube(sat_store, "satellite", crs="EPSG:5070")
    src = _sat()
    xr.testing.assert_equal(ds[["gpp_sat", "lai"]].load(), src[["gpp_sat", "lai"]])
    assert ds["gpp_sat"].attrs["units"] == "g m-2 d-1"
    assert ds["gpp_sat"].attrs["standard_name"].startswith("gross_primary_productivity")
    assert ds.chunks["time"] == (4, 4, 2) and ds.chunks["y"] == (3, 3)
    assert ds.attrs["Conventions"] == "CF-1.8" and int(ds.attrs[cubes.COMPLETE_ATTR]) == 1


@settings(max_examples=15, deadline=None)
@given(
    nt=st.integers(1, 12), ny=st.integers(1, 7), nx=st.integers(2, 7),
    ct=st.integers(1, 12), cy=st.integers(1, 7), cx=st.integers(1, 7),
)  # fmt: skip
def test_round_trip_any_shape_and_chunking(tmp_path_factory, nt, ny, nx, ct, cy, cx):
    g = GridSpec("EPSG:5070", 0.0, 0.0, 250.0, ny, nx)
    src = _sat(nt, g)
    p = tmp_path_factory.mktemp("rt") / "s.zarr"
    cubes.write_cube(src, p, {"time": ct, "y": cy, "x": cx})
    back = xr.open_zarr(p, consolidated=False, decode_coords="all").load()
    for v in ("gpp_sat", "lai", "soil_moisture"):
        np.testing.assert_array_equal(back[v].values, src[v].values)
    np.testing.assert_array_equal(back["time"].values, src["time"].values)
    np.testing.assert_allclose(back["x"].values, g.x)


def _copy(store, tmp_path):
    dst = tmp_path / "bad.zarr"
    shutil.copytree(store, dst)
    return dst


def test_missing_variable_refused():
    ds = _sat().drop_vars("gpp_sat")
    with pytest.raises(CubeError, match=r"layer 'satellite'.*missing variable 'gpp_sat'"):
        cubes.validate_layer(ds, "satellite", source="x.zarr")


def test_wrong_units_refused():
    ds = _sat()
    ds["gpp_sat"].attrs["units"] = "kg m-2 s-1"
    with pytest.raises(CubeError, match=r"'gpp_sat' has units 'kg m-2 s-1', expected 'g m-2 d-1'"):
        cubes.validate_layer(ds, "satellite")


def test_unit_alias_accepted():
    ds = _sat()
    ds["gpp_sat"].attrs["units"] = "gC m-2 d-1"
    cubes.validate_layer(ds, "satellite")


def test_non_daily_time_refused():
    ds = _sat()
    t = ds["time"].values.copy()
    t[5:] = t[5:] + np.timedelta64(1, "D")
    with pytest.raises(
        CubeError, match=r"time is not daily: 2012-01-05 is followed by 2012-01-07 \(2 days\)"
    ):
        cubes.validate_layer(ds.assign_coords(time=t), "satellite")


def test_non_monotonic_time_refused():
    ds = _sat()
    t = ds["time"].values.copy()
    t[[3, 4]] = t[[4, 3]]
    with pytest.raises(
        CubeError, match=r"time is not strictly increasing: 2012-01-05 is followed by 2012-01-04"
    ):
        cubes.validate_layer(ds.assign_coords(time=t), "satellite")


def test_wrong_dims_refused():
    ds = _sat().transpose("time", "x", "y")
    with pytest.raises(
        CubeError, match=r"'gpp_sat' has dims \('time', 'x', 'y'\), expected \('time', 'y', 'x'\)"
    ):
        cubes.validate_layer(ds, "satellite")


def test_wrong_crs_refused(sat_store):
    with pytest.raises(CubeError, match=r"CRS is EPSG:5070, expected EPSG:4326"):
        cubes.open_cube(sat_store, "satellite", crs="EPSG:4326")


def test_missing_crs_refused():
    ds = _sat().drop_vars("spatial_ref")
    with pytest.raises(CubeError, match=r"no CRS: the 'spatial_ref' coordinate is missing"):
        cubes.validate_layer(ds, "satellite")


def test_irregular_grid_refused():
    ds = _sat()
    x = ds["x"].values.copy()
    x[-1] += 100
    with pytest.raises(CubeError, match=r"x coordinate is not regularly spaced"):
        cubes.validate_layer(ds.assign_coords(x=x), "satellite")


def test_misaligned_grid_refused():
    shifted = GridSpec("EPSG:5070", GRID.x0 + 250.0, GRID.y0, GRID.res, GRID.ny, GRID.nx)
    with pytest.raises(
        CubeError, match=r"layer 'soil'\): grid is misaligned with layer 'satellite'"
    ):
        cubes.validate_alignment({"satellite": _sat(), "soil": _soil(shifted)})


def test_weather_not_covering_target_refused():
    w = GridSpec("EPSG:5070", GRID.x0, GRID.y0, 1000.0, 2, 2)  # covers 2x2 km, target is 2.5x3 km
    t = pd.date_range("2012-01-01", periods=10, freq="D")
    data = {
        v: (("time", "y", "x"), np.zeros((10, 2, 2), "float32"))
        for v in ("tair", "swrad", "vpd", "precip")
    }
    weather = cubes.annotate(xr.Dataset(data, coords={"time": t}), w, title="w")
    with pytest.raises(CubeError, match=r"weather.*does not cover the target grid"):
        cubes.validate_alignment({"satellite": _sat(), "weather": weather})


def test_lat_lon_weather_covering_target_accepted():
    w = GridSpec("EPSG:4326", -97.0, 42.0, 0.125, 16, 16)
    t = pd.date_range("2012-01-01", periods=10, freq="D")
    data = {
        v: (("time", "y", "x"), np.zeros((10, 16, 16), "float32"))
        for v in ("tair", "swrad", "vpd", "precip")
    }
    weather = cubes.annotate(xr.Dataset(data, coords={"time": t}), w, title="w")
    cubes.validate_layer(weather, "weather", crs="EPSG:4326")
    g = cubes.validate_alignment({"satellite": _sat(), "weather": weather})
    assert g.shape == GRID.shape


def test_layers_not_overlapping_in_time_refused():
    a, b = _sat(), _sat(start="2014-01-01")
    with pytest.raises(CubeError, match=r"do not overlap in time"):
        cubes.validate_alignment({"satellite": a, "truth": b.rename({"gpp_sat": "gpp"})})


def test_incomplete_store_refused(tmp_path):
    p = tmp_path / "s.zarr"
    cubes.init_store(_sat(), p, {"time": 5})  # the writer "died" before mark_complete
    with pytest.raises(CubeError, match=r"the store is incomplete"):
        cubes.open_cube(p, "satellite")


def test_open_missing_store_refused(tmp_path):
    with pytest.raises(CubeError, match=r"no Zarr store here \(layer 'soil'\)"):
        cubes.open_cube(tmp_path / "nope.zarr", "soil")


def test_unknown_layer_refused():
    with pytest.raises(CubeError, match=r"unknown layer 'rain'"):
        cubes.validate_layer(_sat(), "rain")
