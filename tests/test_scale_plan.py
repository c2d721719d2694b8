"""Planning at continental size: metadata-only worlds, bounded crop counting and
coverage checks, lazy blocks, device-sized chunks and a memory estimate that matches
the measured peak of real tasks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from kgml_grid.bench.metaworld import crop_chunk_mask, metadata_world, world_spec
from kgml_grid.grid import GridSpec, check_covers, coarse_index
from kgml_grid.plan import BlockKey, Blocks, PlanError, _crop_counts, _regular, make_plan
from kgml_grid.sizing import pool_counts, recommend_shape


@pytest.fixture(scope="module")
def ckpt64(tiny_world, tmp_path_factory):
    """The reference architecture (hidden 64), untrained, statistics from the tiny world."""
    from kgml_grid.bench.inputs import make_bench_checkpoint

    return make_bench_checkpoint(tiny_world.catalog, tmp_path_factory.mktemp("c") / "h64")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return metadata_world(tmp_path_factory.mktemp("mw") / "small", preset="small")


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    """1,024 x 1,024 px x 18 years (6,574 days), metadata only: the issue's test domain."""
    return metadata_world(tmp_path_factory.mktemp("mw") / "mid", preset="mid")


# --------------------------------------------------------------------------------------
# the metadata-only world
# --------------------------------------------------------------------------------------


def test_metadata_world_writes_crop_chunks_only_and_reads_typical_values(small):
    import json

    root = small.parent
    info = json.loads((root / "world.json").read_text())
    spec = world_spec("small")
    mask = crop_chunk_mask(spec)
    assert info["crop_chunks"] == int(mask.sum()) and 0 < mask.sum() < mask.size
    # stored chunk files: crop chunks x years in the crop cube, none in the others
    stored = [p for p in (root / "crop.zarr" / "crop_type" / "c").rglob("*") if p.is_file()]
    assert len(stored) == int(mask.sum()) * 18
    for name, variables in (("satellite", ["gpp_sat"]), ("weather", ["tair", "precip"]),
                            ("soil", ["sand", "ph"])):  # fmt: skip
        for v in variables:  # coordinates are written, data variables are not
            assert not [p for p in (root / f"{name}.zarr" / v).rglob("*") if p.is_file()
                        and p.name != "zarr.json"], (name, v)  # fmt: skip
    crop = xr.open_zarr(root / "crop.zarr", consolidated=False)["crop_type"].values
    share = float((crop[0] > 0).mean())
    assert share == pytest.approx(info["crop_share"]) and 0.08 < share < 0.16
    assert set(np.unique(crop)) <= {0, 1, 2}
    wx = xr.open_zarr(root / "weather.zarr", consolidated=False)
    assert float(wx["tair"][0, 0, 0]) == 10.0 and wx["tair"].attrs["units"] == "degC"
    # weather on 0.125 deg lat/lon covering the Albers grid
    from kgml_grid.catalog import open_catalog

    layers = open_catalog(small).open_all()  # validates alignment and coverage
    assert abs(float(layers["weather"]["x"][1] - layers["weather"]["x"][0]) - 0.125) < 1e-9


def test_metadata_world_refuses_bad_specs_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match=r"crop_share \(0.5\) <= crop_chunk_share \(0.2\)"):
        world_spec("small", crop_share=0.5, crop_chunk_share=0.2)
    with pytest.raises(
        ValueError, match=r"preset 'mars': expected one of conus, state, mid, small"
    ):
        world_spec("mars")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    from kgml_grid.outputs import OutputError

    with pytest.raises(OutputError, match=r"notes\.txt|not"):
        metadata_world(tmp_path / "mine", preset="small", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# --------------------------------------------------------------------------------------
# bounded planning work
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fine", "coarse"), [
    (GridSpec("EPSG:5070", 0, 0, 250, 300, 400), GridSpec("EPSG:5070", -1000, 1000, 5000, 20, 30)),
    (GridSpec("EPSG:5070", 0, 0, 250, 300, 400), GridSpec("EPSG:5070", 1000, 0, 5000, 20, 30)),
    (GridSpec("EPSG:5070", -2_362_500, 3_187_500, 250, 400, 300),
     GridSpec("EPSG:4326", -128.5, 49.5, 0.125, 40, 60)),
    (GridSpec("EPSG:5070", -2_362_500, 3_187_500, 250, 400, 300),
     GridSpec("EPSG:4326", -127.5, 49.0, 0.125, 40, 60)),
])  # fmt: skip
def test_check_covers_agrees_with_coarse_index(fine, coarse):
    try:
        coarse_index(fine, coarse)
        expected = None
    except ValueError as e:
        expected = str(e)
    if expected is None:
        check_covers(fine, coarse)
    else:
        with pytest.raises(ValueError) as got:
            check_covers(fine, coarse)
        assert str(got.value) == expected


