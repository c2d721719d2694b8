"""Several towers: files and folders in, per-site years, leave-one-site-out, monthly checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgml_grid.cli import main
from kgml_grid.samples import SplitSpec, location_windows, tower_series
from kgml_grid.towers import load_towers, tower_files
from kgml_grid.train import TrainConfig, pretrain, site_years, tower_split

REAL_FLUXNET = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "fluxnet"
NE1_MM = REAL_FLUXNET / "FLX_US-Ne1_FLUXNET2015_SUBSET_MM_2001-2013_1-4.csv"
SMALL = dict(epochs=1, batch_size=16, hidden=8, patience=5, threads=1,
             split=SplitSpec(holdout_years=1, max_train_pixels=24, max_test_pixels=12))  # fmt: skip
TUNE_ARGS = [
    "--epochs",
    "1",
    "--epochs-heads",
    "1",
    "--holdout-years",
    "1",
    "--val-years",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    return pretrain(tiny_world.catalog, tmp_path_factory.mktemp("ms") / "kgml", TrainConfig(**SMALL),
                    progress=False).model_dir  # fmt: skip


@pytest.fixture(scope="module")
def variants(us_ne1, tmp_path_factory):
    """US-Ne1 with every NEE missing, and without its QC columns (one folder each)."""
    d = tmp_path_factory.mktemp("variants")
    df = pd.read_csv(us_ne1, dtype={"TIMESTAMP": str})
    out = {}
    for name, frame in (("no_nee", df.assign(NEE_VUT_REF=-9999)),
                        ("no_qc", df.drop(columns=[c for c in df.columns if c.endswith("_QC")]))):  # fmt: skip
        (d / name).mkdir()
        frame.to_csv(d / name / us_ne1.name, index=False)
        out[name] = d / name / us_ne1.name
    return out


# --------------------------------------------------------------------------- files and folders
def test_folder_of_towers_and_a_folder_without_daily_files(tiny_world, us_ne1):
    got = tower_files([tiny_world.root / "towers", us_ne1])
    assert [p.name[4:10] for p in got] == ["SY-A01", "SY-A02", "SY-A03", "US-Ne1"]
    with pytest.raises(ValueError, match=r"fluxnet: the folder holds no FLUXNET daily \(DD\) file .*: it has 20 MM "
                                         r"file\(s\), e\.g\. FLX_BE-Lon.* \(monthly files are for evaluate --monthly FILE\)"):  # fmt: skip
        tower_files([REAL_FLUXNET])
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such file or folder \(--fluxnet\)"):
        tower_files([Path("nowhere")])


def test_unusable_towers_are_refused_naming_file_and_cause(variants, us_ne1, tiny_world, tmp_path):
    with pytest.raises(ValueError, match=r"^FLX_US-Ne1_\w+_DD_2001-2013_1-4\.csv: column NEE_VUT_REF has no value "
                                         r"\(every day is -9999 or empty\)"):  # fmt: skip
        load_towers([variants["no_nee"]])
    with pytest.raises(ValueError, match=r"_DD_2001-2013_1-4\.csv: quality column NEE_VUT_REF_QC is absent, so --qc 0\.5 "
                                         r"cannot be applied; pass --qc 0"):  # fmt: skip
        load_towers([variants["no_qc"]], qc_threshold=0.5)
    assert len(load_towers([variants["no_qc"]], qc_threshold=0.0)) == 1  # --qc 0: usable as is
    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copy(us_ne1, copy / us_ne1.name.replace("1-4", "1-3"))
    with pytest.raises(
        ValueError, match=r"a second file of site US-Ne1 \(the first is .*\); give one per site"
    ):
        load_towers([us_ne1, copy])
    with pytest.raises(
        ValueError,
        match=r"--site-meta .*SY-A01_site\.json: describes no tower given \(towers: US-Ne1\)",
    ):
        load_towers([us_ne1], [tiny_world.root / "towers" / "SY-A01_site.json"])


def test_refusals_from_the_cli_write_nothing(pretrained, variants, tmp_path, capsys):
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(pretrained), "--fluxnet", str(variants["no_qc"].parent),
               "--out", str(out), *TUNE_ARGS])  # fmt: skip
    assert rc != 0 and not out.exists()
    assert "quality column NEE_VUT_REF_QC is absent" in capsys.readouterr().err
    rc = main(
        [
            "evaluate",
            "--model",
            str(pretrained),
            "--fluxnet",
            str(NE1_MM),
            "--out",
            str(tmp_path / "rep"),
        ]
    )
    assert rc != 0 and not (tmp_path / "rep").exists()
    assert (
        "FLX_US-Ne1_FLUXNET2015_SUBSET_MM_2001-2013_1-4.csv: resolution 'MM' (monthly) is not supported"
        in (capsys.readouterr().err)
    )


# --------------------------------------------------------------------------- per-site years
def test_each_tower_is_split_by_its_own_years(tiny_world, us_ne1):
    towers = load_towers([tiny_world.towers[0], us_ne1])
    s = tower_series(towers)
    assert s.time[0] == pd.Timestamp("2001-05-30") and s.time[-1] == pd.Timestamp("2012-12-31")
    split = tower_split(s, 2, 1)
    assert split["US-Ne1"] == {
        "train_years": list(range(2001, 2009)),
        "val_years": [2009],
        "holdout_years": [2010, 2011],
    }
    assert split["SY-A01"] == {
        "train_years": [2009],
        "val_years": [2010],
        "holdout_years": [2011, 2012],
    }
    # no window of the synthetic tower starts before its own record (2009-01-01)
    sy = s.names.index("SY-A01")
    assert location_windows(s, sy, [2009], 122) == []
    (w,) = location_windows(s, sy, [2010], 122)
    assert s.time[w[0]] >= pd.Timestamp("2009-01-01") and s.time[w[1] - 1] == pd.Timestamp(
        "2010-12-31"
    )
    with pytest.raises(
        ValueError,
        match=r"tower SY-A01 \(2009-01-01\.\.2012-12-31\): 4 full years .* needs more than 4",
    ):
        site_years(s, sy, 3, 1)


# --------------------------------------------------------------------------- the CLI, several towers
@pytest.mark.slow
def test_cli_finetune_several_towers_with_leave_one_site_out_and_evaluate(pretrained, tiny_world, us_ne1, tmp_path,
                                                                          capsys):  # fmt: skip
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(pretrained), "--fluxnet", str(tiny_world.root / "towers"), str(us_ne1),
               "--validation", "sites", "--out", str(out), *TUNE_ARGS])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads((out / "validation.json").read_text())
    sites = ["SY-A01", "SY-A02", "SY-A03", "US-Ne1"]
    assert rep["sites"] == sites
    for sid in sites:
        r = rep["per_site"][sid]
        assert r["trained_on"] == [s for s in sites if s != sid]
        fold = json.loads((out / "loso" / sid / "model.json").read_text())["provenance"]
        assert fold["left_out_site"] == sid and sid not in fold["tower_split"]["per_site"]
        assert set(fold["tower_split"]["per_site"]) == set(r["trained_on"])
        assert all(v["holdout_years"] == [] for v in fold["tower_split"]["per_site"].values())
        for score in ("loso", "pretrained", "years"):
            assert np.isfinite(r[score]["holdout_years_metrics"]["nee"]["r2"])
        assert (
            r["loso"]["all_years"]["nee"]["n"]
            > r["loso"]["holdout_years_metrics"]["nee"]["n"]
            > 300
        )
    assert rep["per_site"]["US-Ne1"]["years"]["holdout_years"] == [
        2011
    ]  # --holdout-years 1, its own record
    assert rep["per_site"]["SY-A01"]["years"]["holdout_years"] == [2012]
    md = (out / "validation.md").read_text()
    assert "| US-Ne1 | 2001-05-30..2012-11-26 | 2011 |" in md and md in text
    # the final model is the all-towers fine-tuning; evaluate takes the same folder and file
    rc = main(["evaluate", "--model", str(out), "--fluxnet", str(tiny_world.root / "towers"), str(us_ne1),
               "--baseline", str(pretrained), "--out", str(tmp_path / "rep")])  # fmt: skip
    assert rc == 0
    ev = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert ev["towers"]["US-Ne1"]["holdout_years"] == [2011]
    assert ev["towers"]["SY-A02"]["holdout_years"] == [2012]
    assert ev["towers_baseline"]["US-Ne1"]["holdout_years"] == [2011]  # each site its own years
    # the same numbers as the validation report's held-out-years column
    assert ev["towers"]["US-Ne1"]["nee"]["r2"] == pytest.approx(
        rep["per_site"]["US-Ne1"]["years"]["holdout_years_metrics"]["nee"]["r2"], rel=1e-9
    )


# --------------------------------------------------------------------------- monthly files
@pytest.mark.skipif(not NE1_MM.is_file(), reason="real monthly file missing")
def test_evaluate_monthly_against_the_official_us_ne1_mm_file(pretrained, us_ne1, tmp_path):
    from kgml_grid.checkpoint import load_checkpoint
    from kgml_grid.evaluate import evaluate, format_report, metrics
    from kgml_grid.fluxnet import read_fluxnet_dd
    from kgml_grid.train import predict

    rep = evaluate(pretrained, tmp_path / "rep", fluxnet=[us_ne1], monthly=[NE1_MM])
    m = rep["monthly"]["US-Ne1"]
    # the daily file covers 2001-05-30..2012-11-26: 137 complete months, June 2001 to October 2012
    assert (m["months"], m["first_month"], m["last_month"]) == (137, "2001-06", "2012-10")
    assert m["holdout_months"] == 24  # 2010 and 2011
    # the daily file's own monthly means match the official MM file (README: within 1e-4)
    assert m["daily_file_vs_mm"]["nee"]["max_abs_difference"] < 2e-4
    assert m["daily_file_vs_mm"]["nee"]["months_with_complete_days"] == 137
    # the metrics follow from the model's daily predictions, aggregated independently here
    ck = load_checkpoint(pretrained)
    s = tower_series([read_fluxnet_dd(us_ne1)])
    daily, _ = predict(ck.model, ck.normalizer, s)
    pred = pd.Series(daily[0, :, 2], index=s.time).resample("MS").mean()["2001-06":"2012-10"]
    obs = pd.read_csv(NE1_MM, dtype={"TIMESTAMP": str}).set_index("TIMESTAMP")["NEE_VUT_REF"]
    obs.index = pd.to_datetime(obs.index, format="%Y%m")
    want = metrics(pred.values, obs.reindex(pred.index).values)
    assert m["nee"]["n"] == 137 and m["nee"]["r2"] == pytest.approx(want["r2"], rel=1e-6)
    assert "monthly means of daily predictions vs FLX_US-Ne1" in format_report(rep)
    # a monthly file of a site without its daily file
    ne2 = REAL_FLUXNET / "FLX_US-Ne2_FLUXNET2015_SUBSET_MM_2001-2013_1-4.csv"
    with pytest.raises(ValueError, match=r"--monthly FLX_US-Ne2_\S+\.csv: site US-Ne2 has no daily file among --fluxnet "
                                         r"\(US-Ne1\); the model's daily predictions need the site's daily inputs"):  # fmt: skip
        evaluate(pretrained, tmp_path / "rep2", fluxnet=[us_ne1], monthly=[ne2])
    with pytest.raises(ValueError, match=r"--monthly needs the sites' daily files too"):
        evaluate(pretrained, tmp_path / "rep3", monthly=[NE1_MM])
