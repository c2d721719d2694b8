"""The client factory and the cluster configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kgml_grid.cluster import (
    HOUSEKEEPING,
    ClusterConfigError,
    close_client,
    housekeeping_config,
    housekeeping_env,
    kubernetes_cluster,
    load_cluster_config,
    make_client,
    process_cluster,
    slurm_cluster,
    worker_memory_limit,
)
from kgml_grid.worker import ModelPlugin, select_device, tune_malloc

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"


def test_cluster_files_parse_with_safe_load_and_name_a_kind():
    kinds = {}
    for name in ("local", "slurm", "kubernetes"):
        raw = yaml.safe_load((CLUSTER_DIR / f"{name}.yaml").read_text())
        cfg = load_cluster_config(CLUSTER_DIR / f"{name}.yaml")
        assert cfg["kind"] == raw["kind"]
        kinds[name] = cfg["kind"]
    assert kinds == {"local": "local", "slurm": "slurm", "kubernetes": "kubernetes"}
    assert (CLUSTER_DIR / "README.md").exists()
    # localhost unless configured otherwise
    local = yaml.safe_load((CLUSTER_DIR / "local.yaml").read_text())
    assert local["host"] == "127.0.0.1" and local["dashboard_address"].startswith("127.0.0.1:")


def test_specs_resolve_to_kinds(tmp_path):
    assert load_cluster_config("local") == {"kind": "local"}
    assert load_cluster_config(None) == {"kind": "local"}
    assert load_cluster_config("tcp://127.0.0.1:8786") == {
        "kind": "address",
        "address": "tcp://127.0.0.1:8786",
    }
    sf = tmp_path / "scheduler.json"
    sf.write_text("{}")
    assert load_cluster_config(str(sf)) == {"kind": "scheduler_file", "scheduler_file": str(sf)}
    assert load_cluster_config("slurm")["kind"] == "slurm"  # cluster/slurm.yaml by name
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: mesos\n")
    with pytest.raises(ClusterConfigError, match="kind 'mesos'; expected one of local, address"):
        load_cluster_config(bad)
    with pytest.raises(ClusterConfigError, match="no such file"):
        load_cluster_config(tmp_path / "missing.yaml")
    evil = tmp_path / "evil.yaml"
    evil.write_text("kind: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        load_cluster_config(evil)


def test_slurm_job_script_renders_from_the_config():
    cfg = load_cluster_config(CLUSTER_DIR / "slurm.yaml")
    cluster = slurm_cluster(cfg)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert script.startswith("#!/usr/bin/env bash")
    assert "#SBATCH -J kgml-upscale" in script and "#SBATCH -t 02:00:00" in script
    assert "#SBATCH -n 1" in script and "--cpus-per-task=4" in script
    assert "source .venv/bin/activate" in script
    assert "--nworkers 4" in script and "--nthreads 1" in script
    assert (
        "tcp://127.0.0.1:" in script
    )  # the scheduler bound to localhost: not configured otherwise
    assert "--lifetime 115m" in script
    # Dask housekeeping for one-thread compute workers, unless the prologue sets it itself
    assert script.index("export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=500ms") < script.index(
        "source .venv"
    )
    cluster = slurm_cluster(
        {**cfg, "job_script_prologue": ["export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s"]}
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "TICK__INTERVAL=1s" in script and "TICK__INTERVAL=500ms" not in script
    assert "export DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL=500ms" in script


def test_kubernetes_without_dask_kubernetes_says_what_to_install():
    pytest.importorskip("yaml")
    try:
        import dask_kubernetes  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip("dask-kubernetes is installed here")
    cfg = load_cluster_config(CLUSTER_DIR / "kubernetes.yaml")
    with pytest.raises(ImportError, match="pip install dask-kubernetes"):
        kubernetes_cluster(cfg)


def test_devices_and_plugin_carry_no_model():
    import pickle

    import torch

    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto", worker_name="worker-3") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda:0")
    plugin = ModelPlugin("/some/ckpt", "ab" * 32)
    plugin.checkpoint = object()  # type: ignore[assignment]
    restored = pickle.loads(pickle.dumps(plugin))
    assert restored.checkpoint is None and restored.path == "/some/ckpt"
    assert len(pickle.dumps(plugin)) < 1000


_FAULTS = """
import resource, sys
import numpy as np
from kgml_grid.worker import tune_malloc

