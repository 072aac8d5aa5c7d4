"""A build keeps its weights on disk (onnxmerge/weights.py) and runs large sources one group at a time."""

from __future__ import annotations

import gc
import io

import numpy as np
import onnx
import pytest
from conftest import FIXTURES
from onnx import numpy_helper
from test_share_cache import exact, fixture_source

import onnxmerge.stages.stitching as stitching
from onnxmerge import ImageInput, Merger
from onnxmerge.files.models import load_model, load_model_with_digest, save_model
from onnxmerge.graph.share import extraction_groups
from onnxmerge.predict import ZModel
from onnxmerge.runtime.weights import OFFLOAD_BYTES, WeightFolder, checksum, external_initializers

CNN = FIXTURES / "torch_legacy_cnn.onnx"


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_offload_moves_large_weights_out_and_inline_brings_back_the_same_model():
    original = load_model(CNN)
    folder = WeightFolder()
    light, digest = load_model_with_digest(CNN, folder)
    moved = list(external_initializers(light))
    assert moved and all(int(dict((e.key, e.value) for e in t.external_data)["length"]) >= OFFLOAD_BYTES for t in moved)
    assert all(checksum(t) is not None for t in moved)
    assert light.ByteSize() < original.ByteSize() / 4  # graph code copies a few KB, not the weights
    assert digest == load_model_with_digest(CNN)[1]  # the source's sha256 is over its own file, not the folder
    full = folder.inline(light)
    assert not list(external_initializers(full))
    expected, got = initializers(original), initializers(full)
    assert expected.keys() == got.keys() and all(np.array_equal(expected[k], got[k]) for k in expected)
    assert [n.SerializeToString() for n in full.graph.node] == [n.SerializeToString() for n in original.graph.node]


def test_streamed_write_parses_to_the_inline_model():
    folder = WeightFolder()
    light, _ = load_model_with_digest(CNN, folder)
    buffer = io.BytesIO()
    folder.write_inline(light, buffer)
    written = onnx.load_from_string(buffer.getvalue())
    inline = folder.inline(light)
    # the offloaded initializers come after the others; same tensors, same graph otherwise
    assert sorted(t.SerializeToString() for t in written.graph.initializer) == sorted(
        t.SerializeToString() for t in inline.graph.initializer
    )
    del written.graph.initializer[:], inline.graph.initializer[:]
    assert written.SerializeToString(deterministic=True) == inline.SerializeToString(deterministic=True)
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()), full_check=True)


def test_saved_z_is_self_contained_and_equals_model_(digits, tmp_path):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(
        x[:300], y[:300]
    )
    path = merger.save(tmp_path / "z.onnx")
    saved = load_model(path)
    assert not list(external_initializers(saved)) and sorted(p.name for p in tmp_path.iterdir()) == ["z.onnx"]
    expected, got = initializers(merger.model_), initializers(saved)
    assert expected.keys() == got.keys() and all(np.array_equal(expected[k], got[k]) for k in expected)
    big = save_model(merger._z, tmp_path / "big.onnx", size_limit=10_000, weights=merger.weights_)  # side-file path
    side = [p for p in tmp_path.iterdir() if p.name.startswith("big.onnx.") and p.suffix == ".data"]
    assert len(side) == 1 and np.array_equal(merger.predict_proba(x[:20]), ZModel(big, quiet=True).predict(x[:20])[1])


def test_weight_folder_goes_with_the_merger(digits):
    x, y = digits
    merger = Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(
        x[:200], y[:200]
    )
    folder = merger.weights_.path
    assert folder.is_dir() and any(folder.iterdir())
    merger.fit(x[:200], y[:200])  # a rebuild starts a fresh folder; the old one is removed
    assert merger.weights_.path != folder and not folder.exists()
    folder = merger.weights_.path
    del merger
    gc.collect()
    assert not folder.exists()


def test_sources_sharing_a_backbone_form_one_extraction_group(digits):
    same = Merger(
        ImageInput(8, 8, 1),
        [fixture_source("a", "torch_legacy_cnn.onnx"), fixture_source("b", "torch_legacy_cnn.onnx", mean=[0.5])],
        quiet=True,
    )
    same.build_graph()
    # other normalisation: nothing after the preprocessing is shared, so each source runs alone
    assert extraction_groups(same.stitched_, ["a", "b"]) == [["a"], ["b"]]
    twin = Merger(
        ImageInput(8, 8, 1),
        [
            fixture_source("a", "torch_legacy_cnn.onnx"),
            fixture_source("b", "torch_legacy_cnn.onnx"),
            fixture_source("c", "torch_dynamo_mlp.onnx"),
        ],
        quiet=True,
    )
    twin.build_graph()
    assert extraction_groups(twin.stitched_, ["a", "b", "c"]) == [["a", "b"], ["c"]]


@pytest.mark.parametrize("mode", ["fit", "teachers"])
def test_large_source_path_builds_the_same_z(digits, monkeypatch, mode):
    """Sources above the size threshold run group by group, one session at a time: same Z, same parity."""
    x, y = digits
    sources = [
        fixture_source("a", "torch_legacy_cnn.onnx"),
        fixture_source("b", "torch_legacy_cnn.onnx"),
        fixture_source("c", "torch_dynamo_mlp.onnx"),
    ]
    kwargs = {"unlabeled": x[:300]} if mode == "teachers" else {}
    train = (None, None) if mode == "teachers" else (x[:300], y[:300])
    small = Merger(ImageInput(8, 8, 1), sources, mode=mode, quiet=True).fit(*train, **kwargs)
    monkeypatch.setattr(stitching, "LARGE_MODEL_BYTES", 0)
    large = Merger(ImageInput(8, 8, 1), sources, mode=mode, quiet=True).fit(*train, **kwargs)
    exact(large)
    assert small.groups_ == [["a", "b", "c"]] and large.groups_ == [["a", "b"], ["c"]]
    assert len(large.engine_._sessions) <= 1  # at most one group's session alive after a build
    assert large.classes_ == small.classes_
    np.testing.assert_allclose(large.predict_proba(x[300:400]), small.predict_proba(x[300:400]), atol=1e-6)
    # b's input is an Identity of a's (shared preprocessing): a part of the graph computing it still loads
    session = large.engine_.part_session(["b/input"])
    assert session.run(["b/input"], {"image": x[:3]})[0].shape[0] == 3


def test_no_room_for_the_temporary_weights_is_one_clear_error(digits, monkeypatch):
    import errno

    import onnxmerge.runtime.weights as weights_module
    from onnxmerge.errors import OnnxMergeError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights_module.tempfile, "TemporaryDirectory", full)
    x, y = digits
    with pytest.raises(OnnxMergeError, match="No space left on device.*set TMPDIR"):
        Merger(ImageInput(8, 8, 1), [fixture_source("a", "torch_legacy_cnn.onnx")], quiet=True).fit(x[:50], y[:50])
