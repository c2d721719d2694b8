"""Features, samples, pre-training, fine-tuning and evaluation on the tiny world."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kgml_grid
from kgml_grid import features as F
from kgml_grid import schema
from kgml_grid.checkpoint import load_checkpoint, torch_threads
from kgml_grid.evaluate import evaluate, format_report, metrics
from kgml_grid.samples import SplitSpec, compute_norm, make_split, windows
from kgml_grid.train import FinetuneConfig, TrainConfig, finetune, pretrain

SMALL = dict(epochs=2, batch_size=16, hidden=8, patience=5, threads=1,
             split=SplitSpec(holdout_years=1, max_train_pixels=24, max_test_pixels=12))  # fmt: skip


@pytest.fixture(scope="module")
def layers(tiny_world):
    return kgml_grid.open_catalog(tiny_world.catalog).open_all()


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "kgml"
    res = pretrain(tiny_world.catalog, out, TrainConfig(**SMALL), progress=False)
    return res


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.one_of(st.none(), st.floats(-5, 5)), min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_causal_fill_chunked_equals_whole(data, cuts):
    v = np.array([np.nan if d is None else d for d in data], dtype="float64")[:, None]
    whole, _ = F.causal_fill(v)
    bounds = sorted({0, len(v), *[c for c in cuts if c <= len(v)]})
    last, parts = None, []
    for a, b in itertools.pairwise(bounds):
        p, last = F.causal_fill(v[a:b], last)
        parts.append(p)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert not np.isnan(whole).any()


def test_pixel_features_map_weather_soil_crop_and_calendar(layers, tiny_world):
    rows, cols = np.array([0, 7, 19]), np.array([0, 13, 23])
    t, daily, soil, crop = F.pixel_inputs(layers, rows, cols)
    x, _ = F.assemble(time=t, daily=daily, soil=soil, crop_by_year=crop)
    assert x.shape == (3, len(t), len(schema.FEATURES)) and x.dtype == np.float32
    f = tiny_world.grid.res * 1.0 / tiny_world.weather_grid.res
    w = layers["weather"]["tair"].values
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        np.testing.assert_allclose(x[k, :, F.FEATURE_INDEX["tair"]], w[:, int(r * f), int(c * f)])
        assert x[k, 5, F.FEATURE_INDEX["soc"]] == pytest.approx(
            float(layers["soil"]["soc"].values[r, c])
        )
        code = layers["crop"]["crop_type"].values[1, r, c]
        day = np.flatnonzero(t.year == 2010)[100]
        assert x[k, day, F.FEATURE_INDEX["is_corn"]] == (code == 1)
    doy = np.asarray(t.day_of_year)
    np.testing.assert_allclose(
        x[0, :, F.FEATURE_INDEX["doy_sin"]], np.sin(2 * np.pi * doy / 365.25), atol=1e-6
    )
    assert not np.isnan(x).any()  # satellite gaps are filled causally


def test_tower_features_from_real_file(us_ne1):
    from kgml_grid.fluxnet import read_fluxnet_dd
    from kgml_grid.samples import tower_series

    s = tower_series([read_fluxnet_dd(us_ne1)])
    assert s.x.shape == (1, 4199, len(schema.FEATURES)) and not np.isnan(s.x).any()
    raw = pd.read_csv(us_ne1, usecols=["SW_IN_F"])["SW_IN_F"].to_numpy()
    np.testing.assert_allclose(s.x[0, :, F.FEATURE_INDEX["swrad"]], raw * 0.0864, rtol=1e-5)
    assert (s.x[0, :, F.FEATURE_INDEX["is_corn"]] == 1).all()


def test_split_is_disjoint_and_reproducible(layers):
    a = make_split(layers, SplitSpec(holdout_years=1, seed=3))
    b = make_split(layers, SplitSpec(holdout_years=1, seed=3))
    np.testing.assert_array_equal(a.test_pixels, b.test_pixels)
    tr = {tuple(p) for p in a.train_pixels}
    te = {tuple(p) for p in a.test_pixels}
    assert tr and te and not tr & te
    assert a.train_years == [2009, 2010, 2011] and a.holdout_years == [2012]


def test_split_refuses_too_few_years(layers):
    with pytest.raises(ValueError, match=r"cover 4 years \(2009-2012\); need more than 4"):
        make_split(layers, SplitSpec(holdout_years=3))


def test_norm_from_dask_reductions_matches_numpy(layers):
    norm = compute_norm(layers)
    mask = (layers["crop"]["crop_type"].values > 0).all(0)
    ra = layers["truth"]["ra"].values[:, mask]
    assert norm["ra"][0] == pytest.approx(ra.mean(), rel=1e-5)
    assert norm["ra"][1] == pytest.approx(ra.std(), rel=1e-4)
    g = layers["satellite"]["gpp_sat"].values[:, mask]
    assert norm["gpp_sat"][0] == pytest.approx(np.nanmean(g), rel=1e-5)
    assert set(schema.FEATURES) <= set(norm)


def test_windows_have_fixed_length_and_end_on_december_31():
    t = pd.date_range("2009-01-01", "2012-12-31")
    w = windows(t, [2009, 2010, 2012], 30)
    assert len(w) == 2  # 2009 has no spin-up before it
    for a, b, lf in w:
        assert (
            b - a == 396
            and t[b - 1].strftime("%m-%d") == "12-31"
            and t[a + lf].strftime("%m-%d") == "01-01"
        )


def test_pretrain_writes_checkpoint_curve_and_split(pretrained, layers):
    ck = load_checkpoint(pretrained.model_dir, check_schema=True)
    assert ck.features == schema.FEATURES
    assert (pretrained.model_dir / "learning_curve.png").stat().st_size > 1000
    prov = ck.provenance
    assert prov["stage"] == "pretrain" and prov["split"]["holdout_years"] == [2012]
    assert len(prov["history"]) == 2 and np.isfinite(prov["history"][-1]["val"])
    files = {p.name for p in pretrained.model_dir.iterdir()}
    assert files == {
        "model.safetensors",
        "model.json",
        "learning_curve.png",
        ".kgml_grid.json",
    }  # + the output marker


def test_pretrain_is_reproducible_with_a_seed(tiny_world, tmp_path, pretrained):
    with torch_threads(2):
        again = pretrain(tiny_world.catalog, tmp_path / "m", TrainConfig(**SMALL), progress=False)
        assert torch.get_num_threads() == 2, (
            "training (threads=1) must restore the caller's thread count"
        )
    assert [h["train"] for h in again.history] == [h["train"] for h in pretrained.history]


def test_pretrain_refuses_catalog_without_truth(tiny_world, tmp_path):
    import yaml

    doc = yaml.safe_load(tiny_world.catalog.read_text())  # an Intake 2 catalog
    del doc["entries"]["truth"], doc["data"]["truth_zarr"]
    for d in doc["data"].values():
        d["kwargs"]["url"] = d["kwargs"]["url"].replace("{CATALOG_DIR}", str(tiny_world.root))
    p = tmp_path / "cat.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"pre-training needs a 'truth' layer"):
        pretrain(p, tmp_path / "m", TrainConfig(**SMALL), progress=False)


def test_finetune_on_synthetic_towers_and_evaluate(pretrained, tiny_world, tmp_path):
    cfg = FinetuneConfig(epochs_heads=1, epochs_all=2, holdout_years=1, val_years=1, threads=1)
    res = finetune(pretrained.model_dir, tiny_world.towers, tmp_path / "ft", cfg, progress=False)
    ck = load_checkpoint(res.model_dir, check_schema=True)
    assert ck.provenance["stage"] == "finetune"
    assert ck.provenance["tower_split"]["holdout_years"] == [2012]
    assert {h["stage"] for h in ck.provenance["history"]} == {1, 2}
    rep = evaluate(res.model_dir, tmp_path / "rep", catalog=tiny_world.catalog, fluxnet=tiny_world.towers[:1],
                   baseline=pretrained.model_dir)  # fmt: skip
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["grid"]["heldout_pixels_heldout_years"]["nee"]["n"] > 0
    sid = next(iter(saved["towers"]))
    assert saved["towers"][sid]["holdout_years"] == [2012]
    assert "towers_baseline" in saved
    assert "mass balance" in format_report(rep)
    assert (tmp_path / "rep" / "grid_pred_vs_truth.png").exists()


def test_finetune_unknown_site_needs_site_meta(pretrained, tiny_world, tmp_path):
    import shutil

    csv = tmp_path / tiny_world.towers[0].name.replace("SY-A01", "SY-Z99")
    shutil.copy(tiny_world.towers[0], csv)
    text = csv.read_text()
    csv.write_text(text)
    with pytest.raises(ValueError, match=r"SY-Z99.*--site-meta FILE"):
        finetune(pretrained.model_dir, [csv], tmp_path / "ft", FinetuneConfig(), progress=False)


def test_checkpoint_with_other_features_is_refused(pretrained, tmp_path):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(pretrained.model_dir, d)
    meta = json.loads((d / "model.json").read_text())
    meta["units"]["tair"] = "K"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"tair"):
        finetune(d, [], tmp_path / "ft", FinetuneConfig(), progress=False)


def test_metrics_hand_computed():
    m = metrics(np.array([1.0, 2.0, 4.0, np.nan]), np.array([1.0, 3.0, 5.0, 2.0]))
    assert m["n"] == 3
    assert m["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert m["bias"] == pytest.approx(-2 / 3)
    sst = ((np.array([1, 3, 5]) - 3) ** 2).sum()
    assert m["r2"] == pytest.approx(1 - 2 / sst)


def test_warm_start_refuses_other_architecture(pretrained, tiny_world, tmp_path):
    cfg = TrainConfig(**{**SMALL, "hidden": 12, "init": str(pretrained.model_dir)})
    with pytest.raises(
        ValueError,
        match=r"--init .*: architecture .*'hidden': 8.* differs from this run's .*'hidden': 12",
    ):
        pretrain(tiny_world.catalog, tmp_path / "m", cfg, progress=False)


def test_warm_start_continues_from_checkpoint(pretrained, tiny_world, tmp_path):
    cfg = TrainConfig(**{**SMALL, "epochs": 1, "init": str(pretrained.model_dir)})
    res = pretrain(tiny_world.catalog, tmp_path / "m", cfg, progress=False)
    # the first epoch starts where the pre-trained model ended, not from scratch
    assert res.history[0]["train"] < pretrained.history[0]["train"]
