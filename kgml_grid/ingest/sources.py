"""Input descriptions shared by the raster ingesters: which files, how to read their values.

A :class:`RasterSource` names one schema variable, its files (paths, folders or glob
patterns) and how raw values become physical ones. :func:`expand_paths` lists the files,
:func:`mask_valid_range` applies the schema's valid range to what was read.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kgml_grid import schema
from kgml_grid.ingest.errors import IngestError
from kgml_grid.ingest.rasters import RESAMPLING_METHODS, ValueRule

RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF", ".nc", ".nc4", ".h5", ".hdf5", ".hdf", ".HDF")


@dataclass(frozen=True)
class RasterSource:
    """One variable's raster files and how to read them.

    Attributes
    ----------
    variable : str
        Schema variable (``gpp_sat``, ``lai``, ``soil_moisture``, ``sand``, ...).
    paths : tuple of str
        Files, folders (every GeoTIFF, NetCDF, HDF5 or HDF file inside) or glob patterns.
    pattern : str, optional
        File-name date pattern (satellite series), see :mod:`kgml_grid.ingest.dates`.
    nodata, scale, offset : float, optional
        Override the file's nodata value, scale factor and offset
        (``physical = raw * scale + offset``).
    valid_range : tuple of float, optional
        Raw values outside this closed interval are no data.
    resampling : str
        GDAL resampling onto the target grid (``bilinear``, ``nearest``, ``average``, ...).
    band : int, optional
        Band to read (1-based); required for a multi-band GeoTIFF (never band 1 silently).
    layer : str, optional
        Variable of a NetCDF/HDF5 file (``group/name`` in an HDF5 group); required when the
        file has several gridded variables.
    crs : str, optional
        CRS the files must have; a file in another CRS is refused.
    """

    variable: str
    paths: tuple[str, ...]
    pattern: str | None = None
    nodata: float | None = None
    scale: float | None = None
    offset: float | None = None
    valid_range: tuple[float, float] | None = None
    resampling: str = "bilinear"
    band: int | None = None
    crs: str | None = None
    layer: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)):
            object.__setattr__(self, "paths", (os.fspath(self.paths),))
        else:
            object.__setattr__(self, "paths", tuple(os.fspath(p) for p in self.paths))
        if self.resampling not in RESAMPLING_METHODS:
            raise IngestError(
                f"{self.variable}: resampling {self.resampling!r} is not one of "
                f"{', '.join(RESAMPLING_METHODS)}"
            )
        if self.valid_range is not None and not self.valid_range[0] <= self.valid_range[1]:
            raise IngestError(f"{self.variable}: valid_range {self.valid_range} is empty")
        if self.band is not None and self.band < 1:
            raise IngestError(f"{self.variable}: band must be >= 1, got {self.band}")

    @property
    def rule(self) -> ValueRule:
        return ValueRule(self.nodata, self.scale, self.offset, self.valid_range)


def expand_paths(paths: Iterable[str | os.PathLike[str]], *, what: str) -> list[str]:
    """Files named by ``paths`` (files, folders of GeoTIFFs, glob patterns), sorted, unique.

    Raises
    ------
    IngestError
        For a path that names nothing, or when no file is found at all.
    """
    out: list[str] = []
    for p in paths:
        s = os.fspath(p)
        if "://" in s:
            out.append(s)
        elif any(c in s for c in "*?["):
            hits = sorted(glob.glob(s))
            if not hits:
                raise IngestError(f"{s}: the pattern matches no file ({what})")
            out.extend(hits)
        elif Path(s).is_dir():
            hits = sorted(str(q) for q in Path(s).iterdir() if q.suffix in RASTER_SUFFIXES)
            if not hits:
                raise IngestError(
                    f"{s}: the folder holds no raster file (.tif, .nc, .h5, .hdf) ({what})"
                )
            out.extend(hits)
        else:
            out.append(s)
    if not out:
        raise IngestError(f"no input files for {what}")
    return sorted(dict.fromkeys(out))


def mask_valid_range(values: np.ndarray, variable: str) -> int:
    """Set values outside the schema's valid range of ``variable`` to NaN; return how many."""
    lo, hi = schema.get(variable).valid_range
    with np.errstate(invalid="ignore"):
        bad = (values < lo) | (values > hi)
    n = int(bad.sum())
    if n:
        values[bad] = np.nan
    return n


def check_variables(names: Sequence[str], layer: str, *, required: bool = True) -> None:
    """Refuse names that are not variables of ``layer``, duplicates, or missing required ones."""
    spec = schema.LAYERS[layer]
    known = (*spec.required, *spec.optional)
    seen: set[str] = set()
    for n in names:
        if n not in known:
            raise IngestError(
                f"{n!r} is not a variable of the {layer} layer; expected one of {', '.join(known)}"
            )
        if n in seen:
            raise IngestError(f"{n!r} is given twice for the {layer} layer")
        seen.add(n)
    if required:
        missing = [n for n in spec.required if n not in seen]
        if missing:
            raise IngestError(f"the {layer} layer needs {', '.join(missing)} (missing)")
