"""How the ``kgml-grid`` command reports an error: one line, and an exit code.

Every error the project raises on purpose says what is wrong and the fix (naming the
file, option or value). The command prints it as one line,
``kgml-grid CMD: error: MESSAGE``, without a traceback (``kgml-grid --debug CMD ...``
shows it), and exits with

* :data:`USAGE` (2) for bad input: a file, option or value that cannot be used
  (``ValueError`` and its subclasses: ``PlanError``, ``CatalogError``,
  ``ClusterConfigError``, ``CubeError``, ``IngestError``...; a missing or existing file;
  a missing optional package);
* :data:`RUNTIME` (1) for a run that failed on the way (``BlockError``, a scheduler that
  cannot be reached, a full disk, any other error).

Argparse's own errors (an unknown option, ``--workers 0``) also exit with 2.
"""

from __future__ import annotations

import errno

__all__ = ["RUNTIME", "USAGE", "exit_code", "is_disk_full", "one_line", "report"]

USAGE = 2
RUNTIME = 1

_USAGE_TYPES: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ImportError,
)  # fmt: skip


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or one of its causes is ``OSError(ENOSPC)`` (or ``EDQUOT``),
    also as re-raised from a Dask worker."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "[Errno 28]" in str(e) or "No space left on device" in str(e):
            return True
    return False


def exit_code(exc: BaseException) -> int:
    """:data:`USAGE` or :data:`RUNTIME` for an exception (see the module docstring)."""
    if is_disk_full(exc):
        return RUNTIME
    return USAGE if isinstance(exc, _USAGE_TYPES) else RUNTIME


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined with '; ' (blank lines dropped)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _known(exc: BaseException) -> bool:
    """Raised on purpose by this project (its message names the value and the fix), or an
    ``OSError`` (its message names the file)."""
    return (type(exc).__module__ or "").startswith("kgml_grid") or isinstance(
        exc, (*_USAGE_TYPES, OSError)
    )


def report(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception of a command."""
    code = exit_code(exc)
    ours = (type(exc).__module__ or "").startswith("kgml_grid")
    if not ours and is_disk_full(exc):
        name = getattr(exc, "filename", None)
        where = f" writing {name}" if name else ""
        return code, (f"no space left on the device{where}; free space or write to another "
                      "disk, then rerun (kgml-grid upscale: --resume keeps the completed blocks)")  # fmt: skip
    msg = one_line(str(exc)) or type(exc).__name__
    if not _known(exc):
        msg = f"{type(exc).__name__}: {msg} (unexpected; kgml-grid --debug ... shows the traceback)"
    elif isinstance(exc, OSError) and not ours:
        msg = f"{type(exc).__name__}: {msg}"
    return code, msg
