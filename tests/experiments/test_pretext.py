"""pretext: encoders trained on different pretext tasks are explained differently; every
correlation between two tasks' importances stays below 0.9 (quick settings, seeds 0-2)."""

from __future__ import annotations

import numpy as np
import pytest

from latentsurgeon.experiments import pretext, run_experiment
from latentsurgeon.models import PRETEXT_TASKS

from .conftest import SEEDS, check_written


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretext")
    return run_experiment("pretext", seeds=SEEDS, quick=True, out=out), out


@pytest.mark.parametrize("kind", ["features", "examples"])
def test_correlations_between_tasks_are_below_0_9(run, kind):
    result, _ = run
    n = len(PRETEXT_TASKS)
    means = result.pearson[kind].mean(axis=0)[:n, :n]
    off = means[~np.eye(n, dtype=bool)]
    assert (off < 0.9).all(), means
    assert result.checks[f"{kind}: every correlation between two different tasks is below 0.9"]


@pytest.mark.parametrize("kind", ["features", "examples"])
def test_matrices_are_correlation_matrices(run, kind):
    result, _ = run
    for table in (result.pearson[kind], result.spearman[kind]):
        assert table.shape == (len(SEEDS), len(result.tasks), len(result.tasks))
        np.testing.assert_allclose(table, table.transpose(0, 2, 1), atol=1e-12)
        np.testing.assert_allclose(np.diagonal(table, axis1=1, axis2=2), 1.0, atol=1e-12)
        assert (np.abs(table) <= 1 + 1e-12).all()


def test_tasks_control_and_files(run):
    result, out = run
    assert result.tasks == (*PRETEXT_TASKS, pretext.CONTROL)
    tables = check_written(result, out / "pretext")
    n = len(result.tasks)
    assert len(tables["correlations"]) == len(SEEDS) * 2 * n * (n - 1) // 2
    assert "reproductions of the paper: 0.32-0.44" in result.headline[0]
    assert set(result.example_attributions) == set(result.tasks)
