"""Active labelling curves (issue 25): accuracy of fit mode + pool against labels per class, the labels
chosen by ``onnxmerge.learn.select`` (as ``onnxmerge suggest`` picks them, round after round) or random.

Per setup and seed (``benchmarks.routing.setups``, the "balanced" 1,000-image pool): budgets b = 1, 2, 3,
5, 10, 20, 40 labels per class (b x L images in all). "chosen": each round picks the images the current Z
suggests (``choose``: typical images of uncovered clusters while labels < 3 per class, margin sampling
after), labels them and refits; "random": b random pool images of each class (stratified, as a person
with a per-class quota would give them: a stronger baseline than unstratified picks). "oracle": a head fitted
on every pool label. Also the product of the fit head and its own routed teachers (the issue's item 4,
not in Z), and the forecast of the routing's uncertainty (share of pool images the k-means runs disagree on).

Z is fitted in numpy with onnxmerge's own functions, as ``stages.fit.fit_labelled`` does it (router on the
agreed pool images plus the labelled ones, product with a labels-alone head once every class has a label,
pseudo-labels >= 0.5, head C by ``choose_C``); the build's routing (25 k-means runs) is computed once per
pool on all its images, where a build routes the pool less its labelled images (the one simplification).

    python -m benchmarks.routing.labels --tune            # tuning seeds 100.., validation images, strategies
    python -m benchmarks.routing.labels --seeds 0 1 2     # test seeds, test split: chosen vs random
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import generic as generic_source
from benchmarks.common import mean_std_line, work_dir
from benchmarks.routing.setups import Data, Features, Setup, take, variant_pool
from onnxmerge.config import ROUTER_C
from onnxmerge.graph.stitch import output_names
from onnxmerge.learn.estimate import choose_C
from onnxmerge.learn.head import HeadInput, TeachersHead, fit_head, select_C
from onnxmerge.learn.routing import l2_blocks, pseudo_labels, route_pool
from onnxmerge.learn.select import TYPICAL_PER_CLASS, choose
from onnxmerge.stages.route import train_router

BUDGETS = (1, 2, 3, 5, 10, 20, 40)
CURVE_SETUPS = ("k2-interleaved", "k3-interleaved", "k5-interleaved", "k2-grouped", "k3-grouped", "k5-grouped")
STRATEGIES = {  # labels per class below which typical images are picked (then margin sampling)
    "chosen": TYPICAL_PER_CLASS,
    "margin only": 0,
    "typical only": 10**6,
    "typical to 1, then margin": 1,
}


class Pool:
    """One setup's pool, its routing (once), and the fit-mode Z of any labelled subset of it, in numpy."""

    def __init__(self, feat: Features, validation: bool) -> None:
        self.feat = feat
        self.out, _, self.true_pool, self.test_out, _, self.y_test = variant_pool(feat, "balanced", validation)
        idx, _ = feat.setup.pool("balanced")
        self.y = feat.setup.y_res[idx]
        self.x = feat.head_input.numpy(self.out).astype(np.float64)
        self.x_test = feat.head_input.numpy(self.test_out).astype(np.float64)
        blocks = [self.out[output_names(s["name"])["feature"]] for s in feat.sources]
        self.space = l2_blocks(blocks)
        probs = [HeadInput.probabilities(self.out, n, k) for n, k in feat.base.teachers_]
        start = time.perf_counter()
        self.routing = route_pool(self.space, feat.teachers, probs)
        self.route_seconds = time.perf_counter() - start
        self.union = feat.teachers.union

    def fit(self, labelled: np.ndarray):
        """``(pool probabilities, test probabilities, test probabilities of head x routed teachers)``."""
        feat, union = self.feat, self.union
        fresh = np.ones(len(self.x), bool)
        fresh[labelled] = False
        x_lab, y_lab = self.x[labelled], self.y[labelled]
        targets = self.routing.targets()[fresh]
        x_pool = self.x[fresh]
        owner = {label: i for i, own in enumerate(feat.teachers.labels) for label in own}
        y_known = np.asarray([owner[c] for c in y_lab], int)
        x_r = np.concatenate([x_pool[targets >= 0], x_lab])
        y_r = np.concatenate([targets[targets >= 0], y_known])
        weight = np.ones(len(y_r))
        if len(y_lab):
            weight[-len(y_lab) :] = int((targets >= 0).sum()) / len(y_lab)
        router = fit_head(x_r, y_r, feat.widths, C=ROUTER_C, class_weight="balanced", sample_weight=weight)
        teachers_head = TeachersHead(feat.head_input, feat.teachers, router)
        union_probs, _ = teachers_head.numpy(take(self.out, np.flatnonzero(fresh)))
        if len(y_lab) and set(union) <= set(y_lab):  # stages.fit: product with a head on the labels alone
            alone = fit_head(x_lab, y_lab, feat.widths, C=select_C(y_lab), class_weight="balanced")
            union_probs = union_probs * alone.predict_proba(x_pool)[:, [list(alone.classes_).index(c) for c in union]]
            union_probs /= np.maximum(union_probs.sum(axis=1, keepdims=True), 1e-300)
        pseudo, keep = pseudo_labels(union_probs, union)
        x = np.concatenate([x_lab, x_pool[keep]])
        y = np.concatenate([y_lab, pseudo[keep]])
        w = np.concatenate([np.ones(len(y_lab)), np.full(int(keep.sum()), len(y_lab) / max(int(keep.sum()), 1))])
        C = select_C(pseudo[keep])
        if len(y_lab):  # stages.fit: C by the held-out estimate's cross-validation where it can tell
            extra = (x_pool[keep], pseudo[keep], w[len(y_lab) :])
            C = choose_C(x_lab, y_lab, feat.widths, "balanced", extra)[0]
        head = fit_head(x, y, feat.widths, C=C, class_weight="balanced", sample_weight=w if len(y_lab) else None)
        cols = [list(head.classes_).index(c) if c in head.classes_ else None for c in union]

        def in_union(p: np.ndarray) -> np.ndarray:
            return np.stack([p[:, c] if c is not None else np.zeros(len(p)) for c in cols], axis=1)

        test = in_union(head.predict_proba(self.x_test))
        product = test * teachers_head.numpy(self.test_out)[0]
        product /= np.maximum(product.sum(axis=1, keepdims=True), 1e-300)
        return in_union(head.predict_proba(self.x)), test, product

    def accuracy(self, probs: np.ndarray) -> float:
        return float(np.mean(np.asarray(self.union)[probs.argmax(1)] == self.y_test))

    def label_free(self) -> float:
        """Teachers mode without a label: the router on the agreed pool images, as ``stages.route`` fits it."""
        feat = self.feat
        n = len(feat.teachers.names)
        router, _ = train_router(self.x, self.routing.targets(), [], feat.widths, ROUTER_C, n)
        return self.accuracy(TeachersHead(feat.head_input, feat.teachers, router).numpy(self.test_out)[0])

    def oracle(self) -> float:
        head = fit_head(self.x, self.y, self.feat.widths, C=select_C(self.y), class_weight="balanced")
        return float(np.mean(head.predict(self.x_test) == self.y_test))

    def disagreement(self) -> float:
        """The forecast's routing uncertainty: share of pool images the k-means runs disagree on (< 0.8)."""
        return float(np.mean(~self.routing.confident))


