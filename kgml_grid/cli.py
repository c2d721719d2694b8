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
    )
    print(info.summary())
    print(f"catalog: {info.catalog}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from kgml_grid.pipeline import run_demo

    res = run_demo(a.out, preset=a.preset, seed=a.seed, progress=not a.quiet)
    print(res.summary)
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in res.timings.items()))
    return 0


def _cmd_catalog(a: argparse.Namespace) -> int:
    from kgml_grid.catalog import open_catalog
    from kgml_grid.pipeline import summarize_layers

    cat = open_catalog(a.catalog)
    print(cat.describe())
    print(summarize_layers(cat.open_all()))
    print("all layers valid and aligned")
    return 0


def _cmd_fluxnet(a: argparse.Namespace) -> int:
    from kgml_grid.fluxnet import read_fluxnet_dd

    for path in a.csv:
        ds = read_fluxnet_dd(path, qc_threshold=a.qc, site_meta=a.site_meta)
        t = ds["time"].values
        print(f"{path}: site {ds.attrs.get('site_id')}, {ds.sizes['time']} days {str(t[0])[:10]}..{str(t[-1])[:10]}")
        for v in ds.data_vars:
            if "time" in ds[v].dims and not v.endswith("_qc"):
                da = ds[v]
                n = int(da.notnull().sum())
                mean = float(da.mean()) if n else float("nan")
                print(f"  {v:<14} [{da.attrs.get('units', '')}] valid {n:>5} days, mean {mean:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kgml-grid", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic world (cubes, towers, catalog)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--preset", default="demo", choices=["tiny", "demo", "bench"])
    s.add_argument("--shape", nargs=2, type=int, metavar=("NY", "NX"))
    s.add_argument("--years", nargs=2, type=int, metavar=("Y0", "Y1"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--world-params", help="JSON file of parameter overrides (a perturbed world)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    d = sub.add_parser("demo", help="the main job end to end on the embedded synthetic default")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--preset", default="demo", choices=["tiny", "demo", "bench"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("catalog", help="open and validate every entry of a catalog")
    c.add_argument("catalog")
    c.set_defaults(func=_cmd_catalog)

    f = sub.add_parser("fluxnet", help="read FLUXNET2015 DD files and summarise them")
    f.add_argument("csv", nargs="+")
    f.add_argument("--qc", type=float, default=None, help="QC threshold (0-1)")
    f.add_argument("--site-meta", default=None, help="site metadata JSON")
    f.set_defaults(func=_cmd_fluxnet)
    return p


def _version() -> str:
    from kgml_grid import __version__

    return f"kgml-grid {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kgml-grid`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"kgml-grid {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
