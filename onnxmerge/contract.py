"""Z's file contract (PRODUCT.md, "The model Z"): its input and output names, its metadata keys, and the one
writer and the one reader of its ``onnxmerge.*`` metadata.

A foundation module: every layer may import it, it imports no layer. The build writes Z's metadata with
``write_metadata`` (``quantize`` adds its record with it too); ``predict``, ``inspect`` and ``quantize`` read
it with ``read_metadata``, which refuses a damaged value (not JSON, or not the shape Z writes) with one
sentence naming the file and the key, whichever command reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import OnnxMergeError
from .safety import printable
from .version import __version__

# -- Z's input and outputs -------------------------------------------------------------------------------------
IMAGE = "image"  # the one input: uint8 [N, height, width, channels]
LABEL = "label"  # string [N]
PROBABILITIES = "probabilities"  # float [N, K], K = len(labels), in the order of the labels metadata
FEATURES = "features"  # float [N, D]: the Concat of every source's features (a merged backbone's once)
ROUTE = "route"  # teachers mode: P(source | image), columns as the route metadata lists them
UNKNOWN_SCORE = "unknown_score"  # [head] unknown on: float [N], the calibrated distance from the build's images
UNKNOWN = "unknown"  # [head] unknown on: the label above the threshold (a reserved class name)

# -- Z's metadata keys -----------------------------------------------------------------------------------------
LABELS_KEY = "onnxmerge.labels"  # JSON list of the K class names
SOURCES_KEY = "onnxmerge.sources"  # JSON list of {name, sha256, feature}
MODE_KEY = "onnxmerge.mode"  # "fit" or "teachers" (plain text)
VERSION_KEY = "onnxmerge.version"  # onnxmerge's version that built Z (plain text)
HEAD_INPUTS_KEY = "onnxmerge.head_inputs"  # JSON list of {source, block, width}: what the head reads
EXPECTED_ACCURACY_KEY = "onnxmerge.expected_accuracy"  # JSON object: the build's held-out estimate
ROUTE_KEY = "onnxmerge.route"  # JSON list: the route output's columns (teachers, then new classes)
QUANTIZATION_KEY = "onnxmerge.quantization"  # JSON object: what build --quantize chose (int8 Z only)
MERGE_KEY = "onnxmerge.merge"  # JSON {method, sources[, groups]}: sources sharing one merged backbone ([merge])
UNKNOWN_KEY = "onnxmerge.unknown"  # JSON object: the unknown_score threshold and what it keeps ([head] unknown)

TEXT_KEYS = (MODE_KEY, VERSION_KEY)  # stored as they are; every other key holds JSON
#: what each JSON key must decode to, and how a refusal describes it
_SHAPES = {
    LABELS_KEY: (list, "a JSON list of class names"),
    SOURCES_KEY: (list, "a JSON list of sources"),
    HEAD_INPUTS_KEY: (list, "a JSON list of head input blocks"),
    EXPECTED_ACCURACY_KEY: (dict, "a JSON object"),
    ROUTE_KEY: (list, "a JSON list of route columns"),
    QUANTIZATION_KEY: (dict, "a JSON object"),
    MERGE_KEY: (dict, "a JSON object"),
    UNKNOWN_KEY: (dict, "a JSON object"),
}


@dataclass(frozen=True)
class ZMetadata:
    """Z's ``onnxmerge.*`` metadata, decoded; a key a Z was built without (an older version) is None."""

    labels: list[str]
    mode: str
    version: str | None = None
    sources: list[dict] | None = None
    head_inputs: list[dict] | None = None
    expected_accuracy: dict | None = None
    route: list[str] | None = None
    quantization: dict | None = None
    merge: dict | None = None
    unknown: dict | None = None


def write_metadata(model: onnx.ModelProto, entries: Mapping[str, object]) -> None:
    """Add ``entries`` (key -> value) to ``model``'s ``metadata_props``, in their order: the text keys as
    they are, every other value as JSON. Adding Z's labels also marks onnxmerge as Z's producer."""
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value if key in TEXT_KEYS else json.dumps(value))
    if LABELS_KEY in entries:
        model.producer_name, model.producer_version = "onnxmerge", __version__


def read_metadata(model: onnx.ModelProto, path: str | Path | None = None) -> ZMetadata | None:
    """Z's metadata, or None for a model onnxmerge did not build (no ``onnxmerge.mode`` and
    ``onnxmerge.labels``). A value that is not what Z writes is refused with one sentence naming ``path``
    (the file Z was read from) and the key."""
    props = {p.key: _text(p.value) for p in model.metadata_props}
    if MODE_KEY not in props or LABELS_KEY not in props:
        return None
    values = {key: _decode(key, props[key], path) for key in _SHAPES if key in props}
    labels = values[LABELS_KEY]
    if not labels or not all(isinstance(v, str) for v in labels):
        raise _malformed(path, LABELS_KEY, _SHAPES[LABELS_KEY][1])
    return ZMetadata(
        labels=labels,
        mode=props[MODE_KEY],
        version=props.get(VERSION_KEY),
        sources=values.get(SOURCES_KEY),
        head_inputs=values.get(HEAD_INPUTS_KEY),
        expected_accuracy=values.get(EXPECTED_ACCURACY_KEY),
        route=values.get(ROUTE_KEY),
        quantization=values.get(QUANTIZATION_KEY),
        merge=values.get(MERGE_KEY),
        unknown=values.get(UNKNOWN_KEY),
    )


def _decode(key: str, text: str, path: str | Path | None):
    kind, what = _SHAPES[key]
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, kind):
        raise _malformed(path, key, what)
    return value


def _malformed(path: str | Path | None, key: str, what: str) -> OnnxMergeError:
    where = printable(path) if path is not None else "this Z"
    return OnnxMergeError(
        f"{where} has malformed {key} metadata (not {what}); the file was altered or damaged, rebuild it "
        "with `onnxmerge build`."
    )


def _text(value: str | bytes) -> str:
    """A metadata value as text: bytes that are not UTF-8 keep their value as ``\\xNN`` escapes."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
