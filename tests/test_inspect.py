"""`inspect` finds the tensor feeding each exporter's final classifier layer, and says why."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, MANIFEST

from onnxmerge.cli import main
from onnxmerge.files.models import load_model
from onnxmerge.graph.inspect import describe, find_head

KEYS = {"inputs", "outputs", "opsets", "ir_version", "producer", "labels", "candidates", "suggested", "reason"}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_auto_feature_is_the_generators_penultimate_tensor(name):
    """Gemm (+Softmax), Flatten->Gemm, MatMul+Add (+Softmax+ZipMap), LinearClassifier on raw inputs."""
    entry = MANIFEST[name]
    head = find_head(load_model(FIXTURES / name))
    assert head.feature == entry["feature"], head.reason
    assert entry["head_output"] in (head.output, "output_probability")


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_json_has_the_contract_keys(name, capsys):
    assert main(["inspect", str(FIXTURES / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert KEYS <= set(info)
    assert info["suggested"] == MANIFEST[name]["feature"]
    suggested = [c for c in info["candidates"] if c["suggested"]]
    assert len(suggested) == 1 and info["candidates"][0] is not None and info["candidates"][0]["suggested"]
    assert all(set(c) == {"name", "shape", "op", "suggested"} for c in info["candidates"])
    assert info["labels"] == MANIFEST[name]["labels"]


def test_text_view_marks_the_suggestion_and_limits_to_ten(capsys):
    path = FIXTURES / "torch_legacy_cnn.onnx"
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "suggested feature: /Relu_2_output_0" in out and "why: input of the last linear layer (Gemm" in out
    assert "* /Relu_2_output_0" in out
    total = len(describe(path, load_model(path))["candidates"])
    assert main(["inspect", str(path), "--all"]) == 0
    assert f"candidates ({total} of {total}" in capsys.readouterr().out
