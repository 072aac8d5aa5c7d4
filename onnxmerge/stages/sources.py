"""Stage 1, resolve the sources: load each model safely, find its feature and head, fill in its
preprocessing from its input, make a fixed batch dynamic, and cut it at the feature."""

from __future__ import annotations

import numpy as np
import onnx

from ..config import ImageInput, Preprocess, Source
from ..errors import OnnxMergeError, first_line
from ..files.models import load_model_with_digest
from ..graph.batchloop import per_image
from ..graph.cut import cut, inferred_rank, source_input
from ..graph.inspect import find_head, find_head_output, precision, read_labels
from ..graph.preprocess import own_preprocessing, reference_preprocess
from ..graph.topology import with_outputs
from ..runtime.session import Runner, check_loads, tensor_rank
from ..runtime.weights import WeightFolder
from ..safety import printable
from .results import ResolvedSource

MAX_PIXELS = 8192 * 8192  # a declared size beyond this is a hostile or broken model, not a photo


def resolve_sources(specs: list[Source], image: ImageInput, weights: WeightFolder) -> list[ResolvedSource]:
    """Every source loaded, checked, resolved and cut, in recipe order."""
    resolved = []
    for spec in specs:
        try:
            source = _resolve(spec, image, weights)
            probe = reference_preprocess(np.zeros((1, *image.shape), np.uint8), image, source.preprocess)
            rank = inferred_rank(source.model, source.feature)
            if rank is None and source.feature in _tensor_names(source.model):
                rank = tensor_rank(source.model, source.feature, probe, weights)  # e.g. a computed Reshape
            source.cut = cut(source.model, source.feature, source.head_output, rank)
        except OnnxMergeError as exc:
            if str(exc).startswith(f"source {spec.name!r}"):
                raise
            raise OnnxMergeError(_naming_source(str(exc), spec)) from exc
        except Exception as exc:  # a model that passed onnx's checker and onnxruntime but defeats the graph steps
            raise OnnxMergeError(
                f"source {spec.name!r} ({spec.model}) could not be cut ({type(exc).__name__}: "
                f"{first_line(exc)}); name its feature tensor "
                "explicitly, or report the model if it is valid."
            ) from exc
        resolved.append(source)
    return resolved


def _naming_source(message: str, spec: Source) -> str:
    """``message`` with the source's name and (where it does not name it already) its model file in front."""
    model = printable(spec.model)
    return f"source {spec.name!r}" + ("" if model in message else f" ({model})") + f": {message}"


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    """The graph's inputs and every tensor a node computes (a missing feature is the cut's error to report)."""
    return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}


def _resolve(spec: Source, image: ImageInput, weights: WeightFolder) -> ResolvedSource:
    model, sha256 = load_model_with_digest(spec.model, weights)
    try:
        check_loads(model, weights)
    except OnnxMergeError as exc:
        raise OnnxMergeError(f"source {spec.name!r} ({spec.model}): {exc}") from exc
    head_output = None
    if spec.feature == "auto":
        head = find_head(model, spec.head_output)
        feature, reason, head_output = head.feature, head.reason, head.output
    else:
        feature, reason = spec.feature, "named in the recipe"
        try:
            head_output = find_head_output(model, spec.head_output)
        except OnnxMergeError:
            if spec.head_output != "auto":
                raise
    carried = read_labels(model)
    labels = list(spec.labels) if spec.labels is not None else carried.labels
    warnings = [f"source {spec.name!r}: {w}" for w in carried.warnings] if spec.labels is None else []
    preprocess = resolve_preprocess(spec.name, model, spec.preprocess, image)
    model, note = dynamic_batch(spec.name, model, preprocess, image, weights, [feature, head_output])
    return ResolvedSource(
        spec,
        model,
        feature,
        reason,
        head_output,
        labels,
        preprocess,
        sha256,
        batch_note=note,
        label_warnings=warnings,
        warnings=_normalisation_ignored(spec, model),
        precision=precision(model),
    )


