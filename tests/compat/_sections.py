"""Run the Python snippets of one seed's section of docs/compat.md (a section runs from its
``## <seed>:`` heading to the next ``## `` heading), in order, in one namespace."""

from __future__ import annotations

from pathlib import Path

from _snippets import python_blocks

PAGE = Path(__file__).resolve().parents[2] / "docs" / "compat.md"


def run_section(seed: str) -> dict:
    lines = PAGE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {seed}:")) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    snippets = [s for s in python_blocks(PAGE) if start < s.line <= end]
    assert snippets, f"the {seed} section of {PAGE.name} has no Python snippet"
    namespace: dict = {}
    for snippet in snippets:
        snippet.run(namespace)
    return namespace
