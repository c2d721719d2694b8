"""Fused GRU recurrence for CPU inference (issue 16, inference cost).

A GRU layer on the CPU spends about as long on its gate arithmetic as on its matrix
products: per day, ``torch.nn.GRU`` runs ten separate elementwise kernels over the
batch (adds, two sigmoids, a tanh, the blend), each a pass of its own with its own
dispatch. Here the input projection of a whole time block stays one matrix product, the
hidden projection of each day stays one ``addmm`` (MKL), and the gate arithmetic of a day
is **one** pass in a small C kernel, compiled once per machine with the system C compiler
and vectorised by it (``-O3 -march=native -ffast-math``, glibc's vector ``expf``).

Per module and against ``nn.GRU`` in one run: ``benchmarks/results/inference_profile.md``;
outputs within 1e-6 of ``nn.GRU``'s (tests/test_fastgru.py).

The math is PyTorch's GRU (``linear_before_reset``)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = n + z * (h - n)

:func:`run_gru` is a drop-in for calling an ``nn.GRU``: it takes the fused path only
where it gives the same results, to float32 rounding (CPU, float32, no autograd, no
autocast, the module in eval mode, unidirectional with biases), and calls the module
otherwise. Without a working C compiler (or with ``KGML_GRID_FUSED_GRU=0``) everything
runs through ``nn.GRU``; :func:`status` says which and why.

The compiled library is cached under ``$KGML_GRID_KERNEL_CACHE`` (default
``~/.cache/kgml_grid/kernels``), named by a hash of the source, the compiler's version,
the flags and the CPU's feature flags, so that nodes of different CPUs sharing a home
directory each get their own build.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ENV_CACHE", "ENV_DISABLE", "load", "run_gru", "status", "unfused", "will_fuse"]

log = logging.getLogger(__name__)

#: Set to ``0`` to run every GRU through ``nn.GRU``.
ENV_DISABLE = "KGML_GRID_FUSED_GRU"
#: Folder of the compiled kernel (default ``~/.cache/kgml_grid/kernels``).
ENV_CACHE = "KGML_GRID_KERNEL_CACHE"

_SOURCE = r"""
#include <math.h>

/* One day of a GRU layer after its matrix products (PyTorch's gate order r, z, n).
   gi: [B, 3H] rows gi_row apart (input projection, b_ih included)
   gh: [B, 3H] contiguous (hidden projection, b_hh included)
   h:  [B, H] rows h_row apart (state before the day)
   out: [B, H] rows out_row apart (state after the day); may not alias h. */
static inline float sigmoid_(float x) {
    x = fminf(fmaxf(x, -80.0f), 80.0f); /* exp stays finite: -ffast-math assumes it */
    return 1.0f / (1.0f + expf(-x));
}

void kgml_gru_gates(const float *restrict gi, long gi_row, const float *restrict gh,
                    const float *restrict h, long h_row, float *restrict out, long out_row,
                    long B, long H) {
    for (long b = 0; b < B; ++b) {
        const float *restrict gib = gi + b * gi_row;
        const float *restrict ghb = gh + b * 3 * H;
        const float *restrict hb = h + b * h_row;
        float *restrict ob = out + b * out_row;
        for (long j = 0; j < H; ++j) {
            float r = sigmoid_(gib[j] + ghb[j]);
            float z = sigmoid_(gib[H + j] + ghb[H + j]);
            float a = gib[2 * H + j] + r * ghb[2 * H + j];
            a = fminf(fmaxf(a, -40.0f), 40.0f);
            float n = 1.0f - 2.0f / (1.0f + expf(2.0f * a)); /* tanh(a) */
            ob[j] = n + z * (hb[j] - n);
        }
    }
}
"""

# -ffast-math at compile time only: linked with it, gcc < 13 adds crtfastmath.o, whose
# constructor turns on flush-to-zero for the whole process (subnormals become 0 in numpy
# and torch too)
_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC")
_LINK = ("-shared",)
_lock = threading.Lock()
_state: dict[str, Any] = {}
_off = 0  # depth of unfused() blocks


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if Path(cc).is_file() else None)
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kgml_grid" / "kernels"


def _build(cc: str, target: Path) -> None:
    """Compile ``_SOURCE`` to ``target`` (atomically: a half-written library is never
    seen under ``target``'s name)."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        src = Path(tmp) / "gru_gates.c"
        src.write_text(_SOURCE)
        obj, lib = Path(tmp) / "gru_gates.o", Path(tmp) / target.name
        for cmd in (
            [cc, *_FLAGS, "-c", str(src), "-o", str(obj)],
            [cc, *_LINK, str(obj), "-o", str(lib), "-lm"],
        ):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if res.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-500:]}"
                )
        os.replace(lib, target)


