"""The benchmarks import onnxmerge's internals: a renamed or moved name must fail here, not months later
when someone reruns a benchmark (``from onnxmerge.merger import ROUTER_C`` once broke routing/labels.py).

The imports are read with ``ast`` rather than executed: some benchmarks need torch, and some run at import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))


def onnxmerge_imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` of every ``from onnxmerge... import name`` in the file (relative ones resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "onnxmerge":
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "onnxmerge"]
    return found


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_onnxmerge_name_a_script_imports_exists(path: Path) -> None:
    missing = []
    for module, name, line in onnxmerge_imports(path):
        imported = importlib.import_module(module)
        if name and name != "*" and not hasattr(imported, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"line {line}: {module}.{name}")
    assert not missing, f"{path.relative_to(ROOT)} imports names onnxmerge no longer has: {missing}"


def test_the_check_sees_the_benchmarks() -> None:
    assert len(SCRIPTS) > 20 and any(onnxmerge_imports(p) for p in SCRIPTS)
