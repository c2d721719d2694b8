"""Tests of the FLUXNET DD reader/writer against the real US-Ne1 file and variants of it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kgml_grid import schema
from kgml_grid.fluxnet import (
    NEGATIVE_GPP_TOLERANCE,
    FluxnetFileInfo,
    parse_fluxnet_filename,
    read_fluxnet_dd,
    to_fluxnet_dd,
)
from kgml_grid.sites import SiteMeta, SiteMetadataError, find_site_meta, write_site_meta

REAL_NAME = "FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv"
FLUXNET_DIR = Path(
    os.environ.get(
        "KGML_FLUXNET_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "fluxnet"
    )
)
REAL_PATH = FLUXNET_DIR / REAL_NAME

pytestmark = pytest.mark.skipif(
    not REAL_PATH.is_file(),
    reason=f"real FLUXNET file not found at {REAL_PATH} (set KGML_FLUXNET_DIR)",
)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return read_fluxnet_dd(REAL_PATH)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """The real file as plain pandas (independent of the reader), -9999 kept."""
    return pd.read_csv(REAL_PATH, dtype={"TIMESTAMP": str})


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return REAL_PATH.read_text().splitlines()


def write_variant(folder: Path, lines: list[str], name: str = REAL_NAME) -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def set_cell(lines: list[str], line_no: int, column: str, value: str) -> list[str]:
    """Copy of ``lines`` with one cell replaced (``line_no`` is 1-based, header = 1)."""
    header = lines[0].split(",")
    out = list(lines)
    cells = out[line_no - 1].split(",")
    cells[header.index(column)] = value
    out[line_no - 1] = ",".join(cells)
    return out


def drop_column(lines: list[str], column: str) -> list[str]:
    j = lines[0].split(",").index(column)
    return [",".join(c for k, c in enumerate(line.split(",")) if k != j) for line in lines]


# --------------------------------------------------------------------------- file names
def test_parse_fluxnet2015_name() -> None:
    info = parse_fluxnet_filename(Path("/any/where") / REAL_NAME)
    assert info == FluxnetFileInfo(
        site_id="US-Ne1",
        product="FLUXNET2015",
        subset="SUBSET",
        resolution="DD",
        first_year=2001,
        last_year=2013,
        version="1-4",
        prefix="FLX",
    )
    assert info.filename == REAL_NAME


def test_parse_ameriflux_fluxnet_name() -> None:
    info = parse_fluxnet_filename("AMF_US-Ne1_FLUXNET_SUBSET_DD_2001-2020_3-5.csv")
    assert (info.prefix, info.site_id, info.product, info.subset) == (
        "AMF",
        "US-Ne1",
        "FLUXNET",
        "SUBSET",
    )
    assert (info.resolution, info.first_year, info.last_year, info.version) == (
        "DD",
        2001,
        2020,
        "3-5",
    )
    assert (
        parse_fluxnet_filename("FLX_SY-A01_FLUXNET2015_FULLSET_HH_2008-2015_1-4.csv").resolution
        == "HH"
    )


@pytest.mark.parametrize(
    "name",
    [
        "US-Ne1_daily.csv",
        "FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2001-2013_1-4.txt",
        "FLX_USNe1_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv",
        "FLX_US-Ne1_FLUXNET2015_ERAI_DD_1989-2014_1-4.csv",
        "FLX_US-Ne1_FLUXNET2015_SUBSET_XX_2001-2013_1-4.csv",
        "FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2001_1-4.csv",
    ],
)
def test_bad_file_name(name: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^{re.escape(name)}: not a FLUXNET file name; expected <FLX\|AMF>_"
    ):
        parse_fluxnet_filename(name)


def test_reversed_years_in_name() -> None:
    with pytest.raises(ValueError, match="first year 2013 is after last year 2001"):
        parse_fluxnet_filename("FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2013-2001_1-4.csv")


def test_reader_refuses_bad_name(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, lines[:5], "US-Ne1.csv")
    with pytest.raises(ValueError, match=r"US-Ne1\.csv: not a FLUXNET file name"):
        read_fluxnet_dd(path)


def test_reader_refuses_half_hourly(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, lines[:5], "FLX_US-Ne1_FLUXNET2015_SUBSET_HH_2001-2013_1-4.csv")
    with pytest.raises(
        ValueError,
        match=r"_HH_2001-2013_1-4\.csv: resolution 'HH' \(half-hourly\) is not supported; "
        r"kgml_grid reads daily \(DD\) FLUXNET files only",
    ):
        read_fluxnet_dd(path)


# --------------------------------------------------------------------------- the real file
def test_days_and_time(ds: xr.Dataset) -> None:
    assert ds.sizes["time"] == 4199
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert pd.Timestamp(ds.time.values[0]) == pd.Timestamp("2001-05-30")
    assert pd.Timestamp(ds.time.values[-1]) == pd.Timestamp("2012-11-26")
    assert (np.diff(ds.time.values) == np.timedelta64(1, "D")).all()
    assert ds.attrs["first_date"] == "2001-05-30"
    assert ds.attrs["last_date"] == "2012-11-26"
    assert ds.attrs["gap_days_filled"] == 0


def test_conversions(ds: xr.Dataset, raw: pd.DataFrame) -> None:
    np.testing.assert_array_equal(ds.swrad.values, raw["SW_IN_F"].to_numpy() * 0.0864)
    np.testing.assert_array_equal(ds.tair.values, raw["TA_F"].to_numpy())
    np.testing.assert_array_equal(ds.nee.values, raw["NEE_VUT_REF"].to_numpy())
    np.testing.assert_array_equal(ds.reco.values, raw["RECO_NT_VUT_REF"].to_numpy())
    np.testing.assert_array_equal(ds.swrad_pot.values, raw["SW_IN_POT"].to_numpy() * 0.0864)
    np.testing.assert_array_equal(ds.nee_qc.values, raw["NEE_VUT_REF_QC"].to_numpy())


def test_soil_moisture_all_missing(ds: xr.Dataset) -> None:
    assert ds.soil_moisture.isnull().all()
    assert ds.soil_moisture_qc.isnull().all()


def test_nee_statistics(ds: xr.Dataset) -> None:
    nee = ds.nee.values
    assert np.isfinite(nee).all()
    assert nee.min() == pytest.approx(-20.4292)
    assert nee.max() == pytest.approx(8.18319)
    assert nee.mean() == pytest.approx(-1.03, abs=0.005)


def test_units_and_attributes(ds: xr.Dataset) -> None:
    for fc in schema.FLUXNET_COLUMNS:
        var = schema.VARIABLES[fc.variable]
        attrs = ds[fc.variable].attrs
        assert attrs["units"] == var.units
        assert attrs["fluxnet_column"] == fc.column
        for key, value in var.cf_attrs().items():
            if key != "comment":
                assert attrs[key] == value, (fc.variable, key)
        assert ds[f"{fc.variable}_qc"].attrs["fluxnet_column"] == fc.qc
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds.attrs["site_id"] == "US-Ne1"
    assert ds.attrs["source_file"] == REAL_NAME


def test_site_metadata_found(ds: xr.Dataset) -> None:
    assert ds.attrs["latitude"] == pytest.approx(41.1651)
    assert ds.attrs["longitude"] == pytest.approx(-96.4766)
    assert ds.attrs["igbp"] == "CRO"
    assert ds.crop_type.dims == ("year",)
    assert ds.year.values.tolist() == list(range(2001, 2013))
    assert ds.crop_type.dtype == np.int8
    assert (ds.crop_type.values == schema.CROP_NAMES["corn"]).all()
    assert ds.crop_type.attrs["flag_meanings"] == "other corn soybean"
    for prop in schema.SITE_SOIL_PROPERTIES:
        assert ds[prop].dims == ()
        assert ds[prop].attrs["units"] == schema.VARIABLES[prop].units
        lo, hi = schema.VARIABLES[prop].valid_range
        assert lo <= float(ds[prop]) <= hi


def test_negative_gpp_policies(ds: xr.Dataset, raw: pd.DataFrame) -> None:
    gpp_raw = raw["GPP_NT_VUT_REF"].to_numpy()
    n_neg = int((gpp_raw < 0).sum())
    assert n_neg == 1419
    assert ds.gpp.attrs["negative_gpp_count"] == n_neg
    assert float(ds.gpp.min()) == 0.0
    np.testing.assert_array_equal(ds.gpp.values, np.maximum(gpp_raw, 0.0))
    np.testing.assert_array_equal(ds.gpp_sat.values, ds.gpp.values)
    as_nan = read_fluxnet_dd(REAL_PATH, negative_gpp="nan")
    assert int(as_nan.gpp.isnull().sum()) == n_neg
    with pytest.raises(
        ValueError,
        match=r"column 'GPP_NT_VUT_REF' on 2001-06-03: value -0\.11447 g m-2 d-1 is below 0",
    ):
        read_fluxnet_dd(REAL_PATH, negative_gpp="error")
    with pytest.raises(ValueError, match="negative_gpp must be 'clip', 'nan' or 'error'"):
        read_fluxnet_dd(REAL_PATH, negative_gpp="keep")  # type: ignore[arg-type]


def test_qc_threshold_masks(ds: xr.Dataset, raw: pd.DataFrame) -> None:
    masked = read_fluxnet_dd(REAL_PATH, qc_threshold=0.9)
    low = raw["NEE_VUT_REF_QC"].to_numpy() < 0.9
    assert low.sum() > 100
    assert masked.nee.isnull().values[low].all()
    np.testing.assert_array_equal(masked.nee.values[~low], ds.nee.values[~low])
    assert masked.nee.attrs["qc_masked"] == int(low.sum())
    assert masked.reco.isnull().values[low].all()
    np.testing.assert_array_equal(masked.tair.values, ds.tair.values)  # TA_F_QC is 1 throughout
    np.testing.assert_array_equal(masked.nee_qc.values, ds.nee_qc.values)  # QC kept as is
    assert masked.attrs["qc_threshold"] == 0.9
    with pytest.raises(ValueError, match=r"qc_threshold must be within \[0, 1\], got 90"):
        read_fluxnet_dd(REAL_PATH, qc_threshold=90)


# --------------------------------------------------------------------------- malformed variants
def test_missing_required_column(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, drop_column(lines, "NEE_VUT_REF"))
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(REAL_NAME)}: required column 'NEE_VUT_REF' \(schema variable nee\) "
        "is missing from the header",
    ):
        read_fluxnet_dd(path)


def test_optional_column_may_be_absent(tmp_path: Path, lines: list[str]) -> None:
    variant = drop_column(drop_column(lines, "SWC_F_MDS_1"), "SWC_F_MDS_1_QC")
    out = read_fluxnet_dd(write_variant(tmp_path, variant))
    assert out.soil_moisture.isnull().all()
    assert "absent from the file" in out.soil_moisture.attrs["comment"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2001O608", "line 11: TIMESTAMP '2001O608' is not a date YYYYMMDD"),
        ("2001-06-08", "line 11: TIMESTAMP '2001-06-08' is not a date YYYYMMDD"),
        ("20010230", "line 11: TIMESTAMP '20010230' is not a valid date"),
        ("", "line 11: TIMESTAMP '' is not a date YYYYMMDD"),
    ],
)
def test_unparseable_timestamp(tmp_path: Path, lines: list[str], value: str, message: str) -> None:
    path = write_variant(tmp_path, set_cell(lines, 11, "TIMESTAMP", value))
    with pytest.raises(ValueError, match=rf"^{re.escape(REAL_NAME)}: {re.escape(message)}$"):
        read_fluxnet_dd(path)


def test_duplicate_date(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 6, "TIMESTAMP", "20010602"))
    with pytest.raises(
        ValueError, match=r"line 6: duplicate TIMESTAMP '20010602' \(also on line 5\)"
    ):
        read_fluxnet_dd(path)


def test_non_monotonic_dates(tmp_path: Path, lines: list[str]) -> None:
    swapped = list(lines)
    swapped[4], swapped[5] = swapped[5], swapped[4]
    path = write_variant(tmp_path, swapped)
    with pytest.raises(
        ValueError,
        match=r"line 6: TIMESTAMP '20010602' comes after '20010603' on line 5; "
        "dates must be strictly increasing",
    ):
        read_fluxnet_dd(path)


def test_out_of_range_value(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 4, "TA_F", "75.5"))
    with pytest.raises(
        ValueError,
        match=r"column 'TA_F' on 2001-06-01: value 75\.5 deg C is outside the valid range "
        r"\[-60, 60\] degC of 'tair'",
    ):
        read_fluxnet_dd(path)


def test_out_of_range_scaled_value(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 3, "SW_IN_F", "-20"))
    with pytest.raises(
        ValueError,
        match=r"column 'SW_IN_F' on 2001-05-31: value -20 W m-2 \(= -1\.728 MJ m-2 d-1\) is outside "
        r"the valid range \[0, 45\] MJ m-2 d-1 of 'swrad'",
    ):
        read_fluxnet_dd(path)


def test_gpp_below_tolerance_refused(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 2, "GPP_NT_VUT_REF", "-7.5"))
    assert -7.5 < -NEGATIVE_GPP_TOLERANCE
    with pytest.raises(
        ValueError,
        match=r"column 'GPP_NT_VUT_REF' on 2001-05-30: value -7\.5 gC m-2 d-1 is outside",
    ):
        read_fluxnet_dd(path)


def test_infinite_value_refused(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 5, "P_F", "inf"))
    with pytest.raises(
        ValueError, match=r"column 'P_F' on 2001-06-02: value inf mm d-1 is outside"
    ):
        read_fluxnet_dd(path)


def test_value_not_a_number(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 8, "VPD_F", "abc"))
    with pytest.raises(ValueError, match=r"line 8, column 'VPD_F': value 'abc' is not a number"):
        read_fluxnet_dd(path)


def test_qc_outside_unit_interval(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, set_cell(lines, 2, "NEE_VUT_REF_QC", "2"))
    with pytest.raises(
        ValueError,
        match=r"column 'NEE_VUT_REF_QC' on 2001-05-30 \(line 2\): QC value 2 is outside \[0, 1\]",
    ):
        read_fluxnet_dd(path)


def test_truncated_file(tmp_path: Path, lines: list[str]) -> None:
    truncated = [*lines[:-1], lines[-1][:40]]
    path = write_variant(tmp_path, truncated)
    with pytest.raises(
        ValueError, match=r"line 4200 has \d+ fields, the header has 77 \(truncated"
    ):
        read_fluxnet_dd(path)


def test_missing_value_spellings(tmp_path: Path, lines: list[str]) -> None:
    variant = set_cell(set_cell(lines, 2, "TA_F", "-9999.0"), 3, "P_F", "-9999.000")
    out = read_fluxnet_dd(write_variant(tmp_path, variant))
    assert np.isnan(out.tair.values[0])
    assert np.isnan(out.precip.values[1])
    assert np.isfinite(out.tair.values[1:]).all()


def test_gap_reindexed(tmp_path: Path, lines: list[str]) -> None:
    path = write_variant(tmp_path, lines[:10] + lines[12:])  # drop 2001-06-08 and 2001-06-09
    out = read_fluxnet_dd(path)
    assert out.sizes["time"] == 4199
    assert out.attrs["gap_days_filled"] == 2
    gap = out.sel(time=slice("2001-06-08", "2001-06-09"))
    assert gap.nee.isnull().all() and gap.nee_qc.isnull().all()
    assert out.nee.attrs["units"] == "g m-2 d-1"
    with pytest.raises(ValueError, match=r"2 missing day\(s\), the first 2001-06-08"):
        read_fluxnet_dd(path, fill_gaps=False)


def test_unknown_site_without_metadata(tmp_path: Path, lines: list[str]) -> None:
    name = "FLX_XX-Unk_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv"
    path = write_variant(tmp_path, lines, name)
    out = read_fluxnet_dd(path)
    assert out.attrs["site_meta"] == "none found"
    assert "crop_type" not in out and "ksat" not in out
    with pytest.raises(
        SiteMetadataError, match=r"unknown site 'XX-Unk'.*--site-meta FILE is required"
    ):
        read_fluxnet_dd(path, require_site_meta=True)


def test_site_metadata_given_or_next_to_csv(tmp_path: Path, lines: list[str]) -> None:
    name = "FLX_XX-Unk_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv"
    path = write_variant(tmp_path, lines, name)
    us_ne1 = find_site_meta("US-Ne1")
    meta = SiteMeta(
        site_id="XX-Unk",
        latitude=40.0,
        longitude=-95.0,
        igbp="CRO",
        crop_default="soybean",
        crop_by_year={2002: "corn"},
        soil=us_ne1.soil,
        source="test",
    )
    out = read_fluxnet_dd(path, site_meta=meta)
    assert out.crop_type.values[:3].tolist() == [2, 1, 2]
    sidecar = write_site_meta(meta, tmp_path / "XX-Unk_site.json")
    found = read_fluxnet_dd(path)
    assert found.attrs["site_meta"] == str(sidecar)
    xr.testing.assert_identical(found.crop_type, out.crop_type)
    from_file = read_fluxnet_dd(path, site_meta=sidecar)
    xr.testing.assert_identical(from_file.crop_type, out.crop_type)
    with pytest.raises(
        ValueError, match=r"site metadata \(given SiteMeta\) describes site 'US-Ne1', not 'XX-Unk'"
    ):
        read_fluxnet_dd(path, site_meta=us_ne1)


# --------------------------------------------------------------------------- writing
def test_round_trip(ds: xr.Dataset, raw: pd.DataFrame, tmp_path: Path) -> None:
    written = to_fluxnet_dd(ds, tmp_path / REAL_NAME)
    assert written == tmp_path / REAL_NAME
    assert [p.name for p in tmp_path.iterdir()] == [REAL_NAME]  # no temporary file left
    back = read_fluxnet_dd(written)
    xr.testing.assert_equal(back, ds)
    for name in ds.variables:
        a = {k: v for k, v in ds[name].attrs.items() if k != "negative_gpp_count"}
        b = {k: v for k, v in back[name].attrs.items() if k != "negative_gpp_count"}
        assert a == b, name
    assert back.attrs == ds.attrs
    # the written columns are the file's own values (inverse scaling is exact)
    out = pd.read_csv(written, dtype={"TIMESTAMP": str})
    for col in ("TIMESTAMP", "TA_F", "SW_IN_F", "SW_IN_POT", "VPD_F", "P_F", "NEE_VUT_REF"):
        assert (out[col] == raw[col]).all(), col
    assert (out["SWC_F_MDS_1"] == -9999).all() and (out["SWC_F_MDS_1_QC"] == -9999).all()
    assert (out["GPP_NT_VUT_REF"] == raw["GPP_NT_VUT_REF"].clip(lower=0)).all()


def test_round_trip_with_qc_mask(tmp_path: Path) -> None:
    masked = read_fluxnet_dd(REAL_PATH, qc_threshold=0.9)
    back = read_fluxnet_dd(to_fluxnet_dd(masked, tmp_path / REAL_NAME))
    xr.testing.assert_equal(back, masked)


def synthetic_tower(days: pd.DatetimeIndex) -> xr.Dataset:
    """A tower Dataset shaped like the synthetic world's (no units attrs, nee_qc only)."""
    rng = np.random.default_rng(0)
    n = len(days)
    doy = days.day_of_year.to_numpy()
    season = np.clip(np.sin((doy - 120) / 180 * np.pi), 0, None)
    reco = 1.0 + 5.0 * season
    nee = reco - 15.0 * season + 0.3 * rng.standard_normal(n)
    nee[5] = np.nan
    return xr.Dataset(
        {
            "tair": ("time", 10 + 15 * np.sin((doy - 110) / 365 * 2 * np.pi)),
            "swrad": ("time", 5 + 20 * season),
            "swrad_pot": ("time", 15 + 25 * season),
            "vpd": ("time", 2 + 10 * season),
            "precip": ("time", rng.exponential(2.0, n)),
            "soil_moisture": ("time", np.full(n, 0.3)),
            "nee": ("time", nee),
            "reco": ("time", reco),
            "gpp": ("time", reco - nee),
            "nee_qc": ("time", rng.uniform(0.5, 1.0, n)),
        },
        coords={"time": days},
    )


