"""The model loop of the upscaling: normalised features of many pixels in, daily outputs,
yields and the carried state out (issue 16 inference cost, issue 13 GPU-ready path).

:func:`kgml_grid.execute.compute_block` (one block of the engine) and
:func:`kgml_grid.execute.direct_run` (the in-memory reference) both call
:func:`run_model`; the compute limit of the benchmark (:mod:`kgml_grid.bench.limits`)
times the same function.

How the work is cut (pure: :func:`plan_calls`)
----------------------------------------------
The pixels go through the model in **batches** of ``batch_pixels``; each batch runs
over the block's days in **time blocks** of ``time_block`` days with the model's state
carried from one to the next. The models are stateful and causal, so a batch in time
blocks gives the same outputs as in one call (to float32 rounding; yield included).

* **CPU**: short time blocks (:func:`time_block_for`, 8 to 32 days, about 16k
  pixel-days per call). One call over a whole 365-day chunk allocates every layer's
  sequence at once (tens of MB each, past the allocator's mmap threshold, fresh pages
  on every call) and streams them through memory; short blocks reuse the same small
  buffers from cache. Measured 1.5x more pixel-days/s at the engine's batch sizes
  (``benchmarks/results/inference_speed.md``).
  Each GRU layer runs through :func:`kgml_grid.fastgru.run_gru` (a day's gate arithmetic
  in one compiled pass; ``nn.GRU`` where no C compiler is found).
* **CUDA**: large batches (:data:`CUDA_BATCH_PIXELS`; the GRU is op-overhead bound at
  small ones), time blocks only as long as the activation budget needs, the inputs
  staged through **pinned host buffers** and copied on a **side stream** so that the
  next call's host-to-device copy overlaps this call's compute, and the outputs copied
  back the same way (:class:`CudaStreams`). On a CPU the same loop runs with
  :class:`HostStreams` (no copies), which is how the scheduling is tested here.

Precision (:func:`precision_context`): ``fp32`` (default, exact), ``tf32`` (CUDA:
TensorFloat-32 matmuls and cuDNN), ``bf16`` (autocast to bfloat16: CUDA, or a CPU with
AVX-512-BF16 / AMX). The state stays float32 between calls. Their deviation from
``fp32`` is measured by ``benchmarks/gpu_bench.sh`` (:mod:`kgml_grid.bench.gpu`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kgml_grid.model import DAILY_TARGETS

__all__ = [
    "CPU_CALL_PIXEL_DAYS",
    "CUDA_ACTIVATION_BUDGET",
    "CUDA_BATCH_PIXELS",
    "PRECISIONS",
    "Call",
    "CudaStreams",
    "HostStreams",
    "InferenceResult",
    "batch_pixels_for_device",
    "check_precision",
    "plan_calls",
    "precision_context",
    "run_model",
    "time_block_for",
]

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
#: Pixel-days per model call on CPU that the time block aims at (batch x days).
CPU_CALL_PIXEL_DAYS = 16384
#: Shortest and longest CPU time block (days).
CPU_TIME_BLOCK = (8, 32)
#: Pixels per batch on a CUDA device (at least; the plan's batch when larger).
CUDA_BATCH_PIXELS = 131072
#: Activation memory of one CUDA call (bytes): bounds the time block of a large batch.
CUDA_ACTIVATION_BUDGET = 8 * 2**30
#: Peak activation bytes per pixel-day of one call (float32, hidden 64; the plan's figure).
_ACT_BYTES_PER_PIXEL_DAY = 2600


# --------------------------------------------------------------------------------------
# planning (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One model call: pixels ``[i0, i1)`` of the block over days ``[t0, t1)``."""

    i0: int
    i1: int
    t0: int
    t1: int

    @property
    def first(self) -> bool:
        """The batch's first time block (its state comes from the block's input state)."""
        return self.t0 == 0


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def batch_pixels_for_device(planned: int, device: torch.device | str) -> int:
    """Pixels per batch on ``device``: the plan's on CPU, at least
    :data:`CUDA_BATCH_PIXELS` on CUDA (a GPU needs 1e5 pixels to fill it)."""
    planned = max(1, int(planned))
    return max(planned, CUDA_BATCH_PIXELS) if _device_type(device) == "cuda" else planned


