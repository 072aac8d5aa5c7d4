"""Load a built Z and run it: the model's own input spec and labels come from the file.

Besides ``ZModel.predict`` on an array, Z runs over lists of image files in chunks (``predict_files``,
``write_predictions``, ``evaluate_files``) on any ``runtime.tasks.Tasks``: this process, or a Dask cluster.
A chunk is one task: its worker reads the files (a file it cannot read is reported, not fatal), runs Z in its
own cached session, and either returns the rows or writes them as one Parquet part file, so no process ever
holds every row.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import LABEL, PROBABILITIES, UNKNOWN_SCORE, read_metadata
from .errors import OnnxMergeError
from .files.images import as_images, read_image_at
from .files.listing import is_url
from .files.models import load_model
from .graph.preprocess import ImageInput
from .runtime.session import make_session, run_batched
from .runtime.tasks import CHUNK_IMAGES, Tasks, cached_session, chunk_rows
from .safety import printable
from .version import install_extra_command

PART = "part-{:05d}.parquet"


class ZModel:
    """A Z file opened for inference: ``input`` (what images it takes), ``labels``, ``predict``."""

    def __init__(self, path: str | Path, batch_size: int = 128, quiet: bool = False, chunk: int = CHUNK_IMAGES):
        self.path = Path(path)
        self.model = load_model(self.path)
        metadata = read_metadata(self.model, self.path)
        outputs = {o.name for o in self.model.graph.output}
        if metadata is None or not {LABEL, PROBABILITIES} <= outputs:
            raise OnnxMergeError(
                f"{self.path} was not built by onnxmerge (no onnxmerge.labels metadata or no "
                "label/probabilities outputs); build one with `onnxmerge build`."
            )
        self.labels = metadata.labels
        self.input = _image_input(self.path, self.model)
        # [head] unknown on: the threshold metadata (None for a Z built with it off, or before it existed)
        self.unknown = (metadata.unknown or {}) if UNKNOWN_SCORE in outputs else None
        if chunk < 1:
            raise OnnxMergeError(f"--chunk must be at least 1 image, got {chunk}.")
        self.batch_size, self.quiet, self.chunk = batch_size, quiet, chunk
        self._session = None

    @property
    def session(self):
        """This process's session of Z (opened on first use: a cluster run never needs it here)."""
        if self._session is None:
            self._session = make_session(self.model)
        return self._session

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``[N]`` and probabilities ``[N, K]`` for uint8 images ``[N, H, W, C]`` (or files, a folder,
        PIL images: ``data.as_images``)."""
        out = self.run(images)
        return out[LABEL], out[PROBABILITIES]

    def run(self, images) -> dict[str, np.ndarray]:
        """``label``, ``probabilities`` and, where Z has it, ``unknown_score``, on images as ``predict`` takes."""
        names = [LABEL, PROBABILITIES] + ([UNKNOWN_SCORE] if self.unknown is not None else [])
        images = as_images(images, self.input, "the input")
        return run_batched(self.session, images, names, self.batch_size, self.quiet, desc="predict")

    def chunks(self, items: Sequence) -> list[Sequence]:
        """``items`` (files or images) in task-sized chunks, each a whole number of onnxruntime calls."""
        rows = chunk_rows(int(np.prod(self.input.shape)), self.batch_size, self.chunk)
        return [items[start : start + rows] for start in range(0, len(items), rows)]


@dataclass
class Chunk:
    """One task's result: its rows (when not written to a part file), rows written, unreadable files."""

    rows: list[tuple[str, str, float]] = field(default_factory=list)
    written: int = 0
    errors: list[str] = field(default_factory=list)


def _run_chunk(
    files: Sequence[str], digest: str, input: ImageInput, threads: int, batch: int, unknown: bool = False
) -> tuple[list[str], dict[str, np.ndarray] | None, list[str], list[int]]:
    """Read ``files`` (collecting the ones that fail) and run Z on the rest: files, outputs, errors, kept rows.
    ``unknown``: Z has ``unknown_score``, fetched too."""
    images, good, errors, kept = [], [], [], []
    for i, file in enumerate(files):
        try:
            images.append(read_image_at(file, input))
        except OnnxMergeError as exc:
            errors.append(str(exc))
            continue
        good.append(file)
        kept.append(i)
    if not good:
        return good, None, errors, kept
    names = [LABEL, PROBABILITIES] + ([UNKNOWN_SCORE] if unknown else [])
    out = run_batched(cached_session(digest, threads), np.stack(images), names, batch, quiet=True)
    return good, out, errors, kept


