"""Accuracy, per-class recall, the confusion matrix, and a report (PNG + HTML) for a built Z."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from .errors import OnnxMergeError
from .files.outputs import atomic_path
from .rejection import PLOT, plot_scores, report_html
from .safety import printable

#: The files ``write_report`` puts into its folder (``unknown.png`` only for a Z with ``unknown_score``).
REPORT_FILES = ("confusion.png", "report.html", PLOT)


def evaluate_predictions(true: np.ndarray, predicted: np.ndarray, known: list[str]) -> dict:
    """The contract's evaluation JSON: ``accuracy``, ``per_class``, ``confusion``, ``labels``.

    ``labels`` is Z's classes followed by any true label Z does not know (those count as wrong and are
    also listed under ``unknown_labels``); the confusion matrix has rows = true, columns = predicted.
    """
    true = np.asarray([str(t) for t in true])
    predicted = np.asarray([str(p) for p in predicted])
    labels = evaluation_labels(true, known)
    return evaluation_from_confusion(confusion_matrix(true, predicted, labels=labels), labels, known)


def evaluation_labels(true, known: list[str]) -> list[str]:
    """Z's classes followed by the true labels Z does not know (sorted): the confusion matrix's order."""
    return list(known) + sorted(set(map(str, true)) - set(known))


def evaluation_from_confusion(matrix: np.ndarray, labels: list[str], known: list[str]) -> dict:
    """The evaluation JSON from a confusion matrix over ``labels`` (as ``evaluation_labels`` orders them)."""
    unknown = labels[len(known) :]
    total = int(matrix.sum())
    per_class = {}
    for i, label in enumerate(labels):
        support = int(matrix[i].sum())
        if support:
            per_class[label] = {"recall": float(matrix[i, i] / support), "support": support}
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "labels": labels,
        "unknown_labels": unknown,
        "images": total,
    }


def _plot_confusion(result: dict, outdir: Path, title: str) -> Path:
    """Write ``confusion.png`` (counts, shaded by each true class's share) into ``outdir``; its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels, matrix = result["labels"], np.asarray(result["confusion"])
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    rows = matrix.sum(axis=1, keepdims=True)
    ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > 0.5 * max(rows[i, 0], 1) else "black",
                )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {result['accuracy']:.3f}")
    fig.tight_layout()
    png = outdir / "confusion.png"
    with atomic_path(png, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png


def write_report(
    result: dict, outdir: str | Path, title: str = "onnxmerge evaluation", scores: tuple | None = None
) -> list[Path]:
    """Write ``confusion.png`` and ``report.html`` into ``outdir`` (created if missing); with ``scores``
    (``(true labels, unknown_score, Z's classes)`` of a Z with the score) also ``unknown.png``, the score's
    distributions on Z's classes and on the others."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxMergeError(
            f"report folder {printable(outdir)} cannot be created ({exc.strerror or exc}); choose "
            "another --report path."
        ) from exc
    png = _plot_confusion(result, outdir, title)
    rows_html = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{v['recall']:.3f}</td><td>{v['support']}</td></tr>"
        for label, v in result["per_class"].items()
    )
    unknown = (
        f"<p>Labels Z does not know (counted as wrong): {html.escape(', '.join(result['unknown_labels']))}</p>"
        if result["unknown_labels"]
        else ""
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Accuracy: <b>{result['accuracy']:.4f}</b> on {result['images']} "
        f"images.</p>{unknown}<img src='confusion.png' alt='confusion matrix (rows true, columns predicted)'>"
        f"<table border='1' cellpadding='4'><tr><th>class</th><th>recall</th><th>support</th></tr>{rows_html}"
        "</table></body></html>"
    )
    written = [png]
    if scores is not None and "unknown" in result:
        true, values, known = scores
        written.append(plot_scores(true, values, known, result["unknown"]["threshold"], outdir))
        page = page.replace("</body>", report_html(result["unknown"]) + "</body>")
    page_path = outdir / "report.html"
    with atomic_path(page_path, ".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return written + [page_path]
