"""Do two models share an architecture? The same operators in the same topology with the same weight shapes,
whatever their node and tensor names.

Each model's *backbone* (the nodes its feature tensor depends on) is put in a canonical order: a depth-first
walk from the feature back to the input, inputs in order, each node numbered after its inputs (post-order).
Names never enter; each node is described by its domain, operator, attributes, number of outputs and, per
input, where the value comes from: the image input, the k-th output of canonical node j, a *weight* (a float
initializer of more than one value: only its shape is compared) or a constant (compared by value: an axis, a
shape, a clip bound). Two backbones match when these descriptions are equal node for node; the weight slots
then pair each weight of one model with the weight in the same place of the other (what merging averages).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxMergeError
from .stitch import reconcile_opsets

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class WeightSlot:
    """One weight of the backbone: which canonical node reads it at which input, and its name in each model."""

    node: int  # canonical index of the first node that reads it
    op: str
    position: int  # input position in that node (Conv: 1 weight, 2 bias)
    shape: tuple[int, ...]
    names: tuple[str, ...]  # the initializer's name in each model, in the order the models were given


@dataclass
class Backbone:
    """A model's nodes up to its feature tensor, canonically ordered, and the description of each."""

    nodes: list[onnx.NodeProto]
    keys: list[tuple]
    weights: list[list[tuple[str, int]]]  # per canonical node: (initializer name, input position) of its weights


@dataclass
class Match:
    """The result of comparing backbones: ``same`` with the weight slots, or the first difference in words."""

    same: bool
    nodes: int
    weighted_nodes: int
    slots: list[WeightSlot]
    difference: str = ""

    def line(self) -> str:
        """What ``onnxmerge inspect A B`` and the build print."""
        if self.same:
            return (
                f"same architecture: {self.weighted_nodes} weighted nodes match "
                f"({self.nodes} backbone nodes, {len(self.slots)} weight tensors)"
            )
        return f"different architectures: {self.difference}"


def _defaults(node: onnx.NodeProto) -> dict:
    """The operator's attribute defaults (an exporter may or may not write ``auto_pad = NOTSET``)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, domain=node.domain or "")
    except Exception:  # a custom domain: no schema, no defaults
        return {}
    return {n: a.default_value for n, a in schema.attributes.items() if a.default_value.name}


def _attributes(node: onnx.NodeProto, where: str) -> tuple:
    out = []
    defaults = _defaults(node)
    for a in sorted(node.attribute, key=lambda a: a.name):
        default = defaults.get(a.name)
        if default is not None and helper.get_attribute_value(default) == helper.get_attribute_value(a):
            continue
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise OnnxMergeError(
                f"{where} has a sub-graph ({node.op_type}) in its backbone; weight merging supports "
                "graphs without If/Loop/Scan only."
            )
        value = helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = (value.data_type, tuple(value.dims), numpy_helper.to_array(value).tobytes())
        elif isinstance(value, list):
            value = tuple(v if not isinstance(v, onnx.TensorProto) else v.SerializeToString() for v in value)
        out.append((a.name, value))
    return tuple(out)


def is_weight(tensor: onnx.TensorProto) -> bool:
    """A learned weight: a float initializer of more than one value (a scalar float is a hyperparameter)."""
    return tensor.data_type in FLOAT_TYPES and int(np.prod(tensor.dims)) > 1


def _constant_nodes(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Outputs of ``Constant`` nodes, by value: an exporter's Constant and another's initializer are one thing."""
    out = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            value = helper.get_attribute_value(node.attribute[0])
            if isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value)
            if isinstance(value, (onnx.SparseTensorProto, bytes)):
                continue
            out[node.output[0]] = np.asarray(value)
    return out


