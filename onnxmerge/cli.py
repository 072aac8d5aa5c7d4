"""The ``onnxmerge`` command line: parses arguments, calls the library, prints; never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import OnnxMergeError


def _inspect(args) -> int:
    from .inspect import describe
    from .modelio import load_model

    info = describe(args.model, load_model(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['file']}  ({info['size']:,} bytes, IR {info['ir_version']}, producer {info['producer'] or '?'})")
    print("opsets:  " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            print(f"{kind[:-1]:7}  {io['name']}  {io['type']}")
    if info["labels"]:
        print(f"labels:  {len(info['labels'])}: {', '.join(info['labels'][:10])}{' ...' if len(info['labels']) > 10 else ''}")
    print(f"suggested feature: {info['suggested']}\n  why: {info['reason']}")
    for line in quantization_lines(info["quantization"]):
        print(line)
    shown = info["candidates"] if args.all else info["candidates"][:10]
    print(f"candidates ({len(shown)} of {len(info['candidates'])}{'' if args.all else '; --all for every one'}):")
    for c in shown:
        print(f"  {'*' if c['suggested'] else ' '} {c['name']}  shape {c['shape']}  -> {c['op']}")
    return 0


def _build(args) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, quiet=args.quiet)
    merger = recipe.merger
    from .modelio import check_output_path

    check_output_path(args.output, [Path(s.model) for s in merger.sources] + [recipe.path])
    if not args.no_cache:
        from .cache import default_cache_dir

        merger.cache_dir = Path(args.cache) if args.cache else default_cache_dir()
    merger.fit(recipe.train, unlabeled=recipe.unlabeled)
    if args.quantize:
        from .quantize import quantize_merger

        # the setter drops Z's session; the report's lines say per source float/int8, time ratio and why
        merger.model_, merger.quantize_ = quantize_merger(merger, recipe.train, recipe.unlabeled)
    merger.save(args.output)
    print(build_summary(merger, args.output))
    return 0


def quantization_lines(q: dict | None) -> list[str]:
    """``inspect``'s lines for an int8 Z: per source float/int8, time ratio and why; accuracy before/after."""
    if not q:
        return []
    lines = [f"quantization: int8 static QDQ, {q['method']} calibration on {q['calibration_images']} images "
             f"(of {q['images']} labelled and {q.get('pool_images', 0)} pool images); "
             f"accuracy held out ({q['held_out']}) {q['accuracy_before']:.3f} float -> {q['accuracy_after']:.3f} "
             f"int8{', head refitted on the int8 features' if q['head_refit'] else ''}; Z int8 / float time "
             f"{q['time_ratio']:.2f}, size {q['size_ratio']:.2f}x"]
    for s in q["sources"]:
        kept = f"; float: {', '.join(s['float_layers'])}" if s["float_layers"] else ""
        lines.append(f"  {s['name']}: {'int8' if s['int8'] else 'float'}, {s['reason']}{kept}")
    return lines


def build_summary(merger, output) -> str:
    """What ``build`` did, in a few lines: sources, feature widths, parity, classes, the file written."""
    lines = []
    for s in merger.sources_:
        pre = s.preprocess
        lines.append(f"source {s.spec.name}: {Path(s.spec.model).name}, feature {s.feature!r} "
                     f"({'pooled, ' if s.cut.pooled else ''}{pre.layout} {pre.height}x{pre.width}x{pre.channels}"
                     f"{', flat' if pre.flat else ''}), {len(s.labels or [])} labels")
        lines.append(f"  why: {s.reason}")
        if s.batch_note:
            lines.append(f"  note: {s.batch_note}")
    for name, note in merger.notes_.items():
        lines.append(f"reconciled {name}: {note}")
    lines += ["parity: " + c.line() for c in merger.parity_]
    if getattr(merger, "quantize_", None) is not None:
        lines += merger.quantize_.lines
    lines.append(merger.share_.line())
    if merger.features_from_cache_:
        lines.append(f"features: from cache {merger.cache_dir} (sources not run on the training images)")
    report = merger.report_
    if report.get("teachers"):
        lines.append("teachers: " + ", ".join(f"{n} ({kind})" for n, kind in report["teachers"].items()))
    if "routing" in report:
        share = ", ".join(f"{n} {v:.0%}" for n, v in report["routing"]["pool_share"].items())
        lines.append(f"routing: {report['routing']['method']} on {report['pool_images']} pool images ({share})")
    elif report["mode"] == "teachers":
        lines.append("routing: softmax over the teachers' concatenated logits (no pool to calibrate on)")
    if "pseudo_labels" in report:
        p = report["pseudo_labels"]
        lines.append(f"pseudo-labels: {p['kept']} of {p['of']} pool images (routed probability >= {p['threshold']})")
    if report["mode"] == "fit":
        lines.append(f"head: logistic regression (C={report['C']:g}) on {report['head_inputs']} inputs, "
                     f"{report['train_images']} labelled images, train accuracy {report['train_accuracy']:.3f}")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    lines.append(f"classes ({len(report['classes'])}): {', '.join(report['classes'])}")
    if report["new_classes"]:
        lines.append(f"new classes (no source knows them): {', '.join(report['new_classes'])}")
    lines.append(f"wrote {output}")
    return "\n".join(lines)


