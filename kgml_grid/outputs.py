"""Output paths that can never destroy inputs or files kgml_grid did not write.

Every command that writes (``synth``, ``ingest``, ``train``, ``finetune``, ``evaluate``,
``upscale``, ``bench``, ``experiment transfer``, ``demo``) decides what it may do with its
target here, with one rule:

* a target that **is, contains or lies inside an input** of the run (the catalog file,
  its cubes and tower files, the checkpoint, FLUXNET files, source rasters; compared as
  resolved real paths, so symbolic links do not hide it) is refused, whatever the flags;
* an absent target, or an empty folder, is written;
* an existing target is replaced only with ``overwrite`` and only when kgml_grid wrote
  it as the **same kind** of output: every file in it must be one this kind of output
  writes, so ``overwrite`` never deletes what the project did not write. Anything else
  is refused, naming the path and what it holds.

What kgml_grid writes carries a marker: a Zarr store the attribute
``kgml_grid_output`` (set by :func:`kgml_grid.cubes.init_store`), a folder the file
``.kgml_grid.json``. Stores and checkpoints written before the marker existed are still
recognised by their own metadata (``kgml_complete``/``kgml_plan`` attributes, a
``model.json`` of the checkpoint format, a world's ``world.json``).

:func:`check_target` decides and writes nothing (call it before any compute);
:func:`prepare_target` replaces (after checking again) and creates a folder output with
its marker; :func:`remove_output` deletes one output only when it is recognised as ours.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import glob
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "KINDS",
    "MARKER_ATTR",
    "MARKER_FILE",
    "OutputError",
    "catalog_inputs",
    "check_files",
    "check_not_input",
    "check_target",
    "input_paths",
    "kind_of",
    "prepare_target",
    "remove_output",
    "write_marker",
]

MARKER_FILE = ".kgml_grid.json"
MARKER_ATTR = "kgml_grid_output"

Decision = Literal["new", "replace", "resume"]
PathLike = str | os.PathLike[str]
Inputs = Iterable[tuple[str, PathLike]]


class OutputError(ValueError):
    """A target path was refused; the message names the path, what it holds and the fix."""


@dataclass(frozen=True)
class Kind:
    """One kind of output: how it is recognised and what it may hold.

    ``entries`` maps a top-level name pattern (``fnmatch``, first match wins) to the kind
    of that entry (checked in turn) or None (a file or folder this output writes whole).
    A Zarr store (``store``) is recognised by its attributes; its contents are Zarr's.
    An unmarked kind (``marked=False``) is a folder inside another output, recognised by
    its place there and checked by its entries alone.
    """

    name: str
    what: str
    store: bool = False
    entries: Mapping[str, str | None] = field(default_factory=dict)
    marked: bool = True


_TMP = {".*.tmp": None}
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("cube", "an input cube (Zarr)", store=True),
    Kind("upscale", "an upscaling output store (Zarr)", store=True),
    Kind("scratch", "a benchmark's scratch store (Zarr)", store=True),
    Kind("attribution", "a controlling-factor store (Zarr)", store=True),
    Kind("ensemble", "an ensemble's annual mean and spread store (Zarr)", store=True),
    Kind("records", "the block records of an upscaling store",
         entries={"plan.json": None, "inputs.json": None, "done": None, "state": None, **_TMP}),
    Kind("towers", "the towers of a synthetic world", marked=False,
         entries={"FLX_*_FLUXNET2015_*_DD_*.csv": None, "*_site.json": None, **_TMP}),
    Kind("world", "a synthetic world", entries={
        **{f"{n}.zarr": "cube" for n in ("weather", "satellite", "soil", "crop", "truth")},
        "towers": "towers", "catalog.yaml": None, "catalog.yaml.tmp": None, "world.json": None}),
    Kind("model", "a model checkpoint", entries={
        "model.safetensors": None, "model.json": None, "learning_curve.png": None,
        "validation.json": None, "validation.md": None, "loso": "folds", **_TMP}),
    Kind("folds", "the leave-one-site-out fold models of a fine-tuning", marked=False,
         entries={"*": "model"}),
    Kind("report", "an evaluation report", entries={"report.json": None, "*.png": None}),
    Kind("maps", "a folder of annual maps", entries={"*.png": None}),
    Kind("demo", "a demo run", entries={
        "world": "world", "model_*": "model", "eval_*": "report", "upscaled.zarr": "upscale",
        "upscaled.zarr.kgml_blocks": "records", "maps": "maps", "overview.png": None,
        "timings.json": None}),
    Kind("transfer", "a transfer experiment", entries={
        "world_A": "world", "world_B": "world", "world_B_params.json": None, "*_finetuned_B": "model",
        "*_pretrained_A": "model", "gru_towers_B_only": "model", "transfer.json": None,
        "transfer.md": None}),
    Kind("bench-work", "a benchmark's scratch folder", entries={
        "world_*": "world", "ckpt_h*": "model", "e2e.zarr": "upscale", "e2e.zarr.kgml_blocks": "records",
        "peer_*.zarr": "scratch"}),
)}  # fmt: skip


# --------------------------------------------------------------------------------------
# recognising what a path holds
# --------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _store_kind(path: Path) -> str | None:
    meta = _read_json(path / "zarr.json")
    if not isinstance(meta, dict):
        return None
    attrs = meta.get("attributes") or {}
    kind = attrs.get(MARKER_ATTR)
    if isinstance(kind, str) and kind in KINDS:
        return kind
    if "kgml_plan" in attrs:  # stores written before the marker existed
        return "upscale"
    if "kgml_complete" in attrs:
        return "cube"
    return None


def kind_of(path: PathLike) -> str | None:
    """The kind of kgml_grid output at ``path`` (a key of :data:`KINDS`), or None when
    kgml_grid did not write it (or it does not exist)."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "zarr.json").is_file():
        return _store_kind(p)
    marker = _read_json(p / MARKER_FILE)
    if isinstance(marker, dict) and marker.get("kgml_grid") in KINDS:
        return str(marker["kgml_grid"])
    if (p / "model.json").is_file():  # checkpoints saved without the marker
        from kgml_grid.checkpoint import FORMAT, JSON_NAME  # (imports torch: only here)

        meta = _read_json(p / JSON_NAME)
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            return "model"
    world = _read_json(p / "world.json")
    if isinstance(world, dict) and "params" in world and (p / "catalog.yaml").is_file():
        return "world"
    if p.name.endswith(".kgml_blocks") and isinstance(_read_json(p / "plan.json"), dict):
        return "records"
    return None


