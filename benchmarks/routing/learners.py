"""The learner and hand-over variants behind RESULTS.md's "The learner and the hand-over, tuned" (issue 25).

    python -m benchmarks.routing.learners k3-interleaved 100 default h1 "h1 rounds" "h1 C=0.3" "h1 cv" alone

Each variant is ``labels.py``'s chosen curve with one thing changed: ``h1`` hands over from typical images to
margin sampling after 1 label per class (default 3); ``rounds`` makes the margin picks 10 at a time, refitting
between rounds (default: a budget's picks at once); ``C=x`` fixes the heads' C, ``cv`` chooses the final head's
C by ``choose_C`` (today's build), none of them: ``select_C``'s rule (the build before this change); ``alone``
fits the labels alone (no pool), ``selftrain`` pseudo-labels the pool with the labels-alone head (>= 0.5).
Tuning seeds (100+) score on validation images.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.common import work_dir
from benchmarks.routing import labels
from benchmarks.routing.labels import BUDGETS, Pool
from benchmarks.routing.setups import Data, Features, Setup
from onnxmerge.learn.estimate import choose_C
from onnxmerge.learn.head import fit_head, select_C
from onnxmerge.learn.select import choose


def options(variant: str) -> dict:
    words = variant.split()
    C = next((float(w[2:]) for w in words if w.startswith("C=")), "cv" if "cv" in words else None)
    learner = next((w for w in words if w in ("alone", "selftrain")), "pool")
    return {"handover": 1 if "h1" in words else 3, "rounds": 10 if "rounds" in words else None, "C": C,
            "learner": learner}  # fmt: skip


def fit(pool: Pool, labelled: np.ndarray, o: dict) -> np.ndarray:
    """``(pool probabilities, test probabilities)`` of the variant's head."""
    if o["learner"] == "pool" or not len(labelled):
        rule = (lambda y: o["C"]) if isinstance(o["C"], float) else select_C
        labels.select_C = rule
        labels.choose_C = choose_C if o["C"] == "cv" else (lambda x, y, *a, **k: (rule(y), None, {}))
        try:
            return pool.fit(labelled)[:2]
        finally:
            labels.select_C, labels.choose_C = select_C, choose_C
    x_lab, y_lab, widths = pool.x[labelled], pool.y[labelled], pool.feat.widths
    C = o["C"] if isinstance(o["C"], float) else select_C(y_lab)
    if o["learner"] == "alone":
        head = fit_head(x_lab, y_lab, widths, C=C, class_weight="balanced")
    else:
        alone = fit_head(x_lab, y_lab, widths, C=select_C(y_lab), class_weight="balanced")
        fresh = np.ones(len(pool.x), bool)
        fresh[labelled] = False
        p = alone.predict_proba(pool.x[fresh])
        keep = p.max(1) >= 0.5
        x = np.concatenate([x_lab, pool.x[fresh][keep]])
        y = np.concatenate([y_lab, alone.classes_[p.argmax(1)][keep]])
        w = np.concatenate([np.ones(len(y_lab)), np.full(int(keep.sum()), len(y_lab) / max(int(keep.sum()), 1))])
        head = fit_head(x, y, widths, C=C, class_weight="balanced", sample_weight=w)
    cols = [list(head.classes_).index(c) if c in head.classes_ else None for c in pool.union]

    def in_union(q: np.ndarray) -> np.ndarray:
        return np.stack([q[:, c] if c is not None else np.zeros(len(q)) for c in cols], axis=1)

    return in_union(head.predict_proba(pool.x)), in_union(head.predict_proba(pool.x_test))


def curve(pool: Pool, o: dict, seed: int) -> list[float]:
    out, labelled, n_classes = [], np.zeros(0, int), len(pool.union)
    probs = fit(pool, labelled, o)[0]
    for b in BUDGETS:
        while len(labelled) < b * n_classes:
            step = b * n_classes - len(labelled)
            step = min(o["rounds"], step) if o["rounds"] else step
            available = np.ones(len(pool.y), bool)
            available[labelled] = False
            picks = choose(pool.space, probs, step, available, pool.space[labelled], o["handover"], seed)
            labelled = np.concatenate([labelled, picks.index])
            probs, test = fit(pool, labelled, o)
        out.append(pool.accuracy(test))
    return out


def main() -> None:
    name, seed, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or ["default"]
    work = work_dir("routing")
    pool = Pool(Features(Setup(name, seed, Data(), work), work / "cache"), seed >= 100)
    print(f"{name} seed {seed}: oracle {pool.oracle():.3f}, k-means runs disagree on {pool.disagreement():.1%}")
    for variant in variants:
        print(f"{variant:24s} " + " ".join(f"{v:.3f}" for v in curve(pool, options(variant), seed)), flush=True)


if __name__ == "__main__":
    main()
