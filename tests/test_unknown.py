"""``[head] unknown``: Z's ``unknown_score`` output, the "unknown" label above the calibrated threshold, its
metadata and ``inspect`` line, ``evaluate``'s rejection report, ``predict --unknown-to``, and parity.

Z knows digits 0-7 (real fixtures from PyTorch and scikit-learn); the digits 8 and 9 are what it does not know.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, fixture_entry, write_recipe
from PIL import Image

from onnxmerge.cli import main
from onnxmerge.config import unknown_share as check_setting
from onnxmerge.contract import UNKNOWN_SCORE
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph.preprocess import ImageInput, Preprocess
from onnxmerge.graph.topology import with_outputs
from onnxmerge.merger import Merger, Source

KNOWN = [str(d) for d in range(8)]
SOURCES = [("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx")]


@pytest.fixture(scope="module")
def split(digits):
    """900 training images of digits 0-7; the rest (all ten digits) to test on."""
    x, y = digits
    order = np.random.default_rng(3).permutation(len(x))
    train = order[np.isin(y[order], KNOWN)][:900]
    test = np.setdiff1d(order, train)
    return (x[train], y[train]), (x[test], y[test])


@pytest.fixture(scope="module")
def built(tmp_path_factory, split):
    """``{setting: (Z path, build stdout)}`` for unknown off (the default), "auto" and 0.99, built by the CLI."""
    folder = tmp_path_factory.mktemp("unknown")
    (x, y), _ = split
    np.savez(folder / "train.npz", x=x, y=y)
    out = {}
    for setting, extra in (("off", ""), ("auto", 'unknown = "auto"\n'), ("0.99", "unknown = 0.99\n")):
        sub = folder / setting
        sub.mkdir()
        recipe = write_recipe(sub, SOURCES, folder / "train.npz", extra=extra)
        code, printed = _run(["build", str(recipe), "-o", str(sub / "z.onnx"), "--quiet"])
        assert code == 0, printed
        out[setting] = (sub / "z.onnx", printed)
    return out


def _run(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    return code, stdout.getvalue() + stderr.getvalue()


def _z(path, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    model = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"image": images})))


def test_off_is_the_default_and_z_is_as_before(built, split):
    model = onnx.load(built["off"][0])
    assert [o.name for o in model.graph.output] == ["label", "probabilities", "features"]
    assert "onnxmerge.unknown" not in {p.key for p in model.metadata_props}
    _, (x, _) = split
    off = _z(built["off"][0], x, ["label", "probabilities"])
    on = _z(built["auto"][0], x, ["label", "probabilities", UNKNOWN_SCORE])
    assert np.array_equal(off["probabilities"], on["probabilities"])  # probabilities unchanged
    same = on["label"] != "unknown"
    assert np.array_equal(on["label"][same], off["label"][same])


def test_auto_adds_the_score_the_threshold_and_its_meaning(built, split, capsys):
    path, printed = built["auto"]
    assert 'unknown: label "unknown" when unknown_score > 0.95: keeps 95% of your images' in printed
    model = onnx.load(path)
    score = next(o for o in model.graph.output if o.name == UNKNOWN_SCORE)
    assert score.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in score.type.tensor_type.shape.dim] == ["N"]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["onnxmerge.unknown"])
    assert meta["threshold"] == 0.95 and meta["calibration_images"] == 900 and meta["folds"] == 5
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node if n.name.startswith(("unknown/", "head/")))
    assert main(["inspect", str(path)]) == 0
    assert "unknown  label 'unknown' when unknown_score > 0.95 (keeps 95% of the build's 900" in capsys.readouterr().out
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["z"]["unknown"]["threshold"] == 0.95


def test_label_is_unknown_exactly_above_the_threshold(built, split):
    _, (x, y) = split
    for setting, threshold in (("auto", 0.95), ("0.99", 0.99)):
        out = _z(built[setting][0], x, ["label", "probabilities", UNKNOWN_SCORE])
        above = out[UNKNOWN_SCORE] > threshold
        assert np.all((out["label"] == "unknown") == above)
        assert np.array_equal(out["label"][~above], np.asarray(KNOWN)[out["probabilities"][~above].argmax(1)])
        assert np.all((out[UNKNOWN_SCORE] >= 0) & (out[UNKNOWN_SCORE] <= 1))
        novel = ~np.isin(y, KNOWN)
        # digits 8 and 9 score higher than the known digits: the score separates them
        assert np.median(out[UNKNOWN_SCORE][novel]) > np.quantile(out[UNKNOWN_SCORE][~novel], 0.75)
    auto = _z(built["auto"][0], x, ["label"])["label"]
    strict = _z(built["0.99"][0], x, ["label"])["label"]
    assert np.sum(strict == "unknown") < np.sum(auto == "unknown")


def _source(name: str, fixture: str) -> Source:
    e = fixture_entry(fixture)
    flat = {"height": e["height"], "width": e["width"], "channels": e["channels"]} if e["layout"] == "flat" else {}
    return Source(name, FIXTURES / fixture, Preprocess(e["scale"], tuple(e["mean"]), tuple(e["std"]), **flat))


@pytest.mark.parametrize(
    "mode, fixtures, opset",
    [("fit", SOURCES, 15), ("teachers", [("a", "torch_legacy_cnn.onnx"), ("d", "torch_dynamo_mlp.onnx")], 18)],
)
def test_parity_unknown_score_is_the_numpy_computation(split, mode, fixtures, opset):
    """Both modes, and both forms of ReduceMax (axes an attribute before opset 18, an input from 18)."""
    (x, y), (x_test, _) = split
    z = Merger(ImageInput(8, 8, 1), [_source(n, f) for n, f in fixtures], mode=mode, quiet=True, unknown="auto")
    z.fit(x, y) if mode == "fit" else z.fit(unlabeled=x[:300])  # routing a pool: 300 images keep it quick
    assert next(o.version for o in z.model_.opset_import if o.domain == "") == opset
    unknown_checks = [c for c in z.parity_ if c.step.startswith("unknown")]
    assert len(unknown_checks) == 2 and all(c.ok for c in unknown_checks)
    blocks = z.unknown_.blocks  # the source feature tensors inside Z that the score reads
    out = _z(with_outputs(z.model_, blocks, extra=True).SerializeToString(), x_test, [UNKNOWN_SCORE, *blocks])
    assert z.report_["unknown"]["threshold"] == 0.95
    numpy_score = z.unknown_.score(out)  # the fitted score, in numpy, on Z's own feature blocks
    assert np.max(np.abs(out[UNKNOWN_SCORE] - numpy_score)) <= 1e-5


@pytest.mark.parametrize("value", ["maybe", 1.5, 0, 1, -0.1, True])
def test_bad_settings_are_one_sentence(value):
    with pytest.raises(OnnxMergeError, match=r'head.unknown must be "off", "auto" or a number between 0 and 1'):
        check_setting(value)
    assert check_setting("off") is None and check_setting("auto") == 0.95 and check_setting(0.9) == 0.9


def test_recipe_setting_errors_name_the_key(tmp_path, digits_npz, capsys):
    recipe = write_recipe(tmp_path, SOURCES, digits_npz["train"], extra="unknown = 2\n")
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxmerge: error: head.unknown must be") and "\n" not in err
    assert not (tmp_path / "z.onnx").exists()


def test_a_class_named_unknown_is_an_error_with_the_score_on(tmp_path, split, capsys):
    (x, y), _ = split
    y = np.where(y == "7", "unknown", y)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    recipe = write_recipe(tmp_path, SOURCES, tmp_path / "train.npz", extra='unknown = "auto"\n')
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'the labelled data has a class named "unknown"' in err and "\n" not in err
    assert not (tmp_path / "z.onnx").exists()


def test_teachers_mode_without_images_cannot_calibrate(tmp_path, capsys):
    text = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx"), ("d", "torch_dynamo_mlp.onnx")], "x").read_text()
    text = text.split("[head]")[0] + '[head]\nmode = "teachers"\nunknown = "auto"\n'
    (tmp_path / "recipe.toml").write_text(text)
    assert main(["build", str(tmp_path / "recipe.toml"), "-o", str(tmp_path / "z.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "[head] unknown needs at least 20 images to calibrate" in err and "the build has 0" in err


@pytest.fixture(scope="module")
def folder(tmp_path_factory, split):
    """The test digits as an ImageFolder tree of PNGs: classes 0-7 and 8, 9 (unknown to Z)."""
    root = tmp_path_factory.mktemp("folder")
    _, (x, y) = split
    for i, (image, label) in enumerate(zip(x[:300], y[:300])):
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(image[..., 0]).save(root / label / f"{i}.png")
    return root


def test_evaluate_reports_rejection_and_plots_the_scores(built, folder, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["evaluate", str(built["auto"][0]), str(folder), "--json", "--report", str(report)]) == 0
    result = json.loads(capsys.readouterr().out)
    unknown = result["unknown"]
    assert set(unknown["rejected"]) == {"8", "9"} and unknown["threshold"] == 0.95
    assert unknown["rejection_rate"] > 0.5  # most of the digits Z never saw are rejected
    assert unknown["known_accuracy_with_rejection"] <= unknown["known_accuracy_without_rejection"]
    assert 0 < unknown["known_rejected"] < 0.3
    labels = result["labels"]
    assert labels[:9] == KNOWN + ["unknown"] and labels[9:] == ["8", "9"]
    confusion = np.array(result["confusion"])
    rejected_8 = confusion[labels.index("8"), labels.index("unknown")] / confusion[labels.index("8")].sum()
    assert np.isclose(rejected_8, unknown["rejected"]["8"])
    assert (report / "unknown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Unknown" in (report / "report.html").read_text()
    assert main(["evaluate", str(built["auto"][0]), str(folder)]) == 0
    text = capsys.readouterr().out
    assert "with rejection" in text and "called unknown:" in text and "of 8 (a class Z does not know)" in text


def test_predict_copies_the_images_called_unknown(built, folder, tmp_path, capsys):
    files = sorted(str(p) for p in folder.rglob("*.png"))
    target = tmp_path / "new"
    assert main(["predict", str(built["auto"][0]), *files, "--unknown-to", str(target)]) == 0
    captured = capsys.readouterr()
    rows = [line.split("\t") for line in captured.out.strip().splitlines()]
    called = sorted(f for f, label, _ in rows if label == "unknown")
    assert called and sorted(p.name for p in target.iterdir()) == sorted({p.rsplit("/", 1)[1] for p in called})
    assert f"{len(called)} images called unknown are in" in captured.err
    assert main(["predict", str(built["auto"][0]), *files, "--unknown-to", str(target)]) == 0  # again: no copies
    assert len(list(target.iterdir())) == len(called)
    capsys.readouterr()
    assert main(["predict", str(built["auto"][0]), *files[:2], "--json"]) == 0
    assert all(0 <= row["unknown_score"] <= 1 for row in json.loads(capsys.readouterr().out))
    assert main(["predict", str(built["off"][0]), *files[:2], "--unknown-to", str(target)]) == 2
    assert "needs a Z built with [head] unknown on" in capsys.readouterr().err
