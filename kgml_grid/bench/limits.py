"""The hard limits of a plan: the I/O limit (its input blocks read by Dask tasks, no
model) and the compute limit (the model over in-memory tensors, no I/O, no Dask)."""

from __future__ import annotations

import time as _time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from kgml_grid.bench.instruments import MIB, cache_stats
from kgml_grid.bench.ratios import rate

__all__ = ["run_compute_limit", "run_io_limit"]


def _io_read(bt: Any, tt: Any) -> int:
    """Read (decode) one block's inputs as the engine does, no gather, no model.

    Returns the bytes read.
    """
    from kgml_grid.execute import read_inputs

    return int(sum(v.nbytes for k, v in read_inputs(tt, bt).items() if k not in ("rr", "cc")))


def _io_read_assemble(bt: Any, tt: Any) -> int:
    """:func:`kgml_grid.execute.read_block` (read + feature assembly), no model."""
    from kgml_grid.execute import read_block

    _, x, _, _ = read_block(tt, bt, None)
    return int(x.nbytes)


def run_io_limit(plan: Any, *, client: Any, assemble: bool = False) -> dict[str, Any]:
    """The I/O limit of a plan: its input blocks read by Dask tasks on ``client``'s
    workers, no model, no writes, no dependency between blocks.

    Parameters
    ----------
    assemble : bool
        Also assemble the features (:func:`kgml_grid.execute.read_block`), still no model.
    """
    import dask

    from kgml_grid.blockio import clear_caches
    from kgml_grid.execute import _block_task, _tile_tasks

    client.run(clear_caches)  # cold, like the end-to-end runs
    run_id = uuid.uuid4().hex[:8]
    tasks = _tile_tasks(plan, None, run_id, plan.crop_tiles)
    tiles = {
        t: dask.delayed(tasks[t], name=(f"kgml-io-tile-{run_id}", *t), traverse=False)
        for t in plan.crop_tiles
    }
    fn = dask.delayed(_io_read_assemble if assemble else _io_read, pure=False, traverse=False)
    blocks = [fn(_block_task(plan, k), tiles[k.tile], dask_key_name=(f"kgml-io-{run_id}", k.chunk, k.ty, k.tx))
              for k in plan.blocks]  # fmt: skip
    t0 = _time.perf_counter()
    nbytes = client.gather(client.compute(blocks))
    wall = _time.perf_counter() - t0
    pd_ = plan.n_crop_pixels * plan.n_days
    return {
        "pixel_days_per_s": round(rate(pd_, wall), 1),
        "wall_s": round(wall, 3),
        "chunk_cache": cache_stats(client),
        "mib_read": round(sum(nbytes) / MIB, 1),
        "mib_per_s": round(sum(nbytes) / MIB / wall, 1) if wall else None,
        "tasks": len(blocks) + len(tiles),
        "what": "read_block (read + feature assembly), no model"
        if assemble
        else "input blocks read (decompressed), no gather, no model",
    }


def _compute_work(
    checkpoint: str, device: str, counts: Sequence[int], time_bounds: Sequence[tuple[int, int]],
    year_end: np.ndarray, threads: int, max_seconds: float | None = None,
    barrier: Any = None,
) -> tuple[float, int]:  # fmt: skip
    """Run the engine's model loop (:func:`kgml_grid.infer.run_model`, as
    :func:`kgml_grid.execute.compute_block` calls it) over batches of ``counts`` pixels
    (one entry per batch), each over every time chunk with its state carried, on random
    in-memory inputs.

    Returns the seconds of the model loop and the pixel-days done (fewer than all when
    ``max_seconds`` ran out first).
    """
    import torch

    from kgml_grid.checkpoint import load_checkpoint
    from kgml_grid.infer import batch_pixels_for_device, run_model
    from kgml_grid.worker import tune_malloc

    torch.set_num_threads(int(threads))
    tune_malloc()  # as the engine's workers do (ModelPlugin.setup)
    ckpt = load_checkpoint(checkpoint, device=device)
    dev = ckpt.device
    nf = ckpt.config.n_features
    rng = np.random.default_rng(0)
    shapes = {(m, b - a) for m in counts for a, b in time_bounds}
    xs = {s: rng.standard_normal((s[0], s[1], nf), dtype=np.float32) for s in shapes}
    calls = [(k, ci, m) for k, m in enumerate(counts) for ci in range(len(time_bounds))]
    states: dict[int, Any] = {}
    done = 0
    if barrier is not None:
        barrier.wait()
    t0 = _time.perf_counter()
    for k, ci, m in calls:
        a, b = time_bounds[ci]
        r = run_model(ckpt.model, xs[(m, b - a)], year_end[a:b], states.get(k), device=dev,
                      batch_pixels=batch_pixels_for_device(m, dev))  # fmt: skip
        states[k] = r.state
        done += m * (b - a)
        if max_seconds is not None and _time.perf_counter() - t0 > max_seconds:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return _time.perf_counter() - t0, done


