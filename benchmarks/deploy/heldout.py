"""Does ``--quantize``'s accuracy claim hold on images it never saw? (issue 29)

Three disjoint sets of Fashion-MNIST images (upscaled to 224x224 RGB, Pillow bilinear), none of them among
the 12,000 the small CNN sources trained on (``export_sources.py``):

- **calibrate**: a pool of unlabelled training images (``--pool``): the calibration draws from it first;
- **estimate**: ``--train`` labelled training images: the head is fitted on them and ``quantize_z``
  scores its int8 candidates on them (held out from calibration and from each fold's head);
- **test**: ``--test`` images of the test split, never fitted on, calibrated on or scored by the build.

For each Z: float and int8 estimate against float and int8 accuracy on the test images, the decision, the
whole Z's int8 / float time at batch 32 (``--rounds`` interleaved rounds, median and spread, side by side in
this run), file sizes, and the quantize step's time and peak memory. The first Z is also quantised with
64/128/256/512 calibration images (``--sizes``).

    .venv-fx/bin/python -m benchmarks.deploy.export_sources DIR   # once (default DIR: common.work_dir("q29"))
    python -m benchmarks.deploy.heldout [--models DIR] [--zs lite0+2cnn,lite0+keras,lite0+lite1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.common import EXAMPLE, IMAGENET, read_split, session, upscale, work_dir
from benchmarks.deploy.edge import run

SOURCE_IMAGES = 12_000  # export_quantize_sources.py trains the small CNNs on the train split's first 12,000
GRAY = {"scale": 1 / 255, "mean": (0.286,), "std": (0.353,)}
ZS = {
    "lite0+2cnn": [("lite0", "lite0_imagenet.onnx", IMAGENET), ("a", "a_torch_cnn.onnx", GRAY),
                   ("b", "b_torch_cnn.onnx", GRAY)],
    "lite0+keras": [("lite0", "lite0_imagenet.onnx", IMAGENET),
                    ("keras", "keras_cnn.onnx", {"scale": 1 / 255, "mean": (0.0,), "std": (1.0,)})],
    "lite0+lite1": [("lite0", "lite0_imagenet.onnx", IMAGENET), ("lite1", "lite1_imagenet.onnx", IMAGENET)],
}  # fmt: skip


def data(args) -> dict[str, np.ndarray]:
    x, y = read_split("train")
    order = SOURCE_IMAGES + np.random.default_rng(0).permutation(len(x) - SOURCE_IMAGES)
    labelled, pool = order[: args.train], order[args.train : args.train + args.pool]
    tx, ty = read_split("t10k")
    test = np.random.default_rng(1).permutation(len(tx))[: args.test]
    return {
        "x": upscale(x[labelled]),
        "y": y[labelled].astype(str),
        "pool": upscale(x[pool]),
        "test_x": upscale(tx[test]),
        "test_y": ty[test].astype(str),
    }


def merger_for(args, name: str):
    from onnxmerge import ImageInput, Merger, Preprocess, Source

    folder = Path(args.models)
    models = {"a_torch_cnn.onnx": EXAMPLE / "models" / "a_torch_cnn.onnx"}
    sources = [Source(n, models.get(f, folder / f), Preprocess(**pre)) for n, f, pre in ZS[name]]
    return Merger(ImageInput(224, 224, 3), sources, quiet=True)


def one_z(args, name: str, d: dict, sizes: list[int]) -> list[dict]:
    from onnxmerge.learn.qestimate import HeadFit
    from onnxmerge.learn.quantize import CALIBRATION_IMAGES, QuantizeInputs, quantize_z
    from onnxmerge.learn.timing import time_ratios

    start = time.perf_counter()
    merger = merger_for(args, name).fit(d["x"], d["y"])
    float_z = merger.model_
    print(f"\n== {name}: float Z built in {time.perf_counter() - start:.0f} s", flush=True)
    fit = HeadFit(merger.head_input_.widths(merger.widths_), merger.report_["C"], merger.class_weight)
    names = [s.spec.name for s in merger.sources_]
    f_labels, _ = run(session(float_z), d["test_x"])
    rows = []
    for size in sizes:
        inputs = QuantizeInputs(float_z, names, d["x"], d["y"], d["pool"], fit)
        rounds = args.rounds if size == CALIBRATION_IMAGES else 3  # the sweep is about accuracy, not time
        _, report = quantize_z(inputs, calibration_images=size, rounds=rounds, keep_candidate=True)
        print(f"-- {name}, {size} calibration images\n" + "\n".join(report.lines), flush=True)
        if name == "lite0+2cnn" and size == CALIBRATION_IMAGES:  # docs/quantize.md pastes this run
            _check_pasted("quantize-lite0", "\n".join(report.lines))
        candidate = report.candidate  # the best int8 Z, written or not: is refusing it right?
        row = {
            "z": name,
            "calibration_images": size,
            "float_estimate": report.float_accuracy,
            "int8_estimate": report.int8_accuracy,
            "float_test": float(np.mean(f_labels == d["test_y"])),
            "accepted": report.accepted,
            "reason": report.reason,
            "agreement_estimate": report.agreement,
            "pool_agreement": report.pool_agreement,
            "quantize_seconds": report.seconds,
            "quantize_cpu_seconds": report.cpu_seconds,
            "quantize_peak_mb": report.peak_mb,
            "build_time_ratio": report.time_ratio.as_dict() if report.time_ratio else None,
            "int8_sources": report.int8_sources,
            "method": report.method,
        }
        if candidate is not None:
            q_labels, _ = run(session(candidate), d["test_x"])
            row["int8_test"] = float(np.mean(q_labels == d["test_y"]))
            row["test_agreement"] = float(np.mean(q_labels == f_labels))
            side = time_ratios([float_z, candidate], d["test_x"][:32], args.rounds + 2, 3)[1]
            row["side_by_side_ratio"] = side.as_dict()
            row["size_ratio"] = len(candidate.SerializeToString()) / len(float_z.SerializeToString())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _check_pasted(key: str, output: str) -> None:
    from tests.pasted import assert_pasted

    try:
        assert_pasted(key, output)
        print(f"pasted block {key}: as printed today")
    except AssertionError as exc:
        print(f"pasted block {key}: DIFFERS: {exc}")


def table(rows: list[dict]) -> str:
    head = (
        "| Z | calibration images | float estimate | float test | int8 estimate | int8 test | |est - test| int8 "
        "| int8 loss, estimate / test (points) | written | int8 / float time (side by side) | size "
        "| quantize s (CPU s) | peak MB |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        t, est, side = r.get("int8_test"), r["int8_estimate"], r.get("side_by_side_ratio")
        cells = [
            r["z"],
            r["calibration_images"],
            f"{r['float_estimate']:.3f}",
            f"{r['float_test']:.3f}",
            "n/a" if est is None else f"{est:.3f}",
            "n/a" if t is None else f"{t:.3f}",
            "n/a" if t is None or est is None else f"{100 * abs(est - t):.1f}",
            "n/a"
            if t is None or est is None
            else f"{100 * (r['float_estimate'] - est):+.1f} / {100 * (r['float_test'] - t):+.1f}",
            "int8" if r["accepted"] else "float: " + r["reason"],
            "n/a" if side is None else f"{side['median']:.2f} ({side['low']:.2f}-{side['high']:.2f})",
            f"{r.get('size_ratio', 1.0):.2f}x",
            f"{r['quantize_seconds']:.0f} ({r['quantize_cpu_seconds']:.0f})",
            f"{r['quantize_peak_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="export_sources.py's folder (default work_dir('q29'))")
    parser.add_argument("--zs", default=",".join(ZS))
    parser.add_argument("--sizes", default="64,128,256,512", help="calibration images tried on the first Z")
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--pool", type=int, default=640)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--table", default=None, help="only print the table of a --json file written before")
    args = parser.parse_args()
    if args.table:
        return print(table(json.loads(Path(args.table).read_text())))
    args.models = args.models or str(work_dir("q29"))
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, load average "
        f"{os.getloadavg()[0]:.1f}; onnx {onnx.__version__}, onnxruntime {ort.__version__}",
        flush=True,
    )
    d = data(args)
    rows = []
    for i, name in enumerate(args.zs.split(",")):
        from onnxmerge.learn.quantize import CALIBRATION_IMAGES

        sizes = [int(s) for s in args.sizes.split(",")] if i == 0 else [CALIBRATION_IMAGES]
        rows += one_z(args, name, d, sizes)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n" + table(rows))


if __name__ == "__main__":
    main()
