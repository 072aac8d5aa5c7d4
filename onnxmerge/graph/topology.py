"""What every graph step asks of a model: who produces and who consumes a tensor, which tensors are constant,
what shape and element type a tensor has, the default-domain opset; renaming what nodes read, and a copy of
the model with other outputs."""

from __future__ import annotations

import onnx


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) domain ``model`` imports (1 where it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def rename_inputs(nodes, mapping: dict[str, str]) -> None:
    """Rename what ``nodes`` (and the nodes of their If/Loop/Scan bodies, which may read outer names) read,
    in place (ONNX forbids shadowing, so an outer name means the same tensor inside a body)."""
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in mapping:
                node.input[k] = mapping[name]
        for attr in node.attribute:
            for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                rename_inputs(graph.node, mapping)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node computing each tensor of ``graph`` (its top level)."""
    return {out: node for node in graph.node for out in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each tensor of ``graph`` (its top level), in graph order."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def constants(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value does not depend on the input: initializers, Constants, and what is computed from
    them alone (exporters write a Keras kernel as ``Transpose(initializer)``, a bias as ``Reshape(initializer)``,
    a quantised weight as ``DequantizeLinear(initializer)``)."""
    found = {init.name for init in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    found.add("")  # an omitted optional input
    for node in graph.node:  # graph.node is in topological order (an ONNX requirement)
        if node.op_type == "Constant" or (
            node.input and all(i in found for i in node.input) and not node.op_type.startswith("Random")
        ):
            found.update(node.output)
    return found


def _shape_of(vi: onnx.ValueInfoProto) -> list | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim]


def _inferred(model: onnx.ModelProto) -> onnx.GraphProto:
    """``model``'s graph with onnx's inferred value_info (its own value_info dropped: exporters' can lie, and
    inference keeps a lie it cannot contradict; onnxruntime ignores them too)."""
    clean = onnx.ModelProto()
    clean.CopyFrom(model)
    del clean.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(clean, strict_mode=False).graph
    except Exception:  # inference is best effort: a model ORT runs may still defeat it
        return clean.graph


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list | None]:
    """Shapes of every tensor that onnx's shape inference can tell (inputs, outputs, intermediates)."""
    g = _inferred(model)
    shapes = {vi.name: _shape_of(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for sparse in model.graph.sparse_initializer:
        shapes[sparse.values.name] = list(sparse.dims)
    return shapes


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The ONNX element type of every tensor shape inference can tell (``TensorProto.FLOAT16`` = 10, ...)."""
    g = _inferred(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.value_info) + list(g.input) + list(g.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def with_outputs(model: onnx.ModelProto, names: list[str], prune: bool = False, extra: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are exactly ``names`` (``extra``: its own outputs, then ``names``).

    Without ``prune``: the outputs untyped (onnxruntime infers them and runs just what they need), every node
    kept; cheap, for a session that reads a tensor. With ``prune``: the nodes, initializers and opset imports
    nothing needs are dropped (no ai.onnx.ml import once the sources' own heads are gone), for a graph that is
    kept (an engine's part, the graph a head is appended to).
    """
    if prune:
        return _pruned(model, [o.name for o in model.graph.output] + names if extra else names)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    if not extra:
        del exposed.graph.output[:]
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return exposed


def _pruned(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    from .batchloop import hoist_loop_weights

    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    graph.outputs = [tensors[name] for name in outputs]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    result = gs.export_onnx(graph, do_type_check=False)
    hoist_loop_weights(result)
    result.ir_version = model.ir_version
    del result.graph.value_info[:]
    used = {n.domain for n in result.graph.node} | {n.domain for f in result.functions for n in f.node}
    used |= {f.domain for f in result.functions}
    kept = [o for o in result.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del result.opset_import[:]
    result.opset_import.extend(kept)
    result.metadata_props.extend(model.metadata_props)
    return result
