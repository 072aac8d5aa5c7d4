"""Feature cache: a second build over the same sources and images does not run the backbones again.

One ``.npy`` file per (stitched graph, images) pair, in one folder (default ``~/.cache/onnxmerge``, or
``$ONNXMERGE_CACHE_DIR``; the CLI's ``--cache DIR`` / ``--no-cache``). The key is a SHA-256 over the
serialised stitched graph (sources, cuts, preprocessing, sharing: everything that decides the features),
the image array (shape, dtype, bytes), the batch size and the onnxruntime and onnxmerge versions. A head
changed in the recipe (C, classes, extra training images of another set) does not change the key.

Entries are untrusted: a cache folder may be shared between users and machines, and a file in it may be
damaged, truncated, replaced or planted. So each entry is a small header (format, key, shape, SHA-256 over
the key, shape and data) followed by the float32 rows, and loading it

* opens it only if it is a regular file, checked on the descriptor (``O_NOFOLLOW``: a symbolic link is
  refused; ``O_NONBLOCK``: a FIFO is refused, never waited on);
* checks the header's size, the key, the row count and that rows x columns x 4 is exactly the rest of the
  file **before** allocating anything (a header claiming 18 TiB allocates nothing);
* recomputes the digest (a flipped bit is found) and checks the values are finite;
* recomputes a few randomly chosen rows with the sources and compares them (``check``): a digest only
  proves the entry is what its writer wrote, and anyone who can write the folder can write a consistent
  header; features shuffled or replaced row by row fail this spot check with near certainty.

An entry that fails any of these is ignored (the features are recomputed and the entry rewritten), with a
warning naming the file. Writes go to a temporary name in the cache folder, are flushed to disk and renamed
into place; however the write ends (a full disk, Ctrl-C, SIGTERM), no partial entry is left under the
entry's name and the temporary file is removed. Nothing is written anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import warn
from ..safety import printable
from ..signals import temporary
from ..version import __version__

ENV = "ONNXMERGE_CACHE_DIR"
SUFFIX = ".features"
MAGIC = b"onnxmerge-features-2\n"
#: A header is a key, a shape and a digest: about 200 bytes.
MAX_HEADER_BYTES = 4096
#: Widest feature row accepted (a cached row is every source's feature and head output side by side).
MAX_COLUMNS = 1 << 22
#: Rows of a cached entry recomputed and compared before it is used, and how close they must be (relative
#: to max(1, max |value|)); onnxruntime's results for a row vary with the batch it ran in by ~1e-6.
SPOT_CHECK_ROWS = 8
SPOT_CHECK_TOLERANCE = 1e-4


def default_cache_dir() -> Path:
    """``$ONNXMERGE_CACHE_DIR`` if set, else ``~/.cache/onnxmerge`` (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxmerge"


def graph_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialised stitched graph: computed once per build, part of every key."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def feature_key(graph: str, images: np.ndarray, outputs: list[str], batch_size: int) -> str:
    """Hex digest naming the ``outputs`` of ``images`` through the stitched graph whose ``graph_digest`` is
    ``graph``."""
    digest = hashlib.sha256()
    digest.update(
        f"onnxmerge {__version__}|onnxruntime {ort.__version__}|batch {batch_size}|"
        f"outputs {outputs}|graph {graph}|".encode()
    )
    images = np.ascontiguousarray(images)
    digest.update(f"|images {images.dtype.str} {list(images.shape)}|".encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def load(
    folder: str | os.PathLike | None, key: str, rows: int, check: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray | None:
    """The cached features ``[rows, D]`` for ``key``, or None (no cache, no entry, or an entry that failed a check).

    ``check(indices)`` recomputes the features of the rows ``indices`` (the build runs the sources on those
    images); a cached row that differs from its recomputation beyond :data:`SPOT_CHECK_TOLERANCE` makes
    the whole entry untrusted.
    """
    if folder is None:
        return None
    path = Path(folder) / f"{key}{SUFFIX}"
    try:
        array = _read_entry(path, key, rows)
    except _Untrusted as exc:
        warn(f"feature cache entry {printable(path)} {exc}; ignored, the features are recomputed.")
        return None
    if array is None:
        return None
    if check is not None and rows:
        picked = np.sort(np.random.default_rng().choice(rows, size=min(SPOT_CHECK_ROWS, rows), replace=False))
        fresh = np.asarray(check(picked), dtype=np.float32)
        tolerance = SPOT_CHECK_TOLERANCE * max(1.0, float(np.abs(fresh).max(initial=0.0)))
        if fresh.shape != (len(picked), array.shape[1]) or np.abs(fresh - array[picked]).max() > tolerance:
            warn(
                f"feature cache entry {printable(path)} holds features that differ from the sources' own on a "
                "spot check of its rows (replaced or reordered); ignored, the features are recomputed."
            )
            return None
    return array


class _Untrusted(Exception):
    """An entry that exists but fails a check; the message says which."""


def _read_entry(path: Path, key: str, rows: int) -> np.ndarray | None:
    """An entry's array after every check that needs no sources; None if there is no entry."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if path.is_symlink():
            raise _Untrusted("is a symbolic link") from None
        raise _Untrusted(f"cannot be opened ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Untrusted("is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        head = handle.read(len(MAGIC) + 4)
        if head[: len(MAGIC)] != MAGIC or len(head) != len(MAGIC) + 4:
            raise _Untrusted("is not an onnxmerge feature file (an older format, truncated or replaced)")
        size = int.from_bytes(head[len(MAGIC) :], "little")
        if size > MAX_HEADER_BYTES:
            raise _Untrusted(f"declares a {size:,}-byte header")
        try:
            header = json.loads(handle.read(size))
            entry_key, shape, digest = header["key"], header["shape"], header["sha256"]
            count, width = (int(v) for v in shape)
        except (ValueError, KeyError, TypeError, RecursionError):
            raise _Untrusted("has a malformed header") from None
        if entry_key != key:
            raise _Untrusted("was written for another key (renamed or copied from another entry)")
        if count != rows or not 0 < width <= MAX_COLUMNS:
            raise _Untrusted(f"claims shape [{count}, {width}] where [{rows}, 1..{MAX_COLUMNS}] is expected")
        data_bytes = count * width * 4
        if info.st_size != len(MAGIC) + 4 + size + data_bytes:
            raise _Untrusted(
                f"is {info.st_size:,} bytes, not the {len(MAGIC) + 4 + size + data_bytes:,} its header "
                "declares (truncated or extended)"
            )
        array = np.empty((count, width), np.dtype("<f4"))  # bounded: the file really holds this many bytes
        if handle.readinto(memoryview(array).cast("B")) != data_bytes:
            raise _Untrusted("changed while it was read")
    if _digest(key, array) != digest:
        raise _Untrusted("does not match its SHA-256 (damaged or edited)")
    if not np.isfinite(array).all():
        raise _Untrusted("holds NaN or infinite values")
    return array


def _digest(key: str, array: np.ndarray) -> str:
    """SHA-256 over an entry's key, shape and float32 bytes."""
    digest = hashlib.sha256(f"{key}|{list(array.shape)}|<f4|".encode())
    digest.update(memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B"))
    return digest.hexdigest()


def store(folder: str | os.PathLike | None, key: str, features: np.ndarray) -> Path | None:
    """Write ``features`` atomically as ``FOLDER/KEY.features``; returns the path (None if no cache).

    A cache that cannot be written (read-only folder, full disk) is not an error: the build goes on.
    """
    if folder is None:
        return None
    folder = Path(folder)
    target = folder / f"{key}{SUFFIX}"
    array = np.ascontiguousarray(features, dtype="<f4")
    header = json.dumps(
        {"format": 2, "key": key, "shape": list(array.shape), "dtype": "<f4", "sha256": _digest(key, array)}
    ).encode()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=folder)
    except OSError:
        return None
    with temporary(tmp):  # removed however the write ends, unless it was renamed into place
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(MAGIC + len(header).to_bytes(4, "little") + header)
                handle.write(memoryview(array).cast("B"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError:
            return None
    return target
