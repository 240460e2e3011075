"""The bad-input corpus covers every public entry point of the packages whose inputs users
build by hand (explain, cbm, experiments): each public function or class is called by at least
one case in ``tests/reliability/``. Result and data types (returned by the library, never built
from user input) are listed with the reason they need no case."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PACKAGES = ("explain", "cbm", "experiments", "verify", "discover")

#: Public names that are returned, not called with user input.
RESULTS = {
    "explain": {"ExampleMethod": "a row of the methods table", "FeatureMethod": "a row of the "
                "feature-methods table"},
    "cbm": {"ConceptOutput": "what the concept models return", "InterventionCurves": "what "
            "intervention_curve returns", "InterventionPolicy": "the abstract base of policies",
            "InterventionStrategy": "the abstract base of strategies"},
    "experiments": {"ExperimentResult": "what every experiment returns", "MeanInterval": "what "
                    "mean_interval returns"},
    "verify": {"Certificate": "what certify returns", "ConceptLayer": "a row of concept_tests",
               "GroupTest": "what group_metrics returns", "InsertionTest": "what "
               "counterfactual_insertion returns", "Judgement": "a criterion's verdict",
               "RelevanceTest": "what relevance_test returns", "RemovalTest": "what "
               "counterfactual_removal returns"},
    "discover": {"Candidate": "what discover_shortcuts returns", "Refinement": "what "
                 "Candidate.refine returns", "Relevance": "what relevance returns"},
}


def _public(package: str) -> list[str]:
    module = importlib.import_module(f"latentsurgeon.{package}")
    return [name for name in module.__all__ if callable(getattr(module, name))
            and not (inspect.isclass(getattr(module, name))
                     and issubclass(getattr(module, name), BaseException))]


def _corpus() -> str:
    return "\n".join(p.read_text() for p in HERE.glob("test_*.py") if p.name != Path(__file__).name)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_entry_point_has_a_bad_input_case(package):
    corpus = _corpus()
    missing = [name for name in _public(package) if name not in RESULTS.get(package, {})
               and not re.search(rf"\b{re.escape(name)}\b", corpus)]
    assert not missing, f"latentsurgeon.{package}: no bad-input case calls {missing}"


def test_the_result_types_listed_are_public():
    for package, names in RESULTS.items():
        public = set(_public(package))
        assert set(names) <= public, set(names) - public
