"""Where the graphs run: the one engine interface the build and prediction talk to, and the local engine.

The build asks an engine for named outputs of the stitched graph on uint8 images (``Engine.outputs``), so
another engine (a cluster, say) can take the local one's place without any change above this layer. The
build's checks of models outside the stitched graph (does a source load, does it take a batch of 2, the
original source in the parity check) run through ``runtime.session``'s ``Runner`` and ``check_loads``, in
this process; no module above ``runtime`` opens an onnxruntime session itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import onnx

from ..errors import OnnxMergeError
from ..graph.topology import with_outputs
from .session import EXTRACT_VALUES_PER_CALL, make_session, run_batched
from .tasks import digests_task
from .weights import WeightFolder, release_freed_memory


class Engine(Protocol):
    """Runs one graph over images and returns the named outputs, rows in the images' order."""

    def outputs(
        self, images: np.ndarray, names: list[str], budget: int = EXTRACT_VALUES_PER_CALL
    ) -> dict[str, np.ndarray]:
        """``{name: array [N, ...]}`` for uint8 ``images [N, H, W, C]``; ``budget`` bounds input values per call."""
        ...

    def pixel_digests(self, images) -> list[bytes]:
        """A digest of each image's pixels, where the images are (a cluster's workers read lazy files)."""
        ...

    def close(self) -> None:
        """Release sessions and workers."""
        ...


def owner(output: str) -> str:
    """The source an output of the stitched graph belongs to (``NAME/feature`` -> ``NAME``)."""
    return output.split("/", 1)[0]


class LocalEngine:
    """The stitched graph in this process's onnxruntime sessions, one session per group of sources.

    ``groups`` are the sources that must run together (``graph.share.extraction_groups``); with ``large``
    weights only one group's session lives at a time, so memory holds one group's weights. ``joined`` names
    outputs that are the concatenation of others (``features`` = every source's feature, in order).
    ``values_per_image`` (source input values per image, by source) sizes the calls.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        weights: WeightFolder,
        groups: list[list[str]],
        values_per_image: Mapping[str, int],
        joined: Mapping[str, list[str]] | None = None,
        batch_size: int = 128,
        large: bool = False,
        quiet: bool = False,
    ):
        self.model, self.weights, self.groups = model, weights, groups
        self.values_per_image, self.joined = dict(values_per_image), dict(joined or {})
        self.batch_size, self.large, self.quiet = batch_size, large, quiet
        self._sessions: dict[tuple[str, ...], object] = {}  # live sessions of groups
        self._parts: dict[tuple[str, ...], onnx.ModelProto] = {}  # light parts of the graph, kept

    def pixel_digests(self, images) -> list[bytes]:
        """A digest of each image's pixels (``runtime.tasks.digests_task``), in this process."""
        return digests_task(np.asarray(images))

    def outputs(
        self, images: np.ndarray, names: list[str], budget: int = EXTRACT_VALUES_PER_CALL
    ) -> dict[str, np.ndarray]:
        needed = self.needed(names)
        images = np.asarray(images)  # a lazy set of files (a cluster build's pool) is read here, in one go
        result: dict[str, np.ndarray] = {}
        for group in sorted(self.groups, key=lambda g: tuple(g) not in self._sessions):  # a live session first
            mine = [n for n in needed if owner(n) in group]
            if mine:
                result.update(
                    run_batched(self._group_session(group), images, mine, self.batch(group, budget), self.quiet)
                )
        if self.large:
            release_freed_memory()  # the runs' activations, freed but resident in the C heap
        return self.join(result, names)

    def batch(self, group: list[str] | None = None, budget: int = EXTRACT_VALUES_PER_CALL) -> int:
        """Images per onnxruntime call: ``batch_size``, fewer where the sources' inputs are large."""
        values = sum(v for name, v in self.values_per_image.items() if group is None or name in group)
        return max(1, min(self.batch_size, budget // max(values, 1)))

    def part_session(self, outputs: list[str]):
        """A session of the part of the graph that computes ``outputs`` (the light part is kept for reuse)."""
        return make_session(self.part(outputs), weights=self.weights, built=True)

    def group_outputs(self, group: list[str]) -> list[str]:
        """The stitched graph's outputs that ``group``'s session computes."""
        return [o.name for o in self.model.graph.output if owner(o.name) in group]

    def needed(self, names: list[str]) -> list[str]:
        """The graph outputs that ``names`` stand for (a joined output by its parts), checked to exist."""
        available = [o.name for o in self.model.graph.output]
        unknown = [n for n in names if n not in available]
        if unknown:
            raise OnnxMergeError(f"the stitched graph has no output {unknown[0]!r}; it has {available}.")
        return list(dict.fromkeys(part for n in names for part in self.joined.get(n, [n])))

    def join(self, result: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """``names`` from the per-output ``result``, joined outputs concatenated."""
        for name in names:
            if name in self.joined:
                result[name] = np.concatenate([result[n] for n in self.joined[name]], axis=1)
        return {n: result[n] for n in names}

    def part(self, outputs: list[str]) -> onnx.ModelProto:
        """The light part of the graph that computes ``outputs`` (kept for reuse)."""
        key = tuple(outputs)
        if key not in self._parts:
            # onnxruntime 1.31's Identity elimination loses a tensor that an Identity copies into a graph output
            # while other nodes read it too ("not a graph input, initializer, or output of a previous node"): a
            # source's input shared away to another source's. Exposing that tensor as well avoids it.
            outputs = outputs + [
                n.input[0]
                for n in self.model.graph.node
                if n.op_type == "Identity" and n.output[0] in outputs and n.input[0] not in outputs
            ]
            self._parts[key] = with_outputs(self.model, outputs, prune=True)
        return self._parts[key]

    def session(self, model: onnx.ModelProto):
        """A session of another model whose weights live in the same folder (Z, once its head is appended)."""
        return make_session(model, weights=self.weights, built=True)

    def _group_session(self, group: list[str]):
        key = tuple(group)
        if key not in self._sessions:
            if self.large:
                self.close()
            self._sessions[key] = self.part_session(self.group_outputs(group))
        return self._sessions[key]

    def close(self) -> None:
        if self._sessions:
            self._sessions.clear()
            release_freed_memory()
