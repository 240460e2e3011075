"""The one table of example-importance methods: every entry builds and runs, its sign
convention is applied by ``top``, and the command line spells its choices from it."""

from __future__ import annotations

import argparse

import pytest
import torch

from latentsurgeon.cli import build_parser
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain import InfluenceFunctions, top_examples, top_examples_by_method
from latentsurgeon.explain.methods import (
    DEFAULT_METHODS,
    METHODS,
    NEEDS,
    cli_name,
    method_from_cli,
)

from .conftest import make_classifier, tabular


@pytest.mark.parametrize("name", list(METHODS))
def test_every_entry_builds_and_runs(name):
    method = METHODS[name]
    model = make_classifier()
    train, test = tabular(16), tabular(5, seed=3)
    explainer = method.build("0", damping=1.0)
    assert isinstance(explainer, method.explainer)
    scores = explainer.scores(model, train, test)
    assert scores.shape == (5, 16) and bool(torch.isfinite(scores).all())
    top = method.top(scores, 4)
    assert top.shape == (5, 4)
    # the sign convention: the first index is the highest score, or the lowest for a method
    # whose helpful examples score low; least=True reverses it
    best = scores.gather(1, top[:, :1])
    extreme = scores.max(1, keepdim=True) if method.higher_is_helpful else scores.min(1, True)
    assert torch.equal(best, extreme.values)
    assert torch.equal(method.top(scores, 4, least=True),
                       top_examples(scores, 4, largest=not method.higher_is_helpful))
    assert set(method.needs) <= set(NEEDS) and method.needs
    assert method.name == name and method.label and method.description


def test_influence_functions_rank_their_most_negative_scores_first():
    assert not METHODS["influence"].higher_is_helpful
    assert all(METHODS[m].higher_is_helpful for m in METHODS if m != "influence")
    scores = torch.tensor([[0.5, -2.0, 1.0, -0.1]])
    assert METHODS["influence"].top(scores, 2).tolist() == [[1, 3]]
    assert METHODS["tracin"].top(scores, 2).tolist() == [[2, 0]]


def test_top_examples_by_method_runs_influence_with_its_sign():
    model = make_classifier()
    train, test = tabular(16), tabular(4, seed=3)
    tops = top_examples_by_method(model, "0", train, test, k=3, methods=["influence"],
                                  damping=1.0)
    scores = InfluenceFunctions("cross_entropy", test_loss="predicted", params="0",
                                damping=1.0).scores(model, train, test)
    assert torch.equal(tops["influence"], top_examples(scores, 3, largest=False))
    assert DEFAULT_METHODS == tuple(m for m in METHODS if METHODS[m].default)
    assert "influence" in METHODS and "influence" not in DEFAULT_METHODS


def test_the_command_line_spells_its_choices_from_the_table():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    kinds = next(a for a in sub.choices["explain"]._actions
                 if isinstance(a, argparse._SubParsersAction))
    method = next(a for a in kinds.choices["examples"]._actions if a.dest == "method")
    assert list(method.choices) == [cli_name(m) for m in METHODS]
    assert method.default in method.choices
    for spelling in method.choices:
        assert method_from_cli(spelling) is METHODS[spelling.replace("-", "_")]
    with pytest.raises(InvalidParameterError, match="method must be one of"):
        method_from_cli("lime")


def test_the_table_is_read_only():
    with pytest.raises(TypeError):
        METHODS["lime"] = METHODS["simplex"]  # type: ignore[index]
