"""AdaMerging (Yang et al., ICLR 2024), task-wise and without gradients: one task-arithmetic coefficient per
source, ``base + sum(c_i * (source_i - base))``, chosen on unlabeled pool images by the entropy of each source's
own head on the merged backbone (confident predictions on a source's own kind of images are the paper's proxy
for accuracy on them).

The paper learns the coefficients (per task, or per task and layer) by gradient descent through the network;
onnxmerge has no framework at run time, so this is a coordinate search: from the best uniform scale, each
source's coefficient in turn tries ``STEPS`` away from its current value and keeps the lowest entropy, for at
most ``ROUNDS`` rounds (stopping early when a round changes nothing). Cost, bounded: at most
``ROUNDS * n * len(STEPS)`` evaluations for n sources, each one run of every source (with a head) on
``IMAGES`` pool images, plus the merge's numpy arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from ..graph import weightmerge
from ..runtime.weights import WeightFolder
from .merging import Candidate, activations

ROUNDS = 2
STEPS = (-0.2, -0.1, 0.1, 0.2)
BOUNDS = (0.0, 1.5)  # a coefficient above 1.5 over-shoots every fine-tuning the papers report
IMAGES = 100  # pool images the entropy is measured on


def mean_entropy(outputs: np.ndarray) -> float:
    """The mean entropy of a head's predictions: its rows as probabilities when they are a distribution,
    else as logits (softmax)."""
    x = outputs.astype(np.float64)
    if not (np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3)):
        x = np.exp(x - x.max(axis=1, keepdims=True))
        x /= x.sum(axis=1, keepdims=True)
    return float(np.mean(-(x * np.log(np.clip(x, 1e-12, 1.0))).sum(axis=1)))


def coordinate_search(start: float, n: int, objective: Callable[[tuple[float, ...]], float]) -> tuple[tuple, int]:
    """The coefficients (one per source) that ``objective`` finds lowest, by coordinate search from
    ``(start,) * n``; and how many times it was evaluated."""
    current = tuple([start] * n)
    best, evaluations = objective(current), 1
    for _ in range(ROUNDS):
        changed = False
        for i in range(n):
            trials = {min(max(round(current[i] + step, 3), BOUNDS[0]), BOUNDS[1]) for step in STEPS} - {current[i]}
            kept = current
            for value in sorted(trials):
                trial = current[:i] + (value,) + current[i + 1 :]
                score, evaluations = objective(trial), evaluations + 1
                if score < best - 1e-9:
                    best, kept = score, trial
            changed, current = changed or kept != current, kept
        if not changed:
            break
    return current, evaluations


def adamerging(
    base: list[np.ndarray],
    arrays: list[list[np.ndarray]],
    heads: list[tuple[onnx.ModelProto, list[str], str]],
    start: float,
    x: np.ndarray,
    weights: WeightFolder,
) -> tuple[Candidate, int]:
    """The AdaMerging candidate (``arrays[i][k]``: source i's tensor in slot k; ``heads``: per source with a
    head, its model, its slot names and its head's output) and the number of evaluations it took."""
    x = x[:IMAGES]

    def merged(coefficients: tuple[float, ...]) -> list[np.ndarray]:
        return [weightmerge.task_weighted(b, [a[k] for a in arrays], list(coefficients)) for k, b in enumerate(base)]

    def objective(coefficients: tuple[float, ...]) -> float:
        tensors = merged(coefficients)
        entropies = []
        for model, names, output in heads:
            out = activations(weightmerge.with_weights(model, dict(zip(names, tensors))), [output], x, weights)[0]
            entropies.append(mean_entropy(out.reshape(len(x), -1)))
        return float(np.mean(entropies))

    coefficients, evaluations = coordinate_search(start, len(arrays), objective)
    return Candidate("adamerging", None, merged(coefficients), coefficients=coefficients), evaluations
