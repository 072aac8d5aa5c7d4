"""Z's "unknown" answer: how far an image lies from every image the build learned from, in Z's own features.

The distance (``Prototypes``) is kNN on normalised features (Sun et al. 2022) with a bounded bank. Each
source's feature block is taken twice, L2-normalised as it is and centred on the build's images first, and
the distance is 1 - the cosine similarity of the joined blocks to the nearest of ``PROTOTYPES`` k-means
prototypes of the build's images (labelled and pool). The two views catch different junk: on a tuning seed
(``benchmarks.unknown.families``), the plain view tells a held-out clothes class from the known ones
(AUROC 0.978) but not far junk (0.911: every ReLU feature vector points into the same orthant), the centred
view the reverse (0.962, 0.967), both together 0.977 and 0.975. The bank keeps Z's size and time small, and
it needs no labels, so fit, teachers and fit + pool modes compute it the same way. The families measured
against it (maximum softmax probability, energy, Mahalanobis, ViM) are in benchmarks/RESULTS.md.

``unknown_score`` is that distance calibrated on the user's own images: the share of the build's images
(each scored by a bank fitted without it: cross-fitted) that lie closer than this image, interpolated
between 100 quantiles. So ``unknown_score > 0.95`` means "farther than 95% of your own images", a
threshold of 0.95 keeps about 95% of images like the user's, and the same number means the same in every Z.
Everything is default-domain ONNX (Sub, Mul, MatMul, Sqrt, Max, Div, Concat, ReduceMax, Min, Greater,
Where), so Z runs wherever it ran.
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
from ..graph.topology import default_opset

DISTANCE = "unknown/distance"  # the uncalibrated distance inside Z, [N, 1] (the parity check reads it)
PROTOTYPES = 64  # k-means prototypes in the bank (benchmarks.unknown.families: 256 or all images gained nothing)
FOLDS = 5
LEVELS = 101  # quantiles 0%, 1%, ..., 100% of the cross-fitted distances
MIN_IMAGES = 20  # fewer images than this cannot calibrate a threshold
EPS = np.float32(1e-12)  # the floor of a block's norm (an image exactly at the mean)


def indicator(widths: list[int]) -> np.ndarray:
    """``[D, blocks]`` float32: 1 where a column belongs to a block (block-wise sums as one MatMul)."""
    owner = np.repeat(np.arange(len(widths)), widths)
    return (owner[:, None] == np.arange(len(widths))[None]).astype(np.float32)


def unit_rows(joined: np.ndarray, mean: np.ndarray, widths: list[int]) -> np.ndarray:
    """Each block of ``joined`` minus its ``mean``, L2-normalised, in float32 with Z's arithmetic: the blocks'
    sums of squares as one MatMul with ``indicator``, their norms spread back with its transpose."""
    ones = indicator(widths)
    centred = joined.astype(np.float32) - mean.astype(np.float32)
    norm = np.sqrt((centred * centred) @ ones)
    return centred / (np.maximum(norm, EPS) @ ones.T)


def views(joined: np.ndarray, mean: np.ndarray, widths: list[int]) -> np.ndarray:
    """The two views of every block, joined: L2-normalised as it is, then centred on ``mean`` first."""
    return np.concatenate([unit_rows(joined, np.zeros_like(mean), widths), unit_rows(joined, mean, widths)], axis=1)


def _fit_bank(x: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``[D, M]``: the unit-length k-means prototypes of unit-length rows ``x`` (all of them if few)."""
    centres = x if len(x) <= size else KMeans(size, n_init=1, random_state=seed).fit(x).cluster_centers_
    return (centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)).T


