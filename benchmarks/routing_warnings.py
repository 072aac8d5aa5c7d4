"""Which routing signals name the classes Z loses (recall < 0.3), without labels: data for a warning rule.

Issue "Routing that holds on real pools": "never a class at recall < 0.3 without a warning naming it".
For every setup, variant and seed, the pool is routed and the router fitted exactly as the build does
(``routing.numpy_rows``' math), and for every union label this prints/saves its recall on held-out images
(validation reserve for seeds 100+, the test split otherwise) next to label-free signals of the pool:

- ``agreed``: pool images routed to the label that the k-means runs agreed on (``Routing.label_counts``)
- ``z``: pool images Z itself predicts as the label
- ``claimed``: pool images the label's own teacher calls that label (its argmax), whoever routing gives them to

    nice -n 19 python benchmarks/routing_warnings.py --seeds 100 101 102 --json /tmp/warn-tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing import SETUPS, Data, Features, Setup, validation_cases, variant_pool  # noqa: E402
from routing_tune import VARIANTS  # noqa: E402

from onnxmerge.graph.stitch import output_names  # noqa: E402
from onnxmerge.learn.head import HeadInput, TeachersHead, fit_head  # noqa: E402
from onnxmerge.learn.routing import l2_blocks, route_pool  # noqa: E402
from onnxmerge.merger import ROUTER_C  # noqa: E402


def label_rows(feat, pool_out, test_out, y_test) -> list[dict]:
    """One dict per union label: recall on the held-out images and the pool's label-free counts."""
    teachers = feat.teachers
    blocks = [pool_out[output_names(s["name"])["feature"]] for s in feat.setup.sources]
    probs = [HeadInput.probabilities(pool_out, n, k) for n, k in feat.base.teachers_]
    routing = route_pool(l2_blocks(blocks), teachers, probs)
    targets = routing.targets()
    x_pool = feat.head_input.numpy(pool_out).astype(np.float64)
    keep = targets >= 0
    router = fit_head(x_pool[keep], targets[keep], feat.widths, C=ROUTER_C, class_weight="balanced")
    head = TeachersHead(feat.head_input, teachers, router)
    z_pool = head.numpy(pool_out)[0].argmax(1)
    z_test = np.asarray(teachers.union)[head.numpy(test_out)[0].argmax(1)]
    agreed = routing.label_counts()
    rows = []
    for s, (own, p) in enumerate(zip(teachers.labels, probs)):
        top = p.argmax(1)
        for j, label in enumerate(own):
            u = teachers.union.index(label)
            seen = y_test == label
            rows.append(
                {
                    "label": label,
                    "recall": float(np.mean(z_test[seen] == label)) if seen.any() else None,
                    "agreed": agreed[label],
                    "z": int(np.sum(z_pool == u)),
                    "claimed": int(np.sum(top == j)),
                    "pool": len(x_pool),
                    "labels": len(teachers.union),
                    "teacher_labels": len(own),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/i16-routing"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    parser.add_argument("--setup", nargs="+", default=list(SETUPS))
    parser.add_argument("--variant", nargs="+", default=VARIANTS)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        cases = [
            f"{n}/{v}"
            for n in args.setup
            for v in args.variant
            if not (v == "junk20" and "digit_0" in Setup.owner_of(n))
        ]
        if seed >= 100:
            stream = validation_cases(cases, seed, args.work)
        else:
            data, feats = Data(), {}

            def test_cases():
                for case in cases:
                    name, variant = case.split("/")
                    if name not in feats:
                        feats[name] = Features(Setup(name, seed, data, args.work), args.work / "cache")
                    pool_out, _, true_pool, test_out, _, y_test = variant_pool(feats[name], variant)
                    yield case, feats[name], variant, pool_out, true_pool, test_out, y_test

            stream = test_cases()
        for case, feat, variant, pool_out, true_pool, test_out, y_test in stream:
            rows = label_rows(feat, pool_out, test_out, y_test)
            results[f"{case} seed {seed}"] = rows
            lost = [r["label"] for r in rows if r["recall"] is not None and r["recall"] < 0.3]
            print(f"{case:28} seed {seed}: recall < 0.3: {', '.join(lost) or '-'}", flush=True)
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
