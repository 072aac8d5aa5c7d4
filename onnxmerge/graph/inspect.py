"""Describe a model and find the tensor that feeds its final classifier layer ("auto" feature)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from ..contract import ZMetadata, read_metadata
from ..errors import OnnxMergeError
from .labels import LABEL_ATTRIBUTES, LABEL_KEYS, Labels, _text, model_labels, read_labels  # noqa: F401

#: ops a classifier's scores pass through after its last linear layer without changing "which feature":
#: probability maps, activations, layout, pooling (a conv head's spatial average), casts.
_PASS_THROUGH = {
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Identity",
    "Cast",
    "ZipMap",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "GlobalAveragePool",
    "ReduceMean",
    "Dropout",
    "Normalizer",
    "Transpose",
    "Relu",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Tanh",
    "Softplus",
    "Softsign",
    "Gelu",
    "PRelu",
    "ThresholdedRelu",
    "Hardmax",
    "Neg",
    "BatchNormalization",
    "InstanceNormalization",
    "Add",
    "Sub",
    "Mul",
    "Div",  # by constants only: a bias, a scale, a temperature (walked with one dynamic input)
}
#: affine ops between a shared tensor and each of several heads (LeViT's BatchNorm -> Linear per head)
_AFFINE = {"BatchNormalization", "Identity", "Dropout", "Cast", "Flatten", "Reshape", "Squeeze"}
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


@dataclass
class HeadInfo:
    """Where a source's classifier is: its output tensor, its last linear node, and the feature it reads."""

    output: str  # the tensor holding class scores/probabilities [N, K]
    feature: str  # the tensor feeding the last linear layer
    op: str  # that layer's op type (Gemm, MatMul, Conv)
    reason: str  # a sentence for the user


def _graph_maps(graph: onnx.GraphProto):
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers, _constants(graph)


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value does not depend on the input: initializers, Constants, and what is computed from
    them alone (exporters write a Keras kernel as ``Transpose(initializer)``, a bias as ``Reshape(initializer)``)."""
    constants = {init.name for init in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    constants.add("")  # an omitted optional input
    for node in graph.node:  # graph.node is in topological order (an ONNX requirement)
        if node.op_type == "Constant" or (
            node.input and all(i in constants for i in node.input) and not node.op_type.startswith("Random")
        ):
            constants.update(node.output)
    return constants


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
        zipped = [
            producers[o.name].input[0]
            for o in graph.output
            if o.name in producers and producers[o.name].op_type == "ZipMap"
        ]
        scored += [z for z in zipped if z not in scored]
        if not scored:
            scored = [
                o.name for o in graph.output if (shapes.get(o.name) or [None]) and len(shapes.get(o.name) or []) == 2
            ]
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


@dataclass
class _Walk:
    """One model's maps for walking back from a classifier output."""

    producers: dict[str, onnx.NodeProto]
    constants: set[str]
    shapes: dict[str, list | None]
    limit: int

    def dynamic(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i not in self.constants]

    def linear_input(self, node: onnx.NodeProto) -> str | None:
        """The data input of a linear classifier layer (constant weights), or None if ``node`` is not one."""
        op, inputs = node.op_type, node.input
        if op == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            return inputs[0] if not trans_a and inputs[1] in self.constants else None
        if op == "MatMul":
            return inputs[0] if inputs[1] in self.constants and inputs[0] not in self.constants else None
        if op in ("LinearClassifier", "LinearRegressor") and node.domain == "ai.onnx.ml":  # scikit-learn linear models
            return inputs[0]
        if op == "Conv" and inputs[1] in self.constants and self._pointwise(node):
            return inputs[0]
        return None

    def _pointwise(self, node: onnx.NodeProto) -> bool:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("group", 1) != 1:
            return False
        kernel = attrs.get("kernel_shape")
        if kernel is None:
            weight = self.shapes.get(node.input[1])
            kernel = weight[2:] if weight is not None else None
        return kernel is not None and all(k == 1 for k in kernel)

    def complement_of(self, name: str) -> str:
        """``p`` for skl2onnx's ``1 - p`` (``Sub(constant, p)``), else ``name`` itself."""
        node = self.producers.get(name)
        if (
            node is not None
            and node.op_type == "Sub"
            and node.input[0] in self.constants
            and node.input[1] not in self.constants
        ):
            return node.input[1]
        return name

    def back(self, name: str, path: list[str]) -> tuple[str, onnx.NodeProto | None, str]:
        """Walk back from ``name`` to the last linear layer: ``(feature, that layer or None, where it stopped)``.

        ``path`` collects the ops walked, in order. Several heads averaged (``Add`` of two dynamic inputs)
        resolve to the one tensor they all read; skl2onnx's two-class ``Concat(1 - p, p)`` to ``p``.
        """
        for _ in range(self.limit):
            node = self.producers.get(name)
            if node is None:
                return name, None, "input"
            op = node.op_type
            path.append(op)
            feature = self.linear_input(node)
            if feature is not None:
                return feature, node, "linear"
            dynamic = self.dynamic(node)
            if op == "Concat" and dynamic:
                bases = {self.complement_of(i) for i in dynamic}
                if len(bases) == 1:  # every part is p or 1 - p: the classifier is behind p
                    name = bases.pop()
                    if name not in dynamic:
                        path.append("Sub")
                    continue
                return name, None, "stop"
            if op in ("Add", "Sum", "Mean") and len(dynamic) >= 2:
                return self.shared(node, dynamic, path)
            if op in _PASS_THROUGH and len(dynamic) == 1:
                name = dynamic[0]
                continue
            return name, None, "stop"
        return name, None, "stop"

    def shared(self, node: onnx.NodeProto, heads: list[str], path: list[str]) -> tuple[str, onnx.NodeProto | None, str]:
        """Averaged heads (``(Gemm(f) + Gemm(BatchNorm(f))) / 2``): the tensor ``f`` every head reads."""
        branches, chains, firsts = [], [], None
        for head in heads:
            branch: list[str] = []
            feature, linear, how = self.back(head, branch)
            if linear is None:
                path.append("{" + ", ".join(" <- ".join(b) for b in branches + [branch]) + "}")
                return feature, None, "stop"
            firsts = firsts or linear
            chain = [feature]  # the head's input, then back through affine ops to what it is computed from
            while (
                (producer := self.producers.get(chain[-1])) is not None
                and producer.op_type in _AFFINE
                and len(self.dynamic(producer)) == 1
            ):
                branch.append(producer.op_type)
                chain.append(self.dynamic(producer)[0])
            branches.append(branch)
            chains.append(chain)
        path.append("{" + ", ".join(" <- ".join(b) for b in branches) + "}")
        for tensor in chains[0]:
            if all(tensor in chain for chain in chains[1:]):
                trimmed = [chain[: chain.index(tensor) + 1] for chain in chains]
                path[-1] = "{" + ", ".join(" <- ".join(b[: len(c)]) for b, c in zip(branches, trimmed)) + "}"
                return tensor, firsts, "shared"
        return chains[0][0], None, "different"


