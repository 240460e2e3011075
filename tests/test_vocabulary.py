"""Every public signature against the vocabulary (``latentsurgeon._vocabulary``, drawn in
``docs/architecture.md``): one spelling per concept, one positional order (model, layer, data,
then what the call is about), options keyword-only, ``progress`` on by default.

Analysis calls are the public functions and methods that take a model or a layer; constructors
and ``fit`` methods are checked for spellings and defaults too. A planted signature shows that
each rule fails when broken.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from latentsurgeon import _vocabulary as vocab
from latentsurgeon._aliases import ALIASES

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("__init__", "fit", "attach", "applied", "export", "explain", "transform",
           "corrected", "scores")


def signature_problems(fn: Callable, *, method: str | None = None) -> list[str]:
    """What breaks the vocabulary in ``fn``'s signature (empty when nothing does)."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    names = {p.name for p in params}
    analysis = bool(names & (vocab.MODEL_ROLES | vocab.LAYER_ROLES)) or method == "fit"
    problems = []
    for p in params:
        if p.name in vocab.SIGNATURE_DEFAULTS and p.default is not vocab.SIGNATURE_DEFAULTS[
                p.name]:
            problems.append(f"{p.name} defaults to {p.default!r}, not "
                            f"{vocab.SIGNATURE_DEFAULTS[p.name]!r}")
        if analysis and p.name in vocab.REPLACED:
            problems.append(f"parameter {p.name!r} is spelled {vocab.REPLACED[p.name]!r}")
    if not analysis or method == "__init__":
        return problems
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    roles = ["model" if p.name in vocab.MODEL_ROLES else "layer" if p.name in vocab.LAYER_ROLES
             else "data" if p.name in vocab.DATA_ROLES else "other" for p in positional]
    if "model" in roles and roles.index("model") != 0 and roles[0] != "model":
        problems.append("the model is not the first positional parameter")
    layer_at = [i for i, r in enumerate(roles) if r == "layer"]
    data_at = [i for i, r in enumerate(roles) if r == "data"]
    if layer_at and data_at and max(layer_at) > min(data_at):
        problems.append("a layer parameter comes after a data parameter")
    for p, role in zip(positional, roles, strict=True):
        if role == "other" and p.default is not p.empty:
            problems.append(f"option {p.name!r} can be passed positionally (make it keyword-only)")
    return problems


def public_signatures() -> Iterator[tuple[str, Callable, str | None]]:
    seen: set[int] = set()
    for package in vocab.PACKAGES:
        module = importlib.import_module(f"latentsurgeon.{package}")
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                for method in METHODS:
                    fn = getattr(obj, method, None)
                    if (inspect.isfunction(inspect.unwrap(fn)) if fn is not None else False) \
                            and id(fn) not in seen and fn.__module__.startswith("latentsurgeon"):
                        seen.add(id(fn))
                        yield f"{package}:{name}.{method}", fn, method
            elif inspect.isfunction(inspect.unwrap(obj)):
                yield f"{package}:{name}", obj, None


SIGNATURES = list(public_signatures())


def test_the_public_surface_is_found():
    found = {key for key, _, _ in SIGNATURES}
    assert {"concepts:tcav", "activations:layer_outputs", "intervene:patch",
            "correct:PClarc.fit"} <= found
    assert any(k.startswith("explain:") and k.endswith(".fit") for k in found)
    assert len(found) > 150


@pytest.mark.parametrize("key, fn, method", SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_signature_keeps_the_vocabulary(key, fn, method):
    owner = key.split(".")[0]
    problems = signature_problems(fn, method=method)
    if owner in vocab.EXCEPTIONS or key in vocab.EXCEPTIONS:
        return
    assert not problems, f"{key}{inspect.signature(fn)}: " + "; ".join(problems)


def test_every_exception_names_a_public_signature_that_needs_it():
    problems = {}
    for key, fn, method in SIGNATURES:
        problems.setdefault(key.split(".")[0], []).extend(signature_problems(fn, method=method))
    for key in vocab.EXCEPTIONS:
        assert key in problems, f"EXCEPTIONS lists {key}, which is not public"
        assert problems[key], f"EXCEPTIONS lists {key}, which no longer needs it"


# -- planted violations: each rule fails when broken -------------------------------------------
def _bad_spelling(model, images, *, layer_name="x", progress=True):
    ...


def _bad_order(data, model, layer, *, progress=True):
    ...


def _bad_options(model, layer, data, batch_size=64, *, progress=False):
    ...


def _good(model, layer, data, target, *, batch_size=64, progress=True):
    ...


@pytest.mark.parametrize("fn, expected", [
    (_bad_spelling, ["'images' is spelled 'data'", "'layer_name' is spelled 'layer'"]),
    (_bad_order, ["model is not the first", "layer parameter comes after a data"]),
    (_bad_options, ["option 'batch_size' can be passed positionally",
                    "progress defaults to False"]),
    (_good, []),
])
def test_a_planted_violation_is_caught(fn, expected):
    problems = signature_problems(fn)
    assert len(problems) == len(expected)
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


# -- the table for people and the table for the test agree ------------------------------------
def _docs_table() -> dict[str, str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## One name per concept", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`"):
            rows[cells[0]] = cells[1]
    return rows


def test_the_docs_table_lists_every_term():
    rows = _docs_table()
    for term in vocab.TERMS:
        assert term.concept in rows, f"docs/architecture.md lacks the row {term.concept!r}"
        first = term.name.split("/")[0].split(",")[0]
        assert f"`{first}" in rows[term.concept], (term.concept, rows[term.concept])


def test_every_declared_alias_is_in_the_table():
    declared = {alias for table in ALIASES.values() for alias in table}
    documented = {alias for term in vocab.TERMS for alias in term.aliases}
    # "train" and "inputs" of the explainers and metrics come through moved() as old positions
    assert declared <= documented, sorted(declared - documented)


# -- the earlier forms that moved() keeps give the same results ------------------------------
def test_intervention_options_passed_positionally_still_work():
    from latentsurgeon.cbm import DoIntervention, UniformPolicy, intervention

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with torch.no_grad(), intervention(model, "0", DoIntervention(1.0), UniformPolicy(),
                                       concepts=[0, 1], quantile=1.0):
        new = model(x)
    with pytest.warns(FutureWarning, match="intervention: positional arguments"), \
            torch.no_grad(), intervention(model, "0", DoIntervention(1.0), UniformPolicy(),
                                          [0, 1], 1.0):
        old = model(x)
    assert torch.equal(new, old)


def test_evaluate_accuracy_options_passed_positionally_still_work():
    from latentsurgeon.training import evaluate_accuracy

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = (torch.randn(10, 3), torch.randint(0, 2, (10,)))
    new = evaluate_accuracy(model, data, batch_size=4)
    with pytest.warns(FutureWarning, match="evaluate_accuracy: positional arguments"):
        assert evaluate_accuracy(model, data, 4) == new


def test_predict_inputs_spelling_still_works():
    from latentsurgeon.metrics import predict

    model = nn.Linear(3, 2)
    x = torch.randn(6, 3)
    with pytest.warns(FutureWarning, match="inputs= is deprecated; use data="):
        assert torch.equal(predict(model, inputs=x), predict(model, x))
