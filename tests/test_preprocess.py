"""Per-source preprocessing inside the graph equals the numpy reference, for every conversion."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from onnxmerge.graph.preprocess import ImageInput, Preprocess, build_preprocess, reference_preprocess


def run_graph(image: ImageInput, spec: Preprocess, x: np.ndarray, opset: int) -> np.ndarray:
    raw = gs.Variable("image", np.uint8, ["N", image.height, image.width, image.channels])
    out = gs.Variable("out", spec.dtype, shape=["N"] + [None] * (1 if spec.flat else 3))
    graph = gs.Graph(nodes=build_preprocess("s", raw, image, spec, out), inputs=[raw], outputs=[out], opset=opset)
    model = gs.export_onnx(graph)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


CASES = [
    # (Z's input, source spec) covering gray<->RGB, up/down/non-square resize, layouts, flat, float16
    (ImageInput(28, 28, 1), Preprocess(1 / 255, (0.286,), (0.353,), 32, 32, 1, "NCHW")),
    (ImageInput(32, 24, 3), Preprocess(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 16, 20, 3, "NCHW")),
    (ImageInput(20, 20, 3), Preprocess(1.0, (127.5,), (127.5,), 20, 20, 1, "NHWC")),
    (ImageInput(10, 12, 1), Preprocess(1 / 255, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), 48, 192, 3, "NHWC")),
    (ImageInput(8, 8, 1), Preprocess(1 / 255, (0.0,), (1.0,), 8, 8, 1, "NHWC", flat=True)),
    (ImageInput(9, 9, 3), Preprocess(1 / 255, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0), 5, 5, 3, "NCHW", flat=True)),
    (ImageInput(16, 16, 3), Preprocess(1 / 255, (0.5,) * 3, (0.5,) * 3, 12, 12, 3, "NCHW", dtype=np.dtype(np.float16))),
]


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("image,spec", CASES)
def test_graph_matches_numpy_reference(image, spec, opset):
    x = np.random.default_rng(1).integers(0, 256, (5, image.height, image.width, image.channels), dtype=np.uint8)
    got = run_graph(image, spec, x, opset)
    want = reference_preprocess(x, image, spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    tolerance = (1e-3 if spec.dtype == np.float16 else 1e-5) * max(1.0, np.abs(want.astype(np.float64)).max())
    assert np.abs(got.astype(np.float64) - want).max() <= tolerance


def test_reference_resize_is_torch_style_half_pixel_bilinear():
    """2 -> 4 pixels with half_pixel coordinates: edges clamp, interior at 1/4 and 3/4."""
    x = np.array([[0, 100]], np.uint8).reshape(1, 1, 2, 1)
    spec = Preprocess(1.0, (0.0,), (1.0,), 1, 4, 1, "NHWC")
    out = reference_preprocess(x, ImageInput(1, 2, 1), spec).ravel()
    assert np.allclose(out, [0, 25, 75, 100])


def test_rgb_to_gray_uses_pillow_luma_weights():
    x = np.array([[[[255, 0, 0]]]], np.uint8)
    out = reference_preprocess(x, ImageInput(1, 1, 3), Preprocess(1.0, (0.0,), (1.0,), 1, 1, 1, "NHWC"))
    assert np.isclose(out.item(), 0.299 * 255, rtol=1e-6)
