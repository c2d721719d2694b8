"""Intake catalogs of cubes: writing, safe opening, validation.

kgml_grid writes native **Intake 2** catalogs (``version: 2``: a ``data:`` entry of
datatype ``Zarr`` per cube and a reader entry ``XArrayDatasetReader`` over it) and reads
both those and the *v1-style* YAML written before (``sources:`` with ``driver: zarr``);
``intake.open_catalog(path)`` gives working entries for both (v2: ``cat[name].read()``,
v1: ``cat[name].to_dask()``), and :func:`migrate_catalog` rewrites a v1 file as v2.
Before Intake sees a file, the YAML is parsed here as plain data
(:func:`kgml_grid.safe_yaml.load_yaml`: ``safe_load`` semantics, duplicate keys
refused) and checked, so that a catalog can never make Intake import or run code:

* only the keys kgml_grid understands are accepted, at every level (:data:`TOP_KEYS`,
  :data:`ENTRY_KEYS`, :data:`ARGS_KEYS`, ... and the ``V2_*`` sets): no ``plugins``
  (Intake imports the modules it names), no ``parameters``/``user_parameters``;
* v1: only the ``zarr`` driver; v2: only the ``Zarr`` datatype and the xarray reader
  (:data:`V2_DATATYPE`, :data:`V2_READER`: Intake imports the classes named there);
* no template other than the catalog's folder (``{{ CATALOG_DIR }}`` in v1,
  ``{CATALOG_DIR}`` in v2) and, in v2, the one ``{data(NAME)}`` reference of a reader
  to its data entry;
* a remote ``urlpath`` (``s3://``, ``https://``, ...) only when its fsspec
  implementation is installed (else the package to install is named).

Each entry names its layer in ``metadata.layer`` and the CRS it must have in
``metadata.crs``.

Example (what :func:`catalog_yaml` writes)::

    version: 2
    metadata:
      description: kgml_grid synthetic world A (seed 0, preset demo)
      kgml_grid: {format: 1, crs: "EPSG:5070", towers: "towers/FLX_*_DD_*.csv"}
    aliases: {}
    user_parameters: {}
    data:
      weather_zarr:
        datatype: intake.readers.datatypes:Zarr
        kwargs: {url: "{CATALOG_DIR}/weather.zarr", storage_options: null, root: ""}
        metadata: {}
        user_parameters: {}
    entries:
      weather:
        reader: intake.readers.readers:XArrayDatasetReader
        output_instance: xarray:Dataset
        kwargs: {args: ["{data(weather_zarr)}"], engine: zarr, consolidated: false,
                 decode_coords: all, chunks: {}}
        metadata: {layer: weather, crs: "EPSG:5070", description: ...}
        user_parameters: {}

The same catalog in v1 style (still read; ``catalog_yaml(..., version=1)`` writes it)::

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
    """One catalog entry, as parsed (before Intake).

    ``urlpath`` is the cube's location as written, with the catalog-folder template in
    its v1 spelling ``{{ CATALOG_DIR }}`` whatever the file's version.
    """

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

    @property
    def version(self) -> int:
        """The Intake catalog version of the file: 2 (native) or 1 (v1-style ``sources:``)."""
        return 2 if self.raw.get("version") == 2 else 1

    @property
    def description(self) -> str:
        if self.version == 2:
            return str((self.raw.get("metadata") or {}).get("description", ""))
        return str(self.raw.get("description", ""))

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
        raise CatalogError(
            f"{self.path}: no entry for layer {layer!r}; entries: {list(self.entries)}"
        )

    def open(self, name: str, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
        """Open one entry (by entry name or layer name) as a validated Dask-backed Dataset."""
        if name not in self.entries:
            name = self.entry_for_layer(name) if name in schema.LAYERS else name
        if name not in self.entries:
            raise CatalogError(f"{self.path}: no entry {name!r}; entries: {list(self.entries)}")
        e = self.entries[name]
        try:
            src = self._intake_catalog()[name]
            ds = src.read() if self.version == 2 else src.to_dask()
        except (FileNotFoundError, KeyError) as err:
            raise CatalogError(
                f"{self.path}: entry {name!r} points at {e.urlpath!r}, which cannot be opened: {err}"
            ) from None
        if chunks:
            ds = ds.chunk(dict(chunks))
        ds = cubes.validate_layer(
            ds, e.layer, source=f"{self.path}:{name} ({e.urlpath})", crs=e.crs
        )
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
        lines = [f"catalog {self.path} (Intake v{self.version})"]
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


def _check_keys(
    path: Path, where: str, mapping: Mapping[Any, Any], allowed: frozenset[str]
) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        k = unknown[0]
        hint = (
            " (catalogs are data: Intake plugins are never loaded from them)"
            if k == "plugins"
            else ""
        )
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


def _mapping(path: Path, where: str, value: Any, *, required: bool = False) -> dict[Any, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise CatalogError(f"{path}: {where} must be a mapping, got {value!r}")
    return value


def _check_kgml_meta(path: Path, top_meta: Mapping[str, Any], allowed: frozenset[str]) -> None:
    _check_keys(path, "metadata ", top_meta, allowed)
    kmeta = _mapping(path, "'metadata.kgml_grid'", top_meta.get("kgml_grid"))
    _check_keys(path, "metadata.kgml_grid ", kmeta, KGML_META_KEYS)
    fmt = kmeta.get("format", CATALOG_FORMAT)
    if fmt != CATALOG_FORMAT:
        raise CatalogError(
            f"{path}: metadata.kgml_grid.format is {fmt!r}, expected {CATALOG_FORMAT}"
        )


def _entry(path: Path, name: Any, urlpath: Any, meta: Any, description: Any, where: str) -> Entry:
    """The checks every entry gets, whatever the file's version."""
    if not isinstance(urlpath, str):
        raise CatalogError(f"{path}: entry {name!r} has no {where}")
    check_urlpath(path, str(name), urlpath)
    meta = _mapping(path, f"entry {name!r}: 'metadata'", meta)
    _check_keys(path, f"entry {name!r} metadata: ", meta, ENTRY_META_KEYS)
    layer = meta.get("layer", name)
    if layer not in schema.LAYERS:
        raise CatalogError(
            f"{path}: entry {name!r} has layer {layer!r}; expected one of {', '.join(schema.LAYERS)}"
        )
    return Entry(str(name), layer, urlpath, meta.get("crs"), str(description or ""))


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
        raise CatalogError(
            f"{path}: a catalog must be a YAML mapping ('version: 2' with 'data:' and 'entries:', "
            "or v1-style 'sources:')"
        )
    if "version" in raw or "entries" in raw or "data" in raw:
        if raw.get("version") != 2:
            raise CatalogError(
                f"{path}: top-level 'version' is {raw.get('version')!r}: an Intake 2 catalog says "
                "'version: 2' (a v1-style catalog has no 'version' key, only 'sources:')"
            )
        return raw, _parse_v2(path, raw)
    return raw, _parse_v1(path, raw)


