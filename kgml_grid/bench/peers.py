"""The peers: what a user would write without this project (``xarray.map_blocks`` with
the model loaded in each block; a single-process, xbatcher-style patch loop)."""

from __future__ import annotations

import contextlib
import time as _time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kgml_grid.bench.ratios import rate

__all__ = ["run_peer_map_blocks", "run_peer_patch_loop"]


def _patch_outputs(
    ckpt: Any, sat: Any, stores: Mapping[str, Any], *, crop_index: Sequence[int], years: Sequence[int],
    batch: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """What a peer user writes for one spatial patch, whole time range at once: fine
    weather by nearest coarse cell, soil and crop of the patch, features of the crop
    pixels, the model in batches. Returns ``[T, ny, nx]`` per daily output."""
    import pandas as pd
    import torch

    from kgml_grid.features import SOIL_FEATURES, WEATHER_FEATURES, assemble, year_end_mask
    from kgml_grid.model import DAILY_TARGETS
    from kgml_grid.plan import DAILY_VARS

    time = pd.DatetimeIndex(sat["time"].values)
    ys, xs = sat["y"].values, sat["x"].values
    wx = stores["weather"][list(WEATHER_FEATURES)].sel(time=time).sel(y=ys, x=xs, method="nearest")
    soil = stores["soil"][list(SOIL_FEATURES)].sel(y=ys, x=xs, method="nearest")
    crop = np.asarray(
        stores["crop"]["crop_type"]
        .isel(year=list(crop_index))
        .sel(y=ys, x=xs, method="nearest")
        .values
    )
    rr, cc = np.nonzero((crop > 0).any(axis=0))
    t, ny, nx = len(time), len(ys), len(xs)
    out = {n: np.full((t, ny, nx), np.nan, dtype="float32") for n in DAILY_VARS}
    if rr.size == 0:
        return out
    daily = {k: np.asarray(wx[k].values)[:, rr, cc] for k in WEATHER_FEATURES}
    daily["gpp_sat"] = np.asarray(sat["gpp_sat"].values)[:, rr, cc]
    soil_v = {k: np.asarray(soil[k].values)[rr, cc] for k in SOIL_FEATURES}
    year_pos = {int(y): i for i, y in enumerate(years)}
    cby = {int(y): crop[year_pos[int(y)], rr, cc] for y in np.unique(time.year)}
    x, _ = assemble(time=time, daily=daily, soil=soil_v, crop_by_year=cby)
    xn = np.ascontiguousarray(ckpt.normalizer.normalize_features(x), dtype="float32")
    ye = torch.as_tensor(year_end_mask(time), device=ckpt.device)
    res = np.empty((rr.size, t, len(DAILY_TARGETS)), dtype="float32")
    with torch.inference_mode():
        for i in range(0, rr.size, batch):
            o, _ = ckpt.model(
                torch.from_numpy(xn[i : i + batch]).to(ckpt.device), None, year_end=ye
            )
            res[i : i + batch] = o["daily"].float().cpu().numpy()
    phys = ckpt.normalizer.denormalize_outputs(res)
    col = {n: i for i, n in enumerate(DAILY_TARGETS)}
    ra, rh = np.maximum(phys[..., col["ra"]], 0), np.maximum(phys[..., col["rh"]], 0)
    vals = {"ra": ra, "rh": rh, "reco": ra + rh, "nee": phys[..., col["nee"]],
            "gpp": np.maximum(phys[..., col["gpp"]], 0)}  # fmt: skip
    for n in DAILY_VARS:
        out[n][:, rr, cc] = vals[n].T
    return out


def _open_plain(path: str) -> Any:
    import xarray as xr

    return xr.open_zarr(path, consolidated=False, chunks=None)


def _peer_block(sat: Any, *, paths: Mapping[str, str], checkpoint: str, device: str,
                crop_index: Sequence[int], years: Sequence[int], batch: int) -> Any:  # fmt: skip
    """The ``xarray.map_blocks`` function of the first peer: opens the stores and loads
    the checkpoint inside each block, as users of ``map_blocks`` do."""
    import xarray as xr

    from kgml_grid.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, device=device)
    stores = {k: _open_plain(paths[k]) for k in ("weather", "soil", "crop")}
    out = _patch_outputs(ckpt, sat, stores, crop_index=crop_index, years=years, batch=batch)
    return xr.Dataset({n: (("time", "y", "x"), a) for n, a in out.items()}, coords=sat.coords)


def _sat_window(plan: Any, chunks: Mapping[str, int] | None) -> Any:
    import xarray as xr

    iy0, iy1, ix0, ix1 = plan.window
    sat = xr.open_zarr(plan.paths["satellite"], consolidated=False, chunks={} if chunks else None)
    sat = sat[["gpp_sat"]].isel(time=slice(plan.sat_t0, plan.sat_t0 + plan.n_days),
                                y=slice(iy0, iy1), x=slice(ix0, ix1))  # fmt: skip
    return sat.chunk(dict(chunks)) if chunks else sat


