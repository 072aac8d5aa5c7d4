"""The TOML recipe: a serialised call of the Python API, validated key by key.

Every mistake a user can make in a recipe (a missing, unknown or mistyped key, a wrong type, a bad
value) becomes one sentence that names the key, and suggests the closest valid key where one is close.
The recipe checks the TOML's structure and types; the values are checked by :class:`onnxmerge.config.Config`,
which the recipe, the API and the command line all make by keyword. ``recipe_data`` writes a configuration
back as a recipe's data: every parameter of the API has its key.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .config import Config, ImageInput, MergeSpec, Preprocess, Source, check_data
from .errors import OnnxMergeError
from .merger import Merger
from .safety import printable, read_regular

#: A recipe is a few hundred bytes; a larger file is not one (and is not read into memory).
MAX_RECIPE_BYTES = 1 << 20
# key -> (type(s), required)
_TOP = {
    "input": (dict, True),
    "sources": (list, True),
    "head": (dict, False),
    "engine": (dict, False),
    "merge": (dict, False),
    "cache": (dict, False),
}
_MERGE = {
    "mode": (str, False),
    "base": (str, False),
    "method": (str, False),
    "margin": ((int, float), False),
    "repair": ((str, bool), False),
}
_ENGINE = {"name": (str, True), "address": (str, False), "workers": (int, False), "batch_size": (int, False)}
_CACHE = {"dir": (str, True)}
_INPUT = {"height": (int, True), "width": (int, True), "channels": (int, True)}
_SOURCE = {
    "name": (str, True),
    "model": (str, True),
    "feature": (str, False),
    "head_output": (str, False),
    "labels": (list, False),
    "teacher": (bool, False),
    "preprocess": (dict, False),  # may be left out for a model that takes raw pixels
}
_PREPROCESS = {
    "height": (int, False),
    "width": (int, False),
    "channels": (int, False),
    "layout": (str, False),
    # required (all three), except for a model that takes raw pixels and normalises them itself: that is
    # told by the model, so a source without them is checked when its model is read (stages.sources)
    "scale": ((int, float), False),
    "mean": (list, False),
    "std": (list, False),
}
_NORMALISATION = ("scale", "mean", "std")
_HEAD = {
    "mode": (str, False),
    "train": ((str, list), False),
    "unlabeled": (str, False),
    "C": ((int, float, str), False),
    "class_weight": ((str, dict), False),
    "router_C": ((int, float), False),
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
    (str, bool): '"auto", true or false',
    (int, float, str): 'a number or "auto"',
    (str, int, float): '"off", "auto" or a number between 0 and 1',
    (str, list): "a path or a list of paths",
    (str, dict): '"balanced", "none" or a table of weights',
}
#: the run options the command line may set over a recipe (``load_recipe(..., engine=...)``)
RUN_OPTIONS = ("engine", "address", "workers", "cache_dir")


@dataclass
class Recipe:
    """A parsed recipe: the build's configuration and the data it is to be fitted on."""

    config: Config
    train: list[Path] | None
    unlabeled: Path | None
    path: Path

    @cached_property
    def merger(self) -> Merger:
        """The configured (unfitted) Merger."""
        return Merger.from_config(self.config)


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
        bad_bool = (
            isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ())
        )
        if bad_bool or not isinstance(value, kind):
            raise OnnxMergeError(f"{where}.{key} must be {_TYPE_NAMES[kind]}, got {value!r}.")
    return table


def _numbers(values: list, where: str) -> tuple[float, ...]:
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise OnnxMergeError(f"{where} must be a non-empty list of numbers, got {values!r}.")
    return tuple(float(v) for v in values)


def _number(value) -> float | str:
    """A number as float (a TOML integer too); a string stays as it is, for ``Config`` to check."""
    return value if isinstance(value, str) else float(value)


def _source(table: dict, i: int, base: Path, path: Path) -> Source:
    """One ``[[sources]]`` table as a :class:`Source` (its model path resolved against ``base``)."""
    _check_table(table, _SOURCE, f"sources[{i}]")
    where = f"source {table['name']!r}"
    pre = _check_table(table.get("preprocess", {}), _PREPROCESS, f"{where} preprocess")
    given = [k for k in _NORMALISATION if k in pre]
    if given and len(given) < len(_NORMALISATION):
        missing = next(k for k in _NORMALISATION if k not in pre)
        raise OnnxMergeError(
            f"{where} preprocess is missing the required key {missing!r} (scale, mean and std come together; "
            "leave all three out only for a model that takes raw pixels)."
        )
    model = (base / Path(table["model"]).expanduser()).resolve()
    if model == path.resolve():
        raise OnnxMergeError(f"{where} model is the recipe file itself; point it to a .onnx file.")
    return Source(
        name=table["name"],
        model=model,
        feature=table.get("feature", Source.feature),
        head_output=table.get("head_output", Source.head_output),
        labels=table.get("labels"),
        teacher=table.get("teacher", Source.teacher),
        preprocess=Preprocess(
            scale=float(pre["scale"]) if given else None,
            mean=_numbers(pre["mean"], f"{where} preprocess.mean") if given else None,
            std=_numbers(pre["std"], f"{where} preprocess.std") if given else None,
            height=pre.get("height"),
            width=pre.get("width"),
            channels=pre.get("channels"),
            layout=pre.get("layout"),
        ),
    )


def _class_weight(value):
    return None if value == "none" else value


