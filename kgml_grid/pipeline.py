"""The main job, end to end, as one library call (the CLI's ``kgml-grid demo`` wraps it).

Steps: generate the synthetic world; open every layer through the catalog (validated)
and every tower through the FLUXNET reader, write a PNG overview; pre-train the KGML
model on the world's truth; fine-tune it on real FLUXNET towers (US-Ne1) when given;
evaluate on held-out pixels and held-out tower years.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kgml_grid.catalog import open_catalog
from kgml_grid.synth import generate_world


@dataclass
class DemoResult:
    """What the main job produced."""

    out: Path
    catalog: Path
    overview: Path
    summary: str
    timings: dict[str, float] = field(default_factory=dict)
    model: Path | None = None
    finetuned: Path | None = None
    report: dict[str, Any] | None = None


def summarize_layers(layers: dict) -> str:  # type: ignore[type-arg]
    """One line per layer: dims, variables with units, chunking and CRS."""
    from kgml_grid.cubes import grid_of

    lines = []
    for name, ds in layers.items():
        g = grid_of(ds, layer=name)
        dims = ", ".join(f"{d}={n}" for d, n in ds.sizes.items())
        chunks = ", ".join(f"{d}={c[0]}" for d, c in ds.chunks.items())
        units = ", ".join(
            f"{v} [{ds[v].attrs.get('units')}]" for v in ds.data_vars if v != "spatial_ref"
        )
        lines.append(
            f"  {name:<9} ({dims}) chunks ({chunks}) {g.crs.split(',')[0][:40]}...\n      {units}"
        )
    return "\n".join(lines)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    preset: str = "demo",
    seed: int = 0,
    fluxnet: Sequence[str | Path] = (),
    train_minutes: float | None = 3.5,
    epochs: int = 30,
    train: bool = True,
    upscale_start: str | bool | None = "auto",
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> DemoResult:
    """Generate the demo world, open everything, train, fine-tune and evaluate.

    Parameters
    ----------
    fluxnet : paths
        Real FLUXNET DD files to fine-tune on (their last two full years held out).
    train_minutes : float or None
        Wall-clock budget of pre-training (the main job must fit in 10 minutes on
        2 cores); None trains until early stopping.
    train : bool
        False stops after the data steps.
    upscale_start : str, None, 'auto' or False
        First day of the upscaling run over the whole domain (None: the whole record;
        'auto': 1 January three years before the end, which keeps the main job within
        10 minutes on 2 cores; False: no upscaling).
    workers : int
        Dask worker processes of the local cluster.
    overwrite : bool
        Replace an existing ``out``: only a demo run kgml_grid wrote, holding nothing
        else (:func:`kgml_grid.outputs.prepare_target`); ``out`` must not be, contain or
        lie inside a FLUXNET file.
    """
    from kgml_grid.fluxnet import read_fluxnet_dd
    from kgml_grid.outputs import input_paths, prepare_target
    from kgml_grid.plots import world_overview

    out = prepare_target(
        out, kind="demo", inputs=input_paths("the FLUXNET file", fluxnet), overwrite=overwrite
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    info = generate_world(out / "world", preset=preset, seed=seed, progress=progress)
    timings["generate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cat = open_catalog(info.catalog)
    layers = cat.open_all()
    towers = {}
    for path in cat.towers():
        ds = read_fluxnet_dd(path)
        towers[str(ds.attrs.get("site_id", path.stem))] = ds
    timings["open_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    overview = world_overview(
        layers, out / "overview.png", towers=towers, title=info.summary().split(":")[0]
    )
    timings["overview_s"] = time.perf_counter() - t0
    text = [
        info.summary(),
        cat.describe(),
        "layers (dask-backed, validated against the schema):",
        summarize_layers(layers),
        f"towers: {', '.join(towers)}",
        f"overview: {overview}",
    ]
    res = DemoResult(out, info.catalog, overview, "", timings)
    if train:
        _train_steps(res, text, fluxnet=fluxnet, train_minutes=train_minutes, epochs=epochs,
                     seed=seed, progress=progress)  # fmt: skip
        if upscale_start is not False:
            _upscale_step(res, text, start=upscale_start, workers=workers, progress=progress)
    res.summary = "\n".join(text)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    return res


def _train_steps(
    res: DemoResult,
    text: list[str],
    *,
    fluxnet: Sequence[str | Path],
    train_minutes: float | None,
    epochs: int,
    seed: int,
    progress: bool,
) -> None:
    from kgml_grid.evaluate import evaluate, format_report
    from kgml_grid.train import FinetuneConfig, TrainConfig, finetune, pretrain

    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, lr_step=6, patience=4, seed=seed,
                      max_minutes=train_minutes)  # fmt: skip
    tr = pretrain(res.catalog, res.out / "model_pretrained", cfg, progress=progress)
    res.timings["pretrain_s"] = time.perf_counter() - t0
    res.model = tr.model_dir
    text.append(f"pre-trained: {tr.summary()}")
    model = tr.model_dir
    if fluxnet:
        t0 = time.perf_counter()
        ft = finetune(
            tr.model_dir,
            fluxnet,
            res.out / "model_finetuned",
            FinetuneConfig(seed=seed),
            progress=progress,
        )
        res.timings["finetune_s"] = time.perf_counter() - t0
        res.finetuned = ft.model_dir
        text.append(f"fine-tuned: {ft.summary()}")
        model = ft.model_dir
    t0 = time.perf_counter()
    rep = evaluate(tr.model_dir, res.out / "eval_grid", catalog=res.catalog)
    if fluxnet:
        rep_t = evaluate(model, res.out / "eval_towers", fluxnet=fluxnet, baseline=tr.model_dir)
        rep = {**rep, **{k: v for k, v in rep_t.items() if k.startswith("towers")}}
    res.timings["evaluate_s"] = time.perf_counter() - t0
    res.report = rep
    text.append(
        "evaluation (pre-trained model on held-out pixels; fine-tuned vs pre-trained on towers):"
    )
    text.append(format_report(rep))


def _upscale_step(
    res: DemoResult, text: list[str], *, start: str | None, workers: int, progress: bool
) -> None:
    from kgml_grid.execute import upscale
    from kgml_grid.maps import annual_maps

    model = res.finetuned or res.model
    assert model is not None
    if start == "auto":
        import xarray as xr

        last = xr.open_zarr(res.catalog.parent / "satellite.zarr", consolidated=False)[
            "time"
        ].values[-1]
        start = f"{int(str(last)[:4]) - 2}-01-01"
    t0 = time.perf_counter()
    up = upscale(res.catalog, model, res.out / "upscaled.zarr", start=start, cluster="local",
                 n_workers=workers, overwrite=True, progress=progress)  # fmt: skip
    res.timings["upscale_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = annual_maps(up.out, res.out / "maps")
    res.timings["maps_s"] = time.perf_counter() - t0
    text.append(up.summary())
    text.extend(f"map: {p}" for p in maps)
