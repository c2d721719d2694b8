"""A real SLURM cluster: ``kgml-grid upscale --cluster slurm.yaml`` through dask-jobqueue,
with real ``sbatch`` jobs on a single-node SLURM started on this machine.

The daemons (munged, MariaDB + slurmdbd, slurmctld, slurmd) run in a private network
namespace (``unshare --net``: only ``lo`` exists there), so nothing they open is reachable
from outside this machine. The test is skipped, saying why, where SLURM cannot start
(packages missing, not root, no ``unshare``); ``.ci/run`` installs the packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from kgml_grid.localslurm import missing_requirements

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

DRIVER = Path(__file__).with_name("slurm_driver.py")
START, END, CHUNKS = "2010-01-01", "2011-12-31", "y=8,x=8,time=365"
VARS = ("ra", "rh", "reco", "nee", "gpp", "yield")
# Inside the private namespace: loopback up, plus one documentation-range address
# (TEST-NET-1) on lo, because SLURM resolves its listening address with AI_ADDRCONFIG,
# which finds no IPv4 address where only 127.0.0.1 exists. Nothing outside the namespace
# can reach either address; every daemon and client in it uses 127.0.0.1.
NETNS_SETUP = "ip link set lo up && ip addr add 192.0.2.1/32 dev lo"


def _why_not() -> str | None:
    missing = missing_requirements()
    if not shutil.which("unshare") or not shutil.which("ip"):
        missing.append("unshare and ip (util-linux, iproute2) for a private network namespace")
    if missing:
        return (
            "local SLURM cannot start here: needs "
            + "; ".join(missing)
            + " (.ci/run installs them as root)"
        )
    r = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, check=False)
    if r.returncode:
        return f"local SLURM cannot start here: unshare --net failed: {r.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def slurm_result(tiny_world, tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("slurm")
    model = make_checkpoint(tiny_world, work / "m8", hidden=8, seed=3)
    args = {"work": str(work), "catalog": str(tiny_world.catalog), "model": str(model),
            "start": START, "end": END, "chunks": CHUNKS, "result": str(work / "result.json")}  # fmt: skip
    (work / "args.json").write_text(json.dumps(args))
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        "unshare",
        "--net",
        "sh",
        "-c",
        f"{NETNS_SETUP} && exec {sys.executable} {DRIVER} {work / 'args.json'}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    if r.returncode:
        logs = sorted((work / "slurm" / "log").glob("*.log")) if (work / "slurm").exists() else []
        tails = {p.name: p.read_text(errors="replace")[-1500:] for p in logs}
        pytest.fail(f"SLURM driver failed ({r.returncode}):\n{r.stderr[-4000:]}\n{tails}")
    res = json.loads((work / "result.json").read_text())
    res["work"] = work
    res["model"] = model
    return res


def test_upscale_through_sbatch_jobs_equals_the_local_cluster(slurm_result, tiny_world, tmp_path):
    from kgml_grid.execute import upscale

    cli = slurm_result["cli"]
    assert cli["rc"] == 0, cli["stderr"]
    # real jobs: squeue saw the two workers' jobs, sacct accounted them
    assert len(cli["jobs_seen"]) >= 2, cli
    accounted = {j["id"]: j for j in slurm_result["sacct"]}
    for jid in cli["jobs_seen"]:
        assert jid in accounted, (jid, slurm_result["sacct"])
        assert accounted[jid]["name"] == "kgml-upscale"
    local = upscale(tiny_world.catalog, slurm_result["model"], tmp_path / "local.zarr", start=START,
                    end=END, chunks=CHUNKS, cluster="local", n_workers=1, progress=False)  # fmt: skip
    a = xr.open_zarr(slurm_result["work"] / "slurm_cli.zarr", consolidated=False)
    b = xr.open_zarr(local.out, consolidated=False)
    assert int(a.attrs["kgml_blocks_done"]) == local.plan.n_blocks
    for v in VARS:
        x, y = a[v].values, b[v].values
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=v)
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, equal_nan=True, err_msg=v)
    assert np.isfinite(a["ra"].values).any()


def test_adaptive_scaling_grows_and_shrinks(slurm_result):
    ad = slurm_result["adapt"]
    counts = [c for _, c in ad["counts"]]
    during = [c for t, c in ad["counts"] if t <= ad["t_done"]]
    after = [c for t, c in ad["counts"] if t > ad["t_done"]]
    assert max(during) == 2, ad  # grew from the minimum (1) to the maximum (2) with the work
    assert after and after[-1] <= 1, ad  # back to the minimum once the work was done
    assert len(ad["jobs_seen"]) >= 2 and max(counts) <= 2
    a = xr.open_zarr(slurm_result["work"] / "slurm_adapt.zarr", consolidated=False)
    b = xr.open_zarr(slurm_result["work"] / "slurm_cli.zarr", consolidated=False)
    for v in VARS:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=0, atol=1e-6, equal_nan=True)
