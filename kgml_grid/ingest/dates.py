"""Dates (and years) parsed from file names, by a configurable pattern. Pure functions.

Two spellings of a pattern, matched against the file's *base name*:

* a **template** with one ``{date:FORMAT}`` field in ``strftime`` codes, ``*`` matching any
  run of characters and ``?`` any one character, the rest literal::

      SLOPE_GPP_{date:%Y%j}.tif                  SLOPE_GPP_2015001.tif -> 2015-01-01
      GLASS01B01.V40.A{date:%Y%j}.*.tif          GLASS01B01.V40.A2015009.2019353.tif
      SMAP_L4_SM_gph_{date:%Y%m%d}T*.tif         SMAP_L4_SM_gph_20150401T013000_Vv7032_001.tif
      CDL_{date:%Y}_*.tif                        CDL_2015_clip.tif -> 2015-01-01

  The template must match the whole name.
* a **regular expression** prefixed ``re:``, searched in the name, with named groups
  ``year`` and ``doy``, or ``year``, ``month`` and ``day`` (or ``year`` alone for yearly
  files), or ``date`` parsed with ``date_format``::

      re:_(?P<year>\\d{4})(?P<doy>\\d{3})\\.tif$
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import PurePath

import pandas as pd

from kgml_grid.ingest.errors import IngestError, file_error

_CODE_RE = {
    "Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{2}", "d": r"\d{2}", "j": r"\d{3}",
    "H": r"\d{2}", "M": r"\d{2}", "S": r"\d{2}", "b": r"[A-Za-z]{3}", "B": r"[A-Za-z]+",
}  # fmt: skip
_FIELD = re.compile(r"\{date:([^{}]+)\}")


@dataclass(frozen=True)
class DatePattern:
    """A compiled file-name pattern; :meth:`parse` gives the date of a file name."""

    pattern: str
    regex: re.Pattern[str]
    date_format: str | None
    is_template: bool

    def parse(self, path: str | os.PathLike[str]) -> pd.Timestamp:
        """The date in ``path``'s base name, at midnight.

        Raises
        ------
        IngestError
            Naming the file, when the name does not match or the date is not valid.
        """
        name = PurePath(os.fspath(path)).name
        m = self.regex.fullmatch(name) if self.is_template else self.regex.search(name)
        if m is None:
            raise file_error(
                path, f"the file name does not match the date pattern {self.pattern!r}"
            )
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        try:
            if "date" in groups:
                fmt = self.date_format
                if fmt is None:
                    return _guess(groups["date"])
                return _strptime(groups["date"], fmt)
            year = int(groups["year"])
            if "doy" in groups:
                return _from_doy(year, int(groups["doy"]))
            return pd.Timestamp(year, int(groups.get("month", 1)), int(groups.get("day", 1)))
        except (ValueError, OverflowError) as e:
            raise file_error(
                path, f"the date in the file name does not parse with pattern {self.pattern!r}: {e}"
            ) from None


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _from_doy(year: int, doy: int) -> pd.Timestamp:
    if not 1 <= doy <= (366 if _leap(year) else 365):
        raise ValueError(f"day of year {doy} does not exist in {year}")
    return pd.Timestamp(year, 1, 1) + pd.Timedelta(days=doy - 1)


def _strptime(text: str, fmt: str) -> pd.Timestamp:
    d = _dt.datetime.strptime(text, fmt)
    if d.strftime(fmt).lower() != text.lower():  # strptime accepts day 366 of a common year
        raise ValueError(f"{text!r} is not a valid date for {fmt!r}")
    return pd.Timestamp(d).normalize()


def _guess(text: str) -> pd.Timestamp:
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%Y.%m.%d", "%Y_%m_%d", "%Y%j", "%Y"):
        try:
            return _strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date in any of %Y%m%d, %Y-%m-%d, %Y%j, %Y")


def _format_regex(fmt: str) -> str:
    out, i = [], 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%" and i + 1 < len(fmt):
            code = fmt[i + 1]
            if code == "%":
                out.append("%")
            elif code in _CODE_RE:
                out.append(_CODE_RE[code])
            else:
                raise IngestError(f"date pattern: strftime code %{code} is not supported; use one of "
                                  + " ".join(f"%{c}" for c in _CODE_RE))  # fmt: skip
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


def _literal(text: str) -> str:
    return "".join(".*?" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def compile_pattern(pattern: str, *, date_format: str | None = None) -> DatePattern:
    """Compile a template (``NAME_{date:%Y%j}.tif``) or a ``re:`` regular expression.

    Raises
    ------
    IngestError
        For a template without exactly one ``{date:...}`` field, an unsupported
        ``strftime`` code, an invalid regular expression, or one without usable groups.
    """
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise IngestError(
                f"date pattern {pattern!r} is not a valid regular expression: {e}"
            ) from None
        names = set(rx.groupindex)
        if not ("date" in names or "year" in names):
            raise IngestError(
                f"date pattern {pattern!r} needs a named group 'date', or 'year' (with 'doy', "
                "or 'month' and 'day')"
            )
        return DatePattern(pattern, rx, date_format, is_template=False)
    fields = _FIELD.findall(pattern)
    if len(fields) != 1:
        raise IngestError(
            f"date pattern {pattern!r} must contain exactly one {{date:FORMAT}} field "
            "(e.g. 'SLOPE_GPP_{date:%Y%j}.tif'), or start with 're:'"
        )
    before, after = _FIELD.split(pattern)[0], _FIELD.split(pattern)[-1]
    rx = re.compile(_literal(before) + f"(?P<date>{_format_regex(fields[0])})" + _literal(after))
    return DatePattern(pattern, rx, fields[0], is_template=True)


#: The default pattern for yearly files (CDL): the first 4-digit year 1900-2099 in the name.
YEAR_PATTERN = r"re:(?<!\d)(?P<year>(?:19|20)\d{2})(?!\d)"
