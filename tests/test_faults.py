"""Fault injection: the upscaling survives what real runs meet, or refuses cleanly.

* a worker process SIGKILLed mid-run (the store is identical to a clean run);
* a full disk, on a small tmpfs where this machine allows mounting one (else skipped
  with the reason), and by injecting ``OSError(ENOSPC)`` into a block's write (always):
  one line, exit code 1, then ``--resume`` gives the identical store;
* a killed client, then ``--resume`` (only the missing blocks are computed);
* a resume after an input cube was rebuilt is refused, saying what changed.

Every run here is one plan: a 14 x 17 px window of the tiny world, 2010, tiles of
7 x 9 px, 73-day time chunks (20 blocks), compared against one clean serial run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from kgml_grid import blockio
from kgml_grid.cli import main
from kgml_grid.cluster import process_cluster
from kgml_grid.errors import report
from kgml_grid.execute import (
    INPUTS_FILE,
    BlockError,
    SerialExecutor,
    completed_blocks,
    read_records,
    records_dir,
    upscale,
)
from kgml_grid.fingerprint import GROUP, compare, input_fingerprints, store_fingerprint
from kgml_grid.plan import DAILY_VARS, PlanError, make_plan
from kgml_grid.records import log_files

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VARS = (*DAILY_VARS, "yield")
START, END, CHUNKS = "2010-01-01", "2010-12-31", "y=7,x=9,time=73"
N_BLOCKS = 20


def bbox(world) -> str:
    g = world.grid
    return ",".join(str(float(v)) for v in (g.x[3], g.y[15], g.x[19], g.y[2]))


def run_kw(world) -> dict:
    return {"start": START, "end": END, "chunks": CHUNKS, "bbox": bbox(world)}


def cli_args(world, ckpt, out, *extra: str) -> list[str]:
    return ["upscale", "--catalog", str(world.catalog), "--model", str(ckpt), "--out", str(out),
            "--start", START, "--end", END, "--chunks", CHUNKS, f"--bbox={bbox(world)}", "--quiet",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8, seed=1)


@pytest.fixture(scope="module")
def clean(tiny_world, ckpt, tmp_path_factory):
    """The reference: one serial run of the plan into its own store."""
    plan = make_plan(tiny_world.catalog, ckpt, **run_kw(tiny_world))
    assert plan.n_blocks == N_BLOCKS
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    SerialExecutor().execute(plan, out)
    return xr.open_zarr(out, consolidated=False).load()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Real `dask scheduler` and two `dask worker` processes (each under its nanny)."""
    with process_cluster(2, directory=tmp_path_factory.mktemp("dask"), memory_limit="2GiB") as sf:
        yield sf


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(scheduler_file=str(cluster), timeout=60) as c:
        yield c


def assert_identical(store: Path, clean: xr.Dataset) -> None:
    ds = xr.open_zarr(store, consolidated=False)
    assert ds.attrs["kgml_complete"] == 1
    for v in VARS:
        np.testing.assert_array_equal(ds[v].values, clean[v].values, err_msg=v)


def n_done(out: Path) -> int:
    """Blocks recorded so far (the records are per-process logs, read while they grow)."""
    return len(completed_blocks(out))


