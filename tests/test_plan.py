"""The upscaling plan: pure chunk arithmetic, checks before compute, lazy graphs."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from kgml_grid import cubes
from kgml_grid.catalog import catalog_yaml, open_catalog, write_catalog
from kgml_grid.checkpoint import checkpoint_hash, fit_norm, save_checkpoint
from kgml_grid.cli import main
from kgml_grid.execute import build_graph, upscale
from kgml_grid.features import assemble, pixel_inputs, pixel_targets
from kgml_grid.grid import GridSpec, _same_crs, cells_spanned, coarse_index
from kgml_grid.model import DAILY_TARGETS, ModelConfig, build_model
from kgml_grid.plan import (
    BlockKey,
    PlanError,
    make_plan,
    memory_estimate,
    parse_bytes,
    parse_chunks,
)
from kgml_grid.schema import FEATURES, feature_units


def make_checkpoint(world, path: Path, *, hidden: int = 8, seed: int = 0, features=FEATURES,
                    units=None) -> Path:  # fmt: skip
    """A randomly initialised model with normalization statistics from some pixels."""
    cat = open_catalog(world.catalog)
    layers = cat.open_all()
    ny, nx = world.grid.shape
    r, c = (a.ravel() for a in np.meshgrid(np.arange(0, ny, 3), np.arange(0, nx, 3), indexing="ij"))
    with dask.config.set(scheduler="threads"):
        time, daily, soil, cby = pixel_inputs(layers, r, c)
        x, _ = assemble(time=time, daily=daily, soil=soil, crop_by_year=cby)
        y, yy = pixel_targets(layers["truth"], r, c)
    data = {f: x[..., i] for i, f in enumerate(FEATURES)}
    data.update({n: y[..., i] for i, n in enumerate(DAILY_TARGETS)})
    data["yield"] = yy
    norm = fit_norm(data)
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="kgml", n_features=len(FEATURES), hidden=hidden)
    save_checkpoint(build_model(cfg), path, config=cfg, features=features,
                    units=units or feature_units(), norm=norm)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8)


@pytest.fixture(scope="module")
def holed(tiny_world, tmp_path_factory):
    """The tiny world with no crop in its top-left 10 x 12 pixels (one whole tile)."""
    d = tmp_path_factory.mktemp("holed")
    crop = xr.open_zarr(
        tiny_world.root / "crop.zarr", consolidated=False, decode_coords="all"
    ).load()
    for v in crop.variables.values():
        v.encoding = {}
    crop["crop_type"][:, :10, :12] = 0
    cubes.write_cube(crop, d / "crop.zarr", {"year": 1, "y": 20, "x": 24})
    root = tiny_world.root
    entries = {
        n: {"layer": n, "path": str(root / f"{n}.zarr")}
        for n in ("weather", "satellite", "soil", "truth")
    }
    entries["crop"] = {"layer": "crop", "path": str(d / "crop.zarr")}
    text = catalog_yaml(entries, crs=open_catalog(tiny_world.catalog).crs, description="holed")
    return write_catalog(d / "catalog.yaml", text)


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------


def test_parse_chunks_and_bytes():
    assert parse_chunks("y=48, x=48,time=365") == {"y": 48, "x": 48, "time": 365}
    assert parse_chunks("time=-1") == {"time": -1}
    assert parse_chunks({"time": (100, 37, 5)}) == {"time": (100, 37, 5)}
    assert parse_chunks(None) == {}
    assert parse_bytes("4GiB") == 4 * 2**30 and parse_bytes("500 MB") == 500 * 10**6
    with pytest.raises(PlanError, match="'z'"):
        parse_chunks("z=3")
    with pytest.raises(PlanError, match="y=abc is not an integer"):
        parse_chunks("y=abc")
    with pytest.raises(PlanError, match="x=0 must be a positive integer or -1"):
        parse_chunks("x=0")
    with pytest.raises(PlanError, match="'time' is given twice"):
        parse_chunks("time=3,time=4")
    with pytest.raises(PlanError, match="is not DIM=N"):
        parse_chunks("y48")


def test_block_key_is_immutable_hashable_and_named():
    k = BlockKey(3, 1, 0)
    assert k.name == "t0003_y0001_x0000" and BlockKey.parse(k.name) == k
    assert len({k, BlockKey(3, 1, 0)}) == 1
    with pytest.raises(AttributeError):
        k.chunk = 4  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------


def test_plan_counts_blocks_tasks_and_skips_tiles_without_crop(holed, ckpt, tmp_path):
    plan = make_plan(holed, ckpt, chunks="y=10,x=12,time=200")
    crop = xr.open_zarr(Path(plan.paths["crop"]), consolidated=False)["crop_type"].values
    assert plan.tiles == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert plan.skipped_tiles == [(0, 0)]
    assert plan.crop_counts[0, 0] == 0 and plan.n_crop_pixels == int((crop > 0).any(0).sum())
    assert plan.time_chunks[:-1] == (200,) * (plan.n_time_chunks - 1)
    assert sum(plan.time_chunks) == plan.n_days == len(plan.time)
    assert plan.n_blocks == 3 * plan.n_time_chunks == len(plan.blocks)
    assert plan.n_tasks == plan.n_blocks + 3
    assert all(b.tile != (0, 0) for b in plan.blocks)
    text = str(plan)
    assert "1 skipped (no crop pixel): y0x0" in text and f"tasks       {plan.n_tasks}" in text
    assert "per task" in text and plan.memory_per_task > 0
    assert not list(tmp_path.iterdir())  # planning wrote nothing


def test_plan_grid_not_multiple_of_tile_and_uneven_time(tiny_world, ckpt):
    plan = make_plan(tiny_world.catalog, ckpt, start="2010-01-01", end="2010-12-31",
                     chunks={"y": 7, "x": 9, "time": (100, 37, 228)})  # fmt: skip
    assert plan.y_chunks == (7, 7, 6) and plan.x_chunks == (9, 9, 6)
    assert plan.time_bounds == [(0, 100), (100, 137), (137, 365)]
    assert plan.region(BlockKey(1, 2, 2)) == {
        "time": slice(100, 137),
        "y": slice(14, 20),
        "x": slice(18, 24),
    }
    spec = plan.tile_spec(2, 2)
    assert spec.shape == (6, 6) and spec.wrow.shape == (6, 6)
    assert spec.wrow.min() == 0 and spec.wcol.min() == 0  # relative to the tile's weather window
    with pytest.raises(PlanError, match="add up to 300 days, but the run has 365"):
        make_plan(tiny_world.catalog, ckpt, start="2010-01-01", end="2010-12-31",
                  chunks={"time": (100, 200)})  # fmt: skip


def test_template_is_lazy_cf_annotated_with_provenance(tiny_world, ckpt):
    plan = make_plan(tiny_world.catalog, ckpt, chunks="y=10,x=12,time=365")
    t = plan.template()
    for v in ("ra", "rh", "reco", "nee", "gpp", "yield"):
        assert t[v].chunks is not None, v  # dask-backed: nothing computed
        assert t[v].attrs["units"] in ("g m-2 d-1", "g m-2")
    assert t["ra"].attrs["standard_name"] == "autotrophic_respiration_carbon_flux"
    assert "crs_wkt" in t["spatial_ref"].attrs
    assert t.attrs["kgml_checkpoint_hash"] == checkpoint_hash(ckpt)
    assert t.attrs["kgml_plan_id"] == plan.plan_id
    assert '"chunks"' in t.attrs["kgml_plan"] and "crop" in t.attrs["kgml_catalog_entries"]
    assert t.sizes["year"] == len(plan.years)


def test_plan_identity_names_differences(tiny_world, ckpt):
    a = make_plan(tiny_world.catalog, ckpt, chunks="time=365")
    b = make_plan(tiny_world.catalog, ckpt, chunks="time=200")
    assert a.plan_id == make_plan(tiny_world.catalog, ckpt, chunks="time=365").plan_id
    assert a.plan_id != b.plan_id
    diffs = b.differences(a.to_dict())
    assert len(diffs) == 1 and diffs[0].startswith("chunks:")


def test_bbox_selects_pixel_centres(tiny_world, ckpt):
    g = tiny_world.grid
    bbox = (g.x[3] - 1, g.y[9] - 1, g.x[10] + 1, g.y[2] + 1)
    plan = make_plan(tiny_world.catalog, ckpt, bbox=bbox)
    assert plan.window == (2, 10, 3, 11) and plan.grid.shape == (8, 8)
    np.testing.assert_allclose(plan.grid.x, g.x[3:11])
    np.testing.assert_allclose(plan.grid.y, g.y[2:10])
    # the same box in longitude/latitude, slightly inside
    from pyproj import Transformer

    tr = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    lon0, lat0 = tr.transform(g.x[3] + 10, g.y[9] + 10)
    lon1, lat1 = tr.transform(g.x[10] - 10, g.y[2] - 10)
    p2 = make_plan(
        tiny_world.catalog, ckpt, bbox=f"{lon0},{lat0},{lon1},{lat1}", bbox_crs="EPSG:4326"
    )
    assert p2.grid.ny >= 6 and p2.grid.nx >= 6


# --------------------------------------------------------------------------------------
# bad input: refused before any compute, nothing written
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_ckpts(tiny_world, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    swapped = (FEATURES[1], FEATURES[0], *FEATURES[2:])
    units = dict(feature_units())
    units["tair"] = "K"
    return {
        "order": make_checkpoint(tiny_world, d / "order", features=swapped),
        "units": make_checkpoint(tiny_world, d / "units", units=units),
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "order"}, r"feature order differs from the schema at position 0: 'swrad'"),
        ({"model": "units"}, r"feature 'tair' has units 'K', expected 'degC'"),
        ({"bbox": "0,0,1,1"}, r"is not inside the grid, whose bounds are"),
        ({"bbox": "1,2,3"}, r"need four numbers"),
        ({"start": "1999-01-01"}, r"--start 1999-01-01 is outside the cubes: days 20\d\d-01-01\.\."),
        ({"end": "2030-12-31"}, r"--end 2030-12-31 is outside the cubes"),
        ({"start": "2011-05-01", "end": "2011-01-01"}, r"--end 2011-01-01 is before --start 2011-05-01"),
        ({"start": "May 40th"}, r"--start 'May 40th' is not a date"),
        ({"chunks": "y=0"}, r"y=0 must be a positive integer or -1"),
        ({"chunks": "y=-1,x=-1,time=-1", "memory_limit": "64MB"},
         r"need about .* per task, more than 50% of memory_limit .*; try --chunks time=\d+"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_nothing_is_written(
    tiny_world, ckpt, bad_ckpts, tmp_path, kwargs, match
):
    kwargs = dict(kwargs)
    model = bad_ckpts[kwargs.pop("model")] if "model" in kwargs else ckpt
    memory_limit = kwargs.pop("memory_limit", None)
    out = tmp_path / "out.zarr"
    with pytest.raises(PlanError, match=match):
        if memory_limit:
            make_plan(tiny_world.catalog, model, memory_limit=memory_limit, **kwargs)
        else:
            upscale(tiny_world.catalog, model, out, cluster="serial", progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tiny_world, ckpt, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    rc = main(["upscale", "--catalog", str(tiny_world.catalog), "--model", str(ckpt), "--out", str(out),
               "--chunks", "y=10,x=12,time=365", "--dry-run"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "dry run: nothing computed or written" in text and "upscaling plan" in text
    assert "2 x 2 tiles" in text
    assert not list(tmp_path.iterdir())
    rc = main(["upscale", "--catalog", str(tiny_world.catalog), "--model", str(ckpt), "--out", str(out),
               "--end", "2099-01-01", "--dry-run"])  # fmt: skip
    assert rc == 2 and "--end 2099-01-01 is outside the cubes" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------


def _raising_scheduler(*args, **kwargs):
    raise AssertionError("building the graph computed something")


def test_building_the_graph_computes_and_writes_nothing(holed, ckpt, tmp_path):
    plan = make_plan(holed, ckpt, chunks="y=10,x=12,time=100")
    out = tmp_path / "out.zarr"
    with dask.config.set(scheduler=_raising_scheduler):
        graph = build_graph(plan, out)
        template = plan.template()
    assert graph.n_tasks == plan.n_tasks == len(dict(graph.dask))
    assert set(graph.blocks) == set(plan.blocks)
    assert template["nee"].chunks is not None
    assert not list(tmp_path.iterdir())
    # resuming leaves out done blocks, and the task count follows the plan
    done = {b for b in plan.blocks if b.chunk < 3}
    g2 = build_graph(plan, out, done=done)
    assert g2.n_tasks == plan.n_tasks_for(done) == plan.n_tasks - len(done)


def test_graph_size_does_not_grow_with_the_model(tiny_world, ckpt, tmp_path):
    big = make_checkpoint(tiny_world, tmp_path / "m256", hidden=256)
    sizes, weights = {}, {}
    for name, path in (("small", ckpt), ("big", big)):
        plan = make_plan(tiny_world.catalog, path, chunks="y=10,x=12,time=365")
        graph = build_graph(plan, tmp_path / "out.zarr", run_id="fixed")
        sizes[name] = len(cloudpickle.dumps(dict(graph.dask), protocol=pickle.HIGHEST_PROTOCOL))
        weights[name] = (Path(path) / "model.safetensors").stat().st_size
    assert weights["big"] > 100 * weights["small"]
    assert abs(sizes["big"] - sizes["small"]) < 200, sizes  # path and hash strings only


def test_partial_first_season_yield_is_nan(tiny_world, ckpt):
    from kgml_grid.execute import SerialExecutor

    plan = make_plan(tiny_world.catalog, ckpt, start="2010-03-01", end="2011-12-31",
                     bbox=_small_bbox(tiny_world), chunks="time=-1")  # fmt: skip
    assert plan.partial_first_season and "2010: NaN" in str(plan)
    ds = SerialExecutor().execute(plan).dataset
    crop = ds["nee"].notnull().any("time")
    assert bool(ds["yield"].sel(year=2010).isnull().all())
    assert bool(ds["yield"].sel(year=2011).where(crop).notnull().sum() == crop.sum())
    assert "partial season" in ds["yield"].attrs["comment"]


def _small_bbox(world):
    g = world.grid
    return (g.x[0], g.y[5], g.x[7], g.y[0])


def test_default_time_chunks_are_calendar_years(tiny_world, ckpt):
    plan = make_plan(tiny_world.catalog, ckpt)
    per_year = pd.Series(plan.time.year).value_counts().sort_index()
    assert plan.time_chunks == tuple(int(n) for n in per_year.values)
    assert plan.output_chunks["time"] == 365
    mid = make_plan(tiny_world.catalog, ckpt, start="2010-07-01", end="2011-03-31")
    assert mid.time_chunks == (184, 90)


def test_plan_time_axis_is_daily(tiny_world, ckpt):
    plan = make_plan(tiny_world.catalog, ckpt, start="2011-02-03", end="2011-02-10")
    assert list(plan.time) == list(pd.date_range("2011-02-03", "2011-02-10"))
    assert plan.partial_last_season and plan.years == [2011]


# --------------------------------------------------------------------------------------
# weather on a lat/lon grid under the projected target grid
# --------------------------------------------------------------------------------------


def _weather_catalog(world, d: Path, weather: xr.Dataset, wgrid, name: str) -> Path:
    """The world's catalog with its weather layer replaced by ``weather`` on ``wgrid``."""
    ds = cubes.annotate(weather, wgrid, title=f"weather {name}")
    cubes.write_cube(ds, d / f"weather_{name}.zarr", {"time": 365, "y": 64, "x": 64})
    root = world.root
    crs = open_catalog(world.catalog).crs
    entries = {
        n: {"layer": n, "path": str(root / f"{n}.zarr")}
        for n in ("satellite", "soil", "crop", "truth")
    }
    entries["weather"] = {"layer": "weather", "path": str(d / f"weather_{name}.zarr"),
                          "crs": "EPSG:4326" if wgrid.crs == "EPSG:4326" else crs}  # fmt: skip
    return write_catalog(
        d / f"catalog_{name}.yaml", catalog_yaml(entries, crs=crs, description=name)
    )


