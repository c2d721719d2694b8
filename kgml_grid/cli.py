"""Command-line interface. Commands only parse arguments and call the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_synth(a: argparse.Namespace) -> int:
    from kgml_grid.synth import generate_world, load_world_params

    params = load_world_params(a.world_params)
    info = generate_world(
        a.out,
        preset=a.preset,
        shape=tuple(a.shape) if a.shape else None,
        years=tuple(a.years) if a.years else None,
        seed=a.seed,
        params=params,
        progress=not a.quiet,
        overwrite=a.overwrite,
        inputs=[("the --world-params file", a.world_params)] if a.world_params else (),
    )
    print(info.summary())
    print(f"catalog: {info.catalog}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from kgml_grid.pipeline import run_demo

    res = run_demo(a.out, preset=a.preset, seed=a.seed, fluxnet=a.fluxnet or (),
                   train_minutes=a.train_minutes, train=not a.no_train, workers=a.workers,
                   upscale_start=False if a.no_upscale else a.upscale_start, progress=not a.quiet,
                   overwrite=a.overwrite)  # fmt: skip
    print(res.summary)
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in res.timings.items()))
    return 0


def _cmd_catalog(a: argparse.Namespace) -> int:
    from kgml_grid import values
    from kgml_grid.catalog import open_catalog
    from kgml_grid.pipeline import summarize_layers

    if a.migrate:
        from kgml_grid.catalog import migrate_catalog

        new = migrate_catalog(a.catalog, a.migrate, overwrite=a.overwrite)
        print(f"{a.catalog} (v1-style) rewritten as an Intake 2 catalog: {new}")
        a.catalog = new
    cat = open_catalog(a.catalog)
    print(cat.describe())
    layers = cat.open_all()
    print(summarize_layers(layers))
    print("all layers valid and aligned")
    mode = "full" if a.check_values else "sample"
    rep = values.check_layers(layers, sources=values.catalog_sources(cat), mode=mode)
    print(
        f"values ({'every chunk' if mode == 'full' else 'sampled chunks; --check-values reads every chunk'}):"
    )
    print(rep.table())
    for f in rep.findings:
        print(f"{'refused' if f.severity == 'refuse' else 'warning'}: {f.message}", file=sys.stderr)
    if rep.refusals:
        raise values.CubeValueError(
            f"{cat.path}: {len(rep.refusals)} variables hold impossible values (listed above); "
            f"first: {rep.refusals[0].message}"
        )
    print(f"all values valid{f' ({len(rep.warnings)} warnings)' if rep.warnings else ''}")
    return 0


def _cmd_fluxnet(a: argparse.Namespace) -> int:
    from kgml_grid.fluxnet import read_fluxnet_dd

    for path in a.csv:
        ds = read_fluxnet_dd(path, qc_threshold=a.qc, site_meta=a.site_meta)
        t = ds["time"].values
        print(
            f"{path}: site {ds.attrs.get('site_id')}, {ds.sizes['time']} days {str(t[0])[:10]}..{str(t[-1])[:10]}"
        )
        for v in ds.data_vars:
            if "time" in ds[v].dims and not v.endswith("_qc"):
                da = ds[v]
                n = int(da.notnull().sum())
                mean = float(da.mean()) if n else float("nan")
                print(f"  {v:<14} [{da.attrs.get('units', '')}] valid {n:>5} days, mean {mean:.3f}")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from kgml_grid.samples import SplitSpec
    from kgml_grid.train import TrainConfig, pretrain

    base = TrainConfig()  # options left out take TrainConfig's defaults (one source)
    cfg = TrainConfig(
        arch=a.arch, epochs=a.epochs, hidden=a.hidden,
        batch_size=base.batch_size if a.batch_size is None else a.batch_size,
        lr=base.lr if a.lr is None else a.lr,
        w_balance_true=base.w_balance_true if a.w_balance_true is None else a.w_balance_true,
        seed=a.seed, device=a.device, max_minutes=a.max_minutes, init=a.init,
        max_cpu_minutes=a.max_cpu_minutes, w_mass_balance=a.w_mass_balance, mb_tol=a.mb_tol, threads=a.threads,
        nee_balance=base.nee_balance if a.nee_balance is None else a.nee_balance,
        features=a.features, feature_dropout=a.feature_dropout,
        split=SplitSpec(max_train_pixels=a.max_train_pixels, holdout_years=a.holdout_years),
    )  # fmt: skip
    res = pretrain(a.catalog, a.out, cfg, progress=not a.quiet, overwrite=a.overwrite)
    print(res.summary())
    print(f"learning curve: {res.curve_png}")
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from kgml_grid.train import FinetuneConfig, finetune

    cfg = FinetuneConfig(epochs_heads=a.epochs_heads, epochs_all=a.epochs, seed=a.seed,
                         device=a.device, qc_threshold=a.qc, max_minutes=a.max_minutes,
                         threads=a.threads, holdout_years=a.holdout_years,
                         val_years=a.val_years)  # fmt: skip
    if a.validation == "sites":
        from kgml_grid.multisite import format_validation, validate_sites

        rep = validate_sites(a.model, a.fluxnet, a.out, cfg, site_meta=a.site_meta, catalog=a.catalog,
                             progress=not a.quiet, overwrite=a.overwrite)  # fmt: skip
        print(format_validation(rep))
        print(
            f"model: {a.out}; leave-one-site-out folds: {a.out}/loso/; report: {a.out}/validation.json"
        )
        return 0
    res = finetune(a.model, a.fluxnet, a.out, cfg, site_meta=a.site_meta, catalog=a.catalog,
                   progress=not a.quiet, overwrite=a.overwrite)  # fmt: skip
    print(res.summary())
    print(f"learning curve: {res.curve_png}")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from kgml_grid.evaluate import evaluate, format_report

    if a.catalog is None and not a.fluxnet:
        raise ValueError("give --catalog CAT and/or --fluxnet CSV... to evaluate against")
    rep = evaluate(a.model, a.out, catalog=a.catalog, fluxnet=a.fluxnet or (),
                   site_meta=a.site_meta, baseline=a.baseline, monthly=a.monthly or (),
                   overwrite=a.overwrite)  # fmt: skip
    print(format_report(rep))
    print(f"report: {a.out}/report.json")
    return 0


def _cmd_transfer(a: argparse.Namespace) -> int:
    from kgml_grid.experiments import format_transfer, transfer_experiment
    from kgml_grid.samples import SplitSpec
    from kgml_grid.train import FinetuneConfig, TrainConfig

    train = TrainConfig(epochs=a.epochs, max_minutes=a.max_minutes, hidden=a.hidden, batch_size=64,
                        lr=2e-3, seed=a.seed, split=SplitSpec(max_train_pixels=a.max_train_pixels))  # fmt: skip
    res = transfer_experiment(a.out, preset=a.preset, seed=a.seed, n_towers=a.towers, train=train,
                              tune=FinetuneConfig(seed=a.seed), progress=not a.quiet,
                              overwrite=a.overwrite)  # fmt: skip
    print(format_transfer(res))
    return 0


def _positive_int(text: str) -> int:
    from kgml_grid.upscale_commands import positive_int

    return positive_int(text)


def _device_spec(text: str) -> str:
    from kgml_grid.upscale_commands import device_spec

    return device_spec(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kgml-grid", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (any command)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic world (cubes, towers, catalog)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument(
        "--preset",
        default="demo",
        choices=["tiny", "demo", "bench"],
        help="size of the world: tiny (20 x 24 px, 4 years), demo (96 x 96, 8 years), bench (320 x 320, 4 years)",
    )
    s.add_argument(
        "--shape",
        nargs=2,
        type=int,
        metavar=("NY", "NX"),
        help="grid size in pixels instead of the preset's",
    )
    s.add_argument(
        "--years",
        nargs=2,
        type=int,
        metavar=("Y0", "Y1"),
        help="first and last year instead of the preset's",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the world (weather, soils, crops, noise)",
    )
    s.add_argument("--world-params", help="JSON file of parameter overrides (a perturbed world)")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing world in OUT (only a world kgml_grid wrote)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    d = sub.add_parser("demo", help="the main job end to end on the embedded synthetic default")
    d.add_argument("--out", default="runs/demo", help="output folder of the whole run")
    d.add_argument(
        "--preset",
        default="demo",
        choices=["tiny", "demo", "bench"],
        help="size of the synthetic world (see synth --preset)",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the world and of training")
    d.add_argument(
        "--fluxnet", nargs="*", metavar="CSV", help="real FLUXNET DD files to fine-tune on"
    )
    d.add_argument("--train-minutes", type=float, default=3.5, help="pre-training budget")
    d.add_argument(
        "--no-train", action="store_true", help="stop after generating and opening the data"
    )
    d.add_argument(
        "--upscale-start",
        default="auto",
        help="first day upscaled over the whole domain ('auto': the last 3 years)",
    )
    d.add_argument(
        "--no-upscale", action="store_true", help="stop after training, fine-tuning and evaluating"
    )
    d.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="Dask worker processes for upscaling (>= 1)",
    )
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT (only a demo run kgml_grid wrote)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("catalog", help="open and validate every entry of a catalog")
    c.add_argument("catalog", help="catalog YAML (Intake 2 or v1-style)")
    c.add_argument("--check-values", action="store_true",
                   help="check the values of every chunk (default: a few chunks per variable)")  # fmt: skip
    c.add_argument("--migrate", metavar="NEW.yaml", default=None,
                   help="rewrite a v1-style catalog as an Intake 2 catalog (version: 2) at NEW.yaml, "
                        "then open and check that one")  # fmt: skip
    c.add_argument("--overwrite", action="store_true",
                   help="with --migrate: replace NEW.yaml when it is a kgml_grid catalog")  # fmt: skip
    c.set_defaults(func=_cmd_catalog)

    t = sub.add_parser("train", help="pre-train a model on a synthetic world's truth cube")
    t.add_argument(
        "--catalog", required=True, help="catalog of a synthetic world (with a 'truth' layer)"
    )
    t.add_argument("--out", required=True, help="model directory (safetensors + JSON)")
    t.add_argument(
        "--arch",
        default="kgml",
        choices=["kgml", "gru"],
        help="kgml: the hierarchical KGML GRU; gru: the plain GRU baseline",
    )
    t.add_argument(
        "--epochs", type=int, default=30, help="maximum passes over the training windows"
    )
    t.add_argument("--batch-size", type=int, default=None,
                   help="windows per optimiser step (default: TrainConfig's, 32)")  # fmt: skip
    t.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: TrainConfig's)")  # fmt: skip
    t.add_argument("--hidden", type=int, default=64, help="GRU hidden size")
    t.add_argument(
        "--max-train-pixels",
        type=int,
        default=600,
        help="at most this many crop pixels train (the rest are held out or unused)",
    )
    t.add_argument(
        "--holdout-years",
        type=int,
        default=2,
        help="last years of the cubes held out for validation (a 3-year world needs --holdout-years 1)",
    )
    t.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    t.add_argument(
        "--max-cpu-minutes",
        type=float,
        default=None,
        help="CPU-time budget of this process (with one torch thread: the compute used, "
        "whatever else shares the cores)",
    )
    t.add_argument(
        "--init", default=None, help="continue training from this checkpoint (warm start)"
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing model directory (only a checkpoint kgml_grid wrote)",
    )
    t.add_argument(
        "--w-mass-balance", type=float, default=2.0, help="weight of the mass-balance penalty"
    )
    t.add_argument("--mb-tol", type=float, default=0.0,
                   help="imbalance left unpenalised, as a fraction of Reco")  # fmt: skip
    t.add_argument("--nee-balance", action=argparse.BooleanOptionalAction, default=None,
                   help="KGML: NEE = Ra + Rh - GPP of the model plus the NEE module's correction "
                        "(default: TrainConfig's)")  # fmt: skip
    t.add_argument("--w-balance-true", type=float, default=None,
                   help="weight of the imbalance against the true GPP, relative to the true Reco "
                        "(default: TrainConfig's)")  # fmt: skip
    t.add_argument(
        "--threads", type=int, default=1, help="torch threads on CPU (0: torch's choice)"
    )
    t.add_argument(
        "--features",
        default="default",
        help="feature set: 'default', or additions +lai, +soil_moisture (e.g. +lai,+soil_moisture)",
    )
    t.add_argument(
        "--feature-dropout",
        type=float,
        default=0.2,
        help="share of windows in which each addition is hidden (learns its availability flag)",
    )
    t.add_argument("--device", default="auto", type=_device_spec, help="auto, cpu, cuda or cuda:N")
    t.add_argument(
        "--seed", type=int, default=0, help="seed of the pixel split, initial weights and batches"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    ft = sub.add_parser("finetune", help="fine-tune a model on FLUXNET DD files")
    ft.add_argument("--model", required=True, help="pre-trained checkpoint directory")
    ft.add_argument(
        "--fluxnet",
        required=True,
        nargs="+",
        metavar="CSV|ZIP|DIR",
        help="FLUXNET daily files, their zips, or folders of them (one per site)",
    )
    ft.add_argument(
        "--site-meta",
        default=None,
        nargs="+",
        metavar="JSON",
        help="site metadata JSON files, matched to the towers by site ID (required for unknown sites)",
    )
    ft.add_argument(
        "--catalog",
        default=None,
        help="catalog whose satellite cube gives LAI / soil moisture at the towers (+lai, +soil_moisture models)",
    )
    ft.add_argument(
        "--validation",
        default="years",
        choices=["years", "sites"],
        help="years: each tower's last full years held out; sites: also leave-one-site-out folds",
    )
    ft.add_argument(
        "--holdout-years", type=int, default=2, help="full years held out at the end of each tower"
    )
    ft.add_argument(
        "--val-years", type=int, default=1, help="full years before them that stop training early"
    )
    ft.add_argument("--out", required=True, help="model directory of the fine-tuned checkpoint")
    ft.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing model directory (only a checkpoint kgml_grid wrote)",
    )
    ft.add_argument("--epochs", type=int, default=40, help="epochs of the all-modules stage")
    ft.add_argument("--epochs-heads", type=int, default=15, help="epochs of the heads-only stage")
    ft.add_argument(
        "--qc", type=float, default=0.5, help="minimum daily NEE QC fraction of a target day"
    )
    ft.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget of fine-tuning (default: none)",
    )
    ft.add_argument(
        "--threads", type=int, default=1, help="torch threads on CPU (0: torch's choice)"
    )
    ft.add_argument("--device", default="auto", type=_device_spec, help="auto, cpu, cuda or cuda:N")
    ft.add_argument("--seed", type=int, default=0, help="seed of the batches and dropout")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=_cmd_finetune)

    ev = sub.add_parser("evaluate", help="R2/RMSE/bias on held-out pixels, years and towers")
    ev.add_argument("--model", required=True, help="checkpoint directory to evaluate")
    ev.add_argument(
        "--catalog",
        default=None,
        help="a synthetic world's catalog: scores on its held-out pixels and years",
    )
    ev.add_argument(
        "--fluxnet",
        nargs="*",
        metavar="CSV|ZIP|DIR",
        help="FLUXNET daily files, zips or folders; each site on its held-out years",
    )
    ev.add_argument(
        "--site-meta",
        default=None,
        nargs="+",
        metavar="JSON",
        help="site metadata JSON (required for towers the package does not know)",
    )
    ev.add_argument(
        "--monthly",
        nargs="+",
        metavar="MM_CSV",
        help="FLUXNET monthly files: monthly means of the daily predictions at their sites",
    )
    ev.add_argument("--baseline", default=None, help="another model to compare on the towers")
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing report directory (only a report kgml_grid wrote)",
    )
    ev.set_defaults(func=_cmd_evaluate)

    ex = sub.add_parser("experiment", help="experiments (the KGML-vs-GRU transfer experiment)")
    exs = ex.add_subparsers(dest="experiment", required=True)
    tr = exs.add_parser(
        "transfer", help="pre-train on world A, fine-tune on towers of a perturbed world B"
    )
    tr.add_argument("--out", required=True, help="output folder of the experiment")
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT (only a transfer experiment kgml_grid wrote)",
    )
    tr.add_argument(
        "--preset", default="demo", choices=["tiny", "demo", "bench"], help="size of worlds A and B"
    )
    tr.add_argument("--towers", type=int, default=4, help="towers of world B used for fine-tuning")
    tr.add_argument("--epochs", type=int, default=30, help="maximum epochs of each pre-training")
    tr.add_argument("--max-minutes", type=float, default=None, help="budget of each pre-training")
    tr.add_argument("--hidden", type=int, default=64, help="GRU hidden size")
    tr.add_argument(
        "--max-train-pixels", type=int, default=600, help="at most this many training pixels"
    )
    tr.add_argument("--seed", type=int, default=0, help="seed of the worlds and training")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_cmd_transfer)

    f = sub.add_parser("fluxnet", help="read FLUXNET2015 DD files and summarise them")
    f.add_argument("csv", nargs="+", help="FLUXNET DD files")
    f.add_argument("--qc", type=float, default=None, help="QC threshold (0-1)")
    f.add_argument("--site-meta", default=None, help="site metadata JSON")
    f.set_defaults(func=_cmd_fluxnet)
    from kgml_grid.ingest.commands import add_parser as _add_ingest

    _add_ingest(sub)
    from kgml_grid.upscale_commands import add_parser as _add_upscale

    _add_upscale(sub)
    from kgml_grid.bench_commands import add_parser as _add_bench

    _add_bench(sub)
    from kgml_grid.analysis_commands import add_parsers as _add_analysis

    _add_analysis(sub)
    _add_debug(sub)
    from kgml_grid.cli_help import show_defaults

    return show_defaults(p)


def _add_debug(sub: argparse._SubParsersAction) -> None:
    """``--debug`` after the command too (``kgml-grid upscale ... --debug``), on every
    command and sub-command; SUPPRESS keeps the global value when it is not given."""
    for parser in sub.choices.values():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the traceback of an error")  # fmt: skip
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def _version() -> str:
    from kgml_grid import __version__

    return f"kgml-grid {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kgml-grid`` console script.

    An error ends the command with one line, ``kgml-grid CMD: error: MESSAGE``, and exit
    code 2 (bad input) or 1 (a run that failed); ``--debug`` shows the traceback instead
    (:mod:`kgml_grid.errors`).
    """
    from kgml_grid.errors import report

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"kgml-grid {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        code, msg = report(e)
        print(f"kgml-grid {args.command}: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
