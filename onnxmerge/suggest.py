"""``onnxmerge suggest RECIPE.toml -n N -o DIR``: which pool images are worth a label next.

Builds the recipe's current Z (from the labels given so far: its ``train``, which may be DIR itself), asks
``learn.select`` for ``N`` pool images that are neither labelled nor waiting yet, copies them into DIR and
writes ``DIR/suggestions.csv`` (``file,source_file,guess,confidence``, then Z's probability of each class).
Labelled, waiting and set-aside images are recognised by their pixels (as the recipe reads them), so a
renamed or moved file is still known, and running ``suggest`` again continues where the labels stop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OnnxMergeError
from .files.images import Dataset, as_labelled, as_pool, read_images
from .files.labelling import Suggestion, copy_into, every_image, read_suggestions, waiting, write_suggestions
from .files.outputs import check_output_folder
from .graph.stitch import output_names
from .learn.routing import l2_blocks
from .learn.select import choose
from .recipe import Recipe, load_recipe
from .runtime.tasks import digests_task
from .safety import printable
from .summary import forecast_line

STRATEGIES = {
    "typical": "typical images of the clusters no label covers yet",
    "margin": "the images Z is least sure between two classes about",
    "none": "no pool image is left that is neither labelled nor waiting",
}


@dataclass
class Suggested:
    """What one ``suggest`` run did."""

    folder: Path
    rows: list[Suggestion]  # the new suggestions, best first
    strategy: str
    classes: list[str]
    labelled: int  # labelled images Z was built from
    waiting: int  # images at DIR's top level now (new ones included)
    pool: int
    data_notes: list[str]
    disagreed: float | None  # share of pool images the k-means runs route differently (the forecast's input)


def suggest(
    recipe_path: str | Path, n: int, out: str | Path, quiet: bool = False, cache_dir: Path | None = None
) -> Suggested:
    """Pick ``n`` pool images of the recipe worth a label, copy them into ``out``, list them in its CSV."""
    if n < 1:
        raise OnnxMergeError(f"-n must be at least 1, got {n}.")
    recipe = load_recipe(recipe_path, quiet=quiet)
    if recipe.unlabeled is None:
        raise OnnxMergeError(
            f"suggest picks images from the recipe's pool, and {printable(recipe.path)} has none; add "
            '[head] unlabeled = "FOLDER" (images without labels).'
        )
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OnnxMergeError(f"-o {printable(folder)} is a file; give a folder (created if missing) for the images.")
    check_output_folder(folder, (), [], "-o")
    if folder.resolve() == recipe.unlabeled.resolve():
        raise OnnxMergeError("-o is the recipe's pool folder; give another folder (e.g. the recipe's train).")
    merger = recipe.merger
    merger.cache_dir = cache_dir
    pool = as_pool(recipe.unlabeled, merger.input)
    labelled = _labelled(recipe, folder)
    given = len(labelled.x) > 0
    try:
        merger.fit(labelled.x if given else None, labelled.y if given else None, unlabeled=pool.x)
        outputs = merger.head_outputs(pool.x)
        labelled_space = _space(merger, merger.head_outputs(labelled.x)) if given else np.zeros((0, 1))
    finally:
        merger.close()
    probabilities = merger.proba_from_outputs(outputs)
    known = set(digests_task(labelled.x)) | set(digests_task(read_images(every_image(folder), merger.input)))
    available = np.asarray([d not in known for d in digests_task(pool.x)], bool)
    picks = choose(
        _space(merger, outputs),
        probabilities,
        n,
        available,
        labelled_space,
    )
    classes = list(merger.classes_)
    names = copy_into(folder, [pool.files[i] for i in picks.index], pool.x[picks.index])
    rows = [_row(name, pool.files[i], classes, probabilities[i]) for name, i in zip(names, picks.index)]
    _, old = read_suggestions(folder)
    kept = [r for r in old if r.file in set(waiting(folder)) and r.file not in set(names)]
    write_suggestions(folder, classes, kept + rows)
    routing = merger.report_.get("routing", {})
    return Suggested(
        folder,
        rows,
        picks.strategy,
        classes,
        len(labelled.x),
        len(waiting(folder)),
        len(pool.x),
        labelled.notes,
        routing.get("disagreed"),
    )


def _labelled(recipe: Recipe, folder: Path) -> Dataset:
    """The recipe's labelled images so far; DIR may be its train before ``suggest`` first creates it."""
    paths = [p for p in recipe.train or [] if p.exists() or p.resolve() != folder.resolve()]
    if not paths:
        return Dataset(np.zeros((0, *recipe.merger.input.shape), np.uint8), np.zeros(0, str), [])
    return as_labelled(paths, None, recipe.merger.input)


def _space(merger, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Where images are clustered: the sources' features, each block L2-normalised (routing's space)."""
    return l2_blocks([outputs[output_names(s.name)["feature"]] for s in merger.sources_])


def _row(name: str, source: str, classes: list[str], p: np.ndarray) -> Suggestion:
    best = int(np.argmax(p))
    return Suggestion(name, source, classes[best], float(p[best]), dict(zip(classes, map(float, p))))


def summary(result: Suggested) -> list[str]:
    """The lines ``onnxmerge suggest`` prints."""
    where = printable(result.folder)
    lines = [
        f"suggested {len(result.rows)} of {result.pool} pool images into {where} ({STRATEGIES[result.strategy]}; "
        f"Z built from {result.labelled} labelled images)"
    ]
    if result.rows:
        guesses = Counter(r.guess for r in result.rows).most_common()
        lines.append("Z's guesses: " + ", ".join(f"{printable(g)} {c}" for g, c in guesses))
    if result.disagreed is not None:
        lines.append(forecast_line(result.disagreed))
    lines.append(
        f"{result.waiting} images wait in {where}/suggestions.csv; label them with: onnxmerge label {where}  "
        f"(or move each file into {where}/<label>/); then build with train = that folder, or suggest again."
    )
    return lines
