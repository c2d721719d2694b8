"""The upscaling plan: pure chunk arithmetic over metadata (DESIGN section 6).

A :class:`Plan` says *what* an upscaling run does, before anything runs: the target
window of the fine grid and the time range, the chunk shape (space tile x time chunk),
every block (one :class:`BlockKey` per tile and time chunk), the tiles with no crop
pixel (skipped), the number of tasks, the memory one task needs, and the output
template. It is printable (``kgml-grid upscale --dry-run`` prints it), comparable
(:attr:`Plan.plan_id`, used by ``--resume``) and testable without a cluster.
Executors (:mod:`kgml_grid.execute`) take a plan and run it; the plan never runs
anything itself.

Making a plan (:func:`make_plan`) checks everything that can be checked before any
compute, and refuses bad input with a :class:`PlanError` that names the value and
the fix: a checkpoint whose features or units differ from the schema the cubes
follow, a catalog whose layers do not validate or align, a bounding box outside the
grid, dates outside the cubes, chunks that do not parse, input values that are
impossible (:mod:`kgml_grid.values`, sampled: a few chunks per input variable). Only
metadata is read, plus those sampled chunks and the crop-type layer (a few bytes per
pixel) to find the tiles without crop.

Chunk strings
-------------
``"y=48,x=48,time=365"``; ``-1`` means the whole dimension, as in Dask. ``y`` or ``x``
left out takes the satellite cube's chunk; ``time`` left out means one chunk per
calendar year (365 or 366 days; partial at the ends of a run that starts or ends
mid-year). From Python, ``time`` may also be a tuple of chunk lengths (uneven chunks,
``sum == number of days``); ``y`` and ``x`` must be regular (one tile size) so that
every tile owns its own output Zarr chunks.

Yield and partial seasons
-------------------------
The model's yield head accumulates its attention over a season in the state carried
from chunk to chunk, so the yearly yield is exact for any time chunking. A season cut
by the run itself is not: when the run starts after 1 January, the first year's yield
is written as NaN; when it ends before 31 December, the last year's yield is NaN (no
year end was reached). Both are said in the ``yield`` variable's ``comment``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import outstore, schema
from kgml_grid.grid import GridSpec, cells_spanned, coarse_index

__all__ = [
    "DAILY_VARS",
    "YEARLY_VARS",
    "BlockKey",
    "Blocks",
    "Plan",
    "PlanError",
    "TileSpec",
    "format_bytes",
    "make_plan",
    "parse_bytes",
    "parse_chunks",
]

#: Daily variables written by the upscaling (the schema's outputs plus the model's GPP).
DAILY_VARS: tuple[str, ...] = (*schema.DAILY_OUTPUTS, "gpp")
#: Yearly variables written by the upscaling.
YEARLY_VARS: tuple[str, ...] = schema.YEARLY_OUTPUTS
#: Pixels per model batch at most (fewer when a long time chunk needs the memory).
MAX_BATCH_PIXELS = 4096
#: Skipped tiles listed by :meth:`Plan.to_dict` at most (all are counted).
SKIPPED_LISTED = 1024
#: Memory allowed for the model's activations of one batch (bytes), by default.
ACTIVATION_BUDGET = 128 * 2**20
#: A task may use at most this fraction of a worker's memory limit.
MEMORY_FRACTION = 0.5

_GPP_COMMENT = (
    "the model's estimate of GPP (its GPP head, a denoised satellite GPP); clamped at >= 0"
)


class PlanError(ValueError):
    """The run cannot be planned as asked; nothing was computed or written."""


# --------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class BlockKey:
    """One block of the run: time chunk ``chunk`` of space tile (``ty``, ``tx``).

    Immutable and hashable, shared by the plan, the executors, the Dask keys and the
    completion records (:attr:`name`), the way xarray-beam keys its chunks.
    """

    chunk: int
    ty: int
    tx: int

    @property
    def tile(self) -> tuple[int, int]:
        """The space tile ``(ty, tx)``."""
        return (self.ty, self.tx)

    @property
    def name(self) -> str:
        """File-name form, e.g. ``t0003_y0001_x0000``."""
        return f"t{self.chunk:04d}_y{self.ty:04d}_x{self.tx:04d}"

    @classmethod
    def parse(cls, name: str) -> BlockKey:
        """Inverse of :attr:`name`."""
        m = re.fullmatch(r"t(\d+)_y(\d+)_x(\d+)", name)
        if not m:
            raise ValueError(f"not a block name: {name!r} (expected like 't0003_y0001_x0000')")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    def __str__(self) -> str:
        return f"block(time chunk {self.chunk}, tile y{self.ty} x{self.tx})"


class Blocks(Sequence[BlockKey]):
    """The blocks of a plan as a lazy sequence: time chunk by time chunk, crop tiles
    row-major within each (the order :attr:`Plan.blocks` always had).

    Holds the crop-tile mask and the number of time chunks only; a :class:`BlockKey` is
    made when asked for (``blocks[i]``, iteration), ``len`` and ``in`` are arithmetic.
    Compares equal to any sequence of the same keys in the same order.
    """

    def __init__(self, crop: np.ndarray, n_time_chunks: int) -> None:
        self._crop = np.asarray(crop, dtype=bool)
        self._flat = np.flatnonzero(self._crop)  # crop tiles, row-major (one int each)
        self._nx = int(self._crop.shape[1]) if self._crop.ndim == 2 else 1
        self._nt = int(n_time_chunks)

    def __len__(self) -> int:
        return self._flat.size * self._nt

    def _key(self, i: int) -> BlockKey:
        c, j = divmod(i, self._flat.size)
        ty, tx = divmod(int(self._flat[j]), self._nx)
        return BlockKey(c, ty, tx)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._key(k) for k in range(*i.indices(len(self)))]
        n = len(self)
        k = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= k < n:
            raise IndexError(f"block index {i} out of range ({n} blocks)")
        return self._key(k)

    def __iter__(self) -> Iterator[BlockKey]:
        for c in range(self._nt):
            for f in self._flat:
                ty, tx = divmod(int(f), self._nx)
                yield BlockKey(c, ty, tx)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, BlockKey):
            return False
        ny, nx = self._crop.shape
        return (0 <= key.chunk < self._nt and 0 <= key.ty < ny and 0 <= key.tx < nx
                and bool(self._crop[key.ty, key.tx]))  # fmt: skip

    def tile_major(self) -> Iterator[BlockKey]:
        """The same blocks tile by tile (row-major), each tile's time chunks in order."""
        for f in self._flat:
            ty, tx = divmod(int(f), self._nx)
            for c in range(self._nt):
                yield BlockKey(c, ty, tx)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Blocks):
            return self._nt == other._nt and np.array_equal(self._crop, other._crop)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Blocks: {len(self)} ({self._flat.size} crop tiles x {self._nt} time chunks)>"


@dataclass(frozen=True)
class TileSpec:
    """Everything a task needs about one space tile, shipped once per tile.

    Attributes
    ----------
    ty, tx : int
        Tile index.
    y, x : (start, stop)
        Rows and columns of the tile in the *cube* grid.
    out_y, out_x : (start, stop)
        Rows and columns of the tile in the *output* grid.
    wy, wx : (start, stop)
        The window of coarse weather cells covering the tile.
    wrow, wcol : int32 arrays ``[ny, nx]``
        Each fine pixel's weather cell, relative to ``wy``/``wx`` (from
        :func:`kgml_grid.grid.coarse_index`, computed once in the plan).
    """

    ty: int
    tx: int
    y: tuple[int, int]
    x: tuple[int, int]
    out_y: tuple[int, int]
    out_x: tuple[int, int]
    wy: tuple[int, int]
    wx: tuple[int, int]
    wrow: np.ndarray = field(repr=False)
    wcol: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y[1] - self.y[0], self.x[1] - self.x[0])


