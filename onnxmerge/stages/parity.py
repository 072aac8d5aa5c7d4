"""Stage 5, check parity: Z must compute what its sources compute, and what the fitted head computes.

PRODUCT.md's definition: for every source, the features inside Z equal the original source model run by
onnxruntime with its feature tensor exposed, on the very tensor Z's preprocessing produced:
``max |Z - source| <= 1e-5 * max(1, max |source|)`` in fp32. Preprocessing is checked separately against
the numpy reference, and Z's probabilities against the estimator's ``predict_proba``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..contract import FEATURES, IMAGE, PROBABILITIES, UNKNOWN_SCORE
from ..errors import OnnxMergeError
from ..files.images import decoded
from ..graph.preprocess import reference_preprocess
from ..graph.stitch import output_names
from ..graph.topology import with_outputs
from ..learn.unknown import DISTANCE
from ..runtime.session import CHECK_VALUES_PER_CALL, Runner, run_batched
from ..runtime.weights import WeightFolder, release_freed_memory
from .results import Extracted, Fitted, Prepared, feature_sources

EXACT = 1e-5  # the contract's tolerance, relative to max(1, max |reference|)
CONVERTED = 1e-4  # the loosest allowed step (an opset conversion that changes an op's arithmetic)
#: a source in reduced precision is checked against the source file itself (its own precision). Z runs the
#: same float16 / int8 ops, but onnxruntime optimises the graph around the cut differently: it drops the
#: float16 rounding of a feature that Z casts to float32 right away (one float16 step, 2^-11 = 4.9e-4, was the
#: largest difference measured), and may fuse a requantisation differently (one step of an 8-bit scale is 1/255
#: of the range; the QDQ and dynamic files measured 0)
REDUCED = {
    "float16": (1e-3, "a float16 source checked against itself: two float16 steps"),
    "int8": (1e-2, "an int8 source checked against itself on dequantised features: two 8-bit steps"),
}


@dataclass
class ParityCheck:
    """One comparison: what was compared, the worst error, the tolerance it had to meet."""

    step: str
    max_abs_error: float
    scale: float
    tolerance: float
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance * self.scale

    def line(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        why = f" ({self.why})" if self.why else ""
        return (
            f"{self.step}: max |diff| {self.max_abs_error:.2e} <= {self.tolerance:.0e} x {self.scale:.3g}"
            f"{why} -> {mark}"
        )


def compare(
    step: str, actual: np.ndarray, reference: np.ndarray, tolerance: float = EXACT, why: str = ""
) -> ParityCheck:
    """Compare two arrays the way the contract defines parity."""
    if actual.shape != reference.shape:
        raise OnnxMergeError(
            f"parity check {step} failed: shapes differ ({list(actual.shape)} vs "
            f"{list(reference.shape)}); this is a bug in onnxmerge, please report it."
        )
    reference64 = reference.astype(np.float64)
    error = float(np.max(np.abs(actual.astype(np.float64) - reference64))) if actual.size else 0.0
    scale = max(1.0, float(np.max(np.abs(reference64)))) if reference.size else 1.0
    return ParityCheck(step, error, scale, tolerance, why)


class SourceReference:
    """The original source in onnxruntime with its feature tensor exposed, pooled/flattened as cut did.

    ``weights`` holds a light model's offloaded tensors (the bytes of the source file, moved unchanged).
    """

    def __init__(
        self, model: onnx.ModelProto, feature: str, pooled: tuple[int, ...] | bool, weights: WeightFolder | None = None
    ):
        self.runner = Runner(with_outputs(model, [feature]), weights)
        self.feature, self.pooled = feature, pooled

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The source's features ``[N, d]`` for its own input tensor ``inputs`` (one onnxruntime call)."""
        value = self.runner.run(inputs, [self.feature])[0]
        if self.pooled:  # the spatial axes graph.cut.cut averaged over (True: NCHW)
            axes = tuple(self.pooled) if isinstance(self.pooled, tuple) else (2, 3)
            return value.mean(axis=axes, dtype=np.float64).astype(np.float32)
        return value.reshape(len(value), -1)


@dataclass
class Worst:
    """:func:`compare` accumulated over batches: the largest error and the largest reference magnitude."""

    step: str
    error: float = 0.0
    scale: float = 1.0

    def add(self, actual: np.ndarray, reference: np.ndarray) -> None:
        part = compare(self.step, actual, reference)
        self.error, self.scale = max(self.error, part.max_abs_error), max(self.scale, part.scale)

    def check(self, tolerance: float = EXACT, why: str = "") -> ParityCheck:
        return ParityCheck(self.step, self.error, self.scale, tolerance, why)


def require(checks: list[ParityCheck]) -> None:
    """Fail the build loudly if any check failed: never ship an unchecked Z."""
    failed = [c for c in checks if not c.ok]
    if failed:
        raise OnnxMergeError(
            "parity check failed, Z was not written: "
            + "; ".join(c.line() for c in failed)
            + ". Please report this with the source models."
        )


