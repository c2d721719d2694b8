"""Errors and warnings of the ingestion: every message names the file it is about."""

from __future__ import annotations

import os


class IngestError(ValueError):
    """An input was refused; the message names the file (or the option) and the fix."""


class IngestWarning(UserWarning):
    """Something was accepted but deserves a look (values masked as out of range, say)."""


def file_error(path: str | os.PathLike[str], msg: str) -> IngestError:
    """An :class:`IngestError` whose message starts with the file's path."""
    return IngestError(f"{os.fspath(path)}: {msg}")
