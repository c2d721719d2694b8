"""Executors of an upscaling :class:`~kgml_grid.plan.Plan` (DESIGN section 6).

Two executors run the same block function, the way rechunker keeps a tiny serial
executor as the reference the others are tested against:

* :class:`SerialExecutor`: in this process, block after block; writes the same store
  (or, with ``out=None``, returns the result in memory);
* :class:`DaskExecutor`: on a Dask cluster. For each time chunk, one map of
  :func:`run_block` over the space tiles; each task takes its input block and the
  previous time chunk's state (a task result, never sent to the client) and returns
  the new state. The model lives on the workers (:mod:`kgml_grid.worker`).

One block (:func:`run_block`) reads the tile's satellite GPP for the time chunk, the
coarse weather cells covering the tile (mapped to the fine pixels with the tile's
index from the plan: no fine weather cube is made), the soil tile and the crop types
of the run's years; assembles the features with :func:`kgml_grid.features.assemble`
(gap-fill state carried like the GRU state); normalises them with the checkpoint's
:class:`~kgml_grid.checkpoint.Normalizer`; runs the model on the crop pixels only (a
pixel is crop when its crop type is > 0 in any year of the run; the others stay NaN),
in batches under ``torch.inference_mode`` (:func:`kgml_grid.infer.run_model`: time blocks
with the state carried on CPU; large batches, pinned buffers and overlapped copies on
CUDA; ``RunConfig.precision``); and writes ra, rh (clamped at >= 0),
reco = ra + rh, nee, the model's gpp, and the yield at year ends.

Resumable output
----------------
Each block writes its region of the output store as soon as it is done, then its
state (``state/y<ty>_x<tx>/t<chunk>.npz``), then its completion record
(``done/<block>.json``), all in the records folder next to the store
(``OUT.zarr.kgml_blocks/``: kept out of the Zarr hierarchy so that Zarr and xarray see
a clean store), and finally removes the tile's state of two chunks back (the last two
are kept: a block that a killed client left running on a worker may still finish while
a resumed run starts from the one before it; both write the same values). A rerun with
``resume=True`` restarts every tile after its last recorded block from that block's
state and redoes only what is missing; the store is marked complete
(:func:`kgml_grid.cubes.mark_complete`) only after every block is recorded. Do not run
two upscalings into the same store at once.

The records also hold a fingerprint of
every input cube (``inputs.json``, :mod:`kgml_grid.fingerprint`), taken before the
store is made: a resume against inputs that changed since is refused, saying what
changed (finishing it would mix blocks of the old and the new inputs).

A block that fails on a full disk says so (:func:`block_failure`); the completed blocks
stay recorded for ``--resume``.

Outputs are checked before a block is written (:func:`check_outputs`): a block whose
crop pixels all have NaN outputs, or with any infinite output, fails with a
:class:`BlockError` naming it and is not recorded, so the store is never marked
complete with it. Crop pixels with NaN outputs in an otherwise good block (an input
missing there) are counted in the records; the finished store carries the total
(``kgml_nan_crop_pixels``) and a :class:`OutputWarning` says how many.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import threading
import time as _time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import blockio, cubes, outputs, outstore, schema
from kgml_grid import records as _records
from kgml_grid import schedule as _schedule
from kgml_grid.cluster import dashboard_link
from kgml_grid.errors import is_disk_full
from kgml_grid.features import WEATHER_FEATURES, assemble, satellite_inputs, year_end_mask
from kgml_grid.fingerprint import compare as compare_fingerprints
from kgml_grid.fingerprint import dumps as fingerprint_dumps
from kgml_grid.fingerprint import input_fingerprints
from kgml_grid.plan import (
    DAILY_VARS,
    BlockKey,
    Plan,
    PlanError,
    TileSpec,
    make_plan,
)

__all__ = [
    "BlockError",
    "DaskExecutor",
    "OutputWarning",
    "RunConfig",
    "SerialExecutor",
    "UpscaleGraph",
    "UpscaleResult",
    "build_graph",
    "check_outputs",
    "completed_blocks",
    "direct_run",
    "records_dir",
    "run_block",
    "upscale",
]

RECORDS_SUFFIX = ".kgml_blocks"
#: Fingerprints of the input cubes, in the records folder (:mod:`kgml_grid.fingerprint`).
INPUTS_FILE = "inputs.json"


class BlockError(RuntimeError):
    """A block failed on a worker; completed blocks stay recorded for ``--resume``."""


class OutputWarning(UserWarning):
    """Some crop pixels of a finished store have no outputs (NaN): their inputs are missing."""


# --------------------------------------------------------------------------------------
# run-wide configuration and per-block state
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """What every task of a run shares (small; shipped once per tile)."""

    paths: Mapping[str, str]
    checkpoint: str
    checkpoint_hash: str
    out: str | None
    records: str | None
    start: str
    sat_t0: int
    wx_t0: int
    years: tuple[int, ...]
    crop_index: tuple[int, ...]
    partial_first_season: bool
    has_yield: bool
    batch_pixels: int
    run_id: str
    #: Model precision on the workers (:data:`kgml_grid.infer.PRECISIONS`).
    precision: str = "fp32"
    frequency: str = "daily"
    variables: tuple[str, ...] = outstore.OUTPUT_VARIABLES
    #: day offsets where the output periods start, plus the number of days
    period_edges: tuple[int, ...] = ()

    @classmethod
    def from_plan(
        cls, plan: Plan, out: str | Path | None, run_id: str, *, precision: str = "fp32"
    ) -> RunConfig:
        return cls(
            paths=dict(plan.paths),
            checkpoint=plan.checkpoint,
            checkpoint_hash=plan.checkpoint_hash,
            out=None if out is None else str(out),
            records=None if out is None else str(records_dir(out)),
            start=str(plan.start.date()),
            sat_t0=plan.sat_t0,
            wx_t0=plan.wx_t0,
            years=tuple(plan.years),
            crop_index=tuple(plan.crop_year_index[y] for y in plan.years),
            partial_first_season=plan.partial_first_season,
            has_yield=plan.has_yield,
            batch_pixels=plan.batch_pixels,
            run_id=run_id,
            precision=precision,
            frequency=plan.frequency,
            variables=tuple(plan.variables),
            period_edges=(
                () if plan.frequency == "daily" else tuple(int(e) for e in plan.period_edges)
            ),
        )


@dataclass(frozen=True)
class TileTask:
    """A tile and the run's configuration: one Dask data task per tile."""

    run: RunConfig
    tile: TileSpec


@dataclass(frozen=True)
class BlockTask:
    """One block: its key and its days ``[t0, t1)`` in output time."""

    key: BlockKey
    t0: int
    t1: int


@dataclass(frozen=True)
class StateRef:
    """A state saved on disk (``--resume``, or the start of a tile's next segment),
    loaded inside the task; ``chunk`` is the time chunk it must be the state after."""

    path: str
    chunk: int | None = None


#: State of a tile between time chunks: model state (``m_*``) and gap-fill state
#: (``f_*``) of its crop pixels, numpy arrays, batch first.
State = dict[str, np.ndarray]


@dataclass
class BlockOutput:
    """Outputs of one block: ``[P, ny, nx]`` per flux variable (P days, or months /
    years for a monthly / annual run: :attr:`time_slice`), yearly ``[Y, ny, nx]``."""

    daily: dict[str, np.ndarray]
    yearly: np.ndarray | None
    year_slice: tuple[int, int] | None
    n_crop: int
    seconds: float = 0.0
    n_nan: int = 0  # crop pixels with a NaN output (missing inputs there)
    time_slice: tuple[int, int] | None = None  # on the output's time axis (None: the days)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def _soil_features() -> tuple[str, ...]:
    from kgml_grid.features import SOIL_FEATURES

    return tuple(SOIL_FEATURES)


