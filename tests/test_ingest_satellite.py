"""Satellite series: GeoTIFFs in UTM 14N onto an EPSG:5070 grid, checked against hand values."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from affine import Affine
from pyproj import Transformer

from kgml_grid import cubes
from kgml_grid.grid import centred_grid
from kgml_grid.ingest import IngestError, RasterSource, ingest_satellite
from kgml_grid.ingest.examples import write_geotiff
from kgml_grid.ingest.rasters import inspect_raster, read_tile
from kgml_grid.ingest.tiles import plan_tiles

UTM = "EPSG:32614"
TARGET = centred_grid(-96.47, 41.17, ny=12, nx=16, res=250.0, crs="EPSG:5070")
CHUNKS = {"time": 3, "y": 8, "x": 8}
SRC_RES = 100.0
GPP_DAYS = (1, 2, 4, 7)
PATTERN = "SLOPE_GPP_{date:%Y%j}.tif"


def _source_transform() -> tuple[Affine, tuple[int, int]]:
    tr = Transformer.from_crs("EPSG:5070", UTM, always_xy=True)
    w, s, e, n = tr.transform_bounds(*TARGET.bounds, densify_pts=21)
    x0 = math.floor(w / SRC_RES) * SRC_RES - 1000
    y0 = math.ceil(n / SRC_RES) * SRC_RES + 1000
    nx = math.ceil((e + 1000 - x0) / SRC_RES)
    ny = math.ceil((y0 - s + 1000) / SRC_RES)
    return Affine(SRC_RES, 0, x0, 0, -SRC_RES, y0), (ny, nx)


SRC_TR, SRC_SHAPE = _source_transform()


def _uv() -> tuple[np.ndarray, np.ndarray]:
    """Continuous source column/row coordinates of every target cell centre."""
    yy, xx = np.meshgrid(TARGET.y, TARGET.x, indexing="ij")
    X, Y = Transformer.from_crs("EPSG:5070", UTM, always_xy=True).transform(xx, yy)
    return (X - SRC_TR.c) / SRC_RES, (SRC_TR.f - Y) / SRC_RES


def _gpp_raw(day: int) -> np.ndarray:
    cols = np.arange(SRC_SHAPE[1])
    return np.broadcast_to(100 * day + 10 * cols, SRC_SHAPE).astype("int16")


def _gpp_expected(day: int, u: np.ndarray) -> np.ndarray:  # scale 0.01, offset 0.5 from tags
    return 0.01 * (100 * day + 10 * (u - 0.5)) + 0.5


NODATA_BLOCK = (slice(20, 35), slice(30, 45))  # source rows, cols


def _write_inputs(root: Path) -> dict[str, Path]:
    dirs = {k: root / k for k in ("gpp", "lai", "sm", "more")}
    for day in GPP_DAYS:  # scale/offset as scale_factor/add_offset tags
        write_geotiff(dirs["gpp"] / f"SLOPE_GPP_2015{day:03d}.tif", _gpp_raw(day), crs=UTM,
                      transform=SRC_TR, nodata=-9999, tags={"scale_factor": "0.01", "add_offset": "0.5"})  # fmt: skip
    for day in range(1, 8):  # constant LAI, scale as the band's GDAL scale
        write_geotiff(dirs["lai"] / f"GLASS01B01.V40.A2015{day:03d}.2019353.tif",
                      np.full(SRC_SHAPE, 345, "int16"), crs=UTM, transform=SRC_TR, scale=0.01, nodata=-1)  # fmt: skip
    sm = np.full(SRC_SHAPE, 0.3, "float32")
    sm[NODATA_BLOCK] = -9999.0
    write_geotiff(dirs["sm"] / "SMAP_L4_SM_gph_20150103T013000_Vv7032_001.tif", sm, crs=UTM,
                  transform=SRC_TR, nodata=-9999.0)  # fmt: skip
    for day in (5, 7):
        write_geotiff(dirs["more"] / f"SLOPE_GPP_2015{day:03d}.tif", _gpp_raw(day), crs=UTM,
                      transform=SRC_TR, nodata=-9999, tags={"scale_factor": "0.01", "add_offset": "0.5"})  # fmt: skip
    return dirs


def _sources(dirs: dict[str, Path]) -> list[RasterSource]:
    return [
        RasterSource("gpp_sat", (str(dirs["gpp"]),), pattern=PATTERN),
        RasterSource("lai", (str(dirs["lai"] / "*.tif"),), pattern="GLASS01B01.V40.A{date:%Y%j}.*.tif"),
        RasterSource("soil_moisture", (str(dirs["sm"]),), pattern="SMAP_L4_SM_gph_{date:%Y%m%d}T*.tif",
                     resampling="nearest"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sat(tmp_path_factory):
    root = tmp_path_factory.mktemp("sat")
    dirs = _write_inputs(root)
    res = ingest_satellite(_sources(dirs), root / "satellite.zarr", grid=TARGET, chunks=CHUNKS)
    return dirs, res, cubes.open_cube(res.path, "satellite", crs="EPSG:5070").load()


def test_cube_conforms_and_keeps_every_day(sat):
    _, res, ds = sat
    assert ds.sizes == {"time": 7, "y": 12, "x": 16}
    assert list(pd.DatetimeIndex(ds.time.values).day) == [1, 2, 3, 4, 5, 6, 7]
    assert cubes.grid_of(ds, layer="satellite") == cubes.grid_of(
        cubes.annotate(ds, TARGET, title="t")
    )
    assert ds.gpp_sat.attrs["units"] == "g m-2 d-1" and ds.gpp_sat.dtype == np.float32
    assert ds.gpp_sat.encoding["chunks"] == (3, 8, 8)
    assert res.missing == {"gpp_sat": 3, "lai": 0, "soil_moisture": 6}
    assert res.tiles == 4 and res.files == 4 + 7 + 1


def test_missing_dates_are_nan_days_not_dropped(sat):
    _, _, ds = sat
    g = ds.gpp_sat.values
    for k, day in enumerate(range(1, 8)):
        assert np.isnan(g[k]).all() == (day not in GPP_DAYS), day
    assert np.isnan(ds.soil_moisture.values[[0, 1, 3, 4, 5, 6]]).all()


def test_constant_field_with_band_scale(sat):
    _, _, ds = sat
    np.testing.assert_allclose(ds.lai.values, 3.45, rtol=1e-6)


def test_linear_ramp_bilinear_matches_hand_values_with_tag_scale_and_offset(sat):
    _, _, ds = sat
    u, _ = _uv()
    # GDAL widens the bilinear kernel by the 2.5x downsampling ratio; on a ramp of 0.1 per
    # source pixel that leaves up to ~0.04 pixel (0.004) of error: 0.005 pins the geolocation
    # to 5 m and the scale/offset exactly (a wrong offset or scale is off by >= 0.1)
    for k, day in enumerate(range(1, 8)):
        if day in GPP_DAYS:
            np.testing.assert_allclose(ds.gpp_sat.values[k], _gpp_expected(day, u), atol=5e-3)


def test_nodata_block_is_nan_with_nearest(sat):
    _, _, ds = sat
    u, v = _uv()
    col, row = np.floor(u), np.floor(v)
    inside = (row >= 20) & (row < 35) & (col >= 30) & (col < 45)
    clear = (np.abs(u - np.round(u)) > 0.01) & (np.abs(v - np.round(v)) > 0.01)
    sm = ds.soil_moisture.values[2]
    assert inside.sum() > 4 and (~inside).sum() > 4
    assert np.isnan(sm[inside & clear]).all()
    np.testing.assert_allclose(sm[~inside & clear], 0.3, rtol=1e-6)


def test_nearest_ramp_and_user_scale_override_by_hand(sat):
    dirs, _, _ = sat
    info = inspect_raster(dirs["gpp"] / "SLOPE_GPP_2015004.tif")
    assert (info.scale, info.offset, info.nodata) == (0.01, 0.5, -9999.0)
    from kgml_grid.ingest.rasters import ValueRule

    out = np.full(TARGET.shape, np.nan, "float32")
    for t in plan_tiles(TARGET.shape, (5, 7)):
        out[t.row0 : t.row1, t.col0 : t.col1] = read_tile(
            info, TARGET, t, rule=ValueRule(scale=0.02, offset=0.0), resampling="nearest"
        )
    u, _ = _uv()
    clear = np.abs(u - np.round(u)) > 0.01
    np.testing.assert_allclose(out[clear], (0.02 * (400 + 10 * np.floor(u)))[clear], rtol=1e-6)


def test_tile_by_tile_is_close_to_whole_raster_reprojection(sat):
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    _, _, ds = sat
    raw = _gpp_raw(2).astype("float32") * np.float32(0.01) + np.float32(0.5)
    whole = np.full(TARGET.shape, np.nan, "float32")
    reproject(raw, whole, src_transform=SRC_TR, src_crs=UTM, src_nodata=np.nan,
              dst_transform=Affine(250.0, 0, TARGET.x0, 0, -250.0, TARGET.y0), dst_crs="EPSG:5070",
              dst_nodata=np.nan, resampling=Resampling.bilinear)  # fmt: skip
    # GDAL's approximate transformer (0.125 px) is fitted per destination extent, so even
    # GDAL itself differs by ~0.01 px between a whole grid and its tiles
    np.testing.assert_allclose(ds.gpp_sat.values[1], whole, rtol=0, atol=2e-3)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "cubic", "average", "lanczos"])
def test_windowed_reads_equal_warping_the_whole_source_onto_each_tile(sat, tmp_path, method):
    """Reading only each tile's window (plus the kernel's pad) changes nothing, for any kernel."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    raw = np.random.default_rng(0).integers(0, 1000, SRC_SHAPE).astype("int16")
    info = inspect_raster(
        write_geotiff(tmp_path / "noise.tif", raw, crs=UTM, transform=SRC_TR, scale=0.001)
    )
    src = raw.astype("float32") * np.float32(0.001)
    dst = Affine(250.0, 0, TARGET.x0, 0, -250.0, TARGET.y0)
    for t in plan_tiles(TARGET.shape, (5, 7)):
        full = np.full(t.shape, np.nan, "float32")
        reproject(src, full, src_transform=SRC_TR, src_crs=UTM, src_nodata=np.nan,
                  dst_transform=dst @ Affine.translation(t.col0, t.row0), dst_crs="EPSG:5070",
                  dst_nodata=np.nan, resampling=Resampling[method])  # fmt: skip
        np.testing.assert_allclose(
            read_tile(info, TARGET, t, resampling=method), full, rtol=0, atol=1e-6
        )


