"""Compute once what several sources compute alike: initializer dedup, common-subexpression elimination.

Run on the stitched graph (every name already prefixed by its source, before the head). Three passes:

1. **Initializers by bytes.** Two initializers with the same data type, shape and bytes (compared by a
   SHA-256 of their canonical little-endian bytes, then byte for byte; for weights a build offloaded to
   its weight folder, by the SHA-256 taken as they were written) become one; every use of the second is
   renamed to the first.
2. **Common sub-expressions.** In topological order, a node whose (domain, op type, inputs after renaming,
   attributes, number of outputs) equals an earlier node's is dropped, and its outputs are renamed to that
   node's outputs. Two sources with the same preprocessing and the same backbone file therefore run it once:
   the shared Cast, Resize, normalisation and every layer up to where the weights differ. Nodes that hold a
   sub-graph (If/Loop/Scan) or draw random numbers are never merged.
3. **Dead code.** Nodes whose outputs nothing uses and initializers nothing reads are removed.

A graph output whose producer was merged away is kept, as an ``Identity`` of the tensor that replaced it,
so every name the rest of onnxmerge relies on (``NAME/feature``, ``NAME/input``, ``NAME/head``) survives.
Every step only removes repeated work: the outputs are bit for bit what the unshared graph computes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo

from .topology import rename_inputs

# Ops whose two calls with the same inputs may differ: never merged.
NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


@dataclass
class ShareStats:
    """What :func:`share_common` removed."""

    nodes_before: int = 0
    nodes_after: int = 0
    nodes_shared: int = 0  # nodes dropped because an identical node computes the same tensor
    dead_nodes: int = 0  # nodes nothing used
    initializers_shared: int = 0  # duplicate initializers dropped
    bytes_shared: int = 0  # their bytes
    dead_initializers: int = 0
    per_source: dict[str, int] = field(default_factory=dict)  # source -> its nodes computed by another source's
    within_source: int = 0  # of nodes_shared: repeats inside one source (exporters' duplicate constants)

    def as_dict(self) -> dict:
        return dict(self.__dict__, per_source=dict(self.per_source))

    def line(self) -> str:
        """One line for the build report."""
        if not self.nodes_shared and not self.initializers_shared:
            return "shared: nothing (no two sources compute the same sub-graph)"
        who = ", ".join(f"{k} {v}" for k, v in sorted(self.per_source.items())) or "none"
        return (
            f"shared: {self.nodes_shared} of {self.nodes_before} nodes computed once (nodes another source "
            f"computes: {who}; repeats within a source: {self.within_source}), {self.initializers_shared} "
            f"duplicate weights ({_size(self.bytes_shared)}) stored once; {self.nodes_after} nodes left"
        )


def _checksum(tensor: onnx.TensorProto) -> str | None:
    """The ``checksum`` key the build's weight folder stored with an offloaded tensor (SHA-256 of its bytes)."""
    return next((e.value for e in tensor.external_data if e.key == "checksum"), None)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _source_of(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else name


def _tensor_key(tensor: onnx.TensorProto, data: bytes) -> tuple:
    """(type, shape, digest of the bytes): equal keys are then confirmed byte for byte."""
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).digest(), len(data)


def _tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's values as bytes, whichever field holds them (strings: their repr)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return repr(list(tensor.string_data)).encode()
    return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()


def _drop(repeated, keep: list[bool]) -> None:
    """Delete entries of a protobuf repeated field in place (no copy of the kept ones)."""
    for index in reversed(range(len(keep))):
        if not keep[index]:
            del repeated[index]


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _subgraph_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    """Every node inside ``node``'s If/Loop/Scan bodies, nested bodies included."""
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in graph.node:
                yield inner
                yield from _subgraph_nodes(inner)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    return {name for inner in _subgraph_nodes(node) for name in inner.input}


def share_common(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ShareStats]:
    """``model`` with duplicate initializers and repeated sub-graphs computed once (edited in place)."""
    graph = model.graph
    stats = ShareStats(nodes_before=len(graph.node))
    mapping = _share_initializers(graph, stats)  # 1. initializers by bytes
    nodes = _share_nodes(graph, mapping, stats)  # 2. common sub-expressions, in topological order
    # graph outputs whose producer went away: an Identity of the tensor that replaced it
    for output in graph.output:
        if output.name in mapping:
            nodes.append(
                onnx.helper.make_node("Identity", [mapping[output.name]], [output.name], name=f"{output.name}/shared")
            )
    _drop_dead(graph, nodes, stats)  # 3. dead nodes and unused initializers
    return model, stats


