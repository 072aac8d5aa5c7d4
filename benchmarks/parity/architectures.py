"""Sweep of real classifier architectures (issue 12): does "auto" find the feature, and does a build keep parity?

For each architecture (torchvision, timm, Hugging Face transformers; random initialisation, BatchNorm
statistics recalibrated on the sweep's images, small inputs where the architecture allows):

1. export it with torch.onnx (TorchScript exporter, dynamic batch, opset 17);
2. ``onnxmerge.inspect.find_head`` picks the feature ("auto");
3. the framework's own input to its final classifier layer (a forward hook on that layer; for distilled
   heads, the tensor both heads read) is compared with that ONNX tensor run by onnxruntime, pooled and
   flattened as ``cut.cut`` does (max |diff| <= 1e-4 x max(1, max |framework|): framework vs onnxruntime);
4. a build (``Merger``, mode "fit", digits upscaled to the input size, 3 classes) must pass every parity check.

Results go to stdout as a markdown table (and JSON lines with --json FILE). Environment:
benchmarks/parity/requirements-architectures.txt (torch 2.14.1 + torchvision 0.29.1, timm, transformers).

    nice -n 10 .venv-sweep/bin/python -m benchmarks.parity.architectures [NAME ...] [--json out.jsonl]
    .venv-sweep/bin/python -m benchmarks.parity.architectures --table out.jsonl     # the markdown table

The rows of the run recorded in RESULTS.md are in ``benchmarks/parity/architectures.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import IMAGENET  # noqa: E402
from onnxmerge import ImageInput, Merger, Preprocess, Source  # noqa: E402
from onnxmerge.files.models import load_model  # noqa: E402
from onnxmerge.graph.cut import spatial_axes  # noqa: E402
from onnxmerge.graph.inspect import find_head  # noqa: E402
from onnxmerge.graph.topology import with_outputs  # noqa: E402
from onnxmerge.runtime.session import make_session  # noqa: E402

MEAN, STD = IMAGENET["mean"], IMAGENET["std"]
CLASSES = 10


def tv(name, size=64, **kw):
    import torchvision

    def make():
        return getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **kw)

    return make, size


def timm_model(name, size=64, **kw):
    def make():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)

    return make, size


def hf(config_name, model_name, size=64, **config):
    def make():
        import transformers

        cfg = getattr(transformers, config_name)(num_labels=CLASSES, **config)
        model = getattr(transformers, model_name)(cfg)

        class Logits(torch.nn.Module):  # Hugging Face returns an output object; exporters want the tensor
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, pixel_values):
                return self.model(pixel_values=pixel_values).logits

        return Logits()

    return make, size


ARCHITECTURES = {
    # torchvision
    "tv/resnet18": tv("resnet18"),
    "tv/mobilenet_v2": tv("mobilenet_v2"),
    "tv/mobilenet_v3_small": tv("mobilenet_v3_small"),
    "tv/efficientnet_b0": tv("efficientnet_b0"),
    "tv/efficientnet_v2_s": tv("efficientnet_v2_s"),
    "tv/regnet_x_400mf": tv("regnet_x_400mf"),
    "tv/convnext_tiny": tv("convnext_tiny"),
    "tv/densenet121": tv("densenet121"),
    "tv/squeezenet1_1": tv("squeezenet1_1"),
    "tv/shufflenet_v2_x0_5": tv("shufflenet_v2_x0_5"),
    "tv/mnasnet0_5": tv("mnasnet0_5"),
    "tv/googlenet": tv("googlenet", aux_logits=False, init_weights=True),
    "tv/vgg11": tv("vgg11"),
    "tv/alexnet": tv("alexnet"),
    "tv/vit_b_16": tv("vit_b_16", image_size=64),
    "tv/swin_t": tv("swin_t"),
    "tv/maxvit_t": tv("maxvit_t", size=224),
    # timm
    "timm/deit_tiny_distilled": timm_model("deit_tiny_distilled_patch16_224", img_size=64),
    "timm/levit_128s": timm_model("levit_128s", img_size=64),
    "timm/efficientformer_l1": timm_model("efficientformer_l1", size=224),  # its attention biases are sized for 224
    "timm/cait_xxs24": timm_model("cait_xxs24_224", img_size=64),
    "timm/mobilevit_xxs": timm_model("mobilevit_xxs"),
    "timm/mixer_s16": timm_model("mixer_s16_224", img_size=64),
    "timm/ghostnet_050": timm_model("ghostnet_050"),
    "timm/mobilenetv4_conv_small": timm_model("mobilenetv4_conv_small"),
    "timm/dla34": timm_model("dla34"),
    "timm/inception_next_tiny": timm_model("inception_next_tiny"),
    "timm/convnext_atto": timm_model("convnext_atto"),
    # Hugging Face transformers (small configs, random weights)
    "hf/vit": hf(
        "ViTConfig",
        "ViTForImageClassification",
        image_size=64,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    ),
    "hf/convnext": hf(
        "ConvNextConfig", "ConvNextForImageClassification", hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]
    ),
    "hf/swin": hf(
        "SwinConfig",
        "SwinForImageClassification",
        image_size=64,
        embed_dim=24,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
    ),
    "hf/mobilevit": hf("MobileViTConfig", "MobileViTForImageClassification", image_size=64),
    "hf/resnet": hf(
        "ResNetConfig",
        "ResNetForImageClassification",
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        embedding_size=16,
    ),
    "hf/dinov2": hf(
        "Dinov2Config",
        "Dinov2ForImageClassification",
        image_size=64,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    ),
    "hf/beit": hf(
        "BeitConfig",
        "BeitForImageClassification",
        image_size=64,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    ),
    "hf/segformer": hf(
        "SegformerConfig",
        "SegformerForImageClassification",
        image_size=64,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
    ),
}


def images(size: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Digits 0-2 upscaled to ``size`` x ``size`` RGB uint8 (nearest), with their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 3
    raw = np.round(d.images[keep][:n] * 255 / 16).astype(np.uint8)
    big = raw.repeat(-(-size // 8), axis=1).repeat(-(-size // 8), axis=2)[:, :size, :size]
    return np.repeat(big[..., None], 3, axis=3), d.target[keep][:n].astype(str)


def normalised(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float().permute(0, 3, 1, 2) / 255
    return (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def recalibrate(model: torch.nn.Module, x: torch.Tensor) -> None:
    """BatchNorm statistics from the sweep's own images (random init leaves them at 0/1: dead features)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes
    if bns:
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(x)
    model.eval()


