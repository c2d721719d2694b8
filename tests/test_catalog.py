"""Catalog parsing is safe (data, never code) and refuses malformed files clearly."""

from __future__ import annotations

import shutil

import pytest
import yaml

import kgml_grid
from kgml_grid.catalog import CatalogError, catalog_yaml, open_catalog
from kgml_grid.cubes import CubeError


def _write(tmp_path, doc) -> str:
    p = tmp_path / "cat.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def _entry(**kw):
    e = {"driver": "zarr", "args": {"urlpath": "{{ CATALOG_DIR }}/soil.zarr", "consolidated": False},
         "metadata": {"layer": "soil"}}  # fmt: skip
    e.update(kw)
    return e


def test_catalog_lists_towers_and_describes(tiny_world):
    cat = kgml_grid.open_catalog(tiny_world.catalog)
    assert len(cat.towers()) == 3
    assert "layer=truth" in cat.describe()
    assert cat.crs == "EPSG:5070"
    assert cat.grid().shape == tiny_world.grid.shape


def test_open_by_layer_name_with_custom_chunks(tiny_world):
    ds = kgml_grid.open_catalog(tiny_world.catalog).open("satellite", chunks={"time": 100})
    assert ds.chunks["time"][0] == 100


def test_driver_other_than_zarr_refused(tmp_path):
    p = _write(tmp_path, {"sources": {"soil": _entry(driver="os.system")}})
    with pytest.raises(
        CatalogError, match=r"entry 'soil' uses driver 'os.system'; only 'zarr' is allowed"
    ):
        open_catalog(p)


def test_python_tags_are_not_executed(tmp_path):
    p = _write(tmp_path, "sources: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(CatalogError, match=r"not valid YAML"):
        open_catalog(p)


def test_a_version_other_than_2_is_refused(tmp_path):
    p = _write(tmp_path, {"version": 1, "entries": {}, "data": {}})
    with pytest.raises(
        CatalogError, match=r"top-level 'version' is 1: an Intake 2 catalog says 'version: 2'"
    ):
        open_catalog(p)


def test_missing_catalog_refused(tmp_path):
    with pytest.raises(CatalogError, match=r"catalog .*nope.yaml does not exist"):
        open_catalog(tmp_path / "nope.yaml")


def test_consolidated_metadata_refused(tmp_path):
    e = _entry()
    e["args"]["consolidated"] = True
    with pytest.raises(CatalogError, match=r"entry 'soil' must set 'consolidated: false'"):
        open_catalog(_write(tmp_path, {"sources": {"soil": e}}))


def test_unknown_layer_refused(tmp_path):
    p = _write(tmp_path, {"sources": {"rain": _entry(metadata={"layer": "rain"})}})
    with pytest.raises(
        CatalogError, match=r"entry 'rain' has layer 'rain'; expected one of weather"
    ):
        open_catalog(p)


def test_entry_pointing_nowhere_refused_on_open(tmp_path):
    cat = open_catalog(_write(tmp_path, {"sources": {"soil": _entry()}}))
    with pytest.raises((CatalogError, CubeError), match=r"soil"):
        cat.open("soil")


def test_wrong_crs_in_catalog_refused(tiny_world, tmp_path):
    shutil.copytree(tiny_world.root / "soil.zarr", tmp_path / "soil.zarr")
    e = _entry(metadata={"layer": "soil", "crs": "EPSG:32614"})
    cat = open_catalog(_write(tmp_path, {"sources": {"soil": e}}))
    with pytest.raises(CubeError, match=r"soil.*CRS is EPSG:5070, expected EPSG:32614"):
        cat.open("soil")


def test_catalog_yaml_renders_v1_entries():
    text = catalog_yaml({"soil": {"path": "s3://bucket/soil.zarr", "layer": "soil"}},
                        crs="EPSG:5070", description="d", version=1)  # fmt: skip
    doc = yaml.safe_load(text)
    assert doc["sources"]["soil"]["driver"] == "zarr"
    assert doc["sources"]["soil"]["args"]["consolidated"] is False
    assert doc["metadata"]["kgml_grid"]["crs"] == "EPSG:5070"


def test_real_products_catalog_parses():
    from pathlib import Path

    cat = open_catalog(Path(__file__).resolve().parents[1] / "catalogs" / "real_products.yaml")
    assert {e.layer for e in cat.entries.values()} == {"weather", "satellite", "soil", "crop"}
