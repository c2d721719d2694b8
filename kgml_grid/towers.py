"""Flux towers as a set: files or folders in, checked tower Datasets out.

``finetune`` and ``evaluate`` take several FLUXNET daily files, zips or folders of them
(:func:`tower_files`); each file is read with :func:`kgml_grid.fluxnet.read_fluxnet_dd`
with its site's metadata (:func:`load_towers`: a ``--site-meta`` file is matched to its
tower by site ID), checked to be usable as observations (:func:`check_usable`: NEE
present, quality flags present when a QC threshold is asked for), and, for models with
the LAI / soil-moisture additions, given the satellite cube's series at the tower's
pixel when a cube covers it (:func:`attach_satellite`).

Everything is checked before any training starts; a bad file is refused with a message
that names it and the cause.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from kgml_grid import schema
from kgml_grid.features import SATELLITE_AT_TOWER
from kgml_grid.fluxnet import (
    _FILENAME_RE,
    _ZIP_RE,
    _require_daily,
    parse_fluxnet_filename,
    read_fluxnet_dd,
)
from kgml_grid.sites import SiteMeta, SiteMetadataError, find_site_meta, load_site_meta

__all__ = ["attach_satellite", "check_usable", "load_towers", "mask_low_quality", "tower_files"]

PathLike = str | os.PathLike[str]


def tower_files(inputs: Sequence[PathLike]) -> list[Path]:
    """The FLUXNET daily files named by ``inputs`` (files, zips or folders), in order.

    A folder contributes its FLUXNET DD CSVs and FLUXNET zip downloads (not its
    subfolders), sorted by name. Files are passed through as they are (the reader
    refuses what it cannot read, with the reason).

    Raises
    ------
    FileNotFoundError
        For a path that does not exist.
    ValueError
        For a folder with no FLUXNET daily file (saying what it holds instead), no input
        at all, or two files of one site.
    """
    if not inputs:
        raise ValueError("no tower files given (--fluxnet FILE|FOLDER ...)")
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, other = [], {}
            for f in sorted(p.iterdir()):
                m = _FILENAME_RE.match(f.name)
                if (m is not None and m["res"] == "DD") or _ZIP_RE.match(f.name):
                    found.append(f)
                elif m is not None:
                    other.setdefault(m["res"], []).append(f.name)
            if not found:
                have = "; ".join(
                    f"{len(v)} {r} file(s), e.g. {v[0]}" for r, v in sorted(other.items())
                )
                hint = " (monthly files are for evaluate --monthly FILE)" if "MM" in other else ""
                raise ValueError(
                    f"{p}: the folder holds no FLUXNET daily (DD) file "
                    f"(FLX_/AMF_<SITE>_FLUXNET..._DD_<years>_<version>.csv or its zip)"
                    f"{': it has ' + have if have else ''}{hint}"
                )
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder (--fluxnet)")
    return out


def _site_of(path: Path) -> str | None:
    m = _FILENAME_RE.match(path.name) or _ZIP_RE.match(path.name)
    return m["site"] if m else None


def _metas(
    site_meta: PathLike | SiteMeta | Sequence[PathLike | SiteMeta] | None,
) -> dict[str, tuple[SiteMeta, str]]:
    if site_meta is None:
        return {}
    items = [site_meta] if isinstance(site_meta, str | os.PathLike | SiteMeta) else list(site_meta)
    out: dict[str, tuple[SiteMeta, str]] = {}
    for item in items:
        meta = item if isinstance(item, SiteMeta) else load_site_meta(item)
        origin = "given SiteMeta" if isinstance(item, SiteMeta) else str(item)
        if meta.site_id in out:
            raise ValueError(
                f"--site-meta: two files describe site {meta.site_id!r} ({out[meta.site_id][1]}, {origin})"
            )
        out[meta.site_id] = (meta, origin)
    return out


def check_usable(ds: xr.Dataset, *, qc_threshold: float = 0.0) -> None:
    """Refuse a tower whose observations cannot be used, naming the file and the cause.

    Parameters
    ----------
    ds : Dataset
        From :func:`kgml_grid.fluxnet.read_fluxnet_dd`.
    qc_threshold : float
        The QC fraction a target day needs (``--qc``); above 0 the NEE quality column
        must be in the file and leave some day.

    Raises
    ------
    ValueError
        When NEE has no value, the QC column a threshold needs is absent or empty, or no
        day passes the threshold.
    """
    name = ds.attrs.get("source_file", "?")
    nee = ds["nee"].values
    col = ds["nee"].attrs.get("fluxnet_column", "NEE_VUT_REF")
    if not np.isfinite(nee).any():
        raise ValueError(
            f"{name}: column {col} has no value (every day is -9999 or empty): the tower gives "
            "no observation to fine-tune or evaluate on"
        )
    if qc_threshold > 0:
        qc = ds["nee_qc"]
        qname = qc.attrs.get("fluxnet_column", "NEE_VUT_REF_QC")
        if qc.attrs.get("fluxnet_column_absent"):
            raise ValueError(
                f"{name}: quality column {qname} is absent, so --qc {qc_threshold:g} cannot be "
                "applied; pass --qc 0 to use every day's NEE and Reco without a quality filter"
            )
        q = qc.values
        if not np.isfinite(q).any():
            raise ValueError(
                f"{name}: quality column {qname} has no value (every day is -9999), so --qc "
                f"{qc_threshold:g} cannot be applied; pass --qc 0 to use NEE and Reco unfiltered"
            )
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(nee) & (q >= qc_threshold)
        if not ok.any():
            raise ValueError(
                f"{name}: no day has {col} with {qname} >= {qc_threshold:g} (the best is "
                f"{np.nanmax(q):g}); lower --qc"
            )


def mask_low_quality(ds: xr.Dataset, threshold: float) -> xr.Dataset:
    """Targets (NEE, Reco, GPP) set to NaN on days whose NEE QC fraction is below ``threshold``."""
    if "nee_qc" not in ds or threshold <= 0:
        return ds
    bad = ~(ds["nee_qc"] >= threshold)  # a missing QC value fails too
    ds = ds.copy()
    for v in ("nee", "reco", "gpp"):
        ds[v] = ds[v].where(~bad)
    return ds


def _pixel_of(grid: object, lon: float, lat: float) -> tuple[int, int] | None:
    """Row and column of the cell of ``grid`` holding (lon, lat), or None outside it."""
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(grid.crs)  # type: ignore[attr-defined]
    if crs.is_geographic:
        x, y = lon, lat
    else:
        x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    col = int(np.floor((x - grid.x0) / grid.res))  # type: ignore[attr-defined]
    row = int(np.floor((grid.y0 - y) / grid.res))  # type: ignore[attr-defined]
    if 0 <= row < grid.ny and 0 <= col < grid.nx:  # type: ignore[attr-defined]
        return row, col
    return None


def attach_satellite(
    ds: xr.Dataset,
    satellite: xr.Dataset,
    features: Sequence[str],
    *,
    source: str = "satellite cube",
    sites: Sequence[str] | None = None,
) -> xr.Dataset:
    """Add the satellite cube's series of each addition of ``features`` at the tower's pixel.

    The series are stored as ``lai_satellite`` / ``soil_moisture_satellite`` on the tower's
    days (NaN where the cube has no day), with the pixel in their ``source`` attribute.
    :func:`kgml_grid.features.tower_addition_sources` decides whether they are used
    (soil moisture prefers the tower's own ``SWC_F_MDS_1``). A tower outside the cube,
    or without a location, gets none (its additions then have flag 0), and the reason in
    ``attrs["satellite_note"]``.

    Parameters
    ----------
    sites : sequence of str, optional
        The only sites the cube observes. A synthetic world's cube simulates its own
        towers only: a real tower that happens to lie inside its grid (the demo world is
        centred on US-Ne1) must not get simulated LAI.

    Raises
    ------
    ValueError
        When the cube lacks a variable an addition needs.
    """
    from kgml_grid.cubes import grid_of

    adds = schema.feature_additions(features)
    if not adds:
        return ds
    sid = str(ds.attrs.get("site_id", "?"))
    if sites is not None and sid not in sites:
        ds = ds.copy()
        ds.attrs["satellite_note"] = (
            f"the {source} is a synthetic world's and does not observe site {sid}"
        )
        return ds
    if "latitude" not in ds.attrs:
        ds = ds.copy()
        ds.attrs["satellite_note"] = "the tower has no location (site metadata)"
        return ds
    lacking = [a for a in adds if a not in satellite.data_vars]
    if lacking:
        raise ValueError(
            f"{source}: feature set {schema.feature_set_name(features)!r} needs {lacking} from the "
            f"satellite cube, which has {sorted(str(v) for v in satellite.data_vars)}"
        )
    grid = grid_of(satellite, layer="satellite")
    px = _pixel_of(grid, float(ds.attrs["longitude"]), float(ds.attrs["latitude"]))
    if px is None:
        ds = ds.copy()
        ds.attrs["satellite_note"] = f"the tower lies outside the {source}"
        return ds
    r, c = px
    times = pd.DatetimeIndex(ds["time"].values)
    ds = ds.copy()
    for a in adds:
        series = satellite[a].isel(y=r, x=c).load()
        vals = series.reindex(time=times).values.astype("float64")
        var = schema.VARIABLES[a]
        attrs = dict(var.cf_attrs())
        attrs["source"] = f"{source} at pixel row {r}, col {c} (variable {a})"
        ds[SATELLITE_AT_TOWER[a]] = xr.Variable(("time",), vals, attrs)
    return ds


def load_towers(
    paths: Sequence[PathLike],
    site_meta: PathLike | SiteMeta | Sequence[PathLike | SiteMeta] | None = None,
    *,
    qc_threshold: float = 0.0,
    check: bool = True,
    satellite: xr.Dataset | None = None,
    features: Sequence[str] = schema.FEATURES,
    satellite_source: str = "satellite cube",
    satellite_sites: Sequence[str] | None = None,
) -> list[xr.Dataset]:
    """Read and check the towers of ``paths`` (files, zips or folders; :func:`tower_files`).

    Parameters
    ----------
    paths : sequence of path-like
    site_meta : path-like, SiteMeta or a sequence of them, optional
        Site metadata matched to the towers by site ID; towers without one use the
        ``<SITE>_site.json`` next to their file or the package data.
    qc_threshold : float
        Passed to :func:`check_usable`.
    check : bool
        Run :func:`check_usable` on each tower.
    satellite : Dataset, optional
        A satellite cube; with additions in ``features`` it is sampled at each tower's
        pixel (:func:`attach_satellite`; ``satellite_sites``: the only sites it observes).

    Returns
    -------
    list of Dataset
        One per tower file, in order.

    Raises
    ------
    SiteMetadataError
        For a tower whose metadata cannot be found (the message names its file).
    ValueError
        For a file the reader refuses, an unusable tower, two files of one site, or a
        ``--site-meta`` file that describes none of the towers.
    """
    files = tower_files(paths)
    metas = _metas(site_meta)
    used: set[str] = set()
    out: list[xr.Dataset] = []
    seen: dict[str, Path] = {}
    for p in files:
        if not p.name.lower().endswith(
            ".zip"
        ):  # the name's verdict (BASE, not daily) before metadata
            _require_daily(parse_fluxnet_filename(p), p.name, "reads")
        sid = _site_of(p)
        if sid is not None and sid in seen:
            raise ValueError(
                f"{p}: a second file of site {sid} (the first is {seen[sid]}); give one per site"
            )
        meta: SiteMeta | None = None
        if sid is not None and sid in metas:
            meta = metas[sid][0]
            used.add(sid)
        elif sid is not None:
            try:
                meta = find_site_meta(sid, search_dirs=(p.parent,))
            except SiteMetadataError as e:
                raise SiteMetadataError(f"{p}: {e}") from None
        ds = read_fluxnet_dd(p, site_meta=meta)
        sid = str(ds.attrs["site_id"])
        seen[sid] = p
        if check:
            check_usable(ds, qc_threshold=qc_threshold)
        if satellite is not None:
            ds = attach_satellite(
                ds, satellite, features, source=satellite_source, sites=satellite_sites
            )
        out.append(ds)
    unused = [origin for s, (_, origin) in metas.items() if s not in used]
    if unused:
        raise ValueError(
            f"--site-meta {', '.join(unused)}: describes no tower given (towers: {', '.join(seen)})"
        )
    return out


def satellite_of(catalog: PathLike | None) -> tuple[xr.Dataset | None, str, list[str] | None]:
    """The satellite cube of a catalog, how to name it, and the sites it observes.

    For a synthetic world's catalog (``metadata.kgml_grid.world``) those are the world's
    own towers; for any other catalog, None (every tower inside it). ``(None, "", None)``
    without a catalog.
    """
    if catalog is None:
        return None, "", None
    from kgml_grid.catalog import open_catalog

    cat = open_catalog(catalog)
    entry = cat.entry_for_layer("satellite")
    sites = None
    if cat.meta.get("world") is not None:
        sites = [s for s in (_site_of(p) for p in cat.towers()) if s is not None]
    return cat.open(entry), f"satellite cube {cat.path}:{entry}", sites


def tower_ids(towers: Sequence[xr.Dataset]) -> list[str]:
    """Site IDs of tower Datasets, in order."""
    return [str(ds.attrs.get("site_id", f"tower{i}")) for i, ds in enumerate(towers)]


def by_site(towers: Sequence[xr.Dataset]) -> Mapping[str, xr.Dataset]:
    """Site ID -> Dataset."""
    return dict(zip(tower_ids(towers), towers, strict=True))
