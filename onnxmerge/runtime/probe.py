"""Run onnx's checker and onnxruntime on an untrusted model in a memory-limited child process first.

A mutated model can crash native code (a segfault or abort in onnx or onnxruntime kills the whole
process, past any ``except``) or make it allocate without bound. :func:`probe_model` runs those native
steps in a forked child with an address-space limit; a child killed by a signal, or one that ran out of
its memory, becomes an :class:`OnnxMergeError` naming the file, and the model never reaches native code
in this process. Children are forked from one long-lived worker (:mod:`onnxmerge._probe_worker`) that
has imported onnx and onnxruntime once, so each probe costs tens of milliseconds, not an interpreter start.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import OnnxMergeError

try:
    import resource
except ImportError:  # Windows: no fork, no rlimit
    resource = None

#: Where no fork and no address-space limit exist (Windows), the checks run in-process as before: a crash
#: there still takes the process down. On macOS RLIMIT_AS is accepted but not enforced, so only the crash
#: half of the protection holds.
SUPPORTED = resource is not None and hasattr(os, "fork")

MEMORY_ENV = "ONNXMERGE_PROBE_MEMORY_MB"
#: Seconds a check may take (default 600). Generous: a session on a real model takes seconds; a child past
#: it is looping on a hostile graph or stuck.
TIMEOUT_ENV = "ONNXMERGE_PROBE_TIMEOUT_S"
#: Test hook: the child kills itself with this signal before checking, to exercise the crash path.
TEST_SIGNAL_ENV = "ONNXMERGE_PROBE_TEST_SIGNAL"

# The worker imports only the standard library, onnx and onnxruntime: it is run from its file path, not
# as ``-m onnxmerge...``, and the current folder is dropped from sys.path so no stray module shadows them.
_BOOT = (
    "import runpy, sys\n"
    "if not getattr(sys.flags, 'safe_path', False): del sys.path[0]\n"
    "runpy.run_path(sys.argv[1], run_name='__main__')\n"
)
_WORKER = Path(__file__).with_name("_probe_worker.py")


def memory_limit(model_bytes: int) -> int:
    """Bytes a child may map on top of the interpreter and libraries, for a model of ``model_bytes``.

    The child holds the file (1x), the parsed model with its external data (1x), the serialised copy it
    hands onnxruntime (1x) and onnxruntime's own initializers (1x); 1 GiB more covers onnxruntime's
    graph optimisation and constant folding of ordinary models; 2 GiB at least, so small models never
    come near it. ``ONNXMERGE_PROBE_MEMORY_MB`` overrides it (tests lower it; a huge real model raises it).
    """
    megabytes = _env_int(MEMORY_ENV, 0)
    return megabytes << 20 if megabytes else max(2 << 30, 4 * model_bytes + (1 << 30))


def _env_int(name: str, default: int) -> int:
    """A positive whole number from the environment variable ``name``, or ``default`` if it is unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) == 0:
        raise OnnxMergeError(f"{name}={text!r} is not a positive whole number; set it to e.g. 4096 or unset it.")
    return int(text)


class _Worker:
    """The long-lived worker process, started on first use, restarted if it dies; one request at a time."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        # One thread per BLAS/OpenMP pool and two malloc arenas: every thread and arena reserves address
        # space, which counts against RLIMIT_AS and would eat the children's budget on many-core machines.
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        # stderr is dropped: the children send their own to a file, and the worker writes there only if
        # it cannot import onnx/onnxruntime, which ask() reports in one line.
        return subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )

    def prestart(self) -> None:
        """Start the worker if it is not running, without waiting for it to be ready."""
        with self._lock:
            if self._owner == os.getpid() and (self._process is None or self._process.poll() is not None):
                try:
                    self._process = self._start()
                except OSError:
                    self._process = None  # ask() retries and reports it

    def ask(self, request: dict) -> dict:
        """Send one request, return the worker's reply; one restart if the worker is gone."""
        with self._lock:
            if self._owner != os.getpid():  # a forked copy of this process must not share our worker's pipes
                self._process, self._owner = None, os.getpid()
            for _ in range(2):
                try:
                    if self._process is None or self._process.poll() is not None:
                        self._process = self._start()
                    self._process.stdin.write(json.dumps(request) + "\n")
                    self._process.stdin.flush()
                    line = self._process.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    return json.loads(line)
                self.close()
            raise OnnxMergeError(
                f"could not start the process that checks {request['path']} (python "
                f"{sys.executable}); check that onnx and onnxruntime import in it."
            )

    def close(self) -> None:
        """Close the worker's stdin (it exits on EOF) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()


_worker = _Worker()
atexit.register(_worker.close)


def prestart() -> None:
    """Start the checking process now, so that it loads onnx and onnxruntime (~0.5 s) while the caller
    does other work (a CLI parsing its recipe, say) instead of when the first model is loaded."""
    if SUPPORTED:
        _worker.prestart()


def probe_model(path: Path, sha256: str, data_bytes: int, folder: Path | None) -> None:
    """Check the model at ``path`` in a memory-limited child; raise OnnxMergeError if it crashes or runs out.

    Parameters
    ----------
    path : the model file; the child reads it and checks it against ``sha256`` (of the file alone), so it
        sees the bytes this process parsed.
    data_bytes : size of the file plus its external data, which sets the memory limit.
    folder : the folder of the model's external data (already validated), or None if it has none.

    A Python-level refusal in the child (invalid graph, a model onnxruntime cannot load) is not raised
    here: the caller repeats that step in-process, safely since it did not crash the child, and words it.
    """
    if not SUPPORTED:
        return
    limit = memory_limit(data_bytes)
    timeout = _env_int(TIMEOUT_ENV, 600)
    reply = _worker.ask(
        {
            "path": str(path),
            "sha256": sha256,
            "folder": None if folder is None else str(folder),
            "limit": limit,
            "timeout": timeout,
            "signal": _env_int(TEST_SIGNAL_ENV, 0),
        }
    )
    status, detail = reply["status"], reply["detail"]
    if status == "signal" and detail == str(int(signal.SIGALRM)):
        raise OnnxMergeError(
            f"model {str(path)!r} took more than {timeout} s to be checked by onnx/onnxruntime; "
            "the file is malformed or hostile, re-export it (if it really is that large, raise "
            f"{TIMEOUT_ENV})."
        )
    if status == "memory":
        raise OnnxMergeError(
            f"model {str(path)!r} needs more than the {limit >> 20} MB memory limit to be "
            "checked by onnx/onnxruntime; the file is malformed or hostile, re-export it (if it "
            f"really is that large, raise {MEMORY_ENV})."
        )
    if status == "signal":
        raise OnnxMergeError(
            f"model {str(path)!r} crashed onnx/onnxruntime while being checked (signal "
            f"{detail}); the file is malformed or hostile, re-export it."
        )
    if status == "changed":
        raise OnnxMergeError(
            f"model {str(path)!r} changed on disk while being loaded; load it again once nothing writes to it."
        )
    if status == "exit":
        raise OnnxMergeError(
            f"model {str(path)!r} made onnx/onnxruntime exit while being checked (exit code "
            f"{detail}); the file is malformed or hostile, re-export it."
        )
