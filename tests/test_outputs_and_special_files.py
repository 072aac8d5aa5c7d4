"""Outputs never replace inputs, nothing waits on a special file, and odd inputs end in one sentence.

Each refused case also checks that the input it protects is byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, write_recipe
from PIL import Image
from test_bad_input import fails

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, device files and hard links")


@pytest.fixture(autouse=True)
def no_hang():
    """A test that would block on a FIFO fails after 30 s instead of hanging the suite."""

    def hung(signum, frame):
        raise TimeoutError("blocked for 30 s: something opened a FIFO and waited")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def image_folder(root, digits, classes=("0", "1"), per_class=6):
    x, y = digits
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(x[y == c][:per_class]):
            Image.fromarray(img[..., 0]).save(root / c / f"{i}.png")
    return root


def recipe_over(tmp_path, train, sources=(("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx"))):
    return write_recipe(tmp_path, list(sources), train)


def refused_output(tmp_path, capsys, recipe, output, *expected):
    before = digest(output) if os.path.isfile(output) else None
    fails(["build", str(recipe), "-o", str(output), "--quiet", "--no-cache"], capsys, *expected)
    if before is not None:
        assert digest(output) == before
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]


def test_output_onto_a_training_image(tmp_path, digits, capsys):
    data = image_folder(tmp_path / "data", digits)
    refused_output(tmp_path, capsys, recipe_over(tmp_path, data), data / "1" / "3.png", "is an input file", "3.png")


def test_output_onto_the_training_npz(tmp_path, digits_npz, capsys):
    train = tmp_path / "train.npz"
    shutil.copy(digits_npz["train"], train)
    refused_output(tmp_path, capsys, recipe_over(tmp_path, train), train, "is a data file this run reads")


def test_output_onto_the_pool(tmp_path, digits_npz, capsys):
    pool = tmp_path / "pool.npz"
    shutil.copy(digits_npz["test"], pool)
    recipe = recipe_over(tmp_path, digits_npz["train"])
    recipe.write_text(recipe.read_text() + f'unlabeled = "{pool.as_posix()}"\n')
    refused_output(tmp_path, capsys, recipe, pool, "is a data file this run reads")


def test_output_onto_a_sources_external_data(tmp_path, digits_npz, capsys):
    """The issue's case: -o fer.onnx.data replaced the weights, the next build failed on NaN features."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("torch_dynamo_mlp.onnx", "torch_dynamo_mlp.onnx.data"):
        shutil.copy(FIXTURES / name, models / name)
    recipe = recipe_over(tmp_path, digits_npz["train"])
    recipe.write_text(
        recipe.read_text().replace(
            (FIXTURES / "skl_mlp.onnx").as_posix(), (models / "torch_dynamo_mlp.onnx").as_posix()
        )
    )
    refused_output(
        tmp_path,
        capsys,
        recipe,
        models / "torch_dynamo_mlp.onnx.data",
        "torch_dynamo_mlp.onnx.data",
        "writing there would replace it",
    )


def test_output_as_a_hard_link_or_symlink_to_an_input(tmp_path, digits_npz, capsys):
    train = tmp_path / "train.npz"
    shutil.copy(digits_npz["train"], train)
    os.link(train, tmp_path / "hard.onnx")
    os.symlink(train, tmp_path / "soft.onnx")
    recipe = recipe_over(tmp_path, train)
    refused_output(tmp_path, capsys, recipe, tmp_path / "hard.onnx", "train.npz")
    refused_output(tmp_path, capsys, recipe, tmp_path / "soft.onnx", "train.npz")
    assert (tmp_path / "soft.onnx").is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_output_onto_a_special_file(tmp_path, digits_npz, capsys, kind):
    if kind == "fifo":
        target = tmp_path / "z.onnx"
        os.mkfifo(target)
        expected = "is a FIFO"
    else:
        target = tmp_path / "null-link.onnx"  # -o /dev/null as root would replace the system's /dev/null
        os.symlink("/dev/null", target)
        expected = "is a character device"
    fails(
        ["build", str(recipe_over(tmp_path, digits_npz["train"])), "-o", str(target), "--quiet"],
        capsys,
        expected,
        "writes regular files only",
    )
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fails(
        ["build", str(recipe_over(tmp_path, digits_npz["train"])), "-o", "/dev/null", "--quiet"],
        capsys,
        "/dev/null is a character device",
    )


def test_report_onto_an_existing_file(tmp_path, built_z, digits_npz, capsys):
    existing = tmp_path / "report"
    existing.write_text("keep me")
    fails(
        ["evaluate", str(built_z), str(digits_npz["test"]), "--report", str(existing)],
        capsys,
        "is an existing file, not a folder",
    )
    assert existing.read_text() == "keep me"