def predict_chunk(
    files: Sequence[str],
    digest: str,
    input: ImageInput,
    threads: int,
    batch: int,
    part: str | None = None,
    probabilities: bool = False,
    unknown: bool = False,
) -> Chunk:
    """A task: Z on ``files``; the rows returned, or written to the Parquet file ``part`` (a path or URL).
    ``unknown``: Z has ``unknown_score``; each row ends with it (and the part file has its column)."""
    good, out, errors, _ = _run_chunk(files, digest, input, threads, batch, unknown)
    if out is None:
        return Chunk(errors=errors)
    labels, probs = out[LABEL].astype(str), out[PROBABILITIES]
    if part is None:
        columns = [good, labels.tolist(), probs.max(axis=1).tolist()] + (
            [out[UNKNOWN_SCORE].tolist()] if unknown else []
        )
        return Chunk(list(zip(*columns)), 0, errors)
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "file": pa.array(good, pa.string()),
        "label": pa.array(labels, pa.string()),
        "probability": pa.array(probs.max(axis=1), pa.float32()),
    }
    if unknown:
        columns[UNKNOWN_SCORE] = pa.array(out[UNKNOWN_SCORE], pa.float32())
    if probabilities:
        columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
            pa.array(probs.reshape(-1), pa.float32()), probs.shape[1]
        )
    table = pa.table(columns)
    if is_url(part):
        import fsspec

        with fsspec.open(part, "wb") as handle:
            pq.write_table(table, handle)
    else:  # a rerun of this task (its worker was lost) replaces the part whole
        folder, name = os.path.split(part)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")  # hidden: Parquet readers skip it
        pq.write_table(table, tmp)
        os.replace(tmp, part)
    return Chunk([], len(good), errors)


def predict_files(z: ZModel, files: list[str], tasks: Tasks) -> Iterator[Chunk]:
    """Z on image files, chunk by chunk on ``tasks``; each chunk's rows, in the files' order."""
    chunks = z.chunks(files)
    unknown = z.unknown is not None
    yield from _map_with_z(z, tasks, predict_chunk, chunks, [len(c) for c in chunks], "predict", unknown=unknown)


def _map_with_z(z: ZModel, tasks: Tasks, task, items: Sequence, sizes: list[int], what: str, **kwargs) -> Iterator:
    """``task`` on each of ``items`` on ``tasks``, in order, given Z (shipped to the workers once, forgotten
    after), its input and batch size; ``kwargs`` go to every task too."""
    digest = tasks.ship(z.model.SerializeToString())
    try:
        yield from tasks.map(
            task,
            items,
            sizes,
            what,
            z.quiet,
            digest=digest,
            input=z.input,
            threads=tasks.threads,
            batch=z.batch_size,
            **kwargs,
        )
    finally:
        tasks.forget(digest)


@dataclass
class Written:
    """What ``write_predictions`` wrote: the dataset folder, its part files, rows, unreadable files."""

    path: str
    parts: int
    rows: int
    errors: list[str]


def _import_dask_writers():
    """fsspec (returned) and pyarrow, or the error that names the optional extra to install."""
    try:
        import fsspec
        import pyarrow  # noqa: F401 - the workers write the parts with it
    except ImportError as exc:
        raise OnnxMergeError(
            f"--out needs the optional extra 'dask' ({exc.name} is not installed); install it with: "
            f"{install_extra_command('dask')}"
        ) from None
    return fsspec


def _drop_temporaries(fs, partial: str, parts: list[str]) -> int:
    """Remove what is not a part from ``partial`` and count the ``parts`` present there."""
    written = set(fs.ls(partial, detail=False))
    for path in written:  # a lost worker's half-written temporary file
        if not Path(path).name.startswith("part-"):
            fs.rm(path)
    names = {Path(w).name for w in written}
    return sum(Path(p).name in names for p in parts)  # a chunk whose every file was unreadable has none


