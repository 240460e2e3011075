"""A self-contained HTML report: one file, plots embedded as PNG data URIs, no external URL."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentsurgeon._io import write_text_atomic

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1d2330; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #d8dce5; padding-bottom: .2rem; }
p.lead { color: #4a5262; margin-top: 0; }
table { border-collapse: collapse; margin: .8rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8dce5; padding: .35rem .7rem; text-align: right; }
th { background: #f1f3f7; } td:first-child, th:first-child { text-align: left; }
tr.highlight td { background: #eef7ee; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e4e7ee; }
figcaption { color: #4a5262; font-size: .9rem; }
.note { background: #f7f8fb; border-left: 3px solid #7a8599; padding: .5rem .8rem; }
code { background: #f1f3f7; padding: 0 .25rem; border-radius: 3px; }
footer { margin-top: 2.5rem; border-top: 1px solid #d8dce5; color: #4a5262; font-size: .85rem; }
footer dl { display: grid; grid-template-columns: max-content auto; gap: .1rem .8rem; }
footer dt { font-weight: 600; } footer dd { margin: 0; }
"""


def figure_to_data_uri(figure: Any, dpi: int = 110) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: Any, precision: int) -> str:
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    return html.escape(str(value))


class HtmlReport:
    """Build a report section by section, then :meth:`write` one self-contained file.

    Example::

        report = HtmlReport("Shortcut audit")
        report.heading("Methods")
        report.table(["method", "clean"], [["none", 0.95]])
        report.figure(fig, "Attribution before and after")
        report.write("report.html")
    """

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._parts: list[str] = []
        self._footer: list[tuple[str, str]] = []

    def heading(self, text: str) -> HtmlReport:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def paragraph(self, text: str, *, note: bool = False) -> HtmlReport:
        css = ' class="note"' if note else ""
        self._parts.append(f"<p{css}>{html.escape(text)}</p>")
        return self

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
              precision: int = 3, table_id: str | None = None,
              highlight: Sequence[int] = ()) -> HtmlReport:
        """A table; ``highlight`` lists row indices to shade."""
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = []
        for index, row in enumerate(rows):
            css = ' class="highlight"' if index in highlight else ""
            cells = "".join(f"<td>{_cell(v, precision)}</td>" for v in row)
            body.append(f"<tr{css}>{cells}</tr>")
        self._parts.append(f"<table{ident}><thead><tr>{head}</tr></thead>"
                           f"<tbody>{''.join(body)}</tbody></table>")
        return self

    def figure(self, figure: Any, caption: str = "", *, alt: str | None = None) -> HtmlReport:
        """Embed a matplotlib figure (closed afterwards)."""
        uri = figure_to_data_uri(figure)
        alt_text = html.escape(alt or caption or "figure")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img src="{uri}" alt="{alt_text}">{cap}</figure>')
        return self

    def footer(self, entries: dict[str, Any]) -> HtmlReport:
        """Record ``{label: value}`` in the report's footer (version, date, seed, settings,
        timings: what a reader needs to reproduce it)."""
        self._footer.extend((str(k), str(v)) for k, v in entries.items())
        return self

    def render(self) -> str:
        subtitle = f'<p class="lead">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        footer = ""
        if self._footer:
            items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                            for k, v in self._footer)
            footer = f'<footer id="run-info"><dl>{items}</dl></footer>'
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                f"<body><h1>{html.escape(self.title)}</h1>{subtitle}"
                + "\n".join(self._parts) + footer + "</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the report atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, self.render())