def classifier_layers(name: str, model: torch.nn.Module) -> list[torch.nn.Module]:
    """The framework's own final classifier layer(s) of ``model`` (two for distilled heads)."""
    inner = getattr(model, "model", model)
    if name.startswith("timm/"):
        head = inner.get_classifier()
        return list(head) if isinstance(head, tuple) else [head]
    if name.startswith("hf/"):
        return [inner.classifier]
    last = None
    for module in inner.modules():  # torchvision: the last Linear, or SqueezeNet's classifier Conv
        if isinstance(module, torch.nn.Linear) or (
            name.startswith("tv/squeezenet") and isinstance(module, torch.nn.Conv2d)
        ):
            last = module
    return [last]


def as_features(value: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    if value.ndim == 4:
        return value.mean(axis=axes or (2, 3))
    return value.reshape(len(value), -1)


def run_one(name: str, folder: Path) -> dict:
    make, size = ARCHITECTURES[name]
    row = {"name": name, "size": size}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = make()
    x, y = images(size)
    xt = normalised(x)
    recalibrate(model, xt[:32])
    seen: list[np.ndarray] = []
    hooks = [
        layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().numpy()))
        for layer in classifier_layers(name, model)
    ]
    with torch.no_grad():
        model(xt[:8])
    for h in hooks:
        h.remove()
    framework = seen[0]
    row["framework_shared"] = len(seen) == 1 or all(np.array_equal(seen[0], s) for s in seen[1:])
    path = folder / (name.replace("/", "_") + ".onnx")
    torch.onnx.export(
        model,
        (xt[:2],),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    row["export_s"] = round(time.perf_counter() - t0, 1)
    onnx_model = load_model(path)
    try:
        head = find_head(onnx_model)
    except Exception as exc:  # noqa: BLE001
        row.update(auto=None, reason=str(exc), feature_ok=False, build_ok=False)
        return row
    row.update(auto=head.feature, reason=head.reason, op=head.op)
    session = make_session(with_outputs(onnx_model, [head.feature]))
    value = session.run([head.feature], {"input": xt[:8].numpy()})[0]
    axes = spatial_axes(onnx_model, head.feature) if value.ndim == 4 else None
    got, want = as_features(value, axes), as_features(framework, None)
    scale = max(1.0, float(np.abs(want).max()))
    row["feature_diff"] = float(np.abs(got - want).max()) if got.shape == want.shape else None
    row["feature_ok"] = got.shape == want.shape and row["feature_diff"] <= 1e-4 * scale
    row["feature_width"] = int(got.shape[1])
    t1 = time.perf_counter()
    source = Source("s", path, Preprocess(1 / 255, MEAN, STD, size, size, 3, layout="NCHW"))
    try:
        merger = Merger(ImageInput(size, size, 3), [source], C=1.0, quiet=True).fit(x, y)
        row["build_ok"] = all(c.ok for c in merger.parity_)
        row["parity"] = "; ".join(c.line() for c in merger.parity_ if "features" in c.step)
    except Exception as exc:  # noqa: BLE001
        row["build_ok"], row["parity"] = False, f"{type(exc).__name__}: {str(exc)[:300]}"
    row["build_s"] = round(time.perf_counter() - t1, 1)
    return row


def table(path: Path) -> None:
    """The markdown table of a --json file (one row per architecture, the last run of each)."""
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["name"]] = row
    print("| architecture | input | auto feature (consumer) | width | vs framework | build parity |")
    print("|---|---|---|---|---|---|")
    for name in ARCHITECTURES:
        r = rows.get(name)
        if r is None:
            continue
        if r.get("auto") is None:
            print(f"| {name} | {r.get('size', '')} | - | - | - | not run: {r.get('reason', '')[:120]} |")
            continue
        diff = f"{r['feature_diff']:.1e}" if r.get("feature_diff") is not None else "shape differs"
        print(
            f"| {name} | {r['size']}x{r['size']} | `{r['auto']}` ({r.get('op')}) | {r.get('feature_width')} | "
            f"{'ok' if r['feature_ok'] else 'WRONG'} ({diff}) | {'ok' if r['build_ok'] else 'FAILED: ' + r.get('parity', '')[:100]} |"
        )
    ok = sum(bool(r.get("feature_ok") and r.get("build_ok")) for r in rows.values())
    print(f"\n{ok} of {len(rows)} architectures: auto feature right and build parity ok")


