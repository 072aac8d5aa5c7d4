"""Z's head: its input (the sources' features and the teachers' log-probabilities), the fitted
logistic regression, and the teachers' routed union; exported to plain ONNX ops and appended.

Only default-domain ops that exist in every opset onnxmerge accepts (MatMul, Add, Mul, Div, Sqrt, Max, Log, Exp,
Softmax, Concat, Gather, ArgMax): Z runs on minimal onnxruntime builds whatever opset its sources came with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..contract import FEATURES, LABEL, PROBABILITIES, ROUTE
from ..errors import OnnxMergeError
from ..graph.stitch import output_names
from .routing import LOG_FLOOR, Teachers, l2_blocks, to_probabilities

HEAD_INPUT = "head/input"


@dataclass
class HeadInput:
    """What the head sees: each source's feature block L2-normalised, then each teacher's log-probabilities.

    L2-normalising each block keeps a source with large activations from dominating; the teachers'
    log-probabilities let a linear head reproduce "route, then ask the owning source"
    (``log router(s|x) + log p_s(l|x)`` is linear in them). Measured in benchmarks/accuracy/modes.py.
    """

    sources: list[str]  # feature blocks, in order
    teachers: list[tuple[str, str]] = field(default_factory=list)  # (source name, head kind)

    def numpy(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The head input from the stitched graph's outputs, computed in float32 as Z does."""
        blocks = [l2_blocks([outputs[output_names(name)["feature"]] for name in self.sources])]
        for name, kind in self.teachers:
            p = self.probabilities(outputs, name, kind)
            blocks.append(np.log(np.maximum(p, np.float32(LOG_FLOOR))))
        return np.concatenate(blocks, axis=1)

    @staticmethod
    def probabilities(outputs: dict[str, np.ndarray], name: str, kind: str) -> np.ndarray:
        return to_probabilities(outputs[output_names(name)["head"]], kind)

    def block_names(self) -> list[str]:
        """The tensors ``nodes`` computes: each source's feature block L2-normalised, in ``sources`` order."""
        return [f"head/{name}/l2" for name in self.sources]

    def widths(self, width_of: Mapping[str, int]) -> list[int]:
        """The width of each block, from the widths of the stitched graph's outputs (by tensor name)."""
        return [width_of[output_names(n)["feature"]] for n in self.sources] + [
            width_of[output_names(n)["head"]] for n, _ in self.teachers
        ]

    def nodes(self, width_of: Mapping[str, int]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """ONNX nodes computing ``head/input`` (and ``head/NAME/probs`` per teacher) inside the stitched graph."""
        nodes, inits = [], [numpy_helper.from_array(np.array(1e-12, np.float32), "head/eps")]
        if self.teachers:  # an initializer no node reads makes onnxruntime print a warning on every load
            inits.append(numpy_helper.from_array(np.array(LOG_FLOOR, np.float32), "head/log_floor"))
        blocks = []
        for name in self.sources:
            f, p = output_names(name)["feature"], f"head/{name}"
            # sum of squares as a MatMul with ones: ReduceL2/ReduceSumSquare changed signature at opset 18
            inits.append(numpy_helper.from_array(np.ones((width_of[f], 1), np.float32), f"{p}/ones"))
            nodes += [
                helper.make_node("Mul", [f, f], [f"{p}/sq"], name=f"{p}/Mul"),
                helper.make_node("MatMul", [f"{p}/sq", f"{p}/ones"], [f"{p}/sumsq"], name=f"{p}/SumSq"),
                helper.make_node("Sqrt", [f"{p}/sumsq"], [f"{p}/norm"], name=f"{p}/Sqrt"),
                helper.make_node("Max", [f"{p}/norm", "head/eps"], [f"{p}/safe_norm"], name=f"{p}/Max"),
                helper.make_node("Div", [f, f"{p}/safe_norm"], [f"{p}/l2"], name=f"{p}/Div"),
            ]
            blocks.append(f"{p}/l2")
        for name, kind in self.teachers:
            nodes += log_probability_nodes(name, kind)
            blocks.append(f"head/{name}/logp")
        nodes.append(helper.make_node("Concat", blocks, [HEAD_INPUT], name="head/Concat", axis=1))
        return nodes, inits


def teacher_probability_nodes(name: str, kind: str) -> list[onnx.NodeProto]:
    """``NAME/head`` -> ``head/NAME/probs`` (Softmax of logits, Exp of log-probabilities, or as is)."""
    head, probs = output_names(name)["head"], f"head/{name}/probs"
    if kind == "logits":
        return [helper.make_node("Softmax", [head], [probs], name=f"{name}/Softmax", axis=1)]
    if kind == "log-probabilities":
        return [helper.make_node("Exp", [head], [probs], name=f"{name}/Exp")]
    return [helper.make_node("Identity", [head], [probs], name=f"{name}/Probs")]


def log_probability_nodes(name: str, kind: str) -> list[onnx.NodeProto]:
    """``NAME/head`` -> ``head/NAME/probs`` -> ``head/NAME/logp`` (floored at LOG_FLOOR, as ``HeadInput.numpy``)."""
    p = f"head/{name}"
    return teacher_probability_nodes(name, kind) + [
        helper.make_node("Max", [f"{p}/probs", "head/log_floor"], [f"{p}/floored"], name=f"{p}/Floor"),
        helper.make_node("Log", [f"{p}/floored"], [f"{p}/logp"], name=f"{p}/Log"),
    ]


FEW_SHOT_C, MANY_SHOT_C, MANY_SHOT = 0.1, 1.0, 50
#: a column's scale is at least this fraction of its largest |value| (fit_head); 1e-2 kept parity with a 3x
#: margin on the near-constant teachers of benchmarks/parity/head_numerics.py, 3e-2 with 20x, at the same accuracy
SCALE_FLOOR = 3e-2


def select_C(labels: np.ndarray) -> float:
    """``C`` for the head from how many labelled images a typical class has.

    The best C depends on the number of labels: on Fashion-MNIST with 5 per class 0.1 beats 1.0 by 1.5
    points, on digits with 100 per class 1.0 beats 0.1 by 4 points: 0.1 below 50 images in the median class,
    1.0 from 50 up (the median, so that a new class of 5 images does not switch a data-rich head to the
    few-shot setting). Fit mode uses it below 5 labels per class; from there the build's own
    cross-validation picks between the two (``estimate.choose_C``: one more 5-fold run, not a grid).
    """
    _, counts = np.unique(labels, return_counts=True)
    return MANY_SHOT_C if np.median(counts) >= MANY_SHOT else FEW_SHOT_C


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    widths: list[int] | None = None,
    C: float = 1.0,
    class_weight: str | None = "balanced",
    sample_weight: np.ndarray | None = None,
    max_iter: int = 3000,
    random_state: int = 0,
    tol: float = 1e-4,
    scale_floor: float | None = None,
) -> Pipeline:
    """Multinomial logistic regression on standardised features, each block weighted equally.

    After standardisation every column has unit variance, so a 1280-wide block would outweigh a 10-wide
    one 128 to 1 under the L2 penalty; scaling each block by sqrt(D / (blocks x width)) gives every block
    the same total variance (the overall variance stays that of plain standardisation, so ``C`` means what it
    did). ``class_weight="balanced"`` by default so that a new class learned from a handful of
    images is not drowned by classes with hundreds (the stage 2 case).
    ``tol`` is the solver's stopping tolerance (``estimate.FOLD_TOL`` for cross-validation folds).

    Each column's scale is floored at ``scale_floor`` (default ``SCALE_FLOOR``) times its largest magnitude:
    a near-constant column (a teacher that gives every image p = 0.1 +- 1e-4, or a saturated one) would
    otherwise get a weight so large that one float32 rounding step in Z's head input (onnxruntime's Log or
    L2 norm vs numpy's) moves the probabilities by more than the parity bound (benchmarks/parity/head_numerics.py).
    """
    scale_floor = SCALE_FLOOR if scale_floor is None else scale_floor
    classes = np.unique(labels)
    if len(classes) < 2:
        raise OnnxMergeError(
            f"the training data has a single class ({classes[0] if len(classes) else 'none'}); "
            "a classifier needs at least two classes, so add images of another class."
        )
    if not np.isfinite(features).all():
        raise OnnxMergeError(
            "the sources produced NaN or infinite features on the training images; check the "
            "sources' preprocessing (scale/mean/std) in the recipe."
        )
    x = features.astype(np.float64)
    scaler = StandardScaler().fit(x)
    if scale_floor:  # a column's spread below float32's resolution of its values is rounding noise, not signal
        scaler.scale_ = np.maximum(scaler.scale_, scale_floor * np.abs(x).max(axis=0))
    widths = widths or [x.shape[1]]
    for start, stop in block_spans(widths):  # equal total variance per block, same total as plain standardising
        scaler.scale_[start:stop] *= np.sqrt((stop - start) * len(widths) / x.shape[1])
    model = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=random_state, tol=tol)
    model.fit(scaler.transform(x), labels, sample_weight=sample_weight)
    return Pipeline([("scaler", scaler), ("logistic", model)])


