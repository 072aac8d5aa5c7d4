"""Stage 1b, merge in weight space (``[merge] mode = "weights"`` or ``"auto"``): each group of sources that share
an architecture and preprocessing gets one backbone whose weights are merged from theirs; each source keeps its
own head; sources that match no other are left as they are (concatenated).

After stage 1 (the sources resolved): the groups are found (``graph.architecture``, pair by pair), and per
group the candidate merges of ``learn.merging`` (with their statistics-corrected twins, ``learn.correct``, and
AdaMerging's coefficients, ``learn.adamerging``) are scored on up to ``SELECTION_IMAGES`` labelled or pool
images per source (its own head on the merged backbone vs its labels, or vs itself); the best is kept, and each
source's model is rewritten with the merged backbone (and, after an alignment, its head reordered to match).
Stage 2 then stitches them as usual: a group's backbones are now the same bytes behind the same
preprocessing, so ``graph.share`` computes one backbone for the group, and each source's head reads it
(teachers mode); mode "fit" fits the union head on those features and the other sources'.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..config import MergeSpec
from ..errors import OnnxMergeError
from ..files.images import Dataset, decoded
from ..files.models import load_model_with_digest
from ..graph import weightmerge
from ..graph.architecture import Match, compare_models
from ..graph.cut import cut
from ..graph.inspect import find_head
from ..graph.preprocess import ImageInput, reference_preprocess
from ..graph.stitch import reconcile_opsets
from ..learn import correct, merging
from ..learn.candidates import GroupWork, corrected_twins, with_base, without_base
from ..runtime.weights import WeightFolder
from .results import ResolvedSource

SELECTION_IMAGES = 200  # per source: enough to tell candidates 2-3 points apart, cheap next to extraction
STATS_IMAGES = 256  # pool images for RegMean's inner products, alignment's correlations, REPAIR's statistics


@dataclass
class MergedGroup:
    """One group's merge: its sources with the merged model, and how they were merged."""

    sources: list[ResolvedSource]
    match: Match
    chosen: merging.Candidate
    candidates: list[merging.Candidate]
    seconds: float
    notes: list[str] = field(default_factory=list)
    weight_check: float = 0.0  # max |merged weight in Z's sources - numpy recomputation|
    statistics_check: float = 0.0  # a corrected merge: its layers' statistics on the pool vs their targets

    def as_dict(self) -> dict:
        return {
            "sources": [s.name for s in self.sources],
            "architecture": self.match.line(),
            "method": self.chosen.label(),
            "score": self.chosen.score,
            "candidates": {c.label(): c.score for c in self.candidates},
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
            "weights_vs_numpy": self.weight_check,
            "statistics_vs_targets": self.statistics_check,
        }


@dataclass
class MergedSources:
    """Stage 1b's result: every source (a merged group's rewritten), the groups, the sources left concatenated."""

    sources: list[ResolvedSource]
    groups: list[MergedGroup]
    notes: list[str] = field(default_factory=list)

    @property
    def concatenated(self) -> list[str]:
        merged = {s.name for g in self.groups for s in g.sources}
        return [s.name for s in self.sources if s.name not in merged]

    def agreement(self) -> float:
        """The sources' own heads on Z's backbones, averaged over sources (a concatenated one agrees fully)."""
        scores = [g.chosen.score for g in self.groups for _ in g.sources] + [1.0] * len(self.concatenated)
        return float(np.mean(scores))

    def as_dict(self) -> dict:
        """The build report's ``merge`` entries: the first group's at the top (the usual single group), every
        group under ``groups`` when there are several, the sources left out under ``concatenated``."""
        out = dict(self.groups[0].as_dict(), concatenated=self.concatenated)
        out["notes"] = self.notes + [n for g in self.groups for n in g.notes]
        out["weights_vs_numpy"] = max(g.weight_check for g in self.groups)
        out["statistics_vs_targets"] = max(g.statistics_check for g in self.groups)
        if len(self.groups) > 1:
            out["groups"] = [g.as_dict() for g in self.groups]
        return out


def mergeable(sources: list[ResolvedSource]) -> Match:
    """Whether all the sources share an architecture and preprocessing (the first difference, in words)."""
    if len(sources) < 2:
        return Match(False, 0, 0, [], "there is only one source")
    names = [s.name for s in sources]
    found = compare_models([s.model for s in sources], [s.feature for s in sources], names)
    first = sources[0].preprocess
    other = next((s for s in sources[1:] if s.preprocess != first), None)
    if found.same and other is not None:
        return Match(False, found.nodes, 0, [], f"{names[0]!r} and {other.name!r} take different preprocessing")
    return found


