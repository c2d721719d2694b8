"""Fused GRU recurrence for CPU inference (issue 16, inference cost).

A GRU layer on the CPU spends about as long on its gate arithmetic as on its matrix
products: per day, ``torch.nn.GRU`` runs a small matrix product and then ten separate
elementwise kernels over the batch (adds, two sigmoids, a tanh, the blend), each a pass
of its own through memory with its own dispatch. Here the input projection of a whole
time block stays one matrix product (MKL), and the rest of the layer, all days, is **one**
call of a small C kernel, compiled once per machine with the system C compiler
(``-O3 -march=native``, GCC vector extensions: AVX-512, AVX2, SSE or NEON as the CPU has):
for a few rows at a time it accumulates the day's hidden projection in registers and feeds
it straight to the gates, and the rows' state stays in L1 from one day to the next.

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
import math
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
#include <string.h>

/* A whole GRU layer after its input projection, one call (PyTorch's gate order r, z, n;
   linear_before_reset). For each block of R rows the state stays in L1 across the days
   and the hidden projection h W_hh^T is accumulated in registers and fed straight to the
   gates: no [B, 3H] round trip through memory, no per-day call from Python.
   gi:  input projection incl. b_ih, element (t, b, g*H + j) at gi[t*gi_t + b*gi_b + g*H + j]
   wt:  W_hh^T, [H, 3H] contiguous;  bhh: [3H]
   h0:  state before day 0, row b at h0 + b*h0_b
   out: state after day t, row b at out + t*out_t + b*out_b (may not alias gi or h0)
   Plain IEEE arithmetic (no -ffast-math): exp is a Cephes-style polynomial. */

#if defined(__AVX512F__)
#define VEC 16
#define RMAX 8
#elif defined(__AVX__)
#define VEC 8
#define RMAX 4
#else
#define VEC 4
#define RMAX 4
#endif

typedef float vf __attribute__((vector_size(VEC * 4)));
typedef int vi __attribute__((vector_size(VEC * 4)));
typedef unsigned vu __attribute__((vector_size(VEC * 4)));
typedef float vfu __attribute__((vector_size(VEC * 4), aligned(4))); /* unaligned access */

static inline vf ld(const float *p) { return *(const vfu *)p; }
static inline void st(float *p, vf v) { *(vfu *)p = v; }
static inline vf splat(float s) { vf v = {0}; return v + s; }
static inline vf vclamp(vf x, float lo, float hi) {
    vi m = x < lo;
    x = (vf)((((vi)x) & ~m) | (((vi)splat(lo)) & m));
    m = x > hi;
    return (vf)((((vi)x) & ~m) | (((vi)splat(hi)) & m));
}
/* exp(x) for |x| <= 88 (Cephes expf: range reduction by ln 2 in two parts, degree-5
   polynomial, 2^n through the exponent bits) */
static inline vf vexp(vf x) {
    vf m = x * 1.44269504088896341f + 12582912.0f; /* round(x / ln 2) in the low bits */
    vi n = (vi)m - 0x4B400000;
    vf fn = m - 12582912.0f;
    vf f = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    vf p = splat(1.9875691500E-4f);
    p = p * f + 1.3981999507E-3f;
    p = p * f + 8.3334519073E-3f;
    p = p * f + 4.1665795894E-2f;
    p = p * f + 1.6666665459E-1f;
    p = p * f + 5.0000001201E-1f;
    vf y = p * (f * f) + f + 1.0f;
    return (vf)((vu)y + ((vu)n << 23)); /* unsigned: shifting a negative int is undefined */
}
static inline float sexp(float x) {
    float m = x * 1.44269504088896341f + 12582912.0f;
    int mi;
    unsigned yi;
    memcpy(&mi, &m, 4);
    int n = mi - 0x4B400000;
    float fn = m - 12582912.0f;
    float f = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * f + 1.3981999507E-3f;
    p = p * f + 8.3334519073E-3f;
    p = p * f + 4.1665795894E-2f;
    p = p * f + 1.6666665459E-1f;
    p = p * f + 5.0000001201E-1f;
    float y = p * (f * f) + f + 1.0f;
    memcpy(&yi, &y, 4);
    yi += (unsigned)n << 23;
    memcpy(&y, &yi, 4);
    return y;
}
static inline float sclamp(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* rows b0 .. b0+nr-1 of one day: hp[i] their state before, op[i] after, gp[i] their gi */
static inline __attribute__((always_inline)) void rows_day(
    int nr, const float *const *hp, float *const *op, const float *const *gp,
    const float *wt, const float *bhh, long H) {
    const long H3 = 3 * H, hv = H - H % VEC;
    for (long j = 0; j < hv; j += VEC) {
        vf ar[RMAX], az[RMAX], an[RMAX];
        const vf br = ld(bhh + j), bz = ld(bhh + H + j), bn = ld(bhh + 2 * H + j);
        for (int i = 0; i < nr; ++i) { ar[i] = br; az[i] = bz; an[i] = bn; }
        for (long k = 0; k < H; ++k) {
            const float *w = wt + k * H3 + j;
            const vf wr = ld(w), wz = ld(w + H), wn = ld(w + 2 * H);
            for (int i = 0; i < nr; ++i) {
                const float hk = hp[i][k];
                ar[i] += hk * wr; az[i] += hk * wz; an[i] += hk * wn;
            }
        }
        for (int i = 0; i < nr; ++i) {
            const float *g = gp[i] + j;
            vf r = 1.0f / (1.0f + vexp(-vclamp(ld(g) + ar[i], -80.0f, 80.0f)));
            vf z = 1.0f / (1.0f + vexp(-vclamp(ld(g + H) + az[i], -80.0f, 80.0f)));
            vf a = vclamp(ld(g + 2 * H) + r * an[i], -40.0f, 40.0f);
            vf nn = 1.0f - 2.0f / (1.0f + vexp(a + a));
            st(op[i] + j, nn + z * (ld(hp[i] + j) - nn));
        }
    }
    for (long j = hv; j < H; ++j) { /* columns past the last whole vector */
        for (int i = 0; i < nr; ++i) {
            float sr = bhh[j], sz = bhh[H + j], sn = bhh[2 * H + j];
            for (long k = 0; k < H; ++k) {
                const float hk = hp[i][k], *w = wt + k * H3 + j;
                sr += hk * w[0]; sz += hk * w[H]; sn += hk * w[2 * H];
            }
            const float *g = gp[i] + j;
            float r = 1.0f / (1.0f + sexp(-sclamp(g[0] + sr, -80.0f, 80.0f)));
            float z = 1.0f / (1.0f + sexp(-sclamp(g[H] + sz, -80.0f, 80.0f)));
            float a = sclamp(g[2 * H] + r * sn, -40.0f, 40.0f);
            float nn = 1.0f - 2.0f / (1.0f + sexp(a + a));
            op[i][j] = nn + z * (hp[i][j] - nn);
        }
    }
}

static inline __attribute__((always_inline)) void rows_all_days(
    int nr, long b0, const float *gi, long gi_t, long gi_b, const float *wt,
    const float *bhh, const float *h0, long h0_b, float *out, long out_t, long out_b,
    long T, long H) {
    const float *hp[RMAX], *gp[RMAX];
    float *op[RMAX];
    for (long t = 0; t < T; ++t) {
        for (int i = 0; i < nr; ++i) {
            long b = b0 + i;
            hp[i] = t ? out + (t - 1) * out_t + b * out_b : h0 + b * h0_b;
            op[i] = out + t * out_t + b * out_b;
            gp[i] = gi + t * gi_t + b * gi_b;
        }
        rows_day(nr, hp, op, gp, wt, bhh, H);
    }
}

void kgml_gru_layer(const float *gi, long gi_t, long gi_b, const float *wt, const float *bhh,
                    const float *h0, long h0_b, float *out, long out_t, long out_b,
                    long T, long B, long H) {
    long b0 = 0;
    for (; b0 + RMAX <= B; b0 += RMAX)
        rows_all_days(RMAX, b0, gi, gi_t, gi_b, wt, bhh, h0, h0_b, out, out_t, out_b, T, H);
    for (; b0 < B; ++b0)
        rows_all_days(1, b0, gi, gi_t, gi_b, wt, bhh, h0, h0_b, out, out_t, out_b, T, H);
}
"""