@pytest.fixture(scope="module")
def latlon_worlds(tiny_world, tmp_path_factory):
    """The tiny world with its weather on EPSG:4326 at 0.125 deg (NLDAS-2's grid), sampled
    from the world's own weather at each lat/lon cell centre, and the same weather on a
    projected grid (the fine grid itself: each pixel holds its lat/lon cell's values), so
    that every pixel sees identical weather in both."""
    import math

    from pyproj import Transformer

    from kgml_grid.grid import lonlat

    d = tmp_path_factory.mktemp("latlon")
    layers = open_catalog(tiny_world.catalog).open_all()
    wx = layers["weather"].load()
    g, wg = tiny_world.grid, tiny_world.weather_grid
    lon, lat = lonlat(g)
    res = 0.125
    w, e = math.floor(lon.min() / res) * res - res, math.ceil(lon.max() / res) * res + res
    s, n = math.floor(lat.min() / res) * res - res, math.ceil(lat.max() / res) * res + res
    ll = GridSpec("EPSG:4326", w, n, res, round((n - s) / res), round((e - w) / res))
    # each lat/lon cell takes the projected weather cell under its centre (nearest inside)
    cx, cy = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(
        *np.meshgrid(ll.x, ll.y, indexing="xy"))  # fmt: skip
    wr = np.clip(np.floor((wg.y0 - cy) / wg.res).astype(int), 0, wg.ny - 1)
    wc = np.clip(np.floor((cx - wg.x0) / wg.res).astype(int), 0, wg.nx - 1)
    names = ("tair", "swrad", "vpd", "precip")
    time = wx["time"].values
    on_ll = {v: (("time", "y", "x"), wx[v].values[:, wr, wc]) for v in names}
    r, c = coarse_index(g, ll)
    on_fine = {v: (("time", "y", "x"), on_ll[v][1][:, r, c]) for v in names}
    cat_ll = _weather_catalog(tiny_world, d, xr.Dataset(on_ll, coords={"time": time}), ll, "latlon")
    cat_fine = _weather_catalog(
        tiny_world, d, xr.Dataset(on_fine, coords={"time": time}), g, "projected"
    )
    return cat_ll, cat_fine, ll


