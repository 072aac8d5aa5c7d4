"""What Z's "unknown" answer gives the commands: ``predict --unknown-to`` copies the images Z calls unknown
(stage 2's next class), ``evaluate`` reports how much it rejects and plots the score distributions."""

from __future__ import annotations

import filecmp
import html
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .contract import UNKNOWN
from .errors import OnnxMergeError
from .files.outputs import atomic_path
from .safety import printable

PLOT = "unknown.png"  # the score distributions, written by ``evaluate --report`` when Z has the score


def copy_unknown(files: Sequence[str], folder: str | os.PathLike) -> list[Path]:
    """Copy ``files`` (the ones Z called unknown) into ``folder`` (flat, created if missing); returns the copies.

    A name already taken by a different file gets a numbered suffix (``a-1.png``); the same file copied by an
    earlier run is not copied again. Each copy is written to a temporary name and renamed.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OnnxMergeError(f"--unknown-to {printable(folder)} is a file; give a folder (created if missing).")
    picked = [Path(f) for f in files]
    if picked:
        folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in picked:
        target, n = folder / source.name, 0
        while target.exists() and not filecmp.cmp(source, target, shallow=False):
            n += 1
            target = folder / f"{source.stem}-{n}{source.suffix}"
        if not target.exists():
            with atomic_path(target, source.suffix) as tmp:
                shutil.copyfile(source, tmp)
        copies.append(target)
    return copies


def rejection_report(
    true: Sequence[str], labels: np.ndarray, probabilities: np.ndarray, known: list[str], threshold: float | None
) -> dict:
    """``evaluate``'s ``unknown`` key: per class Z does not know, the share Z called unknown; for Z's own
    classes, accuracy with rejection (an "unknown" answer is wrong) and without (the most probable class)."""
    true = np.asarray([str(t) for t in true])
    labels = np.asarray([str(v) for v in labels])
    mine = np.isin(true, known)
    without = np.asarray(known)[probabilities.argmax(axis=1)] if len(known) else labels
    novel = {c: float(np.mean(labels[true == c] == UNKNOWN)) for c in sorted(set(true[~mine]))}
    return {
        "threshold": threshold,
        "rejected": novel,
        "rejection_rate": float(np.mean(labels[~mine] == UNKNOWN)) if (~mine).any() else None,
        "known_images": int(mine.sum()),
        "known_rejected": float(np.mean(labels[mine] == UNKNOWN)) if mine.any() else None,
        "known_accuracy_with_rejection": float(np.mean(labels[mine] == true[mine])) if mine.any() else None,
        "known_accuracy_without_rejection": float(np.mean(without[mine] == true[mine])) if mine.any() else None,
    }


def report_lines(report: dict) -> list[str]:
    """``evaluate``'s text lines for the ``unknown`` key."""
    lines = []
    if report["known_accuracy_with_rejection"] is not None:
        lines.append(
            f"known classes ({report['known_images']} images): accuracy {report['known_accuracy_with_rejection']:.4f} "
            f"with rejection ({report['known_rejected']:.1%} called unknown), "
            f"{report['known_accuracy_without_rejection']:.4f} without"
        )
    for label, rate in report["rejected"].items():
        lines.append(f"called unknown: {rate:.1%} of {printable(label)} (a class Z does not know)")
    if report["rejection_rate"] is not None:
        lines.append(f"called unknown: {report['rejection_rate']:.1%} of all images of classes Z does not know")
    return lines


def plot_scores(true: Sequence[str], scores: np.ndarray, known: list[str], threshold, outdir: Path) -> Path:
    """``unknown.png``: histograms of ``unknown_score`` for images of Z's classes and of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = np.isin(np.asarray([str(t) for t in true]), known)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[mine], bins=bins, alpha=0.6, label=f"Z's classes ({int(mine.sum())})", density=True)
    if (~mine).any():
        other = f"classes Z does not know ({int((~mine).sum())})"
        ax.hist(scores[~mine], bins=bins, alpha=0.6, label=other, density=True)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("unknown_score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = outdir / PLOT
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def report_html(report: dict) -> str:
    """The report page's section on the unknown answer."""
    rows = "".join(f"<li>{html.escape(line)}</li>" for line in report_lines(report))
    return f"<h2>Unknown</h2><ul>{rows}</ul><img src='{PLOT}' alt='unknown_score: known vs not'>"
