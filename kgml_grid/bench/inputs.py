"""What a benchmark runs on: the world's catalog, a random checkpoint, and the bbox of
a pixel window."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["catalog_path", "make_bench_checkpoint", "window_bbox"]


def catalog_path(world: str | Path) -> Path:
    """The catalog of ``--world``: the YAML itself, or ``catalog.yaml`` in the folder.

    Raises
    ------
    FileNotFoundError
        Naming ``--world`` and what was expected.
    """
    p = Path(world)
    if p.is_dir():
        p = p / "catalog.yaml"
    if not p.is_file():
        raise FileNotFoundError(
            f"--world {world}: no catalog (expected a catalog YAML or a folder holding catalog.yaml)"
        )
    return p


def make_bench_checkpoint(catalog: str | Path, path: str | Path, *, hidden: int = 64, seed: int = 0,
                          max_pixels: int = 400) -> Path:  # fmt: skip
    """A randomly initialised KGML checkpoint with normalisation statistics from a
    sample of pixels (:func:`kgml_grid.checkpoint.fit_norm`); speed does not depend on
    training.

    Parameters
    ----------
    catalog : path
        Catalog of the world; its ``truth`` layer gives the target statistics when
        present (else unit statistics).
    hidden : int
        Hidden size (64 is the reference architecture).
    max_pixels : int
        About this many pixels are sampled on a regular lattice.
    """
    import dask
    import torch

    from kgml_grid.catalog import open_catalog
    from kgml_grid.checkpoint import fit_norm, save_checkpoint
    from kgml_grid.features import assemble, pixel_inputs, pixel_targets
    from kgml_grid.model import DAILY_TARGETS, ModelConfig, build_model
    from kgml_grid.schema import FEATURES, feature_units

    layers = open_catalog(catalog).open_all()
    ny, nx = layers["satellite"].sizes["y"], layers["satellite"].sizes["x"]
    step = max(1, math.ceil(math.sqrt(ny * nx / max_pixels)))
    r, c = (
        a.ravel()
        for a in np.meshgrid(np.arange(0, ny, step), np.arange(0, nx, step), indexing="ij")
    )
    with dask.config.set(scheduler="threads"):
        t, daily, soil, cby = pixel_inputs(layers, r, c)
        x, _ = assemble(time=t, daily=daily, soil=soil, crop_by_year=cby)
        data: dict[str, Any] = {f: x[..., i] for i, f in enumerate(FEATURES)}
        if "truth" in layers:
            y, yy = pixel_targets(layers["truth"], r, c)
            data.update({n: y[..., i] for i, n in enumerate(DAILY_TARGETS)})
            data["yield"] = yy
    norm: dict[str, Any] = fit_norm(data)
    for n in (*DAILY_TARGETS, "yield"):
        norm.setdefault(n, (0.0, 1.0))
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="kgml", n_features=len(FEATURES), hidden=hidden)
    save_checkpoint(build_model(cfg), path, config=cfg, features=FEATURES, units=feature_units(),
                    norm=norm, provenance={"note": "randomly initialised, for benchmarks"})  # fmt: skip
    return Path(path)


def window_bbox(grid: Any, window: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """A bbox holding the centres of pixels ``rows iy0:iy1, columns ix0:ix1``."""
    iy0, iy1, ix0, ix1 = window
    return (float(grid.x[ix0]), float(grid.y[iy1 - 1]), float(grid.x[ix1 - 1]), float(grid.y[iy0]))
