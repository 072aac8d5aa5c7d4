"""Merged Z (one backbone, weights merged) vs concatenated Z (every source's backbone), side by side.

    python -m benchmarks.merging.run [--work DIR] [--setups lite0_2,lite0_3,cnn_seeds] [--json OUT]

Reads what ``benchmarks/merging/make_models.py`` wrote into DIR (default ``work_dir("merging")``). Per setup,
rows: each source alone on its own task's test images (task-aware), the concatenated Z, and the merged Z per
method (union accuracy on every test image of the setup's tasks; task-aware accuracy: Z's probabilities
restricted to each task's labels, on that task's images; each source's own head on the merged backbone, as
mode "teachers" uses it, task-aware; the time of one call at batch 32), the oracle
where there is one (Lite0 fine-tuned on both fashion tasks together). Every Z is built in mode "fit" from
``train.npz`` (20 labelled images per class) and ``pool.npz`` (``POOL_PER_TASK`` per task; the test set
``TEST_PER_TASK`` per task). Times: each Z's own session (2 threads, idle
threads not spinning), the Zs' calls interleaved, median of ``RUNS``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import IMAGENET, session, work_dir
from onnxmerge.graph.preprocess import ImageInput, Preprocess, reference_preprocess
from onnxmerge.merger import Merger
from onnxmerge.stages.merging import MergeSpec
from onnxmerge.stages.sources import Source

TASKS = {
    "fashionA": ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat"],
    "fashionB": ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"],
    "digits": [f"digit_{d}" for d in range(10)],
}
LITE0 = Preprocess(IMAGENET["scale"], IMAGENET["mean"], IMAGENET["std"], 64, 64, 3, "NCHW")
CNN = Preprocess(1 / 255, (0.286,), (0.353,), 28, 28, 1, "NCHW")
SETUPS = {
    "lite0_2": ([("fashionA", "lite0_fashionA"), ("fashionB", "lite0_fashionB")], LITE0, "lite0_base", "lite0_oracle"),
    "lite0_3": ([("fashionA", "lite0_fashionA"), ("fashionB", "lite0_fashionB"), ("digits", "lite0_digits")], LITE0,
                "lite0_base", None),
    "cnn_seeds": ([("fashionA", "cnn_fashionA_seed0"), ("fashionB", "cnn_fashionB_seed1")], CNN, None, None),
}  # fmt: skip
# (method, with the base model): with a base, task arithmetic and TIES, and RegMean (which needs none) beside
METHODS = {True: [("task_arithmetic", True), ("ties", True), ("regmean", False), ("adamerging", True), ("auto", True)],
           False: [("average", False), ("regmean", False), ("align", False), ("auto", False)]}  # fmt: skip
IMAGE = ImageInput(28, 28, 1)
BATCH, RUNS = 32, 15
# the machine is shared by six engineers: the pool and the test set are subsampled so that a setup runs in
# minutes (a test set of 500 images per task: a standard error of about 1.5 points on a union accuracy of 0.8)
POOL_PER_TASK, TEST_PER_TASK = 200, 500


def subset(data, tasks: list[str], per_task: int | None = None) -> dict:
    """The images of ``tasks``, at most ``per_task`` of each (a seeded random subset)."""
    keep = np.isin(data["task"], tasks)
    if per_task is not None:
        rng = np.random.default_rng(0)
        mine = [rng.permutation(np.flatnonzero(data["task"] == t))[:per_task] for t in tasks]
        keep = np.isin(np.arange(len(keep)), np.concatenate(mine))
    return {k: data[k][keep] for k in data.files}


def alone(path: Path, pre: Preprocess, x: np.ndarray, y: np.ndarray, labels: list[str]) -> float:
    """A source by itself on its own task's images: argmax of its logits."""
    s = session(str(path))
    logits = s.run(None, {s.get_inputs()[0].name: reference_preprocess(x, IMAGE, pre)})[0]
    return float(np.mean(np.asarray(labels)[logits.argmax(1)] == y))


def scores(z: Merger, test: dict, tasks: list[str]) -> tuple[float, float]:
    """Union accuracy, and task-aware accuracy (Z's probabilities over each task's labels, on its images)."""
    probs = z.predict_proba(test["x"])
    classes = np.asarray(z.classes_)
    union = float(np.mean(classes[probs.argmax(1)] == test["y"]))
    right = 0
    for task in tasks:
        mine = test["task"] == task
        cols = np.isin(classes, TASKS[task])
        right += int(np.sum(classes[cols][probs[mine][:, cols].argmax(1)] == test["y"][mine]))
    return union, right / len(test["y"])


def own_heads(z: Merger, test: dict, tasks: list[str]) -> float:
    """Task-aware accuracy of each source's own head on Z's (merged) backbone: mode "teachers"'s view."""
    right = 0
    for task in tasks:
        mine = test["task"] == task
        head = z.source_outputs(test["x"][mine], [f"{task}/head"])[f"{task}/head"]
        right += int(np.sum(np.asarray(TASKS[task])[head.argmax(1)] == test["y"][mine]))
    return right / len(test["y"])


