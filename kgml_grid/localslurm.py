"""A single-node SLURM cluster on this machine: for the tests and for trying the SLURM path.

:func:`local_slurm` starts, with every file in one folder, ``munged`` (its own key and
socket), optionally MariaDB + ``slurmdbd`` (accounting, so that ``sacct`` shows the jobs),
``slurmctld`` and one ``slurmd`` whose node is this machine, and stops them all on exit.
Nothing is installed or configured system-wide: the daemons read ``SLURM_CONF`` from the
folder, which is what the yielded :class:`LocalSlurm` puts in ``env``.

SLURM daemons listen on every interface and have no setting to bind to one; to keep them
on localhost, run the code that uses them in a private network namespace (only ``lo``
exists there), as the test suite does::

    unshare --net sh -c "ip link set lo up && ip addr add 192.0.2.1/32 dev lo && python my_script.py"

(the second address is there because SLURM looks for its listening address with
``AI_ADDRCONFIG``, which ignores 127.0.0.1)

Needs Debian's ``slurm-wlm`` and ``munge`` (and ``mariadb-server`` + ``slurmdbd`` for
accounting) and root (the daemons run as root here). :func:`missing_requirements` says
what is missing. See ``cluster/README.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kgml_grid.cluster import stop_process_groups

__all__ = ["CLUSTER_NAME", "PARTITION", "LocalSlurm", "local_slurm", "missing_requirements"]

CLUSTER_NAME = "kgmllocal"
PARTITION = "debug"
_DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
_ACCOUNTING = ("mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacctmgr", "sacct")


def missing_requirements(*, accounting: bool = True) -> list[str]:
    """What this machine lacks to run :func:`local_slurm` (empty when it can)."""
    missing = [f"{p} (Debian: slurm-wlm, munge)" for p in _DAEMONS if not shutil.which(p)]
    if accounting:
        missing += [
            f"{p} (Debian: mariadb-server, slurmdbd)" for p in _ACCOUNTING if not shutil.which(p)
        ]
    if os.geteuid() != 0:
        missing.append("root (the daemons run as root)")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalSlurm:
    """A running single-node SLURM cluster (see :func:`local_slurm`)."""

    directory: Path
    node: str
    cpus: int
    memory_mb: int
    accounting: bool
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command (``squeue``, ``sacct``, ...) against this cluster."""
        r = subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, **self.env},
                           timeout=60, check=False)  # fmt: skip
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Jobs in the queue: ``squeue`` as rows of id, name, state."""
        out = self.run("squeue", "--noheader", "--format=%i|%j|%T")
        return [dict(zip(("id", "name", "state"), line.split("|"), strict=True))
                for line in out.splitlines() if line.strip()]  # fmt: skip

    def accounted_jobs(self) -> list[dict[str, str]]:
        """Every job the accounting database knows (``sacct``), as rows of id, name, state."""
        if not self.accounting:
            raise RuntimeError("this local SLURM runs without accounting (accounting=False)")
        out = self.run("sacct", "--allusers", "--noheader", "--parsable2", "--starttime=2000-01-01",
                       "--format=JobID,JobName,State", "-X")  # fmt: skip
        return [dict(zip(("id", "name", "state"), line.split("|"), strict=True))
                for line in out.splitlines() if line.strip()]  # fmt: skip


def _write_configs(d: Path, node: str, cpus: int, memory_mb: int, ports: dict[str, int],
                   accounting: bool) -> None:  # fmt: skip
    munge_socket = d / "munge" / "munge.socket"
    acct = (
        f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
        f"AccountingStoragePort={ports['slurmdbd']}\nAccountingStoragePass={munge_socket}\n"
        "JobAcctGatherType=jobacct_gather/linux\n"
        if accounting
        else "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n"
    )
    (d / "slurm.conf").write_text(
        f"""# written by kgml_grid.localslurm: a single-node cluster for tests
ClusterName={CLUSTER_NAME}
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobCompType=jobcomp/none
{acct}NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
    )
    if accounting:
        dbd = d / "slurmdbd.conf"
        dbd.write_text(
            f"""AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["slurmdbd"]}
SlurmUser=root
LogFile={d}/log/slurmdbd.log
PidFile={d}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass=kgmllocal
StorageLoc=slurm_acct_db
"""
        )
        dbd.chmod(0o600)


def _wait(what: str, ok: object, deadline: float, log: Path | None = None) -> None:
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tail = ""
            if log is not None and log.exists():
                tail = ": " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            raise RuntimeError(f"local SLURM: {what} did not start in time{tail}")
        time.sleep(0.2)


