#!/usr/bin/env python3
"""Does every file of the wild corpus compose? (issue 28; corpus from benchmarks/compat/generate_corpus.py)

For each file of the corpus's ``manifest.json``:

1. ``inspect``'s suggestion (``find_head``) must be the tensor the generator found feeding the classifier (a torch
   forward hook, a Keras sub-model or scikit-learn's activations, and for converted files that tensor as the
   converter renamed it, checked by onnxruntime);
2. a two-source fit build (the file and tests/fixtures/models/skl_mlp.onnx; digits 8x8, 500 labelled images)
   must pass every parity check (the bound of the file's precision named in the check);
3. Z's accuracy on 400 held-out digits must be within 0.05 of the same build from the file's float32 original.

Runs in the project's own environment (no framework needed), from the repository root:

    python -m benchmarks.compat.corpus [DIR] [--json out.jsonl]     # DIR: default $ONNXMERGE_BENCH_WORK/onnxmerge-corpus
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from benchmarks.common import FIXTURES, work_dir  # noqa: E402
from onnxmerge import ImageInput, Merger, Preprocess, Source  # noqa: E402
from onnxmerge.files.models import load_model  # noqa: E402
from onnxmerge.graph.inspect import describe  # noqa: E402

PARTNER = FIXTURES / "models" / "skl_mlp.onnx"
TRAIN, TEST = slice(0, 500), slice(1000, 1400)


def digits():
    d = load_digits()
    x = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    order = np.random.default_rng(42).permutation(len(x))
    return x[order], d.target.astype(str)[order]


def source(folder: Path, entry: dict) -> Source:
    pre = entry["preprocess"]
    if pre.get("raw"):
        return Source("s", folder / entry["file"], Preprocess(None, None, None))
    layout = None if pre["layout"] == "flat" else pre["layout"]
    spec = Preprocess(pre["scale"], tuple(pre["mean"]), tuple(pre["std"]), pre["height"], pre["width"], None, layout)
    return Source("s", folder / entry["file"], spec)


def run(folder: Path, entry: dict, data) -> dict:
    x, y = data
    info = describe(folder / entry["file"], load_model(folder / entry["file"]))
    result = {
        "file": entry["file"],
        "base": entry["base"],
        "variant": entry["variant"],
        "opset": entry["opset"],
        "ir": entry["ir_version"],
        "precision": info["precision"],
        "suggested": info["suggested"],
        "inspect_ok": info["suggested"] == entry["feature"],
        "own_preprocessing": info["preprocessing"],
    }
    partner = Source("mlp", PARTNER, Preprocess(1 / 255, (0.0,), (1.0,), 8, 8, 1))
    started = time.perf_counter()
    try:
        merger = Merger(ImageInput(8, 8, 1), [source(folder, entry), partner], C=1.0, quiet=True)
        merger.fit(x[TRAIN], y[TRAIN])
    except Exception as exc:  # noqa: BLE001  (recorded: the table shows what failed)
        return {**result, "build_ok": False, "error": str(exc)[:300]}
    check = next(c for c in merger.parity_ if c.step.startswith("s features"))
    return {
        **result,
        "build_ok": all(c.ok for c in merger.parity_),
        "parity": check.line(),
        "relative_error": check.max_abs_error / check.scale,
        "bound": check.tolerance,
        "conversion": merger.notes_.get("s"),
        "accuracy": float(np.mean(merger.predict(x[TEST]) == y[TEST])),
        "build_s": round(time.perf_counter() - started, 1),
    }


def table(rows: list[dict]) -> str:
    by_file = {r["file"]: r for r in rows}
    lines = [
        "| file | base | variant | opset / IR | precision | inspect | parity (rel. error <= bound) | Z acc | "
        "float32 original | within 0.05 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        original = by_file.get(r["original"], {}).get("accuracy")
        acc = r.get("accuracy")
        within = acc is not None and original is not None and acc >= original - 0.05
        parity = f"{r['relative_error']:.1e} <= {r['bound']:.0e}" if r.get("build_ok") else r.get("error", "failed")
        lines.append(
            f"| {r['file']} | {r['base']} | {r['variant']} | {r['opset']} / {r['ir']} | {r['precision']} | "
            f"{'ok' if r['inspect_ok'] else 'WRONG: ' + str(r['suggested'])} | {parity} | "
            f"{acc if acc is None else f'{acc:.3f}'} | {original if original is None else f'{original:.3f}'} | "
            f"{'yes' if within else 'NO'} |"
        )
    ok = sum(r["inspect_ok"] and r.get("build_ok", False) for r in rows)
    lines.append(f"\n{ok} of {len(rows)} files inspect right and build with parity.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "corpus", type=Path, nargs="?", help="a folder generate_corpus.py wrote (default: work_dir('corpus'))"
    )
    parser.add_argument("--json", type=Path, help="also write one JSON line per file here")
    args = parser.parse_args()
    args.corpus = args.corpus or work_dir("corpus")
    entries = json.loads((args.corpus / "manifest.json").read_text())
    data = digits()
    rows = []
    for entry in entries:
        row = {**run(args.corpus, entry, data), "original": entry["original"]}
        print(json.dumps(row), flush=True, file=sys.stderr)
        rows.append(row)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))


if __name__ == "__main__":
    main()