def write_predictions(z: ZModel, files: list[str], tasks: Tasks, out: str, probabilities: bool = False) -> Written:
    """Z on image files, written as a Parquet dataset ``out`` (a folder of ``part-NNNNN.parquet``, one per
    chunk, in the files' order): ``file``, ``label``, ``probability`` and, with ``probabilities``, every
    class's probability (in ``z.labels`` order). The workers write the parts, so ``out`` must be a path or URL
    every worker reaches. Nothing appears at ``out`` unless the whole run succeeds.
    """
    fsspec = _import_dask_writers()
    fs, target = fsspec.core.url_to_fs(out)
    _check_replaceable(fs, target, out)
    partial = f"{target}.partial-{uuid.uuid4().hex[:8]}"
    fs.makedirs(partial, exist_ok=True)
    try:
        chunks = z.chunks(files)
        parts = [
            fs.unstrip_protocol(f"{partial}/{PART.format(i)}") if is_url(out) else f"{partial}/{PART.format(i)}"
            for i in range(len(chunks))
        ]
        rows, errors = 0, []
        sizes = [len(c) for c in chunks]
        items, unknown = list(zip(chunks, parts)), z.unknown is not None
        for chunk in _map_with_z(
            z, tasks, _predict_part, items, sizes, "predict", probabilities=probabilities, unknown=unknown
        ):
            rows += chunk.written
            errors += chunk.errors
        if rows == 0:
            raise OnnxMergeError(
                f"none of the {len(files)} images could be read (first: {errors[0]}); nothing was written."
            )
        present = _drop_temporaries(fs, partial, parts)
        if fs.exists(target):
            fs.rm(target, recursive=True)
        fs.mv(partial, target, recursive=True)
    except BaseException:
        fs.rm(partial, recursive=True)
        raise
    return Written(out, present, rows, errors)


def _predict_part(item: tuple[Sequence[str], str], **kwargs) -> Chunk:
    files, part = item
    return predict_chunk(files, part=part, **kwargs)


def _check_replaceable(fs, target: str, out: str) -> None:
    """``out`` may be replaced only if it is a dataset this command wrote (part files and nothing else)."""
    if not fs.exists(target):
        return
    names = [Path(p).name for p in fs.ls(target, detail=False)] if fs.isdir(target) else None
    if names is None or not all(n.startswith("part-") and n.endswith(".parquet") for n in names):
        raise OnnxMergeError(
            f"{out} exists and is not a predictions dataset onnxmerge wrote; choose another --out or remove it."
        )


def evaluate_chunk(
    item: tuple[Sequence, Sequence[str]], digest: str, input: ImageInput, threads: int, batch: int, labels: list[str]
) -> tuple[np.ndarray, list[str]]:
    """A task: the confusion counts (rows true, columns predicted, over ``labels``) of Z on a chunk of
    ``(files or images, true labels)``, and the files it could not read."""
    from sklearn.metrics import confusion_matrix

    items, truths = item
    if isinstance(items, np.ndarray):
        out = run_batched(cached_session(digest, threads), items, [LABEL], batch, quiet=True)
        kept, errors = list(range(len(items))), []
    else:
        _, out, errors, kept = _run_chunk(items, digest, input, threads, batch)
    if out is None:
        return np.zeros((len(labels), len(labels)), np.int64), errors
    true = np.asarray([str(truths[i]) for i in kept])
    return confusion_matrix(true, out[LABEL].astype(str), labels=labels).astype(np.int64), errors


def evaluate_files(
    z: ZModel, items: Sequence, truths: Sequence[str], tasks: Tasks, labels: list[str]
) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of Z over ``items`` (files or a uint8 array) with true ``truths``, summed chunk by
    chunk on ``tasks``: nothing per image comes back but the files that could not be read."""
    chunks = list(zip(z.chunks(items), z.chunks(list(truths))))
    total, errors = np.zeros((len(labels), len(labels)), np.int64), []
    sizes = [len(c[1]) for c in chunks]
    for matrix, failed in _map_with_z(z, tasks, evaluate_chunk, chunks, sizes, "evaluate", labels=labels):
        total += matrix
        errors += failed
    return total, errors


def _image_input(path: Path, model) -> ImageInput:
    """The uint8 ``[N, H, W, C]`` image input Z declares, or a one-line refusal for any other input."""
    inputs = model.graph.input
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    values = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if len(values) != 4 or not all(v > 0 for v in values[1:]) or values[3] not in (1, 3):
        raise OnnxMergeError(
            f"{printable(path)} takes input {values} where onnxmerge's Z takes uint8 images "
            "[N, height, width, 1 or 3]; the file was altered or not built by onnxmerge, rebuild it."
        )
    return ImageInput(height=values[1], width=values[2], channels=values[3])
