"""Issue 14: can routing subsample a large pool (what a cluster build gathers) without losing accuracy?

A cluster build gathers, for every labelled and pool image, each source's feature and each teacher's head
output (what the head and the router fit on). Routing's cost grows with the pool: its 25 k-means runs fit
on at most ``fit_images`` pool images (``KMEANS_FIT_IMAGES``) and then only assign every image to the nearest
centroid. This script varies ``fit_images`` on one large pool and reports, side by side in one run, the
routing accuracy on the pool (against the pool's true sources), Z's accuracy (the head's math in numpy, on
validation images of the training reserve: never the test split) and the routing + router-fit time.

Teachers and features come from ``benchmarks.routing.setups`` (trained once, cached under ``--work``).

    python -m benchmarks.routing.subsample [--setup k3-interleaved] [--seed 100] [--variant n10000]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.common import work_dir
from benchmarks.routing.setups import SETUPS, VARIANTS, Data, Features, Setup, numpy_rows, variant_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=list(SETUPS), default="k3-interleaved")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--variant", choices=VARIANTS, default="n10000")
    parser.add_argument("--fit-images", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--work", type=Path, default=None, help="teachers and caches (default: common.work_dir)")
    args = parser.parse_args()
    args.work = args.work or work_dir("routing")
    from onnxmerge.learn.routing import route_pool

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.setup} seed {args.seed}, pool {args.variant}"
    )
    setup = Setup(args.setup, args.seed, Data(), args.work)
    feat = Features(setup, args.work / "cache")
    pool_out, _, true_pool, test_out, _, y_test = variant_pool(feat, args.variant, validation=True)
    print(f"pool: {len(true_pool)} images; validation: {len(y_test)} reserve images")

    def route(features, teachers, probs, fit_images: int):
        routing = route_pool(features, teachers, probs, fit_images=fit_images)
        return routing.targets(), np.ones(len(features))

    print(f"{'k-means fit on':>15} {'routing (pool)':>15} {'Z accuracy':>11} {'seconds':>8}")
    for n in args.fit_images:
        row = numpy_rows(feat, pool_out, true_pool, functools.partial(route, fit_images=n), test_out, y_test)
        print(
            f"{min(n, len(true_pool)):>15} {row['routing (pool targets)']:>15.3f} {row['accuracy']:>11.3f} "
            f"{row['seconds']:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
