"""Shared fixtures: one tiny synthetic world per test session (a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLUXNET_DIR = Path(os.environ.get("KGML_FLUXNET_DIR", REPO.parent / "shared" / "data" / "fluxnet"))
US_NE1 = FLUXNET_DIR / "FLX_US-Ne1_FLUXNET2015_SUBSET_DD_2001-2013_1-4.csv"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory):
    """World A, tiny preset, seed 0: cubes, towers and catalog (read-only for tests)."""
    from kgml_grid.synth import generate_world

    return generate_world(
        tmp_path_factory.mktemp("world") / "tiny", preset="tiny", seed=0, progress=False
    )


@pytest.fixture(scope="session")
def us_ne1() -> Path:
    if not US_NE1.exists():
        pytest.fail(f"the real FLUXNET file is missing: {US_NE1} (set KGML_FLUXNET_DIR)")
    return US_NE1


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread in this module's process, as in each worker (robust on a busy
    machine); modules that run the engine in-process opt in with ``usefixtures``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_stale_distributed_scheduler():
    """A closed distributed Client can leave ``scheduler: dask.distributed`` in Dask's
    config; with no client active that makes every later compute fail."""
    import dask

    def clear() -> None:
        from distributed import default_client

        try:
            default_client()
        except ValueError:
            if dask.config.get("scheduler", None) in ("dask.distributed", "distributed"):
                dask.config.config.pop("scheduler", None)

    clear()
    yield
    clear()
