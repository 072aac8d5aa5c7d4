"""The README's Python API example runs as written (in the repository root, writing Z to a temp folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_python_api_example_runs(tmp_path, capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(code.replace('z.save("z.onnx")', f"z.save({str(tmp_path / 'z.onnx')!r})"), "README", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(["Bag", "Coat", "Dress", "Pullover", "Sandal", "Shirt", "Sneaker", "T-shirt_top", "Trouser"])
    assert out[2] == "(5, 9)" and all(line.endswith("-> ok") for line in out[3:])
    assert (tmp_path / "z.onnx").is_file()
