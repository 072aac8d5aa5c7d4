"""Hostile and broken model files: a clean one-line error naming the file, nothing read outside its folder."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import FIXTURES
from onnx import TensorProto, helper

from onnxmerge.errors import OnnxMergeError
from onnxmerge.files.models import load_model, save_model
from onnxmerge.files.outputs import atomic_path

DYNAMO = "torch_dynamo_mlp.onnx"


def copy_dynamo(folder):
    """The dynamo fixture with its external data, in a folder of the test's own."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (DYNAMO, DYNAMO + ".data"):
        shutil.copy(FIXTURES / name, folder / name)
    return folder / DYNAMO


def set_external(path, **fields):
    """Rewrite the external-data entries of every external tensor of the model at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            for key, value in fields.items():
                entries = [e for e in tensor.external_data if e.key == key]
                if entries:
                    entries[0].value = str(value)
                else:
                    tensor.external_data.add(key=key, value=str(value))
    onnx.save(model, str(path))
    return path


def refused(path, *expected):
    with pytest.raises(OnnxMergeError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, message


@pytest.mark.parametrize(
    "location",
    ["../secret.bin", "../../etc/passwd", "sub/../../secret.bin"],
    ids=["parent", "etc-passwd", "normalised-bypass"],
)
def test_read_traversal_cve_2022_25882_and_2024_27318(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 100_000)
    refused(set_external(copy_dynamo(tmp_path / "m"), location=location), location, "outside the model's folder")


def test_absolute_location(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 100_000)
    refused(set_external(copy_dynamo(tmp_path / "m"), location=str(tmp_path / "secret.bin")), "not a plain file name")


def test_symlink_leaving_the_folder_cve_2026_27489(tmp_path):
    path = copy_dynamo(tmp_path / "m")
    outside = tmp_path / "outside.data"
    shutil.move(str(path.parent / (DYNAMO + ".data")), outside)
    os.symlink(outside, path.parent / (DYNAMO + ".data"))
    refused(path, "symbolic link")


def test_hard_link(tmp_path):
    path = copy_dynamo(tmp_path / "m")
    os.link(path.parent / (DYNAMO + ".data"), tmp_path / "elsewhere.data")
    refused(path, "hard link")


def test_missing_data_file(tmp_path):
    path = copy_dynamo(tmp_path / "m")
    (path.parent / (DYNAMO + ".data")).unlink()
    refused(path, "missing")


def test_short_data_file(tmp_path):
    path = copy_dynamo(tmp_path / "m")
    data = path.parent / (DYNAMO + ".data")
    data.write_bytes(data.read_bytes()[:1000])
    refused(path, "shorter than tensor")


def test_offset_beyond_the_file(tmp_path):
    refused(set_external(copy_dynamo(tmp_path / "m"), offset=10**12), "shorter than tensor")


def test_huge_length_is_refused_before_allocating_cve_2026_34445(tmp_path):
    refused(set_external(copy_dynamo(tmp_path / "m"), length=2**62), "shorter than tensor")


def test_unknown_external_data_key_cve_2026_34445(tmp_path):
    refused(set_external(copy_dynamo(tmp_path / "m"), __class__="x"), "unknown external-data keys")


def test_malformed_offset(tmp_path):
    refused(set_external(copy_dynamo(tmp_path / "m"), offset="lots"), "malformed external-data offset")


def _edited(tmp_path, edit):
    model = onnx.load(str(FIXTURES / "torch_legacy_cnn.onnx"))
    edit(model)
    path = tmp_path / "edited.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_valid_protobuf_that_is_not_a_model(tmp_path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "t").SerializeToString())
    refused(path, "tensor.onnx")


def test_no_graph(tmp_path):
    path = tmp_path / "empty_model.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    refused(path, "holds no ONNX graph")


def test_graph_with_a_cycle(tmp_path):
    def cycle(model):
        first, last = model.graph.node[0], model.graph.node[-1]
        first.input[0] = last.output[0]

    refused(_edited(tmp_path, cycle), "not a valid ONNX model")


def test_missing_initializer(tmp_path):
    refused(_edited(tmp_path, lambda m: m.graph.initializer.pop()), "not a valid ONNX model")


def test_duplicate_output_names(tmp_path):
    def duplicate(model):
        model.graph.node[1].output[0] = model.graph.node[0].output[0]

    refused(_edited(tmp_path, duplicate), "not a valid ONNX model")


def test_unknown_default_domain_op(tmp_path):
    def unknown(model):
        model.graph.node[0].op_type = "NoSuchOp"

    refused(_edited(tmp_path, unknown), "not a valid ONNX model")


def test_opset_newer_than_onnx_knows(tmp_path):
    def newer(model):
        model.opset_import[0].version = 999

    refused(_edited(tmp_path, newer), "uses opset 999", "upgrade onnx")


def test_custom_domain_op_onnxruntime_cannot_run(tmp_path, digits_npz):
    """The checker lets unknown domains through; onnxruntime's refusal becomes an error naming the source."""
    from conftest import write_recipe

    from onnxmerge.recipe import load_recipe

    def custom(model):
        model.graph.node[0].domain = "com.example"
        model.opset_import.append(helper.make_opsetid("com.example", 1))

    path = _edited(tmp_path, custom)
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx")], digits_npz["train"])
    recipe.write_text(recipe.read_text().replace((FIXTURES / "torch_legacy_cnn.onnx").as_posix(), path.as_posix()))
    with pytest.raises(OnnxMergeError, match="source 'a' .*onnxruntime cannot load"):
        load_recipe(recipe).merger.fit(digits_npz["train"])


