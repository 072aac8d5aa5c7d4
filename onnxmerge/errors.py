"""The one exception type for problems a user can cause and fix, and how to quote a library's error in it."""

import re
import sys


class OnnxMergeError(Exception):
    """A user-fixable problem: one sentence naming the file, key or tensor and what to do.

    The CLI prints the message and exits non-zero, never a traceback. Bugs in onnxmerge itself
    raise ordinary Python exceptions instead, so they are not mistaken for bad input.
    """


def first_line(exc: BaseException) -> str:
    """An exception's first message line, to quote inside a one-sentence error (its type if it has none).

    onnxruntime prefixes its messages with the C++ source location and signature
    (``/onnxruntime_src/...model.cc:256 onnxruntime::Model::Model(...) ``): that part is dropped.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return re.sub(r"/\S+\.(?:cc|cpp|h):\d+ \S*?\(.*?\) ", "", text.splitlines()[0])


def warn(message: str) -> None:
    """Print ``onnxmerge: warning: MESSAGE`` to stderr (something went wrong that the run could work around)."""
    print(f"onnxmerge: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """Print ``onnxmerge: note: MESSAGE`` to stderr (what a run left out on purpose, e.g. unlabelled files)."""
    print(f"onnxmerge: note: {message}", file=sys.stderr)
