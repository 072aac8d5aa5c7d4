"""Load source models safely and save Z (atomically, through :mod:`onnxmerge.files.outputs`).

Model files are untrusted input: external-data locations must resolve inside the model's own folder
(no absolute paths, no ``..``, no symlinks or hard links leading elsewhere), and every failure becomes
an :class:`OnnxMergeError` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..errors import OnnxMergeError, first_line
from ..runtime.probe import probe_model
from ..runtime.weights import WeightFolder, external_bytes, external_initializers, release_freed_memory
from ..safety import open_regular, printable, read_regular
from .outputs import atomic_path

_EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}

#: protobuf cannot serialise a message above 2 GiB; bigger models keep their weights in a side file.
PROTOBUF_LIMIT = 2**31 - 1


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor in the model (subgraphs included) whose data lives in an external file."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 - walks subgraphs too
        if uses_external_data(tensor):
            yield tensor


def external_data_files(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external-data files a model refers to, each checked to stay inside ``folder``.

    Raises OnnxMergeError for a location that is absolute, climbs out with ``..``, or is a link
    (symbolic or hard) to somewhere else.
    """
    folder = folder.resolve()
    files: dict[Path, None] = {}
    for tensor in _external_tensors(model):
        keys = {entry.key for entry in tensor.external_data}
        if not keys <= _EXTERNAL_KEYS:
            # ExternalDataInfo sets every key as an attribute (CVE-2026-34445): refuse unknown keys first
            raise OnnxMergeError(
                f"tensor {tensor.name!r} has unknown external-data keys {sorted(keys - _EXTERNAL_KEYS)}; "
                "re-export the model."
            )
        try:
            info = ExternalDataInfo(tensor)
            offset, length = int(info.offset or 0), None if info.length is None else int(info.length)
        except (TypeError, ValueError) as exc:
            raise OnnxMergeError(
                f"tensor {tensor.name!r} has a malformed external-data offset or length; re-export the model."
            ) from exc
        location = info.location
        if not location or os.path.isabs(location) or Path(location).is_absolute() or ".." in Path(location).parts:
            raise OnnxMergeError(
                f"external data location {location!r} of tensor {tensor.name!r} is not a plain file name "
                f"inside {folder}; refusing to read outside the model's folder."
            )
        path = folder / location
        if path.is_symlink():
            raise OnnxMergeError(f"external data file {path} is a symbolic link; copy the real file next to the model.")
        resolved = path.resolve()
        if folder not in resolved.parents:
            raise OnnxMergeError(f"external data file {path} resolves outside {folder}; refusing to read it.")
        if not resolved.is_file():
            raise OnnxMergeError(
                f"external data file {path} for tensor {tensor.name!r} is missing; put it next to the model."
            )
        if resolved.stat().st_nlink > 1:
            raise OnnxMergeError(f"external data file {path} is a hard link; copy the real file next to the model.")
        size = resolved.stat().st_size
        length = size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > size:
            raise OnnxMergeError(
                f"external data file {path} is shorter than tensor {tensor.name!r} needs "
                f"(offset {offset} + length {length} > {size} bytes); the download is probably truncated."
            )
        files[resolved] = None
    return list(files)


def load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Read every external tensor's bytes into ``raw_data`` (what onnx's ``load_external_data_for_model``
    does), from files opened as :func:`onnxmerge.safety.open_regular` opens them: regular files only,
    checked on the descriptor, no symbolic link (the locations were validated by :func:`external_data_files`;
    this closes the window between that check and the read)."""
    handles: dict[str, object] = {}
    try:
        for tensor in _external_tensors(model):
            info = ExternalDataInfo(tensor)
            if info.location not in handles:
                handles[info.location] = open_regular(folder / info.location, "external data file", nofollow=True)
            handle = handles[info.location]
            handle.seek(int(info.offset or 0))
            tensor.raw_data = handle.read() if info.length is None else handle.read(int(info.length))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    finally:
        for handle in handles.values():
            handle.close()


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data, validating that data's locations first.

    Parameters
    ----------
    path : path to a ``.onnx`` file.

    Returns
    -------
    onnx.ModelProto with every tensor's data in memory.
    """
    return load_model_with_digest(path)[0]


def load_model_with_digest(path: str | os.PathLike, weights: WeightFolder | None = None) -> tuple[onnx.ModelProto, str]:
    """:func:`load_model`, plus the SHA-256 over the model file and its external-data files (in reference
    order), computed from the same read so the file is parsed once.

    With ``weights``, the large initializers go to that folder and a light model referring to them is
    returned (``onnxmerge.runtime.weights``): a build never holds a source's weights in memory after loading it.
    """
    path = Path(path)
    content = read_regular(path, "model file")  # a FIFO or device is refused on the descriptor, never waited on
    try:
        model = onnx.load_from_string(content)
    except Exception as exc:  # protobuf raises its own DecodeError and friends
        raise OnnxMergeError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export or re-download it."
        ) from exc
    if not model.HasField("graph") or not model.graph.node or not model.graph.output or not model.opset_import:
        raise OnnxMergeError(f"{path} holds no ONNX graph; re-export or re-download it.")
    digest = hashlib.sha256(content)
    file_sha256 = digest.hexdigest()
    data_files = external_data_files(model, path.parent)
    for file in data_files:
        with open_regular(file, "external data file", nofollow=True) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    # onnx's checker and onnxruntime are native code that a hostile model can crash or make allocate
    # without bound: they run first in a memory-limited child, and only a model that survived them there
    # reaches them here (check_structure below, then sessions).
    probe_model(
        path, file_sha256, len(content) + sum(f.stat().st_size for f in data_files), path.parent if data_files else None
    )
    try:
        load_external_data(model, path.parent)
    except OnnxMergeError:
        raise
    except Exception as exc:
        raise OnnxMergeError(f"could not read the external data of {path} ({exc}); re-export the model.") from exc
    if weights is None:
        check_structure(model, path)
        return model, digest.hexdigest()
    try:
        light = weights.offload(model)
    except OSError as exc:
        raise OnnxMergeError(
            f"could not write the weights of {path} into the temporary folder {weights.path} "
            f"({exc.strerror or exc}); free disk space there or set TMPDIR to a larger disk."
        ) from exc
    except Exception as exc:  # weights that do not parse: the checker names the problem, if it sees one
        check_structure(model, path)
        raise OnnxMergeError(
            f"{path} holds a tensor whose data cannot be read ({first_line(exc)}); re-export the model."
        ) from exc
    del model, content
    release_freed_memory()
    # checked as a light model: the checker would otherwise serialise the whole model once more
    check_structure(light, path, weights)
    check_text_attributes(light, path)
    return light, digest.hexdigest()


