"""HtmlReport: one self-contained file; it renders in a real browser."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from latentsurgeon.report import HtmlReport, find_chromium, inspect_report  # noqa: E402


def _report() -> HtmlReport:
    report = HtmlReport("Audit <of> a model", "subtitle & more")
    report.heading("Methods").table(["method", "clean_acc"], [["none", 0.9512], ["p-clarc", 0.95]],
                                    table_id="methods", highlight=[1])
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[0, 1], [1, 0]])
    report.figure(fig, "a heatmap")
    report.paragraph("<script>alert(1)</script>", note=True)
    return report


def test_report_is_self_contained_and_escaped(tmp_path):
    path = _report().write(tmp_path / "report.html")
    text = path.read_text()
    assert re.search(r'src="(?!data:image/png;base64,)', text) is None
    assert "http://" not in text and "https://" not in text
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    assert "Audit &lt;of&gt; a model" in text
    assert "0.951" in text and 'id="methods"' in text
    assert not list(tmp_path.glob("*.tmp"))


def test_report_renders_in_headless_chromium(tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    path = _report().write(tmp_path / "report.html")
    found = inspect_report(path, tmp_path / "shot.png")
    assert found["images"] == 1 and found["loaded"] == 1
    assert {"id": "methods", "rows": 3} in found["tables"]
    assert (tmp_path / "shot.png").stat().st_size > 1000


def test_report_file_is_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = _report().write(tmp_path / "report.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
