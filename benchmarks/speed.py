"""Z versus running its sources one by one, side by side in one process (issue: "Make Z fast").

Case (a) of the speed issue on the shipped demo: a PyTorch CNN (28 -> 32 resize, NCHW) and a scikit-learn
MLP (flat 784) with nothing in common. The baseline is what a user without Z does: each source in its own
onnxruntime session (spinning off, same thread count), fed from the same raw uint8 batch with its own
resize and normalisation in numpy (float32). Blocks are interleaved; each block reports a median of many
runs; the script prints the ratio Z / separate per round and the median ratio.

    python benchmarks/speed.py [--rounds 5] [--runs 200]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from onnxmerge.extract import make_session
from onnxmerge.preprocess import _resize_axis
from onnxmerge.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def numpy_preprocess(images: np.ndarray, spec) -> np.ndarray:
    """A user's own float32 numpy preprocessing for one source."""
    x = images.astype(np.float32)
    x = _resize_axis(_resize_axis(x, 1, spec.height), 2, spec.width).astype(np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    shape = [1, -1, 1, 1] if spec.layout == "NCHW" else [1, 1, 1, -1]
    x = (x * np.float32(spec.scale) - np.asarray(spec.mean, np.float32).reshape(shape)) / np.asarray(
        spec.std, np.float32).reshape(shape)
    return np.ascontiguousarray(x.reshape(len(x), -1) if spec.flat else x)


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    recipe = load_recipe(ROOT / "examples/fashion/stage1.toml", quiet=True)
    merger = recipe.merger.fit(recipe.train)
    z = make_session(merger.model_, threads=2)
    separate = [(make_session(s.model, threads=2), s.preprocess) for s in merger.sources_]
    test = np.load(ROOT / "examples/fashion/data/test.npz")["x"]
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}; onnxruntime CPU, 2 threads")
    for batch in (1, 32):
        images = test[:batch]

        def run_z():
            z.run(["label", "probabilities"], {"image": images})

        def run_separate():
            for session, spec in separate:
                session.run(None, {session.get_inputs()[0].name: numpy_preprocess(images, spec)})

        run_z(), run_separate()  # warm-up
        ratios = []
        for r in range(args.rounds):
            t_z = median_time(run_z, args.runs)
            t_sep = median_time(run_separate, args.runs)
            ratios.append(t_z / t_sep)
            print(f"batch {batch:2d} round {r}: Z {t_z * 1e3:.3f} ms, separate {t_sep * 1e3:.3f} ms, "
                  f"ratio {t_z / t_sep:.3f}")
        print(f"batch {batch:2d}: median ratio Z / separate = {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
