"""Run a stitched graph over many images: one onnxruntime session, large batches, a progress bar."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from tqdm.auto import tqdm

from ..errors import OnnxMergeError, first_line
from ..graph.topology import with_outputs
from .weights import ORT_FOLDER_KEY, WeightFolder, external_bytes, release_freed_memory


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only for a person watching: not with --quiet, not when stderr is not a terminal."""
    return not quiet and sys.stderr.isatty()


#: onnxruntime's log severity for onnxmerge's sessions: 0 verbose .. 3 error, 4 fatal
ORT_LOG_FATAL_ONLY = 4

#: Models with more weights than this are "large": their sessions run without onnxruntime's arena (below),
#: and a build runs their sources one group at a time (``runtime.engine.LocalEngine``).
LARGE_MODEL_BYTES = 8 * 2**20


def make_session(
    model: onnx.ModelProto | bytes | str, threads: int = 0, weights: WeightFolder | None = None, built: bool = False
) -> ort.InferenceSession:
    """An onnxruntime CPU session; idle threads do not spin, so back-to-back sessions do not slow each other.

    ``weights`` is the folder a light model's offloaded tensors live in (``onnxmerge.runtime.weights``).
    ``built``: the model is a graph onnxmerge made from sources that load on their own (the stitched graph, Z),
    so a refusal is onnxmerge's fault, and says so, not the source's.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # onnxruntime's own log lines (ANSI-coloured, on stderr) never reach the user: what goes wrong surfaces
    # as the exception it raises, which onnxmerge turns into its one-line error
    options.log_severity_level = ORT_LOG_FATAL_ONLY
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    size = 0
    if isinstance(model, onnx.ModelProto):
        size = external_bytes(model)
        payload = model.SerializeToString()
    else:
        payload = model
    if weights is not None:
        options.add_session_config_entry(ORT_FOLDER_KEY, str(weights.path))
    # Large models run without onnxruntime's CPU arena, so each run's activations go back to the system: with
    # the arena every session keeps its largest batch's activations for its lifetime (building Z from two
    # EfficientNet-Lite0 on 64 images peaked at 5.4 GB with it, 1.6 GB without). Small models keep it: without
    # it the demo's extraction ran 5-20% slower (benchmarks/RESULTS.md).
    if not isinstance(payload, str) and len(payload) + size > LARGE_MODEL_BYTES:
        options.enable_cpu_mem_arena = False
        # and without a memory pattern: it allocates the whole batch's planned activations in one block
        # (one EfficientNet-Lite0, 2 images per call: 44 MB peak above the session with it, 33 MB without)
        options.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if built:
            raise OnnxMergeError(
                f"onnxruntime cannot load the graph onnxmerge built from the sources ({first_line(exc)}); every "
                "source loads on its own, so this is a bug in onnxmerge: please report it with the source models."
            ) from exc
        raise OnnxMergeError(
            f"onnxruntime cannot load the model ({first_line(exc)}); re-export the source or check its opset."
        ) from exc
    if not options.enable_cpu_mem_arena:
        release_freed_memory()  # loading and optimising left about the weights' size freed but resident
    return session


# Source input values (each source's input after its resize, summed over the sources one session runs) per
# onnxruntime call during a build. Without onnxruntime's arena a call's activations come from the C heap,
# which keeps about 3x a call's live activations resident, so the calls are small: feature extraction runs two
# 224x224x3 images per call (as fast as larger batches: 165 vs 155 images/s at 8 for one EfficientNet-Lite0),
# the parity check, whose Z session holds every source's weights at once, one image. Two EfficientNet-Lite0:
# peak 2.5-2.7x the sources' size, extraction 0.91x a bare onnxruntime loop at batch 32 (benchmarks/RESULTS.md,
# c and d); two images per call everywhere peaked at 3.3x. Small images still run up to ``batch_size`` per call.
EXTRACT_VALUES_PER_CALL = 320 * 1024
CHECK_VALUES_PER_CALL = 160 * 1024

# Values of Z's input per onnxruntime call: 128 images of 64x64x3 (so 10 images of 224x224x3). Activation
# memory grows with the batch: 64 images of 224x224x3 through two EfficientNet-Lite0 in one call took ~1.4 GB.
MAX_VALUES_PER_CALL = 128 * 64 * 64 * 3


def run_batched(
    session: ort.InferenceSession,
    images: np.ndarray,
    outputs: list[str],
    batch_size: int = 128,
    quiet: bool = False,
    desc: str = "features",
    lean: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``session`` over uint8 ``images`` in batches; returns each requested output, concatenated.

    Large images run in smaller batches (at most ``MAX_VALUES_PER_CALL`` input values per call). ``lean``
    hands each call's freed activations back to the system before the next call (slower: the next call
    faults its pages in again), for the few calls where memory is tightest.
    """
    name = session.get_inputs()[0].name
    per_image = int(np.prod(images.shape[1:])) if images.ndim > 1 else 1
    batch_size = max(1, min(batch_size, MAX_VALUES_PER_CALL // max(per_image, 1)))
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress_enabled(quiet), leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            try:
                values = session.run(outputs, {name: batch})
            except Exception as exc:  # e.g. a source whose weights do not fit its own op (a corrupt file)
                sources = sorted({o.split("/")[0] for o in outputs if "/" in o})
                raise OnnxMergeError(
                    f"onnxruntime failed running {', '.join(map(repr, sources)) or 'the model'} "
                    f"on images {start}-{start + len(batch) - 1} ({first_line(exc)}); the model file is "
                    "probably corrupt, re-export it."
                ) from exc
            for key, value in zip(outputs, values):
                parts[key].append(value)
            bar.update(len(batch))
            if lean:
                release_freed_memory()
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def tensor_rank(
    model: onnx.ModelProto, tensor: str, probe_input: np.ndarray, weights: WeightFolder | None = None
) -> int:
    """Rank of ``tensor``, measured by running ``model`` with it exposed on one sample input."""
    session = make_session(with_outputs(model, [tensor]), weights=weights)
    return session.run([tensor], {session.get_inputs()[0].name: probe_input})[0].ndim


class Runner:
    """A model loaded in onnxruntime, run on arrays for its first input: what the build's checks need of a
    model outside the engine (a source's original graph, a rewritten copy), without holding a session."""

    def __init__(self, model: onnx.ModelProto, weights: WeightFolder | None = None):
        self._session = make_session(model, weights=weights)
        self.input_name = self._session.get_inputs()[0].name

    def run(self, inputs: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        """The outputs ``names`` (None: every graph output) of one onnxruntime call on ``inputs``."""
        return self._session.run(names, {self.input_name: inputs})


def check_loads(model: onnx.ModelProto, weights: WeightFolder | None = None) -> None:
    """Raise :class:`OnnxMergeError` unless onnxruntime loads ``model`` (its ops, opset and weights)."""
    make_session(model, weights=weights)
