"""The QDQ quantiser behind ``quantize``: which nodes are a source's network (first and last weighted layers
named), and onnxruntime's ``quantize_static`` on a chosen set of them with a chosen calibration method."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxMergeError, first_line
from ..graph.share import ancestors
from ..graph.stitch import keep_outputs, output_names
from ..io.images import as_labelled, as_pool
from ..runtime.session import make_session, run_batched
from .head import HEAD_INPUT, fit_head, folded_weights

CALIBRATION_BATCH = 8
WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")

@dataclass
class SourceNodes:
    name: str
    network: list[str]         # node names of the source's network (its preprocessing and Z's head excluded)
    first: str | None          # first and last weighted nodes (Conv/MatMul/Gemm) of the network
    last: list[str]            # the last before the feature, and the source's own head layer if Z keeps it


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
        last = ([graph.node[before_feature[-1]].name] if before_feature else [])
        last += [graph.node[i].name for i in weighted if i not in before_feature][-1:]
        result.append(SourceNodes(name, [graph.node[i].name for i in order],
                                  graph.node[weighted[0]].name if weighted else None, last))
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
        self.batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(self.batches[start_index:end_index])

    def get_next(self):
        batch = next(self._items, None)
        return None if batch is None else {"image": batch}

    def __iter__(self):  # quantize_static copies readers it iterates (SmoothQuant only)
        return iter({"image": b} for b in self.batches)


class Quantizer:
    """Quantises one float Z repeatedly (other nodes, other methods), calibrating each method once."""

    def __init__(self, model: onnx.ModelProto, calibration: np.ndarray, folder: Path):
        self.model = _named(model)
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
                quantize_static(str(self.source_path), str(target), reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_quantize=list(nodes), calibrate_method=getattr(CalibrationMethod, method),
                                calibration_cache_path=str(cache),
                                extra_options={"CalibStridedMinMax": 4 if reader else None,
                                               # uint8 activations after ReLU/ReLU6: a range symmetric around 0
                                               # (percentile's default) would waste half of the 256 codes
                                               "CalibTensorRangeSymmetric": False})
        except Exception as exc:
            raise OnnxMergeError(f"onnxruntime could not quantise Z ({type(exc).__name__}: "
                                 f"{first_line(exc)}); build without --quantize.") from exc
        finally:
            logging.disable(logging.NOTSET)
        if reader is not None:
            self.seconds[method] = time.perf_counter() - start
        quantized = _unique_node_names(onnx.load(str(target)))
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(self.model.metadata_props)
        quantized.producer_name, quantized.producer_version = self.model.producer_name, self.model.producer_version
        return quantized


def _unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Node names made unique: ``quantize_static`` can give a QDQ pair its node's name, which onnxruntime CPU
    accepts but onnxruntime-web refuses ("two nodes with same node name"); a repeat gets a ``/qdqN`` suffix."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if node.name and node.name in seen:
            node.name = f"{node.name}/qdq{i}"
        seen.add(node.name)
    return model
