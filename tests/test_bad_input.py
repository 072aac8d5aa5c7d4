"""Bad input: exit non-zero with one sentence naming the problem, no traceback, nothing written."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, write_recipe
from PIL import Image

from onnxmerge.cli import main


def fails(args: list[str], capsys, *expected: str) -> str:
    """Run the CLI; it must exit 2 with one 'onnxmerge: error:' line containing every ``expected`` text."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("onnxmerge: error: ") and "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def recipe(tmp_path, digits_npz, train=None, sources=(("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx"))):
    return write_recipe(tmp_path, list(sources), train or digits_npz["train"])


def build_fails(tmp_path, capsys, recipe_path, *expected):
    out = tmp_path / "z.onnx"
    err = fails(["build", str(recipe_path), "-o", str(out), "--quiet"], capsys, *expected)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".z.onnx")]
    return err


def test_missing_model_file(tmp_path, digits_npz, capsys):
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace("skl_mlp.onnx", "nope.onnx"))
    build_fails(tmp_path, capsys, path, "nope.onnx", "does not exist")


def test_feature_that_does_not_exist_lists_candidates(tmp_path, digits_npz, capsys):
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace('name = "b"', 'name = "b"\nfeature = "/Relu_9_output"', 1))
    build_fails(tmp_path, capsys, path, "'/Relu_9_output' does not exist", "candidates include", "inspect")


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 50, None], ids=["empty", "random", "truncated"])
def test_malformed_model(tmp_path, digits_npz, capsys, content):
    bad = tmp_path / "bad.onnx"
    original = (FIXTURES / "skl_mlp.onnx").read_bytes()
    bad.write_bytes(original[: len(original) // 3] if content is None else content)
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace((FIXTURES / "skl_mlp.onnx").as_posix(), bad.as_posix()))
    build_fails(tmp_path, capsys, path, "bad.onnx")


def test_unknown_key_suggests_the_closest(tmp_path, digits_npz, capsys):
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace("mean =", "maen =", 1))
    build_fails(tmp_path, capsys, path, "'maen'", "did you mean 'mean'?")


def test_missing_required_key(tmp_path, digits_npz, capsys):
    path = recipe(tmp_path, digits_npz)
    text = path.read_text()
    path.write_text("\n".join(l for l in text.splitlines() if not l.startswith("std")))
    build_fails(tmp_path, capsys, path, "missing the required key 'std'")


@pytest.mark.parametrize(
    "edit,expected",
    [
        (("height = 8", "height = 0"), "must be between 1 and 8192"),
        (("height = 8", 'height = "8"'), "must be an integer"),
        (("mean = [0.3]", "mean = [0.3, 0.2]"), "mean has 2 values"),
        (("std = [0.4]", "std = [0.0]"), "std contains 0"),
        (('mode = "fit"', 'mode = "fitt"'), "did you mean 'fit'"),
        (('mode = "fit"', 'mode = "teachers"'), "takes a train set of new classes only"),
        (('name = "b"', 'name = "a"'), "used twice"),
        (("[head]", "[head"), "not valid TOML"),
    ],
)
def test_recipe_mistakes(tmp_path, digits_npz, capsys, edit, expected):
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace(*edit, 1))
    build_fails(tmp_path, capsys, path, expected)


def test_single_class_in_fit_mode(tmp_path, digits, capsys):
    x, y = digits
    one = tmp_path / "one.npz"
    np.savez(one, x=x[y == "3"], y=y[y == "3"])
    build_fails(tmp_path, capsys, recipe(tmp_path, None, train=one), "single class", "at least two classes")


def test_class_folder_without_images(tmp_path, digits_npz, capsys):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "dog").mkdir()
    Image.new("L", (8, 8)).save(data / "dog" / "x.png")
    build_fails(tmp_path, capsys, recipe(tmp_path, digits_npz, train=data), "class folder", "cat", "holds no images")


def test_npz_with_mismatched_x_and_y(tmp_path, digits, capsys):
    x, y = digits
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x[:10], y=y[:9])
    build_fails(tmp_path, capsys, recipe(tmp_path, None, train=bad), "10 images but y has 9 labels")


def test_output_into_missing_folder(tmp_path, digits_npz, capsys):
    fails(["build", str(recipe(tmp_path, digits_npz)), "-o", str(tmp_path / "no" / "z.onnx")], capsys, "does not exist")


def test_output_onto_a_source_leaves_it_untouched(tmp_path, digits_npz, capsys):
    model = tmp_path / "a.onnx"
    shutil.copy(FIXTURES / "torch_legacy_cnn.onnx", model)
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace((FIXTURES / "torch_legacy_cnn.onnx").as_posix(), model.as_posix()))
    fails(["build", str(path), "-o", str(model)], capsys, "is one of the source models")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


def test_external_data_outside_the_model_folder_is_refused(tmp_path, digits_npz, capsys):
    """A source whose external-data location climbs out of its folder (CVE-2022-25882 style)."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 100_000)
    folder = tmp_path / "models"
    folder.mkdir()
    model = onnx.load(str(FIXTURES / "torch_dynamo_mlp.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(model, str(folder / "evil.onnx"))
    path = recipe(tmp_path, digits_npz)
    path.write_text(path.read_text().replace((FIXTURES / "skl_mlp.onnx").as_posix(), (folder / "evil.onnx").as_posix()))
    path.write_text(path.read_text().replace('"height": 8', '"height": 16'))
    build_fails(tmp_path, capsys, path, "'../secret.bin'", "outside the model's folder")


def test_unreadable_image_in_predict(tmp_path, capsys, digits_npz):
    z = tmp_path / "z.onnx"
    assert main(["build", str(recipe(tmp_path, digits_npz)), "-o", str(z), "--quiet"]) == 0
    capsys.readouterr()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    fails(["predict", str(z), str(broken)], capsys, "broken.png", "cannot be read")
    fails(["predict", str(z), str(tmp_path / "missing.png")], capsys, "missing.png", "does not exist")


def test_predict_on_a_model_onnxmerge_did_not_build(capsys, tmp_path):
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    fails(["predict", str(FIXTURES / "torch_legacy_cnn.onnx"), str(image)], capsys, "was not built by onnxmerge")


def test_console_script_prints_no_traceback(tmp_path):
    """The real process: exit code 2 and a single line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "onnxmerge", "build", str(tmp_path / "missing.toml"), "-o", str(tmp_path / "z.onnx")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"onnxmerge: error: recipe {tmp_path / 'missing.toml'} does not exist; check the path."
    ]