def _crop_pixels(run: RunConfig, tile: TileSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop types ``[Y, ny, nx]`` of the run's years and the tile's crop pixels (row-major)."""
    idx = np.asarray(run.crop_index, dtype=int)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    ct = blockio.read_region(run.paths["crop"], "crop_type",
                             {"year": slice(lo, hi), "y": slice(*tile.y), "x": slice(*tile.x)},
                             token=run.run_id)[idx - lo]  # fmt: skip
    rr, cc = np.nonzero((ct > 0).any(axis=0))
    return ct, rr, cc


def read_inputs(
    tt: TileTask, bt: BlockTask, features: Sequence[str] = schema.FEATURES
) -> dict[str, Any]:
    """The block's raw inputs, read (decoded) as the model needs them, no assembly.

    Returns
    -------
    dict
        ``crop`` ``[Y, ny, nx]`` and the crop pixels ``rr``, ``cc``; ``gpp_sat`` (and
        ``lai`` / ``soil_moisture`` for a feature set with those additions)
        ``[T, ny, nx]``; each weather feature ``[T, wy, wx]`` (the coarse cells over
        the tile); each soil feature ``[ny, nx]``.
    """
    run, tile = tt.run, tt.tile
    ct, rr, cc = _crop_pixels(run, tile)
    ys, xs = slice(*tile.y), slice(*tile.x)
    out: dict[str, Any] = {"crop": ct, "rr": rr, "cc": cc}
    tok = run.run_id
    for k in satellite_inputs(features):
        out[k] = blockio.read_region(run.paths["satellite"], k,
                                     {"time": slice(run.sat_t0 + bt.t0, run.sat_t0 + bt.t1), "y": ys, "x": xs},
                                     token=tok)  # fmt: skip
    wreg = {
        "time": slice(run.wx_t0 + bt.t0, run.wx_t0 + bt.t1),
        "y": slice(*tile.wy),
        "x": slice(*tile.wx),
    }
    for k in WEATHER_FEATURES:
        out[k] = blockio.read_region(run.paths["weather"], k, wreg, token=tok)
    for k in _soil_features():
        out[k] = blockio.read_region(run.paths["soil"], k, {"y": ys, "x": xs}, token=tok)
    return out


def perturb_inputs(raw: dict[str, Any], perturb: Mapping[str, tuple[str, float]]) -> None:
    """Apply ``{name: ("add" | "mul", value)}`` to raw inputs in place (sensitivities).

    Raises
    ------
    ValueError
        For an input the block does not read or an operation other than add/mul.
    """
    for name, (op, value) in perturb.items():
        if name not in raw or name in ("crop", "rr", "cc"):
            raise ValueError(f"perturb: {name!r} is not a model input read by a block "
                             f"(expected one of {', '.join(k for k in raw if k not in ('crop', 'rr', 'cc'))})")  # fmt: skip
        if op not in ("add", "mul"):
            raise ValueError(f"perturb: {name}: operation {op!r}; expected 'add' or 'mul'")
        raw[name] = raw[name] + np.float32(value) if op == "add" else raw[name] * np.float32(value)


def read_block(
    tt: TileTask,
    bt: BlockTask,
    fill: Mapping[str, np.ndarray] | None,
    features: Sequence[str] = schema.FEATURES,
    *,
    perturb: Mapping[str, tuple[str, float]] | None = None,
) -> tuple[pd.DatetimeIndex, np.ndarray, dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Features ``[n, T, F]`` (physical units, the checkpoint's feature set) of the tile's
    crop pixels for the block.

    ``perturb`` (:func:`perturb_inputs`) changes raw inputs before assembly.

    Returns
    -------
    time, x, fill (for the next block), (rows, cols) of the crop pixels in the tile
    """
    run, tile = tt.run, tt.tile
    time = pd.date_range(
        pd.Timestamp(run.start) + pd.Timedelta(days=bt.t0), periods=bt.t1 - bt.t0, freq="D"
    )
    raw = read_inputs(tt, bt, features)
    if perturb:
        perturb_inputs(raw, perturb)
    ct, rr, cc = raw["crop"], raw["rr"], raw["cc"]
    wr, wc = tile.wrow[rr, cc], tile.wcol[rr, cc]
    daily = {k: raw[k][:, wr, wc] for k in WEATHER_FEATURES}
    for k in satellite_inputs(features):
        daily[k] = raw[k][:, rr, cc]
    soil = {k: raw[k][rr, cc] for k in _soil_features()}
    year_pos = {y: i for i, y in enumerate(run.years)}
    crop_by_year = {int(y): ct[year_pos[int(y)], rr, cc] for y in np.unique(time.year)}
    x, new_fill = assemble(time=time, daily=daily, soil=soil, crop_by_year=crop_by_year,
                           fill=None if fill is None else dict(fill), features=features)  # fmt: skip
    return time, x, new_fill, (rr, cc)


# --------------------------------------------------------------------------------------
# computing
# --------------------------------------------------------------------------------------


def _load_state(prev: State | StateRef | None) -> State | None:
    if prev is None:
        return None
    if isinstance(prev, StateRef):
        try:
            with np.load(prev.path) as z:
                state = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise BlockError(
                f"saved state {prev.path} is missing; was another run writing to this store "
                "at the same time? Rerun with --overwrite"
            ) from None
        saved = state.pop("_chunk", None)
        if prev.chunk is not None and (saved is None or int(saved) != prev.chunk):
            raise BlockError(
                f"saved state {prev.path} is of time chunk {saved}, expected {prev.chunk}; was "
                "another run writing to this store at the same time? Rerun with --resume"
            )
        return state
    return prev


def compute_block(
    tt: TileTask,
    bt: BlockTask,
    prev: State | StateRef | None,
    *,
    perturb: Mapping[str, tuple[str, float]] | None = None,
) -> tuple[BlockOutput, State]:
    """Read, assemble, run the model: the block's outputs and the tile's next state.

    Pure apart from reading the input cubes; writes nothing. ``perturb`` changes raw
    inputs first (:func:`perturb_inputs`; sensitivities, :mod:`kgml_grid.lazy`).
    """
    from kgml_grid.infer import batch_pixels_for_device, run_model
    from kgml_grid.model import DAILY_TARGETS
    from kgml_grid.worker import get_checkpoint

    t_start = _time.perf_counter()
    run, tile = tt.run, tt.tile
    ckpt = get_checkpoint(run.checkpoint, run.checkpoint_hash)
    prev_state = _load_state(prev)
    fill = (
        None
        if prev_state is None
        else {k[2:]: v for k, v in prev_state.items() if k.startswith("f_")}
    )
    time, x, new_fill, (rr, cc) = read_block(tt, bt, fill, ckpt.features, perturb=perturb)
    n, t = x.shape[0], x.shape[1]
    xn = np.ascontiguousarray(ckpt.normalizer.normalize_features(x), dtype="float32")
    del x
    ye = year_end_mask(time)
    ye_idx = np.flatnonzero(ye)
    model_state = (
        None
        if prev_state is None
        else {k[2:]: v for k, v in prev_state.items() if k.startswith("m_")}
    )
    if model_state is not None:
        bad = [k for k, v in model_state.items() if v.shape[0] != n]
        if bad:
            raise BlockError(
                f"{bt.key}: saved state has {model_state[bad[0]].shape[0]} pixels, the tile has "
                f"{n} crop pixels; the crop layer changed since the run started (use --overwrite)"
            )
    device = ckpt.device
    res = run_model(ckpt.model, xn, ye, model_state, device=device,
                    batch_pixels=batch_pixels_for_device(run.batch_pixels, device),
                    precision=run.precision)  # fmt: skip
    daily, yld = res.daily, res.yield_
    phys = ckpt.normalizer.denormalize_outputs(daily)  # [n, T, 4] (ra, rh, nee, gpp)
    col = {name: i for i, name in enumerate(DAILY_TARGETS)}
    ra = np.maximum(phys[..., col["ra"]], 0)
    rh = np.maximum(phys[..., col["rh"]], 0)
    values = {"ra": ra, "rh": rh, "reco": ra + rh, "nee": phys[..., col["nee"]],
              "gpp": np.maximum(phys[..., col["gpp"]], 0)}  # fmt: skip
    n_nan = check_outputs(bt.key, values, n)
    ny, nx = tile.shape
    time_slice = None
    if run.frequency != "daily":  # sums over the block's months / years (aligned chunks)
        edges = np.asarray(run.period_edges)
        time_slice = outstore.block_periods(edges, bt.t0, bt.t1)
        values = {k: outstore.aggregate(v, edges, bt.t0, bt.t1) for k, v in values.items()}
        t = time_slice[1] - time_slice[0]
    out_daily = {}
    for name in DAILY_VARS:
        if name not in run.variables:
            continue
        arr = np.full((t, ny, nx), np.nan, dtype="float32")
        arr[:, rr, cc] = values[name].T
        out_daily[name] = arr
    yearly = None
    year_slice = None
    if ye_idx.size:
        years = time.year[ye_idx]
        i0 = int(years[0]) - run.years[0]
        year_slice = (i0, i0 + len(years))
        yearly = np.full((len(years), ny, nx), np.nan, dtype="float32")
        if run.has_yield and "yield" in run.variables:
            yv = ckpt.normalizer.denormalize_yield(yld)  # [n, Y]
            for j, year in enumerate(years):
                if run.partial_first_season and int(year) == run.years[0]:
                    continue
                yearly[j, rr, cc] = yv[:, j]
    state: State = {f"m_{k}": v for k, v in res.state.items()}
    if n == 0:
        state = {}
    state.update({f"f_{k}": np.asarray(v) for k, v in new_fill.items()})
    if "yield" not in run.variables:
        yearly, year_slice = None, None
    return (
        BlockOutput(out_daily, yearly, year_slice, n, _time.perf_counter() - t_start, n_nan,
                    time_slice),
        state,
    )  # fmt: skip


def check_outputs(key: BlockKey, values: Mapping[str, np.ndarray], n_crop: int) -> int:
    """Refuse a block whose outputs are unusable; return its crop pixels with a NaN output.

    Parameters
    ----------
    key : BlockKey
    values : mapping
        Daily outputs ``[n_crop, T]`` per variable, physical units.
    n_crop : int

    Raises
    ------
    BlockError
        When the block has crop pixels and every one of them has a NaN output (the
        model computed nothing usable: missing inputs, broken weights), or when any
        output is infinite. The block is then not recorded, so the store is never
        marked complete with it.
    """
    if n_crop == 0:
        return 0
    nan_pixel = np.zeros(n_crop, dtype=bool)
    for name, v in values.items():
        if np.isinf(v).any():
            i = int(np.argmax(np.isinf(v).any(axis=1)))
            raise BlockError(
                f"{key}: output {name!r} is infinite at crop pixel {i} of {n_crop}: an input "
                "is out of range or the checkpoint is broken (check the cubes with `kgml-grid "
                "catalog CATALOG --check-values`); the block is not recorded"
            )
        nan_pixel |= np.isnan(v).any(axis=1)
    n_nan = int(nan_pixel.sum())
    if n_nan == n_crop:
        raise BlockError(
            f"{key}: the outputs ({', '.join(values)}) are NaN at all {n_crop} crop pixels: an "
            "input the model needs is missing there (soil, weather or satellite NaN) or the "
            "checkpoint is broken; check the cubes with `kgml-grid catalog CATALOG "
            "--check-values`; the block is not recorded and the store is not marked complete"
        )
    return n_nan


# --------------------------------------------------------------------------------------
# writing and records
# --------------------------------------------------------------------------------------


def records_dir(out: str | Path) -> Path:
    """The records folder of an output store: ``OUT.zarr.kgml_blocks`` beside it."""
    out = Path(out)
    return out.with_name(out.name + RECORDS_SUFFIX)


def _state_path(records: str | Path, key: BlockKey) -> Path:
    return _records.state_path(records, key.ty, key.tx, key.chunk)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_block(tt: TileTask, bt: BlockTask, output: BlockOutput, state: State) -> None:
    """Write the block's region, then its state, then its completion record
    (:mod:`kgml_grid.records`: a line in this process's log; the state in the tile's
    slot of this chunk's parity)."""
    run, tile = tt.run, tt.tile
    assert run.out is not None and run.records is not None
    w0 = _time.perf_counter()
    ys, xs = slice(*tile.out_y), slice(*tile.out_x)
    ts = output.time_slice or (bt.t0, bt.t1)
    if output.daily:
        blockio.write_region(run.out, run.run_id, output.daily,
                             {"time": slice(*ts), "y": ys, "x": xs})  # fmt: skip
    if output.yearly is not None and output.year_slice is not None:
        blockio.write_region(run.out, run.run_id, {"yield": output.yearly},
                             {"year": slice(*output.year_slice), "y": ys, "x": xs})  # fmt: skip
    key = bt.key

    def _save_state(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, _chunk=np.int64(key.chunk), **state)  # type: ignore[arg-type]

    _atomic_write(_state_path(run.records, key), _save_state)
    line = [key.chunk, key.ty, key.tx, bt.t0, bt.t1, output.n_crop, output.n_nan,
            round(output.seconds, 4), round(_time.perf_counter() - w0, 4)]  # fmt: skip
    _records.append(run.records, run.run_id, _worker_name(), line)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def block_failure(key: BlockKey | None, exc: BaseException, out: Path | str | None) -> str:
    """The one-line message of a failed block (a full disk said as such)."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())
    if is_disk_full(exc):
        where = f" writing {out}" if out is not None else ""
        return (f"{key} failed: no space left on the device{where} ({detail}). Completed blocks "
                "are recorded: free space, then rerun with --resume")  # fmt: skip
    return f"{key} failed: {detail}. Completed blocks are recorded; fix the cause and rerun with --resume"


def run_block(bt: BlockTask, tt: TileTask, prev: State | StateRef | None) -> State:
    """The task: compute one block, write its region and records, return the new state."""
    output, state = compute_block(tt, bt, prev)
    write_block(tt, bt, output, state)
    return state


def completed_blocks(out: str | Path) -> set[BlockKey]:
    """Blocks recorded as done in the records folder of ``out`` (for tests and tools;
    the executors keep :func:`done_blocks`, an array per tile)."""
    return {
        BlockKey(int(r["chunk"]), int(r["ty"]), int(r["tx"]))
        for r in _records.iter_records(records_dir(out))
    }


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """The completion records of ``out``: ``block`` (its name), ``run_id``, ``worker``,
    ``time``, ``crop_pixels``, ``nan_crop_pixels``, ``seconds`` (compute), ``write_s``."""
    found = []
    for r in _records.iter_records(records_dir(out)):
        r["block"] = BlockKey(int(r["chunk"]), int(r["ty"]), int(r["tx"])).name
        r["time"] = [r["t0"], r["t1"]]
        found.append(r)
    return found


def done_blocks(plan: Plan, out: str | Path) -> np.ndarray:
    """``[n_ty, n_tx, n_time_chunks]`` bool: blocks recorded done (crop tiles only)."""
    n_ty, n_tx = plan.crop_counts.shape
    done = _records.done_array(records_dir(out), n_ty, n_tx, plan.n_time_chunks)
    done &= (plan.crop_counts > 0)[:, :, None]
    return done


def _resume_points(plan: Plan, out: str | Path, done: np.ndarray) -> np.ndarray:
    """First time chunk to run per tile ``[n_ty, n_tx]`` (``n_time_chunks`` when
    finished or without crop): the longest recorded prefix of chunks whose last state
    is saved (:func:`kgml_grid.records.resume_points`)."""
    return _records.resume_points(records_dir(out), done, plan.crop_counts > 0)


def _first_state(records: Path, ty: int, tx: int, first: int) -> StateRef | None:
    if first <= 0:
        return None
    return StateRef(str(_records.state_path(records, ty, tx, first - 1)), first - 1)


# --------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------


def _provenance(plan: Plan) -> dict[str, Any]:
    from kgml_grid import __version__

    return {
        "kgml_package_version": __version__,
        "kgml_created": _now(),
        outputs.MARKER_ATTR: "upscale",
    }


def run_inputs(plan: Plan) -> list[tuple[str, Path]]:
    """What a run reads: the catalog, its cubes and tower files, the checkpoint."""
    found: list[tuple[str, Path]] = [
        (f"the {layer} cube", Path(p)) for layer, p in plan.paths.items()
    ]
    with contextlib.suppress(ValueError, OSError):  # the plan's own paths are enough
        found = outputs.catalog_inputs(plan.catalog) + found
    return [*found, ("the catalog", Path(plan.catalog)), ("the checkpoint", Path(plan.checkpoint))]


_FIX = "pass --resume to finish it or --overwrite to replace it"


def check_store(plan: Plan, out: str | Path, *, resume: bool, overwrite: bool) -> outputs.Decision:
    """What may be done with ``out`` and its records folder; writes nothing
    (:func:`kgml_grid.outputs.check_target`).

    Raises
    ------
    PlanError
        When ``out`` (or its records folder) is, contains or lies inside an input of the
        run, is not an upscaling store kgml_grid wrote (whatever the flags), or exists
        and neither ``resume`` nor ``overwrite`` is set.
    """
    out = Path(out)
    inputs = run_inputs(plan)
    decision = outputs.check_target(out, kind="upscale", inputs=inputs, overwrite=overwrite, resume=resume,
                                    fix=_FIX, error=PlanError)  # fmt: skip
    records = records_dir(out)
    outputs.check_target(records, kind="records", inputs=inputs, overwrite=True,
                         option="the records folder", error=PlanError)  # fmt: skip
    if decision == "new" and os.path.lexists(records) and not (resume or overwrite):
        raise PlanError(f"--out {out}: its records folder {records} exists; {_FIX}")
    return decision


def prepare_store(plan: Plan, out: str | Path, *, resume: bool, overwrite: bool) -> np.ndarray:
    """Create the output store (or check the one to resume); return the done blocks
    (:func:`done_blocks`).

    Only an upscaling store kgml_grid wrote (and its records) is ever replaced
    (:func:`check_store`). Creating a store writes metadata only (Zarr v3 arrays
    sharded one shard per block, :mod:`kgml_grid.outstore`): the same cost for a
    thousand blocks or a million.

    Raises
    ------
    PlanError
        As :func:`check_store`, or when the store to resume was written by another plan
        or checkpoint (naming the difference).
    """
    out = Path(out)
    records = records_dir(out)
    decision = check_store(plan, out, resume=resume, overwrite=overwrite)
    if decision == "resume":
        attrs = _store_attrs(out)
        if "kgml_plan" not in attrs:
            raise PlanError(
                f"--resume: {out} is not a kgml_grid upscaling store (no 'kgml_plan' attribute)"
            )
        stored = json.loads(attrs["kgml_plan"])
        if stored.get("checkpoint_hash") != plan.checkpoint_hash:
            raise PlanError(
                f"--resume: {out} was written with checkpoint hash "
                f"{str(stored.get('checkpoint_hash'))[:12]} ({stored.get('checkpoint')}), this run "
                f"uses {plan.checkpoint_hash[:12]} ({plan.checkpoint}); pass --overwrite to start again"
            )
        diffs = plan.differences(stored)
        if diffs:
            raise PlanError(
                f"--resume: {out} was written with another plan: "
                + "; ".join(diffs)
                + "; pass --overwrite to start again"
            )
        _check_inputs(plan, out, records)
        rec_plan = records / "plan.json"
        if rec_plan.exists() and json.loads(rec_plan.read_text()).get("plan_id") != plan.plan_id:
            outputs.remove_output(
                records, "records", error=PlanError
            )  # another run's: not ours to trust
        if not rec_plan.exists():
            _write_records_plan(plan, records)
        if not (records / INPUTS_FILE).exists():
            _write_inputs(records, input_fingerprints(plan.paths))
        return done_blocks(plan, out)
    inputs = input_fingerprints(plan.paths)  # before anything is written
    # a new store: records of a store that is gone, or the old store and its records
    if decision == "replace":
        outputs.remove_output(out, "upscale", error=PlanError)
    outputs.remove_output(records, "records", error=PlanError)
    out.parent.mkdir(parents=True, exist_ok=True)
    # shards are regular (Zarr): one tile, the usual time chunk (all years for yield).
    # Uneven time chunks are safe: a tile's blocks run one after the other. The
    # template is one Dask chunk per variable: no per-block work here.
    template = plan.template(provenance=_provenance(plan), chunked=False)
    lay = plan.output_layout()
    shard_enc = {n: {"chunks": lay.chunks[n], "shards": lay.shards[n]} for n in lay.variables}
    cubes.init_store(template, out, plan.output_chunks, compressors=_output_compressors(),
                     encoding=shard_enc)  # fmt: skip
    _write_records_plan(plan, records)
    _write_inputs(records, inputs)
    return np.zeros((*plan.crop_counts.shape, plan.n_time_chunks), dtype=bool)


def _write_inputs(records: Path, inputs: Mapping[str, Any]) -> None:
    _atomic_write(records / INPUTS_FILE, lambda p: p.write_text(fingerprint_dumps(inputs)))


def _check_inputs(plan: Plan, out: Path, records: Path) -> None:
    """Refuse to resume when an input cube changed since the store was started (the
    fingerprints in the records; :mod:`kgml_grid.fingerprint`)."""
    path = records / INPUTS_FILE
    if not path.exists():
        warnings.warn(
            f"--resume: the records of {out} hold no fingerprint of the inputs (started by an "
            "older kgml_grid?): cannot tell whether the cubes changed since; recording them now",
            stacklevel=3,
        )
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise PlanError(
            f"--resume: {path} is not valid JSON; pass --overwrite to start again"
        ) from None
    changes, unchecked = compare_fingerprints(old, input_fingerprints(plan.paths))
    if changes:
        raise PlanError(
            f"--resume: the inputs of {out} changed since the run started: "
            + "; ".join(changes)
            + ". Finishing it would mix blocks computed from the old and the new inputs: "
            "pass --overwrite to start again (or restore the inputs)"
        )
    for u in unchecked:
        warnings.warn(
            f"--resume: {u}; make sure it did not change since the run started", stacklevel=3
        )


def _output_compressors() -> tuple[Any, ...]:
    # Zstd level 1: about the ratio of Zarr's default (level 0, i.e. 3) on the model's
    # outputs at a fraction of its encoding time (benchmarks/results/output_codecs.json)
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=1),)


def _write_records_plan(plan: Plan, records: Path) -> None:
    records.mkdir(parents=True, exist_ok=True)
    outputs.write_marker(records, "records")
    (records / _records.DONE).mkdir(exist_ok=True)
    (records / "plan.json").write_text(
        json.dumps({"plan_id": plan.plan_id, "plan": plan.to_dict()}, indent=1)
    )


def _store_attrs(out: Path) -> dict[str, Any]:
    import zarr

    try:
        return dict(zarr.open_group(str(out), mode="r", zarr_format=3).attrs)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise PlanError(f"{out} cannot be opened as a Zarr v3 store: {e}") from None


def finish_store(plan: Plan, out: str | Path, *, n_done: int) -> None:
    """Mark the store complete (only when every block is recorded), then write its
    consolidated metadata (so that ``xr.open_zarr(OUT)`` opens it without a warning)."""
    records = records_dir(out)
    done = done_blocks(plan, out)
    crop = plan.crop_counts > 0
    missing = crop[:, :, None] & ~done
    if missing.any():
        ty, tx, c = (int(v[0]) for v in np.nonzero(missing))
        raise BlockError(
            f"{out}: {int(missing.sum())} blocks are not recorded (first "
            f"{BlockKey(c, ty, tx)}); rerun with --resume"
        )
    last = plan.n_time_chunks - 1
    if last > 0:  # keep only the final state of each tile
        for ty, tx in zip(*np.nonzero(crop), strict=True):
            _records.state_path(records, int(ty), int(tx), last - 1).unlink(missing_ok=True)
    n_nan = _nan_crop_pixels(plan, records)
    if n_nan:
        warnings.warn(
            f"{out}: {n_nan} of {plan.n_crop_pixels} crop pixels have NaN outputs (their inputs "
            "are missing, e.g. soil NaN there); check the cubes with `kgml-grid catalog CATALOG "
            "--check-values`", OutputWarning, stacklevel=2,
        )  # fmt: skip
    cubes.mark_complete(out, kgml_finished=_now(), kgml_blocks_done=int(n_done),
                        kgml_nan_crop_pixels=n_nan)  # fmt: skip
    _consolidate(out)


def _consolidate(out: str | Path) -> None:
    """Consolidated metadata, after the completion marker (it copies the attributes)."""
    import zarr

    with warnings.catch_warnings():  # "not part of the Zarr v3 specification": known, wanted
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(out), zarr_format=3)


def _nan_crop_pixels(plan: Plan, records: Path) -> int:
    """Crop pixels with a NaN output, from each tile's last record (a NaN carried in the
    model state stays NaN, so the last time chunk counts them all)."""
    last = plan.n_time_chunks - 1
    per_tile: dict[tuple[int, int], int] = {}
    for r in _records.iter_records(records):
        if int(r["chunk"]) == last:
            per_tile[(int(r["ty"]), int(r["tx"]))] = int(r["nan_crop_pixels"])
    return int(sum(per_tile.values()))


def open_output(out: str | Path) -> xr.Dataset:
    """The output store, lazily (Dask-backed), CRS decoded."""
    return xr.open_zarr(str(out), consolidated=False, decode_coords="all")


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


@dataclass
class UpscaleResult:
    """What a run did.

    Attributes
    ----------
    plan : Plan
    out : Path or None
        The output store (None for an in-memory serial run or a dry run).
    computed : int
        Blocks computed by this run (on ``--resume``: only the missing ones).
    already_done : int
        Blocks found recorded and not recomputed.
    seconds : float
    dashboard : str or None
    dry_run : bool
    """

    plan: Plan
    out: Path | None
    computed: int = 0
    already_done: int = 0
    seconds: float = 0.0
    dashboard: str | None = None
    dry_run: bool = False
    _memory: xr.Dataset | None = field(default=None, repr=False)

    @property
    def dataset(self) -> xr.Dataset | None:
        """The output as a lazy Dataset (in-memory for ``out=None``; None for a dry run)."""
        if self._memory is not None:
            return self._memory
        if self.out is None or self.dry_run:
            return None
        return open_output(self.out)

    def summary(self) -> str:
        if self.dry_run:
            return f"dry run: nothing computed or written\n{self.plan}"
        px_days = self.plan.n_crop_pixels * self.plan.n_days
        rate = px_days * (self.computed / max(self.plan.n_blocks, 1)) / max(self.seconds, 1e-9)
        where = f" into {self.out}" if self.out else " in memory"
        return (
            f"upscaled {self.plan.n_crop_pixels} crop pixels x {self.plan.n_days} days{where}: "
            f"{self.computed} blocks computed, {self.already_done} already done, "
            f"{len(self.plan.skipped_tiles)} tiles skipped (no crop), {self.seconds:.1f} s "
            f"({rate / 1e6:.2f} M pixel-days/s)"
        )


# --------------------------------------------------------------------------------------
# the serial reference executor
# --------------------------------------------------------------------------------------


def _tile_tasks(
    plan: Plan,
    out: str | Path | None,
    run_id: str,
    tiles: Iterable[tuple[int, int]],
    *,
    precision: str = "fp32",
) -> dict[tuple[int, int], TileTask]:
    run = RunConfig.from_plan(plan, out, run_id, precision=precision)
    return {t: TileTask(run, plan.tile_spec(*t)) for t in tiles}


def _block_task(plan: Plan, key: BlockKey) -> BlockTask:
    t0, t1 = plan.time_bounds[key.chunk]
    return BlockTask(key, t0, t1)


class SerialExecutor:
    """Run a plan in this process, one block after another: the reference executor.

    With ``out`` it writes, records and resumes exactly like :class:`DaskExecutor`;
    with ``out=None`` it writes nothing and returns the result in memory.
    """

    def __init__(self, *, progress: bool = False, precision: str = "fp32") -> None:
        from kgml_grid.infer import check_precision

        self.progress = progress
        self.precision = check_precision(precision)

    def execute(
        self,
        plan: Plan,
        out: str | Path | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> UpscaleResult:
        t0 = _time.perf_counter()
        run_id = uuid.uuid4().hex[:12]
        if out is None:
            return self._in_memory(plan, run_id, t0)
        done = prepare_store(plan, out, resume=resume, overwrite=overwrite)
        first = _resume_points(plan, out, done)
        n_chunks = plan.n_time_chunks
        n_todo = _schedule.n_todo(plan.crop_counts, first, n_chunks)
        run = RunConfig.from_plan(plan, out, run_id, precision=self.precision)
        records = records_dir(out)
        from tqdm.auto import tqdm

        bar = tqdm(total=n_todo, desc="upscaling", unit="block", disable=not self.progress)
        try:  # tile-major, as the Dask executor
            for ty, tx, c0 in _schedule.todo_tiles(plan.crop_counts, first, n_chunks):
                tt = TileTask(run, plan.tile_spec(ty, tx))
                state: State | StateRef | None = _first_state(records, ty, tx, c0)
                for c in range(c0, n_chunks):
                    key = BlockKey(c, ty, tx)
                    try:
                        state = run_block(_block_task(plan, key), tt, state)
                    except OSError as e:
                        if not is_disk_full(e):
                            raise
                        raise BlockError(block_failure(key, e, Path(out))) from e
                    bar.update(1)
        finally:
            bar.close()
            blockio.drop_run(run_id)
        finish_store(plan, out, n_done=plan.n_blocks)
        return UpscaleResult(plan, Path(out), computed=n_todo,
                             already_done=plan.n_blocks - n_todo, seconds=_time.perf_counter() - t0)  # fmt: skip

    def _in_memory(self, plan: Plan, run_id: str, t0: float) -> UpscaleResult:
        tiles = _tile_tasks(plan, None, run_id, plan.crop_tiles, precision=self.precision)
        ds = plan.template()
        arrays = {
            str(n): np.full(v.shape, np.nan, dtype="float32") for n, v in ds.data_vars.items()
        }
        state: dict[tuple[int, int], State | None] = dict.fromkeys(tiles)
        try:
            for key in plan.blocks:
                bt = _block_task(plan, key)
                tt = tiles[key.tile]
                output, state[key.tile] = compute_block(tt, bt, state[key.tile])
                ys, xs = slice(*tt.tile.out_y), slice(*tt.tile.out_x)
                ts = slice(*(output.time_slice or (bt.t0, bt.t1)))
                for n, v in output.daily.items():
                    arrays[n][ts, ys, xs] = v
                if output.yearly is not None and output.year_slice is not None:
                    arrays["yield"][slice(*output.year_slice), ys, xs] = output.yearly
        finally:
            blockio.drop_run(run_id)
        for n, a in arrays.items():
            ds[n] = ds[n].copy(data=a)
        return UpscaleResult(plan, None, computed=plan.n_blocks, seconds=_time.perf_counter() - t0,
                             _memory=ds)  # fmt: skip


# --------------------------------------------------------------------------------------
# the Dask executor
# --------------------------------------------------------------------------------------


@dataclass
class UpscaleGraph:
    """The lazy Dask graph of a run: one task per block, one data task per tile.

    Attributes
    ----------
    blocks : dict
        :class:`BlockKey` -> ``Delayed`` returning the tile's state after the block.
    tiles : dict
        ``(ty, tx)`` -> ``Delayed`` data task holding the :class:`TileTask`.
    """

    blocks: dict[BlockKey, Any]
    tiles: dict[tuple[int, int], Any]
    run_id: str

    @property
    def dask(self) -> Any:
        """The merged ``HighLevelGraph``."""
        from dask.highlevelgraph import HighLevelGraph

        return HighLevelGraph.merge(
            *(d.dask for d in (*self.blocks.values(), *self.tiles.values()))
        )

    @property
    def n_tasks(self) -> int:
        return len(self.dask)

    def __len__(self) -> int:
        return self.n_tasks


def build_graph(
    plan: Plan,
    out: str | Path,
    *,
    done: set[BlockKey] | frozenset[BlockKey] = frozenset(),
    first: Mapping[tuple[int, int], int] | None = None,
    run_id: str | None = None,
    precision: str = "fp32",
) -> UpscaleGraph:
    """The run's whole lazy graph: for each time chunk, one map of :func:`run_block`
    over the space tiles, each block taking the previous chunk's block of its tile.

    Not what :class:`DaskExecutor` submits (it feeds the scheduler a bounded window,
    :mod:`kgml_grid.schedule`): kept as the unbounded design's graph, which the tests
    (graph size independent of the model) and ``benchmarks/upscale_acceptance.py``
    (the cost of a whole-run graph) measure. Building computes nothing and writes
    nothing. The model is not in the graph: tasks
    carry the checkpoint's path and hash and find the model on their worker.

    Parameters
    ----------
    done : set of BlockKey
        Blocks already recorded (``--resume``): left out.
    first : mapping, optional
        First time chunk per tile (from the records); default derived from ``done``.
    precision : {'fp32', 'tf32', 'bf16'}
        Model precision on the workers (:func:`kgml_grid.infer.precision_context`).
    """
    import dask

    run_id = run_id or uuid.uuid4().hex[:12]
    if first is None:
        first = {}
        for tile in plan.crop_tiles:
            c = 0
            while c < plan.n_time_chunks and BlockKey(c, *tile) in done:
                c += 1
            first[tile] = c
    token = f"{plan.plan_id[:8]}{run_id[:8]}"
    active = [t for t in plan.crop_tiles if first.get(t, 0) < plan.n_time_chunks]
    tasks = _tile_tasks(plan, out, run_id, active, precision=precision)
    tiles = {
        t: dask.delayed(tasks[t], name=(f"kgml-tile-{token}", *t), traverse=False) for t in active
    }
    records = records_dir(out)
    prev: dict[tuple[int, int], Any] = {t: _first_state(records, *t, first[t]) for t in active}
    fn = dask.delayed(run_block, pure=True, traverse=False)
    blocks: dict[BlockKey, Any] = {}
    for c in range(plan.n_time_chunks):  # one map over the tiles per time chunk
        for t in active:
            if c < first[t]:
                continue
            key = BlockKey(c, *t)
            blocks[key] = fn(_block_task(plan, key), tiles[t], prev[t],
                             dask_key_name=(f"kgml-block-{token}", c, *t))  # fmt: skip
            prev[t] = blocks[key]
    return UpscaleGraph(blocks, tiles, run_id)


class DaskExecutor:
    """Run a plan on a Dask cluster (see the module docstring and
    :mod:`kgml_grid.schedule`: a bounded window of blocks, tile-major chains).

    Parameters
    ----------
    client : distributed.Client
    device : str
        Worker device preference for the model (``'auto'``: GPU when the worker has one).
    progress : bool
        A progress bar (a widget in Jupyter).
    max_tasks : int
        Most blocks in the scheduler at once (:data:`kgml_grid.schedule.DEFAULT_MAX_TASKS`).
    precision : {'fp32', 'tf32', 'bf16'}
        Model precision on the workers (:func:`kgml_grid.infer.precision_context`).

    Attributes
    ----------
    stats : dict
        Of the last run: the window, the time to submit the first window, the most
        blocks held at once, the blocks' own compute and write seconds.
    """

    def __init__(
        self,
        client: Any,
        *,
        device: str = "auto",
        progress: bool = True,
        max_tasks: int = _schedule.DEFAULT_MAX_TASKS,
        precision: str = "fp32",
    ) -> None:
        from kgml_grid.infer import check_precision

        _schedule.window_for(1, max_tasks, 1)  # refuses max_tasks < 1 here
        self.precision = check_precision(precision)
        self.client = client
        self.device = device
        self.progress = progress
        self.max_tasks = int(max_tasks)
        self.stats: dict[str, Any] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask a running :meth:`execute` (in another thread) to stop after the next
        finished block: the rest is cancelled and it raises a :class:`BlockError`;
        recorded blocks stay for ``--resume`` (benchmarks sample a run this way)."""
        self._stop.set()

    def check(self, plan: Plan) -> None:
        """Refuse a plan whose tasks do not fit the workers' memory (before any write)."""
        from kgml_grid.cluster import worker_memory_limit

        plan.check_memory(worker_memory_limit(self.client), what="the smallest worker memory limit")

    def execute(
        self, plan: Plan, out: str | Path, *, resume: bool = False, overwrite: bool = False
    ) -> UpscaleResult:
        from kgml_grid.worker import register_model

        t0 = _time.perf_counter()
        self.check(plan)
        out = Path(out).resolve()
        check_store(plan, out, resume=resume, overwrite=overwrite)  # before anything runs
        register_model(self.client, plan.checkpoint, plan.checkpoint_hash, device=self.device)
        t_store = _time.perf_counter()
        done = prepare_store(plan, out, resume=resume, overwrite=overwrite)
        first = _resume_points(plan, out, done)
        self.stats = {"prepare_store_s": _time.perf_counter() - t_store}
        n_todo = _schedule.n_todo(plan.crop_counts, first, plan.n_time_chunks)
        run_id = uuid.uuid4().hex[:12]
        link = dashboard_link(self.client)
        if self.progress and link:
            print(f"dask dashboard: {link}", file=sys.stderr)
        if resume and plan.n_blocks - n_todo:
            print(f"resuming {out}: {plan.n_blocks - n_todo} of {plan.n_blocks} blocks done, "
                  f"computing {n_todo}", file=sys.stderr)  # fmt: skip
        try:
            if n_todo:
                self._run(plan, out, first, run_id, n_todo)
        finally:
            with contextlib.suppress(Exception):  # best effort: frees the workers' chunk caches
                self.client.run(blockio.drop_run, run_id)
        finish_store(plan, out, n_done=plan.n_blocks)
        return UpscaleResult(plan, out, computed=n_todo, already_done=plan.n_blocks - n_todo,
                             seconds=_time.perf_counter() - t0, dashboard=link)  # fmt: skip

    def _run(self, plan: Plan, out: Path, first: np.ndarray, run_id: str, n_todo: int) -> None:
        from distributed import as_completed
        from tqdm.auto import tqdm

        threads = sum(self.client.nthreads().values()) or 1
        win = _schedule.window_for(plan.n_time_chunks, self.max_tasks, threads)
        feed = _Feed(plan, out, first, run_id, win, precision=self.precision)
        self._stop.clear()
        t_sub = _time.perf_counter()
        ac = as_completed(self.client.compute(feed.refill()))
        self.stats.update(window=win.tasks, segment=win.segment, threads=threads,
                          first_window_s=_time.perf_counter() - t_sub,
                          first_window_blocks=feed.held)  # fmt: skip
        bar = tqdm(total=n_todo, desc="upscaling", unit="block", disable=not self.progress)
        try:
            failure = self._wait(ac, feed, bar, out)
        finally:
            bar.close()
        self.stats.update(peak_held=feed.peak, blocks=feed.n_done,
                          run_s=_time.perf_counter() - t_sub)  # fmt: skip
        if failure is not None:
            # no future may stay referenced by the traceback (in a notebook it lives on):
            # the scheduler keeps a task while a future of it exists
            del ac
            raise failure

    def _wait(self, ac: Any, feed: _Feed, bar: Any, out: Path | None) -> BlockError | None:
        """Count the blocks as they finish and keep the window full; at the first
        failure cancel the rest and return the error (raised by the caller, once no
        future is referenced here)."""
        for batch in ac.batches():
            for fut in batch:
                key = feed.key_of(fut.key)
                if fut.status == "error":
                    exc = fut.exception()
                    self.client.cancel([fut, *batch, *list(getattr(ac, "futures", ()))])
                    failure = BlockError(block_failure(key, exc, out))
                    failure.__cause__ = exc
                    return failure
                if fut.status == "cancelled":
                    return BlockError(f"{key} was cancelled; rerun with --resume")
                feed.finished(fut.key)
                bar.update(1)
            del batch, fut  # a block's state is dropped once its successor has it
            if self._stop.is_set():
                self.client.cancel(list(getattr(ac, "futures", ())))
                return BlockError(f"stopped after {feed.n_done} blocks; rerun with --resume")
            more = feed.refill()
            if more:
                ac.update(self.client.compute(more))
        return None


