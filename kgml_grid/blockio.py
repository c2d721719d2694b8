"""Block I/O of the upscaling engine: Zarr arrays opened once per process, a bounded
cache of decoded input chunks, and direct region writes.

A task of the engine reads a few small regions (a tile's satellite GPP for a time
chunk, the coarse weather cells over the tile, its soil and crop types) and writes one
region per output variable. Through xarray each of those is a dataset open, a metadata
walk and one Zarr call per variable; Zarr then decodes whole chunks even when the
region is a sixteenth of one (a 32 x 32 px x 92 d block of a 64 x 64 px x 365 d chunk).
Here, per process:

* :func:`read_region` / :func:`output_array` open each Zarr array once (re-opened when
  its metadata file changes, or for another run of an output);
* :class:`ChunkCache` keeps decoded input chunks of the current run, least recently
  used first out, up to a byte budget (:data:`DEFAULT_CACHE_BYTES`, or
  ``KGML_CHUNK_CACHE``, e.g. ``512MiB``; ``0`` turns it off; in a Dask worker at most
  :data:`WORKER_FRACTION` of its memory limit). A coarse weather chunk then serves
  every fine tile under it, a soil chunk every tile and time chunk inside it, a
  satellite chunk every time chunk of the tiles inside it. A missing chunk costs what
  Zarr costs anyway (one decode), so a miss is never slower than a plain read;
* :func:`write_region` writes arrays straight into an output store's region.

Reads return fresh arrays: nothing handed out aliases the cache.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ChunkCache",
    "cache_bytes_setting",
    "chunk_cache",
    "clear_caches",
    "drop_run",
    "output_array",
    "read_region",
    "write_region",
]

#: Budget of the decoded-chunk cache of one process, by default.
DEFAULT_CACHE_BYTES = 256 * 2**20
#: At most this fraction of a Dask worker's memory limit goes to the cache.
WORKER_FRACTION = 0.125
#: Environment variable that sets the budget (bytes or ``'512MiB'``; ``0``: no cache).
CACHE_ENV = "KGML_CHUNK_CACHE"

Region = tuple[slice, ...]


def cache_bytes_setting() -> int:
    """The chunk-cache budget of this process: ``KGML_CHUNK_CACHE`` or the default.

    Raises
    ------
    ValueError
        For a value of ``KGML_CHUNK_CACHE`` that is not a size, naming it.
    """
    raw = os.environ.get(CACHE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_CACHE_BYTES
    from kgml_grid.plan import PlanError, parse_bytes

    try:
        value = parse_bytes(raw)
    except (PlanError, ValueError):
        raise ValueError(
            f"{CACHE_ENV}={raw!r} is not a size; write e.g. 256MiB, 1GB or 0 (no cache)"
        ) from None
    if value < 0:
        raise ValueError(f"{CACHE_ENV}={raw!r} must not be negative")
    return int(value)


def _normalise(region: Sequence[slice], shape: Sequence[int], what: str) -> Region:
    if len(region) != len(shape):
        raise ValueError(f"{what}: region has {len(region)} dimensions, the array {len(shape)}")
    out = []
    for s, n in zip(region, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"{what}: only contiguous regions are read (got step {step})")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


class ChunkCache:
    """Decoded Zarr chunks of input arrays, least recently used out first.

    Parameters
    ----------
    max_bytes : int
        Budget; 0 turns caching off (every read goes straight to Zarr).

    Notes
    -----
    Safe for several threads: the bookkeeping is locked, decoding is not (two threads
    missing the same chunk may both decode it; the second copy replaces the first).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = self.peak_bytes = 0
        self.hits = self.misses = self.evictions = self.bypassed = 0

    def stats(self) -> dict[str, int]:
        """Hits, misses, evictions, reads that bypassed the cache, bytes held now and at
        most (since :meth:`clear`)."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "bypassed": self.bypassed, "bytes": self.nbytes, "peak_bytes": self.peak_bytes,
                    "chunks": len(self._data), "max_bytes": self.max_bytes}  # fmt: skip

    def clear(self) -> None:
        """Drop every chunk and reset the counters."""
        with self._lock:
            self._data.clear()
            self.nbytes = self.peak_bytes = 0
            self.hits = self.misses = self.evictions = self.bypassed = 0

    def drop(self, token: Any) -> int:
        """Drop the chunks read under ``token`` (keys ``(token, ...)``); return how many."""
        with self._lock:
            keys = [k for k in self._data if k[0][0] == token]
            for k in keys:
                self.nbytes -= self._data.pop(k).nbytes
            return len(keys)

    def _get(self, key: tuple[Any, ...]) -> np.ndarray | None:
        with self._lock:
            a = self._data.get(key)
            if a is not None:
                self._data.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return a

    def _put(self, key: tuple[Any, ...], value: np.ndarray) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._data[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes and len(self._data) > 1:
                _, ev = self._data.popitem(last=False)
                self.nbytes -= ev.nbytes
                self.evictions += 1
            self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def read(self, array: Any, ident: Any, region: Sequence[slice]) -> np.ndarray:
        """``array[region]`` as a new ndarray, decoding only chunks not cached.

        Parameters
        ----------
        array : zarr.Array
            With a regular chunk grid (``array.chunks``).
        ident : tuple
            Identifies the array's content; its first item is the token that
            :meth:`drop` drops.
        region : tuple of slice
            Contiguous, one per dimension.
        """
        shape = tuple(int(n) for n in array.shape)
        region = _normalise(region, shape, str(ident))
        out_shape = tuple(s.stop - s.start for s in region)
        chunks = tuple(int(c) for c in array.chunks)
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks, strict=True)]
        n_chunks = int(np.prod([len(r) for r in ranges]))
        chunk_bytes = int(np.prod(chunks)) * array.dtype.itemsize
        if self.max_bytes <= 0 or n_chunks * chunk_bytes > self.max_bytes // 2 or 0 in out_shape:
            with self._lock:
                self.bypassed += 1
            return np.asarray(array[region])
        out = np.empty(out_shape, dtype=array.dtype)
        for idx in itertools.product(*ranges):
            lo = [i * c for i, c in zip(idx, chunks, strict=True)]
            key = (ident, idx)
            chunk = self._get(key)
            if chunk is None:
                whole = tuple(
                    slice(a, min(a + c, n)) for a, c, n in zip(lo, chunks, shape, strict=True)
                )
                chunk = np.asarray(array[whole])
                self._put(key, chunk)
            src, dst = [], []
            for s, a, c in zip(region, lo, chunk.shape, strict=True):
                a0, a1 = max(s.start, a), min(s.stop, a + c)
                src.append(slice(a0 - a, a1 - a))
                dst.append(slice(a0 - s.start, a1 - s.start))
            out[tuple(dst)] = chunk[tuple(src)]
        return out


# --------------------------------------------------------------------------------------
# per-process handles
# --------------------------------------------------------------------------------------

_ARRAYS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_ARRAYS_LOCK = threading.Lock()
_MAX_ARRAYS = 256
_CACHE: dict[str, ChunkCache] = {}


def _worker_memory_limit() -> int | None:
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return None
    return int(limit) if limit else None


def chunk_cache() -> ChunkCache:
    """This process's :class:`ChunkCache`: budget from :func:`cache_bytes_setting`, at
    most :data:`WORKER_FRACTION` of the memory limit when in a Dask worker that has one."""
    with _ARRAYS_LOCK:
        c = _CACHE.get("cache")
        if c is None:
            budget = cache_bytes_setting()
            limit = _worker_memory_limit()
            if limit:
                budget = min(budget, int(WORKER_FRACTION * limit))
            c = _CACHE["cache"] = ChunkCache(budget)
        return c


def drop_run(token: str) -> int:
    """Forget the chunks and output arrays of one run (``token``) in this process;
    return the number of chunks dropped. (Run on workers with ``client.run`` when a run
    ends, so that no worker keeps its inputs.)"""
    n = chunk_cache().drop(token)
    with _ARRAYS_LOCK:
        for k in [k for k in _ARRAYS if k[0] == "out" and k[-1] == token]:
            del _ARRAYS[k]
    return n


def clear_caches() -> dict[str, int]:
    """Forget every open array and cached chunk of this process; return the cache's
    stats from before. (Run on workers with ``client.run`` between measurements.)"""
    stats = chunk_cache().stats()
    chunk_cache().clear()
    with _ARRAYS_LOCK:
        _ARRAYS.clear()
    return stats


def _stamp(path: str, name: str) -> int:
    try:
        return os.stat(os.path.join(path, name, "zarr.json")).st_mtime_ns
    except OSError:
        return 0


def _open(key: tuple[Any, ...], path: str, name: str, mode: str) -> Any:
    with _ARRAYS_LOCK:
        a = _ARRAYS.get(key)
        if a is not None:
            _ARRAYS.move_to_end(key)
            return a
    import zarr

    try:
        a = zarr.open_array(os.path.join(path, name), mode=mode, zarr_format=3)
    except (FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(
            f"{path}: no Zarr array {name!r} ({type(e).__name__}: {e})"
        ) from None
    with _ARRAYS_LOCK:
        _ARRAYS[key] = a
        while len(_ARRAYS) > _MAX_ARRAYS:
            _ARRAYS.popitem(last=False)
    return a


def _order(arr: Any, region: Mapping[str, slice], what: str) -> tuple[tuple[str, ...], Region]:
    """The array's dimension names and ``region`` in the array's order."""
    dims = tuple(arr.metadata.dimension_names or ())
    if set(dims) != set(region) or len(dims) != len(region):
        raise ValueError(
            f"{what}: dimensions {dims or '(unnamed)'}, the engine reads {tuple(region)}"
        )
    return dims, tuple(region[d] for d in dims)


def _unpack(arr: Any, data: np.ndarray) -> np.ndarray:
    """CF packing (``scale_factor``, ``add_offset``, ``_FillValue`` of packed integers),
    as xarray would decode it; unpacked arrays pass through."""
    attrs = arr.attrs
    if "scale_factor" not in attrs and "add_offset" not in attrs:
        return data
    out = data.astype("float32" if data.dtype.itemsize <= 2 else "float64")
    fill = attrs.get("_FillValue", arr.fill_value)  # xarray keeps the CF fill in the attributes
    if isinstance(fill, str):  # xarray's base64 form of a non-JSON fill value
        import base64

        fill = np.frombuffer(base64.b64decode(fill), dtype=data.dtype)[0]
    if fill is not None and not (isinstance(fill, float) and np.isnan(fill)):
        out[data == fill] = np.nan
    return out * np.float32(attrs.get("scale_factor", 1)) + np.float32(attrs.get("add_offset", 0))


def read_region(
    path: str | Path, name: str, region: Mapping[str, slice], *, token: str = ""
) -> np.ndarray:
    """``name`` of the input store at ``path`` over a named ``region`` (``{dim: slice}``,
    every dimension of the array), dimensions in the order of ``region``; through the
    chunk cache, CF packing decoded.

    ``token`` (the run) is part of the cache key: a run never sees chunks that another
    run decoded (the store may have been rewritten between them), and
    :func:`drop_run` frees a run's chunks.

    Raises
    ------
    FileNotFoundError
        When the store has no such array.
    ValueError
        When the array's dimensions are not the region's, naming both.
    """
    path = str(path)
    stamp = _stamp(path, name)
    arr = _open(("in", path, name, stamp), path, name, "r")
    dims, reg = _order(arr, region, f"{path}/{name}")
    data = chunk_cache().read(arr, (token, path, name, stamp), reg)
    want = tuple(region)
    if dims != want:
        data = np.ascontiguousarray(data.transpose([dims.index(d) for d in want]))
    return _unpack(arr, data)


def output_array(path: str | Path, name: str, token: str) -> Any:
    """The Zarr array ``name`` of the output store at ``path`` for writing, opened once
    per process and ``token`` (the run: a new run re-opens it)."""
    path = str(path)
    return _open(("out", path, name, token), path, name, "r+")


def write_region(
    path: str | Path, token: str, arrays: Mapping[str, np.ndarray], region: Mapping[str, slice]
) -> None:
    """Write each ``arrays[name]`` (dimensions in the order of ``region``) into the
    named ``region`` of the output store at ``path``.

    Raises
    ------
    ValueError
        When an array's dimensions or shape do not match the region, naming the variable.
    """
    want = tuple(region)
    for name, data in arrays.items():
        arr = output_array(path, name, token)
        what = f"{path}/{name}"
        dims, reg = _order(arr, region, what)
        reg = _normalise(reg, arr.shape, what)
        shape = tuple(reg[dims.index(d)].stop - reg[dims.index(d)].start for d in want)
        if tuple(data.shape) != shape:
            raise ValueError(f"{what}: block of shape {tuple(data.shape)} for a region of shape {shape} "
                             f"({', '.join(want)})")  # fmt: skip
        if dims != want:
            data = data.transpose([want.index(d) for d in dims])
        arr[reg] = np.ascontiguousarray(data, dtype=arr.dtype)
