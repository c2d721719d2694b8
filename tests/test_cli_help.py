"""A CLI that explains itself: every option of every command has a help text, `--help`
shows each real default, errors a flag would fix name the flag and a value that works."""

from __future__ import annotations

import argparse

import pytest

from kgml_grid.cli import build_parser, main
from kgml_grid.cli_help import iter_parsers

SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _options():
    for path, parser in iter_parsers(build_parser()):
        for a in parser._actions:
            if not isinstance(a, SKIP):
                yield path, parser, a


def test_every_command_has_many_options_checked():
    commands = {path for path, _, _ in _options()}
    assert {("synth",), ("train",), ("finetune",), ("evaluate",), ("upscale",), ("bench",),
            ("ingest", "weather"), ("ingest", "satellite"), ("budget",), ("attribute",),
            ("catalog",), ("experiment", "transfer")} <= commands  # fmt: skip
    assert sum(1 for _ in _options()) > 150


@pytest.mark.parametrize("path", sorted({p for p, _, _ in _options()}), ids=" ".join)
def test_every_option_has_help_and_shows_its_default(path):
    for p, parser, a in _options():
        if p != path:
            continue
        name = "/".join(a.option_strings) or a.dest
        assert a.help and a.help.strip(), f"kgml-grid {' '.join(path)} {name}: no help text"
        text = " ".join(parser.format_help().split())
        if (
            a.option_strings
            and a.default not in (None, False, [], argparse.SUPPRESS)
            and a.dest != "debug"
        ):
            shown = parser._get_formatter()._get_help_string(a) % {"default": a.default}
            assert "default" in shown.lower(), (
                f"kgml-grid {' '.join(path)} {name}: default {a.default!r} not shown"
            )
            assert " ".join(shown.split())[:40] in text


def test_help_text_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS maximum passes over the training windows (default: 30)" in out
    assert "(default: 2)" in out and "--holdout-years" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("kgml-grid ")


def test_too_few_years_names_the_flag_and_a_value_that_works(tiny_world, tmp_path, capsys):
    # the tiny world has 4 years: 3 held out leave 1 to train, which is not enough
    rc = main(["train", "--catalog", str(tiny_world.catalog), "--out", str(tmp_path / "m"),
               "--holdout-years", "3", "--epochs", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "need more than 4 to train with 3 held-out years; pass --holdout-years 2" in err
    assert not (tmp_path / "m").exists()
