"""Z in the ORT format for onnxruntime mobile (onnxmerge/deploy.py): the same labels and probabilities."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from test_share_cache import fixture_source

from onnxmerge import ImageInput, Merger
from onnxmerge.runtime.deploy import ort_format


def test_ort_format_round_trip_gives_the_same_labels_and_probabilities(tmp_path, digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(x[:300], y[:300])
    path = merger.save(tmp_path / "z.onnx")
    result = ort_format(path, tmp_path / "mobile")
    assert result.ort.name == "z.ort" and result.ort.stat().st_size > 0
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
    from onnxmerge.learn.qdq import Quantizer, _unique_node_names, source_nodes

    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(x[:300], y[:300])
    quantizer = Quantizer(merger.model_, x[:64], tmp_path)
    network = [n for s in source_nodes(quantizer.model, ["a"]) for n in s.network]
    int8 = quantizer.quantize(network)
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
        ["label"], {"image": x[300:310]})[0]
    assert set(labels) <= set(merger.classes_)