def test_crop_counts_equal_a_full_read_for_any_window_and_tiles(small, monkeypatch):
    import kgml_grid.plan as plan_mod

    path = str(small.parent / "crop.zarr")
    crop = xr.open_zarr(path, consolidated=False)["crop_type"].values
    for years, window, ty, tx in [([0, 1, 5], (0, 256, 0, 256), 48, 80),
                                  ([3], (17, 230, 5, 251), 100, 37),
                                  (list(range(18)), (64, 128, 0, 256), 7, 256)]:  # fmt: skip
        iy0, iy1, ix0, ix1 = window
        ys, xs = _regular(iy1 - iy0, ty), _regular(ix1 - ix0, tx)
        anyc = (crop[years, iy0:iy1, ix0:ix1] > 0).any(axis=0)
        ref = np.array([[anyc[a:b, c:d].sum() for c, d in plan_mod._bounds(xs)]
                        for a, b in plan_mod._bounds(ys)])  # fmt: skip
        got = _crop_counts(path, years, window, ys, xs)
        np.testing.assert_array_equal(got, ref)
        # the same without the store listing (every chunk read)
        monkeypatch.setattr(plan_mod, "_stored_chunks", lambda arr: None)
        np.testing.assert_array_equal(_crop_counts(path, years, window, ys, xs), ref)
        monkeypatch.undo()
        # and with reads split into bands smaller than a chunk (tiny read budget)
        monkeypatch.setattr(plan_mod, "_CROP_READ_BYTES", 1000)
        np.testing.assert_array_equal(_crop_counts(path, years, window, ys, xs), ref)
        monkeypatch.undo()


def test_blocks_are_a_lazy_sequence_equal_to_the_list():
    crop = np.array([[0, 3, 1], [2, 0, 0]]) > 0
    b = Blocks(crop, 3)
    ref = [BlockKey(c, ty, tx) for c in range(3) for ty, tx in [(0, 1), (0, 2), (1, 0)]]
    assert len(b) == 9 and list(b) == ref and b == ref and b[4] == ref[4] and b[-1] == ref[-1]
    assert b[2:5] == ref[2:5]
    assert BlockKey(1, 1, 0) in b and BlockKey(1, 0, 0) not in b and BlockKey(3, 0, 1) not in b
    assert list(b.tile_major()) == sorted(ref, key=lambda k: (k.ty, k.tx, k.chunk))
    with pytest.raises(IndexError, match="block index 9 out of range"):
        b[9]


def test_mid_size_plan_is_sane_lazy_and_fast(mid, ckpt64, monkeypatch):
    """The 1,024 x 1,024 px x 18-year domain: 256 and 1,024 px tiles give gigabytes per
    task, not petabytes, and plan under a 64 GiB worker; a plan of ~110,000 blocks is
    made, printed and described without making one BlockKey."""
    import time

    plans = {}
    for tile in (256, 1024):
        plans[tile] = make_plan(mid, ckpt64, chunks=f"y={tile},x={tile}", memory_limit="64GiB")
    m256, m1024 = plans[256].memory_per_task, plans[1024].memory_per_task
    assert 100 * 2**20 < m256 < m1024 < 32 * 2**30
    # the big tile holds ~16x the pixels; memory grows with them, not with their square
    assert 3 < m1024 / m256 < 20
    assert plans[1024].n_crop_pixels == plans[256].n_crop_pixels > 50_000

    def boom(self):
        raise AssertionError("the blocks were enumerated")

    monkeypatch.setattr(Blocks, "__iter__", boom)
    t0 = time.process_time()
    small_tiles = make_plan(mid, ckpt64, chunks="y=16,x=16,time=30")
    text, d = str(small_tiles), small_tiles.to_dict()
    assert time.process_time() - t0 < 30
    assert small_tiles.n_blocks == small_tiles.n_crop_tiles * small_tiles.n_time_chunks > 100_000
    assert d["tasks"] == small_tiles.n_tasks == small_tiles.n_blocks + small_tiles.n_crop_tiles
    assert f"blocks      {small_tiles.n_blocks} " in text
    assert len(d["tiles"]["skipped"]) <= 1024 < d["tiles"]["skipped_total"]
    done = {BlockKey(0, *small_tiles.crop_tiles[0]), BlockKey(5, 0, 0)}
    assert small_tiles.n_tasks_for(done) == small_tiles.n_tasks - 1 - (
        BlockKey(5, 0, 0) in small_tiles.blocks
    )


