"""What a newcomer trips on in the first hour (issue 24): a folder as ``-o``, a class folder named like a
teacher's label but not quite, the extras hint, messages that name the file, source and model, ``score`` on a
folder, ``inspect`` on sequence outputs and Z's features, and an unreadable image in ``predict``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import FIXTURES, source_toml, write_recipe
from PIL import Image

from onnxmerge import version
from onnxmerge.cli import main
from onnxmerge.errors import OnnxMergeError
from onnxmerge.recipe import load_recipe
from onnxmerge.runtime.factory import open_tasks
from onnxmerge.stages.teachers import resemblance

GRAPHS = FIXTURES.parent / "graphs"
CLOTHES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat"]  # the teacher's labels for digits 0..4


def fails(args: list[str], capsys, *expected: str) -> str:
    """The CLI exits 2 with one 'onnxmerge: error:' line holding every ``expected`` text."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("onnxmerge: error: ") and "\n" not in err, err
    for text in expected:
        assert text in err, err
    return err


# -- -o names a folder --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("existing", "slash"), [(False, "/"), (True, "/"), (True, "")], ids=["new/", "dir/", "dir"])
def test_output_that_names_a_folder_is_refused_and_nothing_is_written(
    tmp_path, digits_npz, capsys, monkeypatch, existing, slash
):
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx")], digits_npz["train"])
    monkeypatch.chdir(tmp_path)
    if existing:
        (tmp_path / "newdir").mkdir()
    fails(["build", str(recipe), "-o", "newdir" + slash, "--quiet"], capsys, "newdir", "folder", "newdir/z.onnx")
    assert (tmp_path / "newdir").is_dir() if existing else not (tmp_path / "newdir").exists()
    assert not existing or not list((tmp_path / "newdir").iterdir())


# -- a training class named like a teacher's label, but not quite ----------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "how"),
    [
        ("coat", "Coat", "case"),
        ("COAT", "Coat", "case"),
        ("T-shirt top", "T-shirt_top", "spaces, underscores or hyphens"),
        (" Coat", "Coat", "spaces"),
        ("tshirttop", "T-shirt_top", "spaces, underscores or hyphens"),
        ("Coatt", "Coat", "small edit"),
        ("Bagg", "Bag", "small edit"),
        ("Trousers", "Trouser", "small edit"),
        ("Pullovr", "Pullover", "small edit"),
    ],
)
def test_names_that_look_like_one_name(a, b, how):
    assert how in resemblance(a, b) and how in resemblance(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [("Shirt", "Skirt"), ("cat", "bat"), ("class_10", "class_11"), ("v1", "v2"), ("Coat", "Coat"), ("Bag", "Dress")],
)
def test_names_of_different_classes(a, b):
    assert resemblance(a, b) is None


def _clothes_recipe(tmp_path, digits, names: dict[str, str], mode: str = "fit", extra: str = "") -> str:
    """A teacher (torch CNN on digits 0..4) labelled with clothes names; its train set names those classes
    ``names[label]`` (digits 0..4, 20 images each)."""
    x, y = digits
    keep = np.concatenate([np.flatnonzero(y == str(d))[:20] for d in range(5)])
    labels = [names.get(CLOTHES[int(d)], CLOTHES[int(d)]) for d in y[keep]]
    train = tmp_path / "train.npz"
    if mode == "teachers":  # a train set of new classes only
        own = np.isin(labels, CLOTHES)
        np.savez(train, x=x[keep][~own], y=np.asarray(labels)[~own])
    else:
        np.savez(train, x=x[keep], y=np.asarray(labels))
    source = source_toml("a", "torch_legacy_cnn.onnx").replace('name = "a"\n', f'name = "a"\nlabels = {CLOTHES!r}\n')
    text = f'[input]\nheight = 8\nwidth = 8\nchannels = 1\n\n{source}\n[head]\nmode = "{mode}"\n'
    text += f'train = "{train.as_posix()}"\n{extra}'
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("mode", ["fit", "teachers"])
@pytest.mark.parametrize(
    ("wrong", "right"), [("coat", "Coat"), ("T-shirt top", "T-shirt_top"), ("Dresss", "Dress")], ids=str
)
def test_a_class_named_almost_like_a_teachers_label_is_an_error(tmp_path, digits, capsys, mode, wrong, right):
    recipe = _clothes_recipe(tmp_path, digits, {right: wrong}, mode)
    out = tmp_path / "z.onnx"
    fails(
        ["build", recipe, "-o", str(out), "--quiet", "--no-cache"],
        capsys,
        f"training class {wrong!r} looks like source 'a''s label {right!r}",
        f"did you mean {right!r}?",
        f'new_classes = ["{wrong}"]',
    )
    assert not out.exists()


def test_two_training_classes_a_typo_apart(tmp_path, digits, capsys):
    """The issue's 'Bagg' beside 'Bag': two new classes whose names differ by one letter."""
    recipe = _clothes_recipe(tmp_path, digits, {"Trouser": "Bag", "Dress": "Bagg"})
    fails(
        ["build", recipe, "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache"],
        capsys,
        "training class 'Bagg' looks like training class 'Bag'",
        "did you mean 'Bag'?",
    )


