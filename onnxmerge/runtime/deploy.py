"""Z for onnxruntime mobile: the ORT format and the reduced-operator build config listing Z's ops.

onnxruntime's own converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``) writes ``Z.ort``
(optimised for ``target_platform``, "arm" for phones: no x86-only layout transforms baked in) and
``required_operators.config``, the ``--include_ops_by_config`` input of a minimal onnxruntime build. The
converter runs in a child process (its own logging, and a failure is an error message, not a traceback).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import OnnxMergeError


@dataclass
class OrtFormat:
    ort: Path  # the ORT-format model
    config: Path  # required_operators.config (reduced-operator build)
    operators: list[str]  # "domain;opset;Op" entries, one per op type, as the config lists them


def config_operators(config: Path) -> list[str]:
    """``domain;opset;Op`` for every op type a ``required_operators.config`` lists (comments skipped)."""
    ops = []
    for line in config.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            domain, opset, names = line.split(";", 2)
            ops += [f"{domain};{opset};{name}" for name in names.split(",") if name]
    return sorted(ops)


def ort_format(model: str | Path, output_dir: str | Path, target_platform: str = "arm") -> OrtFormat:
    """Convert ``model`` (.onnx) to the ORT format in ``output_dir``; returns the files written."""
    model, output_dir = Path(model), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxmerge-ort-") as tmp:
        # the converter converts every .onnx in a folder and writes one config for all: give it this one alone
        source = Path(tmp) / model.name
        source.symlink_to(model.resolve())
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime.tools.convert_onnx_models_to_ort",
                str(source),
                "--output_dir",
                tmp,
                "--optimization_style",
                "Fixed",
                "--target_platform",
                target_platform,
            ],
            capture_output=True,
            text=True,
        )
        ort_file = Path(tmp) / (model.stem + ".ort")
        config = next(Path(tmp).glob("*.config"), None)
        if result.returncode != 0 or not ort_file.exists() or config is None:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OnnxMergeError(f"onnxruntime could not convert {model} to the ORT format ({tail[0]}).")
        target, target_config = output_dir / ort_file.name, output_dir / f"{model.stem}.required_operators.config"
        ort_file.replace(target)
        config.replace(target_config)
    return OrtFormat(target, target_config, config_operators(target_config))
