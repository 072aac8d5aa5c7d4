"""Where chunks of work run: in this process (``LocalTasks``) or on a Dask cluster (``dask_engine.DaskCluster``).

Both take the same calls: ``ship(model bytes) -> digest`` makes a self-contained model available where the
tasks run, and ``map(func, chunks, **kwargs)`` runs ``func(chunk, **kwargs)`` on every chunk and yields the
results in the chunks' order. A task opens its model with ``cached_session(digest, threads)``: one
onnxruntime session per model per process, built from the shipped bytes and kept (sessions cannot be
pickled, so only bytes travel, once per process).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from .session import make_session, progress_enabled

# A process's shipped models (digest -> serialised, self-contained model) and the sessions opened on them.
_MODELS: dict[str, bytes] = {}
_SESSIONS: dict[tuple[str, int], object] = {}
_LOCK = threading.Lock()


def model_digest(payload: bytes) -> str:
    """SHA-256 of a serialised model: the key under which it is shipped and its session cached."""
    return hashlib.sha256(payload).hexdigest()


def register_model(payload: bytes, digest: str | None = None) -> str:
    """Make ``payload`` available to ``cached_session`` in this process; returns its digest."""
    digest = digest or model_digest(payload)
    with _LOCK:
        _MODELS[digest] = payload
    return digest


def forget_model(digest: str) -> None:
    """Drop a shipped model and its sessions from this process."""
    with _LOCK:
        _MODELS.pop(digest, None)
        for key in [k for k in _SESSIONS if k[0] == digest]:
            del _SESSIONS[key]


def cached_session(digest: str, threads: int = 0):
    """This process's onnxruntime session of the shipped model ``digest`` (opened on first use).

    ``threads`` is onnxruntime's intra-op thread count (0: one per core); onnxruntime's ``run`` is
    thread-safe, so a worker running several tasks at once shares the session.
    """
    key = (digest, threads)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            if digest not in _MODELS:
                raise RuntimeError(f"model {digest[:12]} was not shipped to this process")
            session = _SESSIONS[key] = make_session(_MODELS[digest], threads=threads, built=True)
    return session


class Tasks(Protocol):
    """Runs chunks of work; ``threads`` is the intra-op thread count each task's session gets."""

    threads: int
    workers: int

    def ship(self, payload: bytes) -> str: ...

    def forget(self, digest: str) -> None: ...

    def map(
        self, func: Callable[..., Any], chunks: Sequence, sizes: Sequence[int], desc: str, quiet: bool, **kwargs
    ) -> Iterator[Any]: ...

    def close(self) -> None: ...


class LocalTasks:
    """Every chunk in this process, one after another; onnxruntime uses every core for each call."""

    threads = 0
    workers = 1

    def ship(self, payload: bytes) -> str:
        return register_model(payload)

    def forget(self, digest: str) -> None:
        forget_model(digest)

    def map(
        self, func: Callable[..., Any], chunks: Sequence, sizes: Sequence[int], desc: str, quiet: bool, **kwargs
    ) -> Iterator[Any]:
        with tqdm(total=sum(sizes), desc=desc, unit="img", disable=not progress_enabled(quiet), leave=False) as bar:
            for chunk, size in zip(chunks, sizes):
                yield func(chunk, **kwargs)
                bar.update(size)

    def close(self) -> None:
        pass


#: A chunk (one task) holds at most this many images and this many input values (16 MB of uint8): large
#: enough that a task's fixed cost (scheduling, one file of output) is small next to its work, small enough
#: that two workers share 20,000 small images in 20 tasks and a worker holds one chunk of 224x224x3 images in
#: ~16 MB.
CHUNK_IMAGES = 1024
CHUNK_VALUES = 16 * 2**20


def chunk_rows(values_per_image: int, batch: int, images: int = CHUNK_IMAGES) -> int:
    """Images per chunk: a whole number of ``run_batched`` calls, so every call sees the same images as a
    single-process run over all of them (onnxruntime's results do not then depend on the engine)."""
    from .session import MAX_VALUES_PER_CALL

    call = max(1, min(batch, MAX_VALUES_PER_CALL // max(values_per_image, 1)))
    return call * max(1, min(images, CHUNK_VALUES // max(values_per_image, 1)) // call)


def digests_task(images, load=None) -> list[bytes]:
    """A digest of each image's pixels (a task; with ``load``, of files decoded here, on the worker)."""
    images = images if load is None else load(images)
    return [hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest() for img in images]


def outputs_task(images, digest: str, names: list[str], batch: int, threads: int, load=None) -> dict:
    """One chunk's named outputs of a shipped model (a task: runs wherever ``Tasks.map`` sends it).
    With ``load``, the chunk is a list of files and ``load(files)`` decodes them here, on the worker."""
    from .session import run_batched

    images = images if load is None else load(images)
    return run_batched(cached_session(digest, threads), images, names, batch, quiet=True)
