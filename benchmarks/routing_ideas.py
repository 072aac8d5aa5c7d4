"""Routing ideas measured against route_pool on the tuning protocol (seeds 100+, validation reserve images).

Issue "Routing that holds on real pools". Each idea maps an unlabeled pool to router targets; the router
is then fitted and Z's head math scored in numpy exactly as benchmarks/routing.py's ``numpy_rows`` does.
Never the test split. Results (seed 100, Z accuracy on validation) are in onnxmerge/learn/routing.py's
docstring; none was kept. ``DIAG`` prints, per EM iteration, the share of pool images routed to their true
source per class (diagnostics only; the routing never sees it).

    nice -n 19 python benchmarks/routing_ideas.py --work /tmp/i16-routing \
        --cases k3-interleaved/balanced k3-interleaved/minority10 k5-interleaved/balanced k2-interleaved/balanced
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing import PREVIOUS_RELEASE, numpy_rows, validation_cases  # noqa: E402

from onnxmerge.learn.routing import LOG_FLOOR, route_pool  # noqa: E402


def candidates(teachers, probs):
    """``(cand [T, N] union label of each teacher's argmax, conf [T, N] its probability)``."""
    spread = teachers.spread(probs)
    return spread.argmax(axis=2), spread.max(axis=2)


def pll_inputs(features, probs, use_logp: bool) -> np.ndarray:
    x = [features.astype(np.float64)]
    if use_logp:
        x += [np.log(np.maximum(p, LOG_FLOOR)).astype(np.float64) for p in probs]
    return np.concatenate(x, axis=1)


def fit_soft(x, q, cand, n_labels, C):
    """Multinomial LR over union labels, soft targets: row (x_i, cand[t, i]) weighted q[i, t]."""
    T = cand.shape[0]
    xs = np.concatenate([x] * T)
    ys = cand.reshape(-1)  # t-major, matches concatenation order
    ws = q.T.reshape(-1)
    keep = ws > 1e-3
    xs, ys, ws = xs[keep], ys[keep], ws[keep]
    # balanced per label so the classifier's own prior is flat (Saerens priors are applied outside)
    tot = np.bincount(ys, weights=ws, minlength=n_labels)
    ws = ws * (ws.sum() / np.maximum(tot[ys], 1e-9) / max((tot > 0).sum(), 1))
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=C, max_iter=500, tol=1e-3).fit(scaler.transform(xs), ys, sample_weight=ws)
    return scaler, model


def predict_labels(scaler, model, x, n_labels):
    p = np.full((len(x), n_labels), 1e-9)
    p[:, model.classes_] = model.predict_proba(scaler.transform(x))
    return p


def e_step(p_lab, cand, conf, beta, prior_iters, use_prior, floor=0.0, owner=None):
    """q[i, t] over the candidates, Saerens prior re-estimation over union labels."""
    N, T = p_lab.shape[0], cand.shape[0]
    rows = np.arange(N)
    pc = np.stack([p_lab[rows, cand[t]] for t in range(T)], axis=1)  # [N, T]
    tconf = conf.T**beta
    n_labels = p_lab.shape[1]
    pi = np.full(n_labels, 1.0 / n_labels)
    boost = np.ones(n_labels)
    for _ in range(prior_iters if use_prior else 1):
        prior = np.stack([(pi * boost)[cand[t]] for t in range(T)], axis=1)
        s = pc * tconf * (prior if use_prior else 1.0)
        q = s / s.sum(axis=1, keepdims=True)
        mass = np.bincount(cand.T.reshape(-1), weights=q.reshape(-1), minlength=n_labels) / N
        if use_prior:
            pi = np.maximum(mass / boost * boost.mean(), 1e-4) if False else np.maximum(mass, 1e-4)
            pi /= pi.sum()
    if floor > 0:  # every label holds at least ``floor`` of the pool: multipliers only ever boost
        target = floor / n_labels
        for _ in range(100):
            if owner is not None:  # relative to the source's current share, spread over its labels
                share = np.bincount(owner, weights=mass, minlength=owner.max() + 1)
                target = floor * share[owner] / np.bincount(owner)[owner]
            prior = np.stack([(pi * boost)[cand[t]] for t in range(T)], axis=1)
            s = pc * tconf * prior
            q = s / s.sum(axis=1, keepdims=True)
            mass = np.bincount(cand.T.reshape(-1), weights=q.reshape(-1), minlength=n_labels) / N
            boost = np.maximum(1.0, boost * np.where(mass < target, target / np.maximum(mass, 1e-9), 1.0) ** 0.5)
            if (mass >= target * 0.98).all():
                break
    return q


