"""The labelling folder that ``onnxmerge suggest`` fills and ``onnxmerge label`` (or a person) empties.

Layout: suggested images wait at the top level, listed in ``suggestions.csv``; an answer moves a file into
``DIR/<label>/``, so DIR is a labelled folder a recipe's ``train`` can name at any time (the build ignores
top-level files, with one note). "None of these" goes to ``DIR/.none/``, "skip" to ``DIR/.skipped/``: hidden
folders, which are no class, and whose images are never suggested again.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OnnxMergeError
from ..safety import label_problem, printable
from .listing import IMAGE_SUFFIXES, image_files
from .models import atomic_path

SUGGESTIONS = "suggestions.csv"
COLUMNS = ("file", "source_file", "guess", "confidence")  # PRODUCT.md; then Z's probability per class
PROBABILITY = "p:"  # prefix of the extra columns: "p:<class>", in Z's class order (the page's buttons)
NONE, SKIPPED = ".none", ".skipped"


@dataclass
class Suggestion:
    """One row of ``suggestions.csv``: a file waiting at DIR's top level, where it came from, Z's guess."""

    file: str
    source_file: str
    guess: str
    confidence: float
    probabilities: dict[str, float]


def read_suggestions(folder: Path) -> tuple[list[str], list[Suggestion]]:
    """``(Z's classes, rows)`` of ``folder/suggestions.csv`` (none if there is no such file)."""
    path = folder / SUGGESTIONS
    if not path.is_file():
        return [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if tuple(fields[:4]) != COLUMNS:
                raise OnnxMergeError(
                    f"{printable(path)} does not start with the columns {','.join(COLUMNS)}; "
                    "delete it and run onnxmerge suggest again."
                )
            classes = [f[len(PROBABILITY) :] for f in fields[4:] if f.startswith(PROBABILITY)]
            rows = [
                Suggestion(
                    row["file"],
                    row["source_file"],
                    row["guess"],
                    float(row["confidence"] or 0),
                    {c: float(row[PROBABILITY + c] or 0) for c in classes},
                )
                for row in reader
            ]
    except (UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise OnnxMergeError(
            f"{printable(path)} cannot be read ({printable(exc)}); delete it and run onnxmerge suggest again."
        ) from exc
    return classes, rows


def write_suggestions(folder: Path, classes: list[str], rows: list[Suggestion]) -> Path:
    """Write ``folder/suggestions.csv`` atomically: the contract's four columns, then ``p:<class>`` per class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *(PROBABILITY + c for c in classes)])
    for row in rows:
        writer.writerow(
            [row.file, row.source_file, row.guess, f"{row.confidence:.4f}"]
            + [f"{row.probabilities[c]:.4f}" if c in row.probabilities else "" for c in classes]
        )
    with atomic_path(folder / SUGGESTIONS, ".csv") as tmp:
        tmp.write_text(out.getvalue(), encoding="utf-8")
    return folder / SUGGESTIONS


def waiting(folder: Path) -> list[str]:
    """The image files at ``folder``'s top level (suggested, not answered yet), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def every_image(folder: Path) -> list[str]:
    """Every image file under ``folder``, hidden folders included (what is labelled, waiting or set aside)."""
    return image_files(folder) if folder.is_dir() else []


def _free_name(folder: Path, name: str, taken: set[str]) -> str:
    """``name``, or ``stem-2.suffix``, ``stem-3.suffix``... : no file of that name anywhere in ``folder``."""
    stem, suffix = os.path.splitext(name)
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{stem}-{i}{suffix}"
    taken.add(candidate)
    return candidate


def copy_into(folder: Path, sources: list[str], pixels: np.ndarray) -> list[str]:
    """Copy suggested pool images into ``folder``'s top level; return their new names.

    A pool file is copied byte for byte; an image of an ``.npz`` pool (``POOL.npz[17]``) is written as a
    lossless PNG of its pixels (``pixels[i]``). Each copy is written to a temporary name and renamed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    taken = {os.path.basename(f) for f in every_image(folder)}
    names = []
    for source, image in zip(sources, pixels):
        if source.endswith("]") and "[" in source:  # an image of an .npz
            stem = Path(source[: source.rindex("[")]).stem
            name = _free_name(folder, f"{stem}-{source[source.rindex('[') + 1 : -1]}.png", taken)
            with atomic_path(folder / name, ".png") as tmp:
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
        else:
            name = _free_name(folder, os.path.basename(source), taken)
            with atomic_path(folder / name, Path(name).suffix) as tmp:
                shutil.copyfile(source, tmp)
        names.append(name)
    return names


def answer_folder(label: str) -> str:
    """The sub-folder an answer moves a file into: the class name, or ``.none`` / ``.skipped``."""
    problem = label_problem(label)
    if label in (NONE, SKIPPED):
        return label
    if problem or not label or label in (".", "..") or "/" in label or "\\" in label or label.startswith("."):
        raise OnnxMergeError(
            f"class {printable(label)!r} cannot be a folder name; rename it in the source's labels "
            "(no '/', no leading '.')."
        )
    return label


def move_answer(folder: Path, file: str, label: str) -> Path:
    """Move ``folder/file`` (a waiting image) into ``folder/<label>/`` (created); returns where it went."""
    if os.path.basename(file) != file or file not in waiting(folder):
        raise OnnxMergeError(f"{printable(file)} is not an image waiting in {printable(folder)}; reload the page.")
    target_dir = folder / answer_folder(label)
    target_dir.mkdir(exist_ok=True)
    target = target_dir / file
    if target.exists():  # another copy of that name was labelled before: keep both
        target = target_dir / _free_name(target_dir, file, {p.name for p in target_dir.iterdir()})
    os.replace(folder / file, target)
    return target


def move_back(folder: Path, moved: Path) -> str:
    """Undo :func:`move_answer`: ``moved`` back to ``folder``'s top level; returns its name there."""
    name = _free_name(folder, moved.name, {p.name for p in folder.iterdir()})
    os.replace(moved, folder / name)
    return name