def check_text_attributes(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a source whose string attributes (class labels of a classifier, ...) are not UTF-8 text: the
    graph steps (onnx-graphsurgeon) and Z's JSON metadata read them as UTF-8. ``inspect`` still shows such a
    model, with the bytes escaped."""
    for graph in _graphs(model.graph):
        for node in graph.node:
            for attr in node.attribute:
                for value in [attr.s] if attr.type == onnx.AttributeProto.STRING else list(attr.strings):
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        shown = printable(value.decode("utf-8", "backslashreplace"))
                        raise OnnxMergeError(
                            f"{printable(path)}: node '{printable(node.name or node.op_type)}' has "
                            f"attribute '{printable(attr.name)}' with text that is not UTF-8 "
                            f"('{shown}'); re-export the model with UTF-8 class names."
                        ) from None


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph inside it (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def check_structure(model: onnx.ModelProto, path: Path, weights: WeightFolder | None = None) -> None:
    """Refuse a model onnx's checker rejects (cycles, missing inputs, duplicate outputs, unknown ops, opsets
    newer than the installed onnx) before any graph code or onnxruntime sees it. A light model is checked
    with its ``weights`` folder."""
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise OnnxMergeError(
                f"{path} uses opset {opset.version} but the installed onnx knows opsets up to "
                f"{newest}; upgrade onnx or re-export the model at opset {newest} or lower."
            )
    try:
        if weights is None:
            onnx.checker.check_model(model)
        else:
            weights.check(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise OnnxMergeError(f"{path} is not a valid ONNX model ({first_line(exc)[:300]}); re-export it.") from exc


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model file and the external-data files it refers to, for :func:`check_output_path`.

    Reads only the model's graph (external data stays on disk). A model that cannot be parsed yields just
    its own path: loading it later reports the problem.
    """
    path = Path(path)
    files = [path]
    try:
        with open_regular(path, "model file") as handle:
            model = onnx.load_model_from_string(handle.read())
        files += external_data_files(model, path.parent)
    except Exception:  # noqa: BLE001 - the build's own load names whatever is wrong with the file
        pass
    release_freed_memory()  # a model without external data was read whole: give that back before the build
    return files


def save_model(
    model: onnx.ModelProto,
    output: str | os.PathLike,
    size_limit: int = PROTOBUF_LIMIT,
    weights: WeightFolder | None = None,
) -> Path:
    """Write ``model`` atomically; above ``size_limit`` bytes its weights go to a uniquely named side file.

    The side file is named ``<output>.<random>.data`` so that two writes (or two Z files in one folder)
    never share or overwrite each other's weights, and it is written before the model is renamed into place.
    A light model's offloaded tensors (``weights``) are written inline, streamed from the weight folder.
    """
    output = Path(output)
    inherited = next((t for t in _external_tensors(model) if weights is None or not weights.owns(t)), None)
    if inherited is not None:
        # Z's tensors must all be in memory or in this build's weight folder: an inherited external-data
        # location could point anywhere (CVE-2025-51480, write traversal in save_external_data); onnxmerge
        # alone names Z's side file.
        raise ValueError(f"tensor {inherited.name!r} still refers to external data; load it before saving")
    offloaded = weights is not None and next(external_initializers(model), None) is not None
    if offloaded and model.ByteSize() + external_bytes(model) <= size_limit:
        with atomic_path(output) as tmp, open(tmp, "wb") as handle:
            weights.write_inline(model, handle)
        return output
    if offloaded:
        model = weights.inline(model)  # beyond protobuf's limit: the side-file path below
    model = onnx.ModelProto.FromString(model.SerializeToString()) if model.ByteSize() < PROTOBUF_LIMIT else model
    if model.ByteSize() <= size_limit:
        with atomic_path(output) as tmp:
            onnx.save_model(model, str(tmp))
        return output
    data_name = f"{output.name}.{uuid.uuid4().hex[:12]}.data"
    onnx.external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=data_name, size_threshold=1024
    )
    try:
        with atomic_path(output) as tmp:
            onnx.save_model(model, str(tmp))  # writes data_name beside tmp, i.e. beside output
    except BaseException:
        (output.parent / data_name).unlink(missing_ok=True)
        raise
    return output
