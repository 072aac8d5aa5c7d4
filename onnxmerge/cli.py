"""The ``onnxmerge`` command line: parses arguments, calls the library, prints; never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .version import __version__
from .errors import OnnxMergeError


def _inspect(args) -> int:
    from .graph.inspect import describe
    from .io.models import load_model

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
    shown = info["candidates"] if args.all else info["candidates"][:10]
    print(f"candidates ({len(shown)} of {len(info['candidates'])}{'' if args.all else '; --all for every one'}):")
    for c in shown:
        print(f"  {'*' if c['suggested'] else ' '} {c['name']}  shape {c['shape']}  -> {c['op']}")
    return 0


def _build(args) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, quiet=args.quiet)
    merger = recipe.merger
    _engine_options(args, merger)
    from .io.models import check_output_path

    check_output_path(args.output, [Path(s.model) for s in merger.sources] + [recipe.path])
    if not args.no_cache:
        from .runtime.cache import default_cache_dir

        merger.cache_dir = Path(args.cache) if args.cache else default_cache_dir()
    try:
        merger.fit(recipe.train, unlabeled=recipe.unlabeled)
    finally:
        merger.close()  # the Dask cluster, if any: quantisation and parity run here
    if args.quantize:
        from .io.images import as_labelled
        from .learn.quantize import quantize_z

        if recipe.train is None:
            raise OnnxMergeError("--quantize needs labelled training images ([head] train) to calibrate on and to "
                                 "check accuracy before/after; build without --quantize.")
        data = as_labelled(recipe.train, None, merger.input)
        merger.model_, merger.quantize_ = quantize_z(merger.model_, data.x, data.y)  # the setter drops Z's session
    merger.save(args.output)
    print(build_summary(merger, args.output))
    return 0


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
    if merger.engine == "dask":
        where = merger.address or "a LocalCluster on 127.0.0.1"
        lines.append(f"engine: dask ({where}); the sources ran there on {report['train_images']} labelled and "
                     f"{report['pool_images']} pool images, their features and teachers' outputs were gathered here "
                     "for the head (the parity check's images ran here)")
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


def _engine_options(args, merger) -> None:
    """--engine/--address/--workers over what the recipe's [engine] table said."""
    if args.address or args.workers:
        merger.engine = "dask" if args.engine is None else args.engine
    if args.engine:
        merger.engine = args.engine
    merger.address = args.address or merger.address
    merger.workers = args.workers or merger.workers


def _tasks(args):
    from .runtime.tasks import open_tasks

    return open_tasks(args.engine, args.address, args.workers, args.quiet)


def _unreadable(errors: list[str], total: int) -> None:
    """Per-file read errors of a chunked run: one warning line per file, then how many have no row."""
    for error in errors:
        print(f"onnxmerge: warning: {error.rstrip('.')}; skipped.", file=sys.stderr)
    if errors:
        print(f"onnxmerge: warning: {len(errors)} of {total} images could not be read and have no prediction.",
              file=sys.stderr)


def _predict(args) -> int:
    from .io.images import list_images, read_images
    from .predict import ZModel, predict_files, write_predictions

    z = ZModel(args.model, quiet=args.quiet, chunk=args.chunk)
    files = list_images(args.images)
    if args.out or args.engine == "dask" or args.address:
        # chunked: in this process (--out only) or on a cluster; unreadable files are reported and skipped
        tasks = _tasks(args)
        try:
            if args.out:
                written = write_predictions(z, files, tasks, args.out, args.probabilities)
                _unreadable(written.errors, len(files))
                print(f"wrote {written.rows} predictions of {len(files)} images to {written.path} "
                      f"({written.parts} parquet parts)")
                return 0
            errors, rows = [], []
            for chunk in predict_files(z, files, tasks):
                errors += chunk.errors
                for file, label, probability in chunk.rows:
                    if args.json:
                        rows.append({"file": file, "label": label, "probability": probability})
                    else:
                        print(f"{file}\t{label}\t{probability:.4f}", flush=False)
        finally:
            tasks.close()
        if args.json:
            print(json.dumps(rows, indent=2))
        _unreadable(errors, len(files))
        if len(errors) == len(files):
            raise OnnxMergeError(f"none of the {len(files)} images could be read; check the files.")
        return 0
    if args.probabilities:
        raise OnnxMergeError("--probabilities is a column of --out's Parquet file; add --out PREDICTIONS.parquet.")
    images = read_images(files, z.input)
    labels, probs = z.predict(images)
    rows = [{"file": f, "label": str(label), "probability": float(p.max())} for f, label, p in zip(files, labels, probs)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['file']}\t{row['label']}\t{row['probability']:.4f}")
    return 0


