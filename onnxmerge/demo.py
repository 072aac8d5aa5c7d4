"""``onnxmerge demo``: the whole story on the Fashion-MNIST example shipped in ``examples/fashion``.

Source A (PyTorch CNN) knows classes 0-4, source B (scikit-learn MLP) knows classes 5-7. Stage 1 builds Z
over their 8 classes, stage 2 adds "Bag", a class neither source knows, from 5 images; each stage is built
twice: from labelled images ("fit") and in teachers mode (no old-class labels, the sources' own heads routed
on an unlabeled pool). The demo prints how each model does and writes the Z files and an evaluation report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import OnnxMergeError
from .evaluate import evaluate_predictions, write_report
from .graph.stitch import output_names
from .recipe import load_recipe

#: where the example lives: a source checkout, then where ``pip install .`` puts it (pyproject's data-files)
EXAMPLES = (
    Path(__file__).resolve().parent.parent / "examples" / "fashion",
    Path(sys.prefix) / "share" / "onnxmerge" / "examples" / "fashion",
)


def find_example() -> Path:
    """The first place in ``EXAMPLES`` holding the demo's files (the source checkout's if both do)."""
    for folder in EXAMPLES:
        if (folder / "stage1.toml").is_file():
            return folder
    raise OnnxMergeError(
        f"the demo's example files are in neither {EXAMPLES[0]} nor {EXAMPLES[1]}; reinstall "
        "onnxmerge (pip install . installs them), or run the demo from a source checkout."
    )


def _source_accuracy(merger, name: str, labels: list[str], x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a source alone (its own head, inside the stitched graph) on images of its own classes."""
    head = merger.source_outputs(x, [output_names(name)["head"]])[output_names(name)["head"]]
    return float(np.mean(np.asarray(labels)[head.argmax(axis=1)] == y))


def _table_rows(built: dict, preds: dict, x_test: np.ndarray, y_test: np.ndarray) -> list[tuple]:
    """The demo table's rows: each source on its classes, the union, each new class's recall, all classes."""
    z1 = built["fit1"]

    def accuracy(mask):
        return [float(np.mean(preds[key][mask] == y_test[mask])) for key in built]

    rows = []
    for source in z1.sources_:
        mask = np.isin(y_test, source.labels)
        rows.append(
            (
                f"source {source.spec.name} on its {len(source.labels)} classes",
                int(mask.sum()),
                _source_accuracy(z1, source.spec.name, source.labels, x_test[mask], y_test[mask]),
                *accuracy(mask),
            )
        )
    old = np.isin(y_test, z1.classes_)
    rows.append((f"union of the {len(z1.classes_)} source classes", int(old.sum()), None, *accuracy(old)))
    new = [c for c in built["fit2"].classes_ if c not in z1.classes_]
    for label in new:
        mask = y_test == label
        fit2, teach2 = (float(np.mean(preds[k][mask] == label)) for k in ("fit2", "teach2"))
        rows.append((f"new class {label!r} (recall)", int(mask.sum()), None, None, fit2, None, teach2))
    n_all = len(built["fit2"].classes_)
    every = np.ones(len(y_test), bool)
    _, fit2, _, teach2 = accuracy(every)
    rows.append((f"all {n_all} classes", len(y_test), None, None, fit2, None, teach2))
    return rows


def _print_table(rows: list[tuple]) -> None:
    """Print the demo table (a column per Z: labelled fit and teachers mode, stage 1 and stage 2)."""

    def cell(v):
        return f"{v:8.3f}" if v is not None else f"{'-':>8}"

    table = [
        f"{'':34} {'':>6} {'':>8} {'labelled fit':>17} {'teachers mode':>17}",
        f"{'accuracy on the test set':34} {'images':>6} {'source':>8} {'stage 1':>8} {'stage 2':>8} "
        f"{'stage 1':>8} {'stage 2':>8}",
    ]
    table += [f"{name:34} {n:6d} " + " ".join(cell(v) for v in values) for name, n, *values in rows]
    print("\n".join(table))


def run_demo(out: Path, example: Path | None = None, quiet: bool = False) -> dict:
    """Build stage 1 and stage 2 Z from the shipped example, print the table, write Z and the report.

    Returns the table's rows, the stage-2 evaluation and the four fitted Mergers (``built``: fit1, fit2, teach1,
    teach2), whose build reports are what ``onnxmerge build`` on the same recipes prints."""
    example = example if example is not None else find_example()
    if not (example / "stage1.toml").is_file():
        raise OnnxMergeError(f"the demo files are not in {example}; give the folder holding stage1.toml.")
    out.mkdir(parents=True, exist_ok=True)
    test = np.load(example / "data" / "test.npz")
    x_test, y_test = test["x"], test["y"].astype(str)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))

    built = {}
    for key, recipe_name, what in (
        ("fit1", "stage1.toml", "stage 1, labelled fit: Z over the sources' 8 classes from labelled images"),
        ("fit2", "stage2.toml", "stage 2, labelled fit: add 'Bag' (no source knows it) from 5 images"),
        ("teach1", "teachers1.toml", "stage 1, teachers mode: no labels at all, routed on an unlabeled pool"),
        ("teach2", "teachers2.toml", "stage 2, teachers mode: only Bag's 5 images are labelled"),
    ):
        say(what)
        recipe = load_recipe(example / recipe_name, quiet=quiet)
        built[key] = recipe.merger.fit(recipe.train, unlabeled=recipe.unlabeled)
        built[key].save(out / f"z_{key}.onnx")
    preds = {key: z.predict(x_test) for key, z in built.items()}

    rows = _table_rows(built, preds, x_test, y_test)
    _print_table(rows)
    pred2, z2 = preds["fit2"], built["fit2"]
    result = evaluate_predictions(y_test, pred2, z2.classes_)
    written = write_report(result, out / "report", "Z stage 2 on the Fashion-MNIST demo test set")
    for path in [*(out / f"z_{key}.onnx" for key in built), *written]:
        print(f"wrote {path}")
    return {"rows": rows, "evaluation": result, "built": built}
