"""Where a run writes: output paths checked before any work, and files written atomically (temp file + rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OnnxMergeError
from ..safety import kind_of, printable
from ..signals import temporary


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    However the block ends (an error, Ctrl-C, SIGTERM or SIGHUP via ``onnxmerge.signals``), the temporary
    file is gone afterwards and ``target`` is either untouched or complete.
    """
    target = Path(target)
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        raise OnnxMergeError(
            f"cannot write into {printable(target.parent)} ({exc.strerror}); choose another output path."
        ) from exc
    os.close(handle)
    tmp_path = Path(tmp)
    with temporary(tmp_path):
        try:
            yield tmp_path
            if os.name == "posix":  # mkstemp made it 0600; give it the mode a plain open() would (umask)
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, target)
        except OSError as exc:
            raise OnnxMergeError(
                f"could not write {printable(target)} ({exc.strerror or exc}); check free space and permissions."
            ) from exc


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def check_output_path(output: str | os.PathLike, protected: list[Path] = (), flag: str = "-o") -> Path:
    """Validate an output path before any work: its folder exists and is writable, it is not a folder or a
    special file (device, FIFO, socket), and it is none of the files the run reads.

    ``protected`` lists the files the run reads (sources, their external-data files, the recipe, every
    image and ``.npz``: :func:`onnxmerge.files.images.input_files`, :func:`model_files`). The output is refused if it
    is one of them after symbolic links are resolved, or the same file under another name (a hard link:
    same device and inode). ``flag`` names the option in the message (``-o``, ``--report``).
    """
    text = os.fspath(output)
    output = Path(output)
    folder = output.parent if str(output.parent) else Path(".")
    shown = printable(output)
    if isinstance(text, str) and text.endswith(("/", os.sep)):  # Path() drops the slash that says "a folder"
        raise OnnxMergeError(
            f"output path {printable(text)} names a folder; give a file name such as {printable(output / 'z.onnx')}."
        )
    if not folder.is_dir():
        raise OnnxMergeError(
            f"output folder {printable(folder)} does not exist; create it first or choose another {flag} path."
        )
    if not os.access(folder, os.W_OK):
        raise OnnxMergeError(f"output folder {printable(folder)} is not writable; choose another {flag} path.")
    if output.is_dir():
        raise OnnxMergeError(
            f"output path {shown} is a folder; give a file name such as {printable(output / 'z.onnx')}."
        )
    kind = kind_of(output)
    if kind is not None:  # os.replace would put a regular file in place of /dev/null, a FIFO or a socket
        raise OnnxMergeError(
            f"output path {shown} is {kind}; onnxmerge writes regular files only, choose another {flag} path."
        )
    if os.path.lexists(output):
        resolved = output.resolve()
        for source in protected:
            if resolved == Path(source).resolve() or _same_file(output, source):
                raise OnnxMergeError(
                    f"output path {shown} is {_role(source)} this run reads ({printable(source)}); "
                    f"writing there would replace it, choose another {flag} path."
                )
    return output


def check_output_folder(
    folder: str | os.PathLike, names: tuple[str, ...], protected: list[Path] = (), flag: str = "--report"
) -> Path:
    """Validate an output folder (created later if missing) and the files ``names`` to be written into it:
    it is no file, it can be created (its nearest existing parent is a writable folder), and each file
    passes :func:`check_output_path`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OnnxMergeError(
            f"{flag} {printable(folder)} is an existing file, not a folder; give a folder (created "
            "if missing) for the report files."
        )
    if folder.is_dir():
        for name in names:
            check_output_path(folder / name, protected, flag)
        return folder
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OnnxMergeError(
            f"{flag} folder {printable(folder)} cannot be created ({printable(parent)} is not a "
            "writable folder); choose another path."
        )
    return folder


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _role(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    if name.endswith(".onnx"):
        return "one of the source models"
    if name.endswith(".toml"):
        return "the recipe"
    if name.endswith(".npz"):
        return "a data file"
    return "an input file (a source's external data, an image or data file)"
