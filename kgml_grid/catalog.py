"""Intake catalogs of cubes: writing, safe opening, validation.

kgml_grid reads Intake *v1-style* YAML (``sources:`` with ``driver: zarr``), which
intake 2 still loads through ``intake.open_catalog`` with intake-xarray's Zarr
source. Before Intake sees a file, the YAML is parsed here as plain data
(:func:`kgml_grid.safe_yaml.load_yaml`: ``safe_load`` semantics, duplicate keys
refused) and checked, so that a catalog can never make Intake import or run code:

* only the keys kgml_grid understands are accepted, at every level (:data:`TOP_KEYS`,
  :data:`ENTRY_KEYS`, :data:`ARGS_KEYS`, ...): no ``plugins`` (Intake imports the
  modules it names), no ``parameters``/``user_parameters``;
* only the ``zarr`` driver;
* no Jinja template other than ``{{ CATALOG_DIR }}`` in any string;
* a remote ``urlpath`` (``s3://``, ``https://``, ...) only when its fsspec
  implementation is installed (else the package to install is named).

Each entry names its layer in ``metadata.layer`` and the CRS it must have in
``metadata.crs``.

Example::

    metadata:
      version: 1
      kgml_grid: {format: 1, crs: "EPSG:5070", towers: "towers/FLX_*_DD_*.csv"}
    sources:
      weather:
        driver: zarr
        args: {urlpath: "{{ CATALOG_DIR }}/weather.zarr", consolidated: false}
        metadata: {layer: weather, crs: "EPSG:5070"}
"""

from __future__ import annotations

import glob as _glob
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr
import yaml

from kgml_grid import cubes, schema
from kgml_grid.safe_yaml import YamlError, load_yaml

if TYPE_CHECKING:
    from kgml_grid.grid import GridSpec

ALLOWED_DRIVERS = frozenset({"zarr", "intake_xarray.xzarr.ZarrSource"})
CATALOG_FORMAT = 1


class CatalogError(ValueError):
    """A catalog file is malformed or unsafe."""


@dataclass(frozen=True)
class Entry:
    """One catalog entry, as parsed (before Intake)."""

    name: str
    layer: str
    urlpath: str
    crs: str | None
    description: str


