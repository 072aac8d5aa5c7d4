"""The candidate merges of one group of sources that share an architecture, each scored (``stages/merging.py``
chooses and writes the best): with a base, task arithmetic and TIES at every scale and AdaMerging's
coefficients (``learn.adamerging``); without one, averaging, RegMean and the average after permutation
alignment where the architecture allows it; then each method's best again with its statistics corrected on the
pool (``learn.correct``: REPAIR, the BatchNorm reset).

A *member* is a resolved source (``stages.results.ResolvedSource``; only its ``name``, ``model``, ``feature`` and
``head_output`` are read here). The score of a candidate is ``learn.merging.agreement`` of each member's own
head on the merged backbone with its targets (labels or itself), averaged over members.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import OnnxMergeError
from ..graph import weightmerge
from ..graph.architecture import Match, backbone
from ..graph.permute import permuted, unit_spaces
from ..runtime.weights import WeightFolder
from . import correct, merging
from .adamerging import adamerging
from .merging import activations


@dataclass
class GroupWork:
    """What one group's candidates are computed and scored from."""

    members: list  # resolved sources (stages.results.ResolvedSource)
    found: Match
    arrays: list[list[np.ndarray]]  # per member, its tensor in each slot
    x: np.ndarray  # pool images for statistics (preprocessed)
    weights: WeightFolder
    targets: list[tuple] = field(default_factory=list)  # per member, what its score compares with
    heads: list[dict] = field(default_factory=list)  # per member, its head's tensors reordered by an alignment
    orders: list[dict] | None = None  # per member, an alignment's channel reorder by layer output tensor
    notes: list[str] = field(default_factory=list)

    def score(self, candidate: merging.Candidate) -> float:
        """The mean over members of ``learn.merging.agreement`` on their selection images."""
        scores = []
        for i, (source, (x, reference, has_head)) in enumerate(zip(self.members, self.targets)):
            model = weightmerge.with_weights(source.model, self.source_arrays(i, candidate))
            out = activations(model, [source.head_output or source.feature], x, self.weights)[0]
            scores.append(merging.agreement(out.reshape(len(x), -1), reference, has_head))
        return float(np.mean(scores))

    def source_arrays(self, i: int, candidate: merging.Candidate) -> dict[str, np.ndarray]:
        """Member i's initializers that ``candidate`` sets: the merged slots (and the aligned head)."""
        head = self.heads[i] if candidate.aligned else {}
        return dict(head, **{slot.names[i]: candidate.merged[k] for k, slot in enumerate(self.found.slots)})


def with_base(work: GroupWork, base: list[np.ndarray], method: str) -> list[merging.Candidate]:
    """Task arithmetic and TIES at every scale; AdaMerging from the best uniform scale (method auto/adamerging)."""
    plain = merging.base_candidates(base, work.arrays, "task_arithmetic" if method == "adamerging" else method)
    for candidate in plain:
        candidate.score = work.score(candidate)
    if method not in ("auto", "adamerging"):
        return plain
    heads = [
        (s.model, [slot.names[i] for slot in work.found.slots], s.head_output)
        for i, s in enumerate(work.members)
        if s.head_output
    ]
    if not heads:
        if method == "adamerging":
            raise OnnxMergeError(
                "merge.method adamerging needs the sources' own heads (their entropy on the pool sets the "
                'coefficients); these sources have none: use method "task_arithmetic".'
            )
        work.notes.append("AdaMerging: no source has a head to measure entropy on; left out.")
        return plain
    start = max((c for c in plain if c.method == "task_arithmetic"), key=lambda c: c.score)
    clock = time.perf_counter()
    found, evaluations = adamerging(base, work.arrays, heads, start.scale, work.x, work.weights)
    work.notes.append(
        f"AdaMerging: {found.label()} from x{start.scale:g}, {evaluations} evaluations of the heads' entropy "
        f"on the pool ({time.perf_counter() - clock:.1f} s)"
    )
    return plain + [found] if method == "auto" else [found]


