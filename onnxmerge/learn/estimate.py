"""How well Z will do on the user's own task: the head cross-validated on the labelled images.

The build has every labelled image's head input already (the sources ran once), so a held-out estimate
costs only refits of the logistic regression: stratified k-fold (k = 5, fewer where no class has 5
images), each fold's head fitted as the build fits its own (same C, class weights, block widths, and the
same always-trained extra rows, e.g. a pool's pseudo-labels; solver tolerance ``FOLD_TOL``). Classes
with fewer images than folds are still held out, one image at a time (each with the others left to train
on, as in leave-one-out); a class with a single image cannot be held out without the head never having seen it, so
it always trains
and is listed as too few to estimate rather than scored 0 or guessed.

``+-`` is one standard error of the held-out accuracy (binomial, ``sqrt(a (1 - a) / n)`` over the n
held-out images): the fold-to-fold spread of small folds says more about the fold size than about Z.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold

from .head import FEW_SHOT_C, MANY_SHOT_C, block_spans, fit_head, select_C

MAX_FOLDS = 5
# The folds' solver tolerance. An estimate whose standard error is 0.01-0.03 does not need the final head's
# 1e-4: on the demo's stage 1 (800 images) 1e-3 took 51-64 lbfgs iterations per fold instead of 167-234 (1.9 s
# CPU instead of 7.3 s for 5 folds) for 0.861 instead of 0.860. Each fold starts cold: starting from the
# build's head would leak the held-out images into the folds (benchmarks/RESULTS.md, issue 13).
FOLD_TOL = 1e-3
MIN_TO_HOLD_OUT = 2  # a class needs one image to hold out and one to train on
# C = "auto" is chosen by the build's own cross-validation from this many labels in the median class: with
# fewer, folds of 1-2 images per class cannot tell two Cs apart and ``select_C``'s rule decides
CV_C_MIN_PER_CLASS = 5


@dataclass
class Estimate:
    """A held-out accuracy estimate: overall, per class, and what could not be estimated."""

    accuracy: float | None  # fraction of held-out images predicted right (None: nothing could be held out)
    standard_error: float | None
    folds: int
    images: int  # held-out (scored) images
    labelled: int  # all labelled images
    per_class: dict[str, dict] = field(default_factory=dict)  # label -> {recall, support} or {recall: None, ...}
    too_few: list[str] = field(default_factory=list)  # labels with a single image: trained on, not scored
    what: str = "labelled images"  # what was held out, for the printed line
    measure: str = "accuracy"  # "accuracy", or "new-class recall" (teachers mode: only new classes have labels)

    def line(self) -> str:
        """``expected accuracy 0.87 +- 0.03 (5-fold, 95 labelled images)`` plus what was left out."""
        if self.accuracy is None:
            return (
                f"expected {self.measure}: not estimated ({self.labelled} {self.what}; every class needs at least "
                f"{MIN_TO_HOLD_OUT} images to hold one out)"
            )
        text = (
            f"expected {self.measure} {self.accuracy:.2f} +- {self.standard_error:.2f} "
            f"({self.folds}-fold, {self.images} {self.what}"
        )
        if self.too_few:
            text += f"; {', '.join(map(repr, self.too_few))} too few to estimate (1 image)"
        return text + ")"

    def as_dict(self) -> dict:
        """The JSON report's ``expected_accuracy`` (and Z's ``onnxmerge.expected_accuracy`` metadata)."""
        return {
            "accuracy": self.accuracy,
            "standard_error": self.standard_error,
            "folds": self.folds,
            "held_out_images": self.images,
            "labelled_images": self.labelled,
            "what": self.what,
            "measure": self.measure,
            "per_class": self.per_class,
            "too_few_to_estimate": self.too_few,
            "method": "stratified k-fold of the head on the labelled images (features extracted once)",
        }


def fold_plan(labels: np.ndarray, folds: int = MAX_FOLDS, seed: int = 0) -> tuple[np.ndarray, int]:
    """``(fold of each image, k)``: stratified folds 0..k-1; -1 for images of a single-image class (never held out).

    k is ``folds``, or the largest class's count where that is smaller (k >= 2 whenever anything can be held out).
    """
    labels = np.asarray(labels).astype(str)
    classes, counts = np.unique(labels, return_counts=True)
    held = np.isin(labels, classes[counts >= MIN_TO_HOLD_OUT])
    plan = np.full(len(labels), -1)
    if not held.any():
        return plan, 0
    k = int(min(folds, counts[counts >= MIN_TO_HOLD_OUT].max()))
    index = np.flatnonzero(held)
    with warnings.catch_warnings():  # "the least populated class has only n members": handled, see module docstring
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for fold, (_, test) in enumerate(splitter.split(index, labels[index])):
            plan[index[test]] = fold
    return plan, k


def _fold_predictions(
    x: np.ndarray,
    y: np.ndarray,
    plan: np.ndarray,
    k: int,
    widths: list[int],
    C: float,
    class_weight: str | None,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """Each row's label predicted by the head fitted without its fold (``plan``), ``extra`` in every fold."""
    predicted = np.empty(len(y), dtype=object)
    for fold in range(k):
        train, test = plan != fold, plan == fold
        xs, ys, ws = [x[train]], [y[train]], [np.ones(int(train.sum()))]
        if extra is not None and len(extra[0]):
            xs.append(extra[0])
            ys.append(np.asarray(extra[1]).astype(str))
            ws.append(extra[2])
        head = fit_head(
            np.concatenate(xs),
            np.concatenate(ys),
            widths,
            C=C,
            class_weight=class_weight,
            sample_weight=np.concatenate(ws) if extra is not None else None,
            tol=FOLD_TOL,
        )
        predicted[test] = head.predict(x[test])
    return predicted


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    widths: list[int],
    C: float,
    class_weight: str | None,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    folds: int = MAX_FOLDS,
    seed: int = 0,
) -> Estimate:
    """Held-out accuracy of ``fit_head`` on labelled head inputs ``x`` / labels ``y``.

    ``widths``, ``C`` and ``class_weight`` are the build's own (``fit_head``'s arguments). ``extra`` is
    ``(x, y, sample_weight)`` of rows the build's head also trains on but that are not labelled by a person
    (a pool's pseudo-labels): they join every fold's training set, never its test set. Labelled rows weigh 1.
    """
    y = np.asarray(y).astype(str)
    plan, k = fold_plan(y, folds, seed)
    classes, counts = np.unique(y, return_counts=True)
    too_few = [str(c) for c, n in zip(classes, counts) if n < MIN_TO_HOLD_OUT]
    if k == 0:
        return Estimate(
            None,
            None,
            0,
            0,
            len(y),
            {str(c): {"recall": None, "support": int(n)} for c, n in zip(classes, counts)},
            too_few,
        )
    predicted = _fold_predictions(x, y, plan, k, widths, C, class_weight, extra)
    scored = plan >= 0
    right = predicted[scored] == y[scored]
    accuracy = float(right.mean())
    per_class = {}
    for c, n in zip(classes, counts):
        mine = scored & (y == c)
        per_class[str(c)] = (
            {"recall": float(np.mean(predicted[mine] == c)), "support": int(n)}
            if mine.any()
            else {"recall": None, "support": int(n), "note": "too few to estimate"}
        )
    return Estimate(
        accuracy,
        float(np.sqrt(accuracy * (1 - accuracy) / len(right))),
        k,
        int(scored.sum()),
        len(y),
        per_class,
        too_few,
    )


