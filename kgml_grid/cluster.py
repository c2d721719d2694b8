"""One client factory for every cluster the upscaling runs on (DESIGN section 6).

:func:`make_client` takes a *spec*:

* ``'local'`` (default): a ``LocalCluster`` of worker *processes*, one thread each
  (one worker per GPU when the machine has GPUs, else one per core, at most 8);
* ``'tcp://host:port'``: an existing scheduler;
* a scheduler file (``*.json``, as written by ``dask scheduler --scheduler-file``);
* a YAML file (``cluster/*.yaml``), parsed as plain data (``safe_load`` semantics,
  duplicate keys refused: :mod:`kgml_grid.safe_yaml`), whose ``kind`` is ``local``,
  ``address``, ``scheduler_file``, ``slurm`` (dask-jobqueue) or ``kubernetes`` (the
  Dask Kubernetes operator); the other keys go to the cluster class (see
  ``cluster/README.md``).

A cluster file is data: only the keys of :data:`CLUSTER_KEYS` for its kind are
accepted (no ``preload``, ``worker_class``, ``scheduler_cls``, ``job_cls``,
``python``...), worker arguments may not hold ``--preload``/``--worker-class``,
environment variables may not name preloads, plugins, classes, ``LD_*`` or
``PYTHONPATH``-like variables, and each SLURM prologue line must be plain setup
(``source``, ``module load``, ``conda activate``, ``cd``, ``export NAME=VALUE``):
:func:`check_cluster_keys`. ``--workers`` must be >= 1, and an existing scheduler
that does not answer within :data:`CONNECT_TIMEOUT` seconds (20) fails naming its
address (:class:`ClusterConnectError`).

The scheduler and the dashboard bind to 127.0.0.1 unless the configuration says
otherwise (``host``/``interface``/``dashboard_address``); the dashboard link is
printed. :func:`process_cluster` starts real ``dask scheduler`` / ``dask worker``
processes on 127.0.0.1 (what the tests run against).

Housekeeping
------------
Workers here run one thread of CPU-bound model code each, so whatever else their
processes do comes out of the model's time. Dask's defaults wake every server 50 times
a second (``distributed.admin.tick.interval``), poll psutil for the dashboard every
500 ms (``admin.system-monitor.interval``) and for memory every 100 ms
(``worker.memory.monitor-interval``): an idle 2-worker ``LocalCluster`` on a 2-core VM
used 11.2 % of a core, 7.3 % with :data:`HOUSEKEEPING`
(``benchmarks/results/dask_housekeeping.json``).
:func:`housekeeping_config` gives these settings for every key that still has Dask's
default (a user's Dask configuration wins); local clusters, :func:`process_cluster`,
SLURM job scripts (``export DASK_...`` lines first in ``job_script_prologue``) and
Kubernetes pods (``env``) start with them, unless the configuration sets them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CLUSTER_KEYS",
    "CONNECT_TIMEOUT",
    "KINDS",
    "ClusterConfigError",
    "ClusterConnectError",
    "check_cluster_keys",
    "check_n_workers",
    "close_client",
    "dashboard_link",
    "housekeeping_config",
    "housekeeping_env",
    "kubernetes_cluster",
    "load_cluster_config",
    "local_cluster",
    "make_client",
    "process_cluster",
    "slurm_cluster",
    "stop_process_groups",
    "worker_memory_limit",
]

KINDS = ("local", "address", "scheduler_file", "slurm", "kubernetes")
LOCALHOST = "127.0.0.1"
DASHBOARD = f"{LOCALHOST}:8787"
REPO_CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"

_OWNED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

#: Dask housekeeping intervals for one-thread compute workers (see the module docstring).
HOUSEKEEPING: dict[str, str] = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def _distributed_default(key: str) -> Any:
    import distributed

    node: Any = yaml.safe_load(Path(distributed.__file__).with_name("distributed.yaml").read_text())
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def housekeeping_config() -> dict[str, str]:
    """:data:`HOUSEKEEPING` for each key whose current Dask value is still distributed's
    default (values a user configured are kept)."""
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults in dask.config)

    return {k: v for k, v in HOUSEKEEPING.items()
            if dask.config.get(k, None) == _distributed_default(k)}  # fmt: skip


def housekeeping_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`housekeeping_config` as ``DASK_...`` environment variables for processes
    started from the command line, leaving out those ``env`` already sets."""
    env = os.environ if env is None else env
    out = {}
    for k, v in housekeeping_config().items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in k.split("."))
        if name not in env:
            out[name] = v
    return out


