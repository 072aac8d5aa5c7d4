"""The typed values the build's stages hand each other: every stage is a function from these (plus arrays and the
frozen ``Config``) to a new one, and ``pipeline`` alone orders the stages and assembles the ``BuildReport``.

Every stage module may import this one; it imports no stage (the stages' own classes appear in annotations only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..config import Config, Preprocess, Source
from ..contract import FEATURES
from ..graph.cut import CutModel
from ..graph.share import ShareStats
from ..graph.stitch import output_names
from ..learn.head import HeadInput
from ..learn.routing import Teachers
from ..runtime.engine import Engine
from ..runtime.weights import WeightFolder

if TYPE_CHECKING:  # annotations only: this module imports no stage
    from .features import Features


@dataclass
class ResolvedSource:
    """A source after loading: its model, the feature found, its labels, its full preprocessing, its cut."""

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
    label_warnings: list[str] | None = None  # labels the model carries but onnxmerge could not read
    merged: str | None = None  # the weight merge this model's backbone came from (stages/merging.py)
    merge_group: tuple[str, ...] = ()  # the sources that share that merged backbone (the first one's is kept)
    warnings: list[str] | None = None  # a recipe that normalises for a source that does its own preprocessing
    precision: str = "float32"  # what the source computes in ("float16", "int8"): Z keeps it (graph.inspect)

    @property
    def name(self) -> str:
        return self.spec.name


def feature_sources(sources: list[ResolvedSource]) -> list[str]:
    """Sources whose features Z's ``features`` holds and the head reads: a merged backbone's once (every source
    of a weight merge's group computes the same features, ``stages/merging.py``: its first source's are kept)."""
    return [s.name for s in sources if not s.merge_group or s.merge_group[0] == s.name]


def teacher_space(sources: list[ResolvedSource], teachers: list[tuple[str, str]]) -> Teachers:
    """The teachers' labels and their union, in ``teachers`` order."""
    labels = {s.name: s.labels for s in sources}
    return Teachers.of([n for n, _ in teachers], [labels[n] for n, _ in teachers])


@dataclass
class StitchedGraph:
    """The sources' graph without a head: outputs ``features``, ``NAME/feature``, ``NAME/head``, ``NAME/input``."""

    model: onnx.ModelProto
    notes: dict[str, str]  # per source, a conversion the stitch made (an opset change)
    share: ShareStats
    groups: list[list[str]]  # sources that run in one session
    large: bool  # weights above runtime.session.LARGE_MODEL_BYTES: run group by group


@dataclass(frozen=True)
class Prepared:
    """Stages 1-2: the sources resolved and cut, the stitched graph (no head yet) and the engine it runs on."""

    config: Config
    weights: WeightFolder  # the temporary folder the graphs' offloaded tensors live in
    sources: list[ResolvedSource]
    graph: StitchedGraph
    engine: Engine  # LocalEngine, or DaskEngine (runtime.dask_engine)


@dataclass(frozen=True)
class Extracted:
    """Stage 3: which sources teach, every output's width, and the (cached) extraction of the head's inputs."""

    prepared: Prepared
    teachers: list[tuple[str, str]]  # (name, head kind) of the teaching sources
    widths: dict[str, int]  # width of every feature and head output
    features: Features
    warnings: list[str]  # the sources' unreadable labels, the sources that cannot teach

    @property
    def sources(self) -> list[ResolvedSource]:
        return self.prepared.sources

    @property
    def config(self) -> Config:
        return self.prepared.config

    def head_input(self) -> HeadInput:
        """What the head reads: every source's features, every teacher's head output."""
        return HeadInput(feature_sources(self.sources), list(self.teachers))

    def teacher_space(self) -> Teachers:
        return teacher_space(self.sources, self.teachers)

    def graph_outputs(self) -> list[str]:
        """The stitched graph's outputs the head reads: features (joined and per source), the teachers' heads."""
        return (
            [FEATURES]
            + [output_names(s.name)["feature"] for s in self.sources]
            + [output_names(n)["head"] for n, _ in self.teachers]
        )


@dataclass(frozen=True)
class Assessment:
    """What a stage says about the build: its report entries (in order), warning sentences, Z's extra metadata."""

    report: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)

    def __add__(self, other: Assessment) -> Assessment:
        return Assessment(
            {**self.report, **other.report}, self.warnings + other.warnings, {**self.metadata, **other.metadata}
        )


@dataclass
class Fitted:
    """Stage 4's result: Z (light: its weights in the build's folder), the head behind it, its classes, and what
    the stage measured on the way (``assessment``)."""

    model: onnx.ModelProto
    head: object  # a scikit-learn Pipeline (mode "fit") or a TeachersHead
    classes: list[str]
    parity_images: np.ndarray  # real images the build used, for the parity check
    seen: list[dict[str, np.ndarray]] = field(default_factory=list)  # stitched-graph outputs of the images learned from
    unknown: object = None  # the fitted unknown score (learn.unknown.Prototypes) where [head] unknown is on
    assessment: Assessment = field(default_factory=Assessment)


@dataclass(frozen=True)
class BuildReport:
    """The build report: each stage's sections in the order the stages ran, then the build's summary entries.

    ``as_dict`` is what ``build --json`` prints and ``Merger.report_`` holds (keys in this order).
    """

    sections: dict  # the stages' entries: routing, pseudo_labels, C, ..., expected_accuracy, unknown
    mode: str
    classes: list[str]
    new_classes: list[str]
    train_images: int
    pool_images: int
    teachers: dict[str, str]
    warnings: list[str]
    shared: dict
    features_from_cache: bool
    merge: dict | None = None  # the weight merge's choice (stages/choice.py), where [merge] asked for one

    def as_dict(self) -> dict:
        out = dict(self.sections)
        out.update(
            mode=self.mode,
            classes=self.classes,
            new_classes=self.new_classes,
            train_images=self.train_images,
            pool_images=self.pool_images,
            teachers=self.teachers,
            warnings=self.warnings,
            shared=self.shared,
            features_from_cache=self.features_from_cache,
        )
        if self.merge is not None:
            out["merge"] = self.merge
        return out


@dataclass(frozen=True)
class Built:
    """Stages 1-5 done: what was extracted, Z with its head, the parity checks it passed, the report."""

    extracted: Extracted
    fitted: Fitted
    parity: list  # parity.ParityCheck, every one passed
    report: BuildReport
