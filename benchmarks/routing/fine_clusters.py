"""One label per fine cluster (issue 25, item 3): label the pool image nearest each centroid of ``PER_CLASS x L``
k-means clusters, then learn as fit mode does ("fit"), or also make every pool image of a cluster a router target
of its representative label's source ("propagate"; the issue's idea), against "true majority" (each cluster's
true majority label propagated: what the clusters could give with perfect cluster labels).

    python -m benchmarks.routing.fine_clusters k3-interleaved 100 0 1 2

Same setups, pools, test images and learner as ``labels.py`` (its ``Pool``); compare with its chosen curve at 3
and 5 labels per class (``PER_CLASS`` = 4 here).
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.cluster import KMeans

from benchmarks.common import work_dir
from benchmarks.routing.labels import Pool
from benchmarks.routing.setups import Data, Features, Setup

PER_CLASS = 4


class Targets:
    """A routing whose router targets are given (the rest of it unchanged)."""

    def __init__(self, routing, targets: np.ndarray) -> None:
        self.routing, self.given = routing, targets

    def targets(self) -> np.ndarray:
        return self.given

    def __getattr__(self, name: str):
        return getattr(self.routing, name)


def run(pool: Pool, seed: int) -> dict[str, float]:
    n = PER_CLASS * len(pool.union)
    km = KMeans(n, n_init=3, random_state=seed).fit(pool.space)
    distance = km.transform(pool.space)
    reps = np.asarray([np.flatnonzero(km.labels_ == c)[np.argmin(distance[km.labels_ == c, c])] for c in range(n)])
    owner = {label: i for i, own in enumerate(pool.feat.teachers.labels) for label in own}
    out = {"fit": pool.accuracy(pool.fit(reps)[1])}
    majority = {c: max(set(pool.y[km.labels_ == c]), key=list(pool.y[km.labels_ == c]).count) for c in range(n)}
    routing = pool.routing
    for name, label_of in (("propagate", lambda c: pool.y[reps[c]]), ("true majority", majority.get)):
        pool.routing = Targets(routing, np.asarray([owner[label_of(c)] for c in km.labels_]))
        out[name] = pool.accuracy(pool.fit(reps)[1])
    pool.routing = routing
    out["oracle"] = pool.oracle()
    return out


def main() -> None:
    name, seeds = sys.argv[1], [int(s) for s in sys.argv[2:]]
    data, work = Data(), work_dir("routing")
    for seed in seeds:
        pool = Pool(Features(Setup(name, seed, data, work), work / "cache"), seed >= 100)
        row = run(pool, seed)
        print(f"{name} seed {seed} {PER_CLASS}/class: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