class ClusterConfigError(ValueError):
    """A cluster specification cannot be understood, or asks for something refused."""


class ClusterConnectError(RuntimeError):
    """The scheduler cannot be reached, or no worker joined it in time."""


#: Seconds to wait for an existing scheduler to answer (``--connect-timeout``).
CONNECT_TIMEOUT = 20.0

#: The keys a cluster file may hold, per kind. Anything else is refused: keys such as
#: ``preload``, ``worker_class``, ``scheduler_cls``, ``job_cls`` or ``python`` make Dask
#: import or run code, and a cluster file is data.
CLUSTER_KEYS: dict[str, frozenset[str]] = {
    "local": frozenset({"kind", "n_workers", "threads_per_worker", "processes", "memory_limit", "host",
                        "dashboard_address", "gpus", "scheduler_port", "interface", "silence_logs",
                        "local_directory", "worker_dashboard_address"}),
    "address": frozenset({"kind", "address", "timeout"}),
    "scheduler_file": frozenset({"kind", "scheduler_file", "path", "timeout"}),
    "slurm": frozenset({"kind", "jobs", "adapt", "job_name", "queue", "account", "walltime", "cores",
                        "processes", "memory", "job_cpu", "job_mem", "job_extra_directives",
                        "job_directives_skip", "job_script_prologue", "local_directory",
                        "log_directory", "worker_extra_args", "interface", "scheduler_options",
                        "death_timeout", "nanny", "protocol", "name", "silence_logs"}),
    "kubernetes": frozenset({"kind", "name", "namespace", "image", "n_workers", "resources",
                             "worker_command", "env", "scheduler_service_type",
                             "port_forward_cluster_ip", "shutdown_on_close", "adapt"}),
}  # fmt: skip
#: Keys of the nested mappings.
_NESTED_KEYS = {
    "scheduler_options": frozenset({"host", "port", "interface", "dashboard_address", "protocol"}),
    "adapt": frozenset({"minimum", "maximum", "minimum_jobs", "maximum_jobs", "interval",
                        "wait_count", "target_duration"}),
    "resources": frozenset({"requests", "limits"}),
}  # fmt: skip
#: Keys known to name code (said so in the message).
_CODE_KEYS = frozenset({"preload", "preload_argv", "preload_nanny", "worker_class", "scheduler_cls",
                        "job_cls", "python", "shebang", "plugins", "worker_kwargs", "scheduler_kwargs",
                        "nanny_kwargs", "security", "loop", "config_name"})  # fmt: skip
#: ``dask worker`` flags that load code: refused in ``worker_extra_args``/``worker_command``.
_CODE_FLAGS = ("--preload", "--preload-nanny", "--worker-class")
_ENV_CODE = re.compile(
    r"PRELOAD|PLUGIN|CLASS|^LD_|^PYTHON(STARTUP|PATH|HOME|USERBASE|INSPECT)$", re.I
)
_PROLOGUE = re.compile(
    r"^\s*(?:(?:source|\.|cd|conda\s+activate|module\s+(?:load|unload|purge|use|restore))(?:\s|$)"
    r"|export\s+[A-Za-z_]\w*=)"
)
_SHELL_META = re.compile(r"[;&|`<>\n]|\$\(")


def _refuse(
    source: str, kind: str, key: str, allowed: frozenset[str], where: str = ""
) -> ClusterConfigError:
    why = (
        " (it names code that Dask would import or run; a cluster file is data)"
        if key in _CODE_KEYS
        else ""
    )
    return ClusterConfigError(
        f"{source}: key '{where}{key}' is not allowed for kind: {kind}{why}; allowed: "
        f"{', '.join(sorted(allowed - {'kind'}))}. Remove it"
    )


def _check_args(source: str, key: str, args: Any) -> None:
    items = args.split() if isinstance(args, str) else list(args or [])
    for a in (str(v) for v in items):
        if a.split("=", 1)[0] in _CODE_FLAGS:
            raise ClusterConfigError(
                f"{source}: {key} holds {a!r}, which makes the workers import code; "
                "a cluster file is data: remove it"
            )


def _check_env_name(source: str, key: str, name: str) -> None:
    if _ENV_CODE.search(name):
        raise ClusterConfigError(
            f"{source}: {key} sets {name}, which can make processes load code; "
            "a cluster file is data: remove it"
        )


