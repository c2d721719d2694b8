"""Chunk shapes of the sweep (pure): :class:`ChunkShape`, the default sweep and the
domains of the memory-scaling comparison."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ChunkShape", "default_shapes", "scaling_domains"]


@dataclass(frozen=True, order=True)
class ChunkShape:
    """One chunk shape of the sweep: a space tile ``tile_y x tile_x`` and a time chunk.

    ``time=-1`` means the whole run in one chunk. Parse one with :meth:`parse`.
    """

    tile_y: int
    tile_x: int
    time: int

    def __post_init__(self) -> None:
        for name in ("tile_y", "tile_x"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"ChunkShape.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        t = self.time
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or (t < 1 and t != -1):
            raise ValueError(
                f"ChunkShape.time must be a positive integer or -1 (whole run), got {t!r}"
            )
        object.__setattr__(self, "time", int(t))

    @property
    def chunks(self) -> str:
        """The ``--chunks`` string of :func:`kgml_grid.plan.make_plan`."""
        return f"y={self.tile_y},x={self.tile_x},time={self.time}"

    @property
    def label(self) -> str:
        """Short label, e.g. ``'64x64 px x 365 d'``."""
        t = "all" if self.time == -1 else str(self.time)
        return f"{self.tile_y}x{self.tile_x} px x {t} d"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, text: str | ChunkShape) -> ChunkShape:
        """``'64x365'`` (square tile x days), ``'64x128x365'`` (y x x x days) or
        ``'y=64,x=64,time=365'``.

        Raises
        ------
        ValueError
            Naming the text and the accepted spellings.
        """
        if isinstance(text, ChunkShape):
            return text
        s = str(text).strip().lower()
        hint = "write TILExDAYS (e.g. 64x365), TYxTXxDAYS (e.g. 32x64x92) or y=64,x=64,time=365"
        if "=" in s:
            from kgml_grid.plan import PlanError, parse_chunks

            try:
                c = parse_chunks(s)
            except PlanError as e:
                raise ValueError(f"chunk shape {text!r}: {e}") from None
            missing = [d for d in ("y", "x", "time") if d not in c]
            if (
                missing
                or any(isinstance(v, tuple) for v in c.values())
                or -1 in (c.get("y"), c.get("x"))
            ):
                raise ValueError(f"chunk shape {text!r}: give y, x and time as sizes; {hint}")
            return cls(int(c["y"]), int(c["x"]), int(c["time"]))  # type: ignore[arg-type]
        parts = s.split("x")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"-?\d+", p.strip()) for p in parts):
            raise ValueError(f"chunk shape {text!r} cannot be read; {hint}")
        nums = [int(p) for p in parts]
        if len(nums) == 2:
            nums = [nums[0], nums[0], nums[1]]
        try:
            return cls(*nums)
        except ValueError as e:
            raise ValueError(f"chunk shape {text!r}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"tile_y": self.tile_y, "tile_x": self.tile_x, "time": self.time,
                "chunks": self.chunks, "label": self.label}  # fmt: skip


def default_shapes(
    domain: tuple[int, int], n_days: int, *, cube_tile: int | None = None, quick: bool = False
) -> list[ChunkShape]:
    """The chunk shapes swept by default (at least 6; 2 with ``quick``).

    With ``b`` the base tile (the cube's spatial chunk, at most the domain's smaller
    side) and ``T`` the year-long time chunk (the run's days, at most 365): tiles
    ``b/4, b/2, b, 2b`` with time ``T``, then tile ``b`` with ``T/4`` and ``T/12`` and
    tile ``b/2`` with ``T/4``. Tiles are clipped to the domain; duplicates dropped.

    Parameters
    ----------
    domain : (ny, nx)
        Pixels of the benchmark domain.
    n_days : int
        Days of the run.
    cube_tile : int, optional
        Spatial chunk of the satellite cube (default: the domain's smaller side).
    quick : bool
        Two shapes only (``b/2 x T`` and ``b x T/4``), for smoke tests.
    """
    ny, nx = (int(v) for v in domain)
    if ny < 1 or nx < 1 or n_days < 1:
        raise ValueError(f"domain {domain} and n_days {n_days} must be positive")
    b = max(1, min(int(cube_tile or min(ny, nx)), ny, nx))
    t_year = min(int(n_days), 365)

    def tile(n: int) -> tuple[int, int]:
        n = max(1, int(n))
        return (min(n, ny), min(n, nx))

    def days(d: float) -> int:
        return max(1, math.ceil(d))

    if quick:
        cand = [(*tile(b // 2), t_year), (*tile(b), days(t_year / 4))]
    else:
        cand = [(*tile(b // 4), t_year), (*tile(b // 2), t_year), (*tile(b), t_year),
                (*tile(2 * b), t_year), (*tile(b), days(t_year / 4)),
                (*tile(b), days(t_year / 12)), (*tile(b // 2), days(t_year / 4))]  # fmt: skip
    out: list[ChunkShape] = []
    for ty, tx, t in cand:
        s = ChunkShape(ty, tx, t)
        if s not in out:
            out.append(s)
    return out


def scaling_domains(
    domain: tuple[int, int], grid: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``(1x, 4x)`` domains of the memory-scaling comparison, ``(ny, nx)`` each.

    ``1x`` is the benchmark domain and ``4x`` doubles both sides when that fits the
    grid; otherwise ``4x`` is the benchmark domain and ``1x`` halves both sides.
    """
    ny, nx = domain
    gy, gx = grid
    if 2 * ny <= gy and 2 * nx <= gx:
        return (ny, nx), (2 * ny, 2 * nx)
    if ny < 2 or nx < 2:
        raise ValueError(f"domain {domain} is too small to halve for the 4x comparison")
    return (ny // 2, nx // 2), (ny // 2 * 2, nx // 2 * 2)
