"""Data of the "unknown" benchmarks (``benchmarks.unknown.families``, ``benchmarks.unknown.measure``).

A clothes Z (Fashion-MNIST minus one held-out class) or a digits Z (scikit-learn digits at 28x28), K = 2 or
3 teachers trained on disjoint classes (``benchmarks.common.teacher``: PyTorch CNNs and scikit-learn MLPs,
alternating). Per setup and seed: the teachers' training images, a reserve the teachers never saw (labelled
images and the pool are drawn from it) and, for ``part = "tune"``, a validation part of that reserve as
"known" test images, for ``part = "test"`` the test split. Junk, split in two halves by index parity
(even: tune, odd: test):

- far: digits (in a clothes Z), clothes (in a digits Z), uniform and smoothed noise, faces
  (scikit-image's LFW subset), patches of scikit-image's photographs;
- near (clothes Z only): the held-out Fashion-MNIST class, from the training split's reserve (tune) or
  the test split (test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import CLASSES, digits_28, read_split, teacher

HELD_OUT = "Bag"  # the near junk: no teacher and no label has it
CLOTHES = [c for c in CLASSES if c != HELD_OUT]
DIGITS = [f"digit_{d}" for d in range(10)]
SETUPS = {
    "clothes-k2": [CLOTHES[:5], CLOTHES[5:]],
    "clothes-k3": [CLOTHES[:3], CLOTHES[3:6], CLOTHES[6:]],
    "digits-k2": [DIGITS[:5], DIGITS[5:]],
    "digits-k3": [DIGITS[:4], DIGITS[4:7], DIGITS[7:]],
}
TRAIN_PER_CLASS = 1000
KNOWN_TEST = 1000  # known images scored per setup and seed (digits: what is left, ~300)


def _gray28(images: np.ndarray) -> np.ndarray:
    """float or uint8 2-D images -> uint8 [N, 28, 28, 1] (bilinear)."""
    out = []
    for im in images:
        im = np.asarray(im)
        if im.dtype != np.uint8:
            im = np.clip(np.round(255 * (im - im.min()) / max(np.ptp(im), 1e-9)), 0, 255).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)))
    return np.stack(out)[..., None]


def noise(n: int, seed: int = 7) -> np.ndarray:
    """Half uniform noise, half smoothed noise (blobs) rescaled to 0..255."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    uniform = rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8)
    blobs = [gaussian_filter(rng.normal(size=(28, 28)), sigma=rng.uniform(1.5, 4)) for _ in range(n - n // 2)]
    both = np.concatenate([_gray28(uniform), _gray28(blobs)])
    return both[np.argsort(rng.random(len(both)))]


def faces() -> np.ndarray:
    """scikit-image's 200 LFW faces (25x25), as 28x28 uint8."""
    from skimage.data import lfw_subset

    return _gray28(lfw_subset())


def photos(n: int = 400, seed: int = 7) -> np.ndarray:
    """Random square patches (32-160 px) of scikit-image's photographs, gray, 28x28."""
    from skimage import color, data

    names = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "brick", "grass", "gravel"]
    images = []
    for name in names:
        im = getattr(data, name)()
        images.append(color.rgb2gray(im) if im.ndim == 3 else im / 255.0)
    rng = np.random.default_rng(seed)
    patches = []
    for i in range(n):
        im = images[i % len(images)]
        size = int(rng.integers(32, min(161, *im.shape)))
        r, c = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        patches.append((im[r : r + size, c : c + size] * 255).astype(np.uint8))
    return _gray28(patches)


class Data:
    """Fashion-MNIST, digits and the far-junk sets, loaded once."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        self.xtr, self.ytr = read_split("train")
        self.xte, self.yte = read_split("t10k")
        self.digits, self.ydigits = digits_28(), np.asarray(DIGITS)[load_digits().target]
        self.far_common = {"noise": noise(600), "faces": faces(), "photos": photos()}


def half(x: np.ndarray, part: str) -> np.ndarray:
    return x[0::2] if part == "tune" else x[1::2]


class Setup:
    """One setup and seed: teachers (trained once, cached in ``work``), reserve, known test images, junk."""

    def __init__(self, name: str, seed: int, part: str, data: Data, work: Path) -> None:
        self.name, self.seed, self.part = name, seed, part
        self.split = SETUPS[name]
        rng = np.random.default_rng(seed)
        union = [c for own in self.split for c in own]
        if name.startswith("clothes"):
            train_idx = rng.permutation(np.flatnonzero(np.isin(data.ytr, union)))
            reserve, teach = train_idx[:6000], train_idx[6000:]
            x_teach, y_teach = data.xtr[teach], data.ytr[teach]
            self.x_res, self.y_res = data.xtr[reserve[:5000]], data.ytr[reserve[:5000]]
            if part == "tune":
                self.x_known, self.y_known = data.xtr[reserve[5000:]], data.ytr[reserve[5000:]]
                near = np.flatnonzero(data.ytr == HELD_OUT)
                self.near = data.xtr[rng.choice(near, 500, replace=False)]
            else:
                test = rng.choice(np.flatnonzero(np.isin(data.yte, union)), KNOWN_TEST, replace=False)
                self.x_known, self.y_known = data.xte[test], data.yte[test]
                self.near = data.xte[data.yte == HELD_OUT][:500]
            self.far = {"digits": half(data.digits, part)}
        else:
            perm = rng.permutation(len(data.digits))
            teach, reserve, known = perm[:900], perm[900:1450], perm[1450:]
            if part == "tune":  # the tuning seeds' known images are a validation part of the reserve
                reserve, known = perm[900:1300], perm[1300:1450]
            x_teach, y_teach = data.digits[teach], data.ydigits[teach]
            self.x_res, self.y_res = data.digits[reserve], data.ydigits[reserve]
            self.x_known, self.y_known = data.digits[known], data.ydigits[known]
            self.near = None
            clothes = data.xtr[:2000] if part == "tune" else data.xte[:2000]
            self.far = {"clothes": clothes[rng.choice(len(clothes), 1000, replace=False)]}
        self.far.update({k: half(v, part) for k, v in data.far_common.items()})
        self.sources = self._teachers(x_teach, y_teach, rng, work)

    def _teachers(self, x: np.ndarray, y: np.ndarray, rng, work: Path) -> list[dict]:
        sources = []
        for i, labels in enumerate(self.split):
            fw = "torch" if i % 2 == 0 or len(labels) < 3 else "sklearn"

            def training(labels=labels):
                n = [min(TRAIN_PER_CLASS, int(np.sum(y == c))) for c in labels]
                pick = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c, k in zip(labels, n)])
                return x[pick], y[pick]

            path = work / f"unknown_{self.name}_seed{self.seed}_{i}_{fw}.onnx"
            sources.append(teacher(f"s{i}_{fw}", fw, labels, self.seed, path, training))
        return sources

    def labelled(self, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        """``per_class`` labelled images of every union class from the reserve's first half."""
        rng = np.random.default_rng(20_000 + self.seed)
        half_ = len(self.y_res) // 2
        idx = np.concatenate(
            [
                rng.choice(mine, min(per_class, len(mine)), replace=False)
                for mine in (np.flatnonzero(self.y_res[:half_] == c) for c in np.unique(self.y_res))
            ]
        )
        return self.x_res[idx], self.y_res[idx]

    def pool(self, n: int) -> np.ndarray:
        """``n`` unlabeled images from the reserve's second half."""
        rng = np.random.default_rng(30_000 + self.seed)
        half_ = len(self.y_res) // 2
        return self.x_res[half_ + rng.choice(len(self.y_res) - half_, min(n, len(self.y_res) - half_), replace=False)]
