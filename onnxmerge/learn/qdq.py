"""The QDQ quantiser behind ``quantize``: which nodes are a source's network (first and last weighted layers
named), and onnxruntime's ``quantize_static`` on a chosen set of them with activation ranges given."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..contract import IMAGE
from ..errors import OnnxMergeError, first_line
from ..graph.fold import fold_pads_into_convs
from ..graph.share import ancestors
from ..graph.stitch import output_names
from ..runtime.session import make_session

ENTROPY_BINS = 256
WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class SourceNodes:
    name: str
    network: list[str]  # node names of the source's network (its preprocessing and Z's head excluded)
    first: str | None  # first and last weighted nodes (Conv/MatMul/Gemm) of the network
    last: list[str]  # the last before the feature, and the source's own head layer if Z keeps it

    @property
    def edges(self) -> list[str]:
        """The first and last weighted layers: the ones ``--quantize`` keeps float unless measured otherwise."""
        return [n for n in [self.first, *self.last] if n]

    def inner(self) -> list[str]:
        """The network's nodes without its edge layers."""
        edges = set(self.edges)
        return [n for n in self.network if n not in edges]


def source_nodes(model: onnx.ModelProto, names: list[str]) -> list[SourceNodes]:
    """Each source's network nodes in Z, found from the graph: ancestors of its feature (and of its own
    head, for a teacher), minus the ancestors of its preprocessed input (``NAME/input``)."""
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    result = []
    for name in names:
        tensors = output_names(name)
        ends = [t for t in (tensors["feature"], tensors["head"]) if t in produced]
        network = ancestors(graph, ends) - ancestors(graph, [tensors["input"]])
        order = sorted(network)  # graph order is topological
        weighted = [i for i in order if graph.node[i].op_type in WEIGHTED]
        before_feature = [i for i in weighted if i in ancestors(graph, [tensors["feature"]])]
        last = [graph.node[before_feature[-1]].name] if before_feature else []
        last += [graph.node[i].name for i in weighted if i not in before_feature][-1:]
        result.append(
            SourceNodes(
                name, [graph.node[i].name for i in order], graph.node[weighted[0]].name if weighted else None, last
            )
        )
    return result


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node has a unique name (quantize_static selects nodes by name)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{i}"
        seen.add(node.name)
    return copy


# -- quantisation with ranges measured elsewhere (``calibrate``) ------------------------------------------------
class Quantizer:
    """Quantises one float Z repeatedly (other nodes, other ranges); the ranges come from ``calibrate``, so
    onnxruntime's quantizer never runs Z itself."""

    def __init__(self, model: onnx.ModelProto, check_images: np.ndarray, folder: Path):
        self.model = _named(_with_pads_folded(model, check_images[:8]))  # exact; Pads cost int8 Z most
        self.folder = folder
        self.source_path = folder / "z.onnx"
        onnx.save(self.model, str(self.source_path))
        self.calls = 0

    def quantize(self, nodes: list[str], ranges: dict[str, tuple[float, float]]) -> onnx.ModelProto:
        """Z with ``nodes`` quantised (int8 per-channel weights, uint8 activations) with the activation
        ``ranges`` given (``{tensor: (low, high)}``)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

        self.calls += 1
        cache = self.folder / f"ranges-{self.calls}.json"
        table = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, table), cache)
        target = self.folder / "z_int8.onnx"
        logging.disable(logging.WARNING)  # onnxruntime.quantization's root-logger advice ("consider pre-processing")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(self.source_path),
                    str(target),
                    None,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=list(nodes),
                    calibrate_method=CalibrationMethod.MinMax,  # the label of the ranges file, not a calibration
                    calibration_cache_path=str(cache),
                )
        except Exception as exc:
            raise OnnxMergeError(
                f"onnxruntime could not quantise Z ({type(exc).__name__}: {first_line(exc)}); build without --quantize."
            ) from exc
        finally:
            logging.disable(logging.NOTSET)
        quantized = _unique_node_names(onnx.load(str(target)))
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(self.model.metadata_props)
        quantized.producer_name, quantized.producer_version = self.model.producer_name, self.model.producer_version
        return quantized


def entropy_ranges(
    histograms: dict[str, tuple[np.ndarray, np.ndarray]], minmax: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """onnxruntime's Entropy threshold (the KL search of ``HistogramCollector``, 128 quantised bins) on each
    histogram merged to ``ENTROPY_BINS`` bins: the search is a Python loop, 2048 bins took minutes on Lite0."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    search = HistogramCollector("entropy", False, ENTROPY_BINS, 128, 100.0, "same")
    result = {}
    for t, (counts, edges) in histograms.items():
        group = len(counts) // ENTROPY_BINS
        merged, coarse = counts.reshape(ENTROPY_BINS, group).sum(axis=1), edges[::group].astype(np.float32)
        lo, hi = minmax[t]
        low, high = search.get_entropy_threshold((merged, coarse, np.float32(lo), np.float32(hi)), 128)
        result[t] = (float(low), float(high))
    return result


