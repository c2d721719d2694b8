"""Daily weather NetCDF (gridMET-like, NLDAS-like) to the weather cube: units, grid, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgml_grid import cubes
from kgml_grid.grid import centred_grid, coarse_index
from kgml_grid.ingest import IngestError, ingest_weather
from kgml_grid.ingest.examples import write_netcdf
from kgml_grid.ingest.weather import saturation_vp

TARGET = centred_grid(-96.47, 41.17, ny=12, nx=16, res=250.0, crs="EPSG:5070")
# gridMET: 1/24 degree, latitude north to south, dims (day, lat, lon)
G_LAT = 41.5 - (np.arange(18) + 0.5) / 24
G_LON = -96.9 + (np.arange(22) + 0.5) / 24
DAYS = pd.date_range("2015-01-01", periods=10)


def _tmmx(days: pd.DatetimeIndex) -> np.ndarray:
    i, j = np.meshgrid(np.arange(G_LAT.size), np.arange(G_LON.size), indexing="ij")
    return np.stack([270.0 + 0.1 * i + 0.01 * j + d.day for d in days])


def _gridmet(
    root: Path, days: pd.DatetimeIndex = DAYS, *, skip_pr: tuple[int, ...] = ()
) -> list[Path]:
    tag = days[0].strftime("%Y%m%d")
    kw = {"lat": G_LAT, "lon": G_LON, "time_name": "day"}
    shape = (len(days), G_LAT.size, G_LON.size)
    srad = np.stack([np.full(shape[1:], 100.0 + 10 * d.day) for d in days])
    vpd = np.broadcast_to(0.5 + 0.01 * np.arange(G_LON.size), shape)
    pdays = days[[d.day not in skip_pr for d in days]]
    pr = np.stack([np.full(shape[1:], d.day % 3) for d in pdays])
    return [
        write_netcdf(
            root / f"tmmx_{tag}.nc", {"air_temperature": (_tmmx(days), "K")}, times=days, **kw
        ),
        write_netcdf(
            root / f"tmmn_{tag}.nc", {"air_temperature": (_tmmx(days) - 10, "K")}, times=days, **kw
        ),
        write_netcdf(
            root / f"srad_{tag}.nc",
            {"surface_downwelling_shortwave_flux_in_air": (srad, "W m-2")},
            times=days,
            **kw,
        ),
        write_netcdf(
            root / f"vpd_{tag}.nc", {"mean_vapor_pressure_deficit": (vpd, "kPa")}, times=days, **kw
        ),
        write_netcdf(
            root / f"pr_{tag}.nc", {"precipitation_amount": (pr, "mm")}, times=pdays, **kw
        ),
    ]


@pytest.fixture(scope="module")
def gridmet(tmp_path_factory):
    root = tmp_path_factory.mktemp("gridmet")
    _gridmet(root, skip_pr=(6,))
    res = ingest_weather([root], root / "weather.zarr", preset="gridmet", grid=TARGET,
                         chunks={"time": 4, "y": 3, "x": 4})  # fmt: skip
    return root, res, cubes.open_cube(res.path, "weather", crs="EPSG:4326").load()


def _ij(ds) -> tuple[np.ndarray, np.ndarray]:
    i = np.rint((41.5 - ds.y.values) * 24 - 0.5).astype(int)
    j = np.rint((ds.x.values + 96.9) * 24 - 0.5).astype(int)
    return i, j


def test_weather_stays_on_its_native_grid_cropped_to_the_target(gridmet):
    _, res, ds = gridmet
    i, j = _ij(ds)
    np.testing.assert_allclose(ds.y.values, G_LAT[i], atol=1e-9)
    np.testing.assert_allclose(ds.x.values, G_LON[j], atol=1e-9)
    assert (np.diff(i) == 1).all() and (np.diff(j) == 1).all()
    assert ds.sizes["y"] < G_LAT.size and ds.sizes["x"] < G_LON.size
    coarse_index(TARGET, cubes.grid_of(ds, layer="weather"))  # covers the target
    assert res.crs == "EPSG:4326" and ds.tair.encoding["chunks"] == (4, 3, 4)


def test_gridmet_units_are_converted_by_hand(gridmet):
    _, _, ds = gridmet
    i, j = _ij(ds)
    tmmx = _tmmx(DAYS)[:, i][:, :, j]
    np.testing.assert_allclose(ds.tair.values, (tmmx + tmmx - 10) / 2 - 273.15, atol=1e-4)
    np.testing.assert_allclose(
        ds.swrad.values[:, 0, 0], (100 + 10 * DAYS.day.values) * 0.0864, rtol=1e-6
    )
    np.testing.assert_allclose(ds.vpd.values[0], np.broadcast_to(10 * (0.5 + 0.01 * j), ds.vpd.shape[1:]),
                               rtol=1e-6)  # fmt: skip
    assert ds.tair.attrs["units"] == "degC" and ds.swrad.attrs["units"] == "MJ m-2 d-1"


def test_a_missing_day_is_a_nan_day(gridmet):
    _, res, ds = gridmet
    pr = ds.precip.values
    assert np.isnan(pr[5]).all() and not np.isnan(np.delete(pr, 5, axis=0)).any()
    np.testing.assert_allclose(pr[[0, 1, 2]][:, 0, 0], [1, 2, 0])
    assert res.missing["precip"] == 1 and res.missing["tmax"] == 0


def test_nldas_daily_with_humidity_and_ascending_latitude(tmp_path):
    lat = 40.5 + 0.125 * (np.arange(14) + 0.5)  # south to north, as NLDAS
    lon = -97.5 + 0.125 * (np.arange(16) + 0.5)
    days = pd.date_range("2015-07-01", periods=3)
    shape = (3, lat.size, lon.size)
    tair = np.broadcast_to((295.0 + 0.5 * np.arange(lat.size))[None, :, None], shape)
    q = np.full(shape, 0.012)
    p = np.full(shape, 96000.0)
    write_netcdf(tmp_path / "NLDAS_FORA0125_D.A201507.nc", {
        "Tair": (tair, "K"), "SWdown": (np.full(shape, 250.0), "W m-2"), "Rainf": (np.full(shape, 4.0), "kg m-2"),
        "Qair": (q, "kg kg-1"), "PSurf": (p, "Pa"), "Wind_E": (np.zeros(shape), "m s-1"),
    }, times=days, lat=lat, lon=lon, hours=12)  # fmt: skip
    res = ingest_weather(
        [tmp_path / "NLDAS_FORA0125_D.A201507.nc"], tmp_path / "w.zarr", preset="nldas", grid=TARGET
    )
    ds = cubes.open_cube(res.path, "weather").load()
    assert (np.diff(ds.y.values) < 0).all()  # north to south in the cube
    rows = np.rint((ds.y.values - 40.5) / 0.125 - 0.5).astype(int)
    t = 295.0 + 0.5 * rows - 273.15
    np.testing.assert_allclose(ds.tair.values[0, :, 0], t, atol=1e-4)
    e = 0.012 * 960.0 / (0.622 + 0.378 * 0.012)
    np.testing.assert_allclose(ds.vpd.values[0, :, 0], saturation_vp(t) - e, rtol=1e-5)
    np.testing.assert_allclose(ds.swrad.values, 250 * 0.0864, rtol=1e-6)
    np.testing.assert_allclose(ds.precip.values, 4.0)
    assert str(ds.time.values[0])[:19] == "2015-07-01T00:00:00"


DAYMET_LCC = {
    "grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [25.0, 60.0],
    "longitude_of_central_meridian": -100.0, "latitude_of_projection_origin": 42.5,
    "false_easting": 0.0, "false_northing": 0.0, "semi_major_axis": 6378137.0,
    "inverse_flattening": 298.257223563,
}  # fmt: skip


def test_daymet_on_its_projected_grid_with_km_coordinates(tmp_path):
    from pyproj import CRS, Transformer

    lcc = CRS.from_cf(DAYMET_LCC)
    cx, cy = Transformer.from_crs("EPSG:4326", lcc, always_xy=True).transform(-96.47, 41.17)
    x = np.round(cx / 1000) + np.arange(-6, 7) + 0.5  # km, 1 km cells
    y = np.round(cy / 1000) + 6.5 - np.arange(13)
    days = pd.date_range("2016-12-29", periods=2)  # Daymet drops Dec 31 of leap years
    sh = (2, 13, 13)
    kw = {"times": days, "lat": y, "lon": x, "lat_name": "y", "lon_name": "x", "grid_mapping": DAYMET_LCC,
          "coord_units": ("km", "km")}  # fmt: skip
    for name, value, units in [("tmax", 4.0, "degrees C"), ("tmin", -6.0, "degrees C"), ("srad", 250.0, "W/m2"),
                               ("dayl", 32400.0, "s"), ("prcp", 1.5, "mm/day"), ("vp", 300.0, "Pa")]:  # fmt: skip
        write_netcdf(
            tmp_path / f"daymet_v4_daily_na_{name}_2016.nc",
            {name: (np.full(sh, value), units)},
            **kw,
        )
    res = ingest_weather([tmp_path], tmp_path / "w.zarr", preset="daymet", grid=TARGET,
                         end="2016-12-31")  # fmt: skip
    ds = cubes.open_cube(res.path, "weather").load()
    g = cubes.grid_of(ds, layer="weather")
    assert CRS.from_user_input(g.crs) == lcc and g.res == 1000.0
    coarse_index(TARGET, g)
    np.testing.assert_allclose(ds.tair.values[:2], -1.0, atol=1e-5)
    np.testing.assert_allclose(ds.swrad.values[:2], 250.0 * 32400 / 1e6, rtol=1e-6)
    es = (saturation_vp(np.array(4.0)) + saturation_vp(np.array(-6.0))) / 2
    np.testing.assert_allclose(ds.vpd.values[:2], es - 3.0, rtol=1e-5)
    assert np.isnan(ds.tair.values[2]).all() and res.missing["tmax"] == 1


def test_append_the_next_days(gridmet, tmp_path):
    import shutil

    _, res, _ = gridmet
    out = tmp_path / "w.zarr"
    shutil.copytree(res.path, out)
    more = _gridmet(tmp_path / "more", pd.date_range("2015-01-11", periods=3))
    r = ingest_weather(more, out, preset="gridmet", append=True)
    ds = cubes.open_cube(out, "weather")
    assert r.appended and ds.sizes["time"] == 13 and ds.sizes["y"] == res.sizes["y"]
    assert not np.isnan(ds.tair.values[10:]).any()
    with pytest.raises(IngestError, match=r"tmmx_20150111.nc: date 2015-01-11 overlaps the cube"):
        ingest_weather(more, out, preset="gridmet", append=True)


# --- refusals ---------------------------------------------------------------------------------


def _refused(paths, tmp_path: Path, match: str, **kw) -> None:
    out = tmp_path / "w.zarr"
    with pytest.raises(IngestError, match=match):
        ingest_weather(paths, out, **{"preset": "gridmet", "grid": TARGET, **kw})
    assert not out.exists()


def _hourly(
    path: Path, hours: pd.DatetimeIndex, *, rain_units: str = "kg m-2"
) -> dict[str, np.ndarray]:
    """NLDAS-like sub-daily file: every variable varies by hour and cell (south-to-north lat)."""
    lat = 40.5 + 0.125 * (np.arange(14) + 0.5)
    lon = -97.5 + 0.125 * (np.arange(16) + 0.5)
    h = np.arange(len(hours), dtype=float)[:, None, None]
    cell = (np.arange(14)[:, None] * 0.1 + np.arange(16)[None, :] * 0.01)[None]
    v = {
        "Tair": 280.0 + 8 * np.sin(h / 24 * 2 * np.pi) + cell,
        "SWdown": np.maximum(0.0, 600 * np.sin((h % 24 - 6) / 12 * np.pi)) + cell,
        "Rainf": (h % 5) * 0.2 + cell,
        "Qair": 0.004 + 0.0001 * h + 0.001 * cell,
        "PSurf": 96000.0 + 10 * h + cell,
    }
    units = {"Tair": "K", "SWdown": "W m-2", "Rainf": rain_units, "Qair": "kg kg-1", "PSurf": "Pa"}
    write_netcdf(path, {k: (a, units[k]) for k, a in v.items()}, times=hours, lat=lat, lon=lon,
                 time_units="hours since 2015-07-01 00:00:00")  # fmt: skip
    return {k: a[:, ::-1] for k, a in v.items()}  # north to south, as in the cube


def test_hourly_files_are_aggregated_to_days_from_their_hours(tmp_path):
    # two whole days and 5 hours of a third, in 3-hourly and hourly files
    hours = pd.date_range("2015-07-01", periods=53, freq="h")
    raw = _hourly(tmp_path / "NLDAS_FORA0125_H.A201507.nc", hours)
    res = ingest_weather(
        [tmp_path / "NLDAS_FORA0125_H.A201507.nc"], tmp_path / "w.zarr", preset="nldas"
    )
    ds = cubes.open_cube(res.path, "weather").load()
    assert ds.sizes["time"] == 3 and list(ds.time.values[:2]) == list(
        pd.date_range("2015-07-01", periods=2)
    )
    day = {k: a[:48].reshape(2, 24, *a.shape[1:]) for k, a in raw.items()}
    t = day["Tair"] - 273.15
    np.testing.assert_allclose(ds.tair.values[:2], t.mean(1), atol=1e-4)
    np.testing.assert_allclose(ds.swrad.values[:2], day["SWdown"].mean(1) * 0.0864, rtol=1e-5)
    np.testing.assert_allclose(ds.precip.values[:2], day["Rainf"].sum(1), rtol=1e-5)
    q, p = day["Qair"].mean(1), day["PSurf"].mean(1) / 100
    es = (saturation_vp(t.max(1)) + saturation_vp(t.min(1))) / 2
    vpd = np.maximum(es - q * p / (0.622 + 0.378 * q), 0.0)
    assert (vpd > 0).any() and (vpd == 0).any()  # both sides of the clip at 0
    np.testing.assert_allclose(ds.vpd.values[:2], vpd, rtol=1e-4, atol=1e-5)
    # the third day has 5 of its 24 hours: NaN, counted per quantity
    assert np.isnan(ds.tair.values[2]).all() and np.isnan(ds.precip.values[2]).all()
    assert res.incomplete == {"tair": 1, "swrad": 1, "qair": 1, "psurf": 1, "precip": 1}
    assert res.aggregated["tair"] == "24 steps of 1 h"
    assert "days without all their steps (NaN): tair 1" in res.summary()
    with pytest.raises(
        IngestError,
        match=r"A201507.nc: tair of 2015-07-03 has 5 of its 24 steps of 1 h "
        r"\(1 incomplete day\(s\) in 2015-07-01..2015-07-03\); give every step",
    ):
        ingest_weather([tmp_path / "NLDAS_FORA0125_H.A201507.nc"], tmp_path / "r.zarr", preset="nldas",
                       incomplete_days="refuse")  # fmt: skip
    assert not (tmp_path / "r.zarr").exists()
    # --end before the incomplete day: nothing incomplete to refuse
    r = ingest_weather([tmp_path / "NLDAS_FORA0125_H.A201507.nc"], tmp_path / "e.zarr", preset="nldas",
                       end="2015-07-02", incomplete_days="refuse")  # fmt: skip
    assert r.sizes["time"] == 2 and not any(r.incomplete.values())


def test_hourly_files_append_the_next_day(tmp_path):
    hours = pd.date_range("2015-07-01", periods=48, freq="h")
    _hourly(tmp_path / "both" / "h.nc", hours)
    _hourly(tmp_path / "d1" / "h.nc", hours[:24])
    whole = cubes.open_cube(ingest_weather([tmp_path / "both"], tmp_path / "whole.zarr", preset="nldas").path,
                            "weather").load()  # fmt: skip
    ingest_weather([tmp_path / "d1"], tmp_path / "w.zarr", preset="nldas")
    import netCDF4

    with netCDF4.Dataset(
        tmp_path / "both" / "h.nc"
    ) as src:  # the second day's hours, as their own file
        v = {
            k: (src[k][24:].filled(np.nan), src[k].units)
            for k in ("Tair", "SWdown", "Rainf", "Qair", "PSurf")
        }
        lat, lon = src["lat"][:], src["lon"][:]
    write_netcdf(tmp_path / "d2" / "h.nc", v, times=hours[24:], lat=lat, lon=lon)
    r = ingest_weather([tmp_path / "d2"], tmp_path / "w.zarr", preset="nldas", append=True)
    ds = cubes.open_cube(r.path, "weather").load()
    assert r.appended and ds.sizes["time"] == 2
    for name in ("tair", "swrad", "vpd", "precip"):
        np.testing.assert_allclose(ds[name].values, whole[name].values, rtol=1e-6, err_msg=name)


def test_sub_daily_rates_are_averaged_and_steps_may_be_3_hourly(tmp_path):
    hours = pd.date_range("2015-07-01", periods=8, freq="3h")
    raw = _hourly(tmp_path / "rate.nc", hours, rain_units="kg m-2 s-1")
    res = ingest_weather([tmp_path / "rate.nc"], tmp_path / "w.zarr", preset="nldas")
    ds = cubes.open_cube(res.path, "weather").load()
    assert res.aggregated["precip"] == "8 steps of 3 h" and not any(res.incomplete.values())
    np.testing.assert_allclose(ds.precip.values[0], raw["Rainf"].mean(0) * 86400, rtol=1e-5)
    np.testing.assert_allclose(ds.tair.values[0], raw["Tair"].mean(0) - 273.15, atol=1e-4)


def test_a_step_that_does_not_divide_a_day_is_refused(tmp_path):
    hours = pd.date_range("2015-07-01", periods=4, freq="7h")
    _hourly(tmp_path / "odd.nc", hours)
    _refused([tmp_path / "odd.nc"], tmp_path, r"odd.nc: tair: time step 0 days 07:00:00 .* does not divide a day",
             preset="nldas", grid=None)  # fmt: skip


def test_singleton_levels_and_a_scalar_day_are_read_wider_levels_refused(tmp_path):
    import xarray as xr

    days = pd.date_range("2015-01-01", periods=1)
    files = _gridmet(tmp_path / "a", days)
    # tmmx as a one-day file: no time dimension, a scalar `day` coordinate, and a height level
    with xr.open_dataset(files[0]) as f0:
        one = f0.load()
    one["air_temperature"] = one["air_temperature"].isel(day=0).expand_dims(height=[2.0])
    files[0].unlink()
    one.isel(day=0).to_netcdf(files[0])
    res = ingest_weather(files, tmp_path / "w.zarr", preset="gridmet", grid=TARGET)
    ds = cubes.open_cube(res.path, "weather").load()
    i, j = _ij(ds)
    tmmx = _tmmx(days)[:, i][:, :, j]
    np.testing.assert_allclose(ds.tair.values, tmmx - 5 - 273.15, atol=1e-4)
    with xr.open_dataset(files[1]) as f1:
        two = f1.load()
    two["air_temperature"] = xr.concat([two["air_temperature"]] * 2, "height").assign_coords(
        height=[2.0, 10.0]
    )
    two.to_netcdf(tmp_path / "tmmn_wide.nc")
    _refused([*files[:1], tmp_path / "tmmn_wide.nc", *files[2:]], tmp_path / "r",
             r"tmmn_wide.nc: variable 'air_temperature' \(tmin\) has dims .* with 'height' of 2 levels; only one "
             r"level can be read")  # fmt: skip


def test_monthly_and_8_day_files_are_refused_naming_the_step(tmp_path):
    months = pd.date_range("1980-01-01", periods=12, freq="MS")
    f = write_netcdf(tmp_path / "tmmx_1980.nc", {"air_temperature": (np.full((12, 18, 22), 280.0), "K")},
                     times=months, lat=G_LAT, lon=G_LON)  # fmt: skip
    _refused(
        [f],
        tmp_path,
        rf"{f}: time step is 1 month \(12 steps, 1980-01-01..1980-12-01\): monthly values",
    )
    eight = pd.date_range("2015-01-01", periods=5, freq="8D")
    g = write_netcdf(tmp_path / "tmmn_2015.nc", {"air_temperature": (np.full((5, 18, 22), 280.0), "K")},
                     times=eight, lat=G_LAT, lon=G_LON)  # fmt: skip
    _refused([g], tmp_path, rf"{g}: time step is 8 days \(5 steps")


def test_refuses_unknown_or_missing_units(tmp_path):
    files = _gridmet(tmp_path / "a")
    bad = write_netcdf(files[0], {"air_temperature": (_tmmx(DAYS), "degF")}, times=DAYS, lat=G_LAT, lon=G_LON,
                       time_name="day")  # fmt: skip
    _refused(
        files,
        tmp_path,
        rf"{bad}: variable 'air_temperature' \(tmax\) has units 'degF', which are not known",
    )
    write_netcdf(
        files[0],
        {"air_temperature": (_tmmx(DAYS), None)},
        times=DAYS,
        lat=G_LAT,
        lon=G_LON,
        time_name="day",
    )
    _refused(files, tmp_path, rf"{bad}: variable 'air_temperature' has no units attribute")
    r = ingest_weather(
        files, tmp_path / "ok.zarr", preset="gridmet", grid=TARGET, mapping={"tmmx": "tmax:K"}
    )
    assert r.sizes["time"] == 10


def test_refuses_files_on_another_grid(tmp_path):
    files = _gridmet(tmp_path / "a")
    bad = write_netcdf(files[3], {"mean_vapor_pressure_deficit": (np.ones((10, 18, 22)), "kPa")}, times=DAYS,
                       lat=G_LAT, lon=G_LON + 1 / 24, time_name="day")  # fmt: skip
    _refused(files, tmp_path, rf"{bad}: grid \(origin -96.8583, 41.5, .*\) differs from .*pr_20150101.nc "
                              r"\(origin -96.9, 41.5")  # fmt: skip


def test_refuses_weather_that_does_not_cover_the_target(tmp_path):
    files = _gridmet(tmp_path / "a")
    far = centred_grid(-90.0, 41.17, ny=4, nx=4, res=250.0, crs="EPSG:5070")
    _refused(files, tmp_path, r"weather files \(pr_20150101.nc, srad_20150101.nc, tmmn_20150101.nc ...\) do not "
                              r"cover the target grid", grid=far)  # fmt: skip


def test_refuses_unreadable_unmapped_duplicated_and_incomplete_inputs(tmp_path):
    files = _gridmet(tmp_path / "a")
    junk = tmp_path / "a" / "rmax_2015.nc"
    junk.write_text("not netcdf")
    _refused([*files, junk], tmp_path, rf"{junk}: cannot be read as NetCDF")
    other = write_netcdf(tmp_path / "b" / "foo_2015.nc", {"foo": (np.ones((10, 18, 22)), "1"),
                         "bar": (np.ones((10, 18, 22)), "1")}, times=DAYS, lat=G_LAT, lon=G_LON)  # fmt: skip
    _refused([*files, other], tmp_path, rf"{other}: no variable of the mapping table")
    dup = write_netcdf(tmp_path / "c" / "pr_dup.nc", {"precipitation_amount": (np.ones((10, 18, 22)), "mm")},
                       times=DAYS, lat=G_LAT, lon=G_LON, time_name="day")  # fmt: skip
    _refused(
        [*files, dup],
        tmp_path,
        r"pr_dup.nc: precip of 2015-01-01 is also given by .*pr_20150101.nc",
    )
    _refused(files[:4], tmp_path, r"weather: no precipitation: need precip")
