"""Layout of the upscaling output: variables, time frequency, shards, bytes and files.

Pure arithmetic over a plan's sizes (no I/O), shared by the plan (what it prints
before anything runs), the store set-up (:func:`kgml_grid.execute.prepare_store`) and
the blocks (which sum their days into the output periods).

Variables and frequency
-----------------------
A run writes a subset of :data:`OUTPUT_VARIABLES` (``--variables``, default all) at
one of :data:`FREQUENCIES` (``--frequency``, default ``daily``). ``monthly`` and
``annual`` outputs are *sums* of the daily fluxes over calendar months / years (CF
``cell_methods: "time: sum"``, units ``g m-2 month-1`` / ``g m-2 yr-1``), computed
inside the task. A period cut by the run's start or end sums the days of the run
only; the ``time_bounds`` coordinate says which days each period holds.

Exactness across time chunks is kept by **aligning**: for monthly (annual) output
every time chunk must end at a month (year) end, so that each period lies in exactly
one block (:func:`check_alignment`; the default time chunks, one per calendar year,
are aligned for both). No partial sums travel in the tile state.

Shards
------
Each output variable is a Zarr v3 array with **sharding**: one shard is one block
(space tile x time chunk; for ``yield`` and annual sums, the tile x all years), so a shard is written
by the tasks of one tile only, which run one after the other; the inner chunks are
smaller (:func:`inner_chunks`, about :data:`INNER_CHUNK_BYTES`), for readers. Tiles
without crop are never written, and Zarr writes no shard that holds only the fill
value, so the store's files are about one per variable per crop block
(:func:`layout`). Zarr's shard grid is regular: with calendar-year time chunks the
shard is 365 days, and a leap year's block spills one day into the next shard (of
the same tile, written next in its chain), so 18 years take 19 shards per tile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kgml_grid import schema

__all__ = [
    "FLUX_VARIABLES",
    "FREQUENCIES",
    "OUTPUT_VARIABLES",
    "OutputLayout",
    "aggregate",
    "check_alignment",
    "check_frequency",
    "check_variables",
    "inner_chunks",
    "layout",
    "period_edges",
    "period_index",
]

#: Time frequencies of the output.
FREQUENCIES: tuple[str, ...] = ("daily", "monthly", "annual")
#: Flux variables of the output (time, y, x): the schema's outputs and the model's GPP.
FLUX_VARIABLES: tuple[str, ...] = (*schema.DAILY_OUTPUTS, "gpp")
#: Every variable a run can write (``yield`` is yearly: year, y, x).
OUTPUT_VARIABLES: tuple[str, ...] = (*FLUX_VARIABLES, *schema.YEARLY_OUTPUTS)
#: Units of the fluxes at each frequency (daily: the schema's).
UNITS = {"daily": "g m-2 d-1", "monthly": "g m-2 month-1", "annual": "g m-2 yr-1"}
#: Target size of one inner (reader) chunk of a shard, bytes of float32.
INNER_CHUNK_BYTES = 2**20
#: Compression ratio of the outputs (Zstd level 1) measured on a block of the bench
#: world (benchmarks/results/output_codecs.json); used for the size estimate only.
COMPRESSION_RATIO = 1.213
#: Metadata files of the store besides the variables' (group, coordinates, spatial_ref).
_FIXED_FILES = 8

_PANDAS_FREQ = {"monthly": "MS", "annual": "YS"}


def check_frequency(frequency: str) -> str:
    """``frequency`` if it is one of :data:`FREQUENCIES`.

    Raises
    ------
    ValueError
        Naming the value and the choices.
    """
    f = str(frequency).strip().lower()
    if f not in FREQUENCIES:
        raise ValueError(f"--frequency {frequency!r}: expected one of {', '.join(FREQUENCIES)}")
    return f


def check_variables(variables: str | Iterable[str] | None) -> tuple[str, ...]:
    """The output variables asked for, in the canonical order of :data:`OUTPUT_VARIABLES`.

    ``None`` means all. A string is split on commas.

    Raises
    ------
    ValueError
        For an unknown name (naming it and the list) or an empty selection.
    """
    if variables is None:
        return OUTPUT_VARIABLES
    names = variables.split(",") if isinstance(variables, str) else list(variables)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in OUTPUT_VARIABLES]
    if unknown:
        raise ValueError(
            f"--variables: unknown output variable {unknown[0]!r}; expected some of "
            f"{', '.join(OUTPUT_VARIABLES)}"
        )
    if not names:
        raise ValueError(f"--variables: none given; expected some of {', '.join(OUTPUT_VARIABLES)}")
    return tuple(n for n in OUTPUT_VARIABLES if n in names)


# --------------------------------------------------------------------------------------
# periods
# --------------------------------------------------------------------------------------


def period_edges(start: pd.Timestamp, n_days: int, frequency: str) -> np.ndarray:
    """Day offsets where the output periods start, plus ``n_days``: ``[P + 1]`` int64.

    Daily: ``0, 1, ..., n_days``. Monthly / annual: the first day of the run, then each
    first of a month / 1 January inside the run, then ``n_days``.
    """
    f = check_frequency(frequency)
    if f == "daily":
        return np.arange(n_days + 1, dtype="int64")
    start = pd.Timestamp(start).normalize()
    end = start + pd.Timedelta(days=n_days - 1)
    firsts = pd.date_range(start, end, freq=_PANDAS_FREQ[f])
    offs = [(d - start).days for d in firsts if d > start]
    return np.asarray([0, *offs, n_days], dtype="int64")


def period_index(start: pd.Timestamp, edges: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The output time coordinate (first day of each period) and its CF bounds
    ``[P, 2]`` (first day, day after the last), both as ``datetime64[ns]``."""
    start = pd.Timestamp(start).normalize()
    days = start + pd.to_timedelta(np.asarray(edges), unit="D")
    time = pd.DatetimeIndex(days[:-1])
    bounds = np.stack([days[:-1].values, days[1:].values], axis=1)
    return time, bounds


