"""Stage 4, mode "teachers": no labels for the sources' classes. A router learned on an unlabeled pool says
which source owns an image (``learn.routing`` explains how), that source's own head says which label."""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline

from ..errors import OnnxMergeError
from ..files.images import Dataset
from ..graph.stitch import output_names
from ..graph.topology import with_outputs
from ..learn.head import HeadInput, TeachersHead, fit_head
from ..learn.routing import Teachers, l2_blocks, route_pool
from . import assess
from .results import Assessment, Extracted, Fitted, feature_sources


def fit_teachers(extracted: Extracted, labelled: Dataset | None, pool: Dataset | None) -> Fitted:
    """Z over the teachers' union (+ any new classes of ``labelled``), with no label of the old classes."""
    teachers = extracted.teacher_space()
    new = sorted(set(labelled.y)) if labelled is not None else []
    overlap = [c for c in new if c in teachers.union]
    if overlap:
        raise OnnxMergeError(
            f'mode "teachers" takes a train set of new classes only, but {overlap[0]!r} is a '
            'teacher\'s label; remove those images, or use mode = "fit" to learn from labels.'
        )
    if new and pool is None:
        raise OnnxMergeError(
            'new classes in mode "teachers" need an unlabeled pool to tell them from the '
            "teachers' classes; add [head] unlabeled."
        )
    head_input = extracted.head_input()
    router = rows = pool_out = None  # rows: the router's training rows (x, y, weight)
    seen, said = [], Assessment()  # seen: the stitched-graph outputs of every image learned from
    if pool is not None:
        pool_out = extracted.features(pool.x)
        known = []
        seen.append(pool_out)
        if labelled is not None:
            seen.append(extracted.features(labelled.x))
            x = head_input.numpy(seen[-1]).astype(np.float64)
            known = [(x[labelled.y == c], len(teachers.names) + i) for i, c in enumerate(new)]
        x_pool = head_input.numpy(pool_out).astype(np.float64)
        router, rows, said = fit_router(extracted, x_pool, teachers, pool_out, known)
    head = TeachersHead(head_input, teachers, router, new)
    said += assess.teachers_mode(extracted, head, head_input, pool_out, rows)
    model = head.append(
        with_outputs(extracted.prepared.graph.model, extracted.graph_outputs(), prune=True), extracted.widths
    )
    given = pool if pool is not None else labelled
    parity = given.x if given is not None else np.zeros((2, *extracted.config.input.shape), np.uint8)
    return Fitted(model, head, head.classes, parity, seen, assessment=said)


def fit_router(
    extracted: Extracted,
    x_pool: np.ndarray,
    teachers: Teachers,
    pool: dict[str, np.ndarray],
    known: list[tuple[np.ndarray, int]],
) -> tuple[Pipeline, tuple[np.ndarray, np.ndarray, np.ndarray], Assessment]:
    """Fit the "which source" router on the pool, its targets from label-matched clustering:
    ``(router, its training rows (x, y, weight), the build report's routing entry and warnings)``.

    ``x_pool`` is the pool's head input, ``pool`` its stitched-graph outputs. ``known`` holds ``(head
    inputs, router class)`` of images whose router class is given (labelled images of a teacher's label,
    or a new class's images).
    """
    blocks = [pool[output_names(name)["feature"]] for name in feature_sources(extracted.sources)]
    probs = [HeadInput.probabilities(pool, n, k) for n, k in extracted.teachers]
    routing = route_pool(l2_blocks(blocks), teachers, probs)
    targets = routing.targets()
    widths = extracted.head_input().widths(extracted.widths)
    router, rows = train_router(x_pool, targets, known, widths, extracted.config.router_C, len(teachers.names))
    unrouted = [n for i, n in enumerate(teachers.names) if not np.any(rows[1] == i)]
    warnings = []
    if unrouted:
        warnings.append(
            f"no pool image was routed to {', '.join(map(repr, unrouted))} (another teacher "
            "claims the same images); Z never uses its head."
        )
    routed = {
        "method": "label-matched clustering + logistic-regression router",
        "pool_share": {n: float(np.mean(routing.source == i)) for i, n in enumerate(teachers.names)},
        "router_targets": int(np.sum(targets >= 0)),
        "label_counts": routing.label_counts(),
        "scarce_labels": routing.scarce_labels(),
        # the forecast's uncertainty: pool images the k-means runs route differently (learn.select.forecast)
        "disagreed": float(np.mean(~routing.confident)),
    }
    return router, rows, Assessment({"routing": routed}, warnings)


def train_router(
    x_pool: np.ndarray,
    targets: np.ndarray,
    known: list[tuple[np.ndarray, int]],
    widths: list[int],
    C: float,
    n_teachers: int,
) -> tuple[Pipeline, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The router on pool head inputs ``x_pool`` whose ``targets`` (router class, -1: no target) are >= 0, plus
    the ``known`` rows; ``(router, its training rows (x, y, weight))``. Classes below ``n_teachers`` are teachers.
    """
    x_pool, targets = x_pool[targets >= 0], targets[targets >= 0]  # the k-means runs disagreed: not a target
    x_known = np.concatenate([x for x, _ in known]) if known else np.zeros((0, x_pool.shape[1]))
    y_known = np.concatenate([np.full(len(x), c) for x, c in known]) if known else np.zeros(0, int)
    x_all, y_all = np.concatenate([x_pool, x_known]), np.concatenate([targets, y_known])
    if len(np.unique(y_all)) < 2:
        raise OnnxMergeError(
            "every pool image was routed to one source; the pool must hold images of several sources' classes."
        )
    # labelled images of the teachers' labels count as much as the whole pool: their source is certain,
    # the pool's is a guess (benchmark: +0.7 to +2 points over equal weights); new classes are balanced
    # by class_weight already
    weight = np.ones(len(y_all))
    certain = np.flatnonzero(y_known < n_teachers) + len(x_pool)
    if len(certain):
        weight[certain] = len(x_pool) / len(certain)
    router = fit_head(x_all, y_all, widths, C=C, class_weight="balanced", sample_weight=weight)
    return router, (x_all, y_all, weight)  # the rows: assess.teachers_mode refits the router per fold