def test_new_classes_keeps_such_a_class(tmp_path, digits, capsys):
    recipe = _clothes_recipe(tmp_path, digits, {"Coat": "coat"}, extra='new_classes = ["coat"]\n')
    assert main(["build", recipe, "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache", "--json"]) == 0
    classes = json.loads(capsys.readouterr().out)["classes"]
    assert "coat" in classes and "Coat" not in classes
    assert list(load_recipe(recipe).merger.get_params()["new_classes"]) == ["coat"]


def test_new_classes_must_name_a_training_class(tmp_path, digits, capsys):
    recipe = _clothes_recipe(tmp_path, digits, {}, extra='new_classes = ["cote"]\n')
    fails(["build", recipe, "-o", str(tmp_path / "z.onnx"), "--quiet"], capsys, "'cote'", "no class of the training")


# -- the extras hint -------------------------------------------------------------------------------------------
def test_extras_hint_in_a_clone_installs_the_clone():
    command = version.install_extra_command("dask")
    checkout = FIXTURES.parent.parent.parent
    assert command == f"{sys.executable} -m pip install -e '{checkout}[dask]'"


def test_extras_hint_for_an_installed_copy_lists_the_extras_requirements(tmp_path, monkeypatch):
    monkeypatch.setattr(version, "_CHECKOUT", tmp_path)  # as after `pip install .`: no pyproject beside it
    command = version.install_extra_command("dask")
    assert command.startswith(f"{sys.executable} -m pip install ") and "onnxmerge[" not in command
    for requirement in ("'dask[distributed]", "'pyarrow", "'fsspec"):
        assert requirement in command, command


def test_engine_dask_without_the_extra_says_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxmerge.runtime.dask_engine", None)  # import fails as if not installed
    with pytest.raises(OnnxMergeError, match="optional extra 'dask'") as error:
        open_tasks("dask")
    assert str(error.value).endswith(version.install_extra_command("dask"))


# -- messages name the file, the source and the model ---------------------------------------------------------
def test_unreadable_image_is_named_by_its_path(tmp_path, built_z, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    err = fails(["predict", str(built_z), str(broken)], capsys, f"image {broken} cannot be read", "Pillow")
    assert "BufferedReader" not in err and "<" not in err


@pytest.mark.parametrize("key", ["feature", "head_output"])
def test_a_wrong_tensor_name_names_the_source_and_its_model(tmp_path, digits_npz, capsys, key):
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx")], digits_npz["train"])
    recipe.write_text(recipe.read_text().replace('name = "b"', f'name = "b"\n{key} = "no_such_tensor"', 1))
    fails(
        ["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet"],
        capsys,
        f"source 'b' ({FIXTURES / 'skl_mlp.onnx'})",
        "'no_such_tensor'",
    )


def test_one_parquet_part_is_singular(tmp_path, built_z, digit_png, capsys):
    pytest.importorskip("pyarrow")
    out = tmp_path / "p.parquet"
    assert main(["predict", str(built_z), str(digit_png), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"to {out} (1 parquet part)")


# -- score takes what fit takes ----------------------------------------------------------------------------
def test_score_takes_a_folder_an_npz_or_arrays(tmp_path, digits, digits_npz):
    merger = load_recipe(write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx")], digits_npz["train"]), True).merger
    merger.fit(digits_npz["train"])
    test = np.load(digits_npz["test"])
    x, y = test["x"][:60], test["y"][:60]
    expected = float(np.mean(merger.predict(x) == y))
    folder = tmp_path / "test"
    for i, (image, label) in enumerate(zip(x, y)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / label / f"{i}.png")
    np.savez(tmp_path / "test.npz", x=x, y=y)
    assert merger.score(x, y) == merger.score(folder) == merger.score(tmp_path / "test.npz") == expected
    assert merger.score([str(tmp_path / "test.npz"), folder]) == expected


# -- inspect ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "key"), [(FIXTURES / "skl_mlp.onnx", "STRING"), (GRAPHS / "skl2onnx_binary.onnx", "INT64")]
)
def test_inspect_spells_out_a_zipmap_output(capsys, model, key):
    """skl2onnx's ZipMap, with string class labels and with integer ones."""
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert "Unknown type" not in out
    assert f"output_probability  sequence of map({key} -> FLOAT)" in out, out


def test_inspect_gives_zs_features_width(built_z, capsys):
    assert main(["inspect", str(built_z), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    width = sum(block["width"] for block in info["z"]["head_inputs"] if block["block"].startswith("features"))
    outputs = {o["name"]: o for o in info["outputs"]}
    assert outputs["features"]["type"] == f"FLOAT, Nx{width}" and width > 0


# -- an unreadable image in predict: skipped with a warning, on every engine ------------------------------------
def test_local_predict_skips_an_unreadable_image_with_a_warning(tmp_path, built_z, digits, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(digits[0][i, ..., 0]).save(folder / f"{i}.png")
    (folder / "1_broken.png").write_bytes(b"not a png")
    assert main(["predict", str(built_z), str(folder), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(folder / f"{i}.png") for i in range(3)]
    err = captured.err.splitlines()
    assert err == [
        f"onnxmerge: warning: image {folder / '1_broken.png'} cannot be read (not an image format Pillow can "
        "decode); remove or replace it; skipped.",
        "onnxmerge: warning: 1 of 4 images could not be read and have no prediction.",
    ]
    for path in folder.glob("?.png"):
        path.write_bytes(b"not a png either")
    fails(["predict", str(built_z), str(folder), "--quiet"], capsys, "none of the 4 images could be read")
