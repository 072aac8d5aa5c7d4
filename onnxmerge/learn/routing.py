"""Which source owns an image: teacher probabilities, routing without labels, pseudo-labels.

Each source's softmax sums to 1 over its own labels whatever the input, so its confidence says little
about whether an image belongs to it at all (on a 5+5 Fashion-MNIST split, a source's max-probability,
energy or entropy told its own images from the other source's with an AUROC of only 0.63-0.70). Routing here therefore
uses the one constraint that holds for a pool of unlabeled images drawn from the union of the sources'
classes: **every union label is some group of pool images**.

``route_pool`` (the routing used by ``mode = "teachers"`` with an ``unlabeled`` pool, and by mode "fit"
for its pseudo-labels):

1. cluster the pool on the sources' concatenated, per-source L2-normalised features into
   ``CLUSTERS_PER_LABEL`` = 4 clusters per union label (k-means; fewer where the pool would leave under ~5
   images per cluster; fitted on at most 5,000 pool images, every image then assigned to its nearest
   centroid, so a 100,000-image pool costs little more than 5,000);
2. match clusters one-to-one to the labels repeated 4 times with the Hungarian algorithm, maximising the
   mean probability the label's own source gives the label over the cluster's images; every image gets
   the source that owns its cluster's label. One cluster per label cannot route a pool where k-means
   merges look-alike classes of different teachers into one cluster (Pullover + Coat + Shirt) and splits
   others (Bag in two);
3. repeat with ``runs`` k-means seeds and take the majority source per image, with its **agreement** (the
   share of runs that voted for it);
4. the router learns only from images whose runs agreed (agreement >= ``MIN_AGREEMENT`` = 0.8). Where a
   class sits between two teachers' classes (Shirt among T-shirts and Coats) or the pool is imbalanced,
   k-means puts the border differently in every run; leaving those images out lets the logistic router
   place the border from the images that are clear.

The number that chose it: on 39 tuning cases (seeds 100+, never the test split) Z's mean accuracy was
0.667 with 4 clusters per label at 0.8 agreement against 0.650 for one per label at 0.7 (the previous
release). Every alternative measured and the test-seed results are in benchmarks/RESULTS.md ("Routing
choices on the tuning protocol", "routing/pools.py on 3 test seeds").

The Merger then trains a logistic regression "which source" router on the agreed pool images (plus any
labelled images, whose source is known, and any new classes' images, each new class a router class of
its own). Z's probability of label ``l`` of source ``s`` is ``router(s | x) * p_s(l | x)``.
``Routing.label_counts`` and ``Routing.scarce_labels`` say which labels routing gave no or implausibly
few pool images (the build report's ``routing`` entry; its warnings come from
``learn.health.class_loss_warnings``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from ..errors import OnnxMergeError

LOG_FLOOR = 1e-6  # log-probabilities are clipped here: log(1e-6) = -13.8 keeps one bad source finite
PSEUDO_LABEL_THRESHOLD = 0.5  # pool images whose routed probability is below this are not pseudo-labelled
MATCH_RUNS = 25  # k-means runs voted over: single runs land on 0.68-0.87 routing, 25 votes 0.81-0.90
MIN_AGREEMENT = 0.8  # the router learns only from images >= this share of runs agreed on (tuned: RESULTS.md)
KMEANS_FIT_IMAGES = 5000  # k-means fits on at most this many pool images; every image is then assigned
CLUSTERS_PER_LABEL = 4  # k-means clusters per union label (tuned: RESULTS.md)
SCARCE_SHARE = 0.1  # a label with under a tenth of an even share of the routed pool is "scarce"
SCARCE_MIN_IMAGES = 3


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

    names: list[str]  # teacher source names, in recipe order
    labels: list[list[str]]  # each teacher's labels, in its head's order
    union: list[str]  # union labels, first-seen order (the same name in two sources is one class)

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


@dataclass
class Routing:
    """What routing decided for each pool image, and how sure the k-means runs were of it."""

    source: np.ndarray  # [N] teacher index (into Teachers.names), majority over the runs
    agreement: np.ndarray  # [N] share of runs that voted for ``source``
    label: np.ndarray  # [N] union label index: the routed teacher's most probable label
    union: list[str]  # the union labels ``label`` indexes
    min_agreement: float = 0.0  # below it an image is left out of the router's targets

    @property
    def confident(self) -> np.ndarray:
        """``[N]`` bool: images the router learns from (their runs agreed)."""
        return self.agreement >= self.min_agreement

    def targets(self) -> np.ndarray:
        """``[N]`` router targets: the source, or -1 for an image left out (runs disagreed)."""
        return np.where(self.confident, self.source, -1)

    def label_counts(self, agreed: bool = True) -> dict[str, int]:
        """Pool images per union label (the routed teacher's most probable label), over the agreed images the
        router learns from (``agreed``) or over every pool image. The agreed count is what Z's routing
        rests on: on the demo, Shirt (between a's T-shirts and b's Coats) gets 14 agreed images (20 routed)
        of 800, and Z's Shirt recall is 0.085."""
        counts = np.bincount(self.label[self.confident] if agreed else self.label, minlength=len(self.union))
        return {label: int(c) for label, c in zip(self.union, counts)}

    def scarce_labels(self, share: float = SCARCE_SHARE, at_least: int = SCARCE_MIN_IMAGES) -> list[str]:
        """Union labels routing gave no or implausibly few agreed images: fewer than ``share`` of an even
        split of them, or fewer than ``at_least``. Z still has these labels, but nothing in the pool
        vouches for routing to them; they are listed in the build report."""
        counts = self.label_counts()
        floor = max(at_least, share * sum(counts.values()) / max(len(counts), 1))
        return [label for label, c in counts.items() if c < floor]


def route_pool(
    features: np.ndarray,
    teachers: Teachers,
    probs: list[np.ndarray],
    runs: int = MATCH_RUNS,
    seed: int = 0,
    min_agreement: float = MIN_AGREEMENT,
    fit_images: int = KMEANS_FIT_IMAGES,
    per_label: int = CLUSTERS_PER_LABEL,
) -> Routing:
    """Which teacher owns each pool image, without labels, and how sure the runs are (module docstring).

    ``features`` are the pool's L2-normalised per-source blocks; ``probs`` each teacher's probabilities.
    k-means fits on at most ``fit_images`` pool images per run (its cost grows with the pool; the
    centroids of 5,000 images are as good) and then assigns every image to its nearest centroid.
    ``per_label`` clusters per union label are matched one-to-one to the labels repeated that many times.
    """
    n_labels = len(teachers.union)
    if len(features) < 2 * n_labels:
        raise OnnxMergeError(
            f"the unlabeled pool has {len(features)} images, too few to route between "
            f"{n_labels} labels; give at least {2 * n_labels} (hundreds work best)."
        )
    spread = teachers.spread(probs)
    union = spread.max(axis=0)
    per_label = max(1, min(per_label, len(features) // (5 * n_labels)))  # >= ~5 images per cluster
    slots = np.repeat(np.arange(n_labels), per_label)  # each label takes per_label clusters
    n_clusters = len(slots)  # one cluster per slot: the Hungarian matching labels every cluster
    votes = np.zeros((len(features), len(teachers.names)))
    rows = np.arange(len(features))
    rng = np.random.default_rng(seed)
    x = features.astype(np.float32)
    for run in range(runs):
        fit = x if len(x) <= fit_images else x[rng.choice(len(x), fit_images, replace=False)]
        clusters = KMeans(n_clusters, n_init=1, random_state=seed + run).fit(fit).predict(x)
        sizes = np.bincount(clusters, minlength=n_clusters)
        sums = np.zeros((n_clusters, n_labels))
        np.add.at(sums, clusters, union)
        affinity = sums / np.maximum(sizes, 1)[:, None]
        cluster_idx, slot_idx = linear_sum_assignment(-np.log(affinity[:, slots] + 1e-9))
        label_of = np.empty(n_clusters, int)
        label_of[cluster_idx] = slots[slot_idx]
        labels = label_of[clusters]
        # a label two teachers share goes to whichever of them is surer of it on this image
        votes[rows, spread[:, rows, labels].argmax(axis=0)] += 1
    source = votes.argmax(axis=1)
    own = spread[source, rows]  # the routed teacher's probabilities in union columns (-1 where it lacks a label)
    agreement = votes[rows, source] / runs
    return Routing(source, agreement, own.argmax(axis=1), list(teachers.union), min_agreement)


def pseudo_labels(
    union_probs: np.ndarray, classes: list[str], threshold: float = PSEUDO_LABEL_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, keep)``: each pool image's most probable routed class, kept where its probability >= threshold."""
    best = union_probs.argmax(axis=1)
    return np.asarray(classes)[best], union_probs[np.arange(len(best)), best] >= threshold