def check_alignment(
    time_bounds: Sequence[tuple[int, int]], edges: np.ndarray, start: pd.Timestamp, frequency: str
) -> None:
    """Refuse time chunks that cut an output period (see the module docstring).

    Raises
    ------
    ValueError
        Naming the first chunk that ends inside a month / year and the fix.
    """
    if frequency == "daily":
        return
    edge_set = set(np.asarray(edges).tolist())
    for i, (_, t1) in enumerate(time_bounds):
        if t1 not in edge_set:
            last = (pd.Timestamp(start) + pd.Timedelta(days=t1 - 1)).date()
            unit = "month" if frequency == "monthly" else "year"
            raise ValueError(
                f"--frequency {frequency}: time chunk {i} ends on {last}, inside a {unit}; "
                f"{frequency} sums are computed inside a block, so every time chunk must end "
                f"at a {unit} end: leave time out of --chunks (one chunk per calendar year) "
                f"or give chunk lengths that end at {unit} ends"
            )


def block_periods(edges: np.ndarray, t0: int, t1: int) -> tuple[int, int]:
    """Periods ``[p0, p1)`` of the output that the block of days ``[t0, t1)`` holds
    (aligned chunks: its days are exactly those periods')."""
    e = np.asarray(edges)
    p0 = int(np.searchsorted(e, t0, side="right")) - 1
    p1 = int(np.searchsorted(e, t1, side="left"))
    return p0, p1


def aggregate(values: np.ndarray, edges: np.ndarray, t0: int, t1: int) -> np.ndarray:
    """Sum daily values ``[n, T]`` of the block ``[t0, t1)`` into its periods ``[n, P]``
    (float64 accumulation, float32 result; a NaN day makes its period NaN)."""
    p0, p1 = block_periods(edges, t0, t1)
    local = np.asarray(edges[p0:p1], dtype="int64") - t0
    if values.shape[1] == 0 or local.size == 0:
        return np.empty((values.shape[0], 0), dtype="float32")
    return np.add.reduceat(values.astype("float64"), local, axis=1).astype("float32")


# --------------------------------------------------------------------------------------
# shards, bytes and files
# --------------------------------------------------------------------------------------


def _largest_divisor_at_most(n: int, cap: int) -> int:
    cap = max(1, min(n, cap))
    for d in range(cap, 0, -1):
        if n % d == 0:
            return d
    return 1  # pragma: no cover


def _divisor_nearest(n: int, target: float) -> int:
    """The divisor of ``n`` nearest to ``target`` in ratio (ties: the smaller)."""
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: (abs(np.log(d / max(target, 1e-9))), d))


def inner_chunks(shard: Sequence[int], itemsize: int = 4) -> tuple[int, int, int]:
    """Inner (reader) chunks of a shard ``(time, y, x)``: the whole tile in space (split
    when one of its days exceeds :data:`INNER_CHUNK_BYTES`), and the divisor of the
    shard's days nearest to :data:`INNER_CHUNK_BYTES` (so that inner chunks tile the
    shard; 365 = 5 x 73 days allows 1, 5, 73 or 365)."""
    t, ny, nx = (int(s) for s in shard)
    side = max(1, int((INNER_CHUNK_BYTES / itemsize) ** 0.5))
    iy = ny if ny * nx * itemsize <= INNER_CHUNK_BYTES else _largest_divisor_at_most(ny, side)
    ix = nx if ny * nx * itemsize <= INNER_CHUNK_BYTES else _largest_divisor_at_most(nx, side)
    it = _divisor_nearest(t, INNER_CHUNK_BYTES / (iy * ix * itemsize))
    return (it, iy, ix)


