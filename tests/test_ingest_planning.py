"""Pure parts of the ingestion: tiles, windows, date patterns, grids, CDL counts, unit conversions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from kgml_grid.grid import GridSpec
from kgml_grid.ingest import (
    IngestError,
    aggregate,
    class_map,
    compile_pattern,
    convert,
    target_grid,
)
from kgml_grid.ingest.dates import YEAR_PATTERN
from kgml_grid.ingest.target import resolve_chunks
from kgml_grid.ingest.tiles import (
    Tile,
    daily_axis,
    index_blocks,
    kernel_pad,
    plan_tiles,
    source_window,
    tile_bounds,
    tile_transform,
)
from kgml_grid.ingest.weather import needed_quantities, parse_mapping, saturation_vp, unit_factor

# --- tiles --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 13), st.integers(1, 13))
def test_tiles_cover_the_grid_once_and_start_on_chunk_boundaries(ny, nx, ty, tx):
    tiles = plan_tiles((ny, nx), (ty, tx))
    seen = np.zeros((ny, nx), int)
    for t in tiles:
        assert t.row0 % ty == 0 and t.col0 % tx == 0
        assert 0 < t.shape[0] <= ty and 0 < t.shape[1] <= tx
        seen[t.row0 : t.row1, t.col0 : t.col1] += 1
    assert (seen == 1).all()
    assert len(set(tiles)) == len(tiles)  # hashable, unique keys


def test_tile_transform_and_bounds():
    g = GridSpec("EPSG:5070", 1000.0, 5000.0, 250.0, 10, 12)
    t = Tile(4, 8, 8, 12)
    assert tile_transform(g, t) == Affine(250.0, 0, 3000.0, 0, -250.0, 4000.0)
    assert tile_bounds(g, t) == (3000.0, 3000.0, 4000.0, 4000.0)
    assert t.region == {"y": slice(4, 8), "x": slice(8, 12)}


def test_source_window_pads_clips_and_misses():
    tr = Affine(100.0, 0, 0.0, 0, -100.0, 1000.0)  # 10 x 10 pixels of 100 m
    assert source_window((250, 450, 450, 750), tr, (10, 10), pad=0).shape == (4, 3)
    w = source_window((250, 450, 450, 750), tr, (10, 10), pad=2)
    assert (w.row0, w.row1, w.col0, w.col1) == (0, 8, 0, 7)
    assert source_window((-500, 0, -200, 1000), tr, (10, 10), pad=1) is None
    assert source_window((900, 0, 5000, 1000), tr, (10, 10), pad=0).shape == (10, 1)


def test_kernel_pad_grows_with_downsampling():
    assert kernel_pad("nearest", src_res=250, dst_res=250) == 3
    assert kernel_pad("bilinear", src_res=30, dst_res=250) == 1 * 9 + 2
    assert kernel_pad("lanczos", src_res=500, dst_res=250) == 3 + 2


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 50), st.integers(0, 60), st.integers(1, 9))
def test_index_blocks_lie_in_one_chunk_each(start, n, chunk):
    blocks = index_blocks(start, start + n, chunk)
    got = [i for b in blocks for i in range(b.start, b.stop)]
    assert got == list(range(start, start + n))
    assert all(b.start // chunk == (b.stop - 1) // chunk for b in blocks)


def test_daily_axis_is_complete_and_at_midnight():
    ax = daily_axis(pd.Timestamp("2015-12-30 12:00"), pd.Timestamp("2016-01-02"))
    assert list(ax.strftime("%Y-%m-%d")) == ["2015-12-30", "2015-12-31", "2016-01-01", "2016-01-02"]


# --- target grid ------------------------------------------------------------------------------


def test_target_grid_snaps_outward_to_the_resolution():
    g = target_grid(crs="EPSG:5070", bounds=(-1010.0, 2000.0, 1240.0, 2490.0), res=250)
    assert (g.x0, g.y0, g.res, g.ny, g.nx) == (-1250.0, 2500.0, 250.0, 2, 10)
    w, s, e, n = g.bounds
    assert w <= -1010 and e >= 1240 and s <= 2000 and n >= 2490


def test_target_grid_from_lonlat_bounds_covers_them():
    from pyproj import Transformer

    g = target_grid(
        crs="EPSG:5070", bounds=(-96.6, 41.1, -96.4, 41.2), bounds_crs="EPSG:4326", res=250
    )
    tr = Transformer.from_crs("EPSG:4326", "EPSG:5070", always_xy=True)
    for lon, lat in [(-96.6, 41.1), (-96.4, 41.2), (-96.6, 41.2), (-96.4, 41.1)]:
        x, y = tr.transform(lon, lat)
        assert g.bounds[0] <= x <= g.bounds[2] and g.bounds[1] <= y <= g.bounds[3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crs": "EPSG:99999999", "bounds": (0, 0, 1, 1), "res": 1}, "target CRS 'EPSG:99999999'"),
        ({"crs": "EPSG:5070", "bounds": (0, 0, 1, 1), "res": 0}, "resolution must be positive"),
        (
            {"crs": "EPSG:5070", "bounds": (5, 0, 1, 1), "res": 1},
            r"bounds \(5, 0, 1, 1\) are empty",
        ),
    ],
)
def test_target_grid_refusals(kwargs, match):
    with pytest.raises(IngestError, match=match):
        target_grid(**kwargs)


def test_chunks_are_checked():
    assert resolve_chunks({"y": 64})["y"] == 64 and resolve_chunks()["time"] == 365
    with pytest.raises(IngestError, match="unknown dimension 'band'"):
        resolve_chunks({"band": 1})
    with pytest.raises(IngestError, match="y=0 must be a positive integer"):
        resolve_chunks({"y": 0})


# --- dates in file names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "date"),
    [
        ("SLOPE_GPP_{date:%Y%j}.tif", "SLOPE_GPP_2015032.tif", "2015-02-01"),
        ("SLOPE_GPP_{date:%Y%j}.tif", "/data/x/SLOPE_GPP_2016366.tif", "2016-12-31"),
        ("GLASS01B01.V40.A{date:%Y%j}.*.tif", "GLASS01B01.V40.A2015009.2019353.tif", "2015-01-09"),
        (
            "SMAP_L4_SM_gph_{date:%Y%m%d}T*.tif",
            "SMAP_L4_SM_gph_20150401T013000_Vv7032_001.tif",
            "2015-04-01",
        ),
        ("re:_(?P<year>\\d{4})(?P<doy>\\d{3})\\.tif$", "MOD15A2H_2015193.tif", "2015-07-12"),
        (
            "re:(?P<year>\\d{4})-(?P<month>\\d\\d)-(?P<day>\\d\\d)",
            "lai 2015-03-04 v2.tif",
            "2015-03-04",
        ),
        ("re:D(?P<date>\\d{8})", "x_D20150102.tif", "2015-01-02"),
        (YEAR_PATTERN, "CDL_2015_clip_20160101.tif", "2015-01-01"),
    ],
)
def test_dates_from_file_names(pattern, name, date):
    assert compile_pattern(pattern).parse(name) == pd.Timestamp(date)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (
            "SLOPE_GPP_2015x32.tif",
            r"SLOPE_GPP_2015x32.tif: the file name does not match the date pattern",
        ),
        (
            "SLOPE_GPP_2015366.tif",
            r"SLOPE_GPP_2015366.tif: .*'2015366' is not a valid date for '%Y%j'",
        ),
        (
            "SLOPE_GPP_2015000.tif",
            r"SLOPE_GPP_2015000.tif: the date in the file name does not parse",
        ),
        ("SLOPE_GPP_2015001.tif.aux.xml", "does not match the date pattern"),
    ],
)
def test_dates_that_do_not_parse_are_refused_naming_the_file(name, match):
    with pytest.raises(IngestError, match=match):
        compile_pattern("SLOPE_GPP_{date:%Y%j}.tif").parse(name)


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ("SLOPE_GPP.tif", "exactly one"),
        ("{date:%Y}_{date:%j}.tif", "exactly one"),
        ("X_{date:%Y%Q}.tif", "strftime code %Q is not supported"),
        ("re:(?P<yr>\\d{4})", "needs a named group"),
        ("re:(unclosed", "not a valid regular expression"),
    ],
)
def test_bad_patterns_are_refused(pattern, match):
    with pytest.raises(IngestError, match=match):
        compile_pattern(pattern)


# --- CDL aggregation -------------------------------------------------------------------------------


def test_cdl_fractions_and_dominant_type_by_hand():
    cmap = class_map()
    codes = np.array(
        [
            [1, 1, 5, 5, 0, 0],
            [1, 24, 5, 1, 0, 81],
            [5, 5, 176, 176, -1, -1],
            [5, 1, 1, 5, -1, 1],
        ]
    )
    ct, fr = aggregate(codes, 2, cmap)
    # block (0,0): corn 3, other 1 -> corn; (0,1): soy 3, corn 1 -> soybean; (0,2): nothing valid
    # (1,0): soy 3, corn 1 -> soybean; (1,1): other 2, corn 1, soy 1 -> other; (1,2): corn 1 of 1
    assert ct.tolist() == [[1, 2, 0], [2, 0, 1]]
    np.testing.assert_allclose(fr[1], [[0.75, 0.25, np.nan], [0.25, 0.25, 1.0]])
    np.testing.assert_allclose(fr[2], [[0.0, 0.75, np.nan], [0.75, 0.25, 0.0]])
    np.testing.assert_allclose(fr[0], [[0.25, 0.0, np.nan], [0.0, 0.5, 0.0]])
    assert ct.dtype == np.int8 and fr.dtype == np.float32


def test_cdl_ties_go_to_other_then_corn_and_codes_can_be_regrouped():
    codes = np.array([[1, 5], [24, 24]])
    assert aggregate(codes, 2, class_map())[0].tolist() == [[0]]
    assert aggregate(np.array([[1, 5], [1, 5]]), 2, class_map())[0].tolist() == [[1]]
    dbl = class_map(corn_codes=(1, 225), soybean_codes=(5, 26))
    assert aggregate(np.array([[225, 26], [26, 0]]), 2, dbl)[0].tolist() == [[2]]


def test_cdl_class_map_refusals():
    with pytest.raises(IngestError, match="CDL code 7 is not in the CDL legend"):
        class_map(corn_codes=(7,))
    with pytest.raises(IngestError, match=r"codes \[5\] are given as both corn and soybean"):
        class_map(corn_codes=(1, 5))
    with pytest.raises(IngestError, match=r"must be in 0\.\.255"):
        class_map(extra_codes=(300,))
    assert class_map(corn_codes=(7,), extra_codes=(7,)).lut[8] == 1


# --- weather units --------------------------------------------------------------------------------


def test_unit_factors():
    assert unit_factor("K", "tair") == (1.0, -273.15)
    assert unit_factor(" W  m-2 ", "swrad") == (0.0864, 0.0)
    assert unit_factor("kPa", "vpd") == (10.0, 0.0)
    assert unit_factor("kg m-2 s-1", "precip") == (86400.0, 0.0)
    assert unit_factor("kg m-2", "precip") == (1.0, 0.0)
    assert unit_factor("degF", "tmax") is None


def test_weather_conversions_by_hand():
    t = np.array([[300.0, 280.0]]) - 273.15
    q = {"tmax": t + 5.0, "tmin": t - 5.0, "swrad": np.array([[200 * 0.0864, 0.0]]),
         "qair": np.array([[0.01, 0.002]]), "psurf": np.array([[950.0, 1000.0]]),
         "precip": np.array([[2.5, 0.0]])}  # fmt: skip
    out = convert(q)
    np.testing.assert_allclose(out["tair"], [[26.85, 6.85]], atol=1e-5)
    np.testing.assert_allclose(out["swrad"], [[17.28, 0.0]], atol=1e-5)
    es = (saturation_vp(t + 5) + saturation_vp(t - 5)) / 2
    e = np.array([[0.01 * 950 / (0.622 + 0.00378), 0.002 * 1000 / (0.622 + 0.000756)]])
    np.testing.assert_allclose(out["vpd"], np.maximum(es - e, 0), rtol=1e-5)
    assert abs(saturation_vp(np.array(20.0)) - 23.38) < 0.01  # FAO-56 table: 2.338 kPa at 20 degC
    daymet = convert({"tmax": np.array([10.0]), "tmin": np.array([0.0]), "swrad_daylight": np.array([300.0]),
                      "dayl": np.array([36000.0]), "vp": np.array([8.0]), "precip": np.array([1.0])})  # fmt: skip
    np.testing.assert_allclose(daymet["swrad"], [10.8])
    np.testing.assert_allclose(
        daymet["vpd"], [(saturation_vp(np.array(10.0)) + saturation_vp(np.array(0.0))) / 2 - 8]
    )


def test_needed_quantities_say_what_is_missing():
    assert needed_quantities(["tmax", "tmin", "swrad", "vpd", "precip"]) == (
        "tmax",
        "tmin",
        "swrad",
        "vpd",
        "precip",
    )
    assert needed_quantities(["tair", "swrad", "qair", "psurf", "precip"])[2:4] == ("qair", "psurf")
    with pytest.raises(IngestError, match="no air temperature: need tair, or tmax and tmin"):
        needed_quantities(["tmax", "swrad", "vpd", "precip"])
    with pytest.raises(IngestError, match="no vapour pressure deficit"):
        needed_quantities(["tair", "swrad", "qair", "precip"])
    with pytest.raises(IngestError, match="no precipitation"):
        needed_quantities(["tair", "swrad", "vpd"])


def test_mapping_table_parsing():
    t = parse_mapping({"Rainf": "precip:kg m-2 s-1"}, preset="nldas")
    assert t["Rainf"] == ("precip", "kg m-2 s-1") and t["Tair"] == ("tair", None)
    with pytest.raises(IngestError, match="unknown preset 'era5'"):
        parse_mapping(preset="era5")
    with pytest.raises(IngestError, match="unknown quantity 'rain'"):
        parse_mapping({"pr": "rain"})
    with pytest.raises(IngestError, match="units 'inch' are not known for precip"):
        parse_mapping({"pr": "precip:inch"})
