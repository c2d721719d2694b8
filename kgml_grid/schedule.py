"""Bounded, tile-major scheduling of an upscaling run: the pure arithmetic.

:class:`kgml_grid.execute.DaskExecutor` never hands the scheduler the whole run. It
keeps a *window* of blocks in the scheduler and submits each tile's time chunks as a
chain (a *segment*: each block takes the previous block's future, so Dask keeps the
state on the worker that has the tile's inputs in its chunk cache). When a segment
finishes the next segment of the tile (from the state saved on disk) or a new tile
takes its place. Tiles come in row-major order, lazily, from the plan's per-tile
arrays: nothing per block exists up front, whatever the size of the run.

The window is the smaller of ``max_tasks`` and what keeps every worker thread busy
(:data:`SEGMENTS_PER_THREAD` runnable segments per thread); a segment is a tile's
whole remaining chain when that fits, else as many chunks as the window allows per
segment. Tasks of a segment stay in the scheduler until its last block is done (its
earlier blocks are the dependencies Dask would recompute after a worker loss), so
the window counts them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_MAX_TASKS", "SEGMENTS_PER_THREAD", "Window", "todo_tiles", "window_for"]

#: Most blocks held by the scheduler at once, by default.
DEFAULT_MAX_TASKS = 2000
#: Runnable segments kept per worker thread (the rest of the window waits in the client).
SEGMENTS_PER_THREAD = 4


@dataclass(frozen=True)
class Window:
    """How a run is fed to the scheduler.

    Attributes
    ----------
    tasks : int
        Most blocks in the scheduler at once.
    segment : int
        Time chunks of a tile submitted as one chain.
    tiles : int
        Segments (tiles) in flight at once: ``tasks // segment``.
    """

    tasks: int
    segment: int

    @property
    def tiles(self) -> int:
        return max(1, self.tasks // self.segment)


def window_for(n_chunks: int, max_tasks: int, threads: int) -> Window:
    """The window of a run with ``n_chunks`` time chunks per tile on ``threads``
    worker threads, at most ``max_tasks`` blocks in the scheduler.

    Raises
    ------
    ValueError
        For ``max_tasks < 1``.
    """
    if int(max_tasks) < 1:
        raise ValueError(f"--max-tasks {max_tasks}: must be >= 1")
    threads = max(1, int(threads))
    n_chunks = max(1, int(n_chunks))
    # whole chains when SEGMENTS_PER_THREAD of them per thread fit the window
    segment = max(1, min(n_chunks, int(max_tasks) // (SEGMENTS_PER_THREAD * threads)))
    busy = SEGMENTS_PER_THREAD * threads * segment
    return Window(tasks=max(segment, min(int(max_tasks), busy)), segment=segment)


def todo_tiles(
    crop_counts: np.ndarray, first: np.ndarray, n_chunks: int
) -> Iterator[tuple[int, int, int]]:
    """``(ty, tx, first_chunk)`` of each crop tile with blocks left, row-major, lazily."""
    todo = (np.asarray(crop_counts) > 0) & (np.asarray(first) < n_chunks)
    for ty, tx in zip(*np.nonzero(todo), strict=True):
        yield int(ty), int(tx), int(first[ty, tx])


def n_todo(crop_counts: np.ndarray, first: np.ndarray, n_chunks: int) -> int:
    """Blocks left to compute."""
    crop = np.asarray(crop_counts) > 0
    return int(np.where(crop, n_chunks - np.minimum(first, n_chunks), 0).sum())
