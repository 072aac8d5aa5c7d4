"""Exact rewrites that make a float graph quantise well: a zero ``Pad`` folded into the ``Conv`` it feeds.

Exporters write "same" padding as an explicit ``Pad`` before a ``Conv`` (EfficientNet's
``Conv2dStaticSamePadding``: 17 of them in Lite0, their pads computed by a small constant subgraph). In a
float model onnxruntime fuses the two, but in a QDQ model the Pad sits between a DequantizeLinear and a
QuantizeLinear on the largest activations of the network and is not fused: in Lite0's int8 Z the Pads and
their Q/DQ pairs took 60% of the time (Pad 130 ms, Q/DQ 170 ms of 570 ms at batch 32). Zero padding then a
Conv without padding is the same arithmetic as the Conv with those pads, so the fold is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .share import ancestors
from .topology import consumers

MAX_CONSTANT_VALUES = 4096  # a constant subgraph this small is evaluated here; larger ones are left alone


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of tensor ``name`` when it depends only on initializers and ``Constant`` nodes (evaluated
    with onnx's reference evaluator on that subgraph alone), else None."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return onnx.numpy_helper.to_array(inits[name])
    produced = {o for n in graph.node for o in n.output}
    if name not in produced:
        return None  # a graph input
    nodes = [graph.node[i] for i in sorted(ancestors(graph, [name]))]
    inside = {o for n in nodes for o in n.output}
    used = {i for n in nodes for i in n.input if i and i not in inside}
    if any(i not in inits or int(np.prod(inits[i].dims)) > MAX_CONSTANT_VALUES for i in used):
        return None
    if any(
        n.domain not in ("", "ai.onnx") or any(a.type == onnx.AttributeProto.GRAPH for a in n.attribute) for n in nodes
    ):
        return None
    sub = helper.make_model(
        helper.make_graph(
            nodes, "constant", [], [helper.make_empty_tensor_value_info(name)], [inits[i] for i in sorted(used)]
        ),
        opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")],
        ir_version=model.ir_version,
    )
    from onnx.reference import ReferenceEvaluator

    try:
        return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
    except Exception:  # an op the reference evaluator lacks: no fold, never a wrong one
        return None


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_pads_into_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` where every constant zero ``Pad`` of only the spatial axes whose one consumer is a
    ``Conv`` (as its data input) is removed and its amounts added to the Conv's ``pads``; and how many were.

    The Pads and their now unused constant subgraphs are removed (``share.ancestors`` of the outputs).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    used_by = consumers(graph)
    outputs = {o.name for o in graph.output}
    folded = 0
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or len(pad.input) > 3:
            continue
        users = used_by.get(pad.output[0], [])
        conv = users[0] if len(users) == 1 else None
        if conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0] or pad.output[0] in outputs:
            continue
        if _attribute(pad, "mode", b"constant") != b"constant" or _attribute(conv, "auto_pad", b"NOTSET") != b"NOTSET":
            continue
        amounts = constant_value(out, pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
        fill = constant_value(out, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if amounts is None or fill is None or np.any(fill != 0):
            continue
        amounts = amounts.astype(np.int64).reshape(-1)
        rank = len(amounts) // 2
        begin, end = amounts[:rank], amounts[rank:]
        if rank < 3 or np.any(amounts < 0) or np.any(begin[:2]) or np.any(end[:2]):
            continue  # only N/C-free, non-negative padding becomes Conv padding
        spatial = rank - 2
        old = list(_attribute(conv, "pads", [0] * (2 * spatial)))
        new = [int(v) for v in np.add(old, np.concatenate([begin[2:], end[2:]]))]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded += 1
    if folded:  # the Convs now read the Pads' inputs: the Pads and their constant chains are no one's ancestors
        needed = ancestors(graph, list(outputs))
        kept = [n for i, n in enumerate(graph.node) if i in needed]
        del graph.node[:]
        graph.node.extend(kept)
    return out, folded
