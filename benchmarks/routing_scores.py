"""Per-image "is it mine" scores per teacher on the pool: AUROC against the true source (seed 100, balanced).

nice -n 19 python benchmarks/routing_scores.py k3-interleaved k5-interleaved
"""

import sys

import numpy as np

sys.path.insert(0, "benchmarks")
from pathlib import Path

from routing import Data, Features, Setup, variant_pool
from sklearn.metrics import roc_auc_score

from onnxmerge.graph.stitch import output_names
from onnxmerge.learn.head import HeadInput
from onnxmerge.learn.routing import l2_blocks

data = Data()
for name in sys.argv[1:]:
    feat = Features(Setup(name, 100, data, Path("/tmp/i16-routing")), Path("/tmp/i16-routing/cache"))
    pool_out, _, true_pool, *_ = variant_pool(feat, "balanced", validation=True)
    blocks = [pool_out[output_names(s["name"])["feature"]] for s in feat.setup.sources]
    probs = [HeadInput.probabilities(pool_out, n, k) for n, k in feat.base.teachers_]
    print(name, [b.shape for b in blocks])
    for t, (b, p) in enumerate(zip(blocks, probs)):
        y = true_pool == t
        f = l2_blocks([b])
        am = p.argmax(1)
        sc = {}
        sc["maxp"] = p.max(1)
        sc["norm"] = np.linalg.norm(b, axis=1)
        S = f @ f.T
        np.fill_diagonal(S, -1)
        for k in (5, 20):
            sc[f"knn{k}"] = np.sort(S, axis=1)[:, -k:].mean(1)
        # knn among same predicted class
        Sm = np.where(am[:, None] == am[None, :], S, -1)
        sc["knn10same"] = np.sort(Sm, axis=1)[:, -10:].mean(1)
        cent = np.stack([f[am == c].mean(0) if (am == c).any() else np.zeros(f.shape[1]) for c in range(p.shape[1])])
        sc["cos_cent"] = (f * cent[am]).sum(1) / np.linalg.norm(cent[am], axis=1).clip(1e-9)
        # centred-by-pool-mean cosine to centroid
        mu = f.mean(0)
        fc = f - mu
        cc = cent - mu
        sc["cos_cent_c"] = (fc * cc[am]).sum(1) / (np.linalg.norm(fc, axis=1) * np.linalg.norm(cc[am], axis=1)).clip(
            1e-9
        )
        # local-density ratio: knn similarity in own block minus mean knn-sim in other blocks
        print(
            f"  teacher {t} own={y.mean():.2f}: " + " ".join(f"{k} {roc_auc_score(y, v):.3f}" for k, v in sc.items()),
            flush=True,
        )