def faults(n=50):
    np.ones(2**20).sum()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        np.ones(2**20).sum()  # 8 MiB, touched, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
print(int(tune_malloc()), before, faults())
"""


def test_tune_malloc_undoes_the_nannys_trim_threshold():
    import os
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        assert tune_malloc() is False
        return
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask's nanny sets
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True
    )
    ok, before, after = map(int, out.stdout.split())
    assert ok == 1
    # every 8 MiB buffer mmapped and faulted in afresh (~500 faults each with the kernel's
    # fault-around); with glibc's dynamic threshold it would be ~500 in all
    assert before > 10_000
    assert after < before / 10


@pytest.mark.cluster
def test_client_factory_against_real_processes(tmp_path, capsys):
    with process_cluster(2, directory=tmp_path, memory_limit="1GiB") as sf:
        c = make_client(str(sf))
        try:
            info = c.scheduler_info(n_workers=-1)
            assert info["address"].startswith("tcp://127.0.0.1:")
            assert sorted(w["name"] for w in info["workers"].values()) == ["worker-0", "worker-1"]
            assert all(w["nthreads"] == 1 for w in info["workers"].values())
            assert worker_memory_limit(c) == 2**30
            assert set(c.run(_housekeeping()).values()) == {
                ("500ms", "2s", "500ms")
            }  # via DASK_* variables
            address = info["address"]
        finally:
            close_client(c)
        assert "dask cluster (scheduler_file): 2 workers; dashboard:" in capsys.readouterr().err
        c = make_client(address, verbose=False)
        try:
            assert len(c.scheduler_info(n_workers=-1)["workers"]) == 2
        finally:
            close_client(c)


def _housekeeping():
    """A function for ``client.run`` (local: pickled by value, the workers need not
    import this module) returning the worker's housekeeping settings."""
    keys = tuple(HOUSEKEEPING)

    def get():
        import dask

        return tuple(dask.config.get(k) for k in keys)

    return get


def test_housekeeping_keeps_what_a_user_configured():
    import dask

    assert housekeeping_config() == HOUSEKEEPING  # nothing configured here: all of it
    with dask.config.set({"distributed.admin.tick.interval": "1s"}):
        cfg = housekeeping_config()
        assert "distributed.admin.tick.interval" not in cfg and len(cfg) == len(HOUSEKEEPING) - 1
    env = housekeeping_env({"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "2s"})
    assert env == {"DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s",
                   "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "500ms"}  # fmt: skip


@pytest.mark.cluster
def test_local_cluster_binds_to_localhost(capsys):
    c = make_client("local", n_workers=1)
    try:
        assert set(c.run(_housekeeping()).values()) == {
            ("500ms", "2s", "500ms")
        }  # the nanny passed it on
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        info = c.scheduler_info(n_workers=-1)
        assert len(info["workers"]) == 1
        assert all(w["host"] == "127.0.0.1" for w in info["workers"].values())
        assert "127.0.0.1" in c.dashboard_link
    finally:
        close_client(c)
    assert "dashboard: http://127.0.0.1:" in capsys.readouterr().err


@pytest.mark.cluster
def test_housekeeping_benchmark_runs(tmp_path):
    """``benchmarks/dask_housekeeping.py`` once, briefly (the claim in cluster/README.md)."""
    import json
    import sys

    sys.path.insert(0, str(CLUSTER_DIR.parent / "benchmarks"))
    try:
        import dask_housekeeping
    finally:
        sys.path.pop(0)
    out = tmp_path / "hk.json"
    assert dask_housekeeping.main(["--seconds", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["settings"] == HOUSEKEEPING
    for name in ("dask defaults", "HOUSEKEEPING"):
        cpu = res[name]["cpu_seconds"]
        assert set(cpu) == {
            "client process (scheduler, nannies)",
            "worker 0",
            "worker 1",
            "all processes",
        }
        assert cpu["all processes"] == pytest.approx(
            sum(v for k, v in cpu.items() if k != "all processes"), abs=0.01
        )
        assert (
            0 < cpu["all processes"] < 2 * 3
        )  # some housekeeping, and less than the 3 processes' wall time
