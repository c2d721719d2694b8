"""Benchmarks of the upscaling engine against its hard limits and its peers (DESIGN section 7).

Every speed claim is a ratio measured in one run, on the same data, with the same
threads. :func:`run_benchmark` measures, in this order:

1. **chunk-shape sweep** (end to end, once per shape): for each :class:`ChunkShape`
   (space tile x time chunk), :func:`kgml_grid.execute.upscale` on a ``LocalCluster``
   of ``workers`` worker processes with one thread each, Zarr in to Zarr out:
   pixel-days per second, peak memory per worker (RSS sampled every 20 ms in each
   worker), task count, wall time, where the worker time went (read, feature assembly,
   model, write, outside tasks; :func:`install_timers`), and the shape's **I/O limit**
   (the same input blocks read by Dask tasks on the same workers, no model, no
   dependency between blocks; :func:`run_io_limit`). Both start with the workers'
   chunk caches empty (:func:`kgml_grid.blockio.clear_caches`) and report their hits
   and misses. The sweep gives the recommended shape (:func:`recommend`).
2. **4x domain** at the recommended shape (peak memory per worker).
3. **rounds** (``repeats`` of them, interleaved so that slow drifts of a shared
   machine's load hit every measurement alike; medians are compared), all at the
   recommended shape on the 1x domain: end to end with ``workers`` workers and with 1
   worker; the I/O limit; peer 1, ``xarray.map_blocks`` over the satellite cube chunked
   in space with time unchunked, ``template=`` given, the checkpoint loaded inside each
   block (:func:`run_peer_map_blocks`); peer 2, a single-process loop over spatial
   patches that loads inputs, runs the model and writes Zarr, the way a user of
   xbatcher writes it (:func:`run_peer_patch_loop`); the **compute limit**, the same
   model over the same pixel-days as in-memory tensors (same batches, same time chunks,
   state carried), no I/O, no Dask, given the workers' threads two ways: one process
   with that many torch threads, and that many processes of one thread
   (:func:`run_compute_limit`); the limit is the faster.

Every cluster is started before anything runs the model in this process, so CUDA is
never initialised in the parent before a worker starts (workers are spawned anyway).
The package, one module per concept; imports run one way, down this list (each module
imports only modules above it):

- :mod:`~kgml_grid.bench.shapes` chunk shapes of the sweep (pure);
- :mod:`~kgml_grid.bench.ratios` rates, recommendation, acceptance ratios, time split,
  medians (pure arithmetic on results);
- :mod:`~kgml_grid.bench.report` Markdown, terminal summary, plot, result files;
- :mod:`~kgml_grid.bench.instruments` in-worker RSS sampler and timers, chunk-cache
  counters, the machine description;
- :mod:`~kgml_grid.bench.inputs` the world's catalog, the random checkpoint, pixel
  windows as bboxes;
- :mod:`~kgml_grid.bench.limits` the I/O and compute limits;
- :mod:`~kgml_grid.bench.peers` the two peers;
- :mod:`~kgml_grid.bench.runners` the end-to-end runner and its instrumented cluster;
- :mod:`~kgml_grid.bench.benchmark` :class:`BenchConfig` and :func:`run_benchmark`.
- :mod:`~kgml_grid.bench.gpu` the GPU benchmark behind ``benchmarks/gpu_bench.sh``
  (compute limit per precision with its deviation from fp32, end to end, at the GPU
  shape; runs on a CPU too).

The pure parts (:func:`default_shapes`, :func:`scaling_domains`, :func:`recommend`,
:func:`acceptance`, :func:`format_markdown`) only do arithmetic on results; the
runners measure. ``kgml-grid bench`` (:mod:`kgml_grid.bench_commands`) parses its
arguments and calls :func:`run_benchmark`. Every name is importable from
``kgml_grid.bench`` as it was from the single module this package replaces.
"""

from __future__ import annotations

from kgml_grid.bench.benchmark import BenchConfig, run_benchmark
from kgml_grid.bench.inputs import catalog_path, make_bench_checkpoint, window_bbox
from kgml_grid.bench.instruments import (
    MIB,
    cache_stats,
    install_timers,
    machine_description,
    mem_peak,
    mem_reset,
    mem_sampler_start,
    read_timers,
    sum_timers,
)
from kgml_grid.bench.limits import run_compute_limit, run_io_limit
from kgml_grid.bench.peers import run_peer_map_blocks, run_peer_patch_loop
from kgml_grid.bench.ratios import TARGETS, acceptance, median_run, rate, recommend, time_split
from kgml_grid.bench.report import format_markdown, format_summary, is_bench_result, plot_sweep
from kgml_grid.bench.runners import local_client, run_end_to_end
from kgml_grid.bench.shapes import ChunkShape, default_shapes, scaling_domains

# the private names that callers of the former single module import (benchmarks/*.py)
_bbox = window_bbox
_catalog_path = catalog_path
_median_run = median_run

__all__ = [
    "MIB",
    "TARGETS",
    "BenchConfig",
    "ChunkShape",
    "acceptance",
    "cache_stats",
    "catalog_path",
    "default_shapes",
    "format_markdown",
    "format_summary",
    "install_timers",
    "is_bench_result",
    "local_client",
    "machine_description",
    "make_bench_checkpoint",
    "median_run",
    "mem_peak",
    "mem_reset",
    "mem_sampler_start",
    "plot_sweep",
    "rate",
    "read_timers",
    "recommend",
    "run_benchmark",
    "run_compute_limit",
    "run_end_to_end",
    "run_io_limit",
    "run_peer_map_blocks",
    "run_peer_patch_loop",
    "scaling_domains",
    "sum_timers",
    "time_split",
    "window_bbox",
]
