"""The ugly graphs real exporters produce (tests/fixtures/generate_graphs*.py): auto feature, build, parity.

1x1-Conv heads with GlobalAveragePool or ReduceMean, LogSoftmax, NHWC non-square inputs, symbolic spatial
sizes, multi-output models, If sub-graphs, dynamo external data, twin architectures, tf2onnx names; then
paddle2onnx, Keras 3's own ONNX export, sparse initializers, lying value_info, a feature width only a run can
tell, an opset 11..26 / IR 6..13 sweep, local functions.

Every Merger here uses C=1.0: these tests are about graphs, not about choosing the head's regularisation.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from onnxmerge import ImageInput, Merger, OnnxMergeError, Preprocess, Source
from onnxmerge.files.models import load_model
from onnxmerge.graph.inspect import find_head

GRAPHS = Path(__file__).parent / "fixtures" / "graphs"
ENTRIES = {e["file"]: e for e in json.loads((GRAPHS / "manifest.json").read_text())}
SWEEP = sorted((name for name in ENTRIES if name.startswith("opset_")), key=lambda n: int(n[6:-5]))
BUILDABLE = sorted(name for name in ENTRIES if name not in SWEEP)


def source(name: str, namespace: str = "s") -> Source:
    e = ENTRIES[name]
    head = e["head_output"] if len(e.get("outputs", [])) > 1 else "auto"
    return Source(
        namespace,
        GRAPHS / name,
        Preprocess(
            e["scale"], tuple(e["mean"]), tuple(e["std"]), height=e["height"], width=e["width"], channels=e["channels"]
        ),
        head_output=head,
    )


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_auto_feature(name):
    e = ENTRIES[name]
    head = find_head(load_model(GRAPHS / name), e["head_output"] if len(e.get("outputs", [])) > 1 else "auto")
    assert head.feature == e["feature"], head.reason


@pytest.mark.parametrize("name", BUILDABLE)
def test_build_with_a_partner_keeps_parity(name, digits):
    x, y = digits
    partner = Source("mlp", FIXTURES / "skl_mlp.onnx", Preprocess(1 / 255, (0.0,), (1.0,), 8, 8, 1))
    merger = Merger(ImageInput(8, 8, 1), [source(name), partner], C=1.0, quiet=True).fit(x[:600], y[:600])
    for check in merger.parity_:
        assert check.ok and check.tolerance == 1e-5, check.line()
    width = merger.source_outputs(x[:2], ["s/feature"])["s/feature"].shape[1]
    assert width == ENTRIES[name]["feature_dim"]
    assert np.mean(merger.predict(x[1000:]) == y[1000:]) > 0.9


def test_twins_with_identical_names_and_their_own_external_data(digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [source("twin_a.onnx", "a"), source("twin_b.onnx", "b")], C=1.0, quiet=True)
    merger.fit(x[:600], y[:600])
    assert all(c.ok for c in merger.parity_)
    names = [n.name for n in merger.model_.graph.node]
    assert (
        len(names) == len(set(names))
        and any(n.startswith("a/") for n in names)
        and any(n.startswith("b/") for n in names)
    )


def test_if_subgraph_names_are_prefixed(digits):
    x, y = digits
    merger = Merger(
        ImageInput(8, 8, 1), [source("if_subgraph.onnx", "p"), source("if_subgraph.onnx", "q")], C=1.0, quiet=True
    )
    merger.fit(x[:300], y[:300])
    branch_names: list[str] = []
    for node in merger.model_.graph.node:
        for attr in node.attribute:
            if attr.g.node:
                branch_names += [o for n in attr.g.node for o in n.output]
    assert branch_names and all(n.startswith(("p/", "q/")) for n in branch_names)
    assert len(branch_names) == len(set(branch_names))


BATCH_1_ONLY = [n for n in ("fixed_batch1.onnx", "dynamo_static_batch1.onnx") if n in ENTRIES]


@pytest.mark.parametrize("name", BATCH_1_ONLY)
def test_batch_1_only_source_runs_image_by_image(name, digits, capfd, tmp_path):
    """torch legacy with a constant-batch Reshape, and torch 2.13's default (dynamo, static shapes) export:
    Z keeps its dynamic batch (a Loop over the images), runs at batch 1 and 7, features equal the original
    source run on each image alone; onnxruntime's own log lines (its failed batch-2 probe) stay off stderr."""
    from onnxmerge.graph.preprocess import reference_preprocess
    from onnxmerge.graph.topology import with_outputs
    from onnxmerge.runtime.session import make_session

    x, y = digits
    keep = np.isin(y, ENTRIES[name]["labels"])
    x, y = x[keep], y[keep]
    merger = Merger(ImageInput(8, 8, 1), [source(name)], C=1.0, quiet=True).fit(x[:300], y[:300])
    resolved = merger.sources_[0]
    assert resolved.batch_note.startswith("fixed batch 1: runs image by image inside Z (an ONNX Loop"), (
        resolved.batch_note
    )
    assert all(c.ok and c.tolerance == 1e-5 for c in merger.parity_), [c.line() for c in merger.parity_]
    assert "Loop" in {n.op_type for n in merger.model_.graph.node}
    original = make_session(with_outputs(load_model(GRAPHS / name), [ENTRIES[name]["feature"]]))
    for n in (1, 7):
        images = x[300 : 300 + n]
        got = merger.source_outputs(images, ["s/feature"])["s/feature"]
        alone = np.concatenate(
            [
                original.run(
                    None,
                    {
                        original.get_inputs()[0].name: reference_preprocess(
                            images[k : k + 1], merger.input, resolved.preprocess
                        )
                    },
                )[0].reshape(1, -1)
                for k in range(n)
            ]
        )
        assert np.abs(got - alone).max() <= 1e-5 * max(1.0, np.abs(alone).max())
        assert merger.predict_proba(images).shape == (n, len(ENTRIES[name]["labels"]))
    assert np.mean(merger.predict(x[400:]) == y[400:]) > 0.85
    saved = make_session(str(merger.save(tmp_path / "z.onnx")))  # the weights the Loop reads are in the file
    assert np.allclose(saved.run(["probabilities"], {"image": x[:7]})[0], merger.predict_proba(x[:7]), atol=1e-6)
    err = capfd.readouterr().err
    assert "onnxruntime" not in err and "\x1b[" not in err, err[:300]


