"""Weight merging, continued: the statistics correction for every method (REPAIR, the BatchNorm reset), merging
the subset of sources that share an architecture, and AdaMerging's coefficients (task-wise, gradient-free).

Fixtures: tests/fixtures/merge/ (generate_merge.py; ``resbn_*``: a residual block with BatchNorm nodes kept)
and tests/fixtures/models/skl_mlp.onnx (a scikit-learn MLP: another architecture, another preprocessing).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES
from test_merging import MERGE, POOL, PRE, TEST, TRAIN, X, Y, _load

from onnxmerge.config import MergeSpec
from onnxmerge.graph import weightmerge
from onnxmerge.graph.architecture import backbone, compare_models
from onnxmerge.graph.inspect import describe_z, find_head
from onnxmerge.graph.preprocess import ImageInput, Preprocess
from onnxmerge.learn.adamerging import STEPS, coordinate_search, mean_entropy
from onnxmerge.merger import Merger
from onnxmerge.stages.sources import Source
from onnxmerge.summary import merge_lines, z_lines


def _build(names: list[str], spec: MergeSpec, mode: str = "fit", mlp: bool = False) -> Merger:
    sources = [Source(n, MERGE / f"{n}.onnx", PRE) for n in names]
    if mlp:
        sources.append(Source("mlp", FIXTURES / "skl_mlp.onnx", Preprocess(1 / 255, (0.0,), (1.0,))))
    z = Merger(ImageInput(8, 8, 1), sources, mode=mode, merge=spec, quiet=True)
    return z.fit(unlabeled=X[POOL]) if mode == "teachers" else z.fit(X[TRAIN], Y[TRAIN], unlabeled=X[POOL])


def _run(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    return ort.InferenceSession(exposed.SerializeToString()).run(None, {"input": x})[0]


def _stats(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.moveaxis(value, 1, -1).reshape(-1, value.shape[1]).astype(np.float64)
    return flat.mean(axis=0), flat.std(axis=0)


def _repaired_here(
    models: list[onnx.ModelProto], merged: onnx.ModelProto, x: np.ndarray, feature: str
) -> onnx.ModelProto:
    """REPAIR and the BatchNorm reset written again from their definition, on the file's node order (topological
    in an exported file): a Conv/Gemm with a bias gets each output channel's mean and deviation set to the
    sources' average; a BatchNormalization's running mean and variance become its input's on ``x``."""
    inits = {t.name: t for t in merged.graph.initializer}
    readers = {i: n.op_type for n in merged.graph.node for i in n.input}
    current = merged
    for k, node in enumerate(merged.graph.node):
        if feature in node.input:  # the backbone ends at the feature
            break
        arrays = {n: onnx.numpy_helper.to_array(inits[n]) for n in node.input if n in inits}
        value = _run(current, node.input[0] if node.op_type == "BatchNormalization" else node.output[0], x)
        mean, std = _stats(value)
        if node.op_type == "BatchNormalization":
            arrays = {node.input[3]: mean, node.input[4]: std**2}
        elif (
            node.op_type in ("Conv", "Gemm")
            and len(node.input) == 3
            and readers.get(node.output[0]) != "BatchNormalization"
        ):
            sources = [_stats(_run(m, m.graph.node[k].output[0], x)) for m in models]
            target_mean, target_std = np.mean([s[0] for s in sources], 0), np.mean([s[1] for s in sources], 0)
            alive = std > 1e-6 * target_std
            scale = np.where(alive, target_std / np.where(alive, std, 1), 1.0)
            weight, bias = arrays[node.input[1]], arrays[node.input[2]]
            shape = (-1,) + (1,) * (weight.ndim - 1)
            arrays = {
                node.input[1]: weight * scale.reshape(shape),
                node.input[2]: bias * scale + target_mean - mean * scale,
            }
        else:
            continue
        current = weightmerge.with_weights(current, arrays)
    return current