# --- appending --------------------------------------------------------------------------------


@pytest.fixture
def short_cube(sat, tmp_path):
    dirs, _, _ = sat
    out = tmp_path / "sat.zarr"
    ingest_satellite([RasterSource("gpp_sat", (str(dirs["gpp"]),), pattern=PATTERN)], out, grid=TARGET,
                     chunks=CHUNKS, end="2015-01-04")  # fmt: skip
    return dirs, out


def test_append_extends_the_daily_axis(short_cube):
    dirs, out = short_cube
    res = ingest_satellite(
        [RasterSource("gpp_sat", (str(dirs["more"]),), pattern=PATTERN)], out, append=True
    )
    assert res.appended and res.sizes["time"] == 7
    ds = cubes.open_cube(out, "satellite").load()
    assert pd.DatetimeIndex(ds.time.values).equals(pd.date_range("2015-01-01", "2015-01-07"))
    u, _ = _uv()
    for k, day in enumerate(range(1, 8)):
        if day in (1, 2, 4, 5, 7):
            np.testing.assert_allclose(ds.gpp_sat.values[k], _gpp_expected(day, u), atol=5e-3)
        else:
            assert np.isnan(ds.gpp_sat.values[k]).all()
    assert "appended time 2015-01-05" in ds.attrs["history"]


def test_append_refuses_overlap_and_gaps_unless_filled(short_cube, tmp_path):
    dirs, out = short_cube
    src = RasterSource("gpp_sat", (str(dirs["gpp"] / "SLOPE_GPP_2015004.tif"),), pattern=PATTERN)
    with pytest.raises(
        IngestError, match=r"SLOPE_GPP_2015004.tif: date 2015-01-04 overlaps the cube"
    ):
        ingest_satellite([src], out, append=True)
    later = RasterSource("gpp_sat", (str(dirs["gpp"] / "SLOPE_GPP_2015007.tif"),), pattern=PATTERN)
    with pytest.raises(IngestError, match=r"SLOPE_GPP_2015007.tif: the new dates start 2015-01-07 .* ends "
                                          r"2015-01-04: a gap of 2 day\(s\); pass fill_gap=True"):  # fmt: skip
        ingest_satellite([later], out, append=True)
    assert cubes.open_cube(out, "satellite").sizes["time"] == 4  # refused before writing
    ingest_satellite([later], out, append=True, fill_gap=True)
    g = cubes.open_cube(out, "satellite").gpp_sat.values
    assert g.shape[0] == 7 and np.isnan(g[4:6]).all() and not np.isnan(g[6]).any()


def test_append_refuses_a_new_variable_and_a_different_grid(short_cube):
    dirs, out = short_cube
    with pytest.raises(IngestError, match=r"cannot append \['lai'\]: the cube holds \['gpp_sat'\]"):
        ingest_satellite([RasterSource("lai", (str(dirs["lai"]),), pattern="GLASS01B01.V40.A{date:%Y%j}.*.tif")],
                         out, append=True)  # fmt: skip
    other = centred_grid(-96.47, 41.17, ny=12, nx=16, res=500.0, crs="EPSG:5070")
    with pytest.raises(IngestError, match="the target grid differs from the cube's grid"):
        ingest_satellite([RasterSource("gpp_sat", (str(dirs["more"]),), pattern=PATTERN)], out, grid=other,
                         append=True)  # fmt: skip


