"""Z's "unknown" answer: how far an image lies from every image the build learned from, in Z's own features.

The distance (``Prototypes``) is 1 - the cosine similarity of the head's L2-normalised source features to
the nearest of a bounded bank of k-means prototypes of the build's images (labelled and pool): kNN on
normalised features (Sun et al. 2022) with the bank kept small so that Z's size and time stay small. It
needs no labels, so fit, teachers and fit + pool modes compute it the same way. benchmarks/unknown_families.py
measured it against maximum softmax probability, energy, Mahalanobis and ViM (benchmarks/RESULTS.md).

``unknown_score`` is that distance calibrated on the user's own images: the share of the build's images
(each scored by a bank fitted without it: cross-fitted) that lie closer than this image, interpolated
between 100 quantiles. So ``unknown_score > 0.95`` means "farther than 95% of your own images", a
threshold of 0.95 keeps about 95% of images like the user's, and the same number means the same in every Z.
Everything is default-domain ONNX (MatMul, Sub, Mul, Max, Min, ReduceMax, Greater, Where, Reshape), so Z
runs wherever it ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.cluster import KMeans
from sklearn.model_selection import KFold

from ..contract import LABEL, UNKNOWN, UNKNOWN_SCORE
from ..errors import OnnxMergeError
from .head import HEAD_INPUT

DISTANCE = "unknown/distance"  # the uncalibrated distance inside Z, [N, 1] (the parity check reads it)
AUTO_KEEP = 0.95  # unknown = "auto": the threshold that keeps 95% of the user's own images
PROTOTYPES = 64  # k-means prototypes in the bank (tuned: benchmarks/unknown_families.py)
FOLDS = 5
LEVELS = 101  # quantiles 0%, 1%, ..., 100% of the cross-fitted distances
MIN_IMAGES = 20  # fewer images than this cannot calibrate a threshold


def check_setting(value) -> float | None:
    """``[head] unknown``: "off" -> None, "auto" -> 0.95, a number in (0, 1) -> itself; else one sentence."""
    if value == "off" or value is None:
        return None
    if value == "auto":
        return AUTO_KEEP
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise OnnxMergeError(
        f'head.unknown must be "off", "auto" or a number between 0 and 1 (the share of your own images to '
        f"keep, e.g. 0.99), got {value!r}."
    )


def _fit_bank(x: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``[D, M]``: the unit-length k-means prototypes of unit-length rows ``x`` (all of them if few)."""
    if len(x) <= size:
        centres = x
    else:
        centres = KMeans(size, n_init=1, random_state=seed).fit(x).cluster_centers_
    return (centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)).T


@dataclass
class Prototypes:
    """The fitted score: ``bank`` ``[D, M]`` over the head input's columns (zero rows: columns not used),
    ``norm`` the constant norm of a head-input row's source blocks, ``levels`` the calibration quantiles."""

    bank: np.ndarray
    norm: float
    levels: np.ndarray
    threshold: float
    images: int

    def distance(self, head_input: np.ndarray) -> np.ndarray:
        """1 - cosine similarity to the nearest prototype, in float32 as Z computes it."""
        return np.float32(1) - (head_input.astype(np.float32) @ self.constants()["bank"]).max(axis=1)

    def score(self, head_input: np.ndarray) -> np.ndarray:
        """``unknown_score`` of head-input rows."""
        return self.level(self.distance(head_input))

    def level(self, distance: np.ndarray) -> np.ndarray:
        """The calibrated level of distances, in float32 with Z's arithmetic (``np.interp`` over the levels)."""
        c = self.constants()
        part = (distance.astype(np.float32)[:, None] - c["levels"]) * c["inverse_steps"]
        return (np.minimum(np.maximum(part, np.float32(0)), np.float32(1)) @ c["weights"])[:, 0]

    def constants(self) -> dict[str, np.ndarray]:
        """The float32 tensors Z holds (``append_unknown``)."""
        steps = np.diff(self.levels)
        return {
            "bank": (self.bank / self.norm).astype(np.float32),
            "levels": self.levels[None, :-1].astype(np.float32),
            "inverse_steps": (1 / steps)[None].astype(np.float32),
            "weights": np.full((len(steps), 1), 1 / len(steps), np.float32),
        }

    def raw_threshold(self) -> float:
        """The distance above which Z answers unknown."""
        return float(np.interp(self.threshold, np.linspace(0, 1, len(self.levels)), self.levels))

    def metadata(self) -> dict:
        """What Z's ``onnxmerge.unknown`` metadata holds (``contract.UNKNOWN_KEY``; ``inspect`` shows it)."""
        return {
            "threshold": self.threshold,
            "keeps": self.threshold,
            "distance": self.raw_threshold(),
            "score": f"1 - cosine similarity to the nearest of {self.bank.shape[1]} prototypes, calibrated",
            "calibration_images": self.images,
            "folds": FOLDS,
        }