def test_latlon_weather_plans_with_sane_memory_and_upscales_like_projected(
    latlon_worlds, ckpt, tmp_path
):
    from kgml_grid.execute import SerialExecutor, upscale

    cat_ll, cat_fine, _ = latlon_worlds
    assert len(set(np.unique(open_catalog(cat_ll).open_all()["weather"]["tair"].values[0]))) > 1
    kw = {"start": "2010-01-01", "end": "2010-12-31", "chunks": "y=10,x=12,time=365"}
    p_ll, p_fine = make_plan(cat_ll, ckpt, **kw), make_plan(cat_fine, ckpt, **kw)
    assert p_ll.weather_grid.res == 0.125 and _same_crs(p_ll.weather_grid.crs, "EPSG:4326")
    # a 10 x 12 tile of 500 m pixels lies in 1 or 2 cells of 0.125 deg per side; the
    # estimate bounds that with its 2-cell margin for straddling
    spans = [
        (s.wy[1] - s.wy[0], s.wx[1] - s.wx[0]) for s in (p_ll.tile_spec(*t) for t in p_ll.tiles)
    ]
    rows, cols = cells_spanned(p_ll.grid, p_ll.weather_grid, (10, 12))
    assert all(1 <= a <= 2 and 1 <= b <= 2 for a, b in spans), spans
    assert (rows, cols) == (3, 3)
    # the weather block (fewer cells on lat/lon) is held while reading, not at the peak
    assert p_ll.memory["phase_read"] < p_fine.memory["phase_read"]
    assert p_ll.memory_per_task <= p_fine.memory_per_task < 50 * 2**20
    # training samples read the same weather per pixel from either cube
    r, c = np.array([0, 7, 19]), np.array([0, 13, 23])
    with dask.config.set(scheduler="threads"):
        d_ll = pixel_inputs(open_catalog(cat_ll).open_all(), r, c)[1]
        d_fine = pixel_inputs(open_catalog(cat_fine).open_all(), r, c)[1]
    for v in ("tair", "swrad", "vpd", "precip"):
        np.testing.assert_array_equal(d_ll[v], d_fine[v], err_msg=v)
    ref = SerialExecutor().execute(p_fine).dataset
    crop = ref["nee"].notnull().any("time")
    assert int(crop.sum()) > 100
    # through the library call that writes a store (serial executor, no cluster)
    res = upscale(cat_ll, ckpt, tmp_path / "ll.zarr", cluster="serial", progress=False, **kw)
    got = xr.open_zarr(res.out, consolidated=False)
    for v in ("ra", "rh", "reco", "nee", "yield"):
        np.testing.assert_allclose(got[v].values, ref[v].values, rtol=0, atol=1e-6, err_msg=v)