def test_synthetic_tower_round_trip(tmp_path: Path) -> None:
    days = pd.date_range("2008-01-01", "2009-12-31", freq="D")
    tower = synthetic_tower(days)
    name = "FLX_SY-A01_FLUXNET2015_SUBSET_DD_2008-2009_1-4.csv"
    path = to_fluxnet_dd(tower, tmp_path / name, site_id="SY-A01")
    soil = {p: float(np.mean(schema.VARIABLES[p].valid_range)) for p in schema.SITE_SOIL_PROPERTIES}
    soil.update(sand=30.0, clay=30.0, field_capacity=0.3, wilting_point=0.12)
    meta = SiteMeta(
        site_id="SY-A01",
        latitude=41.0,
        longitude=-96.0,
        igbp="CRO",
        crop_default="corn",
        crop_by_year={2009: "soybean"},
        soil=soil,
        x=1.0,
        y=2.0,
        source="synthetic",
    )
    write_site_meta(meta, tmp_path / "SY-A01_site.json")
    back = read_fluxnet_dd(path)
    for var in ("tair", "swrad", "swrad_pot", "vpd", "precip", "soil_moisture", "nee", "reco"):
        np.testing.assert_allclose(back[var].values, tower[var].values, rtol=1e-11, equal_nan=True)
    # partitioned GPP = Reco - NEE goes slightly negative with noise: written as is, clipped on read
    assert float(tower.gpp.min()) < 0
    gpp_file = pd.read_csv(path)["GPP_NT_VUT_REF"].replace(-9999, np.nan).to_numpy()
    np.testing.assert_allclose(gpp_file, tower.gpp.values, rtol=1e-11, equal_nan=True)
    np.testing.assert_allclose(
        back.gpp.values, np.maximum(tower.gpp.values, 0.0), rtol=1e-11, equal_nan=True
    )
    np.testing.assert_allclose(back.nee_qc.values, tower.nee_qc.values, rtol=1e-11)
    np.testing.assert_array_equal(back.gpp_sat.values, back.gpp.values)
    assert back.tair_qc.values.tolist() == [1.0] * len(days)  # derived: value present
    assert back.reco_qc.values.tolist() == back.nee_qc.values.tolist()  # shared NEE QC
    assert back.crop_type.values.tolist() == [1, 2]
    assert (back.attrs["x"], back.attrs["y"]) == (1.0, 2.0)


