"""Find a source's classifier by structure: the input of the last operator with learned weights on the path to
the class output ("auto" feature), walking back through every operator without learned weights."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import OnnxMergeError
from .topology import constants, producers, tensor_shapes

#: ops without learned weights that scores pass through after the classifier's last weighted op, without
#: changing "which feature": probability maps, activations, affine ops by constants, casts, layout ops,
#: pooling (a conv head's spatial average), Dropout/Identity, and quantisation steps.
_PASS_THROUGH = {
    *("Softmax", "LogSoftmax", "Sigmoid", "Hardmax", "ZipMap", "Normalizer", "Identity", "Dropout", "Cast"),
    *("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"),
    *("GlobalAveragePool", "ReduceMean", "ReduceSum", "AveragePool", "GlobalMaxPool", "MaxPool", "ReduceMax"),
    *("Relu", "Clip", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Celu", "Tanh", "Softplus"),
    *("Softsign", "Gelu", "PRelu", "ThresholdedRelu", "Neg"),
    *("BatchNormalization", "InstanceNormalization"),
    *("Add", "Sub", "Mul", "Div"),  # by constants only: a bias, a scale, a temperature (one dynamic input)
    *("QuantizeLinear", "DequantizeLinear"),  # QDQ: the scores quantised and dequantised again
}
#: affine ops between a shared tensor and each of several heads (LeViT's BatchNorm -> Linear per head)
_AFFINE = {"BatchNormalization", "Identity", "Dropout", "Cast", "Flatten", "Reshape", "Squeeze"}
#: ops whose only data input is the first; the others (a shape, axes, bounds) may be computed at run time from
#: shapes (Keras' torch-backend export computes a Reshape's shape with Shape -> Gather -> Concat) but carry no data
_DATA_FIRST = {
    *("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Dropout", "Clip", "Cast", "Identity"),
    *("ReduceMean", "ReduceSum", "ReduceMax", "QuantizeLinear", "DequantizeLinear"),
}
#: ops that turn a float tensor into the integers an integer op reads (its float input is the feature)
_QUANTIZERS = {"QuantizeLinear", "DynamicQuantizeLinear"}


@dataclass
class HeadInfo:
    """Where a source's classifier is: its output tensor, its last weighted node, and the feature it reads."""

    output: str  # the tensor holding class scores/probabilities [N, K]
    feature: str  # the tensor feeding the last weighted layer (float: before any quantisation)
    op: str  # that layer's op type (Gemm, MatMul, Conv, MatMulInteger, ...)
    reason: str  # a sentence for the user
    spatial: bool = False  # the head is a kxk convolution: its input map is read globally average-pooled


def _is_float_matrix(vi: onnx.ValueInfoProto) -> bool:
    tt = vi.type.tensor_type
    shape = [d for d in tt.shape.dim] if tt.HasField("shape") else None
    return vi.type.HasField("tensor_type") and tt.elem_type in (1, 10, 11, 16) and shape is not None and len(shape) == 2