def _compute_work_star(args: tuple[Any, ...]) -> tuple[float, int]:
    return _compute_work(*args, barrier=_BARRIER.get("b"))


_BARRIER: dict[str, Any] = {}


def _pool_init(barrier: Any) -> None:
    _BARRIER["b"] = barrier


def run_compute_limit(
    plan: Any,
    *,
    threads: int,
    device: str = "cpu",
    processes: int = 1,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """The compute limit of a plan: the model over the same pixel-days as in-memory
    tensors (same batch size, same time chunks, state carried), no I/O, no Dask.

    Parameters
    ----------
    threads : int
        Torch threads (in each process).
    processes : int
        1: in this process. More: that many spawned processes share the batches; each
        loads the model, all start together (a barrier) and the slowest sets the time.
    max_seconds : float, optional
        Stop after this long (each process) and report the rate of what was done
        (``truncated``): a guard against pathological thread settings.
    """
    from kgml_grid.features import year_end_mask

    bsz = plan.batch_pixels
    # the engine's model calls: per tile, batches of at most batch_pixels crop pixels, each
    # carried over every time chunk; batches are independent, so processes share them
    counts = [
        min(bsz, n - i)
        for t in plan.crop_tiles
        for n in [int(plan.crop_counts[t])]
        for i in range(0, n, bsz)
    ]
    ye = year_end_mask(plan.time)
    tail = (plan.time_bounds, ye, threads, max_seconds)
    pd_all = plan.n_crop_pixels * plan.n_days
    t0 = _time.perf_counter()
    if processes <= 1:
        from kgml_grid.checkpoint import torch_threads

        with torch_threads(threads):  # restores the caller's count after _compute_work sets it
            each = [_compute_work(plan.checkpoint, device, counts, *tail)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        shares: list[list[int]] = [[] for _ in range(processes)]
        loads = [0] * processes
        for i in sorted(range(len(counts)), key=lambda i: -counts[i]):  # greedy balance of batches
            j = loads.index(min(loads))
            shares[j].append(counts[i])
            loads[j] += counts[i]
        shares = [s for s in shares if s]
        barrier = ctx.Barrier(len(shares))
        jobs = [(plan.checkpoint, device, s, *tail) for s in shares]
        with ProcessPoolExecutor(len(shares), mp_context=ctx, initializer=_pool_init,
                                 initargs=(barrier,)) as pool:  # fmt: skip
            each = list(pool.map(_compute_work_star, jobs))
    secs = max(s for s, _ in each)
    done = sum(d for _, d in each)
    return {
        "pixel_days_per_s": round(rate(done, secs), 1),
        "wall_s": round(secs, 3),
        "pixel_days_done": int(done),
        "truncated": bool(done < pd_all),
        "total_s_with_startup": round(_time.perf_counter() - t0, 3),
        "seconds_each_process": [round(s, 3) for s, _ in each],
        "threads": threads,
        "processes": max(1, len(each)),
        "batch_pixels": plan.batch_pixels,
        "time_chunk": max(plan.time_chunks),
        "device": device,
    }