def time_block_for(batch: int, days: int, device: torch.device | str) -> int:
    """Days per model call for a batch of ``batch`` pixels over ``days`` days.

    CPU: about :data:`CPU_CALL_PIXEL_DAYS` pixel-days per call, clamped to
    :data:`CPU_TIME_BLOCK`. CUDA: the whole chunk unless the activations of one call
    would pass :data:`CUDA_ACTIVATION_BUDGET`.
    """
    days, batch = max(1, int(days)), max(1, int(batch))
    if _device_type(device) == "cuda":
        fit = CUDA_ACTIVATION_BUDGET // (batch * _ACT_BYTES_PER_PIXEL_DAY)
        return int(min(days, max(1, fit)))
    lo, hi = CPU_TIME_BLOCK
    return int(min(days, max(lo, min(hi, CPU_CALL_PIXEL_DAYS // batch))))


def plan_calls(n: int, days: int, *, batch_pixels: int, time_block: int) -> list[Call]:
    """The model calls over ``n`` pixels x ``days`` days, batch by batch, each batch's
    time blocks in order (its state is carried from one to the next). The batches are
    as few as ``batch_pixels`` allows and of equal size (to one pixel).

    Raises
    ------
    ValueError
        For a batch or time block below 1.
    """
    if int(batch_pixels) < 1:
        raise ValueError(f"batch_pixels must be >= 1, got {batch_pixels!r}")
    if int(time_block) < 1:
        raise ValueError(f"time_block must be >= 1 day, got {time_block!r}")
    # as few batches as batch_pixels allows, of equal size: a small remainder batch
    # (e.g. 6 of 150 pixels) would pay a whole batch's per-call overhead
    n_batches = -(-n // int(batch_pixels))
    edges = [round(k * n / n_batches) for k in range(n_batches + 1)] if n else [0]
    return [
        Call(i0, i1, t, min(t + time_block, days))
        for i0, i1 in itertools.pairwise(edges)
        for t in range(0, days, time_block)
    ]


def check_precision(precision: str, device: torch.device | str | None = None) -> str:
    """``precision`` if it is known (and usable on ``device`` when given).

    Raises
    ------
    ValueError
        Naming the value and the choices; ``tf32`` on a device other than CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device is not None and precision == "tf32" and _device_type(device) != "cuda":
        raise ValueError(
            f"precision 'tf32' needs a CUDA device (TensorFloat-32 is an NVIDIA tensor-core "
            f"format), got device {str(device)!r}; use fp32 or bf16 there"
        )
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the model at ``precision`` on ``device`` inside the block; restores the
    global TF32 flags afterwards."""
    check_precision(precision, device)
    dev_type = _device_type(device)
    if precision == "bf16":
        with torch.autocast(device_type=dev_type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32":
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


# --------------------------------------------------------------------------------------
# host <-> device transfers
# --------------------------------------------------------------------------------------


class HostStreams:
    """Transfers when the model runs on the host: none (tensors are numpy views).

    The interface :func:`run_model` drives; :class:`CudaStreams` implements it with a
    side stream, pinned buffers and events.
    """

    def copy_in(self, x: np.ndarray, slot: int) -> tuple[torch.Tensor, Any]:
        """Stage ``x`` for the model; returns the model's tensor and a completion token."""
        return torch.from_numpy(np.ascontiguousarray(x)), None

    def compute_waits(self, token: Any) -> None:
        """Make the model's work wait for a staged input."""

    def copy_out(self, tensors: Sequence[torch.Tensor], slot: int) -> tuple[list[Any], Any]:
        """Start copying a call's outputs to the host; returns them and a token."""
        return list(tensors), None

    def host_waits(self, token: Any) -> None:
        """Block the host until the outputs of ``token`` are readable."""

    def to_device(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """A state slice on the model's device (float32)."""
        return {k: torch.from_numpy(np.ascontiguousarray(v, dtype="float32")) for k, v in arrays.items()}  # fmt: skip


class CudaStreams(HostStreams):
    """Pinned host buffers and a side stream: the next call's host-to-device copy and
    the last call's device-to-host copy overlap the model's compute.

    Two buffer slots in each direction; a slot is refilled only after the copy that
    last used it has completed (its event).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._in: dict[int, torch.Tensor] = {}
        self._in_done: dict[int, Any] = {}
        self._out: dict[tuple[int, int], torch.Tensor] = {}

    def _pinned(self, store: dict[Any, torch.Tensor], key: Any, like: torch.Size, dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
        buf = store.get(key)
        if buf is None or buf.numel() < int(np.prod(like)):
            buf = torch.empty(int(np.prod(like)), dtype=dtype, pin_memory=True)
            store[key] = buf
        return buf[: int(np.prod(like))].view(like)

    def copy_in(self, x: np.ndarray, slot: int) -> tuple[torch.Tensor, Any]:
        done = self._in_done.get(slot)
        if done is not None:
            done.synchronize()  # the slot's previous copy has left the buffer
        host = self._pinned(self._in, slot, torch.Size(x.shape), torch.float32)
        host.copy_(torch.from_numpy(x))
        with torch.cuda.stream(self.stream):
            dev = host.to(self.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        dev.record_stream(torch.cuda.current_stream(self.device))
        self._in_done[slot] = ev
        return dev, ev

    def compute_waits(self, token: Any) -> None:
        torch.cuda.current_stream(self.device).wait_event(token)

    def copy_out(self, tensors: Sequence[torch.Tensor], slot: int) -> tuple[list[Any], Any]:
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        outs = []
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            for j, t in enumerate(tensors):
                t.record_stream(self.stream)
                host = self._pinned(self._out, (slot, j), t.shape, t.dtype)
                host.copy_(t, non_blocking=True)
                outs.append(host)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        return outs, ev

    def host_waits(self, token: Any) -> None:
        token.synchronize()

    def to_device(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in super().to_device(arrays).items()}


def streams_for(device: torch.device | str) -> HostStreams:
    """:class:`CudaStreams` on a CUDA device, else :class:`HostStreams`."""
    dev = torch.device(device)
    return CudaStreams(dev) if dev.type == "cuda" else HostStreams()


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------


@dataclass
class InferenceResult:
    """Standardised outputs of :func:`run_model`.

    Attributes
    ----------
    daily : ndarray ``[n, T, 4]`` float32
        (ra, rh, nee, gpp), :data:`kgml_grid.model.DAILY_TARGETS` order.
    yield_ : ndarray ``[n, Y]`` float32
        The yield at each year end of ``year_end`` (``Y`` of them).
    state : dict of ndarray, batch first
        The model state after the last day (:func:`kgml_grid.model.state_to_numpy`).
    calls : int
        Model calls made.
    """

    daily: np.ndarray
    yield_: np.ndarray
    state: dict[str, np.ndarray]
    calls: int


def run_model(
    model: torch.nn.Module,
    xn: np.ndarray,
    year_end: np.ndarray,
    state: Mapping[str, np.ndarray] | None = None,
    *,
    device: torch.device | str,
    batch_pixels: int,
    time_block: int | None = None,
    precision: str = "fp32",
    streams: HostStreams | None = None,
) -> InferenceResult:
    """The model over ``xn`` ``[n, T, F]`` (normalised float32), state carried in and out.

    Parameters
    ----------
    model : KGMLModel or GRUBaseline
        In eval mode, on ``device``.
    year_end : bool array ``[T]``
        True on each season's last day (:func:`kgml_grid.features.year_end_mask`).
    state : dict of ndarray ``[n, ...]``, optional
        The state after the previous chunk (None: series start).
    batch_pixels : int
        Pixels per batch (see :func:`batch_pixels_for_device`).
    time_block : int, optional
        Days per call; default :func:`time_block_for` of the batch and device.
    precision : {'fp32', 'tf32', 'bf16'}
    streams : HostStreams, optional
        Transfer strategy (default :func:`streams_for` the device; tests pass a fake).

    Raises
    ------
    ValueError
        For ``xn`` that is not ``[n, T, F]``, a ``year_end`` or ``state`` of another
        length, or an unknown precision.
    """
    dev = torch.device(device)
    check_precision(precision, dev)
    if xn.ndim != 3:
        raise ValueError(f"xn must be [pixels, days, features], got shape {xn.shape}")
    n, days, _ = xn.shape
    ye = np.asarray(year_end, dtype=bool)
    if ye.shape != (days,):
        raise ValueError(f"year_end has shape {ye.shape}, expected ({days},) for {days} days")
    if state is not None:
        bad = {k: v.shape[0] for k, v in state.items() if v.shape[0] != n}
        if bad:
            raise ValueError(f"state entries {sorted(bad)} have {next(iter(bad.values()))} "
                             f"pixels, the features {n}")  # fmt: skip
    bsz = max(1, int(batch_pixels))
    n_batches = max(1, -(-n // bsz))
    tb = int(time_block) if time_block else time_block_for(-(-max(n, 1) // n_batches), days, dev)
    calls = plan_calls(n, days, batch_pixels=bsz, time_block=tb)
    ye_idx = np.flatnonzero(ye)
    ye_pos = np.cumsum(ye) - ye  # index among year ends of each day's season end
    daily = np.empty((n, days, len(DAILY_TARGETS)), dtype="float32")
    yld = np.full((n, ye_idx.size), np.nan, dtype="float32")
    new_state: dict[str, np.ndarray] = {}
    io = streams if streams is not None else streams_for(dev)
    ye_dev = torch.as_tensor(ye, device=dev)
    pending: list[tuple[Call, list[Any], Any]] = []

    def drain() -> None:
        c, outs, token = pending.pop(0)
        io.host_waits(token)
        daily[c.i0 : c.i1, c.t0 : c.t1] = outs[0].float().numpy()
        ends = ye_idx[(ye_idx >= c.t0) & (ye_idx < c.t1)]
        if ends.size:
            yld[c.i0 : c.i1, ye_pos[ends]] = outs[1].float().numpy()
        if len(outs) > 2:
            for k, v in zip(sorted(st_keys), outs[2:], strict=True):
                new_state.setdefault(k, np.empty((n, *v.shape[1:]), dtype="float32"))[c.i0 : c.i1] = v.float().numpy()  # fmt: skip

    st_keys: list[str] = []
    st: dict[str, torch.Tensor] | None = None
    with torch.inference_mode(), precision_context(precision, dev):
        staged = io.copy_in(xn[calls[0].i0 : calls[0].i1, calls[0].t0 : calls[0].t1], 0) if calls else None  # fmt: skip
        for k, c in enumerate(calls):
            assert staged is not None
            xb, token = staged
            if k + 1 < len(calls):  # issued before this call's compute: the copy overlaps it
                nx = calls[k + 1]
                staged = io.copy_in(xn[nx.i0 : nx.i1, nx.t0 : nx.t1], (k + 1) % 2)
            if c.first:
                st = None if state is None else io.to_device({kk: v[c.i0 : c.i1] for kk, v in state.items()})  # fmt: skip
            io.compute_waits(token)
            out, st = model(xb, st, year_end=ye_dev[c.t0 : c.t1])
            if precision == "bf16":
                st = {kk: v.float() for kk, v in st.items()}
            ends = ye_idx[(ye_idx >= c.t0) & (ye_idx < c.t1)]
            tensors = [out["daily"], out["yield"][:, torch.as_tensor(ends - c.t0, device=dev)]]
            if c.t1 == days:  # the batch's last block: its state goes back too
                st_keys = list(st)
                tensors += [st[kk] for kk in sorted(st_keys)]
            if pending:  # the previous call's outputs: read while this call's copy runs
                drain()
            pending.append((c, *io.copy_out(tensors, k % 2)))
        while pending:
            drain()
    return InferenceResult(daily, yld, new_state, len(calls))