SAMPLES = 64  # images per parity check, drawn from the images the build used


def check_parity(extracted: Extracted, fitted: Fitted) -> list[ParityCheck]:
    """Every check PRODUCT.md asks for, on real images the build used; raises if any fails.

    One source's weights in memory at a time: the stitched graph's outputs the head reads, then per
    source its preprocessing (a weightless part of Z) feeding the original source, then Z itself; each
    batch by batch, so memory does not grow with the sample.
    """
    images, prepared = fitted.parity_images, extracted.prepared
    engine = prepared.engine
    pick = np.sort(np.random.default_rng(0).choice(len(images), size=min(SAMPLES, len(images)), replace=False))
    sample = decoded(images if len(pick) == len(images) else images[pick])  # a lazy pool's 64 files read here
    inner = engine.outputs(sample, [n for n in extracted.graph_outputs() if n != FEATURES], CHECK_VALUES_PER_CALL)
    engine.close()
    references = [_source_reference(prepared, source, sample) for source in prepared.sources]
    extra = [UNKNOWN_SCORE, DISTANCE] if fitted.unknown is not None else []
    z_out = run_batched(
        engine.session(with_outputs(fitted.model, extra[1:], extra=True) if extra[1:] else fitted.model),
        sample,
        [PROBABILITIES, FEATURES] + extra,
        engine.batch(budget=CHECK_VALUES_PER_CALL),
        quiet=True,
        lean=prepared.graph.large,
    )
    release_freed_memory()
    start, checks, joined = 0, [], feature_sources(prepared.sources)
    for source, (reference, preprocessing_check) in zip(prepared.sources, references):
        checks.append(preprocessing_check)
        width = reference.shape[1]
        if source.name in joined:
            actual, start = z_out[FEATURES][:, start : start + width], start + width
        else:  # a merged backbone's repeat: its features are the stitched graph's (Z's ``features`` has them once)
            actual = inner[output_names(source.name)["feature"]]
        against = f"merged model ({source.merged})" if source.merged else "source"
        step = f"{source.name} features vs {against} {source.feature!r}"
        if source.precision in REDUCED:
            check = compare(step, actual, reference, *REDUCED[source.precision])
        else:
            check = compare(step, actual, reference)
        if not check.ok and source.name in prepared.graph.notes:
            why = f"{prepared.graph.notes[source.name]} may change an op's arithmetic"
            check = compare(check.step, actual, reference, CONVERTED, why)
        checks.append(check)
    if prepared.config.mode == "teachers":
        expected, _ = fitted.head.numpy(inner)
        checks.append(compare("probabilities vs the teachers' routed union (numpy)", z_out[PROBABILITIES], expected))
    else:
        expected = fitted.head.predict_proba(extracted.head_input().numpy(inner).astype(np.float64))
        checks.append(compare("probabilities vs scikit-learn predict_proba", z_out[PROBABILITIES], expected))
    if fitted.unknown is not None:  # in two exact steps: the score's slope magnifies the distance's rounding
        distance = z_out[DISTANCE][:, 0]
        expected = fitted.unknown.distance(inner)
        checks.append(compare("unknown distance vs numpy", distance, expected))
        level = fitted.unknown.level(distance)
        checks.append(compare("unknown_score vs numpy calibration", z_out[UNKNOWN_SCORE], level))
    require(checks)
    return checks


def _source_reference(prepared: Prepared, source, sample: np.ndarray) -> tuple[np.ndarray, ParityCheck]:
    """The original source's features on what Z's preprocessing fed it, and that preprocessing's check."""
    names = output_names(source.name)
    preprocess = prepared.engine.part_session([names["input"]])
    original = SourceReference(source.model, source.feature, source.cut.pooled, prepared.weights)
    preprocessing = Worst(f"{source.name} preprocessing vs numpy reference")
    parts, batch = [], prepared.engine.batch([source.name], CHECK_VALUES_PER_CALL)
    for start in range(0, len(sample), batch):
        chunk = sample[start : start + batch]
        z_input = preprocess.run([names["input"]], {IMAGE: chunk})[0]
        preprocessing.add(z_input, reference_preprocess(chunk, prepared.config.input, source.preprocess))
        parts.append(original.features(z_input))
        if prepared.graph.large:
            release_freed_memory()
    del preprocess, original
    release_freed_memory()
    return np.concatenate(parts), preprocessing.check(*_input_bound(source.preprocess.dtype))


def _input_bound(dtype: np.dtype) -> tuple[float, str]:
    """The preprocessing check's bound: exact in float32; a resized value Z computes in float32 may round to the
    neighbouring uint8 pixel or float16 step where the float64 reference lands on the other side."""
    if np.dtype(dtype).kind in "ui":
        return 4e-3, "uint8 input: a resized pixel may round to its neighbour (one unit of 255)"
    if np.dtype(dtype) == np.float16:
        return 1e-3, "float16 input: one float16 step"
    return EXACT, ""
