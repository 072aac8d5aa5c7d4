"""The README's Python API example runs as written (in the repository root, writing Z to a temp folder) and
prints exactly the block pasted after it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pasted import assert_pasted

ROOT = Path(__file__).resolve().parent.parent


def test_python_api_example_runs(tmp_path, capsys):
    section = (ROOT / "README.md").read_text().split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(code.replace('z.save("z.onnx")', f"z.save({str(tmp_path / 'z.onnx')!r})"), "README", "exec"), {})
    finally:
        os.chdir(cwd)
    assert_pasted("python-api", capsys.readouterr().out)
    assert (tmp_path / "z.onnx").is_file()
