"""The life of an output cube: create it (or extend it), fill it tile by tile, finish it.

Built on :func:`kgml_grid.cubes.init_store`, :func:`~kgml_grid.cubes.write_region` and
:func:`~kgml_grid.cubes.mark_complete`, so nothing half-written ever looks complete:

* a **new** cube is written into a hidden sibling folder (``.NAME.partial``), marked
  complete, and only then renamed onto its final path; on any error the partial folder
  is removed and the final path is untouched;
* an **append** marks the existing cube incomplete, grows it along ``time`` (or ``year``)
  with :meth:`xarray.Dataset.to_zarr` (``append_dim``, ``compute=False``), lets the caller
  write the new regions and marks it complete again; on any error the arrays are shrunk
  back to their old length and the cube is marked complete as it was.

Output cubes are local folders (rename and shrink need a file system); catalogs can still
point at copies on object storage (see ``docs/ingest.md``).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from kgml_grid import cubes, outputs
from kgml_grid.grid import GridSpec, _same_crs
from kgml_grid.ingest.errors import IngestError


def partial_path(path: Path) -> Path:
    """Where a new cube is written before it is complete."""
    return path.with_name(f".{path.name}.partial")


def check_new(
    path: str | os.PathLike[str], *, overwrite: bool, inputs: Iterable[object] = ()
) -> Path:
    """Refuse an existing output unless ``overwrite``, and then only a cube kgml_grid
    wrote; refuse an output that is, contains or lies inside one of ``inputs`` (source
    files, folders or globs). Called before any file is read; writes nothing."""
    p = Path(path)
    if "://" in os.fspath(path):
        raise IngestError(
            f"{path}: ingestion writes local cubes; write it here and copy it to object storage "
            "(the catalog can point there, see docs/ingest.md)"
        )
    outputs.check_target(
        p, kind="cube", inputs=outputs.input_paths("the source", inputs, folder_files=True), overwrite=overwrite,
        option="--out", error=IngestError,
        fix="pass overwrite=True (--overwrite) to replace it, or append=True (--append) to add to it",
    )  # fmt: skip
    return p


@contextmanager
def new_store(
    path: str | os.PathLike[str],
    template: xr.Dataset,
    chunks: Mapping[str, int],
    *,
    overwrite: bool,
) -> Iterator[Path]:
    """Create a cube from ``template``; yield the folder to write regions into.

    On normal exit the cube is marked complete and moved onto ``path`` (replacing an
    existing one when ``overwrite``); on error the partial folder is removed.
    """
    final = check_new(path, overwrite=overwrite)
    work = partial_path(final)
    outputs.remove_output(
        work, "cube", option="the partial cube", error=IngestError
    )  # a crashed run's
    final.parent.mkdir(parents=True, exist_ok=True)
    cubes.init_store(template, work, chunks)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    cubes.mark_complete(work)
    outputs.remove_output(final, "cube", error=IngestError)  # checked again: only a cube of ours
    os.replace(work, final)


def _dim_arrays(group: object, dim: str) -> list[object]:
    out = []
    for _, arr in group.arrays():  # type: ignore[attr-defined]
        names = arr.metadata.dimension_names or ()
        if dim in names:
            out.append(arr)
    return out


@contextmanager
def append_store(path: str | os.PathLike[str], template: xr.Dataset, *, dim: str) -> Iterator[int]:
    """Grow an existing complete cube along ``dim`` by ``template``; yield the old length.

    ``template`` holds the new coordinate values of ``dim`` and (lazy) data variables:
    every variable of the cube that has ``dim``. Regions from the old length on are the
    caller's to write.

    Raises
    ------
    IngestError
        If ``template`` lacks a variable of the cube, or has one the cube does not.
    """
    import zarr

    p = Path(path)
    g = zarr.open_group(str(p), mode="r+", zarr_format=3)
    old_attrs = dict(g.attrs)
    old_n = int(g[dim].shape[0])
    have = {
        name for name, arr in g.arrays()
        if dim in (arr.metadata.dimension_names or ()) and name != dim
    }  # fmt: skip
    want = {str(n) for n, v in template.data_vars.items() if dim in v.dims}
    if have != want:
        raise IngestError(
            f"{p}: cannot append: the cube holds {sorted(have)} along {dim!r} but the new data "
            f"holds {sorted(want)}; a variable cannot be added or left out by appending"
        )
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t = template.drop_vars([c for c in template.coords if dim not in template[c].dims])
    t = t[[*sorted(want)]]
    t.attrs = {
        **old_attrs,
        cubes.COMPLETE_ATTR: 0,
        "history": f"{old_attrs.get('history', '')}\n{now} appended {dim} "
        f"{np.asarray(template[dim].values)[0]}..{np.asarray(template[dim].values)[-1]} by kgml_grid.ingest".strip(),
    }
    t.to_zarr(
        p, append_dim=dim, compute=False, safe_chunks=False, zarr_format=3, consolidated=False
    )
    try:
        yield old_n
    except BaseException:
        _shrink(p, dim, old_n, old_attrs)
        raise
    cubes.mark_complete(p)


def _shrink(path: Path, dim: str, n: int, attrs: Mapping[str, object]) -> None:
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=3)
    for arr in _dim_arrays(g, dim):
        names = list(arr.metadata.dimension_names)  # type: ignore[attr-defined]
        shape = list(arr.shape)  # type: ignore[attr-defined]
        shape[names.index(dim)] = n
        arr.resize(tuple(shape))  # type: ignore[attr-defined]
    g.attrs.update(dict(attrs))


def validate_output(path: Path, layer: str, *, crs: str) -> xr.Dataset:
    """Open the finished cube the way consumers do (schema validation); refuse on failure."""
    try:
        return cubes.open_cube(path, layer, crs=crs)
    except cubes.CubeError as e:
        raise IngestError(f"{path}: the written cube does not validate: {e}") from None


@dataclass(frozen=True)
class ExistingCube:
    """What an append needs to know about the cube it extends."""

    path: Path
    grid: GridSpec
    coord: np.ndarray
    variables: tuple[str, ...]
    chunks: dict[str, int]


def existing_cube(path: str | os.PathLike[str], layer: str, *, dim: str) -> ExistingCube:
    """Open a cube to append to (validated: complete, conforming) and describe it.

    Raises
    ------
    IngestError
        If there is no cube at ``path`` or it does not validate.
    """
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{p}: no cube to append to (leave append off to create it)")
    try:
        ds = cubes.open_cube(p, layer)
    except cubes.CubeError as e:
        raise IngestError(f"{p}: cannot append to this cube: {e}") from None
    chunks: dict[str, int] = {}
    for name in ds.data_vars:
        enc = ds[name].encoding.get("chunks") or ds[name].encoding.get("preferred_chunks")
        if enc:
            chunks.update({d: int(c) for d, c in zip(ds[name].dims, enc, strict=False)})
    return ExistingCube(
        p, cubes.grid_of(ds, source=str(p), layer=layer), np.asarray(ds[dim].values),
        tuple(str(v) for v in ds.data_vars if dim in ds[v].dims), chunks,
    )  # fmt: skip


def same_grid(a: GridSpec, b: GridSpec) -> bool:
    """Whether two grids are the same cells in the same CRS."""
    return (
        _same_crs(a.crs, b.crs)
        and a.shape == b.shape
        and bool(np.allclose((a.x0, a.y0, a.res), (b.x0, b.y0, b.res), rtol=0, atol=1e-6 * a.res))
    )
