"""Z versus running its sources one by one, side by side in one process (issue: "Make Z fast").

Cases (pick with ``--cases``, default all):

a. the shipped demo: a PyTorch CNN (28 -> 32 resize, NCHW) and a scikit-learn MLP (flat 784) with nothing in
   common. Baseline: what a user without Z does: each source in its own onnxruntime session, fed from the
   same raw uint8 batch with its own resize and normalisation in numpy (float32).
b. two linear heads on one identical backbone: EfficientNet-Lite0 with its ImageNet head and the same
   backbone with a 10-class head (two ONNX files). Z computes the backbone once (onnxmerge/share.py).
c. build extraction throughput (images/s): what ``build`` does with a labelled folder of PNG files
   (``load_labelled`` + the stitched graph over every image), against a bare loop that decodes the same
   files with Pillow and runs the same stitched graph, batch by batch.
d. build time and peak memory of a fresh process building Z from two ~19 MB sources (EfficientNet-Lite0
   and a copy with perturbed weights: nothing shared), peak RSS above the RSS after imports, against the
   sources' file sizes.
q. (only when asked) ``build --quantize`` on EfficientNet-Lite0: accuracy before/after, int8 / float time.

Every session: CPU, ``session.intra_op.allow_spinning = "0"``, the same thread count (``--threads``).
Timings alternate blocks (Z then separate, then separate then Z, ...); each block is the median of many
runs; the script prints each round's ratio, then the median ratio and the spread over rounds.

    python -m benchmarks.speed.cases [--cases abcd] [--rounds 5] [--runs 200]

Cases b and d need the EfficientNet ONNX files; they are exported once into ``--models`` (default
``common.work_dir("bench")``) by ``benchmarks/speed/export_efficientnet.py``, run with ``--torch-python``
(default ``$ONNXMERGE_TORCH_PYTHON``: a Python with torch 2.13.0 and the two EfficientNet wheels; see that
script). They are never committed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.common import (
    EFFNET,
    EXAMPLE,
    IMAGENET,
    ROOT,
    effnet_files,
    median_time,
    photos,
    session,
    torch_python,
    work_dir,
)
from onnxmerge.graph.preprocess import _resize_axis


def numpy_preprocess(images: np.ndarray, spec) -> np.ndarray:
    """A user's own float32 numpy preprocessing for one source."""
    x = images.astype(np.float32)
    if x.shape[3] == 1 and spec.channels == 3:
        x = np.repeat(x, 3, axis=3)
    if (x.shape[1], x.shape[2]) != (spec.height, spec.width):
        x = _resize_axis(_resize_axis(x, 1, spec.height), 2, spec.width).astype(np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    shape = [1, -1, 1, 1] if spec.layout == "NCHW" else [1, 1, 1, -1]
    x = (x * np.float32(spec.scale) - np.asarray(spec.mean, np.float32).reshape(shape)) / np.asarray(
        spec.std, np.float32
    ).reshape(shape)
    return np.ascontiguousarray(x.reshape(len(x), -1) if spec.flat else x)


def interleaved(
    label: str, first, second, names: tuple[str, str], rounds: int, runs: int, times: list | None = None
) -> float:
    """Median-of-``runs`` blocks of ``first`` and ``second``, alternating their order; prints ratios."""
    first(), second()  # warm-up
    ratios = []
    for r in range(rounds):
        if r % 2:
            t2 = median_time(second, runs)
            t1 = median_time(first, runs)
        else:
            t1 = median_time(first, runs)
            t2 = median_time(second, runs)
        ratios.append(t1 / t2)
        if times is not None:
            times.append((t1, t2))
        print(f"{label} round {r}: {names[0]} {t1 * 1e3:.3f} ms, {names[1]} {t2 * 1e3:.3f} ms, ratio {t1 / t2:.3f}")
    print(
        f"{label}: median ratio {names[0]} / {names[1]} = {np.median(ratios):.3f} "
        f"(rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )
    return float(np.median(ratios))


def compare_z_separate(
    label: str, merger, images_by_batch: dict[int, np.ndarray], threads: int, rounds: int, runs_by_batch: dict[int, int]
) -> dict[int, float]:
    z = session(merger.model_, threads)
    separate = [(session(merger.weights_.inline(s.model), threads), s.preprocess) for s in merger.sources_]
    results = {}
    for batch, images in images_by_batch.items():

        def run_z(images=images):
            z.run(["label", "probabilities"], {"image": images})

        def run_separate(images=images):
            for sess, spec in separate:
                sess.run(None, {sess.get_inputs()[0].name: numpy_preprocess(images, spec)})

        results[batch] = interleaved(
            f"({label}) batch {batch:2d}", run_z, run_separate, ("Z", "separate"), rounds, runs_by_batch[batch]
        )
    return results


# -- (a) the demo ------------------------------------------------------------------------------------------------
def case_a(args) -> None:
    from onnxmerge.recipe import load_recipe

    print("\n(a) demo sources (Fashion-MNIST CNN 28->32 NCHW + sklearn MLP flat), nothing in common but the Cast")
    recipe = load_recipe(EXAMPLE / "stage1.toml", quiet=True)
    merger = recipe.merger.fit(recipe.train)
    print(merger.share_.line())
    test = np.load(EXAMPLE / "data/test.npz")["x"]
    compare_z_separate(
        "a", merger, {b: test[:b] for b in (1, 32)}, args.threads, args.rounds, {1: args.runs, 32: args.runs}
    )


# -- (b) two heads, one backbone ---------------------------------------------------------------------------------
def case_b(args) -> None:
    from onnxmerge import ImageInput, Merger, Preprocess, Source

    folder = effnet_files(args.models, args.torch_python)
    print("\n(b) EfficientNet-Lite0: its ImageNet head + a 10-class head on the byte-identical backbone, 224x224x3")
    pre = Preprocess(**IMAGENET)
    x, y = photos(48)
    merger = Merger(
        ImageInput(224, 224, 3),
        [Source("imagenet", folder / EFFNET[0], pre), Source("head10", folder / EFFNET[1], pre)],
        quiet=True,
    ).fit(x, y)
    print(merger.share_.line())
    compare_z_separate(
        "b",
        merger,
        {1: x[:1], 32: x[:32]},
        args.threads,
        args.rounds,
        {1: max(args.runs // 10, 10), 32: max(args.runs // 100, 3)},
    )


# -- (c) extraction throughput -----------------------------------------------------------------------------------
def extraction_throughput(label: str, merger, images: np.ndarray, labels: np.ndarray, bare_batch: int, args) -> float:
    """``build``'s extraction (decode a labelled folder of PNGs, run the sources) vs a bare Pillow +
    onnxruntime loop over the same files and the same stitched graph, interleaved."""
    from PIL import Image

    from onnxmerge.files.images import load_labelled
    from onnxmerge.graph.stitch import output_names

    n, mode = len(images), "L" if images.shape[-1] == 1 else "RGB"
    names = [output_names(s.spec.name)["feature"] for s in merger.sources_]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, (img, cls) in enumerate(zip(images, labels)):
            (Path(tmp) / str(cls)).mkdir(exist_ok=True)
            files.append(Path(tmp) / str(cls) / f"{i:05d}.png")
            Image.fromarray(img[..., 0] if mode == "L" else img).save(files[-1])
        files = sorted(files)  # the order load_labelled reads them in (class folders, then names)
        bare = session(merger.weights_.inline(merger.stitched_), args.threads)

        def onnxmerge_path():
            dataset = load_labelled(tmp, merger.input)
            merger.source_outputs(dataset.x, names)  # what build runs on its training images (cache off)

        def bare_loop():
            for start in range(0, len(files), bare_batch):
                batch = np.stack(
                    [
                        np.asarray(Image.open(f).convert(mode)).reshape(merger.input.shape)
                        for f in files[start : start + bare_batch]
                    ]
                )
                bare.run(names, {"image": batch})

        times: list = []
        ratio = interleaved(
            f"{label} {n} PNGs", bare_loop, onnxmerge_path, ("bare-loop time", "onnxmerge time"), args.rounds, 3, times
        )
        t_bare, t_ours = np.median([t[0] for t in times]), np.median([t[1] for t in times])
        print(
            f"{label}: onnxmerge {n / t_ours:.0f} images/s, bare loop (batch {bare_batch}) {n / t_bare:.0f} "
            f"images/s; onnxmerge / bare loop throughput = {ratio:.3f} (target >= 0.9)"
        )
        return ratio


def case_c(args) -> None:
    from onnxmerge import ImageInput, Merger, Preprocess, Source
    from onnxmerge.recipe import load_recipe

    print("\n(c) build extraction throughput: labelled folder of PNGs -> features (demo sources)")
    merger = load_recipe(EXAMPLE / "stage1.toml", quiet=True).merger
    merger.build_graph()
    merger.quiet = True
    data = np.load(EXAMPLE / "data/test.npz")
    n = min(args.images, len(data["x"]))
    extraction_throughput("(c)", merger, data["x"][:n], data["y"][:n], merger.batch_size, args)

    folder = effnet_files(args.models, args.torch_python)
    print("\n(c, real size) the same on EfficientNet-Lite0 + its perturbed copy, 224x224x3 PNGs")
    pre = Preprocess(**IMAGENET)
    merger = Merger(
        ImageInput(224, 224, 3),
        [Source("a", folder / EFFNET[0], pre), Source("b", folder / EFFNET[2], pre)],
        quiet=True,
    )
    merger.build_graph()
    x, y = photos(args.real_images)
    extraction_throughput("(c, real size)", merger, x, y, 32, args)


# -- (d) build time and memory -----------------------------------------------------------------------------------
MEMORY_CHILD = r"""
import resource, sys, time, json, tempfile
from pathlib import Path
def status_mb(key):  # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's RSS at fork
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
import numpy as np, onnx, onnxruntime, sklearn.linear_model
from benchmarks.common import photos, IMAGENET
from onnxmerge import ImageInput, Merger, Preprocess, Source
x, y = photos(int(sys.argv[2]))
after_import = status_mb("VmRSS")
folder = Path(sys.argv[1])
start = time.perf_counter()
pre = Preprocess(**IMAGENET)
m = Merger(ImageInput(224, 224, 3), [Source("a", folder / "lite0_imagenet.onnx", pre),
                                     Source("b", folder / "lite0_other.onnx", pre)], quiet=True)
m.build_graph()
graph_peak = status_mb("VmHWM")
m.fit(x, y)
with tempfile.TemporaryDirectory() as tmp:
    m.save(Path(tmp) / "z.onnx")
seconds = time.perf_counter() - start
peak = status_mb("VmHWM")
print(json.dumps({"after_import": after_import, "graph_peak": graph_peak, "peak": peak, "seconds": seconds}))
"""


def case_d(args) -> None:
    import json

    folder = effnet_files(args.models, args.torch_python)
    print("\n(d) build time and peak memory: EfficientNet-Lite0 + a perturbed copy (nothing shared), fresh process")
    size = sum((folder / f).stat().st_size for f in (EFFNET[0], EFFNET[2])) / 2**20
    for images in (8, args.build_images):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(folder), str(images)],
            cwd=ROOT,  # the child imports benchmarks.common
            check=True,
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
        )
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"(d) {images} training images: build {r['seconds']:.1f} s; RSS after imports {r['after_import']:.0f} MB; "
            f"peak above it: after build_graph {r['graph_peak'] - r['after_import']:.0f} MB, whole build "
            f"{r['peak'] - r['after_import']:.0f} MB = {(r['peak'] - r['after_import']) / size:.2f}x the sources' "
            f"{size:.1f} MB (target <= 3x)"
        )


# -- (q) build --quantize on a real CNN (not part of the default cases) ------------------------------------------
def case_q(args) -> None:
    from onnxmerge import ImageInput, Merger, Preprocess, Source
    from onnxmerge.learn.qestimate import HeadFit
    from onnxmerge.learn.quantize import QuantizeInputs, quantize_z

    folder = effnet_files(args.models, args.torch_python)
    print("\n(q) --quantize: EfficientNet-Lite0 alone, 96 Fashion-MNIST images at 224x224x3")
    x, y = photos(96)
    merger = Merger(ImageInput(224, 224, 3), [Source("a", folder / EFFNET[0], Preprocess(**IMAGENET))], quiet=True).fit(
        x, y
    )
    fit = HeadFit(merger.head_input_.widths(merger.widths_), merger.report_["C"], merger.class_weight)
    print("\n".join(quantize_z(QuantizeInputs(merger.model_, ["a"], x, y, None, fit))[1].lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="abcd", help="any of a, b, c, d and q (quantisation, not by default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200, help="runs per block for (a); b uses runs/10 and runs/100")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=1800, help="PNG files for (c)")
    parser.add_argument("--real-images", type=int, default=192, help="224x224 PNG files for (c, real size)")
    parser.add_argument("--build-images", type=int, default=64, help="training images for (d)")
    parser.add_argument("--models", type=Path, default=None, help="EfficientNet files (default: work_dir('bench'))")
    parser.add_argument("--torch-python", default=torch_python())
    args = parser.parse_args()
    args.models = args.models or work_dir("bench")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, "
        f"onnxruntime {ort.__version__} CPU, {args.threads} intra-op threads, spinning off"
    )
    for case in args.cases:
        {"a": case_a, "b": case_b, "c": case_c, "d": case_d, "q": case_q}[case](args)


if __name__ == "__main__":
    main()
