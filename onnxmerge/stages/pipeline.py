"""The build as a pipeline of named stages, each in its own module of this package:

1. ``sources``   resolve the sources: load safely, find feature and head, fill preprocessing, cut;
2. ``stitching`` build the graph: one image input, per-source preprocessing, shared work once;
3. ``teachers`` + ``features``  extract: which sources teach, their features and head outputs (cached);
4. ``fit`` (mode "fit") or ``route`` (mode "teachers"): the head, appended to the graph: Z;
   ``unknown`` (``[head] unknown`` on): Z's ``unknown_score`` and its calibrated threshold;
5. ``parity``    check Z against every source and against the fitted head;
then Z's metadata is set here, and ``Merger.save`` writes it. Each stage is a function from typed inputs
(``results``: ``Prepared``, ``Extracted``, ``Fitted``) to a typed result; what a stage has to say (report
entries, warnings, metadata) comes back in its result's ``Assessment``, and ``fit`` assembles the ``BuildReport``.
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
from .features import Features
from .fit import fit_labelled
from .parity import ParityCheck, check_parity
from .results import BuildReport, Built, Extracted, Fitted, Prepared, ResolvedSource
from .route import fit_teachers
from .sources import resolve_sources
from .stitching import make_engine, stitch_sources
from .teachers import check_class_names, find_teachers
from .unknown import add_unknown, check_reserved


def prepare(
    config: Config,
    tasks: Tasks | None = None,
    resolved: tuple[list[ResolvedSource], WeightFolder] | None = None,
) -> Prepared:
    """Stages 1-2: the sources resolved and cut, the stitched graph (no head yet) and its engine.

    The sources' weights go to a temporary folder (``Prepared.weights``) that the graphs refer to. ``tasks``
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
    return Prepared(config, weights, sources, graph, engine)


def extract(prepared: Prepared, labelled: Dataset | None, pool: Dataset | None) -> Extracted:
    """Stage 3 on a prepared build: the data checked against the sources, which sources teach, the extraction."""
    config, sources = prepared.config, prepared.sources
    label_warnings = [w for s in sources for w in (s.label_warnings or []) + (s.warnings or [])]
    check_data(config.mode, labelled is not None, pool is not None)
    if labelled is not None:
        check_class_names(sorted({str(c) for c in labelled.y}), sources, config.new_classes)
    if config.unknown_share is not None:  # before any source runs: the reserved name in the user's labels
        if labelled is not None:
            check_reserved(labelled.y, "the labelled data")
        for source in sources:
            check_reserved(source.labels or [], f"source {source.name!r}")
    given = pool if pool is not None else labelled
    probe = decoded(given.x[:16]) if given is not None else np.zeros((1, *config.input.shape), np.uint8)
    teachers, widths, warnings = find_teachers(sources, prepared.graph.model, prepared.engine, probe, config.mode)
    features = Features(
        prepared.engine,
        prepared.graph,
        [s.name for s in sources],
        [n for n, _ in teachers],
        widths,
        prepared.engine.batch(),
        config.cache_dir,
    )
    return Extracted(prepared, teachers, widths, features, label_warnings + warnings)


def fit(
    prepared: Prepared, labelled: Dataset | None, pool: Dataset | None, extra_checks: list[ParityCheck] = ()
) -> Built:
    """Stages 3-5 on a prepared build: Z with its head and metadata, parity-checked (raises if a check fails);
    ``extra_checks``: checks passed before (a weight merge's), reported with Z's own."""
    config = prepared.config
    extracted = extract(prepared, labelled, pool)
    stage4 = fit_teachers if config.mode == "teachers" else fit_labelled
    fitted = stage4(extracted, labelled, pool)
    # a source's own labels (model metadata) reach Z in teachers mode and through pseudo-labels: checked here
    check_labels(fitted.classes, "a source's model (one of Z's classes)", "give that source's labels in the recipe")
    if config.unknown_share is not None:
        fitted = add_unknown(extracted, fitted)
    set_metadata(fitted.model, extracted, fitted)
    parity = check_parity(extracted, fitted) + list(extra_checks)
    prepared.weights.check(fitted.model)
    return Built(extracted, fitted, parity, _report(extracted, fitted, labelled, pool))


def _report(extracted: Extracted, fitted: Fitted, labelled: Dataset | None, pool: Dataset | None) -> BuildReport:
    """The build report: the stages' sections in the order they ran, then the summary entries."""
    known = {label for s in extracted.sources for label in (s.labels or [])}
    return BuildReport(
        sections=fitted.assessment.report,
        mode=extracted.config.mode,
        classes=fitted.classes,
        new_classes=[c for c in fitted.classes if c not in known],
        train_images=len(labelled.x) if labelled is not None else 0,
        pool_images=len(pool.x) if pool is not None else 0,
        teachers={name: kind for name, kind in extracted.teachers},
        warnings=extracted.warnings + fitted.assessment.warnings,
        shared=extracted.prepared.graph.share.as_dict(),
        features_from_cache=extracted.features.from_cache,
    )


def set_metadata(model: onnx.ModelProto, extracted: Extracted, fitted: Fitted) -> None:
    """Z's ``metadata_props`` as PRODUCT.md defines them (``contract``), and its producer."""
    sources = extracted.sources
    props = {
        contract.LABELS_KEY: fitted.classes,
        contract.SOURCES_KEY: [{"name": s.name, "sha256": s.sha256, "feature": s.feature} for s in sources],
        contract.MODE_KEY: extracted.config.mode,
        contract.VERSION_KEY: __version__,
    }
    groups = {s.merge_group: s.merged for s in sources if s.merged}  # one backbone each (stages/merging.py)
    if groups:
        listed = [{"method": method, "sources": list(names)} for names, method in groups.items()]
        props[contract.MERGE_KEY] = dict(listed[0], **({"groups": listed} if len(listed) > 1 else {}))
    props.update(fitted.assessment.metadata)  # expected accuracy, route columns, head inputs (stages/assess.py)
    contract.write_metadata(model, props)