def _evaluate(args) -> int:
    from .io.images import load_labelled
    from .evaluate import evaluate_predictions, write_report
    from .predict import ZModel

    z = ZModel(args.model, quiet=args.quiet, chunk=args.chunk)
    if args.engine == "dask" or args.address:
        result = _evaluate_chunked(args, z)
    else:
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


def _evaluate_chunked(args, z) -> dict:
    """Evaluate on a cluster: chunks of a labelled folder (read by the workers) or of an .npz's images;
    only confusion counts come back."""
    from .evaluate import evaluation_from_confusion, evaluation_labels
    from .io.images import list_labelled, load_labelled
    from .predict import evaluate_files

    if Path(args.data).is_file():
        data = load_labelled(args.data, z.input)
        items, truths = data.x, [str(v) for v in data.y]
    else:
        items, truths = list_labelled(args.data)
    labels = evaluation_labels(truths, z.labels)
    tasks = _tasks(args)
    try:
        matrix, errors = evaluate_files(z, items, truths, tasks, labels)
    finally:
        tasks.close()
    _unreadable(errors, len(truths))
    if not matrix.sum():
        raise OnnxMergeError(f"none of the {len(truths)} images of {args.data} could be read; check the files.")
    return evaluation_from_confusion(matrix, labels, z.labels)


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quiet=args.quiet)
    return 0


def engine_options(sub: argparse.ArgumentParser, chunk: bool = False) -> None:
    """--engine, --address, --workers (and --chunk): where the sources or Z run."""
    if chunk:
        sub.add_argument("--chunk", type=int, default=1024, metavar="N", help="images per task (default 1024, fewer "
                         "for large images: 16 MB of pixels at most); smaller chunks spread a run over more workers")
    sub.add_argument("--engine", choices=["local", "dask"], help="local: this process (default); dask: a Dask "
                     "cluster (the extra onnxmerge[dask]); a recipe's [engine] table may also name it")
    sub.add_argument("--address", metavar="ADDR", help="the Dask scheduler (tcp://HOST:8786); implies --engine dask; "
                     "without it a LocalCluster on 127.0.0.1 starts, one worker per core")
    sub.add_argument("--workers", type=int, metavar="N", help="worker processes of that LocalCluster (default: one "
                     "per core)")


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
    engine_options(sub)
    sub = command("predict", _predict, "classify image files with Z")
    sub.add_argument("model")
    sub.add_argument("images", nargs="+", metavar="SOURCE",
                     help="image files, folders (recursive), globs or fsspec URLs of them")
    sub.add_argument("--json", action="store_true")
    sub.add_argument("--out", metavar="PREDICTIONS.parquet", help="write a Parquet dataset (one part file per "
                     "chunk: file, label, probability) instead of printing; needs the extra onnxmerge[dask]")
    sub.add_argument("--probabilities", action="store_true", help="with --out: also every class's probability")
    engine_options(sub, chunk=True)
    sub = command("evaluate", _evaluate, "accuracy, per-class recall and confusion matrix of Z on a labelled folder")
    sub.add_argument("model")
    sub.add_argument("data", help="labelled folder (one sub-folder per class) or .npz with x and y")
    sub.add_argument("--json", action="store_true")
    sub.add_argument("--report", metavar="OUTDIR", help="also write confusion.png and report.html here")
    engine_options(sub, chunk=True)
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
