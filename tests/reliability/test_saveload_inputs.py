"""Bad input to save/load and to seeds: each call raises our exception with a message naming what
was wrong, writes nothing, and leaves an existing file byte-identical."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from latentsurgeon._estimator import Estimator
from latentsurgeon.cbm import ConceptBottleneckModel
from latentsurgeon.concepts import CAV
from latentsurgeon.correct import ExplanationRegularization, PClarc
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    ModelMismatchError,
    NotFittedError,
)
from latentsurgeon.explain import TracIn
from latentsurgeon.training import train

from ._harness import Case, check


def _digest(path):
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest() if path.exists() \
        else None


def _rrr() -> ExplanationRegularization:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(10, 1, 4, 4), torch.arange(10) % 3
    masks = torch.zeros(10, 4, 4)
    masks[:, :2] = 1.0
    return ExplanationRegularization(epochs=1, batch_size=5, progress=False,
                                     criterion=nn.CrossEntropyLoss()).fit(model, x, y, masks)


def _cav() -> CAV:
    return CAV().fit(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)),
                     torch.arange(20) % 2)


def _with_code_in_its_cav() -> PClarc:
    correction = PClarc("x", cav=_cav()).fit(None)
    correction.cav.set_params(method=len)  # a nested estimator's parameter that is code
    return correction


SAVE_CASES = [
    ("a criterion module without exclude", lambda p: _rrr().save(p), InvalidParameterError,
     ["criterion is a module CrossEntropyLoss", "exclude=('criterion',)",
      "load(path, criterion=...)"]),
    ("a function in a nested estimator", lambda p: _with_code_in_its_cav().save(p),
     InvalidParameterError, ["cav__method is the function", "exclude=('cav__method',)"]),
    ("exclude naming a non-parameter", lambda p: _rrr().save(p, exclude=("criterium",)),
     InvalidParameterError, ["exclude names 'criterium'", "not a parameter", "criterion"]),
    ("exclude reaching into a parameter that is no estimator",
     lambda p: _rrr().save(p, exclude=("criterion__weight",)), InvalidParameterError,
     ["'criterion__weight'", "not an estimator"]),
    ("exclude that is not names", lambda p: _rrr().save(p, exclude=3), InvalidParameterError,
     ["exclude must be", "3"]),
    ("an unfitted estimator", lambda p: CAV().save(p), NotFittedError, ["not fitted"]),
    ("a path that is a folder", lambda p: _cav().save(p.parent), InvalidParameterError,
     ["CAV.save: path must be a file", "is a folder"]),
    ("a path in a missing folder", lambda p: _cav().save(p.parent / "gone" / "cav.pt"),
     InvalidParameterError, ["path must be a file", "gone", "does not exist"]),
    ("a TracIn without its training gradients", lambda p: TracIn(
        "current", "cross_entropy", cache_mb=0.0).fit(
            nn.Linear(3, 2), (torch.randn(6, 3), torch.arange(6) % 2)).save(p),
     LatentSurgeonError, ["cache_mb", "could not explain"]),
]


@pytest.mark.parametrize("exists", [False, True], ids=["new file", "existing file"])
@pytest.mark.parametrize("name,call,error,mentions", SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_a_refused_save_writes_nothing(tmp_path, exists, name, call, error, mentions):
    path = tmp_path / "saved.pt"
    if exists:
        _cav().save(path)
    before = _digest(path)
    check(Case(name, lambda: call(path), error, mentions))
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["saved.pt"] if exists else [])


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "rrr.pt"
    _rrr().save(path, exclude="criterion")
    return path


def _damaged(saved, how):
    data = saved.read_bytes()
    bad = saved.with_name("bad.pt")
    if how == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        bad.write_bytes(b"not a torch file at all")
    else:
        payload = torch.load(saved, weights_only=True)
        if how == "no params":
            del payload["params"]
        elif how == "another format":
            payload["format"] = "another-library/1"
        elif how == "a newer format":
            payload["format"] = "latentsurgeon-estimator/99"
        elif how == "an older format":
            payload["format"] = "latentsurgeon-estimator/1"
        elif how == "bad learned":
            payload["learned"] = [1, 2]
        elif how == "unknown parameter":
            payload["params"]["bogus"] = 1
        elif how == "bad marker":
            payload["params"]["lr"] = {"__latentsurgeon__": "device"}
        torch.save(payload, bad)
    return bad


def _load_cases(saved):
    torch.manual_seed(1)
    model = nn.Linear(3, 2)  # not the weights the TracIn was fitted on
    return [
        Case("load of a truncated file", lambda: Estimator.load(_damaged(saved, "truncated")),
             LatentSurgeonError, ["cannot load", "bad.pt"]),
        Case("load of a file that is no torch file", lambda: Estimator.load(
            _damaged(saved, "garbage")), LatentSurgeonError, ["cannot load", "bad.pt"]),
        Case("load of a payload without parameters", lambda: Estimator.load(
            _damaged(saved, "no params")), LatentSurgeonError, ["damaged", "'params'"]),
        Case("load of another format", lambda: Estimator.load(_damaged(saved, "another format")),
             LatentSurgeonError, ["not a saved latentsurgeon estimator"]),
        Case("load of a newer format", lambda: Estimator.load(_damaged(saved, "a newer format")),
             LatentSurgeonError, ["bad.pt", "a newer latentsurgeon", "'latentsurgeon-estimator/99'",
                                  "upgrade"]),
        Case("load of an older format", lambda: Estimator.load(_damaged(saved, "an older format")),
             LatentSurgeonError, ["bad.pt", "an older latentsurgeon", "save it again"]),
        Case("load of damaged learned state", lambda: Estimator.load(
            _damaged(saved, "bad learned")), LatentSurgeonError, ["damaged", "'learned'"]),
        Case("load of parameters the class does not have", lambda: Estimator.load(
            _damaged(saved, "unknown parameter")), LatentSurgeonError,
             ["bad.pt", "parameters ExplanationRegularization does not have", "'bogus'",
              "another version"]),
        Case("load of a damaged encoded value", lambda: Estimator.load(
            _damaged(saved, "bad marker")), LatentSurgeonError, ["bad.pt", "damaged"]),
        Case("load of a concept model with damaged weights", lambda: Estimator.load(
            _cbm_with_bad_weights(saved)), LatentSurgeonError, ["cbm.pt", "damaged", "size"]),
        Case("load of a missing file", lambda: Estimator.load(saved.with_name("none.pt")),
             LatentSurgeonError, ["cannot load", "none.pt"]),
        Case("load with an unknown parameter", lambda: ExplanationRegularization.load(
            saved, lamda_rrr=1.0), InvalidParameterError,
             ["'lamda_rrr' is not a parameter", "lambda_rrr"]),
        Case("load of another class", lambda: PClarc.load(saved), LatentSurgeonError,
             ["holds a ExplanationRegularization", "not a PClarc",
              "ExplanationRegularization.load()"]),
        Case("an explainer loaded with other weights", lambda: TracIn.load(
            _tracin(saved), model=model), ModelMismatchError,
             ["other weights", "fitted on"], [model]),
        Case("an explainer loaded with a model that is no module", lambda: TracIn.load(
            _tracin(saved), model="net"), InvalidParameterError, ["model must be", "str"]),
    ]


def _cbm_with_bad_weights(saved):
    path = saved.with_name("cbm.pt")
    ConceptBottleneckModel(3, 2, 2, epochs=1, hidden=(4,)).fit(
        torch.randn(8, 3), torch.arange(8) % 2, torch.ones(8, 2)).save(path)
    payload = torch.load(path, weights_only=True)
    payload["extra"]["state_dict"]["concepts.weight"] = torch.zeros(5, 5)
    torch.save(payload, path)
    return path


def _tracin(saved):
    path = saved.with_name("tracin.pt")
    torch.manual_seed(0)
    TracIn("current", "cross_entropy").fit(
        nn.Linear(3, 2), (torch.randn(6, 3), torch.arange(6) % 2)).save(path)
    return path


@pytest.mark.parametrize("index", range(13))
def test_bad_loads_are_refused_clearly(saved, index):
    cases = _load_cases(saved)
    before = _digest(saved)
    check(cases[index])
    assert _digest(saved) == before


def test_the_load_corpus_is_complete(saved):
    assert len(_load_cases(saved)) == 15


@pytest.mark.parametrize("seed", [-1, 2.5, "7", True, [0]])
def test_bad_seeds_are_refused(seed):
    model = nn.Linear(3, 2)
    check(Case("a CBM with a bad seed", lambda: ConceptBottleneckModel(3, 2, 2, seed=seed),
               InvalidParameterError, ["seed must be None, an int >= 0 or a torch.Generator"]))
    check(Case("train with a bad seed", lambda: train(
        model, torch.randn(4, 3), lambda m, b: m(b).sum(), epochs=1, seed=seed),
        InvalidParameterError, ["seed must be None, an int >= 0 or a torch.Generator"],
        [model]))
