"""The QDQ quantiser behind ``quantize``: which nodes are a source's network (first and last weighted layers
named), and onnxruntime's ``quantize_static`` on a chosen set of them with a chosen calibration method."""

from __future__ import annotations

import contextlib
import io
import logging
import time
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

CALIBRATION_BATCH = 8
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


# -- calibration and quantisation --------------------------------------------------------------------------------
class _Reader:
    """onnxruntime's calibration reader over uint8 images, in batches, with the strided ``set_range`` protocol
    (quantize_static then collects ``CalibStridedMinMax`` batches at a time, so histogram calibration holds a
    few batches' activations, not the whole set's)."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(self.batches[start_index:end_index])

    def get_next(self):
        batch = next(self._items, None)
        return None if batch is None else {IMAGE: batch}

    def __iter__(self):  # quantize_static copies readers it iterates (SmoothQuant only)
        return iter({IMAGE: b} for b in self.batches)


class Quantizer:
    """Quantises one float Z repeatedly (other nodes, other methods), calibrating each method once."""

    def __init__(self, model: onnx.ModelProto, calibration: np.ndarray, folder: Path):
        self.model = _named(_with_pads_folded(model, calibration[:8]))  # exact; Pads cost int8 Z most
        self.calibration = calibration
        self.folder = folder
        self.source_path = folder / "z.onnx"
        onnx.save(self.model, str(self.source_path))
        self.seconds: dict[str, float] = {}

    def quantize(self, nodes: list[str], method: str = "MinMax") -> onnx.ModelProto:
        """Z with ``nodes`` quantised (int8 per-channel weights, uint8 activations), calibrated by ``method``."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        cache = self.folder / f"ranges-{method}.json"
        reader = None if cache.exists() else _Reader(self.calibration)
        target = self.folder / "z_int8.onnx"
        start = time.perf_counter()
        logging.disable(logging.WARNING)  # onnxruntime.quantization's root-logger advice ("consider pre-processing")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators' progress prints
                quantize_static(
                    str(self.source_path),
                    str(target),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=list(nodes),
                    calibrate_method=getattr(CalibrationMethod, method),
                    calibration_cache_path=str(cache),
                    extra_options={
                        "CalibStridedMinMax": 4 if reader else None,
                        # uint8 activations after ReLU/ReLU6: a range symmetric around 0
                        # (percentile's default) would waste half of the 256 codes
                        "CalibTensorRangeSymmetric": False,
                    },
                )
        except Exception as exc:
            raise OnnxMergeError(
                f"onnxruntime could not quantise Z ({type(exc).__name__}: {first_line(exc)}); build without --quantize."
            ) from exc
        finally:
            logging.disable(logging.NOTSET)
        if reader is not None:
            self.seconds[method] = time.perf_counter() - start
        quantized = _unique_node_names(onnx.load(str(target)))
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(self.model.metadata_props)
        quantized.producer_name, quantized.producer_version = self.model.producer_name, self.model.producer_version
        return quantized


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
