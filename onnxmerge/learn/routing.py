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
   the source that owns its cluster's label. One cluster per label (the routing before issue 16) cannot
   route a pool where k-means merges look-alike classes of different teachers into one cluster
   (Pullover + Coat + Shirt) and splits others (Bag in two): even each such cluster given its majority
   TRUE source routed only 0.68 / 0.56 / 0.60 of images right at K = 3 / 3 with a 10% teacher / 5, where
   4 clusters per label with their true majority reach 0.79 / 0.69 / 0.68;
3. repeat with ``runs`` k-means seeds and take the majority source per image, with its **agreement** (the
   share of runs that voted for it);
4. the router learns only from images whose runs agreed (agreement >= ``MIN_AGREEMENT`` = 0.8). Where a
   class sits between two teachers' classes (Shirt among T-shirts and Coats) or the pool is imbalanced,
   k-means puts the border differently in every run; leaving those images out lets the logistic router
   place the border from the images that are clear.

``match_sources`` keeps its old call and returns the majority source of every image.

Chosen on tuning seeds (100+), scored on training images outside the pool (never the test split;
``benchmarks/routing_tune.py``, 39 cases: K = 2, 3, 4, 5 teachers, interleaved and grouped classes, pools
balanced / one teacher 10% / long-tailed / two labels missing / 20% junk / 10,000 images / blurred).
Z's mean accuracy: 4 clusters per label at 0.8 agreement 0.667, one per label at 0.7 (the routing of
the previous release) 0.650, one per label and every image a target 0.646; the labelled oracle 0.818.
4 per label won in 57% of cases and lost in 33% (mostly long-tailed and two-labels-missing pools at
K = 3, where equal label shares are the wrong assumption: -1 to -3 points); by group K=2 interleaved
0.756 -> 0.773, K=2 grouped 0.711 -> 0.728, K=3 0.658 -> 0.654 (grouped 0.674 -> 0.671), K=4 0.504 ->
0.521, K=5 0.531 -> 0.577, K=5 grouped 0.584 -> 0.624. At one cluster per label, 0.7 had beaten 0.8 (0.8
lost 9 points at K=5); with 4 per label 0.8 is ahead (numpy, ``benchmarks/routing_matchings.py``: 0.720 /
0.658 / 0.594 / 0.827 vs 0.705 / 0.647 / 0.598 / 0.811 at 0.7 agreement, K=3 / K=3 10% / K=5 / K=2).
On the test seeds 0-2 (``benchmarks/RESULTS.md``, 51 setups and pools) it beat the previous release in 41
and lost in 9 (mean +3.6 points); the worst losses are K=3 grouped (-5 to -9) and 50-image pools.

