"""Layout: imports between the package's modules run one way; mypy and ruff are clean.

The graph is read from the source (``ast``), every ``import kgml_grid...`` and
``from kgml_grid... import ...`` at any depth (imports inside functions count too: a
lazy import is still a dependency). ``from P import m`` of a submodule ``m`` depends on
``P.m``, not on the package ``P``.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "kgml_grid"


def _is_module(name: str) -> bool:
    p = PKG.parent / name.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def import_graph(*, lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module level only with ``lazy=False``)."""
    graph: dict[str, set[str]] = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(f.read_text())
        nodes = ast.walk(tree) if lazy else iter(tree.body)
        deps: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("kgml_grid.")}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("kgml_grid")
            ):
                subs = {
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if _is_module(f"{node.module}.{a.name}")
                }
                deps |= subs
                if len(subs) < len(node.names):
                    deps.add(str(node.module))
        graph[mod] = deps - {mod}
    return graph


def test_cluster_and_execute_import_one_way():
    g = import_graph()
    assert (
        "kgml_grid.cluster" in g["kgml_grid.execute"]
    )  # the executor uses the client factory's helpers
    assert "kgml_grid.execute" not in g["kgml_grid.cluster"], "cluster must not import execute"


def test_module_level_imports_have_no_cycle():
    g = import_graph(lazy=False)
    list(graphlib.TopologicalSorter(g).static_order())  # raises CycleError naming the cycle


def test_the_check_sees_a_cycle():
    g = import_graph(lazy=False)
    g["kgml_grid.schema"] = {*g["kgml_grid.schema"], "kgml_grid.execute"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(g).static_order())


# --------------------------------------------------------------------------------------
# static checks the suite runs: mypy on the engine's modules, ruff (lint and format)
# --------------------------------------------------------------------------------------

TYPED = ("plan", "execute", "blockio", "model", "checkpoint", "catalog")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=PKG.parent, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


@pytest.mark.slow
def test_mypy_is_clean_on_the_engine_modules():
    pytest.importorskip("mypy", reason="mypy is in the [test] extras")
    r = _run("mypy", *(f"kgml_grid/{m}.py" for m in TYPED))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_ruff_lint_and_format_are_clean():
    pytest.importorskip("ruff", reason="ruff is in the [test] extras")
    lint = _run("ruff", "check", "kgml_grid", "tests", "benchmarks")
    assert lint.returncode == 0, lint.stdout[-6000:]
    fmt = _run("ruff", "format", "--check", "kgml_grid", "tests", "benchmarks")
    assert fmt.returncode == 0, fmt.stdout[-6000:]
