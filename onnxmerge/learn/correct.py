"""Statistics correction after a weight merge, for every method: REPAIR and the BatchNorm reset.

Merging averages weights, not activations: the merged network's channels come out with shrunk deviations and
shifted means, and the error grows layer after layer (the "variance collapse" of Jordan et al., ICLR 2023).
Exporters fold BatchNorm into the convolutions, so a merged backbone usually has no statistics left to
recompute; REPAIR does the equivalent on each Conv or Gemm with a bias: its weight rescaled and its bias
shifted per output channel so that the channel's mean and deviation on pool images become the sources'
average (the same channel of the same layer in each source; after an alignment, the channel it was matched
to). A ``BatchNormalization`` node still in the graph instead gets its running mean and variance from the
merged network's own activations (its merged scale and shift then set the output statistics): the reset.

Layers are corrected in topological order, each on what the corrections before it produced: one run of the
merged network per corrected layer (onnxruntime computes only what that layer needs). What is done is kept as
``Correction`` records, so that ``apply`` recomputes the corrected tensors from the uncorrected merge (the
build's weight parity), and ``statistics_gap`` checks that the corrected network has the statistics aimed at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph import weightmerge
from ..graph.weightmerge import StatLayer
from ..runtime.weights import WeightFolder
from .merging import activations, channel_stats, repair_terms


@dataclass(frozen=True)
class Correction:
    """One corrected layer: affine: its per-channel ``(scale, shift)``; batchnorm: the new ``(mean, variance)``;
    ``target``: the (mean, deviation) aimed at (affine) or measured (batchnorm), for ``statistics_gap``."""

    layer: StatLayer
    values: tuple[np.ndarray, np.ndarray]
    target: tuple[np.ndarray, np.ndarray]


def source_targets(
    models: list[onnx.ModelProto],
    layers: list[StatLayer],
    x: np.ndarray,
    weights: WeightFolder,
    orders: list[dict[str, np.ndarray]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per layer, the sources' average (mean, deviation) of its output channels on ``x`` (None for a BatchNorm:
    its statistics are the merged network's own). ``orders[i]``: source i's channel reorder after an alignment,
    by the name of the layer's output tensor in source i."""
    stats = []
    for i, model in enumerate(models):
        names = [layer.tensors[i] for layer in layers if layer.kind == "affine"]
        values = iter(activations(model, names, x, weights)) if names else iter(())
        mine = []
        for layer in layers:
            if layer.kind != "affine":
                mine.append(None)
                continue
            mean, std = channel_stats(next(values))
            order = (orders[i] if orders else {}).get(layer.tensors[i])
            mine.append((mean, std) if order is None else (mean[order], std[order]))
        stats.append(mine)
    return [
        None if layer.kind != "affine" else tuple(np.mean([s[k][j] for s in stats], axis=0) for j in range(2))
        for k, layer in enumerate(layers)
    ]


def correct(
    template: onnx.ModelProto,
    names: list[str],
    merged: list[np.ndarray],
    layers: list[StatLayer],
    targets: list,
    x: np.ndarray,
    weights: WeightFolder,
) -> tuple[list[np.ndarray], list[Correction]]:
    """The merged tensors (``merged[k]`` is slot k, named ``names[k]`` in ``template``) with every layer's
    statistics corrected on ``x``, layer by layer; and the corrections made."""
    merged, done = list(merged), []
    for layer, target in zip(layers, targets):
        model = weightmerge.with_weights(template, dict(zip(names, merged)))
        mean, std = channel_stats(activations(model, [layer.tensors[0]], x, weights)[0])
        if layer.kind == "affine":
            correction = Correction(layer, repair_terms((mean, std), target), target)
        else:
            correction = Correction(layer, (mean, std**2), (mean, std))
        merged = apply(merged, [correction])
        done.append(correction)
    return merged, done


def apply(merged: list[np.ndarray], corrections: list[Correction]) -> list[np.ndarray]:
    """``merged`` with ``corrections`` applied in order (numpy; the build recomputes a corrected merge so)."""
    out = list(merged)
    for c in corrections:
        a, b = c.layer.slots
        if c.layer.kind == "affine":
            out[a], out[b] = weightmerge.affine(out[a], out[b], c.layer.axis, *c.values)
        else:
            out[a], out[b] = c.values[0].astype(out[a].dtype), c.values[1].astype(out[b].dtype)
    return out


def statistics_gap(
    model: onnx.ModelProto, corrections: list[Correction], x: np.ndarray, weights: WeightFolder
) -> float:
    """The largest difference, relative to max(1, the largest target value), between a corrected layer's
    channel statistics in ``model`` (the corrected merge) on ``x`` and its target; channels that are constant
    on ``x`` (dead units, shifted only) are compared by their mean only."""
    if not corrections:
        return 0.0
    values = activations(model, [c.layer.tensors[0] for c in corrections], x, weights)
    worst = 0.0
    for c, value in zip(corrections, values):
        mean, std = channel_stats(value)
        alive = std > 1e-6
        gaps = [np.abs(mean - c.target[0]), np.where(alive, np.abs(std - c.target[1]), 0.0)]
        scale = max(1.0, float(np.max(np.abs(c.target[0]))), float(np.max(c.target[1])))
        worst = max(worst, float(max(g.max() for g in gaps)) / scale)
    return worst