def _pair_matches(a: ResolvedSource, b: ResolvedSource) -> bool:
    if a.preprocess != b.preprocess:
        return False
    try:
        return compare_models([a.model, b.model], [a.feature, b.feature], [a.name, b.name]).same
    except OnnxMergeError:  # a backbone the comparison cannot describe (a sub-graph, a feature that is an input)
        return False


def merge_groups(sources: list[ResolvedSource]) -> list[tuple[list[int], Match]]:
    """The groups of two or more sources that share an architecture and preprocessing (indices in source
    order, each group's match over all its sources); a source that matches no other is in none."""
    groups: list[list[int]] = []
    for i, source in enumerate(sources):
        home = next((g for g in groups if _pair_matches(sources[g[0]], source)), None)
        groups.append([i]) if home is None else home.append(i)
    return [
        (
            g,
            compare_models(
                [sources[i].model for i in g], [sources[i].feature for i in g], [sources[i].name for i in g]
            ),
        )
        for g in groups
        if len(g) > 1
    ]


def merge_sources(
    sources: list[ResolvedSource],
    groups: list[tuple[list[int], Match]],
    spec: MergeSpec,
    image: ImageInput,
    weights: WeightFolder,
    data: tuple[Dataset | None, Dataset | None],
) -> MergedSources:
    """The sources with one merged backbone per group (``data``: labelled images and pool); with a base, the
    groups whose architecture is not the base's are left concatenated (raises where no group is the base's)."""
    out, merged, notes = list(sources), [], []
    base = _load_base(spec.base, weights) if spec.base is not None else None
    for indices, found in groups:
        members = _same_opset([sources[i] for i in indices])
        base_arrays = _base_arrays(base, members, found, weights) if base is not None else None
        if isinstance(base_arrays, str):
            notes.append(f"{base_arrays}; {', '.join(s.name for s in members)} are concatenated.")
            continue
        group = _merge_group(members, found, spec, base_arrays, _selection_inputs(*data, image, members[0]), weights)
        for i, source in zip(indices, group.sources):
            out[i] = source
        merged.append(group)
    if not merged:
        raise OnnxMergeError(f"{notes[0].split(';')[0]}; give the model the sources were fine-tuned from.")
    return MergedSources(out, merged, notes)


def _merge_group(members, found: Match, spec: MergeSpec, base, inputs: dict, weights: WeightFolder) -> MergedGroup:
    """One group's candidates scored, corrected twins added, the best kept and written into its sources."""
    start = time.perf_counter()
    arrays = [_slot_arrays(s.model, [slot.names[i] for slot in found.slots], weights) for i, s in enumerate(members)]
    x = inputs.get("pool", inputs.get("labelled"))[:STATS_IMAGES]
    work = GroupWork(members, found, arrays, x, weights, heads=[{} for _ in members])
    work.targets = [_targets(s, inputs, weights) for s in members]
    candidates = with_base(work, base, spec.method) if base is not None else without_base(work, spec.method)
    for candidate in candidates:
        candidate.score = work.score(candidate) if candidate.score is None else candidate.score
    candidates += corrected_twins(work, candidates) if spec.repair is not False else []
    eligible = [c for c in candidates if c.repaired] if spec.repair is True else candidates
    chosen = max(eligible or candidates, key=lambda c: c.score)
    rewritten = [_rewrite(s, i, work, chosen) for i, s in enumerate(members)]
    group = MergedGroup(rewritten, found, chosen, candidates, 0.0, work.notes)
    group.weight_check = _check_weights(group, members, base, weights)
    if chosen.corrections:
        model = weightmerge.with_weights(members[0].model, work.source_arrays(0, chosen))
        group.statistics_check = correct.statistics_gap(model, chosen.corrections, x, weights)
    group.seconds = time.perf_counter() - start
    return group


def _same_opset(sources: list[ResolvedSource]) -> list[ResolvedSource]:
    """Sources at one opset (an exporter's opset 17 and another's 18 hold the same layers)."""
    models, _, notes = reconcile_opsets([s.model for s in sources], [s.name for s in sources])
    return [dataclasses.replace(s, model=m) if s.name in notes else s for s, m in zip(sources, models)]


def _slot_arrays(model: onnx.ModelProto, names: list[str], weights: WeightFolder) -> list[np.ndarray]:
    found = weightmerge.read_arrays(model, set(names), str(weights.path))
    return [found[n] for n in names]


