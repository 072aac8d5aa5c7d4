"""Issue 13: is the build's held-out estimate close to the test accuracy, what does it cost, and do the
source checks fire on the wrong-scale recipe (and only there)?

Cases (real models, real data):
  fashion   the demo's stage 1 and stage 2 fit recipes: expected accuracy vs the 1,600 / 1,800 test images,
            the cross-validation's seconds vs the whole build's (one run, side by side);
  digits    the digits-split fixture (tests/fixtures/split: sklearn MLP 0-4, torch CNN 5-8), 10 labels per class,
            a pool of 177, right (16/255) and wrong (1/255) scale for the MLP, fit and teachers mode: expected
            vs test accuracy on the remaining held-out images, and every warning.

    nice -n 10 .venv/bin/python -m benchmarks.accuracy.truth
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import EXAMPLE, FIXTURES
from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.recipe import load_recipe

SPLIT = FIXTURES / "split"


def fashion() -> None:
    test = np.load(EXAMPLE / "data" / "test.npz")
    x, y = test["x"], test["y"].astype(str)
    for name in ("stage1.toml", "stage2.toml"):
        recipe = load_recipe(EXAMPLE / name, quiet=True)
        began, cpu = time.perf_counter(), time.process_time()
        z = recipe.merger.fit(recipe.train, unlabeled=recipe.unlabeled)
        build, build_cpu = time.perf_counter() - began, time.process_time() - cpu
        known = np.isin(y, z.classes_)
        accuracy = float(np.mean(z.predict(x[known]) == y[known]))
        e = z.report_["expected_accuracy"]
        print(
            f"fashion {name}: {e['line']}; test accuracy {accuracy:.3f} on {int(known.sum())} images; "
            f"cross-validation {e['seconds']:.2f} s of a {build:.2f} s build ({e['seconds'] / build:.0%}; CPU "
            f"{e['cpu_seconds']:.2f} s of {build_cpu:.2f} s, {e['cpu_seconds'] / build_cpu:.0%})"
        )


def digits() -> None:
    data = np.load(SPLIT / "heldout.npz")
    x, y = data["x"], data["y"]
    rng = np.random.default_rng(0)
    labelled = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:10] for c in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(y)), labelled)
    pool = rng.permutation(rest)[:177]
    test = np.setdiff1d(rest, pool)
    for scale, what in ((16 / 255, "right"), (1 / 255, "wrong")):
        for mode in ("fit", "teachers"):
            sources = [
                Source(
                    "digits_lo", SPLIT / "digits_lo.onnx", Preprocess(scale, 0.0, 1.0, height=8, width=8, channels=1)
                ),
                Source("digits_hi", SPLIT / "digits_hi.onnx", Preprocess(1 / 255, 0.5, 0.5)),
            ]
            z = Merger(ImageInput(8, 8, 1), sources, mode=mode, quiet=True)
            z.fit(x[labelled] if mode == "fit" else None, y[labelled] if mode == "fit" else None, unlabeled=x[pool])
            accuracy = float(np.mean(z.predict(x[test]) == y[test]))
            line = z.report_.get("expected_accuracy", {}).get("line", "no labels: no estimate")
            print(f"digits, {what} scale, {mode}: test accuracy {accuracy:.3f} on {len(test)}; {line}")
            for warning in z.warnings_:
                print(f"  onnxmerge: warning: {warning}")


if __name__ == "__main__":
    fashion()
    digits()
