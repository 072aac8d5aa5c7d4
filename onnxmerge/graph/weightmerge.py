"""Weight-space merging as initializer arithmetic (numpy on the tensors ``architecture.match`` paired).

The methods (each returns one merged tensor from the sources' tensors in one slot):

- ``average``: the mean (model soups; the baseline without a base model);
- ``task_arithmetic`` (Ilharco et al., ICLR 2023): ``base + scale * sum(w_i - base)``;
- ``ties`` (Yadav et al., NeurIPS 2023): each task vector ``w_i - base`` trimmed to its largest ``density``
  fraction by magnitude, a sign elected per value (the sign of the trimmed vectors' sum), and the mean of the
  trimmed values that agree with it (a disjoint mean); ``base + scale * that``;
- ``regmean`` (Jin et al., ICLR 2023), for a linear map ``y = x W`` (Gemm, MatMul, 1x1 Conv): the ``W``
  minimising ``sum_i |X_i W - X_i W_i|^2`` is ``(sum G_i)^-1 sum G_i W_i`` with ``G_i = X_i^T X_i`` the inner
  products of the layer's inputs in source i (from an unlabeled pool); the off-diagonal of each ``G_i`` is
  scaled by ``alpha`` (the paper's regularisation towards the average). Other tensors are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .architecture import Backbone, WeightSlot

REGMEAN_ALPHA = 0.9  # the paper's off-diagonal scale


def average(weights: list[np.ndarray]) -> np.ndarray:
    """The mean of the sources' tensors (float64 arithmetic, the sources' dtype out)."""
    return np.mean([w.astype(np.float64) for w in weights], axis=0).astype(weights[0].dtype)


def task_arithmetic(base: np.ndarray, weights: list[np.ndarray], scale: float) -> np.ndarray:
    """``base + scale * sum(w_i - base)``."""
    b = base.astype(np.float64)
    return (b + scale * sum(w.astype(np.float64) - b for w in weights)).astype(base.dtype)


def task_weighted(base: np.ndarray, weights: list[np.ndarray], scales: list[float]) -> np.ndarray:
    """``base + sum(scale_i * (w_i - base))``: task arithmetic with a coefficient per source (AdaMerging's
    task-wise form)."""
    b = base.astype(np.float64)
    return (b + sum(s * (w.astype(np.float64) - b) for s, w in zip(scales, weights))).astype(base.dtype)


def ties(base: np.ndarray, weights: list[np.ndarray], scale: float, density: float = 0.2) -> np.ndarray:
    """TIES: trim each task vector to its top ``density`` by magnitude, elect signs, disjoint mean; scaled."""
    b = base.astype(np.float64)
    trimmed = []
    for w in weights:
        delta = w.astype(np.float64) - b
        keep = max(1, int(round(density * delta.size)))
        threshold = np.partition(np.abs(delta).ravel(), delta.size - keep)[delta.size - keep]
        trimmed.append(np.where(np.abs(delta) >= threshold, delta, 0.0))
    stacked = np.stack(trimmed)
    sign = np.sign(stacked.sum(axis=0))
    agree = (np.sign(stacked) == sign) & (stacked != 0)
    merged = np.where(agree, stacked, 0.0).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
    return (b + scale * merged).astype(base.dtype)


@dataclass(frozen=True)
class LinearLayer:
    """A weight slot that is a linear map over its input's channel axis: RegMean applies to it."""

    slot: int  # index into the match's slots
    inputs: tuple[str, ...]  # the layer's data input in each model
    kind: str  # "gemm" (W [in, out]), "gemm_t" (W [out, in]), "conv1x1" (W [out, in, 1, 1])


def linear_layers(backbones: list[Backbone], slots: list[WeightSlot]) -> list[LinearLayer]:
    """The slots RegMean can merge: Gemm/MatMul weights read as the second input, 1x1 ungrouped Conv weights."""
    first = backbones[0]
    out = []
    for index, slot in enumerate(slots):
        node = first.nodes[slot.node]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kind = None
        if slot.position == 1 and node.op_type == "Gemm" and not attrs.get("transA", 0) and len(slot.shape) == 2:
            kind = "gemm_t" if attrs.get("transB", 0) else "gemm"
        elif slot.position == 1 and node.op_type == "MatMul" and len(slot.shape) == 2:
            kind = "gemm"
        elif (
            slot.position == 1
            and node.op_type == "Conv"
            and len(slot.shape) == 4
            and slot.shape[2:] == (1, 1)
            and attrs.get("group", 1) == 1
            and all(s == 1 for s in attrs.get("strides", [1, 1]))
            and not any(attrs.get("pads", [0]))
        ):
            kind = "conv1x1"
        if kind:
            out.append(LinearLayer(index, tuple(b.nodes[slot.node].input[0] for b in backbones), kind))
    return out


