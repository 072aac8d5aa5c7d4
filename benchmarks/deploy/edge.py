"""Edge deployment of Z (issue 15): int8 that keeps accuracy, and Z on the runtimes users ship to.

Phases (``--phases``, default all, in this order; each reads what the one before wrote into ``--out``):

build     EfficientNet-Lite0 (ImageNet weights, 224x224 RGB) + the demo's PyTorch CNN (28->32 gray) -> float Z,
          fitted on ``--train`` labelled Fashion-MNIST training images upscaled to 224x224 RGB (Pillow bilinear).
quantize  ``onnxmerge.learn.quantize.quantize_z`` on that Z: calibrated on the labelled images plus ``--pool``
          other (unlabelled) training images; then, apart from what the build measures, the float and int8 Z
          run in onnxruntime on ``--test`` held-out Fashion-MNIST test images (never fitted on): accuracy
          before/after, Z int8 / Z float time at batch 32 (interleaved rounds, median), file sizes.
demo      ``onnxmerge build examples/fashion/stage1.toml --quantize`` (the small demo sources).
ort       the ORT format for onnxruntime mobile: ``python -m onnxruntime.tools.convert_onnx_models_to_ort``
          on float and int8 Z (its ``required_operators.config`` is the reduced-operator build config); the
          .ort files run in onnxruntime against the .onnx ones on the same images.
web       onnxruntime-web (WASM) in headless Chromium: ``benchmarks/deploy/web/page.html`` loads each Z, runs
          the same images and posts labels and probabilities back; compared to onnxruntime CPU.

    python -m benchmarks.deploy.edge [--phases build,quantize,demo,ort,web] [--out DIR]

Needs the EfficientNet ONNX file (``benchmarks/speed/export_efficientnet.py``, exported on first use with
``--torch-python``), and for ``web``: Debian's ``chromium`` and ``npm install onnxruntime-web`` in
``benchmarks/deploy/web`` (git-ignored). ``--out`` and ``--models`` default to ``common.work_dir``.

The held-out split of issue 29 (calibrate / estimate / test, disjoint, on three multi-source Zs) is
``python -m benchmarks.deploy.heldout``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.common import EXAMPLE, IMAGENET, effnet_files, session, torch_python, upscale, work_dir

INT8_TOLERANCE = 2e-2  # max |p_runtime - p_onnxruntime| allowed for int8 Z (requantisation rounding differs)
FLOAT_TOLERANCE = 1e-3


def data(args) -> dict[str, np.ndarray]:
    """Labelled, pool and held-out images (224x224 RGB uint8), disjoint, seeded."""
    train = np.load(EXAMPLE / "data/train.npz")
    test = np.load(EXAMPLE / "data/test.npz")
    order = np.random.default_rng(0).permutation(len(train["x"]))
    labelled, pool = order[: args.train], order[args.train : args.train + args.pool]
    known = np.flatnonzero(np.isin(test["y"], np.unique(train["y"])))  # the test file also holds "Bag"
    held = np.random.default_rng(1).permutation(known)[: args.test]
    return {
        "x": upscale(train["x"][labelled]),
        "y": train["y"][labelled].astype(str),
        "pool": upscale(train["x"][pool]),
        "test_x": upscale(test["x"][held]),
        "test_y": test["y"][held].astype(str),
    }


def run(sess, images: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = [], []
    for i in range(0, len(images), batch):
        label, prob = sess.run(["label", "probabilities"], {"image": images[i : i + batch]})
        labels.append(label)
        probs.append(prob)
    return np.concatenate(labels).astype(str), np.concatenate(probs)


def merger_for(args):
    from onnxmerge import ImageInput, Merger, Preprocess, Source

    folder = effnet_files(args.models, args.torch_python)
    cnn = EXAMPLE / "models/a_torch_cnn.onnx"
    return Merger(
        ImageInput(224, 224, 3),
        [
            Source("lite0", folder / "lite0_imagenet.onnx", Preprocess(**IMAGENET)),
            Source("cnn", cnn, Preprocess(scale=1 / 255, mean=(0.286,), std=(0.353,))),
        ],
        quiet=True,
    )


def phase_build(args, d) -> None:
    from onnxmerge.cli import build_summary

    start = time.perf_counter()
    merger = merger_for(args).fit(d["x"], d["y"])
    merger.save(args.out / "z_float.onnx")
    print(build_summary(merger, args.out / "z_float.onnx"))
    print(f"build: {len(d['x'])} labelled images, {time.perf_counter() - start:.0f} s")
    args.merger = merger


def phase_quantize(args, d) -> None:
    from onnxmerge.learn.qestimate import HeadFit
    from onnxmerge.learn.quantize import QuantizeInputs, quantize_z

    merger = getattr(args, "merger", None)
    if merger is None:
        merger = args.merger = merger_for(args).fit(d["x"], d["y"])
    fit = HeadFit(merger.head_input_.widths(merger.widths_), merger.report_["C"], merger.class_weight)
    float_z = onnx.load(str(args.out / "z_float.onnx"))
    names = [s.spec.name for s in merger.sources_]
    int8_z, report = quantize_z(QuantizeInputs(float_z, names, d["x"], d["y"], d["pool"], fit))
    print("\n".join(report.lines))
    if int8_z is float_z:
        print("quantize: the int8 Z was refused; nothing more to compare")
        return
    onnx.save(int8_z, str(args.out / "z_int8.onnx"))
    f_labels, _ = run(session(float_z), d["test_x"])
    q_labels, _ = run(session(int8_z), d["test_x"])
    print(
        f"held-out test images ({len(d['test_y'])}): accuracy float {np.mean(f_labels == d['test_y']):.3f}, "
        f"int8 {np.mean(q_labels == d['test_y']):.3f}; labels agree on {np.mean(f_labels == q_labels):.1%}"
    )


def phase_demo(args, d) -> None:
    out = args.out / "demo_z.onnx"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxmerge",
            "build",
            str(EXAMPLE / "stage1.toml"),
            "-o",
            str(out),
            "--quiet",
            "--no-cache",
            "--quantize",
        ],
        capture_output=True,
        text=True,
    )
    print(result.stdout + result.stderr)


# -- ORT format (onnxruntime mobile) ---------------------------------------------------------------------------------
def models(args) -> list[Path]:
    return [p for p in (args.out / "z_float.onnx", args.out / "z_int8.onnx") if p.exists()]


def phase_ort(args, d) -> None:
    from onnxmerge.runtime.deploy import ort_format

    images = d["test_x"][: args.images]
    for path in models(args):
        result = ort_format(path, args.out / "ort")
        ref_l, ref_p = run(session(path), images)
        got_l, got_p = run(session(result.ort), images)
        tol = INT8_TOLERANCE if "int8" in path.name else FLOAT_TOLERANCE
        diff = float(np.abs(ref_p - got_p).max())
        print(
            f"ort format: {path.name} {path.stat().st_size / 1e6:.2f} MB -> {result.ort.name} "
            f"{result.ort.stat().st_size / 1e6:.2f} MB; {len(result.operators)} op types in "
            f"{result.config.name}: {', '.join(result.operators)}"
        )
        print(
            f"ort format: {path.name} on {len(images)} images: labels equal {np.mean(ref_l == got_l):.0%}, "
            f"max |p_ort - p_onnx| {diff:.2e} (tolerance {tol:g}) -> {'ok' if diff <= tol and (ref_l == got_l).all() else 'FAIL'}"
        )


# -- onnxruntime-web (WASM) in headless Chromium --------------------------------------------------------------------
WEB = Path(__file__).resolve().parent / "web"


class _Handler(http.server.SimpleHTTPRequestHandler):
    results: dict = {}

    def do_POST(self):  # the page posts its results here
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Handler.results[self.path.strip("/")] = json.loads(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def phase_web(args, d) -> None:
    if not (WEB / "node_modules/onnxruntime-web/dist").exists():
        print(f"web: skipped, run `npm install onnxruntime-web` in {WEB}")
        return
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("web: skipped, no chromium (apt-get install -y chromium)")
        return
    images = d["test_x"][: args.images]
    serve = args.out / "web"
    serve.mkdir(exist_ok=True)
    (serve / "images.bin").write_bytes(np.ascontiguousarray(images).tobytes())
    for path in models(args):
        shutil.copy(path, serve / path.name)
    shutil.copy(WEB / "page.html", serve / "page.html")
    dist = serve / "ort"
    if not dist.exists():
        dist.symlink_to(WEB / "node_modules/onnxruntime-web/dist")
    version = json.loads((WEB / "node_modules/onnxruntime-web/package.json").read_text())["version"]

    handler = lambda *a, **k: _Handler(*a, directory=str(serve), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    for path in models(args):
        _Handler.results.clear()
        h, w, c = images.shape[1:]
        url = f"http://127.0.0.1:{port}/page.html?model={path.name}&n={len(images)}&h={h}&w={w}&c={c}"
        start = time.perf_counter()
        browser = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={serve / 'profile'}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while "result" not in _Handler.results and time.perf_counter() - start < args.web_timeout:
            time.sleep(0.5)
        browser.terminate()
        browser.wait(timeout=30)
        result = _Handler.results.get("result")
        if result is None or "error" in result:
            print(f"web: {path.name}: FAIL ({(result or {}).get('error', 'no answer within the timeout')})")
            continue
        ref_l, ref_p = run(session(path), images)
        got_l = np.asarray(result["labels"]).astype(str)
        got_p = np.asarray(result["probabilities"], np.float32).reshape(ref_p.shape)
        tol = INT8_TOLERANCE if "int8" in path.name else FLOAT_TOLERANCE
        diff = float(np.abs(ref_p - got_p).max())
        print(
            f"web: onnxruntime-web {version} (wasm, 1 thread) in {Path(chromium).name} headless, {path.name} on "
            f"{len(images)} images: labels equal {np.mean(ref_l == got_l):.0%}, max |p_web - p_onnx| {diff:.2e} "
            f"(tolerance {tol:g}) -> {'ok' if diff <= tol and (ref_l == got_l).all() else 'FAIL'}; "
            f"session {result['load_ms']:.0f} ms, run {result['run_ms']:.0f} ms"
        )
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="build,quantize,demo,ort,web")
    parser.add_argument("--out", type=Path, default=None, help="default: common.work_dir('deploy')")
    parser.add_argument(
        "--models", type=Path, default=None, help="EfficientNet ONNX files (default: work_dir('bench'))"
    )
    parser.add_argument("--torch-python", default=torch_python())
    parser.add_argument("--train", type=int, default=240, help="labelled training images (30 per class)")
    parser.add_argument("--pool", type=int, default=272, help="unlabelled training images for calibration")
    parser.add_argument("--test", type=int, default=400, help="held-out test images")
    parser.add_argument("--images", type=int, default=32, help="images run on the ORT-format and web runtimes")
    parser.add_argument("--methods", default="MinMax,Percentile,Entropy")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--web-timeout", type=float, default=600)
    args = parser.parse_args()
    args.out = args.out or work_dir("deploy")
    args.models = args.models or work_dir("bench")
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores; python "
        f"{platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    )
    d = data(args)
    for phase in args.phases.split(","):
        print(f"\n== {phase}")
        globals()[f"phase_{phase}"](args, d)


if __name__ == "__main__":
    main()
