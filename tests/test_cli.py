"""The CLI parses arguments and calls the library."""

from __future__ import annotations

import subprocess
import sys

import xarray as xr

from kgml_grid.cli import main


def test_synth_tiny_then_catalog(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["synth", "--preset", "tiny", "--out", str(out), "--shape", "8", "9",
                 "--years", "2011", "2011", "--seed", "3", "--quiet"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "8x9 pixels" in text and "catalog:" in text
    assert main(["catalog", str(out / "catalog.yaml")]) == 0
    assert "all layers valid and aligned" in capsys.readouterr().out
    ds = xr.open_zarr(out / "truth.zarr", consolidated=False)
    assert ds.attrs["kgml_seed"] == 3


def test_synth_bad_world_params_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text('{"carbon": {"nope": 1}}')
    rc = main(
        [
            "synth",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "w"),
            "--world-params",
            str(p),
            "--quiet",
        ]
    )
    assert rc == 2
    assert "unknown parameter carbon.nope" in capsys.readouterr().err
    assert not (tmp_path / "w" / "catalog.yaml").exists()


def test_fluxnet_command_reads_real_file(us_ne1, capsys):
    assert main(["fluxnet", str(us_ne1)]) == 0
    out = capsys.readouterr().out
    assert "site US-Ne1, 4199 days 2001-05-30..2012-11-26" in out


def test_console_script_is_installed():
    r = subprocess.run(
        [sys.executable, "-m", "kgml_grid.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "kgml-grid 0.1.0" in r.stdout
