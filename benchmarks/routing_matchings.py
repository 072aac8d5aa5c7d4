"""Alternative cluster-to-label matchings and finer clusterings for route_pool (issue 16); none kept.

Scored with routing_ideas.py's protocol (seed 100, Z's head math in numpy, validation part of the reserve,
never the test split). Results: onnxmerge/learn/routing.py's docstring, benchmarks/RESULTS.md.

Ideas (``--ideas``):

* alternative one-to-one matchings per k-means run: the Hungarian optimum plus the first level of Murty's
  ranking (the optimum with each matched pair forbidden; ``--generate murty``) or every exchange of two
  clusters' labels across sources (``--generate swaps``), deduplicated by source partition, the run keeping
  the candidate that scores best on
  ``cv`` (2-fold cross-validated log-likelihood of a logistic source router, 32 PCA dimensions, fitted to
  the targets the matching implies), ``cv-gain`` (the same minus the targets' marginal log-likelihood),
  ``cv-bacc`` (cross-validated balanced accuracy over the sources), ``purity`` (share of images whose routed
  teacher's argmax is the matched label) or ``cv+purity`` (sum of ranks); ``none`` is the optimum
  (= route_pool); ``--space W`` lets k-means also see each teacher's sqrt-probabilities with weight W;
* ``oracle`` (diagnostic: the candidate with the most images on their true source) and ``oc-oraM`` (M
  k-means clusters per label, each cluster given its majority TRUE source): ceilings of the candidates and
  of the clustering; ``--swap-ceiling``: class-level label swaps of route_pool's voted routing, best by truth;
* ``fn-repM`` / ``fn-capM`` / ``fn-voteM``: M clusters per label, assigned label-free: Hungarian against
  each label repeated M times (assumes equally common labels), against capacities from route_pool's label
  counts, or each fine cluster taking the majority of route_pool's agreed targets; ``fn-mixM``: route_pool's
  25 runs and 25 ``fn-repM`` runs voted together; ``fn-softM~P``: Hungarian where label l's k-th cluster
  costs P * k / M more (every label at least one); ``@A`` sets the
  agreement threshold (``fn-rep4@0.8``); ``--pll`` starts routing_ideas' partial-label EM (q >= 0.9) from
  an idea's targets.

Commands (all ``nice -n 19 .venv/bin/python benchmarks/routing_matchings.py --work /tmp/i16-routing``,
default cases k3-interleaved/balanced k3-interleaved/minority10 k5-interleaved/balanced k2-interleaved/balanced):

    --ideas current purity cv cv+purity
    --ideas cv-gain cv-bacc
    --ideas oracle
    --ideas oracle purity --generate swaps
    --ideas none --space 0.5          (and 0, 1)
    --ideas oc-ora1 oc-ora2 oc-ora4
    --ideas fn-rep2 fn-rep4 fn-vote2 fn-vote4
    --ideas fn-rep3 fn-rep6 fn-rep8
    --ideas fn-cap2 fn-cap4 fn-cap8
    --ideas fn-rep4 --pll
    --ideas fn-rep4@0.5 fn-rep4@0.6 fn-rep4@0.8
    --ideas fn-mix4 fn-mix2 fn-mix4@0.8
    --ideas fn-soft4~0.1 fn-soft4~0.3 fn-soft4~1
    --ideas current fn-rep4 fn-rep4@0.8 --cases k3-interleaved/longtail k3-interleaved/missing2 k5-interleaved/minority10
    --ideas current --swap-ceiling
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
import routing_ideas  # noqa: E402
from routing import PREVIOUS_RELEASE, numpy_rows, validation_cases  # noqa: E402

from onnxmerge.learn.routing import MATCH_RUNS, route_pool  # noqa: E402

MIN_AGREEMENT = PREVIOUS_RELEASE["min_agreement"]  # the threshold these ideas were measured at (RESULTS.md)


def matchings(cost: np.ndarray) -> list[np.ndarray]:
    """The Hungarian optimum, then the optimum with each of its pairs forbidden (Murty's first level)."""
    r, c = linear_sum_assignment(cost)
    out = [c[np.argsort(r)]]
    for i in range(len(r)):
        forbidden = cost.copy()
        forbidden[r[i], c[i]] = 1e6
        r2, c2 = linear_sum_assignment(forbidden)
        out.append(c2[np.argsort(r2)])
    return out


def cv_scores(z: np.ndarray, targets: np.ndarray, seed: int, n_src: int) -> dict[str, float]:
    """2-fold held-out scores of a logistic router on ``targets``: ``cv`` mean log-probability of the target,
    ``cv-gain`` the same minus the targets' marginal log-probability (an estimate of the information the
    features carry about the source: plain ``cv`` favours partitions that put most images on one source),
    ``cv-bacc`` balanced accuracy over the sources (a source with no images scores 0)."""
    classes, y = np.unique(targets, return_inverse=True)
    if len(classes) < 2 or np.bincount(y).min() < 2:
        return {"cv": -np.inf, "cv-gain": -np.inf, "cv-bacc": -np.inf}
    ll = gain = 0.0
    pred = np.zeros(len(y), int)
    for a, b in StratifiedKFold(2, shuffle=True, random_state=seed).split(z, y):
        m = LogisticRegression(C=1.0, max_iter=200, tol=1e-3).fit(z[a], y[a])
        p = np.full((len(b), len(classes)), 1e-9)
        p[:, m.classes_] = m.predict_proba(z[b])
        lp = np.log(np.maximum(p[np.arange(len(b)), y[b]], 1e-9))
        prior = np.bincount(y[a], minlength=len(classes)) / len(a)
        ll += lp.sum()
        gain += (lp - np.log(np.maximum(prior[y[b]], 1e-9))).sum()
        pred[b] = p.argmax(axis=1)
    bacc = sum(np.mean(pred[y == k] == k) for k in range(len(classes))) / n_src
    return {"cv": ll / len(z), "cv-gain": gain / len(z), "cv-bacc": float(bacc)}


def swaps(label_of: np.ndarray, owner_of: np.ndarray) -> list[np.ndarray]:
    """The matching with the labels of two clusters exchanged, for every pair whose labels' sources differ."""
    out = []
    for i in range(len(label_of)):
        for j in range(i + 1, len(label_of)):
            if owner_of[label_of[i]] != owner_of[label_of[j]]:
                alt = label_of.copy()
                alt[i], alt[j] = label_of[j], label_of[i]
                out.append(alt)
    return out


def make_route(
    objective: str,
    generate: str = "murty",
    tolerance: float = np.inf,
    space: float = 0.0,
    runs: int = MATCH_RUNS,
    seed: int = 0,
    min_agreement: float = MIN_AGREEMENT,
    stats: dict | None = None,
):
    def route(features, teachers, probs):
        n_labels = len(teachers.union)
        owner_of = np.asarray([next(t for t, own in enumerate(teachers.labels) if u in own) for u in teachers.union])
        spread = teachers.spread(probs)
        union = spread.max(axis=0)
        argmax = spread.argmax(axis=2)  # [T, N] union label of each teacher's argmax
        rows = np.arange(len(features))
        n_src = len(teachers.names)
        votes = np.zeros((len(features), n_src))
        x = features.astype(np.float32)
        if space > 0:  # k-means also sees each teacher's sqrt-probabilities (unit norm per teacher), weight ``space``
            x = np.concatenate([x] + [space * np.sqrt(np.maximum(p, 0)).astype(np.float32) for p in probs], axis=1)
        z = PCA(32, random_state=seed).fit_transform(features) if objective.startswith("cv") else None
        changed = 0
        for run in range(runs):
            clusters = KMeans(n_labels, n_init=1, random_state=seed + run).fit(x).predict(x)
            sizes = np.bincount(clusters, minlength=n_labels)
            sums = np.zeros((n_labels, n_labels))
            np.add.at(sums, clusters, union)
            cost = -np.log(sums / np.maximum(sizes, 1)[:, None] + 1e-9)
            cands, seen = [], set()
            first = matchings(cost)
            pool = first if generate == "murty" else first[:1] + swaps(first[0], owner_of)
            best_cost = cost[np.arange(n_labels), first[0]].sum()
            for label_of in pool:
                if cost[np.arange(n_labels), label_of].sum() - best_cost > tolerance * n_labels:
                    continue  # tolerance: mean -log affinity at most this much above the optimum's
                key = tuple(owner_of[label_of])
                if key not in seen:
                    seen.add(key)
                    cands.append(label_of)
            scores = {}
            for i, label_of in enumerate(cands):
                labels = label_of[clusters]
                src = owner_of[labels]
                s = {}
                if objective in ("purity", "cv+purity"):
                    s["purity"] = float(np.mean(argmax[src, rows] == labels))
                if objective == "oracle":  # diagnostics only: the share routed to the true source
                    s["oracle"] = float(np.mean(src[TRUTH >= 0] == TRUTH[TRUTH >= 0]))
                if objective.startswith("cv"):
                    s.update(cv_scores(z, src, seed + run, n_src))
                scores[i] = s
            if objective == "none":  # the Hungarian optimum, as route_pool
                scores = {i: {"none": -i} for i in range(len(cands))}
            if objective == "cv+purity":
                rank = np.zeros(len(cands))
                for k in ("cv", "purity"):
                    v = np.asarray([scores[i][k] for i in range(len(cands))])
                    rank += np.argsort(np.argsort(-v))
                best = int(np.argmin(rank + 1e-3 * np.arange(len(cands))))  # ties: the Hungarian optimum first
            else:
                v = np.asarray([scores[i][objective] for i in range(len(cands))])
                best = int(np.argmax(v))  # argmax takes the first, i.e. the optimum, on ties
            changed += best != 0
            labels = cands[best][clusters]
            owner = spread[:, rows, labels].argmax(axis=0)
            votes[rows, owner] += 1
        if stats is not None:
            stats["changed"] = changed / runs
        source = votes.argmax(axis=1)
        agreement = votes[rows, source] / runs
        return np.where(agreement >= min_agreement, source, -1), np.ones(len(features))

    return route


def make_overcluster(mult: int, runs: int = MATCH_RUNS, seed: int = 0, min_agreement: float = MIN_AGREEMENT):
    """Ceiling of finer clusterings (diagnostic: uses the true sources): ``mult`` clusters per union label,
    each cluster given its majority true source, voted over the runs with the agreement filter."""

    def route(features, teachers, probs):
        n = len(teachers.union) * mult
        rows = np.arange(len(features))
        votes = np.zeros((len(features), len(teachers.names)))
        for run in range(runs):
            clusters = KMeans(n, n_init=1, random_state=seed + run).fit(features).predict(features)
            major = np.zeros(n, int)
            for c in range(n):
                t = TRUTH[(clusters == c) & (TRUTH >= 0)]
                major[c] = np.bincount(t, minlength=len(teachers.names)).argmax() if len(t) else 0
            votes[rows, major[clusters]] += 1
        source = votes.argmax(axis=1)
        agreement = votes[rows, source] / runs
        return np.where(agreement >= min_agreement, source, -1), np.ones(len(features))

    return route


def make_fine(
    mult: int,
    assign: str,
    penalty: float = 0.0,
    runs: int = MATCH_RUNS,
    seed: int = 0,
    min_agreement: float = MIN_AGREEMENT,
):
    """Label-free assignment of ``mult`` k-means clusters per union label to sources.

    ``rep``: one-to-one Hungarian between the clusters and each label repeated ``mult`` times (the
    mean-probability affinity of route_pool; assumes the labels are about equally common).
    ``vote``: each fine cluster takes the majority of route_pool's agreed targets inside it (smoothing the
    current routing over finer clusters)."""

    def route(features, teachers, probs):
        n_labels = len(teachers.union)
        n = n_labels * mult
        rows = np.arange(len(features))
        spread = teachers.spread(probs)
        union = spread.max(axis=0)
        votes = np.zeros((len(features), len(teachers.names)))
        base = route_pool(features, teachers, probs, **PREVIOUS_RELEASE).targets() if assign == "vote" else None
        slots = np.repeat(np.arange(n_labels), mult)
        if assign == "cap":  # each label's share of the fine clusters follows route_pool's label counts
            counts = np.bincount(route_pool(features, teachers, probs, **PREVIOUS_RELEASE).label, minlength=n_labels)
            extra = np.floor((n - n_labels) * counts / counts.sum()).astype(int)
            extra[np.argsort(-(counts / counts.sum() * (n - n_labels) - extra))[: n - n_labels - extra.sum()]] += 1
            slots = np.repeat(np.arange(n_labels), 1 + extra)
        extra_cost = np.zeros(len(slots))
        if assign == "soft":  # label l's k-th cluster costs penalty * k / M more: unequal shares allowed, at a price
            slots = np.repeat(np.arange(n_labels), n - n_labels + 1)
            k = np.tile(np.arange(n - n_labels + 1), n_labels)
            extra_cost = penalty * k / mult - 1e3 * (k == 0)  # every label gets at least one cluster
        plan = [(n, slots)] * runs
        if assign == "mix":  # route_pool's one cluster per label and M per label, runs of both voted together
            plan = [(n_labels, np.arange(n_labels))] * runs + plan
        for run, (n, slots) in enumerate(plan):
            clusters = KMeans(n, n_init=1, random_state=seed + run).fit(features).predict(features)
            if assign in ("rep", "cap", "mix", "soft"):
                sizes = np.bincount(clusters, minlength=n)
                sums = np.zeros((n, n_labels))
                np.add.at(sums, clusters, union)
                cost = -np.log(sums / np.maximum(sizes, 1)[:, None] + 1e-9)
                r, c = linear_sum_assignment(cost[:, slots] + (extra_cost if len(slots) == len(extra_cost) else 0))
                label_of = np.zeros(n, int)
                label_of[r] = slots[c]
                labels = label_of[clusters]
                owner = spread[:, rows, labels].argmax(axis=0)
                votes[rows, owner] += 1
            else:
                major = np.full(n, -1)
                for k in range(n):
                    t = base[(clusters == k) & (base >= 0)]
                    if len(t):
                        major[k] = np.bincount(t, minlength=len(teachers.names)).argmax()
                m = major[clusters]
                votes[rows[m >= 0], m[m >= 0]] += 1
        source = votes.argmax(axis=1)
        agreement = votes[rows, source] / len(plan)
        return np.where(agreement >= min_agreement, source, -1), np.ones(len(features))

    return route


def pll_from(route_fn):
    """routing_ideas' partial-label EM (q >= 0.9 kept), started from ``route_fn``'s targets."""
    from onnxmerge.learn.routing import Routing

    def start(features, teachers, probs, **_):
        targets, _ = route_fn(features, teachers, probs)
        return Routing(
            np.maximum(targets, 0), (targets >= 0).astype(float), np.zeros(len(targets), int), list(teachers.union), 0.5
        )

    def route(features, teachers, probs):
        routing_ideas.route_pool = start
        try:
            return routing_ideas.make_pll(min_q=0.9)(features, teachers, probs)
        finally:
            routing_ideas.route_pool = route_pool

    return route


def swap_ceiling(feat, pool_out, true_pool, test_out, y_test, top: int = 3) -> None:
    """Diagnostic: route_pool's agreed targets with two union labels' images exchanged between their
    sources (a class-level swap of the voted routing), for every pair of labels of different sources; the
    ``top`` swaps with the most targets right (chosen with the true sources) are scored as Z."""
    teachers = feat.teachers
    owner_of = np.asarray([next(t for t, own in enumerate(teachers.labels) if u in own) for u in teachers.union])
    ok = true_pool >= 0

    def swapped(features, teachers_, probs, pair):
        r = route_pool(features, teachers_, probs, **PREVIOUS_RELEASE)
        src = r.source.copy()
        a, b = pair
        src[r.label == a], src[r.label == b] = owner_of[b], owner_of[a]
        return np.where(r.confident, src, -1), np.ones(len(features))

    captured = {}

    def capture(features, teachers_, probs):
        captured["args"] = (features, teachers_, probs)
        return routing_ideas.current(features, teachers_, probs)

    base = numpy_rows(feat, pool_out, true_pool, capture, test_out, y_test)
    L = len(teachers.union)
    pairs = [(a, b) for a in range(L) for b in range(a + 1, L) if owner_of[a] != owner_of[b]]
    right = {p: float(np.mean(swapped(*captured["args"], p)[0][ok] == true_pool[ok])) for p in pairs}
    print(f"  swap ceiling: none  acc {base['accuracy']:.3f}  targets right {base['routing (pool targets)']:.3f}")
    for pair in sorted(pairs, key=right.get, reverse=True)[:top]:
        z = numpy_rows(feat, pool_out, true_pool, lambda f, t, p, pair=pair: swapped(f, t, p, pair), test_out, y_test)
        print(
            f"  swap {teachers.union[pair[0]]}<->{teachers.union[pair[1]]}: acc {z['accuracy']:.3f}  "
            f"targets right {z['routing (pool targets)']:.3f}",
            flush=True,
        )


TRUTH = None  # the pool's true sources, for the "oracle" objective only (the ceiling of the candidates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/i16-routing"))
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=[
            "k3-interleaved/balanced",
            "k3-interleaved/minority10",
            "k5-interleaved/balanced",
            "k2-interleaved/balanced",
        ],
    )
    parser.add_argument("--ideas", nargs="+", default=["current", "purity", "cv", "cv+purity"])
    parser.add_argument("--generate", default="murty", choices=["murty", "swaps"])
    parser.add_argument("--tolerance", type=float, default=np.inf)
    parser.add_argument("--space", type=float, default=0.0)
    parser.add_argument(
        "--pll",
        action="store_true",
        help="PLL EM (routing_ideas.make_pll, q >= 0.9) started from each idea's targets instead of route_pool's",
    )
    parser.add_argument("--swap-ceiling", action="store_true", help="also print swap_ceiling's diagnostic")
    args = parser.parse_args()
    for case, feat, variant, pool_out, true_pool, test_out, y_test in validation_cases(
        args.cases, args.seed, args.work
    ):
        global TRUTH
        TRUTH = true_pool
        print(f"\n{case} seed {args.seed}", flush=True)
        if args.swap_ceiling:
            swap_ceiling(feat, pool_out, true_pool, test_out, y_test)
        for label in args.ideas:
            stats: dict = {}
            fn = (
                routing_ideas.current
                if label == "current"
                else make_overcluster(int(label[6:]))
                if label.startswith("oc-ora")
                else make_fine(
                    int(label.split("@")[0].split("~")[0][-1]),
                    label.split("@")[0].split("~")[0][3:-1],
                    penalty=float(label.split("~")[1].split("@")[0]) if "~" in label else 0.0,
                    min_agreement=float(label.split("@")[1]) if "@" in label else MIN_AGREEMENT,
                )
                if label[:3] == "fn-"
                else make_route(label, args.generate, args.tolerance, args.space, stats=stats)
            )
            if args.pll:
                fn = pll_from(fn)
            start = time.perf_counter()
            r = numpy_rows(feat, pool_out, true_pool, fn, test_out, y_test)
            print(
                f"  {label:10} acc {r['accuracy']:.3f}  routing(val) {r['routing (test)']:.3f}  "
                f"targets right {r['routing (pool targets)']:.3f}  alt chosen {stats.get('changed', 0):.2f}  "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