@dataclass
class Prototypes:
    """The fitted score: ``blocks`` (the source feature tensors inside Z it reads, ``widths`` wide), the
    ``mean`` of them joined, the ``bank`` ``[2D, M]`` of unit-length prototypes of both views, the
    calibration ``levels`` and the ``threshold``."""

    blocks: list[str]
    widths: list[int]
    mean: np.ndarray
    bank: np.ndarray
    levels: np.ndarray
    threshold: float
    images: int

    def distance(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """1 - cosine similarity to the nearest prototype, from the blocks in ``outputs``, as Z computes it."""
        rows = views(np.concatenate([outputs[b] for b in self.blocks], axis=1), self.mean, self.widths)
        return np.float32(1) - (rows @ self.constants()["bank"]).max(axis=1)

    def score(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """``unknown_score`` from the source feature blocks in ``outputs``."""
        return self.level(self.distance(outputs))

    def level(self, distance: np.ndarray) -> np.ndarray:
        """The calibrated level of distances, in float32 with Z's arithmetic (``np.interp`` over the levels)."""
        c = self.constants()
        part = (distance.astype(np.float32)[:, None] - c["levels"]) * c["inverse_steps"]
        return (np.minimum(np.maximum(part, np.float32(0)), np.float32(1)) @ c["weights"]) / c["steps"]

    def constants(self) -> dict[str, np.ndarray]:
        """The float32 tensors Z holds (``append_unknown``); the bank carries the 1 / sqrt(2 x blocks) that makes
        a joined row unit-length."""
        steps = np.diff(self.levels)
        return {
            "bank": (self.bank / np.sqrt(2 * len(self.blocks))).astype(np.float32),
            "levels": self.levels[None, :-1].astype(np.float32),
            "inverse_steps": (1 / steps)[None].astype(np.float32),
            # 1-D: the MatMul gives [N]; dividing the count of whole steps keeps the top exactly 1
            "weights": np.ones(len(steps), np.float32),
            "steps": np.array(len(steps), np.float32),
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
            "score": f"1 - cosine similarity of the features (as they are and centred) to the nearest of "
            f"{self.bank.shape[1]} prototypes, calibrated",
            "calibration_images": self.images,
            "folds": FOLDS,
        }


def fit_unknown(names: list[str], blocks: list[np.ndarray], keep: float) -> Prototypes:
    """The score on the build's images: ``blocks`` are the source feature tensors ``names`` on every image the
    build learned from (labelled and pool); ``keep`` the share of such images the threshold keeps."""
    images = len(blocks[0]) if blocks else 0
    if images < MIN_IMAGES:
        raise OnnxMergeError(
            f"[head] unknown needs at least {MIN_IMAGES} images to calibrate its threshold on, the build has "
            f'{images}; add images (train or unlabeled), or set unknown = "off".'
        )
    joined = np.concatenate(blocks, axis=1)
    mean, widths = joined.astype(np.float64).mean(axis=0).astype(np.float32), [b.shape[1] for b in blocks]
    x = views(joined, mean, widths).astype(np.float64) / np.sqrt(2 * len(blocks))
    distances = np.empty(len(x))
    for fit_rows, held in KFold(FOLDS, shuffle=True, random_state=0).split(x):
        distances[held] = 1 - (x[held] @ _fit_bank(x[fit_rows], PROTOTYPES)).max(axis=1)
    levels = np.quantile(distances, np.linspace(0, 1, LEVELS))
    levels = levels + np.arange(LEVELS) * 1e-9  # strictly increasing: ties would divide by zero
    return Prototypes(list(names), widths, mean, _fit_bank(x, PROTOTYPES), levels, keep, images)


def _reduce_max(x: str, out: str, opset: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """ReduceMax over axis 1 keeping it: its axes moved from an attribute to an input at opset 18."""
    if opset >= 18:
        axes = numpy_helper.from_array(np.array([1], np.int64), "unknown/axes")
        return helper.make_node("ReduceMax", [x, "unknown/axes"], [out], name="unknown/Max", keepdims=1), [axes]
    return helper.make_node("ReduceMax", [x], [out], name="unknown/Max", axes=[1], keepdims=1), []


def _normalise_nodes(joined: str, mean: np.ndarray | None, widths: list[int], p: str) -> tuple[list, list]:
    """``unit_rows`` in ONNX, ``joined`` -> ``{p}/unit``: 6-7 nodes whatever the number of blocks."""
    ones = indicator(widths)
    inits = [numpy_helper.from_array(ones, f"{p}/indicator"), numpy_helper.from_array(ones.T.copy(), f"{p}/spread")]
    nodes = []
    if mean is not None:
        inits.append(numpy_helper.from_array(mean[None].astype(np.float32), f"{p}/mean"))
        nodes.append(helper.make_node("Sub", [joined, f"{p}/mean"], [f"{p}/centred"], name=f"{p}/Centre"))
        joined = f"{p}/centred"
    nodes += [
        helper.make_node("Mul", [joined, joined], [f"{p}/sq"], name=f"{p}/Square"),
        helper.make_node("MatMul", [f"{p}/sq", f"{p}/indicator"], [f"{p}/sumsq"], name=f"{p}/SumSq"),
        helper.make_node("Sqrt", [f"{p}/sumsq"], [f"{p}/norm"], name=f"{p}/Sqrt"),
        helper.make_node("Max", [f"{p}/norm", "unknown/eps"], [f"{p}/safe_norm"], name=f"{p}/Floor"),
        helper.make_node("MatMul", [f"{p}/safe_norm", f"{p}/spread"], [f"{p}/norms"], name=f"{p}/Spread"),
        helper.make_node("Div", [joined, f"{p}/norms"], [f"{p}/unit"], name=f"{p}/Unit"),
    ]
    return nodes, inits


def _unit_nodes(score: Prototypes, plain: list[str] | None) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``views`` in ONNX: ``unknown/rows``; the plain view from the tensors ``plain`` where given."""
    nodes, inits = [], [numpy_helper.from_array(EPS, "unknown/eps")]
    joined = score.blocks[0]
    if len(score.blocks) > 1:
        nodes.append(helper.make_node("Concat", score.blocks, ["unknown/joined"], name="unknown/Join", axis=1))
        joined = "unknown/joined"
    centred, more = _normalise_nodes(joined, score.mean, score.widths, "unknown/centred")
    nodes, inits = nodes + centred, inits + more
    if plain is None:
        as_is, more = _normalise_nodes(joined, None, score.widths, "unknown/plain")
        nodes, inits, plain = nodes + as_is, inits + more, ["unknown/plain/unit"]
    nodes.append(
        helper.make_node("Concat", [*plain, "unknown/centred/unit"], ["unknown/rows"], name="unknown/Rows", axis=1)
    )
    return nodes, inits


def append_unknown(
    model: onnx.ModelProto, score: Prototypes, classes: list[str], plain: list[str] | None = None
) -> onnx.ModelProto:
    """Z with ``unknown_score`` (from the source feature blocks) and ``label`` = "unknown" above the threshold.

    ``plain``: tensors of Z that hold each block L2-normalised as it is, with ``unit_rows``' arithmetic (the
    head's input blocks, ``head.HeadInput.block_names``): read instead of computed again. On a Z as small as
    the demo's, the score's time is its number of nodes (about 20), not its arithmetic.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    opset = default_opset(result)
    nodes, inits = _unit_nodes(score, plain)
    reduce, axes = _reduce_max("unknown/similarity", "unknown/nearest", opset)
    inits += axes + [numpy_helper.from_array(v, f"unknown/{k}") for k, v in score.constants().items()]
    inits += [
        numpy_helper.from_array(np.array(1.0, np.float32), "unknown/one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "unknown/zero"),
        numpy_helper.from_array(np.array(score.threshold, np.float32), "unknown/threshold"),
        numpy_helper.from_array(np.array(len(classes), np.int64), "unknown/index"),
    ]
    nodes += [
        helper.make_node("MatMul", ["unknown/rows", "unknown/bank"], ["unknown/similarity"], name="unknown/Similarity"),
        reduce,
        helper.make_node("Sub", ["unknown/one", "unknown/nearest"], [DISTANCE], name="unknown/Distance"),
        # the calibrated level: linear interpolation between the quantiles, as np.interp
        helper.make_node("Sub", [DISTANCE, "unknown/levels"], ["unknown/above"], name="unknown/Above"),
        helper.make_node("Mul", ["unknown/above", "unknown/inverse_steps"], ["unknown/part"], name="unknown/Part"),
        helper.make_node("Max", ["unknown/part", "unknown/zero"], ["unknown/floor"], name="unknown/Floor"),
        helper.make_node("Min", ["unknown/floor", "unknown/one"], ["unknown/clipped"], name="unknown/Clip"),
        helper.make_node("MatMul", ["unknown/clipped", "unknown/weights"], ["unknown/steps_below"], name="unknown/Sum"),
        helper.make_node("Div", ["unknown/steps_below", "unknown/steps"], [UNKNOWN_SCORE], name="unknown/Score"),
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
