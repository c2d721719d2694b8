"""Every gridded real file of ``shared/data/real/rasters`` through its ``kgml-grid ingest``
command: ingested (values checked against the file, or against rioxarray's
``reproject_match``) or refused with the message that names the real cause.

The files are used as they are; where a test needs a variant (a whole day of hourly
NLDAS-2, the gridMET variables a folder lacks) it writes a modified copy or a companion
file in a temporary folder. Facts about each file: ``shared/data/real/README.md``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kgml_grid import cubes
from kgml_grid.cli import main
from kgml_grid.ingest import IngestWarning
from kgml_grid.ingest.examples import write_netcdf
from kgml_grid.ingest.weather import saturation_vp

REAL = Path(
    os.environ.get(
        "KGML_REAL_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    )
)
RASTERS = REAL / "rasters"
NLDAS = RASTERS / "nldas_clip-raster"
NLDAS_00 = NLDAS / "NLDAS_FORA0125_H.A20000101.0000.002.grb.SUB.nc4"
NLDAS_01 = NLDAS / "NLDAS_FORA0125_H.A20000101.0100.002.grb.SUB.nc4"
NLDAS_GRB = NLDAS / "NLDAS_FORA0125_H.A20230101.0000.002.grb"
TMMX_DAY = RASTERS / "rioxarray" / "tmmx_20190121.nc"
CAPE_COD = RASTERS / "gdptools" / "cape_cod_tmax.nc"
TERRACLIM = RASTERS / "gdptools" / "terraclim_aet_capecod.nc"
OREGON = RASTERS / "gridmet_swb2_oregon_2000"


@pytest.fixture(scope="module", autouse=True)
def _real_files():
    if not RASTERS.is_dir():
        pytest.fail(f"the real data files are missing: {RASTERS} (set KGML_REAL_DIR)")


def _grid_args(
    lon: float, lat: float, half: float, res: float, crs: str = "EPSG:5070"
) -> list[str]:
    return ["--crs", crs, "--bounds-crs", "EPSG:4326", "--res", str(res),
            "--bounds", str(lon - half), str(lat - half), str(lon + half), str(lat + half)]  # fmt: skip


def _ok(argv: list[str], capsys) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def _refused(argv: list[str], capsys, pattern: str) -> str:
    out_path = Path(argv[argv.index("--out") + 1])
    rc = main(argv)
    _, err = capsys.readouterr()
    assert rc == 2 and re.search(pattern, err), err
    assert not out_path.exists()  # refused before anything was written
    return err


# ======================================================================================
# weather
# ======================================================================================

NEBRASKA = _grid_args(-96.47, 41.17, 0.1, 500)


def test_nldas_two_real_hours_make_one_incomplete_day(tmp_path, capsys):
    out = tmp_path / "w.zarr"
    text = _ok(["ingest", "weather", str(NLDAS_00), str(NLDAS_01), "--preset", "nldas", "--out", str(out),
                *NEBRASKA], capsys)  # fmt: skip
    # TMP and SPFH carry a singleton `height`: read, never "no air temperature"
    assert (
        "aggregated to days: tair from 24 steps of 1 h" in text
        and "qair from 24 steps of 1 h" in text
    )
    assert "days without all their steps (NaN): tair 1, swrad 1, qair 1, psurf 1, precip 1" in text
    ds = cubes.open_cube(out, "weather", crs="EPSG:4326").load()
    assert list(ds.time.values) == [np.datetime64("2000-01-01")] and np.isnan(ds.tair.values).all()
    err = _refused(["ingest", "weather", str(NLDAS_00), str(NLDAS_01), "--preset", "nldas", "--out",
                    str(tmp_path / "r.zarr"), "--incomplete-days", "refuse", *NEBRASKA], capsys,
                   r"NLDAS_FORA0125_H.A20000101.0000.002.grb.SUB.nc4: tair of 2000-01-01 has 2 of its 24 steps "
                   r"of 1 h")  # fmt: skip
    assert "no air temperature" not in err


@pytest.fixture(scope="module")
def nldas_day(tmp_path_factory):
    """24 hourly files of 2000-01-01: copies of the two real hours (alternately), cut to
    a window over Nebraska, stamped 00:00..23:00, values shifted by hour so that the day's
    mean, max, min and sum are all different from any one hour's."""
    d = tmp_path_factory.mktemp("nldas_day")
    hours = []
    for h in range(24):
        with xr.open_dataset(NLDAS_00 if h % 2 == 0 else NLDAS_01) as src:
            ds = src.sel(lat=slice(40.5, 41.9), lon=slice(-97.3, -95.6)).load()
        ds["TMP"] = ds["TMP"] + 0.5 * h - 4 * (h % 3)
        ds["DSWRF"] = ds["DSWRF"] + 20.0 * h
        ds["APCP"] = ds["APCP"] + 0.05 * (h % 4)
        ds["SPFH"] = ds["SPFH"] * (1 + 0.02 * h)
        ds["PRES"] = ds["PRES"] + 3.0 * h
        ds = ds.assign_coords(time=[pd.Timestamp("2000-01-01") + pd.Timedelta(hours=h)])
        for v in ds.variables.values():
            for k in ("chunksizes", "original_shape", "source"):
                v.encoding.pop(k, None)
        ds["time"].encoding = {
            "units": "hours since 2000-1-1 00:00:00",
            "calendar": "proleptic_gregorian",
        }
        p = d / f"NLDAS_FORA0125_H.A20000101.{h:02d}00.002.grb.SUB.nc4"
        ds.to_netcdf(p)
        hours.append(ds)
    return d, hours


