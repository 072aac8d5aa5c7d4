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
from sklearn.pipeline import Pipeline

from . import __version__
from . import cache as feature_cache
from .cut import CutModel, cut, source_input
from .data import Dataset, load_labelled, load_unlabeled
from .errors import OnnxMergeError, first_line
from .extract import CHECK_VALUES_PER_CALL, EXTRACT_VALUES_PER_CALL, LARGE_MODEL_BYTES, make_session, run_batched
from .head import FEATURES, LABEL, PROBABILITIES, HeadInput, TeachersHead, append_head, fit_head, select_C
from .inspect import find_head, find_head_output, model_labels
from .modelio import check_output_path, load_model_with_digest, save_model
from .parity import CONVERTED, ParityCheck, SourceReference, Worst, compare, require
from .preprocess import ImageInput, Preprocess, reference_preprocess
from .routing import PSEUDO_LABEL_THRESHOLD, Teachers, head_kind, l2_blocks, pseudo_labels, route_pool
from .share import ancestors, extraction_groups, share_common
from .stitch import IMAGE, StitchSource, keep_outputs, output_names, stitch
from .weights import WeightFolder, external_bytes, release_freed_memory

MODES = ("fit", "teachers")
MAX_PIXELS = 8192 * 8192  # a declared size beyond this is a hostile or broken model, not a photo
PARITY_SAMPLES = 64
# Inverse regularisation (blocks weighted as in head.fit_head). The head's C is chosen from the number of
# labels per class ("auto", head.select_C). The router's C = 0.1 was best of 0.003-0.1 on the benchmark's seed 0 (routing
# 0.775 vs 0.748 at 0.003).
DEFAULT_C = "auto"
ROUTER_C = 0.1


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


