"""What each ``onnxmerge`` command does once its arguments are parsed (``cli`` parses them and handles every
ending): calls the library and prints through :func:`say`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .errors import OnnxMergeError, note, warn
from .safety import printable
from .summary import build_summary, quantization_lines, source_lines, z_lines


def inspect_command(args) -> int:
    """``inspect``: a model's inputs, outputs, labels and candidate feature tensors (or a comparison)."""
    from .files.models import load_model
    from .graph.inspect import describe

    if args.others:
        return _compare(args)
    info = describe(args.model, load_model(args.model))
    for warning in info["label_warnings"]:  # e.g. a labels metadata value that is not a list or dict
        warn(printable(warning))
    if args.json:
        say(json.dumps(info, indent=2, default=_json_text))
        return 0
    # names, labels and the producer come from the file: printed with control characters escaped
    p = printable
    say(f"{p(info['file'])}  ({info['size']:,} bytes, IR {info['ir_version']}, producer {p(info['producer']) or '?'})")
    say("opsets:  " + ", ".join(f"{p(d)} {v}" for d, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        for entry in info[kind]:
            say(f"{kind[:-1]:7}  {p(entry['name'])}  {p(entry['type'])}")
    if info["z"] is not None:
        say("\n".join(z_lines(info["z"])))
        for line in quantization_lines(info["quantization"]):
            say(printable(line))
        return 0
    if info["labels"]:
        labels = ", ".join(p(label) for label in info["labels"][:10])
        say(f"labels:  {len(info['labels'])}: {labels}{' ...' if len(info['labels']) > 10 else ''}")
    say(f"suggested feature: {p(info['suggested'])}\n  why: {p(info['reason'])}")
    for line in source_lines(info) + quantization_lines(info["quantization"]):
        say(printable(line))
    shown = info["candidates"] if args.all else info["candidates"][:10]
    say(f"candidates ({len(shown)} of {len(info['candidates'])}{'' if args.all else '; --all for every one'}):")
    for c in shown:
        say(f"  {'*' if c['suggested'] else ' '} {p(c['name'])}  shape {p(c['shape'])}  -> {p(c['op'])}")
    return 0


def _compare(args) -> int:
    """``inspect A.onnx B.onnx ...``: do the models share an architecture (can they be merged in weight space)?"""
    from .files.models import load_model
    from .graph.architecture import compare_files

    paths = [args.model, *args.others]
    match = compare_files(paths, [load_model(p) for p in paths])
    if args.json:
        say(json.dumps(match, indent=2))
    else:
        say(printable(match["line"]))
    return 0


def _json_text(value):
    """JSON for the odd values a hostile model's fields carry (bytes that are not UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def build_command(args) -> int:
    """``build``: Z from a recipe, written to ``-o``, and the build report."""
    from .files.listing import input_files
    from .files.models import model_files
    from .files.outputs import check_output_path
    from .merger import Merger
    from .recipe import load_recipe
    from .runtime.cache import default_cache_dir

    options = {"engine": args.engine, "address": args.address, "workers": args.workers, "cache_dir": args.cache}
    recipe = load_recipe(args.recipe, quiet=args.quiet, **options)
    check_output_path(args.output, read_files(recipe, model_files, input_files))
    # the feature cache: --no-cache, else --cache or the recipe's [cache] dir, else the default folder
    cache = None if args.no_cache else recipe.config.cache_dir or default_cache_dir()
    merger = Merger.from_config(dataclasses.replace(recipe.config, cache_dir=cache))
    try:
        merger.fit(recipe.train, unlabeled=recipe.unlabeled)
    finally:
        merger.close()  # the Dask cluster, if any: quantisation and parity run here
    if args.quantize:
        from .learn.quantize import quantize_build

        config, widths = merger.config(), merger.head_input_.widths(merger.widths_)
        quantized = quantize_build(merger.model_, config, merger.report_, widths, recipe.train, recipe.unlabeled)
        merger.model_, merger.quantize_ = quantized  # the setter drops Z's session; its lines: per source, why
        merger.report_["quantization"] = merger.quantize_.metadata()
        if merger.quantize_.accepted:  # the Z written is int8: its expected accuracy is the int8 one
            estimate = merger.quantize_.expected_accuracy()
            merger.report_["float_expected_accuracy"] = merger.report_.get("expected_accuracy")
            merger.report_["expected_accuracy"] = dict(estimate.as_dict(), line=estimate.line())
    merger.save(args.output)
    for line in merger.report_["data_notes"]:  # a train folder's images waiting for a label
        note(printable(line))
    # --json: the whole report (expected accuracy with per-class recall, source checks, pool counts, ...)
    report = dict(merger.report_, output=str(args.output))
    say(json.dumps(report, indent=2, default=_plain) if args.json else build_summary(merger, args.output))
    quantize = getattr(merger, "quantize_", None)
    for warning in merger.report_["warnings"] + [
        line.removeprefix("quantize: warning: ")
        for line in (quantize.lines if quantize is not None else [])
        if line.startswith("quantize: warning: ")
    ]:
        warn(printable(warning))
    return 0


def _plain(value):
    """numpy scalars and arrays in the build report, as JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def read_files(recipe, model_files, input_files) -> list[Path]:
    """Every file a build of ``recipe`` reads: the recipe, each source and its external data, each image or
    ``.npz`` of the training data and the pool. ``-o`` must be none of them (``io.models.check_output_path``)."""
    files = [recipe.path]
    for source in recipe.config.sources:
        files += model_files(source.model)
    for data in list(recipe.train or []) + ([recipe.unlabeled] if recipe.unlabeled is not None else []):
        files += input_files(data)
    return files


def _tasks(args):
    from .runtime.factory import open_tasks

    return open_tasks(args.engine, args.address, args.workers, args.quiet)


def _unreadable(errors: list[str], total: int) -> None:
    """Per-file read errors of a chunked run: one warning line per file, then how many have no row."""
    for error in errors:
        warn(f"{printable(error.rstrip('.'))}; skipped.")
    if errors:
        warn(f"{len(errors)} of {total} images could not be read and have no prediction.")


def predict_command(args) -> int:
    """Z on image files, chunk by chunk, here or on a cluster: the same rows, and the same handling of a file
    that cannot be read (one warning naming it, the run goes on; an error only if no image could be read)."""
    from .files.listing import list_images
    from .predict import ZModel, predict_files, write_predictions

    if args.probabilities and not args.out:
        raise OnnxMergeError("--probabilities is a column of --out's Parquet file; add --out PREDICTIONS.parquet.")
    z = ZModel(args.model, quiet=args.quiet, chunk=args.chunk)
    files = list_images(args.images)
    if args.unknown_to and (z.unknown is None or args.out):
        raise OnnxMergeError(
            f"--unknown-to needs a Z built with [head] unknown on (rebuild {printable(args.model)} with "
            'unknown = "auto").'
            if z.unknown is None
            else "--unknown-to copies the images Z prints as unknown; drop --out, or read the label column of --out."
        )
    tasks = _tasks(args)
    try:
        if args.out:
            written = write_predictions(z, files, tasks, args.out, args.probabilities)
            _unreadable(written.errors, len(files))
            parts = f"{written.parts} parquet part{'' if written.parts == 1 else 's'}"
            say(f"wrote {written.rows} predictions of {len(files)} images to {written.path} ({parts})")
            return 0
        errors, rows, unknown = [], [], []
        for chunk in predict_files(z, files, tasks):
            errors += chunk.errors
            for file, label, probability, *score in chunk.rows:  # score: Z's unknown_score, where it has one
                if label == "unknown" and score:
                    unknown.append(file)
                if args.json:  # json escapes control characters itself; undecodable file-name bytes as \udcXX
                    rows.append({"file": file, "label": label, "probability": probability})
                    rows[-1].update({"unknown_score": score[0]} if score else {})  # an extra key
                else:  # a TAB, newline or escape sequence in a name or label is escaped: always three fields
                    say(f"{printable(file)}\t{printable(label)}\t{probability:.4f}")
    finally:
        tasks.close()
    if errors and len(errors) == len(files):
        raise OnnxMergeError(_none_read(errors, len(files)))
    if args.json:
        say(json.dumps(rows, indent=2))
    _unreadable(errors, len(files))
    if args.unknown_to:
        from .rejection import copy_unknown

        copies = copy_unknown(unknown, args.unknown_to)
        print(f"onnxmerge: {len(copies)} images called unknown are in {printable(args.unknown_to)}", file=sys.stderr)
    return 0


def _none_read(errors: list[str], total: int) -> str:
    """The one sentence when no image of a run could be read: the error itself where there was one image."""
    if total == 1:
        return errors[0]
    return f"none of the {total} images could be read (first: {errors[0].rstrip('.')}); check the files."


def evaluate_command(args) -> int:
    """``evaluate``: Z's accuracy, per-class recall and confusion matrix on labelled data."""
    from .evaluate import REPORT_FILES, evaluate_predictions, write_report
    from .files.images import load_labelled
    from .files.listing import input_files
    from .files.models import model_files
    from .files.outputs import check_output_folder
    from .predict import ZModel
    from .rejection import rejection_report, report_lines

    scores = None
    if args.report:  # before any work: the folder can be made, and its files replace nothing the run reads
        check_output_folder(args.report, REPORT_FILES, model_files(args.model) + input_files(args.data), "--report")
    z = ZModel(args.model, quiet=args.quiet, chunk=args.chunk)
    if args.engine == "dask" or args.address:
        result = _evaluate_chunked(args, z)
    else:
        data = load_labelled(Path(args.data).expanduser(), z.input, "labelled data", "Z's input")
        out = z.run(data.x)
        # with the score, "unknown" is one of Z's answers: a column of the confusion matrix
        result = evaluate_predictions(data.y, out["label"], z.labels + (["unknown"] if z.unknown is not None else []))
        if z.unknown is not None:
            result["unknown"] = rejection_report(
                data.y, out["label"], out["probabilities"], z.labels, z.unknown.get("threshold")
            )
            scores = (data.y, out["unknown_score"], z.labels)
    title = f"{Path(args.model).name} on {Path(args.data).name}"
    written = write_report(result, args.report, title, scores) if args.report else []
    if args.json:
        say(json.dumps(result, indent=2))
        return 0
    say(f"accuracy {result['accuracy']:.4f} on {result['images']} images")
    say(f"{'class':20} {'recall':>7} {'support':>8}")
    for label, v in result["per_class"].items():
        say(f"{printable(label):20} {v['recall']:7.3f} {v['support']:8d}")
    if result["unknown_labels"]:
        say(f"labels Z does not know (counted as wrong): {', '.join(map(printable, result['unknown_labels']))}")
    for line in report_lines(result["unknown"]) if "unknown" in result else []:
        say(line)
    for path in written:
        say(f"wrote {printable(path)}")
    return 0


def _evaluate_chunked(args, z) -> dict:
    """Evaluate on a cluster: chunks of a labelled folder (read by the workers) or of an .npz's images;
    only confusion counts come back."""
    from .evaluate import evaluation_from_confusion, evaluation_labels
    from .files.images import load_labelled
    from .files.listing import list_labelled
    from .predict import evaluate_files

    if Path(args.data).is_file():
        data = load_labelled(args.data, z.input)
        items, truths = data.x, [str(v) for v in data.y]
    else:
        items, truths = list_labelled(args.data)
    answers = z.labels + (["unknown"] if z.unknown is not None else [])  # "unknown" is an answer: a column
    labels = evaluation_labels(truths, answers)
    tasks = _tasks(args)
    try:
        matrix, errors = evaluate_files(z, items, truths, tasks, labels)
    finally:
        tasks.close()
    _unreadable(errors, len(truths))
    if not matrix.sum():
        raise OnnxMergeError(f"none of the {len(truths)} images of {args.data} could be read; check the files.")
    return evaluation_from_confusion(matrix, labels, answers)


def suggest_command(args) -> int:
    """``suggest``: copy the pool images worth a label into a folder to label."""
    from .suggest import suggest, summary

    cache = None
    if not args.no_cache:
        from .runtime.cache import default_cache_dir

        cache = Path(args.cache) if args.cache else default_cache_dir()
    result = suggest(args.recipe, args.n, args.output, quiet=args.quiet, cache_dir=cache)
    for line in result.data_notes:
        note(printable(line))
    for line in summary(result):
        say(line)
    return 0


def label_command(args) -> int:
    """``label``: serve the labelling page for a suggest folder."""
    from .label import serve

    serve(Path(args.folder).expanduser(), port=args.port, announce=say)
    return 0


def demo_command(args) -> int:
    """``demo``: the whole story on the shipped Fashion-MNIST example."""
    from .demo import run_demo

    run_demo(Path(args.out), quiet=args.quiet)
    return 0


def say(text: str) -> None:
    """Print a line of the command's output to stdout; a closed or full stdout becomes :class:`StdoutFailed`."""
    try:
        print(text)
    except UnicodeEncodeError:  # a stdout that cannot encode a name or label (PYTHONIOENCODING=ascii)
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        say(text.encode(encoding, "backslashreplace").decode(encoding))
    except OSError as exc:
        raise StdoutFailed(exc) from None


class StdoutFailed(Exception):
    """Writing the output failed: the reader went away (EPIPE) or the disk it goes to is full."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error
