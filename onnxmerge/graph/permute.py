"""Permutation symmetry of a convolutional chain: which weights move together when a layer's units are reordered.

Networks trained from different initialisations compute similar features in a different order of units, so
their weights cannot be averaged as they are (Git Re-Basin, Ainsworth et al., ICLR 2023; ZipIt!, Stoica et
al., ICLR 2024). Reordering the output units of one layer, with the same reorder applied to everything that
reads them, leaves the network's function unchanged. A *unit space* is one such set of units: the output
channels of a Conv/Gemm/MatMul, carried through per-channel operators (activations, pooling, BatchNorm, a
depthwise Conv, a bias Add, a Flatten of a 1x1 map) to the next layer's input axis, or to the source's own head.

Supported: a chain of layers. Refused, with the reason: two branches joined (a residual Add, a Concat, a
gated Mul), grouped convolutions other than depthwise, a Flatten of a map larger than 1x1, and operators
that mix channels in other ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxMergeError
from .architecture import backbone
from .inspect import tensor_shapes

PER_CHANNEL = {
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu", "Selu", "Gelu", "Softplus",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout", "Cast",
}  # fmt: skip
RESHAPING = {"Flatten", "Reshape", "Squeeze", "ReduceMean"}
ALIGNMENT_LIMITS = (
    "alignment needs a chain of convolutions and linear layers (no residual Add, Concat or gating Mul between "
    "branches, no grouped convolution other than depthwise)"
)


@dataclass
class UnitSpace:
    """One layer's units: their number, the tensor whose activations identify them, the weights they index."""

    size: int
    tensor: str  # activations matched here: the space's last tensor before a layer reads it
    members: list[tuple[str, int]] = field(default_factory=list)  # (initializer, axis) reordered with the units
    produced: str = ""  # the layer's own output (before any activation): what REPAIR's statistics describe
    weight: tuple[str, int] = ("", 0)  # the layer's weight and its output axis
    bias: str | None = None  # the layer's bias (Conv/Gemm input 3), if it has one


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _refuse(where: str, node: onnx.NodeProto, why: str) -> OnnxMergeError:
    return OnnxMergeError(f"{where} cannot be aligned: {node.op_type} node {node.name!r} {why}; {ALIGNMENT_LIMITS}.")


def _linear(node, weights, shapes, where) -> tuple[int, int, int] | None:
    """(weight's input axis, output axis, units out) of a linear layer reading a weight, else None."""
    if not weights or weights[0][1] != 1:
        return None
    shape = shapes[weights[0][0]]
    attrs = _attrs(node)
    if node.op_type == "Conv":
        if attrs.get("group", 1) != 1:
            return None
        return 1, 0, shape[0]
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            raise _refuse(where, node, "transposes its input")
        return (1, 0, shape[0]) if attrs.get("transB", 0) else (0, 1, shape[1])
    if node.op_type == "MatMul" and len(shape) == 2:
        return 0, 1, shape[1]
    return None


def _spatially_one(shape: list | None) -> bool:
    return shape is not None and len(shape) >= 2 and all(isinstance(d, int) and d == 1 for d in shape[2:])


def unit_spaces(model: onnx.ModelProto, feature: str, where: str) -> list[UnitSpace]:
    """The unit spaces of ``model``'s backbone up to ``feature`` (the last one is the feature's, whose members
    include the head's input axis); raises one sentence where the architecture is not a supported chain."""
    bone = backbone(model, feature, where)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes = tensor_shapes(model)
    space_of: dict[str, int | None] = {}
    spaces: list[UnitSpace] = []
    for node, weights in zip(bone.nodes, bone.weights):
        data = [i for i in node.input if i and i not in inits]
        spaced = [i for i in data if space_of.get(i) is not None]
        if len(spaced) > 1:
            raise _refuse(where, node, "joins two branches")
        space = space_of[spaced[0]] if spaced else None
        linear = _linear(node, weights, inits, where)
        if linear is not None:
            in_axis, out_axis, units = linear
            if space is not None:
                spaces[space].members.append((weights[0][0], in_axis))
            bias = next((name for name, position in weights[1:] if position == 2), None)
            new = UnitSpace(units, node.output[0], [(weights[0][0], out_axis)], node.output[0])
            new.weight, new.bias = (weights[0][0], out_axis), bias
            new.members += [(bias, 0)] if bias else []
            spaces.append(new)
            space_of[node.output[0]] = len(spaces) - 1
            continue
        if space is None:
            if weights:
                raise _refuse(where, node, "holds weights that no supported layer type explains")
            space_of.update({o: None for o in node.output})
            continue
        if node.op_type == "Conv" and weights:
            attrs = _attrs(node)
            if attrs.get("group", 1) != spaces[space].size or inits[weights[0][0]][1] != 1:
                raise _refuse(where, node, f"is a grouped convolution (group {attrs.get('group', 1)})")
        elif node.op_type in ("Add", "Mul", "Sub", "BatchNormalization") and weights:
            for name, _ in weights:
                if inits[name][0] != spaces[space].size and inits[name][-1] != spaces[space].size:
                    raise _refuse(where, node, f"reads a weight of shape {list(inits[name])}")
        elif node.op_type in RESHAPING:
            if not _spatially_one(shapes.get(data[0])) and node.op_type != "ReduceMean":
                raise _refuse(where, node, "flattens a map larger than 1x1")
        elif node.op_type not in PER_CHANNEL and not (node.op_type in ("Add", "Mul", "Sub", "Div") and not weights):
            raise _refuse(where, node, "mixes channels in a way alignment does not follow")
        for name, _ in weights:
            axis = 0 if inits[name][0] == spaces[space].size else len(inits[name]) - 1
            spaces[space].members.append((name, axis))
        spaces[space].tensor = node.output[0]
        space_of.update({o: space for o in node.output})
    last = space_of.get(feature)
    if last is None:
        raise OnnxMergeError(f"{where} cannot be aligned: its feature {feature!r} has no unit space.")
    _head_members(model, feature, spaces[last], inits, where)
    return spaces


def _head_members(model: onnx.ModelProto, feature: str, space: UnitSpace, inits: dict, where: str) -> None:
    """The source's own head reads the feature: its input axis is reordered with the feature's units."""
    for node in model.graph.node:
        if feature not in node.input:
            continue
        weights = [(n, p) for p, n in enumerate(node.input) if n in inits and p == 1]
        linear = _linear(node, weights, inits, where)
        if linear is None or node.input[0] != feature:
            raise _refuse(where, node, "reads the feature tensor and is not a linear head")
        space.members.append((weights[0][0], linear[0]))


def permuted(arrays: dict[str, np.ndarray], spaces: list[UnitSpace], orders: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every space's members reordered: unit ``orders[k][j]`` moves to position ``j``."""
    out = dict(arrays)
    for space, order in zip(spaces, orders):
        for name, axis in space.members:
            out[name] = np.take(out[name], order, axis=axis)
    return out
