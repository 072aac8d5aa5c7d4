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


def unknown_loop() -> dict[str, str]:
    """docs/unknown.md and the README: stage 1 with ``unknown = "auto"``, its evaluate and inspect, predict
    --unknown-to on 300 test photos (every 6th image of test.npz, as PNG), the bags among them sorted into
    new/Bag/ (the rest set aside), and stage 2 built from them."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "examples").mkdir()
        os.symlink(EXAMPLE, work / "examples" / "fashion")  # the commands' paths, as run from the repository
        test = np.load(EXAMPLE / "data" / "test.npz")
        (work / "photos").mkdir()
        for i, (image, label) in enumerate(zip(test["x"][::6], test["y"][::6])):
            Image.fromarray(image[..., 0]).save(work / "photos" / f"{i:03d}_{label}.png")

        def run(args: list[str], stdout: bool = True) -> str:
            done = subprocess.run([*ONNXMERGE, *args, "--quiet"], cwd=work, capture_output=True, text=True, check=True)
            return f"$ onnxmerge {' '.join(args)}\n" + done.stderr + (done.stdout if stdout else "")

        build = run(["build", "examples/fashion/unknown1.toml", "-o", "z1.onnx"])
        inspect = run(["inspect", "z1.onnx"])
        test_npz = "examples/fashion/data/test.npz"
        report = run(["evaluate", "z1.onnx", test_npz, "--report", "rep1"])
        plain = run(["evaluate", "z1.onnx", test_npz])
        predict = run(["predict", "z1.onnx", "photos/", "--unknown-to", "new"], stdout=False)
        predict = predict.replace("\n", " > predictions.tsv\n", 1)
        (work / "new" / "Bag").mkdir()
        for image in (work / "new").glob("*.png"):  # the user's sorting: bags to new/Bag/, the rest set aside
            (image.replace(work / "new" / "Bag" / image.name) if "_Bag" in image.name else image.unlink())
        recipe = (EXAMPLE / "unknown1.toml").read_text().replace('"models/', '"examples/fashion/models/')
        recipe = recipe.replace('train = "data/train.npz"', 'train = ["examples/fashion/data/train.npz", "new"]')
        (work / "unknown2.toml").write_text(recipe)
        stage2 = run(["build", "unknown2.toml", "-o", "z2.onnx"]).replace("examples/fashion/", "")
        stage2 += run(["evaluate", "z2.onnx", test_npz]).replace("examples/fashion/", "")
    return {
        "unknown-build-inspect": build + inspect,
        "unknown-evaluate": report,
        "unknown-predict": predict,
        "unknown-stage2": stage2,
        "unknown-readme": build + plain + predict,
    }


RUNS = {"merge-build": merge_build, "suggest-label": labelling_loop, "unknown": unknown_loop}
KEYS = {"merge-build": "merge-build", "suggest-label": "suggest-label", "suggestions-csv": "suggest-label",
        "labels-note": "suggest-label", "unknown-build-inspect": "unknown", "unknown-evaluate": "unknown",
        "unknown-predict": "unknown", "unknown-stage2": "unknown", "unknown-readme": "unknown"}  # fmt: skip


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
