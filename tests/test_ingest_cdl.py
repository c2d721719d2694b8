"""CDL class rasters (30 m) to crop fractions and crop type per year, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from kgml_grid import cubes
from kgml_grid.grid import GridSpec
from kgml_grid.ingest import IngestError, ingest_crop
from kgml_grid.ingest.examples import write_geotiff

# a 240 m target grid in EPSG:5070 with a 30 m CDL aligned to it: 8 x 8 CDL pixels per cell
TARGET = GridSpec("EPSG:5070", -44160.0, 2089920.0, 240.0, 6, 10)
MARGIN = 16  # CDL pixels around the target
CDL_TR = Affine(30.0, 0, TARGET.x0 - MARGIN * 30, 0, -30.0, TARGET.y0 + MARGIN * 30)
CDL_SHAPE = (TARGET.ny * 8 + 2 * MARGIN, TARGET.nx * 8 + 2 * MARGIN)
OTHER = 24  # winter wheat


def _counts(i: int, j: int, year: int) -> tuple[int, int, int]:
    """Corn, soybean and background pixels of target cell (i, j) in a year (the rest is other)."""
    corn, soy, bg = (7 * i + 3 * j) % 33, (5 * i + 11 * j) % 31, (i + j) % 4
    return (soy, corn, bg) if year % 2 else (corn, soy, bg)


def _cdl(year: int) -> np.ndarray:
    a = np.full(CDL_SHAPE, 176, "uint8")  # grassland around the target
    for i in range(TARGET.ny):
        for j in range(TARGET.nx):
            corn, soy, bg = _counts(i, j, year)
            block = np.full(64, OTHER, "uint8")
            block[:corn] = 1
            block[corn : corn + soy] = 5
            block[corn + soy : corn + soy + bg] = 0
            r, c = MARGIN + 8 * i, MARGIN + 8 * j
            a[r : r + 8, c : c + 8] = block.reshape(8, 8)
    return a


def _expected(year: int) -> tuple[np.ndarray, np.ndarray]:
    ct = np.zeros(TARGET.shape, "int8")
    fr = np.zeros((3, *TARGET.shape))
    for i in range(TARGET.ny):
        for j in range(TARGET.nx):
            corn, soy, bg = _counts(i, j, year)
            other = 64 - corn - soy - bg
            valid = 64 - bg
            fr[:, i, j] = (other / valid, corn / valid, soy / valid)
            ct[i, j] = int(np.argmax([other, corn, soy]))
    return ct, fr


@pytest.fixture(scope="module")
def cdl_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cdl")
    for y in (2015, 2016, 2017):
        write_geotiff(
            root / f"CDL_{y}_clip_20180101.tif",
            _cdl(y),
            crs="EPSG:5070",
            transform=CDL_TR,
            nodata=0,
        )
    return root


@pytest.fixture(scope="module")
def crop(cdl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("crop") / "crop.zarr"
    files = [cdl_dir / f"CDL_{y}_clip_20180101.tif" for y in (2015, 2016)]
    res = ingest_crop(files, out, grid=TARGET, chunks={"y": 4, "x": 4})
    return res, cubes.open_cube(out, "crop", crs="EPSG:5070").load()


def test_crop_cube_conforms(crop):
    res, ds = crop
    assert ds.crop_type.dtype == np.int8 and ds.crop_type.dims == ("year", "y", "x")
    assert ds.year.values.tolist() == [2015, 2016]
    assert ds.crop_type.attrs["flag_meanings"] == "other corn soybean"
    assert ds.corn_fraction.attrs["units"] == "1"
    assert ds.crop_type.encoding["chunks"] == (1, 4, 4)
    assert res.tiles == 6 and "years 2015..2016" in res.summary()


@pytest.mark.parametrize("k", [0, 1])
def test_fractions_and_dominant_type_match_hand_counts(crop, k):
    _, ds = crop
    ct, fr = _expected(2015 + k)
    np.testing.assert_array_equal(ds.crop_type.values[k], ct)
    np.testing.assert_allclose(ds.other_fraction.values[k], fr[0], rtol=1e-6)
    np.testing.assert_allclose(ds.corn_fraction.values[k], fr[1], rtol=1e-6)
    np.testing.assert_allclose(ds.soybean_fraction.values[k], fr[2], rtol=1e-6)
    assert {0, 1, 2} <= set(np.unique(ct).tolist())


def test_append_the_next_year_only(crop, cdl_dir, tmp_path):
    import shutil

    res, _ = crop
    out = tmp_path / "crop.zarr"
    shutil.copytree(res.path, out)
    with pytest.raises(IngestError, match=r"CDL_2017_clip_20180101.tif: year 2018 does not follow .* ends in "
                                          r"2016; append 2017 next"):  # fmt: skip
        ingest_crop({2018: cdl_dir / "CDL_2017_clip_20180101.tif"}, out, append=True)
    r = ingest_crop({2017: cdl_dir / "CDL_2017_clip_20180101.tif"}, out, append=True)
    ds = cubes.open_cube(out, "crop").load()
    assert r.appended and ds.year.values.tolist() == [2015, 2016, 2017]
    np.testing.assert_array_equal(ds.crop_type.values[2], _expected(2017)[0])


# --- refusals ---------------------------------------------------------------------------------


def test_unknown_code_is_refused_naming_file_year_and_code(tmp_path):
    a = _cdl(2016)
    a[MARGIN + 3, MARGIN + 5] = 7  # not in the CDL legend
    bad = write_geotiff(tmp_path / "in" / "CDL_2016.tif", a, crs="EPSG:5070", transform=CDL_TR)
    out = tmp_path / "crop.zarr"
    with pytest.raises(
        IngestError, match=rf"{bad}: class code 7 \(year 2016\) is not in the CDL legend"
    ):
        ingest_crop([bad], out, grid=TARGET, chunks={"y": 4, "x": 4})
    assert not out.exists() and not (tmp_path / ".crop.zarr.partial").exists()
    ingest_crop([bad], out, grid=TARGET, chunks={"y": 4, "x": 4}, extra_codes=[7])
    assert cubes.open_cube(out, "crop").sizes["year"] == 1


def test_codes_outside_the_table_and_float_rasters_are_refused(tmp_path):
    a = _cdl(2015).astype("uint16")
    a[MARGIN, MARGIN] = 300
    bad = write_geotiff(tmp_path / "CDL_2015.tif", a, crs="EPSG:5070", transform=CDL_TR)
    with pytest.raises(
        IngestError, match=rf"{bad}: class code 300 is outside the CDL table 0..255"
    ):
        ingest_crop([bad], tmp_path / "c.zarr", grid=TARGET)
    flt = write_geotiff(
        tmp_path / "CDL_2014.tif", _cdl(2014).astype("float32"), crs="EPSG:5070", transform=CDL_TR
    )
    with pytest.raises(
        IngestError, match=rf"{flt}: has data type float32; CDL rasters hold integer class codes"
    ):
        ingest_crop([flt], tmp_path / "c.zarr", grid=TARGET)
    assert not (tmp_path / "c.zarr").exists()


def test_years_must_parse_and_be_consecutive(cdl_dir, tmp_path):
    with pytest.raises(
        IngestError, match=r"CDL years must be consecutive: 2016 missing between .*CDL_2015"
    ):
        ingest_crop([cdl_dir / "CDL_2015_clip_20180101.tif", cdl_dir / "CDL_2017_clip_20180101.tif"],
                    tmp_path / "c.zarr", grid=TARGET)  # fmt: skip
    odd = write_geotiff(tmp_path / "cdl_latest.tif", _cdl(2015), crs="EPSG:5070", transform=CDL_TR)
    with pytest.raises(IngestError, match=rf"{odd}: the file name does not match the date pattern"):
        ingest_crop([odd], tmp_path / "c.zarr", grid=TARGET)
    with pytest.raises(IngestError, match="CDL code 7 is not in the CDL legend"):
        ingest_crop([odd], tmp_path / "c.zarr", grid=TARGET, corn_codes=(1, 7))
