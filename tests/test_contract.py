"""Z's file contract (onnxmerge.contract): the names and metadata PRODUCT.md promises, one writer, one reader,
and one behaviour on a damaged value whichever command reads it."""

from __future__ import annotations

import onnx
import pytest
from test_bad_input import fails

from onnxmerge import contract
from onnxmerge.contract import read_metadata, write_metadata
from onnxmerge.errors import OnnxMergeError


def test_a_built_z_has_the_contract_names_and_metadata(built_z):
    model = onnx.load(str(built_z))
    assert [i.name for i in model.graph.input] == [contract.IMAGE]
    outputs = [o.name for o in model.graph.output]
    assert outputs[:2] == [contract.LABEL, contract.PROBABILITIES]
    meta = read_metadata(model, built_z)
    assert meta.mode == "fit" and meta.labels == [str(d) for d in range(10)]
    assert [s["name"] for s in meta.sources] == ["a", "b"] and all(len(s["sha256"]) == 64 for s in meta.sources)
    assert meta.expected_accuracy["accuracy"] > 0.5 and meta.quantization is None and meta.route is None
    assert model.producer_name == "onnxmerge" and meta.version == model.producer_version


def test_writer_and_reader_round_trip_every_key():
    model = onnx.ModelProto()
    values = {
        contract.LABELS_KEY: ["cat", "dog"],
        contract.SOURCES_KEY: [{"name": "a", "sha256": "0" * 64, "feature": "f"}],
        contract.MODE_KEY: "teachers",
        contract.VERSION_KEY: "9.9",
        contract.HEAD_INPUTS_KEY: [{"source": "a", "block": "features", "width": 3}],
        contract.EXPECTED_ACCURACY_KEY: {"accuracy": 0.5},
        contract.ROUTE_KEY: ["a"],
        contract.QUANTIZATION_KEY: {"method": "MinMax"},
    }
    write_metadata(model, values)
    assert [p.key for p in model.metadata_props] == list(values)
    assert {p.key: p.value for p in model.metadata_props}[contract.MODE_KEY] == "teachers"  # text keys as they are
    meta = read_metadata(model)
    assert (meta.labels, meta.mode, meta.version, meta.route) == (["cat", "dog"], "teachers", "9.9", ["a"])
    assert meta.quantization == {"method": "MinMax"} and meta.expected_accuracy == {"accuracy": 0.5}


def test_a_model_onnxmerge_did_not_build_has_no_z_metadata():
    model = onnx.ModelProto()
    write_metadata(model, {"onnxmerge.labels": {"0": "cat"}})  # a source may carry labels as a JSON dict
    assert read_metadata(model) is None


def damaged(tmp_path, built_z, key, value):
    model = onnx.load(str(built_z))
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            break
    else:
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "damaged.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "key", [contract.LABELS_KEY, contract.SOURCES_KEY, contract.EXPECTED_ACCURACY_KEY, contract.QUANTIZATION_KEY]
)
@pytest.mark.parametrize("value", ["not json [", "42"])
def test_predict_and_inspect_refuse_a_damaged_value_alike(tmp_path, built_z, digit_png, capsys, key, value):
    path = damaged(tmp_path, built_z, key, value)
    with pytest.raises(OnnxMergeError, match=f"malformed {key} metadata"):
        read_metadata(onnx.load(str(path)), path)
    for command in (["predict", str(path), str(digit_png)], ["inspect", str(path)]):
        fails(command, capsys, f"{path} has malformed {key} metadata", "rebuild it")
