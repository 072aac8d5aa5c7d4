"""Classifiers as users keep them (issue 28): float16 and int8 files, old-zoo opsets, end-to-end pixel graphs,
conv heads of kernel sizes 1, 3 and 5 (tests/fixtures/wild/, made by ``python -m benchmarks.compat.generate_corpus
--fixtures tests/fixtures/wild`` with the real converters; the corpus table is benchmarks/compat/corpus.py).

Each file's manifest ``feature`` is the tensor a torch forward hook / Keras sub-model / scikit-learn says feeds
the classifier (for converted files: that tensor as the converter renamed it, checked by onnxruntime).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES

from onnxmerge import ImageInput, Merger, OnnxMergeError, Preprocess, Source
from onnxmerge.cli import main
from onnxmerge.files.models import load_model
from onnxmerge.graph.inspect import describe, find_head
from onnxmerge.runtime.session import make_session

WILD = Path(__file__).parent / "fixtures" / "wild"
ENTRIES = {e["file"]: e for e in json.loads((WILD / "manifest.json").read_text())}
#: the family a build is checked on: kernel sizes 1/3/5, NCHW and NHWC (pixel graphs), float16 both ways,
#: QDQ per tensor and per channel, dynamic int8, opsets 7/9/11 with and without weights as inputs, pixel graphs
BUILT = [
    *("cnn_fp16.onnx", "cnn_fp16_io32.onnx", "cnn_qdq_tensor.onnx", "cnn_qdq_channel.onnx", "cnn_dyn_int8.onnx"),
    *("cnn_opset7.onnx", "cnn_opset9_kiai.onnx", "cnn_opset11.onnx", "cnn_uint8.onnx", "cnn_pixels_f32.onnx"),
    *("xception1.onnx", "xception3.onnx", "xception5.onnx", "nin.onnx", "xception3_dyn_int8.onnx"),
    *("xception3_fp16.onnx", "xception3_qdq_channel.onnx", "mlp_qdq_tensor.onnx", "mlp_dyn_int8.onnx"),
]
BOUND = {"float32": 1e-5, "float16": 1e-3, "int8": 1e-2}
_BUILDS: dict[str, tuple[Merger, float]] = {}


def source(name: str, namespace: str = "s") -> Source:
    pre = ENTRIES[name]["preprocess"]
    if pre.get("raw"):
        return Source(namespace, WILD / name, Preprocess(None, None, None))
    layout = None if pre["layout"] == "flat" else pre["layout"]
    spec = Preprocess(pre["scale"], tuple(pre["mean"]), tuple(pre["std"]), pre["height"], pre["width"], None, layout)
    return Source(namespace, WILD / name, spec)


def build(name: str, digits) -> tuple[Merger, float]:
    """A two-source fit build (the file and the scikit-learn MLP fixture) and Z's held-out accuracy."""
    if name not in _BUILDS:
        x, y = digits
        order = np.random.default_rng(42).permutation(len(x))
        x, y = x[order], y[order]
        partner = Source("mlp", FIXTURES / "skl_mlp.onnx", Preprocess(1 / 255, (0.0,), (1.0,), 8, 8, 1))
        merger = Merger(ImageInput(8, 8, 1), [source(name), partner], C=1.0, quiet=True).fit(x[:500], y[:500])
        _BUILDS[name] = merger, float(np.mean(merger.predict(x[1000:1400]) == y[1000:1400]))
    return _BUILDS[name]


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_auto_feature_is_the_tensor_that_feeds_the_classifier(name):
    head = find_head(load_model(WILD / name))
    assert head.feature == ENTRIES[name]["feature"], head.reason


@pytest.mark.parametrize("name", ["xception3.onnx", "xception5.onnx", "xception3_fp16.onnx", "xception3_dyn_int8.onnx"])
def test_a_kxk_conv_head_reads_its_input_map_pooled_and_says_it_is_spatial(name):
    head = find_head(load_model(WILD / name))
    assert head.spatial and "the head is spatial" in head.reason and "globally average-pooled" in head.reason


