"""`latentsurgeon explain-experiment`: runs an experiment, prints its headline with intervals,
writes its files; bad arguments are one-line errors with exit code 2."""

from __future__ import annotations

import pytest

from latentsurgeon.cli import main
from latentsurgeon.cli.explain_experiment import NAMES
from latentsurgeon.experiments import EXPERIMENTS, consistency_features


def test_the_command_lists_every_experiment():
    assert NAMES == EXPERIMENTS


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(consistency_features.Settings, "quick", classmethod(
        lambda cls: cls(n_train=60, n_test=20, epochs=1, fractions=(0.2, 0.5), ig_steps=4,
                        shap_samples=2)))


def test_runs_and_prints_the_headline(tiny, tmp_path, capsys):
    code = main(["explain-experiment", "consistency-features", "--quick", "--seeds", "0", "1",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Consistency of label-free feature importance (2 seeds, quick" in out
    assert "Saliency: shift" in out and " +- " in out
    assert "[holds]" in out or "[FAILS]" in out
    assert "s wall" in out and "s CPU" in out
    folder = tmp_path / "consistency-features"
    assert f"report: {folder / 'report.html'}" in out
    assert {p.name for p in folder.iterdir()} >= {"shift.csv", "summary.csv", "shift.png",
                                                  "summary.json", "report.html"}


@pytest.mark.parametrize("argv, message", [
    (["explain-experiment", "ablation"], "invalid choice"),
    (["explain-experiment", "roar", "--seeds", "-1"], "a seed is an integer >= 0"),
    (["explain-experiment", "roar", "--threads", "0"], "--threads takes a positive integer"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_repeated_seeds_are_one_line_error(capsys):
    assert main(["explain-experiment", "roar", "--seeds", "1", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seeds must be distinct")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_all_into_one_report(tmp_path, capsys):
    assert main(["explain-experiment", "all", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("mean +- 95% t-interval over seeds") == len(EXPERIMENTS)
    html = (tmp_path / "report.html").read_text()
    assert html.count("The paper&#x27;s claim") == len(EXPERIMENTS)
