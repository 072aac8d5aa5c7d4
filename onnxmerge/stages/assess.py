"""The build's honest self-assessment: held-out accuracy, each source on its own task, no silent class loss.

Called by stage 4 (``fit.fit_labelled`` / ``route.fit_teachers``) once the head is fitted, with the head
inputs the build computed anyway (no source runs again). Each function returns an ``Assessment`` of:

- ``report``: ``expected_accuracy`` (``estimate.Estimate.as_dict`` plus its printed ``line``),
  ``source_checks`` (``own_labels``: each teacher's accuracy on labelled images of its own labels;
  ``outputs``: each source's output statistics on the pool / training images) and ``pool_labels``
  (per union label: pool images routing gives it, and pool images Z predicts as it);
- ``warnings``: the sentences of ``health`` (a source near chance or looking fed the wrong input;
  a label Z never or hardly ever predicts on the pool);
- ``metadata``: Z's extra ``metadata_props`` (``contract``'s expected accuracy, route and head
  inputs keys), which ``pipeline.set_metadata`` writes.
"""

from __future__ import annotations

import time

import numpy as np

from ..contract import EXPECTED_ACCURACY_KEY, HEAD_INPUTS_KEY, ROUTE_KEY
from ..learn import estimate, health
from ..learn.head import block_spans
from .results import Assessment, Extracted

OUTPUTS_ON = "pool images"


def _head_inputs(extracted: Extracted, head_input) -> list[dict]:
    """What the head reads, block by block (stored in Z for ``onnxmerge inspect``)."""
    widths = head_input.widths(extracted.widths)
    blocks = [{"source": n, "block": "features (L2-normalised)"} for n in head_input.sources]
    blocks += [{"source": n, "block": "log-probabilities"} for n, _ in head_input.teachers]
    return [dict(b, width=int(w)) for b, w in zip(blocks, widths)]


def _start(extracted: Extracted, head_input) -> Assessment:
    """An assessment with Z's head-inputs metadata and empty source checks, for the mode's function to fill."""
    return Assessment(
        {"source_checks": {"own_labels": [], "outputs": []}}, [], {HEAD_INPUTS_KEY: _head_inputs(extracted, head_input)}
    )


def _set_estimate(out: Assessment, result: estimate.Estimate, seconds: float, cpu_seconds: float) -> None:
    out.report["expected_accuracy"] = dict(
        result.as_dict(), line=result.line(), seconds=round(seconds, 3), cpu_seconds=round(cpu_seconds, 3)
    )
    if result.accuracy is not None:
        out.metadata[EXPECTED_ACCURACY_KEY] = result.as_dict()


def _check_sources(
    out: Assessment,
    extracted: Extracted,
    head_input,
    x: np.ndarray,
    where: str,
    x_labelled: np.ndarray | None = None,
    y_labelled: np.ndarray | None = None,
) -> None:
    """Output signatures of every source on head inputs ``x`` (``where``: what those images are), and each
    teacher's accuracy on the labelled images of its own labels where ``x_labelled``/``y_labelled`` are given."""
    widths = head_input.widths(extracted.widths)
    n_sources = len(head_input.sources)
    teachers = [n for n, _ in head_input.teachers]
    labels = {s.name: s.labels for s in extracted.sources}
    checks = out.report["source_checks"]
    if x_labelled is not None:
        probs = estimate.teacher_probabilities(x_labelled, widths, n_sources)
        own = [health.own_label_accuracy(n, labels[n], p, y_labelled) for n, p in zip(teachers, probs)]
        checks["own_labels"] = [c for c in own if c is not None]
        out.warnings.extend(health.accuracy_warnings(checks["own_labels"]))
    probs = dict(zip(teachers, estimate.teacher_probabilities(x, widths, n_sources)))
    for name, (start, stop) in zip(head_input.sources, block_spans(widths)):
        entry, warnings = health.output_signatures(name, probs.get(name), x[:, start:stop], where)
        checks["outputs"].append(entry)
        out.warnings.extend(warnings)


def _routed_labels(extracted: Extracted, head, head_input, x_pool: np.ndarray, route: np.ndarray) -> np.ndarray:
    """The label routing gives each pool image: the routed teacher's own best label, or a routed new class."""
    widths = head_input.widths(extracted.widths)
    probs = estimate.teacher_probabilities(x_pool, widths, len(head_input.sources))
    labels = {s.name: s.labels for s in extracted.sources}
    names = [n for n, _ in head_input.teachers]
    columns = names + list(getattr(head, "new_classes", []))
    best = route.argmax(axis=1)
    out = np.empty(len(x_pool), dtype=object)
    for i, column in enumerate(columns):
        mine = best == i
        out[mine] = np.asarray(labels[column])[probs[i][mine].argmax(axis=1)] if i < len(names) else column
    return out.astype(str)