def _entries(p: Path) -> list[Path]:
    return sorted(q for q in p.iterdir() if q.name != MARKER_FILE)


def _foreign(path: Path, kind: str) -> list[Path]:
    """Entries under ``path`` (an output of ``kind``) that this kind does not write."""
    k = KINDS[kind]
    if k.store:
        return []
    bad: list[Path] = []
    for q in _entries(path):
        pattern = next((pat for pat in k.entries if fnmatch.fnmatchcase(q.name, pat)), None)
        if pattern is None:
            bad.append(q)
            continue
        sub = k.entries[pattern]
        if sub is None:
            continue
        if not KINDS[sub].marked:
            bad.extend(_foreign(q, sub) if q.is_dir() and not q.is_symlink() else [q])
        elif kind_of(q) != sub:
            bad.append(q)
        else:
            bad.extend(_foreign(q, sub))
    return bad


def _listing(paths: Sequence[Path], root: Path, limit: int = 5) -> str:
    names = [os.path.relpath(q, root) + ("/" if q.is_dir() else "") for q in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(names) + more


def _holds(p: Path) -> str:
    """What a path that kgml_grid did not write holds, for messages."""
    if not p.is_dir():
        return "a file" if p.is_file() else "something that is not a file or folder"
    if (p / "zarr.json").is_file():
        return "a Zarr store that kgml_grid did not write"
    ents = _entries(p)
    return f"a folder of {len(ents)} entries that kgml_grid did not write: {_listing(ents, p)}"


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def _real(p: PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(p)))