def backbone(model: onnx.ModelProto, feature: str, where: str) -> Backbone:
    """The canonical backbone of ``model`` up to tensor ``feature`` (``where`` names the model in errors)."""
    graph = model.graph
    constants = _constant_nodes(graph)
    producer = {o: (i, k) for i, n in enumerate(graph.node) for k, o in enumerate(n.output) if o and o not in constants}
    inits = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input if i.name not in inits}
    if feature not in producer:
        raise OnnxMergeError(f"{where}: tensor {feature!r} is not computed by any node; name its feature tensor.")
    order: dict[int, int] = {}  # file index -> canonical index
    stack = [(producer[feature][0], 0)]
    while stack:  # iterative post-order: a node is numbered once all its inputs are
        index, state = stack.pop()
        if index in order:
            continue
        pending = [producer[i][0] for i in graph.node[index].input if i in producer and producer[i][0] not in order]
        if pending and state == 0:
            stack.append((index, 1))
            stack.extend((p, 0) for p in reversed(pending))
            continue
        order[index] = len(order)
    nodes = [graph.node[i] for i in sorted(order, key=order.get)]
    keys, weights = [], []
    for node in nodes:
        refs, mine = [], []
        for position, name in enumerate(node.input):
            if not name:
                refs.append(("none",))
            elif name in producer:
                j, k = producer[name]
                refs.append(("node", order[j], k))
            elif name in inputs:
                refs.append(("input",))
            elif name in constants:
                value = constants[name]
                refs.append(("constant", str(value.dtype), value.shape, value.tobytes()))
            elif name in inits and is_weight(inits[name]):
                refs.append(("weight", inits[name].data_type, tuple(inits[name].dims)))
                mine.append((name, position))
            elif name in inits:
                value = numpy_helper.to_array(inits[name])
                refs.append(("constant", str(value.dtype), value.shape, value.tobytes()))
            else:  # an outer-scope name: not in a main graph
                refs.append(("other", name))
        keys.append((node.domain or "", node.op_type, _attributes(node, where), tuple(refs), len(node.output)))
        weights.append(mine)
    return Backbone(nodes, keys, weights)


def _describe(key: tuple) -> str:
    domain, op, _, refs, _ = key
    shapes = [list(r[2]) for r in refs if r[0] == "weight"]
    return f"{op}{' (' + domain + ')' if domain else ''}" + (f" with weights {shapes}" if shapes else "")


def match(backbones: list[Backbone], names: list[str]) -> Match:
    """Compare canonical backbones; ``names`` name the models in the first difference found."""
    first = backbones[0]
    for other, name in zip(backbones[1:], names[1:]):
        for i, (a, b) in enumerate(zip(first.keys, other.keys)):
            if a != b:
                detail = _describe(a) + " vs " + _describe(b)
                if a[:2] == b[:2] and a[2] != b[2]:
                    detail = f"{a[1]} attributes {dict(a[2])} vs {dict(b[2])}"
                elif a[:3] == b[:3] and [r[0] for r in a[3]] != [r[0] for r in b[3]]:
                    detail = f"{a[1]} inputs {[r[0] for r in a[3]]} vs {[r[0] for r in b[3]]}"
                return Match(
                    False, len(first.nodes), 0, [], f"node {i} of the backbone differs: {names[0]} {detail} in {name}"
                )
        if len(first.keys) != len(other.keys):
            return Match(
                False,
                len(first.nodes),
                0,
                [],
                f"{names[0]}'s backbone has {len(first.keys)} nodes, {name}'s {len(other.keys)}",
            )
    slots, seen = [], set()
    for i, node in enumerate(first.nodes):
        for j, (weight, position) in enumerate(first.weights[i]):
            if weight in seen:
                continue  # a weight read by several nodes is one slot, at its first reader
            seen.add(weight)
            shape = first.keys[i][3][position][2]
            slots.append(
                WeightSlot(i, node.op_type, position, tuple(shape), tuple(b.weights[i][j][0] for b in backbones))
            )
    weighted = sum(1 for w in first.weights if w)
    return Match(True, len(first.nodes), weighted, slots)


def compare_models(models: list[onnx.ModelProto], features: list[str], names: list[str]) -> Match:
    """Do ``models`` (cut at ``features``) share an architecture? Names of nodes and tensors never matter;
    models of different opsets are compared at the highest (onnx's version converter, as the stitch does)."""
    converted, _, _ = reconcile_opsets(models, names)
    return match([backbone(m, f, n) for m, f, n in zip(converted, features, names)], names)


def compare_files(paths: list, models: list[onnx.ModelProto]) -> dict:
    """``onnxmerge inspect A B``: each model cut at its suggested feature, compared; a JSON-ready dict with keys
    ``same_architecture``, ``weighted_nodes``, ``backbone_nodes``, ``weights``, ``difference``, ``features``,
    ``line``."""
    from .inspect import find_head

    names = [Path(p).name for p in paths]
    features = [find_head(m).feature for m in models]
    found = compare_models(models, features, names)
    return {
        "models": [str(p) for p in paths],
        "features": features,
        "same_architecture": found.same,
        "weighted_nodes": found.weighted_nodes,
        "backbone_nodes": found.nodes,
        "weights": len(found.slots),
        "difference": found.difference or None,
        "line": found.line(),
    }
