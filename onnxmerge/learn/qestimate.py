"""What ``--quantize`` costs, measured on images that neither the calibration nor the head saw.

The split (``split``): calibration images come from the pool first (it has no other use here), then from the
labelled images, at most a quarter of them; the **estimate images** are the labelled images not calibrated
on, the **agreement images** the pool images not calibrated on. The int8 Z's ranges never saw an image it is
scored on: the previous protocol calibrated on the very images it cross-validated, and promised +0.4 points
where 1,095 unseen test images showed -6.5 (issue 29).

The scores (``HeldOut``): stratified folds over the estimate images; each fold's head is fitted as the build
fits its own, on every other labelled image (calibration images included: a head may train on them, it is
never scored on them). Float: the fold's head on float head inputs. int8: the same head on the candidate's
int8 head inputs (paired with the float score: the same heads, the same images), or a head refitted on the
int8 head inputs, kept only where it beats the float head by more than ``REFIT_GAIN``: picking the better of
two noisy scores inflates the estimate (EfficientNet-Lite0 + Lite1: refit chosen at +1.7 points held out, the
int8 Z then scored 0.5 points under the float Z on unseen test images, benchmarks/RESULTS.md). Where
the build's head was not fitted on these labels alone (teachers mode, a pseudo-labelled pool), Z's own labels
are scored instead (held out from calibration, not from the head). The agreement of int8 labels with float
labels needs no labels at all: out-of-fold on the estimate images, and final Z against final Z on the
held-out pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph.topology import with_outputs
from ..runtime.session import make_session, run_batched
from .estimate import FOLD_TOL, fold_plan
from .head import HEAD_INPUT, fit_head

AGREEMENT_IMAGES = 512  # at most this many held-out pool images are run through both Zs
REFIT_GAIN = 0.01  # a head refitted on int8 features replaces the float head only when > 1 point better held out


@dataclass(frozen=True)
class HeadFit:
    """How the build fitted its head (``fit_head``'s arguments): refits it on other rows or other features."""

    widths: list[int]
    C: float
    class_weight: str | None = "balanced"

    def __call__(self, x: np.ndarray, y: np.ndarray, tol: float = 1e-4):
        return fit_head(x, y, self.widths, C=self.C, class_weight=self.class_weight, tol=tol)


@dataclass(frozen=True)
class Split:
    """Which images calibrate and which measure (see the module docstring)."""

    calibration: np.ndarray  # uint8 images
    from_pool: int  # how many of them are pool images (the rest are labelled)
    estimate: np.ndarray  # indices of the labelled images scored (never calibrated on)
    agreement: np.ndarray  # held-out pool images (uint8), never calibrated on

    @property
    def calibration_labelled(self) -> int:
        """How many labelled images calibrate (never scored)."""
        return len(self.calibration) - self.from_pool

    def text(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.from_pool, "pool"), (self.calibration_labelled, "labelled")) if n]
        return " and ".join(parts) + " images"


