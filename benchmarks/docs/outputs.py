"""Check the pasted output blocks of docs/ that the test suite does not run (a 27 s merge build, the labelling
loop on the demo's 800-image pool, a page server): each marked ``checked by benchmarks/docs/outputs.py``.

    python -m benchmarks.docs.outputs            # every key; or name some: merge-build suggest-label

Each command runs as the page says, in a temporary copy of what it needs; the block must equal today's output
(tests/pasted.py: digits included, measured times excepted where the marker says "times vary"). Prints one line
per key and exits non-zero if any differs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import EXAMPLE, FIXTURES, ROOT
from tests.pasted import assert_pasted, blocks

ONNXMERGE = [sys.executable, "-m", "onnxmerge"]


def merge_build() -> dict[str, str]:
    """docs/merging.md: the merge lines of a build of the merge fixtures with their base, mode "auto"."""
    import numpy as np
    from sklearn.datasets import load_digits

    from onnxmerge import ImageInput, Merger, Preprocess, Source
    from onnxmerge.stages.merging import MergeSpec
    from onnxmerge.summary import build_summary

    digits = load_digits()
    x = np.round(digits.images[1000:] * 255 / 16).astype(np.uint8)[..., None]
    y = digits.target[1000:].astype(str)
    merge = FIXTURES / "merge"
    pre = Preprocess(1 / 255, (0.3,), (0.4,))
    sources = [Source("low", merge / "low.onnx", pre), Source("high", merge / "high.onnx", pre)]
    z = Merger(ImageInput(8, 8, 1), sources, merge=MergeSpec(mode="auto", base=merge / "base.onnx"), quiet=True)
    z.fit(x[:200], y[:200], unlabeled=x[200:320])  # as tests/test_merging.py's builds
    return {"merge-build": build_summary(z, "z.onnx")}


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run([*ONNXMERGE, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stderr + done.stdout


def labelling_loop() -> dict[str, str]:
    """docs/labelling.md: suggest 16 images on the demo's example, the page's first line, suggestions.csv, and
    the build's note once one image is set aside (moved to .none/, as the page's "none of these" does)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("models", "data"):
            shutil.copytree(EXAMPLE / name, work / name)
        recipe = (EXAMPLE / "stage1.toml").read_text().split("[head]")[0]
        head = [b.text for b in blocks(ROOT / "docs" / "labelling.md") if b.info == "toml"][0]
        (work / "recipe.toml").write_text(recipe + head + "\n")
        suggest = ["suggest", "recipe.toml", "-n", "16", "-o", "labels", "--quiet"]
        printed = f"$ onnxmerge {' '.join(suggest[:-1])}\n" + _run(suggest, work)
        page = subprocess.Popen([*ONNXMERGE, "label", "labels"], cwd=work, stdout=subprocess.PIPE, text=True)
        try:
            printed += "$ onnxmerge label labels\n" + page.stdout.readline()
        finally:
            page.terminate()
            page.wait(10)
        csv = (work / "labels" / "suggestions.csv").read_text()
        first = csv.splitlines()[1].split(",")[0]
        (work / "labels" / ".none").mkdir()
        os.replace(work / "labels" / first, work / "labels" / ".none" / first)
        build = _run(["build", "recipe.toml", "-o", "z.onnx", "--quiet", "--no-cache"], work)
    return {"suggest-label": printed, "suggestions-csv": csv, "labels-note": build}


RUNS = {"merge-build": merge_build, "suggest-label": labelling_loop}
KEYS = {"merge-build": "merge-build", "suggest-label": "suggest-label", "suggestions-csv": "suggest-label",
        "labels-note": "suggest-label"}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help=f"some of {list(KEYS)} (default: all)")
    keys = parser.parse_args().keys or list(KEYS)
    unknown = sorted(set(keys) - set(KEYS))
    if unknown:
        parser.error(f"unknown keys {unknown}; choose from {list(KEYS)}")
    outputs: dict[str, str] = {}
    for run in dict.fromkeys(KEYS[k] for k in keys):
        with contextlib.redirect_stderr(io.StringIO()):
            outputs.update(RUNS[run]())
    failed = 0
    for key in keys:
        try:
            assert_pasted(key, outputs[key])
            print(f"{key}: ok")
        except AssertionError as exc:
            failed += 1
            print(f"{key}: DIFFERS\n{exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
