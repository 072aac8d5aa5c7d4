"""``onnxmerge demo``: the whole story on the Fashion-MNIST example shipped in ``examples/fashion``.

Source A (PyTorch CNN) knows classes 0-4, source B (scikit-learn MLP) knows classes 5-7. Stage 1 builds Z
over their 8 classes from labelled images; stage 2 adds "Bag", a class neither source knows, from 5
images. The demo prints how each model does and writes both Z files and an evaluation report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import OnnxMergeError
from .evaluate import evaluate_predictions, write_report
from .recipe import load_recipe
from .stitch import output_names

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fashion"


def _source_accuracy(merger, name: str, labels: list[str], x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a source alone (its own head, inside the stitched graph) on images of its own classes."""
    head = merger.source_outputs(x, [output_names(name)["head"]])[output_names(name)["head"]]
    return float(np.mean(np.asarray(labels)[head.argmax(axis=1)] == y))


def run_demo(out: Path, example: Path = EXAMPLE, quiet: bool = False) -> dict:
    """Build stage 1 and stage 2 Z from the shipped example, print the table, write Z and the report."""
    if not (example / "stage1.toml").is_file():
        raise OnnxMergeError(f"the demo files are not in {example}; run the demo from a source checkout "
                             "(pip install -e .).")
    out.mkdir(parents=True, exist_ok=True)
    test = np.load(example / "data" / "test.npz")
    x_test, y_test = test["x"], test["y"].astype(str)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))

    say("stage 1: Z over the sources' 8 classes, from labelled images")
    stage1 = load_recipe(example / "stage1.toml", quiet=quiet)
    z1 = stage1.merger.fit(stage1.train)
    z1.save(out / "z_stage1.onnx")
    say("stage 2: add 'Bag' (no source knows it) from 5 images")
    stage2 = load_recipe(example / "stage2.toml", quiet=quiet)
    z2 = stage2.merger.fit(stage2.train)
    z2.save(out / "z_stage2.onnx")

    pred1, pred2 = z1.predict(x_test), z2.predict(x_test)
    rows = []
    for source in z1.sources_:
        mask = np.isin(y_test, source.labels)
        rows.append((f"source {source.spec.name} on its {len(source.labels)} classes", int(mask.sum()),
                     _source_accuracy(z1, source.spec.name, source.labels, x_test[mask], y_test[mask]),
                     float(np.mean(pred1[mask] == y_test[mask])), float(np.mean(pred2[mask] == y_test[mask]))))
    old = np.isin(y_test, z1.classes_)
    rows.append((f"union of the {len(z1.classes_)} source classes", int(old.sum()), None,
                 float(np.mean(pred1[old] == y_test[old])), float(np.mean(pred2[old] == y_test[old]))))
    new = [c for c in z2.classes_ if c not in z1.classes_]
    for label in new:
        mask = y_test == label
        rows.append((f"new class {label!r} (recall)", int(mask.sum()), None, None,
                     float(np.mean(pred2[mask] == label))))
    rows.append((f"all {len(z2.classes_)} classes", len(y_test), None, None, float(np.mean(pred2 == y_test))))

    def cell(v):
        return f"{v:9.3f}" if v is not None else f"{'-':>9}"

    table = [f"{'accuracy on the test set':38} {'images':>6} {'source':>9} {'Z stage1':>9} {'Z stage2':>9}"]
    table += [f"{name:38} {n:6d} {cell(a)} {cell(b)} {cell(c)}" for name, n, a, b, c in rows]
    print("\n".join(table))
    result = evaluate_predictions(y_test, pred2, z2.classes_)
    written = write_report(result, out / "report", "Z stage 2 on the Fashion-MNIST demo test set")
    for path in [out / "z_stage1.onnx", out / "z_stage2.onnx", *written]:
        print(f"wrote {path}")
    return {"rows": rows, "evaluation": result}
