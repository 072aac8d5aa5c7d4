"""Routing on real pools: K = 2..5 teachers, distinct domains, imbalanced / dirty / shifted pools, sizes.

Issue "Routing that holds on real pools". Per setup and seed (``benchmarks.routing.setups``): teachers
trained on their own classes only, an unlabeled pool drawn from a reserve of training images the teachers
never saw, shaped by the variant, and a test set from the test split. Every "(Z)"
row is the accuracy of the Z onnxmerge built, run in onnxruntime; "routing" is the share of test images
whose most probable source (Z's ``route`` output) is the true one.

Tuning (``--tune``) uses seeds 100+ and scores on a validation part of the training reserve; the reported
rows use seeds 0.. and the test split, which no choice in onnxmerge/learn/routing.py was made on.

    python -m benchmarks.routing.pools                     # all setups, all variants, seeds 0 1 2
    python -m benchmarks.routing.pools --setup k3-interleaved --variant balanced junk20
    python -m benchmarks.routing.pools --timing            # build time at 1k / 10k / 100k pool images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import generic, mean_std_line, merger, work_dir
from benchmarks.routing.setups import (
    NEW_CLASS,
    RESERVE,
    SETUPS,
    VALIDATION,
    VARIANTS,
    Data,
    Features,
    Setup,
    before,
    blur,
    numpy_rows,
    previous_release,
    take,
    variant_pool,
)
from onnxmerge.contract import ROUTE

DETAIL = ("recall: ", "agreed images: ", "routed images: ")  # per-class rows kept in --json, not printed


_FIT_ALONE: dict = {}


def z_rows(feat: Features, variant: str, cache: Path, k: int = 5) -> dict[str, float]:
    """Every row for one setup, variant and seed; the "(Z)" rows run the Z onnxmerge built in onnxruntime."""
    setup = feat.setup
    pool_out, x_pool, true_pool, test_out, x_test, y_test = variant_pool(feat, variant)
    true_test = setup.true_source(y_test)
    row: dict[str, float] = {}

    def acc(z) -> float:
        return float(np.mean(z.predict(x_test) == y_test))

    start = time.perf_counter()
    z = merger(feat.sources, "teachers", cache).fit(unlabeled=x_pool)
    row["teachers + pool: build s"] = time.perf_counter() - start
    labels, probabilities, route = z._z_session().run(["label", "probabilities", ROUTE], {"image": x_test})
    row["teachers + pool (Z)"] = float(np.mean(labels == y_test))
    row["teachers + pool: routing (Z route output)"] = float(np.mean(route.argmax(1) == true_test))
    recall = {c: float(np.mean(labels[y_test == c] == c)) for c in feat.teachers.union}
    scarce = set(z.report_["routing"]["scarce_labels"])
    row["teachers + pool: lowest class recall"] = min(recall.values())
    named = {c for c in recall if any(repr(c) in w for w in z.warnings_)}  # the build's warnings name it
    row["teachers + pool: classes < 0.3 recall"] = float(sum(r < 0.3 for r in recall.values()))
    row["teachers + pool: classes < 0.3 recall no warning names"] = float(
        sum(r < 0.3 and c not in named for c, r in recall.items())
    )
    row["teachers + pool: labels a warning names"] = float(len(named))
    row["teachers + pool: labels named scarce"] = float(len(scarce))
    pool_routing = _route(feat, pool_out)  # as the build routed it (same inputs, same seeds)
    agreed, routed = z.report_["routing"]["label_counts"], pool_routing.label_counts(agreed=False)
    for c in feat.teachers.union:  # for judging a warning rule offline (which low-recall classes it names)
        row[f"recall: {c}"], row[f"agreed images: {c}"], row[f"routed images: {c}"] = recall[c], agreed[c], routed[c]
    row["teachers + pool: router targets / pool"] = z.report_["routing"]["router_targets"] / len(x_pool)
    owned = true_pool >= 0
    if (~owned).any():  # junk: how many of the junk images the router still learned from
        kept = pool_routing.targets() >= 0
        row["teachers + pool: junk images kept as router targets"] = float(np.mean(kept[~owned]))
        row.update(unknown_rows(z, (probabilities, route), setup.junk[-500:]))  # junk the pool did not hold
    old = numpy_rows(feat, pool_out, true_pool, before, test_out, y_test)
    row["teachers + pool, routing before issue 16 (numpy)"] = old["accuracy"]
    row["routing before issue 16: routing"] = old["routing (test)"]
    release = numpy_rows(feat, pool_out, true_pool, previous_release, test_out, y_test)
    row["previous release: 1 cluster per label, agreement >= 0.7 (numpy)"] = release["accuracy"]
    row["previous release: routing"] = release["routing (test)"]

    rng = np.random.default_rng(20_000 + setup.seed)
    candidates = (
        np.arange(VALIDATION.start)
        if "digit_0" not in setup.owner
        else np.concatenate([np.arange(VALIDATION.start), np.arange(RESERVE, len(setup.x_res))])
    )
    pick = np.concatenate(
        [rng.choice(candidates[setup.y_res[candidates] == c], k, replace=False) for c in feat.teachers.union]
    )
    x_lab, y_lab = setup.x_res[pick], setup.y_res[pick]
    if variant == "blur":
        x_lab = blur(x_lab)
    # the same labelled images for every other variant
    key = (setup.name, setup.seed, variant == "blur", k, len(feat.sources))
    if key not in _FIT_ALONE:
        _FIT_ALONE[key] = acc(merger(feat.sources, "fit", cache).fit(x_lab, y_lab))
    row[f"fit k={k}, no pool (Z)"] = _FIT_ALONE[key]
    row[f"fit k={k} + pool (Z)"] = acc(merger(feat.sources, "fit", cache).fit(x_lab, y_lab, unlabeled=x_pool))
    idx, _ = setup.pool(variant)  # the oracle: every (owned) pool image with its label
    x_own = x_pool[: len(idx)]
    row["oracle: fit on the pool's labels (Z)"] = acc(merger(feat.sources, "fit", cache).fit(x_own, setup.y_res[idx]))
    row["true-source router (numpy)"] = numpy_rows(
        feat,
        take(pool_out, np.flatnonzero(owned)),
        true_pool[owned],
        lambda f, t, p: (true_pool[owned].copy(), np.ones(int(owned.sum()))),
        test_out,
        y_test,
    )["accuracy"]
    return row


def unknown_rows(z, own: tuple[np.ndarray, np.ndarray], x_junk: np.ndarray) -> dict[str, float]:
    """Could Z say "unknown"? How well its max probability / max route (``own``: Z's outputs on the test
    images of the union) tell them from junk of no union class (AUROC), and how much junk passes a
    threshold that keeps 95% of the own images."""
    from sklearn.metrics import roc_auc_score

    rows = {}
    junk = z._z_session().run(["probabilities", ROUTE], {"image": x_junk})
    for name, i in (("max probability", 0), ("max route", 1)):
        a, b = own[i].max(1), junk[i].max(1)
        threshold = np.quantile(a, 0.05)
        rows[f"unknown by Z's {name}: AUROC own vs junk"] = float(
            roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b])
        )
        rows[f"unknown by Z's {name}: junk passing at 95% own kept"] = float(np.mean(b >= threshold))
    return rows


def _route(feat: Features, pool_out: dict):
    """``route_pool`` with its defaults on the pool's source outputs, as the build calls it."""
    from onnxmerge.graph.stitch import output_names
    from onnxmerge.learn.head import HeadInput
    from onnxmerge.learn.routing import l2_blocks, route_pool

    blocks = [pool_out[output_names(s["name"])["feature"]] for s in feat.sources]
    probs = [HeadInput.probabilities(pool_out, n, kind) for n, kind in feat.base.teachers_]
    return route_pool(l2_blocks(blocks), feat.teachers, probs)


