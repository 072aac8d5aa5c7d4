"""The markdown tables of benchmarks/RESULTS.md from one or more ``benchmarks.routing.pools --json`` files.

    python -m benchmarks.routing.table m-*.json

Per setup and pool variant (mean +- std over the seeds in the file): Z in teachers mode with the pool, the
two earlier routings (numpy), routing accuracy, fit k = 5 with and without the pool, the oracle, the gap to
it, and the classes under 0.3 recall (how many no build warning names); then the new-class rows.
"""

from __future__ import annotations

import json
import sys

import numpy as np

SETUP_ORDER = [
    "clothes+digits",
    "clothes9+digits",
    "k2-interleaved",
    "k2-grouped",
    "k3-interleaved",
    "k3-grouped",
    "k4-interleaved",
    "k4-grouped",
    "k5-interleaved",
    "k5-grouped",
]
VARIANT_ORDER = ["balanced", "minority10", "longtail", "missing2", "junk20", "blur", "n50", "n200", "n10000"]

COLUMNS = [  # (header, row key in pools' --json)
    ("teachers + pool (Z)", "teachers + pool (Z)"),
    ("previous release", "previous release: 1 cluster per label, agreement >= 0.7 (numpy)"),
    ("before issue 16", "teachers + pool, routing before issue 16 (numpy)"),
    ("routing (Z / prev.)", ("teachers + pool: routing (Z route output)", "previous release: routing")),
    ("fit k=5", "fit k=5, no pool (Z)"),
    ("fit k=5 + pool", "fit k=5 + pool (Z)"),
    ("oracle", "oracle: fit on the pool's labels (Z)"),
    ("true-source router", "true-source router (numpy)"),
]


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +- {np.std(values):.3f}"


def main(paths: list[str]) -> None:
    results: dict = {}
    for path in paths:
        results.update(json.loads(open(path).read()))
    order = {f"{a} / {b}": (i, j) for i, a in enumerate(SETUP_ORDER) for j, b in enumerate(VARIANT_ORDER)}
    results = dict(sorted(results.items(), key=lambda item: order.get(item[0], (99, 99))))
    print(
        "| setup / pool | seeds | "
        + " | ".join(h for h, _ in COLUMNS)
        + " | oracle - teachers / - fit+pool | classes < 0.3 (unnamed) | build s |"
    )
    print("|" + "---|" * (len(COLUMNS) + 5))
    for case, rows in results.items():
        cells = []
        for _, key in COLUMNS:
            if isinstance(key, tuple):
                cells.append(" / ".join(f"{np.mean(rows[k]):.3f}" for k in key))
            else:
                cells.append(cell(rows[key]))
        oracle = np.mean(rows["oracle: fit on the pool's labels (Z)"])
        gap = (
            f"{oracle - np.mean(rows['teachers + pool (Z)']):+.3f} / "
            f"{oracle - np.mean(rows['fit k=5 + pool (Z)']):+.3f}"
        )
        low = rows.get("teachers + pool: classes < 0.3 recall", [np.nan])
        unnamed = rows.get("teachers + pool: classes < 0.3 recall no warning names", [np.nan])
        seeds = len(rows["teachers + pool (Z)"])
        print(
            f"| {case} | {seeds} | "
            + " | ".join(cells)
            + f" | {gap} | {sum(low):.0f} ({sum(unnamed):.0f}) | {np.mean(rows['teachers + pool: build s']):.1f} |"
        )
    new = {case: rows for case, rows in results.items() if any(k.startswith("new class") for k in rows)}
    if new:
        print("\n| setup / pool | new class from 1: recall / old classes | from 5: recall / old classes |")
        print("|---|---|---|")
        for case, rows in new.items():
            print(
                f"| {case} | "
                + " | ".join(
                    f"{cell(rows[f'new class from {k} (teachers + pool): its recall'])} / "
                    f"{np.mean(rows[f'new class from {k}: accuracy on the old classes']):.3f}"
                    for k in (1, 5)
                )
                + " |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
