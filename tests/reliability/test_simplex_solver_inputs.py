"""Bad inputs of SimplEx's solver choice: an unknown ``solver`` is refused by name, by the
explainer and by ``simplex_weights``, before any work."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain import SimplEx, simplex_weights

from ._harness import Case, check

REPS = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))

CASES = [
    Case("SimplEx with an unknown solver",
         lambda: SimplEx(solver="fista", progress=False).fit(None, REPS),
         InvalidParameterError, ["solver", "'active-set'", "'mirror-descent'", "fista"]),
    Case("simplex_weights with an unknown solver",
         lambda: simplex_weights(REPS[:2], REPS, solver="frank-wolfe"),
         InvalidParameterError, ["solver", "'active-set'", "'mirror-descent'", "frank-wolfe"]),
    Case("simplex_weights with a solver that is not a string",
         lambda: simplex_weights(REPS[:2], REPS, solver=None),
         InvalidParameterError, ["solver", "'active-set'", "None"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case) -> None:
    check(case)
