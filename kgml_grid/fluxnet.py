"""Read and write FLUXNET2015 / AmeriFlux-FLUXNET daily (DD) files; read monthly (MM) files.

Files as they ship
    FLUXNET2015 (``FLX_<SITE>_FLUXNET2015_<SUBSET|FULLSET>_DD_<years>_<version>.csv``) and
    AmeriFlux-FLUXNET, the ONEFlux product (``AMF_<SITE>_FLUXNET_<SUBSET|FULLSET>_DD_...``),
    are read alike, as the CSV or inside the zip they are downloaded as (the zip's DD
    member is read). Other time steps (HH, HR, WW, MM, YY) are refused as not daily,
    naming the file and its step; a monthly file is read by :func:`read_fluxnet_mm`, to
    check monthly aggregates of daily predictions. AmeriFlux **BASE** files
    (``AMF_<SITE>_BASE_HH_<version>.csv``, ``AMF_<SITE>_BASE-BADM_<version>.zip``) are
    refused with why: half-hourly fluxes as measured, not gap-filled and not partitioned
    into GPP and Reco.

The mapping between FLUXNET columns and schema variables, with the unit conversions,
lives in one place, :data:`kgml_grid.schema.FLUXNET_COLUMNS`; this module applies it.

Reading (:func:`read_fluxnet_dd`)
    A DD CSV becomes an :class:`xarray.Dataset` on a daily ``time`` dimension with the
    schema's variable names, units and CF attributes. ``-9999`` becomes NaN. Every
    check is done before anything is returned: file name, header, timestamps (parse,
    strictly increasing, unique; gaps reindexed to NaN days and recorded), QC values,
    and each value against the variable's valid range. Site metadata (location, crop
    per year, soil properties) is attached when given or found (:mod:`kgml_grid.sites`).

Writing (:func:`to_fluxnet_dd`)
    The inverse: schema names and units back to FLUXNET columns and units, NaN to
    ``-9999``, QC columns, ``TIMESTAMP`` as ``YYYYMMDD``; written atomically.

Negative night-time GPP
    Night-time partitioned GPP (``GPP_NT_VUT_REF``) is modelled Reco minus measured
    NEE, so on days with little photosynthesis it is often slightly negative (about a
    third of the days of the US-Ne1 file, down to -2.4 gC m-2 d-1). The schema's
    ``gpp``/``gpp_sat`` valid range starts at 0, so the reader applies a documented
    policy (``negative_gpp``): values in ``[-NEGATIVE_GPP_TOLERANCE, 0)`` are set to 0
    (``"clip"``, the default), to NaN (``"nan"``) or refused (``"error"``); values below
    the tolerance are always refused as out of range. The number of values changed is
    recorded in the variable's attributes.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import schema
from kgml_grid.sites import (
    SiteMeta,
    SiteMetadataError,
    atomic_write_text,
    find_site_meta,
    load_site_meta,
)

__all__ = [
    "FLUXNET_MISSING",
    "NEGATIVE_GPP_TOLERANCE",
    "FluxnetFileInfo",
    "parse_fluxnet_filename",
    "read_fluxnet_dd",
    "read_fluxnet_mm",
    "to_fluxnet_dd",
]

#: Missing-value code of FLUXNET files.
FLUXNET_MISSING = -9999.0

#: Largest magnitude (gC m-2 d-1) of negative partitioned GPP treated as partitioning
#: noise by the ``negative_gpp`` policy; anything more negative is refused.
NEGATIVE_GPP_TOLERANCE = 5.0

#: Schema variables holding partitioned GPP (lower bound 0 in the schema).
_GPP_VARIABLES = frozenset({"gpp", "gpp_sat"})

#: Potential (top-of-atmosphere) shortwave radiation: not a schema variable, carried
#: through when present (``SW_IN_POT`` <-> ``swrad_pot``).
_SWPOT_COLUMN = "SW_IN_POT"
_SWPOT_VARIABLE = "swrad_pot"
_SWPOT_RANGE = (0.0, 50.0)  # MJ m-2 d-1; top-of-atmosphere daily mean never exceeds ~48

_FILENAME_RE = re.compile(
    r"^(?P<prefix>FLX|AMF)_(?P<site>[A-Z]{2}-[A-Za-z0-9]{3})_(?P<product>FLUXNET[A-Za-z0-9-]*)_"
    r"(?P<subset>SUBSET|FULLSET)_(?P<res>HH|HR|DD|WW|MM|YY)_(?P<y0>\d{4})-(?P<y1>\d{4})_"
    r"(?P<version>\d+-\d+)\.csv$"
)
_FILENAME_EXPECTED = (
    "<FLX|AMF>_<CC-SSS>_<FLUXNET2015|FLUXNET>_<SUBSET|FULLSET>_<HH|HR|DD|WW|MM|YY>_"
    "<YYYY>-<YYYY>_<V-V>.csv, e.g. FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv"
)
#: AmeriFlux BASE products: the half-hourly CSV and the zip it ships in (with BADM).
_BASE_RE = re.compile(
    r"^AMF_(?P<site>[A-Z]{2}-[A-Za-z0-9]{3})_BASE(?:-BADM)?_(?:(?P<res>HH|HR)_)?"
    r"(?P<version>\d+-\d+)\.(?:csv|zip)$"
)
#: A FLUXNET download: the zip of every time step of one site (no step in its name).
_ZIP_RE = re.compile(
    r"^(?P<prefix>FLX|AMF)_(?P<site>[A-Z]{2}-[A-Za-z0-9]{3})_(?P<product>FLUXNET[A-Za-z0-9-]*)_"
    r"(?P<subset>SUBSET|FULLSET)_(?P<y0>\d{4})-(?P<y1>\d{4})_(?P<version>\d+-\d+)\.zip$"
)
_RESOLUTIONS = {
    "HH": "half-hourly",
    "HR": "hourly",
    "DD": "daily",
    "WW": "weekly",
    "MM": "monthly",
    "YY": "yearly",
}

#: Column order of FLUXNET2015 DD files (the columns this module writes).
_DD_ORDER = (
    "TA_F", "TA_F_QC", "SW_IN_POT", "SW_IN_F", "SW_IN_F_QC", "VPD_F", "VPD_F_QC", "P_F",
    "P_F_QC", "TS_F_MDS_1", "TS_F_MDS_1_QC", "SWC_F_MDS_1", "SWC_F_MDS_1_QC", "NEE_VUT_REF",
    "NEE_VUT_REF_QC", "RECO_NT_VUT_REF", "GPP_NT_VUT_REF",
)  # fmt: skip

_WRITE_FORMAT = "%.12g"

NegativeGppPolicy = Literal["clip", "nan", "error"]


# --------------------------------------------------------------------------- file names
@dataclass(frozen=True)
class FluxnetFileInfo:
    """What a FLUXNET file name says.

    Attributes
    ----------
    site_id : str
        ``CC-SSS`` site identifier.
    product : str
        ``FLUXNET2015`` (FLUXNET2015 release) or ``FLUXNET`` (AmeriFlux-FLUXNET).
    subset : str
        ``SUBSET`` or ``FULLSET``.
    resolution : str
        ``HH``, ``HR``, ``DD``, ``WW``, ``MM`` or ``YY``.
    first_year, last_year : int
        Years in the name (the data may cover fewer; US-Ne1's "2013" file ends in 2012).
    version : str
        Processing version, e.g. ``1-4``.
    prefix : str
        ``FLX`` (FLUXNET) or ``AMF`` (AmeriFlux).
    """

    site_id: str
    product: str
    subset: str
    resolution: str
    first_year: int
    last_year: int
    version: str
    prefix: str = "FLX"

    @property
    def filename(self) -> str:
        """The canonical file name these fields spell."""
        return (
            f"{self.prefix}_{self.site_id}_{self.product}_{self.subset}_{self.resolution}_"
            f"{self.first_year:04d}-{self.last_year:04d}_{self.version}.csv"
        )


def parse_fluxnet_filename(path: str | os.PathLike[str]) -> FluxnetFileInfo:
    """Parse a FLUXNET2015 or AmeriFlux-FLUXNET file name.

    Parameters
    ----------
    path : path-like
        The file (only its name is used).

    Returns
    -------
    FluxnetFileInfo

    Raises
    ------
    ValueError
        Naming the file and the expected pattern, when the name does not match or its
        years are reversed.

    Examples
    --------
    >>> parse_fluxnet_filename("FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv").site_id
    'US-Ne1'
    """
    name = Path(path).name
    m = _FILENAME_RE.match(name)
    if m is None:
        base = _BASE_RE.match(name)
        if base is not None:
            raise ValueError(_base_refusal(name, base["site"]))
        raise ValueError(f"{name}: not a FLUXNET file name; expected {_FILENAME_EXPECTED}")
    y0, y1 = int(m["y0"]), int(m["y1"])
    if y0 > y1:
        raise ValueError(f"{name}: first year {y0} is after last year {y1} in the file name")
    return FluxnetFileInfo(
        site_id=m["site"],
        product=m["product"],
        subset=m["subset"],
        resolution=m["res"],
        first_year=y0,
        last_year=y1,
        version=m["version"],
        prefix=m["prefix"],
    )


def _base_refusal(name: str, site: str) -> str:
    return (
        f"{name}: an AmeriFlux BASE file (half-hourly fluxes as measured: not gap-filled, and "
        "NEE not partitioned into GPP and Reco), not a FLUXNET daily (DD) file; kgml_grid needs "
        f"the gap-filled, partitioned ONEFlux product: download AmeriFlux FLUXNET for {site} "
        f"(AMF_{site}_FLUXNET_SUBSET_DD_<years>_<version>.csv, in the zip "
        f"AMF_{site}_FLUXNET_SUBSET_<years>_<version>.zip) or run ONEFlux on the BASE data"
    )


def _require_daily(info: FluxnetFileInfo, name: str, verb: str) -> None:
    if info.resolution != "DD":
        hint = (
            "; a monthly file can check monthly means of a model's daily predictions: "
            "kgml-grid evaluate --monthly FILE"
            if info.resolution == "MM" and verb == "reads"
            else ""
        )
        raise ValueError(
            f"{name}: resolution {info.resolution!r} ({_RESOLUTIONS[info.resolution]}) is not "
            f"supported; kgml_grid {verb} daily (DD) FLUXNET files only (use the DD file of "
            f"the same release, or aggregate to daily first){hint}"
        )


def _source_bytes(path: Path, resolution: str) -> tuple[str, str, bytes]:
    """``(file name, name for messages, content)`` of a FLUXNET CSV, or of the member of
    a FLUXNET zip download with the given time step.

    Raises
    ------
    ValueError
        For an AmeriFlux BASE zip or CSV, a zip without a member of that step, or a file
        that is not there.
    """
    name = path.name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not name.lower().endswith(".zip"):
        return name, name, path.read_bytes()
    import zipfile

    base = _BASE_RE.match(name)
    if base is not None:
        raise ValueError(_base_refusal(name, base["site"]))
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if not m.endswith("/")]
            for m in members:
                mb = _BASE_RE.match(Path(m).name)
                if mb is not None:
                    raise ValueError(_base_refusal(f"{name}/{Path(m).name}", mb["site"]))
            found = {}
            for m in members:
                fm = _FILENAME_RE.match(Path(m).name)
                if fm is not None:
                    found.setdefault(fm["res"], []).append(m)
            chosen = found.get(resolution, [])
            if len(chosen) != 1:
                have = (
                    ", ".join(f"{r} ({Path(v[0]).name})" for r, v in sorted(found.items()))
                    or "none"
                )
                what = "no" if not chosen else f"{len(chosen)}"
                raise ValueError(
                    f"{name}: {what} FLUXNET {_RESOLUTIONS[resolution]} ({resolution}) CSV inside "
                    f"the zip (FLUXNET CSVs in it: {have}); give the {resolution} CSV itself"
                )
            return Path(chosen[0]).name, f"{name}/{Path(chosen[0]).name}", zf.read(chosen[0])
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{name}: not a readable zip file ({exc})") from None


# --------------------------------------------------------------------------- mapping helpers
def _value_columns() -> dict[str, list[schema.FluxnetColumn]]:
    """FLUXNET column -> the mapping entries that read from it, in schema order."""
    out: dict[str, list[schema.FluxnetColumn]] = {}
    for fc in schema.FLUXNET_COLUMNS:
        out.setdefault(fc.column, []).append(fc)
    return out


def _qc_owner(qc: str, columns: Mapping[str, list[schema.FluxnetColumn]]) -> str | None:
    """The value column a QC column is named after (``NEE_VUT_REF_QC`` -> ``NEE_VUT_REF``)."""
    stem = qc.removesuffix("_QC")
    return stem if stem in columns else None


# --------------------------------------------------------------------------- reading
def _line(row: int) -> int:
    """1-based line number in the file of data row ``row`` (the header is line 1)."""
    return row + 2


def _read_header(raw: bytes, name: str) -> list[str]:
    first = raw.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    if not first.strip():
        raise ValueError(f"{name}: empty file or empty header line")
    header = [h.strip() for h in next(csv.reader([first]))]
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise ValueError(f"{name}: column {h!r} appears twice in the header")
        seen.add(h)
    return header


def _check_field_counts(raw: bytes, n_fields: int, name: str) -> None:
    """Every data line must have as many fields as the header (catches truncated files)."""
    lines = raw.split(b"\n")
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            if any(rest.strip() for rest in lines[i:]):
                raise ValueError(f"{name}: line {i} is empty")
            break
        n = line.count(b",") + 1
        if n != n_fields:
            raise ValueError(
                f"{name}: line {i} has {n} fields, the header has {n_fields} "
                "(truncated or malformed file)"
            )


def _first_non_number(raw: bytes, name: str, columns: list[str]) -> ValueError:
    """Locate the first cell of ``columns`` that is not a number, for the error."""
    df = pd.read_csv(
        io.BytesIO(raw), usecols=columns, dtype=str, keep_default_na=False,
        encoding="utf-8-sig",
    )  # fmt: skip
    for col in columns:
        s = df[col].str.strip()
        bad = pd.to_numeric(s, errors="coerce").isna() & (s != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            return ValueError(
                f"{name}: line {_line(i)}, column {col!r}: value {df[col].iloc[i]!r} is not a number"
            )
    return ValueError(f"{name}: a value column holds something that is not a number")


#: TIMESTAMP lengths of the other FLUXNET time steps, for the refusal of a misnamed file.
_STAMP_STEPS = {
    4: "a year (YYYY): yearly",
    6: "a month (YYYYMM): monthly",
    12: "a time (YYYYMMDDHHMM): sub-daily",
}


def _parse_timestamps(
    ts: pd.Series, name: str, digits: int = 8, fmt: str = "%Y%m%d"
) -> pd.DatetimeIndex:
    text = ts.astype(str).str.strip()
    bad = ~text.str.fullmatch(rf"\d{{{digits}}}")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        step = (
            _STAMP_STEPS.get(len(text.iloc[i])) if text.iloc[i].isdigit() and digits == 8 else None
        )
        if step is not None and bool(text.str.len().eq(len(text.iloc[i])).all()):
            what, kind = step.split(": ")
            raise ValueError(
                f"{name}: every TIMESTAMP is {what} (line {_line(i)}: {ts.iloc[i]!r}), so the file "
                f"holds {kind} data, though its name says DD; kgml_grid reads daily (DD) files only"
            )
        want = {8: "a date YYYYMMDD", 6: "a month YYYYMM"}[digits]
        raise ValueError(f"{name}: line {_line(i)}: TIMESTAMP {ts.iloc[i]!r} is not {want}")
    times = pd.to_datetime(text, format=fmt, errors="coerce")
    nat = times.isna()
    if nat.any():
        i = int(np.flatnonzero(nat.to_numpy())[0])
        raise ValueError(f"{name}: line {_line(i)}: TIMESTAMP {text.iloc[i]!r} is not a valid date")
    idx = pd.DatetimeIndex(times)
    if len(idx) > 1:
        step = np.diff(idx.asi8)
        wrong = np.flatnonzero(step <= 0)
        if wrong.size:
            i = int(wrong[0]) + 1
            if step[i - 1] == 0:
                raise ValueError(
                    f"{name}: line {_line(i)}: duplicate TIMESTAMP {text.iloc[i]!r} "
                    f"(also on line {_line(i - 1)})"
                )
            raise ValueError(
                f"{name}: line {_line(i)}: TIMESTAMP {text.iloc[i]!r} comes after "
                f"{text.iloc[i - 1]!r} on line {_line(i - 1)}; dates must be strictly increasing"
            )
    return idx


def _check_range(
    values: np.ndarray,
    lo: float,
    hi: float,
    *,
    name: str,
    column: str,
    var: str,
    units: str,
    times: pd.DatetimeIndex,
    scale: float,
    file_units: str,
) -> None:
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(values) & ~((values >= lo) & (values <= hi))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = values[i]
        shown = f"{v / scale:.6g} {file_units}".rstrip()
        if scale != 1.0:
            shown += f" (= {v:.6g} {units})"
        raise ValueError(
            f"{name}: column {column!r} on {times[i]:%Y-%m-%d}: value {shown} is outside the "
            f"valid range [{lo:g}, {hi:g}] {units} of {var!r}"
        )


def _resolve_site_meta(
    site_meta: SiteMeta | str | os.PathLike[str] | None,
    site_id: str,
    folder: Path,
    *,
    name: str,
    require: bool,
) -> tuple[SiteMeta | None, str]:
    if isinstance(site_meta, SiteMeta):
        meta, origin = site_meta, "given SiteMeta"
    elif site_meta is not None:
        meta, origin = load_site_meta(site_meta), str(site_meta)
    else:
        try:
            meta = find_site_meta(site_id, search_dirs=(folder,))
        except SiteMetadataError:
            if require:
                raise
            return None, ""
        sidecar = folder / f"{site_id}_site.json"
        origin = str(sidecar) if sidecar.is_file() else "kgml_grid package data"
    if meta.site_id != site_id:
        raise ValueError(
            f"{name}: site metadata ({origin}) describes site {meta.site_id!r}, not {site_id!r}"
        )
    return meta, origin


def read_fluxnet_dd(
    path: str | os.PathLike[str],
    *,
    qc_threshold: float | None = None,
    site_meta: SiteMeta | str | os.PathLike[str] | None = None,
    require_site_meta: bool = False,
    negative_gpp: NegativeGppPolicy = "clip",
    fill_gaps: bool = True,
) -> xr.Dataset:
    """Read a FLUXNET2015 / AmeriFlux-FLUXNET daily (DD) CSV into a Dataset.

    Parameters
    ----------
    path : path-like
        The CSV, or the FLUXNET zip download holding it (its one ``DD`` member is read);
        the CSV's name must follow the FLUXNET pattern (see
        :func:`parse_fluxnet_filename`) with resolution ``DD``. SUBSET and FULLSET,
        FLUXNET2015 and AmeriFlux-FLUXNET (``AMF_``) files are read alike.
    qc_threshold : float, optional
        In [0, 1]. Where a column's QC fraction (share of good-quality half-hours) is
        below it, or missing, the value becomes NaN. The QC fractions are kept as
        ``<var>_qc`` variables either way.
    site_meta : SiteMeta or path-like, optional
        Site metadata, or its JSON file. If not given, ``<SITE_ID>_site.json`` next to
        the CSV and then the package data are searched; if none is found the Dataset
        carries no site information (or, with ``require_site_meta``, an error).
    require_site_meta : bool
        Raise :class:`~kgml_grid.sites.SiteMetadataError` when no metadata is found.
    negative_gpp : {"clip", "nan", "error"}
        What to do with partitioned GPP in ``[-NEGATIVE_GPP_TOLERANCE, 0)``: set it to
        0, to NaN, or refuse the file. See the module docstring.
    fill_gaps : bool
        Reindex missing days to NaN (recorded in ``attrs["gap_days_filled"]``). If
        False, a gap is an error.

    Returns
    -------
    xarray.Dataset
        Dimension ``time`` (daily ``datetime64[ns]``). One variable per schema variable
        of :data:`~kgml_grid.schema.FLUXNET_COLUMNS` (an optional column absent from the
        file is all NaN), in schema units with CF attributes and ``fluxnet_column``;
        ``<var>_qc`` QC fractions; ``swrad_pot`` if ``SW_IN_POT`` is present. With site
        metadata: the soil properties as 0-d variables and ``crop_type`` on a ``year``
        dimension covering the years of the file, plus location attributes.

    Raises
    ------
    ValueError
        For a bad file name, a non-daily resolution, a missing required column, a
        TIMESTAMP that does not parse, a duplicate or out-of-order date, a value that
        is not a number or is outside its variable's valid range, a QC fraction outside
        [0, 1]; each message names the file and the line, column, date or value.
    """
    path = Path(path)
    if not path.name.lower().endswith(".zip"):
        parse_fluxnet_filename(path)  # name first: a BASE or misnamed file says so before any read
    file_name, name, raw = _source_bytes(path, "DD")
    info = parse_fluxnet_filename(file_name)
    _require_daily(info, name, "reads")
    if qc_threshold is not None and not 0.0 <= float(qc_threshold) <= 1.0:
        raise ValueError(f"qc_threshold must be within [0, 1], got {qc_threshold!r}")
    if negative_gpp not in ("clip", "nan", "error"):
        raise ValueError(f"negative_gpp must be 'clip', 'nan' or 'error', got {negative_gpp!r}")

    header = _read_header(raw, name)
    if header and header[0].startswith("#"):
        raise ValueError(
            f"{name}: starts with comment lines ({header[0]!r}), as AmeriFlux BASE files do; "
            "a FLUXNET DD file starts with its header (TIMESTAMP,...)"
        )
    if "TIMESTAMP" not in header:
        hint = " (a half-hourly/hourly header?)" if "TIMESTAMP_START" in header else ""
        raise ValueError(f"{name}: required column 'TIMESTAMP' is missing from the header{hint}")
    columns = _value_columns()
    for col, entries in columns.items():
        if col not in header and any(e.required for e in entries):
            raise ValueError(
                f"{name}: required column {col!r} (schema variable "
                f"{'/'.join(e.variable for e in entries)}) is missing from the header"
            )
    present = [c for c in columns if c in header]
    qc_cols = sorted({e.qc for c in present for e in columns[c] if e.qc and e.qc in header})
    if qc_threshold is not None:
        for c in present:
            for e in columns[c]:
                if e.qc and e.qc not in header:
                    raise ValueError(
                        f"{name}: qc_threshold given but QC column {e.qc!r} of {c!r} is "
                        "missing from the header"
                    )
    extra = [_SWPOT_COLUMN] if _SWPOT_COLUMN in header else []
    number_cols = present + qc_cols + extra
    _check_field_counts(raw, len(header), name)

    try:
        df = pd.read_csv(
            io.BytesIO(raw),
            usecols=["TIMESTAMP", *number_cols],
            dtype={"TIMESTAMP": str, **dict.fromkeys(number_cols, "float64")},
            keep_default_na=False,
            na_values={c: [""] for c in number_cols},
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    except ValueError as exc:
        if isinstance(exc, pd.errors.ParserError):
            raise ValueError(f"{name}: cannot parse the CSV: {exc}") from None
        raise _first_non_number(raw, name, number_cols) from None
    if len(df) == 0:
        raise ValueError(f"{name}: no data rows")

    times = _parse_timestamps(df["TIMESTAMP"], name)
    data: dict[str, np.ndarray] = {}
    for col in number_cols:
        arr = df[col].to_numpy(dtype="float64", copy=True)
        arr[arr == FLUXNET_MISSING] = np.nan
        data[col] = arr

    # QC fractions must be fractions.
    for qc in qc_cols:
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(data[qc]) & ~((data[qc] >= 0.0) & (data[qc] <= 1.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: column {qc!r} on {times[i]:%Y-%m-%d} (line {_line(i)}): QC value "
                f"{data[qc][i]:g} is outside [0, 1] (DD QC is the fraction of good-quality data)"
            )

    n = len(times)
    nan = np.full(n, np.nan)
    out_vars: dict[str, xr.Variable] = {}
    for fc in schema.FLUXNET_COLUMNS:
        var = schema.VARIABLES[fc.variable]
        absent = fc.column not in data
        values = nan.copy() if absent else data[fc.column] * fc.scale
        qc_vals = data[fc.qc].copy() if fc.qc and fc.qc in data else nan.copy()
        attrs: dict[str, object] = dict(var.cf_attrs())
        attrs.update(
            fluxnet_column=fc.column,
            fluxnet_units=fc.fluxnet_units,
            fluxnet_scale=float(fc.scale),
        )
        if absent:
            attrs["comment"] = (
                f"{attrs.get('comment', '')} column {fc.column} absent from the file".strip()
            )
            attrs["fluxnet_column_absent"] = 1
        if fc.qc:
            attrs["ancillary_variables"] = f"{fc.variable}_qc"
        if qc_threshold is not None and fc.qc:
            with np.errstate(invalid="ignore"):
                fail = ~(qc_vals >= qc_threshold) & np.isfinite(values)
            values[fail] = np.nan
            attrs["qc_masked"] = int(fail.sum())
        if fc.variable in _GPP_VARIABLES:
            with np.errstate(invalid="ignore"):
                neg = (values < 0.0) & (values >= -NEGATIVE_GPP_TOLERANCE)
            if neg.any() and negative_gpp == "error":
                i = int(np.flatnonzero(neg)[0])
                raise ValueError(
                    f"{name}: column {fc.column!r} on {times[i]:%Y-%m-%d}: value "
                    f"{values[i]:.6g} {var.units} is below 0 (negative_gpp='error'; use "
                    "'clip' or 'nan' to accept partitioning noise)"
                )
            values[neg] = 0.0 if negative_gpp == "clip" else np.nan
            attrs["negative_gpp_policy"] = negative_gpp
            attrs["negative_gpp_count"] = int(neg.sum())
        lo, hi = var.valid_range
        _check_range(
            values, lo, hi, name=name, column=fc.column, var=fc.variable, units=var.units,
            times=times, scale=fc.scale, file_units=fc.fluxnet_units,
        )  # fmt: skip
        out_vars[fc.variable] = xr.Variable(("time",), values, attrs)
        if fc.qc:
            out_vars[f"{fc.variable}_qc"] = xr.Variable(
                ("time",),
                qc_vals,
                {
                    "units": "1",
                    "long_name": f"quality of {fc.variable}: fraction of good-quality "
                    "half-hourly data of the day",
                    "valid_min": 0.0,
                    "valid_max": 1.0,
                    "fluxnet_column": fc.qc,
                    **({"fluxnet_column_absent": 1} if fc.qc not in data else {}),
                },
            )
    if _SWPOT_COLUMN in data:
        values = data[_SWPOT_COLUMN] * schema.W_M2_TO_MJ_M2_D
        _check_range(
            values, *_SWPOT_RANGE, name=name, column=_SWPOT_COLUMN, var=_SWPOT_VARIABLE,
            units="MJ m-2 d-1", times=times, scale=schema.W_M2_TO_MJ_M2_D, file_units="W m-2",
        )  # fmt: skip
        out_vars[_SWPOT_VARIABLE] = xr.Variable(
            ("time",),
            values,
            {
                "units": "MJ m-2 d-1",
                "long_name": "potential (top-of-atmosphere) incoming shortwave radiation",
                "valid_min": _SWPOT_RANGE[0],
                "valid_max": _SWPOT_RANGE[1],
                "fluxnet_column": _SWPOT_COLUMN,
                "fluxnet_units": "W m-2",
                "fluxnet_scale": schema.W_M2_TO_MJ_M2_D,
            },
        )

    time_ns = np.asarray(times.values, dtype="datetime64[ns]")
    ds = xr.Dataset(out_vars, coords={"time": ("time", time_ns)})
    ds["time"].attrs.update(standard_name="time", long_name="day (TIMESTAMP of the DD file)")

    gap_days = 0
    full = pd.date_range(times[0], times[-1], freq="D")
    if len(full) != n:
        gaps = full.difference(times)
        if not fill_gaps:
            raise ValueError(
                f"{name}: {len(gaps)} missing day(s), the first {gaps[0]:%Y-%m-%d}; dates must "
                "have a 1-day step (pass fill_gaps=True to reindex them to NaN)"
            )
        gap_days = len(gaps)
        attrs_saved = {k: ds[k].attrs for k in ds.variables}
        ds = ds.reindex(time=np.asarray(full.values, dtype="datetime64[ns]"))
        for k, a in attrs_saved.items():
            ds[k].attrs = a

    first, last = pd.Timestamp(ds.time.values[0]), pd.Timestamp(ds.time.values[-1])
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": f"FLUXNET daily (DD) observations of site {info.site_id}",
        "site_id": info.site_id,
        "source": f"{info.product} {info.subset} {info.resolution} file {name}",
        "source_file": name,
        "fluxnet_prefix": info.prefix,
        "fluxnet_product": info.product,
        "fluxnet_subset": info.subset,
        "fluxnet_resolution": info.resolution,
        "fluxnet_version": info.version,
        "fluxnet_name_years": f"{info.first_year}-{info.last_year}",
        "first_date": f"{first:%Y-%m-%d}",
        "last_date": f"{last:%Y-%m-%d}",
        "n_days": int(ds.sizes["time"]),
        "gap_days_filled": int(gap_days),
        "missing_value_code": "-9999 in the file, NaN here",
        "history": "read by kgml_grid.fluxnet.read_fluxnet_dd",
    }
    if qc_threshold is not None:
        ds.attrs["qc_threshold"] = float(qc_threshold)

    meta, origin = _resolve_site_meta(
        site_meta, info.site_id, path.parent, name=name, require=require_site_meta
    )
    if meta is not None:
        _attach_site(ds, meta, origin, first.year, last.year)
    else:
        ds.attrs["site_meta"] = "none found"
    return ds


def _attach_site(ds: xr.Dataset, meta: SiteMeta, origin: str, y0: int, y1: int) -> None:
    ds.attrs.update(
        latitude=meta.latitude,
        longitude=meta.longitude,
        igbp=meta.igbp,
        crop_default=meta.crop_default,
        site_meta=origin,
        site_meta_source=meta.source,
    )
    if meta.elevation_m is not None:
        ds.attrs["elevation_m"] = meta.elevation_m
    if meta.x is not None and meta.y is not None:
        ds.attrs["x"], ds.attrs["y"] = meta.x, meta.y
    for prop in schema.SITE_SOIL_PROPERTIES:
        var = schema.VARIABLES[prop]
        attrs = dict(var.cf_attrs())
        if prop in meta.notes:
            attrs["comment"] = meta.notes[prop]
        ds[prop] = xr.Variable((), np.asarray(meta.soil[prop], dtype=var.dtype), attrs)
    years = np.arange(y0, y1 + 1, dtype="int64")
    crop = schema.VARIABLES["crop_type"]
    ds["crop_type"] = xr.Variable(
        ("year",), np.asarray(meta.crop_codes(years.tolist()), dtype=crop.dtype), crop.cf_attrs()
    )
    ds.coords["year"] = ("year", years, {"long_name": "calendar year"})


# --------------------------------------------------------------------------- monthly files
#: Columns of a FLUXNET MM file compared with monthly means of daily predictions.
MONTHLY_COLUMNS: Mapping[str, str] = {
    "NEE_VUT_REF": "nee",
    "RECO_NT_VUT_REF": "reco",
    "GPP_NT_VUT_REF": "gpp",
}


def read_fluxnet_mm(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a FLUXNET2015 / AmeriFlux-FLUXNET monthly (MM) file: NEE, Reco and GPP.

    Monthly FLUXNET values are the means of the month's daily values (gC m-2 d-1), so
    they compare with the monthly mean of a model's daily predictions.

    Parameters
    ----------
    path : path-like
        The MM CSV (``..._MM_<years>_<version>.csv``) or the zip download holding it.

    Returns
    -------
    xarray.Dataset
        Dimension ``time`` (first day of each month). ``nee``, ``reco``, ``gpp`` (from
        ``NEE_VUT_REF``, ``RECO_NT_VUT_REF``, ``GPP_NT_VUT_REF``), NaN for ``-9999``;
        ``nee_qc`` (``NEE_VUT_REF_QC``: share of the month's data measured or gap-filled
        with good quality) where the file has it. Attributes ``site_id``, ``source_file``.

    Raises
    ------
    ValueError
        For a file that is not monthly (naming its time step), a missing column, a
        TIMESTAMP that is not ``YYYYMM`` or not increasing, or a value outside its
        valid range.
    """
    path = Path(path)
    if not path.name.lower().endswith(".zip"):
        parse_fluxnet_filename(path)
    file_name, name, raw = _source_bytes(path, "MM")
    info = parse_fluxnet_filename(file_name)
    if info.resolution != "MM":
        raise ValueError(
            f"{name}: resolution {info.resolution!r} ({_RESOLUTIONS[info.resolution]}) where a "
            "monthly (MM) FLUXNET file is needed (--monthly FILE)"
        )
    header = _read_header(raw, name)
    needed = ["TIMESTAMP", *MONTHLY_COLUMNS]
    lacking = [c for c in needed if c not in header]
    if lacking:
        raise ValueError(f"{name}: required column(s) {lacking} missing from the header")
    qc = "NEE_VUT_REF_QC" if "NEE_VUT_REF_QC" in header else None
    cols = [*MONTHLY_COLUMNS, *([qc] if qc else [])]
    _check_field_counts(raw, len(header), name)
    try:
        df = pd.read_csv(io.BytesIO(raw), usecols=["TIMESTAMP", *cols],
                         dtype={"TIMESTAMP": str, **dict.fromkeys(cols, "float64")},
                         keep_default_na=False, na_values={c: [""] for c in cols}, encoding="utf-8-sig")  # fmt: skip
    except ValueError:
        raise _first_non_number(raw, name, cols) from None
    if len(df) == 0:
        raise ValueError(f"{name}: no data rows")
    times = _parse_timestamps(df["TIMESTAMP"], name, digits=6, fmt="%Y%m")
    out: dict[str, xr.Variable] = {}
    for col, var in MONTHLY_COLUMNS.items():
        v = df[col].to_numpy(dtype="float64", copy=True)
        v[v == FLUXNET_MISSING] = np.nan
        spec = schema.VARIABLES[var]
        lo, hi = spec.valid_range
        if var == "gpp":
            lo = -NEGATIVE_GPP_TOLERANCE
        _check_range(v, lo, hi, name=name, column=col, var=var, units=spec.units, times=times,
                     scale=1.0, file_units="gC m-2 d-1")  # fmt: skip
        attrs = dict(spec.cf_attrs())
        attrs.update(fluxnet_column=col, cell_methods="time: mean (monthly mean of daily values)")
        out[var] = xr.Variable(("time",), v, attrs)
    if qc:
        q = df[qc].to_numpy(dtype="float64", copy=True)
        q[q == FLUXNET_MISSING] = np.nan
        out["nee_qc"] = xr.Variable(("time",), q, {"units": "1", "fluxnet_column": qc,
                                                   "long_name": "share of good-quality data of the month"})  # fmt: skip
    ds = xr.Dataset(
        out, coords={"time": ("time", np.asarray(times.values, dtype="datetime64[ns]"))}
    )
    ds.attrs = {"site_id": info.site_id, "source_file": name, "fluxnet_resolution": "MM",
                "title": f"FLUXNET monthly (MM) fluxes of site {info.site_id}"}  # fmt: skip
    return ds


