"""Building Z from real exporters' models: parity, the contract's interface, stage 2 new classes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, fixture_entry, write_recipe

from onnxmerge.cli import main
from onnxmerge.recipe import load_recipe

PAIRS = [
    ("torch_legacy_cnn.onnx", "torch_dynamo_mlp.onnx"),  # opset 13 + 18 (converted), external data, resize 8->16
    ("skl_mlp.onnx", "jax_cnn.onnx"),  # flat MatMul+Add+ZipMap + NHWC jax2onnx opset 21
    ("torch_legacy_cnn.onnx", "torch_legacy_cnn_b.onnx"),  # one architecture, identical names, other weights
    ("skl_logreg.onnx", "torch_dynamo_mlp.onnx"),  # linear model on raw pixels: the input is the feature
    ("torch_legacy_cnn.onnx", "torch_legacy_cnn.onnx"),  # the same file twice
]


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_npz):
    """Each pair fitted once through the recipe, keyed by the pair."""
    results = {}
    for pair in PAIRS:
        folder = tmp_path_factory.mktemp("build")
        recipe = load_recipe(write_recipe(folder, [("a", pair[0]), ("b", pair[1])], digits_npz["train"]), quiet=True)
        results[pair] = recipe.merger.fit(recipe.train)
    return results


@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_parity_holds_for_every_source(built, pair):
    merger = built[pair]
    checks = {c.step: c for c in merger.parity_}
    assert len(checks) == 5  # 2 x (preprocessing, features) + probabilities
    for check in checks.values():
        # the contract's bound: max |Z - source| <= 1e-5 * max(1, max |source|); 1e-4 only for a named opset step
        assert check.max_abs_error <= check.tolerance * check.scale, check.line()
        assert check.tolerance == 1e-5 or "opset" in check.why, check.line()
    print("\n".join(c.line() for c in merger.parity_))


@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_z_runs_in_plain_onnxruntime_and_returns_class_names(built, pair, digits_npz, tmp_path):
    merger = built[pair]
    path = merger.save(tmp_path / "z.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain for o in model.graph.node} <= {""}, "Z must use only default-domain ops"
    props = {p.key: p.value for p in model.metadata_props}
    labels = json.loads(props["onnxmerge.labels"])
    assert labels == [str(i) for i in range(10)]
    sources = json.loads(props["onnxmerge.sources"])
    assert [s["name"] for s in sources] == ["a", "b"] and all(len(s["sha256"]) == 64 for s in sources)
    assert [s["feature"] for s in sources] == [fixture_entry(p)["feature"] for p in pair]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [8, 8, 1] and not isinstance(inp.shape[0], int)
    test = np.load(digits_npz["test"])
    for batch in (1, 7):
        label, probs = session.run(["label", "probabilities"], {inp.name: test["x"][:batch]})
        assert label.shape == (batch,) and label.dtype == object and set(label) <= set(labels)
        assert probs.shape == (batch, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert list(label) == [labels[i] for i in probs.argmax(axis=1)]
    accuracy = np.mean(merger.predict(test["x"]) == test["y"])
    assert accuracy > 0.9, accuracy


def test_features_width_is_the_sum_of_the_sources(built):
    merger = built[PAIRS[0]]
    dims = [fixture_entry(f)["feature_dim"] for f in PAIRS[0]]
    assert merger.report_["feature_dim"] == sum(dims)


def test_stage2_label_no_source_knows_becomes_a_new_class(tmp_path, digits):
    """Sources know 0-4 and 5-8 only (labels given in the recipe); '9' from 5 images becomes a class."""
    x, y = digits
    rng = np.random.default_rng(0)
    old = np.flatnonzero(y != "9")[:600]
    new = rng.choice(np.flatnonzero(y == "9"), 5, replace=False)
    train = tmp_path / "train.npz"
    np.savez(train, x=x[np.concatenate([old, new])], y=y[np.concatenate([old, new])])
    path = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx")], train)
    recipe = load_recipe(path, quiet=True)
    a, b = recipe.merger.sources  # as if skl_mlp had never seen a 9 (a Source is frozen)
    recipe.merger.sources = [a, dataclasses.replace(b, labels=[str(i) for i in range(9)])]
    merger = recipe.merger.fit(recipe.train)
    assert merger.report_["new_classes"] == ["9"]
    held_out = np.setdiff1d(np.flatnonzero(y == "9"), new)
    recall = np.mean(merger.predict(x[held_out]) == "9")
    assert recall >= 0.5, recall


def test_cli_build_prints_parity_and_writes_z(tmp_path, digits_npz, capsys):
    recipe = write_recipe(
        tmp_path, [("legacy", "torch_legacy_cnn.onnx"), ("dynamo", "torch_dynamo_mlp.onnx")], digits_npz["train"]
    )
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "parity: legacy features vs source '/Relu_2_output_0'" in out
    assert "reconciled legacy: opset 13 -> 18" in out
    assert "FAILED" not in out and (tmp_path / "z.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert (FIXTURES / "torch_dynamo_mlp.onnx.data").is_file()
