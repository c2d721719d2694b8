"""Intake 2 catalogs: written by default, opened by Intake itself and by kgml_grid, checked
as data (no class, template or parameter from the file is ever acted on); v1 files still
open and migrate to v2."""

from __future__ import annotations

import shutil

import intake
import numpy as np
import pytest
import yaml

from kgml_grid.catalog import (
    V2_DATATYPE,
    V2_READER,
    CatalogError,
    catalog_yaml,
    migrate_catalog,
    open_catalog,
    v2_data_key,
    write_catalog,
)
from kgml_grid.cli import main

LAYERS = ("weather", "satellite", "soil", "crop", "truth")


@pytest.fixture(scope="module")
def v1_world(tiny_world, tmp_path_factory):
    """The tiny world's cubes with its catalog rewritten v1-style (as older releases wrote)."""
    cat = open_catalog(tiny_world.catalog)
    d = tmp_path_factory.mktemp("v1world")
    entries = {}
    for e in cat.entries.values():
        (d / f"{e.layer}.zarr").symlink_to(tiny_world.root / f"{e.layer}.zarr")
        entries[e.name] = {"layer": e.layer, "path": "{{ CATALOG_DIR }}/" + f"{e.layer}.zarr",
                           "description": e.description, "crs": e.crs}  # fmt: skip
    (d / "towers").symlink_to(tiny_world.root / "towers")
    meta = {k: v for k, v in cat.meta.items() if k not in ("format", "crs", "towers")}
    text = catalog_yaml(entries, crs=cat.crs, description=cat.description, towers=cat.meta["towers"],
                        extra_meta=meta, version=1)  # fmt: skip
    return write_catalog(d / "catalog.yaml", text)


def test_worlds_are_written_as_intake2_catalogs(tiny_world):
    doc = yaml.safe_load(tiny_world.catalog.read_text())
    assert doc["version"] == 2 and "sources" not in doc
    assert {e["reader"] for e in doc["entries"].values()} == {V2_READER}
    assert {d["datatype"] for d in doc["data"].values()} == {V2_DATATYPE}
    assert doc["data"][v2_data_key("soil")]["kwargs"]["url"] == "{CATALOG_DIR}/soil.zarr"
    cat = open_catalog(tiny_world.catalog)
    assert cat.version == 2 and sorted(e.layer for e in cat.entries.values()) == sorted(LAYERS)
    assert "(Intake v2)" in cat.describe() and len(cat.towers()) == 3


def test_intake_itself_opens_every_entry_of_both_versions(tiny_world, v1_world):
    v2 = intake.open_catalog(str(tiny_world.catalog))
    v1 = intake.open_catalog(str(v1_world))
    for name in LAYERS:
        a = v2[name].read()  # Intake 2 reader
        b = v1[name].to_dask()  # intake-xarray's v1 Zarr source
        var = next(iter(a.data_vars))
        assert a[var].chunks == b[var].chunks  # Dask arrays on the store's own chunks
        np.testing.assert_array_equal(a[var].values, b[var].values)


def test_kgml_grid_opens_both_versions_to_the_same_layers(tiny_world, v1_world):
    a, b = open_catalog(tiny_world.catalog), open_catalog(v1_world)
    assert (a.version, b.version) == (2, 1)
    assert a.meta == b.meta and a.description == b.description
    la, lb = a.open_all(), b.open_all()
    for layer in LAYERS:
        assert set(la[layer].data_vars) == set(lb[layer].data_vars)
        for v in la[layer].data_vars:
            np.testing.assert_array_equal(la[layer][v].values, lb[layer][v].values)
    assert a.grid() == b.grid()


def test_migrate_rewrites_v1_as_v2_with_the_same_entries(v1_world, tmp_path, capsys):
    new = v1_world.with_name("catalog_v2.yaml")
    assert main(["catalog", str(v1_world), "--migrate", str(new)]) == 0
    assert "rewritten as an Intake 2 catalog" in capsys.readouterr().out
    old, mig = open_catalog(v1_world), open_catalog(new)
    assert mig.version == 2
    assert {n: (e.layer, e.urlpath, e.crs) for n, e in old.entries.items()} == \
        {n: (e.layer, e.urlpath, e.crs) for n, e in mig.entries.items()}  # fmt: skip
    assert mig.meta == old.meta and mig.towers() == old.towers()
    ds = intake.open_catalog(str(new))["soil"].read()
    assert "soc" in ds
    # a second run needs --overwrite; the v1 file itself and foreign files are never replaced
    with pytest.raises(CatalogError, match=r"catalog_v2.yaml: exists; pass --overwrite"):
        migrate_catalog(v1_world, new)
    migrate_catalog(v1_world, new, overwrite=True)
    with pytest.raises(CatalogError, match=r"must be a new file, not the v1 file itself"):
        migrate_catalog(v1_world, v1_world, overwrite=True)
    notes = v1_world.with_name("notes.yaml")
    notes.write_text("shopping: [milk]\n")
    with pytest.raises(
        CatalogError,
        match=r"notes.yaml: exists and is not a kgml_grid catalog; it is never replaced",
    ):
        migrate_catalog(v1_world, notes, overwrite=True)
    assert notes.read_text() == "shopping: [milk]\n"
    with pytest.raises(CatalogError, match=r"already an Intake 2 catalog"):
        migrate_catalog(new, tmp_path / "again.yaml")


