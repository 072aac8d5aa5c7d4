"""The class labels a model carries: skl2onnx ``classlabels_*`` attributes or a metadata entry."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

import onnx


def _text(value: str | bytes) -> str:
    """A model's string field as text: bytes that are not UTF-8 keep their value as ``\\xNN`` escapes."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


#: metadata keys a model's class labels are found under, in order (onnxmerge's own, then common exporters':
#: Ultralytics ``names``, Hugging Face ``id2label``, ...)
LABEL_KEYS = ("onnxmerge.labels", "labels", "names", "classes", "id2label")
#: ai.onnx.ml attributes skl2onnx writes a classifier's classes to (ZipMap, LinearClassifier, TreeEnsemble...)
LABEL_ATTRIBUTES = ("classlabels_strings", "classlabels_int64s", "classlabels_ints")


@dataclass
class Labels:
    """The labels a model carries (None: none found) and a warning per carrier that could not be read."""

    labels: list[str] | None
    warnings: list[str]


def _parse_labels(text: str) -> list[str] | None:
    """A JSON list, a JSON object keyed by index, or the same as a Python literal (``{0: 'five', ...}``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)  # literals only: never runs code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    if isinstance(value, dict):
        try:
            order = sorted(value, key=lambda k: int(k))
        except (TypeError, ValueError):
            return None
        if [int(k) for k in order] != list(range(len(order))):
            return None  # keyed by something other than 0..K-1: which column is which is unknowable
        value = [value[k] for k in order]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    return None


def read_labels(model: onnx.ModelProto) -> Labels:
    """Class labels a model carries, from the first carrier that holds readable ones.

    Metadata first (``LABEL_KEYS``: a JSON list, a JSON object keyed by index, or a Python-literal dict as
    Ultralytics writes it), then skl2onnx's ``classlabels_*`` attributes (integers become "0", "1", ...).
    A metadata value that cannot be read is not skipped silently: it gives a warning naming its key.
    """
    warnings = []
    props = {prop.key: prop.value for prop in model.metadata_props}
    for key in LABEL_KEYS:
        if key in props:
            labels = _parse_labels(_text(props[key]))  # protobuf hands back bytes for non-UTF-8
            if labels is not None:
                return Labels(labels, warnings)
            warnings.append(
                f"metadata {key!r} of the model does not hold labels onnxmerge can read (a JSON list, a "
                "JSON object keyed 0..K-1, or a Python dict literal); set labels for this source in the "
                "recipe"
            )
    for node in model.graph.node:
        if node.domain == "ai.onnx.ml":
            for attr in node.attribute:
                if attr.name in LABEL_ATTRIBUTES and (attr.strings or attr.ints):
                    return Labels(
                        [_text(s) for s in attr.strings] if attr.strings else [str(i) for i in attr.ints], warnings
                    )
    return Labels(None, warnings)


def model_labels(model: onnx.ModelProto) -> list[str] | None:
    """Class labels a model carries (``read_labels`` without its warnings)."""
    return read_labels(model).labels
