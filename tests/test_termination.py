"""Every ending cleans up: real signals to real child processes, a closed or full stdout, a full disk late in a build.

The child builds run ``python -m onnxmerge`` (or the CLI's ``main`` under a small script that sends its own
signal at a chosen moment) with ``TMPDIR`` in the test's folder, so the weight folders they leave or
remove are only ever their own.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import write_recipe

from onnxmerge import signals
from onnxmerge.cli import main
from onnxmerge.files.outputs import atomic_path
from onnxmerge.runtime import cache, weights

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals, FIFOs and rlimits")

SOURCES = [("a", "torch_legacy_cnn.onnx"), ("b", "torch_dynamo_mlp.onnx")]

#: Runs the CLI; with "write SIGNAME" it sends itself SIGNAME half-way through writing Z's bytes.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from onnxmerge.runtime import weights
    from onnxmerge.cli import main
    if sys.argv[1] == "write":
        original = weights.WeightFolder.write_inline
        def write_inline(self, model, handle):
            handle.write(b"half a model")
            handle.flush()
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
            original(self, model, handle)
        weights.WeightFolder.write_inline = write_inline
    sys.exit(main(sys.argv[3:]))
""")


def child(tmp_path, args, when="none", signame="SIGTERM", **popen):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, when, signame, *args],
        env=env,
        text=True,
        stderr=subprocess.PIPE,
        preexec_fn=_default_signals,
        **{"stdout": subprocess.PIPE, **popen},
    )


def _default_signals():
    """A background job of a non-interactive shell (CI) starts with SIGINT ignored, one under nohup with
    SIGHUP ignored, and their children with them: the child gets the defaults back, as a program started
    from a terminal has (onnxmerge leaves an ignored signal ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def weight_folders(tmp_path):
    return sorted((tmp_path / "tmp").glob(weights.PREFIX + "*"))


def wait_for_weight_folder(tmp_path, process, timeout=60.0):
    """Block until the child's build has created its weight folder and its lock (it is mid-build then)."""
    end = time.monotonic() + timeout
    while not [f for f in weight_folders(tmp_path) if (f / weights.LOCK).exists()]:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end, "the build never created its weight folder"
        time.sleep(0.005)


def build_args(tmp_path, digits_npz):
    return [
        "build",
        str(write_recipe(tmp_path, SOURCES, digits_npz["train"])),
        "-o",
        str(tmp_path / "z.onnx"),
        "--quiet",
        "--no-cache",
    ]


@pytest.mark.parametrize("signame,status", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_mid_build_removes_the_weight_folder(tmp_path, digits_npz, signame, status):
    process = child(tmp_path, build_args(tmp_path, digits_npz))
    wait_for_weight_folder(tmp_path, process)
    process.send_signal(getattr(signal, signame))
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert err.strip().splitlines() == [
        f"onnxmerge: interrupted by {signame}; temporary files were removed, no output was left half-written."
    ]
    assert weight_folders(tmp_path) == [] and not (tmp_path / "z.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".z.onnx")]


def test_sigterm_while_writing_z_keeps_the_old_z_and_leaves_no_temporary(tmp_path, digits_npz):
    (tmp_path / "z.onnx").write_bytes(b"the previous Z")
    process = child(tmp_path, build_args(tmp_path, digits_npz), when="write", signame="SIGTERM")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    assert (tmp_path / "z.onnx").read_bytes() == b"the previous Z"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml", "tmp", "z.onnx"]
    assert weight_folders(tmp_path) == []


def test_a_sigkilled_builds_weight_folder_is_removed_by_the_next_run(tmp_path, digits_npz):
    process = child(tmp_path, build_args(tmp_path, digits_npz))
    wait_for_weight_folder(tmp_path, process)
    process.kill()
    process.communicate(timeout=60)
    (stale,) = weight_folders(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path / "tmp"))
        patch.setattr("tempfile.tempdir", None)
        live = weights.WeightFolder()  # what the next build does first: remove_stale(); its own folder survives
        try:
            assert not stale.exists() and weight_folders(tmp_path) == [live.path]
            assert weights.remove_stale(tmp_path / "tmp") == [] and live.path.exists()
        finally:
            live.close()
    assert weight_folders(tmp_path) == []


def test_a_real_sigterm_during_an_atomic_write_removes_the_temporary(tmp_path):
    target = tmp_path / "z.onnx"
    target.write_bytes(b"old")
    with signals.handled(), pytest.raises(signals.Interrupted) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a new one")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert info.value.status == 143
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_sigint_while_writing_a_cache_entry_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted_fsync(fd):
        os.kill(os.getpid(), signal.SIGINT)  # the entry's bytes are written, not yet renamed into place
        time.sleep(5)

    monkeypatch.setattr(cache.os, "fsync", interrupted_fsync)
    # a background job of a non-interactive shell starts with SIGINT ignored, and handled() keeps it so
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with signals.handled(), pytest.raises(signals.Interrupted) as info:
            cache.store(tmp_path, "k" * 64, np.ones((10, 4), np.float32))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert info.value.status == 130 and list(tmp_path.iterdir()) == []


def closed_pipe(monkeypatch):
    """Make stdout a real pipe whose reader has gone (``onnxmerge ... | head`` after head exits)."""
    read, write = os.pipe()
    os.close(read)
    stream = open(write, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    return stream


def test_predict_into_a_closed_pipe_ends_quietly(built_z, digit_png, capsys, monkeypatch):
    with closed_pipe(monkeypatch):
        assert main(["predict", str(built_z), str(digit_png), "--quiet"]) == 141
    assert capsys.readouterr().err == ""


def test_inspect_json_into_a_closed_pipe_ends_quietly(capsys, monkeypatch):
    from conftest import FIXTURES

    with closed_pipe(monkeypatch):
        assert main(["inspect", str(FIXTURES / "torch_legacy_cnn.onnx"), "--json", "--all"]) == 141
    assert capsys.readouterr().err == ""


def test_a_build_whose_stdout_is_a_full_disk(tmp_path, digits_npz, capsys, monkeypatch):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        code = main(build_args(tmp_path, digits_npz))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        "onnxmerge: error: could not write the output to stdout (No space left on "
        "device); the command itself finished (files it writes were written), free "
        "space where stdout goes or redirect it."
    ]
    assert (tmp_path / "z.onnx").stat().st_size > 1000


def test_a_full_tmpdir_late_in_the_build_is_one_sentence(tmp_path, digits_npz, capsys, monkeypatch):
    """The last write into the weight folder (Z's check file) hits a real file-size limit (RLIMIT_FSIZE)."""
    original = weights.WeightFolder.check

    def check_under_a_limit(self, model, full_check=True):
        if "label" not in [o.name for o in model.graph.output]:  # only Z's check, the build's last write there
            return original(self, model, full_check)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
        try:
            return original(self, model, full_check)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    monkeypatch.setattr(weights.WeightFolder, "check", check_under_a_limit)
    out = tmp_path / "z.onnx"
    code = main(build_args(tmp_path, digits_npz)[:-1])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err.startswith("onnxmerge: error: could not write into the temporary folder ")
        and err.endswith("(File too large); free disk space there or set TMPDIR to a larger disk.")
        and "\n" not in err
    ), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".z.onnx")]


def test_oserror_messages_name_the_file():
    from onnxmerge.cli import _os_error

    text = _os_error(OSError(errno.ENOSPC, "No space left on device", "/tmp/x.bin"))
    assert text.startswith("a write failed at /tmp/x.bin (No space left on device); free disk space")
