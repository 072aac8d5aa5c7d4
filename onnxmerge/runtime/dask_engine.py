"""The Dask engine: onnxmerge's graphs on a Dask distributed cluster (the optional extra ``onnxmerge[dask]``).

``DaskCluster`` is the ``Tasks`` of ``runtime.tasks`` on a cluster: a ``LocalCluster`` on loopback (one
single-threaded worker process per core) or any scheduler address (``dask scheduler``, dask-jobqueue,
dask-kubernetes). A model is shipped once per worker process as bytes by a ``WorkerPlugin`` that the
scheduler keeps, so a worker that joins or is restarted later gets it too; each worker then opens one
onnxruntime session per model (``tasks.cached_session``), with one intra-op thread per task: parallelism
comes from the worker processes, and onnxruntime's own threads would only fight over the same cores.

``DaskEngine`` is the build's ``Engine`` on such a cluster: the stitched graph's outputs on images in
chunks, gathered in order. The work is shuffle-free: every chunk is independent, results come back (or go
to files) by chunk index, so a worker lost mid-run only costs its chunks, which the scheduler reruns.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed
from tqdm.auto import tqdm

from ..errors import OnnxMergeError, first_line
from .engine import LocalEngine, owner
from .session import EXTRACT_VALUES_PER_CALL, progress_enabled
from .tasks import chunk_rows, digests_task, forget_model, model_digest, outputs_task, register_model

#: How long to try reaching a scheduler before saying it is unreachable.
CONNECT_TIMEOUT = "5s"
#: Tasks in flight per worker: enough that a worker never waits for its next chunk (one running, the rest
#: queued on it), few enough that the scheduler holds a bounded number of chunks' file names.
WINDOW_PER_WORKER = 4
WINDOW_MIN = 8


class ModelPlugin(WorkerPlugin):
    """Puts one serialised model into every worker process's registry, keyed by its digest."""

    def __init__(self, digest: str, payload: bytes):
        self.digest, self.payload = digest, payload

    def setup(self, worker) -> None:
        register_model(self.payload, self.digest)

    def teardown(self, worker) -> None:
        forget_model(self.digest)


class DaskCluster:
    """A Dask client (and, without an address, the ``LocalCluster`` it started), with onnxmerge's scratch folder.

    The local cluster's workers keep their files (spill, locks) in a private temporary folder that ``close``
    removes. Each task's session runs ``threads = 1`` intra-op thread.
    """

    threads = 1

    def __init__(self, address: str | None = None, workers: int | None = None, quiet: bool = False):
        self.address, self.quiet = address, quiet
        self.scratch = tempfile.TemporaryDirectory(prefix="onnxmerge-dask-", ignore_cleanup_errors=True)
        self.cluster: LocalCluster | None = None
        self._plugins: dict[str, str] = {}  # digest -> plugin name
        if address is None:
            # loopback only: the cluster serves this process and nothing else on the network
            with warnings.catch_warnings():  # the scheduler's health endpoint found port 8787 taken: it takes another
                warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
                self.cluster = LocalCluster(
                    n_workers=workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    local_directory=self.scratch.name,
                    silence_logs=logging.ERROR,
                )
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as exc:
                self.scratch.cleanup()
                raise OnnxMergeError(
                    f"cannot reach the Dask scheduler at {address} ({first_line(exc)}); start "
                    "one with `dask scheduler` (and workers with `dask worker ADDRESS`) or fix "
                    "--address."
                ) from None

    @property
    def workers(self) -> int:
        """Worker processes now connected."""
        return len(self.client.scheduler_info().get("workers", {}))

    def ship(self, payload: bytes) -> str:
        """Give every worker (present and future) the model ``payload``; returns its digest."""
        digest = model_digest(payload)
        if digest not in self._plugins:
            name = f"onnxmerge-model-{digest[:16]}"
            self.client.register_plugin(ModelPlugin(digest, payload), name=name)
            self._plugins[digest] = name
        return digest

    def forget(self, digest: str) -> None:
        """Workers drop the model and its sessions."""
        name = self._plugins.pop(digest, None)
        if name is not None:
            try:
                self.client.unregister_worker_plugin(name)
            except Exception:  # a worker that left meanwhile: nothing to drop there
                pass

    def map(
        self, func: Callable[..., Any], chunks: Sequence, sizes: Sequence[int], desc: str, quiet: bool, **kwargs
    ) -> Iterator[Any]:
        """``func(chunk, **kwargs)`` for every chunk on the cluster; results in the chunks' order.

        At most ``WINDOW_PER_WORKER`` tasks per worker are in flight (at least ``WINDOW_MIN``): a new one is
        submitted as one finishes, so the scheduler never holds millions of file names, and this process
        holds only the results that arrived ahead of an earlier chunk's. Arrays are scattered to the
        workers rather than sent inside the task graph.
        """
        task = functools.partial(func, **kwargs)
        token = uuid.uuid4().hex[:8]
        pending = iter(enumerate(chunks))
        index: dict[str, int] = {}
        live: set = set()

        def submit() -> Any:
            item = next(pending, None)
            if item is None:
                return None
            i, chunk = item
            if isinstance(chunk, np.ndarray):
                chunk = self.client.scatter(chunk, hash=False)
            future = self.client.submit(task, chunk, key=f"onnxmerge-{desc}-{token}-{i:06d}", pure=False)
            index[future.key] = i
            live.add(future)
            return future

        queue = as_completed()
        for _ in range(max(WINDOW_MIN, WINDOW_PER_WORKER * self.workers)):
            future = submit()
            if future is None:
                break
            queue.add(future)
        done: dict[int, Any] = {}
        following = 0
        try:
            with tqdm(total=sum(sizes), desc=desc, unit="img", disable=not progress_enabled(quiet), leave=False) as bar:
                for future in queue:
                    i = index.pop(future.key)
                    try:
                        done[i] = future.result()
                    except KilledWorker as exc:
                        raise OnnxMergeError(
                            f"Dask gave up on chunk {i} of {desc}: it killed {exc.last_worker} "
                            "and the workers that retried it; give the workers more memory."
                        ) from None
                    live.discard(future)
                    future.release()
                    following_future = submit()
                    if following_future is not None:
                        queue.add(following_future)
                    bar.update(sizes[i])
                    while following in done:
                        yield done.pop(following)
                        following += 1
        finally:
            if live:
                self.client.cancel(list(live))

    def close(self) -> None:
        """Drop the shipped models, close the client and the cluster it started, remove the scratch folder."""
        for digest in list(self._plugins):
            self.forget(digest)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.scratch.cleanup()


