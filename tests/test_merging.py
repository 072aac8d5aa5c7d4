"""Weight-space merging: sources that share an architecture become one backbone inside Z.

Fixtures: tests/fixtures/merge/ (small CNNs on scikit-learn's digits, generate_merge.py): a base, two
fine-tunings of it (digits 0-4, 5-9), the same architecture from other seeds, a dynamo export, a wider and a
residual variant. Images here are digits the fixtures never trained on.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES
from pasted import assert_pasted
from sklearn.datasets import load_digits

from onnxmerge.cli import main
from onnxmerge.config import MergeSpec
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import weightmerge
from onnxmerge.graph.architecture import compare_models
from onnxmerge.graph.inspect import find_head
from onnxmerge.graph.permute import permuted, unit_spaces
from onnxmerge.graph.preprocess import ImageInput, Preprocess
from onnxmerge.merger import Merger
from onnxmerge.recipe import parse_recipe
from onnxmerge.stages.sources import Source

MERGE = FIXTURES.parent / "merge"
PRE = Preprocess(1 / 255, (0.3,), (0.4,))  # the fixtures' (pixels/16 - 0.3) / 0.4 on pixels scaled to 0-255


def _digits():
    d = load_digits()
    x = np.round(d.images[1000:] * 255 / 16).astype(np.uint8)[..., None]
    return x, d.target[1000:].astype(str)


X, Y = _digits()
TRAIN, POOL, TEST = slice(0, 200), slice(200, 320), slice(320, 520)


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MERGE / f"{name}.onnx"))


def _compare(*names: str):
    models = [_load(n) for n in names]
    return compare_models(models, [find_head(m).feature for m in models], list(names))


def _merger(a: str, b: str, spec: MergeSpec, mode: str = "fit") -> Merger:
    sources = [Source("low", MERGE / f"{a}.onnx", PRE), Source("high", MERGE / f"{b}.onnx", PRE)]
    z = Merger(ImageInput(8, 8, 1), sources, mode=mode, merge=spec, quiet=True)
    if mode == "teachers":
        return z.fit(unlabeled=X[POOL])
    return z.fit(X[TRAIN], Y[TRAIN], unlabeled=X[POOL])


# -- detection -----------------------------------------------------------------------------------------
def test_fine_tunings_of_one_base_share_the_architecture():
    found = _compare("base", "low", "high")
    assert found.same and found.weighted_nodes == 4 and len(found.slots) == 8
    assert found.line() == "same architecture: 4 weighted nodes match (10 backbone nodes, 8 weight tensors)"


def test_names_and_exporter_do_not_matter():
    """The dynamo exporter names every node and tensor differently and writes opset 18 (ReduceMean's axes
    as an input, not an attribute): still the same layers."""
    dynamo = _load("high_dynamo")
    assert {n.name for n in dynamo.graph.node}.isdisjoint({n.name for n in _load("low").graph.node})
    assert _compare("low", "high_dynamo").same


@pytest.mark.parametrize(
    "other, words",
    [
        ("wide", "node 2 of the backbone differs: low Conv with weights [[16, 8, 3, 3], [16]] vs Conv with "
         "weights [[24, 8, 3, 3], [24]] in wide"),
        ("residual", "node 7 of the backbone differs: low ReduceMean vs Add in residual"),
    ],
)  # fmt: skip
def test_other_architectures_are_named_with_the_first_difference(other, words):
    found = _compare("low", other)
    assert not found.same and found.difference == words


def test_inspect_two_models(capsys, monkeypatch):
    assert main(["inspect", str(MERGE / "low.onnx"), str(MERGE / "high_dynamo.onnx")]) == 0
    assert capsys.readouterr().out.startswith("same architecture: 4 weighted nodes match")
    monkeypatch.chdir(FIXTURES.parent.parent.parent)  # docs/merging.md runs them from the clone's root
    printed = ""
    for other in ("high_dynamo", "wide"):
        command = ["inspect", "tests/fixtures/merge/low.onnx", f"tests/fixtures/merge/{other}.onnx"]
        assert main(command) == 0
        printed += f"$ onnxmerge {' '.join(command)}\n{capsys.readouterr().out}"
    assert_pasted("inspect-merge", printed)
    assert main(["inspect", str(MERGE / "low.onnx"), str(MERGE / "wide.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["same_architecture"] is False and "wide.onnx" in info["difference"]


# -- the arithmetic ------------------------------------------------------------------------------------
def test_task_arithmetic_and_ties_follow_their_definitions():
    base = np.zeros(5, np.float32)
    a = np.array([1.0, -2.0, 0.1, 3.0, 0.0], np.float32)
    b = np.array([1.0, 1.0, -0.1, -1.0, 0.2], np.float32)
    np.testing.assert_allclose(weightmerge.task_arithmetic(base, [a, b], 0.5), (a + b) / 2)
    # density 0.6 keeps 3 of 5 per task: a -> [1, -2, 0, 3, 0], b -> [1, 1, 0, -1, 0]; elected signs of the
    # sums [2, -1, 0, 2, 0]: +, -, 0, +, 0; the mean of the values that agree (1 where both say 1, not 2)
    np.testing.assert_allclose(weightmerge.ties(base, [a, b], 1.0, density=0.6), [1.0, -2.0, 0.0, 3.0, 0.0])


@pytest.mark.parametrize("kind", ["gemm", "gemm_t", "conv1x1"])
def test_regmean_is_the_least_squares_merge(kind):
    """Without regularisation (alpha = 1) RegMean minimises sum_i |X_i W - X_i W_i|^2 (every layout)."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((50, 6)) for _ in range(2)]
    ws = [rng.standard_normal((6, 4)) for _ in range(2)]
    layout = {"gemm": lambda w: w, "gemm_t": lambda w: w.T, "conv1x1": lambda w: w.T[:, :, None, None]}[kind]
    merged = weightmerge.regmean([layout(w) for w in ws], [x.T @ x for x in xs], kind, alpha=1.0)
    expected = np.linalg.lstsq(np.vstack(xs), np.vstack([x @ w for x, w in zip(xs, ws)]), rcond=None)[0]
    np.testing.assert_allclose(weightmerge.as_in_out(merged, kind), expected, atol=1e-10)


