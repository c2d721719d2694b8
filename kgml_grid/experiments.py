"""The transfer experiment: does knowledge guidance help when reality differs from the model?

World A is the process model we pre-train on; world B, the same simulator with
perturbed parameters (:data:`kgml_grid.synth.PERTURBED_B`) and other weather, stands
for reality. Only a few noisy towers of B are observed (NEE and Reco). We compare, on
B's truth at held-out pixels:

1. KGML pre-trained on A, fine-tuned on B's towers;
2. a plain GRU trained on B's towers alone;
3. a plain GRU pre-trained on A, fine-tuned on B's towers;

plus, for reference, both pre-trained models without fine-tuning.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kgml_grid import schema
from kgml_grid.checkpoint import Normalizer, fit_norm, resolve_device, save_checkpoint
from kgml_grid.evaluate import _fluxes, metrics
from kgml_grid.model import ModelConfig, build_model
from kgml_grid.samples import SplitSpec, grid_series, make_split, tower_series
from kgml_grid.synth import PERTURBED_B, generate_world, load_world_params
from kgml_grid.train import (
    I_GPP,
    I_NEE,
    FinetuneConfig,
    TrainConfig,
    _jsonable,
    finetune_series,
    load_for_eval,
    load_towers,
    predict,
    pretrain,
)  # fmt: skip


def _tower_norm(series: Any) -> dict[str, tuple[float, float]]:
    """Normalisation from tower data only (for the model that never sees world A).

    Ra and Rh are not observed at towers: each is scaled as half of the observed Reco.
    """
    from kgml_grid.features import FEATURE_INDEX

    data = {f: series.x[..., FEATURE_INDEX[f]] for f in schema.FEATURES}
    data["nee"] = series.y[..., I_NEE]
    data["gpp"] = series.y[..., I_GPP]
    norm = fit_norm(data)
    reco = series.reco[np.isfinite(series.reco)]
    norm["ra"] = norm["rh"] = (float(reco.mean() / 2), float(reco.std() / 2))
    norm["yield"] = (0.0, 1.0)
    return norm


def transfer_experiment(
    out: str | Path,
    *,
    preset: str = "demo",
    seed: int = 0,
    n_towers: int = 4,
    train: TrainConfig | None = None,
    tune: FinetuneConfig | None = None,
    eval_pixels: int = 300,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the whole experiment under ``out``; returns (and writes) the result table.

    An existing ``out`` needs ``overwrite`` and is replaced only when it is a transfer
    experiment kgml_grid wrote (:func:`kgml_grid.outputs.prepare_target`).
    """
    from kgml_grid.outputs import prepare_target

    t0 = time.perf_counter()
    out = prepare_target(out, kind="transfer", overwrite=overwrite)
    train = train or TrainConfig()
    tune = replace(tune or FinetuneConfig(), gpp_weight=0.0)  # towers give NEE and Reco only
    wa = generate_world(out / "world_A", preset=preset, seed=seed, progress=progress)
    pfile = out / "world_B_params.json"
    pfile.write_text(json.dumps(PERTURBED_B, indent=2))
    wb = generate_world(out / "world_B", preset=preset, seed=seed + 1, n_towers=n_towers,
                        params=load_world_params(pfile), progress=progress)  # fmt: skip
    models: dict[str, Path] = {}
    for arch in ("kgml", "gru"):
        res = pretrain(
            wa.catalog, out / f"{arch}_pretrained_A", replace(train, arch=arch), progress=progress
        )
        models[f"{arch}_pretrained_A"] = res.model_dir
    towers = load_towers(wb.towers)
    from kgml_grid.train import mask_low_quality

    towers = [mask_low_quality(ds, tune.qc_threshold) for ds in towers]
    tseries = tower_series(towers)
    device = resolve_device(tune.device)
    splits: dict[str, Any] = {}
    for arch in ("kgml", "gru"):
        ck = load_for_eval(models[f"{arch}_pretrained_A"], device=str(device))
        ref = build_model(ck.config).to(device)
        ref.load_state_dict(ck.model.state_dict())
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        model = ck.model.train()
        hist, split = finetune_series(
            model, ck.normalizer, tseries, tune, reference=ref, progress=progress
        )
        d = prepare_target(out / f"{arch}_pretrained_A_finetuned_B", kind="model")
        save_checkpoint(model.cpu(), d, config=ck.config, features=ck.features, units=ck.units, norm=ck.norm,
                        provenance={"stage": "transfer finetune", "history": hist, "split": split})  # fmt: skip
        models[f"{arch}_pretrained_A_finetuned_B"] = d
        splits[arch] = split
    # GRU on B's towers alone: fresh weights, normalisation from the towers
    torch.manual_seed(seed)
    norm = _tower_norm(tseries)
    cfg = ModelConfig(
        arch="gru", n_features=len(schema.FEATURES), hidden=train.hidden, dropout=train.dropout
    )
    scratch = build_model(cfg).to(device)
    hist, split = finetune_series(
        scratch, Normalizer(norm), tseries, tune, progress=progress, from_scratch=True
    )
    d = prepare_target(out / "gru_towers_B_only", kind="model")
    save_checkpoint(scratch.cpu(), d, config=cfg, features=schema.FEATURES, units=schema.feature_units(),
                    norm=norm, provenance={"stage": "towers only", "history": hist, "split": split})  # fmt: skip
    models["gru_towers_B_only"] = d

    # evaluate every model on B's truth at held-out pixels (pixels never used as towers)
    from kgml_grid.catalog import open_catalog

    layers = open_catalog(wb.catalog).open_all()
    bsplit = make_split(layers, SplitSpec(seed=seed + 7, max_test_pixels=eval_pixels))
    series = grid_series(layers, bsplit.test_pixels)
    first = series.time.year > series.time[0].year  # skip the first year (spin-up from zero state)
    truth = _fluxes(series.y)
    rows: dict[str, Any] = {}
    for name, path in models.items():
        ck = load_for_eval(path)
        daily, _ = predict(ck.model, ck.normalizer, series)
        pred = _fluxes(daily)
        rows[name] = {
            v: metrics(pred[v][:, first], truth[v][:, first]) for v in ("ra", "rh", "reco", "nee")
        }
    result = {
        "command": " ".join(sys.argv) if sys.argv and "kgml-grid" in sys.argv[0] else "kgml_grid.experiments.transfer_experiment",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.python_version()}, torch {torch.__version__}",
        "preset": preset, "seed": seed, "n_towers": len(wb.towers),
        "world_B_params": PERTURBED_B, "eval_pixels": int(series.n),
        "tower_split": {k: {kk: vv for kk, vv in v.items() if kk != "stopped"} for k, v in splits.items()},
        "train_config": _jsonable(asdict(train)), "finetune_config": _jsonable(asdict(tune)),
        "models": {k: str(v) for k, v in models.items()}, "results": rows,
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    (out / "transfer.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "transfer.md").write_text(format_transfer(result))
    return result


_LABELS = {
    "kgml_pretrained_A_finetuned_B": "KGML, pre-trained on A + fine-tuned on B towers",
    "gru_towers_B_only": "GRU, trained on B towers alone",
    "gru_pretrained_A_finetuned_B": "GRU, pre-trained on A + fine-tuned on B towers",
    "kgml_pretrained_A": "(reference) KGML pre-trained on A, no fine-tuning",
    "gru_pretrained_A": "(reference) GRU pre-trained on A, no fine-tuning",
}


def format_transfer(result: dict[str, Any]) -> str:
    """Markdown table of the transfer experiment."""
    lines = [
        f"# Transfer experiment ({result['preset']} preset, seed {result['seed']})",
        "",
        f"World B truth at {result['eval_pixels']} held-out pixels, all years after the first; "
        f"{result['n_towers']} noisy towers of B (NEE and Reco) for fine-tuning.",
        "",
        "| model | Ra R2 | Rh R2 | Reco R2 | NEE R2 | Ra RMSE | Rh RMSE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in _LABELS.items():
        r = result["results"].get(key)
        if r:
            lines.append(
                f"| {label} | {r['ra']['r2']:.3f} | {r['rh']['r2']:.3f} | {r['reco']['r2']:.3f} | "
                f"{r['nee']['r2']:.3f} | {r['ra']['rmse']:.3f} | {r['rh']['rmse']:.3f} |"
            )
    lines += ["", f"Command: `{result['command']}`", f"Machine: {result['machine']}",
              f"Wall time: {result['seconds']:.0f} s"]  # fmt: skip
    return "\n".join(lines) + "\n"
