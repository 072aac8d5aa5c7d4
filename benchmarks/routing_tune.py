"""Routing choices scored across every setup and variant on the tuning protocol (seeds 100+, validation reserve).

Issue "Routing that holds on real pools": the agreement threshold of ``learn.routing`` was chosen on two
setups (K=3 and K=5 interleaved) and one seed; on test seeds it lost up to 7 points where the plain
majority vote did not. This script scores the candidates on every setup and variant of
benchmarks/routing.py with several tuning seeds, never the test split: Z's head math in numpy
(``routing.numpy_rows``), accuracy on validation images of the training reserve.

    nice -n 19 python benchmarks/routing_tune.py --seeds 100 101 102 --json /tmp/tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing import SETUPS, Setup, numpy_rows, validation_cases  # noqa: E402
from routing_matchings import make_fine  # noqa: E402

from onnxmerge.learn.routing import route_pool  # noqa: E402

VARIANTS = ["balanced", "minority10", "longtail", "missing2", "junk20", "n200", "n10000", "blur"]
THRESHOLDS = [0.0, 0.5, 0.6, 0.7, 0.8]  # 0.0: every image's majority source is a router target


def methods(true_pool: np.ndarray) -> dict:
    """Each candidate as numpy_rows' ``route_fn``; the agreement thresholds share one route_pool run."""
    cache: dict = {}

    def agreement(threshold: float):
        def route(features, teachers, probs):
            if "routing" not in cache:
                cache["routing"] = route_pool(features, teachers, probs, per_label=1)
            r = cache["routing"]
            return np.where(r.agreement >= threshold, r.source, -1), np.ones(len(features))

        return route

    def weighted(power: float):
        def route(features, teachers, probs):
            r = agreement(0.0)(features, teachers, probs)[0]
            return r, cache["routing"].agreement ** power

        return route

    out = {f"agree>={t}": agreement(t) for t in THRESHOLDS}
    out.update({f"weight=agreement^{p}": weighted(p) for p in (1, 3)})
    out["fine4@0.8"] = make_fine(4, "rep", min_agreement=0.8)
    owned = true_pool >= 0
    out["truth (ceiling)"] = lambda f, t, p: (np.where(owned, true_pool, -1), np.ones(len(f)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/i16-routing"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    parser.add_argument("--setup", nargs="+", default=list(SETUPS))
    parser.add_argument("--variant", nargs="+", default=VARIANTS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        cases = [
            f"{name}/{v}"
            for name in args.setup
            for v in args.variant
            if not (v == "junk20" and "digit_0" in Setup.owner_of(name))
        ]
        for case, feat, variant, pool_out, true_pool, test_out, y_test in validation_cases(cases, seed, args.work):
            start = time.perf_counter()
            row = {
                name: numpy_rows(feat, pool_out, true_pool, fn, test_out, y_test)["accuracy"]
                for name, fn in methods(true_pool).items()
            }
            results[f"{case} seed {seed}"] = row
            print(
                f"{case:28} seed {seed}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in row.items())
                + f"  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    names = list(next(iter(results.values())))
    print("\nmean over every case (and the share of cases each method is within 0.5 points of the best one)")
    for name in names:
        accs = np.asarray([row[name] for row in results.values()])
        best = np.asarray([max(v for k, v in row.items() if not k.startswith("truth")) for row in results.values()])
        print(f"  {name:16} {accs.mean():.3f}  near best {np.mean(accs >= best - 0.005):.2f}")


if __name__ == "__main__":
    main()
