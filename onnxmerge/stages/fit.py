"""Stage 4, mode "fit": logistic regression on the head input of labelled images, plus the routed teachers'
confident pseudo-labels of an unlabeled pool where one is given."""

from __future__ import annotations

import time

import numpy as np

from ..errors import OnnxMergeError
from ..files.images import Dataset, ImageFiles
from ..graph.topology import with_outputs
from ..learn import estimate, health
from ..learn.head import HeadInput, TeachersHead, append_head, fit_head, select_C
from ..learn.routing import PSEUDO_LABEL_THRESHOLD, pseudo_labels
from ..runtime.tasks import digests_task
from . import assess
from .results import Assessment, Extracted, Fitted
from .route import fit_router


def fit_labelled(extracted: Extracted, labelled: Dataset | None, pool: Dataset | None) -> Fitted:
    """Z with a logistic-regression head over the labels of ``labelled`` and the pool's pseudo-labels."""
    head_input = extracted.head_input()
    widths = head_input.widths(extracted.widths)
    xs, ys, weights, seen = [], [], [], []  # seen: the stitched-graph outputs of every image learned from
    said, claims = Assessment(), None
    if labelled is not None:
        seen.append(extracted.features(labelled.x))
        xs.append(head_input.numpy(seen[-1]).astype(np.float64))
        ys.append(labelled.y)
    if pool is not None:
        x_labelled = xs[0] if xs else None
        x_pool, pseudo, keep, pool_out, claims, said = _pseudo_labelled_pool(extracted, labelled, pool, x_labelled)
        seen.append(pool_out)
        xs.append(x_pool[keep])
        ys.append(pseudo[keep])
        kept = int(keep.sum())
        # the pool, however large, weighs as much as the labelled images together
        weights = [np.ones(len(ys[0])), np.full(kept, len(ys[0]) / max(kept, 1))] if labelled is not None else []
    x, y = np.concatenate(xs), np.concatenate(ys)
    config = extracted.config
    # C follows the labels a person gave where there are any (pseudo-labels are many but noisy): chosen by the
    # held-out estimate's own cross-validation where it can tell (learn.estimate.choose_C)
    C, estimated, tried = select_C(ys[0]) if config.C == "auto" else float(config.C), None, {}
    if config.C == "auto" and labelled is not None:
        began, cpu = time.perf_counter(), time.process_time()
        extra = (xs[1], ys[1], weights[-1]) if pool is not None else None
        C, chosen, tried = estimate.choose_C(xs[0], ys[0], widths, config.class_weight, extra)
        if chosen is not None:
            estimated = (chosen, time.perf_counter() - began, time.process_time() - cpu)
    head = fit_head(
        x, y, widths, C=C, class_weight=config.class_weight, sample_weight=np.concatenate(weights) if weights else None
    )
    said += Assessment(
        {
            "C": C,
            **({"C_held_out_accuracy": tried} if tried else {}),
            "train_accuracy": float(np.mean(head.predict(x) == y)),
            "feature_dim": int(sum(widths[: len(head_input.sources)])),
            "head_inputs": int(x.shape[1]),
        }
    )
    classes = [str(c) for c in head.classes_]
    said += assess.fit_mode(
        extracted,
        head,
        classes,
        head_input,
        widths,
        C,
        (xs[0], labelled.y) if labelled is not None else None,
        (x_pool, pseudo, keep, weights[-1] if weights else np.ones(kept)) if pool is not None else None,
        claims,
        estimated,
    )
    graph = with_outputs(extracted.prepared.graph.model, extracted.graph_outputs(), prune=True)
    model = append_head(graph, head_input, head, extracted.widths)
    return Fitted(model, head, classes, (labelled if labelled is not None else pool).x, seen, assessment=said)


def _pseudo_labelled_pool(
    extracted: Extracted, labelled: Dataset | None, pool: Dataset, x_labelled: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, int], Assessment]:
    """The pool's head input, its pseudo-labels, which to keep (where the routed teachers are confident), its
    stitched-graph outputs, the pool images each teacher label's own teacher calls it, and the routing's and
    pseudo-labels' report entries and warnings."""
    if not extracted.teachers:
        raise OnnxMergeError(
            "an unlabeled pool needs at least one teacher source (teacher = true, with labels) to pseudo-label it."
        )
    head_input, engine = extracted.head_input(), extracted.prepared.engine
    fresh = _not_in(pool.x, labelled.x, engine) if labelled is not None else np.ones(len(pool.x), bool)
    pool_out = extracted.features(pool.x[fresh])  # labelled samples win: pool copies of them are dropped
    x_pool = head_input.numpy(pool_out).astype(np.float64)
    teachers = extracted.teacher_space()
    known = []
    if labelled is not None:  # a labelled image of a teacher's label tells the router its source
        owner = {label: i for i, own in enumerate(teachers.labels) for label in own}
        known = [(x_labelled[labelled.y == c], owner[c]) for c in np.unique(labelled.y) if c in owner]
    router, _, said = fit_router(extracted, x_pool, teachers, pool_out, known)
    claims = health.teacher_claims(
        teachers.labels, [HeadInput.probabilities(pool_out, n, k) for n, k in extracted.teachers]
    )
    union_probs, _ = TeachersHead(head_input, teachers, router).numpy(pool_out)
    if labelled is not None and set(teachers.union) <= set(labelled.y):
        # product of experts: the routed teachers and a head fitted on the labels alone must agree
        # (benchmark, k = 5 labels per class: 0.816 vs 0.775 from the teachers alone)
        alone = fit_head(
            x_labelled,
            labelled.y,
            head_input.widths(extracted.widths),
            C=select_C(labelled.y),
            class_weight=extracted.config.class_weight,
        )
        cols = [list(alone.classes_).index(c) for c in teachers.union]
        union_probs = union_probs * alone.predict_proba(x_pool)[:, cols]
        union_probs /= np.maximum(union_probs.sum(axis=1, keepdims=True), 1e-300)
    pseudo, keep = pseudo_labels(union_probs, teachers.union)
    missing = [
        c for c in teachers.union if c not in set(pseudo[keep]) and (labelled is None or c not in set(labelled.y))
    ]
    warnings = [
        f"no pool image was pseudo-labelled {', '.join(map(repr, missing))}; "
        "Z leaves these teacher labels out (add labelled images of them to keep them)."
    ]
    counts = {"kept": int(keep.sum()), "of": int(len(keep)), "threshold": PSEUDO_LABEL_THRESHOLD}
    said += Assessment({"pseudo_labels": counts}, warnings if missing else [])
    return x_pool, pseudo, keep, pool_out, claims, said


def _not_in(pool, labelled: np.ndarray, engine) -> np.ndarray:
    """Mask of pool images whose pixels are not a labelled image's, compared by 128-bit digests (a pool of
    files that a cluster reads, ``ImageFiles``, is digested on the workers)."""
    known = set(digests_task(labelled))  # the labelled images are here already
    digests = engine.pixel_digests(pool) if isinstance(pool, ImageFiles) else digests_task(pool)
    return np.asarray([d not in known for d in digests], bool)