# -- the statistics correction -------------------------------------------------------------------------------
def test_correctable_layers_of_a_residual_network_with_batchnorm():
    models = [_load("resbn_low"), _load("resbn_high")]
    features = [find_head(m).feature for m in models]
    found = compare_models(models, features, ["resbn_low", "resbn_high"])
    layers = weightmerge.stat_layers([backbone(m, f, "m") for m, f in zip(models, features)], found.slots)
    assert [layer.kind for layer in layers] == ["affine", "batchnorm"] * 3 + ["affine"]


def test_corrected_average_equals_repair_recomputed_from_the_files():
    """Parity: the corrected backbone inside Z (the plain average, REPAIR through a residual Add, BatchNorm
    nodes reset) equals the average of the two files' initializers corrected again here on the same pool."""
    z = _build(["resbn_low", "resbn_high"], MergeSpec(mode="weights", method="average", repair=True))
    merge = z.report_["merge"]
    assert merge["method"] == "average + REPAIR" and merge["weights_vs_numpy"] == 0.0
    models = [_load("resbn_low"), _load("resbn_high")]
    arrays = [weightmerge.read_arrays(m, {t.name for t in m.graph.initializer}) for m in models]
    averaged = {n: (a + arrays[1][n]) / 2 for n, a in arrays[0].items() if not n.startswith("head")}
    pool = z.source_outputs(X[POOL], ["resbn_low/input"])["resbn_low/input"]
    feature = find_head(models[0]).feature
    reference = _repaired_here(models, weightmerge.with_weights(models[0], averaged), pool, feature)
    inputs = z.source_outputs(X[TEST][:64], ["resbn_low/input"])["resbn_low/input"]
    expected = _run(reference, feature, inputs)
    actual = z.source_outputs(X[TEST][:64], ["resbn_low/feature", "resbn_high/feature"])
    for value in actual.values():
        assert np.abs(value - expected).max() <= 1e-5 * max(1, np.abs(expected).max())
    steps = {c.step: c for c in z.parity_}
    assert steps["resbn_low, resbn_high corrected layer statistics on the pool vs their targets"].ok


def test_auto_scores_corrected_twins_and_adamerging(with_base_auto):
    merge = with_base_auto.report_["merge"]
    labels = list(merge["candidates"])
    assert {"task_arithmetic", "ties", "adamerging"} <= {label.split()[0] for label in labels}
    assert {label.split(" x")[0] for label in labels if label.endswith(" + REPAIR")} == {
        "task_arithmetic", "ties", "adamerging"
    }  # fmt: skip
    assert merge["method"] == max(merge["candidates"], key=merge["candidates"].get)
    assert any(note.startswith("AdaMerging: adamerging x") for note in merge["notes"])


@pytest.fixture(scope="module")
def with_base_auto():
    return _build(["low", "high"], MergeSpec(mode="weights", base=MERGE / "base.onnx"))


# -- AdaMerging --------------------------------------------------------------------------------------------------
def test_coordinate_search_and_entropy():
    found, evaluations = coordinate_search(0.3, 2, lambda c: (c[0] - 0.7) ** 2 + (c[1] - 0.1) ** 2)
    # the start, 2 rounds of 2 coordinates x 4 steps, less one: 0.1 - 0.1 and 0.1 - 0.2 both clip to 0
    assert found == (0.7, 0.1) and evaluations == 1 + 2 * 2 * len(STEPS) - 1
    assert mean_entropy(np.zeros((3, 4))) == pytest.approx(np.log(4))
    assert mean_entropy(np.eye(4)) == pytest.approx(0.0, abs=1e-9)


def test_adamerging_merges_with_one_coefficient_per_source():
    """Parity: Z's features equal base + c_low (low - base) + c_high (high - base), computed here in numpy."""
    z = _build(["low", "high"], MergeSpec(mode="weights", base=MERGE / "base.onnx", method="adamerging", repair=False))
    method = z.report_["merge"]["method"]
    assert method.startswith("adamerging x") and z.report_["merge"]["weights_vs_numpy"] == 0.0
    c_low, c_high = (float(c) for c in method.split(" x")[1].split("/"))
    models = {n: _load(n) for n in ("base", "low", "high")}
    names = {t.name for t in models["low"].graph.initializer}
    arrays = {n: weightmerge.read_arrays(m, names) for n, m in models.items()}
    merged = {
        n: arrays["base"][n]
        + c_low * (arrays["low"][n] - arrays["base"][n])
        + c_high * (arrays["high"][n] - arrays["base"][n])
        for n in names
        if n in arrays["base"] and not n.startswith("head")
    }
    reference = weightmerge.with_weights(models["low"], merged)
    inputs = z.source_outputs(X[TEST][:32], ["low/input"])["low/input"]
    expected = _run(reference, find_head(reference).feature, inputs)
    actual = z.source_outputs(X[TEST][:32], ["high/feature"])["high/feature"]
    assert np.abs(actual - expected).max() <= 1e-5 * max(1, np.abs(expected).max())