@pytest.mark.slow
def test_nldas_hours_ingest_to_daily_values_that_follow_from_the_hours(nldas_day, tmp_path, capsys):
    d, hours = nldas_day
    out = tmp_path / "w.zarr"
    text = _ok(["ingest", "weather", str(d), "--preset", "nldas", "--out", str(out), "--incomplete-days", "refuse",
                *NEBRASKA], capsys)  # fmt: skip
    assert "24 files" in text and "days without all their steps" not in text
    ds = cubes.open_cube(out, "weather", crs="EPSG:4326").load()
    assert ds.sizes["time"] == 1 and ds.sizes["y"] >= 3 and ds.sizes["x"] >= 3
    lat, lon = hours[0]["lat"].values, hours[0]["lon"].values
    i = np.array([int(np.argmin(np.abs(lat - y))) for y in ds.y.values])
    j = np.array([int(np.argmin(np.abs(lon - x))) for x in ds.x.values])
    np.testing.assert_allclose(lat[i], ds.y.values, atol=1e-6)
    np.testing.assert_allclose(lon[j], ds.x.values, atol=1e-6)

    def stack(name: str) -> np.ndarray:
        a = np.stack([h[name].values.reshape(h[name].shape[-2:]) for h in hours]).astype("float64")
        return a[:, i][:, :, j]

    t = stack("TMP") - 273.15
    np.testing.assert_allclose(ds.tair.values[0], t.mean(0), atol=1e-4)
    np.testing.assert_allclose(ds.swrad.values[0], stack("DSWRF").mean(0) * 0.0864, rtol=1e-5)
    np.testing.assert_allclose(ds.precip.values[0], stack("APCP").sum(0), rtol=1e-5, atol=1e-5)
    q, p = stack("SPFH").mean(0), stack("PRES").mean(0) / 100
    es = (saturation_vp(t.max(0)) + saturation_vp(t.min(0))) / 2
    np.testing.assert_allclose(
        ds.vpd.values[0], np.maximum(es - q * p / (0.622 + 0.378 * q), 0), rtol=1e-4
    )
    assert np.ptp(t.mean(0)) > 0 and (t.max(0) - t.min(0)).min() > 5  # the hours differ


def test_nldas_grib_is_refused_with_the_conversion(tmp_path, capsys):
    pattern = (r"NLDAS_FORA0125_H.A20230101.0000.002.grb: is GRIB, which ingest weather does not read: .*"
               r"cdo -f nc4 copy \S+NLDAS_FORA0125_H.A20230101.0000.002.grb NLDAS_FORA0125_H.A20230101.0000.002.nc4, "
               r"then map CDO's var<code> names: --map var11=tair:K")  # fmt: skip
    _refused(["ingest", "weather", str(NLDAS_GRB), "--preset", "nldas", "--out", str(tmp_path / "w.zarr")],
             capsys, pattern)  # fmt: skip
    # a folder holding it refuses it too rather than skipping it
    _refused(["ingest", "weather", str(NLDAS), "--preset", "nldas", "--out", str(tmp_path / "w.zarr")],
             capsys, pattern)  # fmt: skip