class DaskEngine:
    """The build's ``Engine`` on a cluster: each session group's part of the stitched graph, made
    self-contained (its weights inline) and shipped once, runs on chunks of the images; the outputs are
    gathered in the images' order.

    ``local`` is the same graph's ``LocalEngine``: it decides groups, batch sizes and joined outputs, and
    serves what the build runs in this process (the parity check's 64 images, Z's own session).
    """

    def __init__(self, local: LocalEngine, cluster: DaskCluster):
        self.local, self.cluster = local, cluster
        self._shipped: dict[tuple[str, ...], str] = {}

    def outputs(
        self, images: np.ndarray, names: list[str], budget: int = EXTRACT_VALUES_PER_CALL
    ) -> dict[str, np.ndarray]:
        """On the cluster, chunk by chunk. ``images`` may be an array or a lazy set of image files (anything
        with ``chunks(rows)`` and a picklable ``load(chunk)``, e.g. ``io.images.ImageFiles``): then only
        file names travel and each worker decodes its chunk itself."""
        needed = self.local.needed(names)
        if len(images) == 0:
            return self.local.outputs(np.asarray(images), names, budget)
        per_image = int(np.prod(images.shape[1:]))
        result: dict[str, np.ndarray] = {}
        for group in self.local.groups:
            mine = [n for n in needed if owner(n) in group]
            if not mine:
                continue
            batch = self.local.batch(group, budget)
            rows = chunk_rows(per_image, batch)
            chunks, load = _chunks(images, rows)
            parts = list(
                self.cluster.map(
                    outputs_task,
                    chunks,
                    [len(c) for c in chunks],
                    "features",
                    self.local.quiet,
                    digest=self._ship(group),
                    names=mine,
                    batch=batch,
                    threads=self.cluster.threads,
                    load=load,
                )
            )
            for name in mine:
                result[name] = np.concatenate([p[name] for p in parts])
        return self.local.join(result, names)

    def pixel_digests(self, images) -> list[bytes]:
        """``digests_task`` over ``images`` on the cluster (a lazy set of files: decoded on the workers)."""
        chunks, load = _chunks(images, chunk_rows(int(np.prod(images.shape[1:])), 1))
        parts = self.cluster.map(digests_task, chunks, [len(c) for c in chunks], "digests", self.local.quiet, load=load)
        return [d for part in parts for d in part]

    def _ship(self, group: list[str]) -> str:
        key = tuple(group)
        if key not in self._shipped:
            part = self.local.part(self.local.group_outputs(group))
            self._shipped[key] = self.cluster.ship(self.local.weights.inline(part).SerializeToString())
        return self._shipped[key]

    # what the build runs in this process
    def batch(self, group: list[str] | None = None, budget: int = EXTRACT_VALUES_PER_CALL) -> int:
        return self.local.batch(group, budget)

    def part_session(self, outputs: list[str]):
        return self.local.part_session(outputs)

    def session(self, model):
        return self.local.session(model)

    def close(self) -> None:
        """Workers drop this graph's parts; this process's sessions are released. The cluster stays open."""
        for digest in self._shipped.values():
            self.cluster.forget(digest)
        self._shipped.clear()
        self.local.close()


def _chunks(images, rows: int) -> tuple[list, object]:
    """``images`` in task chunks of ``rows``, and the worker-side ``load`` for them: None for an array's
    slices, the lazy set's own ``load`` for chunks of file names (``io.images.ImageFiles``)."""
    if isinstance(images, np.ndarray):
        return [images[start : start + rows] for start in range(0, len(images), rows)], None
    return images.chunks(rows), images.load
