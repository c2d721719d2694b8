"""kgml_grid: knowledge-guided ML carbon fluxes (Ra, Rh, Reco, NEE) over gridded cropland.

Intake catalogs expose every input as a chunked Zarr cube; a hierarchical GRU with a
mass-balance constraint is trained on a synthetic process-model world and fine-tuned on
FLUXNET towers; Dask workers run it over space-time chunks.
"""

from __future__ import annotations

__version__ = "0.1.0"

from kgml_grid.catalog import Catalog, open_catalog

__all__ = ["Catalog", "__version__", "open_catalog", "predict"]


def __getattr__(name: str):  # lazy: ``import kgml_grid`` stays light (no Dask graph code)
    if name == "predict":
        from kgml_grid.lazy import predict

        return predict
    raise AttributeError(f"module 'kgml_grid' has no attribute {name!r}")