Measured and not kept (same protocol, one cluster per label unless said): more clusters than labels with
many-to-one assignment
under "every label gets >= 1 cluster" (3 per label: 0.520, 5 per label: 0.438 vs 0.622: the extra
clusters go to whichever teacher is most confident, which is max-probability routing again, even with
affinities standardised per label); EM over a mixture of experts (tied-covariance Gaussians per teacher
label in 32 PCA dimensions, the teacher's own probabilities inside each source, priors re-estimated,
started from this routing: 0.587-0.603, it refines the same local optimum); k-means in whitened PCA space
(0.558 vs 0.604, 10 runs each); a feature-compactness score per source (centred resultant length of a cluster in
the source's
own block) added to the matching cost (+1.2 points with 10 runs and no agreement filter; -0.8 to +5 at
0.9 agreement on 3 teachers, -2.4 on 5). Two extra clusters
that no label is matched to (their images vote "none of these", ``extra_clusters``) cut the junk the
router learns from (20% junk of no union class: 76% -> 64% of it kept, accuracy 0.660 -> 0.665) but cost
a clean pool 5 points (0.668 -> 0.619), so the default is 0: with the agreement filter, 20% junk costs
0.8 points (0.660 vs 0.668).
Partial-label EM (``benchmarks/routing_ideas.py``, seed 100, validation reserve; Z's accuracy in numpy,
K=3 4+3+3 balanced / minority10, K=5 balanced, K=2 balanced; this routing 0.668 / 0.638 / 0.584 / 0.801):
each image's candidates are the teachers' argmax labels, a logistic regression over the union labels on
soft candidate targets, E-step = its probability x the teacher's, Saerens priors, started from this
routing. Every image as a target: 0.677 / 0.658 / 0.589 / 0.788; only q >= 0.9: 0.684 / 0.653 / 0.602 /
0.796; a floor on each label's share (half an even share, 10 iterations): 0.672 / 0.662 / 0.614 / 0.747;
split-pool cross-fitting: 0.656 / 0.648. +1 to +2 points on one seed and a loss at K=2 is no clear
win: EM keeps the clustering's class-level swaps (Pullover routed to the Coat teacher: 2-4% right in
every iteration), and max-probability starts collapse (0.29). Per-image "is it mine" scores in a
teacher's own block (max-probability, feature norm, kNN similarity, cosine to the pool's class centroid)
told its images from the others' with AUROC 0.22-0.93 on K=3 / K=5, often under 0.6.
Alternative matchings (``benchmarks/routing_matchings.py``, same protocol and cases): per k-means run, the
Hungarian optimum plus Murty's first level (each matched pair forbidden), the run keeping the candidate
with the best cross-validated log-likelihood of a logistic source router: 0.675 / 0.670 / 0.471 / 0.734
(with the marginal's log-likelihood subtracted: 0.675 / 0.665 / 0.467 / 0.733; cross-validated balanced
accuracy 0.676 / 0.591 / 0.506 / 0.816); the teachers' argmax agreeing with the matched label: 0.593 /
0.627 / 0.517 / 0.739; the two ranks summed: 0.611 / 0.675 / 0.590 / 0.735. Any union of classes is about
as linearly predictable as the right one, so cross-validation does not tell them apart. The errors are not
swaps a matching can undo: choosing the candidate by the TRUE sources reaches only 0.678 / 0.643 / 0.569 /
0.824 (every cross-source exchange of two clusters' labels: 0.636 / 0.632 / 0.590 / 0.825), no class-level
label swap of the voted routing puts more images on their true source (best 0.528 vs 0.537 at K=3), and
even each of the L clusters given its majority true source reaches only 0.681 / 0.559 / 0.600 / 0.825:
k-means merges look-alike classes of different teachers into one cluster (Pullover + Coat + Shirt) and
splits others (Bag in two), so a one-cluster-per-label matching cannot route them. Finer clusters can (4
per label, majority true source: 0.785 / 0.691 / 0.677 / 0.817), but their label-free assignment is the
open part: Hungarian against each label repeated 4 times (equal label shares assumed) 0.705 / 0.647 /
0.598 / 0.811 (at 0.8 agreement 0.720 / 0.658 / 0.594 / 0.827; 2, 3, 6, 8 per label: 0.685-0.703 /
0.640-0.688 / 0.576-0.607 / 0.777-0.821), and it loses where labels are not equally common (K=3 longtail
0.648 vs 0.661, missing2 0.656 vs 0.679); capacities from this routing's label counts 0.663-0.682 /
0.623-0.660 / 0.580-0.584 / 0.760-0.795; partial-label EM (q >= 0.9) started from it 0.708 / 0.696 / 0.609
/ 0.751; k-means also on the teachers' sqrt-probabilities 0.611-0.657 / 0.632-0.642 / 0.439-0.549 /
0.775-0.823; a label's k-th fine cluster costing 0.1-1.0 x k/4 more (unequal shares at a price) 0.610-0.685 /
0.628-0.631 / 0.598-0.616 / 0.795-0.823. None gains 3 points at both K=3 and K=5 without losing K=2.

The Merger then trains a logistic regression "which source" router on the agreed pool images (plus any
labelled images, whose source is known, and any new classes' images, each new class a router class of
its own). Z's probability of label ``l`` of source ``s`` is ``router(s | x) * p_s(l | x)``. (Self-training
the router on its own predictions lost 1-4 points here, so it is not done.) ``Routing.label_counts`` and
``Routing.scarce_labels`` say which labels routing gave no or implausibly few pool images (the build report's
``routing`` entry; its warnings come from ``learn.health.class_loss_warnings``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from ..errors import OnnxMergeError

HEAD_KINDS = ("probabilities", "log-probabilities", "logits")
LOG_FLOOR = 1e-6  # log-probabilities are clipped here: log(1e-6) = -13.8 keeps one bad source finite
PSEUDO_LABEL_THRESHOLD = 0.5  # pool images whose routed probability is below this are not pseudo-labelled
MATCH_RUNS = 25  # k-means runs voted over: single runs land on 0.68-0.87 routing, 25 votes 0.81-0.90
MIN_AGREEMENT = 0.8  # the router learns only from images >= this share of runs agreed on (tuned: module docstring)
KMEANS_FIT_IMAGES = 5000  # k-means fits on at most this many pool images; every image is then assigned
CLUSTERS_PER_LABEL = 4  # k-means clusters per union label (tuned: module docstring)
EXTRA_CLUSTERS = 0  # clusters beyond those; unmatched ones say "none of these" (tuned)
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
    extra_clusters: int = EXTRA_CLUSTERS,
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
    n_clusters = len(slots) + extra_clusters  # the clusters no label is matched to vote "none of these"
    none = len(teachers.names)
    votes = np.zeros((len(features), none + 1))
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
        label_of = np.full(n_clusters, -1)
        label_of[cluster_idx] = slots[slot_idx]
        labels = label_of[clusters]
        # a label two teachers share goes to whichever of them is surer of it on this image
        owner = spread[:, rows, np.maximum(labels, 0)].argmax(axis=0)
        votes[rows, np.where(labels >= 0, owner, none)] += 1
    source = votes[:, :none].argmax(axis=1)
    own = spread[source, rows]  # the routed teacher's probabilities in union columns (-1 where it lacks a label)
    agreement = np.where(votes[:, none] * 2 > runs, 0.0, votes[rows, source] / runs)  # mostly "none": no target
    return Routing(source, agreement, own.argmax(axis=1), list(teachers.union), min_agreement)


def match_sources(
    features: np.ndarray, teachers: Teachers, probs: list[np.ndarray], runs: int = MATCH_RUNS, seed: int = 0
) -> np.ndarray:
    """Which teacher owns each pool image (majority over the runs, every image): ``route_pool(...).source``."""
    return route_pool(features, teachers, probs, runs, seed).source


def pseudo_labels(
    union_probs: np.ndarray, classes: list[str], threshold: float = PSEUDO_LABEL_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, keep)``: each pool image's most probable routed class, kept where its probability >= threshold."""
    best = union_probs.argmax(axis=1)
    return np.asarray(classes)[best], union_probs[np.arange(len(best)), best] >= threshold
