"""Values checked before compute (kgml_grid.values) and outputs checked after compute
(kgml_grid.execute.check_outputs): impossible cubes are refused before anything is
computed or written, and a store is never marked complete with all-NaN blocks."""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from kgml_grid import cubes, values
from kgml_grid.catalog import catalog_yaml, open_catalog, write_catalog
from kgml_grid.cli import main
from kgml_grid.execute import (
    BlockError,
    OutputWarning,
    SerialExecutor,
    check_outputs,
    records_dir,
    upscale,
)
from kgml_grid.plan import BlockKey, PlanError, make_plan
from kgml_grid.train import TrainConfig, pretrain

sys.path.insert(0, str(Path(__file__).parent))
from test_plan import make_checkpoint

LAYERS = ("weather", "satellite", "soil", "crop", "truth")
CHUNKS = {"time": 365, "year": 1, "y": 20, "x": 24}  # the tiny preset's


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory):
    return make_checkpoint(tiny_world, tmp_path_factory.mktemp("ckpt") / "m8", hidden=8)


@pytest.fixture(scope="module")
def originals(tiny_world):
    """Every layer of the tiny world, in memory, with encodings dropped (to rewrite)."""
    out = {}
    for n in LAYERS:
        ds = xr.open_zarr(
            tiny_world.root / f"{n}.zarr", consolidated=False, decode_coords="all"
        ).load()
        for v in ds.variables.values():
            v.encoding = {}
        out[n] = ds
    return out


