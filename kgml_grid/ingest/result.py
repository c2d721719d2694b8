"""What one ingestion produced, for the caller and the CLI's summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class IngestResult:
    """The cube an ingestion wrote and what it found on the way.

    Attributes
    ----------
    layer : str
        Layer of the cube (``satellite``, ``soil``, ``crop``, ``weather``).
    path : Path
        The cube.
    variables : tuple of str
        Its variables.
    sizes : mapping
        Its dimension sizes after this ingestion.
    crs : str
        Its CRS (``EPSG:nnnn`` where identifiable).
    files : int
        Input files read.
    tiles : int
        Space tiles processed.
    span : str
        Time or year range written by this ingestion.
    appended : bool
        Whether an existing cube was extended.
    missing : mapping
        Per variable, days (or years) of the written range that no file covered (NaN).
    masked : mapping
        Per variable, values outside the schema's valid range set to NaN.
    incomplete : mapping
        Per source quantity of sub-daily weather, days with some but not all of their
        steps (NaN).
    aggregated : mapping
        Per source quantity of sub-daily weather, what made each day (``"24 steps of 1 h"``).
    catalog : Path or None
        The catalog the cube was registered in.
    entry : str or None
        The entry name there.
    """

    layer: str
    path: Path
    variables: tuple[str, ...]
    sizes: Mapping[str, int]
    crs: str
    files: int
    tiles: int
    span: str
    appended: bool = False
    missing: Mapping[str, int] = field(default_factory=dict)
    masked: Mapping[str, int] = field(default_factory=dict)
    incomplete: Mapping[str, int] = field(default_factory=dict)
    aggregated: Mapping[str, str] = field(default_factory=dict)
    catalog: Path | None = None
    entry: str | None = None

    def summary(self) -> str:
        """A few lines for people."""
        dims = ", ".join(f"{d}={n}" for d, n in self.sizes.items())
        lines = [
            f"{self.layer} cube {self.path} ({dims}) {self.crs}"
            + (" [appended]" if self.appended else ""),
            f"  variables: {', '.join(self.variables)}",
            f"  {self.files} files, {self.tiles} tiles, {self.span}",
        ]
        gaps = {k: v for k, v in self.missing.items() if v}
        if gaps:
            lines.append("  no file (NaN): " + ", ".join(f"{k} {v}" for k, v in gaps.items()))
        if self.aggregated:
            lines.append(
                "  aggregated to days: "
                + ", ".join(f"{k} from {v}" for k, v in self.aggregated.items())
            )
        part = {k: v for k, v in self.incomplete.items() if v}
        if part:
            lines.append(
                "  days without all their steps (NaN): "
                + ", ".join(f"{k} {v}" for k, v in part.items())
            )
        bad = {k: v for k, v in self.masked.items() if v}
        if bad:
            lines.append(
                "  outside the valid range (NaN): " + ", ".join(f"{k} {v}" for k, v in bad.items())
            )
        if self.catalog is not None:
            lines.append(f"  registered as {self.entry!r} in {self.catalog}")
        return "\n".join(lines)
