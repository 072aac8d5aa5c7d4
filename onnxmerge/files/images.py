"""Read labelled image folders, unlabeled pools, single image files and ``.npz`` arrays as uint8 NHWC."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import OnnxMergeError
from ..graph.preprocess import ImageInput
from ..safety import check_labels, open_regular, printable
from .listing import image_files, is_url, list_images, list_labelled, unlabelled_note

#: The EXIF tag that says how a camera held the picture (1 = as stored).
ORIENTATION = 0x0112


@dataclass
class Dataset:
    """Images ``x`` (uint8 ``[N, H, W, C]``), labels ``y`` (strings, or None) and where each came from;
    ``notes``: what loading left out on purpose (a labelled folder's top-level files), for the build to say."""

    x: np.ndarray
    y: np.ndarray | None
    files: list[str]
    notes: list[str] = field(default_factory=list)


def read_image(path: str | os.PathLike, image: ImageInput, data: BinaryIO | None = None) -> np.ndarray:
    """One image file as uint8 ``[H, W, C]``, as a viewer shows it: EXIF orientation applied, converted to
    the input's channels, resized bilinearly.

    Only a regular file is opened (checked on the descriptor: a FIFO named ``x.png`` is refused, not waited
    on). A file of several frames (an animated GIF, PNG or WebP, a multi-page TIFF) is refused: which frame
    is "the image" is the user's choice, not onnxmerge's. ``data``: the file's bytes already opened (an
    fsspec URL's); ``path`` then only names it in errors.
    """
    path = Path(path) if data is None else path
    try:
        opened = open_regular(path, "image") if data is None else contextlib.nullcontext(data)
        with warnings.catch_warnings(), opened as handle:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as img:
                frames = getattr(img, "n_frames", 1) if getattr(img, "is_animated", False) else 1
                if frames > 1:
                    raise OnnxMergeError(
                        f"image {printable(path)} has {frames} frames (an animation or a multi-page "
                        "file); save the frame to use as a single image."
                    )
                array = pil_image(img, image)
    except UnidentifiedImageError as exc:  # its message names the open file object, not the file
        raise OnnxMergeError(
            f"image {printable(path)} cannot be read (not an image format Pillow can decode); remove or replace it."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise OnnxMergeError(
            f"image {printable(path)} cannot be read ({printable(exc)}); remove or replace it."
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OnnxMergeError(
            f"image {printable(path)} is too large to decode safely ({exc}); shrink or remove it."
        ) from exc
    return array


def _wide_to_8bit(img: Image.Image, channels: int) -> Image.Image:
    """16-bit and float gray images: scale to 0..255 by the type's range rather than clipping."""
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I") and array.max() > 255 else max(array.max(), 1.0)
    gray = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return gray if channels == 1 else gray.convert("RGB")


def read_images(paths: list[str | os.PathLike], image: ImageInput, threads: int = 4) -> np.ndarray:
    """Decode many files into one preallocated uint8 array, in a thread pool (Pillow releases the GIL).

    Each image is written into its row as it is decoded, so a pool costs its pixels once (stacking a list of
    decoded images held every image twice at the peak). With two cores or fewer the pool is skipped: on a
    2-core machine decoding 1,800 28x28 PNGs took 395 ms in 4 threads, 297 ms in a plain loop (small images
    are GIL-bound; benchmarks/speed/cases.py case c).
    """
    out = np.empty((len(paths), *image.shape), np.uint8)
    if not paths:
        return out

    def decode(index: int) -> None:
        out[index] = read_image(paths[index], image)

    threads = min(threads, (os.cpu_count() or 1) - 1)
    if threads <= 1:
        for index in range(len(paths)):
            decode(index)
        return out
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for _ in pool.map(decode, range(len(paths))):
            pass
    finally:  # an error or Ctrl-C: drop the queued images instead of decoding them all first
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _load_npz(path: Path, image: ImageInput, labelled: bool, expected_by: str = "the recipe's [input]") -> Dataset:
    try:
        with open_regular(path, "data file") as handle, np.load(handle, allow_pickle=False) as data:
            if "x" not in data:
                raise OnnxMergeError(
                    f"{path} has no array 'x'; an .npz needs x (uint8 [N, H, W, C]) and, if labelled, y."
                )
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
        raise OnnxMergeError(
            f"{path}: x has shape {list(x.shape)}, expected [N, {expected[0]}, {expected[1]}, "
            f"{expected[2]}] as in {expected_by}."
        )
    if labelled:
        if y is None:
            raise OnnxMergeError(f"{path} has no array 'y' of labels; add one or use it as an unlabeled pool.")
        if len(y) != len(x):
            raise OnnxMergeError(f"{path}: x has {len(x)} images but y has {len(y)} labels; they must match.")
        y = np.asarray([str(v) for v in y])
        check_labels(y, f"the labels y of {printable(path)}")
    if len(x) == 0:
        raise OnnxMergeError(f"{path} holds no images; give a file with at least one image.")
    return Dataset(x, y if labelled else None, [f"{path}[{i}]" for i in range(len(x))])


def load_labelled(
    path: str | os.PathLike,
    image: ImageInput,
    what: str = "training data",
    expected_by: str = "the recipe's [input]",
    pending: bool = False,
) -> Dataset:
    """A labelled folder (one sub-folder per class, ImageFolder style) or an ``.npz`` with x and y.

    ``what`` names the data in messages; ``expected_by`` says where its image size comes from ("Z's input"
    when evaluating a built Z, where there is no recipe). With ``pending`` (a build's train folder), a folder
    of ``onnxmerge suggest``'s images that nobody has labelled yet is an empty Dataset rather than an error.
    """
    path = Path(path)
    if not path.exists():
        raise OnnxMergeError(f"{what} {printable(path)} does not exist; check the path.")
    if not path.is_dir():  # an .npz; a FIFO or device in its place is refused when opened
        return _load_npz(path, image, labelled=True, expected_by=expected_by)
    note = unlabelled_note(path)
    files, labels = list_labelled(path, pending=pending and note is not None)
    return Dataset(read_images(files, image), np.asarray(labels, dtype=str), files, [note] if note else [])


@dataclass(frozen=True)
class ImageFiles:
    """A folder's images, read only where they are used: a cluster build's pool, which the workers read
    chunk by chunk, so the pixels never pass through (or pile up in) the building process.

    Indexing gives the subset (still files); ``np.asarray`` decodes (``read_images``). ``load`` is the
    picklable function a worker decodes a chunk of ``files`` with.
    """

    files: list[str]
    image: ImageInput
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.image.shape)

    def __getitem__(self, index) -> ImageFiles:
        if isinstance(index, slice):
            return ImageFiles(self.files[index], self.image)
        index = np.asarray(index)
        picked = np.flatnonzero(index) if index.dtype == bool else index.reshape(-1)
        return ImageFiles([self.files[i] for i in picked], self.image)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = read_images(self.files, self.image)
        return x if dtype is None else x.astype(dtype)

    def chunks(self, rows: int) -> list[list[str]]:
        return [self.files[start : start + rows] for start in range(0, len(self.files), rows)]

    @property
    def load(self):
        return functools.partial(read_images, image=self.image, threads=1)


def load_unlabeled(path: str | os.PathLike, image: ImageInput, lazy: bool = False) -> Dataset:
    """An unlabeled pool: a folder searched recursively (sub-folder names ignored) or an ``.npz`` with x.
    With ``lazy``, a folder's images are not read here (``ImageFiles``)."""
    path = Path(path)
    if not path.exists():
        raise OnnxMergeError(f"image pool {path} does not exist; check the path.")
    if not path.is_dir():  # an .npz; a FIFO or device in its place is refused when opened
        return _load_npz(path, image, labelled=False)
    files = image_files(path)
    if not files:
        raise OnnxMergeError(f"{path} holds no images; add images or point to another folder.")
    return Dataset(ImageFiles(files, image) if lazy else read_images(files, image), None, files)


def decoded(images) -> np.ndarray:
    """``images`` as a uint8 array (``ImageFiles`` read here, an array as it is)."""
    return images if isinstance(images, np.ndarray) else np.asarray(images)


def as_images(X, image: ImageInput, what: str = "X") -> np.ndarray:
    """What a user hands the Python API, as uint8 ``[N, H, W, C]``: an array of images (or a single image
    ``[H, W, C]`` / ``[H, W]``), an image file, a folder (searched recursively), a PIL image, or a list of
    files and PIL images (each converted and resized as ``read_image`` does). Anything else, a float array
    or a wrong size, is a sentence saying what is expected."""
    expected = f"uint8 [N, {image.height}, {image.width}, {image.channels}]"
    if isinstance(X, (str, os.PathLike)):
        X = list_images([os.fspath(X)])
    if isinstance(X, Image.Image):
        X = [X]
    if isinstance(X, (list, tuple)) and X and all(isinstance(v, (str, os.PathLike, Image.Image)) for v in X):
        return np.concatenate(
            [
                pil_image(item, image)[None]
                if isinstance(item, Image.Image)
                else read_images(list_images([os.fspath(item)]), image)
                for item in X
            ]
        )
    try:
        x = np.asarray(X)
    except Exception:
        x = None
    if x is None or x.dtype == object:
        raise OnnxMergeError(
            f"{what} must be images: {expected}, image files, a folder or PIL images; got {type(X).__name__}."
        )
    if x.dtype != np.uint8:
        hint = (
            " (convert with (x * 255).round().astype(np.uint8) if it holds 0..1 values; Z applies each "
            "source's scale/mean/std itself)"
            if x.dtype.kind == "f"
            else ""
        )
        raise OnnxMergeError(f"{what} has dtype {x.dtype}; Z takes raw images, {expected}{hint}.")
    if x.ndim == 2 and image.channels == 1 and x.shape == (image.height, image.width):
        x = x[None, ..., None]
    elif x.ndim == 3 and tuple(x.shape) == image.shape:
        x = x[None]
    elif x.ndim == 3 and image.channels == 1 and tuple(x.shape[1:]) == (image.height, image.width):
        x = x[..., None]
    if x.ndim != 4 or tuple(x.shape[1:]) != image.shape:
        raise OnnxMergeError(
            f"{what} has shape {list(x.shape)}; Z takes {expected} (resize the images, or pass "
            "their files and onnxmerge resizes them)."
        )
    return x


def pil_image(img: Image.Image, image: ImageInput) -> np.ndarray:
    """A PIL image as uint8 ``[H, W, C]``, converted and resized exactly as ``read_image`` does a file."""
    if img.getexif().get(ORIENTATION, 1) != 1:  # a phone photo stored sideways, shown upright
        img = ImageOps.exif_transpose(img)
    mode = "L" if image.channels == 1 else "RGB"
    if img.mode in ("I;16", "I", "F"):
        img = _wide_to_8bit(img, image.channels)
    elif img.mode != mode:
        img = img.convert(mode)
    if img.size != (image.width, image.height):
        img = img.resize((image.width, image.height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(image.height, image.width, image.channels)


def _some(x: np.ndarray, what: str) -> np.ndarray:
    if len(x) == 0:
        raise OnnxMergeError(f"{what} holds no images.")
    return x


def as_labelled(X, y, image: ImageInput) -> Dataset:
    """The API's labelled data: a folder or ``.npz`` path, a list of them (joined), or an array with ``y``."""
    if isinstance(X, (str, os.PathLike)):
        return load_labelled(X, image, pending=True)
    if y is None and isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, os.PathLike)) for p in X):
        parts = [load_labelled(p, image, pending=True) for p in X]  # e.g. old classes + a new class's few images
        return Dataset(
            np.concatenate([d.x for d in parts]),
            np.concatenate([d.y for d in parts]),
            [f for d in parts for f in d.files],
            [n for d in parts for n in d.notes],
        )
    x = _some(as_images(X, image, "X"), "X")
    if y is None or len(y) != len(x):
        raise OnnxMergeError("y must hold one label per image of X.")
    return Dataset(x, np.asarray([str(v) for v in y]), [f"X[{i}]" for i in range(len(x))])


def as_pool(unlabeled, image: ImageInput, lazy: bool = False) -> Dataset:
    """The API's unlabeled pool: a folder or ``.npz`` path, or a uint8 array (``lazy``: ``load_unlabeled``)."""
    if isinstance(unlabeled, (str, os.PathLike)):
        return load_unlabeled(unlabeled, image, lazy)
    x = _some(as_images(unlabeled, image, "unlabeled"), "unlabeled")
    return Dataset(x, None, [f"unlabeled[{i}]" for i in range(len(x))])


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
