"""The build as a pipeline of named stages, each in its own module of this package:

1. ``sources``   resolve the sources: load safely, find feature and head, fill preprocessing, cut;
2. ``stitching`` build the graph: one image input, per-source preprocessing, shared work once;
3. ``teachers`` + ``features``  extract: which sources teach, their features and head outputs (cached);
4. ``fit`` (mode "fit") or ``route`` (mode "teachers"): the head, appended to the graph: Z;
   ``unknown`` (``[head] unknown`` on): Z's ``unknown_score`` and its calibrated threshold;
5. ``parity``    check Z against every source and against the fitted head;
then Z's metadata is set here, and ``Merger.save`` writes it.
"""

from __future__ import annotations

import numpy as np
import onnx

from .. import contract
from ..config import Config, check_data
from ..files.images import Dataset, decoded
from ..runtime.tasks import Tasks
from ..runtime.weights import WeightFolder
from ..safety import check_labels
from ..version import __version__
from .context import Build, Fitted
from .features import Features
from .fit import fit_labelled
from .parity import ParityCheck, check_parity
from .route import fit_teachers
from .sources import ResolvedSource, resolve_sources
from .stitching import make_engine, stitch_sources
from .teachers import check_class_names, find_teachers
from .unknown import add_unknown, check_reserved


def prepare(
    config: Config,
    tasks: Tasks | None = None,
    resolved: tuple[list[ResolvedSource], WeightFolder] | None = None,
) -> Build:
    """Stages 1-2: the sources resolved and cut, the stitched graph (no head yet) and its engine.

    The sources' weights go to a temporary folder (``Build.weights``) that the graphs refer to. ``tasks``
    is where extraction runs (``runtime.factory.open_tasks``: this process, or a Dask cluster).
    ``resolved``: sources resolved already, and their folder (a weight merge's, ``stages/choice.py``).
    """
    if resolved is None:
        weights = WeightFolder()
        sources = resolve_sources(config.sources, config.input, weights)
    else:
        sources, weights = resolved
    graph = stitch_sources(sources, config.input)
    engine = make_engine(graph, sources, weights, config.batch_size, config.quiet, tasks)
    return Build(config, weights, sources, graph, engine)


def fit(build: Build, labelled: Dataset | None, pool: Dataset | None) -> tuple[Fitted, list[ParityCheck]]:
    """Stages 3-5 on a prepared build: Z with its head and metadata, parity-checked (raises if a check fails)."""
    config = build.config
    build.warnings += [w for s in build.sources for w in (s.label_warnings or [])]
    check_data(config.mode, labelled is not None, pool is not None)
    if labelled is not None:
        check_class_names(sorted({str(c) for c in labelled.y}), build.sources, config.new_classes)
    if config.unknown_share is not None:  # before any source runs: the reserved name in the user's labels
        if labelled is not None:
            check_reserved(labelled.y, "the labelled data")
        for source in build.sources:
            check_reserved(source.labels or [], f"source {source.name!r}")
    given = pool if pool is not None else labelled
    probe = decoded(given.x[:16]) if given is not None else np.zeros((1, *config.input.shape), np.uint8)
    build.teachers, build.widths = find_teachers(
        build.sources, build.graph.model, build.engine, probe, config.mode, build.warnings
    )
    build.features = Features(
        build.engine,
        build.graph,
        [s.name for s in build.sources],
        [n for n, _ in build.teachers],
        build.widths,
        build.engine.batch(),
        config.cache_dir,
    )
    fitted = fit_teachers(build, labelled, pool) if config.mode == "teachers" else fit_labelled(build, labelled, pool)
    # a source's own labels (model metadata) reach Z in teachers mode and through pseudo-labels: checked here
    check_labels(fitted.classes, "a source's model (one of Z's classes)", "give that source's labels in the recipe")
    if config.unknown_share is not None:
        fitted = add_unknown(build, fitted)
    set_metadata(fitted.model, build, fitted.classes)
    parity = check_parity(build, fitted) + build.merge_checks
    build.weights.check(fitted.model)
    known = {label for s in build.sources for label in (s.labels or [])}
    build.report.update(
        {
            "mode": config.mode,
            "classes": fitted.classes,
            "new_classes": [c for c in fitted.classes if c not in known],
            "train_images": len(labelled.x) if labelled is not None else 0,
            "pool_images": len(pool.x) if pool is not None else 0,
            "teachers": {name: kind for name, kind in build.teachers},
            "warnings": build.warnings,
            "shared": build.graph.share.as_dict(),
            "features_from_cache": build.features.from_cache,
        }
    )
    return fitted, parity


def set_metadata(model: onnx.ModelProto, build: Build, classes: list[str]) -> None:
    """Z's ``metadata_props`` as PRODUCT.md defines them (``contract``), and its producer."""
    props = {
        contract.LABELS_KEY: classes,
        contract.SOURCES_KEY: [{"name": s.name, "sha256": s.sha256, "feature": s.feature} for s in build.sources],
        contract.MODE_KEY: build.config.mode,
        contract.VERSION_KEY: __version__,
    }
    if build.sources[0].merged:  # one backbone, merged in weight space (stages/merging.py)
        props[contract.MERGE_KEY] = {"method": build.sources[0].merged, "sources": [s.name for s in build.sources]}
    props.update(build.metadata)  # expected accuracy, route columns, head inputs (stages/assess.py)
    contract.write_metadata(model, props)
