"""Time steps of weather files: daily, sub-daily (aggregated to days here) or refused.

Pure functions on time stamps. A quantity's stamps (over all its files) are **daily** when
no two fall on one calendar day (gridMET's ``day`` at 00:00, NLDAS daily means stamped at
12:00, a single-day file); **sub-daily** when several do (hourly NLDAS-2 FORA: one file
per hour, or several hours in one file). The step of sub-daily stamps is the smallest
difference between them and must divide a day; a day is complete when it has all
``86400 / step`` of its stamps. A day is the calendar day (UTC for NLDAS) of the stamps
as the files give them.

How sub-daily steps become one daily value (:func:`how_to_aggregate`): maximum and minimum
for ``tmax`` / ``tmin``; the sum for amounts per step (precipitation in mm or kg m-2,
radiation in J m-2); the mean for everything else (temperature, humidity, pressure, W m-2
fluxes and rates such as kg m-2 s-1). ``tmax`` and ``tmin`` are also made from sub-daily
``tair`` (its maximum and minimum over the day's steps).

Files whose own step is a month (TerraClimate), or a regular step of several days, are
refused by :func:`check_file_step`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kgml_grid.ingest.errors import IngestError, file_error

DAY = pd.Timedelta(days=1)

#: Units (whitespace-normalised) of an amount per time step, summed over a day's steps.
AMOUNT_UNITS = frozenset({
    "mm", "kg m-2", "kg/m2", "kg m^-2", "kg/m^2", "kg m**-2", "m",  # precipitation
    "J m-2", "J/m2", "J m^-2", "MJ m-2",  # radiation
})  # fmt: skip


def check_file_step(times: pd.DatetimeIndex, path: str) -> None:
    """Refuse one file's time axis when its step is longer than a day.

    Raises
    ------
    IngestError
        Naming the file and its step: monthly (steps of 28-31 days, TerraClimate), or a
        regular step of several days (8-day composites, say).
    """
    if times.size < 2:
        return
    t = np.sort(times.values)
    d = np.diff(t).astype("timedelta64[s]").astype("int64") / 86400.0
    span = f"{times.size} steps, {pd.Timestamp(t[0]).date()}..{pd.Timestamp(t[-1]).date()}"
    if d.min() >= 28:
        step = "1 month" if d.max() <= 31 else f"{d.min():g} to {d.max():g} days"
        raise file_error(
            path, f"time step is {step} ({span}): monthly values (TerraClimate, say) are not daily "
            "weather; give daily or sub-daily files"
        )  # fmt: skip
    if d.min() > 1 and np.allclose(d, d[0]):
        raise file_error(
            path, f"time step is {d[0]:g} days ({span}); weather files must be daily or sub-daily"
        )


def how_to_aggregate(quantity: str, units: str) -> str:
    """``'max'``, ``'min'``, ``'sum'`` or ``'mean'``: how sub-daily values of ``quantity`` in
    ``units`` (whitespace-normalised) make the day's value."""
    if quantity == "tmax":
        return "max"
    if quantity == "tmin":
        return "min"
    return "sum" if units in AMOUNT_UNITS else "mean"


def aggregate(values: np.ndarray, how: str) -> np.ndarray:
    """Reduce axis 0 (a day's steps) of ``values``; NaN stays NaN (a cell missing in any step)."""
    if how == "max":
        return values.max(axis=0)
    if how == "min":
        return values.min(axis=0)
    if how == "sum":
        return values.sum(axis=0)
    return values.mean(axis=0)


@dataclass(frozen=True)
class Steps:
    """The time steps of one quantity over its files.

    Attributes
    ----------
    quantity : str
    per_day : int
        Steps per day (1: daily files).
    step : pandas.Timedelta
        The step (one day for daily files).
    days : mapping
        Day -> ``((variable index, stamp index), ...)``: which file variable (in the order
        given to :func:`classify`) and which of its stamps fall on that day.
    """

    quantity: str
    per_day: int
    step: pd.Timedelta
    days: Mapping[pd.Timestamp, tuple[tuple[int, int], ...]] = field(repr=False)

    @property
    def subdaily(self) -> bool:
        return self.per_day > 1

    def label(self) -> str:
        """``'1 h'``, ``'3 h'``, ``'30 min'`` or ``'1 day'``."""
        s = int(self.step.total_seconds())
        if s == 86400:
            return "1 day"
        return f"{s // 3600:d} h" if s % 3600 == 0 else f"{s // 60:d} min"

    def incomplete(self, axis: pd.DatetimeIndex) -> list[pd.Timestamp]:
        """Days of ``axis`` that have some but not all of their steps."""
        return [d for d in axis if 0 < len(self.days.get(d, ())) < self.per_day]

    def complete(self, day: pd.Timestamp) -> tuple[tuple[int, int], ...]:
        """The day's ``(variable, stamp)`` pairs when it has all its steps, else ``()``."""
        hits = self.days.get(day, ())
        return hits if len(hits) == self.per_day else ()


def classify(quantity: str, stamps: Sequence[pd.DatetimeIndex], paths: Sequence[str]) -> Steps:
    """Daily or sub-daily, the step, and which stamps make each day (pure).

    Parameters
    ----------
    quantity : str
        For messages.
    stamps : sequence of DatetimeIndex
        The time stamps of each file variable giving ``quantity`` (as in the files).
    paths : sequence of str
        The file of each, for messages.

    Raises
    ------
    IngestError
        Naming the file: a stamp (or, for daily files, a day) given twice; a sub-daily
        step that does not divide a day.
    """
    owner: dict[pd.Timestamp, int] = {}
    for i, ts in enumerate(stamps):
        for t in ts:
            if t in owner:
                raise file_error(
                    paths[i], f"{quantity} of {_stamp(t)} is also given by {paths[owner[t]]}"
                )
            owner[t] = i
    allts = pd.DatetimeIndex(sorted(owner))
    dates = allts.normalize()
    if not dates.has_duplicates:
        days = {
            d: ((owner[t], _pos(stamps[owner[t]], t)),) for t, d in zip(allts, dates, strict=True)
        }
        return Steps(quantity, 1, DAY, days)
    step = pd.Timedelta(np.diff(allts.values).min())
    if step.total_seconds() < 60 or 86400 % int(step.total_seconds()) != 0:
        t = allts[int(np.argmin(np.diff(allts.values)))]
        raise file_error(
            paths[owner[t]], f"{quantity}: time step {step} (after {t}) does not divide a day; sub-daily "
            "steps must be regular (1 h, 3 h, ...)"
        )  # fmt: skip
    grouped: dict[pd.Timestamp, list[tuple[int, int]]] = {}
    for t, d in zip(allts, dates, strict=True):
        grouped.setdefault(d, []).append((owner[t], _pos(stamps[owner[t]], t)))
    return Steps(
        quantity,
        int(86400 // step.total_seconds()),
        step,
        {d: tuple(v) for d, v in grouped.items()},
    )


def _stamp(t: pd.Timestamp) -> str:
    return str(t.date()) if t == t.normalize() else str(t)


def _pos(index: pd.DatetimeIndex, t: pd.Timestamp) -> int:
    loc = index.get_loc(t)
    if not isinstance(loc, int):
        raise IngestError(f"time stamp {t} appears more than once in one file")
    return loc
