"""Labels from every carrier a real model has: skl2onnx's classlabels_*, metadata lists, dicts and Python literals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES

from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.cli import main
from onnxmerge.files.models import load_model
from onnxmerge.graph.inspect import read_labels

GRAPHS = Path(__file__).parent / "fixtures" / "graphs"
CNN = FIXTURES / "torch_legacy_cnn.onnx"


def with_metadata(path: Path, **props: str) -> onnx.ModelProto:
    """A real model with its labels metadata replaced by ``props``."""
    model = load_model(path)
    keep = [p for p in model.metadata_props if p.key not in ("labels", "onnxmerge.labels")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return model


def test_skl2onnx_integer_classes_are_read_from_zipmap():
    """skl2onnx's two-class MLP carries its classes 3 and 8 only as ZipMap's classlabels_int64s."""
    model = load_model(GRAPHS / "skl2onnx_binary.onnx")
    assert not any(p.key in ("labels", "names") for p in model.metadata_props)
    assert read_labels(model).labels == ["3", "8"] and read_labels(model).warnings == []


def test_inspect_shows_integer_labels(capsys):
    assert main(["inspect", str(GRAPHS / "skl2onnx_binary.onnx")]) == 0
    assert "labels:  2: 3, 8" in capsys.readouterr().out
    assert main(["inspect", str(GRAPHS / "skl2onnx_binary.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["3", "8"]


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("onnxmerge.labels", '["cat", "dog"]', ["cat", "dog"]),
        ("labels", '{"1": "dog", "0": "cat"}', ["cat", "dog"]),  # JSON object keyed by index
        ("names", "{0: 'five', 1: 'six', 2: 'seven'}", ["five", "six", "seven"]),  # Ultralytics: a Python dict
        ("classes", "['a', 'b']", ["a", "b"]),  # a Python list literal
        ("id2label", '{"0": "tabby", "1": "tiger"}', ["tabby", "tiger"]),  # Hugging Face config.id2label
        ("labels", "[0, 1, 2]", ["0", "1", "2"]),
    ],
)
def test_metadata_carriers(key, value, expected):
    labels = read_labels(with_metadata(CNN, **{key: value}))
    assert labels.labels == expected and labels.warnings == []


@pytest.mark.parametrize("value", ["five,six", "{'a': 'x'}", "{0: 'x', 2: 'y'}", "[]", "__import__('os').getcwd()"])
def test_an_unreadable_value_is_a_warning_naming_the_key(value, tmp_path, capsys):
    model = with_metadata(CNN, names=value)
    labels = read_labels(model)
    assert labels.labels is None
    assert len(labels.warnings) == 1 and "metadata 'names'" in labels.warnings[0]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 0
    assert "onnxmerge: warning: metadata 'names' of the model does not hold labels" in capsys.readouterr().err


def test_a_later_carrier_is_used_after_an_unreadable_one():
    labels = read_labels(with_metadata(GRAPHS / "skl2onnx_binary.onnx", labels="not labels"))
    assert labels.labels == ["3", "8"] and "metadata 'labels'" in labels.warnings[0]


def test_teachers_build_uses_integer_labels_from_zipmap(digits):
    """Before: "0 labels", and the teacher's classes were unknown. Now Z's classes are the teacher's own."""
    x, y = digits
    keep = np.isin(y, ["3", "8"])
    teacher = Source("binary", GRAPHS / "skl2onnx_binary.onnx", Preprocess(16 / 255, (0.0,), (1.0,), 8, 8, 1))
    merger = Merger(ImageInput(8, 8, 1), [teacher], mode="teachers", quiet=True).fit()
    assert merger.classes_ == ["3", "8"]
    assert all(c.ok for c in merger.parity_)
    assert np.mean(merger.predict(x[keep]) == y[keep]) > 0.9
