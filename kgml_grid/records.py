"""Completion records and tile states of an upscaling run (the records folder).

The records folder ``OUT.zarr.kgml_blocks/`` sits beside the store (kept out of the
Zarr hierarchy). Its size does not grow with the number of blocks in files:

* ``done/<run>.<host>.<pid>.jsonl``: one append-only completion log per worker
  process and run. A block appends one short line ``[chunk, ty, tx, t0, t1,
  crop_pixels, nan_crop_pixels, compute_s, write_s]`` as its last act, after its
  region and its state are written; the log's first line names the run and the
  worker. A line is written by one ``os.write`` on an ``O_APPEND`` descriptor; a line
  that a killed process left torn does not parse and is ignored (that block is
  redone by ``--resume``: the direction that is safe).
* ``state/y<ty>_x<tx>.<slot>.npz``: the state of a tile after its latest blocks, in
  two slots by the parity of the time chunk, so the state a resumed run starts from
  is never the one a block that a killed client left running is overwriting. Each
  state carries its time chunk (``_chunk``), checked when it is loaded.

Which blocks are done is kept per tile as a boolean array ``[n_ty, n_tx,
n_time_chunks]`` (:func:`done_array`), not as one object per block.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Record",
    "append",
    "done_array",
    "iter_records",
    "log_files",
    "resume_points",
    "state_path",
]

DONE = "done"
STATE = "state"
LOG_SUFFIX = ".jsonl"

_lock = threading.Lock()
_fds: dict[str, int] = {}

#: One completion record: (chunk, ty, tx, t0, t1, crop_pixels, nan_crop_pixels,
#: compute_s, write_s) plus the run and worker of its log.
Record = dict[str, Any]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_path(records: str | Path, ty: int, tx: int, chunk: int) -> Path:
    """Where the state of tile (ty, tx) after time chunk ``chunk`` is saved."""
    return Path(records) / STATE / f"y{ty:04d}_x{tx:04d}.{chunk % 2}.npz"


def _log_path(records: str | Path, run_id: str) -> Path:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40]
    return Path(records) / DONE / f"{run_id}.{host}.{os.getpid()}{LOG_SUFFIX}"


def append(records: str | Path, run_id: str, worker: str, line: list[Any]) -> None:
    """Append one completion record to this process's log of ``run_id``."""
    path = str(_log_path(records, run_id))
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    with _lock:
        fd = _fds.get(path)
        if fd is None or not os.path.exists(path):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _fds[path] = fd
            if os.fstat(fd).st_size == 0:
                head = {"run_id": run_id, "worker": worker, "pid": os.getpid(), "started": _now()}
                os.write(fd, (json.dumps(head) + "\n").encode())
        os.write(fd, data)


def close_logs() -> None:
    """Close this process's open logs (tests; a new run re-opens them)."""
    with _lock:
        for fd in _fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        _fds.clear()


def log_files(records: str | Path) -> list[Path]:
    """The completion logs of a records folder."""
    d = Path(records) / DONE
    return sorted(d.glob(f"*{LOG_SUFFIX}")) if d.is_dir() else []


_FIELDS = ("chunk", "ty", "tx", "t0", "t1", "crop_pixels", "nan_crop_pixels", "seconds", "write_s")


def iter_records(records: str | Path) -> Iterator[Record]:
    """Every completion record, as dicts (with ``run_id`` and ``worker`` of its log);
    torn or foreign lines are skipped."""
    for path in log_files(records):
        head: dict[str, Any] = {}
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    item = json.loads(raw)
                except ValueError:
                    continue  # torn by a killed process: that block is redone
                if isinstance(item, dict):
                    head = item
                    continue
                if not isinstance(item, list) or len(item) != len(_FIELDS):
                    continue
                rec = dict(zip(_FIELDS, item, strict=True))
                rec["run_id"] = head.get("run_id")
                rec["worker"] = head.get("worker")
                yield rec


def done_array(records: str | Path, n_ty: int, n_tx: int, n_chunks: int) -> np.ndarray:
    """``[n_ty, n_tx, n_chunks]`` bool: which blocks are recorded done."""
    done = np.zeros((n_ty, n_tx, n_chunks), dtype=bool)
    for r in iter_records(records):
        c, ty, tx = int(r["chunk"]), int(r["ty"]), int(r["tx"])
        if 0 <= c < n_chunks and 0 <= ty < n_ty and 0 <= tx < n_tx:
            done[ty, tx, c] = True
    return done


def done_prefix(done: np.ndarray) -> np.ndarray:
    """``[n_ty, n_tx]``: number of leading time chunks recorded done per tile."""
    if done.shape[-1] == 0:
        return np.zeros(done.shape[:2], dtype="int64")
    missing = ~done
    first_missing = np.where(missing.any(axis=-1), missing.argmax(axis=-1), done.shape[-1])
    return first_missing.astype("int64")


def saved_chunk(path: str | Path) -> int | None:
    """The time chunk of a saved state (None when it is missing or unreadable)."""
    try:
        with np.load(path) as z:
            return int(z["_chunk"]) if "_chunk" in z.files else None
    except (OSError, ValueError, KeyError):
        return None


def resume_points(records: str | Path, done: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """First time chunk to run per tile ``[n_ty, n_tx]``: the recorded prefix, when the
    state after its last chunk is saved (else 0: the tile is redone; writes are
    idempotent). Tiles without crop get ``n_chunks`` (nothing to run)."""
    n_chunks = done.shape[-1]
    first = np.where(crop, done_prefix(done), n_chunks)
    # finished tiles need no state; the partly done ones are few (the last window)
    for ty, tx in zip(*np.nonzero(crop & (first > 0) & (first < n_chunks)), strict=True):
        c = int(first[ty, tx])
        if saved_chunk(state_path(records, int(ty), int(tx), c - 1)) != c - 1:
            first[ty, tx] = 0
    return first
