"""README.md and docs/ stay true: every pasted output block is marked and checked against a real run today, the
Quick start commands are the ones CI runs, every export snippet is run by examples/export/check.py, every
relative link leads to a file.

Pasted blocks are compared where their command already runs in the suite (``assert_pasted`` in that test):
the demo's (run once per session, conftest's ``demo_run``) here, the Python API example in test_readme.py,
the digits-split builds in test_truth.py, the cluster run in test_dask.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pasted import ROOT, assert_pasted, blocks, documents, pasted_blocks

from onnxmerge.cli import main
from onnxmerge.summary import build_summary

EXPORT = re.compile(r"<!-- export: ([\w-]+) -->")


# -- every pasted block is marked, and every marker is checked by something -----------------------------------
def test_every_output_block_is_marked_as_pasted():
    unmarked = [b.where for path in documents() for b in blocks(path) if b.info == "" and b.key is None]
    assert not unmarked, (
        f"fenced blocks without a language are pasted output and need a marker line `<!-- pasted: KEY -->` "
        f"(and a test calling assert_pasted(KEY, output), tests/pasted.py) or a language (bash, python, toml, "
        f"text for figures): {unmarked}"
    )
    wrong = [b.where for path in documents() for b in blocks(path) if b.info and b.key is not None]
    assert not wrong, f"a pasted marker stands before a block with a language (a pasted block has none): {wrong}"


def test_every_pasted_block_is_checked_by_a_test_or_a_named_script():
    sources = {p: p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name != "pasted.py"}
    for key, block in pasted_blocks().items():
        script = re.search(r"checked by (\S+)", block.options)
        if script:
            path = ROOT / script.group(1)
            assert path.is_file() and f'"{key}"' in path.read_text(), f"{block.where}: {path} does not check {key!r}"
        else:
            checked = [p.name for p, text in sources.items() if re.search(rf"assert_pasted\(\s*\"{key}\"", text)]
            assert checked, f"{block.where}: no test calls assert_pasted({key!r}, ...)"


# -- the Quick start --------------------------------------------------------------------------------------------
def quick_start() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_is_the_demo_command_and_the_test_command_ci_runs():
    demo, tests = quick_start()[:2]
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/onnxmerge demo"
    assert tests.startswith("python3 -m venv .venv && ") and tests.endswith(".venv/bin/python -m pytest -q")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci, ".ci/run must run exactly the README's test command"


def test_the_fast_subset_marker_is_registered():
    assert '-m "not slow"' in (ROOT / "README.md").read_text()
    assert re.search(r'markers = \["slow:', (ROOT / "pyproject.toml").read_text())


# -- links and export snippets -----------------------------------------------------------------------------------
def test_relative_links_lead_to_files():
    for path in documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"


def test_every_export_snippet_is_run_by_the_export_check():
    snippets = EXPORT.findall((ROOT / "README.md").read_text())
    check = (ROOT / "examples" / "export" / "check.py").read_text()
    assert {"pytorch", "keras", "tensorflow", "sklearn", "huggingface", "paddle", "labels"} <= set(snippets)
    for name in snippets:
        assert f'"{name}"' in check, f"examples/export/check.py does not run the README's {name!r} snippet"


# -- the demo's blocks (one demo run per session) -----------------------------------------------------------------
@pytest.mark.slow
def test_demo_output(demo_run):
    assert_pasted("demo", demo_run["out"])


@pytest.mark.slow
def test_build_output_of_the_demo_recipes(demo_run):
    """`onnxmerge build examples/fashion/stage1.toml -o z.onnx` prints the report of the Merger the demo built
    from the same recipe (a first build: nothing in the feature cache yet); warnings follow on stderr."""
    built = demo_run["built"]
    assert_pasted("build-fit", build_summary(built["fit1"], "z.onnx"))
    warnings = [f"onnxmerge: warning: {w}" for w in built["teach1"].report_["warnings"]]
    assert_pasted("build-teachers", "\n".join([build_summary(built["teach1"], "z.onnx"), *warnings]))


@pytest.mark.slow
def test_inspect_output_of_a_demo_z(demo_run, capsys):
    assert main(["inspect", str(demo_run["folder"] / "z_fit1.onnx")]) == 0
    out = capsys.readouterr().out
    assert_pasted("inspect-z", out.replace(str(demo_run["folder"]), "demo-output"))


def test_inspect_output_of_a_source(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["inspect", str(Path("examples/fashion/models/b_sklearn_mlp.onnx"))]) == 0
    assert_pasted("inspect-source", capsys.readouterr().out)
