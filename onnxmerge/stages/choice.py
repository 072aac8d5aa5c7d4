"""Concatenate or merge: with ``[merge] mode = "weights"`` or ``"auto"`` the build makes both Zs, the
concatenated one (every source's backbone) and the merged one (one backbone, ``stages/merging.py``), and
reports each one's held-out accuracy and time side by side. Mode "weights" keeps the merged Z; mode "auto"
keeps it unless it loses more than ``[merge] margin`` of held-out accuracy, and prints the choice and both
numbers. Without labelled images to hold out, the comparison is the merged backbone's agreement with the
sources' own heads (the concatenated Z agrees with them by construction).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..config import Config
from ..errors import OnnxMergeError
from ..files.images import Dataset, decoded
from ..learn.timing import median_seconds
from ..runtime.tasks import Tasks
from . import pipeline
from .merging import MergedSources, merge_groups, merge_sources, mergeable
from .parity import ParityCheck, require
from .results import Built

TIMING_BATCH = 32  # images per call when each Z is timed (the comparison)
TIMING_RUNS = 5  # median of these, after one warm-up call
WEIGHT_TOLERANCE = 0.0  # the written merged weights are the numpy merge's exact float32 values
# a corrected merge's layer statistics on the pool vs their targets, relative to max(1, the largest target):
# float32 activations summed over the pool in another order than the correction's measurement
STATISTICS_TOLERANCE = 1e-4


def build_z(config: Config, tasks: Tasks | None, labelled: Dataset | None, pool: Dataset | None) -> Built:
    """Stages 1-5, with the weight merge and the choice between merged and concatenated Z where asked."""
    concat = pipeline.prepare(config, tasks)
    if config.merge.mode == "concat":
        return pipeline.fit(concat, labelled, pool)
    groups = merge_groups(concat.sources)
    if not groups:
        found = mergeable(concat.sources)
        if config.merge.mode == "weights":
            raise OnnxMergeError(
                f'the sources cannot be merged in weight space ({found.difference}); use [merge] mode = "concat".'
            )
        return _with_merge(pipeline.fit(concat, labelled, pool), {"choice": "concat", "why": found.line()})
    merged = merge_sources(concat.sources, groups, config.merge, config.input, concat.weights, (labelled, pool))
    methods = ", ".join(g.chosen.label() for g in merged.groups)
    weights_check = ParityCheck(
        f"merged backbone weights vs {methods} recomputed in numpy from the sources' tensors",
        max(g.weight_check for g in merged.groups),
        1.0,
        WEIGHT_TOLERANCE,
    )
    checks = [weights_check] + _statistics_checks(merged)
    require(checks)
    one = pipeline.prepare(config, tasks, (merged.sources, concat.weights))
    results = {}
    for name, prepared, extra in (("concat", concat, []), ("weights", one, checks)):
        start = time.perf_counter()
        results[name] = (pipeline.fit(prepared, labelled, pool, extra), time.perf_counter() - start)
    images = decoded((labelled if labelled is not None else pool).x[:TIMING_BATCH])
    seconds = {name: _time_z(r[0], images) for name, r in results.items()}
    accuracy = {name: r[0].report.sections.get("expected_accuracy", {}).get("accuracy") for name, r in results.items()}
    measure = "held-out accuracy"
    if accuracy["concat"] is None or accuracy["weights"] is None:
        measure = "agreement with the sources' own heads"
        accuracy = {"concat": 1.0, "weights": merged.agreement()}
    keep = "weights" if config.merge.mode == "weights" else _auto_choice(accuracy, config.merge.margin)
    results["concat" if keep == "weights" else "weights"][0].extracted.prepared.engine.close()
    merge = dict(
        merged.as_dict(),
        choice=keep,
        mode=config.merge.mode,
        margin=config.merge.margin,
        measure=measure,
        accuracy=accuracy,
        seconds_per_batch=seconds,
        batch=len(images),
        build_seconds={name: round(r[1], 2) for name, r in results.items()},
        line=_line(keep, config.merge, accuracy, seconds, measure, len(images)),
    )
    return _with_merge(results[keep][0], merge)


def _statistics_checks(merged: MergedSources) -> list[ParityCheck]:
    """Per group whose merge was corrected (REPAIR / BatchNorm reset), its layers' statistics vs the targets."""
    return [
        ParityCheck(
            f"{', '.join(s.name for s in g.sources)} corrected layer statistics on the pool vs their targets",
            g.statistics_check,
            1.0,
            STATISTICS_TOLERANCE,
            "float32 activations summed over the pool",
        )
        for g in merged.groups
        if g.chosen.corrections
    ]


def _with_merge(built: Built, merge: dict) -> Built:
    """``built`` with the merge's choice in its report."""
    return dataclasses.replace(built, report=dataclasses.replace(built.report, merge=merge))


def _auto_choice(accuracy: dict, margin: float) -> str:
    return "weights" if accuracy["weights"] >= accuracy["concat"] - margin else "concat"


def _time_z(built: Built, images: np.ndarray) -> float:
    """Median seconds of one call of Z on ``images`` (one session, one warm-up call first)."""
    session = built.extracted.prepared.engine.session(built.fitted.model)
    median_seconds(session, images, 1)  # warm-up: first runs allocate
    return median_seconds(session, images, TIMING_RUNS)


def _line(keep: str, spec, accuracy: dict, seconds: dict, measure: str, batch: int) -> str:
    """The build report's line: both Zs' numbers and which was kept, why."""
    numbers = (
        f"merged Z {measure} {accuracy['weights']:.3f}, {seconds['weights'] * 1000:.1f} ms per {batch} images; "
        f"concatenated Z {accuracy['concat']:.3f}, {seconds['concat'] * 1000:.1f} ms "
        f"({seconds['weights'] / max(seconds['concat'], 1e-12):.2f}x the time)"
    )
    if spec.mode == "weights":
        return f"kept the merged Z (mode weights): {numbers}"
    why = "loses no more than" if keep == "weights" else "loses more than"
    kept = "merged" if keep == "weights" else "concatenated"
    return f"kept the {kept} Z (mode auto: merging {why} {spec.margin:.3f}): {numbers}"
