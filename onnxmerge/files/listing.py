"""Where images are: listing image files, folders, globs and fsspec URLs, and a labelled folder's classes,
without reading any image."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..errors import OnnxMergeError
from ..safety import check_labels, printable
from ..version import install_extra_command

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def input_files(path: str | os.PathLike) -> list[Path]:
    """The files that loading ``path`` (a labelled folder, a pool folder or an ``.npz``) reads; used to refuse
    an output path that would replace one of them (``modelio.check_output_path``)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return [Path(f) for f in image_files(path)]


def image_files(folder: str | os.PathLike) -> list[str]:
    """The image files under ``folder``, sorted folder by folder, as strings (a Path per file cost a third of
    the time of listing 20,000 files)."""
    files: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return files


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://...``, ``file://...``) rather than a local path."""
    return "://" in str(location)


def list_images(sources: list[str]) -> list[str]:
    """Image files named by ``sources``: files, folders (searched recursively), globs, or fsspec URLs of any
    of these (``~`` expanded; a pattern the shell left alone, e.g. quoted, is expanded here). Folders and globs
    are listed in sorted order, so rows come out in a stable order."""
    files: list[str] = []
    for source in map(str, sources):
        if is_url(source):
            files += _list_url(source)
            continue
        source = os.path.expanduser(source)
        if glob.has_magic(source) and not os.path.exists(source):
            found = sorted(
                p
                for p in glob.glob(source, recursive=True)
                if os.path.isfile(p) and os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise OnnxMergeError(f"no file matches {source!r}; check the pattern.")
            files += found
        elif os.path.isdir(source):
            found = image_files(source)
            if not found:
                raise OnnxMergeError(f"{source} holds no images; add images or point to another folder.")
            files += found
        else:
            files.append(source)  # a file: read_image says if it is missing or unreadable
    return files


def _list_url(source: str) -> list[str]:
    try:
        import fsspec
    except ImportError:
        raise OnnxMergeError(
            f"reading {source} needs fsspec (the optional extra 'dask'); install it with: "
            f"{install_extra_command('dask')}"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(source)
        if glob.has_magic(path):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = fs.find(path)
        else:
            return [source]
    except (OSError, ValueError, ImportError) as exc:
        raise OnnxMergeError(f"cannot list {source} ({exc}); check the URL and its credentials.") from exc
    found = sorted(p for p in found if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES)
    if not found:
        raise OnnxMergeError(f"{source} holds no images; add images or point to another location.")
    return [fs.unstrip_protocol(p) for p in found]


def list_labelled(path: str | os.PathLike, pending: bool = False) -> tuple[list[str], list[str]]:
    """The files and labels of a labelled folder (one sub-folder per class), without reading the images.

    Top-level files and hidden sub-folders (``.none``, ``.skipped`` of the labelling page) are not classes.
    ``pending``: a folder without any class sub-folder yet gives no files instead of an error.
    """
    path = Path(path)
    if not path.is_dir():
        raise OnnxMergeError(f"labelled folder {path} does not exist; check the path.")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes and pending:
        return [], []
    if not classes:
        raise OnnxMergeError(f"{path} has no class sub-folders; put each class's images in a folder named after it.")
    files, labels = [], []
    for folder in classes:
        found = image_files(folder)
        if not found:
            raise OnnxMergeError(f"class folder {folder} holds no images; add images or remove the folder.")
        check_labels([folder.name], f"the class folder {printable(folder)}")
        files += found
        labels += [folder.name] * len(found)
    return files, labels


def unlabelled_note(path: Path) -> str | None:
    """The one note a labelled folder's images outside its class folders earn (None if there are none): its
    top-level images (``onnxmerge suggest`` puts them there to be labelled) and hidden sub-folders."""
    top = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    hidden = sorted(p.name + "/" for p in path.iterdir() if p.is_dir() and p.name.startswith("."))
    if not top and not hidden:
        return None
    parts = [f"{len(top)} top-level image{'s' * (len(top) != 1)} (not labelled yet)"] if top else []
    parts += [f"the hidden folder{'s' * (len(hidden) != 1)} {', '.join(hidden)}"] if hidden else []
    return (
        f"{printable(path)}: {' and '.join(parts)} ignored; a file counts once it is moved into "
        f"{printable(path)}/<label>/ (onnxmerge label {printable(path)})."
    )
