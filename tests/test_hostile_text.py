"""Hostile text: labels and file names with control characters, escape sequences or bytes that are not UTF-8.

Build refuses such class labels (one sentence); whatever reaches the terminal anyway (file names, labels of
a Z built elsewhere, a model's own metadata) is printed with control characters escaped, so predict's
``FILE<TAB>LABEL<TAB>PROBABILITY`` lines always have three fields and no escape sequence reaches the terminal.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, source_toml, write_recipe
from PIL import Image
from test_bad_input import fails

from onnxmerge.cli import main
from onnxmerge.safety import printable

ESC = "\x1b[2J\x1b[31m"


@pytest.mark.parametrize(
    "text,shown",
    [
        ("plain café 猫", "plain café 猫"),
        (f"{ESC}red", "\\x1b[2J\\x1b[31mred"),
        ("a\tb\nc\\d", "a\\tb\\nc\\\\d"),
        ("caf\udce9", "caf\\udce9"),  # a file name byte that is not UTF-8 (surrogateescape)
        ("abc\u202edcba", "abc\\u202edcba"),  # a right-to-left override reorders what the terminal shows
        ("\x7f\x85", "\\x7f\\x85"),
    ],
)
def test_printable(text, shown):
    assert printable(text) == shown


def folder_data(root, digits, names):
    x, y = digits
    for name, digit in zip(names, "01"):
        folder = root / name if isinstance(name, str) else root / os.fsdecode(name)
        folder.mkdir(parents=True)
        for i, img in enumerate(x[y == digit][:5]):
            Image.fromarray(img[..., 0]).save(folder / f"{i}.png")
    return root


def build(tmp_path, train, *extra):
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx")], train)
    return ["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache", *extra]


@pytest.mark.parametrize(
    "name,problem",
    [
        (f"cat{ESC}", "contains control characters"),
        ("cat\tdog", "contains control characters"),
        (b"caf\xe9", "is not valid UTF-8"),
    ],
    ids=["ansi", "tab", "latin-1"],
)
def test_class_folder_names_that_cannot_be_labels(tmp_path, digits, capsys, name, problem):
    data = folder_data(tmp_path / "data", digits, [name, "dog"])
    err = fails(build(tmp_path, data), capsys, "class label", problem, "rename it")
    assert "\x1b" not in err and "\t" not in err
    assert not (tmp_path / "z.onnx").exists()


def test_npz_labels_with_a_newline(tmp_path, digits, capsys):
    x, y = digits
    y = np.where(y == "1", "one\nline two", y)
    np.savez(tmp_path / "train.npz", x=x[:200], y=y[:200])
    fails(build(tmp_path, tmp_path / "train.npz"), capsys, "'one\\nline two'", "contains control characters")


def test_recipe_labels_with_an_escape(tmp_path, digits_npz, capsys):
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx")], digits_npz["train"])
    recipe.write_text(recipe.read_text().replace('name = "a"', 'name = "a"\nlabels = ["\\u001b[31mzero", "1"]', 1))
    fails(["build", str(recipe), "-o", str(tmp_path / "z.onnx")], capsys, "source 'a' labels", "control characters")


def with_labels(tmp_path, labels: list[bytes], name="labelled.onnx"):
    """skl_mlp.onnx with its classifier's class labels replaced (bytes: they need not be UTF-8)."""
    model = onnx.load(str(FIXTURES / "skl_mlp.onnx"))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_strings":
                del attr.strings[:]
                attr.strings.extend(labels)
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def test_inspect_escapes_a_models_labels(tmp_path, capsys):
    labels = [b"\xff\xfe", ESC.encode() + b"red", b"tab\there"] + [str(i).encode() for i in range(3, 10)]
    path = with_labels(tmp_path, labels)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "labels:  10: \\xff\\xfe, \\x1b[2J\\x1b[31mred, tab\\there, 3" in out and "\x1b" not in out
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"][:2] == ["\\xff\\xfe", f"{ESC}red"]


def test_a_source_whose_labels_are_not_utf8_is_refused_in_one_sentence(tmp_path, digits_npz, capsys):
    """The graph steps read string attributes as UTF-8 (a traceback before): refused, naming node and bytes."""
    path = with_labels(tmp_path, [b"z\xe9ro"] + [str(i).encode() for i in range(1, 10)])
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx")], digits_npz["train"])
    recipe.write_text(
        recipe.read_text()
        + source_toml("m", "skl_mlp.onnx").replace((FIXTURES / "skl_mlp.onnx").as_posix(), path.as_posix())
    )
    fails(
        ["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache"],
        capsys,
        "labelled.onnx",
        "'classlabels_strings' with text that is not UTF-8",
        "z\\xe9ro",
        "re-export",
    )


def test_teachers_mode_refuses_a_teachers_label_with_an_escape(tmp_path, digits_npz, capsys):
    path = with_labels(tmp_path, [b"0", ESC.encode() + b"one"] + [str(i).encode() for i in range(2, 10)])
    text = (
        "[input]\nheight = 8\nwidth = 8\nchannels = 1\n\n"
        + source_toml("m", "skl_mlp.onnx").replace((FIXTURES / "skl_mlp.onnx").as_posix(), path.as_posix())
        + '\n[head]\nmode = "teachers"\n'
    )
    (tmp_path / "teachers.toml").write_text(text)
    err = fails(
        ["build", str(tmp_path / "teachers.toml"), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache"],
        capsys,
        "control characters",
        "give that source's labels in the recipe",
    )
    assert "\x1b" not in err and not (tmp_path / "z.onnx").exists()


def hostile_z(tmp_path, built_z, labels):
    """The session's Z with its class names (the label output's string table and metadata) replaced."""
    model = onnx.load(str(built_z))
    for tensor in model.graph.initializer:
        if tensor.name == "head/classes":
            del tensor.string_data[:]
            tensor.string_data.extend(label.encode() for label in labels)
    for prop in model.metadata_props:
        if prop.key == "onnxmerge.labels":
            prop.value = json.dumps(labels)
    path = tmp_path / "hostile.onnx"
    onnx.save(model, str(path))
    return path


def test_predict_lines_keep_three_fields(tmp_path, built_z, digits, capsys):
    labels = [f"{i}\t{ESC}\n" for i in range(10)]
    z = hostile_z(tmp_path, built_z, labels)
    x, _ = digits
    names = ["tab\there.png", "new\nline.png", f"esc{ESC}.png", os.fsdecode(b"caf\xe9.png")]
    for name, img in zip(names, x):
        Image.fromarray(img[..., 0]).save(tmp_path / name)
    assert main(["predict", str(z), *[str(tmp_path / n) for n in names]]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 3 for line in lines), out
    assert "\x1b" not in out and lines[3].split("\t")[0].endswith("caf\\udce9.png")
    assert lines[0].split("\t")[1].endswith("\\t\\x1b[2J\\x1b[31m\\n")
    assert main(["predict", str(z), str(tmp_path / names[3]), "--json"]) == 0  # JSON escapes by itself
    assert json.loads(capsys.readouterr().out)[0]["label"] in labels


def test_evaluate_prints_no_escape_sequence(tmp_path, built_z, digits_npz, capsys):
    """evaluate prints the test data's labels (checked like training labels) and Z's only where they match."""
    z = hostile_z(tmp_path, built_z, [f"{ESC}{i}" for i in range(10)])
    assert main(["evaluate", str(z), str(digits_npz["test"])]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "labels Z does not know (counted as wrong): 0, 1, 2" in out