def _normalisation_ignored(spec: Source, model: onnx.ModelProto) -> list[str]:
    """The warning for a recipe that gives scale/mean/std to a source that does its own preprocessing."""
    own = own_preprocessing(model, source_input(model).name)
    given = [k for k in ("scale", "mean", "std") if getattr(spec.preprocess, k) is not None]
    if not (own and given):
        return []
    return [
        f"source {spec.name!r} does its own preprocessing ({own}), so Z feeds it pixels and ignores the recipe's "
        f"{'/'.join(given)}; remove them from its [sources.preprocess]."
    ]


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def resolve_preprocess(name: str, model: onnx.ModelProto, spec: Preprocess, image: ImageInput) -> Preprocess:
    """Fill height/width/channels/layout/dtype from the source's input where the recipe leaves them out."""
    inp = source_input(model)
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.dtype(np.float32)
    raw = own_preprocessing(model, inp.name) is not None
    if np.dtype(dtype).kind != "f" and not (raw and np.dtype(dtype) == np.uint8):
        raise OnnxMergeError(
            f"source {name!r} takes {np.dtype(dtype)} input; onnxmerge feeds sources float tensors, or uint8 pixels."
        )
    if not raw:
        missing = [k for k in ("scale", "mean", "std") if getattr(spec, k) is None]
        if missing:
            raise OnnxMergeError(
                f"source {name!r} preprocess is missing the required key {missing[0]!r}: its model takes a "
                "normalised float input (only a model that takes raw pixels may leave out scale, mean and std)."
            )
    if len(dims) == 4:
        height, width, channels, layout = _image_input(name, inp.name, dims, spec, image)
    elif len(dims) == 2:
        height, width, channels, layout = _flat_input(name, dims, spec, image)
    else:
        raise OnnxMergeError(
            f"source {name!r} takes an input of rank {len(dims)}; onnxmerge feeds images as "
            "[N, C, H, W], [N, H, W, C] or flat [N, H*W*C]."
        )
    if height * width > MAX_PIXELS:
        raise OnnxMergeError(
            f"source {name!r} takes {height}x{width} images, more than onnxmerge accepts "
            f"({MAX_PIXELS:,} pixels); set a smaller height/width in its [sources.preprocess]."
        )
    if channels not in (1, 3):
        raise OnnxMergeError(f"source {name!r} expects {channels} channels; onnxmerge converts between 1 and 3 only.")
    mean, std = (None, None) if raw else _per_channel_normalisation(name, spec, channels)
    return Preprocess(
        scale=None if raw else spec.scale,
        mean=mean,
        std=std,
        height=height,
        width=width,
        channels=channels,
        layout=layout,
        flat=len(dims) == 2,
        dtype=np.dtype(dtype),
        raw=raw,
    )


def _image_input(
    name: str, input_name: str, dims: list, spec: Preprocess, image: ImageInput
) -> tuple[int, int, int, str]:
    """Size, channels and layout of a 4-D image input: the recipe's, else the model's static ones, else Z's."""
    layout = spec.layout
    if layout is None:
        if _static(dims[1]) in (1, 3) and _static(dims[3]) not in (1, 3):
            layout = "NCHW"
        elif _static(dims[3]) in (1, 3):
            layout = "NHWC"
        else:
            raise OnnxMergeError(
                f"source {name!r}: cannot tell the layout of input shape {dims}; set "
                'layout = "NCHW" or "NHWC" in its [sources.preprocess].'
            )
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    for key, given, static in (("height", spec.height, h), ("width", spec.width, w), ("channels", spec.channels, c)):
        if given is not None and _static(static) is not None and given != static:
            raise OnnxMergeError(
                f"source {name!r}: preprocess {key} = {given} but the model's input "
                f"{input_name!r} {dims} ({layout}) has {key} {static}; remove the key or fix it."
            )
    height = spec.height or _static(h) or image.height
    width = spec.width or _static(w) or image.width
    channels = spec.channels or _static(c) or image.channels
    return height, width, channels, layout


def _flat_input(name: str, dims: list, spec: Preprocess, image: ImageInput) -> tuple[int, int, int, str]:
    """Size and channels of the image a flat ``[N, H*W*C]`` input is the flattening of."""
    height, width = spec.height, spec.width
    layout = spec.layout or "NHWC"
    channels = spec.channels or image.channels
    if height is None or width is None:
        if _static(dims[1]) == image.height * image.width * channels:
            height, width = height or image.height, width or image.width
        else:
            raise OnnxMergeError(
                f"source {name!r} takes a flat input {dims}; set height, width and channels "
                "in its [sources.preprocess] so that height*width*channels matches."
            )
    if _static(dims[1]) and _static(dims[1]) != height * width * channels:
        raise OnnxMergeError(
            f"source {name!r} takes {dims[1]} values per image but height*width*channels "
            f"is {height * width * channels}; fix its [sources.preprocess]."
        )
    return height, width, channels, layout