def fit_unknown(head_input: np.ndarray, columns: int, blocks: int, keep: float) -> Prototypes:
    """The score on the build's images: ``head_input`` rows (labelled and pool), its first ``columns`` being
    ``blocks`` L2-normalised source blocks; ``keep`` the share of such images the threshold keeps."""
    if len(head_input) < MIN_IMAGES:
        raise OnnxMergeError(
            f"[head] unknown needs at least {MIN_IMAGES} images to calibrate its threshold on, the build has "
            f'{len(head_input)}; add images (train or unlabeled), or set unknown = "off".'
        )
    x = head_input[:, :columns].astype(np.float64) / np.sqrt(blocks)
    distances = np.empty(len(x))
    for fit_rows, held in KFold(FOLDS, shuffle=True, random_state=0).split(x):
        bank = _fit_bank(x[fit_rows], PROTOTYPES)
        distances[held] = 1 - (x[held] @ bank).max(axis=1)
    levels = np.quantile(distances, np.linspace(0, 1, LEVELS))
    levels = levels + np.arange(LEVELS) * 1e-9  # strictly increasing: ties would divide by zero
    full = _fit_bank(x, PROTOTYPES)
    bank = np.zeros((head_input.shape[1], full.shape[1]))
    bank[:columns] = full
    return Prototypes(bank, float(np.sqrt(blocks)), levels, keep, len(x))


def _reduce_max(x: str, out: str, opset: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """ReduceMax over axis 1 keeping it: its axes moved from an attribute to an input at opset 18."""
    if opset >= 18:
        axes = numpy_helper.from_array(np.array([1], np.int64), "unknown/axes")
        return helper.make_node("ReduceMax", [x, "unknown/axes"], [out], name="unknown/Max", keepdims=1), [axes]
    return helper.make_node("ReduceMax", [x], [out], name="unknown/Max", axes=[1], keepdims=1), []


def append_unknown(model: onnx.ModelProto, score: Prototypes, classes: list[str]) -> onnx.ModelProto:
    """Z with ``unknown_score`` (from ``head/input``) and ``label`` = "unknown" above the threshold."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    opset = next((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), 1)
    reduce, axes = _reduce_max("unknown/similarity", "unknown/nearest", opset)
    inits = axes + [numpy_helper.from_array(v, f"unknown/{k}") for k, v in score.constants().items()]
    inits += [
        numpy_helper.from_array(np.array(1.0, np.float32), "unknown/one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "unknown/zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "unknown/flat"),
        numpy_helper.from_array(np.array(score.threshold, np.float32), "unknown/threshold"),
        numpy_helper.from_array(np.array(len(classes), np.int64), "unknown/index"),
    ]
    nodes = [
        helper.make_node("MatMul", [HEAD_INPUT, "unknown/bank"], ["unknown/similarity"], name="unknown/Similarity"),
        reduce,
        helper.make_node("Sub", ["unknown/one", "unknown/nearest"], [DISTANCE], name="unknown/Distance"),
        # the calibrated level: linear interpolation between the quantiles, as np.interp
        helper.make_node("Sub", [DISTANCE, "unknown/levels"], ["unknown/above"], name="unknown/Above"),
        helper.make_node("Mul", ["unknown/above", "unknown/inverse_steps"], ["unknown/part"], name="unknown/Part"),
        helper.make_node("Max", ["unknown/part", "unknown/zero"], ["unknown/floor"], name="unknown/Floor"),
        helper.make_node("Min", ["unknown/floor", "unknown/one"], ["unknown/clipped"], name="unknown/Clip"),
        helper.make_node("MatMul", ["unknown/clipped", "unknown/weights"], ["unknown/level"], name="unknown/Level"),
        helper.make_node("Reshape", ["unknown/level", "unknown/flat"], [UNKNOWN_SCORE], name="unknown/Score"),
        helper.make_node("Greater", [UNKNOWN_SCORE, "unknown/threshold"], ["unknown/is"], name="unknown/Is"),
        helper.make_node(
            "Where", ["unknown/is", "unknown/index", "head/argmax"], ["unknown/answer"], name="unknown/Answer"
        ),
    ]
    label = next(n for n in graph.node if LABEL in n.output)
    label.input[1] = "unknown/answer"  # Gather(classes + ["unknown"], answer)
    names = next(i for i in graph.initializer if i.name == label.input[0])
    names.CopyFrom(helper.make_tensor(names.name, TensorProto.STRING, [len(classes) + 1], [*classes, UNKNOWN]))
    graph.initializer.extend(inits)
    position = list(graph.node).index(label)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    graph.output.append(helper.make_tensor_value_info(UNKNOWN_SCORE, TensorProto.FLOAT, ["N"]))
    return result
