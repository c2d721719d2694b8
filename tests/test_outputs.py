"""Output paths that cannot destroy: inputs, files kgml_grid did not write, other kinds.

One test per data-loss case of issue 11 (each checks the target still holds its files),
the same rule on every writing command, and the positive cases (an output of ours is
replaced with --overwrite; --resume still works).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import xarray as xr
from test_plan import make_checkpoint

from kgml_grid import outputs
from kgml_grid.cli import main
from kgml_grid.execute import records_dir, upscale
from kgml_grid.outputs import OutputError, check_target, kind_of
from kgml_grid.plan import PlanError
from kgml_grid.records import log_files

START, END = "2010-01-01", "2010-02-19"  # 50 days: a serial run of the tiny world in ~1 s


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and modification time."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return {path.name: (st.st_size, st.st_mtime_ns)}
    out = {}
    for q in sorted(path.rglob("*")):
        if q.is_file():
            st = q.stat()
            out[str(q.relative_to(path))] = (st.st_size, st.st_mtime_ns)
    assert out, f"{path} holds no files"
    return out


def user_folder(path: Path) -> Path:
    """A plain folder of a user's files."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """A copy of the tiny world (the session's is shared: never risk it here)."""
    root = tmp_path_factory.mktemp("outputs") / "world"
    shutil.copytree(tiny_world.root, root)
    return root


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m4", hidden=4)


def _upscale_cli(world: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["upscale", "--catalog", str(world / "catalog.yaml"), "--model", str(ckpt), "--out", str(out),
                 "--start", START, "--end", END, "--cluster", "serial", "--quiet", *extra])  # fmt: skip


# --------------------------------------------------------------------------------------
# the 7 data-loss cases of issue 11
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("satellite.zarr", r"--out .*satellite\.zarr: is cube 'satellite' of the catalog .*an input of this run"),
        (".", r"--out .*world: contains the catalog .*catalog\.yaml, an input of this run; nothing was written"),
        ("catalog.yaml", r"--out .*catalog\.yaml: is the catalog .*catalog\.yaml, an input of this run"),
    ],
    ids=["input-cube", "catalog-folder", "catalog-file"],
)  # fmt: skip
def test_upscale_overwrite_never_deletes_the_catalog_or_its_cubes(
    world, ckpt, target, match, capsys
):
    out = (world / target).resolve()
    before = snapshot(out)
    assert _upscale_cli(world, ckpt, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert snapshot(out) == before
    assert not records_dir(out).exists()


def test_upscale_overwrite_never_deletes_the_checkpoint(world, ckpt):
    before = snapshot(ckpt)
    with pytest.raises(
        PlanError, match=r"--out .*m4: is the checkpoint .*m4, an input of this run"
    ):
        upscale(world / "catalog.yaml", ckpt, ckpt, start=START, end=END, cluster="serial", overwrite=True,
                progress=False)  # fmt: skip
    assert snapshot(ckpt) == before


def test_upscale_overwrite_never_deletes_a_folder_of_user_files(world, ckpt, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(
        PlanError,
        match=r"--out .*mine: exists and holds a folder of 2 entries that kgml_grid "
        r"did not write: notes\.txt, sub/; kgml_grid replaces only what it wrote",
    ):
        upscale(world / "catalog.yaml", ckpt, mine, start=START, end=END, cluster="serial", overwrite=True,
                progress=False)  # fmt: skip
    assert snapshot(mine) == before


def test_synth_does_not_silently_replace_a_world(tmp_path, capsys):
    out = tmp_path / "w"
    args = [
        "synth",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--shape",
        "4",
        "5",
        "--years",
        "2011",
        "2011",
        "--quiet",
    ]
    assert main(args) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "w: exists; pass --overwrite to replace it (it holds a synthetic world)" in err, err
    assert snapshot(out) == before  # satellite.zarr and catalog.yaml as they were


def test_synth_overwrite_never_replaces_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "w"
    (out / "satellite.zarr").mkdir(parents=True)
    (out / "satellite.zarr" / "my_data.bin").write_bytes(b"\x00" * 10)
    (out / "catalog.yaml").write_text("my: catalog\n")
    before = snapshot(out)
    rc = main(
        [
            "synth",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--shape",
            "4",
            "5",
            "--quiet",
            "--overwrite",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert (
        "exists and holds a folder of 2 entries that kgml_grid did not write: catalog.yaml, satellite.zarr/"
        in err
    )
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------
# the rule in detail
# --------------------------------------------------------------------------------------


def test_a_symlink_does_not_hide_an_input(world, ckpt, tmp_path):
    link = tmp_path / "link.zarr"
    link.symlink_to(world / "soil.zarr")
    before = snapshot(world / "soil.zarr")
    # (named by its real path: the store path is resolved)
    with pytest.raises(
        PlanError, match=r"soil\.zarr: is cube 'soil' of the catalog .*soil\.zarr, an input"
    ):
        upscale(world / "catalog.yaml", ckpt, link, start=START, end=END, cluster="serial", overwrite=True,
                progress=False)  # fmt: skip
    assert snapshot(world / "soil.zarr") == before


def test_an_output_inside_an_input_is_refused_even_in_a_dry_run(world, ckpt):
    inside = world / "crop.zarr" / "out.zarr"
    with pytest.raises(PlanError, match=r"out\.zarr: lies inside cube 'crop' of the catalog"):
        upscale(world / "catalog.yaml", ckpt, inside, start=START, end=END, dry_run=True)
    assert not inside.exists()


def test_overwrite_refuses_an_output_of_another_kind(world, ckpt, tiny_world, tmp_path):
    other = tmp_path / "truth.zarr"  # a cube kgml_grid wrote, but not an upscaling store
    shutil.copytree(tiny_world.root / "truth.zarr", other)
    before = snapshot(other)
    with pytest.raises(
        PlanError, match=r"truth\.zarr: is an input cube \(Zarr\), not an upscaling output store"
    ):
        upscale(world / "catalog.yaml", ckpt, other, start=START, end=END, cluster="serial", overwrite=True,
                progress=False)  # fmt: skip
    assert snapshot(other) == before


def test_overwrite_refuses_an_output_of_ours_that_holds_a_users_file(tmp_path):
    from kgml_grid.synth import generate_world

    w = generate_world(
        tmp_path / "w", preset="tiny", shape=(4, 5), years=(2011, 2011), progress=False
    )
    (w.root / "my_analysis.ipynb").write_text("{}")
    (w.root / "towers" / "notes.txt").write_text("site visit\n")  # inside a folder the world writes
    before = snapshot(w.root)
    with pytest.raises(
        OutputError,
        match=r"w: a synthetic world that also holds files kgml_grid did not write "
        r"\(my_analysis\.ipynb, towers/notes\.txt\); they would be lost",
    ):
        generate_world(
            w.root, preset="tiny", shape=(4, 5), years=(2011, 2011), progress=False, overwrite=True
        )
    assert snapshot(w.root) == before


def test_synth_refuses_an_out_holding_its_world_params_file(tmp_path, capsys):
    p = tmp_path / "b.json"
    p.write_text('{"name": "B"}')
    rc = main(
        ["synth", "--preset", "tiny", "--out", str(tmp_path), "--world-params", str(p), "--quiet"]
    )
    assert rc == 2
    assert f"contains the --world-params file {p}, an input of this run" in capsys.readouterr().err
    assert sorted(q.name for q in tmp_path.iterdir()) == ["b.json"]


def test_check_target_decisions(tmp_path):
    assert check_target(tmp_path / "absent", kind="model") == "new"
    (tmp_path / "empty").mkdir()
    assert check_target(tmp_path / "empty", kind="model") == "new"
    outputs.write_marker(tmp_path / "empty", "model")  # a marker alone: still empty
    assert check_target(tmp_path / "empty", kind="report") == "new"
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(
        OutputError,
        match=r"file\.txt: exists and holds a file; kgml_grid replaces only what it "
        r"wrote \(a model checkpoint\), even with --overwrite",
    ):
        check_target(f, kind="model", overwrite=True)
    with pytest.raises(ValueError, match="unknown output kind 'nope'"):
        check_target(f, kind="nope")


def test_stores_and_checkpoints_from_before_the_marker_are_recognised(tmp_path, ckpt):
    for name, attrs, kind in (("old_up.zarr", {"kgml_plan": "{}", "kgml_complete": 1}, "upscale"),
                              ("old_cube.zarr", {"kgml_complete": 1}, "cube"),
                              ("foreign.zarr", {"title": "someone else's"}, None)):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                               "attributes": attrs}))  # fmt: skip
        assert kind_of(tmp_path / name) == kind
    assert (
        not (ckpt / outputs.MARKER_FILE).exists() and kind_of(ckpt) == "model"
    )  # save_checkpoint alone


# --------------------------------------------------------------------------------------
# every writing command
# --------------------------------------------------------------------------------------


def test_ingest_refuses_an_out_inside_its_source_folder_and_a_users_folder(tmp_path):
    from kgml_grid.grid import GridSpec
    from kgml_grid.ingest import IngestError
    from kgml_grid.ingest.satellite import ingest_satellite
    from kgml_grid.ingest.sources import RasterSource

    src = tmp_path / "slope"
    src.mkdir()
    (src / "SLOPE_GPP_2015001.tif").write_bytes(b"not read")
    grid = GridSpec("EPSG:5070", 0.0, 100.0, 10.0, 10, 10)
    sources = [RasterSource("gpp_sat", (str(src),), pattern="SLOPE_GPP_{date:%Y%j}.tif")]
    before = snapshot(src)
    with pytest.raises(
        IngestError, match=r"--out .*slope: contains the source .*SLOPE_GPP_2015001\.tif, an input"
    ):
        ingest_satellite(sources, src, grid=grid, overwrite=True)
    assert snapshot(src) == before
    mine = user_folder(tmp_path / "mine.zarr")
    before = snapshot(mine)
    with pytest.raises(
        IngestError,
        match=r"mine\.zarr: exists and holds a folder of 2 entries that kgml_grid "
        r"did not write",
    ):
        ingest_satellite(sources, mine, grid=grid, overwrite=True)
    assert snapshot(mine) == before
    glob_src = [RasterSource("gpp_sat", (str(src / "*.tif"),), pattern="SLOPE_GPP_{date:%Y%j}.tif")]
    with pytest.raises(
        IngestError, match=r"SLOPE_GPP_2015001\.tif: is the source"
    ):  # a glob is expanded
        ingest_satellite(glob_src, src / "SLOPE_GPP_2015001.tif", grid=grid, overwrite=True)
    assert (src / "SLOPE_GPP_2015001.tif").read_bytes() == b"not read"


def test_ingest_refuses_to_replace_its_like_cube(world, capsys):
    cube = world / "soil.zarr"
    before = snapshot(cube)
    rc = main(["ingest", "soil", "--out", str(cube), "--property", "sand=sand.tif", "--like", str(cube),
               "--overwrite"])  # fmt: skip
    assert rc == 2
    assert re.search(
        r"--out .*soil\.zarr: is the --like file .*soil\.zarr, an input", capsys.readouterr().err
    )
    assert snapshot(cube) == before


def test_train_finetune_evaluate_refuse_inputs_and_foreign_folders(world, ckpt, tmp_path, capsys):
    cat = str(world / "catalog.yaml")
    ck_before = snapshot(ckpt)
    cases = [
        (["train", "--catalog", cat, "--out", str(world / "truth.zarr"), "--epochs", "1"],
         "is cube 'truth' of the catalog"),
        (["train", "--catalog", cat, "--out", str(ckpt), "--init", str(ckpt), "--overwrite"],
         "is the --init checkpoint"),
        (["finetune", "--model", str(ckpt), "--fluxnet", str(world / "towers"), "--out", str(ckpt), "--overwrite"],
         "is the checkpoint"),
        (["evaluate", "--model", str(ckpt), "--catalog", cat, "--out", str(world), "--overwrite"],
         "contains the catalog"),
        (["evaluate", "--model", str(ckpt), "--catalog", cat, "--out", str(ckpt / "report")],
         "lies inside the checkpoint"),
    ]  # fmt: skip
    for args, msg in cases:
        assert main(args) == 2, args
        assert msg in capsys.readouterr().err, args
    assert snapshot(ckpt) == ck_before
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    for args in (["train", "--catalog", cat, "--out", str(mine), "--overwrite"],
                 ["evaluate", "--model", str(ckpt), "--catalog", cat, "--out", str(mine), "--overwrite"],
                 ["demo", "--out", str(mine), "--overwrite", "--quiet"],
                 ["experiment", "transfer", "--out", str(mine), "--overwrite", "--quiet"]):  # fmt: skip
        assert main(args) == 2, args
        assert "did not write: notes.txt, sub/" in capsys.readouterr().err, args
    assert snapshot(mine) == before


@pytest.mark.slow
def test_an_existing_model_needs_overwrite_and_is_replaced_only_after_training(world, tmp_path):
    from kgml_grid.samples import SplitSpec
    from kgml_grid.train import TrainConfig, pretrain

    cfg = TrainConfig(epochs=1, batch_size=16, hidden=4, threads=1,
                      split=SplitSpec(holdout_years=1, max_train_pixels=8, max_test_pixels=4))  # fmt: skip
    first = pretrain(world / "catalog.yaml", tmp_path / "m", cfg, progress=False)
    assert kind_of(first.model_dir) == "model"
    names = {p.name for p in first.model_dir.iterdir()}
    assert names == {"model.safetensors", "model.json", "learning_curve.png", outputs.MARKER_FILE}
    with pytest.raises(
        OutputError,
        match=r"m: exists; pass --overwrite to replace it \(it holds a model checkpoint\)",
    ):
        pretrain(world / "catalog.yaml", tmp_path / "m", cfg, progress=False)
    before = snapshot(first.model_dir)
    again = pretrain(world / "catalog.yaml", tmp_path / "m", cfg, progress=False, overwrite=True)
    assert {p.name for p in again.model_dir.iterdir()} == names
    assert snapshot(again.model_dir) != before  # written anew


def test_upscale_maps_folder_is_checked_before_compute(world, ckpt, tmp_path, capsys):
    mine = user_folder(tmp_path / "maps")
    out = tmp_path / "o.zarr"
    assert _upscale_cli(world, ckpt, out, "--maps", str(mine), "--overwrite") == 2
    assert "--maps" in (err := capsys.readouterr().err) and "did not write: notes.txt, sub/" in err
    assert not out.exists()  # refused before the store was made
    assert _upscale_cli(world, ckpt, out, "--maps", str(out / "maps")) == 2
    assert "lies inside the output store" in capsys.readouterr().err


def test_bench_refuses_results_and_work_folders_it_did_not_write(world, tmp_path):
    from kgml_grid.bench import BenchConfig, run_benchmark

    res = tmp_path / "results"
    res.mkdir()
    (res / "bench_tiny.md").write_text("my notes on the last run\n")
    (res / "other.json").write_text("{}")
    before = snapshot(res)
    with pytest.raises(
        OutputError,
        match=r"results: bench_tiny\.md exist and were not written by kgml_grid as "
        r"a benchmark's results",
    ):
        run_benchmark(
            BenchConfig(out=res, preset="tiny", world=world, overwrite=True, progress=False)
        )
    assert snapshot(res) == before
    (res / "bench_tiny.md").unlink()
    work = user_folder(tmp_path / "scratch")
    before = snapshot(work)
    with pytest.raises(
        OutputError, match=r"--work .*scratch: exists and holds a folder of 2 entries"
    ):
        run_benchmark(
            BenchConfig(
                out=res, preset="tiny", world=world, work=work, overwrite=True, progress=False
            )
        )
    assert snapshot(work) == before
    with pytest.raises(OutputError, match=r"--work .*world: contains the catalog"):
        run_benchmark(BenchConfig(out=res, preset="tiny", world=world, work=world, progress=False))
    assert sorted(p.name for p in res.iterdir()) == ["other.json"]


def test_bench_results_of_ours_need_overwrite(tmp_path):
    from kgml_grid.bench import is_bench_result

    res = tmp_path / "r"
    res.mkdir()
    (res / "bench_tiny.json").write_text(
        json.dumps({"command": "kgml-grid bench", "machine": {}, "acceptance": {}})
    )
    assert is_bench_result(res / "bench_tiny.json")
    files = [res / f"bench_tiny.{e}" for e in ("json", "png", "md")]
    with pytest.raises(
        OutputError, match=r"bench_tiny\.json exist \(a benchmark's results\); pass --overwrite"
    ):
        outputs.check_files(files, ours=True, what="a benchmark's results")
    assert (
        outputs.check_files(files, ours=True, what="a benchmark's results", overwrite=True)
        == "replace"
    )


# --------------------------------------------------------------------------------------
# the positive cases: outputs of ours are replaced; resume works
# --------------------------------------------------------------------------------------


def test_upscale_store_of_ours_is_replaced_with_overwrite_and_resumed(world, ckpt, tmp_path):
    out = tmp_path / "o.zarr"
    first = upscale(
        world / "catalog.yaml", ckpt, out, start=START, end=END, cluster="serial", progress=False
    )
    assert kind_of(out) == "upscale" and kind_of(records_dir(out)) == "records"
    with pytest.raises(
        PlanError, match=r"o\.zarr: exists; pass --resume to finish it or --overwrite to replace it"
    ):
        upscale(
            world / "catalog.yaml",
            ckpt,
            out,
            start=START,
            end=END,
            cluster="serial",
            progress=False,
        )
    ref = xr.open_zarr(out, consolidated=False).load()
    # a block lost: --resume recomputes exactly that one
    log = log_files(records_dir(out))[-1]  # the serial run's one completion log
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) == first.plan.n_blocks + 1  # a header, then a line per block
    log.write_bytes(b"".join(lines[:-1]))
    res = upscale(world / "catalog.yaml", ckpt, out, start=START, end=END, cluster="serial", resume=True,
                  progress=False)  # fmt: skip
    assert res.computed == 1 and res.already_done == first.plan.n_blocks - 1
    again = upscale(world / "catalog.yaml", ckpt, out, start=START, end=END, cluster="serial", overwrite=True,
                    progress=False)  # fmt: skip
    assert again.computed == first.plan.n_blocks
    got = xr.open_zarr(out, consolidated=False)
    assert got.attrs["kgml_complete"] == 1 and got.attrs[outputs.MARKER_ATTR] == "upscale"
    xr.testing.assert_equal(got[["ra", "nee"]].load(), ref[["ra", "nee"]])


def test_records_folder_that_is_not_ours_is_refused(world, ckpt, tmp_path):
    out = tmp_path / "o.zarr"
    rec = user_folder(records_dir(out))
    before = snapshot(rec)
    with pytest.raises(
        PlanError, match=r"the records folder .*o\.zarr\.kgml_blocks: exists and holds a folder"
    ):
        upscale(world / "catalog.yaml", ckpt, out, start=START, end=END, cluster="serial", overwrite=True,
                progress=False)  # fmt: skip
    assert snapshot(rec) == before and not out.exists()


def test_synth_overwrite_replaces_a_world_of_ours(tmp_path, capsys):
    out = tmp_path / "w"
    args = [
        "synth",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--shape",
        "4",
        "5",
        "--years",
        "2011",
        "2011",
        "--quiet",
    ]
    assert main(args) == 0
    assert kind_of(out) == "world"
    assert main([*args, "--seed", "7", "--overwrite"]) == 0
    assert xr.open_zarr(out / "truth.zarr", consolidated=False).attrs["kgml_seed"] == 7
    assert os.path.exists(out / outputs.MARKER_FILE)