def times(models: dict[str, object], images: np.ndarray) -> dict[str, float]:
    """Median seconds per call at batch 32 of each Z, their calls interleaved (one session each)."""
    sessions = {name: session(m) for name, m in models.items()}
    for s in sessions.values():
        s.run(None, {"image": images})
    out = {name: [] for name in sessions}
    for _ in range(RUNS):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"image": images})
            out[name].append(time.perf_counter() - start)
    return {name: float(np.median(v)) for name, v in out.items()}


def run_setup(work: Path, name: str, methods: list[str] | None = None, repair: str | bool = False) -> dict:
    """One setup's rows; ``methods``: the merge methods to build (default: every one of ``METHODS``), each with
    ``repair`` ([merge] repair: False builds each method as such, "auto" lets the build add REPAIR twins)."""
    pairs, pre, base, oracle = SETUPS[name]
    tasks = [t for t, _ in pairs]
    train, pool, test = (np.load(work / f"{k}.npz") for k in ("train", "pool", "test"))
    train, pool, test = subset(train, tasks), subset(pool, tasks, POOL_PER_TASK), subset(test, tasks, TEST_PER_TASK)
    rows = []
    for task, model in pairs:
        mine = test["task"] == task
        acc = alone(work / f"{model}.onnx", pre, test["x"][mine], test["y"][mine], TASKS[task])
        rows.append({"row": f"{model} alone (task-aware, {task})", "task_aware": acc})
    sources = [Source(t, work / f"{m}.onnx", pre, labels=TASKS[t]) for t, m in pairs]
    zs, concat = {}, None
    for method, with_base in METHODS[base is not None]:
        if methods and method not in methods:
            continue
        spec = MergeSpec(
            mode="weights", base=work / f"{base}.onnx" if with_base else None, method=method,
            repair="auto" if method == "auto" else repair,
        )  # fmt: skip
        start = time.perf_counter()
        z = Merger(IMAGE, sources, merge=spec, quiet=True, cache_dir=work / "cache")
        z.fit(train["x"], train["y"], unlabeled=pool["x"])
        merge = z.report_["merge"]
        union, aware = scores(z, test, tasks)
        label = merge["method"] + (" (method auto)" if method == "auto" else "")
        zs[label] = z.model_
        rows.append(
            {
                "row": f"merged Z: {label}",
                "union": union,
                "task_aware": aware,
                "own_heads": own_heads(z, test, tasks),
                "expected_accuracy": merge["accuracy"]["weights"],
                "concat_expected_accuracy": merge["accuracy"]["concat"],
                "candidates": merge["candidates"],
                "notes": merge["notes"],
                "build_seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
        if concat is None:  # the concatenated Z once (mode "concat")
            c = Merger(IMAGE, sources, quiet=True, cache_dir=work / "cache").fit(
                train["x"], train["y"], unlabeled=pool["x"]
            )
            union, aware = scores(c, test, tasks)
            concat = {"row": "concatenated Z", "union": union, "task_aware": aware}
            zs["concat"] = c.model_
    rows.insert(len(pairs), concat)
    if oracle and (work / f"{oracle}.onnx").exists():
        acc = alone(work / f"{oracle}.onnx", pre, test["x"], test["y"], sum((TASKS[t] for t in tasks), []))
        rows.append({"row": f"oracle: {oracle} (one Lite0 fine-tuned on both tasks)", "union": acc})
    seconds = times(zs, test["x"][:BATCH])
    for row in rows:
        key = "concat" if row["row"] == "concatenated Z" else row["row"].removeprefix("merged Z: ")
        if key in seconds:
            row["seconds_b32"] = seconds[key]
            row["time_vs_concat"] = seconds[key] / seconds["concat"]
    return {"setup": name, "rows": rows, "test_images": len(test["y"])}


def table(result: dict) -> str:
    lines = [f"**{result['setup']}** ({result['test_images']} test images)", "",
             "| row | union acc | task-aware acc | own heads, task-aware | ms / batch 32 | time vs concat |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        union = f"{r['union']:.3f}" if "union" in r else ""
        aware = f"{r['task_aware']:.3f}" if "task_aware" in r else ""
        ms = f"{r['seconds_b32'] * 1000:.1f}" if "seconds_b32" in r else ""
        ratio = f"{r['time_vs_concat']:.2f}x" if "time_vs_concat" in r else ""
        own = f"{r['own_heads']:.3f}" if "own_heads" in r else ""
        lines.append(f"| {r['row']} | {union} | {aware} | {own} | {ms} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--setups", default="lite0_2,lite0_3,cnn_seeds")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--methods", default=None, help="comma-separated merge methods (default: all, and auto)")
    parser.add_argument(
        "--repair", choices=["false", "true", "auto"], default="false", help="[merge] repair of each method"
    )
    args = parser.parse_args()
    work = args.work or work_dir("merging")
    repair = {"false": False, "true": True, "auto": "auto"}[args.repair]
    methods = args.methods.split(",") if args.methods else None
    results = [run_setup(work, name, methods, repair) for name in args.setups.split(",")]
    for result in results:
        print(table(result), "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