def _with_pads_folded(model: onnx.ModelProto, images: np.ndarray) -> onnx.ModelProto:
    """``model`` with its zero Pads folded into their Convs (``graph.fold``), checked: the folded model's
    outputs on ``images`` must match the model's within parity (1e-5 x max(1, |output|)), else ``model``."""
    folded, count = fold_pads_into_convs(model)
    if not count:
        return model
    names = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    before = make_session(model).run(names, {IMAGE: images})
    after = make_session(folded).run(names, {IMAGE: images})
    for a, b in zip(before, after):
        if a.shape != b.shape or np.abs(a - b).max(initial=0) > 1e-5 * max(1.0, float(np.abs(a).max(initial=0))):
            return model
    return folded


def _unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Node names made unique: ``quantize_static`` can give a QDQ pair its node's name, which onnxruntime CPU
    accepts but onnxruntime-web refuses ("two nodes with same node name"); a repeat gets a ``/qdqN`` suffix."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if node.name and node.name in seen:
            node.name = f"{node.name}/qdq{i}"
        seen.add(node.name)
    return model


def int8_weights(model: onnx.ModelProto, nodes: set[str]) -> tuple[onnx.ModelProto, int]:
    """Weight-only int8 for the float layers ``nodes`` (Conv/MatMul/Gemm): each float weight initializer
    stored as int8 with a symmetric scale per output channel, read through a DequantizeLinear; the layers
    still compute in float. Returns the copy and how many weights were stored int8.

    For the layers that stay float (a source's first/last layer, a source whose int8 form is not faster)
    this is where the file's size is: Lite0's 320->1280 head conv alone is 1.6 MB in float. Small weights
    (under 1,024 values) are left float: their scales would cost about what they save.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    stored: dict[str, str] = {}
    dequantize: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in nodes or node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name not in stored:
            w = numpy_helper.to_array(inits[name])
            axis = _output_axis(node, w)
            if w.dtype != np.float32 or w.size < 1024 or axis is None:
                continue
            reduce = tuple(a for a in range(w.ndim) if a != axis)
            scale = (np.abs(w).max(axis=reduce) / 127.0).astype(np.float32)
            scale = np.where(scale > 0, scale, np.float32(1.0))
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(q, f"{name}/int8"),
                    numpy_helper.from_array(scale, f"{name}/int8_scale"),
                    numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}/int8_zero"),
                ]
            )
            stored[name] = f"{name}/int8_dequantized"
            dequantize.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{name}/int8", f"{name}/int8_scale", f"{name}/int8_zero"],
                    [stored[name]],
                    name=f"{name}/int8_dequantize",
                    axis=axis,
                )
            )
        node.input[1] = stored[name]
    if not stored:
        return out, 0
    still_read = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name not in stored or i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes_now = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequantize + nodes_now)  # the weights' DequantizeLinear before any reader
    return out, len(stored)


def _output_axis(node: onnx.NodeProto, w: np.ndarray) -> int | None:
    """The weight's output-channel axis: Conv [M, C, k...] 0; MatMul [K, N] 1; Gemm 1, or 0 with transB."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 0 if node.op_type == "Conv" else (1 if w.ndim > 1 else None)
    if w.ndim != 2:
        return None
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1
