"""How Z's exported head keeps parity with scikit-learn on ill-conditioned head inputs (issue 12).

Two kinds of input, each through the real export (``head.append_head``) and onnxruntime, compared with the
fitted pipeline's ``predict_proba`` on the very head input Z computes from:

* synthetic head inputs with near-constant, huge and tiny columns (``head.fit_head`` + ``append_head`` on a
  one-source graph);
* real builds (``Merger``, mode "fit") with a saturated teacher (the digits CNN's classifier weights x 40:
  p = 1 - 1e-9 for its class) and a near-constant one (x 0.001: every p about 0.1), both edited copies of
  tests/fixtures/models/torch_legacy_cnn.onnx.

    .venv/bin/python -m benchmarks.parity.head_numerics
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.datasets import load_digits

from benchmarks.common import FIXTURES
from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.contract import FEATURES
from onnxmerge.graph.stitch import output_names
from onnxmerge.learn.head import HeadInput, append_head, fit_head, folded_weights
from onnxmerge.runtime.session import make_session

CNN = FIXTURES / "models" / "torch_legacy_cnn.onnx"


def ill_conditioned(rng: np.random.Generator, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Head inputs [n, 8] for 3 classes: 2 informative columns, then near-constant, huge and tiny ones."""
    y = rng.integers(0, 3, n)
    centres = np.array([[0, 0], [2, 0], [0, 2]], float)
    x = centres[y] + rng.standard_normal((n, 2))
    cols = [
        x,
        5.0 + 1e-6 * rng.standard_normal((n, 1)),  # near-constant around 5
        -2.302585 + 3e-7 * (y[:, None] == 1) + 1e-7 * rng.standard_normal((n, 1)),  # log(0.1) + a hint
        1e6 * (1 + 0.01 * x[:, :1]),  # huge
        1e-9 * x[:, 1:],  # tiny
        np.full((n, 1), 0.25),  # exactly constant
        1e-30 * rng.standard_normal((n, 1)),
    ]  # below float32's normal range
    return np.concatenate(cols, axis=1).astype(np.float32), y.astype(str)


def head_only_model(width: int) -> onnx.ModelProto:
    """A graph whose one input is source ``a``'s feature block (what the stitched graph would give the head)."""
    name = output_names("a")["feature"]
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [FEATURES])],
        "head_only",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, ["N", width])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def plain_fold(z: onnx.ModelProto, pipeline) -> onnx.ModelProto:
    """``z``'s head without its Sub(means): the scaler folded into W and b alone (the fold before issue 12)."""
    plain = onnx.ModelProto()
    plain.CopyFrom(z)
    sub = next(n for n in plain.graph.node if n.name == "head/Centre")
    for node in plain.graph.node:
        node.input[:] = [sub.input[0] if i == sub.output[0] else i for i in node.input]
    plain.graph.node.remove(sub)
    weights, bias = folded_weights(pipeline)  # no centre
    for init in plain.graph.initializer:
        if init.name in ("head/W", "head/b"):
            init.CopyFrom(numpy_helper.from_array(weights if init.name == "head/W" else bias, init.name))
    return plain


def head_parity(x: np.ndarray, y: np.ndarray, centred: bool, floor: float) -> tuple[float, float]:
    """(max |Z - predict_proba|, ms per 1000 rows) for one fitted head on ``x`` (L2-normalised as one block);
    ``centred=False``: the plain fold (``plain_fold``) instead of the build's centred head."""
    name = output_names("a")["feature"]
    head_input = HeadInput(["a"])
    features = head_input.numpy({name: x})
    pipeline = fit_head(features, y, C=1.0, scale_floor=floor)
    z = append_head(head_only_model(x.shape[1]), head_input, pipeline, {name: x.shape[1]})
    z = z if centred else plain_fold(z, pipeline)
    session = make_session(z)
    big = np.repeat(x, 50, axis=0)  # 30,000 rows: the head's own cost
    session.run(["probabilities"], {name: big})
    t = time.perf_counter()
    for _ in range(5):
        session.run(["probabilities"], {name: big})
    took = (time.perf_counter() - t) / 5 / len(big) * 1000 * 1000
    got = session.run(["probabilities"], {name: x})[0]
    return float(np.abs(got - pipeline.predict_proba(features.astype(np.float64))).max()), took


def edited_teacher(folder: Path, factor: float) -> Path:
    """torch_legacy_cnn.onnx with its classifier Gemm's weights and bias times ``factor``."""
    model = onnx.load(str(CNN))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    for init in model.graph.initializer:
        if init.name in gemm.input[1:]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    path = folder / f"teacher_x{factor:g}.onnx"
    onnx.save(model, str(path))
    return path


def build_parity(path: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray):
    """(head parity max |diff|, its scale, build seconds, the check's line) of a fit-mode build with this
    teacher; the line ends with the held-out accuracy."""
    source = Source("t", path, Preprocess(1 / 255, (0.3,), (0.4,), 8, 8, 1))
    t = time.perf_counter()
    try:
        merger = Merger(ImageInput(8, 8, 1), [source], C=1.0, quiet=True).fit(x, y)
    except Exception as exc:  # the parity check refuses to write Z: report its line
        return float("nan"), float("nan"), time.perf_counter() - t, str(exc)[:160]
    check = merger.parity_[-1]
    accuracy = float(np.mean(merger.predict(x_test) == y_test))
    return (
        check.max_abs_error,
        check.scale,
        time.perf_counter() - t,
        f"{check.line()}; held-out accuracy {accuracy:.4f}",
    )


VARIANTS = {  # name: (centred, scale floor)
    "fold (before)": (False, 0.0),
    "centre": (True, 0.0),
    "floor 1e-3": (False, 1e-3),
    "centre + floor 1e-3": (True, 1e-3),
    "centre + floor 1e-2": (True, 1e-2),
    "centre + floor 3e-2": (True, 3e-2),
}


def main() -> None:
    import tempfile

    d = load_digits()
    everything = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
    images, labels = everything[:600], d.target.astype(str)[:600]
    x_test, y_test = everything[600:], d.target.astype(str)[600:]
    for variant, (centred, floor) in VARIANTS.items():
        print(f"== {variant}")
        for seed in range(3):
            x, y = ill_conditioned(np.random.default_rng(seed))
            err, us = head_parity(x, y, centred, floor)
            print(f"synthetic head input seed {seed} [600, 8]: max |Z - predict_proba| {err:.2e}; {us:.2f} us per row")
    print("== the build's own head (centre + its scale floor)")
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1.0, 40.0, 0.001, 0.0003):
            err, scale, secs, line = build_parity(edited_teacher(Path(tmp), factor), images, labels, x_test, y_test)
            print(f"teacher x{factor:g}: {line}  (build {secs:.1f} s)")


if __name__ == "__main__":
    main()
