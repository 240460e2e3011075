"""The one contract, over every estimator and every attachable object the package defines.

Every concrete :class:`~latentsurgeon._estimator.Estimator` subclass and every public class with
``attach`` must have a row in ``CASES`` (a new one fails ``test_every_estimator_has_a_case``
until it gets one). Each row is checked for: the constructor stores its parameters and nothing
else, ``clone`` gives an unfitted copy with equal parameters, ``fit`` returns self,
``save -> Estimator.load -> use`` gives bit-identical results, ``attach``/``applied``/``export``
agree and leave no hook behind, and a failed ``fit`` leaves the estimator and the model
bit-identical. The same checks fail on planted violations (the last tests).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from sklearn.base import clone
from torch import nn

import latentsurgeon
from latentsurgeon._estimator import Estimator
from latentsurgeon.data import DecoySplit, decoy_digits, toy_concepts
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import hook_count
from latentsurgeon.models import DigitCNN

#: Base classes that hold shared machinery; users fit their subclasses.
BASES = {"Correction", "ClarcCorrection", "TrainedClarc"}


def _all_modules() -> None:
    for info in pkgutil.walk_packages(latentsurgeon.__path__, "latentsurgeon."):
        if ".cli" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def package_estimators() -> set[str]:
    _all_modules()
    return {c.__name__ for c in _subclasses(Estimator)
            if c.__module__.startswith("latentsurgeon.") and not inspect.isabstract(c)
            and c.__name__ not in BASES}


def package_attachables() -> set[str]:
    _all_modules()
    names = set()
    for info in pkgutil.walk_packages(latentsurgeon.__path__, "latentsurgeon."):
        if ".cli" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) and hasattr(obj, "attach") and name not in BASES:
                names.add(name)
    return names


# -- the environment: small data and models every row can use ------------------------------
@dataclass
class Env:
    cnn: nn.Module
    split: DecoySplit
    x: torch.Tensor
    acts: torch.Tensor
    flags: torch.Tensor
    mlp: nn.Module
    rows: tuple[torch.Tensor, torch.Tensor]
    queries: tuple[torch.Tensor, torch.Tensor]
    tokens: nn.Module
    concepts: Any
    fitted_model: dict[str, nn.Module] = field(default_factory=dict)


@pytest.fixture(scope="module")
def env() -> Env:
    torch.manual_seed(0)
    data = decoy_digits("watermark", seed=0)
    whole = data.correction_data()
    # every image of the shortcut class (the ClArCs fit their CAV there) and some of the others
    shortcut = torch.nonzero(whole.labels == data.shortcut_class).flatten()
    others = torch.nonzero(whole.labels != data.shortcut_class).flatten()[:150]
    index = torch.cat([shortcut, others])
    split = DecoySplit(whole.images[index], whole.labels[index], whole.artifact[index],
                       whole.masks[index])
    cnn = DigitCNN().eval()
    with torch.no_grad():
        acts = cnn.features(split.images).flatten(1)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    rows = (torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))
    queries = (torch.randn(7, 6, generator=g), torch.randint(0, 3, (7,), generator=g))
    tokens = nn.Sequential(nn.Embedding(12, 4), nn.Linear(4, 3))
    return Env(cnn, split, data.poisoned.images[:16], acts, split.artifact.long(), mlp, rows,
               queries, tokens, toy_concepts("xor", n_train=200, n_test=50, seed=0))


# -- one row per estimator ---------------------------------------------------------------------
def _nan(x: torch.Tensor) -> torch.Tensor:
    bad = x.clone()
    bad.view(-1)[0] = float("nan")
    return bad


def _nan_split(split: DecoySplit) -> DecoySplit:
    return DecoySplit(_nan(split.images), split.labels, split.artifact, split.masks)


def _correction(name: str) -> Callable[[], Estimator]:
    from latentsurgeon.correct import correction_entry

    def build() -> Estimator:
        entry = correction_entry(name)
        quick = {"epochs": 1} if entry.modifies_weights else {}
        return entry.build(progress=False, **quick)
    return build


@dataclass
class Case:
    build: Callable[[], Estimator]
    fit: Callable[[Estimator, Env], Any]
    use: Callable[[Estimator, Env], torch.Tensor]
    bad_fit: Callable[[Estimator, Env], Any]
    load_kwargs: Callable[[Env], dict] = lambda env: {}
    #: the model attach/applied/export act on (None: the estimator is not attachable)
    model: Callable[[Env], nn.Module] | None = None
    inputs: Callable[[Env], Any] = lambda env: env.x


def _fit_correction(est: Estimator, env: Env) -> Any:
    model = copy.deepcopy(env.cnn)
    env.fitted_model[type(est).__name__] = model
    return est.fit(model, env.split)


def _use_export(est: Estimator, env: Env) -> torch.Tensor:
    with torch.no_grad():
        return est.export(env.fitted_model[type(est).__name__])(env.x)


def _correction_case(name: str) -> Case:
    return Case(
        build=_correction(name), fit=_fit_correction, use=_use_export,
        bad_fit=lambda est, env: est.fit(env.fitted_model[type(est).__name__],
                                         _nan_split(env.split)),
        model=lambda env: None)


def _steering_model(env: Env) -> nn.Module:
    return env.cnn


CASES: dict[str, Case] = {
    "CAV": Case(
        build=lambda: __import__("latentsurgeon.concepts", fromlist=["CAV"]).CAV(
            "logistic", "flatten"),
        fit=lambda est, env: est.fit(env.acts, env.flags),
        use=lambda est, env: est.direction_,
        bad_fit=lambda est, env: est.fit(_nan(env.acts), env.flags)),
    "LeaceEraser": Case(
        build=lambda: __import__("latentsurgeon.concepts", fromlist=["L"]).LeaceEraser(),
        fit=lambda est, env: est.fit(env.acts.reshape(len(env.acts), 32, 4, 4), env.flags,
                                     layer="features"),
        use=lambda est, env: est.transform(env.acts.reshape(len(env.acts), 32, 4, 4)),
        bad_fit=lambda est, env: est.fit(_nan(env.acts), env.flags),
        model=lambda env: env.cnn),
    "PClarc": _correction_case("p-clarc"),
    "AClarc": _correction_case("a-clarc"),
    "RRClarc": _correction_case("rr-clarc"),
    "ExplanationRegularization": _correction_case("rrr"),
    "SpRAy": Case(
        build=lambda: __import__("latentsurgeon.discover", fromlist=["S"]).SpRAy(
            cluster_range=(2, 4)),
        fit=lambda est, env: est.fit(env.acts[:60]),
        use=lambda est, env: est.labels_,
        bad_fit=lambda est, env: est.fit(_nan(env.acts[:60]))),
    "PrototypeDiscovery": Case(
        build=lambda: __import__("latentsurgeon.discover", fromlist=["P"]).PrototypeDiscovery(
            n_components=2),
        fit=lambda est, env: est.fit(env.acts[:60, :32]),
        use=lambda est, env: est.prototypes_,
        bad_fit=lambda est, env: est.fit(_nan(env.acts[:60, :32]))),
    "SteeringVector": Case(
        build=lambda: __import__("latentsurgeon.intervene", fromlist=["S"]).SteeringVector(
            "features", alpha=1.5),
        fit=lambda est, env: est.fit(env.cnn, env.split.images[env.split.artifact],
                                     env.split.images[~env.split.artifact]),
        use=lambda est, env: _applied_output(est, env.cnn, env.x),
        bad_fit=lambda est, env: est.fit(env.cnn, _nan(env.split.images[:8]),
                                         env.split.images[8:16]),
        model=lambda env: env.cnn),
    "ActivationAddition": Case(
        build=lambda: __import__("latentsurgeon.intervene", fromlist=["A"]).ActivationAddition(
            "0", alpha=2.0),
        fit=lambda est, env: est.fit(env.tokens, torch.tensor([[1, 2, 3]]),
                                     torch.tensor([[4, 5, 6]])),
        use=lambda est, env: _applied_output(est, env.tokens, torch.tensor([[1, 7, 8, 9]])),
        bad_fit=lambda est, env: est.fit(env.tokens, torch.tensor([[1, 2, 3]]),
                                         torch.tensor([[4, 5]])),
        model=lambda env: env.tokens, inputs=lambda env: torch.tensor([[1, 7, 8, 9]])),
    "NearestNeighbours": Case(
        build=lambda: __import__("latentsurgeon.explain", fromlist=["N"]).NearestNeighbours(
            "cosine"),
        fit=lambda est, env: est.fit(None, env.acts[:60]),
        use=lambda est, env: est.explain(env.acts[60:]),
        bad_fit=lambda est, env: est.fit(None, _nan(env.acts[:60]))),
    "SimplEx": Case(
        build=lambda: __import__("latentsurgeon.explain", fromlist=["S"]).SimplEx(),
        fit=lambda est, env: est.fit(None, env.acts[:60]),
        use=lambda est, env: est.explain(env.acts[60:70]),
        bad_fit=lambda est, env: est.fit(None, _nan(env.acts[:60]))),
    "TracIn": Case(
        build=lambda: __import__("latentsurgeon.explain", fromlist=["T"]).TracIn(
            "current", "cross_entropy"),
        fit=lambda est, env: est.fit(env.mlp, env.rows),
        use=lambda est, env: est.explain(env.queries),
        bad_fit=lambda est, env: est.fit(env.mlp, (_nan(env.rows[0]), env.rows[1])),
        load_kwargs=lambda env: {"model": env.mlp}),
    "InfluenceFunctions": Case(
        build=lambda: __import__("latentsurgeon.explain", fromlist=["I"]).InfluenceFunctions(
            "cross_entropy", damping=0.1),
        fit=lambda est, env: est.fit(env.mlp, env.rows),
        use=lambda est, env: est.explain(env.queries),
        bad_fit=lambda est, env: est.fit(env.mlp, (_nan(env.rows[0]), env.rows[1])),
        load_kwargs=lambda env: {"model": env.mlp}),
}


def _concept_case(name: str, **kw: Any) -> Case:
    def build() -> Estimator:
        cls = getattr(importlib.import_module("latentsurgeon.cbm"), name)
        return cls(**kw, epochs=2, hidden=(8,), head_hidden=4, progress=False)

    def use(est: Estimator, env: Env) -> torch.Tensor:
        with torch.no_grad():
            out = est(env.concepts.test.inputs)
        return out[0] if isinstance(out, tuple) else out

    return Case(build=build, fit=lambda est, env: est.fit(env.concepts.train), use=use,
                bad_fit=lambda est, env: est.fit(_nan(env.concepts.train.inputs),
                                                 env.concepts.train.labels,
                                                 env.concepts.train.concepts))


CASES["ConceptBottleneckModel"] = _concept_case("ConceptBottleneckModel", n_features=2,
                                                n_concepts=2, n_classes=2)
CASES["ConceptEmbeddingModel"] = _concept_case("ConceptEmbeddingModel", n_features=2,
                                               n_concepts=2, n_classes=2)
CASES["BlackBoxModel"] = _concept_case("BlackBoxModel", n_features=2, n_classes=2)


def _applied_output(est: Estimator, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), est.applied(model):
        return model(x)


# -- the checks (also run on planted violations below) ----------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype
                and bool(torch.equal(a.nan_to_num(), b.nan_to_num())))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, nn.Module) and isinstance(b, nn.Module):
        return _same(a.state_dict(), b.state_dict())
    try:
        return bool(a == b)
    except Exception:
        return a is b


def check_constructor_stores_only(est: Estimator) -> None:
    params = set(est.get_params(deep=False))
    public = {k for k in vars(est) if not k.startswith("_") and k != "training"}
    extra = public - params
    assert not extra, f"{type(est).__name__}'s constructor sets {sorted(extra)} besides its " \
                      "parameters"
    assert not est.is_fitted(), f"{type(est).__name__} is fitted before fit()"


def check_clone(est: Estimator) -> None:
    twin = clone(est)
    assert type(twin) is type(est) and twin is not est and not twin.is_fitted()
    assert _same(twin.get_params(deep=False), est.get_params(deep=False))


def snapshot(est: Estimator, model: nn.Module | None) -> dict[str, Any]:
    state = {k: copy.deepcopy(v) for k, v in vars(est).items()
             if not k.startswith("_") and not isinstance(v, nn.Module)}
    if isinstance(est, nn.Module):
        state["__weights__"] = copy.deepcopy(est.state_dict())
    if model is not None:
        state["__model__"] = copy.deepcopy(model.state_dict())
    return state


@pytest.mark.parametrize("name", sorted(CASES))
def test_contract(name, env, tmp_path):
    case = CASES[name]
    est = case.build()
    check_constructor_stores_only(est)
    check_clone(est)
    assert case.fit(est, env) is est, f"{name}.fit does not return self"
    assert est.is_fitted()
    used = case.use(est, env)
    assert isinstance(used, torch.Tensor) and torch.isfinite(used).all()

    path = tmp_path / f"{name}.pt"
    est.save(path)
    loaded = Estimator.load(path, **case.load_kwargs(env))
    assert type(loaded) is type(est)
    assert _same(case.use(loaded, env), used), f"{name}: the loaded estimator differs"

    model = case.model(env) if case.model is not None else None
    if model is None and name in env.fitted_model:
        model = env.fitted_model[name]
    if hasattr(est, "attach"):
        assert model is not None, f"{name} offers attach but its case names no model"
        check_attach(est, model, case.inputs(env))

    # a failed fit leaves the estimator and the model exactly as they were
    target = env.fitted_model.get(name, model)
    before = snapshot(est, target)
    with pytest.raises(LatentSurgeonError):
        case.bad_fit(est, env)
    after = snapshot(est, target)
    changed = [k for k in before if not _same(before[k], after[k])]
    assert not changed and before.keys() == after.keys(), \
        f"{name}: a failed fit changed {changed or sorted(set(before) ^ set(after))}"


def check_attach(est: Estimator, model: nn.Module, x: Any) -> None:
    with torch.no_grad():
        plain = model(x)
        handle = est.attach(model)
        attached = model(x)
        handle.remove()
        assert hook_count(model) == 0, f"{type(est).__name__}.attach left a hook"
        with est.applied(model) as inside:
            assert inside is model
            applied = model(x)
        assert hook_count(model) == 0
        assert torch.equal(model(x), plain), "the model changed after applied()"
        assert torch.equal(attached, applied)
        if hasattr(est, "export"):
            exported = est.export(model)
            assert hook_count(exported) == 0
            torch.testing.assert_close(exported(x), applied)


def test_every_estimator_has_a_case():
    missing = package_estimators() - set(CASES)
    assert not missing, f"estimators without a contract case: {sorted(missing)}"
    stale = set(CASES) - package_estimators()
    assert not stale, f"cases of classes that no longer exist: {sorted(stale)}"


def test_every_attachable_has_a_case():
    missing = package_attachables() - set(CASES)
    assert not missing, f"attachable classes without a contract case: {sorted(missing)}"


# -- planted violations: the checks fail ----------------------------------------------------
class _Validates(Estimator):
    def __init__(self, k: int = 1) -> None:
        self.k = k
        self.k_squared = k * k  # work in the constructor: not a stored parameter


class _ForgetsItsParameter(Estimator):
    def __init__(self, k: int = 1) -> None:
        self.kay = k


class _RefitBreaks(Estimator):
    def __init__(self) -> None:
        pass

    def fit(self, x: torch.Tensor) -> _RefitBreaks:
        self.mean_ = x.mean()  # state is written before the check below
        if not torch.isfinite(x).all():
            raise LatentSurgeonError("NaN")
        return self


def test_planted_violations_are_caught():
    with pytest.raises(AssertionError, match="sets \\['k_squared'\\]"):
        check_constructor_stores_only(_Validates())
    with pytest.raises(LatentSurgeonError, match="does not store its constructor parameter"):
        check_clone(_ForgetsItsParameter())
    est = _RefitBreaks().fit(torch.ones(3))
    before = snapshot(est, None)
    with pytest.raises(LatentSurgeonError):
        est.fit(torch.tensor([float("nan")]))
    assert not _same(before["mean_"], snapshot(est, None)["mean_"])