# no -ffast-math: linked with it, gcc < 13 adds crtfastmath.o, whose constructor turns on
# flush-to-zero for the whole process; the kernel's exp is written out instead
_FLAGS = ("-O3", "-march=native", "-fPIC")
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
                fn = lib.kgml_gru_layer
                fn.restype = None
                p_, l_ = ctypes.c_void_p, ctypes.c_long
                fn.argtypes = [p_, l_, l_, p_, p_, p_, l_, p_, l_, l_, l_, l_, l_]
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
    # the kernel's exp builds 2^n in the exponent bits, which can turn NaN into a number:
    # non-finite inputs go through nn.GRU, which propagates them as the engine's NaN
    # checks expect
    if not _all_finite(x) or (h0 is not None and not _all_finite(h0)):
        return gru(x, h0)
    return _fused(gru, x, h0)


def _all_finite(t: torch.Tensor) -> bool:
    # a sum is finite only if every term is (NaN and +-inf propagate; an overflow only
    # sends a finite block to nn.GRU): ~30x cheaper than isfinite(t).all() on one thread
    return math.isfinite(float(t.sum()))


def _fused(
    gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    fn = load()
    assert fn is not None  # will_fuse checked it
    # either layout as it comes: the kernel takes strides, so nothing is transposed
    if gru.batch_first:
        bsz, days = x.shape[:2]
    else:
        days, bsz = x.shape[:2]
    hid, layers = gru.hidden_size, gru.num_layers
    if h0 is None:
        h0 = x.new_zeros((layers, bsz, hid))
    elif h0.shape != (layers, bsz, hid):
        raise ValueError(f"h0 has shape {tuple(h0.shape)}, expected {(layers, bsz, hid)}")
    h0 = h0.to(torch.float32).contiguous()
    # element strides of (day, row) in the [., ., 3H] projections and [., ., H] outputs
    (g_t, g_b), (o_t, o_b) = (
        ((3 * hid, days * 3 * hid), (hid, days * hid))
        if gru.batch_first
        else ((bsz * 3 * hid, 3 * hid), (bsz * hid, hid))
    )
    inp = x.reshape(bsz * days, -1)
    finals = []
    for layer in range(layers):
        w_ih, w_hh = getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(gru, f"bias_ih_l{layer}"), getattr(gru, f"bias_hh_l{layer}")
        gi = torch.addmm(b_ih, inp, w_ih.t())  # the whole block at once
        w_hh_t = w_hh.t().contiguous()
        out = x.new_empty((*x.shape[:2], hid))
        fn(gi.data_ptr(), g_t, g_b, w_hh_t.data_ptr(), b_hh.data_ptr(), h0[layer].data_ptr(),
           hid, out.data_ptr(), o_t, o_b, days, bsz, hid)  # fmt: skip
        finals.append(out[:, -1] if gru.batch_first else out[-1])
        inp = out.view(bsz * days, hid)
    return out, torch.stack(finals)
