"""The worker-resident model: a Dask ``WorkerPlugin`` that loads a checkpoint once.

A model passed into ``map_blocks`` is pickled into every task (DESIGN section 8).
Here the graph carries only the checkpoint's *path and hash*; :class:`ModelPlugin`
loads the checkpoint once per worker process, in the worker, and tasks look it up
with :func:`get_checkpoint`. The graph's size therefore does not depend on the
model's.

Devices
-------
One worker process per GPU, one thread each (several processes on one GPU fight over
its memory). :func:`select_device` picks the device *inside the worker*, never in the
client (CUDA is never initialised in the parent process):

* ``device='cpu'`` or no CUDA in the worker: CPU;
* one visible GPU (the usual case: the launcher sets ``CUDA_VISIBLE_DEVICES`` per
  worker, as dask-cuda and SLURM ``--gres=gpu:1`` do): ``cuda:0``;
* several visible GPUs: ``cuda:<n>`` with ``n`` from ``KGML_GPU`` if set, else from
  the worker's name (``LocalCluster`` names its workers 0, 1, ...) modulo the count.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    import torch

    from kgml_grid.checkpoint import Checkpoint

__all__ = [
    "ModelPlugin",
    "get_checkpoint",
    "plugin_name",
    "register_model",
    "select_device",
    "tune_malloc",
]

_LOCAL: dict[str, Checkpoint] = {}
_LOCK = threading.Lock()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its dynamic mmap threshold (64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the ratio glibc keeps when it adjusts them itself


def tune_malloc() -> bool:
    """Let torch reuse heap memory in this process again (glibc only; else a no-op).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting any malloc threshold turns off
    glibc's dynamic mmap threshold, so every tensor above 128 KiB is mmapped, zero-filled
    by page faults and unmapped again: model inference on CPU ran at 0.55-0.6 of its
    speed (2 processes x 1 thread: 140 k vs 235-255 k pixel-days/s on a 2-core VM). This
    sets the thresholds to the values glibc would grow to by itself. The memory kept is
    at most ``TRIM_THRESHOLD`` of free heap per process.

    Returns
    -------
    bool
        Whether both thresholds were set.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False


def plugin_name(checkpoint_hash: str) -> str:
    """Name of the plugin holding the checkpoint with this hash."""
    return f"kgml-model-{checkpoint_hash[:16]}"


def select_device(preference: str = "auto", *, worker_name: Any = None) -> torch.device:
    """The torch device for this worker process (see the module docstring).

    Parameters
    ----------
    preference : {'auto', 'cpu', 'cuda', 'cuda:N'}
        ``'auto'`` uses a GPU when the worker has one.
    worker_name : any
        The Dask worker's name, used to spread workers over several visible GPUs.
    """
    import torch

    from kgml_grid.checkpoint import resolve_device

    pref = str(preference).strip().lower()
    if pref != "auto":
        return resolve_device(pref)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count <= 1:
        return torch.device("cuda:0")
    env = os.environ.get("KGML_GPU")
    if env is not None and env.strip().isdigit():
        return torch.device(f"cuda:{int(env) % count}")
    m = re.search(r"(\d+)$", str(worker_name)) if worker_name is not None else None
    index = int(m.group(1)) if m else 0
    return torch.device(f"cuda:{index % count}")


class ModelPlugin(WorkerPlugin):
    """Load a checkpoint once per worker process; tasks get it with :func:`get_checkpoint`.

    Parameters
    ----------
    path : str
        Checkpoint directory, readable from every worker.
    checkpoint_hash : str
        Expected :func:`kgml_grid.checkpoint.checkpoint_hash`; a worker that finds a
        different checkpoint at ``path`` refuses it.
    device : str
        ``'auto'`` (GPU when the worker has one), ``'cpu'``, ``'cuda:N'``.
    torch_threads : int, optional
        ``torch.set_num_threads`` in the worker (default: leave torch's setting; Dask's
        nanny already sets ``OMP_NUM_THREADS=1`` for its workers).
    """

    idempotent = True

    def __init__(
        self,
        path: str,
        checkpoint_hash: str,
        *,
        device: str = "auto",
        torch_threads: int | None = None,
    ) -> None:
        self.path = str(path)
        self.checkpoint_hash = checkpoint_hash
        self.device = device
        self.torch_threads = torch_threads
        self.name = plugin_name(checkpoint_hash)
        self.checkpoint: Checkpoint | None = None

    def __getstate__(self) -> dict[str, Any]:
        # what travels to the workers: a path and a hash, never the model
        state = dict(self.__dict__)
        state["checkpoint"] = None
        return state

    def setup(self, worker: Any) -> None:
        import torch

        from kgml_grid.checkpoint import load_checkpoint

        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        tune_malloc()
        device = select_device(self.device, worker_name=getattr(worker, "name", None))
        ckpt = load_checkpoint(self.path, device=device, check_schema=True)
        if ckpt.hash != self.checkpoint_hash:
            raise ValueError(
                f"worker {getattr(worker, 'name', '?')}: checkpoint {self.path} has hash "
                f"{ckpt.hash[:12]}, the run was planned with {self.checkpoint_hash[:12]}; "
                "was it replaced during the run?"
            )
        self.checkpoint = ckpt

    def teardown(self, worker: Any) -> None:
        self.checkpoint = None


def register_model(
    client: Any, path: str | Path, checkpoint_hash: str, *, device: str = "auto"
) -> str:
    """Register :class:`ModelPlugin` on every worker (now and joining later).

    Returns the plugin name. Errors of a worker's ``setup`` (missing file, wrong hash)
    are raised here, before any task runs.
    """
    plugin = ModelPlugin(str(path), checkpoint_hash, device=device)
    client.register_plugin(plugin, name=plugin.name)
    return plugin.name


def get_checkpoint(path: str, checkpoint_hash: str) -> Checkpoint:
    """The checkpoint for a task: the worker plugin's inside a Dask worker, else a
    process-local copy (the serial executor), loaded once.

    Raises
    ------
    RuntimeError
        Inside a worker where the plugin was not registered.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        plugin = worker.plugins.get(plugin_name(checkpoint_hash))
        if plugin is None or getattr(plugin, "checkpoint", None) is None:
            raise RuntimeError(
                f"worker {worker.name}: no model plugin {plugin_name(checkpoint_hash)!r}; "
                "register it with kgml_grid.worker.register_model(client, ...) before running tasks"
            )
        return plugin.checkpoint  # type: ignore[attr-defined]  # our ModelPlugin
    with _LOCK:
        ckpt = _LOCAL.get(checkpoint_hash)
        if ckpt is None:
            from kgml_grid.checkpoint import load_checkpoint

            ckpt = load_checkpoint(path, device="cpu", check_schema=True)
            if ckpt.hash != checkpoint_hash:
                raise ValueError(
                    f"checkpoint {path} has hash {ckpt.hash[:12]}, the run was planned with "
                    f"{checkpoint_hash[:12]}"
                )
            _LOCAL.clear()  # one model at a time in a process
            _LOCAL[checkpoint_hash] = ckpt
        return ckpt