@pytest.mark.parametrize(("target", "weather"), [
    # CONUS Albers at 250 m under NLDAS-2 (0.125 deg): the case
    (GridSpec("EPSG:5070", -2_400_000, 3_200_000, 250, 12_000, 19_000), GridSpec("EPSG:4326", -125, 53, 0.125, 224, 464)),
    # the other way round: a lat/lon target (0.0025 deg) under Daymet-like 1 km LCC weather
    (GridSpec("EPSG:4326", -97.0, 42.0, 0.0025, 800, 800),
     GridSpec("+proj=lcc +lat_0=42.5 +lon_0=-100 +lat_1=25 +lat_2=60 +ellps=WGS84 +units=m", -200_000,
              200_000, 1000, 400, 400)),
])  # fmt: skip
def test_weather_cells_per_tile_in_the_weather_grids_units(target, weather):
    rows, cols = cells_spanned(target, weather, (256, 256))
    # the tiles' real weather windows (from the pixel -> cell mapping) at corners and centre
    for r0, c0 in [(0, 0), (0, target.nx - 256), (target.ny - 256, 0), (target.ny - 256, target.nx - 256),
                   (target.ny // 2, target.nx // 2)]:  # fmt: skip
        sub = GridSpec(
            target.crs,
            target.x0 + c0 * target.res,
            target.y0 - r0 * target.res,
            target.res,
            256,
            256,
        )
        try:
            r, c = coarse_index(sub, weather)
        except ValueError:
            continue  # this corner lies outside the weather grid
        assert int(np.ptp(r)) + 1 <= rows and int(np.ptp(c)) + 1 <= cols
        assert rows <= int(np.ptp(r)) + 1 + 4 and cols <= int(np.ptp(c)) + 1 + 4
    kw = {
        "days": 365,
        "tile": (256, 256),
        "crop_pixels": 256 * 256,
        "model": {"hidden": 64},
        "batch_pixels": 4096,
    }
    est = memory_estimate(weather_cells=rows * cols, **kw)
    total = est["total"]
    # the weather block is alive while the task reads (the phase that holds the raw blocks)
    weather = est["phase_read"] - memory_estimate(weather_cells=0, **kw)["phase_read"]
    # a year of 4 variables over the tile's cells: a small part of the task, not the
    # petabytes that metres divided by degrees gave ((256 * 250 / 0.125 + 2) ** 2 cells)
    assert weather == 4 * 4 * 365 * rows * cols < 0.01 * total < 16 * 2**30
