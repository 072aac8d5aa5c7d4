"""``build --quantize``: an int8 Z whose accuracy claim holds on images it never saw, chosen by measurement.

onnxruntime's static QDQ quantisation (int8 per-channel weights, uint8 activations: the U8S8 kernels of x86
VNNI and of onnxruntime mobile/web) is applied to the nodes of each source's network only: the
preprocessing and the head stay float (the head's folded standardisation gives its inputs very different
scales: quantising it cost EfficientNet-Lite0 46 points). In this order:

1. **Calibration statistics, once** (``calibrate``): each calibration image's minimum and maximum of every
   activation, in one pass. Every candidate below reuses them; histograms (percentile, entropy) are
   collected, once for both, only when MinMax loses more than the margin.
2. **Which sources** (``timing``): the whole Z, float and with each source int8, timed interleaved over
   several rounds at batch ``SPEED_BATCH``; a source goes int8 where Z then takes at most ``PAYS`` of its
   float time (the Quantize/Dequantize pairs of a tiny network cost about what its int8 kernels save).
3. **The candidates**, scored held out (``qestimate``: images neither the calibration nor the head saw):
   the first and last weighted layer of each int8 source float, then int8 as well where that costs at most
   ``LAYER_TOLERANCE``; weight-only int8 for the layers still float (``qdq.int8_weights``) on the same
   terms; the head refitted on int8 features where that beats the float head by more than 1 point.
4. **The decision**: the int8 Z is written where it loses at most ``margin`` (default 1 point) held out and
   the whole Z is faster (median of interleaved rounds); else the float Z, with the reason.

Every zero ``Pad`` feeding a ``Conv`` is folded into the Conv first (``graph.fold``, exact, checked): left
in, they and their Q/DQ pairs took 60% of Lite0's int8 time. Temporary files go into a folder removed after.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..config import Config
from ..contract import EXPECTED_ACCURACY_KEY, QUANTIZATION_KEY, write_metadata
from ..errors import OnnxMergeError
from ..files.images import as_labelled, as_pool
from .calibrate import calibrated_tensors, collect_histograms, collect_stats, percentile_ranges
from .head import folded_weights
from .qdq import Quantizer, SourceNodes, entropy_ranges, int8_weights, source_nodes
from .qestimate import HeadFit, HeldOut, Scored, split, z_labels
from .qreport import QuantizeReport, SourceChoice, summary_lines
from .timing import peak_memory_mb, reset_peak_memory, runs_for, time_ratios

CALIBRATION_IMAGES = 128  # benchmarks/RESULTS.md (issue 29): 64/128/256/512 measured
MARGIN = 0.01  # more than 1 point lost held out: the float Z is kept
PAYS = 0.95  # a source goes int8 when the whole Z takes <= 95% of its float time with it int8
LAYER_TOLERANCE = 0.005  # first/last layers go int8 as well when that costs <= 0.5 points held out
SPEED_BATCH = 32


@dataclass(frozen=True)
class QuantizeInputs:
    """What ``quantize_z`` needs, explicitly: Z, its source names, the labelled images, the optional pool,
    and how the build fitted its head (None where it was not fitted on these labels alone)."""

    model: onnx.ModelProto
    sources: list[str]
    images: np.ndarray
    labels: np.ndarray
    pool: np.ndarray | None = None
    fit: HeadFit | None = None


def replace_head(model: onnx.ModelProto, head) -> onnx.ModelProto:
    """``model`` with its head's ``head/W``, ``head/b`` and ``head/mean`` (the centre subtracted before the
    MatMul) swapped for the fitted pipeline ``head``'s."""
    centre = head[0].mean_.astype(np.float32)
    weights, bias = folded_weights(head, centre)
    new = {"head/W": weights, "head/b": bias, "head/mean": centre}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
    return copy


def _choose_sources(
    quantizer: Quantizer, layers: dict[str, SourceNodes], ranges: dict, batch: np.ndarray, rounds: int, pays: float
) -> list[SourceChoice]:
    """Step 2: the whole Z with each source int8 alone, timed against the float Z, interleaved."""
    names = list(layers)
    alone = [quantizer.quantize(layers[s].inner(), ranges) for s in names]
    ratios = time_ratios([quantizer.model, *alone], batch, rounds, runs_for(quantizer.model, batch))[1:]
    choices = []
    for s, ratio in zip(names, ratios):
        faster = ratio.median <= pays
        reason = f"whole Z with it int8 takes {ratio.text()} its float time at batch {len(batch)}" + (
            ""
            if faster
            else f" (int8 only where <= {pays:.2f}x: its Quantize/Dequantize pairs cost what its kernels save)"
        )
        choices.append(SourceChoice(s, faster, ratio.median, reason))
    return choices