def find_head_output(model: onnx.ModelProto, head_output: str = "auto") -> str:
    """The output tensor that holds the classifier's scores (``[N, K]``); ZipMap outputs map to their input."""
    graph = model.graph
    names = [o.name for o in graph.output]
    made_by = producers(graph)
    if head_output != "auto":
        if head_output not in names:
            raise OnnxMergeError(f"head_output {head_output!r} is not an output of the model; its outputs are {names}.")
        chosen = head_output
    else:
        scored = [o.name for o in graph.output if _is_float_matrix(o)]
        # skl2onnx's probabilities come as a ZipMap (a sequence of maps): the tensor before it is the head
        zipped = [
            made_by[o.name].input[0] for o in graph.output if getattr(made_by.get(o.name), "op_type", "") == "ZipMap"
        ]
        scored += [z for z in zipped if z not in scored]
        if not scored:
            shapes = tensor_shapes(model)
            scored = [o.name for o in graph.output if len(shapes.get(o.name) or []) == 2]
        if not scored:
            raise OnnxMergeError(
                f"no output of the model has a classifier shape [N, K] (outputs: {names}); "
                "set head_output to the output holding the class scores."
            )
        chosen = scored[0]
    node = made_by.get(chosen)
    if node is not None and node.op_type == "ZipMap":
        chosen = node.input[0]
    return chosen


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class _Walk:
    """One model's maps for walking back from a classifier output."""

    producers: dict[str, onnx.NodeProto]
    constants: set[str]
    shapes: dict[str, list | None]
    limit: int

    def dynamic(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i not in self.constants]

    def weighted_input(self, node: onnx.NodeProto) -> str | None:
        """The data input of an op with learned (constant) weights that can be a classifier, or None."""
        op, inputs, const = node.op_type, node.input, self.constants
        if op == "Gemm":
            return inputs[0] if not _attrs(node).get("transA", 0) and inputs[1] in const else None
        if op in ("MatMul", "MatMulInteger"):
            return inputs[0] if inputs[1] in const and inputs[0] not in const else None
        if op in ("LinearClassifier", "LinearRegressor") and node.domain == "ai.onnx.ml":  # scikit-learn linear models
            return inputs[0]
        if op in ("Conv", "ConvInteger") and inputs[1] in const and _attrs(node).get("group", 1) == 1:
            return inputs[0]
        if op in ("QLinearMatMul", "QLinearConv") and inputs[3] in const and _attrs(node).get("group", 1) == 1:
            # QOperator format: a feature only where a QuantizeLinear made its input from a float tensor
            return inputs[0] if self.float_input(inputs[0]) != inputs[0] else None
        return None

    def float_input(self, name: str) -> str:
        """The float tensor behind a quantised one (``QuantizeLinear`` / ``DynamicQuantizeLinear``'s input)."""
        node = self.producers.get(name)
        if node is not None and node.op_type in _QUANTIZERS and node.output[0] == name:
            return node.input[0]
        return name

    def kernel(self, node: onnx.NodeProto) -> list[int] | None:
        """A convolution's kernel size (from its attribute, else its weight's shape)."""
        kernel = _attrs(node).get("kernel_shape")
        if kernel is None:
            weight = self.shapes.get(node.input[1 if node.op_type != "QLinearConv" else 3])
            kernel = weight[2:] if weight is not None else None
        return list(kernel) if kernel is not None else None

    def is_scale(self, name: str, depth: int = 4) -> bool:
        """True where ``name`` is computed only from constants and the scales/zero points a
        ``DynamicQuantizeLinear`` measured (a dynamic int8 layer rescales its integer result by them)."""
        if name in self.constants:
            return True
        node = self.producers.get(name)
        if node is None or depth == 0:
            return False
        if node.op_type == "DynamicQuantizeLinear":
            return name != node.output[0]
        return node.op_type in ("Mul", "Cast", "Reshape", "Unsqueeze", "Sub") and all(
            self.is_scale(i, depth - 1) for i in node.input
        )

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
        """Walk back from ``name`` to the last weighted layer: ``(feature, that layer or None, where it stopped)``.

        ``path`` collects the ops walked, in order. Several heads averaged (``Add`` of two dynamic inputs)
        resolve to the one tensor they all read; skl2onnx's two-class ``Concat(1 - p, p)`` to ``p``; a dynamic
        int8 layer's rescaling (``Mul`` by the measured scale) to the integer result it rescales.
        """
        for _ in range(self.limit):
            node = self.producers.get(name)
            if node is None:
                return name, None, "input"
            op = node.op_type
            path.append(op)
            feature = self.weighted_input(node)
            if feature is not None:
                return self.float_input(feature), node, "linear"
            dynamic = self.dynamic(node)
            if op in _DATA_FIRST and node.input[0] in dynamic:
                dynamic = [node.input[0]]
            if op in ("Mul", "Div") and len(dynamic) == 2:  # a dynamic int8 layer's rescaling
                dynamic = [i for i in dynamic if not self.is_scale(i)] or dynamic
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
    """Walk back from the classifier output to its last layer with learned weights; that layer's input is the feature.

    Weighted layers: Gemm, MatMul, Conv of any kernel with group 1, their integer and QDQ forms
    (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv; a quantised input is traced to the float tensor
    it quantises), LinearClassifier. The walk passes every op without learned weights (``_PASS_THROUGH``),
    skl2onnx's two-class ``Concat(1 - p, p)``, and a dynamic int8 layer's rescaling; several heads averaged
    over one tensor (distilled heads) give that tensor. A kxk convolution head makes ``spatial`` true: its
    input map, globally average-pooled (as ``cut`` does with any map), is the closest linear feature.
    """
    graph = model.graph
    output = find_head_output(model, head_output)
    shapes = tensor_shapes(model)
    consts = constants(graph)
    walk = _Walk(producers(graph), consts, shapes, len(graph.node) + 1)
    path: list[str] = []
    feature, node, how = walk.back(output, path)
    chain = " <- ".join(path) or "nothing"
    if node is not None:
        return _found(output, feature, node, how, chain, walk)
    input_names = [i.name for i in graph.input if i.name not in consts]
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
    stopped = walk.producers.get(feature)
    at = f" at {stopped.op_type} {stopped.name or feature!r}" if stopped is not None else ""
    raise OnnxMergeError(
        f"could not find the last layer with learned weights behind output {output!r} (walked back through "
        f"{chain}, stopped{at}); name the feature tensor in the recipe (run `onnxmerge inspect MODEL --all` "
        "to list candidates)."
    )


def _found(output: str, feature: str, node: onnx.NodeProto, how: str, chain: str, walk: _Walk) -> HeadInfo:
    layer = f"{node.op_type} {node.name or node.output[0]!r}"
    if how == "shared":
        reason = f"the tensor every averaged head reads (first: {layer}) behind output {output!r} ({chain})"
        return HeadInfo(output, feature, node.op_type, reason)
    kernel = walk.kernel(node) if "Conv" in node.op_type else None
    if kernel and any(k != 1 for k in kernel):
        size = "x".join(str(k) for k in kernel)
        reason = (
            f"input map of the last layer with learned weights ({layer}, a {size} kernel) behind output "
            f"{output!r} ({chain}); the head is spatial, so its input map, globally average-pooled, is the "
            "closest linear feature"
        )
        return HeadInfo(output, feature, node.op_type, reason, spatial=True)
    return HeadInfo(
        output, feature, node.op_type, f"input of the last linear layer ({layer}) behind output {output!r} ({chain})"
    )