def input_paths(
    role: str, specs: Iterable[Any], *, folder_files: bool = False
) -> list[tuple[str, Path]]:
    """``(role, path)`` for files, folders or glob patterns (expanded; URLs left out).

    Items may be paths or objects with a ``paths`` attribute (``RasterSource``).
    ``folder_files``: a folder names the files in it (ingestion sources: a new cube may
    sit beside them, never on them); otherwise a folder is one input (a checkpoint).
    """
    out: list[tuple[str, Path]] = []
    for s in specs:
        if s is None:
            continue
        if hasattr(s, "paths"):
            out += input_paths(role, s.paths, folder_files=folder_files)
            continue
        text = os.fspath(s)
        if "://" in text:
            continue
        hits = [Path(h) for h in (glob.glob(text) if glob.has_magic(text) else [text])]
        for h in hits:
            if folder_files and h.is_dir():
                out += [(role, q) for q in sorted(h.iterdir()) if q.is_file()]
            else:
                out.append((role, h))
    return out


def catalog_inputs(catalog: Any) -> list[tuple[str, Path]]:
    """The catalog file, the local stores of its entries and its tower files.

    Parses the catalog (:func:`kgml_grid.catalog.open_catalog`); opens no cube.
    """
    from kgml_grid.catalog import Catalog, open_catalog
    from kgml_grid.plan import _resolve_urlpath

    cat = catalog if isinstance(catalog, Catalog) else open_catalog(catalog)
    out: list[tuple[str, Path]] = [("the catalog", cat.path)]
    for e in cat.entries.values():
        if "://" not in e.urlpath:
            out.append(
                (
                    f"cube {e.name!r} of the catalog",
                    Path(_resolve_urlpath(e.urlpath, cat.path.parent)),
                )
            )
    out += [("a tower file of the catalog", t) for t in cat.towers()]
    return out


def check_not_input(path: PathLike, inputs: Inputs, *, option: str = "--out",
                    error: type[Exception] = OutputError) -> None:  # fmt: skip
    """Refuse a target that is, contains or lies inside one of ``inputs``."""
    target = _real(path)
    for role, given in inputs:
        inp = _real(given)
        if target == inp:
            rel = "is"
        elif inp.is_relative_to(target):
            rel = "contains"
        elif target.is_relative_to(inp):
            rel = "lies inside"
        else:
            continue
        raise error(
            f"{option} {path}: {rel} {role} {given}, an input of this run; nothing was written. "
            f"Choose {option} outside the run's inputs"
        )


# --------------------------------------------------------------------------------------
# deciding, replacing, removing
# --------------------------------------------------------------------------------------