def make_pll(
    iters=4,
    beta=1.0,
    C=0.1,
    use_logp=True,
    use_prior=True,
    cross=False,
    init="agreed",
    weight="hard",
    min_q=0.0,
    seed=0,
    floor=0.0,
    within=False,
    combine=None,
):
    cache = {}

    def route(features, teachers, probs):
        key = (features.shape, float(features[:5].sum()))
        if key not in cache:
            cache[key] = route_pool(features, teachers, probs, **PREVIOUS_RELEASE)
        routing = cache[key]
        cand, conf = candidates(teachers, probs)
        T, N = cand.shape
        L = len(teachers.union)
        x = pll_inputs(features, probs, use_logp)
        owner = np.asarray([next(t for t, own in enumerate(teachers.labels) if u in own) for u in teachers.union])
        q = np.zeros((N, T))
        if init == "agreed":
            ok = routing.confident
            q[np.flatnonzero(ok), routing.source[ok]] = 1
        elif init == "all":  # every image, majority
            q[np.arange(N), routing.source] = 1
        else:  # max-probability: the teachers' own confidences, no clustering
            q = conf.T**beta / (conf.T**beta).sum(axis=1, keepdims=True)
        halves = None
        if cross:
            perm = np.random.default_rng(seed).permutation(N)
            halves = [perm[: N // 2], perm[N // 2 :]]
        for _ in range(iters):
            if cross:
                p_lab = np.zeros((N, L))
                for a, b in (halves, halves[::-1]):
                    sc, m = fit_soft(x[a], q[a], cand[:, a], L, C)
                    p_lab[b] = predict_labels(sc, m, x[b], L)
            else:
                sc, m = fit_soft(x, q, cand, L, C)
                p_lab = predict_labels(sc, m, x, L)
            q = e_step(p_lab, cand, conf, beta, 20, use_prior, floor, owner if within else None)
            if DIAG is not None and len(DIAG[0]) == N:
                diagnose(q, DIAG)
        src = q.argmax(axis=1)
        qmax = q.max(axis=1)
        targets = np.where(qmax >= min_q, src, -1)
        if combine == "agree":  # the clustering's agreed targets where PLL agrees
            targets = np.where(routing.confident & (src == routing.source), src, -1)
        elif combine == "union":  # agreed targets, plus PLL's sure ones where the runs disagreed
            targets = np.where(routing.confident, routing.source, targets)
        elif combine == "override":  # agreed targets, but PLL's sure ones win
            targets = np.where(qmax >= min_q, src, np.where(routing.confident, routing.source, -1))
        w = qmax if weight == "soft" else np.ones(N)
        return targets, w

    return route


DIAG = None  # (true source, true label name) of the pool, for diagnostics only


def diagnose(q, diag):
    true_src, y = diag
    src = q.argmax(axis=1)
    ok = true_src >= 0
    per = {c: float(np.mean(src[y == c] == true_src[y == c])) for c in sorted(set(y[ok]))}
    print(
        f"    iter: src right {np.mean(src[ok] == true_src[ok]):.3f}  "
        + " ".join(f"{c[:5]}:{v:.2f}" for c, v in per.items()),
        flush=True,
    )


def current(features, teachers, probs):
    r = route_pool(features, teachers, probs, **PREVIOUS_RELEASE)
    return r.targets(), np.ones(len(features))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/i16-routing"))
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=[
            "k3-interleaved/balanced",
            "k3-interleaved/minority10",
            "k5-interleaved/balanced",
            "k2-interleaved/balanced",
        ],
    )
    parser.add_argument("--ideas", nargs="+", default=None)
    args = parser.parse_args()
    ideas = {
        "current": current,
        "pll": make_pll(),
        "pll-nologp": make_pll(use_logp=False),
        "pll-noprior": make_pll(use_prior=False),
        "pll-beta0": make_pll(beta=0.0),
        "pll-beta2": make_pll(beta=2.0),
        "pll-C1": make_pll(C=1.0),
        "pll-cross": make_pll(cross=True),
        "pll-allinit": make_pll(init="all"),
        "pll-q07": make_pll(min_q=0.7),
        "pll-floor2": make_pll(floor=0.2),
        "pll-q09": make_pll(min_q=0.9),
        "pll-agree": make_pll(combine="agree"),
        "pll-union-q09": make_pll(min_q=0.9, combine="union"),
        "pll-override-q09": make_pll(min_q=0.9, combine="override"),
        "pll-f5-q09": make_pll(floor=0.5, iters=6, min_q=0.9),
        "pll-f5-agree": make_pll(floor=0.5, iters=6, combine="agree"),
        "pll-f5-cross": make_pll(floor=0.5, iters=6, cross=True),
        "pll-f5-soft": make_pll(floor=0.5, iters=10, weight="soft"),
        "pll-f5-all": make_pll(floor=0.5, iters=10, init="all"),
        "pll-f5-C1": make_pll(floor=0.5, iters=10, C=1.0),
        "pll-f5-b0": make_pll(floor=0.5, iters=10, beta=0.0),
        "pll-floor8-it10": make_pll(floor=0.8, iters=10),
        "pll-floor5-it10": make_pll(floor=0.5, iters=10),
        "pll-w5-it10": make_pll(floor=0.5, iters=10, within=True),
        "pll-w8-it10": make_pll(floor=0.8, iters=10, within=True),
        "pll-floor5": make_pll(floor=0.5),
        "pll-floor2-it8": make_pll(floor=0.2, iters=8),
        "pll-floor2-maxp": make_pll(floor=0.2, init="maxp", iters=8),
        "pll-floor2-nologp": make_pll(floor=0.2, use_logp=False),
    }
    if args.ideas:
        ideas = {k: v for k, v in ideas.items() if k in args.ideas}
    for case, feat, variant, pool_out, true_pool, test_out, y_test in validation_cases(
        args.cases, args.seed, args.work
    ):
        owned = true_pool >= 0
        global DIAG
        idx, _ = feat.setup.pool(variant)
        DIAG = (true_pool, np.concatenate([feat.setup.y_res[idx], np.full(len(true_pool) - len(idx), "junk")]))
        t = numpy_rows(
            feat,
            {k: v[owned] for k, v in pool_out.items()},
            true_pool[owned],
            lambda f, te, p: (true_pool[owned].copy(), np.ones(int(owned.sum()))),
            test_out,
            y_test,
        )
        print(
            f"\n{case} seed {args.seed}: true-source router acc {t['accuracy']:.3f} routing {t['routing (test)']:.3f}",
            flush=True,
        )
        for label, fn in ideas.items():
            start = time.perf_counter()
            r = numpy_rows(feat, pool_out, true_pool, fn, test_out, y_test)
            print(
                f"  {label:14} acc {r['accuracy']:.3f}  routing(val) {r['routing (test)']:.3f}  "
                f"targets right {r['routing (pool targets)']:.3f}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