# -- second batch (tests/fixtures/generate_graphs_more.py) --------------------------------------------------------


def test_opset_and_ir_sweep_is_complete():
    """One trained CNN at every opset torch legacy exports (11..20) and onnx converts to (21..26), IR 6..13."""
    got = [(ENTRIES[n]["opset"]["ai.onnx"], ENTRIES[n]["ir_version"]) for n in SWEEP]
    assert got == [
        (11, 6),
        (13, 7),
        (15, 8),
        (17, 8),
        (18, 8),
        (19, 9),
        (20, 9),
        (21, 10),
        (22, 10),
        (23, 11),
        (24, 12),
        (25, 13),
        (26, 13),
    ]
    assert len({ENTRIES[n]["test_accuracy"] for n in SWEEP}) == 1  # the same model everywhere


@pytest.mark.parametrize("name", SWEEP)
def test_opset_sweep_builds_with_exact_parity(name, digits):
    x, y = digits
    keep = np.isin(y, ENTRIES[name]["labels"])
    x, y = x[keep], y[keep]
    merger = Merger(ImageInput(8, 8, 1), [source(name)], C=1.0, quiet=True).fit(x[:200], y[:200])
    assert all(c.ok and c.tolerance == 1e-5 for c in merger.parity_), [c.line() for c in merger.parity_]
    assert merger.model_.ir_version == max(ENTRIES[name]["ir_version"], 7)
    assert np.mean(merger.predict(x[500:]) == y[500:]) > 0.9


def test_sources_at_opset_11_and_26_are_stitched(digits):
    x, y = digits
    merger = Merger(
        ImageInput(8, 8, 1), [source("logsoftmax_head.onnx", "old"), source("opset_26.onnx", "new")], C=1.0, quiet=True
    )
    merger.fit(x[:400], y[:400])
    assert merger.notes_ == {"old": "opset 11 -> 26 (onnx version converter)"}
    assert all(c.ok and c.tolerance == 1e-5 for c in merger.parity_), [c.line() for c in merger.parity_]
    assert {o.version for o in merger.model_.opset_import if o.domain in ("", "ai.onnx")} == {26}
    assert merger.model_.ir_version == 13


def test_the_same_model_at_opsets_11_and_26_is_stitched(digits):
    x, y = digits  # identical weights: after the conversion, the two sources compute the same sub-graph
    merger = Merger(
        ImageInput(8, 8, 1), [source("opset_11.onnx", "old"), source("opset_26.onnx", "new")], C=1.0, quiet=True
    )
    merger.fit(x[:300], y[:300])
    assert merger.notes_ == {"old": "opset 11 -> 26 (onnx version converter)"}
    assert all(c.ok and c.tolerance == 1e-5 for c in merger.parity_), [c.line() for c in merger.parity_]
    both = merger.transform(x[:5])
    assert np.array_equal(both[:, :24], both[:, 24:])