def check_target(
    path: PathLike,
    *,
    kind: str,
    inputs: Inputs = (),
    overwrite: bool = False,
    resume: bool = False,
    option: str = "--out",
    fix: str = "pass --overwrite to replace it",
    error: type[Exception] = OutputError,
) -> Decision:
    """Decide what a command may do with its target; reads only, writes nothing.

    Parameters
    ----------
    path : path
        The target.
    kind : str
        The kind of output the command writes (a key of :data:`KINDS`).
    inputs : iterable of (role, path)
        The run's inputs (see :func:`input_paths`, :func:`catalog_inputs`).
    overwrite, resume : bool
        Whether the command may replace / continue an existing output of this kind.
    option : str
        The option that named the target (for messages).
    fix : str
        What to do about an existing output of this kind (for the message).
    error : exception class
        The error raised (a command's own error class).

    Returns
    -------
    {'new', 'replace', 'resume'}
        ``new``: absent or an empty folder; ``replace``: ours, ``overwrite``;
        ``resume``: ours, ``resume``.

    Raises
    ------
    error
        For a target that is, contains or lies inside an input; one kgml_grid did not
        write, of another kind, or holding files its kind does not write (whatever the
        flags); one of this kind without ``overwrite``/``resume``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {', '.join(KINDS)}")
    check_not_input(path, inputs, option=option, error=error)
    p = Path(path)
    if not os.path.lexists(p):
        return "new"
    if p.is_dir() and not p.is_symlink() and not _entries(p):
        return "new"  # an empty folder (or one holding only a marker)
    have = None if p.is_symlink() else kind_of(p)
    if have is None:
        raise error(
            f"{option} {path}: exists and holds {_holds(p)}; kgml_grid replaces only what it wrote "
            f"({KINDS[kind].what}), even with --overwrite. Move it away or choose another {option}"
        )
    if have != kind:
        raise error(
            f"{option} {path}: is {KINDS[have].what}, not {KINDS[kind].what}; it cannot be replaced "
            f"by this command. Choose another {option}"
        )
    foreign = _foreign(p, kind)
    if foreign:
        raise error(
            f"{option} {path}: {KINDS[kind].what} that also holds files kgml_grid did not write "
            f"({_listing(foreign, p)}); they would be lost. Move them away or choose another {option}"
        )
    if resume:
        return "resume"
    if overwrite:
        return "replace"
    raise error(f"{option} {path}: exists; {fix} (it holds {KINDS[kind].what})")


def check_files(
    files: Sequence[PathLike],
    *,
    ours: bool,
    what: str,
    inputs: Inputs = (),
    overwrite: bool = False,
    option: str = "--out",
    error: type[Exception] = OutputError,
) -> Decision:
    """Decide about a set of result files written side by side into a shared folder (the
    folder itself is never replaced); reads only, writes nothing.

    Parameters
    ----------
    files : sequence of path
        The files the command writes (one output).
    ours : bool
        Whether the existing files were written by kgml_grid as this output (the caller
        recognises its own marker, e.g. a key of its JSON file).
    what : str
        What the files are, for messages.

    Returns
    -------
    {'new', 'replace'}
        ``new`` when none exists; ``replace`` when they are ours and ``overwrite``.

    Raises
    ------
    error
        For a file that is an input, or existing files that are not ours (whatever the
        flags) or are ours without ``overwrite``.
    """
    inputs = list(inputs)
    for f in files:
        check_not_input(f, inputs, option=option, error=error)
    existing = [Path(f) for f in files if os.path.lexists(f)]
    if not existing:
        return "new"
    folder = existing[0].parent
    names = ", ".join(f.name for f in existing)
    if not ours or any(f.is_symlink() or not f.is_file() for f in existing):
        raise error(
            f"{option} {folder}: {names} exist and were not written by kgml_grid as {what}; "
            f"they are not replaced, even with --overwrite. Move them away or choose another {option}"
        )
    if not overwrite:
        raise error(f"{option} {folder}: {names} exist ({what}); pass --overwrite to replace them")
    return "replace"


def remove_output(path: PathLike, kind: str, *, option: str = "--out",
                  error: type[Exception] = OutputError) -> None:  # fmt: skip
    """Delete an output of ``kind`` (nothing when absent); refuses anything else."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    check_target(p, kind=kind, overwrite=True, option=option, error=error)
    shutil.rmtree(p)  # a folder: anything else is refused above


def write_marker(path: PathLike, kind: str, **info: Any) -> Path:
    """Write the marker file of a folder output (the folder must exist)."""
    from kgml_grid import __version__

    marker = Path(path) / MARKER_FILE
    doc = {"kgml_grid": kind, "what": KINDS[kind].what, "package_version": __version__,
           "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **info}  # fmt: skip
    marker.write_text(json.dumps(doc, indent=1) + "\n")
    return marker


def prepare_target(
    path: PathLike,
    *,
    kind: str,
    inputs: Inputs = (),
    overwrite: bool = False,
    option: str = "--out",
    fix: str = "pass --overwrite to replace it",
    error: type[Exception] = OutputError,
) -> Path:
    """Check the target (:func:`check_target`), remove the old output when replacing, and
    create a folder output with its marker. A store kind is only removed: its writer
    creates it (with the marker attribute)."""
    decision = check_target(path, kind=kind, inputs=inputs, overwrite=overwrite, option=option,
                            fix=fix, error=error)  # fmt: skip
    p = Path(path)
    if decision == "replace":
        shutil.rmtree(p)
    if not KINDS[kind].store:
        p.mkdir(parents=True, exist_ok=True)
        write_marker(p, kind)
    return p
