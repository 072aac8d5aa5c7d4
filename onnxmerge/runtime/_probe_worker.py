"""The probe's worker process: checks untrusted models in memory-limited children, one fork per model.

Started by :mod:`onnxmerge.runtime.probe` as ``python -c BOOT this_file``, so it imports only the standard library,
onnx and onnxruntime (not the ``onnxmerge`` package, whose import pulls in scikit-learn: ~1.5 s). It
imports them once, then forks a child per request, so a probe costs a fork and the checks, not an
interpreter start. Each child limits its address space, runs onnx's checker, shape inference and an
onnxruntime session on the model, and reports on a pipe; the worker reports how the child ended.

Protocol, one JSON object per line: request on stdin ``{"path", "sha256", "folder", "limit", "timeout", "signal"}``,
reply on stdout ``{"status": "ok" | "soft" | "memory" | "changed" | "signal" | "exit", "detail": str}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import sys
import tempfile
import warnings

import onnx
import onnx.checker
import onnx.external_data_helper
import onnx.shape_inference
import onnxruntime as ort

#: Text that onnx, onnxruntime or numpy write when an allocation failed. onnxruntime catches std::bad_alloc
#: during constant folding, logs it and carries on, so the session succeeds under the limit although the
#: same model would allocate without bound in the parent: its log is scanned, not only its exceptions.
MEMORY_MARKERS = (
    "bad_alloc",
    "bad allocation",
    "failed to allocate",
    "unable to allocate",
    "out of memory",
    "memoryerror",
)


def _address_space() -> int:
    """Bytes of address space this process has mapped now (the interpreter and libraries: ~200 MB)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _checks(request: dict) -> tuple[str, str]:
    """Run the native steps the parent runs on a loaded model: onnx's checker with strict shape inference,
    then an onnxruntime session. Returns (status, detail).

    "soft" means a Python-level refusal (invalid graph, onnxruntime cannot load it): the parent repeats
    the same step in-process, which cannot crash since it did not crash here, and words the error itself.
    """
    with open(request["path"], "rb") as handle:
        payload = handle.read()
    if hashlib.sha256(payload).hexdigest() != request["sha256"]:
        return "changed", "the file changed on disk after it was read"
    if request["folder"] is not None:  # locations validated by the parent (onnxmerge.files.models) first
        model = onnx.load_from_string(payload)
        onnx.external_data_helper.load_external_data_for_model(model, request["folder"])
        payload = model.SerializeToString()  # what the parent's make_session hands onnxruntime
    # The checks take bytes, not a ModelProto, which onnx would serialise again for its C++ side (on a
    # 100 MB model that costs more than the check). The parent hands onnx a re-serialisation of the message
    # parsed from these same bytes, which decodes to the same message.
    note = ""
    try:
        onnx.checker.check_model(payload, full_check=True)  # the checker plus strict shape inference
    except MemoryError:
        raise
    except Exception as exc:
        try:
            onnx.checker.check_model(payload)
        except MemoryError:
            raise
        except Exception as plain:  # the parent's own check_model refuses it too, with its message
            return "soft", f"checker: {plain}"
        # Strict inference stopped at its first complaint; inspect.py runs the lenient one in-process.
        note = f"full check: {exc}"
        try:
            onnx.shape_inference.infer_shapes(payload, strict_mode=False)
        except MemoryError:
            raise
        except Exception as lenient:  # not fatal: it only exercised the native code the parent will run
            note += f"; shape inference: {lenient}"
    options = ort.SessionOptions()  # its log lines go to the child's captured log (memory markers are read there)
    options.intra_op_num_threads = 1  # session creation needs no pool; fewer threads, less address space
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return "soft", f"onnxruntime: {exc}"
    return ("soft" if note else "ok"), note


def _child(request: dict, report: int) -> None:
    """In the forked child: limit memory, silence and capture native logs, check, write the verdict."""
    limit = _address_space() + int(request["limit"])  # the limit is on top of what is already mapped
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file of this size
    signal.alarm(int(request["timeout"]))  # SIGALRM's default action ends a child that loops or deadlocks
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)  # stdout is the worker's reply channel; native logs go to the file instead
    os.dup2(log.fileno(), 2)
    if request.get("signal"):
        os.kill(os.getpid(), int(request["signal"]))  # test hook (ONNXMERGE_PROBE_TEST_SIGNAL), see probe.py
    try:
        status, detail = _checks(request)
    except MemoryError:
        status, detail = "memory", "MemoryError"
    except Exception as exc:
        status, detail = "soft", f"{type(exc).__name__}: {exc}"
    log.seek(0)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read().decode("utf-8", "replace"))  # onnxruntime's colours
    lowered = (text + detail).lower()
    marker = next((m for m in MEMORY_MARKERS if m in lowered), None)
    if marker is not None and status != "memory":
        status, detail = "memory", next((line for line in text.splitlines() if marker in line.lower()), detail)
    os.write(report, json.dumps({"status": status, "detail": detail[:500]}).encode())


def _warm_up() -> None:
    """Check a one-node model and open a session on it once, before any fork.

    onnx builds its operator-schema tables and onnxruntime its environment and kernel registry on first
    use (~60 and ~20 ms); done here, every child inherits them instead of paying for them.
    """
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "warm_up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # before the fork, stderr is still the terminal's
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # no thread pool alive across fork
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _serve() -> None:
    """Answer requests until stdin closes (the parent exited or closed it)."""
    _warm_up()
    for line in sys.stdin:
        request = json.loads(line)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(read_end)
                _child(request, write_end)
            except BaseException:
                code = 70
            finally:
                os._exit(code)  # never return into the worker's loop
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            verdict = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            reply = {"status": "signal", "detail": str(os.WTERMSIG(status))}
        elif not verdict:
            reply = {"status": "exit", "detail": str(os.waitstatus_to_exitcode(status))}
        else:
            reply = json.loads(verdict)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF on stdin ends us
    # Python >= 3.12 warns on fork() with other threads alive; onnxruntime's import starts one idle timer
    # thread. Forking after the import is what makes a probe cheap (10-30 ms, not ~300 ms); a child that
    # hung on a lock that thread held would end at the alarm, as a hostile model would. The warning would
    # only reach the user's terminal.
    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
    _serve()