class _Feed:
    """The client side of the window: which tiles run, their segments' Dask keys,
    and the next segments to submit (:mod:`kgml_grid.schedule`)."""

    def __init__(
        self,
        plan: Plan,
        out: Path,
        first: np.ndarray,
        run_id: str,
        win: _schedule.Window,
        *,
        precision: str = "fp32",
    ) -> None:
        import dask

        self.plan, self.win = plan, win
        self.run = RunConfig.from_plan(plan, out, run_id, precision=precision)
        self.records = records_dir(out)
        self.tiles = _schedule.todo_tiles(plan.crop_counts, first, plan.n_time_chunks)
        self.token = f"{plan.plan_id[:8]}{run_id[:8]}"
        self.fn = dask.delayed(run_block, pure=True, traverse=False)
        self.keys: dict[str, tuple[BlockKey, int]] = {}  # Dask key -> (block, segment id)
        self.segments: dict[int, tuple[TileTask, int, int]] = {}  # id -> (tile, end, length)
        self.resume: deque[tuple[TileTask, int]] = deque()  # tiles whose next segment is due
        self.held = self.peak = self.n_done = 0
        self._next_id = 0

    def key_of(self, dask_key: Any) -> BlockKey | None:
        item = self.keys.get(dask_key)
        return None if item is None else item[0]

    def _segment(self, tt: TileTask, c0: int) -> list[Any]:
        n_chunks = self.plan.n_time_chunks
        c1 = min(n_chunks, c0 + self.win.segment)
        sid = self._next_id
        self._next_id += 1
        prev: Any = _first_state(self.records, tt.tile.ty, tt.tile.tx, c0)
        out = []
        for c in range(c0, c1):
            key = BlockKey(c, tt.tile.ty, tt.tile.tx)
            name = f"kgml-block-{self.token}-{key.name}"
            prev = self.fn(_block_task(self.plan, key), tt, prev, dask_key_name=name)
            self.keys[name] = (key, sid)
            out.append(prev)
        self.segments[sid] = (tt, c1, c1 - c0)
        self.held += c1 - c0
        self.peak = max(self.peak, self.held)
        return out

    def refill(self) -> list[Any]:
        """Delayed blocks to submit now: due segments of running tiles first (tile-major),
        then new tiles, while the window has room."""
        todo: list[Any] = []
        while self.resume and self.held + self.win.segment <= self.win.tasks:
            tt, c0 = self.resume.popleft()
            todo += self._segment(tt, c0)
        while self.held + self.win.segment <= self.win.tasks or not (self.held or todo):
            nxt = next(self.tiles, None)
            if nxt is None:
                break
            ty, tx, c0 = nxt
            todo += self._segment(TileTask(self.run, self.plan.tile_spec(ty, tx)), c0)
        return todo

    def finished(self, dask_key: Any) -> None:
        """A block is done: at the end of its segment, free its room in the window and
        queue the tile's next segment (from the state saved on disk)."""
        key, sid = self.keys.pop(dask_key)
        self.n_done += 1
        tt, end, length = self.segments[sid]
        if key.chunk == end - 1:
            del self.segments[sid]
            self.held -= length
            if end < self.plan.n_time_chunks:
                self.resume.append((tt, end))


