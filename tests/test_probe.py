"""The probe: onnx's checker and onnxruntime see an untrusted model first in a memory-limited child process,
so a model that crashes native code or allocates without bound is a clean one-line error naming the file."""

from __future__ import annotations

import os
import signal

import onnx
import pytest
from conftest import FIXTURES, write_recipe
from onnx import TensorProto, helper

from onnxmerge.cli import main
from onnxmerge.errors import OnnxMergeError
from onnxmerge.files.models import load_model
from onnxmerge.runtime import probe

pytestmark = pytest.mark.skipif(not probe.SUPPORTED, reason="the probe needs fork and resource (POSIX)")

SIDE = 1 << 14  # a float [16384, 16384] is 1 GiB: the largest output onnxruntime's constant folding computes


def folding_bomb(path, copies: int = 1):
    """A valid model whose session creation constant-folds ``copies`` ConstantOfShape nodes of 1 GiB each."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [SIDE, SIDE])
    nodes, total = [], "x"
    for i in range(copies):  # each fills another value, or onnxruntime would merge the copies into one
        fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [i + 1.0])
        nodes.append(helper.make_node("ConstantOfShape", ["shape"], [f"big{i}"], value=fill))
        nodes.append(helper.make_node("Add", [total, f"big{i}"], [f"sum{i}"]))
        total = f"sum{i}"
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info(total, TensorProto.FLOAT, [SIDE, SIDE])],
        initializer=[shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_allocation_beyond_the_limit_is_a_clean_error(tmp_path, monkeypatch):
    """onnxruntime swallows the failed allocation and skips the fold; the probe still refuses the model,
    which without a limit would make this process allocate 1 GiB per such node."""
    path = folding_bomb(tmp_path / "bomb.onnx")
    before = path.read_bytes()
    monkeypatch.setenv(probe.MEMORY_ENV, "256")
    with pytest.raises(OnnxMergeError, match="needs more than the 256 MB memory limit") as info:
        load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before


def test_default_limit_refuses_a_model_that_folds_gigabytes(tmp_path):
    with pytest.raises(OnnxMergeError, match="needs more than the 2048 MB memory limit"):
        load_model(folding_bomb(tmp_path / "bomb3.onnx", copies=3))


def test_cli_exits_2_with_one_line_on_a_memory_bomb(tmp_path, monkeypatch, capsys, digits_npz):
    path = folding_bomb(tmp_path / "bomb.onnx")
    monkeypatch.setenv(probe.MEMORY_ENV, "256")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxmerge: error: model ") and "\n" not in err and "memory limit" in err, err
    recipe = write_recipe(tmp_path, [("a", "torch_legacy_cnn.onnx"), ("b", "skl_mlp.onnx")], digits_npz["train"])
    recipe.write_text(recipe.read_text().replace((FIXTURES / "skl_mlp.onnx").as_posix(), path.as_posix()))
    assert main(["build", str(recipe), "-o", str(tmp_path / "z.onnx"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bomb.onnx" in err and "memory limit" in err and "\n" not in err, err
    assert not (tmp_path / "z.onnx").exists()


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT], ids=["segfault", "abort"])
def test_child_killed_by_a_signal_is_a_clean_error(monkeypatch, capsys, signum):
    """The crash path, through the test-only hook: the child kills itself as a native crash would."""
    monkeypatch.setenv(probe.TEST_SIGNAL_ENV, str(int(signum)))
    path = FIXTURES / "skl_mlp.onnx"
    with pytest.raises(OnnxMergeError, match=rf"crashed onnx/onnxruntime while being checked \(signal {int(signum)}\)"):
        load_model(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "skl_mlp.onnx" in err and "crashed" in err and "\n" not in err, err


def test_file_changed_after_it_was_read(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes((FIXTURES / "skl_logreg.onnx").read_bytes())
    with pytest.raises(OnnxMergeError, match="changed on disk"):
        probe.probe_model(path, "0" * 64, path.stat().st_size, None)


def test_a_dead_worker_is_restarted():
    load_model(FIXTURES / "skl_logreg.onnx")
    process = probe._worker._process  # private: killing the helper is the point of this test
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    load_model(FIXTURES / "skl_logreg.onnx")
    assert probe._worker._process.pid != process.pid


def test_memory_limit(monkeypatch):
    monkeypatch.delenv(probe.MEMORY_ENV, raising=False)
    assert probe.memory_limit(1000) == 2 << 30
    assert probe.memory_limit(1 << 30) == 5 << 30
    monkeypatch.setenv(probe.MEMORY_ENV, "lots")
    with pytest.raises(OnnxMergeError, match="not a positive whole number"):
        probe.memory_limit(0)


def test_a_check_past_the_time_limit_is_a_clean_error(monkeypatch):
    """The wall-clock limit is SIGALRM in the child; the test hook sends it at once."""
    monkeypatch.setenv(probe.TEST_SIGNAL_ENV, str(int(signal.SIGALRM)))
    monkeypatch.setenv(probe.TIMEOUT_ENV, "7")
    with pytest.raises(OnnxMergeError, match="took more than 7 s to be checked"):
        load_model(FIXTURES / "skl_mlp.onnx")


def test_prestart_then_load():
    probe.prestart()
    load_model(FIXTURES / "skl_logreg.onnx")
