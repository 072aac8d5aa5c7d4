"""Stage 2, build the graph: stitch the cut sources under their namespaces behind one image input (each
with its preprocessing), compute identical work once, and decide which sources run together."""

from __future__ import annotations

from ..contract import FEATURES
from ..graph.preprocess import ImageInput
from ..graph.share import extraction_groups, share_common
from ..graph.stitch import StitchSource, output_names, stitch
from ..runtime.engine import Engine, LocalEngine
from ..runtime.session import LARGE_MODEL_BYTES
from ..runtime.tasks import LocalTasks, Tasks
from ..runtime.weights import WeightFolder, external_bytes
from .results import ResolvedSource, StitchedGraph, feature_sources


def stitch_sources(sources: list[ResolvedSource], image: ImageInput) -> StitchedGraph:
    """One graph from every cut source, identical sub-graphs computed once."""
    joined = feature_sources(sources)
    model, notes = stitch([StitchSource(s.name, s.cut, s.preprocess, s.name in joined) for s in sources], image)
    model, share = share_common(model)
    # large sources run group by group (one's weights and activations in memory at a time); small ones in one
    # session, which computes their shared preprocessing once (the demo's extraction: 5-15% faster)
    names = [s.name for s in sources]
    large = external_bytes(model) > LARGE_MODEL_BYTES
    groups = extraction_groups(model, names) if large else [names]
    return StitchedGraph(model, notes, share, groups, large)


def local_engine(
    graph: StitchedGraph, sources: list[ResolvedSource], weights: WeightFolder, batch_size: int, quiet: bool
) -> LocalEngine:
    """The engine that runs ``graph`` here, its calls sized by each source's input."""
    values = {s.name: s.preprocess.height * s.preprocess.width * s.preprocess.channels for s in sources}
    joined = {FEATURES: [output_names(name)["feature"] for name in feature_sources(sources)]}
    return LocalEngine(graph.model, weights, graph.groups, values, joined, batch_size, graph.large, quiet)


def make_engine(
    graph: StitchedGraph,
    sources: list[ResolvedSource],
    weights: WeightFolder,
    batch_size: int,
    quiet: bool,
    tasks: Tasks | None = None,
) -> Engine:
    """The local engine, or where ``tasks`` is a cluster (``runtime.dask_engine``), the Dask engine over it."""
    local = local_engine(graph, sources, weights, batch_size, quiet)
    if tasks is None or isinstance(tasks, LocalTasks):
        return local
    from ..runtime.dask_engine import DaskEngine

    return DaskEngine(local, tasks)