# --------------------------------------------------------------------------------------
# the reference: a direct in-memory run
# --------------------------------------------------------------------------------------


def direct_run(
    plan: Plan,
    *,
    pixels_per_group: int = 1024,
    batch_pixels: int = 256,
    time_block: int | None = None,
) -> xr.Dataset:
    """The model over the plan's crop pixels, whole time range at once, in memory.

    No tiles, no time chunks, no Dask: inputs through :func:`kgml_grid.features.pixel_inputs`
    and the model run from its initial state over every day
    (:func:`kgml_grid.infer.run_model`; ``time_block`` days per model call, default its
    choice for the device). The reference the executors are compared against.
    """
    import dask

    from kgml_grid.features import pixel_inputs
    from kgml_grid.grid import coarse_index
    from kgml_grid.infer import run_model
    from kgml_grid.model import DAILY_TARGETS
    from kgml_grid.worker import get_checkpoint

    ckpt = get_checkpoint(plan.checkpoint, plan.checkpoint_hash)
    layers = {
        k: xr.open_zarr(p, consolidated=False, chunks=None, decode_coords="all")
        for k, p in plan.paths.items()
    }
    iy0, iy1, ix0, ix1 = plan.window
    years = plan.years
    crop = np.asarray(layers["crop"]["crop_type"].isel(
        year=[plan.crop_year_index[y] for y in years], y=slice(iy0, iy1), x=slice(ix0, ix1)).values)  # fmt: skip
    rr, cc = np.nonzero((crop > 0).any(axis=0))
    widx = coarse_index(plan.cube_grid, plan.weather_grid)
    ds = plan.template()
    arrays = {n: np.full(ds[n].shape, np.nan, dtype="float32") for n in (*DAILY_VARS, "yield")}
    col = {name: i for i, name in enumerate(DAILY_TARGETS)}
    with dask.config.set(scheduler="threads"):
        for g in range(0, rr.size, pixels_per_group):
            r, c = rr[g : g + pixels_per_group], cc[g : g + pixels_per_group]
            time, daily, soil, cby = pixel_inputs(
                layers,
                r + iy0,
                c + ix0,
                time=slice(plan.start, plan.end),
                weather_index=widx,
                features=ckpt.features,
            )
            x, _ = assemble(
                time=time, daily=daily, soil=soil, crop_by_year=cby, features=ckpt.features
            )
            xn = np.ascontiguousarray(ckpt.normalizer.normalize_features(x), dtype="float32")
            ye = year_end_mask(time)
            ye_idx = np.flatnonzero(ye)
            res = run_model(ckpt.model, xn, ye, None, device=ckpt.device,
                            batch_pixels=batch_pixels, time_block=time_block)  # fmt: skip
            out_d, out_y = res.daily, res.yield_
            phys = ckpt.normalizer.denormalize_outputs(out_d)
            ra = np.maximum(phys[..., col["ra"]], 0)
            rh = np.maximum(phys[..., col["rh"]], 0)
            vals = {"ra": ra, "rh": rh, "reco": ra + rh, "nee": phys[..., col["nee"]],
                    "gpp": np.maximum(phys[..., col["gpp"]], 0)}  # fmt: skip
            for n in DAILY_VARS:
                arrays[n][:, r, c] = vals[n].T
            if plan.has_yield and ye_idx.size:
                yv = ckpt.normalizer.denormalize_yield(out_y)
                for j, year in enumerate(time.year[ye_idx]):
                    if plan.partial_first_season and int(year) == years[0]:
                        continue
                    arrays["yield"][int(year) - years[0], r, c] = yv[:, j]
    for n, a in arrays.items():
        ds[n] = ds[n].copy(data=a)
    return ds


