"""The model loop of the upscaling (:mod:`kgml_grid.infer`): exact against one whole-chunk
model call, its pure planning, precisions, and the transfer scheduling of the CUDA path
(driven on CPU through a recording stand-in for the streams)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kgml_grid import infer
from kgml_grid.infer import (
    Call,
    HostStreams,
    batch_pixels_for_device,
    check_precision,
    plan_calls,
    precision_context,
    run_model,
    time_block_for,
)
from kgml_grid.model import ModelConfig, build_model, state_from_numpy, state_to_numpy

NF = 18


@pytest.fixture(scope="module", params=["kgml", "gru"])
def model(request):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=request.param, n_features=NF, hidden=16)).eval()


def _whole(model, xn, ye, state):
    """The reference: one model call per pixel over the whole chunk (0acc850's loop)."""
    with torch.inference_mode():
        st = None if state is None else state_from_numpy(state)
        out, st = model(torch.from_numpy(xn), st, year_end=torch.as_tensor(ye))
        ye_idx = np.flatnonzero(ye)
        return out["daily"].numpy(), out["yield"][:, ye_idx].numpy(), state_to_numpy(st)


def _inputs(n=23, days=70, ends=(9, 40, 69), seed=0):
    rng = np.random.default_rng(seed)
    xn = rng.standard_normal((n, days, NF)).astype("float32")
    ye = np.zeros(days, dtype=bool)
    ye[list(ends)] = True
    return xn, ye


@pytest.mark.parametrize(("batch", "block"), [(5, 7), (23, 9), (4, 1), (50, 70), (8, None)])
def test_time_blocks_and_batches_equal_one_whole_call(model, batch, block):
    xn, ye = _inputs()
    d0, y0, s0 = _whole(model, xn, ye, None)
    r = run_model(model, xn, ye, device="cpu", batch_pixels=batch, time_block=block)
    np.testing.assert_allclose(r.daily, d0, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r.yield_, y0, atol=1e-5, rtol=0)
    assert np.isfinite(r.yield_).all() and r.yield_.shape == (23, 3)
    assert sorted(r.state) == sorted(s0)
    for k, v in s0.items():
        np.testing.assert_allclose(r.state[k], v, atol=1e-5, rtol=1e-6, err_msg=k)
    # and the state it returns continues the series exactly
    xn2, ye2 = _inputs(days=30, ends=(29,), seed=1)
    d1, y1, _ = _whole(model, xn2, ye2, s0)
    r2 = run_model(model, xn2, ye2, r.state, device="cpu", batch_pixels=batch, time_block=block)
    np.testing.assert_allclose(r2.daily, d1, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r2.yield_, y1, atol=1e-5, rtol=0)


def test_no_pixels_and_no_year_end(model):
    xn, ye = _inputs(days=20, ends=())
    r = run_model(model, xn[:0], ye, device="cpu", batch_pixels=8)
    assert r.daily.shape == (0, 20, 4) and r.yield_.shape == (0, 0) and r.calls == 0
    r = run_model(model, xn, ye, device="cpu", batch_pixels=8, time_block=6)
    assert r.yield_.shape == (23, 0) and r.calls == 3 * 4


def test_plan_calls_cover_every_pixel_day_once_batch_major():
    calls = plan_calls(10, 25, batch_pixels=4, time_block=10)
    assert calls[:3] == [Call(0, 3, 0, 10), Call(0, 3, 10, 20), Call(0, 3, 20, 25)]
    assert sorted({c.i1 - c.i0 for c in calls}) == [3, 4]  # 3 equal-ish batches, not 4 + 4 + 2
    assert [(c.i0, c.i1) for c in plan_calls(150, 5, batch_pixels=144, time_block=5)] == [
        (0, 75), (75, 150)]  # fmt: skip
    assert plan_calls(0, 5, batch_pixels=4, time_block=5) == []
    seen = np.zeros((10, 25), dtype=int)
    for c in calls:
        seen[c.i0 : c.i1, c.t0 : c.t1] += 1
    assert (seen == 1).all()
    assert [c.first for c in calls].count(True) == 3  # one per batch
    with pytest.raises(ValueError, match="batch_pixels must be >= 1, got 0"):
        plan_calls(10, 25, batch_pixels=0, time_block=10)
    with pytest.raises(ValueError, match="time_block must be >= 1 day, got 0"):
        plan_calls(10, 25, batch_pixels=4, time_block=0)


def test_device_rules():
    # CPU: ~16k pixel-days per call, 8..32 days; never past the chunk
    assert time_block_for(144, 365, "cpu") == 32
    assert time_block_for(1024, 365, "cpu") == 16
    assert time_block_for(100_000, 365, "cpu") == 8
    assert time_block_for(144, 20, "cpu") == 20
    # CUDA: the whole chunk unless the activation budget needs blocks
    assert time_block_for(1000, 365, "cuda") == 365
    tb = time_block_for(infer.CUDA_BATCH_PIXELS, 365, "cuda")
    assert 1 <= tb < 365
    assert (
        tb * infer.CUDA_BATCH_PIXELS * infer._ACT_BYTES_PER_PIXEL_DAY
        <= infer.CUDA_ACTIVATION_BUDGET
    )
    assert batch_pixels_for_device(144, "cpu") == 144
    assert batch_pixels_for_device(144, "cuda:0") == infer.CUDA_BATCH_PIXELS
    assert batch_pixels_for_device(10**6, "cuda") == 10**6


def test_precision_checks():
    assert check_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision 'fp16' is not one of fp32, tf32, bf16"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="precision 'tf32' needs a CUDA device"):
        check_precision("tf32", "cpu")
    with pytest.raises(ValueError, match="precision 'tf32' needs a CUDA device"):
        run_model(torch.nn.Identity(), np.zeros((1, 2, NF), "float32"), np.zeros(2, bool),
                  device="cpu", batch_pixels=1, precision="tf32")  # fmt: skip


def test_bad_inputs_are_refused(model):
    xn, ye = _inputs()
    with pytest.raises(ValueError, match=r"year_end has shape \(69,\), expected \(70,\)"):
        run_model(model, xn, ye[:-1], device="cpu", batch_pixels=4)
    with pytest.raises(ValueError, match=r"xn must be \[pixels, days, features\]"):
        run_model(model, xn[0], ye, device="cpu", batch_pixels=4)
    _, _, s0 = _whole(model, xn, ye, None)
    with pytest.raises(ValueError, match="have 22 pixels, the features 23"):
        run_model(model, xn, ye, {k: v[:22] for k, v in s0.items()}, device="cpu", batch_pixels=4)


def test_bf16_on_cpu_deviates_a_little(model):
    xn, ye = _inputs()
    ref = run_model(model, xn, ye, device="cpu", batch_pixels=8)
    r = run_model(model, xn, ye, device="cpu", batch_pixels=8, precision="bf16")
    dev = float(np.abs(r.daily - ref.daily).max())
    assert 0 < dev < 0.1, dev  # really in bf16 (not exact), and close (standardised units)
    assert all(v.dtype == np.float32 for v in r.state.values())


def test_tf32_context_restores_the_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with precision_context("tf32", "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


class RecordingStreams(HostStreams):
    """The CUDA path's transfers as a log (no device): what is issued, in which order."""

    def __init__(self):
        self.log: list[tuple] = []
        self.n_in = 0
        self.n_out = 0

    def copy_in(self, x, slot):
        k = self.n_in
        self.n_in += 1
        self.log.append(("in", k, slot))
        t, _ = super().copy_in(x, slot)
        return t, ("in", k)

    def compute_waits(self, token):
        self.log.append(("compute_waits", token[1]))

    def copy_out(self, tensors, slot):
        k = self.n_out
        self.n_out += 1
        self.log.append(("out", k, slot))
        outs, _ = super().copy_out([t.clone() for t in tensors], slot)
        return outs, ("out", k)

    def host_waits(self, token):
        self.log.append(("host_waits", token[1]))


class LoggingModel(torch.nn.Module):
    def __init__(self, inner, log):
        super().__init__()
        self.inner, self.log, self.k = inner, log, 0

    def forward(self, x, state=None, *, year_end=None):
        self.log.append(("compute", self.k))
        self.k += 1
        return self.inner(x, state, year_end=year_end)


def test_transfers_overlap_compute_in_order(model):
    """Call k+1's input copy is issued before call k computes; call k's outputs are read
    (host waits) only after call k+1 was issued; slots alternate; results unchanged."""
    xn, ye = _inputs()
    io = RecordingStreams()
    lm = LoggingModel(model, io.log)
    r = run_model(lm, xn, ye, device="cpu", batch_pixels=12, time_block=30, streams=io)
    ref = run_model(model, xn, ye, device="cpu", batch_pixels=12, time_block=30)
    np.testing.assert_array_equal(r.daily, ref.daily)
    n = r.calls
    assert n == 2 * 3
    pos = {e: i for i, e in enumerate(io.log)}
    for k in range(n):
        assert pos[("compute_waits", k)] < pos[("compute", k)]  # compute waits on its copy
        if k + 1 < n:
            assert pos[("in", k + 1, (k + 1) % 2)] < pos[("compute", k)]  # prefetch overlaps
            assert pos[("host_waits", k)] > pos[("compute", k + 1)]  # read while k+1 runs
        assert pos[("out", k, k % 2)] > pos[("compute", k)]
    # a slot is refilled only after the host has read what last used it
    for k in range(2, n):
        assert pos[("host_waits", k - 2)] < pos[("out", k, k % 2)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CudaStreams needs a CUDA device")
def test_cuda_path_equals_cpu(model):  # pragma: no cover - no GPU on the CI machines
    xn, ye = _inputs(n=300)
    ref = run_model(model, xn, ye, device="cpu", batch_pixels=64)
    gm = build_model(model.config).eval().cuda()
    gm.load_state_dict(model.state_dict())
    r = run_model(gm, xn, ye, device="cuda", batch_pixels=128, time_block=25)
    np.testing.assert_allclose(r.daily, ref.daily, atol=1e-4)
    for p in ("tf32", "bf16"):
        rp = run_model(gm, xn, ye, device="cuda", batch_pixels=128, precision=p)
        assert np.abs(rp.daily - ref.daily).max() < 0.1


def test_gpu_bench_script_runs_on_cpu(tiny_world, tmp_path):
    """``benchmarks/gpu_bench.sh --device cpu`` (what a GPU machine runs, on the CPU):
    compute limits at fp32 and bf16 with bf16's deviation, in one JSON file."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_bench.json"
    r = subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu_bench.sh"), "--device", "cpu",
         "--world", str(tiny_world.catalog), "--start", "2010-01-01", "--end", "2010-02-28",
         "--no-end-to-end", "--work", str(tmp_path / "work"), "--out", str(out)],
        env={**__import__("os").environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    cl = res["compute_limit"]
    assert sorted(cl) == ["bf16", "fp32"]
    assert cl["fp32"]["pixel_days"] == res["shape"]["crop_pixels"] * 59
    assert cl["fp32"]["pixel_days_per_s"] > 0
    assert 0 < cl["bf16"]["max_abs_deviation_from_fp32"] < 0.1
    assert res["machine"]["device"] == "cpu" and "command" in res


def test_upscale_refuses_tf32_on_cpu_before_anything(tmp_path):
    from kgml_grid.execute import SerialExecutor, upscale

    out = tmp_path / "o.zarr"
    with pytest.raises(ValueError, match="precision 'tf32' needs a CUDA device"):
        upscale(tmp_path / "no_catalog.yaml", tmp_path / "no_model", out, device="cpu",
                precision="tf32", cluster="serial")  # fmt: skip
    assert not out.exists()
    with pytest.raises(ValueError, match="precision 'half' is not one of fp32, tf32, bf16"):
        SerialExecutor(precision="half")