def _dynamic_batch(name: str, model: onnx.ModelProto, preprocess: Preprocess, image: ImageInput,
                   weights: WeightFolder) -> tuple[onnx.ModelProto, str | None]:
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
    probe = reference_preprocess(np.zeros((2, *image.shape), np.uint8), image, preprocess)
    try:
        session = make_session(relaxed, weights=weights)
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
    mode : "fit" or "teachers"
        ``"fit"`` trains a logistic-regression head on labelled images and/or the teachers' pseudo-labels of
        an unlabeled pool; ``"teachers"`` needs no labels: Z routes between the sources' own heads
        (``onnxmerge.routing`` explains how), and a train set may add new classes.
    C : the head's inverse regularisation, or ``"auto"`` (from the labels per class, ``head.select_C``).
    class_weight : passed to scikit-learn's ``LogisticRegression``.
    batch_size : images per onnxruntime call during feature extraction.
    quiet : no progress bars.

    Example
    -------
    >>> z = Merger(ImageInput(28, 28, 1), [Source("a", "a.onnx", Preprocess(1 / 255, (0.5,), (0.5,)))])
    >>> z.fit("train.npz").save("z.onnx")  # doctest: +SKIP
    """

    def __init__(self, input: ImageInput, sources: list[Source], mode: str = "fit", C: float | str = DEFAULT_C,
                 class_weight: str | None = "balanced", batch_size: int = 128, quiet: bool = False):
        self.input = input
        self.sources = sources
        self.mode = mode
        self.C = C
        self.router_C = ROUTER_C
        self.class_weight = class_weight
        self.batch_size = batch_size
        self.quiet = quiet
        self._z = self._session = None  # Z (light) and its session, once fitted
        self._sessions: dict[tuple[str, ...], object] = {}  # live sessions of groups of the stitched graph
        self._parts: dict[tuple[str, ...], onnx.ModelProto] = {}  # light parts of the stitched graph

    # -- configuration checks -------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.mode not in MODES:
            raise OnnxMergeError(f"mode {self.mode!r} is unknown; use \"fit\" or \"teachers\".")
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
        model, sha256 = load_model_with_digest(spec.model, self.weights_)
        try:
            make_session(model, weights=self.weights_)
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
        model, note = _dynamic_batch(spec.name, model, preprocess, self.input, self.weights_)
        resolved = ResolvedSource(spec, model, feature, reason, head_output, labels, preprocess, sha256)
        resolved.batch_note = note
        return resolved

    # -- fitting ----------------------------------------------------------------------------------------
    def build_graph(self) -> onnx.ModelProto:
        """Load, cut and stitch the sources (no head yet); sets ``sources_`` and ``stitched_``.

        The sources' weights go to a temporary folder (``weights_``, ``onnxmerge.weights``) that the graphs
        refer to; it lives as long as this Merger (or until the next build).
        """
        self._validate()
        self.weights_ = WeightFolder()
        self._drop_sessions()
        self._session, self._parts = None, {}
        self.sources_ = []
        for spec in self.sources:
            try:
                source = self._resolve(spec)
                probe = reference_preprocess(np.zeros((1, *self.input.shape), np.uint8), self.input, source.preprocess)
                source.cut = cut(source.model, source.feature, source.head_output, probe, self.weights_)
            except OnnxMergeError:
                raise
            except Exception as exc:  # a model that passed onnx's checker and onnxruntime but defeats the graph steps
                raise OnnxMergeError(f"source {spec.name!r} ({spec.model}) could not be cut ({type(exc).__name__}: "
                                     f"{first_line(exc)}); name its feature tensor "
                                     "explicitly, or report the model if it is valid.") from exc
            self.sources_.append(source)
        self.stitched_, self.notes_ = stitch(
            [StitchSource(s.spec.name, s.cut, s.preprocess) for s in self.sources_], self.input)
        self.stitched_, self.share_ = share_common(self.stitched_)  # identical sub-graphs computed once
        # large sources run group by group (one's weights and activations in memory at a time); small ones
        # in one session, which computes their shared preprocessing once (the demo's extraction: 5-15% faster)
        names = [s.spec.name for s in self.sources_]
        self._large = external_bytes(self.stitched_) > LARGE_MODEL_BYTES
        self.groups_ = extraction_groups(self.stitched_, names) if self._large else [names]
        self._graph_digest = None
        return self.stitched_

    def fit(self, X=None, y=None, unlabeled=None) -> Merger:
        """Build Z: extract features, fit the head (or route the teachers), append it, check parity.

        ``X`` is a labelled folder or ``.npz`` path (or a list of them, joined), or a uint8 array
        ``[N, H, W, C]`` with labels ``y``. ``unlabeled`` is a pool of images without labels (a folder, an
        ``.npz`` with ``x``, or a uint8 array). In mode ``"fit"`` at least one of them is needed; in mode
        ``"teachers"`` both are optional and ``X`` may only hold new classes (stage 2 without old data).
        """
        self._validate()
        labelled = self._dataset(X, y) if X is not None else None
        pool = self._pool(unlabeled) if unlabeled is not None else None
        if self.mode == "fit" and labelled is None and pool is None:
            raise OnnxMergeError("mode \"fit\" needs labelled images (train) or an unlabeled pool; add [head] train "
                                 "or unlabeled, or use mode = \"teachers\".")
        self.build_graph()
        self.warnings_: list[str] = []
        self.report_: dict = {}
        self.features_from_cache_ = True  # until an _outputs call has to run the sources
        self.teachers_ = self._teachers(labelled, pool)
        if self.mode == "teachers":
            model, parity_images = self._fit_teachers(labelled, pool)
        else:
            model, parity_images = self._fit_head(labelled, pool)
        self._set_metadata(model)
        self.parity_ = self._check_parity(model, parity_images)
        self.weights_.check(model)
        self._z = model
        known = {label for s in self.sources_ for label in (s.labels or [])}
        self.report_.update({
            "mode": self.mode,
            "classes": self.classes_,
            "new_classes": [c for c in self.classes_ if c not in known],
            "train_images": len(labelled.x) if labelled is not None else 0,
            "pool_images": len(pool.x) if pool is not None else 0,
            "teachers": {name: kind for name, kind in self.teachers_},
            "warnings": self.warnings_,
            "shared": self.share_.as_dict(),
            "features_from_cache": self.features_from_cache_,
        })
        self._session = None
        return self

    def _pool(self, unlabeled) -> Dataset:
        if isinstance(unlabeled, (str, os.PathLike)):
            return load_unlabeled(unlabeled, self.input)
        x = self._images(unlabeled, "unlabeled")
        return Dataset(x, None, [f"unlabeled[{i}]" for i in range(len(x))])

    def _teachers(self, labelled: Dataset | None, pool: Dataset | None) -> list[tuple[str, str]]:
        """``(name, head kind)`` of every source whose own head takes part: teacher = true, labels known.

        Also sets ``widths_``, the width of every source's feature and head output, from the same probe run.
        """
        given = pool if pool is not None else labelled
        probe = given.x[:16] if given is not None else np.zeros((1, *self.input.shape), np.uint8)
        heads = {s.spec.name: output_names(s.spec.name)["head"] for s in self.sources_ if s.head_output is not None}
        outputs = self.source_outputs(probe, [output_names(s.spec.name)["feature"] for s in self.sources_]
                                      + list(heads.values()))
        self.widths_ = {name: value.shape[1] if value.ndim == 2 else -1 for name, value in outputs.items()}
        kinds = []
        for source in self.sources_:
            name = source.spec.name
            if not source.spec.teacher:
                continue
            if name not in heads or source.labels is None:
                if self.mode == "teachers":
                    what = "labels" if source.labels is None else "classifier output"
                    raise OnnxMergeError(f"source {name!r} is a teacher without {what}; give its labels "
                                         "in the recipe, or set teacher = false to use it as a feature extractor only.")
                continue
            head = outputs[heads[name]]
            if self.widths_[heads[name]] != len(source.labels):
                if self.mode == "teachers":
                    raise OnnxMergeError(f"source {name!r} has {len(source.labels)} labels but its "
                                         f"classifier output {source.head_output!r} has shape "
                                         f"{list(head.shape)}; fix its labels or head_output.")
                self.warnings_.append(f"source {name!r} has {len(source.labels)} labels but its classifier output "
                                      f"has {self.widths_[heads[name]]} columns; its head is not used (features only).")
                continue
            foreign = _head_domains(self.stitched_.graph, name)
            if foreign and self.mode == "fit":  # Z's head stays runnable on minimal onnxruntime builds
                self.warnings_.append(f"source {name!r}'s own head uses {sorted(foreign)} ops, so Z's "
                                      "head does not read its probabilities (features only).")
                continue
            kinds.append((name, head_kind(head)))
        if self.mode == "teachers" and not kinds:
            raise OnnxMergeError("mode \"teachers\" needs at least one source with teacher = true and labels.")
        return kinds

    def _teacher_space(self) -> Teachers:
        """The teachers' labels and their union, in ``teachers_`` order."""
        labels = {s.spec.name: s.labels for s in self.sources_}
        return Teachers.of([n for n, _ in self.teachers_], [labels[n] for n, _ in self.teachers_])

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every source's features and every teacher's head output on ``images`` (from the cache if there)."""
        names = [output_names(s.spec.name)["feature"] for s in self.sources_]
        names += [output_names(n)["head"] for n, _ in self.teachers_]
        widths = [self.widths_[n] for n in names]
        folder = getattr(self, "cache_dir", None)
        if folder and self._graph_digest is None:  # serialise and hash the stitched graph once per build
            self._graph_digest = feature_cache.graph_digest(self.stitched_)
        key = feature_cache.feature_key(self._graph_digest, images, names, self._batch()) if folder else None
        joined = feature_cache.load(folder, key, len(images)) if folder else None
        hit = joined is not None and joined.shape[1] == sum(widths)
        self.features_from_cache_ = self.features_from_cache_ and hit  # true only if every extraction was cached
        if hit:
            return dict(zip(names, np.split(joined, np.cumsum(widths)[:-1], axis=1)))
        blocks = self.source_outputs(images, names)
        for name in names:
            if not np.isfinite(blocks[name]).all():
                source = name.rsplit("/", 1)[0]
                what = "features" if name.endswith("/feature") else "classifier outputs"
                raise OnnxMergeError(f"source {source!r} produced NaN or infinite {what} on the images; "
                                     "check its scale/mean/std and its feature tensor.")
        feature_cache.store(folder, key, np.concatenate([blocks[n] for n in names], axis=1))
        return blocks

    def _graph_outputs(self) -> list[str]:
        """The stitched graph's outputs the head reads: features (joined and per source), the teachers' heads."""
        return ([FEATURES] + [output_names(s.spec.name)["feature"] for s in self.sources_]
                + [output_names(n)["head"] for n, _ in self.teachers_])

    def _head_input(self) -> HeadInput:
        return HeadInput([s.spec.name for s in self.sources_], list(self.teachers_))

    def _route(self, x_pool: np.ndarray, teachers: Teachers, pool: dict[str, np.ndarray],
               known: list[tuple[np.ndarray, int]]) -> Pipeline:
        """Fit the "which source" router on the pool, routed by label-matched clustering (``routing``).

        ``x_pool`` is the pool's head input, ``pool`` its stitched-graph outputs. ``known`` holds ``(head
        inputs, router class)`` of images whose router class is given (labelled images of a teacher's label,
        or a new class's images).
        """
        blocks = [pool[output_names(s.spec.name)["feature"]] for s in self.sources_]
        probs = [HeadInput.probabilities(pool, n, k) for n, k in self.teachers_]
        routing = route_pool(l2_blocks(blocks), teachers, probs)  # issue 16: HOOKS.md
        targets = routing.targets()
        x_pool, targets = x_pool[targets >= 0], targets[targets >= 0]  # runs disagreed: not a router target
        x_known = np.concatenate([x for x, _ in known]) if known else np.zeros((0, x_pool.shape[1]))
        y_known = np.concatenate([np.full(len(x), c) for x, c in known]) if known else np.zeros(0, int)
        x_all, y_all = np.concatenate([x_pool, x_known]), np.concatenate([targets, y_known])
        if len(np.unique(y_all)) < 2:
            raise OnnxMergeError("every pool image was routed to one source; the pool must hold images of "
                                 "several sources' classes.")
        # labelled images of the teachers' labels count as much as the whole pool: their source is certain,
        # the pool's is a guess (benchmark: +0.7 to +2 points over equal weights); new classes are balanced
        # by class_weight already
        weight = np.ones(len(y_all))
        certain = np.flatnonzero(y_known < len(teachers.names)) + len(x_pool)
        if len(certain):
            weight[certain] = len(x_pool) / len(certain)
        router = fit_head(x_all, y_all, self._head_input().widths(self.widths_), C=self.router_C,
                          class_weight="balanced", sample_weight=weight)
        unrouted = [n for i, n in enumerate(teachers.names) if not np.any(y_all == i)]
        if unrouted:
            self.warnings_.append(f"no pool image was routed to {', '.join(map(repr, unrouted))} (another teacher "
                                  "claims the same images); Z never uses its head.")
        self.report_["routing"] = {
            "method": "label-matched clustering + logistic-regression router",
            "pool_share": {n: float(np.mean(routing.source == i)) for i, n in enumerate(teachers.names)},
            "router_targets": int(len(targets)), "label_counts": routing.label_counts(),
            "scarce_labels": routing.scarce_labels(),
        }
        return router

    def _fit_teachers(self, labelled: Dataset | None, pool: Dataset | None) -> tuple[onnx.ModelProto, np.ndarray]:
        """Mode "teachers": Z's labels are the teachers' union (+ any new classes of ``labelled``), no old labels."""
        teachers = self._teacher_space()
        new = sorted(set(labelled.y)) if labelled is not None else []
        overlap = [c for c in new if c in teachers.union]
        if overlap:
            raise OnnxMergeError(f"mode \"teachers\" takes a train set of new classes only, but {overlap[0]!r} is a "
                                 "teacher's label; remove those images, or use mode = \"fit\" to learn from labels.")
        if new and pool is None:
            raise OnnxMergeError("new classes in mode \"teachers\" need an unlabeled pool to tell them from the "
                                 "teachers' classes; add [head] unlabeled.")
        head_input = self._head_input()
        router = None
        if pool is not None:
            pool_out = self._outputs(pool.x)
            known = []
            if labelled is not None:
                x = head_input.numpy(self._outputs(labelled.x)).astype(np.float64)
                known = [(x[labelled.y == c], len(teachers.names) + i) for i, c in enumerate(new)]
            router = self._route(head_input.numpy(pool_out).astype(np.float64), teachers, pool_out, known)
        self.head_ = TeachersHead(head_input, teachers, router, new)
        self.classes_ = self.head_.classes
        model = self.head_.append(keep_outputs(self.stitched_, self._graph_outputs()), self.widths_)
        given = pool if pool is not None else labelled
        parity = given.x if given is not None else np.zeros((2, *self.input.shape), np.uint8)
        return model, parity

    def _fit_head(self, labelled: Dataset | None, pool: Dataset | None) -> tuple[onnx.ModelProto, np.ndarray]:
        """Mode "fit": logistic regression on the head input; an unlabeled pool adds the teachers' pseudo-labels."""
        head_input = self._head_input()
        widths = head_input.widths(self.widths_)
        xs, ys, weights = [], [], []
        if labelled is not None:
            xs.append(head_input.numpy(self._outputs(labelled.x)).astype(np.float64))
            ys.append(labelled.y)
        if pool is not None:
            if not self.teachers_:
                raise OnnxMergeError("an unlabeled pool needs at least one teacher source (teacher = true, with "
                                     "labels) to pseudo-label it.")
            fresh = _not_in(pool.x, labelled.x) if labelled is not None else np.ones(len(pool.x), bool)
            pool_out = self._outputs(pool.x[fresh])  # labelled samples win: pool copies of them are dropped
            x_pool = head_input.numpy(pool_out).astype(np.float64)
            teachers = self._teacher_space()
            known = []
            if labelled is not None:  # a labelled image of a teacher's label tells the router its source
                owner = {label: i for i, own in enumerate(teachers.labels) for label in own}
                known = [(xs[0][labelled.y == c], owner[c]) for c in np.unique(labelled.y) if c in owner]
            router = self._route(x_pool, teachers, pool_out, known)
            union_probs, _ = TeachersHead(head_input, teachers, router).numpy(pool_out)
            if labelled is not None and set(teachers.union) <= set(labelled.y):
                # product of experts: the routed teachers and a head fitted on the labels alone must agree
                # (benchmark, k = 5 labels per class: 0.816 vs 0.775 from the teachers alone)
                alone = fit_head(xs[0], ys[0], widths, C=select_C(ys[0]), class_weight=self.class_weight)
                cols = [list(alone.classes_).index(c) for c in teachers.union]
                union_probs = union_probs * alone.predict_proba(x_pool)[:, cols]
                union_probs /= np.maximum(union_probs.sum(axis=1, keepdims=True), 1e-300)
            pseudo, keep = pseudo_labels(union_probs, teachers.union)
            missing = [c for c in teachers.union if c not in set(pseudo[keep])
                       and (labelled is None or c not in set(labelled.y))]
            if missing:
                self.warnings_.append(f"no pool image was pseudo-labelled {', '.join(map(repr, missing))}; "
                                      "Z leaves these teacher labels out (add labelled images of them to keep them).")
            xs.append(x_pool[keep])
            ys.append(pseudo[keep])
            if labelled is not None:  # the pool, however large, weighs as much as the labelled images together
                weights = [np.ones(len(ys[0])), np.full(int(keep.sum()), len(ys[0]) / max(int(keep.sum()), 1))]
            self.report_["pseudo_labels"] = {"kept": int(keep.sum()), "of": int(len(keep)),
                                             "threshold": PSEUDO_LABEL_THRESHOLD}
        x, y = np.concatenate(xs), np.concatenate(ys)
        # C follows the labels a person gave where there are any (pseudo-labels are many but noisy)
        C = select_C(ys[0]) if self.C == "auto" else float(self.C)
        self.head_ = fit_head(x, y, widths, C=C, class_weight=self.class_weight,
                              sample_weight=np.concatenate(weights) if weights else None)
        self.classes_ = [str(c) for c in self.head_.classes_]
        self.report_.update({
            "C": C,
            "train_accuracy": float(np.mean(self.head_.predict(x) == y)),
            "feature_dim": int(sum(widths[:len(self.sources_)])),
            "head_inputs": int(x.shape[1]),
        })
        model = append_head(keep_outputs(self.stitched_, self._graph_outputs()), head_input, self.head_, self.widths_)
        return model, (labelled if labelled is not None else pool).x

    def _images(self, X, what: str) -> np.ndarray:
        x = np.asarray(X)
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != self.input.shape:
            raise OnnxMergeError(f"{what} must be uint8 [N, {self.input.height}, {self.input.width}, "
                                 f"{self.input.channels}], got {x.dtype} {list(x.shape)}.")
        if len(x) == 0:
            raise OnnxMergeError(f"{what} holds no images.")
        return x

    def _dataset(self, X, y) -> Dataset:
        if isinstance(X, (str, os.PathLike)):
            return load_labelled(X, self.input)
        if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, os.PathLike)) for p in X):
            parts = [load_labelled(p, self.input) for p in X]  # e.g. old classes + a new class's few images
            return Dataset(np.concatenate([d.x for d in parts]), np.concatenate([d.y for d in parts]),
                           [f for d in parts for f in d.files])
        x = self._images(X, "X")
        if y is None or len(y) != len(x):
            raise OnnxMergeError("y must hold one label per image of X.")
        return Dataset(x, np.asarray([str(v) for v in y]), [f"X[{i}]" for i in range(len(x))])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The concatenated source features ``[N, D]`` of uint8 images (Z's ``features`` output)."""
        return self.source_outputs(X, [FEATURES])[FEATURES]

    def source_outputs(self, X: np.ndarray, outputs: list[str] | None = None,
                       budget: int = EXTRACT_VALUES_PER_CALL) -> dict[str, np.ndarray]:
        """Named tensors of the stitched graph (``features``, ``NAME/feature``, ``NAME/head``, ``NAME/input``).

        Each group of sources (``share.extraction_groups``: sources that share no work beyond preprocessing
        run apart) runs in its own onnxruntime session, so large sources are held one at a time.
        """
        available = [o.name for o in self.stitched_.graph.output]
        wanted = outputs or available
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise OnnxMergeError(f"the stitched graph has no output {unknown[0]!r}; it has {available}.")
        features = [output_names(s.spec.name)["feature"] for s in self.sources_]
        needed = list(dict.fromkeys([n for n in wanted if n != FEATURES] + (features if FEATURES in wanted else [])))
        result: dict[str, np.ndarray] = {}
        for group in sorted(self.groups_, key=lambda g: tuple(g) not in self._sessions):  # a live session first
            mine = [n for n in needed if _owner(n) in group]
            if mine:
                result.update(run_batched(self._group_session(group), X, mine, self._batch(group, budget), self.quiet))
        if self._large:
            release_freed_memory()  # the runs' activations, freed but resident in the C heap
        if FEATURES in wanted:
            result[FEATURES] = np.concatenate([result[n] for n in features], axis=1)
        return {n: result[n] for n in wanted}

    def _group_session(self, group: list[str]):
        """A session computing ``group``'s outputs of the stitched graph, kept for the next call; where the
        sources' weights are large, the other groups' sessions go first (one group's weights in memory)."""
        key = tuple(group)
        if key not in self._sessions:
            if self._large:
                self._drop_sessions()
            outputs = [o.name for o in self.stitched_.graph.output if _owner(o.name) in group]
            self._sessions[key] = self._part_session(outputs)
        return self._sessions[key]

    def _part_session(self, outputs: list[str]):
        """A session of the part of the stitched graph that computes ``outputs`` (the part is kept: light)."""
        key = tuple(outputs)
        if key not in self._parts:
            # onnxruntime 1.31's Identity elimination loses a tensor that an Identity copies into a graph output
            # while other nodes read it too ("not a graph input, initializer, or output of a previous node"): a
            # source's input shared away to another source's. Exposing that tensor as well avoids it.
            outputs = outputs + [n.input[0] for n in self.stitched_.graph.node if n.op_type == "Identity"
                                 and n.output[0] in outputs and n.input[0] not in outputs]
            self._parts[key] = keep_outputs(self.stitched_, outputs)
        return make_session(self._parts[key], weights=self.weights_)

    def _drop_sessions(self) -> None:
        if self._sessions:
            self._sessions.clear()
            release_freed_memory()

    def _batch(self, group: list[str] | None = None, budget: int = EXTRACT_VALUES_PER_CALL) -> int:
        """Images per onnxruntime call: ``batch_size``, fewer where the sources' inputs are large."""
        values = sum(s.preprocess.height * s.preprocess.width * s.preprocess.channels for s in self.sources_
                     if group is None or s.spec.name in group)
        return max(1, min(self.batch_size, budget // max(values, 1)))

    def _set_metadata(self, model: onnx.ModelProto) -> None:
        props = {
            "onnxmerge.labels": json.dumps(self.classes_),
            "onnxmerge.sources": json.dumps([{"name": s.spec.name, "sha256": s.sha256, "feature": s.feature}
                                             for s in self.sources_]),
            "onnxmerge.mode": self.mode,
            "onnxmerge.version": __version__,
        }
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        model.producer_name, model.producer_version = "onnxmerge", __version__

    def _check_parity(self, model: onnx.ModelProto, images: np.ndarray) -> list[ParityCheck]:
        """Every check PRODUCT.md asks for, on real images the build used; raises if any fails.

        One source's weights in memory at a time: the stitched graph's outputs the head reads, then per
        source its preprocessing (a weightless part of Z) feeding the original source, then Z itself; each
        batch by batch, so memory does not grow with the sample.
        """
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(images), size=min(PARITY_SAMPLES, len(images)), replace=False))
        sample = images if len(pick) == len(images) else images[pick]
        inner = self.source_outputs(sample, [n for n in self._graph_outputs() if n != FEATURES], CHECK_VALUES_PER_CALL)
        self._drop_sessions()
        references, preprocessing_checks = [], []
        for source in self.sources_:
            name, names = source.spec.name, output_names(source.spec.name)
            preprocess = self._part_session([names["input"]])
            original = SourceReference(source.model, source.feature, source.cut.pooled, self.weights_)
            preprocessing = Worst(f"{name} preprocessing vs numpy reference")
            parts, batch = [], self._batch([name], CHECK_VALUES_PER_CALL)
            for start in range(0, len(sample), batch):
                chunk = sample[start:start + batch]
                z_input = preprocess.run([names["input"]], {IMAGE: chunk})[0]
                preprocessing.add(z_input, reference_preprocess(chunk, self.input, source.preprocess))
                parts.append(original.features(z_input))
                if self._large:
                    release_freed_memory()
            references.append(np.concatenate(parts))
            preprocessing_checks.append(preprocessing.check())
            del preprocess, original
            release_freed_memory()
        z_out = run_batched(make_session(model, weights=self.weights_), sample, [PROBABILITIES, FEATURES],
                            self._batch(budget=CHECK_VALUES_PER_CALL), quiet=True, lean=self._large)
        release_freed_memory()
        start, checks = 0, []
        for source, reference, preprocessing_check in zip(self.sources_, references, preprocessing_checks):
            checks.append(preprocessing_check)
            width = reference.shape[1]
            check = compare(f"{source.spec.name} features vs source {source.feature!r}",
                            z_out[FEATURES][:, start:start + width], reference)
            if not check.ok and source.spec.name in self.notes_:
                check = compare(check.step, z_out[FEATURES][:, start:start + width], reference, CONVERTED,
                                f"{self.notes_[source.spec.name]} may change an op's arithmetic")
            checks.append(check)
            start += width
        if self.mode == "teachers":
            expected, _ = self.head_.numpy(inner)
            checks.append(compare("probabilities vs the teachers' routed union (numpy)", z_out[PROBABILITIES], expected))
        else:
            expected = self.head_.predict_proba(self._head_input().numpy(inner).astype(np.float64))
            checks.append(compare("probabilities vs scikit-learn predict_proba", z_out[PROBABILITIES], expected))
        require(checks)
        return checks

    # -- using Z ----------------------------------------------------------------------------------------
    @property
    def model_(self) -> onnx.ModelProto:
        """Z as a self-contained ``ModelProto`` (its weights read into memory; ``save`` streams them instead)."""
        if self._z is None:
            raise AttributeError("model_ is set by fit(); this Merger is not fitted yet")
        return self.weights_.inline(self._z)

    @model_.setter
    def model_(self, model: onnx.ModelProto) -> None:  # e.g. the int8 Z of --quantize
        self._z, self._session = model, None

    def _z_session(self):
        if self._z is None:
            raise OnnxMergeError("this Merger is not fitted yet; call fit() first.")
        if self._session is None:
            self._session = make_session(self._z, weights=self.weights_)
        return self._session

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class names for uint8 images ``[N, H, W, C]``, computed by Z in onnxruntime."""
        return run_batched(self._z_session(), X, [LABEL], self.batch_size, self.quiet)[LABEL]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, K]`` in ``classes_`` order, computed by Z in onnxruntime."""
        return run_batched(self._z_session(), X, [PROBABILITIES], self.batch_size, self.quiet)[PROBABILITIES]

    def save(self, path: str | os.PathLike) -> Path:
        """Write Z atomically (temporary file, then rename); never onto a source model."""
        if self._z is None:
            raise OnnxMergeError("this Merger is not fitted yet; call fit() before save().")
        output = check_output_path(path, [Path(s.model) for s in self.sources])
        return save_model(self._z, output, weights=self.weights_)


def _owner(output: str) -> str:
    """The source an output of the stitched graph belongs to (``NAME/feature`` -> ``NAME``)."""
    return output.split("/", 1)[0]


def _not_in(pool: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Mask of pool images that are not byte-identical to a labelled image."""
    seen = {img.tobytes() for img in labelled}
    return np.asarray([img.tobytes() not in seen for img in pool], bool)


def _head_domains(graph: onnx.GraphProto, name: str) -> set[str]:
    """Op domains other than the default one that a source's own head adds on top of its features."""
    names = output_names(name)
    head_only = ancestors(graph, [names["head"]]) - ancestors(graph, [names["feature"]])
    return {graph.node[i].domain for i in head_only} - {"", "ai.onnx"}
