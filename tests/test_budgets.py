"""Regional budgets: zone sums equal brute-force NumPy sums; zones from polygons and rasters;
cell areas."""

from __future__ import annotations

import json
import sys

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgml_grid.analysis import budget_table, cell_area, read_zones, zone_budgets
from kgml_grid.analysis.zones import ZoneError, Zones
from kgml_grid.grid import GridSpec

TIME = pd.date_range("2010-11-15", "2011-02-10", freq="D")  # two years, three seasons, four months
VARS = ("ra", "rh", "reco")


def fluxes(ny: int, nx: int, seed: int, chunks: dict[str, int]) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (TIME.size, ny, nx)
    ra = rng.gamma(2.0, 1.0, shape).astype("float32")
    rh = rng.gamma(2.0, 0.5, shape).astype("float32")
    nocrop = rng.random((ny, nx)) < 0.2
    ra[:, nocrop] = np.nan
    rh[:, nocrop] = np.nan
    ds = xr.Dataset({"ra": (("time", "y", "x"), ra), "rh": (("time", "y", "x"), rh),
                     "reco": (("time", "y", "x"), ra + rh)},
                    coords={"time": TIME, "y": np.arange(ny)[::-1] * 500.0, "x": np.arange(nx) * 500.0})  # fmt: skip
    return ds.chunk(chunks)


def brute(ds, ids, area, crop, by):
    """Loops over zones, crops and periods: sum of pixel totals x area, and the area."""
    vals = {v: ds[v].values.astype("float64") for v in VARS}
    out = {}
    years = TIME.year.values
    if by == "year":
        sub = np.zeros(TIME.size, dtype=int)
    elif by == "month":
        sub = TIME.month.values
    else:
        sub = np.asarray(["DJF", "MAM", "JJA", "SON"])[(TIME.month.values % 12) // 3]
    for z in np.unique(ids[ids > 0]):
        for crop_name, code in (("all", None), ("corn", 1), ("soybean", 2), ("other", 0)):
            for y in np.unique(years):
                for s in np.unique(sub[years == y]):
                    days = (years == y) & (sub == s)
                    tot = {v: np.nansum(vals[v][days], axis=0) for v in VARS}
                    ok = np.isfinite(vals["ra"][days]).any(axis=0) & (ids == z)
                    if code is not None:
                        ok &= crop[list(np.unique(years)).index(y)] == code
                    a = area[ok].sum()
                    if a == 0:
                        continue
                    key = (int(z), crop_name, int(y)) + (() if by == "year" else (s,))
                    out[key] = {v: (tot[v][ok] * area[ok]).sum() for v in VARS} | {"area": a}
    return out


@st.composite
def cases(draw):
    ny, nx = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    n_zones = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_zones + 1, (ny, nx)).astype("int32")
    ids[0, 0] = 1  # at least one zoned pixel
    chunks = {
        "time": draw(st.integers(5, TIME.size)),
        "y": draw(st.integers(1, ny)),
        "x": draw(st.integers(1, nx)),
    }
    by = draw(st.sampled_from(["year", "season", "month"]))
    return ny, nx, n_zones, ids, seed, chunks, by


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_zone_sums_equal_brute_force_numpy_sums(case):
    ny, nx, n_zones, ids, seed, chunks, by = case
    ds = fluxes(ny, nx, seed, chunks)
    rng = np.random.default_rng(seed + 1)
    area = rng.uniform(1e5, 3e5, (ny, nx))
    crop = rng.integers(0, 3, (2, ny, nx)).astype("int8")
    grid_coords = {"y": ds["y"].values, "x": ds["x"].values}
    zones = Zones(xr.DataArray(ids, dims=("y", "x"), coords=grid_coords),
                  {i: f"z{i}" for i in range(1, n_zones + 1)})  # fmt: skip
    ct = xr.DataArray(crop, dims=("year", "y", "x"), coords={"year": [2010, 2011], **grid_coords})
    b = zone_budgets(
        ds, zones, by=by, variables=VARS, area=xr.DataArray(area, dims=("y", "x")), crop_type=ct
    )
    assert isinstance(b["ra_g"].data, dask.array.Array)  # lazy until the table
    with dask.config.set(scheduler="sync"):
        table = budget_table(b)
    want = brute(ds, ids, area, crop, by)
    keys = ["zone", "crop", "year"] + ([] if by == "year" else [by])
    got = {tuple(r[k] if k != "zone" else int(r[k]) for k in keys): r for _, r in table.iterrows()}
    assert set(got) == set(want)
    for k, w in want.items():
        r = got[k]
        np.testing.assert_allclose(r["area_km2"] * 1e6, w["area"], rtol=1e-9)
        for v in VARS:
            np.testing.assert_allclose(r[f"{v}_TgC"] * 1e12, w[v], rtol=1e-5)
            np.testing.assert_allclose(r[f"{v}_gCm2"], w[v] / w["area"], rtol=1e-5)
        np.testing.assert_allclose(r["rh_reco_ratio"], w["rh"] / w["reco"], rtol=1e-5)


