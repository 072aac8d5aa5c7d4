"""What the commands print about a build and a built Z: the build summary, ``inspect``'s view of a Z.

Names, labels and paths come from files: every one is printed with control characters escaped.
"""

from __future__ import annotations

from pathlib import Path

from .safety import printable


def z_lines(z: dict) -> list[str]:
    """``inspect``'s text view of a built Z (``graph.inspect.describe_z``); text from the file escaped."""
    p = printable
    lines = [f"onnxmerge Z, mode {p(z['mode'])!r}, built by onnxmerge {p(z['version'] or '?')}"]
    for s in z["sources"] or []:
        lines.append(f"source   {p(s.get('name'))}: feature {p(s.get('feature'))!r}, sha256 {p(s.get('sha256'))}")
    merge = z.get("merge") or {}
    for group in merge.get("groups", [merge] if merge else []):
        names = ", ".join(map(p, group.get("sources", [])))
        lines.append(f"backbone one, merged in weight space ({p(group.get('method'))}) for {names}")
    classes = z["classes"] or []
    lines.append(f"classes  ({len(classes)}, in probabilities order): {', '.join(map(p, classes))}")
    if z["route"]:
        lines.append(f"route    columns: {', '.join(map(p, z['route']))} (P(source or new class | image))")
    estimate = z["expected_accuracy"]
    if estimate and estimate.get("int8"):
        lines.append(
            f"expected {p(estimate.get('measure', 'accuracy'))} {estimate['accuracy']:.3f} +- "
            f"{estimate['standard_error']:.3f} (int8 Z, {estimate['held_out_images']} labelled images held out "
            f"from calibration and head; float Z {estimate.get('float_accuracy') or 0:.3f})"
        )
    elif estimate:
        lines.append(
            f"expected {p(estimate.get('measure', 'accuracy'))} {estimate['accuracy']:.3f} +- "
            f"{estimate['standard_error']:.3f} ({estimate['folds']}-fold, {estimate['held_out_images']} "
            f"{p(estimate.get('what', 'labelled images'))}, measured at build time)"
        )
    else:
        lines.append("expected accuracy: not measured (the build had no labelled images to hold out)")
    unknown = z.get("unknown")
    if isinstance(unknown, dict) and isinstance(unknown.get("threshold"), (int, float)):
        lines.append(
            f"unknown  label 'unknown' when unknown_score > {unknown['threshold']:.3g} (keeps "
            f"{unknown.get('keeps', unknown['threshold']):.0%} of the build's {unknown.get('calibration_images', '?')} "
            f"images, cross-fitted; distance > {unknown.get('distance', float('nan')):.4g}: "
            f"{p(unknown.get('score', '?'))})"
        )
    for block in z["head_inputs"] or []:
        lines.append(f"head in  {p(block['source'])} {p(block['block'])}, width {block['width']}")
    return lines


def quantization_lines(q: dict | None) -> list[str]:
    """``inspect``'s lines for an int8 Z: the int8 estimate against the float one, agreement with the float Z,
    calibration, which sources are int8 (and why), time and size against the float Z."""
    if not q:
        return []
    p = printable

    def num(key: str) -> str:
        value = q.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"

    ratio = q.get("time_ratio") or {}
    lines = [
        f"int8     sources {', '.join(map(p, q.get('int8_sources', []))) or 'none'}; {p(q.get('method', '?'))} "
        f"calibration on {p(q.get('calibration_from', '?'))}",
        f"int8     accuracy {num('int8_accuracy')} (float Z {num('float_accuracy')}), labels agree with the float Z "
        f"{num('agreement')} ({p(q.get('held_out', '?'))})",
    ]
    if q.get("pool_agreement_images"):
        lines.append(
            f"int8     labels agree with the float Z on {q['pool_agreement_images']} held-out pool images: "
            f"{num('pool_agreement')}"
        )
    if ratio:
        lines.append(
            f"int8     time {ratio['median']:.2f}x the float Z ({ratio['low']:.2f}-{ratio['high']:.2f} over "
            f"{ratio['rounds']} interleaved rounds, batch {q.get('batch', '?')}), size {num('size_ratio')}x"
        )
    for s in q.get("sources", []):
        kept = f"; float: {', '.join(map(p, s['float_layers']))}" if s.get("float_layers") else ""
        lines.append(f"  {p(s['name'])}: {'int8' if s['int8'] else 'float'}, {p(s['reason'])}{kept}")
    return lines