# --------------------------------------------------------------------------------------
# device-sized chunks
# --------------------------------------------------------------------------------------


def test_pool_counts_sums_unit_cells_with_partial_edges():
    c = np.arange(15).reshape(3, 5)
    np.testing.assert_array_equal(pool_counts(c, 2), [[0 + 1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9],
                                                      [10 + 11, 12 + 13, 14]])  # fmt: skip


def test_recommend_shape_per_device():
    grid = GridSpec("EPSG:5070", 0, 0, 250, 4096, 4096)
    weather = GridSpec("EPSG:5070", 0, 0, 5000, 205, 205)
    model = {"hidden": 64, "n_features": 18}
    rng = np.random.default_rng(0)
    unit = (rng.random((256, 256)) < 0.5) * 60  # 60 crop px in half of the 16 px cells
    cpu = recommend_shape("cpu", unit, model=model, grid=grid, weather_grid=weather, days=6574)
    gpu = recommend_shape("cuda:0", unit, model=model, grid=grid, weather_grid=weather, days=6574)
    # cpu: the smallest tile averaging >= 4,096 crop px: 256 px (256 cells x 0.5 x 60 px)
    assert (cpu.tile, cpu.time) == (256, 365) and cpu.mean_crop_per_task >= 4096
    assert pool_counts(unit, 8)[pool_counts(unit, 8) > 0].mean() < 4096  # 128 px would not do
    assert (
        gpu.tile > cpu.tile
        and gpu.mean_crop_per_task >= 100_000
        and gpu.batch_pixels > cpu.batch_pixels
    )
    assert "smallest" in str(cpu) and "GiB host memory per task" in str(gpu)
    # a tight memory limit: a smaller tile or a shorter time chunk, said so
    tight = recommend_shape("cpu", unit, model=model, grid=grid, weather_grid=weather,
                            days=6574, task_memory=400 * 2**20)  # fmt: skip
    assert tight.memory["total"] <= 400 * 2**20
    assert (tight.tile, tight.time) != (cpu.tile, cpu.time)
    with pytest.raises(
        ValueError, match=r"--device 'tpu': chunk shapes are recommended for cpu or cuda"
    ):
        recommend_shape("tpu", unit, model=model, grid=grid, weather_grid=weather, days=365)


def test_chunks_auto_counts_crop_exactly_and_says_why(mid, ckpt64, capsys):
    auto = make_plan(mid, ckpt64, chunks="auto", device="cpu")
    explicit = make_plan(mid, ckpt64, chunks=f"y={auto.tile_y},x={auto.tile_x}")
    np.testing.assert_array_equal(auto.crop_counts, explicit.crop_counts)
    assert auto.memory_per_task == explicit.memory_per_task
    text = str(auto)
    assert "sizing      --chunks auto for --device cpu: y=" in text and "crop px per task" in text
    gpu = make_plan(mid, ckpt64, chunks="auto", device="cuda")
    assert gpu.tile_y > auto.tile_y and "activations on the GPU" in str(gpu)
    with pytest.raises(PlanError, match=r"--device 'tpu': use auto, cpu, cuda or cuda:N"):
        make_plan(mid, ckpt64, chunks="auto", device="tpu")


# --------------------------------------------------------------------------------------
# the memory estimate against the measured peak of real tasks
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_estimate_matches_measured_peak_rss_at_three_tile_sizes(small, ckpt64, tmp_path):
    """Each task in a fresh interpreter (one thread, no chunk cache), after a warm-up:
    the kernel's peak RSS above the resident set before the task, against the plan's
    estimate; 64, 128 and 256 px tiles of the metadata-only world (values: its typical
    inputs, so the model computes), the first year of the largest tile."""
    from kgml_grid.bench.taskmem import measure_in_subprocess

    got = {}
    for tile in (64, 128, 256):
        r = measure_in_subprocess(small, ckpt64, chunks=f"y={tile},x={tile},time=365",
                                  work=tmp_path, extra=["--end", "2001-12-31"])  # fmt: skip
        assert r["peak_reset"], "the kernel did not let the peak be reset (/proc/self/clear_refs)"
        got[tile] = r
        assert 0.7 <= r["ratio"] <= 1.3, (
            tile,
            r["measured"] / 2**20,
            r["estimate"]["total"] / 2**20,
        )
    assert got[256]["measured"] > 1.5 * got[64]["measured"]  # the sizes differ in memory
