"""The fused CPU GRU (kgml_grid.fastgru): the same outputs as nn.GRU where it is used,
nn.GRU wherever it is not, and a clear fallback when it cannot be built."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kgml_grid import fastgru
from kgml_grid.model import ModelConfig, build_model

pytestmark = pytest.mark.skipif(
    fastgru.load() is None, reason=f"fused GRU not built here: {fastgru.status()['reason']}"
)


def _gru(
    inp: int, hid: int, layers: int, *, batch_first: bool = True, seed: int = 0
) -> torch.nn.GRU:
    torch.manual_seed(seed)
    return torch.nn.GRU(inp, hid, num_layers=layers, batch_first=batch_first).eval()


@settings(max_examples=25, deadline=None)
@given(
    layers=st.integers(1, 3),
    inp=st.integers(1, 40),
    hid=st.sampled_from([1, 5, 16, 64]),
    bsz=st.integers(1, 20),
    days=st.integers(1, 12),
    with_h0=st.booleans(),
    batch_first=st.booleans(),
)
def test_fused_equals_nn_gru(layers, inp, hid, bsz, days, with_h0, batch_first):
    gru = _gru(inp, hid, layers, batch_first=batch_first)
    shape = (bsz, days, inp) if batch_first else (days, bsz, inp)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    h0 = torch.randn(layers, bsz, hid) if with_h0 else None
    with torch.inference_mode():
        assert fastgru.will_fuse(gru, x)
        want, want_h = gru(x, h0)
        got, got_h = fastgru.run_gru(gru, x, h0)
    assert got.shape == want.shape and got_h.shape == want_h.shape
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=2e-6)


def test_large_preactivations_saturate_like_nn_gru():
    gru = _gru(3, 8, 1)
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(40.0)  # gates far past +-80: the kernel's clamps must not show
    x = torch.randn(4, 6, 3) * 10
    with torch.inference_mode():
        want, _ = gru(x)
        got, _ = fastgru.run_gru(gru, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_state_carried_in_blocks_equals_one_call():
    gru = _gru(7, 16, 2)
    x = torch.randn(5, 30, 7)
    with torch.inference_mode():
        whole, h_whole = fastgru.run_gru(gru, x)
        a, ha = fastgru.run_gru(gru, x[:, :11])
        b, hb = fastgru.run_gru(gru, x[:, 11:], ha)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(hb, h_whole, rtol=0, atol=1e-6)


def test_nn_gru_is_used_where_fused_would_differ():
    gru = _gru(4, 8, 2)
    x = torch.randn(3, 5, 4)
    assert not fastgru.will_fuse(gru, x)  # autograd on: training needs gradients
    with torch.inference_mode():
        assert fastgru.will_fuse(gru, x)
        assert not fastgru.will_fuse(gru, x.double())
        gru.train()  # dropout between layers
        assert not fastgru.will_fuse(gru, x)
        gru.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fastgru.will_fuse(gru, x)
    out, _ = fastgru.run_gru(gru, x.requires_grad_())
    out.sum().backward()  # the nn.GRU path: gradients flow
    assert x.grad is not None


def test_bad_h0_is_refused():
    gru = _gru(4, 8, 2)
    with (
        torch.inference_mode(),
        pytest.raises(ValueError, match=r"h0 has shape \(1, 3, 8\), expected \(2, 3, 8\)"),
    ):
        fastgru.run_gru(gru, torch.randn(3, 5, 4), torch.zeros(1, 3, 8))


def _first_gru(model: torch.nn.Module) -> torch.nn.GRU:
    return next(m for m in model.modules() if isinstance(m, torch.nn.GRU))


@pytest.mark.parametrize("arch", ["kgml", "gru"])
def test_models_in_inference_equal_the_unfused_models(arch):
    model = build_model(ModelConfig(arch=arch, n_features=9)).eval()
    x = torch.randn(6, 40, 9)
    ye = torch.zeros(40, dtype=torch.bool)
    ye[[17, 39]] = True
    with torch.inference_mode():
        out, state = model(x, year_end=ye)
        assert fastgru.will_fuse(_first_gru(model), x)
        with fastgru.unfused():
            assert not fastgru.will_fuse(_first_gru(model), x)
            ref, ref_state = model(x, year_end=ye)
    for k in ("daily", "yield"):
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-5, equal_nan=True)
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=1e-5, equal_nan=True)


def _status_in_subprocess(env: dict[str, str]) -> str:
    code = "from kgml_grid import fastgru, model; import torch; print(fastgru.status()['reason'])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True)  # fmt: skip
    return res.stdout.strip() + res.stderr


def test_without_a_compiler_nn_gru_runs_and_status_says_why(tmp_path):
    import os

    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), fastgru.ENV_CACHE: str(tmp_path)}
    assert "no C compiler found" in _status_in_subprocess(env)
    env = {**os.environ, fastgru.ENV_DISABLE: "0"}
    assert f"disabled by {fastgru.ENV_DISABLE}=0" in _status_in_subprocess(env)


def test_a_failing_compiler_is_named_and_nothing_is_left_in_the_cache(tmp_path):
    import os

    cc = tmp_path / "badcc"
    cc.write_text("#!/bin/sh\necho 'cc: fatal: out of licences' >&2\nexit 3\n")
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    out = _status_in_subprocess({**os.environ, "CC": str(cc), fastgru.ENV_CACHE: str(cache)})
    assert f"building the kernel with {cc} failed" in out and "out of licences" in out
    assert not list(cache.glob("*.so"))


def test_the_kernel_is_built_once_per_cache(tmp_path):
    import os

    env = {**os.environ, fastgru.ENV_CACHE: str(tmp_path)}
    assert "compiled with" in _status_in_subprocess(env)
    (lib,) = tmp_path.glob("gru_gates-*.so")
    mtime = lib.stat().st_mtime_ns
    _status_in_subprocess(env)
    assert lib.stat().st_mtime_ns == mtime


def test_loading_the_kernel_leaves_subnormal_floats_alone(tmp_path):
    import os

    # a library linked with -ffast-math would switch on flush-to-zero for the process
    code = (
        "import numpy as np; from kgml_grid import fastgru; assert fastgru.load() is not None; "
        "x = np.float32(1e-40); print(repr(float(x * np.float32(2))))"
    )
    env = {**os.environ, fastgru.ENV_CACHE: str(tmp_path)}  # a fresh build
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True)  # fmt: skip
    assert float(res.stdout) == pytest.approx(2e-40, rel=1e-3, abs=0)  # not flushed to 0


def test_nan_inputs_propagate_as_in_nn_gru():
    gru = _gru(4, 8, 2)
    x = torch.randn(3, 6, 4)
    x[1, 2, 0] = float("nan")
    h0 = torch.zeros(2, 3, 8)
    h0_nan = h0.clone()
    h0_nan[0, 2, 1] = float("nan")
    with torch.inference_mode():
        for xi, hi in ((x, h0), (x.nan_to_num(), h0_nan)):
            want, want_h = gru(xi, hi)
            got, got_h = fastgru.run_gru(gru, xi, hi)
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6, equal_nan=True)
            torch.testing.assert_close(got_h, want_h, rtol=0, atol=2e-6, equal_nan=True)
            assert torch.isnan(got).any()