@dataclass
class _Candidate:
    name: str
    model: onnx.ModelProto
    scored: Scored
    all_layers: bool = False
    int8_weights: int = 0


class _Search:
    """Step 3: candidates built from the chosen sources, scored held out, the best kept."""

    def __init__(self, quantizer: Quantizer, layers, chosen: list[str], held_out: HeldOut, report: QuantizeReport):
        self.q, self.layers, self.chosen, self.held_out, self.report = quantizer, layers, chosen, held_out, report

    def nodes(self, all_layers: bool) -> list[str]:
        return [n for s in self.chosen for n in (self.layers[s].network if all_layers else self.layers[s].inner())]

    def candidate(self, name: str, model: onnx.ModelProto, all_layers: bool, stored: int = 0) -> _Candidate:
        scored = self.held_out(model)
        self.report.trials[name] = scored.accuracy
        if self.held_out.fit is not None:  # what the float head and a refitted head scored, whichever was kept
            self.report.trials[f"{name}, float head"] = self.held_out.last_scores[0]
            self.report.trials[f"{name}, head refitted"] = self.held_out.last_scores[1]
        return _Candidate(name, model, scored, all_layers, stored)

    def best(self, method: str, ranges: dict) -> _Candidate:
        """First/last layers float; then every layer int8; then weight-only int8 for what is still float."""
        best = self.candidate(f"{method}, first/last layers float", self.q.quantize(self.nodes(False), ranges), False)
        every = self.candidate(f"{method}, every layer int8", self.q.quantize(self.nodes(True), ranges), True)
        if every.scored.accuracy >= best.scored.accuracy - LAYER_TOLERANCE:
            best = every
        still_float = {
            n
            for s, nodes in self.layers.items()
            for n in (nodes.network if s not in self.chosen else ([] if best.all_layers else nodes.edges))
        }
        light, stored = int8_weights(best.model, still_float)
        if stored:
            v = self.candidate(f"{method}, float layers' weights int8", light, best.all_layers, stored)
            best = v if v.scored.accuracy >= best.scored.accuracy - LAYER_TOLERANCE else best
        return best


def _best_calibration(search, quantizer, minmax, calibration, held_out, margin: float):
    """MinMax's best int8 Z, or Percentile's / Entropy's where MinMax loses more than ``margin``."""
    best = search.best("MinMax", minmax)
    if held_out.float.accuracy - best.scored.accuracy > margin:  # MinMax loses: histograms, once for both
        histograms = collect_histograms(quantizer.model, minmax, calibration)
        for method, ranges in (
            ("Percentile", percentile_ranges(histograms, minmax)),
            ("Entropy", entropy_ranges(histograms, minmax)),
        ):
            other = search.best(method, ranges)
            best = other if other.scored.accuracy > best.scored.accuracy else best
    return best


def _refusal(report: QuantizeReport, margin: float, max_time: float) -> None:
    """Set ``report.reason`` where the int8 Z loses more than ``margin`` or is not faster than ``max_time``."""
    loss = report.float_accuracy - report.int8_accuracy
    if loss > margin:
        report.reason = (
            f"int8 loses {100 * loss:.1f} accuracy points held out, more than the {100 * margin:g}-point margin"
        )
    elif report.time_ratio.median >= max_time:
        report.reason = "the int8 Z is not faster than the float Z on this machine"


