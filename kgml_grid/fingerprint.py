"""Fingerprints of a run's input cubes, so that ``--resume`` knows its inputs.

An upscaling that is interrupted and resumed must finish from the same inputs it
started with; otherwise some tiles of the store come from the old cubes and the others
from the new ones, and nothing says so. The records of a run
(``OUT.zarr.kgml_blocks/inputs.json``) hold a fingerprint of each input cube, taken
when the store is created; ``--resume`` takes them again and refuses to continue when
they differ, saying which layer and variable changed.

A fingerprint is cheap (no chunk is read): per Zarr array (and the group's own
metadata), the sha256 of its ``zarr.json`` and the sha256 of its chunk manifest, the
relative name, size and modification time (ns) of every chunk file, plus their count
and bytes. A cube rebuilt with the same values still counts as changed (its files are
new): the check is meant to be safe, not clever. Remote stores (``s3://``...) are not
walked: they are recorded as remote and reported as not checked.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "compare", "dumps", "input_fingerprints", "store_fingerprint"]

FORMAT = 1
#: The group's own metadata and attributes, in :func:`store_fingerprint` output.
GROUP = "(group)"


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def store_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fingerprint of one Zarr store (see the module docstring).

    Returns
    -------
    dict
        ``{"path", "arrays": {name: {"metadata", "chunks", "files", "bytes", "newest"}}}``;
        ``{"path", "remote": True}`` for a remote store; ``{"path", "missing": True}``
        when nothing is there.
    """
    p = os.fspath(path)
    if _is_remote(p):
        return {"path": p, "remote": True}
    root = Path(p.removeprefix("file://"))
    if not root.exists():
        return {"path": p, "missing": True}
    acc: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            rel = full.relative_to(root).as_posix()
            name = rel.split("/", 1)[0] if "/" in rel else GROUP
            a = acc.setdefault(name, {"meta": hashlib.sha256(), "chunks": hashlib.sha256(),
                                      "files": 0, "bytes": 0, "newest": 0})  # fmt: skip
            st = full.stat()
            if fn in ("zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"):
                a["meta"].update(rel.encode() + b"\0" + full.read_bytes() + b"\0")
            else:
                a["chunks"].update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
                a["files"] += 1
                a["bytes"] += st.st_size
                a["newest"] = max(a["newest"], st.st_mtime_ns)
    arrays = {}
    for name, a in sorted(acc.items()):
        arrays[name] = {"metadata": a["meta"].hexdigest(), "chunks": a["chunks"].hexdigest(),
                        "files": a["files"], "bytes": a["bytes"], "newest": a["newest"]}  # fmt: skip
    return {"path": p, "arrays": arrays}


def input_fingerprints(paths: Mapping[str, str]) -> dict[str, Any]:
    """``{"format": 1, "inputs": {layer: store_fingerprint(path)}}`` for a run's inputs."""
    return {"format": FORMAT, "inputs": {k: store_fingerprint(v) for k, v in sorted(paths.items())}}


def _when(ns: int) -> str:
    return (
        _dt.datetime.fromtimestamp(ns / 1e9, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if ns
        else "-"
    )


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """How the inputs changed between two :func:`input_fingerprints`.

    Returns
    -------
    changes, unchecked : list of str
        One line per changed layer/variable (``"satellite cube /w/satellite.zarr:
        variable gpp_sat: chunk files rewritten (...)"``); and the inputs that could not
        be checked (remote).
    """
    changes: list[str] = []
    unchecked: list[str] = []
    o_in, n_in = dict(old.get("inputs") or {}), dict(new.get("inputs") or {})
    for layer in sorted(set(o_in) | set(n_in)):
        o, n = o_in.get(layer), n_in.get(layer)
        if o is None or n is None:
            changes.append(
                f"{layer}: {'not an input before' if o is None else 'no longer an input'}"
            )
            continue
        head = f"{layer} cube {n.get('path')}"
        if o.get("path") != n.get("path"):
            changes.append(f"{layer}: was {o.get('path')}, now {n.get('path')}")
            continue
        if n.get("remote") or o.get("remote"):
            unchecked.append(f"{head} (remote: not fingerprinted)")
            continue
        if n.get("missing"):
            changes.append(f"{head}: no longer exists")
            continue
        oa, na = o.get("arrays") or {}, n.get("arrays") or {}
        for var in sorted(set(oa) | set(na)):
            what = "the group's metadata" if var == GROUP else f"variable {var}"
            if var not in na:
                changes.append(f"{head}: {what} was removed")
            elif var not in oa:
                changes.append(f"{head}: {what} was added")
            else:
                a, b = oa[var], na[var]
                if a["metadata"] != b["metadata"]:
                    changes.append(f"{head}: {what}: metadata (zarr.json) changed")
                if a["chunks"] != b["chunks"]:
                    changes.append(
                        f"{head}: {what}: chunk files rewritten ({a['files']} files, {a['bytes']} bytes, "
                        f"newest {_when(a['newest'])} when the run started; {b['files']} files, "
                        f"{b['bytes']} bytes, newest {_when(b['newest'])} now)"
                    )
    return changes, unchecked


def dumps(fp: Mapping[str, Any]) -> str:
    """JSON text of a fingerprint (for the records)."""
    return json.dumps(fp, indent=1, sort_keys=True)
