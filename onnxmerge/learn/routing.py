"""Which source owns an image: teacher probabilities, routing without labels, pseudo-labels.

Each source's softmax sums to 1 over its own labels whatever the input, so its confidence says little
about whether an image belongs to it at all (on a 5+5 Fashion-MNIST split, a source's max-probability,
energy or entropy told its own images from the other source's with an AUROC of only 0.63-0.70). Routing here therefore
uses the one constraint that holds for a pool of unlabeled images drawn from the union of the sources'
classes: **every union label is some group of pool images**.

``match_sources`` (the routing used by ``mode = "teachers"`` with an ``unlabeled`` pool):

1. cluster the pool on the sources' concatenated, per-source L2-normalised features into as many
   clusters as there are union labels (k-means);
2. match clusters to labels one-to-one with the Hungarian algorithm, maximising the mean probability the
   label's own source gives the label over the cluster's images; every image gets the source that owns
   its cluster's label;
3. repeat with ``runs`` k-means seeds and take the majority source per image (k-means lands in different
   local optima, some of which split a class the wrong way; the vote over 25 runs is far steadier).

The Merger then trains a logistic regression "which source" router on those pool labels (plus any
labelled images, whose source is known, and any new classes' images, each new class a router class of
its own). Z's probability of label ``l`` of source ``s`` is ``router(s | x) * p_s(l | x)``. (Self-training
the router on its own predictions, as suggested in the issue, lost 1-4 points here, so it is not done.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from ..errors import OnnxMergeError

HEAD_KINDS = ("probabilities", "log-probabilities", "logits")
LOG_FLOOR = 1e-6           # log-probabilities are clipped here: log(1e-6) = -13.8 keeps one bad source finite
PSEUDO_LABEL_THRESHOLD = 0.5  # pool images whose routed probability is below this are not pseudo-labelled
MATCH_RUNS = 25  # k-means runs voted over: single runs land on 0.68-0.87 routing, 25 votes 0.81-0.90


def head_kind(scores: np.ndarray) -> str:
    """What a source's head outputs, told from real outputs: probabilities, log-probabilities or logits."""
    scores = np.asarray(scores, dtype=np.float64)
    if (scores >= -1e-6).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return "probabilities"
    if (scores <= 1e-6).all() and np.allclose(np.exp(scores).sum(axis=1), 1.0, atol=1e-3):
        return "log-probabilities"
    return "logits"


def to_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """A source head's output as probabilities (float32, as Z computes them)."""
    scores = np.asarray(scores, dtype=np.float32)
    if kind == "probabilities":
        return scores
    if kind == "log-probabilities":
        return np.exp(scores)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def l2_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    """Each source's feature block scaled to unit L2 norm, then concatenated (no source dominates by scale).

    In float32 with the sum of squares as a product with ones, the arithmetic Z's head uses.
    """
    out = []
    for block in blocks:
        f = block.astype(np.float32)
        with np.errstate(over="ignore"):  # features beyond 1.8e19 overflow to inf as in Z's float32 head
            norm = np.sqrt((f * f) @ np.ones((f.shape[1], 1), np.float32))
        out.append(f / np.maximum(norm, np.float32(1e-12)))
    return np.concatenate(out, axis=1)


@dataclass
class Teachers:
    """The teacher sources' label space: union labels in order, and which sources own each."""

    names: list[str]           # teacher source names, in recipe order
    labels: list[list[str]]    # each teacher's labels, in its head's order
    union: list[str]           # union labels, first-seen order (the same name in two sources is one class)

    @classmethod
    def of(cls, names: list[str], labels: list[list[str]]) -> Teachers:
        union: list[str] = []
        for own in labels:
            union += [label for label in own if label not in union]
        return cls(names, labels, union)

    def merge_matrix(self) -> np.ndarray:
        """``[sum of K_s, L]`` 0/1 matrix summing each source's label columns into the union's columns."""
        matrix = np.zeros((sum(len(own) for own in self.labels), len(self.union)), np.float32)
        row = 0
        for own in self.labels:
            for label in own:
                matrix[row, self.union.index(label)] = 1
                row += 1
        return matrix

    def spread(self, probs: list[np.ndarray]) -> np.ndarray:
        """``[T, N, L]``: each teacher's probabilities in the union's columns (-1 for labels it lacks, so an
        owner of a label always beats a non-owner, even where the owner's probability underflowed to 0)."""
        out = np.full((len(probs), len(probs[0]), len(self.union)), -1.0)
        for t, (own, p) in enumerate(zip(self.labels, probs)):
            out[t][:, [self.union.index(label) for label in own]] = p
        return out

    def union_probabilities(self, probs: list[np.ndarray]) -> np.ndarray:
        """``[N, L]``: for each union label, the highest probability any of its owners gives it."""
        return self.spread(probs).max(axis=0)


def match_sources(features: np.ndarray, teachers: Teachers, probs: list[np.ndarray], runs: int = MATCH_RUNS,
                  seed: int = 0) -> np.ndarray:
    """Which teacher owns each pool image (index into ``teachers.names``), without labels (module docstring).

    ``features`` are the pool's L2-normalised per-source blocks; ``probs`` each teacher's probabilities.
    """
    n_labels = len(teachers.union)
    if len(features) < 2 * n_labels:
        raise OnnxMergeError(f"the unlabeled pool has {len(features)} images, too few to route between "
                             f"{n_labels} labels; give at least {2 * n_labels} (hundreds work best).")
    spread = teachers.spread(probs)
    union = spread.max(axis=0)
    votes = np.zeros((len(features), len(teachers.names)))
    rows = np.arange(len(features))
    for run in range(runs):
        clusters = KMeans(n_labels, n_init=1, random_state=seed + run).fit_predict(features)
        affinity = np.stack([union[clusters == k].mean(axis=0) if (clusters == k).any() else np.zeros(n_labels)
                             for k in range(n_labels)])
        cluster_idx, label_idx = linear_sum_assignment(-np.log(affinity + 1e-9))
        label_of = np.empty(n_labels, int)
        label_of[cluster_idx] = label_idx
        labels = label_of[clusters]
        # a label two teachers share goes to whichever of them is surer of it on this image
        votes[rows, spread[:, rows, labels].argmax(axis=0)] += 1
    return votes.argmax(axis=1)


def pseudo_labels(union_probs: np.ndarray, classes: list[str], threshold: float = PSEUDO_LABEL_THRESHOLD
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, keep)``: each pool image's most probable routed class, kept where its probability >= threshold."""
    best = union_probs.argmax(axis=1)
    return np.asarray(classes)[best], union_probs[np.arange(len(best)), best] >= threshold