# --------------------------------------------------------------------------- writing
def _time_index(ds: xr.Dataset, name: str) -> pd.DatetimeIndex:
    if "time" not in ds.dims:
        raise ValueError(f"cannot write {name}: the Dataset has no 'time' dimension")
    idx = ds.indexes.get("time")
    if not isinstance(idx, pd.DatetimeIndex):
        raise ValueError(
            f"cannot write {name}: 'time' must be a datetime64 coordinate, got {type(idx).__name__}"
        )
    if len(idx) == 0:
        raise ValueError(f"cannot write {name}: the Dataset has no days")
    if (idx != idx.normalize()).any():
        i = int(np.flatnonzero(idx != idx.normalize())[0])
        raise ValueError(f"cannot write {name}: time {idx[i]} is not a whole day")
    step = np.diff(idx.asi8)
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0]) + 1
        raise ValueError(
            f"cannot write {name}: time {idx[i]:%Y-%m-%d} does not follow {idx[i - 1]:%Y-%m-%d}; "
            "days must be strictly increasing"
        )
    return idx


def _series(ds: xr.Dataset, var: str, name: str) -> np.ndarray:
    da = ds[var]
    if da.dims != ("time",):
        raise ValueError(
            f"cannot write {name}: variable {var!r} has dims {da.dims}, expected ('time',) "
            "(select one site first)"
        )
    return np.asarray(da.values, dtype="float64")


