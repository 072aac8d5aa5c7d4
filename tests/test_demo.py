"""The README's main job: `onnxmerge demo` on the shipped Fashion-MNIST example (run once: conftest's demo_run)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow  # the demo builds four Zs (about a minute and a half on 2 cores)


def test_demo_builds_both_stages_both_ways_and_reports(demo_run):
    out, folder = demo_run["out"], demo_run["folder"]
    rows = {line[:34].strip(): line[34:].split() for line in out.splitlines()[2:8]}
    # columns: images, source, fit stage 1, fit stage 2, teachers stage 1, teachers stage 2
    assert float(rows["source a on its 5 classes"][1]) > 0.9  # the torch CNN alone
    assert float(rows["source b on its 3 classes"][1]) > 0.95  # the sklearn MLP alone
    union = rows["union of the 8 source classes"]
    assert union[0] == "1600" and min(float(v) for v in union[2:4]) > 0.8
    assert min(float(v) for v in union[4:6]) > 0.7  # no labels for the old classes at all
    bag = rows["new class 'Bag' (recall)"]
    assert bag[0] == "200" and float(bag[3]) >= 0.5 and float(bag[5]) >= 0.5
    for name in (
        "z_fit1.onnx",
        "z_fit2.onnx",
        "z_teach1.onnx",
        "z_teach2.onnx",
        "report/confusion.png",
        "report/report.html",
    ):
        assert (folder / name).is_file(), name
        assert f"wrote demo-output/{name}" in out
    for name in ("z_fit2.onnx", "z_teach2.onnx"):
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
        for batch in (1, 7):
            label, probs = session.run(["label", "probabilities"], {"image": images[:batch]})
            assert label.shape == (batch,) and probs.shape == (batch, 9) and isinstance(label[0], str)