@pytest.mark.parametrize("name", BUILT)
def test_two_source_build_keeps_parity_in_the_sources_own_precision(name, digits):
    """Parity against the source file itself, with the bound of its precision named in the check; Z's accuracy
    within 0.05 of the same build from the float32 original."""
    merger, accuracy = build(name, digits)
    precision = merger.sources_[0].precision
    for check in merger.parity_:
        assert check.ok, check.line()
    feature_check = next(c for c in merger.parity_ if c.step.startswith("s features"))
    assert feature_check.tolerance in (BOUND[precision], 1e-4), feature_check.line()
    if precision != "float32":
        assert precision in feature_check.why, feature_check.line()
    _, original = build(ENTRIES[name]["original"], digits)
    assert accuracy >= original - 0.05, (accuracy, original)


def test_precision_of_each_variant():
    expected = {"fp16": "float16", "fp16_io32": "float16", "qdq_tensor": "int8", "qdq_channel": "int8"}
    expected |= {"dyn_int8": "int8", "float32": "float32", "opset7": "float32", "uint8": "float32"}
    for name, e in ENTRIES.items():
        if e["variant"] in expected:
            assert describe(WILD / name, load_model(WILD / name))["precision"] == expected[e["variant"]], name


def test_old_opset_is_converted_and_named_in_the_report(digits):
    merger, _ = build("cnn_opset7.onnx", digits)
    assert onnx.load(str(WILD / "cnn_opset7.onnx"), load_external_data=False).ir_version == 3
    assert merger.notes_["s"].startswith("opset 7 -> 1"), merger.notes_


def test_pixel_sources_need_no_normalisation_and_inspect_says_so(capsys):
    for name, why in (("cnn_uint8.onnx", "is uint8 pixels"), ("cnn_pixels_f32.onnx", "divides the input pixels")):
        assert main(["inspect", str(WILD / name)]) == 0
        out = capsys.readouterr().out
        assert "preprocessing: the model does its own (" in out and why in out, out
    info = describe(WILD / "cnn.onnx", load_model(WILD / "cnn.onnx"))
    assert info["preprocessing"] is None


def _recipe(tmp_path: Path, digits, model: str, pre: str) -> Path:
    x, y = digits
    np.savez(tmp_path / "train.npz", x=x[:300], y=y[:300])
    text = (
        "[input]\nheight = 8\nwidth = 8\nchannels = 1\n\n[[sources]]\n"
        f'name = "s"\nmodel = "{(WILD / model).as_posix()}"\n{pre}\n[head]\ntrain = "train.npz"\n'
    )
    (tmp_path / "r.toml").write_text(text)
    return tmp_path / "r.toml"


def test_recipe_for_a_pixel_source_without_preprocess_builds_and_normalisation_is_a_warning(tmp_path, digits, capsys):
    assert main(["build", str(_recipe(tmp_path, digits, "cnn_uint8.onnx", "")), "-o", str(tmp_path / "z.onnx")]) == 0
    assert "warning" not in capsys.readouterr().err
    pre = "[sources.preprocess]\nscale = 0.00392156862745098\nmean = [0.2]\nstd = [0.35]\n"
    recipe = _recipe(tmp_path, digits, "cnn_uint8.onnx", pre)
    assert main(["build", str(recipe), "-o", str(tmp_path / "z2.onnx"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "onnxmerge: warning: source 's' does its own preprocessing (its input 'pixels' is uint8 pixels)" in err
    assert "ignores the recipe's scale/mean/std" in err


def test_recipe_without_normalisation_for_a_normalised_source_is_one_sentence(tmp_path, digits, capsys):
    recipe = _recipe(tmp_path, digits, "cnn.onnx", "")
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "source 's' preprocess is missing the required key 'scale'" in err, err
    assert not (tmp_path / "z.onnx").exists()


def test_a_graph_onnxmerge_built_that_onnxruntime_refuses_is_reported_as_onnxmerges():
    """The last round's float16 failure: an Identity typed float32 reading a float16 tensor. Built by onnxmerge,
    it is onnxmerge's bug to report, never "re-export the source"."""
    model = load_model(WILD / "cnn_fp16.onnx")
    scores = model.graph.output[0].name
    model.graph.node.append(onnx.helper.make_node("Identity", [scores], ["s/head"], name="s/head/identity"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("s/head", onnx.TensorProto.FLOAT, None))
    with pytest.raises(OnnxMergeError, match="bug in onnxmerge") as refused:
        make_session(model, built=True)
    assert "re-export the source" not in str(refused.value)
    with pytest.raises(OnnxMergeError, match="re-export the source"):
        make_session(model)
