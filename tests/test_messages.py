"""Messages, not tracebacks: every refused input or failed run of ``kgml-grid`` ends with
one line naming the file, option or value and the fix; exit code 2 for bad input, 1 for
a run that failed; the traceback only with ``--debug``.

(The full disk is in test_faults.py, with the other fault injections.)
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from kgml_grid.cli import main
from kgml_grid.cluster import CONNECT_TIMEOUT, ClusterConfigError, ClusterConnectError, make_client
from kgml_grid.errors import one_line, report

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8)


def run(argv, capsys) -> tuple[int, list[str]]:
    """Exit code and the non-empty lines of stderr of ``kgml-grid ARGV``."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [line for line in err.splitlines() if line.strip()]


def one_error(argv, capsys, code: int) -> str:
    """The single error line of a command that must fail with ``code``."""
    rc, lines = run(argv, capsys)
    assert rc == code, lines
    assert len(lines) == 1, lines
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upscale_args(world, ckpt, out, *extra) -> list[str]:
    return ["upscale", "--catalog", str(world.catalog), "--model", str(ckpt), "--out", str(out),
            "--start", "2010-01-01", "--end", "2010-01-31", "--quiet", *extra]  # fmt: skip


# --------------------------------------------------------------------------------------
# catalogs
# --------------------------------------------------------------------------------------


def _catalog(tmp_path, text: str) -> Path:
    p = tmp_path / "cat.yaml"
    p.write_text(text)
    return p


ENTRY = "  soil:\n    driver: zarr\n    args: {urlpath: '%s', consolidated: false}\n    metadata: {layer: soil}\n"


def test_duplicate_key_in_a_catalog(tmp_path, capsys):
    p = _catalog(tmp_path, "sources:\n" + ENTRY % "{{ CATALOG_DIR }}/soil.zarr" + "sources: {}\n")
    line = one_error(["catalog", str(p)], capsys, 2)
    assert line == (f"kgml-grid catalog: error: {p}: duplicate key 'sources' at line 6 (first at line 1); "
                    "a mapping may hold each key once: remove or rename one")  # fmt: skip


def test_catalog_plugins(tmp_path, capsys):
    p = _catalog(tmp_path, "plugins: {source: [{module: os}]}\nsources:\n" + ENTRY % "s.zarr")
    line = one_error(["catalog", str(p)], capsys, 2)
    assert line.startswith(
        f"kgml-grid catalog: error: {p}: top-level key 'plugins' is not one kgml_grid understands"
    )
    assert line.endswith("Remove it")


@pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is not None,
    reason="aiohttp is installed: https:// is readable here",
)
def test_remote_urlpath_without_its_optional_dependency(tmp_path, capsys):
    p = _catalog(tmp_path, "sources:\n" + ENTRY % "https://example.org/soil.zarr")
    line = one_error(["catalog", str(p)], capsys, 2)
    assert line.startswith(f"kgml-grid catalog: error: {p}: entry 'soil' has urlpath 'https://example.org/soil.zarr': "
                           "reading https:// needs aiohttp")  # fmt: skip
    assert line.endswith("pip install aiohttp, or point urlpath at a local copy")


# --------------------------------------------------------------------------------------
# upscale options
# --------------------------------------------------------------------------------------


