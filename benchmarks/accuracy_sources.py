"""Train and export the source classifiers that ``benchmarks/accuracy.py`` composes (needs torch + skl2onnx).

Fashion-MNIST's train split is shuffled with the seed and split into three disjoint parts: the sources'
training images (each source sees only its own classes), the unlabeled pool, and a labelled reserve the
few-shot and oracle rows draw their labels from (the pool's own labels are used for the oracle). Sources:

- ``torch``: a small CNN (PyTorch, legacy exporter, opset 17), input [N, 1, 28, 28], x/255 then (x-0.286)/0.353
- ``sklearn``: an MLP (skl2onnx, ZipMap kept), input flat [N, 784], x/255

Models are cached under ``--work`` per (seed, split) so a rerun only re-runs onnxmerge.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

FASHION = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
SOURCE_TRAIN_PER_CLASS = 2000  # enough for within-task accuracy near the reference (0.93 / 0.97)


def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28, 1] and label strings, from the Debian package's IDX files."""
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, np.asarray(CLASSES)[y]


def _train_torch(x: np.ndarray, y: np.ndarray, labels: list[str], seed: int, path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, len(labels)),
    )
    xt = torch.from_numpy(((x.astype(np.float32) / 255 - 0.286) / 0.353).transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(np.asarray([labels.index(v) for v in y]))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(4):
        for idx in torch.randperm(len(xt), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    torch.onnx.export(
        net,
        xt[:1],
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
    )


def _train_sklearn(x: np.ndarray, y: np.ndarray, labels: list[str], seed: int, path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    flat = x.reshape(len(x), -1).astype(np.float32) / 255
    mlp = MLPClassifier((128,), max_iter=40, random_state=seed).fit(flat, y)
    onx = to_onnx(mlp, flat[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())


TRAINERS = {"torch": _train_torch, "sklearn": _train_sklearn}
PREPROCESS = {
    "torch": {"scale": 1 / 255, "mean": [0.286], "std": [0.353]},
    "sklearn": {"scale": 1 / 255, "mean": [0.0], "std": [1.0], "height": 28, "width": 28, "channels": 1},
}


def make_sources(
    split: list[tuple[str, list[str]]], seed: int, work: Path, x: np.ndarray, y: np.ndarray, exclude: np.ndarray
) -> list[dict]:
    """Train one source per ``(framework, classes)`` on images not in ``exclude``; cached ONNX paths."""
    rng = np.random.default_rng(1000 + seed)
    allowed = np.setdiff1d(np.arange(len(x)), exclude)
    sources = []
    for i, (framework, labels) in enumerate(split):
        path = work / f"seed{seed}_{i}_{framework}_{'-'.join(c[:3] for c in labels)}.onnx"
        if not path.exists():
            pick = np.concatenate(
                [rng.choice(allowed[y[allowed] == c], SOURCE_TRAIN_PER_CLASS, replace=False) for c in labels]
            )
            tmp = path.with_suffix(".tmp.onnx")
            TRAINERS[framework](x[pick], y[pick], labels, seed, tmp)
            tmp.rename(path)
        order = sorted(labels) if framework == "sklearn" else labels  # scikit-learn sorts its classes_
        sources.append(
            {"name": f"s{i}_{framework}", "model": str(path), "labels": order, "preprocess": PREPROCESS[framework]}
        )
    return sources


if __name__ == "__main__":  # smoke: train the 5+5 split of seed 0
    xtr, ytr = read_split("train")
    out = Path("/tmp/onnxmerge-accuracy")
    out.mkdir(exist_ok=True)
    print(
        json.dumps(
            make_sources([("torch", CLASSES[:5]), ("sklearn", CLASSES[5:])], 0, out, xtr, ytr, np.arange(0)), indent=1
        )
    )
