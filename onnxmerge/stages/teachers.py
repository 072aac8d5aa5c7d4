"""Which sources teach: a source's own head takes part in Z when it is a teacher with labels, its classifier
output has one column per label, and (in mode "fit") it needs no ops outside the default domain."""

from __future__ import annotations

import difflib
import json

import numpy as np
import onnx

from ..errors import OnnxMergeError
from ..graph.share import ancestors
from ..graph.stitch import output_names
from ..learn.routing import head_kind
from ..runtime.engine import Engine
from .results import ResolvedSource


def find_teachers(
    sources: list[ResolvedSource],
    graph: onnx.ModelProto,
    engine: Engine,
    probe: np.ndarray,
    mode: str,
) -> tuple[list[tuple[str, str]], dict[str, int], list[str]]:
    """``(name, head kind)`` of every teaching source, the width of every feature and head output, and the
    warnings about sources that cannot teach.

    One run on ``probe`` images tells both. Sources that cannot teach in mode "fit" add a warning and
    contribute features only; in mode "teachers" a teacher that cannot teach is an error.
    """
    heads = {s.name: output_names(s.name)["head"] for s in sources if s.head_output is not None}
    outputs = engine.outputs(probe, [output_names(s.name)["feature"] for s in sources] + list(heads.values()))
    widths = {name: value.shape[1] if value.ndim == 2 else -1 for name, value in outputs.items()}
    kinds, warnings = [], []
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
    return kinds, widths, warnings


def head_domains(graph: onnx.GraphProto, name: str) -> set[str]:
    """Op domains other than the default one that a source's own head adds on top of its features."""
    names = output_names(name)
    head_only = ancestors(graph, [names["head"]]) - ancestors(graph, [names["feature"]])
    return {graph.node[i].domain for i in head_only} - {"", "ai.onnx"}


#: difflib similarity (2 x matching characters / total) at or above which two class names look like one name
#: typed twice: "Bagg" ~ "Bag" 0.86, "Trousers" ~ "Trouser" 0.93; "Shirt" ~ "Skirt" 0.80 and "cat" ~ "bat" 0.67 are
#: different classes
SIMILAR = 0.85


def check_class_names(classes: list[str], sources: list[ResolvedSource], new_classes: tuple[str, ...] = ()) -> None:
    """Refuse a training class whose name is a teacher's label (or another training class) up to case, spaces,
    underscores and hyphens, or a typo: it would silently become a class of its own. ``new_classes`` are names
    the user keeps as new classes all the same (recipe ``[head] new_classes``, ``Merger(new_classes=...)``)."""
    for name in new_classes:
        if name not in classes:
            raise OnnxMergeError(
                f"new_classes names {name!r}, which is no class of the training data; fix or remove it."
            )
    owners = {}
    for source in sources:
        for label in (source.labels or []) if source.spec.teacher else []:
            owners.setdefault(label, f"source {source.name!r}'s label")
    for i, name in enumerate(classes):
        if name in owners or name in new_classes:
            continue
        others = [(label, owner) for label, owner in owners.items()] + [(c, "training class") for c in classes[:i]]
        for label, owner in others:
            how = resemblance(name, label)
            if how:
                raise OnnxMergeError(
                    f"training class {name!r} looks like {owner} {label!r} ({how}); did you mean {label!r}? "
                    f"Rename that class (its folder or labels), or keep it as a class of its own with "
                    f"[head] new_classes = [{_toml(name)}] (Merger(new_classes=[{name!r}]))."
                )


def resemblance(a: str, b: str) -> str | None:
    """How two different names look like one (``"differs only in case"``, ...), or None where they do not."""

    def squeezed(text: str) -> str:
        return "".join(ch for ch in text.casefold() if not (ch.isspace() or ch in "_-"))

    if a == b:
        return None
    if a.casefold() == b.casefold():
        return "differs only in case"
    if squeezed(a) == squeezed(b):
        return "differs only in case, spaces, underscores or hyphens"
    x, y = squeezed(a), squeezed(b)
    matcher = difflib.SequenceMatcher(None, x, y, autojunk=False)
    changed = [x[i1:i2] + y[j1:j2] for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]
    if any(ch.isdigit() for part in changed for ch in part):  # "class_10" and "class_11" are two classes
        return None
    return "a small edit apart" if matcher.ratio() >= SIMILAR else None


def _toml(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)  # a TOML basic string is JSON's string syntax for printable text
