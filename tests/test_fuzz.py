"""Property-based fuzzing: recipe parsing and mutated real models never fail with anything but OnnxMergeError.

CI runs a small budget (seconds). A longer local run: ``ONNXMERGE_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
from conftest import FIXTURES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from onnxmerge.errors import OnnxMergeError
from onnxmerge.files.models import load_model
from onnxmerge.graph.inspect import describe
from onnxmerge.graph.preprocess import ImageInput, Preprocess
from onnxmerge.merger import Merger, Source
from onnxmerge.recipe import parse_recipe

EXAMPLES = int(os.environ.get("ONNXMERGE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

KEYS = [
    "input",
    "sources",
    "head",
    "height",
    "width",
    "channels",
    "name",
    "model",
    "feature",
    "head_output",
    "labels",
    "teacher",
    "preprocess",
    "layout",
    "scale",
    "mean",
    "std",
    "mode",
    "train",
    "unlabeled",
    "C",
    "modle",
    "heigth",
    "",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["fit", "teachers", "NCHW", "NHWC", "auto", "a.onnx"]),
)
values = st.recursive(
    scalars.filter(lambda v: v is not None),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
    max_leaves=25,
)


def valid_recipe() -> dict:
    return {
        "input": {"height": 8, "width": 8, "channels": 1},
        "sources": [{"name": "a", "model": "a.onnx", "preprocess": {"scale": 1.0, "mean": [0.0], "std": [1.0]}}],
        "head": {"mode": "fit", "train": "t.npz"},
    }


def mutate(recipe: dict, path: list, value):
    node = recipe
    for key in path[:-1]:
        node = node[key] if not isinstance(node, list) else node[0]
    if isinstance(node, dict):
        node[path[-1]] = value


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
def test_random_recipes_fail_cleanly(data):
    try:
        parse_recipe(data, Path("/nonexistent"), Path("/nonexistent/r.toml"))
    except OnnxMergeError:
        pass


@FUZZ
@given(
    st.sampled_from(
        [
            ["input", "height"],
            ["input", "channels"],
            ["sources", 0, "name"],
            ["sources", 0, "model"],
            ["sources", 0, "preprocess", "mean"],
            ["sources", 0, "preprocess", "std"],
            ["sources", 0, "preprocess", "scale"],
            ["sources", 0, "preprocess", "layout"],
            ["head", "mode"],
            ["head", "train"],
            ["sources", 0, "labels"],
            ["sources", 0, "teacher"],
        ]
    ),
    values,
)
def test_one_bad_value_in_a_valid_recipe_fails_cleanly(path, value):
    recipe = valid_recipe()
    mutate(recipe, path, value)
    try:
        parse_recipe(recipe, Path("/nonexistent"), Path("/nonexistent/r.toml"))
    except OnnxMergeError:
        pass


SOURCES = ["torch_legacy_cnn.onnx", "skl_mlp.onnx", "jax_cnn.onnx", "skl_logreg.onnx"]


def flip_bits(data: bytes, rng: random.Random, count: int) -> bytes:
    buf = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


@FUZZ
@given(st.sampled_from(SOURCES), st.integers(0, 2**32 - 1), st.sampled_from(["flip", "cut", "shuffle"]))
# what the fuzzing found (both fixed): an element type 65 crashed inspect; a LinearClassifier whose
# coefficients no longer fit failed inside onnxruntime's run
@example(name="skl_mlp.onnx", seed=316398, how="flip")
@example(name="skl_logreg.onnx", seed=30964779, how="flip")
def test_mutated_models_fail_cleanly_and_write_nothing_else(tmp_path_factory, name, seed, how):
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("mut")
    original = (FIXTURES / name).read_bytes()
    if how == "flip":
        data = flip_bits(original, rng, rng.randint(1, 8))
    elif how == "cut":
        data = original[: rng.randrange(len(original))]
    else:
        import onnx

        model = onnx.load_from_string(original)
        nodes = list(model.graph.node)
        rng.shuffle(nodes)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        data = model.SerializeToString()
    path = folder / "m.onnx"
    path.write_bytes(data)
    x = np.random.default_rng(seed).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    y = np.array([str(i % 3) for i in range(12)])
    try:
        describe(path, load_model(path))
        Merger(
            ImageInput(8, 8, 1),
            [Source("m", path, Preprocess(1 / 255, (0.3,), (0.4,), height=8, width=8, channels=1))],
            quiet=True,
        ).fit(x, y)
    except OnnxMergeError:
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx"]  # nothing written beside the model
    assert path.read_bytes() == data  # the input is never modified