def test_a_failed_append_is_undone(short_cube, monkeypatch):
    import kgml_grid.ingest.satellite as sat_mod

    dirs, out = short_cube
    before = cubes.open_cube(out, "satellite").load()
    calls = {"n": 0}
    real = sat_mod.read_tile

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise IngestError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(sat_mod, "read_tile", flaky)
    with pytest.raises(IngestError, match="disk on fire"):
        ingest_satellite(
            [RasterSource("gpp_sat", (str(dirs["more"]),), pattern=PATTERN)], out, append=True
        )
    after = cubes.open_cube(out, "satellite").load()  # complete again, old length, same values
    xr.testing.assert_identical(after.gpp_sat, before.gpp_sat)
    monkeypatch.undo()
    assert ingest_satellite([RasterSource("gpp_sat", (str(dirs["more"]),), pattern=PATTERN)], out,
                            append=True).sizes["time"] == 7  # fmt: skip
    g = cubes.open_cube(out, "satellite").gpp_sat.values
    assert np.isnan(g[5]).all()  # no stale values from the undone append


# --- refusals ---------------------------------------------------------------------------------


def _one(tmp: Path, name: str, *, crs: str | None = UTM, shape=(20, 20), transform=SRC_TR) -> Path:
    return write_geotiff(tmp / name, np.ones(shape, "int16"), crs=crs, transform=transform)


