"""Tests of kgml_grid.model: interface, statefulness (pieces == whole), yield head."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgml_grid.model import (
    DAILY_TARGETS,
    GRUBaseline,
    KGMLModel,
    ModelConfig,
    build_model,
    count_parameters,
    detach_state,
    module_groups,
    nee_balance_from,
    state_from_numpy,
    state_spec,
    state_to_numpy,
)

N_FEATURES = 5
HIDDEN = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(arch: str, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, n_features=N_FEATURES, hidden=HIDDEN, yield_hidden=4, **kw)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {arch: build_model(_config(arch)).eval() for arch in ("kgml", "gru")}


def _run_pieces(model, x, ye, cuts):
    """Run ``x`` in pieces split at ``cuts``, carrying the state."""
    bounds = [0, *cuts, x.shape[1]]
    state = None
    daily, yields = [], []
    for a, b in itertools.pairwise(bounds):
        out, state = model(x[:, a:b], state, year_end=ye[:, a:b])
        daily.append(out["daily"])
        yields.append(out["yield"])
    return torch.cat(daily, 1), torch.cat(yields, 1), state


@st.composite
def series(draw):
    steps = draw(st.integers(min_value=2, max_value=48))
    cuts = sorted(draw(st.lists(st.integers(0, steps), min_size=1, max_size=4)))
    ends = draw(st.lists(st.integers(0, steps - 1), max_size=4))
    seed = draw(st.integers(0, 2**16))
    return steps, cuts, ends, seed


@pytest.mark.parametrize("arch", ["kgml", "gru"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=series())
def test_pieces_equal_whole(models, arch, case):
    steps, cuts, ends, seed = case
    model = models[arch]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, steps, N_FEATURES, generator=gen)
    ye = torch.zeros(3, steps, dtype=torch.bool)
    ye[0, ends] = True  # row 0: the drawn year ends
    ye[1, -1] = True  # row 1: a season ending on the last day
    # row 2: no year end, the season stays open
    with torch.no_grad():
        whole, state_whole = model(x, year_end=ye)
        daily, yields, state = _run_pieces(model, x, ye, cuts)
    torch.testing.assert_close(daily, whole["daily"], atol=1e-5, rtol=0)
    assert torch.equal(torch.isnan(yields), ~ye)
    torch.testing.assert_close(yields, whole["yield"], atol=1e-5, rtol=0, equal_nan=True)
    assert state.keys() == state_whole.keys()
    for k in state:
        torch.testing.assert_close(state[k], state_whole[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_state_carried_through_numpy_equals_whole(models, arch):
    model = models[arch]
    x = torch.randn(4, 40, N_FEATURES)
    ye = torch.zeros(4, 40, dtype=torch.bool)
    ye[:, 29] = True
    with torch.no_grad():
        whole, _ = model(x, year_end=ye)
        _first, state = model(x[:, :13], year_end=ye[:, :13])
        host = state_to_numpy(state)
        assert all(isinstance(v, np.ndarray) and v.shape[0] == 4 for v in host.values())
        # a subset of pixels continues from its own rows of the state
        idx = [3, 1]
        sub = state_from_numpy({k: v[idx] for k, v in host.items()})
        second, _ = model(x[idx, 13:], sub, year_end=ye[idx, 13:])
    torch.testing.assert_close(second["daily"], whole["daily"][idx, 13:], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        second["yield"], whole["yield"][idx, 13:], atol=1e-5, rtol=0, equal_nan=True
    )


def _reference_yield(model, h, ye_row):
    """Yield of each season by an explicit softmax over the season's days."""
    head = model.yield_head
    out, start = {}, 0
    for t in np.flatnonzero(ye_row):
        hs = h[start : t + 1]
        w = torch.softmax(head.score(torch.tanh(head.attn(hs))).squeeze(-1), dim=0)
        out[int(t)] = head.mlp((w[:, None] * hs).sum(0)).item()
        start = t + 1
    return out


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_yield_is_attention_pooling_per_season(models, arch):
    model = models[arch]
    x = torch.randn(1, 30, N_FEATURES)
    ye = torch.zeros(1, 30, dtype=torch.bool)
    ye[0, [9, 21]] = True
    with torch.no_grad():
        out, _ = model(x, year_end=ye)
        h = (model.basis if arch == "kgml" else model.gru)(x)[0][0]
        ref = _reference_yield(model, h, ye[0].numpy())
    assert set(ref) == {9, 21}
    for t, value in ref.items():
        assert out["yield"][0, t].item() == pytest.approx(value, abs=1e-5)
    assert torch.isnan(out["yield"][0, ~ye[0]]).all()


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_output_layout_and_year_end_forms(models, arch):
    model = models[arch]
    x = torch.randn(2, 12, N_FEATURES)
    with torch.no_grad():
        out, state = model(x)
        assert set(out) == {"daily"}
        assert out["daily"].shape == (2, 12, len(DAILY_TARGETS)) == (2, 12, 4)
        assert {k: tuple(v.shape[1:]) for k, v in state.items()} == state_spec(model.config)
        ye1 = np.zeros(12, dtype=bool)
        ye1[5] = True
        out1, _ = model(x, year_end=ye1)  # [T] broadcast to [B, T], numpy accepted
        out2, _ = model(x, year_end=torch.as_tensor(ye1).expand(2, -1))
    assert out1["yield"].shape == (2, 12)
    torch.testing.assert_close(out1["yield"], out2["yield"], equal_nan=True)
    torch.testing.assert_close(out1["daily"], out["daily"])


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_causal(models, arch):
    model = models[arch]
    x = torch.randn(2, 20, N_FEATURES)
    x2 = x.clone()
    x2[:, 11:] += 3.0
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x2)
    torch.testing.assert_close(a["daily"][:, :11], b["daily"][:, :11])
    assert not torch.allclose(a["daily"][:, 11:], b["daily"][:, 11:])


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_eval_deterministic_train_uses_dropout(arch):
    torch.manual_seed(1)
    model = build_model(_config(arch, dropout=0.5))
    x = torch.randn(2, 15, N_FEATURES)
    ye = torch.zeros(2, 15, dtype=torch.bool)
    ye[:, 7] = True
    model.eval()
    with torch.no_grad():
        a, _ = model(x, year_end=ye)
        b, _ = model(x, year_end=ye)
    torch.testing.assert_close(a["daily"], b["daily"], atol=0, rtol=0)
    torch.testing.assert_close(a["yield"], b["yield"], atol=0, rtol=0, equal_nan=True)
    model.train()
    with torch.no_grad():
        c, _ = model(x, year_end=ye)
    assert not torch.allclose(a["daily"], c["daily"])


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_gradients_finite_through_yield_and_state(arch):
    torch.manual_seed(2)
    model = build_model(_config(arch)).train()
    x = torch.randn(2, 16, N_FEATURES)
    ye = torch.zeros(2, 16, dtype=torch.bool)
    ye[0, 6] = True
    ye[1, 15] = True
    out, state = model(x[:, :8], year_end=ye[:, :8])
    out2, _ = model(x[:, 8:], detach_state(state), year_end=ye[:, 8:])
    loss = out["daily"].square().mean() + out2["daily"].square().mean()
    loss = loss + out["yield"][ye[:, :8]].sum() + out2["yield"][ye[:, 8:]].sum()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad.abs().sum() > 0 for p in module_groups(model)["yield"])


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_empty_chunk_keeps_state(models, arch):
    model = models[arch]
    x = torch.randn(2, 6, N_FEATURES)
    with torch.no_grad():
        _, state = model(x)
        out, state2 = model(x[:, :0], state, year_end=torch.zeros(2, 0, dtype=torch.bool))
    assert out["daily"].shape == (2, 0, 4)
    assert out["yield"].shape == (2, 0)
    for k in state:
        assert torch.equal(state[k], state2[k])


