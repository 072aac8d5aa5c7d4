"""The front object: configure sources, ``fit`` on images, ``predict``, ``save`` Z.

The steps run in the order of the data flow: load -> find the feature -> cut -> stitch (with per-source
preprocessing) -> extract features -> fit the head -> append it -> check parity -> save.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .cut import CutModel, cut, source_input
from .data import Dataset, load_labelled
from .errors import OnnxMergeError
from .extract import make_session, run_batched
from .head import FEATURES, LABEL, PROBABILITIES, append_head, fit_head
from .inspect import find_head, find_head_output, model_labels
from .modelio import check_output_path, load_model_with_digest, save_model
from .parity import CONVERTED, ParityCheck, compare, require, source_feature
from .preprocess import ImageInput, Preprocess, reference_preprocess
from .stitch import StitchSource, keep_outputs, output_names, stitch

MODES = ("fit", "teachers")
MAX_PIXELS = 8192 * 8192  # a declared size beyond this is a hostile or broken model, not a photo
PARITY_SAMPLES = 64


@dataclass
class Source:
    """One pretrained classifier to compose, as a ``[[sources]]`` table of the recipe."""

    name: str
    model: str | os.PathLike
    preprocess: Preprocess
    feature: str = "auto"
    head_output: str = "auto"
    labels: list[str] | None = None
    teacher: bool = True


@dataclass
class ResolvedSource:
    """A source after loading: its model, the feature found, its labels and its full preprocessing."""

    spec: Source
    model: onnx.ModelProto
    feature: str
    reason: str
    head_output: str | None
    labels: list[str] | None
    preprocess: Preprocess
    sha256: str
    cut: CutModel | None = None
    batch_note: str | None = None


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def resolve_preprocess(name: str, model: onnx.ModelProto, spec: Preprocess, image: ImageInput) -> Preprocess:
    """Fill height/width/channels/layout/dtype from the source's input where the recipe leaves them out."""
    inp = source_input(model)
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.dtype(np.float32)
    if np.dtype(dtype).kind != "f":
        raise OnnxMergeError(f"source {name!r} takes {np.dtype(dtype)} input; onnxmerge feeds sources float tensors.")
    height, width, channels, layout = spec.height, spec.width, spec.channels, spec.layout
    flat = len(dims) == 2
    if len(dims) == 4:
        if layout is None:
            if _static(dims[1]) in (1, 3) and _static(dims[3]) not in (1, 3):
                layout = "NCHW"
            elif _static(dims[3]) in (1, 3):
                layout = "NHWC"
            else:
                raise OnnxMergeError(f"source {name!r}: cannot tell the layout of input shape {dims}; set "
                                     "layout = \"NCHW\" or \"NHWC\" in its [sources.preprocess].")
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        for key, given, static in (("height", height, h), ("width", width, w), ("channels", channels, c)):
            if given is not None and _static(static) is not None and given != static:
                raise OnnxMergeError(f"source {name!r}: preprocess {key} = {given} but the model's input "
                                     f"{inp.name!r} {dims} ({layout}) has {key} {static}; remove the key or fix it.")
        height, width, channels = height or _static(h), width or _static(w), channels or _static(c)
        height, width = height or image.height, width or image.width
        channels = channels or image.channels
    elif flat:
        layout = layout or "NHWC"
        channels = channels or image.channels
        if height is None or width is None:
            if _static(dims[1]) == image.height * image.width * channels:
                height, width = height or image.height, width or image.width
            else:
                raise OnnxMergeError(f"source {name!r} takes a flat input {dims}; set height, width and channels "
                                     "in its [sources.preprocess] so that height*width*channels matches.")
        if _static(dims[1]) and _static(dims[1]) != height * width * channels:
            raise OnnxMergeError(f"source {name!r} takes {dims[1]} values per image but height*width*channels "
                                 f"is {height * width * channels}; fix its [sources.preprocess].")
    else:
        raise OnnxMergeError(f"source {name!r} takes an input of rank {len(dims)}; onnxmerge feeds images as "
                             "[N, C, H, W], [N, H, W, C] or flat [N, H*W*C].")
    if height * width > MAX_PIXELS:
        raise OnnxMergeError(f"source {name!r} takes {height}x{width} images, more than onnxmerge accepts "
                             f"({MAX_PIXELS:,} pixels); set a smaller height/width in its [sources.preprocess].")
    if channels not in (1, 3):
        raise OnnxMergeError(f"source {name!r} expects {channels} channels; onnxmerge converts between 1 and 3 only.")
    for key in ("mean", "std"):
        values = getattr(spec, key)
        if len(values) not in (1, channels):
            raise OnnxMergeError(f"source {name!r}: {key} has {len(values)} values but the source takes "
                                 f"{channels} channels; give one value per channel.")
    if any(s == 0 for s in spec.std):
        raise OnnxMergeError(f"source {name!r}: std contains 0; every std must be non-zero.")
    mean = tuple(spec.mean) * (channels if len(spec.mean) == 1 else 1)
    std = tuple(spec.std) * (channels if len(spec.std) == 1 else 1)
    return Preprocess(scale=spec.scale, mean=mean, std=std, height=height, width=width, channels=channels,
                      layout=layout, flat=flat, dtype=np.dtype(dtype))