def _predict(args) -> int:
    from .data import read_images
    from .predict import ZModel

    z = ZModel(args.model, quiet=args.quiet)
    images = read_images(args.images, z.input)
    labels, probs = z.predict(images)
    rows = [{"file": f, "label": str(label), "probability": float(p.max())} for f, label, p in zip(args.images, labels, probs)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['file']}\t{row['label']}\t{row['probability']:.4f}")
    return 0


def _evaluate(args) -> int:
    from .data import load_labelled
    from .evaluate import evaluate_predictions, write_report
    from .predict import ZModel

    z = ZModel(args.model, quiet=args.quiet)
    data = load_labelled(args.data, z.input)
    labels, _ = z.predict(data.x)
    result = evaluate_predictions(data.y, labels, z.labels)
    written = write_report(result, args.report, f"{Path(args.model).name} on {Path(args.data).name}") if args.report else []
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"accuracy {result['accuracy']:.4f} on {result['images']} images")
    print(f"{'class':20} {'recall':>7} {'support':>8}")
    for label, v in result["per_class"].items():
        print(f"{label:20} {v['recall']:7.3f} {v['support']:8d}")
    if result["unknown_labels"]:
        print(f"labels Z does not know (counted as wrong): {', '.join(result['unknown_labels'])}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quiet=args.quiet)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    main = argparse.ArgumentParser(prog="onnxmerge", description="Compose pretrained ONNX classifiers into one model Z.")
    main.add_argument("--version", action="version", version=f"onnxmerge {__version__}")
    commands = main.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        sub.set_defaults(func=func)
        return sub

    sub = command("inspect", _inspect, "show a model's inputs, outputs, labels and candidate feature tensors")
    sub.add_argument("model")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_argument("--all", action="store_true", help="list every candidate, not only the top ten")
    sub = command("build", _build, "build Z from a TOML recipe")
    sub.add_argument("recipe")
    sub.add_argument("-o", "--output", required=True, help="where to write Z (.onnx)")
    cache = sub.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR", help="feature cache folder (default: $ONNXMERGE_CACHE_DIR or "
                       "~/.cache/onnxmerge); a rebuild with a changed head does not run the sources again")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    sub.add_argument("--quantize", action="store_true", help="int8 static QDQ quantisation calibrated on the training "
                     "images; reports accuracy before/after and keeps the float Z where int8 is not faster")
    sub = command("predict", _predict, "classify image files with Z")
    sub.add_argument("model")
    sub.add_argument("images", nargs="+")
    sub.add_argument("--json", action="store_true")
    sub = command("evaluate", _evaluate, "accuracy, per-class recall and confusion matrix of Z on a labelled folder")
    sub.add_argument("model")
    sub.add_argument("data", help="labelled folder (one sub-folder per class) or .npz with x and y")
    sub.add_argument("--json", action="store_true")
    sub.add_argument("--report", metavar="OUTDIR", help="also write confusion.png and report.html here")
    sub = command("demo", _demo, "the whole story on the Fashion-MNIST example shipped in the repository")
    sub.add_argument("--out", default="demo-output", help="folder for Z files and reports (default: demo-output)")
    return main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``onnxmerge`` console script."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except OnnxMergeError as exc:
        print(f"onnxmerge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnxmerge: interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
