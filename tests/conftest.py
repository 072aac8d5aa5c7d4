"""Shared fixtures: real ONNX models from real exporters (tests/fixtures/generate.py) and sklearn digits."""

from __future__ import annotations

import contextlib
import io
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

FIXTURES = Path(__file__).parent / "fixtures" / "models"
MANIFEST = {entry["file"]: entry for entry in json.loads((FIXTURES / "manifest.json").read_text())}


def fixture_entry(name: str) -> dict:
    """The generator's record of one fixture: exporter, preprocessing, labels, true feature tensor."""
    return MANIFEST[name]


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory):
    """`onnxmerge build` caches features in ~/.cache by default: never in a test; a temporary folder instead."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXMERGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "feature-cache"))
        yield


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as raw uint8 images [N, 8, 8, 1] (0..16 scaled to 0..255) and string labels."""
    data = load_digits()
    x = np.round(data.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    return x, data.target.astype(str)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits) -> dict[str, Path]:
    """A train and a test .npz of digits (fixed split), as users pass them in recipes."""
    x, y = digits
    order = np.random.default_rng(42).permutation(len(x))
    folder = tmp_path_factory.mktemp("digits")
    paths = {}
    for name, idx in (("train", order[:1000]), ("test", order[1000:])):
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], x=x[idx], y=y[idx])
    return paths


def source_toml(name: str, fixture: str, **overrides) -> str:
    """A [[sources]] table for a fixture, with the preprocessing its generator recorded."""
    entry = fixture_entry(fixture)
    pre = {"scale": entry["scale"], "mean": entry["mean"], "std": entry["std"]}
    if entry["layout"] == "flat":
        pre.update(height=entry["height"], width=entry["width"], channels=entry["channels"])
    pre.update(overrides)
    lines = ["[[sources]]", f'name = "{name}"', f'model = "{(FIXTURES / fixture).as_posix()}"', "[sources.preprocess]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in pre.items()]
    return "\n".join(lines) + "\n"


def write_recipe(
    folder: Path,
    sources: list[tuple[str, str]],
    train: Path | str,
    height: int = 8,
    width: int = 8,
    channels: int = 1,
    extra: str = "",
) -> Path:
    """A recipe over fixtures: ``sources`` is [(namespace, fixture file)]."""
    text = textwrap.dedent(f"""\
        [input]
        height = {height}
        width = {width}
        channels = {channels}

        """)
    text += "\n".join(source_toml(n, f) for n, f in sources)
    text += f'\n[head]\nmode = "fit"\ntrain = "{Path(train).as_posix()}"\n{extra}'
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def built_z(tmp_path_factory, digits_npz) -> Path:
    """A Z built by the CLI from two fixtures on the digits train split (read it, never write it)."""
    from onnxmerge.cli import main

    folder = tmp_path_factory.mktemp("built-z")
    recipe = write_recipe(folder, [("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx")], digits_npz["train"])
    assert main(["build", str(recipe), "-o", str(folder / "z.onnx"), "--quiet", "--no-cache"]) == 0
    return folder / "z.onnx"


@pytest.fixture(scope="session")
def digit_png(tmp_path_factory, digits) -> Path:
    """One digits image as an 8x8 grey PNG."""
    from PIL import Image

    path = tmp_path_factory.mktemp("png") / "digit.png"
    Image.fromarray(digits[0][0][..., 0]).save(path)
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """``onnxmerge demo`` run once per session, in a temporary folder with its default ``--out demo-output`` (as
    the README's Quick start runs it): ``out`` what it printed, ``built`` the four fitted Mergers (fit1, fit2,
    teach1, teach2), ``rows`` the table, ``folder`` where it wrote. tests/test_demo.py and tests/test_docs.py
    both read it, so the suite runs the demo once."""
    from onnxmerge.demo import run_demo

    folder = tmp_path_factory.mktemp("demo")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            result = run_demo(Path("demo-output"), quiet=True)
    finally:
        os.chdir(cwd)
    return {**result, "out": out.getvalue(), "folder": folder / "demo-output"}