def test_terraclimate_monthly_is_refused_naming_the_file_and_its_step(tmp_path, capsys):
    for preset in ("gridmet", "nldas"):
        _refused(["ingest", "weather", str(TERRACLIM), "--preset", preset, "--out", str(tmp_path / "w.zarr")], capsys,
                 r"terraclim_aet_capecod.nc: time step is 1 month \(12 steps, 1980-01-01..1980-12-01\): monthly "
                 r"values \(TerraClimate, say\) are not daily weather")  # fmt: skip


def _companions(root: Path, var: str, days: pd.DatetimeIndex, *, tmin_from: np.ndarray | None,
                lat: np.ndarray, lon: np.ndarray, tag: str) -> None:  # fmt: skip
    """The gridMET variables a real file lacks, on its grid (constant fields, tmin = tmax - 8)."""
    shape = (len(days), lat.size, lon.size)
    kw = {"times": days, "lat": lat, "lon": lon, "time_name": "day"}
    if tmin_from is not None:
        write_netcdf(root / f"tmmn_{tag}.nc", {"air_temperature": (tmin_from - 8.0, "K")}, **kw)
    write_netcdf(root / f"srad_{tag}.nc", {"surface_downwelling_shortwave_flux_in_air": (np.full(shape, 150.0),
                                                                                        "W m-2")}, **kw)  # fmt: skip
    write_netcdf(
        root / f"vpd_{tag}.nc", {"mean_vapor_pressure_deficit": (np.full(shape, 0.4), "kPa")}, **kw
    )
    if var != "pr":
        write_netcdf(
            root / f"pr_{tag}.nc", {"precipitation_amount": (np.full(shape, 2.0), "mm")}, **kw
        )


