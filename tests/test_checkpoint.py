"""Tests of kgml_grid.checkpoint: round trip, refusals, no pickle, devices, Normalizer."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from kgml_grid import checkpoint as ckmod
from kgml_grid import schema
from kgml_grid.checkpoint import (
    Normalizer,
    checkpoint_hash,
    fit_norm,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    torch_threads,
)
from kgml_grid.model import DAILY_TARGETS, ModelConfig, build_model

FEATURES = schema.FEATURES
UNITS = schema.feature_units()
NORM = {name: (0.1 * i, 1.0 + 0.5 * i) for i, name in enumerate(FEATURES)}
NORM.update(
    ra=(2.0, 1.5), rh=(1.0, 0.8), nee=(-0.5, 3.0), gpp=(4.0, 5.0), **{"yield": (400.0, 150.0)}
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(arch: str = "kgml") -> ModelConfig:
    return ModelConfig(arch=arch, n_features=len(FEATURES), hidden=8, yield_hidden=4)


def _save(model, directory, config=None, **kw):
    args = dict(
        config=config or model.config,
        features=FEATURES,
        units=UNITS,
        norm=NORM,
        provenance={"run": "test", "seed": 0, "data": Path("/x/y.zarr")},
    )
    args.update(kw)
    return save_checkpoint(model, directory, **args)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(_config()).eval()
    directory = _save(model, tmp_path_factory.mktemp("ckpt") / "kgml")
    return model, directory


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_round_trip_identical_outputs(tmp_path, arch):
    torch.manual_seed(3)
    model = build_model(_config(arch)).eval()
    path = _save(model, tmp_path / "c")
    assert path == tmp_path / "c"
    ck = load_checkpoint(path, expect_features=FEATURES, expect_units=UNITS, check_schema=True)
    assert ck.config == model.config
    assert ck.features == FEATURES
    assert {k: ck.units[k] for k in FEATURES} == UNITS
    assert ck.units["ra"] == "g m-2 d-1"
    assert ck.norm == {k: (float(m), float(s)) for k, (m, s) in NORM.items()}
    assert not ck.model.training
    assert ck.device == torch.device("cpu")
    assert ck.targets == DAILY_TARGETS
    x = torch.randn(3, 25, len(FEATURES))
    ye = torch.zeros(3, 25, dtype=torch.bool)
    ye[:, 20] = True
    with torch.no_grad():
        a, sa = model(x, year_end=ye)
        b, sb = ck.model(x, year_end=ye)
    assert torch.equal(a["daily"], b["daily"])
    assert torch.equal(torch.nan_to_num(a["yield"]), torch.nan_to_num(b["yield"]))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sidecar_contents(saved):
    model, directory = saved
    meta = json.loads((directory / "model.json").read_text())
    assert meta["format"] == "kgml_grid-checkpoint" and meta["format_version"] == 1
    assert meta["config"] == model.config.to_dict()
    assert meta["features"] == list(FEATURES)
    assert meta["targets"] == {"daily": ["ra", "rh", "nee", "gpp"], "yearly": ["yield"]}
    assert meta["norm"]["nee"] == {"mean": -0.5, "std": 3.0}
    prov = meta["provenance"]
    assert prov["run"] == "test" and prov["data"] == "/x/y.zarr"
    assert {"created", "package_version", "torch_version", "weights_sha256"} <= set(prov)
    ck = load_checkpoint(directory)
    assert prov["weights_sha256"] == meta["weights"]["sha256"] == ck.sha256
    import hashlib

    assert ck.sha256 == hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert checkpoint_hash(directory) == ck.hash == meta["checkpoint_hash"]


def test_checkpoint_hash_tracks_what_changes_outputs(saved, tmp_path):
    model, directory = saved
    again = _save(model, tmp_path / "again", provenance={"run": "other"})
    assert checkpoint_hash(again) == checkpoint_hash(directory)  # provenance does not count
    norm2 = dict(NORM, ra=(2.0, 1.6))
    other = _save(model, tmp_path / "other", norm=norm2)
    assert checkpoint_hash(other) != checkpoint_hash(directory)


def test_no_pickle(saved, tmp_path, monkeypatch):
    model, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    raw = (directory / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])  # safetensors: length-prefixed JSON header + raw data
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based serialisation used")

    calls = []
    real_load_file = safetensors.torch.load_file

    def spy(*args, **kwargs):
        calls.append(args)
        return real_load_file(*args, **kwargs)

    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", spy)
    _save(model, tmp_path / "np")
    ck = load_checkpoint(tmp_path / "np")
    assert calls and str(calls[0][0]).endswith("model.safetensors")
    assert ck.sha256 == load_checkpoint(directory).sha256


def test_resave_replaces_and_leaves_no_temp_files(saved, tmp_path):
    model, _ = saved
    d = _save(model, tmp_path / "c")
    torch.manual_seed(9)
    other = build_model(_config()).eval()
    _save(other, d)
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "model.safetensors"]
    ck = load_checkpoint(d)
    x = torch.randn(1, 5, len(FEATURES))
    with torch.no_grad():
        assert torch.equal(ck.model(x)[0]["daily"], other(x)[0]["daily"])


def test_interrupted_save_is_never_complete(saved, tmp_path, monkeypatch):
    model, _ = saved
    d = _save(model, tmp_path / "c")
    real_replace = os.replace

    def fail_on_json(src, dst):
        if str(dst).endswith("model.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(ckmod.os, "replace", fail_on_json)
    with pytest.raises(OSError, match="disk full"):
        _save(model, d)
    monkeypatch.undo()
    assert sorted(p.name for p in d.iterdir()) == ["model.safetensors"]
    with pytest.raises(ValueError, match=r"model\.json: missing; .* is not a complete checkpoint"):
        load_checkpoint(d)


def test_refuses_missing_files(saved, tmp_path):
    _, directory = saved
    with pytest.raises(ValueError, match="checkpoint directory does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    d = _copy(directory, tmp_path / "c")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors: missing \(the sidecar model\.json"):
        load_checkpoint(d)


def test_refuses_bad_json_and_versions(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path / "c")
    good = (d / "model.json").read_text()
    (d / "model.json").write_text(good[:50])
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON"):
        load_checkpoint(d)
    meta = json.loads(good)
    meta["format_version"] = 99
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"model\.json: unknown format version 99; .* reads version 1"
    ):
        load_checkpoint(d)
    with pytest.raises(ValueError, match="unknown format version 99"):
        checkpoint_hash(d)
    meta["format_version"] = 1
    meta["format"] = "something-else"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a kgml_grid checkpoint"):
        load_checkpoint(d)
    meta["format"] = "kgml_grid-checkpoint"
    meta["config"]["hidden"] = 16
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights do not fit the architecture"):
        load_checkpoint(d)


def test_refuses_hash_mismatch(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path / "c")
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF  # flip bits of the last weight
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 [0-9a-f]{64} does not match"):
        load_checkpoint(d)
    with pytest.raises(ValueError, match="does not match"):
        checkpoint_hash(d)


def test_refuses_feature_and_unit_differences(saved):
    _, directory = saved
    swapped = list(FEATURES)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(
        ValueError, match=r"feature order differs .* position 1: 'swrad' where 'vpd'"
    ):
        load_checkpoint(directory, expect_features=swapped)
    with pytest.raises(ValueError, match=r"missing \['lai'\], unexpected \['doy_cos'\]"):
        load_checkpoint(directory, expect_features=[*FEATURES[:-1], "lai"])
    with pytest.raises(ValueError, match=r"variable 'tair' has units 'degC', expected 'K'"):
        load_checkpoint(directory, expect_units={"tair": "K"})
    # an alias the schema knows is the same unit
    load_checkpoint(directory, expect_units={"tair": "deg C", "ra": "gC m-2 d-1"})


def test_schema_check_uses_schema_messages(tmp_path):
    feats = (*FEATURES[:3], "lai", *FEATURES[4:])
    cfg = _config()
    model = build_model(cfg)
    units = dict(UNITS, lai="1")
    d = _save(model, tmp_path / "c", features=feats, units=units, norm=dict(NORM, lai=(1.0, 1.0)))
    load_checkpoint(d)  # fine without expectations
    with pytest.raises(
        ValueError, match=r"model\.json: features differ from the schema: missing \['precip'\]"
    ):
        load_checkpoint(d, check_schema=True)
    d2 = _save(model, tmp_path / "c2", units=dict(UNITS, soc="g m-2"))
    with pytest.raises(ValueError, match=r"feature 'soc' has units 'g m-2', expected 'kg m-2'"):
        load_checkpoint(d2, check_schema=True)


def test_save_refusals(saved, tmp_path):
    model, _ = saved
    with pytest.raises(ValueError, match=r"17 features given, but config\.n_features is 18"):
        _save(model, tmp_path / "a", features=FEATURES[:-1])
    with pytest.raises(ValueError, match=r"statistics are missing for \['nee'\]"):
        _save(model, tmp_path / "b", norm={k: v for k, v in NORM.items() if k != "nee"})
    with pytest.raises(ValueError, match=r"norm\['ra'\] .* positive std"):
        _save(model, tmp_path / "c", norm=dict(NORM, ra=(1.0, 0.0)))
    with pytest.raises(ValueError, match=r"units are missing for features \['soc'\]"):
        _save(model, tmp_path / "d", units={k: v for k, v in UNITS.items() if k != "soc"})
    with pytest.raises(ValueError, match="model was built with"):
        _save(model, tmp_path / "e", config=_config("gru"))
    with pytest.raises(ValueError, match="provenance cannot be written as JSON"):
        _save(model, tmp_path / "f", provenance={"val_loss": float("nan")})
    assert not any((tmp_path / n / "model.json").exists() for n in "abcdef")
    assert not list((tmp_path / "f").iterdir())  # no temporary files left behind


def test_normalizer_numpy_and_torch(saved):
    norm = Normalizer(NORM, features=FEATURES)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 7, len(FEATURES))).astype("float32")
    xn = norm.normalize_features(x)
    assert isinstance(xn, np.ndarray) and xn.dtype == np.float32
    mean = np.array([NORM[f][0] for f in FEATURES])
    std = np.array([NORM[f][1] for f in FEATURES])
    np.testing.assert_allclose(xn, (x - mean) / std, rtol=1e-5, atol=1e-6)
    xt = norm.normalize_features(torch.as_tensor(x))
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float32
    np.testing.assert_allclose(xt.numpy(), xn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.denormalize_features(xn), x, rtol=1e-5, atol=1e-5)

    y = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 1.0]])
    phys = norm.denormalize_outputs(y)
    np.testing.assert_allclose(phys, [[2.0, 1.0, -0.5, 4.0], [3.5, 0.2, 5.5, 9.0]])
    np.testing.assert_allclose(norm.denormalize_outputs(torch.as_tensor(y)).numpy(), phys)
    np.testing.assert_allclose(norm.normalize_outputs(phys), y, atol=1e-12)
    yt = torch.tensor([np.nan, 1.0])
    assert torch.isnan(norm.denormalize_yield(yt)[0]) and norm.denormalize_yield(yt)[1] == 550.0
    assert norm.normalize_yield(np.array(550.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"expected a last axis of 4 \(ra, rh, nee, gpp\)"):
        norm.denormalize_outputs(np.zeros((2, 3)))
    no_yield = Normalizer({k: v for k, v in NORM.items() if k != "yield"}, features=FEATURES)
    with pytest.raises(ValueError, match="statistics are missing for 'yield'"):
        no_yield.denormalize_yield(np.zeros(2))
    _, directory = saved
    ck = load_checkpoint(directory)
    np.testing.assert_allclose(ck.normalizer.normalize_features(x), xn)


def test_fit_norm():
    got = fit_norm({"a": np.array([1.0, 3.0, np.nan]), "b": torch.ones(4)})
    assert got["a"] == (2.0, 1.0)
    assert got["b"] == (1.0, 1e-6)
    with pytest.raises(ValueError, match="'c' has no finite values"):
        fit_norm({"c": np.array([np.nan])})


def test_torch_threads_restores_the_callers_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        with torch_threads(None):  # None leaves the setting alone
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0' asked for, but CUDA is not available"):
            resolve_device("cuda:0")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"only {n} CUDA device"):
            resolve_device(f"cuda:{n}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_on_gpu_matches_cpu(saved):
    model, directory = saved
    ck = load_checkpoint(directory, device="cuda")
    assert next(ck.model.parameters()).is_cuda
    x = torch.randn(2, 30, len(FEATURES))
    ye = torch.zeros(2, 30, dtype=torch.bool)
    ye[:, 15] = True
    with torch.no_grad():
        a, _ = model(x, year_end=ye)
        b, _ = ck.model(x.cuda(), year_end=ye.cuda())
    torch.testing.assert_close(b["daily"].cpu(), a["daily"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b["yield"].cpu(), a["yield"], atol=1e-4, rtol=1e-4, equal_nan=True)


def test_import_does_not_initialise_cuda():
    code = (
        "import torch, kgml_grid.checkpoint, kgml_grid.model, kgml_grid.losses; "
        "print(torch.cuda.is_initialized())"
    )
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------
# sidecar sanity and weights (issue 11): refused before anything is allocated or run
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "value", "match"),
    [
        (
            "features",
            "tair,swrad",
            r"entry 'features' must be a list of feature names, got str 'tair,swrad'",
        ),
        (
            "features",
            [1, 2, 3],
            r"entry 'features' must be a list of feature names, got list \[1, 2, 3\]",
        ),
        ("norm", [[0.0, 1.0]], r"entry 'norm' must be an object name -> \{mean, std\}, got list"),
        (
            "targets",
            ["ra", "rh"],
            r"entry 'targets' must be an object \{\"daily\": \[...\], .*got list",
        ),
        ("units", "degC", r"entry 'units' must be an object name -> units, got str 'degC'"),
        ("config", 64, r"entry 'config' must be an object of architecture settings, got int 64"),
        ("provenance", None, r"entry 'provenance' must be an object, got NoneType None"),
    ],
)
def test_refuses_sidecar_entries_of_the_wrong_type(saved, tmp_path, entry, value, match):
    _, directory = saved
    d = _copy(directory, tmp_path / "c")
    meta = json.loads((d / "model.json").read_text())
    meta[entry] = value
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.json: " + match):
        load_checkpoint(d)
    with pytest.raises(ValueError, match=match):
        checkpoint_hash(d)


def test_refuses_wrong_types_inside_entries(saved, tmp_path):
    _, directory = saved
    d = _copy(directory, tmp_path / "c")
    meta = json.loads((d / "model.json").read_text())
    meta["targets"]["daily"] = "ra"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"entry 'targets.daily' must be a list of target names, got str 'ra'"
    ):
        load_checkpoint(d)
    meta = json.loads((directory / "model.json").read_text())
    meta["units"]["tair"] = 1
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"entry 'units' must map names to unit strings; 'tair' has int 1"
    ):
        load_checkpoint(d)


def test_refuses_absurd_architectures_before_allocating(saved, tmp_path, monkeypatch):
    _, directory = saved
    d = _copy(directory, tmp_path / "c")
    meta = json.loads((d / "model.json").read_text())
    meta["config"]["hidden"] = 10**7  # ~12 PB of weights
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"bad 'config': ModelConfig.hidden is 10000000, above the limit of 4096"
    ):
        load_checkpoint(d)
    with pytest.raises(ValueError, match=r"ModelConfig.rh_layers is 1000, above the limit of 16"):
        ModelConfig(arch="kgml", n_features=18, rh_layers=1000)
    # within the limits but far larger than the file: counted on the meta device only
    built_on: list[str] = []
    real_build = ckmod.build_model

    def spy(config):
        built_on.append(torch.get_default_device().type)
        return real_build(config)

    monkeypatch.setattr(ckmod, "build_model", spy)
    meta["config"]["hidden"] = 4096  # ~2.8 GB of weights
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not fit the architecture in model\.json: "
                                         r"its 'config' \(hidden 4096\) needs [\d,]+ bytes of weights, the file "
                                         r"holds [\d,]+ \(nothing was allocated\)"):  # fmt: skip
        load_checkpoint(d)
    assert built_on == ["meta"]


@pytest.mark.parametrize(
    ("bad", "counts"), [(float("nan"), r"1 NaN, 0 inf"), (float("inf"), r"0 NaN, 1 inf")]
)
def test_refuses_non_finite_weights(saved, tmp_path, bad, counts):
    model, _ = saved
    broken = build_model(model.config).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.rh.head.weight[0, 3] = bad
    d = _save(broken, tmp_path / "c")  # saving does not judge weights; loading does
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor 'rh.head.weight' \(1, 8\) has 1 non-finite "
                                         rf"values \({counts}\): the model would output NaN"):  # fmt: skip
        load_checkpoint(d)
