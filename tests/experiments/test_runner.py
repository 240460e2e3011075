"""The runner: names, seeds and threads checked; several experiments into one report; the
default settings (slow) reproduce every headline effect."""

from __future__ import annotations

import pytest

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.experiments import (
    EXPERIMENTS,
    ExperimentResult,
    consistency_features,
    pretext,
    run_experiment,
    run_experiments,
)


def test_all_runs_every_experiment_once_in_order_under_its_own_name(monkeypatch):
    """``"all"`` means every name of ``EXPERIMENTS``, each run once, in that order, and each
    name reaches the experiment that reports under it (the runs are stubbed: this is about
    the runner's dispatch; every experiment's own run is tested in its own file)."""
    from latentsurgeon.experiments import _runner

    ran: list[str] = []
    for name in EXPERIMENTS:
        module = _runner._MODULES[name]

        def fake(seeds, *, settings, quick, progress, module=module):
            ran.append(module.NAME)
            return ExperimentResult(name=module.NAME, title=module.TITLE, claim=module.CLAIM,
                                    seeds=seeds, quick=quick, settings={})
        monkeypatch.setattr(module, "run", fake)
    results = run_experiments("all", seeds=[0], quick=True)
    assert ran == [r.name for r in results] == list(EXPERIMENTS)
    assert len(set(EXPERIMENTS)) == len(EXPERIMENTS) >= 1
    for name in EXPERIMENTS:
        assert run_experiment(name, seeds=[3]).name == name


def test_the_runs_times_are_measured_and_reach_summary_and_report(monkeypatch, tmp_path):
    """The runner measures each run's wall and CPU time around ``run`` and writes both into
    summary.json and the report. A fake clock makes the numbers exact (no timing in tests)."""
    import json
    from types import SimpleNamespace

    from latentsurgeon.experiments import _runner, roar

    wall, cpu = iter([100.0, 102.5]), iter([7.0, 8.5])
    monkeypatch.setattr(_runner, "time", SimpleNamespace(perf_counter=lambda: next(wall),
                                                         process_time=lambda: next(cpu)))
    monkeypatch.setattr(roar, "run", lambda seeds, **kw: ExperimentResult(
        name=roar.NAME, title=roar.TITLE, claim=roar.CLAIM, seeds=seeds, quick=True,
        settings={}))
    monkeypatch.setattr(roar, "report", lambda result, section: None)
    result = run_experiment("roar", seeds=[0], quick=True, out=tmp_path)
    assert (result.wall_seconds, result.cpu_seconds) == (2.5, 1.5)
    summary = json.loads((tmp_path / "roar" / "summary.json").read_text())
    assert (summary["wall_seconds"], summary["cpu_seconds"]) == (2.5, 1.5)
    assert "2.5 s wall, 1.5 s CPU" in (tmp_path / "roar" / "report.html").read_text()


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "ablation"}, "name must be one of"),
    ({"name": "roar", "seeds": []}, "seeds"),
    ({"name": "roar", "seeds": [0, 0]}, "seeds"),
    ({"name": "roar", "threads": 0}, "threads"),
])
def test_bad_arguments_are_refused_before_anything_runs(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        run_experiment(**kwargs)


def test_several_experiments_into_one_report(tmp_path, monkeypatch):
    # tiny settings: this test is about the report, the effects are tested per experiment
    monkeypatch.setattr(consistency_features.Settings, "quick", classmethod(
        lambda cls: cls(n_train=60, n_test=20, epochs=1, fractions=(0.5,), ig_steps=4,
                        shap_samples=2)))
    monkeypatch.setattr(pretext.Settings, "quick", classmethod(
        lambda cls: cls(n_train=60, n_test=20, epochs=1, shap_samples=2, control=False)))
    results = run_experiments(["consistency-features", "pretext"], seeds=[0, 1], quick=True,
                              out=tmp_path)
    assert [r.name for r in results] == ["consistency-features", "pretext"]
    html = (tmp_path / "report.html").read_text()
    for result in results:
        assert result.title in html
        assert (tmp_path / result.name / "summary.csv").exists()
        assert not (tmp_path / result.name / "report.html").exists()  # one report for all
    assert "Summary" in html and "headline effects hold" in html
    assert results[1].tasks == pretext.PRETEXT_TASKS  # no control when control=False
    with pytest.raises(InvalidParameterError):
        run_experiments([], seeds=[0])
    with pytest.raises(InvalidParameterError, match="name must be one of"):
        run_experiments(["roar", "nope"], seeds=[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_default_settings_reproduce_the_headline(name, tmp_path):
    result = run_experiment(name, out=tmp_path)
    assert result.holds, result.summary()