def test_permutation_keeps_the_function():
    """Reordering every unit space of a chain (its head included) leaves the model's outputs unchanged."""
    model = _load("high_seed2")
    spaces = unit_spaces(model, find_head(model).feature, "high_seed2")
    assert [s.size for s in spaces] == [8, 16, 16, 16]
    names = {n for s in spaces for n, _ in s.members}
    rng = np.random.default_rng(0)
    moved = weightmerge.with_weights(
        model, permuted(weightmerge.read_arrays(model, names), spaces, [rng.permutation(s.size) for s in spaces])
    )
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    outputs = [ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0] for m in (model, moved)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5 * max(1, np.abs(outputs[0]).max()))


def test_alignment_refuses_a_residual_network():
    model = _load("residual")
    with pytest.raises(OnnxMergeError, match=r"cannot be aligned: Add node .* joins two branches; alignment needs"):
        unit_spaces(model, find_head(model).feature, "source 'residual'")


# -- builds --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_base():
    return _merger("low", "high", MergeSpec(mode="weights", base=MERGE / "base.onnx"))


def test_merged_z_runs_one_backbone_and_keeps_the_contract(with_base):
    z = with_base
    model = z.model_
    assert [i.name for i in model.graph.input] == ["image"]
    assert {"label", "probabilities"} <= {o.name for o in model.graph.output}
    merge = z.report_["merge"]
    assert merge["choice"] == "weights" and merge["method"].split()[0] in ("task_arithmetic", "ties")
    assert set(merge["accuracy"]) == {"concat", "weights"} and set(merge["seconds_per_batch"]) == {"concat", "weights"}
    assert merge["line"].startswith("kept the merged Z (mode weights): merged Z held-out accuracy")
    # every backbone node of the second source is computed by the first's (10 backbone nodes)
    assert z.share_.per_source.get("high", 0) >= 10
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    stored = json.loads({p.key: p.value for p in model.metadata_props}["onnxmerge.merge"])
    assert stored == {"method": merge["method"], "sources": ["low", "high"]}
    assert model.graph.output[2].type.tensor_type.shape.dim[1].dim_value == 16  # the merged features, once
    assert np.mean(z.predict(X[TEST]) == Y[TEST]) > 0.5


