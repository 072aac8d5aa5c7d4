"""Issue 14, "past one machine": ``predict --engine dask`` against a plain single-process onnxruntime loop.

Data: Fashion-MNIST images of ``examples/fashion/data/*.npz`` written as PNG files (repeated to the count
asked for), 28x28 gray ("small"), and resized bilinearly to 224x224 gray ("224"); they go to ``--data``
(default ``common.work_dir("scale")``), never into git. Z: ``examples/fashion/stage1.toml`` built for the
input size (for 224x224, Z's graph resizes to each source's 28x28 / 32x32 input).

Throughput (images/s, files to predictions, decoding included), one process each, interleaved round by
round, medians over ``--rounds``:

* ``loop tN``: the plain loop: the folder listed as the Dask run lists it, Pillow decodes batch by batch, one onnxruntime session of Z with N intra-op
  threads runs each batch of 128; rows kept in memory.
* ``dask Nw``: ``onnxmerge.predict.write_predictions`` (what ``predict --engine dask --out`` runs) on an
  already started LocalCluster of N single-threaded worker processes on 127.0.0.1, writing the Parquet
  dataset. Fixed costs are timed apart: cluster start-up, and loading Z (``ZModel`` checks the file in a
  child process), as the loop's session is created before its clock starts.

Client memory: peak RSS of a fresh ``onnxmerge predict Z DIR --address ADDR --out P.parquet`` process
(``os.wait4``'s ru_maxrss) against the number of images.

    python -m benchmarks.scale.dask_predict [--small 20000] [--large 2000] [--rounds 3] [--memory 2000,20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks.common import EXAMPLE, work_dir

CLI = [sys.executable, "-m", "onnxmerge"]


def make_images(folder: Path, count: int, size: int) -> Path:
    """``count`` Fashion-MNIST PNGs of ``size`` x ``size`` in ``folder`` (reused when already there)."""
    done = folder / f".done-{count}"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    x = np.concatenate([np.load(EXAMPLE / "data" / f)["x"] for f in ("train.npz", "test.npz")])
    for i in range(count):
        sub = folder / f"{i // 10000:03d}"
        if i % 10000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(x[i % len(x), ..., 0])
        if size != 28:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        img.save(sub / f"{i:07d}.png", compress_level=1)
    done.touch()
    return folder


def build_z(out: Path, size: int) -> Path:
    """Z from the demo's stage-1 recipe for ``size`` x ``size`` gray input."""
    if out.exists():
        return out
    text = (EXAMPLE / "stage1.toml").read_text()
    if size != 28:  # the same training images, resized like the files
        text = text.replace("height = 28\nwidth = 28", f"height = {size}\nwidth = {size}", 1)
        train = np.load(EXAMPLE / "data/train.npz")
        x = np.stack(
            [
                np.asarray(Image.fromarray(img[..., 0]).resize((size, size), Image.Resampling.BILINEAR))
                for img in train["x"]
            ]
        )[..., None]
        np.savez(out.with_suffix(".train.npz"), x=x, y=train["y"])
        text = text.replace('"data/train.npz"', f'"{out.with_suffix(".train.npz")}"')
        assert f"height = {size}" in text and ".train.npz" in text
    recipe = EXAMPLE / f".scale-{size}.toml"  # paths in the recipe are relative to it
    recipe.write_text(text)
    try:
        subprocess.run(
            CLI + ["build", str(recipe), "-o", str(out), "--quiet", "--no-cache"], check=True, stdout=subprocess.DEVNULL
        )
    finally:
        recipe.unlink()
    return out


def plain_loop(z: Path, folder: Path, threads: int, batch: int = 128) -> float:
    """Files -> predictions in one process: Pillow + one onnxruntime session. Returns seconds (listing the
    folder included, with the same ``list_images`` the Dask run lists it with)."""
    from onnxmerge.files.listing import list_images

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(z), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    files = list_images([str(folder)])
    labels = []
    for i in range(0, len(files), batch):
        images = np.stack([np.asarray(Image.open(f).convert("L"), np.uint8)[..., None] for f in files[i : i + batch]])
        labels.append(session.run(["label"], {"image": images})[0])
    np.concatenate(labels)
    return time.perf_counter() - start


def dask_run(z: Path, folder: Path, cluster, out: Path) -> float:
    """``write_predictions`` on a started cluster (listing the folder included, loading Z not: like the loop's
    session, it is a fixed cost per command, timed apart). Returns seconds."""
    from onnxmerge.files.listing import list_images
    from onnxmerge.predict import write_predictions

    model = _zmodel(z)
    start = time.perf_counter()
    written = write_predictions(model, list_images([str(folder)]), cluster, str(out))
    seconds = time.perf_counter() - start
    assert not written.errors
    shutil.rmtree(out)
    return seconds


_LOADED: dict = {}


