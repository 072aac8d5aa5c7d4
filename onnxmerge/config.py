"""One build's configuration: what Z takes, its sources, the head and where the work runs.

The Python API (``Merger``), the recipe (``recipe.parse_recipe``) and the command line (``build --engine ...``)
all make a :class:`Config` by keyword; every default is written here once (the ``Merger``'s signature reads
them from :class:`Config`) and every check of a value runs here once, when the object is made, with one
sentence that names the recipe key (the API's parameter of the same name). A foundation module: every
layer may import it; it imports no layer.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .contract import FEATURES, IMAGE, LABEL, PROBABILITIES
from .errors import OnnxMergeError
from .safety import check_labels

MODES = ("fit", "teachers")
ENGINES = ("local", "dask")
LAYOUTS = ("NCHW", "NHWC")
MAX_SIDE = 8192  # pixels per side of an image a recipe may declare
RESERVED_NAMES = (FEATURES, LABEL, PROBABILITIES, IMAGE, "head")  # Z's own names: no source may take them
# The head's C is chosen from the number of labels per class ("auto", learn.head.select_C). The router's
# C = 0.1 was best of 0.003-0.1 on the routing benchmark's seed 0 (routing 0.775 vs 0.748 at 0.003).
DEFAULT_C = "auto"
ROUTER_C = 0.1
MERGE_MODES = ("concat", "weights", "auto")
MERGE_METHODS = (
    "auto",
    "average",
    "task_arithmetic",
    "ties",
    "adamerging",
    "regmean",
    "align",
)  # learn.merging's candidates
UNKNOWN_AUTO = 0.95  # unknown = "auto": the threshold that keeps 95% of the user's own images
DEFAULT_MARGIN = 0.02  # merge mode "auto": keep concat when merging loses more than this (held-out accuracy)


def known(value: str, choices, key: str) -> str:
    """``value`` if it is one of ``choices``, else one sentence naming ``key`` and the closest choice."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        raise OnnxMergeError(
            f"{key} {value!r} is unknown"
            + (f"; did you mean {close[0]!r}?" if close else f"; use one of {list(choices)}.")
        )
    return value


def _side(value: int | None, key: str) -> None:
    if value is not None and not 0 < value <= MAX_SIDE:
        raise OnnxMergeError(f"{key} must be between 1 and {MAX_SIDE}, got {value}.")