def test_merged_backbone_equals_the_numpy_merge_of_the_initializers(with_base):
    """Parity: Z's features equal the merged model, its weights computed here in numpy from the files."""
    z = with_base
    method, scale = z.report_["merge"]["method"].split(" x")
    models = {n: _load(n) for n in ("base", "low", "high")}
    found = compare_models(list(models.values()), [find_head(m).feature for m in models.values()], list(models))
    arrays = {
        n: weightmerge.read_arrays(m, {s.names[k] for s in found.slots}) for k, (n, m) in enumerate(models.items())
    }
    merged = {}
    for slot in found.slots:
        base, tensors = arrays["base"][slot.names[0]], [arrays["low"][slot.names[1]], arrays["high"][slot.names[2]]]
        if method == "ties":
            merged[slot.names[1]] = weightmerge.ties(base, tensors, float(scale))
        else:
            merged[slot.names[1]] = base + float(scale) * ((tensors[0] - base) + (tensors[1] - base))
    reference = weightmerge.with_weights(models["low"], merged)
    feature = find_head(reference).feature
    exposed = onnx.ModelProto()
    exposed.CopyFrom(reference)
    del exposed.graph.output[:]
    exposed.graph.output.append(onnx.ValueInfoProto(name=feature))
    inputs = z.source_outputs(X[TEST][:32], ["low/input"])["low/input"]
    expected = ort.InferenceSession(exposed.SerializeToString()).run(None, {"input": inputs})[0]
    actual = z.source_outputs(X[TEST][:32], ["low/feature", "high/feature"])
    for name in ("low/feature", "high/feature"):
        assert np.abs(actual[name] - expected).max() <= 1e-5 * max(1, np.abs(expected).max())
    steps = [c.step for c in z.parity_ if c.ok]
    assert any(s.startswith("merged backbone weights vs") for s in steps)
    assert any(s.startswith("low features vs merged model") for s in steps)


@pytest.mark.parametrize("method", ["regmean", "align"])
def test_merges_without_a_base(method):
    """RegMean on the pool's inner products (teachers mode: each source's own head on the merged features);
    alignment for the different-seed pair (fit mode)."""
    pair = ("low", "high") if method == "regmean" else ("low_seed1", "high_seed2")
    mode = "teachers" if method == "regmean" else "fit"
    z = _merger(*pair, MergeSpec(mode="weights", method=method), mode=mode)
    merge = z.report_["merge"]
    assert merge["method"] == "regmean" if method == "regmean" else merge["method"].startswith("aligned average")
    if method == "align":  # REPAIR's statistics reset is what makes the different-seed merge better than chance
        assert merge["candidates"]["aligned average + REPAIR"] > merge["candidates"]["aligned average"] + 0.1
    assert all(c.ok for c in z.parity_) and merge["weights_vs_numpy"] == 0.0
    assert z.predict(X[TEST][:5]).shape == (5,)


def test_auto_keeps_the_concatenation_when_merging_loses_more_than_the_margin():
    z = _merger("low_seed1", "high_seed2", MergeSpec(mode="auto", method="average", margin=0.0))
    merge = z.report_["merge"]
    assert merge["accuracy"]["weights"] < merge["accuracy"]["concat"]
    assert merge["choice"] == "concat" and merge["line"].startswith("kept the concatenated Z (mode auto")
    assert z.share_.per_source.get("high", 0) < 10  # two backbones


# -- refusals --------------------------------------------------------------------------------------------
def test_weights_mode_refuses_other_architectures():
    with pytest.raises(OnnxMergeError, match=r"cannot be merged in weight space \(node 2 of the backbone differs"):
        _merger("low", "wide", MergeSpec(mode="weights"))


@pytest.mark.parametrize(
    "table, words",
    [
        ({"mode": "weight"}, "merge.mode 'weight' is unknown; did you mean 'weights'?"),
        ({"mode": "weights", "method": "ties"}, 'merge.method "ties" needs merge.base'),
        ({"mode": "weights", "basis": "b.onnx"}, "unknown key 'basis' in merge; did you mean 'base'?"),
    ],
)
def test_recipe_merge_table_is_checked(tmp_path, table, words):
    data = {
        "input": {"height": 8, "width": 8, "channels": 1},
        "sources": [{"name": "a", "model": "a.onnx", "preprocess": {"scale": 1, "mean": [0], "std": [1]}}],
        "head": {"train": "t.npz"},
        "merge": table,
    }
    with pytest.raises(OnnxMergeError) as err:
        parse_recipe(data, tmp_path, tmp_path / "r.toml")
    assert words in str(err.value)


def test_recipe_merge_table_reaches_the_merger(tmp_path):
    data = {
        "input": {"height": 8, "width": 8, "channels": 1},
        "sources": [{"name": "a", "model": "a.onnx", "preprocess": {"scale": 1, "mean": [0], "std": [1]}}],
        "head": {"train": "t.npz"},
        "merge": {"mode": "auto", "base": "models/base.onnx", "margin": 0.05},
    }
    spec = parse_recipe(data, tmp_path, tmp_path / "r.toml").merger.merge
    assert spec == MergeSpec(mode="auto", base=tmp_path / "models" / "base.onnx", method="auto", margin=0.05)