def check_cluster_keys(cfg: Mapping[str, Any]) -> None:
    """Refuse any key of a cluster configuration outside :data:`CLUSTER_KEYS` of its kind,
    and values that would load code (``--preload`` in worker arguments, ``*PRELOAD*``
    environment variables, prologue lines that are not plain setup).

    Raises
    ------
    ClusterConfigError
        Naming the file, the key and what is allowed.
    """
    kind = str(cfg.get("kind"))
    source = str(cfg.get("_source", "cluster config"))
    allowed = CLUSTER_KEYS[kind]
    for key in cfg:
        if key == "_source":
            continue
        if key not in allowed:
            raise _refuse(source, kind, str(key), allowed)
        sub = _NESTED_KEYS.get(str(key))
        val = cfg[key]
        if sub is not None and val is not None:
            if not isinstance(val, Mapping):
                raise ClusterConfigError(f"{source}: {key} must be a mapping, got {val!r}")
            for k in val:
                if k not in sub:
                    raise _refuse(source, kind, str(k), sub | {"kind"}, where=f"{key}.")
    for key in ("worker_extra_args", "worker_command"):
        _check_args(source, key, cfg.get(key))
    cmd = cfg.get("worker_command")
    if cmd is not None:
        words = cmd.split() if isinstance(cmd, str) else [str(w) for w in cmd]
        if words[:2] != ["dask", "worker"] and words[:1] != ["dask-worker"]:
            raise ClusterConfigError(
                f"{source}: worker_command {cmd!r} must start with 'dask worker' (it runs in every pod)"
            )
    env = cfg.get("env")
    if env is not None:
        if not isinstance(env, Mapping):
            raise ClusterConfigError(f"{source}: env must be a mapping of NAME: value")
        for name in env:
            _check_env_name(source, "env", str(name))
    for line in _as_list(cfg.get("job_script_prologue")):
        if not _PROLOGUE.match(line) or _SHELL_META.search(line):
            raise ClusterConfigError(
                f"{source}: job_script_prologue line {line!r} is not plain setup; allowed: one "
                "'source FILE', 'module load ...', 'conda activate ENV', 'cd DIR' or "
                "'export NAME=VALUE' per line, without ; | & ` $( or redirections"
            )
        if line.split()[0] == "export":
            _check_env_name(source, "job_script_prologue", line.split()[1].split("=", 1)[0])
    for d in _as_list(cfg.get("job_extra_directives")):
        if not d.startswith("-") or "\n" in d:
            raise ClusterConfigError(
                f"{source}: job_extra_directives entry {d!r} must be one sbatch option (e.g. --gres=gpu:1)"
            )


