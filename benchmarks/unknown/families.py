"""Which score tells "none of Z's classes"? The literature's families, measured in numpy on Z's own features.

Issue "Z knows what it does not know". Per setup (``benchmarks.unknown.data``), seed and mode (fit: labelled
images; teachers: a pool; fit+pool: both), a Z is built by onnxmerge, and each family is fitted on the
build's own images (labelled + pool), scored on known test images and on junk:

- ``msp``: 1 - Z's highest probability; ``energy``: -logsumexp of the fit-mode head's logits (baselines);
- ``maha``: Mahalanobis distance to the nearest class mean, shared covariance (Lee et al. 2018); classes are the
  labels where given, Z's own answer on pool images;
- ``knn-M``: 1 - cosine similarity to the nearest of M k-means prototypes of the L2-normalised features
  (Sun et al. 2022 with a bounded bank); ``knn-all``: the whole bank, k = 1 (unbounded: reference only);
- ``vim``: ViM (Wang et al. 2022): residual off the principal subspace, scaled, minus the energy;
  ``residual``: that residual alone (needs no logits: every mode).

Features: ``l2`` = the head's L2-normalised source blocks; ``centred`` = each block centred on the build's images
first, then L2-normalised; ``joint`` = both views joined (``onnxmerge.learn.unknown``: what Z computes).
Threshold: cross-fitted (5 folds: an image never calibrates a score fitted on itself), keeping 95%.
Tuning (``--part tune``, seeds 100+) scores a validation part of the training reserve and the junk sets'
even half; the test rows (seeds 0..) use the test split and the odd half.

    python -m benchmarks.unknown.families --part tune --seeds 1 --json /tmp/families-tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from benchmarks.common import merger, work_dir
from benchmarks.unknown.data import SETUPS, Data, Setup
from onnxmerge.graph.stitch import output_names
from onnxmerge.learn.unknown import unit_rows, views

KEEP = 0.95
MODES = {"fit": (True, False), "teachers": (False, True), "fit+pool": (True, True)}


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Maha:
    def __init__(self, shrink: float = 0.1):
        self.shrink = shrink

    def fit(self, x, y, logits=None):
        classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(0) for c in classes])
        resid = x - self.means[np.searchsorted(classes, y)]
        cov = resid.T @ resid / len(x)
        cov += self.shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
        self.white = np.linalg.cholesky(np.linalg.inv(cov))  # |x L|^2 = x' cov^-1 x
        self.white_means = self.means @ self.white
        return self

    def score(self, x, logits=None):
        z = x @ self.white
        d = (z**2).sum(1)[:, None] - 2 * z @ self.white_means.T + (self.white_means**2).sum(1)[None]
        return d.min(1)


class KnnProto:
    def __init__(self, m: int | None):
        self.m = m

    def fit(self, x, y=None, logits=None):
        xn = normalise(x)
        if self.m is None or self.m >= len(xn):
            self.bank = xn
        else:
            self.bank = normalise(KMeans(self.m, n_init=1, random_state=0).fit(xn).cluster_centers_)
        return self

    def score(self, x, logits=None):
        return 1 - (normalise(x) @ self.bank.T).max(1)


class Residual:
    def __init__(self, rank: int = 32, vim: bool = False):
        self.rank, self.vim = rank, vim

    def _res(self, x):
        c = x - self.u
        return np.linalg.norm(c - (c @ self.p) @ self.p.T, axis=1)

    def fit(self, x, y=None, logits=None):
        self.u = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.u, full_matrices=False)
        self.p = vt[: min(self.rank, len(vt) - 1)].T
        if self.vim:
            self.alpha = logits.max(1).mean() / max(self._res(x).mean(), 1e-12)
        return self

    def score(self, x, logits=None):
        r = self._res(x)
        if not self.vim:
            return r
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        return self.alpha * r - lse


def families(logits_ok: bool) -> dict:
    out = {f"maha-{s}": (lambda s=s: Maha(s)) for s in (0.1, 0.5)}
    out.update({f"knn-{m}": (lambda m=m: KnnProto(m)) for m in (16, 64, 256)})
    out["knn-all"] = lambda: KnnProto(None)
    out["residual-16"] = lambda: Residual(16)
    if logits_ok:
        out["vim-32"] = lambda: Residual(32, vim=True)
    return out


def cross_fitted(make, x, y, logits, folds: int = 5) -> np.ndarray:
    """Each calibration image's score from a scorer fitted on the other folds."""
    scores = np.empty(len(x))
    for fit_idx, held in KFold(folds, shuffle=True, random_state=0).split(x):
        scorer = make().fit(x[fit_idx], y[fit_idx], None if logits is None else logits[fit_idx])
        scores[held] = scorer.score(x[held], None if logits is None else logits[held])
    return scores


def metrics(known: np.ndarray, junk: np.ndarray, threshold: float, correct: np.ndarray) -> dict:
    oracle = np.quantile(known, KEEP)
    kept = known <= threshold
    return {
        "auroc": float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(junk))], np.r_[known, junk])),
        "fpr95": float(np.mean(junk <= oracle)),
        "junk_accepted": float(np.mean(junk <= threshold)),
        "known_kept": float(np.mean(kept)),
        "accuracy_lost": float(np.mean(correct) - np.mean(correct & kept)),
    }


