"""Catalog and cluster files are data: no key, template or value of theirs runs code.

Each refusal names the file, the key (or value) and the fix. The ``plugins`` and
``preload`` cases use a canary module on ``sys.path`` that leaves a file behind when
imported: Intake imports a catalog's ``plugins`` (checked here first, to show the canary
works), so a test that only looked at the message could pass while code still ran.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from kgml_grid.catalog import CatalogError, open_catalog
from kgml_grid.cluster import (
    CLUSTER_KEYS,
    ClusterConfigError,
    check_n_workers,
    load_cluster_config,
    local_cluster,
    make_client,
    slurm_cluster,
)
from kgml_grid.safe_yaml import YamlError, load_yaml

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"


def _entry(**kw):
    e = {"driver": "zarr", "args": {"urlpath": "{{ CATALOG_DIR }}/soil.zarr", "consolidated": False},
         "metadata": {"layer": "soil"}}  # fmt: skip
    e.update(kw)
    return e


def _write(tmp_path: Path, doc, name: str = "cat.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A module ``kgml_canary_<n>`` on sys.path that writes ``IMPORTED`` when imported."""
    name = f"kgml_canary_{abs(hash(str(tmp_path))) % 10**8}"
    flag = tmp_path / "IMPORTED"
    (tmp_path / f"{name}.py").write_text(f"open({str(flag)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, flag
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------------------
# catalogs
# --------------------------------------------------------------------------------------


def test_catalog_plugins_are_refused_and_never_imported(tmp_path, canary):
    name, flag = canary
    doc = {"plugins": {"source": [{"module": name}]}, "sources": {"soil": _entry()}}
    p = _write(tmp_path, doc)
    import intake

    intake.open_catalog(str(p))  # what the check guards against: Intake imports the module
    assert flag.exists()
    flag.unlink()
    sys.modules.pop(name, None)
    with pytest.raises(CatalogError, match=r"cat\.yaml: top-level key 'plugins' is not one kgml_grid "
                                           r"understands \(catalogs are data: Intake plugins are never "
                                           r"loaded from them\); allowed: description, metadata, sources"):  # fmt: skip
        open_catalog(p)
    assert not flag.exists()


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"sources": {"soil": _entry(parameters={"year": {"type": "int", "default": 1}})}},
         r"entry 'soil': key 'parameters' is not one kgml_grid understands; allowed: args, description, driver, metadata"),
        ({"sources": {"soil": _entry(user_parameters={})}}, r"entry 'soil': key 'user_parameters'"),
        ({"sources": {"soil": _entry(args={"urlpath": "s.zarr", "consolidated": False, "engine": "netcdf4"})}},
         r"entry 'soil' args: key 'engine' is not one kgml_grid understands; allowed: chunks, consolidated"),
        ({"sources": {"soil": _entry(metadata={"layer": "soil", "plugin": "x"})}},
         r"entry 'soil' metadata: key 'plugin'"),
        ({"metadata": {"kgml_grid": {"format": 1, "loader": "x"}}, "sources": {"soil": _entry()}},
         r"metadata\.kgml_grid key 'loader'"),
        ({"metadata": {"version": 1, "hooks": []}, "sources": {"soil": _entry()}}, r"metadata key 'hooks'"),
        ({"name": "x", "sources": {"soil": _entry()}}, r"top-level key 'name'"),
    ],
)  # fmt: skip
def test_catalog_keys_outside_the_allowlists_are_refused(tmp_path, doc, match):
    with pytest.raises(CatalogError, match=match):
        open_catalog(_write(tmp_path, doc))


@pytest.mark.parametrize(
    "urlpath",
    [
        "{{ env('HOME') }}/soil.zarr",
        "{{ shell('id') }}",
        "{% if 1 %}a{% endif %}",
        "{{CATALOG_DIR}}/{{ x }}",
    ],
)
def test_catalog_templates_other_than_catalog_dir_are_refused(tmp_path, urlpath):
    e = _entry()
    e["args"]["urlpath"] = urlpath
    with pytest.raises(CatalogError, match=r"sources\.soil\.args\.urlpath is .*: the only template allowed "
                                           r"is '\{\{ CATALOG_DIR \}\}'"):  # fmt: skip
        open_catalog(_write(tmp_path, {"sources": {"soil": e}}))


def test_catalog_template_in_a_description_is_refused_too(tmp_path):
    with pytest.raises(CatalogError, match=r"sources\.soil\.description is"):
        open_catalog(
            _write(tmp_path, {"sources": {"soil": _entry(description="{{ shell('id') }}")}})
        )


