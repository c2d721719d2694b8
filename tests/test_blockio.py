"""Block I/O: the decoded-chunk cache equals plain Zarr reads, stays within its budget,
keeps runs apart; named regions; direct region writes; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgml_grid import blockio, cubes
from kgml_grid.blockio import ChunkCache

SHAPE, CHUNKS = (23, 17, 13), (7, 5, 4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One float32 cube ``v[time, y, x]`` with NaNs, chunks that do not divide it, and
    a CF-packed int16 ``p[y, x]``, written by xarray as every cube is."""
    root = tmp_path_factory.mktemp("blockio") / "cube.zarr"
    rng = np.random.default_rng(0)
    v = rng.normal(size=SHAPE).astype("float32")
    v[rng.random(SHAPE) < 0.2] = np.nan
    p = rng.integers(0, 1000, size=SHAPE[1:]).astype("float32") * 0.5 + 10
    p[0, 0] = np.nan
    ds = xr.Dataset({"v": (("time", "y", "x"), v), "p": (("y", "x"), p)})
    ds["p"].encoding = {"scale_factor": 0.5, "add_offset": 10.0, "_FillValue": -1, "dtype": "int16"}
    ds[["v"]].to_zarr(root, mode="w", zarr_format=3, consolidated=False,
                      encoding=cubes.encoding_for(ds[["v"]], dict(zip(("time", "y", "x"), CHUNKS, strict=True))))  # fmt: skip
    ds[["p"]].to_zarr(root, mode="a", zarr_format=3, consolidated=False)
    return root, v, xr.open_zarr(root, consolidated=False)["p"].values


@st.composite
def regions(draw):
    out = []
    for n in SHAPE:
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        out.append(slice(a, b))
    return tuple(out)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    regs=st.lists(regions(), min_size=1, max_size=6), budget=st.sampled_from([0, 600, 4000, 10**7])
)
def test_cached_reads_equal_plain_reads(store, regs, budget):
    """Any sequence of regions, any budget: the same values as reading the array."""
    root, v, _ = store
    arr = zarr.open_array(str(root / "v"), mode="r")
    cache = ChunkCache(budget)
    for reg in regs:
        got = cache.read(arr, ("t", "v"), reg)
        np.testing.assert_array_equal(got, v[reg])
        got[...] = 0  # callers own what they get: the cache is not aliased
    for reg in regs:
        np.testing.assert_array_equal(cache.read(arr, ("t", "v"), reg), v[reg])
    s = cache.stats()
    assert s["bytes"] <= max(budget, 7 * 5 * 4 * 4)  # at most the budget (or one chunk)
    assert s["peak_bytes"] <= max(budget, 7 * 5 * 4 * 4)


def test_hits_and_misses_count_chunks(store):
    root, _, _ = store
    arr = zarr.open_array(str(root / "v"), mode="r")
    cache = ChunkCache(10**7)
    reg = (slice(0, 7), slice(0, 10), slice(0, 4))  # chunks (0, 0..1, 0)
    cache.read(arr, ("a", "v"), reg)
    assert cache.stats()["misses"] == 2 and cache.stats()["hits"] == 0
    cache.read(arr, ("a", "v"), (slice(2, 5), slice(6, 8), slice(1, 3)))  # inside chunk (0, 1, 0)
    assert cache.stats()["hits"] == 1
    cache.read(arr, ("b", "v"), reg)  # another run: decoded again
    assert cache.stats()["misses"] == 4
    assert cache.drop("a") == 2 and cache.stats()["chunks"] == 2


def test_lru_evicts_least_recently_used(store):
    root, _, _ = store
    arr = zarr.open_array(str(root / "v"), mode="r")
    one = 7 * 5 * 4 * 4
    cache = ChunkCache(2 * one)
    first, second, third = ((slice(0, 1), slice(i * 5, i * 5 + 1), slice(0, 1)) for i in range(3))
    cache.read(arr, ("t",), first)
    cache.read(arr, ("t",), second)
    cache.read(arr, ("t",), first)  # first is now the most recent
    cache.read(arr, ("t",), third)  # evicts second
    assert cache.stats()["evictions"] == 1
    hits = cache.stats()["hits"]
    cache.read(arr, ("t",), first)
    assert cache.stats()["hits"] == hits + 1
    cache.read(arr, ("t",), second)
    assert cache.stats()["misses"] == 4