def quantize_z(
    inputs: QuantizeInputs,
    margin: float = MARGIN,
    calibration_images: int = CALIBRATION_IMAGES,
    rounds: int = 5,
    pays: float = PAYS,
    max_time: float = 1.0,
    keep_candidate: bool = False,
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """The int8 Z where it keeps accuracy within ``margin`` held out and is faster, else ``inputs.model``;
    and what was measured (``QuantizeReport``: its ``lines`` are the build's report).

    ``pays``: a source goes int8 where the whole Z with it int8 takes at most this ratio of the float Z's time;
    ``max_time``: the int8 Z is written only where it takes less than this ratio of the float Z's time;
    ``keep_candidate``: the best int8 Z stays in ``report.candidate`` even where refused (benchmarks)."""
    if len(inputs.images) == 0:
        raise OnnxMergeError("--quantize needs labelled training images to calibrate on and to check accuracy.")
    start = (time.perf_counter(), time.process_time())
    reset_peak_memory()
    sp = split(inputs.images, inputs.pool, calibration_images)
    report = QuantizeReport(margin=margin, calibration_images=len(sp.calibration), calibration_from=sp.text())
    report.labelled_images = len(inputs.images)
    batch = inputs.images[:SPEED_BATCH]
    report.batch = len(batch)
    with tempfile.TemporaryDirectory(prefix="onnxmerge-quantize-") as tmp:
        quantizer = Quantizer(inputs.model, sp.calibration, Path(tmp))
        layers = {s.name: s for s in source_nodes(quantizer.model, inputs.sources)}
        tensors = calibrated_tensors(quantizer.model, [n for s in layers.values() for n in s.network])
        minmax = collect_stats(quantizer.model, tensors, sp.calibration).minmax()
        report.sources = _choose_sources(quantizer, layers, minmax, batch, rounds, pays)
        held_out = HeldOut(quantizer.model, inputs.images, inputs.labels, sp.estimate, inputs.fit)
        report.float_accuracy, report.held_out = held_out.float.accuracy, held_out.what()
        report.estimate_images, report.folds = len(held_out.scored), held_out.k
        chosen = [c.name for c in report.sources if c.int8]
        if not chosen:
            report.reason = "no source's int8 form makes the whole Z faster on this machine"
            return _finish(inputs.model, None, report, start)
        search = _Search(quantizer, layers, chosen, held_out, report)
        best = _best_calibration(search, quantizer, minmax, sp.calibration, held_out, margin)
        quantized = _record(best, inputs, layers, held_out, report)
        if len(sp.agreement):
            same = z_labels(quantizer.model, sp.agreement) == z_labels(quantized, sp.agreement)
            report.pool_agreement, report.pool_agreement_images = float(np.mean(same)), len(sp.agreement)
        report.time_ratio = time_ratios([quantizer.model, quantized], batch, rounds, runs_for(quantizer.model, batch))[
            1
        ]
        report.size_ratio = quantized.ByteSize() / max(inputs.model.ByteSize(), 1)
        _refusal(report, margin, max_time)
        report.candidate = quantized if keep_candidate else None
        return _finish(inputs.model, quantized, report, start)


def _record(best: _Candidate, inputs: QuantizeInputs, layers, held_out: HeldOut, report: QuantizeReport):
    """The chosen candidate as the Z to write (its head refitted where that scored better), into the report."""
    quantized = best.model
    if best.scored.refit:  # the head, refitted on every labelled image's int8 head inputs
        labels = np.asarray(inputs.labels).astype(str)
        quantized = replace_head(quantized, inputs.fit(best.scored.head_inputs, labels))
    for c in report.sources:
        c.float_layers = layers[c.name].edges if c.int8 and not best.all_layers else []
    report.method = best.name.split(",")[0]
    report.int8_accuracy, report.head_refit = best.scored.accuracy, best.scored.refit
    report.int8_weights = best.int8_weights
    report.agreement = float(np.mean(best.scored.labels == held_out.float.labels))
    report.per_class = held_out.per_class(best.scored)
    return quantized


def _finish(model, quantized, report: QuantizeReport, start) -> tuple[onnx.ModelProto, QuantizeReport]:
    """The Z to write, with the report's lines; the int8 Z carries its own numbers in its metadata."""
    report.accepted = quantized is not None and not report.reason
    report.seconds, report.cpu_seconds = time.perf_counter() - start[0], time.process_time() - start[1]
    report.peak_mb = peak_memory_mb()
    report.lines = summary_lines(report)
    if not report.accepted:
        return model, report
    for prop in list(quantized.metadata_props):
        if prop.key in (QUANTIZATION_KEY, EXPECTED_ACCURACY_KEY):
            quantized.metadata_props.remove(prop)
    write_metadata(quantized, {QUANTIZATION_KEY: report.metadata(), EXPECTED_ACCURACY_KEY: report.expected_metadata()})
    onnx.checker.check_model(quantized, full_check=True)
    return quantized, report


def quantize_build(
    model: onnx.ModelProto, config: Config, report: dict, head_widths: list[int], train, unlabeled=None
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """``quantize_z`` for a built Z, from its ``config`` and build ``report``: its labelled ``train`` images and
    ``unlabeled`` pool; its head (input blocks ``head_widths``) is refitted the way the build fitted it, where it
    was fitted on these labels alone."""
    if train is None:
        raise OnnxMergeError(
            "--quantize needs labelled training images ([head] train) to calibrate on and to "
            "check accuracy before/after; build without --quantize."
        )
    data = as_labelled(train, None, config.input)
    if not len(data.x):  # a suggest folder nobody has labelled yet (files.images.list_labelled, pending)
        raise OnnxMergeError(
            "--quantize needs labelled training images, and [head] train holds none yet (only images waiting "
            "for a label); label them first or build without --quantize."
        )
    pool = as_pool(unlabeled, config.input).x if unlabeled is not None else None
    fit = None  # teachers mode or a pseudo-labelled head: not fitted on these labels alone, never refitted
    if config.mode == "fit" and "pseudo_labels" not in report:
        fit = HeadFit(head_widths, report["C"], config.class_weight)
    sources = [s.name for s in config.sources]
    return quantize_z(QuantizeInputs(model, sources, data.x, data.y, pool, fit))