def variant(
    world, originals, where: Path, layer: str, change: Callable[[xr.Dataset], xr.Dataset]
) -> Path:
    """A catalog of the tiny world whose ``layer`` is rewritten by ``change`` into ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    ds = change(originals[layer].copy(deep=True))
    cubes.write_cube(ds, where / f"{layer}.zarr", CHUNKS)
    entries = {
        n: {"layer": n, "path": str((where if n == layer else world.root) / f"{n}.zarr")}
        for n in LAYERS
    }
    text = catalog_yaml(entries, crs=open_catalog(world.catalog).crs, description=f"bad {layer}")
    return write_catalog(where / "catalog.yaml", text)


def _set(var: str, fn: Callable[[np.ndarray], np.ndarray], dtype: str | None = None):
    def change(ds: xr.Dataset) -> xr.Dataset:
        data = fn(np.array(ds[var].values))
        ds[var] = ds[var].copy(data=data.astype(dtype or data.dtype))
        return ds

    return change


def _one(v: np.ndarray, idx: tuple[int, ...], value: float) -> np.ndarray:
    v[idx] = value
    return v


def _refused_before_writing(cat: Path, ckpt: Path, out: Path, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        upscale(cat, ckpt, out, cluster="serial", progress=False)
    assert not out.exists() and not records_dir(out).exists()


# --------------------------------------------------------------------------------------
# the real tiny world passes; the sampled check reads only a few chunks
# --------------------------------------------------------------------------------------


def test_tiny_world_passes_both_modes(tiny_world):
    cat = open_catalog(tiny_world.catalog)
    layers = cat.open_all()
    sampled = values.check_layers(layers, sources=values.catalog_sources(cat), mode="sample")
    full = values.check_layers(layers, sources=values.catalog_sources(cat), mode="full")
    assert sampled.findings == [] and full.findings == []
    for key, s in sampled.stats.items():
        assert s.chunks_checked == min(values.SAMPLE_CHUNKS, s.chunks_total), key
        assert full.stats[key].chunks_checked == s.chunks_total
    assert (
        sampled.stats[("satellite", "gpp_sat")].chunks_checked
        < full.stats[("satellite", "gpp_sat")].chunks_checked
    )
    assert full.stats[("satellite", "gpp_sat")].n == int(
        np.prod(layers["satellite"]["gpp_sat"].shape)
    )


def test_sample_indices_spread_over_the_chunk_grid():
    assert values._sample_indices([5], 4) == [(0,), (1,), (3,), (4,)]
    assert values._sample_indices([2, 2], 4) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    picks = values._sample_indices([8, 2, 2], 4)
    assert picks[0] == (0, 0, 0) and picks[-1] == (7, 1, 1) and len(picks) == 4


# --------------------------------------------------------------------------------------
# the nine "wrong results accepted" cases of issue 11 (the resume one is part C's)
# --------------------------------------------------------------------------------------


def test_kelvin_labelled_degc_is_refused(tiny_world, originals, ckpt, tmp_path):
    cat = variant(
        tiny_world, originals, tmp_path / "w", "weather", _set("tair", lambda v: v + 273.15)
    )
    _refused_before_writing(cat, ckpt, tmp_path / "out.zarr",
                            r"weather.zarr\) \(layer 'weather'\): variable 'tair' has values 2\d\d\.\d+\.\.3\d\d\.\d+, "
                            r"labelled 'degC': these are kelvin, not degC .*convert \(value - 273.15\)")  # fmt: skip


def test_kelvin_refused_by_training_before_any_output(tiny_world, originals, tmp_path):
    cat = variant(
        tiny_world, originals, tmp_path / "w", "weather", _set("tair", lambda v: v + 273.15)
    )
    out = tmp_path / "model"
    with pytest.raises(
        values.CubeValueError, match=r"variable 'tair' has values .* these are kelvin"
    ):
        pretrain(cat, out, TrainConfig(epochs=1, hidden=8), progress=False)
    assert not out.exists()


def test_satellite_gpp_all_nan_is_refused(tiny_world, originals, ckpt, tmp_path):
    cat = variant(
        tiny_world,
        originals,
        tmp_path / "w",
        "satellite",
        _set("gpp_sat", lambda v: np.full_like(v, np.nan)),
    )
    _refused_before_writing(cat, ckpt, tmp_path / "out.zarr",
                            r"\(layer 'satellite'\): variable 'gpp_sat' has no finite value: all 701,280 "
                            r"values are missing \(NaN\); the layer holds no data")  # fmt: skip


def test_all_nan_is_not_a_sampling_accident(tiny_world, originals, tmp_path):
    """Sampled chunks all NaN, data in an unsampled one: read on, accept."""

    def only_chunk_2(v):
        out = np.full_like(v, np.nan)
        out[730:1095] = v[730:1095]  # time chunk 2 of 5: not among the sampled (0, 1, 3, 4)
        return out

    cat = variant(tiny_world, originals, tmp_path / "w", "satellite", _set("gpp_sat", only_chunk_2))
    ds = open_catalog(cat).open("satellite")
    rep = values.check_dataset(ds, "satellite", variables=["gpp_sat"])
    assert rep.stats[("satellite", "gpp_sat")].n_finite == 0  # the sample saw no data...
    assert rep.findings == []  # ...but the layer has some


def test_negative_precipitation_is_refused(tiny_world, originals, ckpt, tmp_path):
    cat = variant(
        tiny_world, originals, tmp_path / "w", "weather", _set("precip", lambda v: -v - 1.0)
    )
    _refused_before_writing(cat, ckpt, tmp_path / "out.zarr",
                            r"variable 'precip': [\d,]+ of [\d,]+ finite values \(100 %\) lie outside the valid "
                            r"range 0\.\.600 mm d-1 \([\d,]+ below, 0 above; .*the farthest is -\d+\.?\d* at "
                            r"time=\d{4}-\d\d-\d\d, y=[-\d.e+]+, x=[-\d.e+]+; .*more than 0\.1 % are outside")  # fmt: skip


def test_gpp_of_a_million_is_refused_even_once(tiny_world, originals, ckpt, tmp_path):
    cat = variant(tiny_world, originals, tmp_path / "w", "satellite",
                  _set("gpp_sat", lambda v: _one(v, (10, 4, 5), 1e6)))  # fmt: skip
    y, x = originals["satellite"]["y"].values[4], originals["satellite"]["x"].values[5]
    _refused_before_writing(cat, ckpt, tmp_path / "out.zarr",
                            rf"variable 'gpp_sat': 1 of [\d,]+ finite values .* the farthest is 1e\+06 at "
                            rf"time=2009-01-11, y={re.escape(f'{y:.6g}')}, x={re.escape(f'{x:.6g}')}; .*; 1 beyond "
                            r"it by more than its width: check the source's units and scale factor")  # fmt: skip


def test_crop_code_outside_the_legend_is_refused(tiny_world, originals, ckpt, tmp_path):
    cat = variant(tiny_world, originals, tmp_path / "w", "crop",
                  _set("crop_type", lambda v: _one(v, (1, slice(0, 3), slice(0, 2)), 7)))  # fmt: skip
    _refused_before_writing(cat, ckpt, tmp_path / "out.zarr",
                            r"\(layer 'crop'\): variable 'crop_type' has codes \[7\] outside its legend "
                            r"\(0 other, 1 corn, 2 soybean\): 6 values of code 7, e\.g\. at year=2010, y=")  # fmt: skip


def test_soil_all_nan_is_refused(tiny_world, originals, ckpt, tmp_path):
    cat = variant(
        tiny_world,
        originals,
        tmp_path / "w",
        "soil",
        _set("soc", lambda v: np.full_like(v, np.nan)),
    )
    _refused_before_writing(
        cat, ckpt, tmp_path / "out.zarr", r"\(layer 'soil'\): variable 'soc' has no finite value"
    )


def test_tair_stored_as_uint8_is_refused(tiny_world, originals, ckpt, tmp_path):
    cat = variant(tiny_world, originals, tmp_path / "w", "weather",
                  _set("tair", lambda v: np.clip(v, 0, 60), dtype="uint8"))  # fmt: skip
    _refused_before_writing(
        cat,
        ckpt,
        tmp_path / "out.zarr",
        r"variable 'tair' is stored as uint8; a continuous variable must be floating point",
    )


def test_float_crop_codes_are_refused(tiny_world, originals):
    ds = originals["crop"].copy()
    ds["crop_type"] = ds["crop_type"].astype("float32")
    rep = values.check_dataset(ds, "crop", source="crop.zarr")
    with pytest.raises(values.CubeValueError, match=r"crop.zarr \(layer 'crop'\): variable 'crop_type' is stored "
                                                     r"as float32; a categorical variable .* must be an integer"):  # fmt: skip
        rep.raise_or_warn()


def test_nan_weights_are_refused_before_writing(tiny_world, ckpt, tmp_path):
    import safetensors.torch

    from kgml_grid.checkpoint import WEIGHTS_NAME, _sha256

    bad = tmp_path / "nan_ckpt"
    bad.mkdir()
    tensors = safetensors.torch.load_file(str(ckpt / WEIGHTS_NAME))
    tensors["ra.head.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(tensors, str(bad / WEIGHTS_NAME), metadata={"format": "pt"})
    meta = json.loads((ckpt / "model.json").read_text())
    meta["weights"]["sha256"] = _sha256(bad / WEIGHTS_NAME)
    (bad / "model.json").write_text(json.dumps(meta))
    _refused_before_writing(tiny_world.catalog, bad, tmp_path / "out.zarr",
                            r"nan_ckpt/model.safetensors: tensor 'ra.head.weight' \(1, 8\) has 1 non-finite "
                            r"values \(1 NaN, 0 inf\)")  # fmt: skip


# --------------------------------------------------------------------------------------
# thresholds: a few near misses warn, a full check finds what a sample cannot
# --------------------------------------------------------------------------------------


def test_a_few_slightly_negative_values_warn_and_run(tiny_world, originals, ckpt, tmp_path):
    def few(v):
        v[0, 0, :3] = -0.01  # 3 of 43,830 values: resampling overshoot
        return v

    cat = variant(tiny_world, originals, tmp_path / "w", "weather", _set("precip", few))
    with pytest.warns(values.CubeValueWarning, match=r"variable 'precip': 3 of [\d,]+ finite values .* accepted "
                                                     r"\(at most 0.1 % may be slightly outside\)"):  # fmt: skip
        plan = make_plan(cat, ckpt)
    assert plan.n_blocks > 0


def test_full_check_reads_every_chunk(tiny_world, originals, tmp_path, capsys):
    """A bad value in an unsampled chunk: the sample misses it, --check-values refuses it."""
    cat = variant(
        tiny_world,
        originals,
        tmp_path / "w",
        "satellite",
        _set("gpp_sat", lambda v: _one(v, (800, 2, 3), -500.0)),
    )  # time chunk 2: never sampled
    assert main(["catalog", str(cat)]) == 0
    out = capsys.readouterr()
    assert "all values valid" in out.out and "sampled chunks" in out.out
    assert main(["catalog", str(cat), "--check-values"]) == 2
    out = capsys.readouterr()
    assert "satellite  gpp_sat            5/5" in out.out  # the table: every chunk read
    assert "refused: " in out.err
    assert ("1 variables hold impossible values (listed above); first: " in out.err
            and "variable 'gpp_sat': 1 of" in out.err and "the farthest is -500 at time=2011-03-12" in out.err)  # fmt: skip


def test_check_layers_refuses_an_unknown_mode(originals):
    with pytest.raises(ValueError, match="value check mode 'most': use 'sample' or 'full'"):
        values.check_layers({"soil": originals["soil"]}, mode="most")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# outputs checked after compute
# --------------------------------------------------------------------------------------


def test_check_outputs_unit():
    key = BlockKey(1, 0, 2)
    good = {"ra": np.ones((3, 5)), "nee": np.zeros((3, 5))}
    assert check_outputs(key, good, 3) == 0
    some = {
        "ra": np.ones((3, 5)),
        "nee": np.where(np.arange(3)[:, None] == 1, np.nan, 0.0) * np.ones((3, 5)),
    }
    assert check_outputs(key, some, 3) == 1
    with pytest.raises(
        BlockError,
        match=r"block\(time chunk 1, tile y0 x2\): the outputs \(ra, nee\) are NaN at all 3 crop pixels",
    ):
        check_outputs(key, {"ra": np.full((3, 5), np.nan), "nee": np.zeros((3, 5))}, 3)
    with pytest.raises(
        BlockError,
        match=r"block\(time chunk 1, tile y0 x2\): output 'nee' is infinite at crop pixel 2 of 3",
    ):
        check_outputs(
            key,
            {
                "ra": np.ones((3, 5)),
                "nee": np.where(np.arange(3)[:, None] == 2, np.inf, 0.0) * np.ones((3, 5)),
            },
            3,
        )
    assert check_outputs(key, {"ra": np.empty((0, 5))}, 0) == 0


def _soil_nan_at(mask: np.ndarray):
    def change(ds: xr.Dataset) -> xr.Dataset:
        ds["soc"] = ds["soc"].where(~xr.DataArray(mask, dims=("y", "x")))
        return ds

    return change


def test_a_block_with_all_nan_outputs_fails_and_the_store_is_never_complete(
    tiny_world, originals, ckpt, tmp_path
):
    """Soil NaN over one whole tile: not all NaN (the input check passes), but that
    tile's blocks compute nothing: the run fails naming the block, the store stays
    incomplete, the tile's blocks are not recorded."""
    mask = np.zeros(originals["soil"]["soc"].shape, dtype=bool)
    mask[:10, :12] = True
    cat = variant(tiny_world, originals, tmp_path / "w", "soil", _soil_nan_at(mask))
    plan = make_plan(cat, ckpt, chunks="y=10,x=12,time=400")
    assert (0, 0) in plan.crop_tiles
    out = tmp_path / "out.zarr"
    with pytest.raises(BlockError, match=r"block\(time chunk 0, tile y0 x0\): the outputs \(ra, rh, reco, nee, gpp\) are NaN at all "
                                         r"\d+ crop pixels: an input the model needs is missing"):  # fmt: skip
        SerialExecutor().execute(plan, out)
    assert xr.open_zarr(out, consolidated=False).attrs[cubes.COMPLETE_ATTR] == 0
    done = {p.stem for p in (records_dir(out) / "done").glob("*.json")}
    assert not any(n.endswith("_y0000_x0000") for n in done)