def _refused(tmp: Path, match: str, *, pattern: str = PATTERN, **kw) -> None:
    out = tmp / "out.zarr"
    with pytest.raises(IngestError, match=match):
        ingest_satellite([RasterSource("gpp_sat", (str(tmp / "in"),), pattern=pattern, **kw)], out,
                         grid=TARGET, chunks=CHUNKS)  # fmt: skip
    assert not out.exists() and not (tmp / ".out.zarr.partial").exists()


def test_refuses_a_file_without_crs(tmp_path):
    _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    bad = _one(tmp_path / "in", "SLOPE_GPP_2015002.tif", crs=None)
    _refused(tmp_path, rf"{bad}: has no CRS")


def test_refuses_a_file_in_another_crs(tmp_path):
    _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    bad = _one(tmp_path / "in", "SLOPE_GPP_2015002.tif", crs="EPSG:32615")
    _refused(tmp_path, rf"{bad}: CRS EPSG:32615 differs from EPSG:32614 of the other gpp_sat files")


def test_refuses_files_not_in_the_expected_crs(tmp_path):
    f = _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    _refused(tmp_path, rf"{f}: CRS is EPSG:32614, expected EPSG:4326", crs="EPSG:4326")


def test_refuses_an_unreadable_file(tmp_path):
    _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    bad = tmp_path / "in" / "SLOPE_GPP_2015002.tif"
    bad.write_text("this is not a GeoTIFF")
    _refused(tmp_path, rf"{bad}: cannot be read as a raster")


def test_refuses_a_date_that_does_not_parse(tmp_path):
    _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    bad = _one(tmp_path / "in", "SLOPE_GPP_2015x02.tif")
    _refused(tmp_path, rf"{bad}: the file name does not match the date pattern")
    bad.unlink()
    bad = _one(tmp_path / "in", "SLOPE_GPP_2015366.tif")
    _refused(tmp_path, rf"{bad}: the date in the file name does not parse")


def test_refuses_mismatched_shapes(tmp_path):
    _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    bad = _one(tmp_path / "in", "SLOPE_GPP_2015002.tif", shape=(20, 21))
    _refused(
        tmp_path, rf"{bad}: shape \(20, 21\) differs from \(20, 20\) of the other gpp_sat files"
    )


def test_refuses_a_shifted_grid(tmp_path):
    _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    bad = _one(
        tmp_path / "in", "SLOPE_GPP_2015002.tif", transform=SRC_TR @ Affine.translation(1, 0)
    )
    _refused(tmp_path, rf"{bad}: grid \(origin .*\) differs from the other gpp_sat files")


def test_refuses_a_repeated_date(tmp_path):
    first = _one(tmp_path / "in", "SLOPE_GPP_2015001.tif")
    _one(tmp_path / "in", "SLOPE_GPP_2015001_v2.tif")
    _refused(tmp_path, rf"SLOPE_GPP_2015001_v2.tif: date 2015-01-01 of gpp_sat is also given by {first}",
             pattern="SLOPE_GPP_{date:%Y%j}*.tif")  # fmt: skip


def test_refuses_a_raster_that_misses_the_target(tmp_path):
    far = Affine(SRC_RES, 0, 200000.0, 0, -SRC_RES, 4000000.0)
    bad = _one(tmp_path / "in", "SLOPE_GPP_2015001.tif", transform=far)
    _refused(tmp_path, rf"{bad}: does not overlap the target grid")


def test_refuses_bad_variables_and_existing_output(sat, tmp_path):
    dirs, res, _ = sat
    with pytest.raises(IngestError, match="'ndvi' is not a variable of the satellite layer"):
        ingest_satellite([RasterSource("ndvi", (str(dirs["gpp"]),), pattern=PATTERN)], tmp_path / "x.zarr",
                         grid=TARGET)  # fmt: skip
    with pytest.raises(IngestError, match="the satellite layer needs gpp_sat"):
        ingest_satellite(_sources(dirs)[1:], tmp_path / "x.zarr", grid=TARGET)
    with pytest.raises(IngestError, match=r"satellite\.zarr: exists; pass overwrite=True"):
        ingest_satellite(_sources(dirs)[:1], res.path, grid=TARGET)
    with pytest.raises(IngestError, match="resampling 'bicubic' is not one of"):
        RasterSource("gpp_sat", ("x",), resampling="bicubic")


