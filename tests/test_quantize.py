"""``build --quantize``: calibration never on the images the estimate scores, the int8 Z carrying its own numbers,
the float Z kept (with the reason) where int8 loses more than the margin. Real fixtures, sklearn digits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, fixture_entry, write_recipe

from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.cli import main
from onnxmerge.contract import read_metadata
from onnxmerge.learn.calibrate import calibrated_tensors, collect_stats
from onnxmerge.learn.head import HEAD_INPUT
from onnxmerge.learn.qdq import source_nodes
from onnxmerge.learn.qestimate import HeadFit, head_inputs, split
from onnxmerge.learn.quantize import QuantizeInputs, quantize_z, replace_head
from onnxmerge.runtime.session import make_session

NOT_TIMED = {"pays": float("inf"), "max_time": float("inf"), "rounds": 1}  # tests check correctness, not time


def fixture_source(name: str, fixture: str) -> Source:
    e = fixture_entry(fixture)
    return Source(name, FIXTURES / fixture, Preprocess(e["scale"], tuple(e["mean"]), tuple(e["std"])))


@pytest.fixture(scope="module")
def fitted(digits):
    x, y = digits
    sources = [fixture_source("a", "torch_legacy_cnn.onnx"), fixture_source("b", "jax_cnn.onnx")]
    merger = Merger(ImageInput(8, 8, 1), sources, quiet=True).fit(x[:400], y[:400])
    fit = HeadFit(merger.head_input_.widths(merger.widths_), merger.report_["C"], merger.class_weight)
    return merger, QuantizeInputs(merger.model_, ["a", "b"], x[:400], y[:400], x[400:700], fit)


def test_split_never_calibrates_on_an_image_it_scores():
    images = np.arange(100).reshape(100, 1, 1, 1).astype(np.uint8)
    pool = (np.arange(60) + 150).reshape(60, 1, 1, 1).astype(np.uint8)
    for pool_given, wanted in ((pool, 128), (pool, 32), (None, 128), (None, 8)):
        sp = split(images, pool_given, wanted)
        calibrated = set(sp.calibration.ravel().tolist())
        scored = set(images[sp.estimate].ravel().tolist())
        agreement = set(sp.agreement.ravel().tolist())
        assert not calibrated & scored and not calibrated & agreement
        assert len(sp.calibration) == min(wanted, 60 if pool_given is not None else 0) + sp.calibration_labelled
        assert sp.calibration_labelled <= len(images) // 4  # three quarters of the labelled images always measure
        assert len(scored) == len(images) - sp.calibration_labelled
    assert split(images, pool, 32).from_pool == 32 and split(images, pool, 32).calibration_labelled == 0


def test_minmax_of_any_subset_equals_the_activations_own_range(fitted, digits):
    merger, inputs = fitted
    x = digits[0][:48]
    layers = source_nodes(merger.model_, ["a", "b"])
    tensors = calibrated_tensors(merger.model_, [n for s in layers for n in s.network])
    assert "a/input" in tensors and len(tensors) > 10
    stats = collect_stats(merger.model_, tensors, x)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(merger.model_)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    session = make_session(exposed)
    rows = np.arange(5, 29)
    values = session.run(tensors, {"image": x[rows]})
    ranges = stats.minmax(rows)
    for t, v in zip(tensors, values):
        assert ranges[t] == pytest.approx((float(v.min()), float(v.max())), rel=1e-6, abs=1e-7), t


def test_replaced_head_gives_the_refitted_pipelines_probabilities(fitted):
    merger, inputs = fitted
    x = head_inputs(merger.model_, inputs.images)
    head = inputs.fit(x[::2] * 1.5 + 0.1, inputs.labels[::2])  # another head, on other features: other mean
    z = replace_head(merger.model_, head)
    got = make_session(z).run(["probabilities"], {"image": inputs.images[1::2]})[0]
    want = head.predict_proba(x[1::2])
    order = [list(head.classes_).index(c) for c in merger.classes_]
    assert np.abs(got - want[:, order]).max() <= 1e-5
    assert HEAD_INPUT in {n.input[0] for n in z.graph.node if n.name == "head/Centre"}


def test_int8_z_carries_its_held_out_numbers_and_they_hold_on_unseen_images(fitted, digits, tmp_path, capsys):
    merger, inputs = fitted
    z, report = quantize_z(inputs, **NOT_TIMED)
    assert report.accepted and report.lines[-1] == "quantize: wrote the int8 Z (int8: a, b)"
    assert any(n.op_type == "QuantizeLinear" for n in z.graph.node)
    assert report.calibration_from == "128 pool images" and report.estimate_images == 400 and report.folds == 5
    assert "Percentile" not in " ".join(report.trials)  # histogram methods only where MinMax loses
    # the claim holds on images neither the build nor the quantisation saw
    x, y = digits
    test = make_session(z).run(["label"], {"image": x[700:]})[0].astype(str)
    assert abs(np.mean(test == y[700:]) - report.int8_accuracy) <= 0.03
    info = read_metadata(z).quantization
    assert info["int8_sources"] == ["a", "b"] and info["method"] == "MinMax" and 0.9 <= info["agreement"] <= 1
    assert info["int8_accuracy"] == report.int8_accuracy and info["time_ratio"]["rounds"] == 1
    estimate = read_metadata(z).expected_accuracy
    assert estimate["int8"] and estimate["accuracy"] == report.int8_accuracy
    assert estimate["float_accuracy"] == report.float_accuracy
    path = tmp_path / "z_int8.onnx"
    onnx.save(z, str(path))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"expected accuracy {report.int8_accuracy:.3f}" in out and "(int8 Z, 400 labelled images" in out
    assert "int8     sources a, b; MinMax calibration on 128 pool images" in out
    assert f"labels agree with the float Z {report.agreement:.3f}" in out


def test_float_z_is_kept_with_the_reason_when_int8_loses_more_than_the_margin(fitted):
    merger, inputs = fitted
    one = QuantizeInputs(merger.model_, ["a", "b"], inputs.images[:200], inputs.labels[:200], None, inputs.fit)
    z, report = quantize_z(one, margin=-1.0, calibration_images=32, **NOT_TIMED)
    assert z is one.model and not report.accepted and read_metadata(z).quantization is None
    assert report.lines[-1].startswith("quantize: kept the float Z: int8 loses ")
    assert "more than the -100-point margin" in report.lines[-1]
    assert report.calibration_from == "32 labelled images" and report.estimate_images == 168
    assert {"Percentile, first/last layers float", "Entropy, first/last layers float"} <= set(report.trials)


def test_cli_quantize_prints_the_step_and_writes_one_file(tmp_path, digits_npz, capsys):
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx")], digits_npz["train"])
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache", "--quantize"]) == 0
    out = capsys.readouterr().out
    assert "quantize: int8 static QDQ" in out and "quantize: source a: " in out and "peak memory" in out
    assert "ranges from 128 labelled images" in out and "872 labelled images neither calibrated on" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml", "z.onnx"]  # nothing else written here


def test_percentile_ranges_equal_onnxruntimes_own_calibrator(fitted, digits):
    """One histogram pass serves percentile and entropy; on one batch its percentile ranges are onnxruntime's."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from onnxmerge.learn.calibrate import HISTOGRAM_BINS, PERCENTILE, collect_histograms, percentile_ranges
    from onnxmerge.learn.qdq import entropy_ranges

    merger, _ = fitted
    x = digits[0][:8]  # one batch: onnxruntime's histogram is then binned exactly as ours
    layers = source_nodes(merger.model_, ["a"])
    tensors = calibrated_tensors(merger.model_, layers[0].network)
    minmax = collect_stats(merger.model_, tensors, x).minmax()
    ours = percentile_ranges(collect_histograms(merger.model_, minmax, x), minmax)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(merger.model_)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    values = dict(zip(tensors, make_session(exposed).run(tensors, {"image": x})))
    theirs = HistogramCollector("percentile", False, HISTOGRAM_BINS, 128, PERCENTILE, "same")
    theirs.collect(values)
    for t, (lo, hi, *_) in theirs.compute_percentile().items():
        assert ours[t] == pytest.approx((float(lo), float(hi)), rel=1e-5, abs=1e-6), t
    entropy = entropy_ranges(collect_histograms(merger.model_, minmax, x), minmax)
    for t in tensors:  # inside the measured range, never wider
        assert minmax[t][0] - 1e-6 <= entropy[t][0] <= entropy[t][1] <= minmax[t][1] + 1e-6, t
