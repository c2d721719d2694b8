"""Instruments: the in-worker RSS sampler and task timers (run on the workers with
``client.run``), the workers' chunk-cache counters, and the machine description."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import threading
import time as _time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MIB",
    "cache_stats",
    "install_timers",
    "machine_description",
    "mem_peak",
    "mem_reset",
    "mem_sampler_start",
    "read_timers",
    "sum_timers",
]

MIB = 2**20

_MEM: dict[str, Any] = {"peak": 0, "thread": None}
_MEM_LOCK = threading.Lock()


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def mem_sampler_start(interval: float = 0.02) -> int:
    """Start (once) a thread sampling this process's RSS every ``interval`` seconds.

    Run on the workers with ``client.run``. Returns the current RSS (bytes).
    """
    with _MEM_LOCK:
        if _MEM["thread"] is None:

            def loop() -> None:
                while True:
                    r = _rss()
                    with _MEM_LOCK:
                        _MEM["peak"] = max(_MEM["peak"], r)
                    _time.sleep(interval)

            th = threading.Thread(target=loop, name="kgml-bench-rss", daemon=True)
            _MEM["thread"] = th
            th.start()
        now = _rss()
        _MEM["peak"] = max(_MEM["peak"], now)
        return now


def mem_reset() -> int:
    """Reset the peak to the current RSS; return it (bytes)."""
    now = _rss()
    with _MEM_LOCK:
        _MEM["peak"] = now
    return now


def mem_peak() -> int:
    """Peak RSS (bytes) since the last :func:`mem_reset`."""
    now = _rss()
    with _MEM_LOCK:
        _MEM["peak"] = max(_MEM["peak"], now)
        return int(_MEM["peak"])


_TIMERS: dict[str, list[float]] = {}
_TIMER_LOCK = threading.Lock()
_TLS = threading.local()


def _acc(name: str, dt: float) -> None:
    with _TIMER_LOCK:
        s = _TIMERS.setdefault(name, [0.0, 0])
        s[0] += dt
        s[1] += 1


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = _time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _acc(name, _time.perf_counter() - t)

    wrapper._kgml_bench_orig = fn  # type: ignore[attr-defined]
    return wrapper


def _hook_model(ckpt: Any) -> None:
    """Time every forward of the checkpoint's model (synchronising CUDA)."""
    import torch

    model = ckpt.model
    if getattr(model, "_kgml_bench_hooked", False):
        return
    cuda = getattr(ckpt.device, "type", "cpu") == "cuda"

    def pre(_mod: Any, _inp: Any) -> None:
        if cuda:
            torch.cuda.synchronize(ckpt.device)
        _TLS.t = _time.perf_counter()

    def post(_mod: Any, _inp: Any, _out: Any) -> None:
        if cuda:
            torch.cuda.synchronize(ckpt.device)
        _acc("model", _time.perf_counter() - getattr(_TLS, "t", _time.perf_counter()))

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)
    model._kgml_bench_hooked = True


def install_timers() -> bool:
    """Time the upscaling task's parts in this process, from the outside.

    Wraps :func:`kgml_grid.execute.read_block`, the ``assemble`` it calls,
    :func:`~kgml_grid.execute.compute_block`, :func:`~kgml_grid.execute.write_block`
    and the model's forward (hooks on the worker's checkpoint). Nothing in the engine
    changes: the wrappers are module attributes of this process only. Run on the
    workers with ``client.run``; read with :func:`read_timers`. Returns False when
    already installed.
    """
    import kgml_grid.execute as ex
    import kgml_grid.worker as wk

    if hasattr(ex.compute_block, "_kgml_bench_orig"):
        return False
    ex.read_block = _timed("read_block", ex.read_block)  # type: ignore[assignment]
    ex.assemble = _timed("assemble", ex.assemble)  # type: ignore[assignment]
    ex.compute_block = _timed("compute_block", ex.compute_block)  # type: ignore[assignment]
    ex.write_block = _timed("write_block", ex.write_block)  # type: ignore[assignment]
    orig_get = wk.get_checkpoint

    @functools.wraps(orig_get)
    def get_checkpoint(path: str, checkpoint_hash: str) -> Any:
        ckpt = orig_get(path, checkpoint_hash)
        _hook_model(ckpt)
        return ckpt

    get_checkpoint._kgml_bench_orig = orig_get  # type: ignore[attr-defined]
    wk.get_checkpoint = get_checkpoint  # type: ignore[assignment]
    return True


def read_timers(reset: bool = True) -> dict[str, list[float]]:
    """The timers of this process: ``name -> [seconds, calls]``; reset them."""
    with _TIMER_LOCK:
        out = {k: list(v) for k, v in _TIMERS.items()}
        if reset:
            _TIMERS.clear()
    return out


def sum_timers(per_worker: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """The workers' :func:`read_timers` (``worker -> name -> [seconds, calls]``), summed
    per name."""
    total: dict[str, list[float]] = {}
    for timers in per_worker.values():
        for k, (s, n) in timers.items():
            t = total.setdefault(k, [0.0, 0])
            t[0] += float(s)
            t[1] += int(n)
    return total


def cache_stats(client: Any) -> dict[str, int]:
    """The workers' chunk-cache counters, summed (bytes: the largest worker's)."""
    from kgml_grid.blockio import chunk_cache

    each = client.run(lambda: chunk_cache().stats()).values()
    out = {k: sum(int(e[k]) for e in each) for k in ("hits", "misses", "evictions", "bypassed")}
    out["peak_mib_per_worker"] = round(
        max((int(e["peak_bytes"]) for e in each), default=0) / MIB, 1
    )
    return out


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """CPU, cores, memory, library versions and the load average now.

    The GPU name is added by :func:`run_benchmark` (read after the clusters close, so
    that CUDA is never initialised before the workers start).
    """
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    import dask
    import distributed
    import torch
    import xarray
    import zarr

    from kgml_grid import fastgru

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "gpu": None, "device": device,
        "python": platform.python_version(), "torch": torch.__version__, "dask": dask.__version__,
        "distributed": distributed.__version__, "xarray": xarray.__version__, "zarr": zarr.__version__,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        # the GRU path of CPU inference in this environment (kgml_grid.fastgru)
        "fused_gru": fastgru.status() if device == "cpu" else None,
    }  # fmt: skip
