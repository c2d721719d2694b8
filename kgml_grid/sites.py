"""Site metadata of flux towers: location, crop type per year and static soil properties.

A FLUXNET DD file carries the tower's fluxes and weather but not what the model also
needs from the grid side: the soil properties (the soil features of
:data:`kgml_grid.schema.SITE_SOIL_PROPERTIES`) and the crop grown each year. Those come
from a small JSON sidecar per site, ``<SITE_ID>_site.json``, kept next to the CSV, or
shipped with the package under ``kgml_grid/data/sites/<SITE_ID>.json`` for real towers
whose metadata the project has compiled (US-Ne1).

The JSON is plain data, read with :func:`json.load` only; nothing in it is executed.
Every value is checked against the schema (crop names, soil properties and their
valid ranges, latitude/longitude) and a bad file is refused with a message that names
the file and the field.

Example sidecar::

    {
      "site_id": "US-Ne1",
      "latitude": 41.1651, "longitude": -96.4766, "elevation_m": 361.0,
      "igbp": "CRO",
      "crop_default": "corn",
      "crop_by_year": {"2001": "corn"},
      "soil": {"bulk_density": 1.30, "sand": 10.0, ...},
      "soil_units": {"bulk_density": "g cm-3", "sand": "%", ...},
      "x": null, "y": null,
      "source": "citation(s) for the values",
      "notes": {"ksat": "how this value was obtained"}
    }

``soil_units`` is optional on input; where given, each unit must be the schema's.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kgml_grid import schema

__all__ = [
    "IGBP_CLASSES",
    "SITE_ID_PATTERN",
    "SiteMeta",
    "SiteMetadataError",
    "atomic_write_text",
    "find_site_meta",
    "load_site_meta",
    "site_meta_filename",
    "write_site_meta",
]

#: FLUXNET/AmeriFlux site identifier: country code, dash, three characters (``US-Ne1``).
SITE_ID_PATTERN = re.compile(r"^[A-Z]{2}-[A-Za-z0-9]{3}$")

#: IGBP land-cover classes used by FLUXNET/AmeriFlux (BADM ``IGBP`` field).
IGBP_CLASSES: frozenset[str] = frozenset(
    {
        "BSV", "CRO", "CSH", "CVM", "DBF", "DNF", "EBF", "ENF", "GRA", "MF", "OSH",
        "SAV", "SNO", "URB", "WAT", "WET", "WSA",
    }
)  # fmt: skip

#: Package folder (inside ``kgml_grid``) holding shipped site metadata.
_PACKAGE_SITES = ("data", "sites")

_FIELDS_REQUIRED = ("site_id", "latitude", "longitude", "igbp", "crop_default", "soil")
_FIELDS_OPTIONAL = ("crop_by_year", "soil_units", "elevation_m", "x", "y", "source", "notes")


class SiteMetadataError(ValueError):
    """No site metadata could be found for a site."""


def site_meta_filename(site_id: str) -> str:
    """Name of the sidecar JSON looked for next to a site's FLUXNET file."""
    return f"{site_id}_site.json"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_finite(value: object, name: str, where: str) -> float:
    if not _is_number(value):
        raise ValueError(f"{where}: field {name!r} must be a number, got {value!r}")
    out = float(value)  # type: ignore[arg-type]
    if not math.isfinite(out):
        raise ValueError(f"{where}: field {name!r} must be finite, got {value!r}")
    return out


