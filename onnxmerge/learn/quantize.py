"""``build --quantize``: static int8 QDQ quantisation of Z, calibrated on the training images.

onnxruntime's ``quantize_static`` (QDQ format, int8 per-channel weights, uint8 activations) quantises Z's
Conv, MatMul and Gemm nodes, calibrated on the build's training images. Quantisation cannot be exact, so
PRODUCT.md's parity becomes "accuracy before/after": both models classify the labelled training images and
the report gives both accuracies. A quantised Z that is slower than the float one (ASSETS.md: on small CNNs
int8 can be slower), or that loses more than 2 accuracy points on the training images, is refused: the float
Z is kept and the report says why. The head (``head/`` nodes: the feature standardisation is folded into its
weights, so its inputs have very different scales) stays float: quantising it cost EfficientNet-Lite0 46
points instead of 9.

The calibration writes its temporary models into a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import OnnxMergeError, first_line
from ..runtime.session import make_session, run_batched

CALIBRATION_IMAGES = 256
MAX_ACCURACY_DROP = 0.02  # more than 2 points lost on the training images: the float Z is kept
SPEED_BATCH = 32


@dataclass
class QuantizeReport:
    accepted: bool
    accuracy_before: float
    accuracy_after: float
    images: int
    time_ratio: float            # quantised / float, median over interleaved rounds (lower is faster)
    lines: list[str] = field(default_factory=list)


def _median_time(session, images: np.ndarray, runs: int) -> float:
    name = session.get_inputs()[0].name
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(["probabilities"], {name: images})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def quantize_z(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, rounds: int = 5, runs: int = 10
               ) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Z quantised (or ``model`` itself where int8 was slower or lost accuracy) and what was measured."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:  # pragma: no cover - part of onnxruntime's wheel
        raise OnnxMergeError(f"--quantize needs onnxruntime.quantization ({exc}).") from exc
    if len(images) == 0:
        raise OnnxMergeError("--quantize needs labelled training images to calibrate on and to check accuracy.")
    rng = np.random.default_rng(0)
    calibration = images[np.sort(rng.choice(len(images), size=min(CALIBRATION_IMAGES, len(images)), replace=False))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="onnxmerge-quantize-") as tmp:
        source, target = Path(tmp) / "z.onnx", Path(tmp) / "z_int8.onnx"
        onnx.save(model, str(source))
        logging.disable(logging.WARNING)  # onnxruntime.quantization's root-logger advice ("consider pre-processing")
        try:
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=[n.name for n in model.graph.node if n.name.startswith("head/")])
        except Exception as exc:
            raise OnnxMergeError(f"onnxruntime could not quantise Z ({type(exc).__name__}: "
                                 f"{first_line(exc)}); build without --quantize.") from exc
        finally:
            logging.disable(logging.NOTSET)
        quantized = onnx.load(str(target))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    note = f"int8 static QDQ (onnxruntime), calibrated on {len(calibration)} training images"
    quantized.metadata_props.add(key="onnxmerge.quantized", value=note)
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    onnx.checker.check_model(quantized, full_check=True)

    float_session, int8_session = make_session(model), make_session(quantized)
    before = run_batched(float_session, images, ["label"], quiet=True)["label"]
    after = run_batched(int8_session, images, ["label"], quiet=True)["label"]
    accuracy_before = float(np.mean(before.astype(str) == labels.astype(str)))
    accuracy_after = float(np.mean(after.astype(str) == labels.astype(str)))
    batch = images[:SPEED_BATCH]
    ratios = []
    for r in range(rounds):  # interleaved blocks, alternating order
        if r % 2:
            t_int8, t_float = _median_time(int8_session, batch, runs), _median_time(float_session, batch, runs)
        else:
            t_float, t_int8 = _median_time(float_session, batch, runs), _median_time(int8_session, batch, runs)
        ratios.append(t_int8 / t_float)
    ratio = float(np.median(ratios))
    drop = accuracy_before - accuracy_after
    accepted = ratio < 1.0 and drop <= MAX_ACCURACY_DROP
    lines = [(f"quantize: int8 static QDQ calibrated on {len(calibration)} training images; accuracy on the "
             f"{len(images)} training images {accuracy_before:.3f} (float) -> {accuracy_after:.3f} (int8); "
             f"time int8 / float at batch {len(batch)}: {ratio:.2f}")]
    if ratio >= 1.0:
        lines.append("quantize: refused, the int8 Z is not faster than the float Z on this machine; wrote the float Z")
    elif drop > MAX_ACCURACY_DROP:
        lines.append(f"quantize: refused, int8 costs {100 * drop:.1f} accuracy points on the training images (more "
                     f"than {100 * MAX_ACCURACY_DROP:.0f}); wrote the float Z")
    elif drop > 0:
        lines.append(f"quantize: warning: int8 costs {100 * drop:.1f} accuracy points on the training images")
    report = QuantizeReport(accepted, accuracy_before, accuracy_after, len(images), ratio, lines)
    return (quantized if accepted else model), report