def case(setup: Setup, mode: str, cache: Path) -> list[dict]:
    """Every family on one Z: rows of metrics per junk set."""
    use_labels, use_pool = MODES[mode]
    per_class = 50 if setup.name.startswith("clothes") else 20
    xl, yl = setup.labelled(per_class) if use_labels else (None, None)
    pool = setup.pool(2000) if use_pool else None
    z = merger(setup.sources, "teachers" if mode == "teachers" else "fit", cache).fit(xl, yl, unlabeled=pool)
    n_blocks = sum(z.head_input_.widths(z.widths_)[: len(z.head_input_.sources)])
    names = [output_names(s)["feature"] for s in z.head_input_.sources]
    cal_x = np.concatenate([x for x in (xl, pool) if x is not None])
    cal_out = z._build.features(cal_x)
    mean = np.concatenate([cal_out[n] for n in names], axis=1).astype(np.float64).mean(0)
    widths = [cal_out[n].shape[1] for n in names]

    def outputs(x):
        """``({space: rows}, logits, probabilities)``: the head's L2 blocks, or the blocks centred first."""
        out = z._build.features(x)
        h = z.head_input_.numpy(out).astype(np.float64)
        joined = np.concatenate([out[n] for n in names], axis=1)
        spaces = {
            "l2": h[:, :n_blocks],
            "centred": unit_rows(joined, mean, widths) / np.sqrt(len(names)),
            "joint": views(joined, mean, widths) / np.sqrt(2 * len(names)),  # what Z computes
        }
        if mode == "teachers":
            probs, _ = z.head_.numpy(out)
            return spaces, np.log(np.maximum(probs, 1e-30)), probs
        logits = z.head_.decision_function(h)
        return spaces, logits, z.head_.predict_proba(h)

    h_cal, logit_cal, p_cal = outputs(cal_x)
    y_cal = np.asarray(z.classes_)[p_cal.argmax(1)]
    if use_labels:
        y_cal[: len(yl)] = yl
    h_known, logit_known, p_known = outputs(setup.x_known)
    correct = np.asarray(z.classes_)[p_known.argmax(1)] == setup.y_known
    junk = dict(setup.far)
    if setup.near is not None:
        junk["near:" + "held-out class"] = setup.near
    junk_out = {k: outputs(v) for k, v in junk.items()}
    rows = []

    def add(name, known_s, cal_s, junk_s):
        threshold = np.quantile(cal_s, KEEP)
        for k, s in junk_s.items():
            rows.append({"family": name, "junk": k, **metrics(known_s, s, threshold, correct)})

    add("msp", 1 - p_known.max(1), 1 - p_cal.max(1), {k: 1 - v[2].max(1) for k, v in junk_out.items()})
    if mode != "teachers":
        energy = lambda lg: -(np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1))  # noqa: E731
        add("energy", energy(logit_known), energy(logit_cal), {k: energy(v[1]) for k, v in junk_out.items()})
    for space in ("l2", "centred", "joint"):
        for name, make in families(mode != "teachers").items():
            lg = logit_cal if name.startswith("vim") else None
            scorer = make().fit(h_cal[space], y_cal, lg)
            cal_s = cross_fitted(make, h_cal[space], y_cal, lg)
            known_s = scorer.score(h_known[space], logit_known)
            junk_s = {k: scorer.score(v[0][space], v[1]) for k, v in junk_out.items()}
            add(f"{name} {space}", known_s, cal_s, junk_s)
    for r in rows:
        r.update(setup=setup.name, seed=setup.seed, mode=mode, accuracy=float(np.mean(correct)))
    return rows


def summary(rows: list[dict]) -> str:
    """Mean over setups and seeds per (mode, family): far junk and near junk."""
    lines = []
    keys = ("auroc", "fpr95", "junk_accepted", "known_kept", "accuracy_lost")
    for mode in MODES:
        lines.append(
            f"\n## mode {mode}\n| family | far AUROC (min) | far FPR95 | far accepted | near AUROC | kept | acc lost |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        fams = dict.fromkeys(r["family"] for r in rows if r["mode"] == mode)
        for fam in fams:
            mine = [r for r in rows if r["mode"] == mode and r["family"] == fam]
            far = [r for r in mine if not r["junk"].startswith("near")]
            near = [r for r in mine if r["junk"].startswith("near")]
            m = {k: np.mean([r[k] for r in far]) for k in keys}
            near_auc = f"{np.mean([r['auroc'] for r in near]):.3f}" if near else "-"
            lines.append(
                f"| {fam} | {m['auroc']:.3f} ({min(r['auroc'] for r in far):.3f}) | {m['fpr95']:.3f} | "
                f"{m['junk_accepted']:.3f} | {near_auc} | {m['known_kept']:.3f} | {m['accuracy_lost']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["tune", "test"], default="tune")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS))
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    work = work_dir("unknown")  # teachers, Zs and the feature cache ($ONNXMERGE_BENCH_WORK)
    data = Data()
    first = 100 if args.part == "tune" else 0
    rows = []
    for name in args.setups:
        for seed in range(first, first + args.seeds):
            setup = Setup(name, seed, args.part, data, work)
            for mode in args.modes:
                rows += case(setup, mode, work / "cache")
                print(f"{name} seed {seed} {mode}: done", file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(summary(rows))


if __name__ == "__main__":
    main()
