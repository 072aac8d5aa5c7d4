"""What the benchmarks share: paths, data sets, the teachers they train, sessions and timing.

Scripts import it as ``benchmarks.common`` and run from the repository root as modules
(``python -m benchmarks.routing.pools``). It imports nothing heavy at module level: the exporter children
(``--torch-python``) import it from a Python that has torch but no onnxmerge.

Machine-dependent locations come from the environment, never from the code:

- ``ONNXMERGE_BENCH_WORK``: where trained teachers, exported models and caches go (default: the system's
  temporary folder), one sub-folder per benchmark (``work_dir``);
- ``ONNXMERGE_TORCH_PYTHON``: a Python with ``torch==2.13.0`` (and the exporters a script names) for the
  scripts that export models in a child process (default: this Python);
- ``FASHION_MNIST_DIR``: Fashion-MNIST's IDX files (default: where the Debian package
  ``dataset-fashion-mnist`` installs them).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fashion"  # the demo's models, data and recipes
FIXTURES = ROOT / "tests" / "fixtures"
FASHION = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
IMAGENET = {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
EFFNET = ("lite0_imagenet.onnx", "lite0_head10.onnx", "lite0_other.onnx")  # speed/export_efficientnet.py writes


def work_dir(name: str) -> Path:
    """``$ONNXMERGE_BENCH_WORK/onnxmerge-NAME`` (default under the system's temporary folder), created."""
    folder = Path(os.environ.get("ONNXMERGE_BENCH_WORK", tempfile.gettempdir())) / f"onnxmerge-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def torch_python() -> str:
    """The Python that exports models with torch (``$ONNXMERGE_TORCH_PYTHON``, default this one)."""
    return os.environ.get("ONNXMERGE_TORCH_PYTHON", sys.executable)


def run_module(python: str, module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root (so ``benchmarks`` imports), checked."""
    return subprocess.run([python, "-m", module, *args], cwd=ROOT, check=True, **kwargs)


# -- data ----------------------------------------------------------------------------------------------------------
def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28, 1] and label strings, from the Debian package's IDX files."""
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, np.asarray(CLASSES)[y]


def digits_28() -> np.ndarray:
    """scikit-learn's 8x8 digits as 28x28 uint8 images (bilinear): an image source none of Fashion-MNIST."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in images])[..., None]


def photos(n: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of the demo's Fashion-MNIST test images as RGB ``size`` x ``size`` uint8 (Pillow bilinear), labels."""
    data = np.load(EXAMPLE / "data" / "test.npz")
    pick = np.random.default_rng(0).permutation(len(data["x"]))[:n]  # the file is sorted by class
    return upscale(data["x"][pick], size), data["y"][pick]


def upscale(x: np.ndarray, size: int = 224) -> np.ndarray:
    """Gray uint8 [N, H, W, 1] images as RGB [N, size, size, 3] (Pillow bilinear)."""
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(img[..., 0]).convert("RGB").resize((size, size), Image.BILINEAR)) for img in x]
    )


# -- teachers trained for a benchmark (torch + skl2onnx) -----------------------------------------------------------
def _train_torch(x: np.ndarray, y: np.ndarray, labels: list[str], seed: int, path: Path) -> None:
    """A small CNN (PyTorch, legacy exporter, opset 17), input [N, 1, 28, 28], x/255 then (x-0.286)/0.353."""
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
    """An MLP (skl2onnx, ZipMap kept), input flat [N, 784], x/255."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    flat = x.reshape(len(x), -1).astype(np.float32) / 255
    mlp = MLPClassifier((128,), max_iter=40, random_state=seed).fit(flat, y)
    onx = to_onnx(mlp, flat[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())


TRAINERS = {"torch": _train_torch, "sklearn": _train_sklearn}
PREPROCESS = {  # each trainer's preprocessing, as a recipe's [sources.preprocess]
    "torch": {"scale": 1 / 255, "mean": [0.286], "std": [0.353]},
    "sklearn": {"scale": 1 / 255, "mean": [0.0], "std": [1.0], "height": 28, "width": 28, "channels": 1},
}


def teacher(name: str, framework: str, labels: list[str], seed: int, path: Path, training) -> dict:
    """Source ``name``'s dict: a ``framework`` teacher of ``labels`` trained on ``training()``'s ``(x, y)``
    and exported to ``path``, once (``training`` is called only then: the callers' random draws stay as
    they were whether the teacher is cached or not)."""
    if not path.exists():
        tmp = path.with_suffix(".tmp.onnx")
        TRAINERS[framework](*training(), labels, seed, tmp)
        tmp.rename(path)
    order = sorted(labels) if framework == "sklearn" else labels  # scikit-learn sorts its classes_
    return {"name": name, "model": str(path), "labels": order, "preprocess": PREPROCESS[framework]}


def merger(sources: list[dict], mode: str, cache: Path):
    """A 28x28 gray Merger over teacher dicts (``teacher``; a dict with ``"teacher": False`` and no labels is a
    source whose features only the head reads, as ``generic`` makes), feature-cached under ``cache``."""
    from onnxmerge import ImageInput, Merger, Preprocess, Source

    specs = [
        Source(
            s["name"],
            s["model"],
            Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in s["preprocess"].items()}),
            labels=s.get("labels"),
            teacher=s.get("teacher", True),
        )
        for s in sources
    ]
    m = Merger(ImageInput(28, 28, 1), specs, mode=mode, quiet=True)
    m.cache_dir = cache  # the same pool and test images go through the same stitched graph many times
    return m


def generic(path: Path, side: int = 64) -> dict:
    """A generic ImageNet backbone (EfficientNet-Lite0 at ``side`` x ``side`` RGB, NCHW, ImageNet mean/std) as
    a ``teacher = false`` source dict for ``merger``: its features join the head's input and the routing's
    clustering, its 1,000 ImageNet classes are no label of Z."""
    pre = {"scale": IMAGENET["scale"], "mean": list(IMAGENET["mean"]), "std": list(IMAGENET["std"])}
    pre.update(height=side, width=side, channels=3, layout="NCHW")
    return {"name": "generic", "model": str(path), "preprocess": pre, "teacher": False}


# -- EfficientNet-Lite0 (speed, deploy) ----------------------------------------------------------------------------
def effnet_files(folder: Path, python: str) -> Path:
    """``folder`` holding ``EFFNET``, exported there by ``speed/export_efficientnet.py`` in ``python`` if missing."""
    folder = Path(folder)
    if not all((folder / f).exists() for f in EFFNET):
        print(f"exporting EfficientNet-Lite0 into {folder} with {python} ...", flush=True)
        run_module(python, "benchmarks.speed.export_efficientnet", str(folder), stdout=subprocess.DEVNULL)
    return folder


# -- sessions and timing (ASSETS.md: fair timing on a small machine) -----------------------------------------------
def session(model, threads: int = 2):
    """How a user runs a model: CPU, onnxruntime's defaults, idle threads not spinning (ASSETS.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    payload = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def median_time(fn, runs: int) -> float:
    """Median wall time of ``runs`` calls of ``fn``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def mean_std_line(key: str, values: list[float], width: int = 58) -> str:
    """``key  mean  std  per-seed values``: the rows the seed loops print."""
    return f"{key:{width}} {np.mean(values):7.3f} {np.std(values):6.3f}  {' '.join(f'{v:.3f}' for v in values)}"