def test_kgml_hierarchy_nee_uses_ra_rh(models):
    """Changing the Ra head changes NEE (NEE's GRU reads Ra and Rh), not Rh."""
    model = build_model(_config("kgml")).eval()
    model.load_state_dict(models["kgml"].state_dict())
    x = torch.randn(2, 10, N_FEATURES)
    with torch.no_grad():
        before, _ = model(x)
        model.ra.head.bias += 1.0
        after, _ = model(x)
    torch.testing.assert_close(after["daily"][..., 0], before["daily"][..., 0] + 1.0)
    torch.testing.assert_close(after["daily"][..., 1], before["daily"][..., 1])
    assert not torch.allclose(after["daily"][..., 2], before["daily"][..., 2])


def test_shape_errors(models):
    model = models["kgml"]
    with pytest.raises(ValueError, match=r"x must have shape \[batch, time, 5\]"):
        model(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match="year_end must have shape"):
        model(torch.randn(2, 10, 5), year_end=torch.zeros(2, 9, dtype=torch.bool))
    _, state = model(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"state\['basis'\] has shape \(2, 2, 8\), expected \(3"):
        model(torch.randn(3, 3, 5), state)
    state.pop("yield_a")
    with pytest.raises(ValueError, match=r"state is missing entries \['yield_a'\]"):
        model(torch.randn(2, 3, 5), state)