def _parse_v1(path: Path, raw: dict[str, Any]) -> dict[str, Entry]:
    _check_keys(path, "top-level ", raw, TOP_KEYS)
    _check_templates(path, raw)
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise CatalogError(f"{path}: no 'sources:' mapping of entries")
    _check_kgml_meta(path, _mapping(path, "'metadata'", raw.get("metadata")), META_KEYS)
    entries: dict[str, Entry] = {}
    for name, src in sources.items():
        src = _mapping(path, f"entry {name!r}", src, required=True)
        _check_keys(path, f"entry {name!r}: ", src, ENTRY_KEYS)
        driver = src.get("driver")
        if driver not in ALLOWED_DRIVERS:
            raise CatalogError(
                f"{path}: entry {name!r} uses driver {driver!r}; only 'zarr' is allowed "
                "(catalogs are data: no code is imported from them)"
            )
        args = _mapping(path, f"entry {name!r}: 'args'", src.get("args"))
        _check_keys(path, f"entry {name!r} args: ", args, ARGS_KEYS)
        if args.get("consolidated", False) is not False:
            raise CatalogError(
                f"{path}: entry {name!r} must set 'consolidated: false' (Zarr v3 stores)"
            )
        entries[str(name)] = _entry(path, name, args.get("urlpath"), src.get("metadata"),
                                    src.get("description"), "args.urlpath")  # fmt: skip
    return entries