def _as_list(value: Any) -> list[str]:
    """A YAML value meant as a list of lines (one string is one line)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check_n_workers(n: Any, what: str = "--workers") -> int | None:
    """``n`` as a worker count >= 1 (None stays None: automatic).

    Raises
    ------
    ClusterConfigError
        For 0, a negative number or something that is not an integer (a cluster of no
        workers would wait forever).
    """
    if n is None:
        return None
    try:
        value = int(n)
        ok = value == float(n) and not isinstance(n, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok or value < 1:
        raise ClusterConfigError(f"{what} {n!r}: need a whole number of workers >= 1")
    return value


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


def load_cluster_config(
    spec: str | os.PathLike[str] | Mapping[str, Any] | None = "local",
) -> dict[str, Any]:
    """Normalise a cluster spec into a dict with a ``kind``.

    ``'local'``/None -> ``{'kind': 'local'}``; ``'tcp://...'`` -> address; an existing
    ``*.json`` -> scheduler file; an existing ``*.yaml``/``*.yml`` -> its content; a bare
    name such as ``'slurm'`` -> ``cluster/slurm.yaml`` of this repository when present.

    Raises
    ------
    ClusterConfigError
        For an unknown kind, a missing file or invalid YAML, naming it.
    """
    if spec is None:
        return {"kind": "local"}
    if isinstance(spec, Mapping):
        cfg = dict(spec)
    else:
        s = str(spec).strip()
        if s == "local":
            return {"kind": "local"}
        if "://" in s:
            return {"kind": "address", "address": s}
        path = Path(s).expanduser()
        if not path.exists() and (REPO_CLUSTER_DIR / f"{s}.yaml").exists():
            path = REPO_CLUSTER_DIR / f"{s}.yaml"
        if not path.exists():
            raise ClusterConfigError(
                f"--cluster {s!r}: not 'local', not an address (tcp://host:port) and no such "
                "file (a scheduler file *.json or a cluster/*.yaml)"
            )
        if path.suffix == ".json":
            return {"kind": "scheduler_file", "scheduler_file": str(path)}
        if path.suffix not in (".yaml", ".yml"):
            raise ClusterConfigError(f"--cluster {s!r}: expected a .yaml or .json file")
        from kgml_grid.safe_yaml import YamlError, load_yaml

        try:
            cfg = load_yaml(path.read_text(), source=str(path))
        except YamlError as e:
            raise ClusterConfigError(str(e)) from None
        if not isinstance(cfg, dict):
            raise ClusterConfigError(f"{path}: a cluster file must be a YAML mapping with 'kind:'")
        cfg.setdefault("_source", str(path))
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ClusterConfigError(
            f"{cfg.get('_source', 'cluster config')}: kind {kind!r}; expected one of {', '.join(KINDS)}"
        )
    check_cluster_keys(cfg)
    src = cfg.get("_source", "cluster config")
    if kind in ("local", "kubernetes"):
        check_n_workers(cfg.get("n_workers"), f"{src}: n_workers")
    if kind == "slurm" and "jobs" in cfg:
        check_n_workers(cfg["jobs"], f"{src}: jobs")
    return cfg


def _count_gpus() -> int:
    """GPUs visible to this machine, without initialising CUDA in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids)
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        r = subprocess.run(
            [smi, "--list-gpus"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in r.stdout.splitlines() if line.startswith("GPU "))


# --------------------------------------------------------------------------------------
# clusters
# --------------------------------------------------------------------------------------


def local_cluster(cfg: Mapping[str, Any] | None = None) -> Any:
    """A ``LocalCluster`` of worker processes, bound to 127.0.0.1 by default."""
    from distributed import LocalCluster

    cfg = load_cluster_config({"kind": "local", **dict(cfg or {})})
    opts = {k: v for k, v in cfg.items() if k not in ("kind", "_source")}
    gpus = opts.pop("gpus", "auto")
    n_gpus = _count_gpus() if gpus == "auto" else int(gpus or 0)
    if opts.get("n_workers") is None:
        opts["n_workers"] = n_gpus if n_gpus else max(1, min(os.cpu_count() or 1, 8))
    opts.setdefault("threads_per_worker", 1)
    opts.setdefault("processes", True)
    opts.setdefault("host", LOCALHOST)
    opts.setdefault("dashboard_address", DASHBOARD)
    import dask

    with dask.config.set(housekeeping_config()):  # nannies hand this config to their workers
        return LocalCluster(**opts)


def slurm_cluster(cfg: Mapping[str, Any]) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` from a ``kind: slurm`` config (no job submitted).

    ``jobs`` (submit this many jobs) and ``adapt`` (``{minimum, maximum}`` jobs) are
    read by :func:`make_client`; every other key (of :data:`CLUSTER_KEYS`) goes to ``SLURMCluster``. Unless the
    config sets ``interface`` or ``scheduler_options.host``, the scheduler binds to
    127.0.0.1 (fine on one node; set ``interface`` so that compute nodes reach it).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("kind: slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    cfg = load_cluster_config({**dict(cfg), "kind": "slurm"})
    opts = {k: v for k, v in cfg.items() if k not in ("kind", "_source", "jobs", "adapt")}
    sched = dict(opts.pop("scheduler_options", None) or {})
    if not opts.get("interface") and "host" not in sched:
        sched["host"] = LOCALHOST
    sched.setdefault("dashboard_address", DASHBOARD)
    opts["scheduler_options"] = sched
    prologue = _as_list(opts.get("job_script_prologue"))
    set_there = {
        w.split("=", 1)[0]
        for line in prologue
        for w in line.replace("export ", " ").split()
        if "=" in w
    }
    opts["job_script_prologue"] = [f"export {k}={v}" for k, v in housekeeping_env({}).items()
                                   if k not in set_there] + prologue  # fmt: skip
    return SLURMCluster(**opts)


def kubernetes_cluster(cfg: Mapping[str, Any]) -> Any:
    """A ``dask_kubernetes.operator.KubeCluster`` from a ``kind: kubernetes`` config.

    Raises
    ------
    ImportError
        When dask-kubernetes is not installed, saying what to install.
    """
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ImportError(
            "kind: kubernetes needs the Dask Kubernetes operator's client: "
            "pip install dask-kubernetes (and the operator installed in the Kubernetes "
            "cluster: helm install --repo https://helm.dask.org --create-namespace -n "
            "dask-operator --generate-name dask-kubernetes-operator); see cluster/README.md"
        ) from None
    cfg = load_cluster_config({**dict(cfg), "kind": "kubernetes"})
    opts = {k: v for k, v in cfg.items() if k not in ("kind", "_source", "adapt")}
    env = {str(k): str(v) for k, v in dict(opts.get("env") or {}).items()}
    opts["env"] = {**housekeeping_env(env), **env}
    return KubeCluster(**opts)


def make_client(
    spec: str | os.PathLike[str] | Mapping[str, Any] | None = "local",
    *,
    n_workers: int | None = None,
    verbose: bool = True,
    timeout: float = 120,
    connect_timeout: float | None = None,
) -> Any:
    """A ``distributed.Client`` for ``spec`` (see the module docstring).

    Parameters
    ----------
    n_workers : int, optional
        Workers of a local cluster (or jobs of a SLURM cluster, pods on Kubernetes);
        at least 1.
    verbose : bool
        Print the dashboard link.
    timeout : float
        Seconds to wait for the first worker of a local cluster.
    connect_timeout : float, optional
        Seconds to wait for an existing scheduler (an address or a scheduler file) to
        answer: the file's ``timeout:``, else :data:`CONNECT_TIMEOUT` (20 s).

    Raises
    ------
    ClusterConfigError
        For a spec that cannot be understood or that is refused, or ``n_workers < 1``.
    ClusterConnectError
        When the scheduler does not answer within ``connect_timeout`` (naming the
        address), or no worker of a local cluster starts within ``timeout``.

    Notes
    -----
    Close it with :func:`close_client`, which also closes a cluster made here.
    """
    from distributed import Client

    n_workers = check_n_workers(n_workers)
    cfg = load_cluster_config(spec)
    kind = cfg["kind"]
    src = cfg.get("_source", "--cluster")
    raw_wait = (
        connect_timeout if connect_timeout is not None else cfg.get("timeout", CONNECT_TIMEOUT)
    )
    try:
        wait = float(raw_wait)
    except (TypeError, ValueError):
        wait = float("nan")
    if not wait > 0:
        raise ClusterConfigError(f"{src}: timeout {raw_wait!r}: need a number of seconds > 0")
    cluster = None
    if kind == "local":
        if n_workers is not None:
            cfg["n_workers"] = n_workers
        cluster = local_cluster(cfg)
        client = Client(cluster)
    elif kind == "address":
        if "address" not in cfg:
            raise ClusterConfigError(f"{src}: kind address needs 'address:'")
        client = _connect(str(cfg["address"]), wait, address=str(cfg["address"]))
    elif kind == "scheduler_file":
        path = cfg.get("scheduler_file") or cfg.get("path")
        if not path or not Path(path).exists():
            raise ClusterConfigError(f"{src}: scheduler file {path!r} does not exist")
        client = _connect(
            f"{_file_address(path)} (scheduler file {path})", wait, scheduler_file=str(path)
        )
    elif kind == "slurm":
        cluster = slurm_cluster(cfg)
        adapt = cfg.get("adapt")
        if adapt:
            cluster.adapt(**dict(adapt))
        else:
            cluster.scale(jobs=int(n_workers or cfg.get("jobs", 1)))
        client = Client(cluster)
    else:
        if n_workers is not None:
            cfg["n_workers"] = n_workers
        cluster = kubernetes_cluster(cfg)
        if cfg.get("adapt"):
            cluster.adapt(**dict(cfg["adapt"]))
        client = Client(cluster)
    if cluster is not None:
        _OWNED[client] = cluster
    if kind == "local":
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            close_client(client)
            raise ClusterConnectError(
                f"no worker of the local cluster started within {timeout:g} s; see the log above "
                "(memory_limit, ports), or use --cluster serial"
            ) from None
    elif kind in ("slurm", "kubernetes") and not cfg.get("adapt"):
        with contextlib.suppress(Exception):  # jobs and pods may queue: the run waits for them
            client.wait_for_workers(1, timeout=timeout)
    if verbose:
        link = dashboard_link(client)
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        print(f"dask cluster ({kind}): {n} workers; dashboard: {link or 'none'}", file=sys.stderr)
    return client


def _file_address(path: str | os.PathLike[str]) -> str:
    """The address a scheduler file names (for messages), or the file itself."""
    try:
        return str(json.loads(Path(path).read_text()).get("address") or path)
    except (OSError, ValueError, AttributeError):
        return str(path)


def _connect(shown: str, wait: float, **kwargs: Any) -> Any:
    """``Client(**kwargs, timeout=wait)``, failing with the address ``shown`` and the fix."""
    from distributed import Client

    try:
        return Client(timeout=wait, **kwargs)
    except (OSError, TimeoutError) as e:
        raise ClusterConnectError(
            f"cannot reach the Dask scheduler at {shown}: no answer within {wait:g} s ({e}); check "
            "the address and that the scheduler is running, or raise --connect-timeout"
        ) from None


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL of a client's scheduler, or None when it has none."""
    try:
        return client.dashboard_link
    except (KeyError, AttributeError, TypeError):
        return None


def close_client(client: Any) -> None:
    """Close a client and the cluster :func:`make_client` made for it (if any)."""
    cluster = _OWNED.pop(client, None)
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close()


def worker_memory_limit(client: Any) -> int | None:
    """The smallest memory limit among the client's workers (bytes), None if unlimited."""
    info = client.scheduler_info(n_workers=-1)
    limits = [int(w.get("memory_limit") or 0) for w in info.get("workers", {}).values()]
    limits = [v for v in limits if v > 0]
    return min(limits) if limits else None


# --------------------------------------------------------------------------------------
# real scheduler and worker processes on 127.0.0.1
# --------------------------------------------------------------------------------------


def stop_process_groups(procs: list[subprocess.Popen[bytes]], *, timeout: float = 15) -> None:
    """SIGTERM each process's group (started with ``start_new_session=True``), last started
    first; SIGKILL a group still there after ``timeout`` seconds."""
    for p in reversed(procs):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


@contextlib.contextmanager
def process_cluster(
    n_workers: int = 2,
    *,
    directory: str | os.PathLike[str] | None = None,
    memory_limit: str = "4GiB",
    nthreads: int = 1,
    timeout: float = 90,
    env: Mapping[str, str] | None = None,
) -> Iterator[Path]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Yields the scheduler file (pass it as ``--cluster FILE``); stops every process on
    exit. Worker ``i`` is named ``worker-i``; each has one process and ``nthreads``
    threads.
    """
    from distributed import Client

    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="kgml-dask-")
        directory = tmp
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sched_file = d / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    penv = {**os.environ, **dict(env or {})}
    penv.update(housekeeping_env(penv))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def _start(args: list[str], name: str) -> None:
        log = open(d / f"{name}.log", "wb")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log,
                                      stderr=subprocess.STDOUT, env=penv, cwd=d,
                                      start_new_session=True))  # fmt: skip

    try:
        # --no-dashboard still serves /health and /metrics: bind that to localhost too
        _start(["scheduler", "--host", LOCALHOST, "--port", "0", "--scheduler-file",
                str(sched_file), "--no-dashboard", "--dashboard-address", f"{LOCALHOST}:0"],
               "scheduler")  # fmt: skip
        t_end = time.monotonic() + timeout
        while not sched_file.exists() or not sched_file.read_text().strip():
            if procs[0].poll() is not None or time.monotonic() > t_end:
                raise RuntimeError(f"dask scheduler did not start; see {d / 'scheduler.log'}")
            time.sleep(0.1)
        json.loads(sched_file.read_text())
        for i in range(n_workers):
            _start(["worker", "--scheduler-file", str(sched_file), "--nthreads", str(nthreads),
                    "--nworkers", "1", "--memory-limit", str(memory_limit), "--name", f"worker-{i}",
                    "--host", LOCALHOST, "--no-dashboard", "--dashboard-address", f"{LOCALHOST}:0",
                    "--local-directory", str(d / f"w{i}")],
                   f"worker-{i}")  # fmt: skip
        with Client(scheduler_file=str(sched_file), timeout=timeout) as c:
            c.wait_for_workers(n_workers, timeout=timeout)
        yield sched_file
    finally:
        stop_process_groups(procs, timeout=15)
        for log in logs:
            log.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
