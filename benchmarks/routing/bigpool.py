"""More data never hurts? Routing choices for large pools, on the tuning protocol (seed 100+, validation reserve).

Issue "Routing that holds on real pools": on test seeds a 10,000-image pool scored below the 1,000-image
one at K=2 (0.774 vs 0.813). Candidates scored in numpy on 1k and 10k pools: k-means fitted on at most
5,000 (the default then) or 1,000 pool images per run, and the router's C kept or scaled by 1,000 / N so
that its regularisation per image stays that of a 1,000-image pool.

    nice -n 19 python -m benchmarks.routing.bigpool --seed 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import work_dir
from benchmarks.routing.setups import numpy_rows, validation_cases
from onnxmerge.config import ROUTER_C
from onnxmerge.learn.routing import route_pool

CASES = [
    "k2-interleaved/balanced",
    "k2-interleaved/n10000",
    "k3-interleaved/balanced",
    "k3-interleaved/n10000",
    "k5-interleaved/balanced",
    "k5-interleaved/n10000",
]
METHODS = {
    "fit 5000, C": (5000, False),
    "fit 1000, C": (1000, False),
    "fit 5000, C x 1000/N": (5000, True),
    "fit 1000, C x 1000/N": (1000, True),
}


def score(feat, pool_out, true_pool, test_out, y_test, fit_images: int, scale_c: bool) -> tuple[float, float]:
    """Z accuracy and routing accuracy with k-means fitted on ``fit_images`` per run, C scaled or not."""

    def route(features, teachers, probs):
        return route_pool(features, teachers, probs, fit_images=fit_images).targets(), np.ones(len(features))

    router_c = (lambda n: ROUTER_C * min(1.0, 1000 / n)) if scale_c else None
    rows = numpy_rows(feat, pool_out, true_pool, route, test_out, y_test, router_c=router_c)
    return rows["accuracy"], rows["routing (test)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--work", type=Path, default=None, help="teachers and caches (default: common.work_dir)")
    args = parser.parse_args()
    args.work = args.work or work_dir("routing")
    assert args.seed >= 100, "tuning uses seeds 100+, never the reported ones"
    print(f"seed {args.seed}, validation reserve; Z accuracy / routing accuracy (numpy)")
    print(f"{'case':28} " + " ".join(f"{m:>22}" for m in METHODS))
    for case, feat, _, pool_out, true_pool, test_out, y_test in validation_cases(args.cases, args.seed, args.work):
        cells = [score(feat, pool_out, true_pool, test_out, y_test, *m) for m in METHODS.values()]
        print(f"{case:28} " + " ".join(f"{a:>14.3f} / {r:.3f}" for a, r in cells), flush=True)


if __name__ == "__main__":
    main()