def _zmodel(z: Path):
    """``ZModel(z)``, loaded once (onnxmerge's load_model checks the file in a child process: seconds)."""
    from onnxmerge.predict import ZModel

    if z not in _LOADED:
        start = time.perf_counter()
        _LOADED[z] = ZModel(z, quiet=True)
        print(f"fixed cost: ZModel({z.name}) loaded and checked in {time.perf_counter() - start:.1f} s")
    return _LOADED[z]


def client_peak(z: Path, folder: Path, address: str, out: Path) -> tuple[float, float, float]:
    """Peak RSS (MB) of a fresh ``onnxmerge predict --address --out`` process, sampled every 20 ms (the client
    alone), os.wait4's ru_maxrss (the largest of it and its children: load_model's probe child), wall time."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        CLI + ["predict", str(z), str(folder), "--address", address, "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
    )
    client, sampled = psutil.Process(proc.pid), 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            sampled = max(sampled, client.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0
    shutil.rmtree(out)
    return sampled / 2**20, usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", default="2000,20000", help="image counts for the client-memory runs")
    parser.add_argument("--sets", default="small,224", help="which throughput sets to run")
    parser.add_argument("--data", type=Path, default=None, help="image folders and Zs (default: work_dir)")
    args = parser.parse_args()
    args.data = args.data or work_dir("scale")
    from onnxmerge.files.listing import list_images
    from onnxmerge.runtime.dask_engine import DaskCluster

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; onnxruntime {ort.__version__}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    sets = {"small": (args.small, 28), "224": (args.large, 224)}
    counts = sorted({int(n) for n in args.memory.split(",") if n} | {args.small})
    data = {}
    for name, (count, size) in sets.items():
        top = max(counts) if name == "small" else count
        started = time.perf_counter()
        root = make_images(args.data / f"{name}-{top}", top, size)
        data[name] = (root, build_z(args.data / f"z{size}.onnx", size))
        print(f"{name}: {top} PNG files of {size}x{size} ready ({time.perf_counter() - started:.0f} s)")
    for n in counts:  # subsets for the memory runs: folders of links to the first n files
        sub = args.data / f"small-first-{n}"
        if not sub.exists() and n != max(counts):
            sub.mkdir()
            for f in list_images([str(data["small"][0])])[:n]:
                os.symlink(f, sub / Path(f).name)
    started = time.perf_counter()
    clusters = {w: DaskCluster(workers=w, quiet=True) for w in (1, 2)}
    print(f"two LocalClusters (1 and 2 workers) started in {time.perf_counter() - started:.1f} s")
    try:
        for name, (count, size) in sets.items():
            root, z = data[name]
            folder = root if name != "small" or count == max(counts) else args.data / f"small-first-{count}"
            files = list_images([str(folder)])
            if not args.rounds or name not in args.sets.split(","):
                continue
            for w in (1, 2):  # warm-up, untimed: the workers import onnxmerge, Pillow and pyarrow once
                dask_run(z, folder, clusters[w], args.data / "p.parquet")
            times: dict[str, list[float]] = {}
            for r in range(args.rounds):
                order = [
                    ("loop t1", lambda: plain_loop(z, folder, 1)),
                    ("loop t2", lambda: plain_loop(z, folder, 2)),
                    ("dask 1w", lambda: dask_run(z, folder, clusters[1], args.data / "p.parquet")),
                    ("dask 2w", lambda: dask_run(z, folder, clusters[2], args.data / "p.parquet")),
                ]
                for key, run in order if r % 2 == 0 else order[::-1]:
                    times.setdefault(key, []).append(run())
                print(
                    f"{name} round {r}: " + ", ".join(f"{k} {len(files) / v[-1]:.0f}/s" for k, v in times.items()),
                    flush=True,
                )
            med = {k: float(np.median(v)) for k, v in times.items()}
            print(
                f"{name} ({len(files)} files of {size}x{size}) median images/s: "
                + ", ".join(f"{k} {len(files) / v:.0f}" for k, v in med.items())
                + f"; dask 1w / loop t1 {med['loop t1'] / med['dask 1w']:.2f}, "
                f"dask 2w / loop t2 {med['loop t2'] / med['dask 2w']:.2f}, "
                f"dask 2w / loop t1 {med['loop t1'] / med['dask 2w']:.2f}"
            )
        root, z = data["small"]
        for n in counts:
            folder = root if n == max(counts) else args.data / f"small-first-{n}"
            peak, tree, seconds = client_peak(z, folder, clusters[2].cluster.scheduler_address, args.data / "m.parquet")
            print(
                f"client peak RSS, predict --address --out on {n} images: {peak:.0f} MB sampled "
                f"(ru_maxrss {tree:.0f} MB; {seconds:.1f} s wall)",
                flush=True,
            )
    finally:
        for cluster in clusters.values():
            cluster.close()


if __name__ == "__main__":
    main()
