"""Calibration statistics for ``--quantize``, collected once and reused by every method and every subset.

One pass of Z over the calibration candidates records, for every float activation of the sources' networks,
each image's minimum and maximum (``ReduceMin``/``ReduceMax`` added to the graph, so only two numbers per image
and tensor leave onnxruntime). MinMax ranges for any subset of the images are then a ``min``/``max`` over rows:
the estimate can use ranges from images it does not score, and 64/128/256/512 calibration images cost one pass.

Percentile and entropy need histograms. They are collected in a second pass, once for both (2048 bins,
symmetric about 0 as onnxruntime bins them, over the range the first pass measured), only when MinMax loses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..contract import IMAGE
from ..graph.topology import default_opset, with_outputs
from ..runtime.session import make_session

HISTOGRAM_BINS = 2048
PERCENTILE = 99.999  # onnxruntime's default for its Percentile calibration
BATCH = 8  # images per call when the activations themselves leave onnxruntime (histograms)


def calibrated_tensors(model: onnx.ModelProto, nodes: list[str]) -> list[str]:
    """The float activations read or written by ``nodes`` (initializers excluded), with a known rank >= 1:
    the tensors a QDQ quantisation of those nodes needs ranges for."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = v.type.tensor_type
        if t.elem_type == onnx.TensorProto.FLOAT and t.HasField("shape") and len(t.shape.dim) >= 1:
            ranks[v.name] = len(t.shape.dim)
    constant = {i.name for i in model.graph.initializer}
    wanted = set(nodes)
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.name in wanted:
            for t in [*node.input, *node.output]:
                if t in ranks and t not in constant:
                    names[t] = None
    return list(names)


def _with_reductions(model: onnx.ModelProto, tensors: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with two outputs per tensor: each image's minimum and maximum (``[N]``)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    del graph.output[:]
    axes_as_input = default_opset(copy) >= 18
    if axes_as_input:
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "calibrate/axis1"))
    outputs = []
    for i, name in enumerate(tensors):
        flat = f"calibrate/{i}/flat"
        graph.node.append(helper.make_node("Flatten", [name], [flat], axis=1, name=f"calibrate/{i}/Flatten"))
        for op in ("ReduceMin", "ReduceMax"):
            out = f"calibrate/{i}/{op}"
            inputs = [flat, "calibrate/axis1"] if axes_as_input else [flat]
            attrs = {} if axes_as_input else {"axes": [1]}
            graph.node.append(helper.make_node(op, inputs, [out], keepdims=0, name=f"calibrate/{i}/{op}", **attrs))
            graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
            outputs.append(out)
    return copy, outputs


@dataclass
class ActivationStats:
    """Per image and tensor: the smallest and largest value (rows: images, columns: ``tensors``)."""

    tensors: list[str]
    low: np.ndarray  # [images, tensors]
    high: np.ndarray

    def minmax(self, rows: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
        """MinMax ranges over the images ``rows`` (all when None)."""
        low = self.low if rows is None else self.low[rows]
        high = self.high if rows is None else self.high[rows]
        return {t: (float(lo), float(hi)) for t, lo, hi in zip(self.tensors, low.min(axis=0), high.max(axis=0))}


def _per_image(values: np.ndarray, n: int, reduce) -> np.ndarray:
    """One value per image; a tensor without the batch axis (a constant computed in the graph) counts for all."""
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) == n:
        return values
    return np.full(n, reduce(values) if values.size else 0.0)


def collect_stats(model: onnx.ModelProto, tensors: list[str], images: np.ndarray) -> ActivationStats:
    """Each image's minimum and maximum of every tensor in ``tensors`` (one pass of ``model``)."""
    augmented, outputs = _with_reductions(model, tensors)
    session = make_session(augmented)
    low = np.empty((len(images), len(tensors)))
    high = np.empty((len(images), len(tensors)))
    step = 16
    for start in range(0, len(images), step):
        batch = images[start : start + step]
        values = session.run(outputs, {IMAGE: batch})
        for j in range(len(tensors)):
            low[start : start + len(batch), j] = _per_image(values[2 * j], len(batch), np.min)
            high[start : start + len(batch), j] = _per_image(values[2 * j + 1], len(batch), np.max)
    return ActivationStats(list(tensors), low, high)


def collect_histograms(
    model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], images: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(counts, edges)`` of every tensor of ``ranges`` over ``images``: ``HISTOGRAM_BINS`` bins over
    ``[-t, t]``, ``t`` the largest magnitude MinMax measured on the same images (onnxruntime's binning)."""
    names = list(ranges)
    session = make_session(with_outputs(model, names))
    bound = {t: max(abs(lo), abs(hi), 1e-12) for t, (lo, hi) in ranges.items()}
    counts = {t: np.zeros(HISTOGRAM_BINS, np.int64) for t in names}
    for start in range(0, len(images), BATCH):
        values = session.run(names, {IMAGE: images[start : start + BATCH]})
        for t, v in zip(names, values):
            counts[t] += np.histogram(v, HISTOGRAM_BINS, range=(-bound[t], bound[t]))[0]
    return {t: (counts[t], np.linspace(-bound[t], bound[t], HISTOGRAM_BINS + 1)) for t in names}


def percentile_ranges(
    histograms: dict[str, tuple[np.ndarray, np.ndarray]], minmax: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """onnxruntime's Percentile (not symmetric): cut ``(100 - PERCENTILE) / 2`` percent on each side, never
    beyond the measured minimum and maximum."""
    cut = (100.0 - PERCENTILE) / 200.0
    result = {}
    for t, (counts, edges) in histograms.items():
        cdf = np.cumsum(counts / max(counts.sum(), 1))
        lo, hi = edges[np.searchsorted(cdf, cut)], edges[np.searchsorted(cdf, 1.0 - cut)]
        result[t] = (max(float(lo), minmax[t][0]), min(float(hi), minmax[t][1]))
    return result