@dataclass(frozen=True)
class StatLayer:
    """A layer whose output statistics a merge can correct (``learn.correct``): a Conv or Gemm with a bias
    ("affine": its weight rescaled and its bias shifted per output channel), or a BatchNormalization node
    ("batchnorm": its running mean and variance replaced)."""

    kind: str
    tensors: tuple[str, ...]  # per model: the layer's output (affine) or the BatchNorm's input (batchnorm)
    slots: tuple[int, int]  # affine: (weight, bias); batchnorm: (running mean, running variance)
    axis: int = 0  # affine: the weight's output-channel axis


def stat_layers(backbones: list[Backbone], slots: list[WeightSlot]) -> list[StatLayer]:
    """The backbone's correctable layers in topological order (the canonical order is one); a Conv or Gemm whose
    output a BatchNormalization reads is left to the BatchNorm, a weight read by two layers is never corrected."""
    first = backbones[0]
    slot_at = {(slot.node, slot.position): k for k, slot in enumerate(slots)}
    readers: dict[str, list[str]] = {}
    for node in first.nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    out, used = [], set()
    for index, node in enumerate(first.nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pair, kind, axis = None, "affine", 0
        if node.op_type == "BatchNormalization" and len(node.input) == 5:
            pair, kind = (slot_at.get((index, 3)), slot_at.get((index, 4))), "batchnorm"
        elif node.op_type in ("Conv", "Gemm") and readers.get(node.output[0]) != ["BatchNormalization"]:
            pair = (slot_at.get((index, 1)), slot_at.get((index, 2)))
            axis = 1 if node.op_type == "Gemm" and not attrs.get("transB", 0) else 0
        if pair is None or None in pair or used & set(pair) or attrs.get("transA", 0):
            continue
        used |= set(pair)
        where = 0 if kind == "batchnorm" else None
        tensors = tuple(b.nodes[index].input[0] if where == 0 else b.nodes[index].output[0] for b in backbones)
        out.append(StatLayer(kind, tensors, pair, axis))
    return out


def affine(
    weight: np.ndarray, bias: np.ndarray, axis: int, scale: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A layer's output channels rescaled and shifted: ``weight * scale`` along ``axis``, ``bias * scale + shift``
    (float64 arithmetic, the tensors' dtypes out)."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    new_weight = weight.astype(np.float64) * scale.reshape(shape)
    return new_weight.astype(weight.dtype), (bias.astype(np.float64) * scale + shift).astype(bias.dtype)


def as_in_out(weight: np.ndarray, kind: str) -> np.ndarray:
    """The layer's weight as ``[in, out]`` (``y = x W``)."""
    if kind == "gemm":
        return weight
    if kind == "gemm_t":
        return weight.T
    return weight[:, :, 0, 0].T


def from_in_out(matrix: np.ndarray, kind: str, like: np.ndarray) -> np.ndarray:
    """Back to the layer's own layout and dtype."""
    if kind == "gemm":
        out = matrix
    elif kind == "gemm_t":
        out = matrix.T
    else:
        out = matrix.T[:, :, None, None]
    return np.ascontiguousarray(out).astype(like.dtype)


def regmean(weights: list[np.ndarray], grams: list[np.ndarray], kind: str, alpha: float = REGMEAN_ALPHA) -> np.ndarray:
    """RegMean's closed form for one linear layer; ``grams[i]`` = ``X_i^T X_i`` of its inputs in source i."""
    total_gram = np.zeros_like(grams[0], dtype=np.float64)
    total = np.zeros(as_in_out(weights[0], kind).shape, np.float64)
    for w, g in zip(weights, grams):
        g = g.astype(np.float64)
        g = alpha * g + (1 - alpha) * np.diag(np.diag(g))
        total_gram += g
        total += g @ as_in_out(w, kind).astype(np.float64)
    merged = np.linalg.lstsq(total_gram, total, rcond=None)[0]
    return from_in_out(merged, kind, weights[0])


def with_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``arrays`` hold those values (inline, same dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name in arrays:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            new = numpy_helper.from_array(np.asarray(arrays[tensor.name]).astype(dtype), tensor.name)
            if tuple(new.dims) != tuple(tensor.dims):
                raise AssertionError(f"{tensor.name}: merged shape {list(new.dims)} != {list(tensor.dims)}")
            out.graph.initializer[index].CopyFrom(new)
    return out


def read_arrays(model: onnx.ModelProto, names: set[str], folder: str | None = None) -> dict[str, np.ndarray]:
    """The initializers ``names`` of ``model`` as arrays (external data read from ``folder``)."""
    return {t.name: numpy_helper.to_array(t, base_dir=folder or "") for t in model.graph.initializer if t.name in names}
