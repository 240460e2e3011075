"""Bad input to the experiments (lfxai's studies and the CBM experiment): each is refused before
any run starts, with our exception and a message naming the argument, what it accepts and what
it got; no file is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentsurgeon.errors import InvalidParameterError, NonFiniteError
from latentsurgeon.experiments import cbm, mean_interval, roar, run_experiment, run_experiments
from tests.reliability._harness import Case, check, tree_digest


def _cases(tmp):
    afile = tmp / "a-file"
    return [
        Case("an unknown experiment", lambda: run_experiment("ablation", seeds=(0,)),
             InvalidParameterError, ["name must be one of", "roar", "'ablation'"]),
        Case("no seeds", lambda: run_experiment("roar", seeds=()), InvalidParameterError,
             ["seeds must be a non-empty list", "got []"]),
        Case("a repeated seed", lambda: run_experiment("roar", seeds=(0, 0)),
             InvalidParameterError, ["distinct", "[0, 0]"]),
        Case("a negative seed", lambda: run_experiments("all", seeds=(-1,)),
             InvalidParameterError, ["ints >= 0", "[-1]"]),
        Case("no threads", lambda: run_experiment("roar", seeds=(0,), threads=0),
             InvalidParameterError, ["threads", "[1, inf]", "got 0"]),
        Case("no experiments", lambda: run_experiments([], seeds=(0,)), InvalidParameterError,
             ["names must name at least one", "got none"]),
        Case("an output folder that is a file", lambda: run_experiment(
            "roar", seeds=(0,), quick=True, out=afile), InvalidParameterError,
             ["out must be a folder", "a-file", "existing file"]),
        Case("an output folder under a file", lambda: run_experiments(
            ["roar", "pretext"], seeds=(0,), quick=True, out=afile / "runs"),
             InvalidParameterError, ["out must be a folder", "lies under the file"]),
        Case("an interval of nothing", lambda: mean_interval([]), InvalidParameterError,
             ["values must hold at least one number", "none"]),
        Case("an interval of NaN", lambda: mean_interval([1.0, float("nan")]), NonFiniteError,
             ["nan", "1 non-finite"]),
        Case("an interval at confidence above 1", lambda: mean_interval([1.0, 2.0], 1.5),
             InvalidParameterError, ["confidence must lie in (0, 1)", "1.5"]),
        Case("ROAR of an unknown attribution method", lambda: roar.run(
            (0,), settings=roar.Settings(method="lrp"), quick=True, progress=False),
             InvalidParameterError, ["method must be one of", "saliency", "'lrp'"]),
        Case("the CBM experiment with a repeated seed", lambda: cbm.run(
            (1, 1), quick=True, progress=False), InvalidParameterError, ["distinct", "1"]),
        Case("the CBM experiment on an unknown data set", lambda: cbm.run(
            (0,), settings=cbm.Settings(dataset="circles"), quick=True, progress=False),
             InvalidParameterError, ["dataset", "'circles'"]),
    ]


CASE_NAMES = [c.name for c in _cases(Path("."))]


@pytest.mark.parametrize("index", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_bad_experiment_input_is_refused_and_writes_nothing(index, tmp_path):
    (tmp_path / "a-file").write_text("kept")
    before = tree_digest(tmp_path)
    check(_cases(tmp_path)[index])
    assert tree_digest(tmp_path) == before
