"""The layering is a checked contract: import-linter's contracts in pyproject.toml must all be kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # lint-imports in a child: it imports the whole package graph and caches under the working directory
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The contracts can fail: a copy of the package whose graph layer imports onnxruntime breaks two."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "onnxmerge", copy / "onnxmerge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    cut = copy / "onnxmerge" / "graph" / "cut.py"
    cut.write_text("import onnxruntime  # a layer violation\nfrom ..runtime import session\n" + cut.read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "Graph surgery speaks onnx / onnx-graphsurgeon only BROKEN" in result.stdout


def test_code_is_linted_and_formatted():
    """ruff (configured in pyproject.toml) finds nothing to report or reformat."""
    ruff = [sys.executable, "-m", "ruff"]
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(ruff + args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
