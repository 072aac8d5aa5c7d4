"""Stitch cut sources into one graph: prefixed namespaces, one raw image input, one Concat of features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from ..contract import FEATURES, IMAGE
from ..errors import OnnxMergeError, first_line
from .batchloop import hoist_loop_weights
from .cut import FEATURE, HEAD, CutModel
from .preprocess import ImageInput, Preprocess, build_preprocess
from .topology import default_opset

BATCH = "N"


@dataclass
class StitchSource:
    """One cut source and how Z feeds it."""

    name: str
    cut: CutModel
    preprocess: Preprocess
    in_features: bool = True  # False: a merged backbone's repeat, whose features Z's ``features`` holds once


def output_names(name: str) -> dict[str, str]:
    """Names of a source's tensors inside the stitched graph."""
    return {"feature": f"{name}/{FEATURE}", "head": f"{name}/{HEAD}", "input": f"{name}/input"}


#: Z's lowest opset: its preprocessing's ``Resize`` by sizes and the per-image ``Loop`` need opset 11
MIN_OPSET = 11


def without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs are only its real inputs, at IR 4 or newer (which allows that).

    IR 3 files and ``keep_initializers_as_inputs`` exports list every weight as an input too; a cut of an IR 3
    file keeps its IR version while graphsurgeon lists the weights as initializers only. Either way onnx's
    version converter reports the weights as undefined ("Input conv1.weight is undefined!").
    """
    initializers = {i.name for i in model.graph.initializer}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    real = [i for i in copy.graph.input if i.name not in initializers]
    del copy.graph.input[:]
    copy.graph.input.extend(real)
    copy.ir_version = max(copy.ir_version, 4)
    return copy


def reconcile_opsets(
    models: list[onnx.ModelProto], names: list[str]
) -> tuple[list[onnx.ModelProto], int, dict[str, str]]:
    """Bring every model to Z's opset (the highest default-domain opset among them, at least ``MIN_OPSET``)
    with onnx's version converter; the parity check then compares each converted source with its original."""
    target = max(MIN_OPSET, *(default_opset(m) for m in models))
    converted, notes = [], {}
    for model, name in zip(models, names):
        version = default_opset(model)
        if version == target:
            converted.append(model)
            continue
        try:
            converted.append(version_converter.convert_version(without_initializer_inputs(model), target))
        except Exception as exc:
            raise OnnxMergeError(
                f"source {name!r} uses opset {version} and onnx could not convert it to opset {target} "
                f"({first_line(exc)}); re-export it at opset {target}."
            ) from exc
        notes[name] = f"opset {version} -> {target} (onnx version converter)"
    return converted, target, notes


def _prefix(graph: gs.Graph, prefix: str, renamed: set[int]) -> None:
    """Rename every tensor and node of ``graph`` and of its If/Loop/Scan bodies under ``prefix/``.

    onnx.compose.add_prefix misses sub-graph names; graphsurgeon shares outer-scope tensor objects with
    the sub-graphs, so renaming each object once (tracked by id) keeps references consistent.
    """
    for tensor in graph.tensors().values():
        if id(tensor) not in renamed and tensor.name:
            tensor.name = f"{prefix}/{tensor.name}"
            renamed.add(id(tensor))
    for node in graph.nodes:
        node.name = f"{prefix}/{node.name}" if node.name else None
        for value in node.attrs.values():
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    _prefix(sub, prefix, renamed)


def _merge_domains(models: list[onnx.ModelProto], default_opset: int) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {"": default_opset}
    for model in models:
        for opset in model.opset_import:
            domain = "" if opset.domain == "ai.onnx" else opset.domain
            if domain:
                versions[domain] = max(versions.get(domain, 0), opset.version)
    return [onnx.helper.make_opsetid(d, v) for d, v in versions.items()]


def _merge_functions(models: list[onnx.ModelProto], names: list[str]) -> None:
    seen: dict[tuple[str, str], tuple[bytes, str]] = {}
    for model, name in zip(models, names):
        for func in model.functions:
            key = (func.domain, func.name)
            body = func.SerializeToString()
            if key in seen and seen[key][0] != body:
                raise OnnxMergeError(
                    f"sources {seen[key][1]!r} and {name!r} define different local functions named "
                    f"{func.domain}:{func.name}; re-export one of them with functions inlined."
                )
            seen[key] = (body, name)


def stitch(sources: list[StitchSource], image: ImageInput) -> tuple[onnx.ModelProto, dict[str, str]]:
    """One graph: raw uint8 ``image`` in; ``features`` plus every source's feature, head and input out.

    Returns the model and, per converted source name, a note for the build report.
    """
    names = [s.name for s in sources]
    models, opset, notes = reconcile_opsets([s.cut.model for s in sources], names)
    _merge_functions(models, names)
    raw = gs.Variable(IMAGE, dtype=np.uint8, shape=[BATCH, image.height, image.width, image.channels])
    nodes: list[gs.Node] = []
    features, extra_outputs, functions, known = [], [], [], set()
    for source, model in zip(sources, models):
        graph = gs.import_onnx(model)
        _prefix(graph, source.name, set())
        names_ = output_names(source.name)
        src_input = graph.inputs[0]
        src_input.name = names_["input"]
        nodes += build_preprocess(source.name, raw, image, source.preprocess, src_input)
        nodes += graph.nodes
        for out in graph.outputs:
            out.shape = [BATCH, None]
            out.dtype = np.float32
        if source.in_features:
            features.append(graph.outputs[0])
        extra_outputs += graph.outputs
        src_input.shape = None
        extra_outputs.append(src_input)
        for func in graph.functions:
            if (func.domain, func.name) not in known:
                known.add((func.domain, func.name))
                functions.append(func)
    concat = gs.Variable(FEATURES, dtype=np.float32, shape=[BATCH, None])
    nodes.append(gs.Node("Concat", "features/concat", attrs={"axis": 1}, inputs=features, outputs=[concat]))
    merged = gs.Graph(
        nodes=nodes,
        inputs=[raw],
        outputs=[concat] + extra_outputs,
        name="onnxmerge",
        opset=opset,
        import_domains=_merge_domains(models, opset),
        functions=functions,
    )
    merged.toposort()
    model = gs.export_onnx(merged, do_type_check=False)
    hoist_loop_weights(model)
    model.ir_version = max(max(m.ir_version for m in models), 7)
    del model.graph.value_info[:]
    return model, notes
