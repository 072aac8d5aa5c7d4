"""Stage 4b, ``[head] unknown`` on: Z's ``unknown_score``, fitted and calibrated on the build's own images
(``learn.unknown`` says how), appended to Z, and its threshold printed with what it means."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..contract import UNKNOWN, UNKNOWN_KEY
from ..errors import OnnxMergeError
from ..graph.stitch import output_names
from ..learn.unknown import append_unknown, fit_unknown
from .results import Assessment, Extracted, Fitted, feature_sources


def check_reserved(names, where: str) -> None:
    """With ``[head] unknown`` on, "unknown" is Z's answer for no class: a class of that name is an error."""
    if UNKNOWN in set(map(str, names)):
        raise OnnxMergeError(
            f'{where} has a class named "{UNKNOWN}", the answer Z gives with [head] unknown on; rename that '
            'class (its folder or label), or set unknown = "off".'
        )


def add_unknown(extracted: Extracted, fitted: Fitted) -> Fitted:
    """``fitted`` with ``unknown_score`` in Z; its report entry ``unknown`` says what its threshold means."""
    check_reserved(fitted.classes, "Z")
    names = [output_names(name)["feature"] for name in feature_sources(extracted.sources)]  # a merged backbone once
    blocks = [np.concatenate([out[name] for out in fitted.seen]) if fitted.seen else np.zeros((0, 1)) for name in names]
    score = fit_unknown(names, blocks, extracted.config.unknown_share)
    said = Assessment(  # its metadata is written with Z's other metadata (pipeline.set_metadata)
        {"unknown": dict(score.metadata(), line=meaning(score.metadata()))}, [], {UNKNOWN_KEY: score.metadata()}
    )
    head_input = extracted.head_input()  # its L2-normalised blocks are the score's plain view where they match
    made = {out for node in fitted.model.graph.node for out in node.output}
    same = [output_names(n)["feature"] for n in head_input.sources] == names
    plain = head_input.block_names() if same and set(head_input.block_names()) <= made else None
    model = append_unknown(fitted.model, score, fitted.classes, plain)
    return dataclasses.replace(fitted, model=model, unknown=score, assessment=fitted.assessment + said)


def meaning(unknown: dict) -> str:
    """One line: the threshold and what it means for the user's images."""
    keeps = unknown["keeps"]
    return (
        f'label "{UNKNOWN}" when unknown_score > {unknown["threshold"]:.2f}: keeps {keeps:.0%} of your images '
        f"(cross-fitted on the build's {unknown['calibration_images']} images), so about {1 - keeps:.0%} of new "
        "images like them will be called unknown"
    )
