"""Stage 1b, merge in weight space (``[merge] mode = "weights"`` or ``"auto"``): sources that share an
architecture get one backbone whose weights are merged from theirs; each keeps its own head.

After stage 1 (the sources resolved), when every source's backbone matches (``graph.architecture``) and they
take the same preprocessing: the candidate merges of ``learn.merging`` are scored on up to
``SELECTION_IMAGES`` labelled or pool images per source (its own head on the merged backbone vs its labels,
or vs itself), the best is kept, and each source's model is rewritten with the merged backbone (and, after an
alignment, its head reordered to match). Stage 2 then stitches them as usual: the backbones are now the same
bytes behind the same preprocessing, so ``graph.share`` computes one backbone for all, and each source's
head reads it (teachers mode); mode "fit" fits the union head on those features.
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
from ..graph.architecture import Match, backbone, compare_models
from ..graph.cut import cut
from ..graph.inspect import find_head
from ..graph.permute import permuted, unit_spaces
from ..graph.preprocess import ImageInput, reference_preprocess
from ..graph.stitch import reconcile_opsets
from ..graph.topology import with_outputs
from ..learn import merging
from ..runtime.session import Runner
from ..runtime.weights import WeightFolder
from .results import ResolvedSource

SELECTION_IMAGES = 200  # per source: enough to tell candidates 2-3 points apart, cheap next to extraction
STATS_IMAGES = 256  # pool images for RegMean's inner products and alignment's correlations


@dataclass
class MergedSources:
    """Stage 1b's result: the sources with merged models, and how they were merged."""

    sources: list[ResolvedSource]
    match: Match
    chosen: merging.Candidate
    candidates: list[merging.Candidate]
    seconds: float
    notes: list[str] = field(default_factory=list)
    weight_check: float = 0.0  # max |merged weight in Z's sources - numpy recomputation|

    def as_dict(self) -> dict:
        return {
            "architecture": self.match.line(),
            "method": self.chosen.label(),
            "score": self.chosen.score,
            "candidates": {c.label(): c.score for c in self.candidates},
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
            "weights_vs_numpy": self.weight_check,
        }


def mergeable(sources: list[ResolvedSource]) -> Match:
    """Whether the sources share an architecture and preprocessing (one backbone can then serve them all)."""
    if len(sources) < 2:
        return Match(False, 0, 0, [], "there is only one source")
    names = [s.name for s in sources]
    found = compare_models([s.model for s in sources], [s.feature for s in sources], names)
    first = sources[0].preprocess
    other = next((s for s in sources[1:] if s.preprocess != first), None)
    if found.same and other is not None:
        return Match(False, found.nodes, 0, [], f"{names[0]!r} and {other.name!r} take different preprocessing")
    return found


def merge_sources(
    sources: list[ResolvedSource],
    spec: MergeSpec,
    image: ImageInput,
    weights: WeightFolder,
    labelled: Dataset | None,
    pool: Dataset | None,
) -> MergedSources:
    """The sources with one merged backbone (raises one sentence where they cannot be merged)."""
    start = time.perf_counter()
    found = mergeable(sources)
    if not found.same:
        raise OnnxMergeError(
            f'the sources cannot be merged in weight space ({found.difference}); use [merge] mode = "concat".'
        )
    sources = _same_opset(sources)
    slots = found.slots
    arrays = [_slot_arrays(s.model, [slot.names[i] for slot in slots], weights) for i, s in enumerate(sources)]
    inputs = _selection_inputs(labelled, pool, image, sources[0])
    targets = [_targets(s, inputs, labelled, weights) for s in sources]
    notes: list[str] = []
    heads = [{} for _ in sources]  # per source, reordered head tensors after an alignment
    if spec.base is not None:
        base = _base_arrays(spec.base, sources, found, weights)
        candidates = merging.base_candidates(base, arrays, spec.method)
    else:
        candidates = _no_base_candidates(sources, found, arrays, heads, spec, inputs, weights, notes)
    for candidate in candidates:
        candidate.score = _score(sources, found, candidate, heads, inputs, targets, weights)
    chosen = max(candidates, key=lambda c: c.score)
    merged_sources = [
        _rewrite(s, i, found, chosen, heads if chosen.aligned else [{}] * len(sources), weights)
        for i, s in enumerate(sources)
    ]
    result = MergedSources(merged_sources, found, chosen, candidates, 0.0, notes)
    result.weight_check = _check_weights(result, sources, spec, weights)
    result.seconds = time.perf_counter() - start
    return result


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


