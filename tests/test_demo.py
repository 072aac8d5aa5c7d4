"""The README's main job: `onnxmerge demo` on the shipped Fashion-MNIST example."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from onnxmerge.cli import main


def test_demo_builds_both_stages_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = {line[:38].strip(): line[38:].split() for line in out.splitlines()[1:6]}
    assert float(rows["source a on its 5 classes"][1]) > 0.9      # the torch CNN alone
    assert float(rows["source b on its 3 classes"][1]) > 0.95     # the sklearn MLP alone
    union = rows["union of the 8 source classes"]
    assert union[0] == "1600" and float(union[2]) > 0.8 and float(union[3]) > 0.8
    bag = rows["new class 'Bag' (recall)"]
    assert bag[0] == "200" and float(bag[3]) >= 0.5
    for name in ("z_stage1.onnx", "z_stage2.onnx", "report/confusion.png", "report/report.html"):
        assert (tmp_path / name).is_file(), name
    session = ort.InferenceSession(str(tmp_path / "z_stage2.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    for batch in (1, 7):
        label, probs = session.run(["label", "probabilities"], {"image": images[:batch]})
        assert label.shape == (batch,) and probs.shape == (batch, 9) and isinstance(label[0], str)
