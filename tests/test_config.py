"""One configuration (onnxmerge.config.Config): the API, the recipe and the command line make the same one,
a recipe holds every parameter of the API, and each check says the same sentence wherever the value came from."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import FIXTURES

from onnxmerge import ImageInput, Merger, OnnxMergeError, Preprocess, Source
from onnxmerge.config import Config, MergeSpec
from onnxmerge.recipe import parse_recipe, recipe_data


def sources(**changes) -> list[Source]:
    low = Preprocess(1 / 255, (0.3,), (0.4,), 8, 8, 1, "NCHW")
    return [
        Source("a", FIXTURES / "torch_legacy_cnn.onnx", dataclasses.replace(low, **changes), labels=["0", "1"]),
        Source("b", FIXTURES / "skl_mlp.onnx", Preprocess(16 / 255, 0.0, 1.0), feature="x", teacher=False),
    ]


def api_config(tmp_path, **params) -> Config:
    return Merger(ImageInput(8, 8, 1), sources(), **params).config()


def merger(**params) -> Merger:
    return Merger(ImageInput(8, 8, 1), sources(), **params)


CASES = [
    {},
    {
        "mode": "teachers",
        "C": 0.5,
        "class_weight": None,
        "router_C": 0.3,
        "batch_size": 64,
        "engine": "dask",
        "address": "tcp://127.0.0.1:8786",
    },
    {"C": 2.0, "class_weight": {"0": 2.0, "1": 1.0}, "engine": "dask", "workers": 3, "cache_dir": "features"},
    {"new_classes": ["coat"], "merge": MergeSpec("auto", FIXTURES / "skl_mlp.onnx", "ties", 0.05), "unknown": 0.9},
]


def test_the_cases_set_every_parameter_a_recipe_holds():
    """quiet is how a run prints, not what it builds: every other parameter is off its default in a case."""
    holds = {f.name for f in dataclasses.fields(Config)} - {"input", "sources", "quiet"}
    assert holds == {key for case in CASES for key in case}


@pytest.mark.parametrize("params", CASES)
def test_api_to_recipe_to_api_is_the_same_configuration(tmp_path, params):
    if "cache_dir" in params:
        params = dict(params, cache_dir=tmp_path / params["cache_dir"])
    config = api_config(tmp_path, **params)
    data = recipe_data(config, tmp_path, train=[tmp_path / "train.npz"])
    back = parse_recipe(data, tmp_path, tmp_path / "recipe.toml").config
    assert back == config
    assert Merger.from_config(back).config() == config


def test_the_command_line_options_win_over_the_recipe(tmp_path):
    data = recipe_data(api_config(tmp_path), tmp_path, train=[tmp_path / "t.npz"])
    assert data["engine"]["name"] == "local"
    config = parse_recipe(data, tmp_path, tmp_path / "r.toml", address="tcp://10.0.0.1:8786").config
    assert (config.engine, config.address) == ("dask", "tcp://10.0.0.1:8786")  # --address alone means dask
    assert parse_recipe(data, tmp_path, tmp_path / "r.toml", cache_dir="c").config.cache_dir.name == "c"


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: Merger(ImageInput(8, 8, 1), sources(std=(0.0,))).config(), "source 'a' preprocess.std contains 0"),
        (lambda: ImageInput(8, 8, 2), "input.channels must be 1 or 3, got 2"),
        (lambda: ImageInput(0, 8, 1), "input.height must be between 1 and 8192, got 0"),
        (lambda: Merger(ImageInput(8, 8, 1), sources(), mode="fitt").config(), "did you mean 'fit'"),
        (lambda: Merger(ImageInput(8, 8, 1), sources(), C=-1).config(), 'head.C must be a positive number or "auto"'),
        (
            lambda: Merger(ImageInput(8, 8, 1), sources(), workers=2, engine="local").config(),
            'need engine.name = "dask"',
        ),
        (lambda: Merger(ImageInput(8, 8, 1), sources(), batch_size=0).config(), "engine.batch_size must be a positive"),
        (lambda: Merger(ImageInput(8, 8, 1), sources()).fit(), 'mode "fit" needs head.train'),
    ],
)
def test_each_check_is_one_sentence_from_the_api(make, expected):
    with pytest.raises(OnnxMergeError, match=re.escape(expected)) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_the_recipe_refuses_with_the_same_sentences(tmp_path):
    data = recipe_data(api_config(tmp_path), tmp_path)
    data["sources"][0]["preprocess"]["std"] = [0.0]
    with pytest.raises(OnnxMergeError, match="source 'a' preprocess.std contains 0"):
        parse_recipe(data, tmp_path, tmp_path / "r.toml")
    data = recipe_data(api_config(tmp_path), tmp_path)
    with pytest.raises(OnnxMergeError, match='mode "fit" needs head.train'):
        parse_recipe(data, tmp_path, tmp_path / "r.toml")