def new_class_rows(feat: Features, variant: str, data: Data, cache: Path, shots=(1, 5)) -> dict[str, float]:
    """Teachers mode + pool + a class no teacher has, learned from ``shots`` images (training images of that
    class, which no teacher saw); scored on the test split's images of it and the setup's test set."""
    new = NEW_CLASS[feat.setup.name]
    pool_out, x_pool, true_pool, test_out, x_test, y_test = variant_pool(feat, variant)
    rng = np.random.default_rng(30_000 + feat.setup.seed)
    x_new_test = data.xte[rng.choice(np.flatnonzero(data.yte == new), 200, replace=False)]
    if variant == "blur":
        x_new_test = blur(x_new_test)
    row = {}
    for k in shots:
        x_new = data.xtr[rng.choice(np.flatnonzero(data.ytr == new), k, replace=False)]
        if variant == "blur":
            x_new = blur(x_new)
        z = merger(feat.sources, "teachers", cache).fit(x_new, np.full(k, new), unlabeled=x_pool)
        row[f"new class from {k} (teachers + pool): its recall"] = float(np.mean(z.predict(x_new_test) == new))
        row[f"new class from {k}: accuracy on the old classes"] = float(np.mean(z.predict(x_test) == y_test))
    return row


def timing(work: Path, data: Data) -> None:
    """Build time (routing + router fit) at 1k / 10k / 100k pool images: teachers of k3-interleaved seed 0."""
    from onnxmerge.config import ROUTER_C
    from onnxmerge.graph.stitch import output_names
    from onnxmerge.learn.head import HeadInput, fit_head
    from onnxmerge.learn.routing import l2_blocks, route_pool

    setup = Setup("k3-interleaved", 100, data, work)
    feat = Features(setup, work / "cache")
    # 100,000 distinct images of the union: all 70,000 Fashion-MNIST images and 30,000 of them mirrored
    x_all = np.concatenate([data.xtr, data.xte, data.xtr[:30000, :, ::-1]])
    out = feat.outputs(x_all)
    print(f"\nbuild time against pool size, {setup.name} seed 100 (routing + router fit; extraction not counted)")
    for n in (1000, 10000, 100000):
        pool = take(out, np.random.default_rng(0).choice(len(x_all), n, replace=False))
        blocks = [pool[output_names(s["name"])["feature"]] for s in setup.sources]
        probs = [HeadInput.probabilities(pool, name, kind) for name, kind in feat.base.teachers_]
        start = time.perf_counter()
        routing = route_pool(l2_blocks(blocks), feat.teachers, probs)
        middle = time.perf_counter()
        targets = routing.targets()
        x = feat.head_input.numpy(pool).astype(np.float64)
        fit_head(x[targets >= 0], targets[targets >= 0], feat.widths, C=ROUTER_C, class_weight="balanced")
        end = time.perf_counter()
        print(
            f"pool {n:>7}: routing {middle - start:6.1f} s, router fit {end - middle:6.1f} s, total {end - start:6.1f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setup", choices=list(SETUPS), nargs="+", default=list(SETUPS))
    parser.add_argument("--variant", choices=VARIANTS, nargs="+", default=VARIANTS)
    parser.add_argument("--work", type=Path, default=None, help="teachers and caches (default: common.work_dir)")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every row and seed here")
    parser.add_argument(
        "--generic",
        type=Path,
        help="also every row with this ImageNet backbone (64x64 RGB) as a teacher = false source",
    )
    args = parser.parse_args()
    args.work = args.work or work_dir("routing")
    args.work.mkdir(parents=True, exist_ok=True)
    data = Data()
    if args.timing:
        timing(args.work, data)
        return
    results = {}
    # with --generic, every row also with the backbone as a teacher = false source, side by side
    extras = {"": None} if args.generic is None else {"": None, "+ generic: ": generic(args.generic)}
    for name in args.setup:
        setups = {seed: Setup(name, seed, data, args.work) for seed in args.seeds}
        feats = {(s, p): Features(setups[s], args.work / "cache", e) for s in args.seeds for p, e in extras.items()}
        for variant in args.variant:
            if variant == "junk20" and "digit_0" in Setup.owner_of(name):
                continue
            rows: dict[str, list[float]] = {}
            for seed in args.seeds:
                for prefix in extras:
                    feat = feats[seed, prefix]
                    row = z_rows(feat, variant, args.work / "cache")
                    if name in NEW_CLASS:
                        row.update(new_class_rows(feat, variant, data, args.work / "cache"))
                    for key, value in row.items():
                        rows.setdefault(prefix + key, []).append(value)
            results[f"{name} / {variant}"] = rows
            print(f"\n{name} / {variant}, seeds {args.seeds} (mean +- std; per seed)")
            for key, values in rows.items():
                if key.startswith(DETAIL):
                    continue
                print(mean_std_line(key, values))
            sys.stdout.flush()
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
