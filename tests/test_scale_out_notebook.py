"""The scale-out analysis notebook runs end to end on the tiny preset (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "scale_out_analysis.ipynb"


@pytest.mark.slow
@pytest.mark.cluster
def test_scale_out_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("KGML_NB_WORK", str(tmp_path))
    monkeypatch.delenv("KGML_NB_MODELS", raising=False)
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outs if o.get("output_type") == "stream")
    assert "dashboard: http://127.0.0.1" in text
    assert "ensemble of 2 members" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outs)
    assert "rh_reco_ratio" in html and "rh_TgC_max" in html  # the budget tables
    assert sum("image/png" in o.get("data", {}) for o in outs) >= 6
    for name in ("budget.png", "mean.png", "std.png", "sens.png", "dominant.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
