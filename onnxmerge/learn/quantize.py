"""``build --quantize``: int8 where it pays and keeps accuracy, chosen per source by measurement.

onnxruntime's static QDQ quantisation (int8 per-channel weights, uint8 activations: the U8S8 kernels of x86
VNNI and of onnxruntime mobile/web) is applied to the nodes of each source's network only: the
preprocessing (element-wise arithmetic on the raw image) and the head (its standardisation is folded into
its weights, so its inputs have very different scales: quantising it cost EfficientNet-Lite0 46 points)
stay float. What is decided by measurement, in this order:

1. **Which sources.** Each source's part of Z (its preprocessing and network, up to its feature) is timed
   float and int8 at batch 32, interleaved; a source becomes int8 only when its int8 part takes at most
   ``PAYS`` of the float time (on tiny networks the Quantize/Dequantize pairs cost more than they save).
2. **The calibration method** (MinMax, percentile, entropy), on the pool and training images (at most
   ``CALIBRATION_IMAGES``): the one with the best held-out accuracy.
3. **The first and last weighted layer of each source**: kept float unless quantising them as well costs
   at most ``LAYER_TOLERANCE`` of held-out accuracy.
4. **Weight-only int8 for the layers still float** (``qdq.int8_weights``: int8 weights, per-channel scale,
   a DequantizeLinear, float arithmetic): kept when it costs at most ``LAYER_TOLERANCE`` held out. It is
   what brings the file to under a third of the float Z where first/last layers or a whole source stay float.
5. **The head refitted on the int8 features** (mode "fit", head fitted on labelled images only) when that is
   more accurate held out than the float head on int8 features.

"Held out" is stratified k-fold cross-validation on the labelled images' head inputs: a head fitted as the
build fits it, on k-1 folds of float (or int8) head inputs, scored on the remaining fold, so no image is
scored by a head that saw it. The int8 Z is refused (the float Z is kept, with the reason) when no
source pays or when it loses more than ``MAX_ACCURACY_DROP``. The choice per source is stored in Z's
metadata (``onnxmerge.quantization``, JSON) for ``onnxmerge inspect``.

Before any of this, every zero ``Pad`` feeding a ``Conv`` is folded into the Conv's padding (``graph.fold``,
exact, checked on the calibration images): left in, they and their Q/DQ pairs took 60% of Lite0's int8 time.

Temporary models and the calibration tables go into a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..contract import IMAGE, QUANTIZATION_KEY, write_metadata
from ..errors import OnnxMergeError
from ..files.images import as_labelled, as_pool
from ..graph.stitch import keep_outputs, output_names
from ..runtime.session import make_session, run_batched
from .head import HEAD_INPUT, fit_head, folded_weights
from .qdq import CALIBRATION_BATCH, Quantizer, SourceNodes, int8_weights, source_nodes

CALIBRATION_IMAGES = 512
METHODS = ("MinMax", "Percentile", "Entropy")
PAYS = 0.9  # a source goes int8 when its int8 part takes <= 90% of its float time
LAYER_TOLERANCE = 0.005  # first/last layers go int8 as well when that costs <= 0.5 points held out
MAX_ACCURACY_DROP = 0.02  # more than 2 points lost held out: the float Z is kept
SPEED_BATCH = 32
FOLDS = 5


@dataclass
class SourceChoice:
    """What ``--quantize`` decided for one source, and why."""

    name: str
    int8: bool
    time_ratio: float  # its part of Z, int8 / float time at batch ``SPEED_BATCH`` (median of rounds)
    reason: str
    float_layers: list[str] = field(default_factory=list)  # weighted nodes left float inside an int8 source


@dataclass
class QuantizeReport:
    accepted: bool
    accuracy_before: float  # held-out (cross-validated) accuracy of the float Z's head
    accuracy_after: float  # the same for the Z written when accepted (int8 sources, chosen head)
    images: int  # labelled images the accuracies are measured on
    time_ratio: float  # Z int8 / Z float at batch ``SPEED_BATCH`` (median of interleaved rounds)
    size_ratio: float = 1.0  # file size int8 / float
    method: str = ""
    calibration_images: int = 0
    pool_images: int = 0  # unlabelled images the calibration images were drawn from, besides ``images``
    head_refit: bool = False
    int8_weights: int = 0  # weights of float layers stored int8 (weight-only, computed in float)
    held_out: str = ""  # how the accuracies were measured
    sources: list[SourceChoice] = field(default_factory=list)
    trials: dict[str, float] = field(default_factory=dict)  # held-out accuracy of every variant measured
    lines: list[str] = field(default_factory=list)

    def metadata(self) -> dict:
        """The record stored under ``contract.QUANTIZATION_KEY`` in the int8 Z."""
        keep = (
            "accuracy_before",
            "accuracy_after",
            "images",
            "time_ratio",
            "size_ratio",
            "method",
            "calibration_images",
            "pool_images",
            "head_refit",
            "int8_weights",
            "held_out",
        )
        data = {k: v for k, v in asdict(self).items() if k in keep}
        data["sources"] = [asdict(s) for s in self.sources]
        return data


# -- the graph: which nodes belong to which source -----------------------------------------------------------------
def _strided_ready(n: int) -> int:
    """Calibration images, a multiple of 4 batches (quantize_static's strided collection needs it)."""
    return max(CALIBRATION_BATCH * 4, n - n % (CALIBRATION_BATCH * 4))


# -- measuring ---------------------------------------------------------------------------------------------------
def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    return copy


def head_inputs(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """Z's ``head/input`` (the logistic regression's input) on ``images``, as Z computes it."""
    session = make_session(_with_output(model, HEAD_INPUT))
    return run_batched(session, images, [HEAD_INPUT], batch_size=16, quiet=True)[HEAD_INPUT].astype(np.float64)


def folds(labels: np.ndarray, k: int = FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits (seeded); fewer folds where the smallest class has fewer than k images."""
    from sklearn.model_selection import StratifiedKFold

    _, counts = np.unique(labels, return_counts=True)
    k = min(k, int(counts.min()))
    if k < 2:
        return []
    return list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels))


def held_out_accuracy(
    fit_on: np.ndarray, score_on: np.ndarray, labels: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], fit
) -> float:
    """Cross-validated accuracy: ``fit(x, y)`` on each split's training part of ``fit_on``, scored on the
    held-out part of ``score_on`` (the same images' head inputs from another Z)."""
    right = 0
    for train, test in splits:
        head = fit(fit_on[train], labels[train])
        right += int(np.sum(head.predict(score_on[test]) == labels[test]))
    return right / len(labels)


def _median_time(session, images: np.ndarray, outputs: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(outputs, {IMAGE: images})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_ratio(
    first: onnx.ModelProto,
    second: onnx.ModelProto,
    images: np.ndarray,
    outputs: list[str],
    rounds: int = 5,
    runs: int = 3,
) -> float:
    """Median over ``rounds`` of (median time of ``second``) / (median time of ``first``), blocks alternating
    order, each session in its own block, idle threads not spinning (ASSETS.md's fair timing)."""
    a, b = make_session(first), make_session(second)
    _median_time(a, images, outputs, 1), _median_time(b, images, outputs, 1)  # warm-up
    ratios = []
    for r in range(rounds):
        if r % 2:
            tb, ta = _median_time(b, images, outputs, runs), _median_time(a, images, outputs, runs)
        else:
            ta, tb = _median_time(a, images, outputs, runs), _median_time(b, images, outputs, runs)
        ratios.append(tb / ta)
    return float(np.median(ratios))


def _part(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:

    return keep_outputs(model, outputs)


def _runs_for(model: onnx.ModelProto, images: np.ndarray) -> int:
    """Runs per timing block: about 0.5 s of work, 3 to 50 runs."""
    session = make_session(model)
    start = time.perf_counter()
    session.run(None, {IMAGE: images})
    return int(np.clip(0.5 / max(time.perf_counter() - start, 1e-6), 3, 50))


def _replace_head(model: onnx.ModelProto, head) -> onnx.ModelProto:
    """``model`` with its logistic-regression head's ``head/W`` and ``head/b`` swapped for ``head``'s."""
    weights, bias = folded_weights(head)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name == "head/W":
            init.CopyFrom(numpy_helper.from_array(weights, "head/W"))
        elif init.name == "head/b":
            init.CopyFrom(numpy_helper.from_array(bias, "head/b"))
    return copy


# -- the whole decision --------------------------------------------------------------------------------------------
class _Scorer:
    """Held-out accuracy of candidate Zs on the labelled images (see the module docstring)."""

    def __init__(self, float_model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, fit):
        has_head = any(i.name == "head/W" for i in float_model.graph.initializer)
        self.images, self.labels, self.fit = images, labels, fit
        self.splits = folds(labels) if fit is not None and has_head else []
        self.held_out = (
            f"{len(self.splits)}-fold cross-validation on the {len(labels)} labelled images"
            if self.splits
            else f"Z itself on the {len(labels)} labelled images, not held out: its "
            "router or pseudo-labelled head was fitted with them"
        )
        self.float_x = head_inputs(float_model, images) if self.splits else None
        self.before = (
            held_out_accuracy(self.float_x, self.float_x, labels, self.splits, fit)
            if self.splits
            else self(float_model)[0]
        )

    def __call__(self, candidate: onnx.ModelProto) -> tuple[float, float]:
        """(held-out accuracy with the float head, with the head refitted on the candidate's head inputs)."""
        if not self.splits:
            got = run_batched(make_session(candidate), self.images, ["label"], 16, quiet=True)["label"]
            acc = float(np.mean(got.astype(str) == self.labels))
            return acc, acc
        q_x = head_inputs(candidate, self.images)
        return (
            held_out_accuracy(self.float_x, q_x, self.labels, self.splits, self.fit),
            held_out_accuracy(q_x, q_x, self.labels, self.splits, self.fit),
        )


@dataclass
class _Variant:
    accuracy: float
    method: str
    all_layers: bool
    model: onnx.ModelProto
    refit: bool
    int8_weights: int = 0  # float layers whose weights are stored int8 (weight-only)


def _calibration_images(images: np.ndarray, pool: np.ndarray | None) -> np.ndarray:
    """At most ``CALIBRATION_IMAGES`` of the labelled and pool images (seeded), in a strided-ready count."""
    candidates = images if pool is None or len(pool) == 0 else np.concatenate([images, pool])
    n = min(CALIBRATION_IMAGES, len(candidates))
    if n >= CALIBRATION_BATCH * 4:
        n = _strided_ready(n)
    return candidates[np.sort(np.random.default_rng(0).choice(len(candidates), size=n, replace=False))]


def _best_variant(
    quantizer: Quantizer,
    score: _Scorer,
    layers: dict[str, SourceNodes],
    chosen: list[str],
    methods: tuple[str, ...],
    trials: dict[str, float],
) -> _Variant:
    """Steps 2-4 of the module docstring: the calibration method, the first/last layers, weight-only int8."""

    def nodes_of(with_edges: bool) -> list[str]:
        return [n for s in chosen for n in (layers[s].network if with_edges else layers[s].inner())]

    def variant(name: str, model: onnx.ModelProto, method: str, all_layers: bool, stored: int = 0) -> _Variant:
        plain, refit = score(model)
        trials[name] = max(plain, refit)
        return _Variant(max(plain, refit), method, all_layers, model, refit > plain, stored)

    best = None
    for method in methods:
        v = variant(f"{method}, first/last layers float", quantizer.quantize(nodes_of(False), method), method, False)
        best = v if best is None or v.accuracy > best.accuracy + 1e-9 else best
    v = variant(f"{best.method}, every layer int8", quantizer.quantize(nodes_of(True), best.method), best.method, True)
    best = v if v.accuracy >= best.accuracy - LAYER_TOLERANCE else best
    still_float = {
        n
        for s in layers
        for n in (layers[s].network if s not in chosen else ([] if best.all_layers else layers[s].edges))
    }
    light, stored = int8_weights(best.model, still_float)
    if stored:
        v = variant(f"{best.method}, float layers' weights int8", light, best.method, best.all_layers, stored)
        best = v if v.accuracy >= best.accuracy - LAYER_TOLERANCE else best
    return best


def quantize_z(
    model: onnx.ModelProto,
    sources: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray | None = None,
    fit=None,
    methods: tuple[str, ...] = METHODS,
    rounds: int = 5,
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Z with the sources that pay quantised (or ``model`` itself), and what was measured.

    ``sources`` are Z's source names; ``images``/``labels`` the labelled training images (accuracy, and
    calibration together with ``pool``); ``fit(x, y)`` fits a head as the build did (for the held-out
    accuracy and the refit), or None where Z's head was not fitted on these labels alone (teachers mode, a
    pseudo-labelled pool): then accuracy is Z's own on the labelled images and the head is never refitted.
    """
    if len(images) == 0:
        raise OnnxMergeError("--quantize needs labelled training images to calibrate on and to check accuracy.")
    labels = np.asarray(labels).astype(str)
    calibration = _calibration_images(images, pool)
    batch = images[:SPEED_BATCH]
    with tempfile.TemporaryDirectory(prefix="onnxmerge-quantize-") as tmp:
        quantizer = Quantizer(model, calibration, Path(tmp))
        float_model = quantizer.model
        layers = {s.name: s for s in source_nodes(float_model, sources)}
        # 1. per source: is its int8 part faster? (MinMax: timing does not depend on the ranges)
        everything = quantizer.quantize([n for s in sources for n in layers[s].inner()])
        choices = _choose_sources(float_model, everything, sources, batch, rounds)
        chosen = [c.name for c in choices if c.int8]
        score = _Scorer(float_model, images, labels, fit)
        report = QuantizeReport(
            False,
            score.before,
            score.before,
            len(labels),
            1.0,
            calibration_images=len(calibration),
            pool_images=0 if pool is None else len(pool),
            held_out=score.held_out,
            sources=choices,
        )
        if not chosen:
            report.lines = [
                _summary(report),
                *[_source_line(c) for c in choices],
                "quantize: refused, no source's int8 form is faster on this machine; wrote the float Z",
            ]
            return model, report
        best = _best_variant(quantizer, score, layers, chosen, methods, report.trials)
        quantized = best.model
        if best.refit:  # 4. the head, fitted on the int8 head inputs of every labelled image
            quantized = _replace_head(quantized, fit(head_inputs(quantized, images), labels))
        for c in choices:
            if c.int8 and not best.all_layers:
                c.float_layers = layers[c.name].edges
        report.method, report.head_refit, report.accuracy_after = best.method, best.refit, best.accuracy
        report.int8_weights = best.int8_weights
        report.time_ratio = time_ratio(
            float_model, quantized, batch, ["probabilities"], rounds, _runs_for(float_model, batch)
        )
        return _decide(model, quantized, report, score.before - best.accuracy, quantizer.seconds)


def _choose_sources(
    float_model: onnx.ModelProto, everything: onnx.ModelProto, sources: list[str], batch: np.ndarray, rounds: int
) -> list[SourceChoice]:
    """Per source: int8 only where its int8 part of Z runs in at most ``PAYS`` x its float time."""
    choices = []
    for s in sources:
        part = [output_names(s)["feature"]]
        f_part, q_part = _part(float_model, part), _part(everything, part)
        ratio = time_ratio(f_part, q_part, batch, part, rounds, _runs_for(f_part, batch))
        pays = ratio <= PAYS
        reason = f"int8 part takes {ratio:.2f}x its float time at batch {len(batch)}" + (
            ""
            if pays
            else f" (int8 only where <= {PAYS:.2f}x: the Quantize/Dequantize pairs cost "
            "about what the int8 kernels save)"
        )
        choices.append(SourceChoice(s, pays, ratio, reason))
    return choices


def _decide(
    model: onnx.ModelProto, quantized: onnx.ModelProto, report: QuantizeReport, drop: float, seconds: dict[str, float]
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """The int8 Z where it is faster and loses at most ``MAX_ACCURACY_DROP``, else ``model``; the report's lines."""
    report.size_ratio = quantized.ByteSize() / max(model.ByteSize(), 1)
    report.accepted = drop <= MAX_ACCURACY_DROP and report.time_ratio < 1.0
    report.lines = [_summary(report), *[_source_line(c) for c in report.sources]]
    report.lines.append(
        "quantize: calibration on held-out accuracy: "
        + "; ".join(f"{k} {v:.3f}" for k, v in report.trials.items())
        + "".join(f"; {m} calibration {s:.0f} s" for m, s in seconds.items())
    )
    if report.time_ratio >= 1.0:
        report.lines.append(
            "quantize: refused, the int8 Z is not faster than the float Z on this machine; wrote the float Z"
        )
    elif drop > MAX_ACCURACY_DROP:
        report.lines.append(
            f"quantize: refused, int8 costs {100 * drop:.1f} accuracy points held out (more "
            f"than {100 * MAX_ACCURACY_DROP:.0f}); wrote the float Z"
        )
    if not report.accepted:
        return model, report
    write_metadata(quantized, {QUANTIZATION_KEY: report.metadata()})
    onnx.checker.check_model(quantized, full_check=True)
    return quantized, report


def quantize_merger(
    merger, train, unlabeled=None, methods: tuple[str, ...] = METHODS
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """``quantize_z`` for a fitted ``compose.Merger``: its labelled ``train`` images (and ``unlabeled`` pool)
    calibrate; its head is refitted the way the build fitted it, where it was fitted on these labels alone."""
    if train is None:
        raise OnnxMergeError(
            "--quantize needs labelled training images ([head] train) to calibrate on and to "
            "check accuracy before/after; build without --quantize."
        )
    data = as_labelled(train, None, merger.input)
    if not len(data.x):
        raise OnnxMergeError(
            "--quantize needs labelled training images, and [head] train holds none yet (only images waiting "
            "for a label); label them first or build without --quantize."
        )
    pool = as_pool(unlabeled, merger.input).x if unlabeled is not None else None
    fit = None  # teachers mode or a pseudo-labelled head: not fitted on these labels alone, never refitted
    if merger.mode == "fit" and "pseudo_labels" not in merger.report_:
        widths, C = merger.head_input_.widths(merger.widths_), merger.report_["C"]
        fit = functools.partial(_fit_head, widths=widths, C=C, class_weight=merger.class_weight)
    return quantize_z(merger.model_, [s.name for s in merger.sources_], data.x, data.y, pool, fit, methods)


def _fit_head(x: np.ndarray, y: np.ndarray, widths, C: float, class_weight):
    return fit_head(x, y, widths, C=C, class_weight=class_weight)


def _summary(r: QuantizeReport) -> str:
    drawn = f"the {r.images} labelled" + (f" and {r.pool_images} pool" if r.pool_images else "")
    line = (
        f"quantize: int8 static QDQ (per-channel int8 weights, uint8 activations), calibrated on "
        f"{r.calibration_images} of {drawn} images; accuracy ({r.held_out}): "
        f"{r.accuracy_before:.3f} float"
    )
    if r.method:
        line += (
            f" -> {r.accuracy_after:.3f} int8 ({r.method} calibration, head "
            f"{'refitted on the int8 features' if r.head_refit else 'kept'}"
            f"{f', weights of {r.int8_weights} float layers stored int8' if r.int8_weights else ''}); "
            f"Z int8 / float time at batch "
            f"{SPEED_BATCH}: {r.time_ratio:.2f}; size {r.size_ratio:.2f}x"
        )
    return line


def _source_line(c: SourceChoice) -> str:
    kept = f"; float: {', '.join(c.float_layers)}" if c.float_layers else ""
    return f"quantize: source {c.name}: {'int8' if c.int8 else 'float'}, {c.reason}{kept}"