def _run(model: onnx.ModelProto, names: list[str], x: np.ndarray, weights: WeightFolder) -> list[np.ndarray]:
    runner = Runner(with_outputs(model, names), weights)
    parts = [runner.run(x[i : i + 64], names) for i in range(0, len(x), 64)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def _targets(source: ResolvedSource, inputs: dict, labelled: Dataset | None, weights: WeightFolder) -> tuple:
    """What a source on the merged backbone is scored against: ``(x, reference, has_head)``."""
    own = list(source.labels or [])
    if "labelled" in inputs and own and source.head_output:
        mine = np.isin(inputs["labels"], own)
        if mine.sum() >= 10:
            x = inputs["labelled"][mine][:SELECTION_IMAGES]
            return x, np.asarray([own.index(v) for v in inputs["labels"][mine][:SELECTION_IMAGES]]), True
    x = (inputs["pool"] if "pool" in inputs else inputs["labelled"])[:SELECTION_IMAGES]
    name = source.head_output or source.feature
    out = _run(source.model, [name], x, weights)[0].reshape(len(x), -1)
    return x, (out.argmax(axis=1) if source.head_output else out), bool(source.head_output)


def _base_arrays(path, sources: list[ResolvedSource], found: Match, weights: WeightFolder) -> list[np.ndarray]:
    """The base model's tensors in the sources' slots (its backbone must match theirs)."""
    if not os.path.isfile(path):
        raise OnnxMergeError(f"merge.base {path} does not exist; give the model the sources were fine-tuned from.")
    model, _ = load_model_with_digest(path, weights)
    feature = find_head(model).feature
    both = compare_models([sources[0].model, model], [sources[0].feature, feature], [sources[0].name, "base"])
    if not both.same:
        raise OnnxMergeError(f"merge.base {path} does not share the sources' architecture ({both.difference}).")
    names = {slot.names[0]: k for k, slot in enumerate(found.slots)}
    return _slot_arrays(model, [both.slots[k].names[1] for k in [names[s.names[0]] for s in both.slots]], weights)


def _no_base_candidates(sources, found, arrays, heads, spec, inputs, weights, notes) -> list[merging.Candidate]:
    """Averaging and RegMean, and both after permutation alignment where the architecture allows it."""
    x = inputs.get("pool", inputs.get("labelled"))[:STATS_IMAGES]
    layers = weightmerge.linear_layers([backbone(s.model, s.feature, s.name) for s in sources], found.slots)
    out = []
    if spec.method in ("auto", "average"):
        out.append(merging.averaged(arrays))
    if spec.method in ("auto", "regmean") and not layers:
        notes.append("RegMean: the backbone has no Gemm, MatMul or 1x1 Conv layer; it equals averaging here.")
        out += [merging.averaged(arrays)] if spec.method == "regmean" else []
    elif spec.method in ("auto", "regmean"):
        grams = [
            _grams(s.model, [layer.inputs[i] for layer in layers], layers, x, weights) for i, s in enumerate(sources)
        ]
        out.append(merging.regmean_candidate(arrays, layers, grams))
    if spec.method in ("auto", "align"):
        try:
            aligned, spaces, orders = _align(sources, found, arrays, heads, x, weights)
        except OnnxMergeError as exc:
            if spec.method == "align":
                raise
            notes.append(str(exc))
        else:
            out.append(merging.averaged(aligned, aligned=True))
            out.append(_repair(sources, found, spaces, orders, out[-1], x, weights))
    return out


def _repair(sources, found: Match, spaces, orders, candidate, x: np.ndarray, weights) -> merging.Candidate:
    """The aligned average with each layer's output statistics on the pool reset to the sources' average
    (REPAIR), layer by layer from the input (each correction changes what later layers see)."""
    stats = []
    for i, source in enumerate(sources):
        values = _run(source.model, [sp.produced for sp in spaces[i]], x, weights)
        mine = [merging.channel_stats(v) for v in values]
        stats.append([(m[orders[i][k]], d[orders[i][k]]) if i else (m, d) for k, (m, d) in enumerate(mine)])
    merged = list(candidate.merged)
    slot_of = {slot.names[0]: k for k, slot in enumerate(found.slots)}
    first = sources[0]
    for k, space in enumerate(spaces[0]):
        if space.bias is None:
            continue  # a layer without a bias cannot take the shift
        model = weightmerge.with_weights(first.model, {slot.names[0]: merged[j] for j, slot in enumerate(found.slots)})
        current = merging.channel_stats(_run(model, [space.produced], x, weights)[0])
        target = tuple(np.mean([s[k][j] for s in stats], axis=0) for j in range(2))
        w, b = slot_of[space.weight[0]], slot_of[space.bias]
        merged[w], merged[b] = merging.repaired(merged[w], space.weight[1], merged[b], current, target)
    return merging.Candidate("average", None, merged, aligned=True, repaired=True)


def _grams(model, tensors: list[str], layers, x: np.ndarray, weights: WeightFolder) -> list[np.ndarray]:
    """RegMean's ``X^T X`` of each linear layer's input on the pool images (every spatial position a row)."""
    rng = np.random.default_rng(0)
    values = _run(model, tensors, x, weights)
    return [
        (lambda r: r.T @ r)(merging.rows(v, 1 if layer.kind == "conv1x1" else v.ndim - 1, rng))
        for v, layer in zip(values, layers)
    ]


def _align(sources, found: Match, arrays, heads, x: np.ndarray, weights: WeightFolder) -> tuple:
    """Every source's slot tensors with its units reordered to match the first source's (activation matching);
    with each source's unit spaces and reorders."""
    spaces = [unit_spaces(s.model, s.feature, f"source {s.name!r}") for s in sources]
    reference = _run(sources[0].model, [sp.tensor for sp in spaces[0]], x, weights)
    out, all_orders = [arrays[0]], [[np.arange(sp.size) for sp in spaces[0]]]
    for i in range(1, len(sources)):
        mine = _run(sources[i].model, [sp.tensor for sp in spaces[i]], x, weights)
        orders = []
        for a, b in zip(reference, mine):
            corr = merging.Correlation()  # the same positions of both models' activations (one seed)
            corr.add(merging.rows(a, 1, np.random.default_rng(0)), merging.rows(b, 1, np.random.default_rng(0)))
            orders.append(merging.unit_order(corr.matrix()))
        names = {n for sp in spaces[i] for n, _ in sp.members}
        full = weightmerge.read_arrays(sources[i].model, names, str(weights.path))
        moved = permuted(full, spaces[i], orders)
        out.append([moved.get(slot.names[i], arrays[i][k]) for k, slot in enumerate(found.slots)])
        slot_names = {slot.names[i] for slot in found.slots}
        heads[i] = {n: v for n, v in moved.items() if n not in slot_names}
        all_orders.append(orders)
    return out, spaces, all_orders


def _source_arrays(found: Match, i: int, candidate: merging.Candidate, head: dict) -> dict[str, np.ndarray]:
    return dict(head, **{slot.names[i]: candidate.merged[k] for k, slot in enumerate(found.slots)})


def _score(sources, found, candidate, heads, inputs, targets, weights) -> float:
    """The mean over sources of ``learn.merging.agreement`` on their selection images."""
    scores = []
    for i, (source, (x, reference, has_head)) in enumerate(zip(sources, targets)):
        head = heads[i] if candidate.aligned else {}
        model = weightmerge.with_weights(source.model, _source_arrays(found, i, candidate, head))
        out = _run(model, [source.head_output or source.feature], x, weights)[0].reshape(len(x), -1)
        scores.append(merging.agreement(out, reference, has_head))
    return float(np.mean(scores))


def _rewrite(source, i, found, candidate, heads, weights: WeightFolder) -> ResolvedSource:
    """The source with the merged backbone (weights offloaded like every source's), cut again."""
    model = weights.offload(weightmerge.with_weights(source.model, _source_arrays(found, i, candidate, heads[i])))
    return dataclasses.replace(
        source,
        model=model,
        cut=cut(model, source.feature, source.head_output, source.cut.rank),
        merged=candidate.label(),
    )


def _check_weights(result: MergedSources, originals, spec: MergeSpec, weights: WeightFolder) -> float:
    """The merged sources' backbone tensors vs the chosen method recomputed in numpy from the source files'
    tensors (aligned merges: from the aligned tensors the candidate was computed from)."""
    chosen, slots = result.chosen, result.match.slots
    worst = 0.0
    for i, source in enumerate(result.sources):
        written = _slot_arrays(source.model, [slot.names[i] for slot in slots], weights)
        worst = max(worst, max(float(np.max(np.abs(w.astype(np.float64) - m))) for w, m in zip(written, chosen.merged)))
    if not chosen.aligned and chosen.method in ("average", "task_arithmetic", "ties"):
        fresh = [_slot_arrays(s.model, [slot.names[i] for slot in slots], weights) for i, s in enumerate(originals)]
        base = _base_arrays(spec.base, originals, result.match, weights) if spec.base is not None else None
        for k in range(len(slots)):
            tensors = [f[k] for f in fresh]
            if chosen.method == "average":
                again = weightmerge.average(tensors)
            elif chosen.method == "task_arithmetic":
                again = weightmerge.task_arithmetic(base[k], tensors, chosen.scale)
            else:
                again = weightmerge.ties(base[k], tensors, chosen.scale, merging.TIES_DENSITY)
            worst = max(worst, float(np.max(np.abs(again.astype(np.float64) - chosen.merged[k]))))
    return worst
