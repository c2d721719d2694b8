"""Soil property GeoTIFFs in EPSG:4326 averaged onto an EPSG:5070 grid, against hand values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from kgml_grid import cubes, schema
from kgml_grid.grid import centred_grid, lonlat
from kgml_grid.ingest import IngestError, RasterSource, ingest_soil
from kgml_grid.ingest.examples import write_geotiff

TARGET = centred_grid(-96.47, 41.17, ny=12, nx=16, res=250.0, crs="EPSG:5070")
STEP = 0.0005  # degrees (about 42 m x 55 m)
CONST = {"bulk_density": 1.35, "clay": 28.0, "field_capacity": 0.32, "wilting_point": 0.17,
         "ksat": 9.5, "ph": 6.4, "silt": 55.0}  # fmt: skip
SOC_G_M2 = 8500.0  # gSSURGO soc0_30 is g C m-2: scale 0.001 -> kg m-2
CEC = 21.0


def _lonlat_grid() -> tuple[Affine, tuple[int, int]]:
    w, s, e, n = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True).transform_bounds(
        *TARGET.bounds, densify_pts=21
    )
    x0 = math.floor(w / STEP) * STEP - 10 * STEP
    y0 = math.ceil(n / STEP) * STEP + 10 * STEP
    return Affine(STEP, 0, x0, 0, -STEP, y0), (
        math.ceil((y0 - s) / STEP) + 10,
        math.ceil((e - x0) / STEP) + 10,
    )


TR, SHAPE = _lonlat_grid()
LON = TR.c + STEP * (np.arange(SHAPE[1]) + 0.5)
LON_MID = float(np.median(lonlat(TARGET)[0]))


def _sand() -> np.ndarray:  # a ramp in longitude: 40 % at LON_MID, +200 % per degree east
    return np.broadcast_to(40.0 + 200.0 * (LON - LON_MID), SHAPE).astype("float32")


def _cec() -> np.ndarray:  # no data west of LON_MID
    a = np.full(SHAPE, CEC, "float32")
    a[:, LON < LON_MID] = -9999.0
    return a


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("soil")
    out = {n: write_geotiff(root / f"{n}.tif", np.full(SHAPE, v, "float32"), crs="EPSG:4326", transform=TR)
           for n, v in CONST.items()}  # fmt: skip
    out["sand"] = write_geotiff(root / "sand.tif", _sand(), crs="EPSG:4326", transform=TR)
    out["soc"] = write_geotiff(root / "soc0_30.tif", np.full(SHAPE, SOC_G_M2, "float32"), crs="EPSG:4326",
                               transform=TR, nodata=-1.0)  # fmt: skip
    out["cec"] = write_geotiff(
        root / "cec7_r.tif", _cec(), crs="EPSG:4326", transform=TR, nodata=-9999.0
    )
    return out


def _props(files: dict[str, Path]) -> dict[str, object]:
    p: dict[str, object] = {n: files[n] for n in files}
    p["soc"] = RasterSource("soc", (str(files["soc"]),), scale=0.001, resampling="average")
    return p


@pytest.fixture(scope="module")
def soil(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("soilcube") / "soil.zarr"
    res = ingest_soil(_props(files), out, grid=TARGET, chunks={"y": 8, "x": 8})
    return res, cubes.open_cube(out, "soil", crs="EPSG:5070").load()


def test_soil_cube_conforms(soil):
    res, ds = soil
    assert set(ds.data_vars) == set(schema.SITE_SOIL_PROPERTIES) | {"silt"}
    assert ds.sizes == {"y": 12, "x": 16} and res.tiles == 4
    assert cubes.grid_of(ds, layer="soil").shape == TARGET.shape
    assert ds.ksat.attrs["units"] == "um s-1"


def test_constants_and_scale_by_hand(soil):
    _, ds = soil
    for name, v in CONST.items():
        np.testing.assert_allclose(ds[name].values, v, rtol=1e-6)
    np.testing.assert_allclose(ds.soc.values, SOC_G_M2 * 0.001, rtol=1e-6)


def test_average_of_a_ramp_is_the_value_at_the_cell_centre(soil):
    _, ds = soil
    lon, _ = lonlat(TARGET)
    np.testing.assert_allclose(ds.sand.values, 40.0 + 200.0 * (lon - LON_MID), atol=0.06)


def test_nodata_half_is_nan(soil):
    _, ds = soil
    lon, _ = lonlat(TARGET)
    west, east = lon < LON_MID - 0.003, lon > LON_MID + 0.003  # cells wholly on one side
    assert west.sum() > 10 and east.sum() > 10
    assert np.isnan(ds.cec.values[west]).all()
    np.testing.assert_allclose(ds.cec.values[east], CEC, rtol=1e-6)


def test_soil_refusals(files, tmp_path):
    p = _props(files)
    p.pop("ksat")
    with pytest.raises(IngestError, match="the soil layer needs ksat"):
        ingest_soil(p, tmp_path / "s.zarr", grid=TARGET)
    with pytest.raises(IngestError, match="'organic_matter' is not a variable of the soil layer"):
        ingest_soil(
            {**_props(files), "organic_matter": files["ph"]}, tmp_path / "s.zarr", grid=TARGET
        )
    with pytest.raises(IngestError, match=r"soil property 'ph': one raster is expected, got 2"):
        ingest_soil({**_props(files), "ph": str(files["ph"].parent / "[ps][ho]*.tif")}, tmp_path / "s.zarr",
                    grid=TARGET)  # fmt: skip
    bad = write_geotiff(tmp_path / "ph.tif", np.ones((5, 5), "float32"), crs=None, transform=TR)
    with pytest.raises(IngestError, match=rf"{bad}: has no CRS"):
        ingest_soil({**_props(files), "ph": bad}, tmp_path / "s.zarr", grid=TARGET)
    with pytest.raises(IngestError, match=rf"{tmp_path / 'nope.tif'}: no such file"):
        ingest_soil(
            {**_props(files), "ph": tmp_path / "nope.tif"}, tmp_path / "s.zarr", grid=TARGET
        )
    assert not (tmp_path / "s.zarr").exists()
