"""Read labelled image folders, unlabeled pools, single image files and ``.npz`` arrays as uint8 NHWC."""

from __future__ import annotations

import glob
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import OnnxMergeError
from ..graph.preprocess import ImageInput

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Dataset:
    """Images ``x`` (uint8 ``[N, H, W, C]``), labels ``y`` (strings, or None) and where each came from."""

    x: np.ndarray
    y: np.ndarray | None
    files: list[str]


def read_image(path: str | os.PathLike, image: ImageInput, data: BinaryIO | None = None) -> np.ndarray:
    """One image file as uint8 ``[H, W, C]``: converted to the input's channels, resized bilinearly.

    ``data``: the file's bytes already opened (an fsspec URL's), ``path`` then only names it in errors.
    """
    path = Path(path) if data is None else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else data) as img:
                mode = "L" if image.channels == 1 else "RGB"
                if img.mode in ("I;16", "I", "F"):
                    img = _wide_to_8bit(img, image.channels)
                elif img.mode != mode:
                    img = img.convert(mode)
                if img.size != (image.width, image.height):
                    img = img.resize((image.width, image.height), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise OnnxMergeError(f"image {path} does not exist; check the path.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OnnxMergeError(f"image {path} cannot be read ({exc}); remove or replace it.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OnnxMergeError(f"image {path} is too large to decode safely ({exc}); shrink or remove it.") from exc
    return array.reshape(image.height, image.width, image.channels)


def _wide_to_8bit(img: Image.Image, channels: int) -> Image.Image:
    """16-bit and float gray images: scale to 0..255 by the type's range rather than clipping."""
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I") and array.max() > 255 else max(array.max(), 1.0)
    gray = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return gray if channels == 1 else gray.convert("RGB")


def read_images(paths: list[str | os.PathLike], image: ImageInput, threads: int = 4) -> np.ndarray:
    """Decode many files in a thread pool (Pillow releases the GIL while decoding).

    With two cores or fewer the pool is skipped: on a 2-core machine decoding 1,800 28x28 PNGs took 395 ms in
    4 threads, 297 ms in a plain loop (small images are GIL-bound; benchmarks/speed.py case c).
    """
    if not paths:
        return np.zeros((0, *image.shape), np.uint8)
    threads = min(threads, (os.cpu_count() or 1) - 1)
    if threads <= 1:
        return np.stack([read_image(p, image) for p in paths])
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return np.stack(list(pool.map(lambda p: read_image(p, image), paths)))


def _image_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        files += [Path(root, n) for n in sorted(names) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return files


def _load_npz(path: Path, image: ImageInput, labelled: bool) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise OnnxMergeError(f"{path} has no array 'x'; an .npz needs x (uint8 [N, H, W, C]) and, if labelled, y.")
            x = data["x"]
            y = data["y"] if "y" in data else None
    except OnnxMergeError:
        raise
    except Exception as exc:
        raise OnnxMergeError(f"{path} is not a readable .npz file ({exc}); re-save it with numpy.savez.") from exc
    if x.dtype != np.uint8:
        raise OnnxMergeError(f"{path}: x has dtype {x.dtype}; store raw images as uint8 (0..255).")
    if x.ndim == 3 and image.channels == 1:
        x = x[..., None]
    expected = (image.height, image.width, image.channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise OnnxMergeError(f"{path}: x has shape {list(x.shape)}, expected [N, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}] as in the recipe's [input].")
    if labelled:
        if y is None:
            raise OnnxMergeError(f"{path} has no array 'y' of labels; add one or use it as an unlabeled pool.")
        if len(y) != len(x):
            raise OnnxMergeError(f"{path}: x has {len(x)} images but y has {len(y)} labels; they must match.")
        y = np.asarray([str(v) for v in y])
    if len(x) == 0:
        raise OnnxMergeError(f"{path} holds no images; give a file with at least one image.")
    return Dataset(x, y if labelled else None, [f"{path}[{i}]" for i in range(len(x))])


def load_labelled(path: str | os.PathLike, image: ImageInput) -> Dataset:
    """A labelled folder (one sub-folder per class, ImageFolder style) or an ``.npz`` with x and y."""
    path = Path(path)
    if not path.exists():
        raise OnnxMergeError(f"training data {path} does not exist; check the path.")
    if path.is_file():
        return _load_npz(path, image, labelled=True)
    files, labels = list_labelled(path)
    return Dataset(read_images(files, image), np.asarray(labels), files)


def load_unlabeled(path: str | os.PathLike, image: ImageInput) -> Dataset:
    """An unlabeled pool: a folder searched recursively (sub-folder names ignored) or an ``.npz`` with x."""
    path = Path(path)
    if not path.exists():
        raise OnnxMergeError(f"image pool {path} does not exist; check the path.")
    if path.is_file():
        return _load_npz(path, image, labelled=False)
    files = _image_files(path)
    if not files:
        raise OnnxMergeError(f"{path} holds no images; add images or point to another folder.")
    return Dataset(read_images(files, image), None, [str(f) for f in files])


def as_images(x, image: ImageInput, what: str) -> np.ndarray:
    """``x`` checked as uint8 ``[N, height, width, channels]`` images (the API's array form)."""
    array = np.asarray(x)
    if array.dtype != np.uint8 or array.ndim != 4 or tuple(array.shape[1:]) != image.shape:
        raise OnnxMergeError(f"{what} must be uint8 [N, {image.height}, {image.width}, {image.channels}], "
                             f"got {array.dtype} {list(array.shape)}.")
    if len(array) == 0:
        raise OnnxMergeError(f"{what} holds no images.")
    return array


def as_labelled(X, y, image: ImageInput) -> Dataset:
    """The API's labelled data: a folder or ``.npz`` path, a list of them (joined), or an array with ``y``."""
    if isinstance(X, (str, os.PathLike)):
        return load_labelled(X, image)
    if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, os.PathLike)) for p in X):
        parts = [load_labelled(p, image) for p in X]  # e.g. old classes + a new class's few images
        return Dataset(np.concatenate([d.x for d in parts]), np.concatenate([d.y for d in parts]),
                       [f for d in parts for f in d.files])
    x = as_images(X, image, "X")
    if y is None or len(y) != len(x):
        raise OnnxMergeError("y must hold one label per image of X.")
    return Dataset(x, np.asarray([str(v) for v in y]), [f"X[{i}]" for i in range(len(x))])


def as_pool(unlabeled, image: ImageInput) -> Dataset:
    """The API's unlabeled pool: a folder or ``.npz`` path, or a uint8 array."""
    if isinstance(unlabeled, (str, os.PathLike)):
        return load_unlabeled(unlabeled, image)
    x = as_images(unlabeled, image, "unlabeled")
    return Dataset(x, None, [f"unlabeled[{i}]" for i in range(len(x))])


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://...``, ``file://...``) rather than a local path."""
    return "://" in str(location)


def read_image_at(location: str, image: ImageInput) -> np.ndarray:
    """:func:`read_image` on a local path or an fsspec URL (fsspec comes with the extra ``onnxmerge[dask]``)."""
    if not is_url(location):
        return read_image(location, image)
    import fsspec

    try:
        with fsspec.open(location, "rb") as handle:
            data = io.BytesIO(handle.read())
    except FileNotFoundError:
        raise OnnxMergeError(f"image {location} does not exist; check the path.") from None
    except OSError as exc:
        raise OnnxMergeError(f"image {location} cannot be read ({exc}); check the URL and its credentials.") from exc
    return read_image(location, image, data)


def list_images(sources: list[str]) -> list[str]:
    """Image files named by ``sources``: files, folders (searched recursively), globs, or fsspec URLs of any
    of these. Folders and globs are listed in sorted order, so rows come out in a stable order."""
    files: list[str] = []
    for source in map(str, sources):
        if is_url(source):
            files += _list_url(source)
        elif glob.has_magic(source):
            found = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p)
                           and os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES)
            if not found:
                raise OnnxMergeError(f"no image file matches {source}; check the pattern.")
            files += found
        elif os.path.isdir(source):
            found = _image_files(Path(source))
            if not found:
                raise OnnxMergeError(f"{source} holds no images; add images or point to another folder.")
            files += [str(f) for f in found]
        else:
            files.append(source)  # a file: read_image says if it is missing or unreadable
    return files


def _list_url(source: str) -> list[str]:
    try:
        import fsspec
    except ImportError:
        raise OnnxMergeError(f"reading {source} needs fsspec; install the extra: pip install 'onnxmerge[dask]'.") from None
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


def list_labelled(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The files and labels of a labelled folder (one sub-folder per class), without reading the images."""
    path = Path(path)
    if not path.is_dir():
        raise OnnxMergeError(f"labelled folder {path} does not exist; check the path.")
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise OnnxMergeError(f"{path} has no class sub-folders; put each class's images in a folder named after it.")
    files, labels = [], []
    for folder in classes:
        found = _image_files(folder)
        if not found:
            raise OnnxMergeError(f"class folder {folder} holds no images; add images or remove the folder.")
        files += [str(f) for f in found]
        labels += [folder.name] * len(found)
    return files, labels
