"""Run inside a private network namespace by tests/test_slurm.py (not collected by pytest).

Starts a single-node SLURM cluster (:mod:`kgml_grid.localslurm`), runs ``kgml-grid upscale
--cluster SLURM.yaml`` (real ``sbatch`` jobs through dask-jobqueue), then an adaptive run
through the Python API while sampling ``squeue``, and writes what it saw as JSON.

usage: python slurm_driver.py ARGS.json   (keys: work, catalog, model, start, end, chunks)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from kgml_grid.localslurm import PARTITION, local_slurm


def cluster_yaml(path: Path, work: Path, **extra: object) -> Path:
    cfg = {
        "kind": "slurm",
        "queue": PARTITION,
        "cores": 1,
        "processes": 1,
        "memory": "2GB",
        "walltime": "00:20:00",
        "job_name": "kgml-upscale",
        "interface": "lo",  # scheduler and workers on 127.0.0.1
        "local_directory": str(work / "scratch"),
        "log_directory": str(work / "joblogs"),
        "scheduler_options": {"dashboard_address": "127.0.0.1:0"},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class JobSampler(threading.Thread):
    """Samples ``squeue`` every ``every`` seconds: job ids seen and the count over time."""

    def __init__(self, slurm, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.slurm, self.every = slurm, every
        self.ids: set[str] = set()
        self.counts: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                jobs = [j for j in self.slurm.jobs() if j["state"] in ("RUNNING", "PENDING")]
            except Exception:  # a transient squeue failure is not a result
                jobs = None
            if jobs is not None:
                self.ids.update(j["id"] for j in jobs)
                self.counts.append((round(time.monotonic() - self.t0, 2), len(jobs)))
            self.stop.wait(self.every)


def main() -> int:
    args = json.loads(Path(sys.argv[1]).read_text())
    work = Path(args["work"])
    result: dict[str, object] = {}
    with local_slurm(work / "slurm") as slurm:
        os.environ.update(slurm.env)  # sbatch / squeue of dask-jobqueue find this cluster
        # 1. the CLI with real sbatch jobs
        fixed = cluster_yaml(work / "slurm_jobs.yaml", work, jobs=2)
        sampler = JobSampler(slurm)
        sampler.start()
        cmd = [sys.executable, "-m", "kgml_grid.cli", "upscale", "--catalog", args["catalog"],
               "--model", args["model"], "--out", str(work / "slurm_cli.zarr"), "--start",
               args["start"], "--end", args["end"], "--chunks", args["chunks"], "--cluster",
               str(fixed), "--quiet"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        sampler.stop.set()
        sampler.join()
        result["cli"] = {"rc": r.returncode, "stdout": r.stdout[-2000:], "stderr": r.stderr[-4000:],
                         "jobs_seen": sorted(sampler.ids),
                         "max_jobs": max((c for _, c in sampler.counts), default=0)}  # fmt: skip

        # 2. adaptive scaling through the Python API: grows with the work, shrinks after it
        from kgml_grid.cluster import close_client, make_client
        from kgml_grid.execute import upscale

        adaptive = cluster_yaml(work / "slurm_adapt.yaml", work,
                                adapt={"minimum_jobs": 1, "maximum_jobs": 2, "interval": "500ms",
                                       "target_duration": "1s", "wait_count": 2})  # fmt: skip
        sampler = JobSampler(slurm)
        sampler.start()
        client = make_client(str(adaptive), verbose=False)
        try:
            upscale(args["catalog"], args["model"], work / "slurm_adapt.zarr", start=args["start"],
                    end=args["end"], chunks=args["chunks"], client=client, progress=False)  # fmt: skip
            t_done = time.monotonic() - sampler.t0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # wait for the shrink to the minimum
                if sampler.counts and sampler.counts[-1][0] > t_done and sampler.counts[-1][1] <= 1:
                    break
                time.sleep(0.5)
        finally:
            close_client(client)
            sampler.stop.set()
            sampler.join()
        result["adapt"] = {"counts": sampler.counts, "t_done": round(t_done, 2),
                           "jobs_seen": sorted(sampler.ids)}  # fmt: skip
        time.sleep(1)
        result["sacct"] = slurm.accounted_jobs()
        result["node"] = slurm.node
    Path(args["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