def main() -> None:
    args = sys.argv[1:]
    if "--table" in args:
        return table(Path(args[args.index("--table") + 1]))
    out = None
    if "--json" in args:
        out = Path(args[args.index("--json") + 1])
        args = [a for a in args if a not in ("--json", str(out))]
    names = [n for n in ARCHITECTURES if not args or any(a in n for a in args)]
    torch.set_num_threads(2)
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = run_one(name, Path(tmp))
            except Exception as exc:  # noqa: BLE001  an exporter or framework failure: recorded, not fatal
                row = {
                    "name": name,
                    "auto": None,
                    "feature_ok": False,
                    "build_ok": False,
                    "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                    "trace": traceback.format_exc(limit=2)[-400:],
                }
        rows.append(row)
        if out:
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        print(
            f"{name}: auto {row.get('auto')!r} feature_ok={row.get('feature_ok')} build_ok={row.get('build_ok')} "
            f"(diff {row.get('feature_diff')}, export {row.get('export_s')} s, build {row.get('build_s')} s) "
            f"{row.get('reason', '')[:160]}",
            flush=True,
        )
    ok = sum(bool(r.get("feature_ok") and r.get("build_ok")) for r in rows)
    print(f"\n{ok} of {len(rows)} architectures: auto feature right and build parity ok")


if __name__ == "__main__":
    main()
