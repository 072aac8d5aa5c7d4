"""Peak memory of a teachers-mode build over a 224x224x3 image pool (issue 17: memory per pool image).

Writes N pool images (sklearn digits upscaled to 224x224 RGB PNGs), builds Z in teachers mode from the two
digit fixtures (torch_legacy_cnn: digits 0-4, torch_dynamo_mlp: 5-9) in a child process per run, and reports
the child's peak resident memory (``ru_maxrss`` from ``wait4``). The slope between two pool sizes is the
memory per pool image; a 224x224x3 uint8 image is 150,528 bytes (0.144 MiB).

    nice -n 10 .venv/bin/python benchmarks/pool_memory.py 1000 2000
    # the code before a change, side by side:
    git archive <commit> onnxmerge | tar -x -C /tmp/old && PYTHONPATH=/tmp/old nice -n 10 .venv/bin/python benchmarks/pool_memory.py 1000 2000
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

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"


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
        text += (f'[[sources]]\nname = "{name}"\nmodel = "{(FIXTURES / fixture).as_posix()}"\n'
                 f"labels = {json.dumps(entry['labels'])}\n[sources.preprocess]\nscale = {entry['scale']}\n"
                 f"mean = {entry['mean']}\nstd = {entry['std']}\n\n")
    text += f'[head]\nmode = "teachers"\nunlabeled = "{pool.as_posix()}"\n'
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


def peak_mib(recipe_path: Path, output: Path) -> float:
    process = subprocess.Popen([sys.executable, "-m", "onnxmerge", "build", str(recipe_path), "-o", str(output),
                                "--quiet", "--no-cache"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed ({status})")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main(counts: list[int]) -> None:
    import onnxmerge

    print(f"onnxmerge from {Path(onnxmerge.__file__).parent}")
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            pool = Path(tmp) / f"pool{count}"
            write_pool(pool, count)
            peaks[count] = peak_mib(recipe(Path(tmp), pool), Path(tmp) / "z.onnx")
            print(f"{count} pool images: peak RSS {peaks[count]:.0f} MiB")
    if len(counts) >= 2:
        a, b = counts[0], counts[-1]
        slope = (peaks[b] - peaks[a]) / (b - a)
        print(f"per pool image: {slope * 1024:.0f} KiB ({slope * 1024 / 147:.2f} x its 147 KiB of pixels)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 2000])
