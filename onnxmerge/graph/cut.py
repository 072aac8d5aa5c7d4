"""Cut a source model at its feature tensor; pool and flatten that tensor to ``[N, d]``."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import OnnxMergeError
from .batchloop import hoist_loop_weights
from .topology import consumers, elem_types, tensor_shapes

FEATURE = "feature"  # name of the cut graph's pooled feature output (prefixed later by stitch)
HEAD = "head"  # name of the cut graph's copy of the source's classifier output


@dataclass
class CutModel:
    """A source cut at its feature tensor: outputs ``feature`` ``[N, d]`` and, if kept, ``head`` ``[N, K]``."""

    model: onnx.ModelProto
    input_name: str
    feature: str  # the tensor's name in the source model
    pooled: tuple[int, ...]  # the spatial axes a 4-D feature map was averaged over; () where it was not pooled
    rank: int  # rank of the source's feature tensor


def source_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one real (non-initializer) input of a source model."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxMergeError(
            f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}); onnxmerge composes image "
            "classifiers with exactly one image input."
        )
    return inputs[0]


def _missing_tensor(name: str, names: list[str]) -> OnnxMergeError:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    sample = close or names[-8:]
    return OnnxMergeError(
        f"tensor {name!r} does not exist in the model; candidates include {sample} "
        "(run `onnxmerge inspect MODEL --all` for every candidate)."
    )


def inferred_rank(model: onnx.ModelProto, feature: str) -> int | None:
    """Rank of ``feature`` from shape inference; None where inference cannot tell (a computed Reshape).

    The caller then asks the runtime (``runtime.session.tensor_rank``): graph code never runs models.
    """
    shape = tensor_shapes(model).get(feature)
    return None if shape is None else len(shape)


#: ops that keep a 4-D map's layout (followed forward when telling a map's spatial axes)
_SAME_LAYOUT = {
    "Relu",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "Elu",
    "Gelu",
    "Add",
    "Mul",
    "Sub",
    "Div",
    "Identity",
    "Dropout",
    "Cast",
    "Neg",
    "Erf",
    "Softplus",
    "PRelu",
}
#: ops whose first input is NCHW by ONNX's definition
_NCHW_CONSUMERS = {
    "Conv",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "MaxPool",
    "AveragePool",
    "BatchNormalization",
    "InstanceNormalization",
    "ConvTranspose",
    "LpPool",
    "GlobalLpPool",
}


def _constant_ints(graph: onnx.GraphProto, name: str) -> list[int] | None:
    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in onnx.numpy_helper.to_array(init).reshape(-1)]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(v) for v in onnx.numpy_helper.to_array(node.attribute[0].t).reshape(-1)]
    return None


def spatial_axes(model: onnx.ModelProto, feature: str) -> tuple[int, int]:
    """The two spatial axes of the 4-D map ``feature``: ``(2, 3)`` for NCHW, ``(1, 2)`` for NHWC.

    Told by what the model does with the map next, followed forward through layout-keeping ops and
    Transposes: a Conv or a pooling op reads NCHW; a ``ReduceMean`` names the axes it averages; a
    ``MatMul`` by a constant (a Keras Dense on a map) treats the last axis as channels. NCHW where nothing
    tells (ONNX's own convention).
    """
    graph = model.graph
    used_by = consumers(graph)
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    frontier, seen = [(feature, [0, 1, 2, 3])], set()  # (tensor, the feature axis behind each of its axes)
    while frontier:
        name, axes = frontier.pop(0)
        if name in seen:
            continue
        seen.add(name)
        for node in used_by.get(name, []):
            op, spatial = node.op_type, None
            if op in _NCHW_CONSUMERS and node.input[0] == name:
                spatial = [2, 3]
            elif op == "MatMul" and node.input[0] == name and node.input[1] in constants:
                spatial = [1, 2]
            elif op == "ReduceMean":
                attr = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axes"), None)
                reduced = (
                    attr
                    if attr is not None
                    else (_constant_ints(graph, node.input[1]) if len(node.input) > 1 else None)
                )
                if reduced is not None and len(reduced) == 2 and 0 not in reduced and -4 not in reduced:
                    spatial = [int(a) % 4 for a in reduced]
            elif op == "Transpose":
                perm = next(
                    (list(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0]
                )
                frontier.append((node.output[0], [axes[p] for p in perm]))
            elif op in _SAME_LAYOUT:
                frontier.extend((out, axes) for out in node.output)
            if spatial is not None:
                return tuple(sorted(axes[a] for a in spatial))
    return (2, 3)


def densify_sparse_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose ``graph.sparse_initializer`` entries are ordinary dense initializers.

    onnx-graphsurgeon (and onnx's shape inference, which types them ``sparse_tensor``) only know dense
    initializers; onnxruntime densifies them at load time too, so the values Z computes with are the same.
    Indices are either ``[NNZ]`` linear positions or ``[NNZ, rank]`` coordinates (ONNX SparseTensorProto).
    """
    if not model.graph.sparse_initializer:
        return model
    dense_model = onnx.ModelProto()
    dense_model.CopyFrom(model)
    for sparse in dense_model.graph.sparse_initializer:
        values = onnx.numpy_helper.to_array(sparse.values)
        indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
        dims = [int(d) for d in sparse.dims]
        dense = np.zeros(dims, dtype=values.dtype)
        size = dense.size
        if (
            indices.ndim == 1
            and indices.size == values.size
            and (indices.size == 0 or (indices.min() >= 0 and indices.max() < size))
        ):
            dense.reshape(-1)[indices] = values
        elif (
            indices.ndim == 2
            and indices.shape == (values.size, len(dims))
            and (indices.size == 0 or (indices.min() >= 0 and (indices < np.array(dims)).all()))
        ):
            dense[tuple(indices.T)] = values
        else:
            raise OnnxMergeError(
                f"sparse initializer {sparse.values.name!r} has indices (shape "
                f"{list(indices.shape)}) that do not place its {values.size} values inside its "
                f"shape {dims}; re-export the model with dense weights."
            )
        dense_model.graph.initializer.append(onnx.numpy_helper.from_array(dense, sparse.values.name))
    del dense_model.graph.sparse_initializer[:]
    return dense_model


def _float32(graph: gs.Graph, tensor: gs.Variable, elem_type: int | None, name: str) -> gs.Variable:
    """``tensor`` itself where it is float32 (or its type is unknown), else a Cast of it to float32: a float16
    source's feature and head enter Z's float32 part here."""
    if elem_type in (None, 0, onnx.TensorProto.FLOAT):
        return tensor
    cast = gs.Variable(f"{tensor.name}__float32", dtype=np.float32)
    graph.nodes.append(
        gs.Node("Cast", f"{name}/to_float32", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[tensor], outputs=[cast])
    )
    return cast


def _pooled_flat(graph: gs.Graph, model: onnx.ModelProto, feature: str, feat: gs.Variable, rank: int, out: gs.Variable):
    """Nodes from the feature tensor ``feat`` to ``out`` ``[N, d]``; the spatial axes a 4-D map was averaged over."""
    axes: tuple[int, ...] = ()
    if rank == 4:
        axes = spatial_axes(model, feature)
        if axes != (2, 3):  # an NHWC map: to NCHW first, so one GlobalAveragePool serves every opset
            channel = next(a for a in (1, 2, 3) if a not in axes)
            nchw = gs.Variable(f"{feature}__nchw", dtype=np.float32)
            perm = {"perm": [0, channel, *axes]}
            graph.nodes.append(gs.Node("Transpose", f"{FEATURE}/to_nchw", attrs=perm, inputs=[feat], outputs=[nchw]))
            feat = nchw
        pooled = gs.Variable(f"{feature}__pooled", dtype=np.float32)
        graph.nodes.append(gs.Node("GlobalAveragePool", f"{FEATURE}/pool", inputs=[feat], outputs=[pooled]))
        graph.nodes.append(gs.Node("Flatten", f"{FEATURE}/flatten", attrs={"axis": 1}, inputs=[pooled], outputs=[out]))
    elif rank == 2:
        graph.nodes.append(gs.Node("Identity", f"{FEATURE}/identity", inputs=[feat], outputs=[out]))
    else:
        graph.nodes.append(gs.Node("Flatten", f"{FEATURE}/flatten", attrs={"axis": 1}, inputs=[feat], outputs=[out]))
    return axes


def cut(model: onnx.ModelProto, feature: str, head_output: str | None, rank: int | None = None) -> CutModel:
    """Keep the sub-graph from the input to ``feature`` (and to ``head_output`` if given), nothing else.

    A 4-D feature map is globally average-pooled over its spatial axes (``spatial_axes``) and flattened;
    any other rank above 2 is flattened. A feature or head in another float type (a float16 source) is cast
    to float32 first, so Z's own part is float32 whatever the source computes in.
    Unused nodes, initializers and value_info are dropped; value_info of the kept part is dropped too,
    because exporters' value_info sometimes lies and onnx re-infers it anyway. Sparse initializers
    become dense ones (graphsurgeon would drop them). ``rank`` is the feature's rank where shape inference
    cannot tell it (``inferred_rank`` is None).
    """
    inp = source_input(model)
    model = densify_sparse_initializers(model)
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    if feature not in tensors or isinstance(tensors[feature], gs.Constant):
        raise _missing_tensor(feature, [n for n, t in tensors.items() if isinstance(t, gs.Variable)])
    rank = rank or inferred_rank(model, feature)
    if rank is None:
        raise OnnxMergeError(
            f"the rank of tensor {feature!r} is unknown to shape inference; this is a bug in "
            "onnxmerge (the build measures it first), please report it."
        )
    types = elem_types(model)
    out = gs.Variable(FEATURE, dtype=np.float32)
    feat = _float32(graph, tensors[feature], types.get(feature), FEATURE)
    axes = _pooled_flat(graph, model, feature, feat, rank, out)
    outputs = [out]
    if head_output is not None:
        head = gs.Variable(HEAD, dtype=np.float32)
        scores = _float32(graph, tensors[head_output], types.get(head_output), HEAD)
        graph.nodes.append(gs.Node("Identity", f"{HEAD}/identity", inputs=[scores], outputs=[head]))
        outputs.append(head)
    graph.outputs = outputs
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs:
            tensor.shape = None
    cut_model = gs.export_onnx(graph, do_type_check=False)
    hoist_loop_weights(cut_model)
    cut_model.ir_version = model.ir_version
    del cut_model.graph.value_info[:]
    for prop in model.metadata_props:
        cut_model.metadata_props.add(key=prop.key, value=prop.value)
    return CutModel(cut_model, inp.name, feature, pooled=axes, rank=rank)
