"""Shared checks of what an experiment run writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from latentsurgeon.experiments import ExperimentResult

SEEDS = (0, 1, 2)


def check_written(result: ExperimentResult, folder: Path) -> dict[str, list[dict[str, str]]]:
    """The CSV tables, plots, summary and report of ``result`` exist and agree with it; returns
    the tables as read back."""
    tables = {}
    for name, rows in result.records.items():
        with open(folder / f"{name}.csv", newline="") as handle:
            read = list(csv.DictReader(handle))
        assert len(read) == len(rows) > 0, name
        # the columns are the union over the rows (a loss may log a term the others lack)
        assert set(read[0]) == {key for row in rows for key in row}, name
        tables[name] = read
    pngs = sorted(folder.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["checks"] == result.checks and summary["headline"] == result.headline
    assert summary["seeds"] == list(result.seeds)
    html = (folder / "report.html").read_text()
    assert result.title in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert 'id="run-info"' in html and "CPU" in html
    # the run's timing reaching summary and report is tested with a fake clock (test_runner)
    assert {p.name for p in result.files} >= {p.name for p in pngs} | {"report.html"}
    return tables
