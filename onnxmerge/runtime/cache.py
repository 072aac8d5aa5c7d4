"""Feature cache: a second build over the same sources and images does not run the backbones again.

One ``.npy`` file per (stitched graph, images) pair, in one folder (default ``~/.cache/onnxmerge``, or
``$ONNXMERGE_CACHE_DIR``; the CLI's ``--cache DIR`` / ``--no-cache``). The key is a SHA-256 over the
serialised stitched graph (sources, cuts, preprocessing, sharing: everything that decides the features),
the image array (shape, dtype, bytes), the batch size and the onnxruntime and onnxmerge versions. A head
changed in the recipe (C, classes, extra training images of another set) does not change the key.

Files are written to a temporary name in the cache folder and renamed into place; nothing is written
anywhere else. A file that cannot be read back as a finite float32 ``[N, D]`` array is ignored and
rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..version import __version__

ENV = "ONNXMERGE_CACHE_DIR"
SUFFIX = ".features.npy"


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
    """Hex digest naming the ``outputs`` of ``images`` through the stitched graph whose ``graph_digest`` is ``graph``."""
    digest = hashlib.sha256()
    digest.update(f"onnxmerge {__version__}|onnxruntime {ort.__version__}|batch {batch_size}|"
                  f"outputs {outputs}|graph {graph}|".encode())
    images = np.ascontiguousarray(images)
    digest.update(f"|images {images.dtype.str} {list(images.shape)}|".encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def load(folder: str | os.PathLike | None, key: str, rows: int) -> np.ndarray | None:
    """The cached features for ``key``, or None (no cache, no file, or a file that is not valid)."""
    if folder is None:
        return None
    path = Path(folder) / f"{key}{SUFFIX}"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or array.ndim != 2 or len(array) != rows or not np.isfinite(array).all():
        return None
    return array


def store(folder: str | os.PathLike | None, key: str, features: np.ndarray) -> Path | None:
    """Write ``features`` atomically as ``FOLDER/KEY.features.npy``; returns the path (None if no cache).

    A cache that cannot be written (read-only folder, full disk) is not an error: the build goes on.
    """
    if folder is None:
        return None
    folder = Path(folder)
    target = folder / f"{key}{SUFFIX}"
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return target
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return None
