"""The one save/load scheme of ``latentsurgeon._estimator``: data stored, nested estimators rebuilt,
code refused unless excluded, ``Estimator.load`` dispatching to the stored class."""

from __future__ import annotations

import enum
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon._estimator import Estimator
from latentsurgeon.concepts import CAV, LeaceEraser
from latentsurgeon.correct import Correction, PClarc
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Toy(Estimator):
    """Stores whatever it is given; ``fit`` learns the sum of ``weights``."""

    def __init__(self, weights=None, inner=None, fn=None, colour="red", device=None,
                 where=None, span=None, seed=0, table=None):
        self.weights = weights
        self.inner = inner
        self.fn = fn
        self.colour = colour
        self.device = device
        self.where = where
        self.span = span
        self.seed = seed
        self.table = table

    def fit(self):
        self.total_ = float(torch.as_tensor(self.weights).sum())
        return self

    def apply(self, x):
        out = x * self.total_
        return self.fn(out) if self.fn is not None else out


class Required(Estimator):
    def __init__(self, fn):
        self.fn = fn

    def fit(self):
        self.done_ = True
        return self


def test_data_parameters_round_trip_exactly(tmp_path):
    generator = torch.Generator().manual_seed(7)
    toy = Toy(weights=np.arange(4.0), colour=Colour.BLUE, device=torch.device("cpu"),
              where=Path("some/file.pt"), span=slice(1, None, 2), seed=generator,
              table={"a": (1, 2.5, None), 3: [torch.ones(2), "x"]}).fit()
    toy.save(tmp_path / "toy.pt")
    loaded = Toy.load(tmp_path / "toy.pt")
    assert isinstance(loaded.weights, np.ndarray) and np.array_equal(loaded.weights, toy.weights)
    assert loaded.colour == "blue"  # enums are stored by value (the constructor takes it)
    assert loaded.device == torch.device("cpu") and loaded.where == Path("some/file.pt")
    assert loaded.span == slice(1, None, 2)
    assert loaded.table["a"] == (1, 2.5, None) and loaded.table[3][1] == "x"
    assert torch.equal(loaded.table[3][0], torch.ones(2))
    # the generator comes back with the state it had at save time
    assert isinstance(loaded.seed, torch.Generator) and loaded.seed is not generator
    assert torch.equal(torch.rand(3, generator=loaded.seed), torch.rand(3, generator=generator))
    assert loaded.total_ == toy.total_ == 6.0


def test_a_nested_estimator_is_stored_and_rebuilt(tmp_path):
    x = torch.randn(40, 6)
    cav = CAV(C=0.3, seed=2).fit(x, torch.arange(40) % 2)
    toy = Toy(weights=[1.0], inner={"layer": cav, "recipe": LeaceEraser()}).fit()
    toy.save(tmp_path / "toy.pt")
    loaded = Toy.load(tmp_path / "toy.pt")
    again, recipe = loaded.inner["layer"], loaded.inner["recipe"]
    assert type(again) is CAV and again is not cav and again.get_params() == cav.get_params()
    torch.testing.assert_close(again.project(x), cav.project(x), rtol=0, atol=0)
    assert type(recipe) is LeaceEraser and not recipe.is_fitted()  # unfitted: parameters only
    # a nested estimator's parameters can be replaced at load
    direct = Toy(weights=[1.0], inner=cav).fit()
    direct.save(tmp_path / "direct.pt")
    assert Toy.load(tmp_path / "direct.pt", inner__C=0.9).inner.C == 0.9


def test_code_is_refused_naming_it_and_nothing_is_written(tmp_path):
    path = tmp_path / "toy.pt"
    toy = Toy(weights=[2.0], fn=torch.tanh, inner=CAV(method=lambda: None)).fit()
    with pytest.raises(InvalidParameterError) as info:
        toy.save(path)
    message = str(info.value)
    assert "fn is the function" in message and "inner__method is the function" in message
    assert "exclude=('inner__method', 'fn')" in message
    assert not path.exists()
    toy.save(path, exclude=("fn", "inner__method"))
    with pytest.warns(UserWarning, match="fn was excluded"):
        plain = Toy.load(path, inner__method="svm")
    assert plain.fn is None and plain.inner.method == "svm"
    loaded = Toy.load(path, fn=torch.tanh, inner__method="svm")
    x = torch.randn(5)
    assert torch.equal(loaded.apply(x), toy.apply(x))


