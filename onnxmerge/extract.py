"""Run a stitched graph over many images: one onnxruntime session, large batches, a progress bar."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from tqdm.auto import tqdm

from .errors import OnnxMergeError


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only for a person watching: not with --quiet, not when stderr is not a terminal."""
    return not quiet and sys.stderr.isatty()


def make_session(model: onnx.ModelProto | bytes | str, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session; idle threads do not spin, so back-to-back sessions do not slow each other."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxMergeError(f"onnxruntime cannot load the model ({str(exc).splitlines()[0]}); "
                             "re-export the source or check its opset.") from exc


def run_batched(session: ort.InferenceSession, images: np.ndarray, outputs: list[str], batch_size: int = 128,
                quiet: bool = False, desc: str = "features") -> dict[str, np.ndarray]:
    """Run ``session`` over uint8 ``images`` in batches; returns each requested output, concatenated."""
    name = session.get_inputs()[0].name
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress_enabled(quiet), leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start:start + batch_size])
            for key, value in zip(outputs, session.run(outputs, {name: batch})):
                parts[key].append(value)
            bar.update(len(batch))
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
