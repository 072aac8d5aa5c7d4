"""Run a source whose graph only works at batch 1 image by image, inside an ONNX ``Loop`` over the batch.

torch 2.13's default ``torch.onnx.export(net, (x,), path)`` (the dynamo exporter, static shapes) bakes the
example's batch of 1 into its Reshapes; such a graph fails on any other batch. Instead of asking for a
re-export, the source's whole graph becomes the body of a ``Loop`` that slices image ``i``, runs the original
nodes on it, and stacks the tensors the build needs (its outputs, its feature, its head) back into
``[N, ...]``, so Z keeps its dynamic batch. Only default-domain ops that exist from opset 11 on are added
(Shape, Gather, Loop, Reshape, Add, Slice, Identity, Squeeze with the axes as its opset wants them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import OnnxMergeError
from .topology import default_opset, rename_inputs

PREFIX = "per_image"  # names of what the wrapper adds (unique next to an exporter's names)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor onnx's shape inference can tell (float where it cannot)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort here: float is what classifiers compute
        inferred = model
    g = inferred.graph
    return {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.value_info) + list(g.input) + list(g.output)
        if vi.type.HasField("tensor_type")
    }


def _loop_body(graph: onnx.GraphProto, input_name: str, kept: list[str], types: dict) -> onnx.GraphProto:
    """The ``Loop`` body: slice image ``i`` of ``input_name``, run ``graph``'s nodes on it, emit ``kept``."""
    image = f"{PREFIX}/image"
    inner = {name: f"{name}__image" for name in kept}  # the body's name of each kept tensor (no shadowing)
    body_nodes = [onnx.NodeProto() for _ in graph.node]
    for copy, node in zip(body_nodes, graph.node):
        copy.CopyFrom(node)
        for k, name in enumerate(copy.output):
            if name in inner:
                copy.output[k] = inner[name]
    rename_inputs(body_nodes, {input_name: image, **inner})
    c = f"{PREFIX}/"
    body = helper.make_graph(
        [
            helper.make_node("Reshape", [f"{c}i", f"{c}shape_1"], [f"{c}start"], name=f"{c}Start"),
            helper.make_node("Add", [f"{c}start", f"{c}one"], [f"{c}end"], name=f"{c}End"),
            helper.make_node("Slice", [input_name, f"{c}start", f"{c}end", f"{c}axis_0"], [image], name=f"{c}Slice"),
            *body_nodes,
            helper.make_node("Identity", [f"{c}cond_in"], [f"{c}cond_out"], name=f"{c}Cond"),
        ],
        f"{graph.name or 'source'}_per_image",
        [
            helper.make_tensor_value_info(f"{c}i", TensorProto.INT64, []),
            helper.make_tensor_value_info(f"{c}cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(f"{c}cond_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(inner[name], types.get(name) or TensorProto.FLOAT, None) for name in kept],
    )
    return body


def per_image(model: onnx.ModelProto, input_name: str, keep: list[str]) -> onnx.ModelProto:
    """``model`` (runs at batch 1 only) as a model that takes any batch and runs its graph once per image.

    ``keep``: tensors besides the graph outputs that must stay visible (the feature, the head output); each
    becomes an output of the ``Loop``, stacked over the batch under its own name.
    """
    graph = model.graph
    opset = default_opset(model)
    if opset < 11:
        raise OnnxMergeError(
            f"the source is at opset {opset}; running a batch-1 graph image by image needs "
            "opset 11 or newer, so re-export it with a dynamic batch axis."
        )
    outputs = [o.name for o in graph.output if o.type.HasField("tensor_type")]  # a Loop stacks tensors only
    kept = list(dict.fromkeys(outputs + [k for k in keep if k and k != input_name]))
    types = _elem_types(model)

    body = _loop_body(graph, input_name, kept, types)
    c = f"{PREFIX}/"
    stacked = [f"{name}__stacked" for name in kept]
    nodes = [
        helper.make_node("Shape", [input_name], [f"{c}input_shape"], name=f"{c}Shape"),
        helper.make_node("Gather", [f"{c}input_shape", f"{c}zero"], [f"{c}n"], name=f"{c}Batch", axis=0),
        helper.make_node("Loop", [f"{c}n", ""], stacked, name=f"{c}Loop", body=body),
    ]
    for name, scan in zip(kept, stacked):  # a Loop stacks each image's [1, ...] into [N, 1, ...]
        if opset >= 13:
            nodes.append(helper.make_node("Squeeze", [scan, f"{c}axis_1"], [name], name=f"{c}Squeeze/{name}"))
        else:
            nodes.append(helper.make_node("Squeeze", [scan], [name], name=f"{c}Squeeze/{name}", axes=[1]))
    constants = [
        numpy_helper.from_array(np.array(v, np.int64), f"{c}{n}")
        for n, v in (("shape_1", [1]), ("one", [1]), ("axis_0", [0]), ("zero", 0), ("axis_1", [1]))
    ]

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    g = wrapped.graph
    del g.node[:], g.value_info[:]
    g.node.extend(nodes)
    g.initializer.extend(constants)
    tensors = [o for o in g.output if o.name in outputs]  # ZipMap's sequence of maps cannot be stacked
    del g.output[:]
    g.output.extend(tensors)
    for value in list(g.input) + list(g.output):
        dims = value.type.tensor_type.shape.dim
        if dims and value.name in (input_name, *outputs):
            dims[0].Clear()
            dims[0].dim_param = "N"
    return wrapped


def hoist_loop_weights(model: onnx.ModelProto) -> None:
    """Move the initializers graphsurgeon put into a per-image Loop's body (``batchloop``) back to the main graph.

    graphsurgeon's export stores a constant where it is used (cut, stitch and topology.with_outputs all export);
    the weights of a source run image by image are used only in the Loop body, but the weight folder (and the
    saved Z's external data) handle main-graph initializers.
    The body still reads them, from the outer scope.
    """
    for node in model.graph.node:
        if node.op_type == "Loop" and (node.name or "").endswith(f"{PREFIX}/Loop"):
            body = next(a.g for a in node.attribute if a.name == "body")
            present = {init.name for init in model.graph.initializer}  # graphsurgeon may keep a copy outside too
            model.graph.initializer.extend(init for init in body.initializer if init.name not in present)
            del body.initializer[:]
