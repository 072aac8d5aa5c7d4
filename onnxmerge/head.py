"""Fit the logistic-regression head, export it to plain ONNX ops and append it to the stitched graph."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .errors import OnnxMergeError
from .stitch import FEATURES

LABEL = "label"
PROBABILITIES = "probabilities"


def fit_head(features: np.ndarray, labels: np.ndarray, C: float = 1.0, class_weight: str | None = "balanced",
             max_iter: int = 2000, random_state: int = 0) -> Pipeline:
    """Multinomial logistic regression on standardised features.

    ``class_weight="balanced"`` by default so that a new class learned from a handful of images is not
    drowned by classes with hundreds (the stage 2 case).
    """
    classes = np.unique(labels)
    if len(classes) < 2:
        raise OnnxMergeError(
            f"the training data has a single class ({classes[0] if len(classes) else 'none'}); "
            "a classifier needs at least two classes, so add images of another class."
        )
    if not np.isfinite(features).all():
        raise OnnxMergeError("the sources produced NaN or infinite features on the training images; check the "
                             "sources' preprocessing (scale/mean/std) in the recipe.")
    pipeline = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=random_state),
    )
    pipeline.fit(features.astype(np.float64), labels)
    return pipeline


def folded_weights(pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """``(W [D, K], b [K])`` with the scaler folded in: softmax(x @ W + b) == pipeline.predict_proba(x)."""
    scaler: StandardScaler = pipeline[0]
    model: LogisticRegression = pipeline[-1]
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: sklearn stores one logit; softmax([0, z]) is its sigmoid pair
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    scale = scaler.scale_
    weights = (coef / scale).T
    bias = intercept - (coef * (scaler.mean_ / scale)).sum(axis=1)
    return weights.astype(np.float32), bias.astype(np.float32)


def append_head(model: onnx.ModelProto, pipeline: Pipeline, outputs: list[str] = (FEATURES,)) -> onnx.ModelProto:
    """Append MatMul + Add + Softmax + ArgMax + Gather(labels) after ``features``.

    Only default-domain ops (no ai.onnx.ml, no ZipMap), so Z runs on minimal onnxruntime builds.
    Z's outputs become ``label`` (string ``[N]``), ``probabilities`` (``[N, K]``) and ``outputs``.
    """
    weights, bias = folded_weights(pipeline)
    classes = [str(c) for c in pipeline.classes_]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    graph.initializer.extend([
        numpy_helper.from_array(weights, "head/W"),
        numpy_helper.from_array(bias, "head/b"),
        helper.make_tensor("head/classes", TensorProto.STRING, [len(classes)], [c.encode() for c in classes]),
    ])
    graph.node.extend([
        helper.make_node("MatMul", [FEATURES, "head/W"], ["head/matmul"], name="head/MatMul"),
        helper.make_node("Add", ["head/matmul", "head/b"], ["head/logits"], name="head/Add"),
        helper.make_node("Softmax", ["head/logits"], [PROBABILITIES], name="head/Softmax", axis=1),
        helper.make_node("ArgMax", [PROBABILITIES], ["head/argmax"], name="head/ArgMax", axis=1, keepdims=0),
        helper.make_node("Gather", ["head/classes", "head/argmax"], [LABEL], name="head/Gather", axis=0),
    ])
    kept = [o for o in graph.output if o.name in outputs]
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(LABEL, TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", len(classes)]),
    ] + kept)
    return result
