"""Load a built Z and run it: the model's own input spec and labels come from the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io.images import as_images
from .errors import OnnxMergeError
from .runtime.session import make_session, run_batched
from .learn.head import LABEL, PROBABILITIES
from .io.models import load_model
from .graph.preprocess import ImageInput
from .safety import printable


class ZModel:
    """A Z file opened for inference: ``input`` (what images it takes), ``labels``, ``predict``."""

    def __init__(self, path: str | Path, batch_size: int = 128, quiet: bool = False):
        self.path = Path(path)
        model = load_model(self.path)
        props = {p.key: p.value for p in model.metadata_props}
        outputs = {o.name for o in model.graph.output}
        if "onnxmerge.labels" not in props or not {LABEL, PROBABILITIES} <= outputs:
            raise OnnxMergeError(f"{self.path} was not built by onnxmerge (no onnxmerge.labels metadata or no "
                                 "label/probabilities outputs); build one with `onnxmerge build`.")
        self.labels = _labels(self.path, props["onnxmerge.labels"])
        self.input = _image_input(self.path, model)
        self.session = make_session(model)
        self.batch_size, self.quiet = batch_size, quiet

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``[N]`` and probabilities ``[N, K]`` for uint8 images ``[N, H, W, C]`` (or files, a folder,
        PIL images: ``data.as_images``)."""
        out = run_batched(self.session, as_images(images, self.input, "the input"), [LABEL, PROBABILITIES], self.batch_size, self.quiet, desc="predict")
        return out[LABEL], out[PROBABILITIES]


def _labels(path: Path, text: str) -> list[str]:
    """Z's class names from its ``onnxmerge.labels`` metadata: a JSON list of strings, or a one-line refusal."""
    try:
        labels = json.loads(text)
    except (ValueError, RecursionError):
        labels = None
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        raise OnnxMergeError(f"{printable(path)} has malformed onnxmerge.labels metadata (not a JSON list of class "
                             "names); the file was altered or damaged, rebuild it with `onnxmerge build`.")
    return labels


def _image_input(path: Path, model) -> ImageInput:
    """The uint8 ``[N, H, W, C]`` image input Z declares, or a one-line refusal for any other input."""
    inputs = model.graph.input
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    values = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if len(values) != 4 or not all(v > 0 for v in values[1:]) or values[3] not in (1, 3):
        raise OnnxMergeError(f"{printable(path)} takes input {values} where onnxmerge's Z takes uint8 images "
                             "[N, height, width, 1 or 3]; the file was altered or not built by onnxmerge, rebuild it.")
    return ImageInput(height=values[1], width=values[2], channels=values[3])