def run_peer_map_blocks(plan: Any, *, out: str | Path, device: str = "cpu",
                        tile: tuple[int, int] | None = None, client: Any = None) -> dict[str, Any]:  # fmt: skip
    """Peer 1: ``xarray.map_blocks`` over the satellite cube chunked in space (the plan's
    tile, or ``tile``) with time unchunked, ``template=`` given, the checkpoint loaded
    inside each block, outputs written with ``to_zarr``. Runs on ``client`` (default:
    Dask's default scheduler)."""
    import dask
    import xarray as xr

    from kgml_grid.outputs import MARKER_ATTR, remove_output
    from kgml_grid.plan import DAILY_VARS

    ty, tx = tile or (plan.tile_y, plan.tile_x)
    out = Path(out)
    remove_output(out, "scratch")  # only a scratch store of ours
    t0 = _time.perf_counter()
    sat = _sat_window(plan, {"time": -1, "y": ty, "x": tx})
    template = xr.Dataset({n: xr.zeros_like(sat["gpp_sat"], dtype="float32") for n in DAILY_VARS})
    for n in DAILY_VARS:
        template[n].encoding = {}
        template[n].attrs = {}
    years = list(plan.years)
    res = xr.map_blocks(
        _peer_block, sat, template=template,
        kwargs={"paths": dict(plan.paths), "checkpoint": plan.checkpoint, "device": device,
                "crop_index": [plan.crop_year_index[y] for y in years], "years": years,
                "batch": plan.batch_pixels},
    )  # fmt: skip
    n_tasks = len(res.__dask_graph__())
    res.attrs[MARKER_ATTR] = "scratch"
    with dask.config.set(scheduler=client) if client is not None else contextlib.nullcontext():
        res.to_zarr(out, mode="w", zarr_format=3, consolidated=False)
    wall = _time.perf_counter() - t0
    remove_output(out, "scratch")  # only a scratch store of ours
    pd_ = plan.n_crop_pixels * plan.n_days
    return {"pixel_days_per_s": round(rate(pd_, wall), 1), "wall_s": round(wall, 3),
            "tile": [ty, tx], "time_chunk": plan.n_days, "graph_tasks": n_tasks,
            "what": "xarray.map_blocks, time unchunked, template given, checkpoint loaded in each block"}  # fmt: skip


def run_peer_patch_loop(plan: Any, *, out: str | Path, threads: int, device: str = "cpu",
                        tile: tuple[int, int] | None = None,
                        max_seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Peer 2: one process loops over spatial patches (the plan's tile, or ``tile``),
    whole time range each: load the inputs, run the model, write the patch's region of
    a Zarr store, the way a user of xbatcher's ``BatchGenerator(input_dims={'y', 'x'})``
    writes it. Torch uses ``threads`` threads.

    ``max_seconds``: stop after the patch that crosses this time and report the rate
    of the patches done (``truncated``)."""
    import xarray as xr

    from kgml_grid import cubes
    from kgml_grid.checkpoint import load_checkpoint, torch_threads
    from kgml_grid.outputs import MARKER_ATTR, remove_output
    from kgml_grid.plan import DAILY_VARS

    ty, tx = tile or (plan.tile_y, plan.tile_x)
    out = Path(out)
    remove_output(out, "scratch")  # only a scratch store of ours
    with torch_threads(int(threads)):
        t0 = _time.perf_counter()
        ckpt = load_checkpoint(plan.checkpoint, device=device)
        sat = _sat_window(plan, None)
        stores = {k: _open_plain(plan.paths[k]) for k in ("weather", "soil", "crop")}
        lazy = _sat_window(plan, {"time": -1, "y": ty, "x": tx})
        template = xr.Dataset(
            {n: xr.zeros_like(lazy["gpp_sat"], dtype="float32") for n in DAILY_VARS}
        )
        for n in DAILY_VARS:
            template[n].encoding = {}
        template.attrs[MARKER_ATTR] = "scratch"
        template.to_zarr(out, mode="w", compute=False, zarr_format=3, consolidated=False)
        years = list(plan.years)
        crop_index = [plan.crop_year_index[y] for y in years]
        ny, nx = plan.grid.ny, plan.grid.nx
        patches = [(slice(y0, min(y0 + ty, ny)), slice(x0, min(x0 + tx, nx)))
                   for y0 in range(0, ny, ty) for x0 in range(0, nx, tx)]  # fmt: skip
        n_done = crop_done = 0
        for ys, xs in patches:
            o = _patch_outputs(ckpt, sat.isel(y=ys, x=xs), stores, crop_index=crop_index, years=years,
                               batch=plan.batch_pixels)  # fmt: skip
            ds = xr.Dataset({n: (("time", "y", "x"), a) for n, a in o.items()})
            cubes.write_region(ds, out, {"time": slice(0, plan.n_days), "y": ys, "x": xs})
            n_done += 1
            crop_done += int(np.isfinite(o["reco"][0]).sum())
            if max_seconds is not None and _time.perf_counter() - t0 > max_seconds:
                break
        wall = _time.perf_counter() - t0
    remove_output(out, "scratch")  # only a scratch store of ours
    pd_ = crop_done * plan.n_days
    return {"pixel_days_per_s": round(rate(pd_, wall), 1), "wall_s": round(wall, 3), "tile": [ty, tx],
            "patches": len(patches), "patches_done": n_done, "pixel_days_done": pd_,
            "truncated": n_done < len(patches), "threads": threads,
            "what": "single-process loop over spatial patches (xbatcher style): read, model, write Zarr"}  # fmt: skip
