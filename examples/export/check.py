"""Run one of the README's export snippets ("Bring your own models") exactly as written, then check that
onnxmerge composes the file it wrote: ``inspect`` suggests a feature and ``build`` writes a Z with every
parity check ok.

Run in a venv with that framework (``examples/export/run.sh GROUP`` makes it, at the versions pinned in
``examples/export/requirements-GROUP.txt``)::

    python examples/export/check.py pytorch --onnxmerge .venv/bin/onnxmerge

Each framework gets what the snippet's comment says the user has (``net``, ``model``, ``pipeline`` and ``X``):
a small network of that framework, randomly initialised (a scikit-learn MLP trained on the digits), for the
snippet's input size; and ``class_names`` for the labels snippet, which runs after every export. The
Z is fitted on scikit-learn's digits (8x8 gray, resized and made RGB inside Z as the source needs).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
#: the file each snippet writes
WRITES = {
    "pytorch": "net.onnx",
    "huggingface": "vit.onnx",
    "keras": "model.onnx",
    "tensorflow": "model.onnx",
    "sklearn": "model.onnx",
    "paddle": "net.onnx",
    "labels": "net.onnx",
}


def snippet(name: str) -> str:
    """The README's code block marked ``<!-- export: NAME -->``, as written."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- export: {name} -->\n```python\n(.*?)```", readme, re.S)
    if not found:
        raise SystemExit(f"README.md has no export snippet {name!r}")
    return found.group(1)


def torch_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
    )


def hf_model():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=224,
        patch_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    return ViTForImageClassification(config)  # random weights: no download


def keras_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3), name="image")
    h = keras.layers.Conv2D(8, 5, strides=4, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    model.predict(np.zeros((1, 224, 224, 3), np.float32), verbose=0)  # as a trained model has run
    return model


def paddle_net():
    import paddle
    from paddle import nn

    paddle.seed(0)
    return nn.Sequential(
        nn.Conv2D(3, 8, 5, stride=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2D(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def sklearn_pipeline(digits):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = digits.data.astype(np.float32)
    labels = np.asarray(CLASSES)[digits.target]
    return make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=0)).fit(X, labels), X


def objects(framework: str, digits) -> dict:
    """What the snippet's comment says the user has, for ``framework``."""
    if framework == "pytorch":
        return {"net": torch_net()}
    if framework == "huggingface":
        return {"model": hf_model()}
    if framework in ("keras", "tensorflow"):
        return {"model": keras_model()}
    if framework == "paddle":
        net = paddle_net()
        net.eval()
        return {"net": net}
    if framework == "sklearn":
        pipeline, X = sklearn_pipeline(digits)
        return {"pipeline": pipeline, "X": X, "class_names": [str(c) for c in pipeline.classes_]}
    raise SystemExit(f"unknown framework {framework!r}; one of {sorted(WRITES)}")


def recipe(model: Path, train: Path, flat: bool) -> str:
    """A recipe composing the exported model alone, fitted on the digits (8x8 gray; the scikit-learn MLP was
    trained on flat 0..16 pixels, the random networks take anything)."""
    if flat:
        pre = "height = 8\nwidth = 8\nchannels = 1\nscale = 0.0627450980392157\nmean = [0.0]\nstd = [1.0]"
    else:
        pre = "scale = 0.00392156862745098\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]"
    return (
        f'[input]\nheight = 8\nwidth = 8\nchannels = 1\n\n[[sources]]\nname = "mine"\nmodel = "{model.as_posix()}"\n'
        f'[sources.preprocess]\n{pre}\n\n[head]\ntrain = "{train.as_posix()}"\n'
    )


def run(command: list[str]) -> str:
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    print(done.stdout + done.stderr, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{command[1]} failed with status {done.returncode}")
    return done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=sorted(set(WRITES) - {"labels"}))
    parser.add_argument("--onnxmerge", default=str(ROOT / ".venv" / "bin" / "onnxmerge"), help="this clone's CLI")
    args = parser.parse_args()
    onnxmerge = str(Path(args.onnxmerge).resolve())
    digits = load_digits()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        namespace = {"class_names": CLASSES, **objects(args.framework, digits)}  # in the output columns' order
        exec(compile(snippet(args.framework), f"README export: {args.framework}", "exec"), namespace)
        written = Path(WRITES[args.framework])
        assert written.is_file(), f"the {args.framework} snippet did not write {written}"
        labels = snippet("labels").replace('"net.onnx"', f'"{written}"')
        exec(compile(labels, "README export: labels", "exec"), namespace)
        x = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
        np.savez("train.npz", x=x[:300], y=np.asarray(CLASSES)[digits.target[:300]])
        text = recipe(written.resolve(), Path("train.npz").resolve(), flat=args.framework == "sklearn")
        Path("recipe.toml").write_text(text)
        shown = run([onnxmerge, "inspect", str(written)])
        assert "suggested feature: " in shown and "suggested feature: None" not in shown, shown
        built = run([onnxmerge, "build", "recipe.toml", "-o", "z.onnx", "--quiet", "--no-cache"])
        parity = [line for line in built.splitlines() if line.startswith("parity: ")]
        assert parity and all(line.endswith("-> ok") for line in parity), built
        assert f"classes (10): {', '.join(sorted(CLASSES))}" in built, built
        if args.framework == "sklearn":  # the one trained model: its labels must be the right way round
            assert "onnxmerge: warning:" not in built, built
    print(f"ok: the README's {args.framework} snippet exports a file onnxmerge composes with parity", flush=True)


if __name__ == "__main__":
    sys.exit(main())