def test_newest_onnx_opset_that_onnxruntime_cannot_run_is_refused(tmp_path, digits):
    import onnx
    from onnx import version_converter

    newest = onnx.defs.onnx_opset_version()  # 28 with onnx 1.23; onnxruntime 1.31 runs opsets <= 26, IR <= 13
    model = version_converter.convert_version(onnx.load(str(GRAPHS / "opset_26.onnx")), newest)
    model.ir_version = onnx.IR_VERSION
    path = tmp_path / f"opset_{newest}.onnx"
    onnx.save(model, str(path))
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [Source("s", path, Preprocess(1 / 255, (0.3,), (0.4,)))], C=1.0, quiet=True)
    with pytest.raises(
        OnnxMergeError,
        match=r"source 's' .*onnxruntime cannot load the model .*Unsupported model IR "
        r"version: 14, max supported IR version: 13.*re-export the source",
    ):
        merger.fit(x[:50], y[:50])


def test_sparse_initializers_are_densified_and_prefixed(digits):
    from onnxmerge.graph.cut import cut, densify_sparse_initializers

    model = load_model(GRAPHS / "sparse_initializer.onnx")
    sparse = {s.values.name for s in model.graph.sparse_initializer}
    assert sparse == {"fc1.weight", "conv.weight"}  # one [NNZ] linear, one [NNZ, 4] coordinate index
    assert find_head(model).feature == ENTRIES["sparse_initializer.onnx"]["feature"]
    dense = densify_sparse_initializers(model)
    assert not dense.graph.sparse_initializer and sparse <= {i.name for i in dense.graph.initializer}
    cut_model = cut(model, ENTRIES["sparse_initializer.onnx"]["feature"], None)
    assert sparse <= {i.name for i in cut_model.model.graph.initializer}
    x, y = digits
    # the partner has dense weights of the same names
    merger = Merger(
        ImageInput(8, 8, 1),
        [source("sparse_initializer.onnx", "a"), source("lying_value_info.onnx", "b")],
        C=1.0,
        quiet=True,
    ).fit(x[:300], y[:300])
    assert all(c.ok and c.tolerance == 1e-5 for c in merger.parity_)
    names = {i.name for i in merger.model_.graph.initializer}
    assert {"a/fc1.weight", "b/fc1.weight", "a/conv.weight", "b/conv.weight"} <= names
    assert not merger.model_.graph.sparse_initializer


def test_lying_value_info_is_ignored():
    from onnxmerge.graph.inspect import tensor_shapes

    e = ENTRIES["lying_value_info.onnx"]
    model = load_model(GRAPHS / "lying_value_info.onnx")
    declared = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    assert declared[e["feature"]] == 4  # the file says [N, 7, 1, 1]
    shape = tensor_shapes(model)[e["feature"]]
    assert len(shape) == 2 and shape[1] == e["feature_dim"] == 24  # inference without the lies


