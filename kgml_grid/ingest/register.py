"""Registering an ingested cube as an entry of a catalog file.

A new catalog is rendered by :func:`kgml_grid.catalog.catalog_yaml` (Intake 2) and
written by :func:`~kgml_grid.catalog.write_catalog` (atomically); in an existing one
(checked by :func:`~kgml_grid.catalog.open_catalog` first, then read as plain data) the
one entry is added or replaced in the file's own version
(:func:`~kgml_grid.catalog.add_entry`: v2 or v1-style) and every other entry is kept as
it was (YAML comments are not kept).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from kgml_grid.catalog import CatalogError, add_entry, catalog_yaml, open_catalog, write_catalog
from kgml_grid.ingest.errors import IngestError

DESCRIPTION = "kgml_grid input cubes made by kgml-grid ingest"


def entry_urlpath(cube: str | os.PathLike[str], catalog: Path) -> str:
    """``{{ CATALOG_DIR }}/relative/path`` for a local cube, the URL itself otherwise."""
    s = os.fspath(cube)
    if "://" in s:
        return s
    rel = os.path.relpath(Path(s).resolve(), catalog.resolve().parent)
    return "{{ CATALOG_DIR }}/" + Path(rel).as_posix()


def register_entry(
    catalog: str | os.PathLike[str],
    entry: str,
    *,
    layer: str,
    cube: str | os.PathLike[str],
    crs: str,
    description: str = "",
    catalog_crs: str | None = None,
) -> Path:
    """Add (or replace) entry ``entry`` pointing at ``cube`` in ``catalog``; create it if needed.

    Parameters
    ----------
    catalog : path
        The catalog YAML file.
    entry : str
        Entry name (``satellite``, say).
    layer : str
        The layer the cube holds.
    cube : path or URL
        The cube; local paths are written relative to the catalog's folder.
    crs : str
        The CRS the entry must have (``metadata.crs``).
    description : str
        Entry description.
    catalog_crs : str, optional
        ``metadata.kgml_grid.crs`` of a new catalog (the target grid's CRS); default ``crs``.

    Raises
    ------
    IngestError
        If ``catalog`` exists but is not a valid kgml_grid catalog.
    """
    path = Path(catalog)
    spec = {
        "layer": layer,
        "path": entry_urlpath(cube, path),
        "description": description,
        "crs": crs,
    }
    text = catalog_yaml({entry: spec}, crs=catalog_crs or crs, description=DESCRIPTION)
    if path.exists():
        try:
            cat = open_catalog(path)
        except CatalogError as e:
            raise IngestError(f"{path}: cannot register entry {entry!r}: {e}") from None
        raw = add_entry(dict(cat.raw), entry, spec, crs=cat.crs or catalog_crs or crs)
        text = yaml.safe_dump(raw, sort_keys=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    write_catalog(path, text)
    try:
        open_catalog(path)
    except CatalogError as e:  # pragma: no cover - catalog_yaml output always parses
        raise IngestError(f"{path}: the updated catalog does not parse: {e}") from None
    return path