def test_zero_budget_and_large_regions_bypass(store):
    root, v, _ = store
    arr = zarr.open_array(str(root / "v"), mode="r")
    off = ChunkCache(0)
    np.testing.assert_array_equal(off.read(arr, ("t",), (slice(None),) * 3), v)
    assert off.stats()["bypassed"] == 1 and off.stats()["chunks"] == 0
    small = ChunkCache(3 * 7 * 5 * 4 * 4)  # the whole array would not fit half of it
    np.testing.assert_array_equal(small.read(arr, ("t",), (slice(None),) * 3), v)
    assert small.stats()["bypassed"] == 1


def test_read_region_names_dimensions_and_unpacks(store):
    root, v, p = store
    got = blockio.read_region(
        root, "v", {"x": slice(1, 9), "time": slice(3, 20), "y": slice(0, 6)}, token="r1"
    )
    np.testing.assert_array_equal(got, v[3:20, 0:6, 1:9].transpose(2, 0, 1))
    unpacked = blockio.read_region(root, "p", {"y": slice(None), "x": slice(None)}, token="r1")
    np.testing.assert_allclose(unpacked, p, equal_nan=True)  # as xarray decodes it
    assert np.isnan(unpacked[0, 0])
    with pytest.raises(
        ValueError,
        match=r"cube.zarr/v: dimensions \('time', 'y', 'x'\), the engine reads \('y', 'x'\)",
    ):
        blockio.read_region(root, "v", {"y": slice(0, 2), "x": slice(0, 2)})
    with pytest.raises(FileNotFoundError, match="no Zarr array 'nope'"):
        blockio.read_region(root, "nope", {"y": slice(0, 2)})
    with pytest.raises(ValueError, match="only contiguous regions"):
        blockio.read_region(root, "v", {"time": slice(0, 9, 2), "y": slice(0, 2), "x": slice(0, 2)})
    blockio.drop_run("r1")


def test_write_region_writes_named_regions(tmp_path):
    path = tmp_path / "out.zarr"
    tmpl = xr.Dataset({"a": (("time", "y", "x"), np.zeros((6, 4, 5), "float32"))}).chunk(
        {"time": 3}
    )
    cubes.init_store(tmpl, path, {"time": 3, "y": 4, "x": 5})
    block = np.arange(3 * 4 * 2, dtype="float32").reshape(4, 2, 3)  # y, x, time
    blockio.write_region(
        path, "w1", {"a": block}, {"y": slice(0, 4), "x": slice(1, 3), "time": slice(3, 6)}
    )
    out = xr.open_zarr(path, consolidated=False)["a"].values
    np.testing.assert_array_equal(out[3:6, :, 1:3], block.transpose(2, 0, 1))
    assert np.isnan(out[:3]).all() and np.isnan(out[3:, :, [0, 3, 4]]).all()
    with pytest.raises(
        ValueError,
        match=r"out.zarr/a: block of shape \(4, 2, 2\) for a region of shape \(4, 2, 3\) \(y, x, time\)",
    ):
        blockio.write_region(
            path,
            "w1",
            {"a": block[..., :2]},
            {"y": slice(0, 4), "x": slice(1, 3), "time": slice(3, 6)},
        )
    blockio.drop_run("w1")


def test_cache_budget_setting(monkeypatch):
    monkeypatch.delenv(blockio.CACHE_ENV, raising=False)
    assert blockio.cache_bytes_setting() == blockio.DEFAULT_CACHE_BYTES
    monkeypatch.setenv(blockio.CACHE_ENV, "64MiB")
    assert blockio.cache_bytes_setting() == 64 * 2**20
    monkeypatch.setenv(blockio.CACHE_ENV, "0")
    assert blockio.cache_bytes_setting() == 0
    monkeypatch.setenv(blockio.CACHE_ENV, "lots")
    with pytest.raises(
        ValueError, match=r"KGML_CHUNK_CACHE='lots' is not a size; write e.g. 256MiB"
    ):
        blockio.cache_bytes_setting()