def test_anomalies_are_against_the_mean_over_years():
    ds = fluxes(4, 5, 3, {"time": 30})
    zones = Zones(xr.DataArray(np.ones((4, 5), "int32"), dims=("y", "x")), {1: "all"})
    t = budget_table(zone_budgets(ds, zones, by="year", variables=VARS))
    assert list(t["year"]) == [2010, 2011]
    np.testing.assert_allclose(t["ra_anom_gCm2"], t["ra_gCm2"] - t["ra_gCm2"].mean())
    assert t["ra_anom_gCm2"].abs().max() > 0


def test_bad_by_is_refused():
    ds = fluxes(3, 3, 0, {"time": -1})
    zones = Zones(xr.DataArray(np.ones((3, 3), "int32"), dims=("y", "x")), {1: "a"})
    with pytest.raises(ValueError, match=r"--by 'week': expected one of year, season, month"):
        zone_budgets(ds, zones, by="week")


# --------------------------------------------------------------------------------------
# zones and areas
# --------------------------------------------------------------------------------------

GRID = GridSpec("EPSG:5070", 0.0, 5000.0, 500.0, 10, 12)


def square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_geojson_polygons_are_rasterised_by_pixel_centre(tmp_path):
    from pyproj import Transformer

    # two boxes given in longitude/latitude (RFC 7946), split at x = 3000 m
    tr = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True)

    def lonlat_box(x0, y0, x1, y1, n=20):
        xs = np.r_[np.linspace(x0, x1, n), np.full(n, x1), np.linspace(x1, x0, n), np.full(n, x0)]
        ys = np.r_[np.full(n, y0), np.linspace(y0, y1, n), np.full(n, y1), np.linspace(y1, y0, n)]
        lon, lat = tr.transform(xs, ys)
        return {"type": "Polygon", "coordinates": [[[a, b] for a, b in zip(lon, lat, strict=True)]]}

    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"NAME": "West", "GEOID": "01"}, "geometry": lonlat_box(-10, -10, 3000, 5010)},
        {"type": "Feature", "properties": {"NAME": "East", "GEOID": "02"}, "geometry": lonlat_box(3000, 2000, 6010, 5010)},
    ]}  # fmt: skip
    p = tmp_path / "z.geojson"
    p.write_text(json.dumps(doc))
    z = read_zones(p, GRID)
    assert z.names == {1: "West", 2: "East"}
    ids = z.ids.values
    xs, ys = GRID.x[None, :], GRID.y[:, None]
    want = np.where(xs < 3000, 1, np.where(ys > 2000, 2, 0)) * np.ones(GRID.shape, int)
    np.testing.assert_array_equal(ids, want)
    assert read_zones(p, GRID, field="GEOID").names == {1: "01", 2: "02"}


def test_zone_files_are_checked(tmp_path):
    p = tmp_path / "z.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"NAME": "a"}, "geometry": square(0, 0, 1000, 1000)}]}))  # fmt: skip
    with pytest.raises(
        ZoneError, match=r"z.geojson: no property 'STATE' \(--zone-field\); the features have NAME"
    ):
        read_zones(p, GRID, field="STATE")
    with pytest.raises(
        ZoneError, match=r"no polygon covers a pixel centre of the grid .* is the file's CRS right"
    ):
        read_zones(p, GRID)  # lon/lat 0..1000 degrees: not on the grid
    pt = tmp_path / "pt.geojson"
    pt.write_text(
        json.dumps(
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Point", "coordinates": [0, 0]},
            }
        )
    )
    with pytest.raises(
        ZoneError, match=r"pt.geojson: feature 1 has geometry 'Point'; expected Polygon"
    ):
        read_zones(pt, GRID)
    with pytest.raises(ZoneError, match=r"zones .*z.csv: unknown suffix '.csv'"):
        (tmp_path / "z.csv").write_text("a")
        read_zones(tmp_path / "z.csv", GRID)
    with pytest.raises(ZoneError, match=r"nothere.gpkg: no such file"):
        read_zones(tmp_path / "nothere.gpkg", GRID)


