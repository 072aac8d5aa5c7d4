"""House rule: no module of onnxmerge/ over 400 lines, no function over 60 (checked with ast).

``DEBT`` lists the modules and functions over the limit when the rule became a test (issue 23), at their
size then: none may grow, a new one fails, and one that gets under the limit must leave the list.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxmerge"
MODULE_LINES, FUNCTION_LINES = 400, 60
DEBT: dict[str, int] = {}


def sizes() -> dict[str, int]:
    """Lines of every module over ``MODULE_LINES`` and every function over ``FUNCTION_LINES``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MODULE_LINES:
            found[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    found[f"{name}:{node.name}"] = max(lines, found.get(f"{name}:{node.name}", 0))
    return found


def test_no_module_or_function_grows_past_the_limit():
    found = sizes()
    new = {k: v for k, v in found.items() if k not in DEBT}
    assert not new, f"over {MODULE_LINES} lines a module / {FUNCTION_LINES} a function: {new}; split it"
    grown = {k: (DEBT[k], v) for k, v in found.items() if v > DEBT[k]}
    assert not grown, f"grew past its recorded size (was, now): {grown}; split it instead"
    paid = sorted(set(DEBT) - set(found))
    assert not paid, f"{paid} are under the limit now: remove them from DEBT"