def test_config_round_trip_and_refusals():
    cfg = ModelConfig(arch="kgml", n_features=18)
    assert (cfg.hidden, cfg.dropout, cfg.basis_layers, cfg.ra_layers) == (64, 0.2, 2, 1)
    assert (cfg.rh_layers, cfg.nee_layers, cfg.gru_layers, cfg.yield_hidden) == (2, 1, 2, 32)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="arch must be one of"):
        ModelConfig(arch="lstm", n_features=3)
    with pytest.raises(ValueError, match="n_features must be a positive integer"):
        ModelConfig(arch="gru", n_features=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        ModelConfig(arch="gru", n_features=3, dropout=1.0)
    with pytest.raises(ValueError, match=r"unknown keys \['widht'\]"):
        ModelConfig.from_dict({"arch": "gru", "n_features": 3, "widht": 2})
    with pytest.raises(ValueError, match="KGMLModel needs arch='kgml'"):
        KGMLModel(ModelConfig(arch="gru", n_features=3))
    with pytest.raises(ValueError, match="GRUBaseline needs arch='gru'"):
        GRUBaseline(ModelConfig(arch="kgml", n_features=3))


def test_nee_balance_config_round_trip_and_refusals():
    plain = ModelConfig(arch="kgml", n_features=18)
    assert "nee_balance" not in plain.to_dict()  # readable by versions before it
    cfg = ModelConfig(arch="kgml", n_features=18, nee_balance=[1.5, 0.5, 2, -0.25])
    assert cfg.nee_balance == (1.5, 0.5, 2.0, -0.25)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(
        ValueError, match=r"nee_balance must be 4 finite numbers .* got \[1, 2, nan, 0\]"
    ):
        ModelConfig(arch="kgml", n_features=3, nee_balance=[1, 2, math.nan, 0])
    with pytest.raises(ValueError, match="nee_balance is for arch='kgml'"):
        ModelConfig(arch="gru", n_features=3, nee_balance=(1, 1, 1, 0))


def test_nee_balance_closes_the_balance_of_the_models_own_fluxes():
    mean = np.array([2.0, 1.0, -1.5, 4.5])  # ra, rh, nee, gpp (DAILY_TARGETS)
    std = np.array([1.2, 0.4, 2.5, 3.0])
    cfg = ModelConfig(
        arch="kgml",
        n_features=5,
        nee_balance=nee_balance_from(
            dict(zip(DAILY_TARGETS, zip(mean, std, strict=True), strict=True))
        ),
    )
    model = KGMLModel(cfg).eval()
    x = torch.randn(3, 20, 5)
    with torch.no_grad():
        out, _ = model(x)
        phys = out["daily"].double() * torch.from_numpy(std) + torch.from_numpy(mean)
        ra, rh, nee, gpp = phys.unbind(-1)
        corr = model.nee(torch.cat([out["daily"][..., :2], out["daily"][..., 3:], x], -1), None)[0]
        # NEE = Ra + Rh - GPP + the NEE module's output, in physical units
        torch.testing.assert_close(
            nee, ra + rh - gpp + std[2] * corr[..., 0].double(), atol=1e-5, rtol=0
        )
        model.nee.head.weight.zero_()
        model.nee.head.bias.zero_()
        out, _ = model(x)
        ra, rh, nee, gpp = (
            out["daily"].double() * torch.from_numpy(std) + torch.from_numpy(mean)
        ).unbind(-1)
        torch.testing.assert_close(nee, ra + rh - gpp, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("arch", "groups"),
    [("kgml", {"basis", "gpp", "ra", "rh", "nee", "yield"}), ("gru", {"gru", "head", "yield"})],
)
def test_module_groups_partition_parameters(models, arch, groups):
    model = models[arch]
    got = module_groups(model)
    assert set(got) == groups
    ids = [id(p) for ps in got.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert sum(p.numel() for ps in got.values() for p in ps) == count_parameters(model)
    with pytest.raises(TypeError, match="not a kgml_grid model"):
        module_groups(torch.nn.Linear(2, 2))


def test_reference_architecture_sizes():
    model = build_model(ModelConfig(arch="kgml", n_features=18))
    assert model.basis.num_layers == 2 and model.basis.hidden_size == 64
    assert model.ra.gru.num_layers == 1 and model.ra.gru.input_size == 64 + 18
    assert model.rh.gru.num_layers == 2 and model.rh.gru.input_size == 64 + 18
    assert model.nee.gru.num_layers == 1 and model.nee.gru.input_size == 3 + 18
    base = build_model(ModelConfig(arch="gru", n_features=18))
    assert base.gru.num_layers == 2 and base.head.out_features == 4
    assert count_parameters(model) > count_parameters(base) > 0
    frozen = module_groups(model)["basis"]
    for p in frozen:
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - sum(
        p.numel() for p in frozen
    )
    assert math.isinf(model.initial_state(3)["yield_m"][0].item())
