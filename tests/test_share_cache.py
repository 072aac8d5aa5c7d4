"""Making Z fast: identical sub-graphs computed once (onnxmerge/share.py), the feature cache (cache.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, fixture_entry, write_recipe
from onnx import TensorProto, helper, numpy_helper
from test_exporter_graphs import source as graph_source

from onnxmerge import ImageInput, Merger, Preprocess, Source
from onnxmerge.cli import main
from onnxmerge.graph.share import share_common
from onnxmerge.recipe import load_recipe
from onnxmerge.runtime import cache as feature_cache
from onnxmerge.runtime.engine import LocalEngine
from onnxmerge.runtime.session import make_session


def fixture_source(name: str, fixture: str, mean=None) -> Source:
    e = fixture_entry(fixture)
    return Source(name, FIXTURES / fixture, Preprocess(e["scale"], tuple(mean or e["mean"]), tuple(e["std"])))


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def exact(merger: Merger) -> None:
    """Every parity check at the contract's exact bound (1e-5), none relaxed."""
    for check in merger.parity_:
        assert check.ok and check.tolerance == 1e-5, check.line()


def test_same_backbone_same_preprocessing_is_computed_once(digits):
    x, y = digits
    one = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(x[:400], y[:400])
    two = Merger(
        ImageInput(8, 8, 1),
        [fixture_source("a", "torch_legacy_cnn.onnx"), fixture_source("b", "torch_legacy_cnn.onnx")],
        quiet=True,
    ).fit(x[:400], y[:400])
    exact(two)
    stats = two.share_
    assert stats.per_source == {"b": stats.nodes_shared - stats.within_source} and stats.per_source["b"] >= 10
    assert stats.initializers_shared > 0 and stats.bytes_shared > 0
    assert two.report_["shared"]["nodes_shared"] == stats.nodes_shared
    # b's whole backbone is gone: Z stores the weights once, runs a's convolutions once
    assert sum(n.op_type == "Conv" for n in two.model_.graph.node) == sum(
        n.op_type == "Conv" for n in one.model_.graph.node
    )
    assert weight_bytes(two.model_) - weight_bytes(one.model_) < 0.2 * weight_bytes(one.model_)  # the second head only
    features = two.transform(x[:50])
    assert np.array_equal(features[:, : features.shape[1] // 2], features[:, features.shape[1] // 2 :])
    onnx.checker.check_model(two.model_, full_check=True)


def test_same_backbone_other_normalisation_shares_only_the_common_preprocessing(digits):
    x, y = digits
    merger = Merger(
        ImageInput(8, 8, 1),
        [fixture_source("a", "torch_legacy_cnn.onnx"), fixture_source("b", "torch_legacy_cnn.onnx", mean=[0.5])],
        quiet=True,
    )
    merger.fit(x[:400], y[:400])
    exact(merger)
    ops = [n.op_type for n in merger.stitched_.graph.node]
    assert ops.count("Cast") == 1 and ops.count("Conv") == 2 * sum(
        n.op_type == "Conv" for n in onnx.load(str(FIXTURES / "torch_legacy_cnn.onnx")).graph.node
    )
    assert ops.count("Sub") == 2  # different means are different tensors: not merged


def test_twins_with_other_weights_share_preprocessing_only(digits):
    x, y = digits
    merger = Merger(
        ImageInput(8, 8, 1), [graph_source("twin_a.onnx", "a"), graph_source("twin_b.onnx", "b")], quiet=True
    )
    merger.fit(x[:400], y[:400])
    exact(merger)
    assert 0 < merger.share_.nodes_shared
    convs_or_gemms = [n for n in merger.stitched_.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert {n.name.split("/")[0] for n in convs_or_gemms} == {"a", "b"}


def test_unrelated_sources_share_nothing_but_the_cast(digits):
    x, y = digits
    merger = Merger(
        ImageInput(8, 8, 1),
        [fixture_source("a", "torch_legacy_cnn.onnx"), fixture_source("b", "jax_cnn.onnx")],
        quiet=True,
    ).fit(x[:300], y[:300])
    exact(merger)
    assert merger.share_.nodes_shared <= 3


def _toy(dead: bool = True) -> onnx.ModelProto:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    inits = [
        numpy_helper.from_array(w, "a/w"),
        numpy_helper.from_array(w.copy(), "b/w"),
        numpy_helper.from_array(w + 1, "c/w"),
        numpy_helper.from_array(np.ones(3, np.float32), "unused"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "a/w"], ["a/y"], name="a/mm"),
        helper.make_node("MatMul", ["x", "b/w"], ["b/y"], name="b/mm"),
        helper.make_node("MatMul", ["x", "c/w"], ["c/y"], name="c/mm"),
        helper.make_node("RandomUniformLike", ["a/y"], ["a/r"], name="a/r"),
        helper.make_node("RandomUniformLike", ["b/y"], ["b/r"], name="b/r"),
        helper.make_node("Relu", ["a/y"], ["a/dead"], name="a/dead"),
    ]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a/y", "b/y", "c/y", "a/r", "b/r")]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])], out, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_dedup_by_bytes_cse_dead_nodes_and_random_ops():
    model, stats = share_common(_toy())
    onnx.checker.check_model(model, full_check=True)
    names = [t.name for t in model.graph.initializer]
    assert names == ["a/w", "c/w"]  # b/w has a/w's bytes; 'unused' is read by nothing
    assert stats.initializers_shared == 1 and stats.bytes_shared == 24 and stats.dead_initializers == 1
    ops = {n.name: n for n in model.graph.node}
    assert "b/mm" not in ops and "c/mm" in ops and "a/dead" not in ops
    assert list(ops["b/y/shared"].input) == ["a/y"]  # b's output kept, as an Identity of a's
    assert ops["b/r"].input[0] == "a/y"  # a random op is never merged, only re-fed
    assert stats.nodes_shared == 1 and stats.per_source == {"b": 1} and stats.dead_nodes == 1
    x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    a_y, b_y, c_y = make_session(model).run(["a/y", "b/y", "c/y"], {"x": x})
    assert np.array_equal(a_y, b_y) and not np.array_equal(a_y, c_y)


# -- feature cache ---------------------------------------------------------------------------------------------
def _counting(monkeypatch) -> list[int]:
    """Record the number of images of every stitched-graph run (every run goes through the engine)."""
    sizes: list[int] = []
    original = LocalEngine.outputs

    def counted(self, X, *args, **kwargs):
        sizes.append(len(X))
        return original(self, X, *args, **kwargs)

    monkeypatch.setattr(LocalEngine, "outputs", counted)
    return sizes


def test_cached_rebuild_with_another_head_does_not_run_the_sources(digits, tmp_path, monkeypatch):
    x, y = digits
    sources = [fixture_source("a", "torch_legacy_cnn.onnx"), fixture_source("b", "torch_dynamo_mlp.onnx")]
    first = Merger(ImageInput(8, 8, 1), sources, quiet=True)
    first.cache_dir = tmp_path / "cache"
    runs = _counting(monkeypatch)
    first.fit(x[:500], y[:500])
    assert 500 in runs and first.report_["features_from_cache"] is False
    written = sorted((tmp_path / "cache").glob("*.features"))
    assert written
    second = Merger(ImageInput(8, 8, 1), sources, C=0.1, quiet=True)  # a changed head
    second.cache_dir = tmp_path / "cache"
    runs = _counting(monkeypatch)
    second.fit(x[:500], y[:500])
    assert 500 not in runs  # at most probes and the parity sample ran
    assert second.report_["features_from_cache"] is True
    exact(second)
    third = Merger(ImageInput(8, 8, 1), sources, quiet=True)  # other images: another key
    third.cache_dir = tmp_path / "cache"
    runs = _counting(monkeypatch)
    third.fit(x[:400], y[:400])
    assert 400 in runs
    after = sorted((tmp_path / "cache").iterdir())
    assert len(after) > len(written) and all(p.name.endswith(".features") for p in after)  # no temporary left


def test_a_corrupt_cache_file_is_recomputed(digits, tmp_path):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True)
    merger.cache_dir = tmp_path
    merger.fit(x[:300], y[:300])
    paths = sorted(tmp_path.glob("*.features"))
    for path in paths:
        path.write_bytes(b"not numpy")
    merger.fit(x[:300], y[:300])
    assert merger.report_["features_from_cache"] is False
    assert any(feature_cache.load(tmp_path, path.name[: -len(feature_cache.SUFFIX)], 300) is not None for path in paths)


def test_cli_cache_flags(tmp_path, digits_npz, capsys, monkeypatch):
    recipe = write_recipe(
        tmp_path, [("a", "torch_legacy_cnn.onnx"), ("b", "torch_legacy_cnn.onnx")], digits_npz["train"]
    )
    cache = tmp_path / "cache"
    argv = ["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet", "--cache", str(cache)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shared: " in out and "from cache" not in out and list(cache.iterdir())
    assert main(argv) == 0
    assert "features: from cache" in capsys.readouterr().out
    default = tmp_path / "default"
    monkeypatch.setenv("ONNXMERGE_CACHE_DIR", str(default))
    assert main(["build", str(recipe), "-o", str(tmp_path / "z2.onnx"), "--quiet", "--no-cache"]) == 0
    assert not default.exists()
    assert main(["build", str(recipe), "-o", str(tmp_path / "z3.onnx"), "--quiet"]) == 0
    assert list(default.iterdir())
    with pytest.raises(SystemExit):
        main(["build", str(recipe), "-o", str(tmp_path / "z4.onnx"), "--cache", str(cache), "--no-cache"])
    loaded = load_recipe(recipe, quiet=True).merger
    assert getattr(loaded, "cache_dir", None) is None  # the Python API caches only when asked
