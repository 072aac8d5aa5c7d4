"""Peak memory of a teachers-mode build over a 224x224x3 image pool (issue 17: memory per pool image).

Writes N pool images (sklearn digits upscaled to 224x224 RGB PNGs), builds Z in teachers mode from the two
digit fixtures (torch_legacy_cnn: digits 0-4, torch_dynamo_mlp: 5-9) in a child process per run, and reports
the child's peak resident memory (``ru_maxrss`` from ``wait4``). The slope between two pool sizes is the
memory per pool image; a 224x224x3 uint8 image is 150,528 bytes (0.144 MiB).

    nice -n 10 .venv/bin/python -m benchmarks.scale.pool_memory 1000 2000
    # a cluster build (issue 14): the builds run with --address on a LocalCluster of 2 workers started here;
    # the client's own RSS is sampled every 20 ms (the workers are not its children)
    nice -n 10 .venv/bin/python -m benchmarks.scale.pool_memory --dask 1000 4000
    # the code before a change, side by side: the same command from a checkout of that commit
    # (``git worktree add DIR COMMIT``; ``python -m`` runs the onnxmerge of the folder it starts in)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from benchmarks.common import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "models"


def write_pool(folder: Path, count: int) -> None:
    data = load_digits()
    images = np.round(data.images * 255.0 / 16.0).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gray = Image.fromarray(images[i % len(images)]).resize((224, 224), Image.Resampling.NEAREST)
        gray.convert("RGB").save(folder / f"{i:05d}.png", compress_level=1)


def recipe(folder: Path, pool: Path) -> Path:
    manifest = {m["file"]: m for m in json.loads((FIXTURES / "manifest.json").read_text())}
    text = "[input]\nheight = 224\nwidth = 224\nchannels = 3\n\n"
    for name, fixture in (("low", "torch_legacy_cnn.onnx"), ("high", "torch_dynamo_mlp.onnx")):
        entry = manifest[fixture]
        text += (
            f'[[sources]]\nname = "{name}"\nmodel = "{(FIXTURES / fixture).as_posix()}"\n'
            f"labels = {json.dumps(entry['labels'])}\n[sources.preprocess]\nscale = {entry['scale']}\n"
            f"mean = {entry['mean']}\nstd = {entry['std']}\n\n"
        )
    text += f'[head]\nmode = "teachers"\nunlabeled = "{pool.as_posix()}"\n'
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


def peak_mib(recipe_path: Path, output: Path, address: str | None = None) -> float:
    """Peak RSS of a build process: ``ru_maxrss`` from ``wait4`` (the build and its probe children), or
    with ``address`` the build process alone, sampled every 20 ms."""
    import time

    extra = ["--address", address] if address else []
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxmerge",
            "build",
            str(recipe_path),
            "-o",
            str(output),
            "--quiet",
            "--no-cache",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )
    sampled = 0
    if address:
        import psutil

        me = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                sampled = max(sampled, me.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
        status = process.returncode
        if status != 0:
            raise SystemExit(f"build failed ({status})")
        return sampled / 2**20
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed ({status})")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main(counts: list[int], dask: bool = False) -> None:
    import onnxmerge

    print(f"onnxmerge from {Path(onnxmerge.__file__).parent}" + ("; builds on a 2-worker LocalCluster" if dask else ""))
    peaks = {}
    cluster = None
    if dask:
        from onnxmerge.runtime.dask_engine import DaskCluster

        cluster = DaskCluster(workers=2, quiet=True)
    address = cluster.cluster.scheduler_address if cluster else None
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            pool = Path(tmp) / f"pool{count}"
            write_pool(pool, count)
            peaks[count] = peak_mib(recipe(Path(tmp), pool), Path(tmp) / "z.onnx", address)
            print(f"{count} pool images: peak RSS {peaks[count]:.0f} MiB")
    if len(counts) >= 2:
        a, b = counts[0], counts[-1]
        slope = (peaks[b] - peaks[a]) / (b - a)
        print(f"per pool image: {slope * 1024:.0f} KiB ({slope * 1024 / 147:.2f} x its 147 KiB of pixels)")

    if cluster:
        cluster.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--dask"]
    main([int(a) for a in args] or [1000, 2000], dask="--dask" in sys.argv)