#: Intake 2: the keys kgml_grid understands per level, and the only classes a file may
#: name (Intake imports whatever ``datatype`` and ``reader`` say).
V2_TOP_KEYS = frozenset({"version", "metadata", "aliases", "user_parameters", "data", "entries"})
V2_META_KEYS = frozenset({"description", "kgml_grid"})
V2_DATA_KEYS = frozenset({"datatype", "kwargs", "metadata", "user_parameters"})
V2_DATA_KWARGS = frozenset({"url", "storage_options", "root"})
V2_ENTRY_KEYS = frozenset({"reader", "output_instance", "kwargs", "metadata", "user_parameters"})
V2_READER_KWARGS = frozenset({"args", "engine", "consolidated", "decode_coords", "chunks"})
V2_DATATYPE = "intake.readers.datatypes:Zarr"
V2_READER = "intake.readers.readers:XArrayDatasetReader"
V2_OUTPUT = "xarray:Dataset"
_V2_CATALOG_DIR = "{CATALOG_DIR}"
_V2_DATA_REF = re.compile(r"\{data\(([^(){}]+)\)\}")
_BRACES = re.compile(r"[{}]")


def _check_v2_templates(path: Path, node: Any, where: str = "") -> None:
    """Intake 2 renders ``{...}`` in strings (references, parameters, functions): refuse
    every one but ``{CATALOG_DIR}``; the readers' ``{data(NAME)}`` is checked apart."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            _check_v2_templates(path, k, where)
            _check_v2_templates(path, v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_v2_templates(path, v, f"{where}[{i}]")
    elif isinstance(node, str) and (_BRACES.search(node.replace(_V2_CATALOG_DIR, ""))):
        raise CatalogError(
            f"{path}: {where or 'a key'} is {node!r}: the only template allowed is "
            "'{CATALOG_DIR}' (catalogs are data; no other Intake template, reference or "
            "function is rendered). Write the value out"
        )


def _empty(path: Path, where: str, value: Any) -> None:
    if value not in (None, {}, []):
        raise CatalogError(
            f"{path}: {where} must be empty (kgml_grid catalogs take no parameters or aliases: "
            f"templates render values at read time), got {value!r}"
        )


def _parse_v2(path: Path, raw: dict[str, Any]) -> dict[str, Entry]:
    _check_keys(path, "top-level ", raw, V2_TOP_KEYS)
    _empty(path, "top-level 'user_parameters'", raw.get("user_parameters"))
    _empty(path, "top-level 'aliases'", raw.get("aliases"))
    _check_kgml_meta(path, _mapping(path, "'metadata'", raw.get("metadata")), V2_META_KEYS)
    _check_v2_templates(path, raw.get("metadata"), "metadata")
    data = _mapping(path, "'data'", raw.get("data"))
    readers = _mapping(path, "'entries'", raw.get("entries"))
    if not readers:
        raise CatalogError(f"{path}: no 'entries:' mapping of reader entries")
    urls: dict[str, str] = {}
    for key, d in data.items():
        d = _mapping(path, f"data {key!r}", d, required=True)
        _check_keys(path, f"data {key!r}: ", d, V2_DATA_KEYS)
        if d.get("datatype") != V2_DATATYPE:
            raise CatalogError(
                f"{path}: data {key!r} has datatype {d.get('datatype')!r}; only {V2_DATATYPE!r} "
                "is allowed (catalogs are data: no code is imported from them)"
            )
        kw = _mapping(path, f"data {key!r}: 'kwargs'", d.get("kwargs"))
        _check_keys(path, f"data {key!r} kwargs: ", kw, V2_DATA_KWARGS)
        _check_v2_templates(
            path, {k: v for k, v in d.items() if k != "user_parameters"}, f"data.{key}"
        )
        _empty(path, f"data {key!r}: 'user_parameters'", d.get("user_parameters"))
        if kw.get("root") not in (None, ""):
            raise CatalogError(
                f"{path}: data {key!r}: 'root' must be '' (the cube is the store's root group)"
            )
        url = kw.get("url")
        if not isinstance(url, str):
            raise CatalogError(f"{path}: data {key!r} has no kwargs.url")
        urls[str(key)] = url
    entries: dict[str, Entry] = {}
    for name, r in readers.items():
        r = _mapping(path, f"entry {name!r}", r, required=True)
        _check_keys(path, f"entry {name!r}: ", r, V2_ENTRY_KEYS)
        _empty(path, f"entry {name!r}: 'user_parameters'", r.get("user_parameters"))
        if r.get("reader") != V2_READER:
            raise CatalogError(
                f"{path}: entry {name!r} uses reader {r.get('reader')!r}; only {V2_READER!r} is "
                "allowed (catalogs are data: no code is imported from them)"
            )
        if r.get("output_instance", V2_OUTPUT) != V2_OUTPUT:
            raise CatalogError(f"{path}: entry {name!r}: output_instance must be {V2_OUTPUT!r}")
        kw = _mapping(path, f"entry {name!r}: 'kwargs'", r.get("kwargs"))
        _check_keys(path, f"entry {name!r} kwargs: ", kw, V2_READER_KWARGS)
        args = kw.get("args")
        m = (
            _V2_DATA_REF.fullmatch(args[0])
            if isinstance(args, list) and len(args) == 1 and isinstance(args[0], str)
            else None
        )
        if m is None or m.group(1) not in urls:
            raise CatalogError(
                f'{path}: entry {name!r}: kwargs.args must be one reference "{{data(NAME)}}" to a '
                f"'data:' entry ({', '.join(urls) or 'none defined'}), got {args!r}"
            )
        if str(name) in urls:
            raise CatalogError(
                f"{path}: entry {name!r} has the name of a data entry; Intake 2 cannot tell them apart"
            )
        if kw.get("engine", "zarr") != "zarr":
            raise CatalogError(
                f"{path}: entry {name!r}: engine must be 'zarr', got {kw.get('engine')!r}"
            )
        if kw.get("consolidated", False) is not False:
            raise CatalogError(
                f"{path}: entry {name!r} must set 'consolidated: false' (Zarr v3 stores)"
            )
        _check_v2_templates(
            path, {k: v for k, v in kw.items() if k != "args"}, f"entries.{name}.kwargs"
        )
        meta = _mapping(path, f"entry {name!r}: 'metadata'", r.get("metadata"))
        _check_v2_templates(path, meta, f"entries.{name}.metadata")
        desc = meta.get("description", "")
        meta = {k: v for k, v in meta.items() if k != "description"}
        url = urls[m.group(1)].replace(_V2_CATALOG_DIR, "{{ CATALOG_DIR }}")
        entries[str(name)] = _entry(path, name, url, meta, desc, "url")
    return entries


def open_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Parse and check a catalog file; entries open lazily through Intake.

    Raises
    ------
    CatalogError
        For a missing file, invalid YAML or a duplicate key (naming key and line), a
        key kgml_grid does not understand (``plugins``, say), a template other than the
        catalog's folder, a driver (v1) or datatype/reader (v2) other than Zarr through
        xarray, a remote urlpath whose fsspec package is missing, or an unknown layer:
        naming the file, the entry and the key.
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
    version: int = 2,
) -> str:
    """Render a catalog: Intake 2 (``version=2``, the default) or v1-style (``version=1``).

    ``entries`` maps name -> {layer, path, description, crs, products}; a local ``path`` is
    written relative to the catalog's folder with ``{{ CATALOG_DIR }}/`` in front (either
    spelling of the template is accepted and written in the version's own).
    """
    if version not in (1, 2):
        raise ValueError(f"catalog version must be 1 or 2, got {version!r}")
    meta: dict[str, Any] = {"format": CATALOG_FORMAT, "crs": crs}
    if towers:
        meta["towers"] = towers
    meta.update(extra_meta or {})
    if version == 1:
        doc: dict[str, Any] = {
            "description": description,
            "metadata": {"version": 1, "kgml_grid": meta},
            "sources": {},
        }
        for name, e in entries.items():
            doc["sources"][name] = {
                "description": e.get("description", ""),
                "driver": "zarr",
                "args": {
                    "urlpath": _v1_url(e["path"]),
                    "consolidated": False,
                    "decode_coords": "all",
                },
                "metadata": {
                    "layer": e.get("layer", name),
                    "crs": e.get("crs", crs),
                    **({"products": list(e["products"])} if e.get("products") else {}),
                },
            }
        return yaml.safe_dump(doc, sort_keys=False)
    doc = {"version": 2, "metadata": {"description": description, "kgml_grid": meta},
           "aliases": {}, "user_parameters": {}, "data": {}, "entries": {}}  # fmt: skip
    for name, e in entries.items():
        doc["data"].update(_v2_data(name, e["path"]))
        doc["entries"][name] = _v2_reader(name, e, crs)
    return yaml.safe_dump(doc, sort_keys=False)


def _v1_url(url: str) -> str:
    return url.replace(_V2_CATALOG_DIR, "{{ CATALOG_DIR }}") if _V2_CATALOG_DIR in url else url


def _v2_url(url: str) -> str:
    return _CATALOG_DIR.sub(_V2_CATALOG_DIR, url)


def v2_data_key(name: str) -> str:
    """The ``data:`` key of entry ``name`` in the catalogs kgml_grid writes."""
    return f"{name}_zarr"


def _v2_data(name: str, url: str) -> dict[str, Any]:
    return {v2_data_key(name): {"datatype": V2_DATATYPE,
                                "kwargs": {"url": _v2_url(url), "storage_options": None, "root": ""},
                                "metadata": {}, "user_parameters": {}}}  # fmt: skip


def _v2_reader(name: str, e: Mapping[str, Any], crs: str) -> dict[str, Any]:
    meta = {"layer": e.get("layer", name), "crs": e.get("crs", crs)}
    if e.get("products"):
        meta["products"] = list(e["products"])
    if e.get("description"):
        meta["description"] = e["description"]
    return {
        "reader": V2_READER,
        "output_instance": V2_OUTPUT,
        # chunks={}: Dask arrays on the store's own chunks, as v1's to_dask() gives
        "kwargs": {
            "args": ["{data(" + v2_data_key(name) + ")}"],
            "engine": "zarr",
            "consolidated": False,
            "decode_coords": "all",
            "chunks": {},
        },
        "metadata": meta,
        "user_parameters": {},
    }


def add_entry(
    raw: dict[str, Any], name: str, entry: Mapping[str, Any], *, crs: str
) -> dict[str, Any]:
    """Add (or replace) one entry in a parsed catalog document, in the file's own version."""
    if raw.get("version") == 2:
        raw.setdefault("data", {}).update(_v2_data(name, entry["path"]))
        raw.setdefault("entries", {})[name] = _v2_reader(name, entry, crs)
    else:
        v1 = yaml.safe_load(catalog_yaml({name: entry}, crs=crs, description="", version=1))
        raw.setdefault("sources", {})[name] = v1["sources"][name]
    return raw