@dataclass(frozen=True)
class SiteMeta:
    """Metadata of one flux-tower site.

    Attributes
    ----------
    site_id : str
        FLUXNET site identifier, ``CC-SSS`` (e.g. ``US-Ne1``).
    latitude, longitude : float
        WGS84 decimal degrees.
    igbp : str
        IGBP land-cover class (``CRO`` for croplands).
    crop_default : str
        Crop grown in years not listed in ``crop_by_year``; one of
        :data:`kgml_grid.schema.CROP_NAMES` (``other``, ``corn``, ``soybean``).
    crop_by_year : mapping of int to str
        Crop per calendar year, where it differs from, or confirms, the default.
    soil : mapping of str to float
        Exactly the schema's :data:`~kgml_grid.schema.SITE_SOIL_PROPERTIES`, in the
        schema's units (e.g. ``ksat`` in um s-1, ``soc`` in kg m-2 for 0-30 cm).
    elevation_m : float, optional
        Elevation above sea level, m.
    x, y : float, optional
        Coordinates of the site on a target grid (synthetic towers), in the grid's CRS.
    source : str
        Citation(s) for the values.
    notes : mapping of str to str
        Free-text notes, keyed by field or soil-property name (e.g. how an estimated
        value was derived).

    Raises
    ------
    ValueError
        On construction, naming the field, when a value is not valid.
    """

    site_id: str
    latitude: float
    longitude: float
    igbp: str
    crop_default: str
    crop_by_year: Mapping[int, str]
    soil: Mapping[str, float]
    elevation_m: float | None = None
    x: float | None = None
    y: float | None = None
    source: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sid = self.site_id
        if not isinstance(sid, str) or not SITE_ID_PATTERN.match(sid):
            raise ValueError(
                f"site {sid!r}: field 'site_id' must look like 'US-Ne1' (CC-SSS), got {sid!r}"
            )
        where = f"site {sid!r}"
        lat = _check_finite(self.latitude, "latitude", where)
        lon = _check_finite(self.longitude, "longitude", where)
        if not -90.0 <= lat <= 90.0:
            raise ValueError(f"{where}: field 'latitude' = {lat} is outside [-90, 90]")
        if not -180.0 <= lon <= 180.0:
            raise ValueError(f"{where}: field 'longitude' = {lon} is outside [-180, 180]")
        object.__setattr__(self, "latitude", lat)
        object.__setattr__(self, "longitude", lon)
        if self.igbp not in IGBP_CLASSES:
            raise ValueError(
                f"{where}: field 'igbp' = {self.igbp!r} is not an IGBP class "
                f"({', '.join(sorted(IGBP_CLASSES))})"
            )
        known = ", ".join(schema.CROP_NAMES)
        if self.crop_default not in schema.CROP_NAMES:
            raise ValueError(
                f"{where}: field 'crop_default' = {self.crop_default!r} is not a known crop "
                f"({known})"
            )
        if not isinstance(self.crop_by_year, Mapping):
            raise ValueError(f"{where}: field 'crop_by_year' must be a mapping year -> crop")
        crops: dict[int, str] = {}
        for year, crop in self.crop_by_year.items():
            if not isinstance(year, int) or isinstance(year, bool) or not 1800 <= year <= 2200:
                raise ValueError(
                    f"{where}: field 'crop_by_year' has a key {year!r} that is not a year "
                    "(an integer 1800-2200)"
                )
            if crop not in schema.CROP_NAMES:
                raise ValueError(
                    f"{where}: field 'crop_by_year.{year}' = {crop!r} is not a known crop ({known})"
                )
            crops[year] = crop
        object.__setattr__(self, "crop_by_year", MappingProxyType(dict(sorted(crops.items()))))
        object.__setattr__(self, "soil", MappingProxyType(self._checked_soil(where)))
        for name in ("elevation_m", "x", "y"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_finite(value, name, where))
        if self.elevation_m is not None and not -500.0 <= self.elevation_m <= 9000.0:
            raise ValueError(
                f"{where}: field 'elevation_m' = {self.elevation_m} is outside [-500, 9000] m"
            )
        if not isinstance(self.source, str):
            raise ValueError(f"{where}: field 'source' must be a string")
        if not isinstance(self.notes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.notes.items()
        ):
            raise ValueError(f"{where}: field 'notes' must map names to strings")
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))

    def _checked_soil(self, where: str) -> dict[str, float]:
        if not isinstance(self.soil, Mapping):
            raise ValueError(f"{where}: field 'soil' must be a mapping property -> value")
        missing = [n for n in schema.SITE_SOIL_PROPERTIES if n not in self.soil]
        if missing:
            raise ValueError(
                f"{where}: field 'soil' lacks {', '.join(missing)} "
                f"(required: {', '.join(schema.SITE_SOIL_PROPERTIES)})"
            )
        extra = [n for n in self.soil if n not in schema.SITE_SOIL_PROPERTIES]
        if extra:
            raise ValueError(
                f"{where}: field 'soil' has unknown properties {', '.join(map(repr, extra))} "
                f"(expected exactly: {', '.join(schema.SITE_SOIL_PROPERTIES)})"
            )
        soil: dict[str, float] = {}
        for name in schema.SITE_SOIL_PROPERTIES:
            var = schema.VARIABLES[name]
            value = _check_finite(self.soil[name], f"soil.{name}", where)
            lo, hi = var.valid_range
            if not lo <= value <= hi:
                raise ValueError(
                    f"{where}: field 'soil.{name}' = {value} {var.units} is outside the "
                    f"valid range [{lo}, {hi}] {var.units}"
                )
            soil[name] = value
        if soil["sand"] + soil["clay"] > 100.0:
            raise ValueError(
                f"{where}: fields 'soil.sand' + 'soil.clay' = {soil['sand'] + soil['clay']} % "
                "exceed 100 %"
            )
        if soil["wilting_point"] >= soil["field_capacity"]:
            raise ValueError(
                f"{where}: field 'soil.wilting_point' = {soil['wilting_point']} must be below "
                f"'soil.field_capacity' = {soil['field_capacity']}"
            )
        return soil

    # ------------------------------------------------------------------ crops
    def crop_name(self, year: int) -> str:
        """Crop grown in ``year`` (``crop_by_year``, else ``crop_default``)."""
        return self.crop_by_year.get(int(year), self.crop_default)

    def crop_code(self, year: int) -> int:
        """Schema crop code of ``year``: 0 other, 1 corn, 2 soybean."""
        return schema.CROP_NAMES[self.crop_name(year)]

    def crop_codes(self, years: Iterable[int]) -> list[int]:
        """Crop codes of several years, in order."""
        return [self.crop_code(y) for y in years]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (the sidecar format)."""
        return {
            "site_id": self.site_id,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "elevation_m": self.elevation_m,
            "igbp": self.igbp,
            "crop_default": self.crop_default,
            "crop_by_year": {str(y): c for y, c in self.crop_by_year.items()},
            "soil": dict(self.soil),
            "soil_units": {n: schema.VARIABLES[n].units for n in self.soil},
            "x": self.x,
            "y": self.y,
            "source": self.source,
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: object, *, origin: str = "site metadata") -> SiteMeta:
        """Build from the sidecar representation, naming ``origin`` in every error.

        Parameters
        ----------
        data : object
            Parsed JSON (must be an object).
        origin : str
            What the data came from (a file path), for error messages.

        Raises
        ------
        ValueError
            Naming ``origin`` and the offending field.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"{origin}: site metadata must be a JSON object, got {type(data).__name__}"
            )
        unknown = [k for k in data if k not in _FIELDS_REQUIRED + _FIELDS_OPTIONAL]
        if unknown:
            raise ValueError(
                f"{origin}: unknown field(s) {', '.join(map(repr, unknown))}; known fields: "
                f"{', '.join(_FIELDS_REQUIRED + _FIELDS_OPTIONAL)}"
            )
        missing = [k for k in _FIELDS_REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{origin}: missing field(s) {', '.join(map(repr, missing))}")
        crop_raw = data.get("crop_by_year") or {}
        if not isinstance(crop_raw, dict):
            raise ValueError(f"{origin}: field 'crop_by_year' must be an object year -> crop")
        crops: dict[int, Any] = {}
        for key, crop in crop_raw.items():
            try:
                year = int(key)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{origin}: field 'crop_by_year' has a key {key!r} that is not a year"
                ) from None
            crops[year] = crop
        soil = data["soil"]
        if not isinstance(soil, dict):
            raise ValueError(f"{origin}: field 'soil' must be an object property -> value")
        units = data.get("soil_units") or {}
        if not isinstance(units, dict):
            raise ValueError(f"{origin}: field 'soil_units' must be an object property -> units")
        for name, unit in units.items():
            var = schema.VARIABLES.get(name)
            if var is None or name not in schema.SITE_SOIL_PROPERTIES:
                raise ValueError(f"{origin}: field 'soil_units.{name}' names no soil property")
            if not var.accepts_units(unit):
                raise ValueError(
                    f"{origin}: field 'soil_units.{name}' = {unit!r}; the schema expects "
                    f"{var.units!r} (convert the value)"
                )
        notes = data.get("notes") or {}
        try:
            return cls(
                site_id=data["site_id"],
                latitude=data["latitude"],
                longitude=data["longitude"],
                igbp=data["igbp"],
                crop_default=data["crop_default"],
                crop_by_year=crops,
                soil=soil,
                elevation_m=data.get("elevation_m"),
                x=data.get("x"),
                y=data.get("y"),
                source=data.get("source", ""),
                notes=notes,
            )
        except ValueError as exc:
            raise ValueError(f"{origin}: {exc}") from None


