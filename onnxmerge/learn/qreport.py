"""What ``--quantize`` measured and chose: the report, its printed lines and the int8 Z's metadata.

The int8 Z carries its own numbers: ``onnxmerge.quantization`` (this report) and ``onnxmerge.expected_accuracy``
replaced by the int8 estimate (with the float one beside it), so ``onnxmerge inspect`` of an int8 Z shows what
the int8 Z is expected to do, not what the float Z was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .estimate import Estimate
from .timing import Ratio


@dataclass
class SourceChoice:
    """What ``--quantize`` decided for one source, and why."""

    name: str
    int8: bool
    time_ratio: float  # whole Z with only this source int8 / float Z, median of interleaved rounds
    reason: str
    float_layers: list[str] = field(default_factory=list)  # weighted nodes left float inside an int8 source


@dataclass
class QuantizeReport:
    accepted: bool = False
    reason: str = ""  # why the float Z was kept (empty when the int8 Z was written)
    float_accuracy: float | None = None  # held out (``qestimate``) on the estimate images
    int8_accuracy: float | None = None  # the same for the Z written (or the best int8 candidate, refused)
    estimate_images: int = 0
    folds: int = 0  # stratified folds over the estimate images (0: Z's own labels scored, no folds)
    labelled_images: int = 0
    held_out: str = ""  # how the accuracies were measured
    agreement: float | None = None  # int8 labels == float labels, out of fold on the estimate images
    pool_agreement: float | None = None  # final int8 Z vs float Z on held-out pool images
    pool_agreement_images: int = 0
    margin: float = 0.01  # the int8 Z is refused when it loses more than this held out
    method: str = ""
    calibration_images: int = 0
    calibration_from: str = ""
    head_refit: bool = False
    int8_weights: int = 0  # weights of float layers stored int8 (weight-only, computed in float)
    time_ratio: Ratio | None = None  # whole Z int8 / float at ``batch``
    batch: int = 32
    size_ratio: float = 1.0  # serialised size, int8 / float
    seconds: float = 0.0  # the whole quantize step, wall time
    cpu_seconds: float = 0.0  # its CPU time, every thread (a loaded machine stretches wall time, not this)
    peak_mb: float = 0.0  # the quantize step's peak resident memory
    sources: list[SourceChoice] = field(default_factory=list)
    trials: dict[str, float] = field(default_factory=dict)  # held-out accuracy of every candidate measured
    per_class: dict[str, dict] = field(default_factory=dict)  # int8 recall per class on the estimate images
    lines: list[str] = field(default_factory=list)
    candidate: object = field(default=None, repr=False)  # the best int8 Z, even refused (``keep_candidate``)

    @property
    def int8_sources(self) -> list[str]:
        return [s.name for s in self.sources if s.int8]

    def metadata(self) -> dict:
        """The record stored under ``contract.QUANTIZATION_KEY`` in the int8 Z."""
        skip = ("lines", "sources", "time_ratio", "per_class", "candidate")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        data["time_ratio"] = self.time_ratio.as_dict() if self.time_ratio else None
        data["int8_sources"] = self.int8_sources
        data["sources"] = [asdict(s) for s in self.sources]
        return data

    def expected_accuracy(self) -> Estimate:
        """The int8 estimate, as the build's ``expected accuracy`` (``estimate.Estimate``)."""
        a, n = self.int8_accuracy, self.estimate_images
        return Estimate(
            a,
            (a * (1 - a) / n) ** 0.5 if a is not None and n else None,
            self.folds,
            n,
            self.labelled_images,
            self.per_class,
            what="labelled images, int8 Z, held out from calibration and head",
        )

    def expected_metadata(self) -> dict:
        """``contract.EXPECTED_ACCURACY_KEY`` of the int8 Z: the int8 estimate, the float one beside it."""
        data = self.expected_accuracy().as_dict()
        data.update(
            int8=True,
            float_accuracy=self.float_accuracy,
            agreement_with_float=self.agreement,
            method=f"int8 Z: {self.held_out}",
        )
        return data


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_lines(r: QuantizeReport) -> list[str]:
    """The build's ``quantize:`` lines."""
    lines = [
        f"quantize: int8 static QDQ (per-channel int8 weights, uint8 activations), {r.method or 'MinMax'} ranges from "
        f"{r.calibration_from}; held out ({r.held_out}): accuracy {_pct(r.float_accuracy)} float -> "
        f"{_pct(r.int8_accuracy)} int8, labels agree {_pct(r.agreement)}"
    ]
    if r.pool_agreement_images:
        lines[0] += f", {_pct(r.pool_agreement)} on {r.pool_agreement_images} held-out pool images"
    if r.time_ratio is not None:
        lines.append(
            f"quantize: Z int8 / float time at batch {r.batch}: {r.time_ratio.text()}; size {r.size_ratio:.2f}x; "
            f"head {'refitted on the int8 features' if r.head_refit else 'kept'}"
            + (f"; weights of {r.int8_weights} float layers stored int8" if r.int8_weights else "")
        )
    for c in r.sources:
        kept = f"; float: {', '.join(c.float_layers)}" if c.float_layers else ""
        lines.append(f"quantize: source {c.name}: {'int8' if c.int8 else 'float'}, {c.reason}{kept}")
    if r.trials:
        lines.append("quantize: candidates held out: " + "; ".join(f"{k} {v:.3f}" for k, v in r.trials.items()))
    lines.append(
        f"quantize: step took {r.seconds:.0f} s ({r.cpu_seconds:.0f} s of CPU), peak memory {r.peak_mb:.0f} MB"
    )
    lines.append(
        f"quantize: wrote the int8 Z (int8: {', '.join(r.int8_sources)})"
        if r.accepted
        else f"quantize: kept the float Z: {r.reason}"
    )
    return lines