def _per_channel_normalisation(name: str, spec: Preprocess, channels: int) -> tuple[tuple, tuple]:
    for key in ("mean", "std"):
        values = getattr(spec, key)
        if len(values) not in (1, channels):
            raise OnnxMergeError(
                f"source {name!r}: {key} has {len(values)} values but the source takes "
                f"{channels} channels; give one value per channel."
            )
    mean = tuple(spec.mean) * (channels if len(spec.mean) == 1 else 1)
    std = tuple(spec.std) * (channels if len(spec.std) == 1 else 1)
    return mean, std


def dynamic_batch(
    name: str,
    model: onnx.ModelProto,
    preprocess: Preprocess,
    image: ImageInput,
    weights: WeightFolder,
    keep: list[str] = (),
) -> tuple[onnx.ModelProto, str | None]:
    """Make a fixed batch dimension dynamic where the graph allows it (checked by running a batch of 2); a
    batch-1-only graph runs image by image inside a Loop (``keep``: tensors the build reads, kept exposed)."""
    dim = source_input(model).type.tensor_type.shape.dim
    if not dim or not dim[0].HasField("dim_value"):
        return model, None
    fixed = dim[0].dim_value
    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    for value in list(relaxed.graph.input) + list(relaxed.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "N"
    del relaxed.graph.value_info[:]
    probe = reference_preprocess(np.zeros((2, *image.shape), np.uint8), image, preprocess)
    try:
        Runner(relaxed, weights).run(probe)
    except Exception:  # batch 1 baked into the graph: run it image by image inside Z
        return run_per_image(name, model, fixed, probe, list(keep), weights)
    return relaxed, f"fixed batch {fixed} made dynamic (checked on a batch of 2)"


def check_per_image(original: Runner, wrapped: Runner, images: np.ndarray, names: list[str]) -> float:
    """The wrapped model on a batch of ``images`` vs the original run on each image alone: the largest
    |difference| relative to ``max(1, max |original|)`` over ``names`` (0.0: identical)."""
    together = wrapped.run(images, names)
    worst = 0.0
    for k in range(len(images)):
        alone = original.run(images[k : k + 1], names)
        for a, b in zip(alone, together):
            a64, b64 = np.asarray(a, np.float64), np.asarray(b[k : k + 1], np.float64)
            scale = max(1.0, float(np.abs(a64).max())) if a64.size else 1.0
            worst = max(worst, float(np.abs(a64 - b64).max()) / scale if a64.size else 0.0)
    return worst


def run_per_image(
    name: str, model: onnx.ModelProto, fixed: int, probe: np.ndarray, keep: list[str], weights=None
) -> tuple[onnx.ModelProto, str]:
    """For the build: ``model`` (fixed batch ``fixed``) wrapped by ``per_image``, checked on ``probe``
    (a few preprocessed images) against the original run image by image; ``(wrapped, the build's note)``.

    A fixed batch other than 1, or a wrapper that does not reproduce the source, is a one-sentence error.
    """
    if fixed != 1:
        raise OnnxMergeError(
            f"source {name!r} has a fixed batch of {fixed} baked into its graph (it fails on "
            "other batches), so Z could not take a dynamic batch; re-export it with a dynamic "
            "batch axis."
        )
    input_name = source_input(model).name
    wrapped = per_image(model, input_name, keep)
    # checked on the build's probe and on random images in the range a normalised input has
    noise = np.random.default_rng(0).standard_normal((3, *probe.shape[1:])).astype(probe.dtype)
    probe = np.concatenate([probe, noise])
    names = [o.name for o in wrapped.graph.output] + [
        k for k in keep if k and k not in {o.name for o in wrapped.graph.output} and k != input_name
    ]
    try:
        exposed_original, exposed_wrapped = (with_outputs(m, names) for m in (model, wrapped))
        error = check_per_image(
            Runner(exposed_original, weights),
            Runner(exposed_wrapped, weights),
            probe,
            names,
        )
    except OnnxMergeError:
        raise
    except Exception as exc:  # onnxruntime refused the wrapped graph
        raise OnnxMergeError(
            f"source {name!r} runs only at batch 1 and could not be run image by image "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); re-export it with a "
            "dynamic batch axis."
        ) from None
    if error > 1e-5:  # the contract's parity bound (build.parity.EXACT)
        raise OnnxMergeError(
            f"source {name!r} runs only at batch 1 and, run image by image inside a Loop, "
            f"differs from itself by {error:.2e}; re-export it with a dynamic batch axis."
        )
    return wrapped, (
        f"fixed batch 1: runs image by image inside Z (an ONNX Loop over the batch; checked on a "
        f"batch of {len(probe)}: max |diff| {error:.1e})"
    )
