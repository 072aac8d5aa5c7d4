"""Routing between sources without their training data: union accuracy of every mode, over seeds.

Protocol (issue "Route between sources"): Fashion-MNIST; per seed, an unlabeled pool of 1,000 training
images and a test set of 1,000 test images; sources trained on the rest of the training split, on disjoint
classes, in two frameworks (``benchmarks.common.teacher``: a PyTorch CNN and a scikit-learn MLP). Fashion-MNIST's
train split is shuffled with the seed and split into the sources' training images (each source sees only its
own classes), the unlabeled pool and the test images. A new 11th class "digit" (scikit-learn's handwritten
digits, upscaled to 28x28) is learned from 1 or 5 images. Every Z row is measured by running the Z that
onnxmerge built in onnxruntime; the "max-probability" and "calibrated scores" rows are the naive baselines,
computed in numpy from the same sources' outputs.

    pip install -e . -r benchmarks/accuracy/requirements.txt
    python -m benchmarks.accuracy.modes --seeds 5      # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CLASSES, digits_28, mean_std_line, merger, read_split, teacher, work_dir
from onnxmerge.contract import ROUTE
from onnxmerge.graph.stitch import output_names
from onnxmerge.learn.routing import head_kind, to_probabilities
from onnxmerge.merger import Merger

SPLITS = {
    "2 sources (5+5)": [("torch", CLASSES[:5]), ("sklearn", CLASSES[5:])],
    "3 sources (4+3+3)": [("torch", CLASSES[:4]), ("sklearn", CLASSES[4:7]), ("torch", CLASSES[7:])],
}
SOURCE_TRAIN_PER_CLASS = 2000  # enough for within-task accuracy near the reference (0.93 / 0.97)


def make_sources(
    split: list[tuple[str, list[str]]], seed: int, work: Path, x: np.ndarray, y: np.ndarray, exclude: np.ndarray
) -> list[dict]:
    """One teacher per ``(framework, classes)``, trained on images not in ``exclude`` (cached per seed, split)."""
    rng = np.random.default_rng(1000 + seed)
    allowed = np.setdiff1d(np.arange(len(x)), exclude)

    def training(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pick = np.concatenate(
            [rng.choice(allowed[y[allowed] == c], SOURCE_TRAIN_PER_CLASS, replace=False) for c in labels]
        )
        return x[pick], y[pick]

    sources = []
    for i, (framework, labels) in enumerate(split):
        path = work / f"seed{seed}_{i}_{framework}_{'-'.join(c[:3] for c in labels)}.onnx"
        sources.append(teacher(f"s{i}_{framework}", framework, labels, seed, path, lambda: training(labels)))
    return sources


def run_seed(split: list, seed: int, work: Path, data: dict, k_values: list[int]) -> dict[str, float]:
    xtr, ytr, xte, yte, digits = data["xtr"], data["ytr"], data["xte"], data["yte"], data["digits"]
    rng = np.random.default_rng(seed)
    pool_idx = rng.choice(len(xtr), 1000, replace=False)
    test_idx = rng.choice(len(xte), 1000, replace=False)
    digit_idx = rng.permutation(len(digits))
    x_pool, y_pool, x_test, y_test = xtr[pool_idx], ytr[pool_idx], xte[test_idx], yte[test_idx]
    x_digit_test = digits[digit_idx[10:210]]
    sources = make_sources(split, seed, work, xtr, ytr, exclude=pool_idx)
    owner = {label: i for i, s in enumerate(sources) for label in s["labels"]}
    true_source = np.asarray([owner[v] for v in y_test])
    cache = work / "cache"
    row: dict[str, float] = {}

    def acc(z: Merger) -> float:
        return float(np.mean(z.predict(x_test) == y_test))

    # baselines in numpy from the sources' own outputs
    base = merger(sources, "teachers", cache).fit()
    outs = base.source_outputs(x_test, [output_names(s["name"])["head"] for s in sources])
    pool_outs = base.source_outputs(x_pool, [output_names(s["name"])["head"] for s in sources])
    union = np.asarray([label for s in sources for label in s["labels"]])
    raw = np.concatenate([outs[output_names(s["name"])["head"]] for s in sources], axis=1)
    probs = [
        to_probabilities(outs[output_names(s["name"])["head"]], head_kind(outs[output_names(s["name"])["head"]]))
        for s in sources
    ]
    for i, s in enumerate(sources):  # each source alone, among its own labels, on its own images
        mine = true_source == i
        row[f"source {i} alone (task-aware)"] = float(
            np.mean(np.asarray(s["labels"])[probs[i][mine].argmax(1)] == y_test[mine])
        )
    row["naive argmax over concatenated outputs"] = float(np.mean(union[raw.argmax(1)] == y_test))
    msp = np.stack([p.max(1) for p in probs], 1)
    routed = msp.argmax(1)
    picked = np.asarray([sources[r]["labels"][probs[r][n].argmax()] for n, r in enumerate(routed)])
    row["max-probability routing"] = float(np.mean(picked == y_test))
    row["max-probability routing: routing accuracy"] = float(np.mean(routed == true_source))
    pool_probs = [
        to_probabilities(
            pool_outs[output_names(s["name"])["head"]], head_kind(pool_outs[output_names(s["name"])["head"]])
        )
        for s in sources
    ]
    pool_msp = np.log(np.stack([p.max(1) for p in pool_probs], 1))
    z = (np.log(msp) - pool_msp.mean(0)) / pool_msp.std(0)
    routed = z.argmax(1)
    picked = np.asarray([sources[r]["labels"][probs[r][n].argmax()] for n, r in enumerate(routed)])
    row["teachers, scores standardised on the pool (numpy)"] = float(np.mean(picked == y_test))
    row["teachers, no pool (Z)"] = acc(base)

    teachers = merger(sources, "teachers", cache).fit(unlabeled=x_pool)
    row["teachers + pool (Z)"] = acc(teachers)
    z_out = teachers._z_session().run([ROUTE, "probabilities"], {"image": x_test})
    row["teachers + pool: routing accuracy"] = float(np.mean(z_out[0].argmax(1) == true_source))
    z_probs = z_out[1]
    for i, s in enumerate(sources):  # task-aware inside Z, relative to the source alone
        mine = true_source == i
        cols = [teachers.classes_.index(label) for label in s["labels"]]
        inside = np.asarray(s["labels"])[z_probs[mine][:, cols].argmax(1)]
        row[f"retention source {i} (Z task-aware / alone)"] = (
            float(np.mean(inside == y_test[mine])) / row[f"source {i} alone (task-aware)"]
        )
    row["fit on pool pseudo-labels (Z)"] = acc(merger(sources, "fit", cache).fit(unlabeled=x_pool))
    for k in k_values:
        pick = np.concatenate([rng.choice(np.flatnonzero(y_pool == c), k, replace=False) for c in np.unique(y_pool)])
        row[f"fit k={k}, no pool (Z)"] = acc(merger(sources, "fit", cache).fit(x_pool[pick], y_pool[pick]))
        row[f"fit k={k} + pool (Z)"] = acc(
            merger(sources, "fit", cache).fit(x_pool[pick], y_pool[pick], unlabeled=x_pool)
        )
    row["oracle: fit on all 1,000 pool labels (Z)"] = acc(merger(sources, "fit", cache).fit(x_pool, y_pool))

    for n_new in (1, 5):  # stage 2 in teachers mode: only the new class's images are labelled
        new = digits[digit_idx[:n_new]]
        z2 = merger(sources, "teachers", cache).fit(new, ["digit"] * n_new, unlabeled=x_pool)
        row[f"new class from {n_new}: recall (teachers + pool)"] = float(np.mean(z2.predict(x_digit_test) == "digit"))
        row[f"new class from {n_new}: old classes after (teachers + pool)"] = acc(z2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--split", choices=list(SPLITS), action="append")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--work", type=Path, default=None, help="teachers and caches (default: common.work_dir)")
    args = parser.parse_args()
    args.work = args.work or work_dir("accuracy")
    args.work.mkdir(parents=True, exist_ok=True)
    xtr, ytr = read_split("train")
    xte, yte = read_split("t10k")
    data = {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte, "digits": digits_28()}
    for name in args.split or list(SPLITS):
        rows: dict[str, list[float]] = {}
        start = time.time()
        for seed in range(args.seeds):
            for key, value in run_seed(SPLITS[name], seed, args.work, data, args.k).items():
                rows.setdefault(key, []).append(value)
            print(f"# {name}: seed {seed} done ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
        print(f"\n{name}, {args.seeds} seeds, 1,000 test images, 1,000-image pool (mean +- std; per seed)")
        print(f"{'':58} {'mean':>6} {'std':>6}  per seed")
        for key, values in rows.items():
            print(mean_std_line(key, values))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