def _decoded(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def test_gridmet_single_day_file_with_a_scalar_day_is_one_day(tmp_path, capsys):
    # alone it lacks the other variables: the message names what it found (tmax), not a missing time axis
    _refused(["ingest", "weather", str(TMMX_DAY), "--preset", "gridmet", "--out", str(tmp_path / "w.zarr"), *NEBRASKA],
             capsys, r"weather: no air temperature: need tair, or tmax and tmin \(found \['tmax'\]\) in 1 file\(s\): "
             r"tmmx_20190121.nc")  # fmt: skip
    real = _decoded(TMMX_DAY)
    assert "day" not in real.dims and real["day"].ndim == 0
    day = pd.DatetimeIndex([real["day"].values])
    tmax = real["air_temperature"].values[None].astype("float64")
    _companions(tmp_path / "more", "tmmx", day, tmin_from=np.nan_to_num(tmax, nan=273.15),
                lat=real["lat"].values, lon=real["lon"].values, tag="20190121")  # fmt: skip
    out = tmp_path / "w.zarr"
    _ok(["ingest", "weather", str(TMMX_DAY), str(tmp_path / "more"), "--preset", "gridmet", "--out", str(out),
         *NEBRASKA], capsys)  # fmt: skip
    ds = cubes.open_cube(out, "weather", crs="EPSG:4326").load()
    assert list(ds.time.values) == [np.datetime64("2019-01-21")]
    i = np.array([int(np.argmin(np.abs(real["lat"].values - y))) for y in ds.y.values])
    j = np.array([int(np.argmin(np.abs(real["lon"].values - x))) for x in ds.x.values])
    np.testing.assert_allclose(real["lat"].values[i], ds.y.values, atol=1e-6)
    np.testing.assert_allclose(ds.tair.values[0], tmax[0][i][:, j] - 4.0 - 273.15, atol=1e-3)
    assert -15 < float(ds.tair.values.mean()) < 10  # a January day in Nebraska


def test_gridmet_cape_cod_long_variable_name_int16_with_fill(tmp_path, capsys):
    _refused(
        [
            "ingest",
            "weather",
            str(CAPE_COD),
            "--preset",
            "gridmet",
            "--out",
            str(tmp_path / "w.zarr"),
        ],
        capsys,
        r"no air temperature: need tair, or tmax and tmin \(found \['tmax'\]\) in 1 file\(s\): cape_cod_tmax.nc",
    )
    real = _decoded(CAPE_COD)
    tmax = real["daily_maximum_temperature"].values.astype("float64")
    days = pd.DatetimeIndex(real["day"].values)
    _companions(tmp_path / "more", "tmmx", days, tmin_from=tmax, lat=real["lat"].values,
                lon=real["lon"].values, tag="1979")  # fmt: skip
    out = tmp_path / "w.zarr"
    _ok(
        [
            "ingest",
            "weather",
            str(CAPE_COD),
            str(tmp_path / "more"),
            "--preset",
            "gridmet",
            "--out",
            str(out),
        ],
        capsys,
    )
    ds = cubes.open_cube(out, "weather", crs="EPSG:4326").load()
    assert ds.sizes == {"time": 7, "y": 11, "x": 20}
    # int16 raw * 0.1 + 220 K, fill (the sea) NaN: 343 of the 1540 values
    assert int(np.isnan(ds.tair.values).sum()) == 343 == int(np.isnan(tmax).sum())
    np.testing.assert_allclose(ds.tair.values, tmax - 4.0 - 273.15, atol=1e-3)


def test_gridmet_oregon_year_lacks_srad_and_vpd_then_ingests_with_them(tmp_path, capsys):
    files = sorted(str(p) for p in OREGON.glob("*.nc"))
    oregon = _grid_args(-119.5, 43.5, 0.15, 1000)
    _refused(
        [
            "ingest",
            "weather",
            *files,
            "--preset",
            "gridmet",
            "--out",
            str(tmp_path / "w.zarr"),
            *oregon,
        ],
        capsys,
        r"weather: no shortwave radiation: need swrad, or swrad_daylight and dayl \(found \['precip', 'tmax', "
        r"'tmin'\]\) in 3 file\(s\): pr_2000__subset.nc, tmmn_2000__subset.nc, tmmx_2000__subset.nc",
    )
    pr = _decoded(OREGON / "pr_2000__subset.nc")
    days = pd.DatetimeIndex(pr["day"].values)
    assert len(days) == 366
    _companions(tmp_path / "more", "pr", days, tmin_from=None,
                lat=pr["lat"].values, lon=pr["lon"].values, tag="2000")  # fmt: skip
    out = tmp_path / "w.zarr"
    _ok(["ingest", "weather", *files, str(tmp_path / "more"), "--preset", "gridmet", "--out", str(out), *oregon],
        capsys)  # fmt: skip
    ds = cubes.open_cube(out, "weather", crs="EPSG:4326").load()
    assert ds.sizes["time"] == 366
    lat = pr["lat"].values
    i = np.array([int(np.argmin(np.abs(lat - y))) for y in ds.y.values])
    j = np.array([int(np.argmin(np.abs(pr["lon"].values - x))) for x in ds.x.values])
    tmx = _decoded(OREGON / "tmmx_2000__subset.nc")["air_temperature"].values[:, i][:, :, j]
    tmn = _decoded(OREGON / "tmmn_2000__subset.nc")["air_temperature"].values[:, i][:, :, j]
    np.testing.assert_allclose(ds.tair.values, (tmx + tmn) / 2 - 273.15, atol=1e-3)
    np.testing.assert_allclose(
        ds.precip.values, pr["precipitation_amount"].values[:, i][:, :, j], atol=1e-4
    )
    assert float(ds.precip.values.max()) > 5  # real storms, not a constant


# ======================================================================================
# satellite
# ======================================================================================


def _link(tmp_path: Path, src: Path, name: str) -> str:
    """The real file under a dated name (a symbolic link: the bytes are the real file's)."""
    p = tmp_path / name
    p.symlink_to(src)
    return str(p)


def _expected(path: Path, grid, *, band: int = 1, scale: float = 1.0, resampling: str = "bilinear",
              crs: str | None = None) -> np.ndarray:  # fmt: skip
    """What rioxarray's whole-array ``reproject_match`` gives on ``grid``."""
    import rioxarray
    from rasterio.enums import Resampling

    da = rioxarray.open_rasterio(path, masked=True)
    if "band" in da.dims:
        da = da.sel(band=band)
    if crs is not None:
        da = da.rio.write_crs(crs)
    tmpl = xr.DataArray(
        np.zeros(grid.shape, "float32"), dims=("y", "x"), coords={"y": grid.y, "x": grid.x}
    )
    return (da.astype("float32") * scale).rio.reproject_match(tmpl.rio.write_crs(grid.crs),
                                                              resampling=Resampling[resampling]).values  # fmt: skip


def _agrees(out: Path, expected: np.ndarray, *, min_valid: int) -> None:
    got = cubes.open_cube(out, "satellite")["gpp_sat"].values[0]
    both = np.isfinite(got) & np.isfinite(expected)
    assert int(both.sum()) >= min_valid
    # the edges of nodata areas may differ by a cell (windowed vs whole-array reads)
    assert abs(int(np.isfinite(got).sum()) - int(np.isfinite(expected).sum())) <= 0.1 * got.size
    rel = np.abs(got[both] - expected[both]) / np.maximum(np.abs(expected[both]), 1e-3)
    # GDAL sizes its kernel from each chunk's source/target extents, and a tile's padded
    # window is not the whole raster: a median of up to ~1 % apart, as the issue measured
    assert np.median(rel) < 0.02 and np.percentile(rel, 95) < 0.1, (
        np.median(rel),
        np.percentile(rel, 95),
    )
    if np.ptp(expected[both]) > 0:
        assert np.corrcoef(got[both], expected[both])[0, 1] > 0.99


def _sat(files: list[str], out: Path, grid_args: list[str], *opts: str) -> list[str]:
    return ["ingest", "satellite", *(f"--source=gpp_sat={f}" for f in files), "--pattern",
            "gpp_sat=X_{date:%Y%j}.*", "--out", str(out), "--chunks", "time=1,y=16,x=16", *grid_args, *opts]  # fmt: skip


def _target(grid_args: list[str]):
    from kgml_grid.ingest.target import target_grid

    a = dict(zip(grid_args[::2], grid_args[1::2], strict=False))
    b = grid_args[grid_args.index("--bounds") + 1 :][:4]
    return target_grid(crs=a["--crs"], bounds=tuple(map(float, b)), res=float(a["--res"]),
                       bounds_crs=a["--bounds-crs"])  # fmt: skip


@pytest.mark.parametrize(("name", "where", "scale", "resampling"), [
    ("rioxarray/cog.tif", (-73.86, 44.91, 0.1, 500), 0.001, "bilinear"),  # custom Albers, odd spheroid, COG
    # EPSG:3857; only 0 and nodata 255 (88 %), scattered: nearest keeps the valid cells
    ("rasterio/shade.tif", (-106.464, 39.618, 0.01, 100), 0.1, "nearest"),
    ("rioxarray/small_dem_3m_merged.tif", (-93.892, 41.687, 0.003, 30), 0.001, "average"),  # 3 m UTM 15N
])  # fmt: skip
def test_single_band_geotiffs_ingest_as_rioxarray_reprojects_them(
    tmp_path, capsys, name, where, scale, resampling
):
    f = _link(tmp_path, RASTERS / name, "X_2015001.tif")
    grid_args = _grid_args(*where)
    out = tmp_path / "s.zarr"
    _ok(
        _sat([f], out, grid_args, f"--scale=gpp_sat={scale}", f"--resampling=gpp_sat={resampling}"),
        capsys,
    )
    _agrees(
        out,
        _expected(RASTERS / name, _target(grid_args), scale=scale, resampling=resampling),
        min_valid=20,
    )


@pytest.mark.parametrize(("name", "where", "band"), [
    ("rasterio/RGB.byte.tif", (-77.77, 24.56, 0.15, 1000, "EPSG:32618"), 2),  # Landsat RGB, UTM 18N
    ("rasterio/goes.tif", (-96.5, 41.2, 2.0, 20000, "EPSG:5070"), 1),  # GOES-16, geostationary, no EPSG
])  # fmt: skip
def test_multi_band_geotiffs_need_a_band(tmp_path, capsys, name, where, band):
    f = _link(tmp_path, RASTERS / name, "X_2015002.tif")
    grid_args = _grid_args(*where)
    out = tmp_path / "s.zarr"
    _refused(_sat([f], out, grid_args), capsys,
             r"X_2015002.tif: has 3 bands; choose one with band= \(--band VAR=N, 1..3\): a multi-band file is never "
             r"read as band 1 silently")  # fmt: skip
    _ok(_sat([f], out, grid_args, f"--band=gpp_sat={band}", "--scale=gpp_sat=0.1"), capsys)
    _agrees(out, _expected(RASTERS / name, _target(grid_args), band=band, scale=0.1), min_valid=100)


def test_gpm_imerg_scale_only_in_the_tiff_description_is_warned_about(tmp_path, capsys):
    gpm = RASTERS / "geotiff-test-data" / "gpm_1d.20240617.tif"
    grid_args = _grid_args(-96.5, 41.2, 0.4, 2000)
    argv = ["ingest", "satellite", f"--source=gpp_sat={gpm}", "--pattern=gpp_sat=gpm_1d.{date:%Y%m%d}.tif",
            *grid_args]  # fmt: skip
    with pytest.warns(IngestWarning) as caught:
        text = _ok([*argv, "--out", str(tmp_path / "raw.zarr")], capsys)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 2, msgs
    assert re.search(r"gpm_1d.20240617.tif: the TIFF description says '.*Unit=0.1\(mm\) ScaleFactor=10', a scale "
                     r"GDAL does not apply .* --scale gpp_sat=0.1", msgs[0])  # fmt: skip
    # raw tenths of mm: some cells exceed any daily range and are masked, with the hint to check the scale
    assert re.search(r"raw.zarr: values outside the schema's valid range were set to NaN: gpp_sat \d+ .* check "
                     r"the scale factor", msgs[1])  # fmt: skip
    assert (
        "2024-06-17..2024-06-17 (1 days)" in text
        and "outside the valid range (NaN): gpp_sat" in text
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with the scale given: no warning at all
        _ok([*argv, "--scale=gpp_sat=0.1", "--out", str(tmp_path / "mm.zarr")], capsys)
    _agrees(
        tmp_path / "mm.zarr", _expected(gpm, _target(grid_args), scale=0.1), min_valid=1000
    )  # 4326 -> 5070


def test_modis_sinusoidal_netcdf_with_a_proj_attribute(tmp_path, capsys):
    nc = RASTERS / "rioxarray" / "MODIS_ARRAY.nc"
    f = _link(tmp_path, nc, "X_2015003.nc")
    grid_args = _grid_args(-92.556, 45.208, 0.08, 500)
    out = tmp_path / "s.zarr"
    _ok(_sat([f], out, grid_args, "--scale=gpp_sat=0.01"), capsys)
    with xr.open_dataset(nc) as ds:
        proj = ds["__xarray_dataarray_variable__"].attrs["crs"]
    assert proj.startswith("+a=6371007.181") and "+proj=sinu" in proj
    _agrees(out, _expected(nc, _target(grid_args), scale=0.01, crs=proj), min_valid=200)


def test_planetscope_netcdf_needs_a_layer_and_one_date_per_file(tmp_path, capsys):
    f = _link(tmp_path, RASTERS / "rioxarray" / "PLANET_SCOPE_3D.nc", "X_2016354.nc")
    grid_args = _grid_args(
        -96.5, 41.2, 0.1, 500
    )  # refused on reading the file, before any overlap check
    out = tmp_path / "s.zarr"
    _refused(
        _sat([f], out, grid_args),
        capsys,
        r"X_2016354.nc: holds 2 gridded variables \(blue, green\); choose one with layer= \(--layer VAR=NAME",
    )
    _refused(_sat([f], out, grid_args, "--layer=gpp_sat=blue"), capsys,
             r"X_2016354.nc: variable 'blue' has dims \('time', 'y', 'x'\) with 'time' of 2: a satellite file holds "
             r"one date's layer")  # fmt: skip


def test_modis_hdf4_granule_is_refused_with_gdal_translate(tmp_path, capsys):
    hdf = RASTERS / "rioxarray" / "MOD09GA.A2008296.h14v17.006.2015181011753.hdf"
    _refused(["ingest", "satellite", f"--source=gpp_sat={hdf}", "--pattern", "gpp_sat=MOD09GA.A{date:%Y%j}.*.hdf",
              "--out", str(tmp_path / "s.zarr"), *_grid_args(-96.5, 41.2, 0.1, 500)], capsys,
             r"MOD09GA.A2008296.h14v17.006.2015181011753.hdf: is HDF4 .* which the rasterio wheels cannot read .* "
             r"gdal_translate -of GTiff 'HDF4_EOS:EOS_GRID:\"\S+.hdf\":GRID:FIELD' "
             r"MOD09GA.A2008296.h14v17.006.2015181011753.tif")  # fmt: skip
