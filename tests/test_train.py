"""Features, samples, pre-training, fine-tuning and evaluation on the tiny world."""

from __future__ import annotations

import itertools
import json
import math
import re
import time

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
from kgml_grid.model import nee_balance_from
from kgml_grid.samples import SplitSpec, compute_norm, make_split, windows
from kgml_grid.train import CPUBudget, FinetuneConfig, TrainConfig, finetune, pretrain

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
    # NEE closes the balance of the model's own fluxes (TrainConfig.nee_balance default)
    want = nee_balance_from(ck.norm)
    assert ck.config.nee_balance == pytest.approx(want)
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


def _burn(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def test_cpu_budget_charges_cpu_time_and_leaves_paused_spans_out():
    budget = CPUBudget(0.001)  # 0.06 CPU-s
    with budget.paused():
        _burn(0.1)
    assert budget.seconds() < 0.05 and not budget.spent()
    _burn(0.07)
    assert budget.seconds() >= 0.07 and budget.spent()
    assert not CPUBudget(None).spent()


@pytest.mark.parametrize("field", ["max_cpu_minutes", "max_minutes"])
def test_train_config_refuses_non_positive_budgets(field):
    with pytest.raises(ValueError, match=rf"TrainConfig.{field} must be positive or None, got 0"):
        TrainConfig(**{field: 0})
    with pytest.raises(ValueError, match=r"max_cpu_minutes must be positive, got -1"):
        CPUBudget(-1)


def test_pretrain_stops_on_its_cpu_budget_and_says_so(tiny_world, tmp_path):
    cfg = TrainConfig(**{**SMALL, "epochs": 50, "max_cpu_minutes": 0.002})  # 0.12 CPU-s
    res = pretrain(tiny_world.catalog, tmp_path / "m", cfg, progress=False)
    assert len(res.history) == 1, "the first step alone spends the budget"
    assert re.fullmatch(
        r"CPU-time budget of 0.002 CPU-min reached after epoch 1 \(step 1, [0-9.]+ CPU-min\)",
        res.stopped,
    )
    h = res.history[0]
    assert h["steps"] == 1 and h["cpu_seconds"] > 0.12
    ck = load_checkpoint(res.model_dir)
    assert ck.provenance["train_config"]["max_cpu_minutes"] == 0.002
    assert ck.provenance["stopped"] == res.stopped


def test_fit_on_step_sees_every_step_and_is_not_charged(tiny_world):
    from kgml_grid.catalog import open_catalog
    from kgml_grid.train import fit, grid_loss, prepare_pretrain

    cfg = TrainConfig(**{**SMALL, "epochs": 1})
    with torch_threads(1):
        setup = prepare_pretrain(open_catalog(tiny_world.catalog), cfg, torch.device("cpu"))
        seen: list[tuple[int, float]] = []

        def on_step(step: int, cpu_s: float) -> None:
            seen.append((step, cpu_s))
            _burn(1.5)  # snapshot work: must not count (a step of this small model costs less)

        hist, _, stopped = fit(
            setup.model, lambda b, s: grid_loss(setup.model, b, setup.norm, cfg, s),
            setup.train, setup.val, param_groups=[{"params": list(setup.model.parameters())}],
            epochs=1, patience=5, lr_step=10, lr_gamma=0.5, progress=False, on_step=on_step,
        )  # fmt: skip
    assert [s for s, _ in seen] == list(range(1, len(setup.train) + 1))
    cpu = [c for _, c in seen]
    steps = np.diff(cpu)  # what one training step was charged
    assert len(steps) >= 2 and (steps > 0).all()
    assert (steps < 1.5).all(), f"on_step's CPU time was charged: {steps}"
    assert hist[0]["cpu_seconds"] > cpu[-1]  # the validation pass is charged
    assert stopped == "ran all 1 epochs"


def test_train_cli_passes_the_cpu_budget(tiny_world, tmp_path):
    from kgml_grid.cli import main

    out = tmp_path / "m"
    rc = main(["train", "--catalog", str(tiny_world.catalog), "--out", str(out), "--hidden", "8",
               "--epochs", "3", "--max-cpu-minutes", "0.002", "--max-train-pixels", "24",
               "--holdout-years", "1", "--quiet"])  # fmt: skip
    assert rc == 0
    prov = load_checkpoint(out).provenance
    assert prov["train_config"]["max_cpu_minutes"] == 0.002
    assert prov["stopped"].startswith("CPU-time budget of 0.002 CPU-min reached after epoch 1")


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_cheap_response_penalty_equals_the_full_model_path(arch):
    """grid_loss's response term (own Rh as base, basis + Rh only for the bumped inputs)
    equals the former one (three full forward passes) in value and gradient."""
    from kgml_grid import losses
    from kgml_grid.checkpoint import Normalizer
    from kgml_grid.features import FEATURE_INDEX
    from kgml_grid.model import ModelConfig, build_model
    from kgml_grid.train import I_RH, grid_loss, rh_response

    torch.manual_seed(0)
    nf = len(schema.FEATURES)
    model = build_model(ModelConfig(arch=arch, n_features=nf, hidden=8)).double().eval()
    stats = {k: (0.0, 1.0) for k in (*schema.FEATURES, "ra", "rh", "nee", "gpp", "yield")}
    norm = Normalizer(stats, features=schema.FEATURES)
    b, t = 5, 40
    ye = torch.zeros(b, t, dtype=torch.bool)
    ye[:, -1] = True
    batch = {"x": torch.randn(b, t, nf, dtype=torch.float64),
             "y": torch.randn(b, t, 4, dtype=torch.float64), "loss": torch.ones(b, t, dtype=torch.bool),
             "year_end": ye, "yield": torch.randn(b, t, dtype=torch.float64)}  # fmt: skip
    cfg = TrainConfig(w_response=1.0, response_every=1, w_mass_balance=0, w_nonneg=0, w_yield=0, w_balance_true=0,
                      flux_weights=(0.0, 0.0, 0.0, 0.0), response_windows=3)  # fmt: skip
    x4 = batch["x"][:3]  # response_windows=3 below
    torch.testing.assert_close(rh_response(model)(x4), model(x4)[0]["daily"][..., I_RH])
    total, parts = grid_loss(model, batch, norm, cfg, 0)
    new_grads = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    old = losses.response_penalty(
        lambda x: model(x)[0]["daily"][..., I_RH], x4,
        [FEATURE_INDEX["soc"], FEATURE_INDEX["gpp_sat"]], delta=0.5, mask=batch["loss"][:3],
    )  # fmt: skip
    old_grads = torch.autograd.grad(old, list(model.parameters()), allow_unused=True)
    assert parts["response"] == pytest.approx(old.item(), rel=1e-10, abs=1e-12)
    assert old.item() > 0  # a random model is not monotone: the check can fail
    for gn, go in zip(new_grads, old_grads, strict=True):
        if go is None:
            assert gn is None or not gn.any()
        else:
            torch.testing.assert_close(gn, go, rtol=1e-9, atol=1e-12)


def test_balance_against_true_gpp_adds_its_weighted_penalty():
    from kgml_grid import losses
    from kgml_grid.checkpoint import Normalizer
    from kgml_grid.model import ModelConfig, build_model
    from kgml_grid.train import I_GPP, I_NEE, I_RA, I_RH, grid_loss

    torch.manual_seed(1)
    nf = len(schema.FEATURES)
    model = build_model(ModelConfig(arch="kgml", n_features=nf, hidden=8)).double().eval()
    stats = {k: (0.5, 2.0) for k in (*schema.FEATURES, "ra", "rh", "nee", "gpp", "yield")}
    norm = Normalizer(stats, features=schema.FEATURES)
    b, t = 3, 30
    y_phys = torch.rand(b, t, 4, dtype=torch.float64) * 3
    loss = torch.ones(b, t, dtype=torch.bool)
    loss[:, :10] = False  # spin-up
    batch = {"x": torch.randn(b, t, nf, dtype=torch.float64), "y": norm.normalize_outputs(y_phys),
             "y_phys": y_phys, "loss": loss, "year_end": torch.zeros(b, t, dtype=torch.bool),
             "yield": torch.full((b, t), math.nan, dtype=torch.float64)}  # fmt: skip
    off, p_off = grid_loss(model, batch, norm, TrainConfig(w_response=0, w_balance_true=0), 0)
    cfg = TrainConfig(w_response=0, w_balance_true=0.7, balance_floor=0.3)
    on, p_on = grid_loss(model, batch, norm, cfg, 0)
    phys = norm.denormalize_outputs(model(batch["x"])[0]["daily"])
    ref = losses.relative_balance_penalty(
        y_phys[..., I_GPP], phys[..., I_RA] + phys[..., I_RH], phys[..., I_NEE],
        y_phys[..., I_RA] + y_phys[..., I_RH], floor=0.3, mask=loss,
    )  # fmt: skip
    assert "balance_true" not in p_off and p_on["balance_true"] == pytest.approx(ref.item())
    assert ref.item() > 0
    assert (on - off).item() == pytest.approx(0.7 * ref.item(), rel=1e-9)