def test_zone_raster_on_the_grid(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    ids = (np.arange(GRID.ny * GRID.nx).reshape(GRID.shape) % 3).astype("int16")
    p = tmp_path / "zones.tif"
    with rasterio.open(p, "w", driver="GTiff", width=GRID.nx, height=GRID.ny, count=1, dtype="int16",
                       crs=GRID.crs, transform=from_origin(GRID.x0, GRID.y0, GRID.res, GRID.res)) as dst:  # fmt: skip
        dst.write(ids, 1)
    z = read_zones(p, GRID)
    np.testing.assert_array_equal(z.ids.values, ids)
    assert sorted(z.names) == [1, 2]


def test_cell_areas_projected_and_geographic():
    a = cell_area(GRID)
    assert float(a.min()) == float(a.max()) == 250000.0
    geo = GridSpec("EPSG:4326", -100.0, 41.0, 0.5, 4, 3)
    g = cell_area(geo).values
    # exact: ellipsoidal area of a 0.5 x 0.5 degree cell between 40.5 and 41 N
    from pyproj import Geod

    want = abs(
        Geod(ellps="WGS84").polygon_area_perimeter([0, 0.5, 0.5, 0], [40.5, 40.5, 41, 41])[0]
    )
    np.testing.assert_allclose(g[0], want, rtol=1e-9)
    assert g[0, 0] < g[-1, 0]  # cells shrink towards the pole
    # the whole sphere-band check: 360 x 180 degrees sums to the ellipsoid's area
    world = cell_area(GridSpec("EPSG:4326", -180.0, 90.0, 10.0, 18, 36)).values.sum()
    np.testing.assert_allclose(world, 5.10065621724e14, rtol=1e-6)


FIONA_REASON = "the [analysis] extra (fiona) is not installed: GeoPackage/Shapefile zones untested"


def test_polygon_files_without_fiona_are_refused_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fiona", None)  # as if the extra were not installed
    for name in ("z.gpkg", "z.shp"):
        p = tmp_path / name
        p.write_bytes(b"")
        suffix = p.suffix
        with pytest.raises(
            ZoneError, match=rf"{name}: reading \{suffix} files needs the 'fiona' package .*ogr2ogr"
        ):
            read_zones(p, GRID)


@pytest.mark.parametrize(
    ("name", "driver", "crs"),
    [("z.gpkg", "GPKG", "EPSG:5070"), ("z.shp", "ESRI Shapefile", "EPSG:4326")],
    ids=["geopackage-grid-crs", "shapefile-lonlat"],
)
def test_geopackage_and_shapefile_zones_read_like_geojson(tmp_path, name, driver, crs):
    fiona = pytest.importorskip("fiona", reason=FIONA_REASON)
    from pyproj import Transformer

    tr = Transformer.from_crs(GRID.crs, crs, always_xy=True)

    def box(x0, y0, x1, y1, n=20):  # densified, so that the reprojected edges stay straight in x/y
        xs = np.r_[np.linspace(x0, x1, n), np.full(n, x1), np.linspace(x1, x0, n), np.full(n, x0)]
        ys = np.r_[np.full(n, y0), np.linspace(y0, y1, n), np.full(n, y1), np.linspace(y1, y0, n)]
        a, b = tr.transform(xs, ys)
        return {
            "type": "Polygon",
            "coordinates": [[(float(u), float(v)) for u, v in zip(a, b, strict=True)]],
        }

    p = tmp_path / name
    schema = {"geometry": "Polygon", "properties": {"NAME": "str", "GEOID": "str"}}
    with fiona.open(p, "w", driver=driver, crs=crs, schema=schema) as dst:
        dst.write(
            {"geometry": box(-10, -10, 3000, 5010), "properties": {"NAME": "west", "GEOID": "01"}}
        )
        dst.write(
            {"geometry": box(3000, 2000, 6010, 5010), "properties": {"NAME": "east", "GEOID": "02"}}
        )
    z = read_zones(p, GRID)
    assert z.names == {1: "west", 2: "east"}
    xs, ys = GRID.x[None, :], GRID.y[:, None]
    want = np.where(xs < 3000, 1, np.where(ys > 2000, 2, 0)) * np.ones(GRID.shape, int)
    np.testing.assert_array_equal(z.ids.values, want)
    assert read_zones(p, GRID, field="GEOID").names == {1: "01", 2: "02"}
    with pytest.raises(ZoneError, match=rf"{name}: no property 'STATE' \(--zone-field\)"):
        read_zones(p, GRID, field="STATE")


def test_crop_share_scales_areas_and_totals_not_means():
    from kgml_grid.analysis.budgets import crop_layers

    ds = fluxes(4, 6, 7, {"time": 40, "y": 2, "x": 3})
    zones = Zones(xr.DataArray(np.where(np.arange(6) < 3, 1, 2)[None, :].repeat(4, 0).astype("int32"), dims=("y", "x")),
                  {1: "a", 2: "b"})  # fmt: skip
    frac = xr.Dataset({"crop_type": (("year", "y", "x"), np.ones((2, 4, 6), "int8")),
                       "corn_fraction": (("year", "y", "x"), np.full((2, 4, 6), 0.3)),
                       "soybean_fraction": (("year", "y", "x"), np.full((2, 4, 6), 0.1))},
                      coords={"year": [2010, 2011]})  # fmt: skip
    ct, share = crop_layers(frac)
    full = budget_table(zone_budgets(ds, zones, variables=VARS))
    part = budget_table(zone_budgets(ds, zones, variables=VARS, share=share, crop_type=ct))
    part = part[part.crop == "all"].reset_index(drop=True)
    np.testing.assert_allclose(part["area_km2"], 0.4 * full["area_km2"])
    np.testing.assert_allclose(part["rh_TgC"], 0.4 * full["rh_TgC"], rtol=1e-6)
    np.testing.assert_allclose(part["rh_gCm2"], full["rh_gCm2"], rtol=1e-6)