@pytest.mark.slow
def test_a_few_nan_pixels_are_counted_and_warned(tiny_world, originals, ckpt, tmp_path):
    crop = originals["crop"]["crop_type"].values
    crop_px = np.argwhere((crop > 0).all(axis=0))[:3]  # crop in every year
    mask = np.zeros(crop.shape[1:], dtype=bool)
    mask[tuple(crop_px.T)] = True
    cat = variant(tiny_world, originals, tmp_path / "w", "soil", _soil_nan_at(mask))
    plan = make_plan(cat, ckpt, start="2010-01-01", end="2010-06-30", chunks="y=10,x=12,time=100")
    out = tmp_path / "out.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SerialExecutor().execute(plan, out)
    msgs = [str(w.message) for w in caught if issubclass(w.category, OutputWarning)]
    assert msgs and f"3 of {plan.n_crop_pixels} crop pixels have NaN outputs" in msgs[0]
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.attrs[cubes.COMPLETE_ATTR] == 1 and ds.attrs["kgml_nan_crop_pixels"] == 3
    ra = ds["ra"].values
    assert np.isnan(ra[:, crop_px[:, 0], crop_px[:, 1]]).all()
    assert np.isfinite(ra).sum() == ra.shape[0] * (
        plan.n_crop_pixels - 3
    )  # every other crop pixel computed