def find_head(model: onnx.ModelProto, head_output: str = "auto") -> HeadInfo:
    """Walk back from the classifier output to its last linear layer; the input of that layer is the feature.

    The walk passes what exporters put between the linear layer and the scores: probability maps,
    activations, bias/scale arithmetic by constants and BatchNormalization, layout ops (Transpose, Reshape,
    Squeeze, Flatten), spatial pooling (GlobalAveragePool, ReduceMean: a conv head's average), skl2onnx's
    two-class ``Concat(1 - p, p)``; several heads averaged over one tensor (distilled heads) give that tensor.
    """
    graph = model.graph
    producers, _, constants = _graph_maps(graph)
    output = find_head_output(model, head_output)
    walk = _Walk(producers, constants, tensor_shapes(model), len(graph.node) + 1)
    path: list[str] = []
    feature, node, how = walk.back(output, path)
    chain = " <- ".join(path) or "nothing"
    if node is not None:
        layer = f"{node.op_type} {node.name or node.output[0]!r}"
        if how == "shared":
            return HeadInfo(
                output,
                feature,
                node.op_type,
                f"the tensor every averaged head reads (first: {layer}) behind output {output!r} ({chain})",
            )
        return HeadInfo(
            output,
            feature,
            node.op_type,
            f"input of the last linear layer ({layer}) behind output {output!r} ({chain})",
        )
    input_names = [i.name for i in graph.input if i.name not in constants]
    if how == "input" and feature in input_names:
        return HeadInfo(
            output,
            feature,
            "input",
            f"the classifier output {output!r} is a linear function of the model input {feature!r}, "
            "so the preprocessed input itself is the feature",
        )
    if how == "different":
        raise OnnxMergeError(
            f"the heads averaged behind output {output!r} ({chain}) read different tensors; name the feature "
            "tensor in the recipe (run `onnxmerge inspect MODEL --all` to list candidates)."
        )
    raise OnnxMergeError(
        f"could not find the last linear layer behind output {output!r} (walked back through {chain}); "
        "name the feature tensor in the recipe (run `onnxmerge inspect MODEL --all` to list candidates)."
    )


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
            found.append(
                {"name": inp.name, "shape": shapes.get(inp.name), "op": "input", "suggested": inp.name == suggested}
            )
    found.sort(key=lambda c: not c["suggested"])
    return found


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
        "z": _z_view(metadata),
        "quantization": metadata.quantization if metadata else None,
    }
