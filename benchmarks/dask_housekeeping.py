"""CPU time that an idle Dask ``LocalCluster`` spends on its own housekeeping, with
Dask's default intervals and with :data:`kgml_grid.cluster.HOUSEKEEPING`: the
measurement behind the cluster factory's settings (``cluster/README.md``).

CPU seconds (user + system, from psutil) of the client's process (scheduler, nannies,
client) and of each worker process over ``--seconds`` of idling, for each setting in
turn, after a few seconds of settling. Counts CPU time, not wall time, so a busy
machine changes it little. Run from the repository root::

    .venv/bin/python benchmarks/dask_housekeeping.py

writes ``benchmarks/results/dask_housekeeping.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def idle_cpu(workers: int, seconds: float, tuned: bool) -> dict[str, float]:
    """CPU seconds per process of an idle local cluster over ``seconds``."""
    import dask
    import psutil
    from distributed import Client, LocalCluster

    from kgml_grid.cluster import housekeeping_config

    cfg = housekeeping_config() if tuned else {}
    with dask.config.set(cfg):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")  # fmt: skip
    client = Client(cluster)
    try:
        client.wait_for_workers(workers, timeout=120)
        pids = list(client.run(lambda: __import__("os").getpid()).values())
        procs = {"client process (scheduler, nannies)": psutil.Process()}
        procs.update({f"worker {i}": psutil.Process(p) for i, p in enumerate(pids)})
        time.sleep(3)

        def cpu() -> dict[str, float]:
            return {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}

        a = cpu()
        time.sleep(seconds)
        b = cpu()
    finally:
        client.close()
        cluster.close()
    out = {k: round(b[k] - a[k], 3) for k in a}
    out["all processes"] = round(sum(out.values()), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "dask_housekeeping.json")
    )
    a = ap.parse_args(argv)

    from kgml_grid.bench import machine_description
    from kgml_grid.cluster import HOUSEKEEPING

    res: dict = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/dask_housekeeping.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine_description(),
        "idle_seconds": a.seconds,
        "workers": a.workers,
        "settings": HOUSEKEEPING,
    }
    for name, tuned in (("dask defaults", False), ("HOUSEKEEPING", True)):
        cpu = idle_cpu(a.workers, a.seconds, tuned)
        res[name] = {
            "cpu_seconds": cpu,
            "share_of_one_core": round(cpu["all processes"] / a.seconds, 4),
        }
        print(f"{name:14s} CPU of all processes: {cpu['all processes']:.2f} s in {a.seconds:.0f} s idle "
              f"({100 * res[name]['share_of_one_core']:.1f} % of one core)", flush=True)  # fmt: skip
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