@contextlib.contextmanager
def local_slurm(
    directory: str | os.PathLike[str],
    *,
    cpus: int | None = None,
    memory_mb: int = 8000,
    accounting: bool = True,
    timeout: float = 90,
) -> Iterator[LocalSlurm]:
    """Start a single-node SLURM cluster with its files under ``directory``; stop it on exit.

    Parameters
    ----------
    directory : path
        Folder for configuration, keys, state, logs and the accounting database.
    cpus : int, optional
        CPUs of the node (default: this machine's).
    memory_mb : int
        Memory of the node that jobs may request.
    accounting : bool
        Also start MariaDB and ``slurmdbd`` so that ``sacct`` works.
    timeout : float
        Seconds to wait for each daemon.

    Raises
    ------
    RuntimeError
        When a requirement is missing (see :func:`missing_requirements`) or a daemon
        does not start (naming it and the tail of its log).
    """
    missing = missing_requirements(accounting=accounting)
    if missing:
        raise RuntimeError("local SLURM needs: " + ", ".join(missing))
    d = Path(directory).resolve()
    for sub in ("state", "spool", "log", "munge", "db"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "munge").chmod(0o700)
    node = socket.gethostname().split(".")[0]
    cpus = int(cpus or os.cpu_count() or 1)
    ports = {k: _free_port() for k in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
    _write_configs(d, node, cpus, memory_mb, ports, accounting)
    env = {"SLURM_CONF": str(d / "slurm.conf")}
    penv = {**os.environ, **env}
    procs: list[subprocess.Popen[bytes]] = []
    pidfiles: list[Path] = []

    def start(args: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(d / "log" / f"{name}.out", "wb")  # the child keeps its own copy
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=penv, cwd=d,
                             start_new_session=True)  # fmt: skip
        log.close()
        procs.append(p)
        return p

    try:
        deadline = time.monotonic() + timeout
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        sock = d / "munge" / "munge.socket"
        start(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
               f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/log/munged.log",
               f"--seed-file={d}/munge/munged.seed"], "munged")  # fmt: skip
        _wait("munged", sock.exists, deadline, d / "log" / "munged.log")
        if accounting:
            data = d / "db" / "data"
            if not data.exists():
                r = subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={data}",
                                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                                   capture_output=True, text=True, check=False)  # fmt: skip
                if r.returncode:
                    raise RuntimeError(f"local SLURM: mariadb-install-db failed: {r.stderr[-500:]}")
            dbsock = d / "db" / "mysqld.sock"
            start(["mariadbd", "--user=root", f"--datadir={data}", f"--socket={dbsock}",
                   f"--port={ports['mariadb']}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                   f"--pid-file={d}/db/mysqld.pid", f"--log-error={d}/log/mariadb.log",
                   "--innodb-buffer-pool-size=64M"], "mariadb")  # fmt: skip

            def db_up() -> bool:
                return subprocess.run(["mariadb", f"--socket={dbsock}", "-uroot", "-e", "select 1"],
                                      capture_output=True, check=False).returncode == 0  # fmt: skip

            _wait("MariaDB", db_up, deadline, d / "log" / "mariadb.log")
            sql = ("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'kgmllocal'; "
                   "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")  # fmt: skip
            subprocess.run(["mariadb", f"--socket={dbsock}", "-uroot", "-e", sql], check=True,
                           capture_output=True)  # fmt: skip
            start(["slurmdbd", "-D"], "slurmdbd")
            pidfiles.append(d / "slurmdbd.pid")

            def dbd_up() -> bool:
                r = subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True,
                                   env=penv, check=False, timeout=30)  # fmt: skip
                return r.returncode == 0

            _wait("slurmdbd", dbd_up, deadline, d / "log" / "slurmdbd.log")
            subprocess.run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], capture_output=True,
                           env=penv, check=False, timeout=30)  # fmt: skip
        start(["slurmctld", "-D", "-i"], "slurmctld")
        start(["slurmd", "-D"], "slurmd")
        cluster = LocalSlurm(d, node, cpus, memory_mb, accounting, env)

        def node_idle() -> bool:
            r = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True,
                               env=penv, check=False, timeout=30)  # fmt: skip
            return r.returncode == 0 and r.stdout.strip().startswith(("idle", "mix", "alloc"))

        _wait("slurmctld + slurmd (node idle)", node_idle, deadline, d / "log" / "slurmctld.log")
        (d / "cluster.json").write_text(json.dumps({"node": node, "cpus": cpus, "ports": ports,
                                                    "env": env}, indent=1))  # fmt: skip
        yield cluster
    finally:
        with contextlib.suppress(Exception):  # jobs first, so no worker outlives the cluster
            subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], env=penv,
                           capture_output=True, check=False, timeout=20)  # fmt: skip
        stop_process_groups(procs, timeout=20)
