"""Choosing a weight merge: the candidate merges for the sources at hand, and the numbers that pick one.

The arithmetic itself is ``graph.weightmerge`` (initializer by initializer). Here:

- which methods apply: with a base model, task arithmetic and TIES, each at a few scales; without one,
  plain averaging and RegMean, each also after permutation alignment where the architecture allows it;
- RegMean's inner products and alignment's unit correlations, accumulated from activations on pool images;
- the score that picks a candidate: each source's own head on the merged backbone, how often it agrees with
  the label (labelled images of that source's labels) or with the source itself (pool images), averaged
  over sources. A source without a head scores the cosine similarity of its features instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from scipy.optimize import linear_sum_assignment

from ..config import MERGE_METHODS
from ..graph import weightmerge
from ..graph.topology import with_outputs
from ..runtime.session import Runner
from ..runtime.weights import WeightFolder

#: Task arithmetic's and TIES' scales tried (``base + scale * sum of task vectors``); 1/n is plain averaging
#: of the fine-tuned models, the papers' best lay in 0.3-1.0.
SCALES = (0.3, 0.5, 0.7, 1.0)
TIES_DENSITY = 0.2  # the TIES paper's default: keep the top 20% of each task vector
METHODS = MERGE_METHODS
MAX_ROWS_PER_BATCH = 4096  # spatial positions per batch kept for inner products (a random subset)


@dataclass
class Candidate:
    """One way to merge: its name, scale, the merged tensor per weight slot, the sources' aligned arrays."""

    method: str
    scale: float | None
    merged: list[np.ndarray]  # per slot
    aligned: bool = False
    score: float | None = None
    coefficients: tuple[float, ...] | None = None  # AdaMerging: one task-arithmetic scale per source
    corrections: list = field(default_factory=list)  # learn.correct's, applied after the merge (REPAIR)
    origin: Candidate | None = None  # the uncorrected merge the corrections started from

    @property
    def repaired(self) -> bool:
        """Whether the merged network's statistics were corrected on the pool (REPAIR / BatchNorm reset)."""
        return bool(self.corrections)

    def label(self) -> str:
        scale = f" x{self.scale:g}" if self.scale is not None else ""
        if self.coefficients is not None:
            scale = " x" + "/".join(f"{c:g}" for c in self.coefficients)
        repair = " + REPAIR" if self.repaired else ""
        return f"{'aligned ' if self.aligned else ''}{self.method}{scale}{repair}"


def activations(model: onnx.ModelProto, names: list[str], x: np.ndarray, weights: WeightFolder) -> list[np.ndarray]:
    """The tensors ``names`` of ``model`` on ``x`` (64 images per call; onnxruntime runs what they need)."""
    runner = Runner(with_outputs(model, names), weights)
    parts = [runner.run(x[i : i + 64], names) for i in range(0, len(x), 64)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def rows(activation: np.ndarray, channel_axis: int, rng: np.random.Generator) -> np.ndarray:
    """Activations as ``[samples, channels]`` (every spatial position a sample; at most MAX_ROWS_PER_BATCH)."""
    x = np.moveaxis(activation, channel_axis, -1).reshape(-1, activation.shape[channel_axis]).astype(np.float64)
    if len(x) > MAX_ROWS_PER_BATCH:
        x = x[rng.choice(len(x), MAX_ROWS_PER_BATCH, replace=False)]
    return x


@dataclass
class Correlation:
    """Pearson correlation between the units of two models' activations, accumulated batch by batch."""

    n: int = 0
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0])  # a, b, a^2, b^2, a^T b

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.n += len(a)
        for i, value in enumerate((a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b)):
            self.sums[i] = self.sums[i] + value

    def matrix(self) -> np.ndarray:
        sa, sb, saa, sbb, sab = self.sums
        ma, mb = sa / self.n, sb / self.n
        cov = sab / self.n - np.outer(ma, mb)
        sd_a = np.sqrt(np.maximum(saa / self.n - ma**2, 0)) + 1e-12
        sd_b = np.sqrt(np.maximum(sbb / self.n - mb**2, 0)) + 1e-12
        return cov / np.outer(sd_a, sd_b)


def unit_order(correlation: np.ndarray) -> np.ndarray:
    """The reorder of the second model's units that maximises the summed correlation with the first's
    (``order[j]``: the unit moved to position ``j``); the Hungarian algorithm, as Git Re-Basin's matching."""
    _, order = linear_sum_assignment(-np.nan_to_num(correlation))
    return order


def base_candidates(base: list[np.ndarray], sources: list[list[np.ndarray]], method: str) -> list[Candidate]:
    """Task arithmetic and TIES at each scale (``sources[i][k]``: source i's tensor in slot k)."""
    out = []
    for scale in SCALES:
        if method in ("auto", "task_arithmetic"):
            merged = [weightmerge.task_arithmetic(b, [s[k] for s in sources], scale) for k, b in enumerate(base)]
            out.append(Candidate("task_arithmetic", scale, merged))
        if method in ("auto", "ties"):
            merged = [weightmerge.ties(b, [s[k] for s in sources], scale, TIES_DENSITY) for k, b in enumerate(base)]
            out.append(Candidate("ties", scale, merged))
    return out


def averaged(sources: list[list[np.ndarray]], aligned: bool = False) -> Candidate:
    """Plain averaging, slot by slot."""
    return Candidate(
        "average", None, [weightmerge.average([s[k] for s in sources]) for k in range(len(sources[0]))], aligned
    )


def regmean_candidate(
    sources: list[list[np.ndarray]],
    layers: list[weightmerge.LinearLayer],
    grams: list[list[np.ndarray]],
    aligned: bool = False,
) -> Candidate:
    """RegMean on the linear layers (``grams[i][j]``: source i's inner products at layer j), averaging elsewhere."""
    merged = averaged(sources).merged
    for j, layer in enumerate(layers):
        merged[layer.slot] = weightmerge.regmean([s[layer.slot] for s in sources], [g[j] for g in grams], layer.kind)
    return Candidate("regmean", None, merged, aligned)


def channel_stats(activation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``[N, C, ...]`` activations (every position a sample)."""
    x = np.moveaxis(activation, 1, -1).reshape(-1, activation.shape[1]).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0)


def repair_terms(current: tuple, target: tuple) -> tuple[np.ndarray, np.ndarray]:
    """REPAIR (Jordan et al., ICLR 2023): the per-channel ``(scale, shift)`` that turn output channels of mean and
    deviation ``current`` into ``target``'s (``weightmerge.affine`` applies them to the weight and bias). A
    channel that is constant on the pool (a dead unit) is shifted only: rescaling it would blow it up."""
    alive = current[1] > 1e-6 * np.maximum(target[1], 1e-12)
    scale = np.where(alive, target[1] / np.where(alive, current[1], 1.0), 1.0)
    return scale, target[0] - current[0] * scale


def agreement(merged: np.ndarray, reference: np.ndarray, has_head: bool) -> float:
    """How well a source on the merged backbone reproduces ``reference``: the fraction of argmax agreement
    (``reference`` holds class indices) for a head, the mean cosine similarity for features."""
    if has_head:
        return float(np.mean(merged.argmax(axis=1) == reference))
    num = (merged * reference).sum(axis=1)
    den = np.linalg.norm(merged, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
    return float(np.mean(num / den))