def test_an_excluded_parameter_without_default_must_be_given(tmp_path):
    Required(fn=print).fit().save(tmp_path / "r.pt", exclude="fn")
    with pytest.raises(InvalidParameterError, match=r"fn was excluded .* no default"):
        Required.load(tmp_path / "r.pt")
    assert Required.load(tmp_path / "r.pt", fn=len).fn is len


def test_load_overrides_parameters_and_refuses_unknown_ones(tmp_path):
    Toy(weights=[1.0, 2.0], colour="red").fit().save(tmp_path / "toy.pt")
    assert Toy.load(tmp_path / "toy.pt", colour="blue").colour == "blue"
    with pytest.raises(InvalidParameterError, match="'colur' is not a parameter of Toy"):
        Toy.load(tmp_path / "toy.pt", colur="blue")
    with pytest.raises(InvalidParameterError, match="'colour__x'.*not an estimator"):
        Toy.load(tmp_path / "toy.pt", colour__x=1)


def test_estimator_load_dispatches_to_the_stored_class(tmp_path):
    cav = CAV().fit(torch.randn(30, 4), torch.arange(30) % 2)
    cav.save(tmp_path / "cav.pt")
    assert type(Estimator.load(tmp_path / "cav.pt")) is CAV
    pc = PClarc("features", cav=cav).fit(None)
    pc.save(tmp_path / "pc.pt")
    assert type(Estimator.load(tmp_path / "pc.pt")) is PClarc
    assert type(Correction.load(tmp_path / "pc.pt")) is PClarc  # a family's base loads it too
    with pytest.raises(LatentSurgeonError, match="holds a CAV, not a Correction"):
        Correction.load(tmp_path / "cav.pt")
    with pytest.raises(LatentSurgeonError, match="holds a PClarc, not a CAV; use PClarc.load"):
        CAV.load(tmp_path / "pc.pt")


def test_a_class_this_process_does_not_define_is_refused(tmp_path):
    Toy(weights=[1.0]).fit().save(tmp_path / "toy.pt")
    payload = torch.load(tmp_path / "toy.pt", weights_only=True)
    payload["class"] = "os:system"
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(LatentSurgeonError, match="os:system.*not an Estimator class"):
        Estimator.load(tmp_path / "other.pt")
    payload["class"] = "latentsurgeon.nowhere:Thing"
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(LatentSurgeonError, match="cannot be imported"):
        Estimator.load(tmp_path / "missing.pt")


def test_modules_and_classes_are_code(tmp_path):
    for value, words in [(nn.Linear(2, 2), "a module Linear"), (nn.Linear, "the class Linear"),
                         (object(), "a object")]:
        with pytest.raises(InvalidParameterError, match=words):
            Toy(weights=[1.0], fn=value).fit().save(tmp_path / "toy.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Toy(weights=[1.0], fn=None).fit().save(tmp_path / "toy.pt")
        Toy.load(tmp_path / "toy.pt")  # nothing excluded: no warning


class Level(str, enum.Enum):
    LOW = "low"


class Count(int):
    pass


def test_subclasses_of_plain_types_are_stored_as_the_plain_type(tmp_path):
    toy = Toy(weights=[np.float64(1.5), Count(2)], colour=Level.LOW,
              table={"n": np.int64(3), "p": torch.nn.Parameter(torch.ones(2))}).fit()
    toy.save(tmp_path / "toy.pt")
    loaded = Toy.load(tmp_path / "toy.pt")  # weights_only=True reads every value back
    assert loaded.colour == "low" and type(loaded.colour) is str
    assert loaded.weights == [1.5, 2] and [type(w) for w in loaded.weights] == [float, int]
    assert type(loaded.table["n"]) is int and type(loaded.table["p"]) is torch.Tensor