def test_out_of_range_values_are_masked_with_a_warning(sat, tmp_path):
    from kgml_grid.ingest import IngestWarning

    dirs, _, _ = sat
    src = RasterSource("gpp_sat", (str(dirs["gpp"] / "SLOPE_GPP_2015001.tif"),), pattern=PATTERN, scale=1.0,
                       offset=0.0)  # fmt: skip
    with pytest.warns(
        IngestWarning, match=r"gpp_sat \d+ \(valid \(0.0, 60.0\); first file .*SLOPE_GPP_2015001"
    ):
        res = ingest_satellite([src], tmp_path / "s.zarr", grid=TARGET, chunks=CHUNKS)
    assert res.masked["gpp_sat"] == 12 * 16
    assert np.isnan(cubes.open_cube(res.path, "satellite").gpp_sat.values).all()


def test_overwrite_replaces_a_cube(sat, tmp_path):
    dirs, _, _ = sat
    out = tmp_path / "s.zarr"
    shutil.copytree(sat[1].path, out)
    res = ingest_satellite(_sources(dirs)[:1], out, grid=TARGET, chunks=CHUNKS, overwrite=True,
                           start="2015-01-02", end="2015-01-09")  # fmt: skip
    ds = cubes.open_cube(out, "satellite")
    assert list(ds.data_vars) == ["gpp_sat"] and res.sizes["time"] == 8
    assert str(ds.time.values[0])[:10] == "2015-01-02" and np.isnan(ds.gpp_sat.values[-2:]).all()


# --- NetCDF / HDF5 layers and band choice --------------------------------------------------------