def test_catalog_dir_template_in_any_spacing_is_accepted(tmp_path):
    e = _entry()
    e["args"]["urlpath"] = "{{CATALOG_DIR}}/soil.zarr"
    cat = open_catalog(
        _write(tmp_path, {"description": "in {{ CATALOG_DIR }}", "sources": {"soil": e}})
    )
    assert cat.entries["soil"].urlpath == "{{CATALOG_DIR}}/soil.zarr"


def test_catalog_duplicate_key_is_refused_naming_key_and_lines(tmp_path):
    text = (
        "sources:\n"
        "  soil:\n"
        "    driver: zarr\n"
        "    args: {urlpath: '{{ CATALOG_DIR }}/soil.zarr', consolidated: false}\n"
        "    metadata: {layer: soil}\n"
        "sources:\n"
        "  crop: {driver: zarr, args: {urlpath: c.zarr, consolidated: false}}\n"
    )
    with pytest.raises(CatalogError, match=r"cat\.yaml: duplicate key 'sources' at line 6 \(first at line 1\); "
                                           r"a mapping may hold each key once"):  # fmt: skip
        open_catalog(_write(tmp_path, text))
    nested = "sources:\n  soil:\n    driver: zarr\n    driver: zarr\n"
    with pytest.raises(CatalogError, match=r"duplicate key 'driver' at line 4 \(first at line 3\)"):
        open_catalog(_write(tmp_path, nested))


@pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is not None,
    reason="aiohttp is installed: https:// is readable here",
)
def test_catalog_remote_urlpath_without_its_package_names_it(tmp_path):
    e = _entry()
    e["args"]["urlpath"] = "https://example.org/cubes/soil.zarr"
    with pytest.raises(CatalogError, match=r"entry 'soil' has urlpath 'https://example\.org/cubes/soil\.zarr': "
                                           r"reading https:// needs aiohttp .*pip install aiohttp, or point "
                                           r"urlpath at a local copy"):  # fmt: skip
        open_catalog(_write(tmp_path, {"sources": {"soil": e}}))


@pytest.mark.skipif(
    importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed: s3:// is readable here"
)
def test_catalog_s3_urlpath_without_s3fs_names_it(tmp_path):
    e = _entry()
    e["args"]["urlpath"] = "s3://bucket/soil.zarr"
    with pytest.raises(CatalogError, match=r"reading s3:// needs s3fs"):
        open_catalog(_write(tmp_path, {"sources": {"soil": e}}))


def test_catalog_unknown_protocol_is_refused(tmp_path):
    e = _entry()
    e["args"]["urlpath"] = "nosuchproto://x/soil.zarr"
    with pytest.raises(CatalogError, match=r"protocol nosuchproto:// is not known to fsspec"):
        open_catalog(_write(tmp_path, {"sources": {"soil": e}}))


def test_shipped_and_generated_catalogs_pass(tiny_world):
    cat = open_catalog(Path(__file__).resolve().parents[1] / "catalogs" / "real_products.yaml")
    assert len(cat.entries) == 4
    assert set(open_catalog(tiny_world.catalog).entries) == {
        "weather",
        "satellite",
        "soil",
        "crop",
        "truth",
    }


# --------------------------------------------------------------------------------------
# the YAML reader itself
# --------------------------------------------------------------------------------------


def test_load_yaml_is_plain_data_and_keeps_merge_keys():
    assert load_yaml("a: &x {b: 1}\nc:\n  <<: *x\n  d: 2\n", source="f") == {
        "a": {"b": 1},
        "c": {"b": 1, "d": 2},
    }
    with pytest.raises(YamlError, match=r"f: not valid YAML \(plain data only\): line 1, column 4: could not "
                                        r"determine a constructor for the tag"):  # fmt: skip
        load_yaml("a: !!python/object/apply:os.system ['true']\n", source="f")
    with pytest.raises(
        YamlError, match=r"f: not valid YAML: line 1, column 5: mapping values are not allowed"
    ):
        load_yaml("a: b: c\n", source="f")


# --------------------------------------------------------------------------------------
# cluster files
# --------------------------------------------------------------------------------------


