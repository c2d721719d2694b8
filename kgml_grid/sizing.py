"""Blocks sized for the device: the chunk shape a run should use on CPUs or on a GPU (pure).

A task (one block: a space tile x a time chunk) costs a fixed overhead (scheduling, a
few array opens, the state file, the record: milliseconds to tens of milliseconds)
plus its compute, which grows with its crop pixel-days. A task is worth its overhead
when it holds enough crop pixels: thousands on a CPU core, 10^5 or more on a GPU,
whose batches need that many pixels to fill the device. Tiles are therefore large
(one task's output chunk; the output store shards them), and the model runs in
batches inside the task, so the model's memory is bounded by the batch; the arrays
that grow with the tile (raw blocks, features, outputs) are what limit the tile, and
:func:`kgml_grid.plan.memory_estimate` counts them phase by phase.

:func:`recommend_shape` picks, for a :class:`DeviceProfile`:

1. the time chunk: one calendar year (365 d) unless a shorter one is needed to fit
   memory (a year keeps yearly outputs and the yield inside one task);
2. the smallest square tile (a power of two times the counting unit, 16 px) whose
   crop tiles hold, on average, at least the profile's ``target_crop_pixels``;
3. but no larger than the largest tile whose worst task (the tile with most crop)
   fits the profile's ``task_memory``; and never more tiles than needed: a tile larger
   than the domain is clipped to it.

Its input is the crop count per *unit* cell (``unit x unit`` px; the plan counts crop
once at this resolution and sums the counts exactly to any tile that is a multiple),
so every figure behind the choice (crop tiles, mean and largest crop per task, tasks,
memory) is exact for the chosen tile, not extrapolated. The choice and its reasons are
returned as a :class:`ShapeChoice`; ``print(plan)`` shows them for ``--chunks auto``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PROFILES", "UNIT", "DeviceProfile", "ShapeChoice", "pool_counts", "recommend_shape"]

#: Crop is counted per ``UNIT x UNIT`` px cell for ``--chunks auto``; tiles are multiples.
UNIT = 16
#: Square tile sides tried, in units (16 px .. 4,096 px).
TILE_UNITS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Time chunks tried, longest first (days); a year first.
TIME_CHUNKS = (365, 183, 92, 46, 23)


@dataclass(frozen=True)
class DeviceProfile:
    """What one task of a device should hold and may use.

    Attributes
    ----------
    name : str
        ``cpu`` or ``cuda``.
    target_crop_pixels : int
        Crop pixels per task (mean over the tiles with crop) at which the task's fixed
        overhead is amortised.
    task_memory : int
        Host memory one task may use (bytes): on CPU half a 4 GiB worker
        (:data:`kgml_grid.plan.MEMORY_FRACTION`); on a GPU node, the share of host
        memory of the one worker that drives the GPU.
    batch_budget : int
        Memory of one batch's activations (bytes); on a GPU it is device memory.
    max_batch_pixels : int
        Pixels per model batch at most.
    activations_on_device : bool
        The activations live in device memory (not counted in host memory per task).
    why : str
        One line: where the target comes from.
    """

    name: str
    target_crop_pixels: int
    task_memory: int
    batch_budget: int
    max_batch_pixels: int
    activations_on_device: bool = False
    why: str = ""


PROFILES: Mapping[str, DeviceProfile] = {
    "cpu": DeviceProfile(
        "cpu", target_crop_pixels=4_096, task_memory=2 * 2**30, batch_budget=128 * 2**20,
        max_batch_pixels=4_096,
        why="a CPU core runs ~1e5-1e6 pixel-days/s: 4,096 crop px x 365 d is seconds of "
            "compute per task, against ~10-20 ms of overhead",
    ),
    "cuda": DeviceProfile(
        "cuda", target_crop_pixels=100_000, task_memory=24 * 2**30, batch_budget=8 * 2**30,
        max_batch_pixels=65_536, activations_on_device=True,
        why="a GPU needs batches of ~1e4-1e5 pixels to be busy; 1e5 crop px per task keep "
            "its batches full and the host-side overhead per task below 1 %",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ShapeChoice:
    """A recommended chunk shape and the figures behind it."""

    device: str
    tile: int
    time: int
    batch_pixels: int
    crop_tiles: int
    tiles: int
    mean_crop_per_task: float
    max_crop_per_task: int
    memory: Mapping[str, int] = field(repr=False)
    reasons: tuple[str, ...] = ()

    @property
    def chunks(self) -> str:
        """The ``--chunks`` string."""
        return f"y={self.tile},x={self.tile},time={self.time}"

    def __str__(self) -> str:
        return f"{self.chunks} for {self.device}: " + "; ".join(self.reasons)


def pool_counts(unit_counts: np.ndarray, k: int) -> np.ndarray:
    """Sum ``k x k`` blocks of unit cells: crop per tile of ``k`` units (partial edge
    tiles included, as :func:`kgml_grid.plan.make_plan` tiles the grid from its origin)."""
    c = np.asarray(unit_counts)
    ny, nx = c.shape
    py, px = -(-ny // k) * k - ny, -(-nx // k) * k - nx
    c = np.pad(c, ((0, py), (0, px)))
    return c.reshape(c.shape[0] // k, k, c.shape[1] // k, k).sum(axis=(1, 3))


def _estimate(profile: DeviceProfile, model: Mapping[str, Any], days: int, tile: tuple[int, int],
              max_crop: int, weather: tuple[Any, Any]) -> tuple[dict[str, int], int]:  # fmt: skip
    from kgml_grid.plan import _task_memory, batch_pixels_for

    bp = min(profile.max_batch_pixels,
             max(1, batch_pixels_for(days, model, budget=profile.batch_budget, cap=profile.max_batch_pixels)))  # fmt: skip
    mem = _task_memory(model, days, tile, max_crop, weather[0], weather[1], bp,
                       activations_on_device=profile.activations_on_device)  # fmt: skip
    return mem, bp


def recommend_shape(
    device: str,
    unit_counts: np.ndarray,
    *,
    model: Mapping[str, Any],
    grid: Any,
    weather_grid: Any,
    days: int,
    unit: int = UNIT,
    task_memory: int | None = None,
) -> ShapeChoice:
    """The chunk shape for ``device`` (see the module docstring for the rule).

    Parameters
    ----------
    device : str
        ``cpu`` or ``cuda`` (``cuda:N`` counts as ``cuda``).
    unit_counts : int array ``[ceil(ny / unit), ceil(nx / unit)]``
        Crop pixels per unit cell of the run's window.
    model : mapping
        The checkpoint's ``ModelConfig.to_dict()``.
    grid, weather_grid : GridSpec
        The run's window and the weather grid (for the weather block of a tile).
    days : int
        Days of the run (the time chunk is at most this).
    task_memory : int, optional
        Host bytes a task may use (default the profile's).

    Raises
    ------
    ValueError
        For an unknown device.
    """
    name = "cuda" if str(device).startswith("cuda") else str(device)
    if name not in PROFILES:
        raise ValueError(f"--device {device!r}: chunk shapes are recommended for cpu or cuda")
    prof = PROFILES[name]
    budget = int(task_memory or prof.task_memory)
    ny, nx = grid.ny, grid.nx
    side_max = max(ny, nx)
    reasons = [prof.why]
    tried = []
    for t in sorted({min(d, days) for d in TIME_CHUNKS}, reverse=True):
        best = None
        for k in TILE_UNITS:
            side = k * unit
            counts = pool_counts(unit_counts, k)
            crop = counts[counts > 0]
            if crop.size == 0:
                continue
            tile = (min(side, ny), min(side, nx))
            mem, bp = _estimate(prof, model, t, tile, int(crop.max()), (grid, weather_grid))
            fits = mem["total"] <= budget
            cand = (side, t, bp, int(crop.size), int(counts.size), float(crop.mean()),
                    int(crop.max()), mem)  # fmt: skip
            tried.append((side, t, fits, float(crop.mean())))
            if not fits:
                break  # larger tiles need more memory still
            best = cand
            if crop.mean() >= prof.target_crop_pixels or side >= side_max:
                break
        if best is not None:
            side, t, bp, n_crop, n_tiles, mean, mx, mem = best
            if mean < prof.target_crop_pixels and side < side_max:
                reasons.append(f"tile {side} px holds {mean:,.0f} crop px per task on average, "
                               f"short of the {prof.target_crop_pixels:,} target: a larger tile "
                               f"would need more than {budget / 2**30:.1f} GiB per task")  # fmt: skip
            elif mean < prof.target_crop_pixels:
                reasons.append(f"one tile covers the whole {ny} x {nx} px window and holds "
                               f"{mean:,.0f} crop px per task, short of the "
                               f"{prof.target_crop_pixels:,} target: the run is too small to fill "
                               f"the device")  # fmt: skip
            else:
                reasons.append(f"tile {side} px is the smallest whose {n_crop:,} crop tiles hold "
                               f">= {prof.target_crop_pixels:,} crop px per task on average "
                               f"({mean:,.0f}; largest {mx:,})")  # fmt: skip
            dev = (
                f", {mem['device'] / 2**30:.1f} GiB of activations on the device"
                if "device" in mem
                else ""
            )
            reasons.append(f"time {t} d{' (a year)' if t >= 365 else ' (a year does not fit)'}: "
                           f"~{mem['total'] / 2**30:.2f} GiB host memory per task (budget "
                           f"{budget / 2**30:.1f} GiB){dev}, batches of {bp:,} px")  # fmt: skip
            return ShapeChoice(name, side, t, bp, n_crop, n_tiles, mean, mx, mem, tuple(reasons))
    raise ValueError(
        f"no chunk shape fits {budget / 2**30:.1f} GiB per task on {name} (tried tiles of "
        f"{unit} px and time chunks down to {min(TIME_CHUNKS)} d): raise the memory limit"
    )