def test_derived_qc_and_gpp_fallback(ds: xr.Dataset, tmp_path: Path) -> None:
    plain = ds[["tair", "swrad", "vpd", "precip", "nee", "reco", "gpp_sat"]]
    path = to_fluxnet_dd(plain, tmp_path / REAL_NAME)
    out = pd.read_csv(path, dtype={"TIMESTAMP": str})
    np.testing.assert_array_equal(out["GPP_NT_VUT_REF"].to_numpy(), ds.gpp_sat.values)
    assert (out["NEE_VUT_REF_QC"] == 1).all() and (out["TA_F_QC"] == 1).all()
    assert (out["SWC_F_MDS_1"] == -9999).all() and (out["SWC_F_MDS_1_QC"] == -9999).all()
    gappy = plain.copy()
    gappy["nee"] = gappy.nee.where(gappy.time.dt.month != 1)
    gappy["gpp"] = gappy.gpp_sat + 1.0
    out = pd.read_csv(to_fluxnet_dd(gappy, tmp_path / REAL_NAME), dtype={"TIMESTAMP": str})
    january = pd.to_datetime(out["TIMESTAMP"]).dt.month == 1
    assert (out.loc[january, "NEE_VUT_REF"] == -9999).all()
    assert (out.loc[january, "NEE_VUT_REF_QC"] == 0).all()
    assert (out.loc[~january, "NEE_VUT_REF_QC"] == 1).all()
    np.testing.assert_allclose(out["GPP_NT_VUT_REF"], ds.gpp_sat.values + 1.0)  # gpp preferred


