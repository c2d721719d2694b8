"""Feature sets: LAI and soil moisture as model inputs, with availability flags, everywhere."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import kgml_grid
from kgml_grid import features as F
from kgml_grid import schema
from kgml_grid.checkpoint import load_checkpoint, torch_threads
from kgml_grid.samples import Batches, SplitSpec, grid_series, tower_series
from kgml_grid.train import FinetuneConfig, TrainConfig, finetune, load_towers, predict, pretrain

SMALL = dict(epochs=1, batch_size=16, hidden=8, patience=5, threads=1,
             split=SplitSpec(holdout_years=1, max_train_pixels=24, max_test_pixels=12))  # fmt: skip
BOTH = "+lai,+soil_moisture"
TUNE = FinetuneConfig(epochs_heads=1, epochs_all=1, holdout_years=1, val_years=1, threads=1)


@pytest.fixture(scope="module")
def layers(tiny_world):
    return kgml_grid.open_catalog(tiny_world.catalog).open_all()


@pytest.fixture(scope="module")
def both(tiny_world, tmp_path_factory):
    """A KGML model pre-trained with +lai,+soil_moisture on the tiny world."""
    d = tmp_path_factory.mktemp("fs")
    return pretrain(
        tiny_world.catalog, d / "kgml_both", TrainConfig(**SMALL, features=BOTH), progress=False
    )


# --------------------------------------------------------------------------- the schema
def test_feature_set_spec():
    assert schema.feature_set("default") == schema.feature_set(None) == schema.FEATURES
    got = schema.feature_set("+soil_moisture, +lai")
    assert got[: len(schema.FEATURES)] == schema.FEATURES  # default features keep their positions
    assert got[len(schema.FEATURES) :] == (
        "lai",
        "lai_available",
        "soil_moisture",
        "soil_moisture_available",
    )
    assert schema.feature_set("default,+lai") == (*schema.FEATURES, "lai", "lai_available")
    assert schema.feature_set_name(got) == "default+lai+soil_moisture"
    with pytest.raises(ValueError, match=r"--features '\+ndvi': unknown addition '\+ndvi'; write 'default' or "
                                         r"additions such as \+lai,\+soil_moisture \(known: \+lai, \+soil_moisture\)"):  # fmt: skip
        schema.feature_set("+ndvi")
    with pytest.raises(ValueError, match=r"--features 'lai': 'lai' is not an addition"):
        schema.feature_set("lai")
    with pytest.raises(ValueError, match=r"'\+lai' is given twice"):
        schema.feature_set("+lai,+lai")


def test_check_features_accepts_sets_and_refuses_broken_ones():
    for spec in ("default", "+lai", "+soil_moisture", BOTH):
        f = schema.feature_set(spec)
        schema.check_features(f, schema.feature_units(f))
    with pytest.raises(
        ValueError,
        match=r"src: feature set 'default\+lai' lacks \['lai_available'\] \(each addition",
    ):
        schema.check_features(
            (*schema.FEATURES, "lai"), schema.feature_units((*schema.FEATURES, "lai")), source="src"
        )
    f = (*schema.FEATURES, "soil_moisture_available")
    with pytest.raises(
        ValueError, match=r"features \['soil_moisture_available'\] belong to no addition present"
    ):
        schema.check_features(f, schema.feature_units(f))
    f = (*schema.FEATURES, "soil_moisture", "soil_moisture_available", "lai", "lai_available")
    with pytest.raises(
        ValueError,
        match=r"feature order differs from the schema at position 18: 'soil_moisture' where 'lai'",
    ):
        schema.check_features(f, schema.feature_units(f))
    f = schema.feature_set("+lai")
    with pytest.raises(ValueError, match=r"feature 'lai' has units 'percent', expected '1'"):
        schema.check_features(f, {**schema.feature_units(f), "lai": "percent"})


# --------------------------------------------------------------------------- assembly
def _assemble(lai: np.ndarray, sm: np.ndarray, *, fill=None, time=None):
    t, n = lai.shape
    time = pd.date_range("2010-01-01", periods=t) if time is None else time
    daily = {k: np.ones((t, n), "float32") for k in F.DAILY_FEATURES}
    daily.update(lai=lai, soil_moisture=sm)
    soil = {k: np.full(n, 1.0, "float32") for k in F.SOIL_FEATURES}
    crop = {int(y): np.ones(n, "int8") for y in set(time.year)}
    return F.assemble(time=time, daily=daily, soil=soil, crop_by_year=crop, fill=fill,
                      features=schema.feature_set(BOTH))  # fmt: skip


def test_availability_flag_is_explicit_and_causal():
    nan = np.nan
    lai = np.array([[nan, nan, 2.0, nan, 3.0]], "float32").T  # [T, 1]
    sm = np.full((5, 1), nan, "float32")  # a source without soil moisture
    x, fill = _assemble(lai, sm)
    idx = F.feature_index(schema.feature_set(BOTH))
    np.testing.assert_array_equal(x[0, :, idx["lai"]], [0, 0, 2, 2, 3])
    np.testing.assert_array_equal(x[0, :, idx["lai_available"]], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(x[0, :, idx["soil_moisture"]], 0)
    np.testing.assert_array_equal(x[0, :, idx["soil_moisture_available"]], 0)
    assert fill["lai"][0] == 3.0 and np.isnan(
        fill["soil_moisture"][0]
    )  # "never seen" survives a chunk


def test_additions_chunked_equal_whole():
    rng = np.random.default_rng(1)
    lai = rng.random((40, 6)).astype("float32")
    lai[rng.random(lai.shape) < 0.6] = np.nan
    lai[:25, 0] = np.nan  # first seen in the second chunk
    sm = lai[::-1].copy()
    time = pd.date_range("2010-12-20", periods=40)
    whole, _ = _assemble(lai, sm, time=time)
    parts, fill = [], None
    for a, b in itertools.pairwise([0, 7, 19, 40]):
        x, fill = _assemble(lai[a:b], sm[a:b], fill=fill, time=time[a:b])
        parts.append(x)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_assemble_refuses_a_missing_addition_series():
    with pytest.raises(
        ValueError,
        match=r"daily input 'lai' is missing; expected tair, swrad, vpd, precip, gpp_sat, lai",
    ):
        F.assemble(time=pd.date_range("2010-01-01", periods=2), daily={k: np.ones((2, 1)) for k in F.DAILY_FEATURES},
                   soil={k: np.ones(1) for k in F.SOIL_FEATURES}, crop_by_year={2010: np.ones(1, "int8")},
                   features=schema.feature_set("+lai"))  # fmt: skip


def test_grid_pixels_read_lai_and_soil_moisture_from_the_satellite_cube(layers):
    feats = schema.feature_set(BOTH)
    pix = np.array([[3, 4], [11, 20]])
    s = grid_series(layers, pix, with_targets=False, features=feats)
    idx = F.feature_index(feats)
    for k, (r, c) in enumerate(pix):
        for name in ("lai", "soil_moisture"):
            raw = layers["satellite"][name].values[:, r, c].astype("float32")
            filled, _ = F.causal_fill(raw[:, None])
            np.testing.assert_array_equal(s.x[k, :, idx[name]], filled[:, 0])
            np.testing.assert_array_equal(
                s.x[k, :, idx[f"{name}_available"]], F.seen_mask(raw[:, None])[:, 0]
            )
    assert s.x[..., idx["soil_moisture_available"]].mean() > 0.99  # a retrieval every 3 days


def test_feature_dropout_hides_value_and_flag(layers):
    feats = schema.feature_set(BOTH)
    s = grid_series(layers, np.array([[3, 4], [11, 20]]), with_targets=False, features=feats)
    from kgml_grid.checkpoint import Normalizer
    from kgml_grid.samples import compute_norm

    norm = Normalizer(compute_norm(layers, features=feats), features=feats)
    items = [(0, (0, 300, 10)), (1, (0, 300, 10))]
    idx = F.feature_index(feats)
    hidden = Batches(s, items, norm, shuffle=False, feature_dropout=1.0).batch(items)["x"].numpy()
    shown = Batches(s, items, norm, shuffle=False, feature_dropout=0.0).batch(items)["x"].numpy()
    for name in ("lai", "soil_moisture"):
        for col in (idx[name], idx[f"{name}_available"]):
            want = (0.0 - norm.norm[feats[col]][0]) / norm.norm[feats[col]][
                1
            ]  # a physical 0, normalised
            np.testing.assert_allclose(hidden[..., col], want, rtol=1e-6)
        assert not np.allclose(shown[..., idx[name]], hidden[..., idx[name]])
    np.testing.assert_array_equal(hidden[..., idx["tair"]], shown[..., idx["tair"]])


# --------------------------------------------------------------------------- towers
def test_tower_sources_swc_satellite_pixel_or_flag_zero(tiny_world, us_ne1):
    feats = schema.feature_set(BOTH)
    towers = load_towers([tiny_world.towers[0], us_ne1], catalog=tiny_world.catalog, features=feats)
    s = tower_series(towers, features=feats)
    idx = F.feature_index(feats)
    sy, ne1 = 0, 1
    # SY-A01: soil moisture from its own SWC_F_MDS_1 column (% x 0.01)
    raw = pd.read_csv(
        tiny_world.towers[0], usecols=["TIMESTAMP", "SWC_F_MDS_1"], dtype={"TIMESTAMP": str}
    )
    first = s.spans[sy][0]
    got = s.x[sy, first : first + len(raw), idx["soil_moisture"]]
    np.testing.assert_allclose(got, raw["SWC_F_MDS_1"].to_numpy() * 0.01, rtol=1e-5)
    assert s.sources[sy]["soil_moisture"] == "tower column SWC_F_MDS_1"
    # SY-A01: LAI from the satellite cube at its pixel (its site metadata's location)
    meta = json.loads((tiny_world.towers[0].parent / "SY-A01_site.json").read_text())
    grid = tiny_world.grid
    r, c = int((grid.y0 - meta["y"]) // grid.res), int((meta["x"] - grid.x0) // grid.res)
    assert f"pixel row {r}, col {c} (variable lai)" in s.sources[sy]["lai"]
    sat = xr.open_zarr(tiny_world.root / "satellite.zarr", consolidated=False)["lai"].values[
        :, r, c
    ]
    filled, _ = F.causal_fill(sat[:, None].astype("float32"))
    np.testing.assert_allclose(s.x[sy, first : first + len(sat), idx["lai"]], filled[:, 0])
    # US-Ne1 lies inside the synthetic world (centred on Mead, NE) but is not one of its towers,
    # and its SWC_F_MDS_1 is missing on every day: both additions are explicitly unavailable
    for name in ("lai", "soil_moisture"):
        assert (s.x[ne1, :, idx[f"{name}_available"]] == 0).all()
        assert (s.x[ne1, :, idx[name]] == 0).all()
        assert (
            s.sources[ne1][name].startswith("none (")
            and "does not observe site US-Ne1" in s.sources[ne1][name]
        )
    assert "no SWC_F_MDS_1 value" in s.sources[ne1]["soil_moisture"]


# --------------------------------------------------------------------------- the whole chain
@pytest.mark.slow
def test_kgml_with_lai_and_soil_moisture_trains_finetunes_and_upscales(
    both, tiny_world, us_ne1, tmp_path
):
    from kgml_grid.execute import SerialExecutor, direct_run
    from kgml_grid.plan import make_plan

    ck = load_checkpoint(both.model_dir, check_schema=True)
    assert (
        ck.features == schema.feature_set(BOTH) and ck.config.n_features == len(schema.FEATURES) + 4
    )
    meta = json.loads((both.model_dir / "model.json").read_text())
    assert meta["feature_set"] == "default+lai+soil_moisture"
    assert ck.norm["lai_available"] == (0.5, 0.5)
    sat = xr.open_zarr(tiny_world.root / "satellite.zarr", consolidated=False)
    assert ck.norm["lai"][0] == pytest.approx(
        float(
            sat["lai"]
            .where(
                (
                    xr.open_zarr(tiny_world.root / "crop.zarr", consolidated=False)["crop_type"] > 0
                ).all("year")
            )
            .mean()
        ),
        rel=1e-4,
    )

    ft = finetune(both.model_dir, [tiny_world.root / "towers", us_ne1], tmp_path / "ft", TUNE,
                  catalog=tiny_world.catalog, progress=False)  # fmt: skip
    tuned = load_checkpoint(ft.model_dir, check_schema=True)
    assert tuned.features == ck.features
    sources = tuned.provenance["tower_split"]["sources"]
    assert set(sources) == {"SY-A01", "SY-A02", "SY-A03", "US-Ne1"}
    assert "availability flag 0" in sources["US-Ne1"]["lai"]

    # upscaling one tile: three time chunks equal one direct run (flags carried across chunks)
    g = tiny_world.grid
    bbox = (g.x0, g.y0 - 10 * g.res + 1, g.x0 + 12 * g.res - 1, g.y0)
    plan = make_plan(tiny_world.catalog, ft.model_dir, chunks="y=10,x=12,time=200", bbox=bbox,
                     start="2011-06-01", end="2012-12-31")  # fmt: skip
    assert plan.time_chunks == (200, 200, 180)
    with torch_threads(1):
        up = SerialExecutor().execute(plan, tmp_path / "up.zarr", overwrite=True)
        ref = direct_run(plan)
    crop = (
        (xr.open_zarr(tiny_world.root / "crop.zarr", consolidated=False)["crop_type"] > 0)
        .any("year")
        .values
    )
    crop = crop[:10, :12]
    for v in ("ra", "rh", "nee"):
        a = up.dataset[v].values
        assert np.isfinite(a[:, crop]).all() and np.isnan(a[:, ~crop]).all()
        np.testing.assert_allclose(a, ref[v].values, atol=1e-5, equal_nan=True)


def test_feature_sets_are_checked_everywhere(both, tiny_world, tmp_path, layers):
    from kgml_grid.catalog import catalog_yaml, open_catalog, write_catalog
    from kgml_grid.plan import PlanError, make_plan

    ck = load_checkpoint(both.model_dir)
    # a series of another feature set is refused by prediction and fine-tuning
    s = grid_series(layers, np.array([[3, 4]]), with_targets=False)
    with pytest.raises(
        ValueError,
        match=r"the series has the feature set 'default', the model 'default\+lai\+soil_moisture'",
    ):
        predict(ck.model, ck.normalizer, s)
    from kgml_grid.train import finetune_series

    with pytest.raises(
        ValueError,
        match=r"tower features are the set 'default', the model was trained with 'default\+lai",
    ):
        finetune_series(ck.model, ck.normalizer, s, TUNE)
    # warm start from another feature set
    with pytest.raises(ValueError, match=r"--init .*: trained with the feature set 'default\+lai\+soil_moisture', this "
                                         r"run asks for 'default\+lai' \(--features \+lai\)"):  # fmt: skip
        pretrain(tiny_world.catalog, tmp_path / "m", TrainConfig(**SMALL, features="+lai", init=str(both.model_dir)),
                 progress=False)  # fmt: skip
    # the sidecar's feature-set name must agree with its feature list
    d = tmp_path / "tampered"
    shutil.copytree(both.model_dir, d)
    meta = json.loads((d / "model.json").read_text())
    meta["feature_set"] = "default+lai"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError,
        match=r"'feature_set' is 'default\+lai' but the features listed make 'default\+lai\+soil_moisture'",
    ):
        load_checkpoint(d, check_schema=True)
    # a plan refuses a satellite cube without LAI, before anything is written
    sat = (
        xr.open_zarr(tiny_world.root / "satellite.zarr", consolidated=False, decode_coords="all")
        .drop_vars("lai")
        .load()
    )
    for v in sat.variables.values():
        v.encoding = {}
    from kgml_grid import cubes

    cubes.write_cube(sat, tmp_path / "satellite.zarr", {"time": 365, "y": 20, "x": 24})
    root = tiny_world.root
    entries = {
        n: {"layer": n, "path": str(root / f"{n}.zarr")}
        for n in ("weather", "soil", "crop", "truth")
    }
    entries["satellite"] = {"layer": "satellite", "path": str(tmp_path / "satellite.zarr")}
    cat = write_catalog(tmp_path / "catalog.yaml", catalog_yaml(entries, crs=open_catalog(tiny_world.catalog).crs,
                                                                description="no lai"))  # fmt: skip
    with pytest.raises(PlanError, match=r"trained with the feature set 'default\+lai\+soil_moisture', which reads 'lai' "
                                        r"from the satellite cube, but the cube has no such variable .*use a model "
                                        r"trained without \+lai"):  # fmt: skip
        make_plan(cat, both.model_dir)
    # pre-training with +lai on that catalog names the catalog and the variable
    with pytest.raises(ValueError, match=r"catalog\.yaml: --features \+lai: feature set 'default\+lai' needs 'lai', which "
                                         r"the satellite cube lacks"):  # fmt: skip
        pretrain(cat, tmp_path / "m2", TrainConfig(**SMALL, features="+lai"), progress=False)


def test_memory_estimate_counts_the_additions():
    from kgml_grid.plan import batch_pixels_for, memory_estimate

    kw = dict(days=365, tile=(16, 16), crop_pixels=200, weather_cells=9, batch_pixels=200)
    base = memory_estimate(model={"hidden": 64, "n_features": 18}, **kw)
    both = memory_estimate(model={"hidden": 64, "n_features": 22}, **kw)
    assert both["features"] * 18 == base["features"] * 22  # [n, T, F] in the peak phase
    # two more satellite blocks [T, 16, 16] and two more daily series per crop pixel (and
    # their fills), alive while the task reads
    assert both["phase_read"] - base["phase_read"] == 4 * 365 * (2 * 256 + 2 * 2 * 200) + (
        both["features"] - base["features"]
    )
    assert both["model"] > base["model"]
    assert batch_pixels_for(365, {"hidden": 64, "n_features": 22}) <= batch_pixels_for(
        365, {"hidden": 64, "n_features": 18}
    )