def teacher_probabilities(x: np.ndarray, widths: list[int], n_sources: int) -> list[np.ndarray]:
    """Each teacher's probabilities recovered from a head input (its log-probability block, floored at LOG_FLOOR)."""
    return [np.exp(x[:, start:stop]) for start, stop in block_spans(widths)[n_sources:]]


def _routed_fold_labels(
    router_x: np.ndarray,
    router_y: np.ndarray,
    router_weight: np.ndarray,
    test: np.ndarray,
    widths: list[int],
    C: float,
    n_sources: int,
    merge: np.ndarray,
    classes: list[str],
) -> np.ndarray:
    """Z's label for the router rows ``test``, through a router refitted without them."""
    n_teachers = len(widths) - n_sources
    train = np.setdiff1d(np.arange(len(router_y)), test)
    router = fit_head(
        router_x[train],
        router_y[train],
        widths,
        C=C,
        class_weight="balanced",
        sample_weight=router_weight[train],
        tol=FOLD_TOL,
    )
    columns = np.zeros((len(router.classes_), n_teachers + len(classes) - merge.shape[1]))
    columns[np.arange(len(router.classes_)), np.asarray(router.classes_, int)] = 1
    route = router.predict_proba(router_x[test]) @ columns
    probs = teacher_probabilities(router_x[test], widths, n_sources)
    joint = np.concatenate([route[:, [i]] * p for i, p in enumerate(probs)], axis=1) @ merge
    z = np.concatenate([joint, route[:, n_teachers:]], axis=1)
    return np.asarray(classes)[z.argmax(axis=1)]