@dataclass(frozen=True)
class OutputLayout:
    """What a run writes: sizes, shards and files (see :func:`layout`).

    Attributes
    ----------
    variables, frequency
        As asked.
    n_periods : int
        Length of the output time axis.
    shards : dict
        Variable -> shard shape (``time``/``year``, ``y``, ``x``).
    chunks : dict
        Variable -> inner chunk shape.
    bytes_float32 : int
        The whole arrays as float32 (what a reader loading everything gets).
    bytes_written : int
        Uncompressed float32 of the shards that are written (crop tiles only).
    bytes_crop : int
        float32 of the crop pixels' values (the rest of a written shard is NaN, which
        compresses to almost nothing).
    bytes_estimate : int
        ``bytes_crop`` / :data:`COMPRESSION_RATIO`: the expected size on disk.
    shard_files : int
        Shard files written (about one per variable per crop block).
    metadata_files : int
        ``zarr.json`` files and coordinate arrays.
    record_files : int
        Files of the records folder at the end of the run (the final state of each
        crop tile, one completion log per worker process, the plan, the input
        fingerprints and the marker; two states per tile while it runs).
    records_bytes : int
        Estimate of the completion logs' size (one short line per block).
    """

    variables: tuple[str, ...]
    frequency: str
    n_periods: int
    shards: dict[str, tuple[int, int, int]]
    chunks: dict[str, tuple[int, int, int]]
    bytes_float32: int
    bytes_written: int
    bytes_crop: int
    bytes_estimate: int
    shard_files: int
    metadata_files: int
    record_files: int
    records_bytes: int

    @property
    def files(self) -> int:
        """Files of the store (shards and metadata)."""
        return self.shard_files + self.metadata_files

    def to_dict(self) -> dict[str, object]:
        return {
            "variables": list(self.variables),
            "frequency": self.frequency,
            "n_periods": self.n_periods,
            "shards": {k: list(v) for k, v in self.shards.items()},
            "chunks": {k: list(v) for k, v in self.chunks.items()},
            "bytes_float32": self.bytes_float32,
            "bytes_written": self.bytes_written,
            "bytes_crop": self.bytes_crop,
            "bytes_estimate": self.bytes_estimate,
            "shard_files": self.shard_files,
            "metadata_files": self.metadata_files,
            "files": self.files,
            "record_files": self.record_files,
            "records_bytes": self.records_bytes,
        }


#: Bytes of one line of a completion log (measured on the tiny world: ~45).
RECORD_LINE_BYTES = 48


def layout(
    *,
    ny: int,
    nx: int,
    tile_y: int,
    tile_x: int,
    time_bounds: Sequence[tuple[int, int]],
    edges: np.ndarray,
    n_years: int,
    n_crop_tiles: int,
    n_crop_pixels: int,
    variables: Sequence[str],
    frequency: str,
    n_workers: int = 1,
) -> OutputLayout:
    """The output's shards, sizes and file counts, from the plan's sizes alone.

    Parameters
    ----------
    ny, nx : int
        Output grid.
    tile_y, tile_x : int
        Space tile (the shard's y, x).
    time_bounds : sequence of (t0, t1)
        The time chunks, in days.
    edges : array
        :func:`period_edges` of the output.
    n_years : int
        Length of ``yield``'s year axis.
    n_crop_tiles : int
        Tiles that run (the others write nothing).
    n_crop_pixels : int
        Crop pixels of the run.
    n_workers : int
        Worker processes (one completion log each).
    """
    edges = np.asarray(edges)
    n_periods = int(edges.size - 1)
    per_chunk = [block_periods(edges, t0, t1) for t0, t1 in time_bounds]
    lens = [p1 - p0 for p0, p1 in per_chunk]
    common = max(set(lens), key=lambda n: (lens.count(n), -lens.index(n))) if lens else 1
    common = max(1, int(common))
    if frequency == "annual":  # a few values per tile: one shard holds every year (as yield)
        common = max(1, n_periods)
    n_tshards = int(np.ceil(n_periods / common)) if n_periods else 0
    shards: dict[str, tuple[int, int, int]] = {}
    chunks: dict[str, tuple[int, int, int]] = {}
    full = 0
    written = 0
    crop = 0
    files = 0
    tile_px = tile_y * tile_x
    for name in variables:
        if name in FLUX_VARIABLES:
            shards[name] = (min(common, max(n_periods, 1)), tile_y, tile_x)
            full += 4 * n_periods * ny * nx
            written += 4 * n_periods * tile_px * n_crop_tiles
            crop += 4 * n_periods * n_crop_pixels
            files += n_tshards * n_crop_tiles
        else:  # yield: one shard per tile holds every year
            shards[name] = (max(n_years, 1), tile_y, tile_x)
            full += 4 * n_years * ny * nx
            written += 4 * n_years * tile_px * n_crop_tiles
            crop += 4 * n_years * n_crop_pixels
            files += n_crop_tiles if n_years else 0
        chunks[name] = inner_chunks(shards[name])
    written = min(written, full)
    n_blocks = n_crop_tiles * len(time_bounds)
    return OutputLayout(
        variables=tuple(variables),
        frequency=frequency,
        n_periods=n_periods,
        shards=shards,
        chunks=chunks,
        bytes_float32=int(full),
        bytes_written=int(written),
        bytes_crop=int(crop),
        bytes_estimate=int(crop / COMPRESSION_RATIO),
        shard_files=int(files),
        metadata_files=len(variables) + _FIXED_FILES,
        record_files=int(n_crop_tiles + max(1, n_workers) + 3),
        records_bytes=int(RECORD_LINE_BYTES * n_blocks),
    )