@dataclass(frozen=True)
class ImageInput:
    """What Z accepts: raw uint8 images ``[N, height, width, channels]`` with a dynamic batch."""

    height: int
    width: int
    channels: int = 3

    def __post_init__(self) -> None:
        _side(self.height, "input.height")
        _side(self.width, "input.width")
        if self.channels not in (1, 3):
            raise OnnxMergeError(f"input.channels must be 1 or 3, got {self.channels}.")

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape, ``(height, width, channels)``."""
        return self.height, self.width, self.channels


@dataclass(frozen=True)
class Preprocess:
    """What one source expects; applied inside Z.

    ``height``/``width``/``channels``/``layout`` default to the source's input where it is static
    (resolved by :func:`onnxmerge.stages.sources.resolve_preprocess`); ``scale``, ``mean`` and ``std`` are always
    explicit, except for a source that takes raw pixels and does its own preprocessing (None for all three; the
    resolved ``raw`` is then true and Z feeds it its pixels, resized and cast to its input type).
    """

    scale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    height: int | None = None
    width: int | None = None
    channels: int | None = None
    layout: str | None = None  # "NCHW" or "NHWC"
    flat: bool = False  # the source takes [N, H*W*C], flattened in ``layout`` order
    dtype: np.dtype = field(default=np.dtype(np.float32))
    raw: bool = False  # resolved: the source takes pixels (uint8, or float 0..255) and normalises them itself

    def __post_init__(self) -> None:
        # a scalar mean/std (``Preprocess(16 / 255, 0.0, 1.0)``) means one value for every channel
        given = [key for key in ("scale", "mean", "std") if getattr(self, key) is not None]
        if given and len(given) < 3:
            missing = next(k for k in ("scale", "mean", "std") if k not in given)
            raise OnnxMergeError(
                f"Preprocess is missing {missing!r}: scale, mean and std come together (leave all three out "
                "only for a model that takes raw pixels)."
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel())
            except (TypeError, ValueError):
                values = ()
            if not values:
                raise OnnxMergeError(
                    f"Preprocess {key} must be a number or a list of numbers (one per channel), got {value!r}."
                )
            object.__setattr__(self, key, values)

    def check(self, where: str) -> None:
        """The values a source's preprocessing must have, named as ``where`` (the source) in the message."""
        for key in ("height", "width", "channels"):
            _side(getattr(self, key), f"{where} preprocess.{key}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise OnnxMergeError(f'{where} preprocess.layout must be "NCHW" or "NHWC", got {self.layout!r}.')
        if self.std is not None and any(s == 0 for s in self.std):
            raise OnnxMergeError(f"{where} preprocess.std contains 0; every std must be non-zero.")


@dataclass(frozen=True)
class Source:
    """One pretrained classifier to compose, as a ``[[sources]]`` table of the recipe."""

    name: str
    model: str | os.PathLike
    preprocess: Preprocess
    feature: str = "auto"
    head_output: str = "auto"
    labels: list[str] | None = None
    teacher: bool = True

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or "/" in name or name in RESERVED_NAMES:
            raise OnnxMergeError(
                f"source name {name!r} is not usable as a namespace; use letters, digits, "
                "'_' or '-', and not a reserved name (features, label, probabilities, image, head)."
            )
        where = f"source {name!r}"
        self.preprocess.check(where)
        if self.labels is not None:
            if not self.labels or not all(isinstance(v, str) for v in self.labels):
                raise OnnxMergeError(f"{where} labels must be a non-empty list of strings.")
            check_labels(self.labels, f"{where} labels")


@dataclass(frozen=True)
class MergeSpec:
    """The recipe's ``[merge]`` table: one backbone merged in weight space for sources of one architecture."""

    mode: str = "concat"
    base: str | os.PathLike | None = None  # the model the sources were tuned from
    method: str = "auto"
    margin: float = DEFAULT_MARGIN
    repair: str | bool = "auto"  # statistics correction (REPAIR / BatchNorm reset): tried, always, never

    def __post_init__(self) -> None:
        known(self.mode, MERGE_MODES, "merge.mode")
        known(self.method, MERGE_METHODS, "merge.method")
        if self.repair not in ("auto", True, False):
            raise OnnxMergeError(f'merge.repair must be "auto", true or false, got {self.repair!r}.')
        if self.base is None and self.method in ("task_arithmetic", "ties", "adamerging"):
            raise OnnxMergeError(
                f'merge.method "{self.method}" needs merge.base (the model the sources were tuned from).'
            )
        if self.base is not None and self.method in ("regmean", "align", "average"):
            raise OnnxMergeError(
                f'merge.method "{self.method}" merges without a base; remove merge.base or the method.'
            )
        if not 0 <= self.margin <= 1:
            raise OnnxMergeError(f"merge.margin must be between 0 and 1 (accuracy, as a fraction), got {self.margin}.")


def engine_of(engine: str | None, address: str | None, workers: int | None) -> str:
    """The engine a run uses: ``engine``, or "dask" where only an address or a worker count is given; the
    one check of the three together."""
    engine = engine or ("dask" if address or workers else "local")
    known(engine, ENGINES, "engine.name")
    if workers is not None and not 0 < workers <= MAX_SIDE:
        raise OnnxMergeError(f"engine.workers (--workers) must be between 1 and {MAX_SIDE}, got {workers}.")
    if engine == "local" and (address or workers):
        raise OnnxMergeError(
            'engine.address and engine.workers (--address, --workers) need engine.name = "dask" '
            "(--engine dask); set it or drop them."
        )
    return engine


def unknown_share(value) -> float | None:
    """``[head] unknown``: "off" -> None, "auto" -> 0.95, a number in (0, 1) -> itself; else one sentence."""
    if value == "off" or value is None:
        return None
    if value == "auto":
        return UNKNOWN_AUTO
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise OnnxMergeError(
        f'head.unknown must be "off", "auto" or a number between 0 and 1 (the share of your own images to '
        f"keep, e.g. 0.99), got {value!r}."
    )


def check_data(mode: str, labelled: bool, pool: bool) -> None:
    """Mode "fit" learns from labelled images, a pool the teachers pseudo-label, or both: one is needed."""
    if mode == "fit" and not labelled and not pool:
        raise OnnxMergeError(
            'mode "fit" needs head.train (labelled images: a folder or .npz) or head.unlabeled (a pool the '
            'teachers pseudo-label); add one, or use mode = "teachers".'
        )


@dataclass(frozen=True)
class Config:
    """A build's parameters (the ``Merger``'s, one to one), checked once when made."""

    input: ImageInput
    sources: tuple[Source, ...]
    mode: str = "fit"
    C: float | str = DEFAULT_C  # the head's inverse regularisation, or "auto" (from the labels per class)
    class_weight: str | dict | None = "balanced"  # scikit-learn's LogisticRegression class_weight
    router_C: float = ROUTER_C  # the teachers-mode router's inverse regularisation
    batch_size: int = 128  # images per onnxruntime call during feature extraction
    quiet: bool = False  # no progress bars
    cache_dir: str | os.PathLike | None = None  # the feature cache's folder (None: no cache)
    engine: str | None = None  # "local" or "dask"; None: "dask" where an address or workers are given
    address: str | None = None  # a Dask scheduler (tcp://HOST:8786); None with "dask": a LocalCluster here
    workers: int | None = None  # that LocalCluster's worker processes (None: one per core)
    new_classes: tuple[str, ...] = ()  # training classes kept as new although they resemble a teacher's label
    merge: MergeSpec = MergeSpec()
    unknown: str | float = "off"  # "off", "auto" or the share of the build's images the threshold keeps

    def __post_init__(self) -> None:
        if not isinstance(self.input, ImageInput):
            raise OnnxMergeError(f"input must be an ImageInput, got {self.input!r}.")
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise OnnxMergeError("no sources given; add at least one [[sources]] table.")
        names = [s.name for s in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise OnnxMergeError(f"source name {twice[0]!r} is used twice; give every source its own name.")
        known(self.mode, MODES, "head.mode")
        _positive_or_auto(self.C, "head.C")
        if isinstance(self.router_C, (bool, str)) or not self.router_C > 0:
            raise OnnxMergeError(f"head.router_C must be a positive number, got {self.router_C!r}.")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise OnnxMergeError(
                f'head.class_weight must be "balanced", "none" or a table of weights, got {self.class_weight!r}.'
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OnnxMergeError(f"engine.batch_size must be a positive integer, got {self.batch_size!r}.")
        object.__setattr__(self, "engine", engine_of(self.engine, self.address, self.workers))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "new_classes", tuple(self.new_classes))
        if not all(isinstance(v, str) for v in self.new_classes):
            raise OnnxMergeError("head.new_classes must be a list of class names (strings).")
        if not isinstance(self.merge, MergeSpec):
            raise OnnxMergeError(f"merge must be a MergeSpec, got {self.merge!r}.")
        unknown_share(self.unknown)

    @property
    def unknown_share(self) -> float | None:
        """The share of the build's images the "unknown" threshold keeps; None: ``unknown`` is off."""
        return unknown_share(self.unknown)

    def params(self) -> dict:
        """The ``Merger``'s keyword arguments for this configuration."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _positive_or_auto(value, key: str) -> None:
    if value == "auto":
        return
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float)) or not value > 0:
        raise OnnxMergeError(f'{key} must be a positive number or "auto", got {value!r}.')