def to_fluxnet_dd(
    ds: xr.Dataset, path: str | os.PathLike[str], *, site_id: str | None = None
) -> Path:
    """Write a Dataset with schema names to a FLUXNET2015-style DD CSV.

    The inverse of :func:`read_fluxnet_dd`: FLUXNET column names and units (inverse
    scaling of :data:`~kgml_grid.schema.FLUXNET_COLUMNS`), ``TIMESTAMP`` as
    ``YYYYMMDD``, NaN as ``-9999``, values with 12 significant digits. QC columns come
    from ``<var>_qc`` where present, else 1 where the value exists and 0 where it is
    missing (``-9999`` for an optional column the Dataset lacks or has all missing).
    ``SW_IN_POT`` is written from ``swrad_pot`` when present. Where two variables read
    from one column (``gpp_sat`` and ``gpp`` both from ``GPP_NT_VUT_REF``) ``gpp`` is
    written, falling back to ``gpp_sat``. The file is written to a temporary name and
    renamed, so a half-written file never carries the final name.

    Parameters
    ----------
    ds : xarray.Dataset
        Daily data on a ``time`` dimension, schema variable names and units (a variable
        without a ``units`` attribute is taken to be in schema units).
    path : path-like
        Target file; its name must follow the FLUXNET pattern with resolution ``DD``
        (e.g. ``FLX_SY-A01_FLUXNET2015_SUBSET_DD_2008-2015_1-4.csv``) and its years must
        cover the data.
    site_id : str, optional
        Checked against the file name and ``ds.attrs["site_id"]`` when given.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        For a bad file name, mismatched site ids, a missing required variable, wrong
        units, non-daily or non-increasing time, or a value the reader would refuse.
    """
    path = Path(path)
    name = path.name
    info = parse_fluxnet_filename(path)
    _require_daily(info, name, "writes")
    for label, sid in (
        ("site_id argument", site_id),
        ("ds.attrs['site_id']", ds.attrs.get("site_id")),
    ):
        if sid is not None and sid != info.site_id:
            raise ValueError(
                f"cannot write {name}: {label} is {sid!r} but the file name says {info.site_id!r}"
            )
    times = _time_index(ds, name)
    if times[0].year < info.first_year or times[-1].year > info.last_year:
        raise ValueError(
            f"cannot write {name}: the data span {times[0]:%Y-%m-%d}..{times[-1]:%Y-%m-%d}, "
            f"outside the years {info.first_year}-{info.last_year} of the file name"
        )

    columns = _value_columns()
    out: dict[str, np.ndarray] = {}
    qc_of: dict[str, np.ndarray] = {}
    chosen: dict[str, str | None] = {}
    for col, entries in columns.items():
        # Prefer tower-observed ("truth") variables to their stand-ins (gpp over gpp_sat).
        ordered = sorted(
            entries,
            key=lambda e: schema.VARIABLES[e.variable].resolution != schema.ResolutionClass.TRUTH,
        )
        entry = next((e for e in ordered if e.variable in ds.data_vars), None)
        if entry is None:
            if any(e.required for e in entries):
                raise ValueError(
                    f"cannot write {name}: the Dataset has no variable "
                    f"{' or '.join(repr(e.variable) for e in ordered)} for required column {col!r}"
                )
            out[col] = np.full(len(times), np.nan)
            chosen[col] = None
            continue
        var = schema.VARIABLES[entry.variable]
        units = ds[entry.variable].attrs.get("units")
        if units is not None and not var.accepts_units(units):
            raise ValueError(
                f"cannot write {name}: variable {entry.variable!r} has units {units!r}, "
                f"expected {var.units!r}"
            )
        values = _series(ds, entry.variable, name)
        lo, hi = var.valid_range
        if entry.variable in _GPP_VARIABLES:
            lo = -NEGATIVE_GPP_TOLERANCE  # FLUXNET partitioned GPP may be slightly negative
        _check_range(
            values, lo, hi, name=name, column=col, var=entry.variable, units=var.units,
            times=times, scale=entry.scale, file_units=entry.fluxnet_units,
        )  # fmt: skip
        out[col] = values / entry.scale
        chosen[col] = entry.variable

    # QC columns: from <var>_qc (the variable the QC column is named after first), else derived.
    qc_users: dict[str, list[schema.FluxnetColumn]] = {}
    for fc in schema.FLUXNET_COLUMNS:
        if fc.qc:
            qc_users.setdefault(fc.qc, []).append(fc)
    for qc, users in qc_users.items():
        owner = _qc_owner(qc, columns)
        users = sorted(users, key=lambda e: e.column != owner)
        source = next(
            (f"{e.variable}_qc" for e in users if f"{e.variable}_qc" in ds.data_vars), None
        )
        owner_col = owner if owner is not None else users[0].column
        owner_values = out[owner_col]
        if source is not None:
            q = _series(ds, source, name)
            with np.errstate(invalid="ignore"):
                bad = ~np.isnan(q) & ~((q >= 0.0) & (q <= 1.0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"cannot write {name}: {source} on {times[i]:%Y-%m-%d} is {q[i]:g}, "
                    "outside [0, 1]"
                )
        elif chosen[owner_col] is None or not np.isfinite(owner_values).any():
            q = np.full(len(times), np.nan)
        else:
            q = np.where(np.isfinite(owner_values), 1.0, 0.0)
        qc_of[qc] = q

    if _SWPOT_VARIABLE in ds.data_vars:
        values = _series(ds, _SWPOT_VARIABLE, name)
        _check_range(
            values, *_SWPOT_RANGE, name=name, column=_SWPOT_COLUMN, var=_SWPOT_VARIABLE,
            units="MJ m-2 d-1", times=times, scale=schema.W_M2_TO_MJ_M2_D, file_units="W m-2",
        )  # fmt: skip
        out[_SWPOT_COLUMN] = values / schema.W_M2_TO_MJ_M2_D

    frame: dict[str, object] = {"TIMESTAMP": times.strftime("%Y%m%d")}
    allcols = {**out, **qc_of}
    order = [c for c in _DD_ORDER if c in allcols] + [c for c in allcols if c not in _DD_ORDER]
    for c in order:
        frame[c] = np.where(np.isfinite(allcols[c]), allcols[c], FLUXNET_MISSING)
    df = pd.DataFrame(frame)

    text = df.to_csv(index=False, float_format=_WRITE_FORMAT, lineterminator="\n")
    return atomic_write_text(path, text)
