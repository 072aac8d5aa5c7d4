"""`predict` and `evaluate` on a built Z: the contract's text and JSON formats, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_recipe
from PIL import Image

from onnxmerge.cli import main


@pytest.fixture(scope="module")
def z_path(tmp_path_factory, digits_npz):
    folder = tmp_path_factory.mktemp("z")
    recipe = write_recipe(folder, [("a", "torch_legacy_cnn.onnx"), ("b", "jax_cnn.onnx")], digits_npz["train"])
    assert main(["build", str(recipe), "-o", str(folder / "z.onnx"), "--quiet"]) == 0
    return folder / "z.onnx"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, digits_npz):
    """An ImageFolder-style tree of PNGs (bigger than Z's input, RGB: read_image converts and resizes)."""
    root = tmp_path_factory.mktemp("images")
    test = np.load(digits_npz["test"])
    for i, (img, label) in enumerate(zip(test["x"][:60], test["y"][:60])):
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(img[..., 0]).convert("RGB").save(root / label / f"{i}.png")
    return root


def test_predict_prints_file_label_probability(z_path, image_folder, capsys):
    files = sorted(str(p) for p in image_folder.rglob("*.png"))[:3]
    assert main(["predict", str(z_path), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, file in zip(lines, files):
        name, label, prob = line.split("\t")
        assert name == file and label in [str(i) for i in range(10)] and 0 < float(prob) <= 1
    assert main(["predict", str(z_path), *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [set(r) for r in rows] == [{"file", "label", "probability"}] * 3


def test_evaluate_json_and_report(z_path, image_folder, tmp_path, capsys):
    unknown = image_folder / "cat"
    unknown.mkdir()
    Image.new("L", (8, 8), 128).save(unknown / "0.png")
    assert main(["evaluate", str(z_path), str(image_folder), "--json", "--report", str(tmp_path / "rep")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "per_class", "confusion", "labels"} <= set(result)
    assert result["labels"][-1] == "cat" and result["unknown_labels"] == ["cat"]
    assert result["per_class"]["cat"] == {"recall": 0.0, "support": 1}
    confusion = np.array(result["confusion"])
    assert confusion.shape == (11, 11) and confusion.sum() == 61
    assert np.isclose(np.trace(confusion) / confusion.sum(), result["accuracy"])
    assert result["accuracy"] > 0.85
    assert (tmp_path / "rep" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "confusion.png" in (tmp_path / "rep" / "report.html").read_text()
