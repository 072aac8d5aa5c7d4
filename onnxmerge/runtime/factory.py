"""Where a build's extraction and a prediction run: this process, or a Dask cluster (its own module, so that
``tasks`` (the work) and ``dask_engine`` (one place to run it) do not import each other)."""

from __future__ import annotations

from ..config import engine_of
from ..errors import OnnxMergeError
from ..version import install_extra_command
from .tasks import LocalTasks, Tasks


def open_tasks(
    engine: str | None = None, address: str | None = None, workers: int | None = None, quiet: bool = False
) -> Tasks:
    """``LocalTasks`` for engine "local"; a Dask cluster for engine "dask" (or any ``address``).

    Without an address, Dask's engine starts a ``LocalCluster`` on loopback, one single-threaded worker
    process per core (or ``workers``). Dask is imported only here: it is the optional extra ``onnxmerge[dask]``.
    """
    if engine_of(engine, address, workers) == "local":
        return LocalTasks()
    try:
        from .dask_engine import DaskCluster
    except ImportError as exc:
        raise OnnxMergeError(
            f"--engine dask needs the optional extra 'dask' ({exc.name} is not installed); "
            f"install it with: {install_extra_command('dask')}"
        ) from None
    return DaskCluster(address, workers, quiet)
