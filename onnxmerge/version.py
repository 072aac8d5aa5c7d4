"""The version of onnxmerge, and how to add an optional extra to this installation (its own module, so any
layer can read them without importing the package's API)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

__version__ = "0.1.0"

#: the source checkout this package runs from, if it does (an editable install or a clone on sys.path)
_CHECKOUT = Path(__file__).resolve().parent.parent


def install_extra_command(extra: str) -> str:
    """The command that installs the optional ``extra`` (e.g. "dask") into the Python running onnxmerge.

    onnxmerge is not on a package index, so ``pip install 'onnxmerge[dask]'`` fails: from a clone it is
    ``pip install -e '.[dask]'`` in the clone; for an installed copy, the extra's own requirements.
    """
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    pyproject = _CHECKOUT / "pyproject.toml"
    if pyproject.is_file() and 'name = "onnxmerge"' in pyproject.read_text(errors="replace"):
        return f"{pip} -e {shlex.quote(f'{_CHECKOUT}[{extra}]')}"
    from importlib import metadata

    marker = f'extra == "{extra}"'
    try:
        requires = metadata.distribution("onnxmerge").requires or []
    except metadata.PackageNotFoundError:
        requires = []
    wanted = [r.split(";")[0].strip() for r in requires if marker in r]
    return f"{pip} {' '.join(shlex.quote(r) for r in wanted)}" if wanted else f"{pip} -e '.[{extra}]' (in the clone)"
