"""What a generic ImageNet backbone added as a ``teacher = false`` source costs Z: file size and time per batch.

The accuracy it buys is measured by ``labels.py --generic`` and ``pools.py --generic``; this is the other side:
one setup and seed's teachers-mode Z (with the "balanced" pool) built with and without the backbone, both
run by onnxruntime on CPU (``benchmarks.common.session``: 2 threads, no spinning) at batch 32, in alternating
blocks, medians of each.

    python -m benchmarks.routing.generic /work/i27-bench/lite0_base.onnx --setup k3-interleaved --seed 0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import generic, median_time, merger, session, work_dir
from benchmarks.routing.setups import SETUPS, Data, Setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backbone", type=Path, help="the ImageNet backbone's ONNX file (64x64 RGB, NCHW)")
    parser.add_argument("--setup", choices=list(SETUPS), default="k3-interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=5, help="alternating timing blocks per Z")
    parser.add_argument("--runs", type=int, default=10, help="calls per block")
    args = parser.parse_args()
    work = work_dir("routing")
    setup = Setup(args.setup, args.seed, Data(), work)
    x_pool = setup.x_res[setup.pool("balanced")[0]]
    batch = setup.x_test[: args.batch]
    variants = {"teachers only": setup.sources, "+ generic (teacher = false)": setup.sources + [generic(args.backbone)]}
    sessions, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sources in variants.items():
            path = Path(tmp) / f"{len(sources)}.onnx"
            merger(sources, "teachers", work / "cache").fit(unlabeled=x_pool).save(path)
            sizes[name] = path.stat().st_size
            sessions[name] = session(path)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, s in sessions.items():  # warm-up
        s.run(None, {"image": batch})
    for _ in range(args.blocks):
        for name, s in sessions.items():
            times[name].append(median_time(lambda s=s: s.run(["label"], {"image": batch}), args.runs))
    base = float(np.median(times["teachers only"]))
    print(f"{args.setup} seed {args.seed}, teachers-mode Z with the balanced pool, batch {args.batch}, CPU 2 threads")
    for name in variants:
        t = float(np.median(times[name]))
        print(
            f"{name:30} {sizes[name] / 1e6:7.2f} MB  {t * 1e3:8.1f} ms per batch "
            f"({t / args.batch * 1e3:.2f} ms per image, {t / base:.1f}x)"
        )


if __name__ == "__main__":
    main()