def test_report_into_an_uncreatable_folder(tmp_path, built_z, digits_npz, capsys):
    (tmp_path / "file").write_text("")
    fails(
        ["evaluate", str(built_z), str(digits_npz["test"]), "--report", str(tmp_path / "file" / "sub")],
        capsys,
        "cannot be created",
    )
    fails(
        ["evaluate", str(built_z), str(digits_npz["test"]), "--report", "/proc/onnxmerge-report"],
        capsys,
        "cannot be created",
    )


def test_report_files_never_replace_the_test_images(tmp_path, built_z, digits, capsys):
    data = image_folder(tmp_path / "data", digits)
    os.rename(data / "0" / "0.png", data / "0" / "confusion.png")
    before = digest(data / "0" / "confusion.png")
    fails(["evaluate", str(built_z), str(data), "--report", str(data / "0")], capsys, "confusion.png", "--report")
    assert digest(data / "0" / "confusion.png") == before


def test_a_fifo_named_like_an_image_in_a_class_folder(tmp_path, digits, capsys):
    data = image_folder(tmp_path / "data", digits)
    os.mkfifo(data / "1" / "x.png")
    fails(
        ["build", str(recipe_over(tmp_path, data)), "-o", str(tmp_path / "z.onnx"), "--quiet", "--no-cache"],
        capsys,
        "x.png is a FIFO (named pipe), not a regular file",
    )


def test_predict_on_a_fifo(tmp_path, built_z, capsys):
    os.mkfifo(tmp_path / "photo.jpg")
    fails(["predict", str(built_z), str(tmp_path / "photo.jpg")], capsys, "photo.jpg is a FIFO")


@pytest.mark.parametrize("what", ["model", "recipe", "npz"])
def test_fifos_and_devices_as_inputs(tmp_path, digits_npz, capsys, what):
    fifo = tmp_path / f"in.{ {'model': 'onnx', 'recipe': 'toml', 'npz': 'npz'}[what] }"
    os.mkfifo(fifo)
    if what == "model":
        fails(["inspect", str(fifo)], capsys, "is a FIFO")
        fails(["inspect", "/dev/zero"], capsys, "/dev/zero is a character device")
    elif what == "recipe":
        fails(["build", str(fifo), "-o", str(tmp_path / "z.onnx")], capsys, "recipe", "is a FIFO")
    else:
        fails(
            ["build", str(recipe_over(tmp_path, fifo)), "-o", str(tmp_path / "z.onnx"), "--quiet"], capsys, "is a FIFO"
        )


def test_a_3000_deep_nested_recipe(tmp_path, capsys):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    fails(["build", str(path), "-o", str(tmp_path / "z.onnx")], capsys, "nests arrays or tables too deeply")


def edited_z(tmp_path, built_z, edit):
    model = onnx.load(str(built_z))
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return path


def set_labels(value):
    def edit(model):
        for prop in model.metadata_props:
            if prop.key == "onnxmerge.labels":
                prop.value = value

    return edit


@pytest.mark.parametrize("value", ["not json [", "42", '{"a": 1}', "[]", "[1, 2]"])
def test_z_whose_label_metadata_is_malformed(tmp_path, built_z, digit_png, capsys, value):
    fails(
        ["predict", str(edited_z(tmp_path, built_z, set_labels(value))), str(digit_png)],
        capsys,
        "malformed onnxmerge.labels metadata",
    )


def test_z_whose_input_is_rank_3(tmp_path, built_z, digit_png, capsys):
    def rank3(model):
        del model.graph.input[0].type.tensor_type.shape.dim[3]

    fails(["predict", str(edited_z(tmp_path, built_z, rank3)), str(digit_png)], capsys, "edited.onnx")


def test_an_image_pool_streams_into_one_uint8_array(tmp_path, digits):
    """Decoding writes each image into its row: the peak is the pool's pixels, not twice them."""
    import tracemalloc

    from onnxmerge.files.images import load_unlabeled
    from onnxmerge.graph.preprocess import ImageInput

    x, _ = digits
    for i in range(200):
        Image.fromarray(np.repeat(x[i], 8, axis=0).repeat(8, axis=1)[..., 0]).convert("RGB").save(tmp_path / f"{i}.png")
    tracemalloc.start()
    pool = load_unlabeled(tmp_path, ImageInput(64, 64, 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert pool.x.dtype == np.uint8 and pool.x.shape == (200, 64, 64, 3)
    assert peak < 1.25 * pool.x.nbytes, (peak, pool.x.nbytes)