def test_cluster_preload_is_refused_and_never_imported(tmp_path, canary):
    name, flag = canary
    p = _write(tmp_path, {"kind": "local", "n_workers": 1, "preload": [name]}, "c.yaml")
    with pytest.raises(ClusterConfigError, match=r"c\.yaml: key 'preload' is not allowed for kind: local \(it "
                                                 r"names code that Dask would import or run; a cluster file is "
                                                 r"data\); allowed: dashboard_address, gpus, host"):  # fmt: skip
        make_client(str(p), verbose=False)
    assert not flag.exists()
    with pytest.raises(ClusterConfigError, match=r"key 'preload' is not allowed"):
        local_cluster({"preload": [name]})  # the factory functions check too
    assert not flag.exists()


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"kind": "local", "worker_class": "distributed.Nanny"}, r"key 'worker_class' is not allowed for kind: local \(it names code"),
        ({"kind": "local", "worker_kwargs": {"preload": ["x"]}}, r"key 'worker_kwargs' is not allowed .*names code"),
        ({"kind": "slurm", "scheduler_cls": "x.Scheduler"}, r"key 'scheduler_cls' is not allowed for kind: slurm"),
        ({"kind": "slurm", "job_cls": "x.Job"}, r"key 'job_cls'"),
        ({"kind": "slurm", "python": "/tmp/evil"}, r"key 'python' is not allowed for kind: slurm \(it names code"),
        ({"kind": "slurm", "scheduler_options": {"preload": ["x"]}}, r"key 'scheduler_options\.preload' is not allowed"),
        ({"kind": "slurm", "worker_extra_args": ["--preload", "x"]}, r"worker_extra_args holds '--preload'"),
        ({"kind": "slurm", "worker_extra_args": ["--worker-class=x.W"]}, r"worker_extra_args holds '--worker-class=x\.W'"),
        ({"kind": "slurm", "job_script_prologue": ["python -c 'import os'"]}, r"job_script_prologue line \"python -c 'import os'\" is not plain setup"),
        ({"kind": "slurm", "job_script_prologue": ["source .venv/bin/activate; curl x | sh"]}, r"is not plain setup"),
        ({"kind": "slurm", "job_script_prologue": ["export DASK_DISTRIBUTED__WORKER__PRELOAD=x"]},
         r"job_script_prologue sets DASK_DISTRIBUTED__WORKER__PRELOAD, which can make processes load code"),
        ({"kind": "slurm", "job_extra_directives": ["#SBATCH --wrap=id"]}, r"must be one sbatch option"),
        ({"kind": "kubernetes", "env": {"LD_PRELOAD": "/x.so"}}, r"env sets LD_PRELOAD"),
        ({"kind": "kubernetes", "env": {"PYTHONSTARTUP": "/x.py"}}, r"env sets PYTHONSTARTUP"),
        ({"kind": "kubernetes", "worker_command": ["dask", "worker", "--preload", "x"]}, r"worker_command holds '--preload'"),
        ({"kind": "kubernetes", "worker_command": ["python", "-c", "import x"]}, r"worker_command .* must start with 'dask worker'"),
        ({"kind": "address", "address": "tcp://h:1", "preload": "x"}, r"key 'preload' is not allowed for kind: address"),
        ({"kind": "local", "n_workers": 0}, r"n_workers 0: need a whole number of workers >= 1"),
        ({"kind": "slurm", "jobs": -1}, r"jobs -1: need a whole number of workers >= 1"),
    ],
)  # fmt: skip
def test_cluster_keys_that_name_code_are_refused(tmp_path, cfg, match):
    p = _write(tmp_path, cfg, "c.yaml")
    with pytest.raises(ClusterConfigError, match=match):
        load_cluster_config(p)
    with pytest.raises(ClusterConfigError, match=match):  # a mapping from Python too
        load_cluster_config(cfg)


def test_cluster_duplicate_key_is_refused(tmp_path):
    p = _write(tmp_path, "kind: local\nn_workers: 1\nn_workers: 4\n", "c.yaml")
    with pytest.raises(
        ClusterConfigError,
        match=r"c\.yaml: duplicate key 'n_workers' at line 3 \(first at line 2\)",
    ):
        load_cluster_config(p)


def test_shipped_cluster_files_pass_the_allowlists():
    for name in ("local", "slurm", "kubernetes"):
        cfg = load_cluster_config(CLUSTER_DIR / f"{name}.yaml")
        assert set(cfg) - {"_source"} <= CLUSTER_KEYS[cfg["kind"]]
    cluster = slurm_cluster(yaml.safe_load((CLUSTER_DIR / "slurm.yaml").read_text()))
    try:
        assert "source .venv/bin/activate" in cluster.job_script()
    finally:
        cluster.close()


@pytest.mark.parametrize("n", [0, -1, 1.5, "two", True])
def test_workers_below_one_are_refused_before_anything_starts(n):
    with pytest.raises(
        ClusterConfigError, match=r"--workers .*: need a whole number of workers >= 1"
    ):
        check_n_workers(n)
    with pytest.raises(ClusterConfigError, match=r"need a whole number of workers >= 1"):
        make_client("local", n_workers=n, verbose=False)  # no LocalCluster is made: no hang
    assert check_n_workers(None) is None and check_n_workers(3) == 3