def test_migrate_to_another_folder_rebases_paths(v1_world, tmp_path):
    new = migrate_catalog(v1_world, tmp_path / "elsewhere" / "cat.yaml")
    cat = open_catalog(new)
    assert cat.open("soil")["soc"].shape == open_catalog(v1_world).open("soil")["soc"].shape
    assert len(cat.towers()) == 3


def test_ingest_registers_entries_in_the_files_own_version(tiny_world, tmp_path):
    from kgml_grid.ingest.register import register_entry

    for version in (1, 2):
        d = tmp_path / f"v{version}"
        d.mkdir()
        shutil.copytree(tiny_world.root / "soil.zarr", d / "soil.zarr")
        text = catalog_yaml({"soil": {"layer": "soil", "path": "{{ CATALOG_DIR }}/soil.zarr"}},
                            crs="EPSG:5070", description="mine", version=version)  # fmt: skip
        cat = write_catalog(d / "cat.yaml", text)
        shutil.copytree(tiny_world.root / "crop.zarr", d / "crop.zarr")
        register_entry(cat, "crop", layer="crop", cube=d / "crop.zarr", crs="EPSG:5070")
        c = open_catalog(cat)
        assert c.version == version and set(c.entries) == {"soil", "crop"}
        assert (
            c.open("crop")["crop_type"].shape[0]
            == open_catalog(tiny_world.catalog).open("crop")["crop_type"].shape[0]
        )
    new = tmp_path / "new" / "cat.yaml"
    register_entry(new, "soil", layer="soil", cube=tmp_path / "v1" / "soil.zarr", crs="EPSG:5070")
    assert open_catalog(new).version == 2


# --------------------------------------------------------------------------------------
# v2 files are data: every class, template, parameter and key is checked
# --------------------------------------------------------------------------------------


def _v2(**over):
    doc = yaml.safe_load(catalog_yaml({"soil": {"layer": "soil", "path": "{{ CATALOG_DIR }}/soil.zarr"}},
                                      crs="EPSG:5070", description="d"))  # fmt: skip
    for path, value in over.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return doc


def _open(tmp_path, doc):
    p = tmp_path / "cat.yaml"
    p.write_text(yaml.safe_dump(doc))
    return open_catalog(p)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (
            {"entries__soil__reader": "os:system"},
            r"entry 'soil' uses reader 'os:system'; only 'intake.readers.readers:XArrayDatasetReader'",
        ),
        (
            {"data__soil_zarr__datatype": "mymod:Evil"},
            r"data 'soil_zarr' has datatype 'mymod:Evil'; only 'intake.readers.datatypes:Zarr'",
        ),
        (
            {"entries__soil__output_instance": "pandas:DataFrame"},
            r"output_instance must be 'xarray:Dataset'",
        ),
        ({"entries__soil__kwargs__engine": "netcdf4"}, r"engine must be 'zarr'"),
        ({"entries__soil__kwargs__consolidated": True}, r"must set 'consolidated: false'"),
        (
            {"entries__soil__kwargs__args": ["{data(nope)}"]},
            r"kwargs.args must be one reference .* to a 'data:' entry \(soil_zarr\)",
        ),
        (
            {"entries__soil__kwargs__args": ["{func(os.getcwd)}"]},
            r"kwargs.args must be one reference",
        ),
        (
            {"entries__soil__kwargs__preprocess": "mod:f"},
            r"entry 'soil' kwargs: key 'preprocess' is not one kgml_grid understands",
        ),
        (
            {"data__soil_zarr__kwargs__url": "{env(HOME)}/soil.zarr"},
            r"the only template allowed is '\{CATALOG_DIR\}'",
        ),
        (
            {"data__soil_zarr__kwargs__url": "{{ CATALOG_DIR }}/soil.zarr"},
            r"the only template allowed is '\{CATALOG_DIR\}'",
        ),
        (
            {"entries__soil__metadata__description": "{data(soil_zarr)}"},
            r"the only template allowed",
        ),
        ({"user_parameters": {"p": {"default": 1}}}, r"top-level 'user_parameters' must be empty"),
        ({"aliases": {"s": "soil"}}, r"top-level 'aliases' must be empty"),
        (
            {"entries__soil__user_parameters": {"p": 1}},
            r"entry 'soil': 'user_parameters' must be empty",
        ),
        (
            {"plugins": {"source": [{"module": "x"}]}},
            r"top-level key 'plugins' is not one kgml_grid understands",
        ),
        ({"metadata__kgml_grid__format": 7}, r"metadata.kgml_grid.format is 7, expected 1"),
        ({"entries__soil__metadata__layer": "rain"}, r"entry 'soil' has layer 'rain'"),
        ({"data__soil_zarr__kwargs__root": "sub"}, r"'root' must be ''"),
        ({"entries": {}}, r"no 'entries:' mapping"),
    ],
)
def test_v2_files_are_checked_as_data(tmp_path, over, match):
    with pytest.raises(CatalogError, match=match):
        _open(tmp_path, _v2(**over))


def test_v2_entry_named_like_its_data_is_refused(tmp_path):
    doc = _v2()
    doc["data"]["soil"] = doc["data"].pop("soil_zarr")
    doc["entries"]["soil"]["kwargs"]["args"] = ["{data(soil)}"]
    with pytest.raises(CatalogError, match=r"entry 'soil' has the name of a data entry"):
        _open(tmp_path, doc)