def test_writer_refusals(ds: xr.Dataset, tmp_path: Path) -> None:
    target = tmp_path / REAL_NAME
    with pytest.raises(ValueError, match=r"US-Ne1\.csv: not a FLUXNET file name"):
        to_fluxnet_dd(ds, tmp_path / "US-Ne1.csv")
    with pytest.raises(
        ValueError, match=r"resolution 'WW' \(weekly\) is not supported; kgml_grid writes"
    ):
        to_fluxnet_dd(ds, tmp_path / REAL_NAME.replace("_DD_", "_WW_"))
    with pytest.raises(
        ValueError, match=r"site_id argument is 'US-Ne2' but the file name says 'US-Ne1'"
    ):
        to_fluxnet_dd(ds, target, site_id="US-Ne2")
    with pytest.raises(
        ValueError, match=r"the Dataset has no variable 'nee' for required column 'NEE_VUT_REF'"
    ):
        to_fluxnet_dd(ds.drop_vars("nee"), target)
    with pytest.raises(
        ValueError, match=r"variable 'swrad' has units 'W m-2', expected 'MJ m-2 d-1'"
    ):
        to_fluxnet_dd(ds.assign(swrad=ds.swrad.assign_attrs(units="W m-2")), target)
    with pytest.raises(ValueError, match=r"column 'TA_F' on 2001-05-31: value 99 deg C is outside"):
        to_fluxnet_dd(ds.assign(tair=ds.tair.where(ds.time != ds.time[1], 99.0)), target)
    with pytest.raises(ValueError, match=r"outside the years 2001-2010 of the file name"):
        to_fluxnet_dd(ds, tmp_path / REAL_NAME.replace("2001-2013", "2001-2010"))
    with pytest.raises(ValueError, match=r"time 2001-05-31 does not follow 2001-06-01"):
        to_fluxnet_dd(ds.isel(time=[0, 2, 1, 3]), target)
    with pytest.raises(ValueError, match=r"time 2001-05-30 12:00:00 is not a whole day"):
        to_fluxnet_dd(ds.assign_coords(time=ds.time + np.timedelta64(12, "h")), target)
    with pytest.raises(ValueError, match=r"nee_qc on 2001-05-30 is 1\.5, outside \[0, 1\]"):
        to_fluxnet_dd(ds.assign(nee_qc=ds.nee_qc.where(ds.time != ds.time[0], 1.5)), target)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary files


