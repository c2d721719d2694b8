"""The generated world: catalog entries, balance, realism, determinism, towers."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import kgml_grid
from kgml_grid import schema
from kgml_grid.synth import PERTURBED_B, WorldParams, generate_world, load_world_params


@pytest.fixture(scope="module")
def layers(tiny_world):
    return kgml_grid.open_catalog(tiny_world.catalog).open_all()


@pytest.fixture(scope="module")
def truth(layers):
    return layers["truth"].load()


def test_every_entry_is_dask_backed_with_cf_units_and_crs(tiny_world):
    cat = kgml_grid.open_catalog(tiny_world.catalog)
    assert set(cat) == {"weather", "satellite", "soil", "crop", "truth"}
    for name in cat:
        ds = cat.open(name)
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert "spatial_ref" in ds.coords
        assert "5070" in ds["spatial_ref"].attrs["crs_wkt"]
        for v in ds.data_vars:
            assert isinstance(ds[v].data, da.Array), (name, v)
            assert schema.VARIABLES[v].accepts_units(ds[v].attrs["units"]), (name, v)
            assert ds[v].attrs["long_name"]
            assert ds[v].encoding.get("grid_mapping") == "spatial_ref"


def test_truth_mass_balance_and_signs(truth):
    ra, rh, gpp, nee, reco = (
        truth[v].values.astype("float64") for v in ("ra", "rh", "gpp", "nee", "reco")
    )
    assert np.isfinite(ra).all() and np.isfinite(nee).all()
    assert np.abs(ra + rh - gpp - nee).max() < 1e-6
    assert np.abs(ra + rh - reco).max() < 1e-6
    assert ra.min() >= 0 and rh.min() >= 0 and gpp.min() >= 0


def test_values_within_schema_ranges(layers):
    for ds in layers.values():
        for v in ds.data_vars:
            if v == "spatial_ref":
                continue
            lo, hi = schema.VARIABLES[v].valid_range
            x = ds[v].values
            assert np.nanmin(x) >= lo and np.nanmax(x) <= hi, v


def test_rh_rises_with_temperature_and_soc_in_output(layers, truth):
    # daily: the domain-mean Rh follows air temperature
    t = layers["weather"]["tair"].mean(("y", "x")).values
    rh = truth["rh"].mean(("y", "x")).values
    assert np.corrcoef(t, rh)[0, 1] > 0.6
    # across pixels with the same crop sequence (residue inputs alike), Rh rises with SOC
    crop = layers["crop"]["crop_type"].values
    soc = layers["soil"]["soc"].values
    rh_mean = truth["rh"].mean("time").values
    same = (crop == crop[:, :1, :1]).all(axis=0)  # the crop sequence of pixel (0, 0)
    other = (crop == 0).all(axis=0)
    group = other if other.sum() > 20 else same
    assert group.sum() > 20
    assert np.corrcoef(soc[group], rh_mean[group])[0, 1] > 0.5


def test_realistic_annual_budgets(truth, layers):
    crop = layers["crop"]["crop_type"].values[0] > 0
    yearly = truth[["gpp", "ra", "rh", "nee"]].groupby("time.year").sum()
    g = yearly["gpp"].values[:, crop].mean()
    assert 700 < g < 2200  # g C m-2 yr-1, corn/soy
    assert 0.4 < yearly["ra"].values[:, crop].mean() / g < 0.7  # Ra/GPP, literature ~0.5
    assert 150 < yearly["rh"].values[:, crop].mean() < 900
    y = truth["yield"].values
    assert np.isnan(y[:, ~crop]).all() and (y[:, crop] > 50).all()


def test_satellite_inputs_are_noisy_and_gappy(layers, truth):
    s = layers["satellite"]["gpp_sat"].values
    miss = np.isnan(s).mean()
    assert 0.05 < miss < 0.35
    ok = ~np.isnan(s)
    err = s[ok] - truth["gpp"].values[ok]
    assert 0.2 < err.std() < 3.0  # noisy, but still informative
    assert np.corrcoef(s[ok], truth["gpp"].values[ok])[0, 1] > 0.9
    sm = layers["satellite"]["soil_moisture"].values
    assert 0.5 < np.isnan(sm).mean() < 0.8  # a retrieval every 3 days


def test_weather_is_coarser_than_target_and_covers_it(tiny_world, layers):
    assert tiny_world.weather_grid.res == 4 * tiny_world.grid.res
    assert layers["weather"].sizes["y"] < layers["satellite"].sizes["y"]


def test_same_seed_same_world_other_seed_differs(tmp_path):
    kw = dict(preset="tiny", shape=(6, 7), years=(2011, 2011), n_towers=1, progress=False)
    a = generate_world(tmp_path / "a", seed=5, **kw)
    b = generate_world(tmp_path / "b", seed=5, **kw)
    c = generate_world(tmp_path / "c", seed=6, **kw)
    ta, tb, tc = (xr.open_zarr(w.root / "truth.zarr", consolidated=False).load() for w in (a, b, c))
    xr.testing.assert_identical(ta.drop_attrs(), tb.drop_attrs())
    assert not np.array_equal(ta["nee"].values, tc["nee"].values)
    assert a.towers[0].read_text() == b.towers[0].read_text()


def test_perturbed_world_changes_the_physics(tmp_path):
    pfile = tmp_path / "b.json"
    pfile.write_text(json.dumps(PERTURBED_B))
    pb = load_world_params(pfile)
    assert pb.name == "B" and pb.carbon.q10_rh == 2.7 and pb.crops["corn"].lue == 2.45
    assert pb.crops["soybean"].plant_doy == WorldParams().crops["soybean"].plant_doy
    kw = dict(preset="tiny", shape=(6, 7), years=(2011, 2011), n_towers=1, seed=1, progress=False)
    a = generate_world(tmp_path / "a", **kw)
    b = generate_world(tmp_path / "b", params=pb, **kw)
    ra = xr.open_zarr(a.root / "truth.zarr", consolidated=False)["rh"].values
    rb = xr.open_zarr(b.root / "truth.zarr", consolidated=False)["rh"].values
    assert not np.allclose(ra, rb)
    assert b.towers[0].name.startswith("FLX_SY-B01_")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"carbon": {"q10": 2}}, r"unknown parameter carbon\.q10; known: .*q10_rh"),
        ({"crops": {"rice": {"lue": 1}}}, r"unknown key crops\.rice; known: corn, other, soybean"),
        ({"carbon": {"q10_rh": "high"}}, r"carbon\.q10_rh = 'high' should be a float"),
    ],
)
def test_world_params_file_errors(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_world_params(p)


def test_world_params_file_not_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_world_params(p)


def test_towers_are_fluxnet_dd_files_with_sidecars(tiny_world):
    import re

    assert len(tiny_world.towers) == 3
    for path, meta in zip(tiny_world.towers, tiny_world.site_meta, strict=True):
        assert re.fullmatch(r"FLX_SY-A0\d_FLUXNET2015_SUBSET_DD_2009-2012_1-4\.csv", path.name)
        assert meta.name == path.name.split("_")[1] + "_site.json"
        header = path.read_text().splitlines()[0].split(",")
        for col in (
            "TIMESTAMP",
            "TA_F",
            "TA_F_QC",
            "SW_IN_F",
            "VPD_F",
            "P_F",
            "NEE_VUT_REF",
            "NEE_VUT_REF_QC",
            "RECO_NT_VUT_REF",
            "GPP_NT_VUT_REF",
        ):
            assert col in header, col
        assert "-9999" in path.read_text()  # missing days use the FLUXNET code


def test_synthetic_and_real_towers_load_into_same_names_and_units(tiny_world, us_ne1, truth):
    from kgml_grid.fluxnet import read_fluxnet_dd

    real = read_fluxnet_dd(us_ne1)
    syn = read_fluxnet_dd(tiny_world.towers[0])
    for v in ("tair", "swrad", "vpd", "precip", "gpp_sat", "nee", "reco", "gpp"):
        assert v in real and v in syn
        assert real[v].attrs["units"] == syn[v].attrs["units"] == schema.VARIABLES[v].units
    # the synthetic tower observes the truth of its pixel (from the sidecar), with noise
    px = truth["nee"].sel(x=syn.attrs["x"], y=syn.attrs["y"]).values
    ok = np.isfinite(syn["nee"].values)
    assert 0.9 < ok.mean() < 1.0
    assert np.corrcoef(px[ok], syn["nee"].values[ok])[0, 1] > 0.9
    assert 0.1 < np.std(px[ok] - syn["nee"].values[ok]) < 1.5