def curve(pool: Pool, strategy: int | None, seed: int, budgets=BUDGETS) -> dict[str, float]:
    """Accuracy at each budget: chosen round by round (``strategy``: typical below that many per class), or
    random (None)."""
    rows, labelled = {}, np.zeros(0, int)
    rng = np.random.default_rng(40_000 + seed)
    order = {c: rng.permutation(np.flatnonzero(pool.y == c)) for c in pool.union}
    n_classes = len(pool.union)
    probs = pool.fit(labelled)[0] if strategy is not None else None  # round 1 asks the label-free Z
    for b in budgets:
        if strategy is None:
            labelled = np.concatenate([order[c][:b] for c in pool.union])
        else:
            available = np.ones(len(pool.y), bool)
            available[labelled] = False
            picks = choose(
                pool.space, probs, b * n_classes - len(labelled), available, pool.space[labelled], strategy, seed
            )
            labelled = np.concatenate([labelled, picks.index])
        probs, test, product = pool.fit(labelled)
        rows[f"{b}/class"] = pool.accuracy(test)
        rows[f"{b}/class, x routed teachers"] = pool.accuracy(product)
    return rows


def seed_row(pool: Pool, strategies: dict, seed: int, budgets, prefix: str, title: str) -> dict[str, float]:
    """One seed's rows (keys prefixed with ``prefix``): oracle, uncertainty, label-free, each strategy's curve."""
    row = {"oracle": pool.oracle(), "pool images the k-means runs disagree on": pool.disagreement()}
    row["label-free (teachers mode)"] = pool.label_free()
    for label, strategy in strategies.items():
        for key, value in curve(pool, strategy, seed, budgets).items():
            row[f"{label} {key}"] = value
        print(f"{title} {prefix}{label}: " + " ".join(f"{v:.3f}" for k, v in row.items() if k.startswith(label)))
        sys.stdout.flush()
    return {prefix + k: v for k, v in row.items()}