def test_write_is_atomic(ds: xr.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / REAL_NAME
    target.write_text("old content\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        to_fluxnet_dd(ds, target)
    assert target.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == [REAL_NAME]


# --------------------------------------------------------------------------- files as they ship
REAL_FLUXNET = FLUXNET_DIR.parent / "real" / "fluxnet"
MM_FILES = sorted(REAL_FLUXNET.glob("FLX_*_MM_*.csv"))
BASE_ZIP = REAL_FLUXNET / "AMF_US-CRT_BASE-BADM_2-5.zip"
needs_real = pytest.mark.skipif(
    not BASE_ZIP.is_file(), reason=f"real data not found in {REAL_FLUXNET}"
)


def _same_values(a: xr.Dataset, b: xr.Dataset) -> None:
    for v in ("tair", "swrad", "vpd", "precip", "nee", "reco", "gpp", "nee_qc"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    np.testing.assert_array_equal(a["time"].values, b["time"].values)


def test_ameriflux_fluxnet_name_reads_like_fluxnet2015(ds: xr.Dataset, tmp_path: Path) -> None:
    """AmeriFlux-FLUXNET (ONEFlux) files, ``AMF_<SITE>_FLUXNET_SUBSET_DD_...``, read alike."""
    amf = tmp_path / "AMF_US-Ne1_FLUXNET_SUBSET_DD_2001-2013_3-5.csv"
    amf.write_bytes(REAL_PATH.read_bytes())
    got = read_fluxnet_dd(amf)
    _same_values(got, ds)
    assert got.attrs["fluxnet_prefix"] == "AMF" and got.attrs["fluxnet_product"] == "FLUXNET"
    assert (
        got.attrs["site_id"] == "US-Ne1" and "crop_type" in got
    )  # site metadata found from the ID


def test_fullset_dd_reads_like_subset(ds: xr.Dataset, raw: pd.DataFrame, tmp_path: Path) -> None:
    """A FULLSET DD file has the SUBSET columns and many more (ensembles, CUT variants)."""
    full = raw.copy()
    full["NEE_CUT_REF"] = full["NEE_VUT_REF"] + 0.1
    full["NEE_VUT_USTAR50"] = full["NEE_VUT_REF"]
    full["RECO_DT_VUT_05"] = full["RECO_NT_VUT_REF"]
    full["SW_IN_ERA"] = full["SW_IN_F"]
    path = tmp_path / "FLX_US-Ne1_FLUXNET2015_FULLSET_DD_2001-2013_1-4.csv"
    full.to_csv(path, index=False)
    got = read_fluxnet_dd(path)
    _same_values(got, ds)
    assert got.attrs["fluxnet_subset"] == "FULLSET"


def test_zip_download_reads_its_dd_member(ds: xr.Dataset, lines: list[str], tmp_path: Path) -> None:
    import zipfile

    z = tmp_path / "FLX_US-Ne1_FLUXNET2015_SUBSET_2001-2013_1-4.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(REAL_NAME, REAL_PATH.read_bytes())
        zf.writestr(REAL_NAME.replace("_DD_", "_MM_"), "TIMESTAMP,NEE_VUT_REF\n200101,1.0\n")
    got = read_fluxnet_dd(z)
    _same_values(got, ds)
    assert got.attrs["source_file"] == f"{z.name}/{REAL_NAME}"
    only_mm = tmp_path / "FLX_US-Ne2_FLUXNET2015_SUBSET_2001-2013_1-4.zip"
    with zipfile.ZipFile(only_mm, "w") as zf:
        zf.writestr("FLX_US-Ne2_FLUXNET2015_SUBSET_MM_2001-2013_1-4.csv", "TIMESTAMP\n200101\n")
    with pytest.raises(ValueError, match=r"_2001-2013_1-4\.zip: no FLUXNET daily \(DD\) CSV inside the zip "
                                         r"\(FLUXNET CSVs in it: MM \(FLX_US-Ne2_FLUXNET2015_SUBSET_MM_"):  # fmt: skip
        read_fluxnet_dd(only_mm)


@pytest.mark.parametrize(
    ("res", "word"), [("WW", "weekly"), ("YY", "yearly"), ("HR", "hourly"), ("MM", "monthly")]
)
def test_non_daily_steps_refused_naming_file_and_step(
    tmp_path: Path, lines: list[str], res: str, word: str
) -> None:
    name = REAL_NAME.replace("_DD_", f"_{res}_")
    path = write_variant(tmp_path, lines[:5], name)
    with pytest.raises(
        ValueError, match=rf"^{re.escape(name)}: resolution '{res}' \({word}\) is not supported"
    ):
        read_fluxnet_dd(path)


@needs_real
@pytest.mark.parametrize("path", MM_FILES, ids=[p.name[4:10] for p in MM_FILES])
def test_every_real_monthly_file_refused_by_daily_reader_and_read_as_monthly(path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(path.name)}: resolution 'MM' \(monthly\) is not supported; .* "
        r"kgml-grid evaluate --monthly FILE$",
    ):
        read_fluxnet_dd(path)
    from kgml_grid.fluxnet import read_fluxnet_mm

    mm = read_fluxnet_mm(path)
    raw = pd.read_csv(path, dtype={"TIMESTAMP": str})
    assert mm.sizes["time"] == len(raw)
    assert pd.Timestamp(mm.time.values[0]) == pd.Timestamp(raw["TIMESTAMP"].iloc[0] + "01")
    nee = raw["NEE_VUT_REF"].replace(-9999, np.nan).to_numpy()
    np.testing.assert_array_equal(mm["nee"].values, nee)
    assert mm.attrs["site_id"] == path.name[4:10]


@needs_real
def test_us_ne1_monthly_facts() -> None:
    """The README's facts about the official US-Ne1 MM file."""
    from kgml_grid.fluxnet import read_fluxnet_mm

    mm = read_fluxnet_mm(REAL_FLUXNET / "FLX_US-Ne1_FLUXNET2015_SUBSET_MM_2001-2013_1-4.csv")
    t = pd.DatetimeIndex(mm.time.values)
    assert (len(t), f"{t[0]:%Y-%m}", f"{t[-1]:%Y-%m}") == (156, "2001-01", "2013-12")
    assert float(mm.nee.min()) == pytest.approx(-13.37, abs=0.01)
    assert float(mm.nee.max()) == pytest.approx(4.58, abs=0.01)
    assert (
        mm["nee"].attrs["units"] == "g m-2 d-1"
        and mm["nee"].attrs["fluxnet_column"] == "NEE_VUT_REF"
    )


@needs_real
def test_monthly_reader_refuses_a_daily_file() -> None:
    from kgml_grid.fluxnet import read_fluxnet_mm

    with pytest.raises(
        ValueError, match=rf"{REAL_NAME}: resolution 'DD' \(daily\) where a monthly \(MM\)"
    ):
        read_fluxnet_mm(REAL_PATH)


BASE_WHY = r"an AmeriFlux BASE file \(half-hourly fluxes as measured: not gap-filled, and NEE not partitioned into GPP and Reco\)"


@needs_real
def test_ameriflux_base_zip_refused_with_why() -> None:
    with pytest.raises(
        ValueError,
        match=rf"^AMF_US-CRT_BASE-BADM_2-5\.zip: {BASE_WHY}, not a FLUXNET daily \(DD\) file; .*"
        r"download AmeriFlux FLUXNET for US-CRT \(AMF_US-CRT_FLUXNET_SUBSET_DD_<years>_<version>\.csv",
    ):
        read_fluxnet_dd(BASE_ZIP)


@needs_real
def test_ameriflux_base_csv_refused_with_why(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(BASE_ZIP) as zf:
        zf.extract("AMF_US-CRT_BASE_HH_2-5.csv", tmp_path)
    with pytest.raises(ValueError, match=rf"^AMF_US-CRT_BASE_HH_2-5\.csv: {BASE_WHY}"):
        read_fluxnet_dd(tmp_path / "AMF_US-CRT_BASE_HH_2-5.csv")
    # the same BASE content under a daily FLUXNET name: refused by its content
    renamed = tmp_path / "AMF_US-CRT_FLUXNET_SUBSET_DD_2011-2011_2-5.csv"
    (tmp_path / "AMF_US-CRT_BASE_HH_2-5.csv").rename(renamed)
    with pytest.raises(
        ValueError, match=r"starts with comment lines \('# Site: US-CRT'\), as AmeriFlux BASE"
    ):
        read_fluxnet_dd(renamed, site_meta=None)


@needs_real
def test_monthly_content_under_a_daily_name_refused(tmp_path: Path) -> None:
    src = REAL_FLUXNET / "FLX_US-Ne2_FLUXNET2015_SUBSET_MM_2001-2013_1-4.csv"
    path = tmp_path / src.name.replace("_MM_", "_DD_")
    path.write_bytes(src.read_bytes())
    with pytest.raises(
        ValueError,
        match=r"every TIMESTAMP is a month \(YYYYMM\) \(line 2: '200101'\), so the file holds monthly "
        r"data, though its name says DD",
    ):
        read_fluxnet_dd(path)