def _share_initializers(graph: onnx.GraphProto, stats: ShareStats) -> dict[str, str]:
    """Drop initializers byte-identical to an earlier one; returns ``{dropped name: kept name}``."""
    mapping: dict[str, str] = {}
    seen: dict[tuple, onnx.TensorProto] = {}  # tensors, not their bytes: no second copy of the weights
    kept: list[bool] = []
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            digest = _checksum(tensor)
            if digest is None:
                kept.append(True)  # external data onnxmerge did not write: never merged
                continue
            # a build's offloaded weight: the SHA-256 taken when it was written stands for its bytes
            length = int(ExternalDataInfo(tensor).length)
            key, data = ("offloaded", tensor.data_type, tuple(tensor.dims), bytes.fromhex(digest), length), None
        elif tensor.segment.ByteSize():
            kept.append(True)
            continue
        else:
            data = _tensor_bytes(tensor)
            key, length = _tensor_key(tensor, data), len(data)
        first = seen.get(key)
        if first is not None and (data is None or _tensor_bytes(first) == data):
            mapping[tensor.name] = first.name
            stats.initializers_shared += 1
            stats.bytes_shared += length
            kept.append(False)
            continue
        seen.setdefault(key, tensor)
        kept.append(True)
    _drop(graph.initializer, kept)
    return mapping


def _share_nodes(graph: onnx.GraphProto, mapping: dict[str, str], stats: ShareStats) -> list[onnx.NodeProto]:
    """The nodes left once a node identical to an earlier one (same op, inputs, attributes) reuses its outputs."""
    computed: dict[tuple, onnx.NodeProto] = {}
    per_source: dict[str, int] = defaultdict(int)
    nodes = []
    for node in graph.node:
        rename_inputs([node], mapping)  # its If/Loop/Scan bodies' reads of outer names too
        if _has_subgraph(node):
            nodes.append(node)
            continue
        if node.op_type in NONDETERMINISTIC or not node.output:
            nodes.append(node)
            continue
        attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
        key = (
            node.domain,
            node.op_type,
            getattr(node, "overload", ""),
            tuple(node.input),
            attrs,
            tuple(bool(o) for o in node.output),
        )
        first = computed.get(key)
        if first is None:
            computed[key] = node
            nodes.append(node)
            continue
        for mine, theirs in zip(node.output, first.output):
            if mine:
                mapping[mine] = theirs
        stats.nodes_shared += 1
        mine, theirs = _source_of(node.name or node.output[0]), _source_of(first.name or first.output[0])
        if mine == theirs:
            stats.within_source += 1
        else:
            per_source[mine] += 1
    stats.per_source = dict(per_source)
    return nodes


def _drop_dead(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], stats: ShareStats) -> None:
    """Keep the nodes the outputs need (walked in reverse topological order) and the initializers they read."""
    needed = {o.name for o in graph.output}
    alive = []
    for node in reversed(nodes):
        if any(o and o in needed for o in node.output):
            alive.append(node)
            needed.update(node.input)
            if _has_subgraph(node):
                needed |= _subgraph_inputs(node)
        else:
            stats.dead_nodes += 1
    alive.reverse()
    del graph.node[:]
    graph.node.extend(alive)
    used = [t.name in needed for t in graph.initializer]
    stats.dead_initializers = used.count(False)
    _drop(graph.initializer, used)
    stats.nodes_after = len(graph.node)


def ancestors(graph: onnx.GraphProto, tensors: list[str]) -> set[int]:
    """Indices of the nodes of ``graph`` that ``tensors`` depend on (through If/Loop/Scan bodies too)."""
    nodes = graph.node
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    seen, stack = set(), list(tensors)
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in seen:
            seen.add(i)
            stack.extend(nodes[i].input)
            if _has_subgraph(nodes[i]):
                stack.extend(_subgraph_inputs(nodes[i]))
    return seen


def extraction_groups(model: onnx.ModelProto, sources: list[str]) -> list[list[str]]:
    """Sources that must run in one onnxruntime session because they share weighted work.

    After :func:`share_common`, a node that two sources compute alike exists once. Sources whose outputs
    depend on one common node that reads an offloaded weight (two heads on one backbone) form one group;
    every other source runs alone, so a build holds one source's weights and activations at a time.
    Shared preprocessing and shape arithmetic are cheap to repeat and do not join sources.
    """
    nodes = model.graph.node
    weights = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    outputs = [o.name for o in model.graph.output]
    work = {
        s: {
            i
            for i in ancestors(model.graph, [o for o in outputs if _source_of(o) == s])
            if weights.intersection(nodes[i].input)
        }
        for s in sources
    }
    groups: list[list[str]] = []
    for source in sources:
        joined = [g for g in groups if any(work[source] & work[other] for other in g)]
        groups = [g for g in groups if g not in joined] + [[s for g in joined for s in g] + [source]]
    return groups