def run(
    names: list[str],
    seeds: list[int],
    strategies: dict,
    validation: bool,
    work: Path,
    out: Path | None,
    budgets=BUDGETS,
    generic: Path | None = None,
):
    """The curves of every setup and seed; with ``generic`` (an ImageNet backbone's ONNX file), every row
    also with that backbone added as a ``teacher = false`` source, side by side (its keys "+ generic: ...")."""
    data, results = Data(), {}
    extras = {"": None} if generic is None else {"": None, "+ generic: ": generic_source(generic)}
    for name in names:
        rows: dict[str, list[float]] = {}
        for seed in seeds:
            setup = Setup(name, seed, data, work)
            for prefix, extra in extras.items():
                pool = Pool(Features(setup, work / "cache", extra), validation)
                row = seed_row(pool, strategies, seed, budgets, prefix, f"{name} seed {seed}")
                for key, value in row.items():
                    rows.setdefault(key, []).append(value)
        results[name] = rows
        print(f"\n{name} / balanced, seeds {seeds}{' (validation images)' if validation else ''}")
        for key, values in rows.items():
            print(mean_std_line(key, values, 44))
        sys.stdout.flush()
        if out:
            out.write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--setup", nargs="+", default=None)
    parser.add_argument("--tune", action="store_true", help="seeds 100.. on validation images; every strategy")
    parser.add_argument(
        "--strategies",
        nargs="*",
        choices=list(STRATEGIES) + ["random"],
        default=None,
        help="none: only the oracle, the k-means disagreement and label-free rows",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="labels per class")
    parser.add_argument(
        "--generic",
        type=Path,
        help="also every row with this ImageNet backbone (64x64 RGB) as a teacher = false source",
    )
    args = parser.parse_args()
    work = work_dir("routing")
    if args.tune:
        seeds, names, strategies = args.seeds or [100], args.setup or ["k3-interleaved", "k5-interleaved"], STRATEGIES
    else:
        seeds, names = args.seeds or [0, 1, 2], args.setup or list(CURVE_SETUPS)
        strategies = {"chosen": TYPICAL_PER_CLASS, "random": None}
    if args.strategies is not None:
        strategies = {k: STRATEGIES.get(k) for k in args.strategies}
    if args.tune and min(seeds) < 100:
        raise SystemExit("tuning uses seeds 100 and up; seeds 0.. are the test seeds")
    run(names, seeds, strategies, args.tune, work, args.json, args.budgets, args.generic)


if __name__ == "__main__":
    main()
