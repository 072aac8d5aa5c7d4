"""Which pool images are worth a label (``onnxmerge suggest``): the strategy of active learning.

With few labels, a classifier's own uncertainty points at outliers; the labels that help first are
*typical* images of regions no label covers yet (TypiClust, Hacohen et al., ICML 2022): k-means on the
pool (and the labelled images) into as many clusters as there will be labels, then, in the largest
clusters that hold no labelled image, the image of highest typicality (inverse mean distance to its
nearest neighbours). Once every class has a few labels, *margin sampling* (the smallest gap between Z's
two most probable classes) finds the images on the borders Z still draws wrong.
``TYPICAL_PER_CLASS`` says where one hands over to the other (``benchmarks/routing/labels.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

#: typical images while the labelled images are fewer than this per class of Z, then margin sampling
TYPICAL_PER_CLASS = 3
NEIGHBOURS = 20  # TypiClust's k for typicality
#: the forecast's anchors, measured on the tuning protocol (``benchmarks/routing/labels.py --tune``, seed 100):
#: (setup, share of its pool images the k-means runs disagree on, chosen labels per class that first brought Z
#: within 2 points of a fit on every pool label, or None: not by ``MAX_BUDGET``)
FORECAST_ANCHORS: tuple[tuple[str, float, int | None], ...] = (
    ("two look-alike teachers", 0.250, 10),
    ("three look-alike teachers", 0.338, None),
    ("five look-alike teachers", 0.405, None),
)
MAX_BUDGET = 40  # the largest budget the benchmark curves measure (labels per class)
MAX_CLUSTERS = 500  # TypiClust caps the clusters too: k-means cost grows with them, typicality does not


@dataclass
class Picks:
    """The chosen pool images (indices, best first) and the strategy that chose them."""

    index: np.ndarray
    strategy: str  # "typical" or "margin"


def choose(
    features: np.ndarray,
    probabilities: np.ndarray,
    n: int,
    available: np.ndarray,
    labelled: np.ndarray,
    per_class: int = TYPICAL_PER_CLASS,
    seed: int = 0,
) -> Picks:
    """``n`` images of a pool worth labelling next.

    ``features``: the pool's L2-normalised feature blocks ``[N, D]``; ``probabilities``: Z's on the pool
    ``[N, K]``; ``available``: ``[N]`` bool, images not labelled or suggested yet; ``labelled``: the labelled
    images' features ``[M, D]`` (those of the pool and any others). Typical images while ``M < per_class *
    K``, margin sampling after.
    """
    n = min(n, int(available.sum()))
    if n <= 0:
        return Picks(np.zeros(0, int), "none")
    if len(labelled) < per_class * probabilities.shape[1]:
        return Picks(typical(features, n, available, labelled, seed), "typical")
    return Picks(smallest_margin(probabilities, n, available), "margin")


def smallest_margin(probabilities: np.ndarray, n: int, available: np.ndarray) -> np.ndarray:
    """The ``n`` available images with the smallest gap between their two most probable classes."""
    top = np.sort(probabilities, axis=1)[:, ::-1]
    margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    margin = np.where(available, margin, np.inf)
    return np.argsort(margin, kind="stable")[:n]


def typicality(x: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """``1 / mean distance to the k nearest other points`` of each row of ``x`` (TypiClust's density)."""
    if len(x) < 2:
        return np.ones(len(x))
    k = min(k, len(x) - 1)
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return 1.0 / (distances[:, 1:].mean(axis=1) + 1e-12)


def typical(features: np.ndarray, n: int, available: np.ndarray, labelled: np.ndarray, seed: int = 0) -> np.ndarray:
    """TypiClust: the most typical available image of each of the ``n`` largest clusters without a label.

    The pool and the labelled images are clustered together into ``len(labelled) + n`` clusters (capped),
    so the labels already given cover their clusters; where fewer than ``n`` clusters are uncovered, the
    largest ones give a second image (their next most typical), and so on.
    """
    labelled = labelled if len(labelled) else np.zeros((0, features.shape[1]), features.dtype)
    x = np.concatenate([features, labelled]).astype(np.float32)
    k = int(min(len(labelled) + n, MAX_CLUSTERS, len(x)))
    clusters = KMeans(k, n_init=1, random_state=seed).fit_predict(x)
    pool_clusters, covered = clusters[: len(features)], np.zeros(k, int)
    np.add.at(covered, clusters[len(features) :], 1)
    sizes = np.bincount(clusters, minlength=k)
    ranked = {}  # cluster -> its available pool images, most typical first
    for c in range(k):
        members = np.flatnonzero((pool_clusters == c) & available)
        if len(members):
            everyone = np.flatnonzero(clusters == c)  # typicality within the whole cluster, labelled included
            score = typicality(x[everyone])[np.searchsorted(everyone, members)]
            ranked[c] = list(members[np.argsort(-score, kind="stable")])
    picks: list[int] = []
    while len(picks) < n and ranked:
        # fewest labels (given or picked) first, then the largest cluster
        c = min(ranked, key=lambda c: (covered[c], -sizes[c], c))
        picks.append(int(ranked[c].pop(0)))
        covered[c] += 1
        if not ranked[c]:
            del ranked[c]
    return np.asarray(picks, int)


@dataclass(frozen=True)
class Forecast:
    """What chosen labels bought on the tuning setup whose routing was about as uncertain as this pool's."""

    per_class: int | None  # chosen labels per class to within 2 points of a fully labelled fit (None: > MAX_BUDGET)
    like: str  # that tuning setup
    disagreed: float  # its share of pool images the k-means runs disagreed on


def forecast(disagreed: float) -> Forecast | None:
    """The tuning anchor nearest in routing uncertainty (the share of pool images the k-means runs disagree on):
    how many chosen labels per class brought Z within 2 points of a fit on every pool label there. A nearest
    anchor rather than a fitted curve: three setups cannot carry a curve, and two of them never got there
    within the budgets measured (``FORECAST_ANCHORS``). None without anchors."""
    if not FORECAST_ANCHORS:
        return None
    like, anchor, per_class = min(FORECAST_ANCHORS, key=lambda a: abs(a[1] - disagreed))
    return Forecast(per_class, like, anchor)
