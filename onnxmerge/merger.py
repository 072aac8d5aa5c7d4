"""The front object: configure sources, ``fit`` on images, ``predict``, ``save`` Z (scikit-learn style).

A thin facade over the build's stages (``onnxmerge.stages.pipeline``): it holds the parameters, keeps each
stage's result as a fitted attribute, and runs Z for ``predict``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from sklearn.base import BaseEstimator, ClassifierMixin

from .config import DEFAULT_C, MODES, Config, ImageInput, MergeSpec, Source, check_data
from .contract import FEATURES, LABEL, PROBABILITIES
from .errors import OnnxMergeError
from .files.images import as_images, as_labelled, as_pool
from .files.models import save_model
from .files.outputs import check_output_path
from .learn.head import TeachersHead
from .runtime.factory import open_tasks
from .runtime.session import EXTRACT_VALUES_PER_CALL, run_batched
from .stages import choice, pipeline
from .stages.results import Prepared

__all__ = ["Merger", "Source", "MODES", "DEFAULT_C"]


class Merger(ClassifierMixin, BaseEstimator):
    """Compose pretrained ONNX classifiers into one model Z.

    Parameters
    ----------
    input : ImageInput
        What Z accepts (uint8 ``[N, height, width, channels]``).
    sources : list of Source
        The pretrained classifiers; each is cut at its feature tensor.
    mode : "fit" or "teachers"
        ``"fit"`` trains a logistic-regression head on labelled images and/or the teachers' pseudo-labels of
        an unlabeled pool; ``"teachers"`` needs no labels: Z routes between the sources' own heads
        (``onnxmerge.learn.routing`` explains how), and a train set may add new classes.
    C : the head's inverse regularisation, or ``"auto"`` (from the labels per class).
    class_weight : passed to scikit-learn's ``LogisticRegression`` (``"balanced"``, None or a dict).
    batch_size : images per onnxruntime call during feature extraction.
    quiet : no progress bars.
    router_C : the teachers-mode router's inverse regularisation.
    cache_dir : a folder for the feature cache (None: no cache).
    merge : a ``MergeSpec`` (the recipe's ``[merge]``): ``mode`` "concat" (every source's backbone), "weights"
        (sources of one architecture share one backbone merged in weight space) or "auto" (the merged one
        unless it loses more than ``margin`` held-out accuracy); ``base`` the model they were tuned from.
    engine : "local" (this process) or "dask" (a Dask cluster; the extra ``onnxmerge[dask]``; None: "dask"
        where an address or workers are given, else "local"): where the
        sources run over the labelled set and the pool. Their features and teachers' outputs are gathered
        here for the head's fit; the parity check's 64 images run here.
    address : a Dask scheduler's address (``tcp://HOST:8786``); None with engine "dask": a LocalCluster on
        loopback, ``workers`` single-threaded worker processes (default one per core). ``close()`` ends it.
    new_classes : training classes to keep as classes of their own although their names resemble a teacher's
        label or another training class (``coat`` beside a teacher's ``Coat``); without it, that is an error
        asking "did you mean".
    unknown : "off" (default), "auto" or a number in (0, 1): Z gains an ``unknown_score`` output and answers
        "unknown" for images farther from the build's images than that share of them (auto: 0.95);
        docs/unknown.md.

    Every default is :class:`onnxmerge.config.Config`'s, and every value is checked there (at ``fit``).

    Example
    -------
    >>> z = Merger(ImageInput(28, 28, 1), [Source("a", "a.onnx", Preprocess(1 / 255, (0.5,), (0.5,)))])
    >>> z.fit("train.npz").save("z.onnx")  # doctest: +SKIP
    """

    def __init__(
        self,
        input: ImageInput,
        sources: list[Source],
        mode: str = Config.mode,
        C: float | str = Config.C,
        class_weight: str | dict | None = Config.class_weight,
        batch_size: int = Config.batch_size,
        quiet: bool = Config.quiet,
        router_C: float = Config.router_C,
        cache_dir: str | os.PathLike | None = Config.cache_dir,
        engine: str | None = Config.engine,
        address: str | None = Config.address,
        workers: int | None = Config.workers,
        new_classes: list[str] | tuple[str, ...] = Config.new_classes,
        merge: MergeSpec = Config.merge,
        unknown: str | float = Config.unknown,
    ):
        self.input = input
        self.sources = sources
        self.mode = mode
        self.C = C
        self.class_weight = class_weight
        self.batch_size = batch_size
        self.quiet = quiet
        self.router_C = router_C
        self.cache_dir = cache_dir
        self.engine = engine
        self.address = address
        self.workers = workers
        self.new_classes = new_classes
        self.merge = merge
        self.unknown = unknown

    @classmethod
    def from_config(cls, config: Config) -> Merger:
        """A Merger with ``config``'s parameters."""
        return cls(**config.params())

    def config(self) -> Config:
        """This Merger's parameters as one checked :class:`Config` (raises on a bad value)."""
        return Config(**self.get_params(deep=False))

    def build_graph(self) -> onnx.ModelProto:
        """Load, cut and stitch the sources (no head yet); sets ``sources_``, ``stitched_`` and ``weights_``.

        The sources' weights go to a temporary folder (``weights_``) that the graphs refer to; it lives as
        long as this Merger (or until the next build).
        """
        self._z = self._session = None
        config = self.config()
        if getattr(self, "_tasks", None) is None:
            self._tasks = open_tasks(config.engine, config.address, config.workers, config.quiet)
        self._set_graph(pipeline.prepare(config, self._tasks))
        return self.stitched_

    def _set_graph(self, prepared: Prepared) -> None:
        self._build, self._extracted = prepared, None
        self.weights_, self.sources_, self.stitched_ = prepared.weights, prepared.sources, prepared.graph.model
        self.notes_, self.share_, self.groups_ = prepared.graph.notes, prepared.graph.share, prepared.graph.groups
        self.engine_ = prepared.engine  # where the stitched graph runs (runtime.engine)

    def fit(self, X=None, y=None, unlabeled=None) -> Merger:
        """Build Z: extract features, fit the head (or route the teachers), append it, check parity.

        ``X`` is a labelled folder or ``.npz`` path (or a list of them, joined), or a uint8 array
        ``[N, H, W, C]`` with labels ``y``. ``unlabeled`` is a pool of images without labels (a folder, an
        ``.npz`` with ``x``, or a uint8 array). In mode ``"fit"`` at least one of them is needed; in mode
        ``"teachers"`` both are optional and ``X`` may only hold new classes (stage 2 without old data).
        """
        config = self.config()
        check_data(config.mode, X is not None, unlabeled is not None)
        labelled = as_labelled(X, y, self.input) if X is not None else None
        # a train folder of suggested images that nobody has labelled yet: no labelled images (yet)
        notes = labelled.notes if labelled is not None else []
        labelled = labelled if labelled is not None and len(labelled.x) else None
        # on a cluster the workers read a pool folder's files themselves: its pixels never come here
        lazy = config.engine == "dask"
        pool = as_pool(unlabeled, self.input, lazy) if unlabeled is not None else None
        self._z = self._session = None
        if getattr(self, "_tasks", None) is None:
            self._tasks = open_tasks(config.engine, config.address, config.workers, config.quiet)
        # stages 1-5; with [merge] also the merged Z, and the choice between it and the concatenation
        built = choice.build_z(config, self._tasks, labelled, pool)
        extracted, fitted, self.parity_ = built.extracted, built.fitted, built.parity
        self._set_graph(extracted.prepared)
        self._extracted = extracted
        self.warnings_, self.report_ = built.report.warnings, dict(built.report.as_dict(), data_notes=notes)
        self.teachers_, self.widths_ = extracted.teachers, extracted.widths
        self.head_input_ = extracted.head_input()  # what the head reads, block by block
        self.head_, self.classes_ = fitted.head, fitted.classes
        self.unknown_ = fitted.unknown  # learn.unknown.Prototypes with [head] unknown on, else None
        self.features_from_cache_ = extracted.features.from_cache
        self._z, self._session = fitted.model, None
        return self

    # -- the stitched graph's tensors ------------------------------------------------------------------
    def transform(self, X: np.ndarray) -> np.ndarray:
        """The concatenated source features ``[N, D]`` of uint8 images (Z's ``features`` output)."""
        return self.source_outputs(X, [FEATURES])[FEATURES]

    def source_outputs(
        self, X: np.ndarray, outputs: list[str] | None = None, budget: int = EXTRACT_VALUES_PER_CALL
    ) -> dict[str, np.ndarray]:
        """Named tensors of the stitched graph (``features``, ``NAME/feature``, ``NAME/head``, ``NAME/input``)."""
        if getattr(self, "_build", None) is None:
            raise OnnxMergeError("this Merger has no graph yet; call fit() or build_graph() first.")
        return self.engine_.outputs(X, outputs or [o.name for o in self.stitched_.graph.output], budget)

    def head_outputs(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The stitched graph's outputs Z's head reads (``NAME/feature``, teachers' ``NAME/head``) on uint8
        images, from the feature cache where this build stored them."""
        if getattr(self, "_extracted", None) is None:
            raise OnnxMergeError("this Merger is not fitted yet; call fit() first.")
        return self._extracted.features(X)

    def proba_from_outputs(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Z's probabilities ``[N, K]`` from :meth:`head_outputs`, computed by the fitted head in numpy (equal to
        Z's ``probabilities`` within the parity bound the build checked)."""
        if isinstance(self.head_, TeachersHead):
            return self.head_.numpy(outputs)[0]
        return self.head_.predict_proba(self.head_input_.numpy(outputs).astype(np.float64))

    # -- using Z ----------------------------------------------------------------------------------------
    @property
    def model_(self) -> onnx.ModelProto:
        """Z as a self-contained ``ModelProto`` (its weights read into memory; ``save`` streams them instead)."""
        if getattr(self, "_z", None) is None:
            raise AttributeError("model_ is set by fit(); this Merger is not fitted yet")
        return self.weights_.inline(self._z)

    @model_.setter
    def model_(self, model: onnx.ModelProto) -> None:  # e.g. the int8 Z of --quantize
        self._z, self._session = model, None

    def _z_session(self):
        if getattr(self, "_z", None) is None:
            raise OnnxMergeError("this Merger is not fitted yet; call fit() first.")
        if self._session is None:
            self._session = self.engine_.session(self._z)
        return self._session

    def predict(self, X) -> np.ndarray:
        """Class names for uint8 images ``[N, H, W, C]`` (or image files, a folder, PIL images), computed by Z."""
        return run_batched(self._z_session(), as_images(X, self.input), [LABEL], self.batch_size, self.quiet)[LABEL]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[N, K]`` in ``classes_`` order (inputs as ``predict``), computed by Z."""
        return run_batched(self._z_session(), as_images(X, self.input), [PROBABILITIES], self.batch_size, self.quiet)[
            PROBABILITIES
        ]

    def score(self, X, y=None, sample_weight=None) -> float:
        """Z's accuracy on labelled data given as ``fit`` takes it: a labelled folder or ``.npz`` (or a list of
        them), or images with labels ``y``. A label Z does not know counts as wrong."""
        data = as_labelled(X, y, self.input)
        return float(np.average(self.predict(data.x) == data.y, weights=sample_weight))

    def save(self, path: str | os.PathLike) -> Path:
        """Write Z atomically (temporary file, then rename); never onto a source model."""
        if getattr(self, "_z", None) is None:
            raise OnnxMergeError("this Merger is not fitted yet; call fit() before save().")
        output = check_output_path(path, [Path(s.model) for s in self.sources])
        return save_model(self._z, output, weights=self.weights_)

    def close(self) -> None:
        """End the Dask cluster this Merger started or connected to (engine "dask"); Z stays usable."""
        tasks, self._tasks = getattr(self, "_tasks", None), None
        if getattr(self, "_build", None) is not None:
            self.engine_.close()
        if tasks is not None:
            tasks.close()
