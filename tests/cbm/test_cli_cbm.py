"""`latentsurgeon cbm`: trains, writes CSV/PNG/JSON/HTML, prints the headline; errors are one
line and exit code 2; every flag has help."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from latentsurgeon.cli import build_parser, main


def test_quick_run_writes_every_file(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["cbm", "--dataset", "checkmark", "--model", "cem", "--quick", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("cem on checkmark (1 seed(s)): task accuracy")
    assert "gradient" in printed and "uncertainty" in printed
    stem = out / "cbm_checkmark_cem"
    rows = list(csv.DictReader(stem.with_suffix(".csv").open()))
    assert {r["policy"] for r in rows} == {"random", "uncertainty", "gradient", "uniform"}
    assert len(rows) == 4 * 4  # K = 3 concepts: counts 0..3
    summary = json.loads(stem.with_suffix(".json").read_text())
    assert summary["config"]["model"] == "cem" and summary["n_runs"] == 1
    assert 0.0 <= summary["black_box_accuracy"] <= 1.0
    html = stem.with_suffix(".html").read_text()
    assert "data:image/png;base64," in html and "src=\"http" not in html
    assert "Intervention curves" in html
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors (one line too)
        return exc.code


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "digits", "--noise", "0.5"], "noise applies to the toy data sets"),
    (["--epochs", "0"], "epochs"),
    (["--seeds", "-1"], "seed"),
])
def test_errors_are_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    assert _exit_code(["cbm", "--quick", "--quiet", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_out_must_be_a_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _exit_code(["cbm", "--quick", "--quiet", "--out", str(blocker)]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "expected a folder" in err


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cbm = sub.choices["cbm"]
    flags = [a for a in cbm._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} >= {"dataset", "model", "out", "seeds", "quick"}
    assert all(a.help for a in flags), [a.dest for a in flags if not a.help]
