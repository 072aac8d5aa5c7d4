#!/usr/bin/env python3
"""Build the Fashion-MNIST demo assets in examples/fashion/{models,data}/.

Two REAL source classifiers, trained on disjoint Fashion-MNIST classes and
exported with REAL exporters:

  models/a_torch_cnn.onnx    PyTorch CNN on classes 0-4 (T-shirt_top, Trouser,
                             Pullover, Dress, Coat); gray NCHW [N,1,32,32]
                             (28x28 upsampled bilinear/half_pixel, no antialias);
                             torch.onnx legacy exporter, opset 17, one file.
  models/b_sklearn_mlp.onnx  scikit-learn MLPClassifier(64,) on classes 5-7
                             (Sandal, Shirt, Sneaker); flat [N,784] pixels/255;
                             skl2onnx with default options (ZipMap kept).
  models/manifest.json       preprocessing, labels, head output and the
                             penultimate feature tensor of each model.

and the demo data (uint8 x [N,28,28,1], y = label strings):

  data/train.npz      100 TRAIN-split images per class, classes 0-7
  data/new_class.npz  5 TRAIN-split images of class 8 (Bag)
  data/test.npz       200 TEST-split (t10k) images per class, classes 0-8

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``); pass ``--data-dir`` or set
``FASHION_MNIST_DIR`` to use another copy of the four IDX .gz files.

    python examples/fashion/make_demo.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

SEED = 0
HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
DATA = HERE / "data"
DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        buf = f.read()
    return np.frombuffer(buf, dtype=np.uint8, offset=header)


def load_fashion(data_dir: Path):
    def images(name):
        a = read_idx(data_dir / f"{name}-images-idx3-ubyte.gz", 16)
        return a.reshape(-1, 28, 28)

    def labels(name):
        return read_idx(data_dir / f"{name}-labels-idx1-ubyte.gz", 8).astype(np.int64)

    xtr, ytr = images("train"), labels("train")
    xte, yte = images("t10k"), labels("t10k")
    assert xtr.shape == (60000, 28, 28) and ytr.shape == (60000,), xtr.shape
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,), xte.shape
    return xtr, ytr, xte, yte


def subset(x, y, classes):
    m = np.isin(y, classes)
    return x[m], y[m]


def sample_per_class(x, y, classes, n, rng):
    idx = []
    for c in classes:
        cand = np.flatnonzero(y == c)
        idx.append(np.sort(rng.choice(cand, size=n, replace=False)))
    idx = np.concatenate(idx)
    return x[idx][..., None].copy(), np.array([CLASS_NAMES[c] for c in y[idx]])


def write_data(xtr, ytr, xte, yte):
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x, y = sample_per_class(xtr, ytr, range(8), 100, rng)
    np.savez_compressed(DATA / "train.npz", x=x, y=y)
    x, y = sample_per_class(xtr, ytr, [8], 5, rng)
    np.savez_compressed(DATA / "new_class.npz", x=x, y=y)
    x, y = sample_per_class(xte, yte, range(9), 200, rng)
    np.savez_compressed(DATA / "test.npz", x=x, y=y)


# --------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------
def add_labels(model: onnx.ModelProto, labels):
    keep = [p for p in model.metadata_props if p.key != "labels"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    p = model.metadata_props.add()
    p.key = "labels"
    p.value = json.dumps(list(labels))


def stable_opsets(model: onnx.ModelProto):
    """skl2onnx emits opset_import in hash-seed dependent order; sort it so reruns are byte-identical."""
    ops = sorted(model.opset_import, key=lambda o: o.domain)
    ops = [(o.domain, o.version) for o in ops]
    del model.opset_import[:]
    for d, v in ops:
        model.opset_import.append(helper.make_opsetid(d, v))
    return model


def find_feature(model: onnx.ModelProto):
    """Input of the last linear classifier node (Gemm / MatMul / LinearClassifier)."""
    for node in reversed(model.graph.node):
        if node.op_type in ("Gemm", "MatMul", "LinearClassifier"):
            return node.input[0], node
    raise RuntimeError("no Gemm/MatMul/LinearClassifier node found")


def session(model_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def probe_feature(path: Path, feature: str, x: np.ndarray) -> np.ndarray:
    m = onnx.load(str(path))
    if feature not in [o.name for o in m.graph.output]:
        m.graph.output.append(helper.make_tensor_value_info(feature, TensorProto.FLOAT, None))
    sess = session(m)
    return sess.run([feature], {sess.get_inputs()[0].name: x})[0]


def scores_to_array(out, labels):
    if isinstance(out, list):  # ZipMap: list of {label: prob}
        return np.array([[d[k] for k in labels] for d in out], dtype=np.float32)
    return np.asarray(out)


def run_batched(sess, name, x, batch=1000):
    inp = sess.get_inputs()[0].name
    outs = [sess.run([name], {inp: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return [d for o in outs for d in o] if isinstance(outs[0], list) else np.concatenate(outs)


def describe(
    path: Path,
    *,
    exporter,
    framework,
    layout,
    height,
    width,
    channels,
    scale,
    mean,
    std,
    labels,
    head_output,
    head_kind,
    x_test,
    y_test_labels,
):
    model = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    assert dims[0] is None, f"{path.name}: batch dimension is not dynamic: {dims}"
    feature, node = find_feature(model)
    sess = session(path)
    scores = scores_to_array(run_batched(sess, head_output, x_test), labels)
    acc = float((np.array(labels)[scores.argmax(1)] == np.asarray(y_test_labels)).mean())
    for n in (1, 9):
        f = probe_feature(path, feature, x_test[:n])
        assert f.ndim == 2 and f.shape[0] == n, (path.name, feature, f.shape)
    got = None
    for p in model.metadata_props:
        if p.key == "labels":
            got = json.loads(p.value)
    for n_ in model.graph.node:
        for a in n_.attribute:
            if got is None and a.name == "classlabels_strings":
                got = [s.decode() for s in a.strings]
    assert got == list(labels), (got, labels)
    return {
        "file": path.name,
        "exporter": exporter,
        "framework": framework,
        "input_name": inp.name,
        "input_shape": dims,
        "layout": layout,
        "height": height,
        "width": width,
        "channels": channels,
        "scale": scale,
        "mean": list(mean),
        "std": list(std),
        "labels": list(labels),
        "head_output": head_output,
        "head_output_kind": head_kind,
        "feature": feature,
        "feature_dim": int(f.shape[1]),
        "feature_consumer_op": node.op_type,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "test_accuracy": round(acc, 4),
        "test_samples": int(len(y_test_labels)),
    }


def check_resize_rule(x_nchw: np.ndarray, size: int):
    """F.interpolate(bilinear, align_corners=False, antialias=False) == ONNX Resize linear half_pixel."""
    import torch
    import torch.nn.functional as F

    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    g = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, size, size])],
        [helper.make_tensor("sizes", TensorProto.INT64, [4], [len(x_nchw), 1, size, size])],
    )
    # onnx 1.23's make_model defaults to an IR version newer than onnxruntime 1.31 reads
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    got = session(m).run(["y"], {"x": x_nchw})[0]
    ref = F.interpolate(
        torch.from_numpy(x_nchw), size=(size, size), mode="bilinear", align_corners=False, antialias=False
    ).numpy()
    err = float(np.abs(got - ref).max())
    assert err < 1e-5, err
    return err


# --------------------------------------------------------------------------
# Source A: PyTorch CNN, classes 0-4
# --------------------------------------------------------------------------
def build_a(xtr, ytr, xte, yte, epochs):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(SEED)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)

    classes = [0, 1, 2, 3, 4]
    scale, mean, std, size = 1.0 / 255.0, 0.2860, 0.3530, 32

    def prep(raw):  # uint8 [N,28,28] -> float32 [N,1,32,32]
        x = (raw.astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)
        t = torch.from_numpy(x[:, None])
        return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False).numpy()

    a, b = subset(xtr, ytr, classes)
    c, d = subset(xte, yte, classes)
    xa, xc = prep(a), prep(c)

    class CNN(nn.Module):
        def __init__(self, n_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(32 * 8 * 8, 64)
            self.fc2 = nn.Linear(64, n_classes)

        def logits(self, x):
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            x = torch.relu(self.fc1(self.flatten(x)))
            return self.fc2(x)

        def forward(self, x):
            return torch.softmax(self.logits(x), dim=1)

    model = CNN(len(classes))
    g = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(xa), torch.from_numpy(b)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * ((len(xt) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        t0 = time.time()
        for i in range(0, len(xt), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            loss = F.cross_entropy(model.logits(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model.logits(torch.from_numpy(xc)).argmax(1).numpy() == d).mean()
        print(f"  A epoch {ep + 1}/{epochs}: loss {loss.item():.3f}  test acc {acc:.4f}  ({time.time() - t0:.0f}s)")

    labels = [CLASS_NAMES[k] for k in classes]
    path = MODELS / "a_torch_cnn.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(xa[:2]),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    m = onnx.load(str(path))
    add_labels(m, labels)
    onnx.save(m, str(path))
    err = check_resize_rule(((c[:16].astype(np.float32) * scale - mean) / std)[:, None], size)
    print(f"  ONNX Resize(linear, half_pixel) vs F.interpolate max |diff| = {err:.2e}")
    v = torch.__version__.split("+")[0]
    return describe(
        path,
        exporter=f"torch.onnx legacy (TorchScript) {v}",
        framework=f"pytorch {v}",
        layout="NCHW",
        height=size,
        width=size,
        channels=1,
        scale=scale,
        mean=[mean],
        std=[std],
        labels=labels,
        head_output="probabilities",
        head_kind="probabilities",
        x_test=xc,
        y_test_labels=[CLASS_NAMES[k] for k in d],
    )


# --------------------------------------------------------------------------
# Source B: scikit-learn MLP, classes 5-7
# --------------------------------------------------------------------------
def build_b(xtr, ytr, xte, yte):
    import skl2onnx
    import sklearn
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    classes = [5, 6, 7]
    scale = 1.0 / 255.0
    a, b = subset(xtr, ytr, classes)
    c, d = subset(xte, yte, classes)
    xa = a.reshape(len(a), -1).astype(np.float32) * np.float32(scale)
    xc = c.reshape(len(c), -1).astype(np.float32) * np.float32(scale)
    t0 = time.time()
    clf = MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=200, early_stopping=True, n_iter_no_change=5, random_state=SEED
    )
    clf.fit(xa, np.array([CLASS_NAMES[k] for k in b]))
    print(f"  B trained {clf.n_iter_} epochs in {time.time() - t0:.0f}s")
    labels = [CLASS_NAMES[k] for k in classes]
    assert list(clf.classes_) == labels, clf.classes_  # alphabetical order happens to match
    path = MODELS / "b_sklearn_mlp.onnx"
    onx = to_onnx(
        clf, initial_types=[("pixels", FloatTensorType([None, 28 * 28]))], target_opset={"": 17, "ai.onnx.ml": 3}
    )
    onnx.save(stable_opsets(onx), str(path))
    return describe(
        path,
        exporter=f"skl2onnx {skl2onnx.__version__}",
        framework=f"scikit-learn {sklearn.__version__}",
        layout="flat",
        height=28,
        width=28,
        channels=1,
        scale=scale,
        mean=[0.0],
        std=[1.0],
        labels=labels,
        head_output="output_probability",
        head_kind="zipmap",
        x_test=xc,
        y_test_labels=[CLASS_NAMES[k] for k in d],
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR", DEFAULT_FASHION_DIR))
    ap.add_argument("--epochs", type=int, default=4, help="training epochs for source A")
    args = ap.parse_args(argv)

    t0 = time.time()
    MODELS.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_fashion(Path(args.data_dir))
    write_data(xtr, ytr, xte, yte)
    entries = [build_a(xtr, ytr, xte, yte, args.epochs), build_b(xtr, ytr, xte, yte)]
    (MODELS / "manifest.json").write_text(json.dumps(entries, indent=2) + "\n")

    print(f"{'file':28s} {'bytes':>9s}  within-task acc  feature [dim] -> head")
    for e in entries:
        print(
            f"{e['file']:28s} {(MODELS / e['file']).stat().st_size:9d}  {e['test_accuracy']:.4f} "
            f"(n={e['test_samples']})  {e['feature']} [{e['feature_dim']}] -> {e['head_output']}"
        )
    for f in sorted(DATA.glob("*.npz")):
        with np.load(f) as z:
            print(
                f"{'data/' + f.name:28s} {f.stat().st_size:9d}  x{z['x'].shape} {z['x'].dtype}  "
                f"y{z['y'].shape} {z['y'].dtype}  classes={sorted(set(z['y'].tolist()))}"
            )
    total = sum(p.stat().st_size for p in list(MODELS.iterdir()) + list(DATA.iterdir()))
    print(f"total {total} bytes; done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
