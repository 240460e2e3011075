"""The Python snippets of a markdown page, run as a reader would: in order, in one namespace.

The docs tests (README.md and docs/*.md) all use this one reader. A snippet is a fenced block
opened by a line ```` ```python ```` and closed by the next line starting with ```` ``` ````.
A snippet runs compiled under the page's path with its own line numbers, so a failing snippet's
traceback points at the line of the page (and shows it), and the error carries a note naming the
snippet (``README.md:42``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OPEN = "```python"
FENCE = "```"


@dataclass(frozen=True)
class Snippet:
    """One ```` ```python ```` block: its page, the page line of its first code line, its code."""

    path: Path
    line: int
    code: str

    @property
    def id(self) -> str:
        """``page.md:line``: names the snippet in test ids and failure notes."""
        return f"{self.path.name}:{self.line}"

    def run(self, namespace: dict) -> None:
        """Execute the snippet in ``namespace`` (what earlier snippets defined is visible)."""
        # Leading newlines put every code line at its line of the page.
        code = compile("\n" * (self.line - 1) + self.code, str(self.path), "exec")
        try:
            exec(code, namespace)  # noqa: S102
        except Exception as error:
            error.add_note(f"in the snippet at {self.id} ({self.path})")
            raise


def python_blocks(path: str | Path) -> Iterator[Snippet]:
    """Yield the Python snippets of the markdown file ``path`` in page order."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    start = None  # index of the first code line of the open block
    for index, line in enumerate(lines):
        if start is None:
            if line.strip() == OPEN:
                start = index + 1
        elif line.lstrip().startswith(FENCE):
            yield Snippet(path, start + 1, "".join(lines[start:index]))
            start = None
    if start is not None:
        raise ValueError(f"{path}: the ```python block opened at line {start} is never closed")


def run_page(path: str | Path) -> dict:
    """Run every Python snippet of ``path`` in order in one fresh namespace; returns it."""
    namespace: dict = {}
    for snippet in python_blocks(path):
        snippet.run(namespace)
    return namespace
