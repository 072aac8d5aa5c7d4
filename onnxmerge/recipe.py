"""The TOML recipe: a serialised call of the Python API, validated key by key.

Every mistake a user can make in a recipe (a missing, unknown or mistyped key, a wrong type, a bad
value) becomes one sentence that names the key, and suggests the closest valid key where one is close.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import OnnxMergeError
from .graph.preprocess import ImageInput, Preprocess
from .learn.merging import METHODS as MERGE_METHODS
from .learn.unknown import check_setting
from .merger import DEFAULT_C, MODES, Merger, Source
from .runtime.tasks import ENGINES
from .safety import check_labels, printable, read_regular
from .stages.merging import DEFAULT_MARGIN, MergeSpec, check_spec
from .stages.merging import MODES as MERGE_MODES

#: A recipe is a few hundred bytes; a larger file is not one (and is not read into memory).
MAX_RECIPE_BYTES = 1 << 20
# key -> (type(s), required)
_TOP = {
    "input": (dict, True),
    "sources": (list, True),
    "head": (dict, False),
    "engine": (dict, False),
    "merge": (dict, False),
}
_MERGE = {"mode": (str, False), "base": (str, False), "method": (str, False), "margin": ((int, float), False)}
_ENGINE = {"name": (str, True), "address": (str, False), "workers": (int, False)}
_INPUT = {"height": (int, True), "width": (int, True), "channels": (int, True)}
_SOURCE = {
    "name": (str, True),
    "model": (str, True),
    "feature": (str, False),
    "head_output": (str, False),
    "labels": (list, False),
    "teacher": (bool, False),
    "preprocess": (dict, True),
}
_PREPROCESS = {
    "height": (int, False),
    "width": (int, False),
    "channels": (int, False),
    "layout": (str, False),
    "scale": ((int, float), True),
    "mean": (list, True),
    "std": (list, True),
}
_HEAD = {
    "mode": (str, False),
    "train": ((str, list), False),
    "unlabeled": (str, False),
    "C": ((int, float, str), False),
    "new_classes": (list, False),
    "unknown": ((str, int, float), False),
}
_TYPE_NAMES = {
    int: "an integer",
    str: "a string",
    list: "a list",
    dict: "a table",
    bool: "true or false",
    (int, float): "a number",
    (int, float, str): 'a number or "auto"',
    (str, int, float): '"off", "auto" or a number between 0 and 1',
    (str, list): "a path or a list of paths",
}


@dataclass
class Recipe:
    """A parsed recipe: the configured Merger and the data it is to be fitted on."""

    merger: Merger
    train: list[Path] | None
    unlabeled: Path | None
    path: Path


def _check_table(table: Any, schema: dict, where: str) -> dict:
    if not isinstance(table, dict):
        raise OnnxMergeError(f"{where} must be a table ({'[' + where + ']'}); check the recipe's structure.")
    for key in table:
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys are {sorted(schema)}."
            raise OnnxMergeError(f"unknown key {key!r} in {where}{hint}")
    for key, (kind, required) in schema.items():
        if key not in table:
            if required:
                raise OnnxMergeError(f"{where} is missing the required key {key!r}.")
            continue
        value = table[key]
        bad_bool = isinstance(value, bool) and kind is not bool
        if bad_bool or not isinstance(value, kind):
            raise OnnxMergeError(f"{where}.{key} must be {_TYPE_NAMES[kind]}, got {value!r}.")
    return table


def _numbers(values: list, where: str) -> tuple[float, ...]:
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise OnnxMergeError(f"{where} must be a non-empty list of numbers, got {values!r}.")
    return tuple(float(v) for v in values)


def _positive(table: dict, key: str, where: str) -> int | None:
    value = table.get(key)
    if value is not None and not 0 < value <= 8192:
        raise OnnxMergeError(f"{where}.{key} must be between 1 and 8192, got {value}.")
    return value


def _C(value) -> float | str:
    if value == "auto":
        return value
    if isinstance(value, str) or not value > 0:
        raise OnnxMergeError(f'head.C must be a positive number or "auto", got {value!r}.')
    return float(value)


def _source(table: dict, i: int, base: Path, path: Path) -> Source:
    """One ``[[sources]]`` table as a :class:`Source` (its model path resolved against ``base``)."""
    _check_table(table, _SOURCE, f"sources[{i}]")
    where = f"source {table['name']!r}"
    pre = _check_table(table["preprocess"], _PREPROCESS, f"{where} preprocess")
    for key in ("height", "width", "channels"):
        _positive(pre, key, f"{where} preprocess")
    layout = pre.get("layout")
    if layout is not None and layout not in ("NCHW", "NHWC"):
        raise OnnxMergeError(f'{where} preprocess.layout must be "NCHW" or "NHWC", got {layout!r}.')
    std = _numbers(pre["std"], f"{where} preprocess.std")
    if any(s == 0 for s in std):
        raise OnnxMergeError(f"{where} preprocess.std contains 0; every std must be non-zero.")
    labels = table.get("labels")
    if labels is not None and (not labels or not all(isinstance(v, str) for v in labels)):
        raise OnnxMergeError(f"{where} labels must be a non-empty list of strings.")
    if labels is not None:
        check_labels(labels, f"{where} labels")
    model = (base / Path(table["model"]).expanduser()).resolve()
    if model == path.resolve():
        raise OnnxMergeError(f"{where} model is the recipe file itself; point it to a .onnx file.")
    return Source(
        name=table["name"],
        model=model,
        feature=table.get("feature", "auto"),
        head_output=table.get("head_output", "auto"),
        labels=labels,
        teacher=table.get("teacher", True),
        preprocess=Preprocess(
            scale=float(pre["scale"]),
            mean=_numbers(pre["mean"], f"{where} preprocess.mean"),
            std=std,
            height=pre.get("height"),
            width=pre.get("width"),
            channels=pre.get("channels"),
            layout=layout,
        ),
    )


def _known(value: str, choices, key: str) -> str:
    """``value`` if it is one of ``choices``, else one sentence naming the closest."""
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        raise OnnxMergeError(
            f"{key} {value!r} is unknown"
            + (f"; did you mean {close[0]!r}?" if close else f"; use one of {list(choices)}.")
        )
    return value


def _engine(data: dict) -> dict:
    """The ``[engine]`` table, checked (default: the local engine)."""
    engine = _check_table(data.get("engine", {"name": "local"}), _ENGINE, "engine")
    _known(engine["name"], ENGINES, "engine.name")
    if engine["name"] == "local" and ("address" in engine or "workers" in engine):
        raise OnnxMergeError('engine.address and engine.workers need engine.name = "dask"; set it or drop them.')
    _positive(engine, "workers", "engine")
    return engine


def _merge(data: dict, base: Path) -> MergeSpec:
    """The ``[merge]`` table, checked (default: mode "concat", every source's backbone in Z)."""
    table = _check_table(data.get("merge", {}), _MERGE, "merge")
    _known(table.get("mode", "concat"), MERGE_MODES, "merge.mode")
    _known(table.get("method", "auto"), MERGE_METHODS, "merge.method")
    spec = MergeSpec(
        mode=table.get("mode", "concat"),
        base=(base / Path(table["base"]).expanduser()) if "base" in table else None,
        method=table.get("method", "auto"),
        margin=float(table.get("margin", DEFAULT_MARGIN)),
    )
    check_spec(spec)
    return spec


def parse_recipe(data: dict, base: Path, path: Path, quiet: bool = False) -> Recipe:
    """Turn a recipe's TOML data into a configured :class:`Merger` (paths resolved against ``base``)."""
    _check_table(data, _TOP, "the recipe")
    inp = _check_table(data["input"], _INPUT, "input")
    height, width, channels = (_positive(inp, k, "input") for k in ("height", "width", "channels"))
    if channels not in (1, 3):
        raise OnnxMergeError(f"input.channels must be 1 or 3, got {channels}.")
    if not data["sources"]:
        raise OnnxMergeError("the recipe has no [[sources]]; add at least one.")
    sources = [_source(table, i, base, path) for i, table in enumerate(data["sources"])]
    head = _check_table(data.get("head", {}), _HEAD, "head")
    mode = _known(head.get("mode", "fit"), MODES, "head.mode")
    if mode == "fit" and "train" not in head and "unlabeled" not in head:
        raise OnnxMergeError(
            'mode = "fit" needs head.train (a labelled folder or .npz) or head.unlabeled '
            '(a pool the teachers pseudo-label), or use mode = "teachers".'
        )
    engine = _engine(data)
    new_classes = head.get("new_classes", [])
    if not all(isinstance(v, str) for v in new_classes):
        raise OnnxMergeError("head.new_classes must be a list of class names (strings).")
    merger = Merger(
        ImageInput(height, width, channels),
        sources,
        mode=mode,
        C=_C(head.get("C", DEFAULT_C)),
        quiet=quiet,
        engine=engine["name"],
        address=engine.get("address"),
        workers=engine.get("workers"),
        new_classes=new_classes,
        merge=_merge(data, base),
        unknown=head.get("unknown", "off"),
    )
    check_setting(merger.unknown)
    train = None
    if "train" in head:
        paths = head["train"] if isinstance(head["train"], list) else [head["train"]]
        if not paths or not all(isinstance(p, str) for p in paths):
            raise OnnxMergeError("head.train must be a path or a non-empty list of paths.")
        train = [base / Path(p).expanduser() for p in paths]
    unlabeled = (base / Path(head["unlabeled"]).expanduser()) if "unlabeled" in head else None
    return Recipe(merger, train, unlabeled, path)


def load_recipe(path: str | Path, quiet: bool = False) -> Recipe:
    """Read and validate a recipe file; paths inside it are relative to the file (``~`` is the home folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise OnnxMergeError(f"recipe {printable(path)} does not exist; check the path.")
    content = read_regular(path, "recipe", limit=MAX_RECIPE_BYTES)
    try:
        data = tomllib.loads(content.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OnnxMergeError(f"recipe {printable(path)} is not valid TOML ({printable(exc)}); fix the syntax.") from exc
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise OnnxMergeError(
            f"recipe {printable(path)} nests arrays or tables too deeply for a recipe; fix its structure."
        ) from None
    return parse_recipe(data, path.parent, path, quiet=quiet)
