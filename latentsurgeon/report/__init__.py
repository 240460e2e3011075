"""Reports a person can read: one self-contained HTML file built from result objects."""

from latentsurgeon.report.browser import find_chromium, inspect_report
from latentsurgeon.report.html import HtmlReport, figure_to_data_uri

__all__ = ["HtmlReport", "figure_to_data_uri", "find_chromium", "inspect_report"]
