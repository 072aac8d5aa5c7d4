"""The ``onnxmerge`` command line: parses arguments, calls the library, prints; never a traceback."""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys

from . import signals
from .commands import (
    StdoutFailed,
    build_command,
    demo_command,
    evaluate_command,
    inspect_command,
    label_command,
    predict_command,
    suggest_command,
)
from .errors import OnnxMergeError
from .safety import printable
from .summary import build_summary, quantization_lines, source_lines, z_lines  # noqa: F401  (also the API of build's report)
from .version import __version__


def engine_options(sub: argparse.ArgumentParser, chunk: bool = False) -> None:
    """--engine, --address, --workers (and --chunk): where the sources or Z run."""
    if chunk:
        sub.add_argument(
            "--chunk",
            type=int,
            default=1024,
            metavar="N",
            help="images per task (default 1024, fewer "
            "for large images: 16 MB of pixels at most); smaller chunks spread a run over more workers",
        )
    sub.add_argument(
        "--engine",
        choices=["local", "dask"],
        help="local: this process (default); dask: a Dask "
        "cluster (the optional extra 'dask': pip install -e '.[dask]' in a clone); a recipe's [engine] table may "
        "also name it",
    )
    sub.add_argument(
        "--address",
        metavar="ADDR",
        help="the Dask scheduler (tcp://HOST:8786); implies --engine dask; "
        "without it a LocalCluster on 127.0.0.1 starts, one worker per core",
    )
    sub.add_argument(
        "--workers", type=int, metavar="N", help="worker processes of that LocalCluster (default: one per core)"
    )


def cache_options(sub: argparse.ArgumentParser) -> None:
    """--cache / --no-cache: where the sources' features are cached."""
    cache = sub.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache",
        metavar="DIR",
        help="feature cache folder (default: a recipe's [cache] dir, else $ONNXMERGE_CACHE_DIR or "
        "~/.cache/onnxmerge); a rebuild with a changed head does not run the sources again",
    )
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")


def _build_arguments(sub: argparse.ArgumentParser) -> None:
    """The arguments of ``build``."""
    sub.add_argument("recipe")
    sub.add_argument("-o", "--output", required=True, help="where to write Z (.onnx)")
    cache_options(sub)
    sub.add_argument(
        "--json",
        action="store_true",
        help="print the build report as JSON (expected accuracy with "
        "per-class recall, source checks, per-label pool counts, warnings) instead of the text summary",
    )
    sub.add_argument(
        "--quantize",
        action="store_true",
        help="int8 static QDQ quantisation calibrated on the training "
        "images; reports accuracy before/after and keeps the float Z where int8 is not faster",
    )
    engine_options(sub)