def migrate_catalog(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                    overwrite: bool = False) -> Path:  # fmt: skip
    """Rewrite a v1-style catalog as an Intake 2 catalog with the same entries and metadata.

    The source is parsed and checked first (:func:`open_catalog`); the new file is parsed
    again before it replaces anything. Relative cube paths stay relative to the catalog's
    folder, so ``dst`` normally sits beside ``src`` (a ``dst`` elsewhere gets paths
    re-based on its own folder).

    Raises
    ------
    CatalogError
        When ``src`` is not a valid v1 catalog, ``dst`` is ``src``, or ``dst`` exists
        without ``overwrite`` or is not a kgml_grid catalog (never replaced then).
    """
    cat = open_catalog(src)
    dst_p = Path(dst).resolve()
    if cat.version == 2:
        raise CatalogError(
            f"{cat.path}: already an Intake 2 catalog (version: 2); nothing to migrate"
        )
    if dst_p == cat.path:
        raise CatalogError(
            f"{dst_p}: the migrated catalog must be a new file, not the v1 file itself"
        )
    if dst_p.exists():
        if not overwrite:
            raise CatalogError(f"{dst_p}: exists; pass --overwrite to replace it")
        try:
            open_catalog(dst_p)
        except CatalogError:
            raise CatalogError(
                f"{dst_p}: exists and is not a kgml_grid catalog; it is never replaced (choose another path)"
            ) from None
    entries = {}
    for e in cat.entries.values():
        url = e.urlpath
        if _CATALOG_DIR.search(url) and dst_p.parent != cat.path.parent:
            local = Path(_CATALOG_DIR.sub(str(cat.path.parent), url)).resolve()
            url = "{{ CATALOG_DIR }}/" + Path(os.path.relpath(local, dst_p.parent)).as_posix()
        products = (cat.raw["sources"][e.name].get("metadata") or {}).get("products")
        entries[e.name] = {"layer": e.layer, "path": url, "description": e.description,
                           "crs": e.crs or cat.crs, "products": products}  # fmt: skip
    meta = dict(cat.meta)
    crs = str(meta.pop("crs", None) or next((e.crs for e in cat.entries.values() if e.crs), ""))
    meta.pop("format", None)
    towers = meta.pop("towers", None)
    if towers and dst_p.parent != cat.path.parent:
        towers = os.path.relpath(cat.path.parent / towers, dst_p.parent)
    text = catalog_yaml(
        entries, crs=crs, description=cat.description, towers=towers, extra_meta=meta
    )
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_p.with_name(dst_p.name + ".migrating")
    tmp.write_text(text)
    try:
        _parse(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return write_catalog(dst_p, text)


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