def merge_lines(merge: dict | None) -> list[str]:
    """The ``[merge]`` lines of the build report: per merged group the architecture check and the method chosen,
    the sources left concatenated, both Zs, the choice."""
    if not merge:
        return []
    if "line" not in merge or "method" not in merge:  # mode auto on sources that cannot be merged
        return [f"merge: kept the concatenated Z ({printable(merge.get('why', ''))})"]
    lines = []
    for group in merge.get("groups", [merge]):
        tried = ", ".join(f"{name} {score:.3f}" for name, score in group["candidates"].items())
        names = ", ".join(map(printable, group.get("sources", [])))
        lines += [
            f"merge: {names}: {group['architecture']}",
            f"merge: {group['method']} chosen by the sources' own heads on the merged backbone ({tried}; "
            f"{group['seconds']:.1f} s)",
        ]
    if merge.get("concatenated"):
        lines.append(
            f"merge: concatenated (no other source shares their architecture): "
            f"{', '.join(map(printable, merge['concatenated']))}"
        )
    lines += [f"merge: note: {printable(note)}" for note in merge["notes"]]
    return lines + [f"merge: {merge['line']}"]


def forecast_line(disagreed: float) -> str:
    """The routing's uncertainty and what chosen labels bought on the nearest tuning setup
    (``learn.select.forecast``)."""
    from .learn.select import MAX_BUDGET, forecast

    expected = forecast(disagreed)
    line = f"forecast: the k-means runs disagree on {disagreed:.0%} of the pool images (where routing guesses)"
    if expected is None:
        return line
    like = f"on the nearest benchmark setup ({expected.like}, {expected.disagreed:.0%})"
    if expected.per_class is None:
        bought = f"even {MAX_BUDGET} chosen labels per class left Z more than 2 points under"
    else:
        bought = f"{expected.per_class} chosen labels per class brought Z within 2 points of"
    return f"{line}; {like}, {bought} a fully labelled fit"


#: share of pool images the k-means runs disagree on from which the build suggests a generic backbone: the
#: benchmark's 3 and 5 look-alike teachers (where it helped) disagree on 32-45% without one, the demo's easy
#: 5 + 3 split on 18-22% (``benchmarks/routing/labels.py --generic``, RESULTS.md)
GENERIC_HINT_SHARE = 0.3


def generic_hint(disagreed: float, non_teacher: bool) -> str | None:
    """A hint to add a generic ImageNet backbone as a ``teacher = false`` source, where the routing is unsure
    (``disagreed``: share of pool images the k-means runs disagree on) and no source is a non-teacher yet."""
    if non_teacher or disagreed < GENERIC_HINT_SHARE:
        return None
    return (
        "routing: hint: if you will give labels, a generic ImageNet backbone added as a teacher = false source "
        "(e.g. EfficientNet-Lite0) may pay where the runs disagree this much: with chosen labels it added 5.6-7.5 "
        "points on the benchmark's 5 look-alike teachers, up to 3 on 3 (without labels -3 to +8), for a Z about "
        "20x slower (docs/routing.md)"
    )


def source_lines(info: dict) -> list[str]:
    """``inspect``'s lines for a source that is not a plain float32 model taking normalised input."""
    lines = []
    if info["precision"] != "float32":
        lines.append(f"precision: {info['precision']} (composed as it is; parity is checked against this file)")
    if info["preprocessing"]:
        lines.append(f"preprocessing: the model does its own ({info['preprocessing']}); no scale/mean/std needed")
    return lines