def _recalls(predicted: np.ndarray, y: np.ndarray, scored: np.ndarray, labels, counts) -> dict:
    """Each class's held-out recall and support (recall None where none of it was scored)."""
    return {
        str(c): (
            {"recall": float(np.mean(predicted[scored & (y == c)] == c)), "support": int(n)}
            if (scored & (y == c)).any()
            else {"recall": None, "support": int(n), "note": "too few to estimate"}
        )
        for c, n in zip(labels, counts)
    }


def cross_validate_new_classes(
    router_x: np.ndarray,
    router_y: np.ndarray,
    router_weight: np.ndarray,
    widths: list[int],
    C: float,
    n_sources: int,
    merge: np.ndarray,
    classes: list[str],
    folds: int = MAX_FOLDS,
    seed: int = 0,
) -> Estimate:
    """Teachers mode with labelled new classes: held-out recall of the new classes, through Z's routed union.

    ``router_x``/``router_y``/``router_weight`` are the router's training rows (``build.route.fit_router``: the pool's
    routed sources, then the labelled new-class images as router classes ``T, T+1, ...``), ``merge`` the
    teachers' ``merge_matrix`` and ``classes`` Z's classes (union, then new). Only the labelled new-class rows
    are folded; each fold's router is refitted as the build fits it, and a held-out image counts as right
    where Z's argmax (``route_s * p_s(l)`` against the new classes' route) is its class. The teachers' own
    classes have no labels here, so no accuracy over them is claimed: this estimates the new classes only.
    """
    n_teachers = len(widths) - n_sources
    new = np.flatnonzero(router_y >= n_teachers)
    y_new = np.asarray(classes)[merge.shape[1] + router_y[new] - n_teachers]  # union first, then new classes
    plan, k = fold_plan(y_new, folds, seed)
    labels, counts = np.unique(y_new, return_counts=True)
    too_few = [str(c) for c, n in zip(labels, counts) if n < MIN_TO_HOLD_OUT]
    what = "labelled images of new classes; the teachers' classes have no labels to test on"
    if k == 0:
        return Estimate(
            None,
            None,
            0,
            0,
            len(y_new),
            {str(c): {"recall": None, "support": int(n)} for c, n in zip(labels, counts)},
            too_few,
            what,
            "new-class recall",
        )
    predicted = np.empty(len(new), dtype=object)
    for fold in range(k):
        predicted[plan == fold] = _routed_fold_labels(
            router_x, router_y, router_weight, new[plan == fold], widths, C, n_sources, merge, classes
        )
    scored = plan >= 0
    right = predicted[scored] == y_new[scored]
    accuracy = float(right.mean())
    per_class = _recalls(predicted, y_new, scored, labels, counts)
    return Estimate(
        accuracy,
        float(np.sqrt(accuracy * (1 - accuracy) / len(right))),
        k,
        int(scored.sum()),
        len(y_new),
        per_class,
        too_few,
        what,
        "new-class recall",
    )


def choose_C(
    x: np.ndarray,
    y: np.ndarray,
    widths: list[int],
    class_weight: str | None,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[float, Estimate | None, dict[str, float]]:
    """The head's C for ``C = "auto"``: ``FEW_SHOT_C`` or ``MANY_SHOT_C``, whichever ``cross_validate`` (the
    estimate the build runs anyway, same folds, same ``extra`` rows) scores higher; a tie keeps ``select_C``'s
    rule, and so does a median class under ``CV_C_MIN_PER_CLASS`` labels (no cross-validation then).

    Why: ``select_C``'s threshold (50 per class) was set on single-source heads; with three or more teachers
    and a pool the best C moved (benchmarks/RESULTS.md, "routing/labels.py": C = 1 from 10 labels per class).
    Returns the C, its estimate (None where none was run: the build then runs its own) and each C's held-out
    accuracy. The estimate of the chosen C is optimistic by the choice between two values (a fraction of its
    standard error on the benchmarks)."""
    rule = select_C(y)
    if np.median(np.unique(np.asarray(y), return_counts=True)[1]) < CV_C_MIN_PER_CLASS:
        return rule, None, {}
    tried = {C: cross_validate(x, y, widths, C, class_weight, extra=extra) for C in (FEW_SHOT_C, MANY_SHOT_C)}
    if any(e.accuracy is None for e in tried.values()):
        return rule, None, {}
    scores = {str(C): float(e.accuracy) for C, e in tried.items()}
    best = max(tried, key=lambda C: (tried[C].accuracy, C == rule))
    return best, tried[best], scores