def without_base(work: GroupWork, method: str) -> list[merging.Candidate]:
    """Averaging and RegMean, and the average after permutation alignment where the architecture allows it."""
    members, x = work.members, work.x
    layers = weightmerge.linear_layers([backbone(s.model, s.feature, s.name) for s in members], work.found.slots)
    out = []
    if method in ("auto", "average"):
        out.append(merging.averaged(work.arrays))
    if method in ("auto", "regmean") and not layers:
        work.notes.append("RegMean: the backbone has no Gemm, MatMul or 1x1 Conv layer; it equals averaging here.")
        out += [merging.averaged(work.arrays)] if method == "regmean" else []
    elif method in ("auto", "regmean"):
        grams = [
            _grams(s.model, [layer.inputs[i] for layer in layers], layers, x, work.weights)
            for i, s in enumerate(members)
        ]
        out.append(merging.regmean_candidate(work.arrays, layers, grams))
    if method in ("auto", "align"):
        try:
            aligned = _align(work)
        except OnnxMergeError as exc:
            if method == "align":
                raise
            work.notes.append(str(exc))
        else:
            out.append(merging.averaged(aligned, aligned=True))
    return out


def corrected_twins(work: GroupWork, candidates: list[merging.Candidate]) -> list[merging.Candidate]:
    """Each method's best candidate again with its statistics corrected on the pool (``learn.correct``)."""
    members = work.members
    layers = weightmerge.stat_layers([backbone(s.model, s.feature, s.name) for s in members], work.found.slots)
    if not layers:
        work.notes.append("REPAIR: the backbone has no Conv or Gemm with a bias and no BatchNormalization.")
        return []
    best: dict[tuple, merging.Candidate] = {}
    for c in candidates:
        if (c.method, c.aligned) not in best or c.score > best[(c.method, c.aligned)].score:
            best[(c.method, c.aligned)] = c
    models, targets, twins = [s.model for s in members], {}, []
    names = [slot.names[0] for slot in work.found.slots]
    for c in best.values():
        if c.aligned not in targets:
            orders = work.orders if c.aligned else None
            targets[c.aligned] = correct.source_targets(models, layers, work.x, work.weights, orders)
        merged, done = correct.correct(
            members[0].model, names, c.merged, layers, targets[c.aligned], work.x, work.weights
        )
        twin = dataclasses.replace(c, merged=merged, corrections=done, origin=c, score=None)
        twin.score = work.score(twin)
        twins.append(twin)
    return twins


def _grams(model, tensors: list[str], layers, x: np.ndarray, weights: WeightFolder) -> list[np.ndarray]:
    """RegMean's ``X^T X`` of each linear layer's input on the pool images (every spatial position a row)."""
    rng = np.random.default_rng(0)
    values = activations(model, tensors, x, weights)
    return [
        (lambda r: r.T @ r)(merging.rows(v, 1 if layer.kind == "conv1x1" else v.ndim - 1, rng))
        for v, layer in zip(values, layers)
    ]


def _align(work: GroupWork) -> list[list[np.ndarray]]:
    """Every member's slot tensors with its units reordered to match the first member's (activation matching);
    sets each member's reordered head tensors and, per member, its reorder by layer output (for REPAIR)."""
    members, x, weights = work.members, work.x, work.weights
    spaces = [unit_spaces(s.model, s.feature, f"source {s.name!r}") for s in members]
    reference = activations(members[0].model, [sp.tensor for sp in spaces[0]], x, weights)
    out, work.orders = [work.arrays[0]], [{}]
    for i in range(1, len(members)):
        mine = activations(members[i].model, [sp.tensor for sp in spaces[i]], x, weights)
        orders = []
        for a, b in zip(reference, mine):
            corr = merging.Correlation()  # the same positions of both models' activations (one seed)
            corr.add(merging.rows(a, 1, np.random.default_rng(0)), merging.rows(b, 1, np.random.default_rng(0)))
            orders.append(merging.unit_order(corr.matrix()))
        names = {n for sp in spaces[i] for n, _ in sp.members}
        full = weightmerge.read_arrays(members[i].model, names, str(weights.path))
        moved = permuted(full, spaces[i], orders)
        out.append([moved.get(slot.names[i], work.arrays[i][k]) for k, slot in enumerate(work.found.slots)])
        slot_names = {slot.names[i] for slot in work.found.slots}
        work.heads[i] = {n: v for n, v in moved.items() if n not in slot_names}
        work.orders.append({sp.produced: order for sp, order in zip(spaces[i], orders)})
    return out