def load() -> Any | None:
    """The compiled gate kernel (a ctypes function), building it on first use; None when
    it is disabled or cannot be built (:func:`status` says why). Thread-safe; the result
    is kept for the process."""
    with _lock:
        if "fn" in _state:
            return _state["fn"]
        fn, reason, path = None, "", None
        if os.environ.get(ENV_DISABLE, "1").strip().lower() in ("0", "false", "no", "off"):
            reason = f"disabled by {ENV_DISABLE}={os.environ[ENV_DISABLE]}"
        elif (cc := _compiler()) is None:
            reason = "no C compiler found (set CC, or install gcc or clang)"
        else:
            try:
                ver = subprocess.run(
                    [cc, "--version"], capture_output=True, text=True, timeout=30
                ).stdout
                key = hashlib.sha256(
                    "\0".join([_SOURCE, cc, ver, repr(_FLAGS), repr(_LINK), _cpu_flags()]).encode()
                ).hexdigest()[:16]
                path = _cache_dir() / f"gru_gates-{key}.so"
                if not path.is_file():
                    _build(cc, path)
                lib = ctypes.CDLL(str(path))
                fn = lib.kgml_gru_gates
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_long, ctypes.c_void_p, ctypes.c_long, ctypes.c_long,
                               ctypes.c_long]  # fmt: skip
                reason = f"compiled with {cc}"
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                fn, reason = None, f"building the kernel with {cc} failed: {e}"
        if fn is None:
            log.warning("fused CPU GRU off, nn.GRU used instead: %s", reason)
        _state.update(fn=fn, reason=reason, path=None if path is None else str(path))
        return fn


def status() -> dict[str, Any]:
    """Whether the fused kernel is in use on this process, why, and where it lives."""
    fn = load()
    return {"fused_gru": fn is not None, "reason": _state["reason"], "library": _state["path"]}


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Inside the block every GRU of this process runs through ``nn.GRU`` (benchmarks
    compare the two paths in one process)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def will_fuse(gru: nn.GRU, x: torch.Tensor) -> bool:
    """True when :func:`run_gru` takes the fused path for ``gru`` on ``x``."""
    return (
        not _off
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not gru.training
        and gru.bias
        and not gru.bidirectional
        and getattr(gru, "proj_size", 0) == 0
        and gru.weight_ih_l0.dtype == torch.float32
        and gru.weight_ih_l0.device.type == "cpu"
        and load() is not None
    )


def run_gru(
    gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gru(x, h0)``, through the fused kernel where :func:`will_fuse`.

    Parameters
    ----------
    gru : nn.GRU
    x : Tensor ``[B, T, I]`` (``batch_first``) or ``[T, B, I]``
    h0 : Tensor ``[L, B, H]``, optional
        Zeros when None, as for ``nn.GRU``.

    Returns
    -------
    output : Tensor, the layout of ``x`` with ``H`` features
    h_n : Tensor ``[L, B, H]``
    """
    if not will_fuse(gru, x) or x.ndim != 3 or x.shape[1 if gru.batch_first else 0] == 0:
        return gru(x, h0)
    # -ffast-math drops NaN semantics (the clamps turn NaN into a number): non-finite
    # inputs go through nn.GRU, which propagates them as the engine's NaN checks expect
    if not bool(torch.isfinite(x).all()) or (h0 is not None and not bool(torch.isfinite(h0).all())):
        return gru(x, h0)
    return _fused(gru, x, h0)


def _fused(
    gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    fn = load()
    assert fn is not None  # will_fuse checked it
    # time-major inside, as nn.GRU: each day's rows are contiguous, for the products too
    xt = x.transpose(0, 1) if gru.batch_first else x
    days, bsz, _ = xt.shape
    hid, layers = gru.hidden_size, gru.num_layers
    if h0 is None:
        h0 = x.new_zeros((layers, bsz, hid))
    elif h0.shape != (layers, bsz, hid):
        raise ValueError(f"h0 has shape {tuple(h0.shape)}, expected {(layers, bsz, hid)}")
    h0 = h0.to(torch.float32).contiguous()
    gh = x.new_empty((bsz, 3 * hid))
    gh_p, row = gh.data_ptr(), 3 * hid
    inp = xt.reshape(days * bsz, -1)
    finals = []
    for layer in range(layers):
        w_ih, w_hh = getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(gru, f"bias_ih_l{layer}"), getattr(gru, f"bias_hh_l{layer}")
        gi = torch.addmm(b_ih, inp, w_ih.t())  # the whole block at once: [T*B, 3H]
        out = x.new_empty((days, bsz, hid))
        gi_p, out_p = gi.data_ptr(), out.data_ptr()
        step_gi, step_out = bsz * 3 * hid * 4, bsz * hid * 4  # bytes per day (float32)
        w_hh_t = w_hh.t()
        h, h_p = h0[layer], h0[layer].data_ptr()
        for t in range(days):
            torch.addmm(b_hh, h, w_hh_t, out=gh)
            o_p = out_p + t * step_out
            fn(gi_p + t * step_gi, row, gh_p, h_p, hid, o_p, hid, bsz, hid)
            h, h_p = out[t], o_p
        finals.append(h)
        inp = out.view(days * bsz, hid)
    return (out.transpose(0, 1) if gru.batch_first else out), torch.stack(finals)