def _predict_arguments(sub: argparse.ArgumentParser) -> None:
    """The arguments of ``predict``."""
    sub.add_argument("model")
    sub.add_argument(
        "images", nargs="+", metavar="SOURCE", help="image files, folders (recursive), globs or fsspec URLs of them"
    )
    sub.add_argument("--json", action="store_true")
    sub.add_argument(
        "--out",
        metavar="PREDICTIONS.parquet",
        help="write a Parquet dataset (one part file per "
        "chunk: file, label, probability) instead of printing; needs the optional extra 'dask'",
    )
    sub.add_argument("--probabilities", action="store_true", help="with --out: also every class's probability")
    sub.add_argument(
        "--unknown-to",
        metavar="DIR",
        help="copy the images Z calls unknown into DIR (flat, created if missing) to sort into class folders "
        "for stage 2 (a Z built with [head] unknown on)",
    )
    engine_options(sub, chunk=True)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    main = argparse.ArgumentParser(
        prog="onnxmerge", description="Compose pretrained ONNX classifiers into one model Z."
    )
    main.add_argument("--version", action="version", version=f"onnxmerge {__version__}")
    commands = main.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        sub.set_defaults(func=func)
        return sub

    sub = command("inspect", inspect_command, "show a model's inputs, outputs, labels and candidate feature tensors")
    sub.add_argument("model")
    sub.add_argument(
        "others", nargs="*", metavar="MODEL", help="more models: say whether they share the first one's architecture"
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_argument("--all", action="store_true", help="list every candidate, not only the top ten")
    _build_arguments(command("build", build_command, "build Z from a TOML recipe"))
    _predict_arguments(command("predict", predict_command, "classify image files with Z"))
    sub = command(
        "evaluate", evaluate_command, "accuracy, per-class recall and confusion matrix of Z on a labelled folder"
    )
    sub.add_argument("model")
    sub.add_argument("data", help="labelled folder (one sub-folder per class) or .npz with x and y")
    sub.add_argument("--json", action="store_true")
    sub.add_argument("--report", metavar="OUTDIR", help="also write confusion.png and report.html here")
    engine_options(sub, chunk=True)
    sub = command("suggest", suggest_command, "pick pool images worth a label and copy them into a folder to label")
    sub.add_argument("recipe")
    sub.add_argument("-n", type=int, required=True, help="how many images to suggest")
    sub.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="the labelling folder (created if missing): the images are copied to its top level and listed in "
        "DIR/suggestions.csv; each moves into DIR/<label>/ once labelled, so DIR can be the recipe's train",
    )
    cache_options(sub)
    sub = command("label", label_command, "a labelling page for a suggest folder, served on 127.0.0.1 only")
    sub.add_argument("folder", metavar="DIR")
    sub.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    sub = command("demo", demo_command, "the whole story on the Fashion-MNIST example shipped in the repository")
    sub.add_argument("--out", default="demo-output", help="folder for Z files and reports (default: demo-output)")
    return main


def _detach_stdout() -> None:
    """Point the stdout descriptor at /dev/null, so the interpreter's last flush at exit finds nothing to fail on."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real descriptor (tests capture stdout in memory)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``onnxmerge`` console script: every ending is one line on stderr and an exit status.

    0 done; 2 a problem the user can fix (bad input, a full disk, out of memory); 128 + N stopped by
    signal N (SIGINT 130, SIGTERM 143, SIGHUP 129) after removing temporary files; 141 the reader of stdout
    went away (``onnxmerge inspect m.onnx --json | head``), silently, as a program killed by SIGPIPE.
    """
    args = parser().parse_args(argv)
    with signals.handled():
        try:
            code = args.func(args)
            try:
                sys.stdout.flush()
            except OSError as exc:
                raise StdoutFailed(exc) from None
            return code
        except OnnxMergeError as exc:
            return _error(str(exc))
        except signals.Interrupted as exc:
            print(
                f"onnxmerge: interrupted by {exc.name}; temporary files were removed, no output was left half-written.",
                file=sys.stderr,
            )
            return exc.status
        except KeyboardInterrupt:
            print(
                "onnxmerge: interrupted; temporary files were removed, no output was left half-written.",
                file=sys.stderr,
            )
            return 130
        except StdoutFailed as exc:
            _detach_stdout()
            if isinstance(exc.error, BrokenPipeError) or exc.error.errno == errno.EPIPE:
                return 128 + 13  # SIGPIPE's status; nothing to say, nobody reads it
            return _error(
                f"could not write the output to stdout ({exc.error.strerror or exc.error}); the command "
                "itself finished (files it writes were written), free space where stdout goes or redirect it."
            )
        except MemoryError:
            return _error("ran out of memory; use fewer or smaller images, or a machine with more memory.")
        except RecursionError:
            return _error(
                "an input is nested too deeply to process (a hostile or broken file); check the recipe "
                "and the model files."
            )
        except OSError as exc:  # the environment, late in a run: a full $TMPDIR, a file-size limit, a lost disk
            return _error(_os_error(exc))


def _error(message: str) -> int:
    print(f"onnxmerge: error: {printable(message)}", file=sys.stderr)
    return 2


def _os_error(exc: OSError) -> str:
    """One sentence for an OSError nothing closer to it turned into an OnnxMergeError."""
    where = f" at {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"a write failed{where} ({what}); free disk space (or raise the file-size limit), or set TMPDIR to "
            "a larger disk if it is the temporary folder, and run again."
        )
    return f"a file operation failed{where} ({what}); check free space and permissions, and run again."


if __name__ == "__main__":
    sys.exit(main())