def _resolved_lines(s) -> list[str]:
    """The build report's lines for one resolved source: its file, feature and input, why, and its notes."""
    p, pre = printable, s.preprocess
    lines = [
        f"source {p(s.spec.name)}: {p(Path(s.spec.model).name)}, feature '{p(s.feature)}' "
        f"({'pooled, ' if s.cut.pooled else ''}{pre.layout} {pre.height}x{pre.width}x{pre.channels}"
        f"{', flat' if pre.flat else ''}), {len(s.labels or [])} labels",
        f"  why: {p(s.reason)}",
    ]
    if s.batch_note:
        lines.append(f"  note: {s.batch_note}")
    if s.precision != "float32":
        lines.append(f"  precision: {s.precision}, composed as it is (parity against the source file itself)")
    if pre.raw:
        lines.append(f"  preprocessing: the model's own; Z feeds it pixels as {pre.dtype}")
    return lines


def build_summary(merger, output) -> str:
    """What ``build`` did, in a few lines: sources, feature widths, parity, classes, the file written."""
    p = printable

    lines = [line for s in merger.sources_ for line in _resolved_lines(s)]
    for name, note in merger.notes_.items():
        lines.append(f"reconciled {p(name)}: {p(note)}")
    lines += ["parity: " + c.line() for c in merger.parity_]
    if getattr(merger, "quantize_", None) is not None:  # its warnings go to stderr with the build's (_build)
        lines += [line for line in merger.quantize_.lines if not line.startswith("quantize: warning: ")]
    lines.append(merger.share_.line())
    lines += merge_lines(merger.report_.get("merge"))
    if merger.features_from_cache_:
        lines.append(
            f"features: from cache {p(merger.cache_dir)} (checked; sources run only on a few spot-check images)"
        )
    report = merger.report_
    if report.get("teachers"):
        lines.append("teachers: " + ", ".join(f"{p(n)} ({kind})" for n, kind in report["teachers"].items()))
    if "routing" in report:
        share = ", ".join(f"{p(n)} {v:.0%}" for n, v in report["routing"]["pool_share"].items())
        lines.append(f"routing: {report['routing']['method']} on {report['pool_images']} pool images ({share})")
        lines.append(forecast_line(report["routing"]["disagreed"]))
        hint = generic_hint(report["routing"]["disagreed"], any(not s.spec.teacher for s in merger.sources_))
        lines += [hint] if hint else []
    elif report["mode"] == "teachers":
        lines.append("routing: softmax over the teachers' concatenated logits (no pool to calibrate on)")
    if "pseudo_labels" in report:
        kept = report["pseudo_labels"]
        lines.append(
            f"pseudo-labels: {kept['kept']} of {kept['of']} pool images (routed probability >= {kept['threshold']})"
        )
    if merger.engine == "dask":
        where = merger.address or "a LocalCluster on 127.0.0.1"
        lines.append(
            f"engine: dask ({where}); the sources ran there on {report['train_images']} labelled and "
            f"{report['pool_images']} pool images, their features and teachers' outputs were gathered here "
            "for the head (the parity check's images ran here)"
        )
    if report["mode"] == "fit":
        lines.append(
            f"head: logistic regression (C={report['C']:g}) on {report['head_inputs']} inputs, "
            f"{report['train_images']} labelled images, train accuracy {report['train_accuracy']:.3f}"
        )
    if "expected_accuracy" in report:
        lines.append(report["expected_accuracy"]["line"])
    if "unknown" in report:
        lines.append(f"unknown: {report['unknown']['line']}")
    if report["warnings"]:
        lines.append(f"warnings: {len(report['warnings'])} (on stderr)")
    lines.append(f"classes ({len(report['classes'])}): {', '.join(map(p, report['classes']))}")
    if report["new_classes"]:
        lines.append(f"new classes (no source knows them): {', '.join(map(p, report['new_classes']))}")
    lines.append(f"wrote {p(output)}")
    return "\n".join(lines)