# --------------------------------------------------------------------------------------
# one call: plan, cluster, execute
# --------------------------------------------------------------------------------------


def upscale(
    catalog: Any,
    model: str | Path,
    out: str | Path,
    *,
    start: Any = None,
    end: Any = None,
    bbox: Any = None,
    bbox_crs: str | None = None,
    chunks: str | Mapping[str, Any] | None = None,
    cluster: str | Path | Mapping[str, Any] | None = "local",
    client: Any = None,
    n_workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    batch_pixels: int | None = None,
    device: str = "auto",
    connect_timeout: float | None = None,
    precision: str = "fp32",
    frequency: str = "daily",
    variables: str | Sequence[str] | None = None,
    max_tasks: int = _schedule.DEFAULT_MAX_TASKS,
) -> UpscaleResult:
    """Plan and run an upscaling: the library call behind ``kgml-grid upscale``.

    Every check runs before any compute and before anything is written: checkpoint
    against the schema and the cubes, catalog, bbox, dates, chunks
    (:func:`kgml_grid.plan.make_plan`), then the tasks' memory against the workers'.

    Parameters
    ----------
    catalog, model, start, end, bbox, bbox_crs, chunks, batch_pixels
        See :func:`kgml_grid.plan.make_plan`.
    out : path
        The output Zarr store (``OUT.zarr``); its records go to ``OUT.zarr.kgml_blocks``.
    cluster : str, path or mapping
        For :func:`kgml_grid.cluster.make_client`: ``'local'``, ``'tcp://host:port'``, a
        scheduler file, or a ``cluster/*.yaml`` file. ``'serial'`` runs the serial
        reference executor in this process (no Dask).
    client : distributed.Client, optional
        Use this client (its cluster is left running) instead of ``cluster``.
    resume, overwrite : bool
        Finish an interrupted run (only missing blocks are computed) / replace ``out``.
    dry_run : bool
        Plan only: nothing is computed, no cluster started, nothing written.
    n_workers : int, optional
        Workers of a local cluster (>= 1).
    device : str
        Worker device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (spelling checked here,
        before any cluster starts).
    connect_timeout : float, optional
        Seconds to wait for an existing scheduler (default
        :data:`kgml_grid.cluster.CONNECT_TIMEOUT`, 20 s).
    precision : {'fp32', 'tf32', 'bf16'}
        Model precision (:func:`kgml_grid.infer.precision_context`): ``fp32`` exact;
        ``tf32`` CUDA only; ``bf16`` autocast (CUDA, or a CPU with bf16 support).
    frequency, variables
        Of the output (:func:`kgml_grid.plan.make_plan`, :mod:`kgml_grid.outstore`).
    max_tasks : int
        Most blocks in the Dask scheduler at once (:mod:`kgml_grid.schedule`).

    Returns
    -------
    UpscaleResult
        ``.dataset`` is the lazy output; ``.plan`` the plan.
    """
    from kgml_grid.checkpoint import check_device_spec
    from kgml_grid.cluster import check_n_workers
    from kgml_grid.infer import check_precision

    device = check_device_spec(device)
    check_precision(precision, "cpu" if device == "cpu" else None)  # auto/cuda: workers decide
    n_workers = check_n_workers(n_workers)
    _schedule.window_for(1, max_tasks, 1)  # refuses max_tasks < 1 before planning
    plan = make_plan(catalog, model, start=start, end=end, bbox=bbox, bbox_crs=bbox_crs,
                     chunks=chunks, batch_pixels=batch_pixels, device=device,
                     frequency=frequency, variables=variables)  # fmt: skip
    out = Path(out).resolve()
    if dry_run:
        outputs.check_not_input(out, run_inputs(plan), error=PlanError)
        return UpscaleResult(plan, out, dry_run=True)
    check_store(plan, out, resume=resume, overwrite=overwrite)  # before a cluster starts
    if client is None and str(cluster) == "serial":
        return SerialExecutor(progress=progress, precision=precision).execute(
            plan, out, resume=resume, overwrite=overwrite
        )
    if client is not None:
        return DaskExecutor(
            client, device=device, progress=progress, max_tasks=max_tasks, precision=precision
        ).execute(plan, out, resume=resume, overwrite=overwrite)
    from kgml_grid.cluster import close_client, make_client

    own = make_client(
        cluster or "local", n_workers=n_workers, verbose=progress, connect_timeout=connect_timeout
    )
    try:
        return DaskExecutor(
            own, device=device, progress=progress, max_tasks=max_tasks, precision=precision
        ).execute(plan, out, resume=resume, overwrite=overwrite)
    finally:
        close_client(own)