def test_feature_width_unknown_to_shape_inference_is_probed():
    from onnxmerge.graph.cut import cut
    from onnxmerge.graph.inspect import tensor_shapes
    from onnxmerge.runtime.session import tensor_rank

    e = ENTRIES["computed_reshape.onnx"]
    model = load_model(GRAPHS / "computed_reshape.onnx")
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape at opset 13: onnx infers no shape at all (not even the
    # rank), so the build asks the runtime (tensor_rank) to run one sample through onnxruntime
    assert e["feature_static_shape"] is None and tensor_shapes(model).get(e["feature"]) is None
    cut_model = cut(model, e["feature"], None, tensor_rank(model, e["feature"], np.zeros((1, 1, 8, 8), np.float32)))
    assert cut_model.rank == 2 and not cut_model.pooled
    # the width (128) is read from the features Z computes: see test_build_with_a_partner_keeps_parity


def test_paddle2onnx_names():
    e = ENTRIES["paddle_flatten_head.onnx"]
    assert e["feature"] == "p2o.pd_op.flatten.0.0" and e["feature_dim"] == 128


def test_local_functions_work_and_identical_ones_are_shared(digits):
    x, y = digits  # a and c: the same function body, other weights (passed to the function as inputs)
    merger = Merger(
        ImageInput(8, 8, 1), [source("functions_a.onnx", "p"), source("functions_c.onnx", "q")], C=1.0, quiet=True
    )
    merger.fit(x[:300], y[:300])
    assert all(c.ok and c.tolerance == 1e-5 for c in merger.parity_)
    assert [(f.domain, f.name) for f in merger.model_.functions] == [("onnxmerge_fixtures", "Block")]
    calls = [n.name for n in merger.model_.graph.node if n.op_type == "Block"]
    assert len(calls) == 2 and all(c.startswith(("p/", "q/")) for c in calls)


def test_different_local_functions_with_one_name_are_refused(digits):
    x, y = digits
    merger = Merger(
        ImageInput(8, 8, 1), [source("functions_a.onnx", "a"), source("functions_b.onnx", "b")], C=1.0, quiet=True
    )
    sentence = (
        "sources 'a' and 'b' define different local functions named onnxmerge_fixtures:Block; "
        "re-export one of them with functions inlined."
    )
    with pytest.raises(OnnxMergeError, match="^" + re.escape(sentence) + "$"):
        merger.fit(x[:100], y[:100])


def test_sparse_initializer_with_indices_out_of_range_is_refused():
    import onnx

    from onnxmerge.graph.cut import densify_sparse_initializers

    model = load_model(GRAPHS / "sparse_initializer.onnx")
    sparse = model.graph.sparse_initializer[0]
    indices = onnx.numpy_helper.to_array(sparse.indices).copy()
    indices[-1] = 10**9
    sparse.indices.CopyFrom(onnx.numpy_helper.from_array(indices, sparse.indices.name))
    with pytest.raises(
        OnnxMergeError,
        match=rf"^sparse initializer '{sparse.values.name}' has indices \(shape "
        r"\[\d+(, 4)?\]\) that do not place its \d+ values inside its shape "
        r"\[[\d, ]+\]; re-export the model with dense weights\.$",
    ):
        densify_sparse_initializers(model)


# -- third batch (tests/fixtures/generate_graphs_heads.py): heads as exporters write them ----------------------


@pytest.mark.parametrize(
    "name, chain",
    [
        ("keras_torch_dynamo.onnx", "Softmax <- ReduceMean <- Add <- Transpose <- Conv"),
        ("squeezenet_head.onnx", "Softmax <- Reshape <- ReduceMean <- Relu <- Conv"),
        ("skl2onnx_binary.onnx", "Concat <- Sigmoid <- Add <- MatMul"),
        ("distilled_heads.onnx", "Softmax <- Div <- Add <- {Gemm <- BatchNormalization, Gemm}"),
    ],
)
def test_reason_names_the_chain_walked(name, chain):
    """The feature equals the framework's own classifier input (the manifest, from a hook); the reason says how."""
    e = ENTRIES[name]
    head = find_head(load_model(GRAPHS / name), e["head_output"] if len(e["outputs"]) > 1 else "auto")
    assert head.feature == e["feature"] and e["framework_feature_max_abs_diff"] <= 1e-5
    assert f"({chain})" in head.reason, head.reason


def test_nhwc_map_behind_a_layout_transpose_is_pooled_over_its_own_spatial_axes(digits):
    """Keras' NHWC map (before the Transpose that feeds the classifier Conv), named by hand: the same pooled
    feature as the auto one, with parity."""
    x, y = digits
    from onnxmerge.graph.cut import spatial_axes

    model = load_model(GRAPHS / "keras_torch_dynamo.onnx")
    assert spatial_axes(model, "relu_1") == (1, 2) and spatial_axes(model, "permute_6") == (2, 3)
    auto = Merger(ImageInput(8, 8, 1), [source("keras_torch_dynamo.onnx")], C=1.0, quiet=True).fit(x[:200], y[:200])
    nhwc = dataclasses.replace(source("keras_torch_dynamo.onnx"), feature="relu_1")  # a Source is frozen
    named = Merger(ImageInput(8, 8, 1), [nhwc], C=1.0, quiet=True).fit(x[:200], y[:200])
    assert named.sources_[0].cut.pooled == (1, 2) and auto.sources_[0].cut.pooled == (2, 3)
    assert all(c.ok and c.tolerance == 1e-5 for c in named.parity_), [c.line() for c in named.parity_]
    a, b = (m.source_outputs(x[:16], ["s/feature"])["s/feature"] for m in (auto, named))
    assert np.allclose(a, b, atol=1e-5)


def test_averaged_heads_that_read_different_tensors_are_one_sentence():
    """DeiT-distilled style: two heads over two different tokens; the error names the chain."""
    import onnx
    from onnx import helper

    model = load_model(GRAPHS / "distilled_heads.onnx")
    graph = model.graph
    gemm = next(
        n for n in graph.node if n.op_type == "Gemm" and n.input[0] == ENTRIES["distilled_heads.onnx"]["feature"]
    )
    # the second head reads the feature through a (non-affine) Relu: no longer one shared tensor
    graph.node.insert(list(graph.node).index(gemm), helper.make_node("Relu", [gemm.input[0]], ["other_token"]))
    gemm.input[0] = "other_token"
    onnx.checker.check_model(model)
    with pytest.raises(
        OnnxMergeError,
        match=r"heads averaged behind output 'probabilities' \(Softmax <- Div <- Add "
        r"<- \{.*\}\) read different tensors; name the feature",
    ):
        find_head(model)
