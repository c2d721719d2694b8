"""End to end through the CLI: real-format files in other CRSs -> cubes -> one catalog that opens."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from affine import Affine
from pyproj import Transformer

import kgml_grid
from kgml_grid import cubes, schema
from kgml_grid.cli import main
from kgml_grid.ingest import IngestError, register_entry
from kgml_grid.ingest.examples import write_geotiff, write_netcdf

UTM = "EPSG:32614"
LON0, LAT0 = -96.47, 41.17  # Mead, Nebraska
DAYS = pd.date_range("2015-06-01", periods=5)
REPO = Path(__file__).resolve().parents[1]


def _utm_box(res: float, margin: float = 1500.0) -> tuple[Affine, tuple[int, int]]:
    x, y = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(LON0, LAT0)
    x0 = math.floor((x - 3000 - margin) / res) * res
    y0 = math.ceil((y + 2000 + margin) / res) * res
    n = math.ceil((6000 + 2 * margin) / res)
    m = math.ceil((4000 + 2 * margin) / res)
    return Affine(res, 0, x0, 0, -res, y0), (m, n)


def _write_all(root: Path) -> dict[str, object]:
    # satellite: SLOPE GPP (int16, scale tag) and MODIS-like LAI (uint8, fill 255, valid 0..100), UTM 14N
    tr, shape = _utm_box(100.0)
    for k, day in enumerate(DAYS):
        if k != 2:  # a missing date
            write_geotiff(root / "slope" / f"SLOPE_GPP_{day:%Y%j}.tif", np.full(shape, 800 + 100 * k, "int16"),
                          crs=UTM, transform=tr, nodata=-9999, tags={"scale_factor": "0.01"})  # fmt: skip
    lai = np.full(shape, 35, "uint8")
    lai[shape[0] // 2 - 10 : shape[0] // 2 + 10, shape[1] // 2 - 10 : shape[1] // 2 + 10] = (
        250  # a fill class
    )
    write_geotiff(
        root / "lai" / f"MOD15A2H.A{DAYS[0]:%Y%j}.tif", lai, crs=UTM, transform=tr, nodata=255
    )
    # soil: one GeoTIFF per property, lon/lat
    step = 0.001
    soil_tr = Affine(step, 0, LON0 - 0.06, 0, -step, LAT0 + 0.04)
    soil_vals = {"bulk_density": 1.4, "sand": 20.0, "silt": 55.0, "clay": 25.0, "field_capacity": 0.3,
                 "wilting_point": 0.15, "ksat": 8.0, "soc": 6.0, "ph": 6.5, "cec": 18.0}  # fmt: skip
    soil = {n: write_geotiff(root / "soil" / f"{n}.tif", np.full((80, 120), v, "float32"), crs="EPSG:4326",
                             transform=soil_tr) for n, v in soil_vals.items()}  # fmt: skip
    # CDL 30 m in UTM: west of the centre corn, east soybean, a band of water in the north
    ctr, cshape = _utm_box(30.0)
    x_centre = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(LON0, LAT0)[0]
    cols_x = ctr.c + 30.0 * (np.arange(cshape[1]) + 0.5)
    cdl = np.where(cols_x < x_centre, 1, 5).astype("uint8")[None, :].repeat(cshape[0], 0)
    cdl[:10] = 111
    write_geotiff(root / "cdl" / "CDL_2015_31.tif", cdl, crs=UTM, transform=ctr, nodata=0)
    # weather: gridMET-like files, 1/24 degree
    lat = LAT0 + 0.3 - (np.arange(16) + 0.5) / 24
    lon = LON0 - 0.3 + (np.arange(16) + 0.5) / 24
    kw = {"lat": lat, "lon": lon, "times": DAYS, "time_name": "day"}
    sh = (len(DAYS), 16, 16)
    write_netcdf(
        root / "gridmet" / "tmmx_2015.nc", {"air_temperature": (np.full(sh, 303.15), "K")}, **kw
    )
    write_netcdf(
        root / "gridmet" / "tmmn_2015.nc", {"air_temperature": (np.full(sh, 288.15), "K")}, **kw
    )
    write_netcdf(root / "gridmet" / "srad_2015.nc", {"surface_downwelling_shortwave_flux_in_air":
                                                     (np.full(sh, 300.0), "W m-2")}, **kw)  # fmt: skip
    write_netcdf(
        root / "gridmet" / "vpd_2015.nc",
        {"mean_vapor_pressure_deficit": (np.full(sh, 1.2), "kPa")},
        **kw,
    )
    write_netcdf(
        root / "gridmet" / "pr_2015.nc", {"precipitation_amount": (np.full(sh, 2.0), "mm")}, **kw
    )
    return {"soil": soil, "x_centre": x_centre}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    info = _write_all(root / "in")
    cat = root / "catalogs" / "real.yaml"
    out = root / "data"
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:5070", always_xy=True).transform(LON0, LAT0)
    bounds = [str(v) for v in (x - 2500, y - 1500, x + 2500, y + 1500)]
    assert main(["ingest", "satellite", "--out", str(out / "satellite.zarr"),
                 "--source", f"gpp_sat={root / 'in' / 'slope'}", "--pattern", "gpp_sat=SLOPE_GPP_{date:%Y%j}.tif",
                 "--source", f"lai={root / 'in' / 'lai' / '*.tif'}", "--pattern", "lai=MOD15A2H.A{date:%Y%j}.tif",
                 "--scale", "lai=0.1", "--valid-range", "lai=0,100", "--end", str(DAYS[-1].date()),
                 "--crs", "EPSG:5070", "--bounds", *bounds, "--res", "250", "--chunks", "time=365,y=8,x=8",
                 "--catalog", str(cat)]) == 0  # fmt: skip
    soil_args = [a for n, p in info["soil"].items() for a in ("--property", f"{n}={p}")]
    assert main(["ingest", "soil", "--out", str(out / "soil.zarr"), *soil_args, "--chunks", "y=8,x=8",
                 "--catalog", str(cat)]) == 0  # fmt: skip
    assert main(["ingest", "crop", "--out", str(out / "crop.zarr"), str(root / "in" / "cdl"),
                 "--chunks", "y=8,x=8", "--catalog", str(cat)]) == 0  # fmt: skip
    assert main(["ingest", "weather", "--out", str(out / "weather.zarr"), str(root / "in" / "gridmet"),
                 "--preset", "gridmet", "--catalog", str(cat)]) == 0  # fmt: skip
    return root, cat, info


def test_the_catalog_opens_validates_and_aligns(real):
    _, cat, _ = real
    c = kgml_grid.open_catalog(cat)
    assert set(c.entries) == {"satellite", "soil", "crop", "weather"}
    layers = c.open_all()
    g = c.grid()
    assert g.crs == c.open("satellite")["spatial_ref"].attrs["crs_wkt"] and g.res == 250.0
    assert all(cubes.grid_of(layers[n], layer=n) == g for n in ("satellite", "soil", "crop"))
    assert c.entries["weather"].crs == "EPSG:4326" and c.crs == "EPSG:5070"
    assert c.entries["satellite"].urlpath == "{{ CATALOG_DIR }}/../data/satellite.zarr"
    raw = yaml.safe_load(cat.read_text())
    assert raw["version"] == 2  # ingest writes Intake 2 catalogs
    crop = raw["entries"]["crop"]
    assert (
        crop["reader"] == "intake.readers.readers:XArrayDatasetReader"
        and crop["kwargs"]["consolidated"] is False
    )
    assert raw["data"]["crop_zarr"]["kwargs"]["url"] == "{CATALOG_DIR}/../data/crop.zarr"
    assert main(["catalog", str(cat)]) == 0


def test_values_survive_the_trip(real):
    _, cat, info = real
    layers = kgml_grid.open_catalog(cat).open_all()
    sat = layers["satellite"].load()
    assert sat.sizes["time"] == 5 and np.isnan(sat.gpp_sat.values[2]).all()
    np.testing.assert_allclose(
        sat.gpp_sat.values[[0, 1, 3, 4]][:, 0, 0], [8.0, 9.0, 11.0, 12.0], rtol=1e-6
    )
    lai = sat.lai.values[0]  # raw 35 x 0.1; the fill class 250 is outside --valid-range 0,100
    assert 30 <= np.isnan(lai).sum() <= 80  # the 2 km x 2 km block is about 8 x 8 cells
    np.testing.assert_allclose(lai[~np.isnan(lai)], 3.5, rtol=1e-6)
    assert np.isnan(sat.lai.values[1:]).all()
    np.testing.assert_allclose(layers["soil"].ksat.values, 8.0, rtol=1e-6)
    w = layers["weather"].load()
    np.testing.assert_allclose(w.tair.values, 22.5, atol=1e-4)
    np.testing.assert_allclose(w.swrad.values, 25.92, rtol=1e-6)
    np.testing.assert_allclose(w.vpd.values, 12.0, rtol=1e-6)
    # CDL: cells wholly west of the corn/soybean line are corn, wholly east soybean
    crop = layers["crop"].load()
    g = cubes.grid_of(crop, layer="crop")
    yy, xx = np.meshgrid(g.y, g.x, indexing="ij")
    xu = Transformer.from_crs("EPSG:5070", UTM, always_xy=True).transform(xx, yy)[0]
    west, east = xu < info["x_centre"] - 200, xu > info["x_centre"] + 200
    assert west.sum() > 20 and east.sum() > 20
    assert (crop.crop_type.values[0][west] == 1).all() and (
        crop.crop_type.values[0][east] == 2
    ).all()
    np.testing.assert_allclose(crop.corn_fraction.values[0][west], 1.0)
    np.testing.assert_allclose(crop.soybean_fraction.values[0][east], 1.0)


def test_the_training_code_reads_the_cubes_unchanged(real):
    features = pytest.importorskip("kgml_grid.features")
    _, cat, _ = real
    layers = kgml_grid.open_catalog(cat).open_all()
    rows, cols = np.array([0, 3, 7]), np.array([1, 5, 9])
    t, daily, soil, crop = features.pixel_inputs(layers, rows, cols)
    assert len(t) == 5 and daily["tair"].shape == (5, 3)
    np.testing.assert_allclose(daily["tair"], 22.5, atol=1e-4)
    np.testing.assert_allclose(soil["soc"], 6.0, rtol=1e-6)
    assert set(crop) == {2015}
    assert set(schema.SITE_SOIL_PROPERTIES) <= set(soil)


def test_the_training_norms_and_upscaling_plan_read_the_cubes_unchanged(real, tmp_path):
    samples = pytest.importorskip("kgml_grid.samples")
    plan_mod = pytest.importorskip("kgml_grid.plan")
    from kgml_grid.checkpoint import save_checkpoint
    from kgml_grid.model import DAILY_TARGETS, ModelConfig, build_model

    _, cat, _ = real
    layers = kgml_grid.open_catalog(cat).open_all()
    norm = samples.compute_norm(layers)
    assert norm["tair"][0] == pytest.approx(22.5, abs=1e-3) and norm["ksat"][0] == pytest.approx(
        8.0
    )
    norm.update({n: (0.0, 1.0) for n in DAILY_TARGETS})  # targets are not in real inputs
    cfg = ModelConfig(arch="kgml", n_features=len(schema.FEATURES), hidden=4)
    ckpt = save_checkpoint(build_model(cfg), tmp_path / "m", config=cfg, features=schema.FEATURES,
                           units=schema.feature_units(), norm=norm)  # fmt: skip
    plan = plan_mod.make_plan(cat, ckpt)
    assert plan.grid == kgml_grid.open_catalog(cat).grid()
    assert (plan.tile_y, plan.tile_x) == (8, 8) and int(plan.crop_counts.sum()) > 0
    assert str(plan.start.date()) == "2015-06-01" and str(plan.end.date()) == "2015-06-05"


def test_append_through_the_cli(real, tmp_path):
    root, _, _ = real
    shutil.copytree(root / "data" / "satellite.zarr", tmp_path / "s.zarr")
    tr, shape = _utm_box(100.0)
    write_geotiff(tmp_path / "new" / "SLOPE_GPP_2015157.tif", np.full(shape, 500, "int16"), crs=UTM, transform=tr,
                  tags={"scale_factor": "0.01"})  # fmt: skip
    assert main(["ingest", "satellite", "--out", str(tmp_path / "s.zarr"), "--append",
                 "--source", f"gpp_sat={tmp_path / 'new'}", "--pattern", "SLOPE_GPP_{date:%Y%j}.tif"]) == 0  # fmt: skip
    ds = cubes.open_cube(tmp_path / "s.zarr", "satellite")
    assert ds.sizes["time"] == 6 and float(ds.gpp_sat.values[5, 0, 0]) == pytest.approx(5.0)
    assert np.isnan(ds.lai.values[5]).all()


def test_cli_errors_name_the_file(real, tmp_path, capsys):
    root, _, _ = real
    bad = tmp_path / "SLOPE_GPP_2015152.tif"
    bad.write_bytes(b"II*\x00garbage")
    rc = main(["ingest", "satellite", "--out", str(tmp_path / "x.zarr"), "--source", f"gpp_sat={bad}",
               "--pattern", "SLOPE_GPP_{date:%Y%j}.tif", "--like", str(root / "data" / "soil.zarr")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert f"kgml-grid ingest: error: {bad}: cannot be read as a raster" in err
    rc = main(["ingest", "satellite", "--out", str(tmp_path / "x.zarr"), "--source", "ndvi=x.tif"])
    assert rc == 2 and "--source 'ndvi=x.tif': write VAR=PATH" in capsys.readouterr().err
    rc = main(
        [
            "ingest",
            "soil",
            "--out",
            str(tmp_path / "y.zarr"),
            "--property",
            "sand=s.tif",
            "--crs",
            "EPSG:5070",
        ]
    )
    assert rc == 2 and "needs all of --crs, --bounds and --res" in capsys.readouterr().err


def test_register_keeps_other_entries_and_refuses_foreign_catalogs(real, tmp_path):
    root, _, _ = real
    for name, key in (("real_products.yaml", "entries"), ("real_products_v1.yaml", "sources")):
        cat = tmp_path / name  # the shipped Intake 2 catalog and its v1-style original
        shutil.copy(REPO / "catalogs" / name, cat)
        before = yaml.safe_load(cat.read_text())[key]
        register_entry(
            cat,
            "satellite",
            layer="satellite",
            cube=root / "data" / "satellite.zarr",
            crs="EPSG:5070",
        )
        after = yaml.safe_load(cat.read_text())[key]
        assert list(after) == list(before)
        for other in ("weather", "soil", "crop"):
            assert after[other] == before[other]
        c = kgml_grid.open_catalog(cat)
        assert c.entries["satellite"].layer == "satellite"
        assert c.entries["satellite"].urlpath.startswith("{{ CATALOG_DIR }}/")
        assert c.version == (2 if key == "entries" else 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nentries: {}\n")
    with pytest.raises(
        IngestError, match=r"bad.yaml: cannot register entry 'soil': .*no 'entries:' mapping"
    ):
        register_entry(bad, "soil", layer="soil", cube=root / "data" / "soil.zarr", crs="EPSG:5070")