def test_unknown_bbox_crs(tiny_world, ckpt, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    line = one_error(upscale_args(tiny_world, ckpt, out, "--bbox=0,0,1,1", "--bbox-crs", "EPSG:999999",
                                  "--cluster", "serial"), capsys, 2)  # fmt: skip
    assert line == ("kgml-grid upscale: error: --bbox-crs 'EPSG:999999' is not a CRS known to PROJ; write an "
                    "EPSG code such as EPSG:4326 (longitude/latitude) or the grid's own EPSG:5070")  # fmt: skip
    assert not out.exists()


def test_bbox_outside_the_area_of_its_crs(tiny_world, ckpt, tmp_path, capsys):
    line = one_error(upscale_args(tiny_world, ckpt, tmp_path / "o.zarr", "--bbox=0,0,1000,1000",
                                  "--bbox-crs", "EPSG:4326", "--cluster", "serial"), capsys, 2)  # fmt: skip
    assert (
        "cannot be transformed to the grid's CRS EPSG:5070: outside the area of use of EPSG:4326"
        in line
    )


@pytest.mark.parametrize("command", ["upscale", "train", "finetune"])
def test_unknown_device(tiny_world, ckpt, tmp_path, capsys, command):
    args = {
        "upscale": upscale_args(tiny_world, ckpt, tmp_path / "o.zarr"),
        "train": ["train", "--catalog", str(tiny_world.catalog), "--out", str(tmp_path / "m")],
        "finetune": [
            "finetune",
            "--model",
            str(ckpt),
            "--fluxnet",
            "x.csv",
            "--out",
            str(tmp_path / "m"),
        ],
    }[command]
    rc, lines = run([*args, "--device", "tpu"], capsys)
    assert rc == 2
    assert (
        lines[-1]
        == f"kgml-grid {command}: error: argument --device: 'tpu': use auto, cpu, cuda or cuda:N"
    )
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("n", ["0", "-1"])
@pytest.mark.parametrize("command", ["upscale", "demo"])
def test_workers_below_one_fail_at_once(tiny_world, ckpt, tmp_path, capsys, n, command):
    args = (
        upscale_args(tiny_world, ckpt, tmp_path / "o.zarr")
        if command == "upscale"
        else ["demo", "--out", str(tmp_path / "d")]
    )
    t0 = time.monotonic()
    rc, lines = run([*args, "--workers", n], capsys)
    assert rc == 2 and time.monotonic() - t0 < 10  # these hung before
    assert lines[-1] == f"kgml-grid {command}: error: argument --workers: must be >= 1, got {n}"


def test_unreachable_scheduler_fails_within_the_timeout_naming_the_address(
    tiny_world, ckpt, tmp_path, capsys
):
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    line = one_error(upscale_args(tiny_world, ckpt, tmp_path / "o.zarr", "--cluster", address,
                                  "--connect-timeout", "1"), capsys, 1)  # fmt: skip
    assert time.monotonic() - t0 < 30  # planning (a few seconds here) + 1 s, not 120 s
    assert line.startswith(f"kgml-grid upscale: error: cannot reach the Dask scheduler at {address}: no answer "
                           "within 1 s")  # fmt: skip
    assert line.endswith(
        "check the address and that the scheduler is running, or raise --connect-timeout"
    )
    assert not (tmp_path / "o.zarr").exists()


def test_dead_scheduler_file_names_its_address(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    sf = tmp_path / "scheduler.json"
    sf.write_text(json.dumps({"address": address, "type": "Scheduler"}))
    with pytest.raises(
        ClusterConnectError,
        match=rf"scheduler at {address} \(scheduler file {sf}\): no answer within 1 s",
    ):
        make_client(str(sf), verbose=False, connect_timeout=1)


def test_default_connect_timeout_is_20_s_and_a_cluster_file_can_set_it(tmp_path, monkeypatch):
    import distributed

    seen = []

    def fake_client(*a, timeout=None, **kw):
        seen.append(timeout)
        raise OSError("Timed out")

    monkeypatch.setattr(distributed, "Client", fake_client)
    address = "tcp://127.0.0.1:1"
    with pytest.raises(ClusterConnectError, match=r"no answer within 20 s"):
        make_client(address, verbose=False)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"kind": "address", "address": address, "timeout": 5}))
    with pytest.raises(ClusterConnectError, match=r"no answer within 5 s"):
        make_client(str(p), verbose=False)
    assert seen == [CONNECT_TIMEOUT, 5] and CONNECT_TIMEOUT == 20
    with pytest.raises(
        ClusterConfigError, match=r"c\.yaml: timeout 'soon': need a number of seconds > 0"
    ):
        p.write_text(yaml.safe_dump({"kind": "address", "address": address, "timeout": "soon"}))
        make_client(str(p), verbose=False)
    assert len(seen) == 2  # refused before any connection was tried


def test_cluster_file_with_preload_is_refused_before_anything_is_written(
    tiny_world, ckpt, tmp_path, capsys
):
    cf = tmp_path / "c.yaml"
    cf.write_text("kind: local\nn_workers: 1\npreload: [os]\n")
    out = tmp_path / "o.zarr"
    line = one_error(upscale_args(tiny_world, ckpt, out, "--cluster", str(cf)), capsys, 2)
    assert line.startswith(
        f"kgml-grid upscale: error: {cf}: key 'preload' is not allowed for kind: local"
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------
# the reporting itself
# --------------------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_exit_1_and_debug_shows_the_traceback(
    tmp_path, monkeypatch, capsys
):
    import kgml_grid.catalog as catalog

    def broken(path):
        raise KeyError("spatial_ref")

    monkeypatch.setattr(catalog, "open_catalog", broken)
    line = one_error(["catalog", str(tmp_path / "c.yaml")], capsys, 1)
    assert line == ("kgml-grid catalog: error: KeyError: 'spatial_ref' (unexpected; kgml-grid --debug ... "
                    "shows the traceback)")  # fmt: skip
    for argv in (["--debug", "catalog", "c.yaml"], ["catalog", "c.yaml", "--debug"]):
        with pytest.raises(KeyError, match="spatial_ref"):
            main(argv)


def test_a_failed_block_is_exit_1_and_a_multiline_message_one_line(monkeypatch, capsys):
    import kgml_grid.catalog as catalog
    from kgml_grid.execute import BlockError

    def failing(path):
        raise BlockError(
            "block(time chunk 0, tile y0 x0) failed:\n  RuntimeError: boom\n\nrerun with --resume"
        )

    monkeypatch.setattr(catalog, "open_catalog", failing)
    line = one_error(["catalog", "c.yaml"], capsys, 1)
    assert line == ("kgml-grid catalog: error: block(time chunk 0, tile y0 x0) failed:; RuntimeError: boom; "
                    "rerun with --resume")  # fmt: skip


def test_exit_codes_by_kind_of_error():
    from kgml_grid.catalog import CatalogError
    from kgml_grid.execute import BlockError
    from kgml_grid.plan import PlanError

    assert report(PlanError("--start x"))[0] == 2
    assert report(CatalogError("c.yaml: y"))[0] == 2
    assert report(FileNotFoundError(2, "No such file or directory", "m/model.json")) == (
        2,
        "FileNotFoundError: [Errno 2] No such file or directory: 'm/model.json'",
    )
    assert report(ImportError("kind: slurm needs dask-jobqueue: pip install dask-jobqueue"))[0] == 2
    assert report(BlockError("b failed"))[0] == 1
    assert report(ClusterConnectError("cannot reach"))[0] == 1
    assert report(PermissionError(13, "Permission denied", "/x"))[0] == 1
    assert one_line("a\n\n  b  \n") == "a; b"
