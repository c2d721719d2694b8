"""The Jupyter workflow runs top to bottom (executed with nbclient on the tiny preset)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "workflow.ipynb"


@pytest.mark.slow
def test_workflow_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("KGML_NB_WORK", str(tmp_path))
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "dashboard: http://127.0.0.1" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