# --------------------------------------------------------------------------------------
# small parsers
# --------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(value: str | int | float) -> int:
    """``'4GiB'``, ``'500 MB'``, ``2e9`` -> bytes."""
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m[2].lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size (use e.g. '4GiB' or '500MB')")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def format_bytes(n: float) -> str:
    """Bytes as ``'12.3 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


ChunkValue = int | tuple[int, ...]


def parse_chunks(spec: str | Mapping[str, Any] | None) -> dict[str, ChunkValue]:
    """Parse ``'y=48,x=48,time=365'`` (or a mapping) into ``{dim: size}``.

    ``-1`` means the whole dimension. Dimensions left out are not in the result.

    Raises
    ------
    PlanError
        For an unknown dimension, a repeated one, or a size that is not a positive
        integer or -1, naming the offending item.
    """
    if spec is None:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(spec, str):
        items = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "=" not in part:
                raise PlanError(
                    f"--chunks {spec!r}: {part!r} is not DIM=N (write e.g. 'y=48,x=48,time=365')"
                )
            k, v = (s.strip() for s in part.split("=", 1))
            items.append((k, v))
    else:
        items = list(spec.items())
    out: dict[str, ChunkValue] = {}
    for k, v in items:
        if k not in ("y", "x", "time"):
            raise PlanError(f"--chunks: unknown dimension {k!r}; use y, x and time")
        if k in out:
            raise PlanError(f"--chunks: dimension {k!r} is given twice")
        if isinstance(v, list | tuple) and k == "time":
            try:
                sizes = tuple(int(s) for s in v)
            except (TypeError, ValueError):
                raise PlanError(f"--chunks: time={v!r} must be integers") from None
            if not sizes or any(s < 1 for s in sizes):
                raise PlanError(f"--chunks: time={v!r}: every chunk needs at least one day")
            out[k] = sizes
            continue
        try:
            n = int(str(v)) if not isinstance(v, int) else v
        except ValueError:
            raise PlanError(
                f"--chunks: {k}={v} is not an integer (-1 means the whole dimension)"
            ) from None
        if isinstance(v, bool) or (n < 1 and n != -1):
            raise PlanError(
                f"--chunks: {k}={v} must be a positive integer or -1 (the whole dimension)"
            )
        out[k] = n
    return out


def _bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _regular(n: int, size: int) -> tuple[int, ...]:
    size = n if size == -1 else min(size, n)
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Plan:
    """What an upscaling run will do. Make one with :func:`make_plan`.

    The plan is immutable; its arrays are small (one entry per tile). Use
    :attr:`blocks`, :attr:`skipped_tiles`, :attr:`n_tasks`, :attr:`memory_per_task`
    and :meth:`template` to inspect it, ``print(plan)`` for a summary.
    """

    catalog: str
    entries: Mapping[str, str]  # layer -> catalog entry "path:name"
    paths: Mapping[str, str]  # layer -> resolved Zarr store path
    checkpoint: str
    checkpoint_hash: str
    model: Mapping[str, Any]  # ModelConfig.to_dict()
    has_yield: bool
    cube_grid: GridSpec
    grid: GridSpec  # the output grid (the window)
    weather_grid: GridSpec
    window: tuple[int, int, int, int]  # iy0, iy1, ix0, ix1 in the cube grid
    start: pd.Timestamp
    end: pd.Timestamp
    sat_t0: int  # index of ``start`` in the satellite cube
    wx_t0: int  # index of ``start`` in the weather cube
    crop_year_index: Mapping[int, int]  # run year -> index in the crop cube
    time_chunks: tuple[int, ...]
    tile_y: int
    tile_x: int
    crop_counts: np.ndarray = field(repr=False)  # [n_ty, n_tx] crop pixels per tile
    batch_pixels: int = MAX_BATCH_PIXELS
    memory: Mapping[str, int] = field(default_factory=dict)
    frequency: str = "daily"  # of the output: daily | monthly | annual (sums)
    variables: tuple[str, ...] = outstore.OUTPUT_VARIABLES  # written by the run

    # ---- output layout (kgml_grid.outstore) ----------------------------------------------
    @property
    def period_edges(self) -> np.ndarray:
        """Day offsets where the output's time steps start, plus ``n_days``."""
        return outstore.period_edges(self.start, self.n_days, self.frequency)

    def output_layout(self, n_workers: int = 1) -> outstore.OutputLayout:
        """Shards, bytes and files of the output (:func:`kgml_grid.outstore.layout`)."""
        return outstore.layout(ny=self.grid.ny, nx=self.grid.nx, tile_y=self.tile_y,
                               tile_x=self.tile_x, time_bounds=self.time_bounds,
                               edges=self.period_edges, n_years=len(self.years),
                               n_crop_tiles=int((self.crop_counts > 0).sum()),
                               n_crop_pixels=self.n_crop_pixels,
                               variables=self.variables, frequency=self.frequency,
                               n_workers=n_workers)  # fmt: skip

    sizing: tuple[str, ...] = ()  # why these chunks (``--chunks auto``)

    # ---- dimensions --------------------------------------------------------------------
    @property
    def time(self) -> pd.DatetimeIndex:
        """The daily time axis of the output."""
        return pd.date_range(self.start, self.end, freq="D")

    @property
    def n_days(self) -> int:
        return int((self.end - self.start).days) + 1

    @property
    def years(self) -> list[int]:
        """Calendar years of the output (the ``year`` axis of ``yield``)."""
        return list(range(self.start.year, self.end.year + 1))

    @property
    def partial_first_season(self) -> bool:
        """True when the run starts after 1 January (first year's yield is NaN)."""
        return not (self.start.month == 1 and self.start.day == 1)

    @property
    def partial_last_season(self) -> bool:
        """True when the run ends before 31 December (last year's yield is NaN)."""
        return not (self.end.month == 12 and self.end.day == 31)

    @property
    def time_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each time chunk, in output days."""
        return _bounds(self.time_chunks)

    @property
    def y_chunks(self) -> tuple[int, ...]:
        return _regular(self.grid.ny, self.tile_y)

    @property
    def x_chunks(self) -> tuple[int, ...]:
        return _regular(self.grid.nx, self.tile_x)

    @property
    def y_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each tile row, in output rows."""
        return _bounds(self.y_chunks)

    @property
    def x_bounds(self) -> list[tuple[int, int]]:
        return _bounds(self.x_chunks)

    @property
    def n_time_chunks(self) -> int:
        return len(self.time_chunks)

    @property
    def n_tiles(self) -> int:
        return len(self.y_chunks) * len(self.x_chunks)

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """Every tile ``(ty, tx)``, row-major."""
        return [(i, j) for i in range(len(self.y_chunks)) for j in range(len(self.x_chunks))]

    @property
    def crop_tiles(self) -> list[tuple[int, int]]:
        """Tiles with at least one crop pixel: the ones that run (row-major)."""
        return [(int(i), int(j)) for i, j in np.argwhere(self.crop_counts > 0)]

    @property
    def skipped_tiles(self) -> list[tuple[int, int]]:
        """Tiles without any crop pixel: no task, output stays NaN (row-major)."""
        return [(int(i), int(j)) for i, j in np.argwhere(self.crop_counts == 0)]

    @property
    def n_crop_tiles(self) -> int:
        """Tiles with crop, counted without listing them."""
        return int(np.count_nonzero(self.crop_counts))

    @property
    def n_skipped_tiles(self) -> int:
        return self.n_tiles - self.n_crop_tiles

    @property
    def n_crop_pixels(self) -> int:
        return int(self.crop_counts.sum())

    @property
    def blocks(self) -> Blocks:
        """Every block that runs, time chunk by time chunk, tiles row-major: a lazy
        sequence (:class:`Blocks`: ``len``, indexing, ``in``, iteration), so that a plan
        of millions of blocks holds none of them as objects."""
        return Blocks(self.crop_counts > 0, self.n_time_chunks)

    @property
    def n_blocks(self) -> int:
        return self.n_crop_tiles * self.n_time_chunks

    def n_tasks_for(self, done: set[BlockKey] | frozenset[BlockKey] = frozenset()) -> int:
        """Dask tasks of a run that skips ``done`` blocks: one per remaining block plus
        one small data task per tile with remaining blocks (its weather index).

        Arithmetic on the plan's counts and on ``done`` (never enumerates the blocks)."""
        blocks = self.blocks
        per_tile: dict[tuple[int, int], int] = {}
        for b in done:
            if b in blocks:
                per_tile[b.tile] = per_tile.get(b.tile, 0) + 1
        n_done = sum(per_tile.values())
        finished = sum(1 for n in per_tile.values() if n == self.n_time_chunks)
        return (self.n_blocks - n_done) + (self.n_crop_tiles - finished)

    @property
    def n_tasks(self) -> int:
        """Dask tasks of a full run (blocks plus one data task per crop tile)."""
        return self.n_blocks + self.n_crop_tiles

    @property
    def memory_per_task(self) -> int:
        """Estimated peak memory of one task (bytes); see :attr:`memory`."""
        return int(self.memory.get("total", 0))

    @property
    def output_chunks(self) -> dict[str, int]:
        """Zarr chunks of the output: one tile, the most common time chunk, one year."""
        tc = list(self.time_chunks)
        common = max(tc, key=lambda n: (tc.count(n), -tc.index(n)))
        return {"time": common, "y": self.y_chunks[0], "x": self.x_chunks[0], "year": 1}

    # ---- per-block geometry ---------------------------------------------------------------
    def tile_bounds(self, ty: int, tx: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((y0, y1), (x0, x1))`` of a tile in output rows/columns."""
        return self.y_bounds[ty], self.x_bounds[tx]

    def tile_spec(self, ty: int, tx: int) -> TileSpec:
        """The :class:`TileSpec` of a tile, with its pixel -> weather-cell index."""
        (oy0, oy1), (ox0, ox1) = self.tile_bounds(ty, tx)
        iy0, _, ix0, _ = self.window
        sub = GridSpec(
            self.grid.crs,
            self.grid.x0 + ox0 * self.grid.res,
            self.grid.y0 - oy0 * self.grid.res,
            self.grid.res,
            oy1 - oy0,
            ox1 - ox0,
        )
        row, col = coarse_index(sub, self.weather_grid)
        wy = (int(row.min()), int(row.max()) + 1)
        wx = (int(col.min()), int(col.max()) + 1)
        return TileSpec(
            ty, tx,
            (iy0 + oy0, iy0 + oy1), (ix0 + ox0, ix0 + ox1),
            (oy0, oy1), (ox0, ox1), wy, wx,
            (row - wy[0]).astype("int32"), (col - wx[0]).astype("int32"),
        )  # fmt: skip

    def region(self, key: BlockKey) -> dict[str, slice]:
        """The block's region of the output store's daily variables."""
        (y0, y1), (x0, x1) = self.tile_bounds(key.ty, key.tx)
        t0, t1 = self.time_bounds[key.chunk]
        return {"time": slice(t0, t1), "y": slice(y0, y1), "x": slice(x0, x1)}

    # ---- identity ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description; everything that decides the output's values."""
        return {
            "format": 1,
            "catalog": self.catalog,
            "entries": dict(self.entries),
            "paths": dict(self.paths),
            "checkpoint": self.checkpoint,
            "checkpoint_hash": self.checkpoint_hash,
            "model": dict(self.model),
            "start": str(self.start.date()),
            "end": str(self.end.date()),
            "window": {
                "y": [self.window[0], self.window[1]],
                "x": [self.window[2], self.window[3]],
            },
            "grid": {
                "crs": self.grid.crs,
                "x0": self.grid.x0,
                "y0": self.grid.y0,
                "res": self.grid.res,
                "ny": self.grid.ny,
                "nx": self.grid.nx,
            },
            "chunks": {"time": list(self.time_chunks), "y": self.tile_y, "x": self.tile_x},
            "tiles": {
                "total": self.n_tiles,
                "crop": self.n_crop_tiles,
                "skipped_total": self.n_skipped_tiles,
                # listed up to a bound: a continent has hundreds of thousands
                "skipped": [
                    [int(a), int(b)] for a, b in np.argwhere(self.crop_counts == 0)[:SKIPPED_LISTED]
                ],
            },
            "blocks": self.n_blocks,
            "tasks": self.n_tasks,
            "crop_pixels": self.n_crop_pixels,
            "batch_pixels": self.batch_pixels,
            "memory_per_task": self.memory_per_task,
            "frequency": self.frequency,
            "variables": list(self.variables),
        }

    _IDENTITY = ("catalog", "paths", "checkpoint_hash", "start", "end", "window", "chunks")
    #: Identity keys kept out of the id at their default (ids of earlier plans stay equal).
    _OUTPUT_DEFAULTS: ClassVar[dict[str, Any]] = {
        "frequency": "daily",
        "variables": list(outstore.OUTPUT_VARIABLES),
    }

    def identity(self) -> dict[str, Any]:
        """The parts of :meth:`to_dict` a resumed run must share with the first run."""
        d = self.to_dict()
        ident = {k: d[k] for k in self._IDENTITY}
        ident.update({k: d[k] for k, v in self._OUTPUT_DEFAULTS.items() if d[k] != v})
        return ident

    @property
    def plan_id(self) -> str:
        """sha256 of :meth:`identity`: equal ids write equal stores."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """How a stored plan (``to_dict()`` of an earlier run) differs from this one."""
        mine = {**self._OUTPUT_DEFAULTS, **self.identity()}
        out = []
        for k, v in mine.items():
            if other.get(k, self._OUTPUT_DEFAULTS.get(k)) != v:
                out.append(f"{k}: {other.get(k)!r} in the store, {v!r} now")
        return out

    # ---- output template ---------------------------------------------------------------------
    def template(
        self, *, provenance: Mapping[str, Any] | None = None, chunked: bool = True
    ) -> xr.Dataset:
        """The lazy output Dataset: NaN-filled Dask arrays with the plan's chunks (one
        Dask chunk per variable with ``chunked=False``: what creating the store needs,
        the same cost for any number of blocks), the plan's variables and frequency
        (:mod:`kgml_grid.outstore`), CF attributes (from the schema), CRS and provenance
        attributes."""
        import dask.array as da

        from kgml_grid import cubes

        edges = self.period_edges
        periods = [outstore.block_periods(edges, t0, t1) for t0, t1 in self.time_bounds]
        pch = tuple(p1 - p0 for p0, p1 in periods)
        n_t = int(edges.size - 1)
        shp = (n_t, self.grid.ny, self.grid.nx)
        yshape = (len(self.years), self.grid.ny, self.grid.nx)
        tch: Any = (pch, self.y_chunks, self.x_chunks) if chunked else shp
        ych: Any = (1, self.y_chunks, self.x_chunks) if chunked else yshape
        data: dict[str, Any] = {
            n: (("time", "y", "x"), da.full(shp, np.nan, chunks=tch, dtype="float32"))
            for n in DAILY_VARS
            if n in self.variables
        }
        if "yield" in self.variables:
            data["yield"] = (
                ("year", "y", "x"),
                da.full(yshape, np.nan, chunks=ych, dtype="float32"),
            )
        time, bounds = outstore.period_index(self.start, edges)
        coords: dict[str, Any] = {"time": time, "year": self.years}
        if self.frequency != "daily":
            coords["time_bounds"] = (("time", "bnds"), bounds)
        ds = xr.Dataset(data, coords=coords)
        attrs = {
            "kgml_plan": json.dumps(self.to_dict(), sort_keys=True),
            "kgml_plan_id": self.plan_id,
            "kgml_checkpoint": self.checkpoint,
            "kgml_checkpoint_hash": self.checkpoint_hash,
            "kgml_catalog": self.catalog,
            "kgml_catalog_entries": json.dumps(dict(self.entries), sort_keys=True),
            "kgml_model": json.dumps(dict(self.model), sort_keys=True),
            "kgml_frequency": self.frequency,
        }
        attrs.update(provenance or {})
        ds = cubes.annotate(ds, self.grid, title="kgml_grid upscaled carbon fluxes", **attrs)
        if "gpp" in ds:
            ds["gpp"].attrs.update(long_name="gross primary productivity (model estimate)",
                                   comment=_GPP_COMMENT)  # fmt: skip
        for n in ("ra", "rh"):
            if n in ds:
                ds[n].attrs["comment"] = "model output clamped at >= 0"
        if "reco" in ds:
            ds["reco"].attrs["comment"] = "ra + rh"
        if "yield" in ds:
            ds["yield"].attrs["comment"] = self._yield_comment()
            ds["yield"].attrs["cell_methods"] = "time: sum"
        for n in DAILY_VARS:
            if n not in ds:
                continue
            if self.frequency == "daily":
                ds[n].attrs["cell_methods"] = "time: mean"
            else:
                ds[n].attrs.update(cell_methods="time: sum", units=outstore.UNITS[self.frequency])
        if self.frequency != "daily":
            ds["time"].attrs["bounds"] = "time_bounds"
        return ds

    def _yield_comment(self) -> str:
        parts = ["predicted on 31 December by the model's yield head; exact across time chunks"]
        if not self.has_yield:
            parts.append("all NaN: the checkpoint has no yield normalization statistics")
        if self.partial_first_season:
            parts.append(
                f"{self.years[0]}: NaN, the run starts on {self.start.date()} (partial season)"
            )
        if self.partial_last_season:
            parts.append(f"{self.years[-1]}: NaN, the run ends on {self.end.date()} (no year end)")
        return "; ".join(parts)

    # ---- memory -------------------------------------------------------------------------------
    def check_memory(
        self, limit: int | str | None, *, what: str = "the worker memory limit"
    ) -> None:
        """Refuse a plan whose tasks need more than :data:`MEMORY_FRACTION` of ``limit``.

        Raises
        ------
        PlanError
            Naming the estimate, the limit and a time chunk that would fit.
        """
        if limit is None:
            return
        limit_b = parse_bytes(limit)
        if limit_b <= 0:
            return
        budget = MEMORY_FRACTION * limit_b
        if self.memory_per_task <= budget:
            return
        fit = self._longest_time_chunk_within(budget)
        hint = (
            f"try --chunks time={fit}"
            if fit >= 1
            else f"use smaller tiles than y={self.tile_y},x={self.tile_x}"
        )
        raise PlanError(
            f"chunks y={self.tile_y},x={self.tile_x},time={max(self.time_chunks)} need about "
            f"{format_bytes(self.memory_per_task)} per task, more than {MEMORY_FRACTION:.0%} of "
            f"{what} ({format_bytes(limit_b)}); {hint}"
        )

    def memory_for(self, days: int) -> dict[str, int]:
        """:func:`memory_estimate` of this plan's largest task with a time chunk of
        ``days`` (the batch re-sized for it unless the plan's batch was given)."""
        derived = self.batch_pixels == batch_pixels_for(max(self.time_chunks), self.model)
        bp = batch_pixels_for(days, self.model) if derived else self.batch_pixels
        return _task_memory(self.model, days, (self.y_chunks[0], self.x_chunks[0]),
                            self.max_crop_pixels, self.grid, self.weather_grid, bp,
                            activations_on_device="device" in self.memory)  # fmt: skip

    @property
    def max_crop_pixels(self) -> int:
        """Crop pixels of the tile with the most (what the memory estimate is for)."""
        return int(self.crop_counts.max()) if self.crop_counts.size else 0

    def _longest_time_chunk_within(self, budget: float) -> int:
        """The longest time chunk (days, <= the plan's) whose task fits ``budget``; 0 if none."""
        lo, hi = 0, max(self.time_chunks)
        while lo < hi:  # the estimate grows with the days: bisect
            mid = (lo + hi + 1) // 2
            if self.memory_for(mid)["total"] <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # ---- printing ------------------------------------------------------------------------------
    def __str__(self) -> str:
        g, (iy0, iy1, ix0, ix1) = self.grid, self.window
        tc = self.time_chunks
        if len(set(tc)) == 1:
            tdesc = f"time={tc[0]}"
        elif len(set(tc[:-1])) == 1:
            tdesc = f"time={tc[0]} (last {tc[-1]})"
        elif len(tc) <= 6:
            tdesc = f"time={list(tc)}"
        else:
            tdesc = f"time={min(tc)}..{max(tc)} days"
        m = self.memory
        skipped = [(int(a), int(b)) for a, b in np.argwhere(self.crop_counts == 0)[:9]]
        n_skipped = self.n_skipped_tiles
        cfg = self.model
        lines = [
            "upscaling plan",
            f"  catalog     {self.catalog} ({', '.join(self.paths)})",
            f"  checkpoint  {self.checkpoint} ({cfg.get('arch')}, hidden {cfg.get('hidden')}), "
            f"hash {self.checkpoint_hash[:12]}",
            f"  grid        {g.ny} x {g.nx} pixels of {g.res:g} (rows {iy0}:{iy1}, columns "
            f"{ix0}:{ix1} of the {self.cube_grid.ny} x {self.cube_grid.nx} cube grid)",
            f"  time        {self.start.date()} .. {self.end.date()} ({self.n_days} days, "
            f"years {self.years[0]}-{self.years[-1]})",
            f"  chunks      y={self.tile_y}, x={self.tile_x}, {tdesc} -> "
            f"{len(self.y_chunks)} x {len(self.x_chunks)} tiles x {self.n_time_chunks} time chunks",
            f"  tiles       {self.n_crop_tiles} with crop ({self.n_crop_pixels} crop pixels), "
            f"{n_skipped} skipped (no crop pixel)"
            + (
                f": {', '.join(f'y{a}x{b}' for a, b in skipped[:8])}{' ...' if len(skipped) > 8 else ''}"
                if skipped
                else ""
            ),
            f"  blocks      {self.n_blocks} ({self.n_crop_tiles} tiles x {self.n_time_chunks} "
            f"time chunks)",
            f"  tasks       {self.n_tasks} ({self.n_blocks} blocks + {self.n_crop_tiles} tile "
            "weather indexes)",
            f"  memory      ~{format_bytes(self.memory_per_task)} per task, at its peak while "
            f"{_PHASE_WORDS[PHASES[int(m.get('phase', 0))]]} (inputs "
            f"{format_bytes(m.get('inputs', 0))}, features {format_bytes(m.get('features', 0))}, "
            f"model {format_bytes(m.get('model', 0))} in batches of {self.batch_pixels} pixels, "
            f"outputs {format_bytes(m.get('outputs', 0))}"
            + (f"; {format_bytes(m['device'])} of activations on the GPU" if "device" in m else "")
            + ")",
            f"  outputs     {self._output_line()}",
            f"  yield       {self._yield_comment()}",
        ]
        if self.sizing:
            lines.append(f"  sizing      {self.sizing[0]}")
            lines.extend(f"              {r}" for r in self.sizing[1:])
        return "\n".join(lines)

    def _output_line(self) -> str:
        """Variables, frequency, bytes and files of the output (before anything runs)."""
        lay = self.output_layout()
        shard = next(iter(lay.shards.values()))
        return (
            f"{', '.join(lay.variables)} {lay.frequency} ({lay.n_periods} time steps): "
            f"{format_bytes(lay.bytes_float32)} as float32 ({format_bytes(lay.bytes_crop)} of crop "
            f"pixels), ~{format_bytes(lay.bytes_estimate)} on disk (estimate); {lay.files} files ({lay.shard_files} shards of "
            f"{'x'.join(map(str, shard))}); records {lay.record_files} files"
        )

    def __repr__(self) -> str:
        return (
            f"<Plan {self.grid.ny}x{self.grid.nx} px, {self.start.date()}..{self.end.date()}, "
            f"{self.n_blocks} blocks, {self.n_tasks} tasks, "
            f"~{format_bytes(self.memory_per_task)}/task>"
        )

    def _repr_html_(self) -> str:  # Jupyter
        import html

        return f"<pre>{html.escape(str(self))}</pre>"

    def __iter__(self) -> Iterator[BlockKey]:
        return iter(self.blocks)


# --------------------------------------------------------------------------------------
# memory arithmetic (pure)
# --------------------------------------------------------------------------------------


def _activation_per_pixel_day(model: Mapping[str, Any], n_features: int) -> int:
    """Peak bytes of model activations per pixel-day (inference, float32)."""
    h = int(model.get("hidden", 64))
    yh = int(model.get("yield_hidden", 32))
    # kept: basis output (h), [basis, x] (h + F); transient inside one GRU layer:
    # input projection (3h), output (h), previous layer (h); yield head (yh + 2h)
    floats = h + (h + n_features) + 5 * h + yh + 2 * h + 8
    return 4 * floats


#: Resident memory of the model's activations per byte of tensors one batch allocates
#: (:func:`_activation_per_pixel_day`): torch's intermediate tensors plus the heap the
#: CPU allocator keeps after freeing them (measured: 1.2-1.5, ``kgml_grid.bench.taskmem``).
ACTIVATION_RESIDENT = 1.3
#: The part of those activations still resident after the model loop, while the output
#: blocks are built (freed tensors the heap has not returned). Measured: all of it for
#: year-long chunks (tasks of 32-256 px tiles: peaks vary +-20 % run to run), about a
#: third for 120-day chunks; counted whole.
ACTIVATION_AFTER = 1.0

#: The phases of a task, in order, as :func:`memory_estimate` counts them.
PHASES = ("read", "normalise", "model", "outputs", "write")
_PHASE_WORDS = {"read": "reading and assembling", "normalise": "normalising the features",
                "model": "running the model", "outputs": "building the output blocks",
                "write": "writing"}  # fmt: skip


def memory_estimate(
    *,
    days: int,
    tile: tuple[int, int],
    crop_pixels: int,
    weather_cells: int,
    model: Mapping[str, Any],
    batch_pixels: int,
    activations_on_device: bool = False,
) -> dict[str, int]:
    """Peak memory of one task (bytes): the largest of its phases, and its parts.

    A task (:func:`kgml_grid.execute.compute_block` then ``write_block``) holds, with
    ``n`` crop pixels, ``px`` tile pixels, ``T`` days, ``F`` features, ``W`` weather
    cells, all float32 unless said (what is alive at once in each phase):

    - ``read``: the raw blocks (satellite ``[T, px]`` per satellite series, weather
      ``[T, W]`` x 4, soil ``[px]`` x 9, crop ``[Y, px]`` int8), the daily series
      gathered per crop pixel (``[T, n]`` each), the features ``[n, T, F]`` and the
      gap-filled copy of the series that :func:`~kgml_grid.features.assemble` makes;
    - ``normalise``: features and the normalised copy (``2 n T F``; the division is in
      place);
    - ``model``: normalised features, the model's outputs ``[n, T, 4]`` and one batch's
      activations (``batch_pixels x T`` pixel-days, :data:`ACTIVATION_RESIDENT` times
      the tensors: the batch bounds the model's memory, not the tile);
    - ``outputs``: normalised features (alive until the task returns), outputs,
      denormalised outputs and the four clamped variables ``[n, T]``, the five daily
      output blocks ``[T, ny, nx]`` (NaN outside crop) and one transposed variable,
      with :data:`ACTIVATION_AFTER` of the batch's activations still resident;
    - ``write``: the five output blocks and one encoded copy of a block.

    With ``activations_on_device`` (a GPU) the batch's activations are device memory:
    they are left out of the host phases and given as ``device``.

    Everything but soil, crop and the activations grows with the tile (``px``, ``n``)
    and with ``T``; no phase holds more than one batch of model activations. Checked
    against the measured peak RSS of real tasks at several tile sizes
    (``tests/test_scale_plan.py``, :mod:`kgml_grid.bench.taskmem`).

    Returns
    -------
    dict
        ``total`` (the peak), ``phase`` (index into :data:`PHASES` of the peak phase),
        each phase's bytes (``phase_read``, ``phase_normalise``, ``phase_model``,
        ``phase_outputs``, ``phase_write``),
        the peak phase's parts ``inputs``, ``features``, ``model``, ``outputs`` (sum to
        ``total``) and ``per_day`` (bytes per day of the time chunk, the part of the
        peak that grows with ``T``).
    """
    f = int(model.get("n_features", len(schema.FEATURES)))
    n_sat = 1 + (f - len(schema.FEATURES)) // 2  # gpp_sat, plus one series per addition
    T = max(int(days), 0)
    px = int(tile[0]) * int(tile[1])
    n = int(crop_pixels)
    n_daily = 4 + n_sat  # daily series gathered per crop pixel
    n_years = T // 365 + 2
    nv = len(DAILY_VARS)
    bp = max(1, min(int(batch_pixels), max(n, 1)))
    from kgml_grid.infer import time_block_for

    # the model runs each batch in time blocks with its state carried (kgml_grid.infer):
    # one call's activations span batch x time block pixel-days, not the whole chunk
    tb = time_block_for(bp, max(T, 1), "cuda" if activations_on_device else "cpu") if T else 0
    act = int(ACTIVATION_RESIDENT * (bp * _activation_per_pixel_day(model, f) + 4 * bp * f) * tb)
    device = act if activations_on_device else 0
    if activations_on_device:
        act = 0
    raw = 4 * T * (n_sat * px + 4 * weather_cells) + 4 * 9 * px + n_years * px
    feats = 4 * n * T * f
    out_model = 4 * n * T * 4
    blocks = 4 * nv * T * px
    # each phase as (inputs, features, model, outputs)
    parts = {
        "read": (raw + 2 * 4 * n_daily * n * T, feats, 0, 0),
        "normalise": (0, 2 * feats, 0, 0),
        "model": (0, feats, act, out_model),
        "outputs": (
            0,
            feats,
            int(ACTIVATION_AFTER * act),
            2 * out_model + 4 * 4 * n * T + blocks + 4 * n * T,
        ),
        "write": (0, 0, 0, blocks + 4 * T * px),
    }
    totals = {k: sum(v) for k, v in parts.items()}
    peak = max(PHASES, key=lambda k: totals[k])
    fixed = 4 * 9 * px + n_years * px + parts[peak][2]
    out: dict[str, int] = dict(
        zip(("inputs", "features", "model", "outputs"), parts[peak], strict=True)
    )
    out.update({f"phase_{k}": v for k, v in totals.items()})
    out["phase"] = PHASES.index(peak)
    out["total"] = totals[peak]
    if activations_on_device:
        out["device"] = device
    out["per_day"] = max(0, (totals[peak] - fixed) // max(T, 1))
    return out


def _task_memory(
    model: Mapping[str, Any],
    days: int,
    tile: tuple[int, int],
    max_crop: int,
    grid: GridSpec,
    weather_grid: GridSpec,
    batch_pixels: int,
    activations_on_device: bool = False,
) -> dict[str, int]:
    """:func:`memory_estimate` of the task of the tile with ``max_crop`` crop pixels (all
    of a tile's pixels when no tile has crop), its weather window in the weather grid's
    own units (:func:`~kgml_grid.grid.cells_spanned`)."""
    wrows, wcols = cells_spanned(grid, weather_grid, tile)
    return memory_estimate(
        days=days, tile=tile, crop_pixels=max_crop or tile[0] * tile[1],
        weather_cells=wrows * wcols, model=model, batch_pixels=min(batch_pixels, max(max_crop, 1)),
        activations_on_device=activations_on_device,
    )  # fmt: skip


def batch_pixels_for(
    days: int,
    model: Mapping[str, Any],
    *,
    budget: int = ACTIVATION_BUDGET,
    cap: int = MAX_BATCH_PIXELS,
) -> int:
    """Pixels per model batch (at most ``cap``) so that one batch's activations stay
    within ``budget``."""
    per = _activation_per_pixel_day(
        model, int(model.get("n_features", len(schema.FEATURES)))
    ) * max(days, 1)
    return int(max(1, min(cap, budget // per)))


# --------------------------------------------------------------------------------------
# making a plan
# --------------------------------------------------------------------------------------


def _resolve_urlpath(urlpath: str, catalog_dir: Path) -> str:
    p = re.sub(r"\{\{\s*CATALOG_DIR\s*\}\}", str(catalog_dir), urlpath)
    return p


def _parse_date(value: Any, what: str) -> pd.Timestamp:
    if isinstance(value, str) and not re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", value):
        raise PlanError(f"{what} {value!r} is not a date (write YYYY-MM-DD)")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise PlanError(f"{what} {value!r} is not a date (write YYYY-MM-DD)") from None
    if ts is pd.NaT:
        raise PlanError(f"{what} {value!r} is not a date (write YYYY-MM-DD)")
    if ts != ts.normalize():
        raise PlanError(f"{what} {value!r}: give a day (YYYY-MM-DD), not a time of day")
    return ts.tz_localize(None) if ts.tzinfo else ts


def _window_of(
    grid: GridSpec, bbox: Sequence[float] | str | None, bbox_crs: str | None
) -> tuple[int, int, int, int]:
    if bbox is None:
        return (0, grid.ny, 0, grid.nx)
    if isinstance(bbox, str):
        try:
            bbox = [float(v) for v in bbox.replace(" ", "").split(",")]
        except ValueError:
            raise PlanError(
                f"--bbox {bbox!r}: write WEST,SOUTH,EAST,NORTH (four numbers)"
            ) from None
    if len(bbox) != 4:
        raise PlanError(f"--bbox {list(bbox)}: need four numbers WEST,SOUTH,EAST,NORTH")
    west, south, east, north = (float(v) for v in bbox)
    if not (west < east and south < north):
        raise PlanError(f"--bbox {west},{south},{east},{north}: need WEST < EAST and SOUTH < NORTH")
    crs_note = ""
    if bbox_crs is not None:
        from pyproj import CRS, Transformer
        from pyproj.exceptions import CRSError

        from kgml_grid.cubes import _crs_name

        grid_crs = _crs_name(grid.crs)
        try:
            bcrs = CRS.from_user_input(bbox_crs)
        except CRSError:
            raise PlanError(
                f"--bbox-crs {bbox_crs!r} is not a CRS known to PROJ; write an EPSG code such as "
                f"EPSG:4326 (longitude/latitude) or the grid's own {grid_crs}"
            ) from None
        if bcrs != CRS.from_user_input(grid.crs):
            tr = Transformer.from_crs(bcrs, grid.crs, always_xy=True)
            xs, ys = tr.transform([west, west, east, east], [south, north, south, north])
            if not np.all(np.isfinite(np.asarray([xs, ys], dtype=float))):
                raise PlanError(
                    f"--bbox {west},{south},{east},{north} (--bbox-crs {bbox_crs}) cannot be "
                    f"transformed to the grid's CRS {grid_crs}: outside the area of use of {bbox_crs}"
                )
            crs_note = f" ({bbox_crs} {west},{south},{east},{north})"
            west, east, south, north = min(xs), max(xs), min(ys), max(ys)
    gw, gs, ge, gn = grid.bounds
    tol = 1e-6 * grid.res
    if west < gw - tol or east > ge + tol or south < gs - tol or north > gn + tol:
        raise PlanError(
            f"--bbox {west:.6g},{south:.6g},{east:.6g},{north:.6g}{crs_note} is not inside the "
            f"grid, whose bounds are {gw:.6g},{gs:.6g},{ge:.6g},{gn:.6g} (WEST,SOUTH,EAST,NORTH "
            "in the grid's CRS; pass --bbox-crs EPSG:4326 for longitude/latitude)"
        )
    cols = np.flatnonzero((grid.x >= west) & (grid.x <= east))
    rows = np.flatnonzero((grid.y >= south) & (grid.y <= north))
    if cols.size == 0 or rows.size == 0:
        raise PlanError(
            f"--bbox {west:.6g},{south:.6g},{east:.6g},{north:.6g}{crs_note} holds no pixel "
            f"centre (pixels are {grid.res:g} wide)"
        )
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def make_plan(
    catalog: Any,
    model: str | Path,
    *,
    start: Any = None,
    end: Any = None,
    bbox: Sequence[float] | str | None = None,
    bbox_crs: str | None = None,
    chunks: str | Mapping[str, Any] | None = None,
    batch_pixels: int | None = None,
    memory_limit: int | str | None = None,
    frequency: str = "daily",
    variables: str | Sequence[str] | None = None,
    device: str = "cpu",
) -> Plan:
    """Plan an upscaling run; check everything checkable; compute nothing.

    Parameters
    ----------
    catalog : path or :class:`~kgml_grid.catalog.Catalog`
        Catalog of the cubes (satellite, weather, soil and crop layers are used).
    model : path
        Checkpoint directory (:func:`kgml_grid.checkpoint.save_checkpoint`).
    start, end : date-like, optional
        First and last day (inclusive); default the days covered by both the satellite
        and the weather cubes and by the crop years.
    bbox : (west, south, east, north) or "W,S,E,N", optional
        Sub-domain in the grid's CRS (or ``bbox_crs``); must lie inside the grid.
        Pixels whose centres fall inside are run.
    chunks : str or mapping, optional
        ``"y=N,x=N,time=N"`` (``-1``: whole dimension); default the satellite cube's
        spatial chunks and one time chunk per calendar year. ``time`` may be a tuple of
        uneven lengths from Python. ``"auto"``: the shape recommended for ``device``
        (:func:`kgml_grid.sizing.recommend_shape`; its reasons in ``print(plan)``).
    device : str
        ``cpu`` or ``cuda`` (``cuda:N``): the device ``chunks="auto"`` sizes blocks for
        (``auto``: cuda when this process sees a GPU).
    batch_pixels : int, optional
        Pixels per model batch; default as many as fit :data:`ACTIVATION_BUDGET`.
    memory_limit : int or str, optional
        Refuse chunks whose tasks would not fit this worker memory (executors check
        the real workers' limits too).
    frequency : {'daily', 'monthly', 'annual'}
        Of the output: daily values or monthly / annual sums (time chunks must then end
        at month / year ends; :mod:`kgml_grid.outstore`).
    variables : str or sequence, optional
        Output variables (default all of :data:`kgml_grid.outstore.OUTPUT_VARIABLES`).

    Raises
    ------
    PlanError
        For any input that cannot run, naming it; nothing is computed or written.
    """
    from kgml_grid import cubes
    from kgml_grid.catalog import Catalog, CatalogError, open_catalog
    from kgml_grid.checkpoint import load_checkpoint

    auto = isinstance(chunks, str) and chunks.strip().lower() == "auto"
    parsed_chunks = {} if auto else parse_chunks(chunks)
    try:
        frequency = outstore.check_frequency(frequency)
        out_vars = outstore.check_variables(variables)
    except ValueError as e:
        raise PlanError(str(e)) from None
    # --- checkpoint -------------------------------------------------------------------
    model_path = Path(model).resolve()
    try:
        ckpt = load_checkpoint(model_path, device="cpu", check_schema=True)
    except ValueError as e:
        raise PlanError(f"checkpoint {model_path} cannot run on the cubes: {e}") from None
    # --- catalog ------------------------------------------------------------------------
    try:
        cat = catalog if isinstance(catalog, Catalog) else open_catalog(catalog)
        layers = cat.open_all()
    except (CatalogError, cubes.CubeError, FileNotFoundError) as e:
        raise PlanError(f"catalog {catalog}: {e}") from None
    needed = ("satellite", "weather", "soil", "crop")
    missing = [n for n in needed if n not in layers]
    if missing:
        raise PlanError(
            f"catalog {cat.path}: no layer {missing} (upscaling needs {', '.join(needed)})"
        )
    _check_cube_units(layers, ckpt.units, str(model_path), ckpt.features)
    # --- values: a few chunks of every input (the full check: `kgml-grid catalog --check-values`)
    from kgml_grid import values

    try:
        values.check_layers({n: layers[n] for n in needed}, sources=values.catalog_sources(cat),
                            mode="sample", variables=values.MODEL_INPUTS).raise_or_warn()  # fmt: skip
    except values.CubeValueError as e:
        raise PlanError(str(e)) from None
    entries = {layer: f"{cat.path}:{cat.entry_for_layer(layer)}" for layer in needed}
    paths = {
        layer: _resolve_urlpath(cat.entries[cat.entry_for_layer(layer)].urlpath, cat.path.parent)
        for layer in needed
    }
    sat, wx, crop = layers["satellite"], layers["weather"], layers["crop"]
    cube_grid = cubes.grid_of(sat, layer="satellite")
    wgrid = cubes.grid_of(wx, layer="weather")
    # --- space ------------------------------------------------------------------------------
    window = _window_of(cube_grid, bbox, bbox_crs)
    iy0, iy1, ix0, ix1 = window
    grid = GridSpec(cube_grid.crs, cube_grid.x0 + ix0 * cube_grid.res,
                    cube_grid.y0 - iy0 * cube_grid.res, cube_grid.res, iy1 - iy0, ix1 - ix0)  # fmt: skip
    # --- time ------------------------------------------------------------------------------
    st = pd.DatetimeIndex(sat["time"].values)
    wt = pd.DatetimeIndex(wx["time"].values)
    cyears = [int(y) for y in crop["year"].values]
    avail0 = max(st[0], wt[0], pd.Timestamp(f"{cyears[0]}-01-01"))
    avail1 = min(st[-1], wt[-1], pd.Timestamp(f"{cyears[-1]}-12-31"))
    avail = f"{avail0.date()}..{avail1.date()}"
    detail = (f"satellite {st[0].date()}..{st[-1].date()}, weather {wt[0].date()}..{wt[-1].date()}, "
              f"crop years {cyears[0]}-{cyears[-1]}")  # fmt: skip
    t_start = avail0 if start is None else _parse_date(start, "--start")
    t_end = avail1 if end is None else _parse_date(end, "--end")
    if t_start < avail0 or t_start > avail1:
        raise PlanError(
            f"--start {t_start.date()} is outside the cubes: days {avail} are available ({detail})"
        )
    if t_end < avail0 or t_end > avail1:
        raise PlanError(
            f"--end {t_end.date()} is outside the cubes: days {avail} are available ({detail})"
        )
    if t_end < t_start:
        raise PlanError(f"--end {t_end.date()} is before --start {t_start.date()}")
    n_days = int((t_end - t_start).days) + 1
    years = list(range(t_start.year, t_end.year + 1))
    crop_year_index = {y: cyears.index(y) for y in years}
    # --- chunks ----------------------------------------------------------------------------
    dchunks = _cube_chunks(sat)
    tile_y = int(parsed_chunks.get("y", dchunks["y"]))  # type: ignore[arg-type]
    tile_x = int(parsed_chunks.get("x", dchunks["x"]))  # type: ignore[arg-type]
    tile_y = grid.ny if tile_y == -1 else min(tile_y, grid.ny)
    tile_x = grid.nx if tile_x == -1 else min(tile_x, grid.nx)
    tspec = parsed_chunks.get("time")
    if tspec is None:  # default: one chunk per calendar year
        yl = (
            pd.Series(1, index=pd.date_range(t_start, t_end, freq="D"))
            .groupby(lambda d: d.year)
            .size()
        )
        time_chunks = tuple(int(n) for n in yl.values)
    elif isinstance(tspec, tuple):
        if sum(tspec) != n_days:
            raise PlanError(
                f"--chunks time={list(tspec)} add up to {sum(tspec)} days, but the run has "
                f"{n_days} days ({t_start.date()}..{t_end.date()})"
            )
        time_chunks = tspec
    else:
        time_chunks = _regular(n_days, int(tspec))
    cfg = ckpt.config.to_dict()
    year_idx = [crop_year_index[y] for y in years]
    sizing: tuple[str, ...] = ()
    choice = None
    if auto:  # --- chunks sized for the device: crop counted per unit cell, then pooled
        from kgml_grid import sizing as _sizing

        unit = _sizing.UNIT
        unit_counts = _crop_counts(paths["crop"], year_idx, window,
                                   _regular(grid.ny, unit), _regular(grid.nx, unit))  # fmt: skip
        dev = _resolve_device(device)
        limit_b = parse_bytes(memory_limit) if memory_limit is not None else 0
        try:
            choice = _sizing.recommend_shape(
                dev, unit_counts, model=cfg, grid=grid, weather_grid=wgrid, days=n_days,
                task_memory=int(MEMORY_FRACTION * limit_b) if limit_b > 0 else None,
            )  # fmt: skip
        except ValueError as e:
            raise PlanError(f"--chunks auto: {e}") from None
        tile_y, tile_x = min(choice.tile, grid.ny), min(choice.tile, grid.nx)
        if choice.time < 365:
            time_chunks = _regular(n_days, choice.time)
        crop_counts = _sizing.pool_counts(unit_counts, choice.tile // unit)
        sizing = (f"--chunks auto for --device {dev}: {choice.chunks}", *choice.reasons)
    ys, xs = _regular(grid.ny, tile_y), _regular(grid.nx, tile_x)
    if choice is None:  # --- crop tiles (reads the crop layer: int8 per pixel and year)
        crop_counts = _crop_counts(paths["crop"], year_idx, window, ys, xs)
    try:
        outstore.check_alignment(_bounds(time_chunks), outstore.period_edges(t_start, n_days, frequency),
                                 t_start, frequency)  # fmt: skip
    except ValueError as e:
        raise PlanError(str(e)) from None
    # --- memory ---------------------------------------------------------------------------
    tmax = max(time_chunks)
    bp = batch_pixels or (choice.batch_pixels if choice else batch_pixels_for(tmax, cfg))
    if bp < 1:
        raise PlanError(f"batch_pixels must be >= 1, got {bp}")
    max_crop = int(crop_counts.max()) if crop_counts.size else 0
    on_gpu = choice is not None and "device" in choice.memory  # the batch's activations
    memory = _task_memory(cfg, tmax, (ys[0], xs[0]), max_crop, grid, wgrid, bp, on_gpu)
    plan = Plan(
        catalog=str(cat.path),
        entries=entries,
        paths=paths,
        checkpoint=str(model_path),
        checkpoint_hash=ckpt.hash,
        model=cfg,
        has_yield="yield" in ckpt.norm,
        cube_grid=cube_grid,
        grid=grid,
        weather_grid=wgrid,
        window=window,
        start=t_start,
        end=t_end,
        sat_t0=int(st.get_loc(t_start)),
        wx_t0=int(wt.get_loc(t_start)),
        crop_year_index=crop_year_index,
        time_chunks=tuple(int(c) for c in time_chunks),
        tile_y=tile_y,
        tile_x=tile_x,
        crop_counts=crop_counts,
        batch_pixels=int(bp),
        memory=memory,
        frequency=frequency,
        variables=out_vars,
        sizing=sizing,
    )
    plan.check_memory(memory_limit, what="memory_limit")
    return plan


def _resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for sizing; ``auto`` is cuda when this process sees a GPU."""
    d = str(device or "cpu").lower()
    if d == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu" or d.startswith("cuda"):
        return "cuda" if d.startswith("cuda") else "cpu"
    raise PlanError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def _cube_chunks(ds: xr.Dataset) -> dict[str, int]:
    enc = ds["gpp_sat"].encoding.get("chunks") or ds["gpp_sat"].encoding.get("preferred_chunks")
    if isinstance(enc, Mapping):
        return {d: int(enc.get(d, ds.sizes[d])) for d in ("time", "y", "x")}
    if enc:
        return dict(zip(("time", "y", "x"), (int(c) for c in enc), strict=True))
    if ds["gpp_sat"].chunks:
        return {
            str(d): int(c[0]) for d, c in zip(ds["gpp_sat"].dims, ds["gpp_sat"].chunks, strict=True)
        }
    return {"time": 365, "y": 256, "x": 256}


def _check_cube_units(
    layers: Mapping[str, xr.Dataset],
    units: Mapping[str, str],
    source: str,
    features: Sequence[str] = schema.FEATURES,
) -> None:
    """Each feature read from a cube must be there, in the units the checkpoint was trained with."""
    sat = layers["satellite"]
    for name in schema.feature_additions(features):
        if name not in sat.data_vars:
            raise PlanError(
                f"checkpoint {source} was trained with the feature set "
                f"{schema.feature_set_name(features)!r}, which reads {name!r} from the satellite "
                f"cube, but the cube has no such variable ({', '.join(sorted(map(str, sat.data_vars)))}); "
                f"add it to the cube or use a model trained without +{name}"
            )
    for layer in ("weather", "satellite", "soil"):
        ds = layers[layer]
        for name in features:
            if name not in ds.data_vars:
                continue
            got = ds[name].attrs.get("units")
            want = units.get(name)
            var = schema.VARIABLES[name]
            if not (var.accepts_units(got) and var.accepts_units(want)):
                raise PlanError(
                    f"checkpoint {source} was trained with {name!r} in {want!r}, but the "
                    f"{layer} cube has {got!r}"
                )


#: Bytes of the crop layer read at once by the crop-tile detection (int8 years x rows x
#: columns; the any-year mask is as many bools over one year).
_CROP_READ_BYTES = 2**27


def _stored_chunks(arr: Any) -> set[tuple[int, ...]] | None:
    """Chunk-grid coordinates of the chunks ``arr`` has in its store (one listing of the
    store, no chunk read), or None when that cannot be told (sharded arrays, stores
    without listing, unknown key encodings): then every chunk is read."""
    try:
        from zarr.core.sync import sync

        if getattr(arr, "shards", None) is not None:
            return None
        store, prefix = arr.store_path.store, arr.store_path.path
        enc = arr.metadata.chunk_key_encoding
        sep, lead = str(enc.separator), ("c" + str(enc.separator) if enc.name == "default" else "")
        if enc.name not in ("default", "v2"):
            return None

        async def keys() -> list[str]:
            return [k async for k in store.list_prefix(prefix)]

        out: set[tuple[int, ...]] = set()
        for k in sync(keys()):
            rel = k[len(prefix) :].lstrip("/") if prefix else k
            if rel.endswith("zarr.json"):
                continue
            if lead and not rel.startswith(lead):
                continue
            out.add(tuple(int(v) for v in rel[len(lead) :].split(sep)))
        return out
    except Exception:  # listing is an optimisation only: fall back to reading everything
        return None


def _runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted integers as ``(first, last + 1)`` runs of consecutive values."""
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and v == out[-1][1]:
            out[-1] = (out[-1][0], v + 1)
        else:
            out.append((v, v + 1))
    return out


def _crop_counts(
    path: str,
    year_index: Sequence[int],
    window: tuple[int, int, int, int],
    ys: Sequence[int],
    xs: Sequence[int],
) -> np.ndarray:
    """Crop pixels (crop type > 0 in any year of the run) per tile, ``[n_ty, n_tx]``.

    Reads the crop layer with Zarr directly (no Dask, no xarray decoding), one band of
    the cube's own chunk rows at a time, the run's years of the band in one read when
    they fit :data:`_CROP_READ_BYTES` (else in groups of years): client memory is
    bounded by that (~85 MB on CONUS x 18 years), never the cube, whatever the tile
    size. Chunks never written hold the fill value (no crop, for a fill value <= 0):
    one listing of the store (:func:`_stored_chunks`) finds the written ones, and only
    runs of those are read, so a continent whose crop lies in a third of its chunks
    costs a third of the reads.
    """
    import zarr

    iy0, iy1, ix0, ix1 = window
    arr = zarr.open_array(str(path), path="crop_type", mode="r")
    dims = tuple(getattr(arr.metadata, "dimension_names", None) or ("year", "y", "x"))
    axes = tuple(dims.index(d) for d in ("year", "y", "x"))
    cs = dict(zip(dims, (int(c) for c in arr.chunks), strict=True))
    ncol = ix1 - ix0
    band = cs["y"]
    if band * ncol > _CROP_READ_BYTES:  # very tall chunks: bound memory, re-read chunks
        band = max(1, _CROP_READ_BYTES // ncol)
    years = sorted({int(i) for i in year_index})
    per_read = max(1, _CROP_READ_BYTES // (band * ncol))
    groups: list[list[int]] = []  # consecutive years, at most per_read: one read each
    for y in years:
        if groups and y == groups[-1][-1] + 1 and len(groups[-1]) < per_read:
            groups[-1].append(y)
        else:
            groups.append([y])
    stored = _stored_chunks(arr)
    fill = arr.fill_value
    if stored is not None and fill is not None and not (float(fill) <= 0):
        stored = None  # unwritten chunks would be crop: read them
    by_row: dict[tuple[int, int], set[int]] = {}  # (year chunk, y chunk) -> written x chunks
    iyr, iy, ix = (dims.index(d) for d in ("year", "y", "x"))
    for c in stored or ():
        if len(c) == 3:
            by_row.setdefault((c[iyr], c[iy]), set()).add(c[ix])
    y_edges = np.concatenate([[0], np.cumsum(ys)]).astype(int)
    x_starts = np.concatenate([[0], np.cumsum(xs)[:-1]]).astype(int)
    counts = np.zeros((len(ys), len(xs)), dtype="int64")
    r0 = iy0 - iy0 % band  # bands aligned to the cube's chunk rows
    while r0 < iy1:
        a, b = max(r0, iy0), min(r0 + band, iy1)
        crop = np.zeros((b - a, ncol), dtype=bool)
        for g in groups:
            if stored is None:
                col_runs = [(ix0, ix1)]
            else:  # the runs of written chunks over these years and rows
                cxs = set().union(*(by_row.get((cyr, cy), ()) for cyr in
                                    range(g[0] // cs["year"], g[-1] // cs["year"] + 1)
                                    for cy in range(a // cs["y"], (b - 1) // cs["y"] + 1)))  # fmt: skip
                col_runs = [
                    (max(ix0, c0 * cs["x"]), min(ix1, c1 * cs["x"])) for c0, c1 in _runs(cxs)
                ]
                col_runs = [(c0, c1) for c0, c1 in col_runs if c0 < c1]
            for c0, c1 in col_runs:
                sel = {"year": slice(g[0], g[-1] + 1), "y": slice(a, b), "x": slice(c0, c1)}
                part = np.transpose(np.asarray(arr[tuple(sel[d] for d in dims)]), axes)
                crop[:, c0 - ix0 : c1 - ix0] |= (part > 0).any(axis=0)
        per_col = np.add.reduceat(crop, x_starts, axis=1, dtype="int64")  # [rows, n_tx]
        # the band's rows by tile row (a band may hold several tile rows, or part of one)
        lo, hi = a - iy0, b - iy0
        t0 = int(np.searchsorted(y_edges, lo, side="right")) - 1
        t1 = int(np.searchsorted(y_edges, hi, side="left"))
        for t in range(t0, t1):
            s0, s1 = max(y_edges[t], lo) - lo, min(y_edges[t + 1], hi) - lo
            counts[t] += per_col[s0:s1].sum(axis=0)
        r0 += band
    return counts