def _idle(client, timeout=60):
    """Wait until the scheduler has forgotten a dead client's tasks and no worker is
    still executing one (a running task finishes even when its client is gone)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        n_sched = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        n_work = sum(client.run(lambda dask_worker: len(dask_worker.state.tasks)).values())
        if n_sched == 0 and n_work == 0:
            return
        time.sleep(0.2)
    left = client.run(
        lambda dask_worker: {str(k): ts.state for k, ts in dask_worker.state.tasks.items()}
    )
    raise AssertionError(
        f"the cluster did not go idle: {n_sched} tasks on the scheduler; on the workers {left}"
    )


# --------------------------------------------------------------------------------------
# a worker SIGKILLed mid-run
# --------------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_sigkill_of_one_worker_mid_run_gives_the_identical_store(
    tiny_world, ckpt, client, clean, tmp_path
):
    out = tmp_path / "out.zarr"
    pids = client.run(os.getpid)  # worker address -> pid of the worker process (not its nanny)
    assert len(pids) == 2
    result: dict = {}

    def run() -> None:
        try:
            result["res"] = upscale(tiny_world.catalog, ckpt, out, client=client, progress=False,
                                    **run_kw(tiny_world))  # fmt: skip
        except Exception as e:  # the run may fail a block; --resume then finishes it
            result["err"] = e

    th = threading.Thread(target=run)
    th.start()
    t_end = time.monotonic() + 120
    while n_done(out) < 3 and th.is_alive() and time.monotonic() < t_end:
        time.sleep(0.01)
    at_kill = n_done(out)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    th.join(timeout=300)
    assert not th.is_alive()
    assert 3 <= at_kill < N_BLOCKS, f"the kill came at {at_kill} of {N_BLOCKS} blocks"
    if "err" in result:
        assert isinstance(result["err"], BlockError), result["err"]
        upscale(
            tiny_world.catalog,
            ckpt,
            out,
            client=client,
            progress=False,
            resume=True,
            **run_kw(tiny_world),
        )
    assert_identical(out, clean)
    assert len(completed_blocks(out)) == N_BLOCKS
    # one completion log per worker process and run, not one file per block: the two
    # workers (and the restarted one) of the first run, the workers of the resume
    assert 1 <= len(log_files(records_dir(out))) <= 6 < N_BLOCKS
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the worker: a new process
    assert victim not in client.run(os.getpid).values()


# --------------------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; the reason it cannot be done, or None."""
    if not sys.platform.startswith("linux"):
        return f"mounting a tmpfs needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"mounting a tmpfs needs root (this process runs as uid {os.geteuid()})"
    if shutil.which("mount") is None:
        return "no mount command on this machine"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        return f"mount -t tmpfs failed here: {(r.stderr or r.stdout).strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path):
    """A 640 KiB tmpfs: room for the output store's metadata, not for its 20 blocks
    (about 1.9 MiB with the records)."""
    d = tmp_path / "small"
    d.mkdir()
    why = _mount_tmpfs(d, "640k")
    if why:
        pytest.skip(f"no small file system to fill: {why}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False, capture_output=True)


@pytest.mark.cluster
@pytest.mark.slow
def test_full_disk_fails_with_one_line_then_resume_gives_the_identical_store(
    tiny_world, ckpt, client, clean, small_disk
):
    out = small_disk / "out.zarr"
    with pytest.raises(
        BlockError, match=r"failed: no space left on the device writing .*out\.zarr"
    ) as ei:
        upscale(tiny_world.catalog, ckpt, out, client=client, progress=False, **run_kw(tiny_world))
    code, line = report(ei.value)
    assert code == 1 and "\n" not in line and "rerun with --resume" in line
    _idle(client)
    before = n_done(out)
    assert 0 < before < N_BLOCKS
    assert xr.open_zarr(out, consolidated=False).attrs["kgml_complete"] == 0
    r = subprocess.run(
        ["mount", "-o", "remount,size=64m", str(small_disk)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    res = upscale(
        tiny_world.catalog,
        ckpt,
        out,
        client=client,
        progress=False,
        resume=True,
        **run_kw(tiny_world),
    )
    assert res.already_done + res.computed == N_BLOCKS and res.already_done > 0
    assert_identical(out, clean)


@pytest.mark.slow
def test_enospc_inside_a_block_is_one_line_exit_1_then_resume_gives_the_identical_store(
    tiny_world, ckpt, clean, tmp_path, monkeypatch, capsys
):
    """The same path without a small file system: the 4th region write raises ENOSPC."""
    out = tmp_path / "out.zarr"
    real = blockio.write_region
    calls = {"n": 0}

    def full_disk(path, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(blockio, "write_region", full_disk)
    rc = main(cli_args(tiny_world, ckpt, out, "--cluster", "serial"))
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.match(
        rf"kgml-grid upscale: error: block\(time chunk \d+, tile y\d+ x\d+\) failed: no space left on the "
        rf"device writing {re.escape(str(out.resolve()))} \(OSError: \[Errno 28\]",
        err,
    ), err
    assert err.endswith("free space, then rerun with --resume")
    assert 0 < n_done(out) < N_BLOCKS
    monkeypatch.setattr(blockio, "write_region", real)
    assert main(cli_args(tiny_world, ckpt, out, "--cluster", "serial", "--resume")) == 0
    assert_identical(out, clean)


def test_enospc_outside_blocks_names_the_file(monkeypatch, tmp_path, capsys):
    """A full disk anywhere else (making the store, say): one line naming the file, exit 1."""
    import kgml_grid.catalog as catalog

    def full(*a, **kw):
        raise OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.zarr" / "zarr.json")
        )

    monkeypatch.setattr(catalog, "open_catalog", full)
    assert main(["catalog", str(tmp_path / "c.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"kgml-grid catalog: error: no space left on the device writing {tmp_path}/x.zarr/zarr.json; "
                   "free space or write to another disk, then rerun (kgml-grid upscale: --resume keeps "
                   "the completed blocks)")  # fmt: skip


# --------------------------------------------------------------------------------------
# a killed client, then --resume
# --------------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_killed_client_then_resume_recomputes_only_missing_blocks(
    tiny_world, ckpt, client, cluster, clean, tmp_path
):
    out = tmp_path / "out.zarr"
    cmd = [
        sys.executable,
        "-m",
        "kgml_grid.cli",
        *cli_args(tiny_world, ckpt, out, "--cluster", str(cluster)),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    t_end = time.monotonic() + 120
    try:
        while time.monotonic() < t_end and n_done(out) < 4 and proc.poll() is None:
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode() if proc.stdout else ""
    _idle(client)  # tasks the dead client left running have finished or been released
    done_before = completed_blocks(out)
    assert 0 < len(done_before) < N_BLOCKS
    kw = run_kw(tiny_world)
    with pytest.raises(PlanError, match="pass --resume to finish it or --overwrite"):
        upscale(tiny_world.catalog, ckpt, out, client=client, progress=False, **kw)
    with pytest.raises(PlanError, match=r"another plan: chunks:"):
        upscale(tiny_world.catalog, ckpt, out, client=client, resume=True, progress=False,
                **{**kw, "chunks": "y=7,x=9,time=60"})  # fmt: skip
    assert xr.open_zarr(out, consolidated=False).attrs["kgml_complete"] == 0
    res = upscale(tiny_world.catalog, ckpt, out, client=client, resume=True, progress=False, **kw)
    # only the missing blocks were computed: counted by the run and by the records
    assert res.computed == N_BLOCKS - len(done_before) and res.already_done == len(done_before)
    records = read_records(out)
    assert len(records) == N_BLOCKS and len({r["run_id"] for r in records}) == 2
    newest = [r for r in records if r["block"] not in {b.name for b in done_before}]
    assert len(newest) == res.computed and len({r["run_id"] for r in newest}) == 1
    assert_identical(out, clean)


# --------------------------------------------------------------------------------------
# resume knows its inputs
# --------------------------------------------------------------------------------------


@pytest.fixture
def world_copy(tiny_world, tmp_path):
    """A copy of the tiny world's cubes and catalog (these tests rebuild its cubes)."""
    d = tmp_path / "world"
    shutil.copytree(tiny_world.root, d, ignore=shutil.ignore_patterns("towers"))
    return d


def _partial_run(
    catalog: Path, ckpt: Path, out: Path, world, monkeypatch, n_writes: int = 4
) -> int:
    """A serial run stopped by a failing write after ``n_writes`` region writes."""
    real = blockio.write_region
    calls = {"n": 0}

    def failing(path, *a, **kw):
        calls["n"] += 1
        if calls["n"] > n_writes:
            raise RuntimeError("injected: the run stops here")
        return real(path, *a, **kw)

    monkeypatch.setattr(blockio, "write_region", failing)
    with pytest.raises(RuntimeError, match="injected"):
        upscale(catalog, ckpt, out, cluster="serial", progress=False, **run_kw(world))
    monkeypatch.setattr(blockio, "write_region", real)
    n = n_done(out)
    assert 0 < n < N_BLOCKS
    return n


def test_resume_after_an_input_cube_was_rebuilt_is_refused_saying_what_changed(
    tiny_world, ckpt, world_copy, tmp_path, monkeypatch
):
    cat, out = world_copy / "catalog.yaml", tmp_path / "out.zarr"
    n = _partial_run(cat, ckpt, out, tiny_world, monkeypatch)
    recorded = json.loads((records_dir(out) / INPUTS_FILE).read_text())
    assert set(recorded["inputs"]) == {"crop", "satellite", "soil", "weather"}
    time.sleep(0.01)  # a rebuilt chunk gets a later modification time
    gpp = zarr.open_array(str(world_copy / "satellite.zarr" / "gpp_sat"), mode="r+")
    gpp[:] = gpp[:]  # rebuilt with the same shape, chunks and metadata: only the files are new
    with pytest.raises(PlanError, match=(
        r"--resume: the inputs of .*out\.zarr changed since the run started: satellite cube "
        r".*satellite\.zarr: variable gpp_sat: chunk files rewritten \(\d+ files, .*: pass --overwrite "
        r"to start again")):  # fmt: skip
        upscale(cat, ckpt, out, cluster="serial", progress=False, resume=True, **run_kw(tiny_world))
    assert n_done(out) == n  # refused before anything was computed
    assert json.loads((records_dir(out) / INPUTS_FILE).read_text()) == recorded


def test_resume_refused_when_a_cube_metadata_changed(
    tiny_world, ckpt, world_copy, tmp_path, monkeypatch
):
    cat, out = world_copy / "catalog.yaml", tmp_path / "out.zarr"
    _partial_run(cat, ckpt, out, tiny_world, monkeypatch)
    soil = zarr.open_array(str(world_copy / "soil.zarr" / "soc"), mode="r+")
    soil.attrs["comment"] = "re-derived from another gSSURGO release"
    with pytest.raises(
        PlanError, match=r"soil cube .*soil\.zarr: variable soc: metadata \(zarr\.json\) changed"
    ):
        upscale(cat, ckpt, out, cluster="serial", progress=False, resume=True, **run_kw(tiny_world))


def test_resume_with_unchanged_inputs_finishes_and_old_records_warn(
    tiny_world, ckpt, world_copy, clean, tmp_path, monkeypatch
):
    cat, out = world_copy / "catalog.yaml", tmp_path / "out.zarr"
    _partial_run(cat, ckpt, out, tiny_world, monkeypatch)
    (records_dir(out) / INPUTS_FILE).unlink()  # records written before fingerprints existed
    with pytest.warns(UserWarning, match="hold no fingerprint of the inputs"):
        upscale(cat, ckpt, out, cluster="serial", progress=False, resume=True, **run_kw(tiny_world))
    assert (records_dir(out) / INPUTS_FILE).exists()
    assert_identical(out, clean)


def test_fingerprint_comparison_names_every_kind_of_change(tiny_world, tmp_path):
    a = input_fingerprints({"soil": str(tiny_world.root / "soil.zarr")})
    assert compare(a, a) == ([], [])
    fp = a["inputs"]["soil"]
    assert GROUP in fp["arrays"] and fp["arrays"]["soc"]["files"] >= 1
    b = json.loads(json.dumps(a))
    del b["inputs"]["soil"]["arrays"]["soc"]
    b["inputs"]["soil"]["arrays"]["extra"] = fp["arrays"]["ph"]
    changes, _ = compare(a, b)
    assert any("variable soc was removed" in c for c in changes)
    assert any("variable extra was added" in c for c in changes)
    assert compare(a, {"format": 1, "inputs": {"soil": store_fingerprint(tmp_path / "gone.zarr")}})[
        0
    ] == [f"soil: was {tiny_world.root / 'soil.zarr'}, now {tmp_path / 'gone.zarr'}"]
    gone = {"format": 1, "inputs": {"soil": {"path": fp["path"], "missing": True}}}
    assert compare(a, gone)[0] == [f"soil cube {fp['path']}: no longer exists"]
    remote = {"format": 1, "inputs": {"soil": store_fingerprint("s3://bucket/soil.zarr")}}
    assert compare(remote, remote) == (
        [],
        ["soil cube s3://bucket/soil.zarr (remote: not fingerprinted)"],
    )
