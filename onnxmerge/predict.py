"""Load a built Z and run it: the model's own input spec and labels come from the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import as_images
from .errors import OnnxMergeError
from .extract import make_session, run_batched
from .head import LABEL, PROBABILITIES
from .modelio import load_model
from .preprocess import ImageInput


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
        self.labels: list[str] = json.loads(props["onnxmerge.labels"])
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        self.input = ImageInput(height=dims[1], width=dims[2], channels=dims[3])
        self.session = make_session(model)
        self.batch_size, self.quiet = batch_size, quiet

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``[N]`` and probabilities ``[N, K]`` for uint8 images ``[N, H, W, C]`` (or files, a folder,
        PIL images: ``data.as_images``)."""
        out = run_batched(self.session, as_images(images, self.input, "the input"), [LABEL, PROBABILITIES], self.batch_size, self.quiet, desc="predict")
        return out[LABEL], out[PROBABILITIES]
