"""Opening untrusted files without hanging, and printing untrusted text without it taking over the terminal.

* :func:`open_regular` opens a path for reading and checks **on the opened descriptor** (``fstat``, not a
  racy check of the path first) that it is a regular file. It opens with ``O_NONBLOCK`` so that a FIFO
  named ``x.png`` or ``model.onnx`` is refused at once instead of blocking the run forever waiting for a
  writer; ``nofollow`` adds ``O_NOFOLLOW`` (the feature cache: a shared folder whose entries may be links).
* :func:`printable` escapes control characters (ANSI escape sequences, TAB, newline, ...), bidirectional
  overrides and undecodable file-name bytes, so a hostile label or file name prints as visible text and
  never breaks a ``FILE<TAB>LABEL<TAB>PROBABILITY`` line.
* :func:`label_problem` says why a class label cannot go into Z (control characters, not UTF-8).
"""

from __future__ import annotations

import io
import os
import stat
import unicodedata
from pathlib import Path

from .errors import OnnxMergeError

#: Bidirectional embedding/override/isolate characters: invisible, and they reorder what a terminal shows.
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def open_regular(path: str | os.PathLike, what: str = "file", nofollow: bool = False) -> io.BufferedReader:
    """Open ``path`` for binary reading if it is a regular file; raise OnnxMergeError naming it otherwise.

    ``what`` names the file in the message (``"image"``, ``"model file"``, ...). FileNotFoundError is
    passed on as OnnxMergeError too. With ``nofollow`` a symbolic link is refused (``O_NOFOLLOW``).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise OnnxMergeError(f"{what} {printable(path)} does not exist; check the path.") from None
    except IsADirectoryError:
        raise OnnxMergeError(f"{what} {printable(path)} is a folder, not a file; give the path of a file.") from None
    except OSError as exc:
        if nofollow and Path(path).is_symlink():
            raise OnnxMergeError(f"{what} {printable(path)} is a symbolic link; refusing to follow it.") from None
        raise OnnxMergeError(
            f"{what} {printable(path)} cannot be opened ({exc.strerror or exc}); check its permissions."
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _kind(mode)
            raise OnnxMergeError(
                f"{what} {printable(path)} is {kind}, not a regular file; refusing to read it "
                "(it could block forever or never end); give a real file."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of a regular file (:func:`open_regular`); with ``limit``, a larger file is refused before reading."""
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise OnnxMergeError(
                f"{what} {printable(path)} is {size:,} bytes, more than the {limit:,} onnxmerge "
                "accepts for it; check that it is the right file."
            )
        return handle.read()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def kind_of(path: str | os.PathLike) -> str | None:
    """None if ``path`` (following links) is a regular file or does not exist, else what it is ("a FIFO", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def printable(text: object) -> str:
    """``text`` (a str, or a path) safe to print: control characters, bidi overrides and undecodable
    bytes (file names decoded with ``surrogateescape``) become visible escapes such as ``\\x1b``, ``\\t``,
    ``\\udcff``... A backslash is doubled only where the text needed escaping, so ordinary text prints as is.
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if not any(_unsafe(c) for c in text):
        return text
    out = []
    for char in text:
        if char in _SHORT:
            out.append(_SHORT[char])
        elif _unsafe(char):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _unsafe(char: str) -> bool:
    category = unicodedata.category(char)
    return category in ("Cc", "Cs") or ord(char) in _BIDI or category in ("Zl", "Zp")


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class of Z (None if it can): Z's labels are printed one per TAB-separated
    field, stored as UTF-8 in ONNX string tensors and JSON metadata."""
    if any(unicodedata.category(c) == "Cs" for c in label):
        return "is not valid UTF-8"
    if any(_unsafe(c) for c in label):
        return "contains control characters (a TAB, newline or escape sequence)"
    return None


def check_labels(labels, where: str, fix: str = "rename it") -> None:
    """Refuse class labels that would break Z's output or file (:func:`label_problem`), naming ``where`` they
    came from and what to do (``fix``)."""
    for label in dict.fromkeys(str(v) for v in labels):
        problem = label_problem(label)
        if problem:
            raise OnnxMergeError(
                f"class label '{printable(label)}' from {where} {problem}; {fix} (labels are "
                "printed in TAB-separated lines and stored as UTF-8 text)."
            )
