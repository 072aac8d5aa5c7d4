"""Describe a model and find the tensor that feeds its final classifier layer ("auto" feature)."""

from __future__ import annotations

from pathlib import Path

import onnx

from ..contract import ZMetadata, read_metadata
from ..errors import OnnxMergeError
from .head import HeadInfo, find_head, find_head_output  # noqa: F401  (the finder, re-exported)
from .labels import LABEL_ATTRIBUTES, LABEL_KEYS, Labels, _text, model_labels, read_labels  # noqa: F401
from .preprocess import own_preprocessing
from .topology import _shape_of, constants, consumers, tensor_shapes

#: ops after which a tensor is a reasonable hand-picked feature (listed by ``inspect --all``).
_FEATURE_OPS = {
    "Relu",
    "Clip",
    "Flatten",
    "Reshape",
    "GlobalAveragePool",
    "ReduceMean",
    "Gemm",
    "MatMul",
    "Add",
    "Sigmoid",
    "HardSwish",
    "Mul",
    "Tanh",
    "Gelu",
    "Concat",
    "MaxPool",
    "AveragePool",
    "LeakyRelu",
    "Elu",
    "BatchNormalization",
    "Conv",
    "Squeeze",
}


def candidates(model: onnx.ModelProto, suggested: str | None) -> list[dict]:
    """Every plausible feature tensor, latest in the graph first, the suggested one on top."""
    graph = model.graph
    used_by, consts = consumers(graph), constants(graph)
    shapes = tensor_shapes(model)
    found: list[dict] = []
    seen = set()
    for node in reversed(graph.node):
        for out in node.output:
            if out in seen or out in consts or out not in used_by:
                continue
            shape = shapes.get(out)
            if node.op_type not in _FEATURE_OPS and out != suggested:
                continue
            if shape is not None and len(shape) not in (2, 3, 4):
                continue
            seen.add(out)
            found.append({"name": out, "shape": shape, "op": used_by[out][0].op_type, "suggested": out == suggested})
    for inp in graph.input:
        if inp.name not in consts and inp.name not in seen:
            found.append(
                {"name": inp.name, "shape": shapes.get(inp.name), "op": "input", "suggested": inp.name == suggested}
            )
    found.sort(key=lambda c: not c["suggested"])
    return found


#: ops that make a model's arithmetic integer (QDQ, dynamic and QOperator quantisation)
_INTEGER_OPS = {
    *("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"),
    *("QLinearConv", "QLinearMatMul", "QGemm"),
}


def precision(model: onnx.ModelProto) -> str:
    """What the model computes in: ``"int8"`` (quantised: QDQ, dynamic or QOperator), ``"float16"`` (float16
    weights, as onnxconverter-common writes them), else ``"float32"``."""
    if any(n.op_type in _INTEGER_OPS for n in model.graph.node):
        return "int8"
    if any(i.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) for i in model.graph.initializer):
        return "float16"
    return "float32"


def _printable_type(t: onnx.TypeProto) -> str:
    """onnx's printable type for a tensor (``FLOAT, Nx8``); sequences, maps and optionals spelled out
    (skl2onnx's ZipMap: ``sequence of map(INT64 -> FLOAT)``), which onnx prints as "Unknown type"; an element
    type onnx has no name for (a corrupt file) is shown by number."""
    kind = t.WhichOneof("value")
    if kind == "sequence_type":
        return f"sequence of {_printable_type(t.sequence_type.elem_type)}"
    if kind == "map_type":
        return f"map({_element_name(t.map_type.key_type)} -> {_printable_type(t.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional {_printable_type(t.optional_type.elem_type)}"
    if kind == "tensor_type" and not t.tensor_type.HasField("shape"):  # a map's values: no shape to print
        return _element_name(t.tensor_type.elem_type)
    try:
        return onnx.helper.printable_type(t)
    except ValueError:
        return f"tensor(unknown elem_type {t.tensor_type.elem_type})"


def _element_name(elem_type: int) -> str:
    """``FLOAT``, ``INT64``, ...; a number onnx has no name for as ``elem_type N``."""
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"elem_type {elem_type}"


def describe_z(model: onnx.ModelProto, path: str | Path | None = None) -> dict | None:
    """What a Z built by onnxmerge says about itself (its ``onnxmerge.*`` metadata), or None for other models.

    Keys: ``mode``, ``version``, ``sources`` (``{name, sha256, feature}``), ``classes`` (in ``probabilities``
    order), ``route`` (teachers mode: the ``route`` output's columns, teachers then new classes), ``expected_accuracy``
    (the build's held-out estimate, or None), ``head_inputs`` (the head's input blocks: source, block, width),
    ``merge`` (``{method, sources}`` where the sources share one merged backbone, else None).
    ``unknown`` (``[head] unknown`` on: the threshold on ``unknown_score``, the share it keeps, its distance).
    A Z built before a key existed shows None for it; a damaged value is refused (``contract.read_metadata``).
    """
    return _z_view(read_metadata(model, path))


def _z_view(metadata: ZMetadata | None) -> dict | None:
    if metadata is None:
        return None
    return {
        "mode": metadata.mode,
        "version": metadata.version,
        "sources": metadata.sources,
        "classes": metadata.labels,
        "route": metadata.route,
        "expected_accuracy": metadata.expected_accuracy,
        "head_inputs": metadata.head_inputs,
        "merge": metadata.merge,
        "unknown": metadata.unknown,
    }


def describe(path: str | Path, model: onnx.ModelProto) -> dict:
    """Everything ``onnxmerge inspect`` reports, as the contract's JSON keys (``z`` too where it is a built Z)."""
    shapes = tensor_shapes(model)

    def io(values):
        return [
            {"name": v.name, "shape": shapes.get(v.name) or _shape_of(v), "type": _printable_type(v.type)}
            for v in values
        ]

    initializers = {i.name for i in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in initializers]
    source = real[0] if len(real) == 1 else None
    labels = read_labels(model)
    metadata = read_metadata(model, path)
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
        "labels": labels.labels,
        "label_warnings": labels.warnings,
        "candidates": candidates(model, suggested),
        "suggested": suggested,
        "reason": reason,
        "precision": precision(model),
        "preprocessing": own_preprocessing(model, source.name) if source is not None else None,
        "z": _z_view(metadata),
        "quantization": metadata.quantization if metadata else None,
    }
