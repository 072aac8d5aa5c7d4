"""Keep a build's weights on disk: graph code edits light protos, onnxruntime reads the data itself.

During a build every large initializer of every source is written once into a private temporary folder
(``<folder>/sourceN.bin``) and its ``TensorProto`` becomes an external-data reference to it. The cut,
stitch, share and head steps then copy and edit protos of a few hundred KB instead of the whole weights,
and each onnxruntime session reads the data from the folder as it loads. Only Z's final write puts the
bytes back inline, streamed one tensor at a time.

Why: a ``ModelProto`` holds its weights in memory, and every copy (cut, stitch, with_outputs, the head,
``SerializeToString`` for a session) duplicated them; a build from two 19 MB sources peaked at 21x their
size. The reference ``SHA-256`` of each tensor is stored in the standard ``checksum`` key, so identical
weights can be recognised without reading them back (``share.py``) and the stitched graph's digest
(``cache.py``) still changes whenever a weight does.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, set_external_data, uses_external_data

from ..errors import OnnxMergeError

try:
    import fcntl
except ImportError:  # Windows: no flock; stale folders are not detected there
    fcntl = None

#: The weight folders' name prefix in the temporary directory.
PREFIX = "onnxmerge-weights-"
LOCK = ".lock"

#: Initializers below this size stay inline: shapes, axes and scales that graph code and onnx's version
#: converter read.
OFFLOAD_BYTES = 1024
#: Each tensor starts on a 4 KB page, so a reader may memory-map it.
PAGE = 4096
#: onnxruntime's session option naming the folder that external data is relative to (model bytes have no path).
ORT_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


class WeightFolder:
    """A private temporary folder holding the weights that this build's light protos refer to."""

    def __init__(self) -> None:
        remove_stale()
        try:
            # a file a session still maps cannot be removed on Windows: clean up what can be
            self._tmp = tempfile.TemporaryDirectory(prefix=PREFIX, ignore_cleanup_errors=True)
            self.path = Path(self._tmp.name)
            self._lock = _hold_lock(self.path)
        except OSError as exc:
            raise OnnxMergeError(
                f"cannot create a temporary folder for the build's weights ({exc.strerror or exc}); "
                "set TMPDIR to a writable folder."
            ) from exc
        self._files = 0

    def offload(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Move the data of ``model``'s large main-graph initializers into a new file of this folder.

        Returns a light copy that refers to that file (a fresh message: a parsed model may alias the bytes it
        was read from, and keeping it would keep those bytes alive).
        """
        name = f"source{self._files}.bin"
        self._files += 1
        with open(self.path / name, "wb") as out:
            for tensor in model.graph.initializer:
                if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or uses_external_data(
                    tensor
                ):
                    continue
                if tensor.HasField("raw_data"):
                    if len(tensor.raw_data) < OFFLOAD_BYTES:
                        continue
                    data = tensor.raw_data
                else:  # values in float_data / int64_data ...: offload their little-endian bytes
                    data = numpy_helper.to_array(tensor).tobytes()
                    if len(data) < OFFLOAD_BYTES:
                        continue
                _write(out, tensor, name, data)
        return onnx.ModelProto.FromString(model.SerializeToString())

    def read(self, tensor: onnx.TensorProto) -> bytes:
        """The bytes of an offloaded tensor."""
        info = ExternalDataInfo(tensor)
        with open(self.path / info.location, "rb") as handle:
            handle.seek(int(info.offset))
            return handle.read(int(info.length))

    def owns(self, tensor: onnx.TensorProto) -> bool:
        """Whether ``tensor`` refers to a file of this folder."""
        location = ExternalDataInfo(tensor).location
        return bool(location) and "/" not in location and (self.path / location).is_file()

    def inline(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A self-contained copy of ``model``: every offloaded tensor's bytes back in ``raw_data``."""
        full = onnx.ModelProto()
        full.CopyFrom(model)
        for tensor in external_initializers(full):
            _set_inline(tensor, self.read(tensor))
        return full

    def write_inline(self, model: onnx.ModelProto, handle: BinaryIO) -> None:
        """Serialise ``model`` to ``handle`` with every offloaded tensor inline, one tensor in memory at a time.

        onnx.save would need the whole model in memory, then its serialised copy. Protobuf parses a message
        field by field and appends repeated fields, so the model without its graph, then the graph field
        (the light graph followed by each full initializer as one more ``initializer`` entry) is the same
        model. The graph field's length prefix is computed first, without reading the data.
        """
        shell, graph = onnx.ModelProto(), onnx.GraphProto()
        shell.CopyFrom(model)
        shell.ClearField("graph")
        graph.CopyFrom(model.graph)
        offloaded = [t for t in graph.initializer if uses_external_data(t)]
        for index in reversed(range(len(graph.initializer))):
            if uses_external_data(graph.initializer[index]):
                del graph.initializer[index]
        sizes = [_inline_size(t) for t in offloaded]
        light = graph.SerializeToString()
        entry = _tag(onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number)
        handle.write(shell.SerializeToString())
        handle.write(_tag(onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number))
        handle.write(_varint(len(light) + sum(len(entry) + len(_varint(n)) + n for n in sizes)))
        handle.write(light)
        for tensor, size in zip(offloaded, sizes):
            full = onnx.TensorProto()
            full.CopyFrom(tensor)
            _set_inline(full, self.read(tensor))
            data = full.SerializeToString()
            if len(data) != size:
                raise AssertionError(f"tensor {tensor.name!r}: {len(data)} bytes serialised, {size} expected")
            handle.write(entry + _varint(size) + data)

    def check(self, model: onnx.ModelProto, full_check: bool = True) -> None:
        """onnx's checker on a light model (it finds external data relative to the model's file)."""
        path = self.path / "check.onnx"
        try:
            onnx.save_model(model, str(path))
        except OSError as exc:  # a full $TMPDIR (or a file-size limit) this late in a build
            path.unlink(missing_ok=True)
            raise OnnxMergeError(
                f"could not write into the temporary folder {self.path} ({exc.strerror or exc}); "
                "free disk space there or set TMPDIR to a larger disk."
            ) from exc
        try:
            onnx.checker.check_model(str(path), full_check=full_check)
        finally:
            path.unlink()

    def close(self) -> None:
        """Remove the folder (also done when the object is garbage-collected, and at exit)."""
        self._tmp.cleanup()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _hold_lock(folder: Path):
    """Lock ``folder/.lock`` for as long as this process lives (the kernel drops the lock when it dies, even by
    SIGKILL): how :func:`remove_stale` tells a live build's folder from a dead one's, without trusting
    process ids (another machine or pid namespace may share the temporary folder)."""
    if fcntl is None:
        return None
    # locked under a temporary name, then renamed: a concurrent remove_stale never sees an unlocked .lock
    handle = open(folder / ".lock.new", "wb")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        os.rename(folder / ".lock.new", folder / LOCK)
    except OSError:  # a file system without flock (some network mounts): no stale detection for this folder
        handle.close()
        return None
    return handle


def remove_stale(tmpdir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the ``onnxmerge-weights-*`` folders of builds that died without cleaning up (SIGKILL, a power cut,
    the OOM killer); returns those removed.

    A folder is stale when its ``.lock`` exists and can be locked: its owner, which held the lock for its whole
    life, is gone. Folders of live builds, of other users (not ours to remove) and of onnxmerge versions
    without a lock are left alone.
    """
    if fcntl is None:
        return []
    removed = []
    base = Path(tmpdir or tempfile.gettempdir())
    try:
        candidates = list(base.glob(PREFIX + "*"))
    except OSError:
        return []
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: a live build
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(folder)
    return removed


def external_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Main-graph initializers whose data is external."""
    return (t for t in model.graph.initializer if uses_external_data(t))


def external_bytes(model: onnx.ModelProto) -> int:
    """Total bytes of the main graph's external initializers (as their ``length`` keys say)."""
    return sum(int(ExternalDataInfo(t).length or 0) for t in external_initializers(model))


def checksum(tensor: onnx.TensorProto) -> str | None:
    """The ``checksum`` key offloading stored (SHA-256 of the tensor's bytes), if any."""
    return next((e.value for e in tensor.external_data if e.key == "checksum"), None)


def _write(out: BinaryIO, tensor: onnx.TensorProto, location: str, data: bytes) -> None:
    """Append ``data`` page-aligned to ``out`` and make ``tensor`` refer to it."""
    out.write(b"\0" * (-out.tell() % PAGE))
    offset = out.tell()
    out.write(data)
    if not tensor.HasField("raw_data"):  # onnx's set_external_data wants raw_data to be there
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
        tensor.raw_data = data
    del tensor.external_data[:]
    set_external_data(tensor, location, offset, len(data), checksum=hashlib.sha256(data).hexdigest())
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


def _inline_size(tensor: onnx.TensorProto) -> int:
    """Serialised size of ``tensor`` with its external data inline, from its ``length`` key."""
    stub = onnx.TensorProto()
    stub.CopyFrom(tensor)
    _set_inline(stub, b"")
    length = int(ExternalDataInfo(tensor).length)
    return stub.ByteSize() - 1 + len(_varint(length)) + length  # the empty raw_data's length byte, replaced


def _set_inline(tensor: onnx.TensorProto, data: bytes) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = data


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library's symbols as this process linked them (glibc's malloc_trim on Linux)."""
    if os.name != "posix":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def release_freed_memory() -> None:
    """Give freed C-heap memory back to the system (glibc keeps large freed blocks in its heap otherwise).

    Called where much was just freed: a source's serialised bytes and protos after offloading, the loading
    garbage of an onnxruntime session, a batch loop's activations. Without it each of these stays resident
    (about 1x the model's size each) and adds to the next step's peak. A no-op where glibc is not the
    allocator.
    """
    libc = _libc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass
