"""Deploying Z: the ORT format for onnxruntime mobile (the same labels and probabilities), int8 node names,
the exact Pad fold and the weight-only int8 that ``--quantize`` applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from test_share_cache import fixture_source

from onnxmerge import ImageInput, Merger
from onnxmerge.runtime.deploy import ort_format


def test_ort_format_round_trip_gives_the_same_labels_and_probabilities(tmp_path, digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(
        x[:300], y[:300]
    )
    path = merger.save(tmp_path / "z.onnx")
    result = ort_format(path, tmp_path / "mobile")
    assert result.ort.name == "z.ort" and result.ort.stat().st_size > 0
    assert result.config == tmp_path / "mobile" / "z.required_operators.config"  # the name docs/performance.md gives
    ops = {n.op_type for n in merger.model_.graph.node}
    assert {o.split(";")[2] for o in result.operators} <= ops | {"FusedConv", "FusedGemm", "FusedMatMul"}
    assert "Gather" in {o.split(";")[2] for o in result.operators}  # the head's label lookup is listed too
    images = x[300:364]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    got = ort.InferenceSession(str(result.ort), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    assert (ref[0] == got[0]).all()
    assert np.abs(ref[1] - got[1]).max() <= 1e-5


def test_int8_z_has_unique_node_names_and_runs(tmp_path, digits):
    """onnxruntime-web refuses a graph with two nodes of one name, which quantize_static can produce."""
    from onnxmerge.learn.calibrate import calibrated_tensors, collect_stats
    from onnxmerge.learn.qdq import Quantizer, _unique_node_names, source_nodes

    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(
        x[:300], y[:300]
    )
    quantizer = Quantizer(merger.model_, x[:64], tmp_path)
    network = [n for s in source_nodes(quantizer.model, ["a"]) for n in s.network]
    stats = collect_stats(quantizer.model, calibrated_tensors(quantizer.model, network), x[:64])
    int8 = quantizer.quantize(network, stats.minmax())
    names = [n.name for n in int8.graph.node if n.name]
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert len(names) == len(set(names))
    # EfficientNet-Lite0's int8 Z came back with a QDQ node named like its Conv ("lite0//_conv_stem/Conv"):
    # the same repair on such a graph
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    dequantize = next(n for n in int8.graph.node if n.op_type == "DequantizeLinear")
    dequantize.name = convs[0].name
    repaired = _unique_node_names(int8)
    names = [n.name for n in repaired.graph.node if n.name]
    assert len(names) == len(set(names)) and convs[0].name in names
    labels = ort.InferenceSession(repaired.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["label"], {"image": x[300:310]}
    )[0]
    assert set(labels) <= set(merger.classes_)


GRAPHS = Path(__file__).parent / "fixtures" / "graphs"


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _digits_nchw(digits) -> np.ndarray:
    x, _ = digits
    return ((x[:200, ..., 0].astype(np.float32) / 255 - 0.3) / 0.4)[:, None]


def test_static_same_padding_is_folded_into_the_convs_exactly(digits):
    """A real torch export of EfficientNet-style padding (ZeroPad2d -> Conv, pads from a constant subgraph):
    both Pads fold into their Convs, their constant chains go, and the outputs do not move."""
    from onnxmerge.graph.fold import fold_pads_into_convs

    model = onnx.load(str(GRAPHS / "same_pad_cnn.onnx"))
    folded, count = fold_pads_into_convs(model)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert count == 2 and "Pad" not in ops and "ConstantOfShape" not in ops and len(ops) < len(model.graph.node)
    pads = [next(a.ints for a in n.attribute if a.name == "pads") for n in folded.graph.node if n.op_type == "Conv"]
    assert [list(p) for p in pads] == [[1, 1, 1, 1], [0, 0, 1, 1]]  # ZeroPad2d's (left, right, top, bottom)
    x = _digits_nchw(digits)
    before, after = _run(model, x), _run(folded, x)
    assert np.abs(before - after).max() <= 1e-5 * max(1.0, np.abs(before).max())
    assert [n.op_type for n in model.graph.node].count("Pad") == 2  # the source model is not modified


def test_a_pad_that_is_not_plain_zero_padding_stays(digits):
    """A Pad filling with 1, or padding the channel axis, is not Conv padding: left alone."""
    from onnx import numpy_helper

    from onnxmerge.graph.fold import fold_pads_into_convs

    model = onnx.load(str(GRAPHS / "same_pad_cnn.onnx"))
    produced = {o: n for n in model.graph.node for o in n.output}
    fill = produced[next(n for n in model.graph.node if n.op_type == "Pad").input[2]]
    fill.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(1.0, np.float32)))
    folded, count = fold_pads_into_convs(model)
    assert count == 1 and [n.op_type for n in folded.graph.node].count("Pad") == 1
    x = _digits_nchw(digits)
    assert np.abs(_run(model, x) - _run(folded, x)).max() <= 1e-5


def test_weight_only_int8_shrinks_the_file_and_keeps_the_labels(digits):
    """``int8_weights``: float layers keep computing in float from int8-stored weights."""
    from onnxmerge.learn.qdq import int8_weights

    model = onnx.load(str(GRAPHS / "same_pad_cnn.onnx"))
    names = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    light, stored = int8_weights(model, names)
    onnx.checker.check_model(light, full_check=True)
    assert stored == 1  # the Gemm [10, 256]; the Convs (72 and 144 values) stay float: scales would cost more
    assert light.ByteSize() < 0.6 * model.ByteSize()  # 15.7 KB -> 8.3 KB: the Gemm is 10 KB of it in float
    assert [n.op_type for n in light.graph.node].count("DequantizeLinear") == 1
    x, y = digits
    before, after = _run(model, _digits_nchw(digits)), _run(light, _digits_nchw(digits))
    assert np.mean(before.argmax(1) == after.argmax(1)) >= 0.98 and np.abs(before - after).max() < 0.05
