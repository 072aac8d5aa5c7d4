"""The output blocks pasted into README.md and docs/*.md, found by their markers, and the check that keeps one
equal to what its command prints today.

A pasted block is a fenced block with no language, right after a line ``<!-- pasted: KEY -->`` (exact: the block is
the whole output) or ``<!-- pasted: KEY, excerpt -->`` (every line of the block is a line of the output, in the
output's order; other output lines may lie between them; a line ``...`` marks them); ``, times vary`` in the marker
compares everything but measured times ("0.4 s", "0.69x the time"). The test that runs the command calls
``assert_pasted(KEY, output)``; ``tests/test_docs.py`` checks that every such block has a marker and every marker a
test (or, for runs too long for the suite, a benchmark script named in the marker: ``<!-- pasted: KEY, checked by
benchmarks/X.py -->``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- pasted: ([\w-]+)((?:, [^>]*?)?) -->")


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    file: Path
    line: int  # 1-based line of the opening fence
    info: str  # the fence's language ("" for a pasted output)
    text: str
    key: str | None  # from the marker on the line before, if any
    options: str  # what follows the key in the marker (", excerpt", ", checked by ...")

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with the pasted-output marker just before it, if any."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^( *)(```+)(.*)$", lines[i])  # indented: a block inside a list item
        if not fence:
            i += 1
            continue
        indent, ticks = fence.group(1), fence.group(2)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(indent + ticks))
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
        text = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        key, options = (marker.group(1), marker.group(2)) if marker else (None, "")
        found.append(Block(path, i + 1, fence.group(3).strip(), text, key, options))
        i = end + 1
    return found


def pasted_blocks() -> dict[str, Block]:
    """Every marked block of README.md and docs/, by key (a key used twice is an error)."""
    found: dict[str, Block] = {}
    for path in documents():
        for block in blocks(path):
            if block.key is not None:
                assert block.key not in found, f"pasted key {block.key!r} is used twice ({block.where})"
                found[block.key] = block
    return found


def assert_pasted(key: str, output: str) -> None:
    """The block marked ``key`` is ``output`` (its lines in order, for an excerpt), digits included.

    ``ONNXMERGE_REPASTE=1`` (a deliberate change of what a command prints): a whole-output block that differs
    is rewritten with today's output instead of failing; excerpts are never rewritten (a person picks them)."""
    block = pasted_blocks()[key]
    if os.environ.get("ONNXMERGE_REPASTE") == "1" and "excerpt" not in block.options:
        _repaste(block, output)
        block = pasted_blocks()[key]
    pasted = block.text.splitlines()
    actual = output.rstrip("\n").splitlines()
    if "times vary" in block.options:  # measured durations and time ratios: every other digit must match
        pasted, actual = [_untimed(line) for line in pasted], [_untimed(line) for line in actual]
    # a parity check's measured difference is rounding noise of this CPU's kernels (another CPU's differs);
    # its bound and its verdict ("-> ok") are what the block claims, and they must match
    pasted, actual = [_undiffed(line) for line in pasted], [_undiffed(line) for line in actual]
    if "excerpt" in block.options:
        rest = iter(actual)  # a pasted "..." line stands for output left out
        missing = [line for line in pasted if line != "..." and not any(line == other for other in rest)]
        assert not missing, _mismatch(block, output, f"these pasted lines are not in the output, in order: {missing}")
    else:
        assert pasted == actual, _mismatch(block, output, "the pasted block differs from the output")


def _repaste(block: Block, output: str) -> None:
    """Replace ``block``'s text in its file with ``output`` (indented as the block is)."""
    lines = block.file.read_text().splitlines(keepends=True)
    indent = re.match(r"^ *", lines[block.line - 1]).group(0)
    end = block.line + len(block.text.splitlines()) if block.text else block.line
    new = [f"{indent}{line}\n" if line else "\n" for line in output.rstrip("\n").splitlines()]
    block.file.write_text("".join(lines[: block.line] + new + lines[end:]))


def _untimed(line: str) -> str:
    """``line`` with measured times ("0.4 s", "0.1 ms", "0.69x the time") replaced by a placeholder."""
    return re.sub(r"\d+(?:\.\d+)?(?= ?(?:ms|s)\b|x the time|x its float time)", "<time>", line)


def _undiffed(line: str) -> str:
    """``line`` with a parity check's measured ``max |diff|`` replaced by a placeholder."""
    return re.sub(r"(max \|diff\| )\d\.\d\de[-+]\d\d", r"\1<diff>", line)


def _mismatch(block: Block, output: str, what: str) -> str:
    return f"{block.where} ({block.key}): {what}; paste today's output:\n{output}"