def block_spans(widths: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each block of a head input (``HeadInput.widths`` order: features, then teachers)."""
    stops = np.cumsum(widths)
    return [(int(stop - width), int(stop)) for stop, width in zip(stops, widths)]


def folded_weights(pipeline: Pipeline, centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(W [D, K], b [K])`` with the scaler folded in: ``softmax((x - centre) @ W + b) == predict_proba(x)``.

    Folded in float64 and cast once. ``centre`` (float32, default 0) is subtracted in the graph before the
    MatMul: with the columns' means there, a near-constant column's huge weight multiplies a small
    difference instead of cancelling against a huge bias in float32; ``b`` makes up, in float64, for the
    means having been rounded to float32.
    """
    scaler: StandardScaler = pipeline[0]
    model: LogisticRegression = pipeline[-1]
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: sklearn stores one logit; softmax([0, z]) is its sigmoid pair
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    scale = scaler.scale_
    centre64 = np.zeros_like(scaler.mean_) if centre is None else centre.astype(np.float64)
    weights = (coef / scale).T
    bias = intercept + (coef * ((centre64 - scaler.mean_) / scale)).sum(axis=1)
    return weights.astype(np.float32), bias.astype(np.float32)


def _linear(x: str, pipeline: Pipeline, prefix: str, out: str) -> tuple[list, list]:
    """``x`` -> Sub(means) -> MatMul + Add -> Softmax: the fitted pipeline in plain ONNX ops (``folded_weights``)."""
    centre = pipeline[0].mean_.astype(np.float32)
    weights, bias = folded_weights(pipeline, centre)
    inits = [
        numpy_helper.from_array(weights, f"{prefix}/W"),
        numpy_helper.from_array(bias, f"{prefix}/b"),
        numpy_helper.from_array(centre, f"{prefix}/mean"),
    ]
    centre_node = helper.make_node("Sub", [x, f"{prefix}/mean"], [f"{prefix}/centred"], name=f"{prefix}/Centre")
    x = f"{prefix}/centred"
    return (
        [centre_node]
        + [
            helper.make_node("MatMul", [x, f"{prefix}/W"], [f"{prefix}/matmul"], name=f"{prefix}/MatMul"),
            helper.make_node("Add", [f"{prefix}/matmul", f"{prefix}/b"], [f"{prefix}/logits"], name=f"{prefix}/Add"),
            helper.make_node("Softmax", [f"{prefix}/logits"], [out], name=f"{prefix}/Softmax", axis=1),
        ],
        inits,
    )


def _finish(
    model: onnx.ModelProto,
    nodes: list,
    inits: list,
    classes: list[str],
    outputs: list[str],
    extra: list[onnx.ValueInfoProto] = (),
    features_width: int | None = None,
) -> onnx.ModelProto:
    """Append ``nodes`` + ArgMax + Gather(class names); Z's outputs: label, probabilities, ``outputs``."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    graph.initializer.extend(
        inits + [helper.make_tensor("head/classes", TensorProto.STRING, [len(classes)], [c.encode() for c in classes])]
    )
    graph.node.extend(
        nodes
        + [
            helper.make_node("ArgMax", [PROBABILITIES], ["head/argmax"], name="head/ArgMax", axis=1, keepdims=0),
            helper.make_node("Gather", ["head/classes", "head/argmax"], [LABEL], name="head/Gather", axis=0),
        ]
    )
    kept = [o for o in graph.output if o.name in outputs]
    for dims in [o.type.tensor_type.shape.dim for o in kept if o.name == FEATURES and features_width]:
        dims[1].dim_value = features_width  # the stitched graph's Concat has no static width; the head knows it
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABEL, TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", len(classes)]),
        ]
        + kept
        + list(extra)
    )
    return result


def _features_width(head_input: HeadInput, width_of: Mapping[str, int]) -> int:
    return sum(head_input.widths(width_of)[: len(head_input.sources)])  # Z's ``features``: every source's block


def append_head(
    model: onnx.ModelProto,
    head_input: HeadInput,
    pipeline: Pipeline,
    width_of: Mapping[str, int],
    outputs: list[str] = (FEATURES,),
) -> onnx.ModelProto:
    """Mode "fit": ``head/input`` -> Sub + MatMul + Add + Softmax -> ArgMax + Gather(labels)."""
    nodes, inits = head_input.nodes(width_of)
    more, more_inits = _linear(HEAD_INPUT, pipeline, "head", PROBABILITIES)
    classes, width = [str(c) for c in pipeline.classes_], _features_width(head_input, width_of)
    return _finish(model, nodes + more, inits + more_inits, classes, outputs, (), width)


@dataclass
class TeachersHead:
    """Mode "teachers": Z's probabilities from the teachers' own heads, routed.

    With a ``router`` (fitted on ``head/input``; classes 0..S-1 are the teachers, then any new classes):
    ``P(l) = sum over teachers s owning l of router(s|x) * p_s(l|x)``, and a new class's probability is
    its router column. Without one (no pool to learn routing from): the softmax over all teachers'
    concatenated logits (log-probabilities where a head only gives probabilities), so a source's share is
    ``exp(energy_s) / sum exp(energy)`` with ``energy_s = logsumexp(logits_s)``.
    """

    head_input: HeadInput  # its teachers, in order, are the teachers routed between
    space: Teachers  # their labels and union
    router: Pipeline | None = None
    new_classes: list[str] = field(default_factory=list)

    @property
    def teachers(self) -> list[tuple[str, str]]:
        return self.head_input.teachers

    @property
    def classes(self) -> list[str]:
        return self.space.union + self.new_classes

    def numpy(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities [N, K], route [N, R] or None)`` in float64 from the stitched graph's outputs."""
        probs = [HeadInput.probabilities(outputs, n, k).astype(np.float64) for n, k in self.teachers]
        if self.router is None:
            scores = np.concatenate(
                [
                    np.log(np.maximum(p, LOG_FLOOR))
                    if k != "logits"
                    else outputs[output_names(n)["head"]].astype(np.float64)
                    for p, (n, k) in zip(probs, self.teachers)
                ],
                axis=1,
            )
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)) @ self.space.merge_matrix(), None
        route = self.router.predict_proba(self.head_input.numpy(outputs).astype(np.float64)) @ self._route_columns()
        joint = np.concatenate([route[:, [i]] * p for i, p in enumerate(probs)], axis=1) @ self.space.merge_matrix()
        return np.concatenate([joint, route[:, len(self.teachers) :]], axis=1), route

    def _route_columns(self) -> np.ndarray:
        """0/1 matrix from the router's classes to all router columns (teachers, then new classes): a teacher
        that no pool image was routed to is not a class of the fitted router and gets probability 0."""
        columns = np.zeros((len(self.router.classes_), len(self.teachers) + len(self.new_classes)), np.float32)
        columns[np.arange(len(self.router.classes_)), np.asarray(self.router.classes_, int)] = 1
        return columns

    def _append_softmax(
        self, model: onnx.ModelProto, width_of: Mapping[str, int], outputs: list[str]
    ) -> onnx.ModelProto:
        """``append`` without a router: the softmax over the teachers' log-probabilities, merged to the union."""
        inits, nodes, scores = [numpy_helper.from_array(self.space.merge_matrix(), "head/merge")], [], []
        for name, kind in self.teachers:
            if kind == "logits":
                scores.append(output_names(name)["head"])
            else:
                nodes += log_probability_nodes(name, kind)
                scores.append(f"head/{name}/logp")
        inits.append(numpy_helper.from_array(np.array(LOG_FLOOR, np.float32), "head/log_floor"))
        nodes += [
            helper.make_node("Concat", scores, ["head/scores"], name="head/ScoresConcat", axis=1),
            helper.make_node("Softmax", ["head/scores"], ["head/joint"], name="head/Softmax", axis=1),
            helper.make_node("MatMul", ["head/joint", "head/merge"], [PROBABILITIES], name="head/Merge"),
        ]
        return _finish(model, nodes, inits, self.classes, outputs, (), _features_width(self.head_input, width_of))

    def append(
        self, model: onnx.ModelProto, width_of: Mapping[str, int], outputs: list[str] = (FEATURES,)
    ) -> onnx.ModelProto:
        if self.router is None:
            return self._append_softmax(model, width_of, outputs)
        nodes, more = self.head_input.nodes(width_of)
        inits = [numpy_helper.from_array(self.space.merge_matrix(), "head/merge"), *more]
        linear, linear_inits = _linear(HEAD_INPUT, self.router, "head/router", "head/router/probabilities")
        nodes += linear + [
            helper.make_node(
                "MatMul", ["head/router/probabilities", "head/route_columns"], [ROUTE], name="head/RouteColumns"
            )
        ]
        inits += linear_inits + [numpy_helper.from_array(self._route_columns(), "head/route_columns")]
        weighted = []
        for i, (name, _) in enumerate(self.teachers):  # head_input.nodes made head/NAME/probs
            inits.append(numpy_helper.from_array(np.array([i], np.int64), f"head/{name}/route_index"))
            nodes += [
                helper.make_node(
                    "Gather",
                    [ROUTE, f"head/{name}/route_index"],
                    [f"head/{name}/route"],
                    name=f"head/{name}/Route",
                    axis=1,
                ),
                helper.make_node(
                    "Mul",
                    [f"head/{name}/route", f"head/{name}/probs"],
                    [f"head/{name}/joint"],
                    name=f"head/{name}/Joint",
                ),
            ]
            weighted.append(f"head/{name}/joint")
        nodes += [
            helper.make_node("Concat", weighted, ["head/joint"], name="head/JointConcat", axis=1),
            helper.make_node("MatMul", ["head/joint", "head/merge"], ["head/union"], name="head/Merge"),
        ]
        if self.new_classes:
            start = len(self.teachers)
            new_index = np.arange(start, start + len(self.new_classes), dtype=np.int64)
            inits.append(numpy_helper.from_array(new_index, "head/new_index"))
            nodes += [
                helper.make_node("Gather", [ROUTE, "head/new_index"], ["head/new"], name="head/New", axis=1),
                helper.make_node("Concat", ["head/union", "head/new"], [PROBABILITIES], name="head/All", axis=1),
            ]
        else:
            nodes.append(helper.make_node("Identity", ["head/union"], [PROBABILITIES], name="head/Probabilities"))
        routes = len(self.teachers) + len(self.new_classes)
        route_out = helper.make_tensor_value_info(ROUTE, TensorProto.FLOAT, ["N", routes])
        width = _features_width(self.head_input, width_of)
        return _finish(model, nodes, inits, self.classes, outputs, [route_out], width)
