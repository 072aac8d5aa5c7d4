"""What the build's stages share: the configuration, and each stage's typed result as the build fills it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..config import Config
from ..contract import FEATURES
from ..graph.stitch import output_names
from ..learn.head import HeadInput
from ..learn.routing import Teachers
from ..runtime.engine import Engine
from ..runtime.weights import WeightFolder
from .features import Features
from .sources import ResolvedSource, feature_sources
from .stitching import StitchedGraph
from .teachers import teacher_space


@dataclass
class Build:
    """One build in progress: stages 1-2 fill the sources and the graph, stage 3 the teachers and features."""

    config: Config
    weights: WeightFolder
    sources: list[ResolvedSource]
    graph: StitchedGraph
    engine: Engine  # LocalEngine, or DaskEngine (runtime.dask_engine)
    teachers: list[tuple[str, str]] = field(default_factory=list)  # (name, head kind) of the teaching sources
    widths: dict[str, int] = field(default_factory=dict)  # width of every feature and head output
    features: Features | None = None
    warnings: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)  # Z's extra metadata_props (stages/assess.py)
    router_data: tuple | None = None  # the router's training rows (x, y, weight), for the new classes' estimate
    pool_claims: dict[str, int] | None = None  # pool images each teacher label's own teacher calls it (mode "fit")
    merge_checks: list = field(default_factory=list)  # parity checks of a weight merge (stages/choice.py)

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


@dataclass
class Fitted:
    """Stage 4's result: Z (light: its weights in the build's folder), the head behind it, its classes."""

    model: onnx.ModelProto
    head: object  # a scikit-learn Pipeline (mode "fit") or a TeachersHead
    classes: list[str]
    parity_images: np.ndarray  # real images the build used, for the parity check
    seen: list[dict[str, np.ndarray]] = field(default_factory=list)  # stitched-graph outputs of the images learned from
    unknown: object = None  # the fitted unknown score (learn.unknown.Prototypes) where [head] unknown is on