def _layer_netcdf(path: Path, raw: np.ndarray, *, crs_how: str, south_up: bool = False,
                  group: str | None = None) -> Path:  # fmt: skip
    """The GeoTIFF fixture's grid and values as a NetCDF layer (int16, scale/offset, fill)."""
    import netCDF4
    from pyproj import CRS

    ny, nx = raw.shape
    x = SRC_TR.c + SRC_RES * (np.arange(nx) + 0.5)
    y = SRC_TR.f - SRC_RES * (np.arange(ny) + 0.5)
    if south_up:
        y, raw = y[::-1], raw[::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as nc:
        g = nc.createGroup(group) if group else nc
        g.createDimension("y", ny)
        g.createDimension("x", nx)
        g.createDimension("time", 1)
        g.createVariable("y", "f8", ("y",))[:] = y
        g.createVariable("x", "f8", ("x",))[:] = x
        v = g.createVariable("GPP", "i2", ("time", "y", "x"), fill_value=np.int16(-9999))
        v.scale_factor, v.add_offset = 0.01, 0.5
        v.set_auto_maskandscale(False)
        v[0] = raw
        if crs_how == "grid_mapping":
            m = g.createVariable("spatial_ref", "i4")
            m.setncatts(
                {**CRS.from_user_input(UTM).to_cf(), "crs_wkt": CRS.from_user_input(UTM).to_wkt()}
            )
            v.grid_mapping = "spatial_ref"
        elif crs_how == "proj_attribute":
            v.crs = "+proj=utm +zone=14 +datum=WGS84 +units=m +no_defs"
        g.createVariable("quality", "u1", ("y", "x"))[:] = 0
    return path


@pytest.mark.parametrize(("crs_how", "south_up", "group"), [
    ("grid_mapping", False, None), ("proj_attribute", True, None), ("grid_mapping", False, "Geophysical_Data"),
])  # fmt: skip
def test_netcdf_and_hdf5_layers_ingest_like_the_geotiff(sat, tmp_path, crs_how, south_up, group):
    _, _, ds = sat
    suffix = "h5" if group else "nc"
    for day in GPP_DAYS:
        _layer_netcdf(tmp_path / "nc" / f"SLOPE_GPP_2015{day:03d}.{suffix}", _gpp_raw(day), crs_how=crs_how,
                      south_up=south_up, group=group)  # fmt: skip
    layer = f"{group}/GPP" if group else "GPP"
    src = RasterSource(
        "gpp_sat", (str(tmp_path / "nc"),), pattern=f"SLOPE_GPP_{{date:%Y%j}}.{suffix}", layer=layer
    )
    res = ingest_satellite([src], tmp_path / "s.zarr", grid=TARGET, chunks=CHUNKS)
    got = cubes.open_cube(res.path, "satellite").gpp_sat.values
    np.testing.assert_allclose(got, ds.gpp_sat.values, rtol=0, atol=1e-5, equal_nan=True)
    info = inspect_raster(tmp_path / "nc" / f"SLOPE_GPP_2015001.{suffix}", layer=layer)
    assert (info.scale, info.offset, info.nodata, info.layer.flip_y) == (
        0.01,
        0.5,
        -9999.0,
        south_up,
    )


def test_netcdf_layer_refusals_name_the_cause(tmp_path):
    f = _layer_netcdf(tmp_path / "a.nc", _gpp_raw(1), crs_how="grid_mapping")
    with pytest.raises(
        IngestError,
        match=r"a.nc: holds 2 gridded variables \(GPP, quality\); choose one with layer=",
    ):
        inspect_raster(f)
    with pytest.raises(
        IngestError, match=r"a.nc: has no variable 'gpp'; gridded variables: GPP, quality"
    ):
        inspect_raster(f, layer="gpp")
    with pytest.raises(
        IngestError,
        match=r"a.nc: band=2 applies to multi-band GeoTIFFs; choose a NetCDF/HDF5 layer",
    ):
        inspect_raster(f, band=2, layer="GPP")
    g = _layer_netcdf(tmp_path / "b.nc", _gpp_raw(1), crs_how="none")
    with pytest.raises(
        IngestError,
        match=r"b.nc: variable 'GPP' has no CRS: no CF grid_mapping, no PROJ/WKT attribute",
    ):
        inspect_raster(g, layer="GPP")
    tif = write_geotiff(tmp_path / "c.tif", _gpp_raw(1), crs=UTM, transform=SRC_TR)
    with pytest.raises(IngestError, match=r"c.tif: layer='GPP' applies to NetCDF/HDF5 files"):
        inspect_raster(tif, layer="GPP")


def test_a_multi_band_geotiff_needs_a_band(tmp_path):
    import rasterio

    p = tmp_path / "rgb.tif"
    with rasterio.open(p, "w", driver="GTiff", width=SRC_SHAPE[1], height=SRC_SHAPE[0], count=3, dtype="int16",
                       crs=UTM, transform=SRC_TR) as dst:  # fmt: skip
        for b in (1, 2, 3):
            dst.write(_gpp_raw(b), b)
        dst.set_band_description(2, "nir")
    with pytest.raises(
        IngestError,
        match=r"rgb.tif: has 3 bands \(2: nir\); choose one with band= \(--band VAR=N, "
        r"1..3\): a multi-band file is never read as band 1 silently",
    ):
        inspect_raster(p)
    with pytest.raises(IngestError, match=r"rgb.tif: has 3 band\(s\); band 4 was requested"):
        inspect_raster(p, band=4)
    info = inspect_raster(p, band=2)
    out = read_tile(info, TARGET, plan_tiles(TARGET.shape, TARGET.shape)[0], resampling="nearest")
    u, _ = _uv()
    clear = np.abs(u - np.round(u)) > 0.01
    np.testing.assert_allclose(out[clear], (200 + 10 * np.floor(u))[clear], rtol=1e-6)