def fit_mode(
    extracted: Extracted,
    head,
    classes: list[str],
    head_input,
    widths: list[int],
    C: float,
    labelled: tuple[np.ndarray, np.ndarray] | None,
    pool: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    pool_claims: dict[str, int] | None = None,
    estimated: tuple[estimate.Estimate, float, float] | None = None,
) -> Assessment:
    """Mode "fit": cross-validated accuracy, source checks, per-label pool counts (module docstring).

    ``labelled`` is ``(head inputs, labels)`` of the labelled images (None: a pool-only build); ``pool`` is
    ``(head inputs of every pool image, their pseudo-labels, which were kept, the kept rows' sample weight in
    the head's fit)`` (None: no pool), ``pool_claims`` the pool images each teacher label's own teacher calls
    it. ``widths`` and ``C`` are the head's, as passed to ``fit_head``; ``estimated``: the cross-validation
    that chose C (``estimate.choose_C``: its estimate, seconds, CPU seconds), not run again.
    """
    x_labelled, y_labelled = labelled if labelled is not None else (None, None)
    x_pool, pool_labels, pool_keep, pool_weight = pool if pool is not None else (None,) * 4
    out = _start(extracted, head_input)
    if x_labelled is not None:
        began, cpu = time.perf_counter(), time.process_time()
        extra = None
        if x_pool is not None:
            extra = (x_pool[pool_keep], pool_labels[pool_keep], pool_weight)
        if estimated is None:
            result = estimate.cross_validate(
                x_labelled, y_labelled, widths, C, extracted.config.class_weight, extra=extra
            )
            seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
        else:
            result, seconds, cpu_seconds = estimated
        labelled_classes = len(set(y_labelled))
        if labelled_classes < len(classes):  # the pool added classes no held-out image can test
            result.what = f"labelled images of {labelled_classes} of Z's {len(classes)} classes"
        _set_estimate(out, result, seconds, cpu_seconds)
    _check_sources(
        out,
        extracted,
        head_input,
        x_pool if x_pool is not None else x_labelled,
        OUTPUTS_ON if x_pool is not None else "training images",
        x_labelled,
        y_labelled,
    )
    if x_pool is not None:
        routed = np.where(pool_keep, pool_labels, "")
        predicted = head.predict(x_pool)
        union = extracted.teacher_space().union
        counts = health.pool_label_counts(union, routed, predicted, pool_claims)
        out.report["pool_labels"] = counts
        kept = {c: v for c, v in counts.items() if c in classes}  # the others are warned about already
        out.warnings.extend(
            health.class_loss_warnings(kept, len(x_pool), set(y_labelled) if y_labelled is not None else set())
        )
    return out


def teachers_mode(
    extracted: Extracted, head, head_input, pool_out: dict | None, router_rows: tuple | None = None
) -> Assessment:
    """Mode "teachers": source checks on the pool, per-label pool counts, new classes' held-out recall.

    ``pool_out`` is the pool's stitched-graph outputs (None: no pool); the new classes' labelled images are
    in ``router_rows`` (the router's training rows ``(x, y, weight)``, from ``route.fit_router``).
    """
    classes = head.classes
    out = _start(extracted, head_input)
    if pool_out is None:
        return out
    x_pool = head_input.numpy(pool_out).astype(np.float64)
    _check_sources(out, extracted, head_input, x_pool, OUTPUTS_ON)
    probs, route = head.numpy(pool_out)
    out.metadata[ROUTE_KEY] = [n for n, _ in head_input.teachers] + list(head.new_classes)
    predicted = np.asarray(classes)[probs.argmax(axis=1)]
    claims = health.teacher_claims(
        head.space.labels, [head_input.probabilities(pool_out, n, k) for n, k in head_input.teachers]
    )
    counts = health.pool_label_counts(
        classes, _routed_labels(extracted, head, head_input, x_pool, route), predicted, claims
    )
    out.report["pool_labels"] = counts
    new = set(head.new_classes)
    out.warnings.extend(health.class_loss_warnings(counts, len(x_pool), new))
    if head.new_classes and router_rows is not None:
        began, cpu = time.perf_counter(), time.process_time()
        x, y, weight = router_rows
        result = estimate.cross_validate_new_classes(
            x,
            y,
            weight,
            head_input.widths(extracted.widths),
            extracted.config.router_C,
            len(head_input.sources),
            head.space.merge_matrix(),
            classes,
        )
        _set_estimate(out, result, time.perf_counter() - began, time.process_time() - cpu)
    return out
