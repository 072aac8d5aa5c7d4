"""Stage 3, extract: every source's features and every teacher's head output on a set of images, from the
feature cache where an earlier build stored them, else from the engine; checked finite before any fit."""

from __future__ import annotations

import os

import numpy as np

from ..errors import OnnxMergeError
from ..graph.stitch import output_names
from ..runtime import cache as feature_cache
from ..runtime.engine import Engine
from .results import StitchedGraph


class Features:
    """The stitched graph's outputs the head reads, on given images; ``from_cache`` until a run was needed."""

    def __init__(
        self,
        engine: Engine,
        graph: StitchedGraph,
        sources: list[str],
        teachers: list[str],
        widths: dict[str, int],
        batch: int,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.engine, self.graph, self.cache_dir, self.batch = engine, graph, cache_dir, batch
        self.names = [output_names(s)["feature"] for s in sources] + [output_names(t)["head"] for t in teachers]
        self.widths = [widths[n] for n in self.names]
        self.from_cache = True
        self._digest: str | None = None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``{NAME/feature, NAME/head: array}`` on uint8 ``images``."""
        # the cache is keyed on pixels; a cluster's pool of files is not read here, so it is not cached
        key = self._key(images) if self.cache_dir and isinstance(images, np.ndarray) else None
        # a few rows of an entry are recomputed and must agree (runtime/cache.py: a consistent forgery)
        joined = (
            feature_cache.load(
                self.cache_dir,
                key,
                len(images),
                check=lambda rows: np.concatenate(
                    [self.engine.outputs(images[rows], self.names)[n] for n in self.names], axis=1
                ),
            )
            if key
            else None
        )
        hit = joined is not None and joined.shape[1] == sum(self.widths)
        self.from_cache = self.from_cache and hit  # true only if every extraction was cached
        if hit:
            return dict(zip(self.names, np.split(joined, np.cumsum(self.widths)[:-1], axis=1)))
        blocks = self.engine.outputs(images, self.names)
        for name in self.names:
            if not np.isfinite(blocks[name]).all():
                source = name.rsplit("/", 1)[0]
                what = "features" if name.endswith("/feature") else "classifier outputs"
                raise OnnxMergeError(
                    f"source {source!r} produced NaN or infinite {what} on the images; "
                    "check its scale/mean/std and its feature tensor."
                )
        feature_cache.store(self.cache_dir, key, np.concatenate([blocks[n] for n in self.names], axis=1))
        return blocks

    def _key(self, images: np.ndarray) -> str:
        if self._digest is None:  # serialise and hash the stitched graph once per build
            self._digest = feature_cache.graph_digest(self.graph.model)
        return feature_cache.feature_key(self._digest, images, self.names, self.batch)
