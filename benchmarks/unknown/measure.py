"""Z's "unknown" answer, end to end: the Z onnxmerge builds with ``[head] unknown = "auto"``, run in onnxruntime.

Issue "Z knows what it does not know". Per setup (benchmarks/unknown_data.py: clothes or digits, K = 2 or 3
teachers), test seed and mode (fit: 50 labelled images per class, 20 for digits; teachers: a pool of 2,000
unlabeled images, the digits' 275), two Zs are built from the same sources and images: unknown "off" and
"auto". On the test split's known images and on junk of no class of Z (far: digits or clothes, noise,
faces, photo patches; near: the held-out Fashion-MNIST class), side by side with Z's maximum probability:

- AUROC (known vs junk) of ``unknown_score`` and of 1 - max probability;
- FPR95: junk accepted at the score that keeps 95% of the known test images (the literature's measure);
- junk accepted / known kept at Z's own calibrated threshold (the label "unknown"), and the known classes'
  accuracy lost to false rejections;
- Z's time at batch 32 (separate sessions, no spinning, alternating blocks, median) and file size, off vs auto.

    python -m benchmarks.unknown.measure --seeds 2 --json /tmp/unknown.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import merger, session, work_dir
from benchmarks.unknown.data import SETUPS, Data, Setup

MODES = ("fit", "teachers")


def timing(paths: dict[str, Path], images: np.ndarray, rounds: int = 7, runs: int = 30) -> dict[str, float]:
    """Median seconds per call at batch ``len(images)``, each Z in its own session, blocks alternating."""
    sessions = {k: session(p) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(rounds):
        for k in list(paths)[:: 1 if r % 2 == 0 else -1]:
            s = sessions[k]
            names = [o.name for o in s.get_outputs()]
            s.run(names, {"image": images})
            start = time.perf_counter()
            for _ in range(runs):
                s.run(names, {"image": images})
            times[k].append((time.perf_counter() - start) / runs)
    return {k: float(np.median(v)) for k, v in times.items()}


def rates(known: np.ndarray, junk: np.ndarray) -> dict[str, float]:
    """AUROC and FPR95 of a score (higher: more unknown)."""
    labels = np.r_[np.zeros(len(known)), np.ones(len(junk))]
    return {
        "auroc": float(roc_auc_score(labels, np.r_[known, junk])),
        "fpr95": float(np.mean(junk <= np.quantile(known, 0.95))),
    }


def case(setup: Setup, mode: str, work: Path) -> list[dict]:
    per_class = 50 if setup.name.startswith("clothes") else 20
    xl, yl = setup.labelled(per_class) if mode == "fit" else (None, None)
    pool = setup.pool(2000) if mode == "teachers" else None
    paths = {}
    for setting in ("off", "auto"):
        z = merger(setup.sources, mode, work / "cache")
        z.unknown = setting
        z.fit(xl, yl, unlabeled=pool)
        paths[setting] = work / f"z_{setup.name}_{setup.seed}_{mode}_{setting}.onnx"
        z.save(paths[setting])
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    seconds = timing(paths, setup.x_known[:32])
    s = session(paths["auto"])
    names = ["label", "probabilities", "unknown_score"]

    def run(x):
        return dict(zip(names, s.run(names, {"image": x})))

    known = run(setup.x_known)
    classes = np.asarray(z.classes_)
    correct_off = classes[known["probabilities"].argmax(1)] == setup.y_known
    kept = known["label"] != "unknown"
    junk = dict(setup.far)
    if setup.near is not None:
        junk["near: held-out class"] = setup.near
    rows = []
    for name, x in junk.items():
        out = run(x)
        row = {
            "setup": setup.name,
            "seed": setup.seed,
            "mode": mode,
            "junk": name,
            "known_images": len(setup.x_known),
            "junk_images": len(x),
            "accuracy_off": float(np.mean(correct_off)),
            "accuracy_auto": float(np.mean(correct_off & kept)),
            "known_kept": float(np.mean(kept)),
            "junk_accepted": float(np.mean(out["label"] != "unknown")),
            "size_off": sizes["off"],
            "size_auto": sizes["auto"],
            "seconds_off": seconds["off"],
            "seconds_auto": seconds["auto"],
        }
        row.update({f"score_{k}": v for k, v in rates(known["unknown_score"], out["unknown_score"]).items()})
        msp = rates(1 - known["probabilities"].max(1), 1 - out["probabilities"].max(1))
        row.update({f"msp_{k}": v for k, v in msp.items()})
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per setup and mode, far junk (worst set) and near junk, and the cost."""
    lines = [
        "| setup | mode | far AUROC score / MSP (worst set) | far FPR95 score / MSP | far junk accepted at Z's threshold "
        "(worst) | near AUROC score / MSP | known kept | accuracy off -> auto | time auto/off | size off -> auto |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup in dict.fromkeys(r["setup"] for r in rows):
        for mode in MODES:
            mine = [r for r in rows if r["setup"] == setup and r["mode"] == mode]
            if not mine:
                continue
            far = [r for r in mine if not r["junk"].startswith("near")]
            near = [r for r in mine if r["junk"].startswith("near")]

            def mean(key, rs=far):
                return float(np.mean([r[key] for r in rs]))

            worst = min(far, key=lambda r: r["score_auroc"])
            worst_accepted = max(far, key=lambda r: r["junk_accepted"])
            near_text = f"{mean('score_auroc', near):.3f} / {mean('msp_auroc', near):.3f}" if near else "-"
            per_z = {(r["seed"]): r for r in mine}.values()  # one row per Z for the Z-level numbers
            lines.append(
                f"| {setup} | {mode} | {mean('score_auroc'):.3f} / {mean('msp_auroc'):.3f} "
                f"({worst['junk']} {worst['score_auroc']:.3f}) | {mean('score_fpr95'):.3f} / {mean('msp_fpr95'):.3f} "
                f"| {mean('junk_accepted'):.3f} ({worst_accepted['junk']} {worst_accepted['junk_accepted']:.3f}) "
                f"| {near_text} | {mean('known_kept', list(per_z)):.3f} "
                f"| {mean('accuracy_off', list(per_z)):.3f} -> {mean('accuracy_auto', list(per_z)):.3f} "
                f"| {np.median([r['seconds_auto'] / r['seconds_off'] for r in per_z]):.3f} "
                f"| {mean('size_off', list(per_z)) / 1e3:.0f} -> {mean('size_auto', list(per_z)) / 1e3:.0f} KB |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS))
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    work = work_dir("unknown")  # teachers, Zs and the feature cache ($ONNXMERGE_BENCH_WORK)
    data = Data()
    rows = []
    for name in args.setups:
        for seed in range(args.seeds):
            setup = Setup(name, seed, "test", data, work)
            for mode in args.modes:
                rows += case(setup, mode, work)
                print(f"{name} seed {seed} {mode}: done", file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
