"""Describe a model and find the tensor that feeds its final classifier layer ("auto" feature)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import OnnxMergeError

#: ops a classifier's scores pass through after its last linear layer without changing "which feature".
_PASS_THROUGH = {
    "Softmax", "LogSoftmax", "Sigmoid", "Identity", "Cast", "ZipMap", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "GlobalAveragePool", "ReduceMean", "Dropout", "Normalizer", "Transpose",
}
#: ops after which a tensor is a reasonable hand-picked feature (listed by ``inspect --all``).
_FEATURE_OPS = {"Relu", "Clip", "Flatten", "Reshape", "GlobalAveragePool", "ReduceMean", "Gemm", "MatMul",
                "Add", "Sigmoid", "HardSwish", "Mul", "Tanh", "Gelu", "Concat", "MaxPool", "AveragePool",
                "LeakyRelu", "Elu", "BatchNormalization", "Conv", "Squeeze"}


@dataclass
class HeadInfo:
    """Where a source's classifier is: its output tensor, its last linear node, and the feature it reads."""

    output: str          # the tensor holding class scores/probabilities [N, K]
    feature: str         # the tensor feeding the last linear layer
    op: str              # that layer's op type (Gemm, MatMul, Conv)
    reason: str          # a sentence for the user


def _graph_maps(graph: onnx.GraphProto):
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {init.name for init in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return producers, consumers, constants


def _shape_of(vi: onnx.ValueInfoProto) -> list | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim]


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list | None]:
    """Shapes of every tensor that onnx's shape inference can tell (inputs, outputs, intermediates).

    The model's own ``value_info`` is ignored: exporters' (or edited models') value_info can lie, and
    onnx's inference would keep a lie it cannot contradict (onnxruntime ignores them too, with a warning).
    """
    clean = onnx.ModelProto()
    clean.CopyFrom(model)
    del clean.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(clean, strict_mode=False)
    except Exception:  # inference is best effort: a model ORT runs may still defeat it
        inferred = clean
    g = inferred.graph
    shapes = {vi.name: _shape_of(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for sparse in model.graph.sparse_initializer:
        shapes[sparse.values.name] = list(sparse.dims)
    return shapes


def model_labels(model: onnx.ModelProto) -> list[str] | None:
    """Class labels a model carries: skl2onnx ``classlabels_*`` or a ``labels``-like metadata entry."""
    for key in ("onnxmerge.labels", "labels", "names"):
        for prop in model.metadata_props:
            if prop.key == key:
                try:
                    value = json.loads(prop.value)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):  # {"0": "cat", ...} as ultralytics writes it
                    value = [value[k] for k in sorted(value, key=lambda k: int(k) if str(k).isdigit() else k)]
                if isinstance(value, list) and value:
                    return [str(v) for v in value]
    for node in model.graph.node:
        if node.domain == "ai.onnx.ml":
            for attr in node.attribute:
                if attr.name == "classlabels_strings" and attr.strings:
                    return [s.decode() for s in attr.strings]
                if attr.name == "classlabels_ints" and attr.ints:
                    return [str(i) for i in attr.ints]
    return None


def _is_float_matrix(vi: onnx.ValueInfoProto) -> bool:
    tt = vi.type.tensor_type
    shape = _shape_of(vi)
    return vi.type.HasField("tensor_type") and tt.elem_type in (1, 10, 11, 16) and shape is not None and len(shape) == 2


def find_head_output(model: onnx.ModelProto, head_output: str = "auto") -> str:
    """The output tensor that holds the classifier's scores (``[N, K]``); ZipMap outputs map to their input."""
    graph = model.graph
    names = [o.name for o in graph.output]
    producers, _, _ = _graph_maps(graph)
    if head_output != "auto":
        if head_output not in names:
            raise OnnxMergeError(f"head_output {head_output!r} is not an output of the model; its outputs are {names}.")
        chosen = head_output
    else:
        shapes = tensor_shapes(model)
        scored = [o.name for o in graph.output if _is_float_matrix(o)]
        # skl2onnx's probabilities come as a ZipMap (a sequence of maps): the tensor before it is the head
        zipped = [producers[o.name].input[0] for o in graph.output
                  if o.name in producers and producers[o.name].op_type == "ZipMap"]
        scored += [z for z in zipped if z not in scored]
        if not scored:
            scored = [o.name for o in graph.output if (shapes.get(o.name) or [None]) and len(shapes.get(o.name) or []) == 2]
        if not scored:
            raise OnnxMergeError(
                f"no output of the model has a classifier shape [N, K] (outputs: {names}); "
                "set head_output to the output holding the class scores."
            )
        chosen = scored[0]
    node = producers.get(chosen)
    if node is not None and node.op_type == "ZipMap":
        chosen = node.input[0]
    return chosen


def find_head(model: onnx.ModelProto, head_output: str = "auto") -> HeadInfo:
    """Walk back from the classifier output to its last linear layer; the input of that layer is the feature."""
    graph = model.graph
    producers, consumers, constants = _graph_maps(graph)
    output = find_head_output(model, head_output)
    name = output
    path: list[str] = []
    for _ in range(len(graph.node) + 1):
        node = producers.get(name)
        if node is None:
            break
        path.append(node.op_type)
        op = node.op_type
        if op == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            if not trans_a and node.input[1] in constants:
                return HeadInfo(output, node.input[0], op, _reason(output, path, node))
        if op == "MatMul" and node.input[1] in constants:
            return HeadInfo(output, node.input[0], op, _reason(output, path, node))
        if op == "LinearClassifier" and node.domain == "ai.onnx.ml":  # scikit-learn linear models
            return HeadInfo(output, node.input[0], op, _reason(output, path, node))
        if op == "Conv" and node.input[1] in constants and _is_pointwise(graph, node):
            return HeadInfo(output, node.input[0], "Conv", _reason(output, path, node))
        if op == "Add":
            # MatMul + Add (bias): follow the non-constant side
            dynamic = [i for i in node.input if i not in constants]
            if len(dynamic) == 1:
                name = dynamic[0]
                continue
            break
        elementwise_by_constant = op in ("Mul", "Div", "Sub") and sum(i not in constants for i in node.input) == 1
        if op in _PASS_THROUGH or elementwise_by_constant:
            name = next(i for i in node.input if i not in constants)
            continue
        if op in ("ArgMax", "ArrayFeatureExtractor", "LabelEncoder"):
            break
        break
    input_names = [i.name for i in graph.input if i.name not in constants]
    if name in input_names:
        return HeadInfo(output, name, "input",
                        f"the classifier output {output!r} is a linear function of the model input {name!r}, "
                        "so the preprocessed input itself is the feature")
    raise OnnxMergeError(
        f"could not find the last linear layer behind output {output!r} (walked back through {' <- '.join(path) or 'nothing'}); "
        "name the feature tensor in the recipe (run `onnxmerge inspect MODEL --all` to list candidates)."
    )


def _is_pointwise(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    for init in graph.initializer:
        if init.name == node.input[1]:
            return list(init.dims[2:]) in ([1, 1], [1], [])
    return False


def _reason(output: str, path: list[str], node: onnx.NodeProto) -> str:
    chain = " <- ".join(path)
    return f"input of the last linear layer ({node.op_type} {node.name or node.output[0]!r}) behind output {output!r} ({chain})"


def candidates(model: onnx.ModelProto, suggested: str | None) -> list[dict]:
    """Every plausible feature tensor, latest in the graph first, the suggested one on top."""
    graph = model.graph
    producers, consumers, constants = _graph_maps(graph)
    shapes = tensor_shapes(model)
    found: list[dict] = []
    seen = set()
    for node in reversed(graph.node):
        for out in node.output:
            if out in seen or out in constants or out not in consumers:
                continue
            shape = shapes.get(out)
            if node.op_type not in _FEATURE_OPS and out != suggested:
                continue
            if shape is not None and len(shape) not in (2, 3, 4):
                continue
            seen.add(out)
            found.append({"name": out, "shape": shape, "op": consumers[out][0].op_type, "suggested": out == suggested})
    for inp in graph.input:
        if inp.name not in constants and inp.name not in seen:
            found.append({"name": inp.name, "shape": shapes.get(inp.name), "op": "input",
                          "suggested": inp.name == suggested})
    found.sort(key=lambda c: not c["suggested"])
    return found


def _printable_type(t: onnx.TypeProto) -> str:
    """onnx's printable type; an element type onnx has no name for (a corrupt file) is shown by number."""
    try:
        return onnx.helper.printable_type(t)
    except ValueError:
        return f"tensor(unknown elem_type {t.tensor_type.elem_type})"


def describe(path: str | Path, model: onnx.ModelProto) -> dict:
    """Everything ``onnxmerge inspect`` reports, as the contract's JSON keys."""
    shapes = tensor_shapes(model)

    def io(values):
        return [{"name": v.name, "shape": shapes.get(v.name) or _shape_of(v), "type": _printable_type(v.type)}
                for v in values]

    initializers = {i.name for i in model.graph.initializer}
    try:
        head = find_head(model)
        suggested, reason = head.feature, head.reason
    except OnnxMergeError as exc:
        suggested, reason = None, str(exc)
    path = Path(path)
    return {
        "file": str(path),
        "size": path.stat().st_size if path.exists() else None,
        "inputs": io([i for i in model.graph.input if i.name not in initializers]),
        "outputs": io(model.graph.output),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "labels": model_labels(model),
        "candidates": candidates(model, suggested),
        "suggested": suggested,
        "reason": reason,
        "quantization": _quantization(model),
    }


def _quantization(model: onnx.ModelProto) -> dict | None:
    """What ``build --quantize`` chose for an int8 Z (its ``onnxmerge.quantization`` metadata), else None."""
    from .quantize import quantization_info

    try:
        return quantization_info(model)
    except ValueError:  # not JSON: a hand-edited file; inspect still describes the rest
        return None
