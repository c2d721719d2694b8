"""Lazy predictions: the upscaling as a Dask-backed :class:`xarray.Dataset` (issue 14).

:func:`predict` plans a run exactly as ``kgml-grid upscale`` does
(:func:`kgml_grid.plan.make_plan`) and returns its outputs (``ra``, ``rh``, ``reco``,
``nee``, ``gpp`` daily, ``yield`` yearly) as lazy Dask arrays, without writing a store.
Each chunk of the arrays is one block of the plan, computed by the engine's own
:func:`kgml_grid.execute.compute_block`; a tile's blocks are chained through the state
the previous time chunk returns (the GRU and gap-fill state), so any time chunking gives
the values of the whole run, and the result equals the upscaled store of the same plan.
Tiles without crop are NaN without any task. Building the Dataset reads metadata and
the crop layer (the plan) and computes nothing.

A notebook can go ``predict(...) -> budgets(...) -> .compute()``, or ``.to_zarr()``
the result. On a distributed cluster the model lives on the workers: pass the
``client`` (its workers get the model plugin, :func:`kgml_grid.worker.register_model`);
without one, tasks load the checkpoint once per process (threaded scheduler).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from kgml_grid.execute import BlockTask, TileTask, _block_task, _tile_tasks, compute_block
from kgml_grid.plan import DAILY_VARS, Plan, make_plan

__all__ = ["block_graph", "predict", "predict_plan"]


def _compute(
    bt: BlockTask, tt: TileTask, prev: Any, perturb: Mapping[str, Any] | None
) -> tuple[Any, Any]:
    """One block (the engine's :func:`compute_block`), optionally with perturbed inputs."""
    if perturb:
        return compute_block(tt, bt, prev, perturb=perturb)
    return compute_block(tt, bt, prev)


def _daily(result: tuple[Any, Any], name: str) -> np.ndarray:
    return result[0].daily[name]


def _yearly(result: tuple[Any, Any]) -> np.ndarray:
    return result[0].yearly


def _year_ends(plan: Plan) -> list[list[int]]:
    """Per time chunk, the indices (in ``plan.years``) of the years ending in it."""
    time = plan.time
    ends = np.flatnonzero((time.month == 12) & (time.day == 31))
    out: list[list[int]] = []
    for t0, t1 in plan.time_bounds:
        out.append([int(time[i].year) - plan.years[0] for i in ends if t0 <= i < t1])
    return out


def block_graph(
    plan: Plan, *, perturb: Mapping[str, Any] | None = None, token: str | None = None
) -> tuple[dict[Any, Any], dict[tuple[int, int, int], Any]]:
    """The raw Dask graph of a plan's blocks: one task per block, chained per tile.

    Returns
    -------
    graph : dict
        Dask graph: one data task per crop tile (its :class:`TileTask`) and one task per
        block returning ``(BlockOutput, State)``.
    keys : dict
        ``(chunk, ty, tx)`` -> the key of the block's task.
    """
    run_id = token or uuid.uuid4().hex[:12]
    tiles = _tile_tasks(plan, None, run_id, plan.crop_tiles)
    graph: dict[Any, Any] = {}
    keys: dict[tuple[int, int, int], Any] = {}
    pert = dict(perturb) if perturb else None
    for t, task in tiles.items():
        tkey = (f"kgml-predict-tile-{run_id}", *t)
        graph[tkey] = task
        prev: Any = None
        for key in plan.blocks:
            if key.tile != t:
                continue
            bkey = (f"kgml-predict-block-{run_id}", key.chunk, *t)
            state = None if prev is None else (_state_of, prev)
            graph[bkey] = (_compute, _block_task(plan, key), tkey, state, pert)
            keys[(key.chunk, *t)] = bkey
            prev = bkey
    return graph, keys


def _state_of(result: tuple[Any, Any]) -> Any:
    return result[1]


def predict_plan(
    plan: Plan,
    *,
    perturb: Mapping[str, Any] | None = None,
    client: Any = None,
    device: str = "auto",
) -> xr.Dataset:
    """The plan's outputs as a lazy Dataset (see the module docstring).

    Parameters
    ----------
    plan : Plan
    perturb : mapping, optional
        Input perturbations, e.g. ``{"tair": ("add", 1.0)}`` (see
        :func:`kgml_grid.execute.compute_block`): the same blocks on perturbed inputs.
    client : distributed.Client, optional
        Register the model on its workers (needed before computing there).
    device : str
        Worker device preference for the model plugin.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    if client is not None:
        from kgml_grid.worker import register_model

        register_model(client, plan.checkpoint, plan.checkpoint_hash, device=device)
    token = uuid.uuid4().hex[:12]
    graph, keys = block_graph(plan, perturb=perturb, token=token)
    ds = plan.template()
    ny_b, nx_b = plan.y_chunks, plan.x_chunks
    for name in DAILY_VARS:
        aname = f"kgml-predict-{name}-{token}"
        layer: dict[Any, Any] = {}
        for c, (t0, t1) in enumerate(plan.time_bounds):
            for ty, ny in enumerate(ny_b):
                for tx, nx in enumerate(nx_b):
                    bkey = keys.get((c, ty, tx))
                    if bkey is None:  # a tile without crop: NaN, no block
                        layer[(aname, c, ty, tx)] = (np.full, (t1 - t0, ny, nx), np.nan, "float32")
                    else:
                        layer[(aname, c, ty, tx)] = (_daily, bkey, name)
        # one layer holding the blocks too: arrays of a Dataset share the block keys
        hlg = HighLevelGraph.from_collections(aname, {**graph, **layer}, dependencies=())
        arr = da.Array(hlg, aname, chunks=(plan.time_chunks, ny_b, nx_b), dtype="float32")
        ds[name] = ds[name].copy(data=arr)
    ds["yield"] = ds["yield"].copy(data=_yield_array(plan, keys, graph, token))
    ds.attrs["kgml_lazy"] = "kgml_grid.predict: computed on demand, no store written"
    return ds


def _yield_array(
    plan: Plan, keys: Mapping[tuple[int, int, int], Any], graph: Mapping[Any, Any], token: str
) -> Any:
    """Yearly yield ``[Y, y, x]``: year chunks are the years ending in each time chunk
    (a year with no end in the run, the last of a run ending before 31 December, is NaN)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    aname = f"kgml-predict-yield-{token}"
    per_chunk = _year_ends(plan)
    covered = {i for idx in per_chunk for i in idx}
    groups: list[tuple[int | None, int]] = [(c, len(idx)) for c, idx in enumerate(per_chunk) if idx]
    missing = [i for i in range(len(plan.years)) if i not in covered]
    if missing:  # only the last year can lack its year end
        groups.append((None, len(missing)))
    layer: dict[Any, Any] = {}
    for j, (c, n) in enumerate(groups):
        for ty, ny in enumerate(plan.y_chunks):
            for tx, nx in enumerate(plan.x_chunks):
                bkey = None if c is None else keys.get((c, ty, tx))
                if bkey is None:
                    layer[(aname, j, ty, tx)] = (np.full, (n, ny, nx), np.nan, "float32")
                else:
                    layer[(aname, j, ty, tx)] = (_yearly, bkey)
    hlg = HighLevelGraph.from_collections(aname, {**graph, **layer}, dependencies=())
    chunks = (tuple(n for _, n in groups), plan.y_chunks, plan.x_chunks)
    return da.Array(hlg, aname, chunks=chunks, dtype="float32")


def predict(
    catalog_or_plan: Any,
    model: str | Path | None = None,
    *,
    start: Any = None,
    end: Any = None,
    bbox: Any = None,
    bbox_crs: str | None = None,
    chunks: str | Mapping[str, Any] | None = None,
    batch_pixels: int | None = None,
    perturb: Mapping[str, Any] | None = None,
    client: Any = None,
    device: str = "auto",
) -> xr.Dataset:
    """Lazy, Dask-backed predictions of a checkpoint over a catalog's crop pixels.

    Parameters
    ----------
    catalog_or_plan : path, :class:`~kgml_grid.catalog.Catalog` or :class:`~kgml_grid.plan.Plan`
        The catalog of the cubes (planned with ``model`` and the other arguments, as
        ``kgml-grid upscale`` does) or a finished plan (the other arguments must then
        be left out).
    model : path
        Checkpoint directory (not with a plan).
    start, end, bbox, bbox_crs, chunks, batch_pixels
        See :func:`kgml_grid.plan.make_plan`.
    perturb, client, device
        See :func:`predict_plan`.

    Returns
    -------
    xarray.Dataset
        ``ra``, ``rh``, ``reco``, ``nee``, ``gpp`` ``(time, y, x)`` and ``yield``
        ``(year, y, x)``, chunked like the plan (one chunk per block), with the
        upscaled store's attributes. Nothing has been computed.

    Raises
    ------
    PlanError
        As :func:`kgml_grid.plan.make_plan`, before anything is computed.
    """
    if isinstance(catalog_or_plan, Plan):
        given = {"model": model, "start": start, "end": end, "bbox": bbox, "bbox_crs": bbox_crs,
                 "chunks": chunks, "batch_pixels": batch_pixels}  # fmt: skip
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise TypeError(
                f"predict(plan, ...): {', '.join(extra)} are the plan's; make a new plan instead"
            )
        plan = catalog_or_plan
    else:
        if model is None:
            raise TypeError("predict(catalog, model, ...): give the checkpoint directory as model")
        plan = make_plan(catalog_or_plan, model, start=start, end=end, bbox=bbox, bbox_crs=bbox_crs,
                         chunks=chunks, batch_pixels=batch_pixels)  # fmt: skip
    return predict_plan(plan, perturb=perturb, client=client, device=device)