def _dynamic_batch(name: str, model: onnx.ModelProto, preprocess: Preprocess, image: ImageInput
                   ) -> tuple[onnx.ModelProto, str | None]:
    """Make a fixed batch dimension dynamic where the graph allows it (checked by running a batch of 2)."""
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
    probe = reference_preprocess(np.zeros((2, image.height, image.width, image.channels), np.uint8), image, preprocess)
    try:
        session = make_session(relaxed)
        session.run(None, {session.get_inputs()[0].name: probe})
    except Exception:
        raise OnnxMergeError(f"source {name!r} has a fixed batch of {fixed} baked into its graph (it fails on a batch "
                             "of 2), so Z could not take a dynamic batch; re-export it with a dynamic batch axis.") from None
    return relaxed, f"fixed batch {fixed} made dynamic (checked on a batch of 2)"


class Merger:
    """Compose pretrained ONNX classifiers into one model Z (scikit-learn style).

    Parameters
    ----------
    input : ImageInput
        What Z accepts (uint8 ``[N, height, width, channels]``).
    sources : list of Source
        The pretrained classifiers; each is cut at its feature tensor.
    mode : "fit"
        ``"fit"`` trains a logistic-regression head on labelled images. (``"teachers"`` arrives with the
        routing work and is refused until then.)
    C, class_weight : passed to scikit-learn's ``LogisticRegression``.
    batch_size : images per onnxruntime call during feature extraction.
    quiet : no progress bars.

    Example
    -------
    >>> z = Merger(ImageInput(28, 28, 1), [Source("a", "a.onnx", Preprocess(1 / 255, (0.5,), (0.5,)))])
    >>> z.fit("train.npz").save("z.onnx")  # doctest: +SKIP
    """

    def __init__(self, input: ImageInput, sources: list[Source], mode: str = "fit", C: float = 1.0,
                 class_weight: str | None = "balanced", batch_size: int = 128, quiet: bool = False):
        self.input = input
        self.sources = sources
        self.mode = mode
        self.C = C
        self.class_weight = class_weight
        self.batch_size = batch_size
        self.quiet = quiet

    # -- configuration checks -------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.mode not in MODES:
            raise OnnxMergeError(f"mode {self.mode!r} is unknown; use \"fit\".")
        if self.mode == "teachers":
            raise OnnxMergeError("mode \"teachers\" (no labelled data) is not available in this version; "
                                 "use mode = \"fit\" with a labelled train set.")
        if len(self.sources) < 1:
            raise OnnxMergeError("no sources given; add at least one [[sources]] table.")
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise OnnxMergeError(f"source name {duplicates[0]!r} is used twice; give every source its own name.")
        for name in names:
            if not name or "/" in name or name in (FEATURES, LABEL, PROBABILITIES, "image", "head"):
                raise OnnxMergeError(f"source name {name!r} is not usable as a namespace; use letters, digits, "
                                     "'_' or '-', and not a reserved name (features, label, probabilities, image, head).")
        if self.input.channels not in (1, 3) or self.input.height <= 0 or self.input.width <= 0:
            raise OnnxMergeError(f"[input] {self.input} is invalid; height and width must be positive and "
                                 "channels 1 or 3.")

    def _resolve(self, spec: Source) -> ResolvedSource:
        model, sha256 = load_model_with_digest(spec.model)
        try:
            make_session(model)
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
        labels = list(spec.labels) if spec.labels is not None else model_labels(model)
        preprocess = resolve_preprocess(spec.name, model, spec.preprocess, self.input)
        model, note = _dynamic_batch(spec.name, model, preprocess, self.input)
        resolved = ResolvedSource(spec, model, feature, reason, head_output, labels, preprocess, sha256)
        resolved.batch_note = note
        return resolved

    # -- fitting ----------------------------------------------------------------------------------------
    def build_graph(self) -> onnx.ModelProto:
        """Load, cut and stitch the sources (no head yet); sets ``sources_`` and ``stitched_``."""
        self._validate()
        self.sources_ = []
        for spec in self.sources:
            try:
                source = self._resolve(spec)
                probe = reference_preprocess(np.zeros((1, self.input.height, self.input.width, self.input.channels),
                                                      np.uint8), self.input, source.preprocess)
                source.cut = cut(source.model, source.feature, source.head_output, probe)
            except OnnxMergeError:
                raise
            except Exception as exc:  # a model that passed onnx's checker and onnxruntime but defeats the graph steps
                raise OnnxMergeError(f"source {spec.name!r} ({spec.model}) could not be cut ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}); name its feature tensor "
                                     "explicitly, or report the model if it is valid.") from exc
            self.sources_.append(source)
        self.stitched_, self.notes_ = stitch(
            [StitchSource(s.spec.name, s.cut, s.preprocess) for s in self.sources_], self.input)
        return self.stitched_

    def fit(self, X, y=None) -> "Merger":
        """Build Z: extract features of the labelled images ``X``, fit the head, append it, check parity.

        ``X`` is a labelled folder or ``.npz`` path (or a list of them, joined), or a uint8 array
        ``[N, H, W, C]`` with labels ``y``.
        """
        data = self._dataset(X, y)
        self.build_graph()
        features = self._source_features(data.x)
        self.head_ = fit_head(features, data.y, C=self.C, class_weight=self.class_weight)
        self.classes_ = [str(c) for c in self.head_.classes_]
        model = append_head(keep_outputs(self.stitched_, [FEATURES]), self.head_)
        self._set_metadata(model)
        self.parity_ = self._check_parity(model, data.x, features)
        onnx.checker.check_model(model, full_check=True)
        self.model_ = model
        known = {label for s in self.sources_ for label in (s.labels or [])}
        self.report_ = {
            "train_images": len(data.x),
            "classes": self.classes_,
            "new_classes": [c for c in self.classes_ if c not in known],
            "train_accuracy": float(np.mean(self.head_.predict(features) == data.y)),
            "feature_dim": int(features.shape[1]),
        }
        self._session = None
        return self

    def _dataset(self, X, y) -> Dataset:
        if isinstance(X, (str, os.PathLike)):
            return load_labelled(X, self.input)
        if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, os.PathLike)) for p in X):
            parts = [load_labelled(p, self.input) for p in X]  # e.g. old classes + a new class's few images
            return Dataset(np.concatenate([d.x for d in parts]), np.concatenate([d.y for d in parts]),
                           [f for d in parts for f in d.files])
        x = np.asarray(X)
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (self.input.height, self.input.width,
                                                                     self.input.channels):
            raise OnnxMergeError(f"X must be uint8 [N, {self.input.height}, {self.input.width}, "
                                 f"{self.input.channels}], got {x.dtype} {list(x.shape)}.")
        if y is None or len(y) != len(x):
            raise OnnxMergeError("y must hold one label per image of X.")
        return Dataset(x, np.asarray([str(v) for v in y]), [f"X[{i}]" for i in range(len(x))])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The concatenated source features ``[N, D]`` of uint8 images (Z's ``features`` output)."""
        return self.source_outputs(X, [FEATURES])[FEATURES]

    def source_outputs(self, X: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named tensors of the stitched graph (``features``, ``NAME/feature``, ``NAME/head``, ``NAME/input``)."""
        if getattr(self, "_stitched_session", None) is None:
            self._stitched_session = make_session(self.stitched_)
        outputs = outputs or [o.name for o in self._stitched_session.get_outputs()]
        return run_batched(self._stitched_session, X, outputs, self.batch_size, self.quiet)

    def _source_features(self, images: np.ndarray) -> np.ndarray:
        """Each source's features, checked to be finite (naming the source that is not), concatenated."""
        names = [output_names(s.spec.name)["feature"] for s in self.sources_]
        blocks = self.source_outputs(images, names)
        for source, name in zip(self.sources_, names):
            if not np.isfinite(blocks[name]).all():
                raise OnnxMergeError(f"source {source.spec.name!r} produced NaN or infinite features on the training "
                                     "images; check its scale/mean/std and its feature tensor.")
        return np.concatenate([blocks[n] for n in names], axis=1)

    def _set_metadata(self, model: onnx.ModelProto) -> None:
        props = {
            "onnxmerge.labels": json.dumps(self.classes_),
            "onnxmerge.sources": json.dumps([{"name": s.spec.name, "sha256": s.sha256, "feature": s.feature}
                                             for s in self.sources_]),
            "onnxmerge.version": __version__,
        }
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        model.producer_name, model.producer_version = "onnxmerge", __version__

    def _check_parity(self, model: onnx.ModelProto, images: np.ndarray, features: np.ndarray) -> list[ParityCheck]:
        """Every check PRODUCT.md asks for, on real training images; raises if any fails."""
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(images), size=min(PARITY_SAMPLES, len(images)), replace=False))
        sample = images[pick]
        z = make_session(model)
        z_probs, z_features = z.run([PROBABILITIES, FEATURES], {z.get_inputs()[0].name: sample})
        checks: list[ParityCheck] = []
        start = 0
        inner = self.source_outputs(sample)
        for source in self.sources_:
            names = output_names(source.spec.name)
            z_input = inner[names["input"]]
            checks.append(compare(f"{source.spec.name} preprocessing vs numpy reference", z_input,
                                  reference_preprocess(sample, self.input, source.preprocess)))
            reference = source_feature(source.model, source.feature, z_input, source.cut.pooled)
            width = reference.shape[1]
            check = compare(f"{source.spec.name} features vs source {source.feature!r}",
                            z_features[:, start:start + width], reference)
            if not check.ok and source.spec.name in self.notes_:
                check = compare(check.step, z_features[:, start:start + width], reference, CONVERTED,
                                f"{self.notes_[source.spec.name]} may change an op's arithmetic")
            checks.append(check)
            start += width
        checks.append(compare("probabilities vs scikit-learn predict_proba", z_probs,
                              self.head_.predict_proba(z_features.astype(np.float64))))
        require(checks)
        return checks

    # -- using Z ----------------------------------------------------------------------------------------
    def _z_session(self):
        if not hasattr(self, "model_"):
            raise OnnxMergeError("this Merger is not fitted yet; call fit() first.")
        if getattr(self, "_session", None) is None:
            self._session = make_session(self.model_)
        return self._session

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class names for uint8 images ``[N, H, W, C]``, computed by Z in onnxruntime."""
        return run_batched(self._z_session(), X, [LABEL], self.batch_size, self.quiet)[LABEL]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, K]`` in ``classes_`` order, computed by Z in onnxruntime."""
        return run_batched(self._z_session(), X, [PROBABILITIES], self.batch_size, self.quiet)[PROBABILITIES]

    def save(self, path: str | os.PathLike) -> Path:
        """Write Z atomically (temporary file, then rename); never onto a source model."""
        if not hasattr(self, "model_"):
            raise OnnxMergeError("this Merger is not fitted yet; call fit() before save().")
        output = check_output_path(path, [Path(s.model) for s in self.sources])
        return save_model(self.model_, output)