# -- a subset of the sources -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fit", "teachers"])
def test_the_sources_that_share_an_architecture_are_merged_the_others_concatenated(mode):
    z = _build(
        ["low", "high"], MergeSpec(mode="weights", base=MERGE / "base.onnx", method="task_arithmetic"), mode, True
    )
    merge = z.report_["merge"]
    assert merge["sources"] == ["low", "high"] and merge["concatenated"] == ["mlp"]
    assert z.share_.per_source.get("high", 0) >= 10
    assert all(c.ok for c in z.parity_) and any(c.step.startswith("mlp features vs source") for c in z.parity_)
    stored = json.loads({p.key: p.value for p in z.model_.metadata_props}["onnxmerge.merge"])
    assert stored == {"method": merge["method"], "sources": ["low", "high"]}
    lines = merge_lines(merge)
    assert "merge: concatenated (no other source shares their architecture): mlp" in lines
    assert f"backbone one, merged in weight space ({merge['method']}) for low, high" in z_lines(describe_z(z.model_))
    # the features: the merged backbone's once, then the MLP's
    width = z.model_.graph.output[2].type.tensor_type.shape.dim[1].dim_value
    assert width == 16 + z.source_outputs(X[TEST][:2], ["mlp/feature"])["mlp/feature"].shape[1]
    assert np.mean(z.predict(X[TEST]) == Y[TEST]) > 0.5


@pytest.mark.parametrize(
    "repair, words",
    [
        ("yes", "merge.repair must be \"auto\", true or false, got 'yes'."),
        (1, 'merge.repair must be "auto", true or false, got 1.'),
    ],
)
def test_recipe_repair_key_is_checked(tmp_path, repair, words):
    from onnxmerge.errors import OnnxMergeError
    from onnxmerge.recipe import parse_recipe

    data = {
        "input": {"height": 8, "width": 8, "channels": 1},
        "sources": [{"name": "a", "model": "a.onnx", "preprocess": {"scale": 1, "mean": [0], "std": [1]}}],
        "head": {"train": "t.npz"},
        "merge": {"mode": "weights", "repair": repair},
    }
    with pytest.raises(OnnxMergeError) as err:
        parse_recipe(data, tmp_path, tmp_path / "r.toml")
    assert words in str(err.value)
    data["merge"]["repair"] = False
    assert parse_recipe(data, tmp_path, tmp_path / "r.toml").merger.merge.repair is False


def test_two_groups_get_one_backbone_each():
    z = _build(["low", "resbn_low", "high", "resbn_high"], MergeSpec(mode="weights", method="average", repair=False))
    merge = z.report_["merge"]
    assert [g["sources"] for g in merge["groups"]] == [["low", "high"], ["resbn_low", "resbn_high"]]
    assert merge["concatenated"] == [] and all(c.ok for c in z.parity_)
    stored = json.loads({p.key: p.value for p in z.model_.metadata_props}["onnxmerge.merge"])
    assert stored["groups"] == [
        {"method": "average", "sources": ["low", "high"]},
        {"method": "average", "sources": ["resbn_low", "resbn_high"]},
    ]
    assert sum(line.startswith("backbone one") for line in z_lines(describe_z(z.model_))) == 2
    assert z.model_.graph.output[2].type.tensor_type.shape.dim[1].dim_value == 16 + 16  # each group's once
    assert len([n for n in z.model_.graph.node if n.op_type == "Conv"]) == 6