def _selection_inputs(
    labelled: Dataset | None, pool: Dataset | None, image: ImageInput, source: ResolvedSource
) -> dict[str, np.ndarray]:
    """The preprocessed images candidates are scored on (and statistics gathered from): labelled and pool."""
    rng = np.random.default_rng(0)
    out = {}
    for key, data in (("labelled", labelled), ("pool", pool)):
        if data is None:
            continue
        pick = np.sort(rng.choice(len(data.x), min(len(data.x), 4 * SELECTION_IMAGES), replace=False))
        out[key] = reference_preprocess(decoded(data.x[pick]), image, source.preprocess)
        if key == "labelled":
            out["labels"] = np.asarray(data.y)[pick]
    return out


def _targets(source: ResolvedSource, inputs: dict, weights: WeightFolder) -> tuple:
    """What a source on the merged backbone is scored against: ``(x, reference, has_head)``."""
    own = list(source.labels or [])
    if "labelled" in inputs and own and source.head_output:
        mine = np.isin(inputs["labels"], own)
        if mine.sum() >= 10:
            x = inputs["labelled"][mine][:SELECTION_IMAGES]
            return x, np.asarray([own.index(v) for v in inputs["labels"][mine][:SELECTION_IMAGES]]), True
    x = (inputs["pool"] if "pool" in inputs else inputs["labelled"])[:SELECTION_IMAGES]
    name = source.head_output or source.feature
    out = merging.activations(source.model, [name], x, weights)[0].reshape(len(x), -1)
    return x, (out.argmax(axis=1) if source.head_output else out), bool(source.head_output)


def _load_base(path, weights: WeightFolder) -> tuple[onnx.ModelProto, str]:
    if not os.path.isfile(path):
        raise OnnxMergeError(f"merge.base {path} does not exist; give the model the sources were fine-tuned from.")
    model, _ = load_model_with_digest(path, weights)
    return model, find_head(model).feature


def _base_arrays(base: tuple, sources: list[ResolvedSource], found: Match, weights: WeightFolder):
    """The base model's tensors in the sources' slots, or why its backbone does not match theirs (a sentence)."""
    model, feature = base
    both = compare_models([sources[0].model, model], [sources[0].feature, feature], [sources[0].name, "base"])
    if not both.same:
        return f"merge.base does not share the architecture of {sources[0].name!r} ({both.difference})"
    names = {slot.names[0]: k for k, slot in enumerate(found.slots)}
    return _slot_arrays(model, [both.slots[k].names[1] for k in [names[s.names[0]] for s in both.slots]], weights)


def _rewrite(source: ResolvedSource, i: int, work: GroupWork, candidate: merging.Candidate) -> ResolvedSource:
    """The source with the merged backbone (weights offloaded like every source's), cut again."""
    model = work.weights.offload(weightmerge.with_weights(source.model, work.source_arrays(i, candidate)))
    return dataclasses.replace(
        source,
        model=model,
        cut=cut(model, source.feature, source.head_output, source.cut.rank),
        merged=candidate.label(),
        merge_group=tuple(s.name for s in work.members),
    )


def _check_weights(group: MergedGroup, originals, base, weights: WeightFolder) -> float:
    """The merged sources' backbone tensors vs the chosen method recomputed in numpy from the source files'
    tensors, its corrections applied again (RegMean and aligned merges: from the tensors the candidate computed)."""
    chosen, slots = group.chosen, group.match.slots
    worst = 0.0
    for i, source in enumerate(group.sources):
        written = _slot_arrays(source.model, [slot.names[i] for slot in slots], weights)
        worst = max(worst, max(float(np.max(np.abs(w.astype(np.float64) - m))) for w, m in zip(written, chosen.merged)))
    plain = chosen.origin or chosen
    again = list(plain.merged)
    if not plain.aligned and plain.method in ("average", "task_arithmetic", "ties", "adamerging"):
        fresh = [_slot_arrays(s.model, [slot.names[i] for slot in slots], weights) for i, s in enumerate(originals)]
        again = [_recompute(plain, [f[k] for f in fresh], base[k] if base else None) for k in range(len(slots))]
    again = correct.apply(again, chosen.corrections)
    return max(worst, max(float(np.max(np.abs(a.astype(np.float64) - m))) for a, m in zip(again, chosen.merged)))


def _recompute(candidate: merging.Candidate, tensors: list[np.ndarray], base: np.ndarray | None) -> np.ndarray:
    if candidate.method == "average":
        return weightmerge.average(tensors)
    if candidate.method == "task_arithmetic":
        return weightmerge.task_arithmetic(base, tensors, candidate.scale)
    if candidate.method == "adamerging":
        return weightmerge.task_weighted(base, tensors, list(candidate.coefficients))
    return weightmerge.ties(base, tensors, candidate.scale, merging.TIES_DENSITY)