def _engine(data: dict, options: dict) -> dict:
    """``Config``'s engine keys from the ``[engine]`` table, with the command line's ``options`` over them
    (an address or worker count given there without an engine means "dask")."""
    table = _check_table(data.get("engine", {"name": "local"}), _ENGINE, "engine")
    keys = {"engine": table["name"], "address": table.get("address"), "workers": table.get("workers")}
    given = {k: v for k, v in options.items() if k in keys and v is not None}
    if ("address" in given or "workers" in given) and "engine" not in given:
        keys["engine"] = None
    return dict(keys, **given, batch_size=table.get("batch_size", Config.batch_size))


def _merge(data: dict, base: Path) -> MergeSpec:
    """The ``[merge]`` table (default: mode "concat", every source's backbone in Z); ``MergeSpec`` checks it."""
    table = _check_table(data.get("merge", {}), _MERGE, "merge")
    return MergeSpec(
        mode=table.get("mode", MergeSpec.mode),
        base=(base / Path(table["base"]).expanduser()).resolve() if "base" in table else None,
        method=table.get("method", MergeSpec.method),
        margin=float(table.get("margin", MergeSpec.margin)),
        repair=table.get("repair", MergeSpec.repair),
    )


def parse_recipe(data: dict, base: Path, path: Path, quiet: bool = False, **options) -> Recipe:
    """Turn a recipe's TOML data into a :class:`Recipe` (paths resolved against ``base``); ``options`` are
    the command line's ``RUN_OPTIONS`` (None: not given), which win over the recipe's."""
    _check_table(data, _TOP, "the recipe")
    inp = _check_table(data["input"], _INPUT, "input")
    if not data["sources"]:
        raise OnnxMergeError("the recipe has no [[sources]]; add at least one.")
    sources = [_source(table, i, base, path) for i, table in enumerate(data["sources"])]
    head = _check_table(data.get("head", {}), _HEAD, "head")
    cache = _check_table(data["cache"], _CACHE, "cache") if "cache" in data else {}
    cache_dir = options.get("cache_dir") or ((base / Path(cache["dir"]).expanduser()).resolve() if cache else None)
    config = Config(
        input=ImageInput(inp["height"], inp["width"], inp["channels"]),
        sources=sources,
        mode=head.get("mode", Config.mode),
        C=_number(head.get("C", Config.C)),
        class_weight=_class_weight(head.get("class_weight", Config.class_weight)),
        router_C=_number(head.get("router_C", Config.router_C)),
        quiet=quiet,
        cache_dir=cache_dir,
        new_classes=head.get("new_classes", Config.new_classes),
        merge=_merge(data, base),
        unknown=head.get("unknown", Config.unknown),
        **_engine(data, options),
    )
    check_data(config.mode, "train" in head, "unlabeled" in head)
    train = None
    if "train" in head:
        paths = head["train"] if isinstance(head["train"], list) else [head["train"]]
        if not paths or not all(isinstance(p, str) for p in paths):
            raise OnnxMergeError("head.train must be a path or a non-empty list of paths.")
        train = [base / Path(p).expanduser() for p in paths]
    unlabeled = (base / Path(head["unlabeled"]).expanduser()) if "unlabeled" in head else None
    return Recipe(config, train, unlabeled, path)


def recipe_data(config: Config, base: Path, train=None, unlabeled=None) -> dict:
    """``config`` as a recipe's data (``parse_recipe`` reads it back to the same configuration; paths are
    written relative to ``base`` where they lie under it). ``quiet`` is a run option, not a recipe key."""

    def rel(value) -> str:
        path = Path(value)
        return os.path.relpath(path, base) if path.is_absolute() else str(path)

    def source(s: Source) -> dict:
        p = s.preprocess
        pre = {"scale": p.scale, "mean": p.mean and list(p.mean), "std": p.std and list(p.std)}  # None: raw pixels
        pre.update({k: getattr(s.preprocess, k) for k in ("height", "width", "channels", "layout")})
        table = {"name": s.name, "model": rel(s.model), "feature": s.feature, "head_output": s.head_output}
        table.update(teacher=s.teacher, preprocess={k: v for k, v in pre.items() if v is not None})
        return table if s.labels is None else dict(table, labels=list(s.labels))

    head = {"mode": config.mode, "C": config.C, "router_C": config.router_C}
    head["class_weight"] = "none" if config.class_weight is None else config.class_weight
    if config.new_classes:
        head["new_classes"] = list(config.new_classes)
    if config.unknown != Config.unknown:
        head["unknown"] = config.unknown
    if train is not None:
        head["train"] = [rel(p) for p in train]
    if unlabeled is not None:
        head["unlabeled"] = rel(unlabeled)
    engine = {"name": config.engine, "batch_size": config.batch_size}
    engine.update({k: v for k, v in (("address", config.address), ("workers", config.workers)) if v is not None})
    data = {
        "input": {"height": config.input.height, "width": config.input.width, "channels": config.input.channels},
        "sources": [source(s) for s in config.sources],
        "head": head,
        "engine": engine,
    }
    merge = config.merge
    data["merge"] = {"mode": merge.mode, "method": merge.method, "margin": merge.margin, "repair": merge.repair}
    if merge.base is not None:
        data["merge"]["base"] = rel(merge.base)
    return data if config.cache_dir is None else dict(data, cache={"dir": rel(config.cache_dir)})


def load_recipe(path: str | Path, quiet: bool = False, **options) -> Recipe:
    """Read and validate a recipe file; paths inside it are relative to the file (``~`` is the home folder).
    ``options``: the command line's ``RUN_OPTIONS`` over the recipe's (None: not given)."""
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
    return parse_recipe(data, path.parent, path, quiet=quiet, **options)