def split(images: np.ndarray, pool: np.ndarray | None, calibration_images: int, seed: int = 0) -> Split:
    """Calibration from the pool first, then at most a quarter of the labelled images; the rest measure."""
    rng = np.random.default_rng(seed)
    pool = np.zeros((0, *images.shape[1:]), images.dtype) if pool is None else pool
    pool_order = rng.permutation(len(pool))
    from_pool = min(calibration_images, len(pool))
    from_labelled = min(calibration_images - from_pool, len(images) // 4)
    labelled_order = rng.permutation(len(images))
    calibration = np.concatenate(
        [pool[np.sort(pool_order[:from_pool])], images[np.sort(labelled_order[:from_labelled])]]
    )
    estimate = np.sort(labelled_order[from_labelled:])
    agreement = pool[np.sort(pool_order[from_pool : from_pool + AGREEMENT_IMAGES])]
    return Split(calibration, from_pool, estimate, agreement)


def head_inputs(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """Z's ``head/input`` (the logistic regression's input) on ``images``, as Z computes it."""
    session = make_session(with_outputs(model, [HEAD_INPUT], extra=True))
    return run_batched(session, images, [HEAD_INPUT], batch_size=16, quiet=True)[HEAD_INPUT].astype(np.float64)


def z_labels(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """Z's ``label`` output on ``images``."""
    if len(images) == 0:
        return np.zeros(0, dtype=str)
    return run_batched(make_session(model), images, ["label"], batch_size=16, quiet=True)["label"].astype(str)


@dataclass
class Scored:
    """One candidate Z on the estimate images: accuracy and labels, with the float head or a refitted one."""

    accuracy: float
    labels: np.ndarray  # out-of-fold labels of the estimate images
    refit: bool  # True where a head refitted on the int8 head inputs beat the float head by > ``REFIT_GAIN``
    head_inputs: np.ndarray | None  # every labelled image's int8 head inputs (for the final refit)


class HeldOut:
    """Scores candidate Zs on the estimate images (module docstring); the float Z's score is ``float``."""

    def __init__(self, float_model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, estimate, fit):
        self.images, self.labels, self.fit = images, np.asarray(labels).astype(str), fit
        self.estimate = np.asarray(estimate)
        plan, self.k = fold_plan(self.labels[self.estimate])
        self.fold = np.full(len(images), -1)
        self.fold[self.estimate] = plan
        if fit is None or self.k == 0:
            self.fit, self.k = None, 0
            self.float = Scored(*self._own(float_model), False, None)
            return
        x = head_inputs(float_model, images)
        self.heads = [fit(x[self.fold != f], self.labels[self.fold != f], FOLD_TOL) for f in range(self.k)]
        self.float = Scored(*self._scored(x, self.heads), False, x)

    @property
    def scored(self) -> np.ndarray:
        """Indices of the labelled images that are scored (estimate images in some fold)."""
        return self.estimate if self.fit is None else np.flatnonzero(self.fold >= 0)

    def what(self) -> str:
        n = len(self.scored)
        if self.fit is None:
            return (
                f"Z's own labels on {n} labelled images not calibrated on (its head was fitted with them: "
                "held out from calibration only)"
            )
        return f"{self.k}-fold, {n} labelled images neither calibrated on nor seen by the fold's head"

    def _own(self, model: onnx.ModelProto) -> tuple[float, np.ndarray]:
        got = z_labels(model, self.images[self.estimate])
        return float(np.mean(got == self.labels[self.estimate])), got

    def _scored(self, x: np.ndarray, heads) -> tuple[float, np.ndarray]:
        predicted = np.empty(len(self.images), dtype=object)
        for f, head in enumerate(heads):
            test = self.fold == f
            predicted[test] = head.predict(x[test])
        scored = self.scored
        return float(np.mean(predicted[scored] == self.labels[scored])), predicted[scored].astype(str)

    def __call__(self, candidate: onnx.ModelProto) -> Scored:
        """The candidate's held-out accuracy with the float heads, or with heads refitted on it where those
        score more than ``REFIT_GAIN`` better; ``last_scores`` keeps both (float heads, refitted heads)."""
        if self.fit is None:
            return Scored(*self._own(candidate), False, None)
        x = head_inputs(candidate, self.images)
        kept = Scored(*self._scored(x, self.heads), False, x)
        refits = [self.fit(x[self.fold != f], self.labels[self.fold != f], FOLD_TOL) for f in range(self.k)]
        refit = Scored(*self._scored(x, refits), True, x)
        self.last_scores = (kept.accuracy, refit.accuracy)
        return refit if refit.accuracy - kept.accuracy > REFIT_GAIN else kept

    def per_class(self, scored: Scored) -> dict[str, dict]:
        """Recall and support per class of the scored images."""
        truth = self.labels[self.scored]
        return {
            str(c): {"recall": float(np.mean(scored.labels[truth == c] == c)), "support": int(np.sum(truth == c))}
            for c in np.unique(truth)
        }