def test_huge_declared_dimension(tmp_path, digits_npz):
    from onnxmerge.graph.preprocess import ImageInput, Preprocess
    from onnxmerge.merger import Merger, Source

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("ReduceSum", ["f"], ["s"], keepdims=1)],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 10**6, 10**6])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(tmp_path / "huge.onnx"))
    merger = Merger(
        ImageInput(8, 8, 1), [Source("h", tmp_path / "huge.onnx", Preprocess(1.0, (0.0,), (1.0,)), feature="f")]
    )
    with pytest.raises(OnnxMergeError, match="more than onnxmerge accepts"):
        merger.fit(digits_npz["train"])


def test_nan_features_name_the_source(tmp_path, digits_npz):
    """A source that turns some inputs into NaN (log of a negative) is refused before fitting."""
    from onnxmerge.graph.preprocess import ImageInput, Preprocess
    from onnxmerge.merger import Merger, Source

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Log", ["f"], ["feat"]),
            helper.make_node("ReduceSum", ["feat"], ["s"], keepdims=1),
        ],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(tmp_path / "nan.onnx")
    )
    merger = Merger(
        ImageInput(8, 8, 1),
        [
            Source("ok", FIXTURES / "torch_legacy_cnn.onnx", Preprocess(1 / 255, (0.3,), (0.4,))),
            Source("broken", tmp_path / "nan.onnx", Preprocess(1 / 255, (0.5,), (1.0,)), feature="feat"),
        ],
    )
    with pytest.raises(OnnxMergeError, match="source 'broken' produced NaN or infinite features"):
        merger.fit(digits_npz["train"])


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "z.onnx"
    target.write_bytes(b"old model")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a new mod")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old model" and list(tmp_path.iterdir()) == [target]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_written_file_gets_the_umask_mode_not_the_temporary_files_0600(tmp_path):
    old = os.umask(0o027)
    try:
        save_model(onnx.load(str(FIXTURES / "skl_logreg.onnx")), tmp_path / "z.onnx")
    finally:
        os.umask(old)
    assert (tmp_path / "z.onnx").stat().st_mode & 0o777 == 0o640


def test_unwritable_output_folder():
    model = onnx.load(str(FIXTURES / "skl_logreg.onnx"))
    with pytest.raises(OnnxMergeError, match="cannot write into /proc"):
        save_model(model, "/proc/z.onnx")


def test_large_z_goes_to_a_uniquely_named_external_file(tmp_path):
    """Above the size limit (2 GB in use; lowered here) Z's weights go to <name>.<random>.data beside it."""
    model = onnx.load(str(FIXTURES / "torch_legacy_cnn.onnx"))
    save_model(model, tmp_path / "z.onnx", size_limit=10_000)
    save_model(model, tmp_path / "z2.onnx", size_limit=10_000)
    data = sorted(p.name for p in tmp_path.glob("*.data"))
    assert len(data) == 2 and data[0].startswith("z.onnx.") and data[1].startswith("z2.onnx.")
    loaded = load_model(tmp_path / "z.onnx")
    assert loaded.ByteSize() > 100_000 and (tmp_path / "z.onnx").stat().st_size < 20_000


def test_save_never_follows_an_inherited_external_location_cve_2025_51480(tmp_path):
    model = onnx.load(str(FIXTURES / "torch_legacy_cnn.onnx"))
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../escaped.data")
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="still refers to external data"):
        save_model(model, tmp_path / "out" / "z.onnx", size_limit=10_000)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]


def test_unknown_element_type_is_described_not_crashed(tmp_path, capsys):
    """Found by the fuzz test: a bit flip turned skl_mlp.onnx's input element type into 65."""
    from onnxmerge.cli import main

    model = onnx.load(str(FIXTURES / "skl_mlp.onnx"))
    model.graph.input[0].type.tensor_type.elem_type = 65
    path = tmp_path / "flipped.onnx"
    path.write_bytes(model.SerializeToString())
    code = main(["inspect", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code == 2 and len(captured.err.strip().splitlines()) == 1 or "unknown elem_type 65" in captured.out
