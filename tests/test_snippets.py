"""tests/_snippets.py, the one reader of the docs tests: which blocks it finds, their page lines,
the order and namespace they run in, and what a failing snippet reports."""

from __future__ import annotations

import traceback

import pytest
from _snippets import python_blocks, run_page

PAGE = """# A page

Text with `inline` code and a ``` fence in the middle of a line.

```python
x = 1
```

```bash
echo not python
```

```text
y = 100
```

  ```python
y = x + 1

```

```python
z = [x, y]
```
"""


def test_finds_the_python_blocks_with_their_page_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    blocks = list(python_blocks(page))
    assert [b.code for b in blocks] == ["x = 1\n", "y = x + 1\n\n", "z = [x, y]\n"]
    lines = PAGE.splitlines()
    assert [lines[b.line - 1] for b in blocks] == ["x = 1", "y = x + 1", "z = [x, y]"]
    assert [b.id for b in blocks] == ["page.md:6", "page.md:18", "page.md:23"]
    assert all(b.path == page for b in blocks)


def test_runs_in_order_in_one_namespace(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    namespace = run_page(page)
    assert (namespace["x"], namespace["y"], namespace["z"]) == (1, 2, [1, 2])
    assert run_page(page) is not namespace  # a fresh namespace per run


def test_a_failing_snippet_names_its_page_line(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("intro\n\n```python\na = 1\nb = a / 0\n```\n")
    with pytest.raises(ZeroDivisionError) as info:
        run_page(page)
    assert "in the snippet at broken.md:4" in "".join(info.value.__notes__)
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno, last.line) == (str(page), 5, "b = a / 0")


def test_an_unclosed_block_is_an_error(tmp_path):
    page = tmp_path / "open.md"
    page.write_text("```python\nx = 1\n")
    with pytest.raises(ValueError, match="opened at line 1 is never closed"):
        list(python_blocks(page))