def load_site_meta(path: str | os.PathLike[str]) -> SiteMeta:
    """Read and validate a site-metadata JSON file.

    Parameters
    ----------
    path : path-like
        The JSON sidecar.

    Returns
    -------
    SiteMeta

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not valid JSON or a field is invalid; the message names the file
        and the field.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        return _parse(fh, str(path))


def _parse(fh: Any, origin: str) -> SiteMeta:
    try:
        data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not valid JSON: {exc}") from None
    return SiteMeta.from_dict(data, origin=origin)


def write_site_meta(meta: SiteMeta, path: str | os.PathLike[str]) -> Path:
    """Write ``meta`` as a JSON sidecar, atomically (temporary file, then rename).

    Parameters
    ----------
    meta : SiteMeta
        The metadata to write.
    path : path-like
        Target file (conventionally ``<SITE_ID>_site.json`` next to the FLUXNET CSV).

    Returns
    -------
    Path
        The written file.
    """
    if not isinstance(meta, SiteMeta):
        raise TypeError(f"write_site_meta needs a SiteMeta, got {type(meta).__name__}")
    text = json.dumps(meta.to_dict(), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    A reader never sees a half-written file under the final name: the temporary file
    (``.<name>.<random>.tmp``) is flushed and fsynced, then renamed with :func:`os.replace`. The
    file gets the usual permissions (``0o666`` minus the umask).

    Parameters
    ----------
    path : path-like
        Target file; its folder is created if needed.
    text : str
        Content, written as UTF-8 with the newlines as given.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_site_meta(site_id: str, search_dirs: Iterable[str | os.PathLike[str]] = ()) -> SiteMeta:
    """Find the metadata of a site.

    Looks for ``<site_id>_site.json`` in each of ``search_dirs`` in order (e.g. the
    folder of the FLUXNET CSV), then for ``<site_id>.json`` (or ``<site_id>_site.json``)
    in the package data ``kgml_grid/data/sites/``.

    Parameters
    ----------
    site_id : str
        FLUXNET site identifier.
    search_dirs : iterable of path-like
        Folders searched first.

    Returns
    -------
    SiteMeta

    Raises
    ------
    SiteMetadataError
        If no metadata is found (a :class:`ValueError`); the message says that
        ``--site-meta FILE`` is required.
    ValueError
        If a file is found but is invalid or describes another site.
    """
    dirs = [Path(d) for d in search_dirs]
    for d in dirs:
        candidate = d / site_meta_filename(site_id)
        if candidate.is_file():
            return _checked_site(load_site_meta(candidate), site_id, str(candidate))
    package = resources.files("kgml_grid")
    for part in _PACKAGE_SITES:
        package = package / part
    for name in (f"{site_id}.json", site_meta_filename(site_id)):
        res = package / name
        if res.is_file():
            origin = f"kgml_grid/{'/'.join(_PACKAGE_SITES)}/{name}"
            with res.open("r", encoding="utf-8") as fh:
                return _checked_site(_parse(fh, origin), site_id, origin)
    looked = ", ".join(str(d) for d in dirs) or "no folders given"
    raise SiteMetadataError(
        f"unknown site {site_id!r}: no site metadata found (looked for "
        f"{site_meta_filename(site_id)} in: {looked}; and in the package data "
        f"kgml_grid/{'/'.join(_PACKAGE_SITES)}/). Its crop type and soil properties "
        f"cannot be guessed: --site-meta FILE is required (a JSON sidecar, see "
        f"kgml_grid.sites.write_site_meta)"
    )


def _checked_site(meta: SiteMeta, site_id: str, origin: str) -> SiteMeta:
    if meta.site_id != site_id:
        raise ValueError(
            f"{origin}: describes site {meta.site_id!r}, but site {site_id!r} was asked for"
        )
    return meta
