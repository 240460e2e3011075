"""cbm: the concept-intervention experiment is an experiment of the package (its result an
``ExperimentResult``, seeds checked by the same rule) and writes the files ``latentsurgeon
cbm`` promises (tests/cbm/test_cli_cbm.py runs the command)."""

from __future__ import annotations

import json

import pytest

import latentsurgeon.cbm
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.experiments import ExperimentResult, cbm


@pytest.fixture(scope="module")
def result():
    return cbm.run([2, 5], settings=cbm.Settings(dataset="checkmark", epochs=3), quick=True)


def test_a_quick_run_is_an_experiment_result(result):
    assert isinstance(result, ExperimentResult) and result.name == cbm.NAME
    assert result.seeds == (2,) and result.quick  # quick: the first seed only
    assert result.config["seeds"] == [2] and result.config["epochs"] == 3
    assert result.title == "CBM (independent, mlp head) on checkmark"
    assert result.headline[0].startswith("cbm on checkmark (1 seed(s)): task accuracy")
    assert result.headline[0] in result.summary() and result.title in result.summary()
    assert result.records["curves"] == result.curves.rows()
    assert len(result.models) == len(result.black_box) == 1
    measured = result.measurements()
    assert set(measured["policies"]) == set(latentsurgeon.cbm.POLICIES)
    assert measured["black_box_accuracy"] == pytest.approx(result.black_box[0])


def test_write_lists_its_files(result, tmp_path):
    paths = result.write(tmp_path)
    assert [p.name for p in paths.values()] == [f"cbm_checkmark_cbm.{k}"
                                                for k in ("csv", "png", "json", "html")]
    assert list(paths.values()) == result.files[-4:]
    assert json.loads(paths["json"].read_text())["config"] == result.config


@pytest.mark.parametrize(("seeds", "settings", "match"), [
    ([0, 0], cbm.Settings(), "seeds"),
    ([], cbm.Settings(), "seeds"),
    ([0], cbm.Settings(dataset="mnist"), "dataset"),
    ([0], cbm.Settings(epochs=0), "epochs"),
    ([0], cbm.Settings(dataset="digits", noise=0.5), "noise applies to the toy data sets"),
])
def test_bad_settings_are_refused(seeds, settings, match):
    with pytest.raises(InvalidParameterError, match=match):
        cbm.run(seeds, settings=settings, quick=True)


def test_the_old_names_say_where_they_moved():
    for name, new in (("run_experiment", "latentsurgeon.experiments.cbm.run"),
                      ("ExperimentResult", "latentsurgeon.experiments.cbm.CbmResult")):
        with pytest.raises(AttributeError, match=new):
            getattr(latentsurgeon.cbm, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        latentsurgeon.cbm.nope  # noqa: B018