@pytest.mark.slow
def test_on_dask_workers_the_all_nan_block_fails_the_run_and_the_store_stays_incomplete(
    tiny_world, originals, ckpt, tmp_path
):
    """The same check inside a real worker process (a local cluster of one process):
    the run fails naming the block, no record of that tile, the store is not complete."""
    mask = np.zeros(originals["soil"]["soc"].shape, dtype=bool)
    mask[10:, 12:] = True  # tile (1, 1)
    cat = variant(tiny_world, originals, tmp_path / "w", "soil", _soil_nan_at(mask))
    out = tmp_path / "out.zarr"
    with pytest.raises(BlockError, match=r"block\(time chunk 0, tile y1 x1\) failed: BlockError: .* the outputs "
                                         r"\(ra, rh, reco, nee, gpp\) are NaN at all \d+ crop pixels"):  # fmt: skip
        upscale(cat, ckpt, out, start="2010-01-01", end="2010-12-31", chunks="y=10,x=12",
                cluster={"kind": "local", "n_workers": 1, "threads_per_worker": 1}, progress=False)  # fmt: skip
    assert xr.open_zarr(out, consolidated=False).attrs[cubes.COMPLETE_ATTR] == 0
    done = {p.stem for p in (records_dir(out) / "done").glob("*.json")}
    assert not any(n.endswith("_y0001_x0001") for n in done)
