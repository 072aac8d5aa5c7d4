"""What running a batch-1-only source image by image inside Z (an ONNX Loop) costs (issue 12).

The same network twice: tests/fixtures/graphs/fixed_batch1.onnx (torch legacy, batch 1 baked into its
flatten Reshape: onnxmerge wraps it in a Loop) and a copy whose baked 1 is replaced by -1 with a dynamic
input batch (what a dynamic-batch export of it computes, node for node). Each is built into Z with the same
recipe; Z's predict_proba is timed on the same images at several batch sizes, side by side in one run.

    nice -n 10 .venv/bin/python -m benchmarks.speed.fixed_batch
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from sklearn.datasets import load_digits

from benchmarks.common import FIXTURES
from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.runtime.session import make_session

GRAPHS = FIXTURES / "graphs"


def dynamic_twin(folder: Path) -> Path:
    """fixed_batch1.onnx with its baked batch of 1 replaced by 0 (Reshape: copy the batch) and a dynamic input."""
    model = onnx.load(str(GRAPHS / "fixed_batch1.onnx"))
    shapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    for init in model.graph.initializer:
        if init.name in shapes:
            value = numpy_helper.to_array(init).copy()
            if value[0] == 1:
                value[0] = 0  # Reshape: 0 copies the input's batch
                init.CopyFrom(numpy_helper.from_array(value, init.name))
    for node in model.graph.node:  # exporters also write the shape as a Constant node
        if node.op_type == "Constant" and node.output[0] in shapes:
            value = numpy_helper.to_array(node.attribute[0].t).copy()
            if value.size and value[0] == 1:
                value[0] = 0  # Reshape: 0 copies the input's batch
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(value))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    path = folder / "dynamic_twin.onnx"
    onnx.save(model, str(path))
    return path


def timed(session, images: np.ndarray, batch: int, repeats: int = 3) -> float:
    """Best of ``repeats``: seconds for all ``images`` through Z, ``batch`` per call."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for start in range(0, len(images), batch):
            session.run(["probabilities"], {"image": images[start : start + batch]})
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    entry = {e["file"]: e for e in json.loads((GRAPHS / "manifest.json").read_text())}["fixed_batch1.onnx"]
    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
    y = d.target.astype(str)
    keep = np.isin(y, entry["labels"])
    x, y = x[keep], y[keep]
    pre = Preprocess(entry["scale"], tuple(entry["mean"]), tuple(entry["std"]), 8, 8, 1)
    with tempfile.TemporaryDirectory() as tmp:
        sessions, builds = {}, {}
        for label, path in (
            ("Loop (fixed batch 1)", GRAPHS / "fixed_batch1.onnx"),
            ("dynamic batch", dynamic_twin(Path(tmp))),
        ):
            t = time.perf_counter()
            merger = Merger(ImageInput(8, 8, 1), [Source("s", path, pre)], C=1.0, quiet=True).fit(x[:400], y[:400])
            builds[label] = time.perf_counter() - t
            sessions[label] = make_session(merger.model_)
            assert all(c.ok for c in merger.parity_)
        images = x[400:]
        a, b = (s.run(["probabilities"], {"image": images})[0] for s in sessions.values())
        print(
            f"machine: {platform.machine()}, {platform.processor() or '?'}; onnxruntime "
            f"{__import__('onnxruntime').__version__}; {len(images)} images 8x8x1"
        )
        print(f"Z(Loop) vs Z(dynamic) probabilities: max |diff| {np.abs(a - b).max():.2e}")
        print("build seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in builds.items()))
        print("| batch | Z with Loop (ms) | Z dynamic (ms) | Loop / dynamic |")
        print("|---|---|---|---|")
        for batch in (1, 8, 64, 512):
            loop, dynamic = (timed(s, images, batch) for s in sessions.values())
            print(f"| {batch} | {loop * 1000:.1f} | {dynamic * 1000:.1f} | {loop / dynamic:.2f}x |")


if __name__ == "__main__":
    main()
