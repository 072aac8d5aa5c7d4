"""What ``[head] unknown`` costs a Z: its time at batch 32 and its file size, "off" vs "auto", side by side.

Two Zs from the same sources and labelled images, differing only in ``unknown``; each runs in its own
session (2 threads, no spinning), calls alternating between them; the ratio of their fastest calls (the
least disturbed by other work on a shared machine) and of their median calls. Sources: the demo's two small
models (``examples/fashion``, 28x28), or EfficientNet-Lite0 at 224x224 (``--effnet FOLDER`` holding
``lite0_imagenet.onnx``; ``benchmarks.speed.export_efficientnet`` writes it).

    python -m benchmarks.unknown.cost                      # the demo's sources
    python -m benchmarks.unknown.cost --effnet /tmp/models # EfficientNet-Lite0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import EXAMPLE, IMAGENET, photos, session, work_dir
from onnxmerge import ImageInput, Merger, Preprocess, Source


def sources(effnet: Path | None) -> tuple[ImageInput, list[Source], np.ndarray, np.ndarray]:
    """The image input, the sources and 100 labelled images for the Zs."""
    if effnet is not None:
        x, y = photos(100)
        pre = Preprocess(IMAGENET["scale"], IMAGENET["mean"], IMAGENET["std"])
        return ImageInput(224, 224, 3), [Source("lite0", effnet / "lite0_imagenet.onnx", pre)], x, y
    data = np.load(EXAMPLE / "data" / "train.npz")
    models = EXAMPLE / "models"
    specs = [
        Source("a", models / "a_torch_cnn.onnx", Preprocess(1 / 255, (0.286,), (0.353,))),
        Source(
            "b", models / "b_sklearn_mlp.onnx", Preprocess(1 / 255, (0.0,), (1.0,), height=28, width=28, channels=1)
        ),
    ]
    return ImageInput(28, 28, 1), specs, data["x"], data["y"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effnet", type=Path, help="a folder holding lite0_imagenet.onnx")
    parser.add_argument("--calls", type=int, default=200, help="calls of each Z (alternating)")
    args = parser.parse_args()
    image, specs, x, y = sources(args.effnet)
    work = work_dir("unknown")
    paths = {}
    for setting in ("off", "auto"):
        paths[setting] = work / f"cost_{'effnet' if args.effnet else 'demo'}_{setting}.onnx"
        Merger(image, specs, quiet=True, unknown=setting).fit(x, y).save(paths[setting])
    batch = x[:32]
    sessions = {k: session(p) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.calls):
        for k, s in sessions.items():
            names = [o.name for o in s.get_outputs()]
            start = time.perf_counter()
            s.run(names, {"image": batch})
            times[k].append(time.perf_counter() - start)
    for k in paths:
        t = np.asarray(times[k][1:])  # the first call warms the session up
        print(
            f"{k:5} {paths[k].stat().st_size:>11,} bytes  fastest {t.min() * 1e3:8.2f} ms  median {np.median(t) * 1e3:8.2f} ms"
        )
    size = paths["auto"].stat().st_size - paths["off"].stat().st_size
    ratio = {f: f(times["auto"][1:]) / f(times["off"][1:]) for f in (np.min, np.median)}
    print(
        f"auto / off at batch 32: fastest {ratio[np.min]:.3f}, median {ratio[np.median]:.3f}; size +{size:,} bytes "
        f"(+{size / paths['off'].stat().st_size:.1%})"
    )


if __name__ == "__main__":
    main()