class Catalog:
    """A validated catalog of cubes.

    Use :func:`open_catalog` to make one. ``cat.open("weather")`` returns a lazily
    chunked, Dask-backed, schema-validated Dataset; ``cat.open_all()`` opens every
    entry and checks the layers align.
    """

    def __init__(self, path: Path, raw: Mapping[str, Any], entries: dict[str, Entry]) -> None:
        self.path = path
        self.raw = raw
        self.entries = entries
        self._intake: Any = None

    def __repr__(self) -> str:
        return f"<kgml_grid.Catalog {self.path} entries={list(self.entries)}>"

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    @property
    def meta(self) -> Mapping[str, Any]:
        """The ``metadata.kgml_grid`` block of the catalog."""
        return (self.raw.get("metadata") or {}).get("kgml_grid") or {}

    @property
    def crs(self) -> str | None:
        return self.meta.get("crs")

    def _intake_catalog(self) -> Any:
        if self._intake is None:
            import intake

            self._intake = intake.open_catalog(str(self.path))
        return self._intake

    def entry_for_layer(self, layer: str) -> str:
        """Name of the entry holding ``layer``."""
        for e in self.entries.values():
            if e.layer == layer:
                return e.name
        raise CatalogError(f"{self.path}: no entry for layer {layer!r}; entries: {list(self.entries)}")

    def open(self, name: str, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
        """Open one entry (by entry name or layer name) as a validated Dask-backed Dataset."""
        if name not in self.entries:
            name = self.entry_for_layer(name) if name in schema.LAYERS else name
        if name not in self.entries:
            raise CatalogError(f"{self.path}: no entry {name!r}; entries: {list(self.entries)}")
        e = self.entries[name]
        src = self._intake_catalog()[name]
        try:
            ds = src.to_dask()
        except (FileNotFoundError, KeyError) as err:
            raise CatalogError(
                f"{self.path}: entry {name!r} points at {e.urlpath!r}, which cannot be opened: {err}"
            ) from None
        if chunks:
            ds = ds.chunk(dict(chunks))
        ds = cubes.validate_layer(ds, e.layer, source=f"{self.path}:{name} ({e.urlpath})", crs=e.crs)
        ds.attrs["kgml_catalog_entry"] = f"{self.path}:{name}"
        return ds

    def open_all(self) -> dict[str, xr.Dataset]:
        """Open every entry and check that the layers fit together (grid, CRS, time)."""
        layers = {self.entries[n].layer: self.open(n) for n in self.entries}
        cubes.validate_alignment(
            layers, sources={e.layer: f"{self.path}:{e.name}" for e in self.entries.values()}
        )
        return layers

    def grid(self) -> GridSpec:
        """The fine target grid (from the first fine layer)."""
        for layer in ("satellite", "soil", "crop", "truth"):
            if any(e.layer == layer for e in self.entries.values()):
                return cubes.grid_of(self.open(layer), layer=layer)
        raise CatalogError(f"{self.path}: no fine-grid layer")

    def towers(self) -> list[Path]:
        """FLUXNET DD files named by ``metadata.kgml_grid.towers`` (a glob relative to the catalog)."""
        pattern = self.meta.get("towers")
        if not pattern:
            return []
        return sorted(Path(p) for p in _glob.glob(str(self.path.parent / pattern)))

    def describe(self) -> str:
        lines = [f"catalog {self.path}"]
        for e in self.entries.values():
            lines.append(f"  {e.name:<10} layer={e.layer:<9} {e.urlpath}")
        t = self.towers()
        if t:
            lines.append(f"  towers     {len(t)} FLUXNET DD files ({self.meta.get('towers')})")
        return "\n".join(lines)


#: The keys kgml_grid understands, per level of a catalog file; anything else is refused
#: (Intake acts on keys such as ``plugins``, ``parameters`` or ``user_parameters``,
#: which import modules or render templates: a catalog is data, never code).
TOP_KEYS = frozenset({"description", "metadata", "sources"})
META_KEYS = frozenset({"version", "kgml_grid"})
KGML_META_KEYS = frozenset({"format", "crs", "towers", "resolution_m", "world", "seed", "preset"})
ENTRY_KEYS = frozenset({"description", "driver", "args", "metadata"})
ARGS_KEYS = frozenset({"urlpath", "consolidated", "decode_coords", "storage_options", "chunks"})
ENTRY_META_KEYS = frozenset({"layer", "crs", "products"})

_CATALOG_DIR = re.compile(r"\{\{\s*CATALOG_DIR\s*\}\}")
_TEMPLATE = re.compile(r"\{\{|\}\}|\{%|%\}|\{#")
_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def _check_keys(path: Path, where: str, mapping: Mapping[Any, Any], allowed: frozenset[str]) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        k = unknown[0]
        hint = " (catalogs are data: Intake plugins are never loaded from them)" if k == "plugins" else ""
        raise CatalogError(
            f"{path}: {where}key {k!r} is not one kgml_grid understands{hint}; allowed: "
            f"{', '.join(sorted(allowed))}. Remove it"
        )


def _check_templates(path: Path, node: Any, where: str = "") -> None:
    """Refuse any Jinja template but ``{{ CATALOG_DIR }}`` in any string of the file
    (Intake renders templates, and its ``env()``/``shell()`` helpers read the
    environment or run commands)."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            _check_templates(path, k, where)
            _check_templates(path, v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_templates(path, v, f"{where}[{i}]")
    elif isinstance(node, str) and _TEMPLATE.search(_CATALOG_DIR.sub("", node)):
        raise CatalogError(
            f"{path}: {where or 'a key'} is {node!r}: the only template allowed is "
            "'{{ CATALOG_DIR }}' (catalogs are data; no other Jinja expressions are rendered). "
            "Write the value out"
        )


def check_urlpath(path: Path, name: str, urlpath: str) -> None:
    """Refuse a remote ``urlpath`` whose protocol fsspec cannot serve here, naming the
    optional package to install (instead of an ImportError deep inside Intake).

    Raises
    ------
    CatalogError
        For an unknown protocol, or one whose fsspec implementation is not installed.
    """
    for part in urlpath.split("::"):
        m = _PROTOCOL.match(part)
        if not m or m.group(1).lower() == "file":
            continue
        proto = m.group(1).lower()
        import fsspec

        try:
            fsspec.get_filesystem_class(proto)
        except ValueError:
            raise CatalogError(
                f"{path}: entry {name!r} has urlpath {urlpath!r}: protocol {proto}:// is not "
                "known to fsspec; use a local path or an object-store URL (s3://, gs://, https://)"
            ) from None
        except ImportError as e:
            pkg = _FSSPEC_PACKAGES.get(proto, "the fsspec implementation")
            raise CatalogError(
                f"{path}: entry {name!r} has urlpath {urlpath!r}: reading {proto}:// needs {pkg} "
                f"({e}); pip install {pkg}, or point urlpath at a local copy"
            ) from None


#: pip packages of fsspec's remote protocols (fsspec's registry names the class).
_FSSPEC_PACKAGES = {
    "http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs",
    "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "adl": "adlfs",
}  # fmt: skip


def _parse(path: Path) -> tuple[dict[str, Any], dict[str, Entry]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CatalogError(f"catalog {path} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise CatalogError(f"catalog {path} cannot be read as a YAML file: {e}") from None
    try:
        raw = load_yaml(text, source=str(path))
    except YamlError as e:
        raise CatalogError(str(e)) from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: a catalog must be a YAML mapping with 'sources:'")
    if raw.get("version") == 2 or "entries" in raw or "data" in raw:
        raise CatalogError(
            f"{path}: Intake v2 catalogs are not supported; write v1-style YAML "
            "('sources:' with 'driver: zarr')"
        )
    _check_keys(path, "top-level ", raw, TOP_KEYS)
    _check_templates(path, raw)
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise CatalogError(f"{path}: no 'sources:' mapping of entries")
    top_meta = raw.get("metadata") or {}
    if not isinstance(top_meta, dict):
        raise CatalogError(f"{path}: 'metadata' must be a mapping")
    _check_keys(path, "metadata ", top_meta, META_KEYS)
    kmeta = top_meta.get("kgml_grid") or {}
    if not isinstance(kmeta, dict):
        raise CatalogError(f"{path}: 'metadata.kgml_grid' must be a mapping")
    _check_keys(path, "metadata.kgml_grid ", kmeta, KGML_META_KEYS)
    fmt = kmeta.get("format", CATALOG_FORMAT)
    if fmt != CATALOG_FORMAT:
        raise CatalogError(f"{path}: metadata.kgml_grid.format is {fmt!r}, expected {CATALOG_FORMAT}")
    entries: dict[str, Entry] = {}
    for name, src in sources.items():
        if not isinstance(src, dict):
            raise CatalogError(f"{path}: entry {name!r} must be a mapping")
        _check_keys(path, f"entry {name!r}: ", src, ENTRY_KEYS)
        driver = src.get("driver")
        if driver not in ALLOWED_DRIVERS:
            raise CatalogError(
                f"{path}: entry {name!r} uses driver {driver!r}; only 'zarr' is allowed "
                "(catalogs are data: no code is imported from them)"
            )
        args = src.get("args") or {}
        if not isinstance(args, dict):
            raise CatalogError(f"{path}: entry {name!r}: 'args' must be a mapping")
        _check_keys(path, f"entry {name!r} args: ", args, ARGS_KEYS)
        urlpath = args.get("urlpath")
        if not isinstance(urlpath, str):
            raise CatalogError(f"{path}: entry {name!r} has no args.urlpath")
        check_urlpath(path, str(name), urlpath)
        if args.get("consolidated", False) is not False:
            raise CatalogError(
                f"{path}: entry {name!r} must set 'consolidated: false' (Zarr v3 stores)"
            )
        meta = src.get("metadata") or {}
        if not isinstance(meta, dict):
            raise CatalogError(f"{path}: entry {name!r}: 'metadata' must be a mapping")
        _check_keys(path, f"entry {name!r} metadata: ", meta, ENTRY_META_KEYS)
        layer = meta.get("layer", name)
        if layer not in schema.LAYERS:
            raise CatalogError(
                f"{path}: entry {name!r} has layer {layer!r}; expected one of {', '.join(schema.LAYERS)}"
            )
        entries[str(name)] = Entry(str(name), layer, urlpath, meta.get("crs"), src.get("description", ""))
    return raw, entries


def open_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Parse and check a catalog file; entries open lazily through Intake.

    Raises
    ------
    CatalogError
        For a missing file, invalid YAML or a duplicate key (naming key and line), an
        Intake v2 file, a key kgml_grid does not understand (``plugins``, say), a
        template other than ``{{ CATALOG_DIR }}``, a driver other than ``zarr``, a
        remote urlpath whose fsspec package is missing, or an unknown layer: naming
        the file, the entry and the key.
    """
    p = Path(path).resolve()
    raw, entries = _parse(p)
    return Catalog(p, raw, entries)


def catalog_yaml(
    entries: Mapping[str, Mapping[str, Any]],
    *,
    crs: str,
    description: str,
    towers: str | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> str:
    """Render a v1-style catalog. ``entries`` maps name -> {layer, path, description}."""
    meta: dict[str, Any] = {"format": CATALOG_FORMAT, "crs": crs}
    if towers:
        meta["towers"] = towers
    meta.update(extra_meta or {})
    doc: dict[str, Any] = {
        "description": description,
        "metadata": {"version": 1, "kgml_grid": meta},
        "sources": {},
    }
    for name, e in entries.items():
        doc["sources"][name] = {
            "description": e.get("description", ""),
            "driver": "zarr",
            "args": {"urlpath": e["path"], "consolidated": False, "decode_coords": "all"},
            "metadata": {"layer": e.get("layer", name), "crs": e.get("crs", crs)},
        }
    return yaml.safe_dump(doc, sort_keys=False)


def write_catalog(path: str | Path, text: str) -> Path:
    """Write catalog text atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_world_catalog(info: Any, params: Any, seed: int, preset: Any) -> Path:
    """The catalog of a generated synthetic world (paths relative to its folder)."""
    desc = {
        "weather": "daily weather (NLDAS-2/gridMET stand-in) on the coarse grid",
        "satellite": "satellite GPP, LAI, soil moisture (SLOPE/GLASS/SMAP stand-ins), noisy with gaps",
        "soil": "static soil properties (gSSURGO stand-in)",
        "crop": "crop type per year (CDL stand-in): 0 other, 1 corn, 2 soybean",
        "truth": "process-model truth: GPP, Ra, Rh, Reco, NEE daily; yield yearly",
    }
    entries = {
        n: {"layer": n, "path": "{{ CATALOG_DIR }}/" + f"{n}.zarr", "description": d}
        for n, d in desc.items()
    }
    text = catalog_yaml(
        entries,
        crs=params.crs,
        description=f"kgml_grid synthetic world {params.name} (seed {seed}, preset {preset.name})",
        towers="towers/FLX_*_FLUXNET2015_*_DD_*.csv",
        extra_meta={"world": params.name, "seed": seed, "preset": preset.name},
    )
    return write_catalog(info.catalog, text)
