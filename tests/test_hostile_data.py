"""Hostile and odd image data: converted where it is an image, refused in one sentence where it is not."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from onnxmerge.errors import OnnxMergeError
from onnxmerge.files.images import load_labelled, load_unlabeled, read_image
from onnxmerge.graph.preprocess import ImageInput

GRAY = ImageInput(8, 8, 1)
RGB = ImageInput(8, 8, 3)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge image (a decompression bomb never gets decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "cannot be read"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", "cannot be read"),
        (b"GIF89a garbage", "cannot be read"),
    ],
    ids=["zero-byte", "truncated-png", "bad-gif"],
)
def test_unreadable_images(tmp_path, content, expected):
    path = tmp_path / "img.png"
    path.write_bytes(content)
    with pytest.raises(OnnxMergeError, match=expected):
        read_image(path, GRAY)


def test_decompression_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(OnnxMergeError, match="too large to decode safely"):
        read_image(path, GRAY)


@pytest.mark.parametrize("mode", ["I;16", "P", "CMYK", "LA", "RGBA", "1", "F"])
def test_other_image_modes_are_converted(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (12, 10), dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.random((12, 10), dtype=np.float32) * 255.0)
    else:
        img = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("img.tiff" if mode in ("CMYK", "F", "I;16") else "img.png")
    img.save(path)
    for image in (GRAY, RGB):
        array = read_image(path, image)
        assert array.shape == (8, 8, image.channels) and array.dtype == np.uint8


def test_sixteen_bit_keeps_its_range(tmp_path):
    """A 16-bit image is scaled to 8 bits, not clipped to white."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(path)
    assert abs(int(read_image(path, GRAY).mean()) - 128) <= 1


def test_empty_folder(tmp_path):
    with pytest.raises(OnnxMergeError, match="no class sub-folders"):
        load_labelled(tmp_path, GRAY)
    with pytest.raises(OnnxMergeError, match="holds no images"):
        load_unlabeled(tmp_path, GRAY)


def test_symlink_loop_is_not_followed(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "cat" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "dog" / "b.png")
    os.symlink(tmp_path, tmp_path / "cat" / "loop")
    data = load_labelled(tmp_path, GRAY)
    assert list(data.y) == ["cat", "dog"]


@pytest.mark.parametrize(
    "arrays,expected",
    [
        ({"x": np.zeros((3, 8, 8, 1), np.float32), "y": np.array(["a", "b", "c"])}, "dtype float32"),
        ({"x": np.zeros((3, 9, 8, 1), np.uint8), "y": np.array(["a", "b", "c"])}, "expected \\[N, 8, 8, 1\\]"),
        ({"y": np.array(["a"])}, "no array 'x'"),
        ({"x": np.zeros((3, 8, 8, 1), np.uint8)}, "no array 'y'"),
        ({"x": np.zeros((0, 8, 8, 1), np.uint8), "y": np.array([], str)}, "holds no images"),
    ],
)
def test_bad_npz(tmp_path, arrays, expected):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(OnnxMergeError, match=expected):
        load_labelled(path, GRAY)


def test_npz_with_pickled_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.zeros((1, 8, 8, 1), np.uint8), y=np.array([{"a": 1}], dtype=object))
    with pytest.raises(OnnxMergeError, match="not a readable .npz"):
        load_labelled(path, GRAY)


# -- images as a viewer shows them (issue 17) ---------------------------------------------------------------
def upright_and_sideways(tmp_path, suffix):
    """An upright 8 wide x 16 high picture (white top, black bottom) stored rotated, with EXIF orientation 6
    (rotate 90 degrees clockwise to display) as phone cameras write it."""
    upright = np.zeros((16, 8), np.uint8)
    upright[:8] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 16 wide x 8 high on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"photo{suffix}"
    stored.save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    array = read_image(upright_and_sideways(tmp_path, suffix), ImageInput(16, 8, 1))[..., 0]
    assert array[:8].mean() > 240 and array[8:].mean() < 15  # the top is white, as every viewer shows it


@pytest.mark.parametrize("suffix", [".gif", ".tiff"])
def test_multi_frame_files_are_refused(tmp_path, suffix):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 128, 255)]
    path = tmp_path / f"many{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(OnnxMergeError, match="has 3 frames .*save the frame to use as a single image"):
        read_image(path, GRAY)


def test_a_fifo_image_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(OnnxMergeError, match="x.png is a FIFO"):
        read_image(tmp_path / "x.png", GRAY)
    with pytest.raises(OnnxMergeError, match="is a character device"):
        read_image("/dev/zero", GRAY)
