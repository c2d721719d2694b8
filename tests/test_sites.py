"""Tests of site metadata: the shipped US-Ne1 sidecar, loading, writing and validation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from kgml_grid import schema
from kgml_grid.sites import (
    SiteMeta,
    SiteMetadataError,
    find_site_meta,
    load_site_meta,
    site_meta_filename,
    write_site_meta,
)


@pytest.fixture(scope="module")
def us_ne1() -> SiteMeta:
    return find_site_meta("US-Ne1")


def valid_dict() -> dict[str, Any]:
    return {
        "site_id": "SY-A01",
        "latitude": 41.0,
        "longitude": -96.0,
        "igbp": "CRO",
        "crop_default": "corn",
        "crop_by_year": {"2009": "soybean"},
        "soil": {
            "bulk_density": 1.3,
            "sand": 20.0,
            "clay": 30.0,
            "field_capacity": 0.33,
            "wilting_point": 0.18,
            "ksat": 3.0,
            "soc": 6.0,
            "ph": 6.5,
            "cec": 20.0,
        },
        "source": "test",
    }


def write_json(folder: Path, data: object, name: str = "SY-A01_site.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- shipped US-Ne1
def test_us_ne1_is_package_data() -> None:
    res = resources.files("kgml_grid") / "data" / "sites" / "US-Ne1.json"
    assert res.is_file()
    assert json.loads(res.read_text(encoding="utf-8"))["site_id"] == "US-Ne1"


def test_us_ne1_values(us_ne1: SiteMeta) -> None:
    assert us_ne1.site_id == "US-Ne1"
    assert (us_ne1.latitude, us_ne1.longitude) == (41.1651, -96.4766)
    assert us_ne1.elevation_m == pytest.approx(361.0)
    assert us_ne1.igbp == "CRO"
    assert us_ne1.crop_default == "corn"
    assert all(us_ne1.crop_code(y) == schema.CROP_NAMES["corn"] for y in range(2001, 2014))
    assert tuple(us_ne1.soil) == schema.SITE_SOIL_PROPERTIES
    for name, value in us_ne1.soil.items():
        lo, hi = schema.VARIABLES[name].valid_range
        assert lo <= value <= hi, name
    # silty clay loam: 27-40 % clay, < 20 % sand
    assert 27 <= us_ne1.soil["clay"] <= 40 and us_ne1.soil["sand"] < 20
    assert us_ne1.soil["wilting_point"] < us_ne1.soil["field_capacity"]


def test_us_ne1_is_honest_about_estimates(us_ne1: SiteMeta) -> None:
    assert "Verma" in us_ne1.source and "131:77-96" in us_ne1.source
    assert "Saxton" in us_ne1.source
    for name in schema.SITE_SOIL_PROPERTIES:
        assert "ESTIMATE" in us_ne1.notes[name], name


# --------------------------------------------------------------------------- load / write / find
def test_write_load_round_trip(us_ne1: SiteMeta, tmp_path: Path) -> None:
    path = write_site_meta(us_ne1, tmp_path / site_meta_filename("US-Ne1"))
    assert path.name == "US-Ne1_site.json"
    assert load_site_meta(path) == us_ne1
    assert [p.name for p in tmp_path.iterdir()] == ["US-Ne1_site.json"]  # no temporary file
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR


def test_write_is_atomic(us_ne1: SiteMeta, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "US-Ne1_site.json"
    target.write_text("{}")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_site_meta(us_ne1, target)
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["US-Ne1_site.json"]


def test_sidecar_takes_precedence(us_ne1: SiteMeta, tmp_path: Path) -> None:
    local = dataclasses.replace(us_ne1, crop_by_year={2005: "soybean"}, source="local")
    write_site_meta(local, tmp_path / "US-Ne1_site.json")
    found = find_site_meta("US-Ne1", search_dirs=[tmp_path / "nowhere", tmp_path])
    assert found == local
    assert found.crop_code(2005) == 2 and found.crop_code(2006) == 1
    assert find_site_meta("US-Ne1", search_dirs=[tmp_path / "nowhere"]) == us_ne1


def test_unknown_site(tmp_path: Path) -> None:
    with pytest.raises(
        SiteMetadataError,
        match=r"^unknown site 'XX-Unk': no site metadata found \(looked for XX-Unk_site\.json in: "
        r".*--site-meta FILE is required",
    ) as err:
        find_site_meta("XX-Unk", search_dirs=[tmp_path])
    assert isinstance(err.value, ValueError)


def test_sidecar_of_another_site(tmp_path: Path) -> None:
    write_json(tmp_path, valid_dict(), "SY-A02_site.json")
    with pytest.raises(
        ValueError,
        match=r"SY-A02_site\.json: describes site 'SY-A01', but site 'SY-A02' was asked for",
    ):
        find_site_meta("SY-A02", search_dirs=[tmp_path])


def test_crop_codes() -> None:
    meta = SiteMeta.from_dict(valid_dict())
    assert meta.crop_by_year == {2009: "soybean"}
    assert meta.crop_codes([2008, 2009, 2010]) == [1, 2, 1]
    assert meta.crop_name(2009) == "soybean"


def test_frozen(us_ne1: SiteMeta) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        us_ne1.latitude = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        us_ne1.soil["ksat"] = 1.0  # type: ignore[index]


def test_never_executes(tmp_path: Path) -> None:
    path = tmp_path / "SY-A01_site.json"
    path.write_text("__import__('os').system('echo pwned')")
    with pytest.raises(ValueError, match=r"SY-A01_site\.json: not valid JSON"):
        load_site_meta(path)


# --------------------------------------------------------------------------- validation
def _with(**changes: Any) -> dict[str, Any]:
    data = valid_dict()
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            if value is _DROP:
                del data[outer][inner]
            else:
                data[outer][inner] = value
        elif value is _DROP:
            del data[key]
        else:
            data[key] = value
    return data


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"crop_default": "wheat"},
            r"field 'crop_default' = 'wheat' is not a known crop \(other, corn, soybean\)",
        ),
        (
            {"crop_by_year": {"2010": "rice"}},
            r"field 'crop_by_year\.2010' = 'rice' is not a known crop",
        ),
        (
            {"crop_by_year": {"last": "corn"}},
            r"field 'crop_by_year' has a key 'last' that is not a year",
        ),
        ({"soil.ksat": _DROP}, r"field 'soil' lacks ksat \(required: bulk_density, sand"),
        ({"soil.silt": 50.0}, r"field 'soil' has unknown properties 'silt'"),
        (
            {"soil.ksat": 900.0},
            r"field 'soil\.ksat' = 900\.0 um s-1 is outside the valid range \[0\.01, 700\.0\]",
        ),
        ({"soil.ph": 2.0}, r"field 'soil\.ph' = 2\.0 1 is outside the valid range \[3\.0, 10\.5\]"),
        ({"soil.bulk_density": "1.3"}, r"field 'soil\.bulk_density' must be a number, got '1\.3'"),
        (
            {"soil.sand": 80.0, "soil.clay": 30.0},
            r"'soil\.sand' \+ 'soil\.clay' = 110\.0 % exceed 100 %",
        ),
        (
            {"soil.wilting_point": 0.4},
            r"field 'soil\.wilting_point' = 0\.4 must be below 'soil\.field_capacity'",
        ),
        ({"latitude": 95.0}, r"field 'latitude' = 95\.0 is outside \[-90, 90\]"),
        ({"longitude": -200.0}, r"field 'longitude' = -200\.0 is outside \[-180, 180\]"),
        ({"latitude": None}, r"field 'latitude' must be a number, got None"),
        ({"igbp": "CORN"}, r"field 'igbp' = 'CORN' is not an IGBP class"),
        ({"site_id": "Mead"}, r"field 'site_id' must look like 'US-Ne1' \(CC-SSS\), got 'Mead'"),
        ({"elevation_m": 12000.0}, r"field 'elevation_m' = 12000\.0 is outside \[-500, 9000\] m"),
        (
            {"soil_units": {"ksat": "mm h-1"}},
            r"field 'soil_units\.ksat' = 'mm h-1'; the schema expects 'um s-1'",
        ),
        ({"soil": _DROP}, r"missing field\(s\) 'soil'"),
        ({"colour": "green"}, r"unknown field\(s\) 'colour'; known fields: site_id"),
    ],
)
def test_invalid_fields(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = write_json(tmp_path, _with(**changes))
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(tmp_path / 'SY-A01_site.json'))}: .*{message}"
    ):
        load_site_meta(path)


def test_not_an_object(tmp_path: Path) -> None:
    path = write_json(tmp_path, [1, 2])
    with pytest.raises(
        ValueError, match=r"SY-A01_site\.json: site metadata must be a JSON object, got list"
    ):
        load_site_meta(path)


def test_constructor_validates() -> None:
    with pytest.raises(
        ValueError, match=r"site 'SY-A01': field 'crop_default' = 'maize' is not a known crop"
    ):
        SiteMeta(
            site_id="SY-A01",
            latitude=0.0,
            longitude=0.0,
            igbp="CRO",
            crop_default="maize",
            crop_by_year={},
            soil=valid_dict()["soil"],
        )
