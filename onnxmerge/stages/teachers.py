"""Which sources teach: a source's own head takes part in Z when it is a teacher with labels, its classifier
output has one column per label, and (in mode "fit") it needs no ops outside the default domain."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import OnnxMergeError
from ..graph.share import ancestors
from ..graph.stitch import output_names
from ..learn.routing import Teachers, head_kind
from ..runtime.engine import Engine
from .sources import ResolvedSource


def find_teachers(
    sources: list[ResolvedSource],
    graph: onnx.ModelProto,
    engine: Engine,
    probe: np.ndarray,
    mode: str,
    warnings: list[str],
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """``(name, head kind)`` of every teaching source, and the width of every feature and head output.

    One run on ``probe`` images tells both. Sources that cannot teach in mode "fit" add a warning and
    contribute features only; in mode "teachers" a teacher that cannot teach is an error.
    """
    heads = {s.name: output_names(s.name)["head"] for s in sources if s.head_output is not None}
    outputs = engine.outputs(probe, [output_names(s.name)["feature"] for s in sources] + list(heads.values()))
    widths = {name: value.shape[1] if value.ndim == 2 else -1 for name, value in outputs.items()}
    kinds = []
    for source in sources:
        name = source.name
        if not source.spec.teacher:
            continue
        if name not in heads or source.labels is None:
            if mode == "teachers":
                what = "labels" if source.labels is None else "classifier output"
                raise OnnxMergeError(
                    f"source {name!r} is a teacher without {what}; give its labels "
                    "in the recipe, or set teacher = false to use it as a feature extractor only."
                )
            continue
        head = outputs[heads[name]]
        if widths[heads[name]] != len(source.labels):
            if mode == "teachers":
                raise OnnxMergeError(
                    f"source {name!r} has {len(source.labels)} labels but its "
                    f"classifier output {source.head_output!r} has shape "
                    f"{list(head.shape)}; fix its labels or head_output."
                )
            warnings.append(
                f"source {name!r} has {len(source.labels)} labels but its classifier output "
                f"has {widths[heads[name]]} columns; its head is not used (features only)."
            )
            continue
        foreign = head_domains(graph.graph, name)
        if foreign and mode == "fit":  # Z's head stays runnable on minimal onnxruntime builds
            warnings.append(
                f"the own head of source {name!r} uses {sorted(foreign)} ops, so Z's "
                "head does not read its probabilities (features only)."
            )
            continue
        kinds.append((name, head_kind(head)))
    if mode == "teachers" and not kinds:
        raise OnnxMergeError('mode "teachers" needs at least one source with teacher = true and labels.')
    return kinds, widths


def teacher_space(sources: list[ResolvedSource], teachers: list[tuple[str, str]]) -> Teachers:
    """The teachers' labels and their union, in ``teachers`` order."""
    labels = {s.name: s.labels for s in sources}
    return Teachers.of([n for n, _ in teachers], [labels[n] for n, _ in teachers])


def head_domains(graph: onnx.GraphProto, name: str) -> set[str]:
    """Op domains other than the default one that a source's own head adds on top of its features."""
    names = output_names(name)
    head_only = ancestors(graph, [names["head"]]) - ancestors(graph, [names["feature"]])
    return {graph.node[i].domain for i in head_only} - {"", "ai.onnx"}
