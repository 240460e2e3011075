"""The bad-input corpus of ``latentsurgeon.explain``: every case raises our exception with a
message naming the argument, what was expected and what was given, and leaves the models exactly
as they were (see ``_harness.check``). Results that cannot be all zero warn when they are."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    GradientShap,
    IntegratedGradients,
    LayerConductance,
    LayerIntegratedGradients,
    NeuronGradient,
    NoiseTunnel,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.errors import (
    InvalidParameterError,
    LayerNotFoundError,
    NonFiniteError,
    ShapeMismatchError,
)
from latentsurgeon.explain import (
    InfluenceFunctions,
    NearestNeighbours,
    SimplEx,
    TracIn,
    flagged_share,
    label_free_attribution,
    label_free_attribution_per_unit,
    representations,
    simplex_weights,
    top_examples,
    top_examples_by_method,
)
from latentsurgeon.models import DigitCNN

from ._harness import Case, check

G = torch.Generator().manual_seed(0)
X = torch.randn(10, 5, generator=G)
Y = torch.randint(0, 3, (10,), generator=G)
IMAGES = torch.rand(6, 1, 16, 16, generator=G)
DIGITS = torch.randint(0, 10, (6,), generator=G)


def _classifier(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)
    model.train()  # the state a call must leave alone, not eval
    return model


def _cnn(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return DigitCNN(hidden=hidden)


MODEL = _classifier()
CNN = _cnn(64)
OTHER_CNN = _cnn(32)  # the same parameter names as CNN, other shapes


def _tracin(checkpoints, **kw):
    return TracIn(checkpoints, "cross_entropy", lr=0.1, progress=False, **kw)


EXPLAINERS = {
    "NearestNeighbours": lambda: NearestNeighbours(progress=False),
    "SimplEx": lambda: SimplEx(progress=False),
    "TracIn": lambda: TracIn("current", "predicted", progress=False),
    "InfluenceFunctions": lambda: InfluenceFunctions("predicted", progress=False),
}
EMPTY = X[:0]
OTHER_SHAPE = torch.randn(4, 7, generator=G)
ENCODER = nn.Sequential(nn.Linear(5, 3), nn.Tanh())


def _shape_cases() -> list[Case]:
    m = (MODEL,)
    out = []
    for name, make in EXPLAINERS.items():
        out += [
            Case(f"{name}.explain of inputs shaped unlike the training inputs",
                 lambda make=make: make().fit(MODEL, X).explain(OTHER_SHAPE),
                 ShapeMismatchError, ["data", "(7,)", "(5,)"], m),
            Case(f"{name}.scores with test inputs shaped unlike the training inputs",
                 lambda make=make: make().scores(MODEL, X, OTHER_SHAPE),
                 ShapeMismatchError, ["(7,)", "(5,)"], m),
            Case(f"{name}.explain of a DataLoader of inputs shaped unlike the training ones",
                 lambda make=make: make().fit(MODEL, X).explain(
                     DataLoader(TensorDataset(OTHER_SHAPE), batch_size=2)),
                 ShapeMismatchError, ["data", "(7,)", "(5,)"], m),
            Case(f"{name}.fit on an empty DataLoader",
                 lambda make=make: make().fit(MODEL, DataLoader(TensorDataset(EMPTY))),
                 InvalidParameterError, ["data holds no samples", "DataLoader"], m),
            Case(f"{name}.fit on no samples", lambda make=make: make().fit(MODEL, EMPTY),
                 InvalidParameterError, ["data holds no samples", "(0, 5)"], m),
            Case(f"{name}.fit on an empty (inputs, labels) tuple",
                 lambda make=make: make().fit(MODEL, (EMPTY, Y[:0])),
                 InvalidParameterError, ["data holds no samples"], m),
            Case(f"{name}.explain of no samples",
                 lambda make=make: make().fit(MODEL, X).explain(EMPTY),
                 InvalidParameterError, ["data holds no samples", "(0, 5)"], m),
            Case(f"{name}.scores with an empty training set",
                 lambda make=make: make().scores(MODEL, EMPTY, X),
                 InvalidParameterError, ["train holds no samples"], m),
            Case(f"{name}.scores with an empty test set",
                 lambda make=make: make().scores(MODEL, X, EMPTY),
                 InvalidParameterError, ["test holds no samples"], m),
        ]
    for name, make in EXPLAINERS.items():
        out += [
            Case(f"{name}.fit on inputs on the meta device",
                 lambda make=make: make().fit(MODEL, X.to("meta")),
                 InvalidParameterError, ["data", "'meta' device"], m),
            Case(f"{name}.explain of (inputs, labels) on the meta device",
                 lambda make=make: make().fit(MODEL, X).explain((X.to("meta"), Y)),
                 InvalidParameterError, ["data", "'meta' device"], m),
            Case(f"{name}.fit with a model on the meta device",
                 lambda make=make: make().fit(nn.Linear(5, 3, device="meta"), X),
                 InvalidParameterError, ["model", "'meta' device", "to_empty"]),
        ]
    for name in ("NearestNeighbours", "SimplEx"):
        make = EXPLAINERS[name]
        out += [
            Case(f"{name}.fit on no representations",
                 lambda make=make: make().fit(None, torch.zeros(0, 3)),
                 InvalidParameterError, ["data holds no samples", "(0, 3)"]),
            Case(f"{name}.explain of representations of another width",
                 lambda make=make: make().fit(None, torch.randn(6, 3)).explain(
                     torch.randn(2, 4)),
                 ShapeMismatchError, ["data", "(4,)", "(3,)"]),
        ]
    return out


class _Thresholded(nn.Module):
    """A step function that leaves autograd: ``x > 0`` has no gradient at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :3] > 0).to(x.dtype)


class _Rounded(nn.Module):
    """A step function inside autograd: ``round`` has gradient zero everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(self.linear(x) * 4)


def _feature_cases() -> list[Case]:
    e = (ENCODER,)
    lfa, per_unit = label_free_attribution, label_free_attribution_per_unit
    return [
        Case("label-free attribution of no samples",
             lambda: lfa(ENCODER, EMPTY, IntegratedGradients, progress=False),
             InvalidParameterError, ["data holds no samples", "(0, 5)"], e),
        Case("per-unit attribution of no samples",
             lambda: per_unit(ENCODER, EMPTY, IntegratedGradients, progress=False),
             InvalidParameterError, ["data holds no samples"], e),
        Case("representations of no samples", lambda: representations(None, None, EMPTY),
             InvalidParameterError, ["data holds no samples"]),
        Case("representations of a model run on no samples",
             lambda: representations(ENCODER, None, EMPTY, progress=False),
             InvalidParameterError, ["data holds no samples"], e),
        Case("baselines of another feature shape",
             lambda: lfa(ENCODER, X, IntegratedGradients, baselines=torch.zeros(1, 7),
                         progress=False),
             ShapeMismatchError, ["baselines", "(1, 5) or (10, 5)", "(1, 7)"], e),
        Case("baselines with a row count other than 1 or the batch's",
             lambda: lfa(ENCODER, X, IntegratedGradients, baselines=torch.zeros(3, 5),
                         progress=False),
             ShapeMismatchError, ["baselines", "(1, 5) or (10, 5)", "(3, 5)"], e),
        Case("a baselines callable returning the wrong shape",
             lambda: lfa(ENCODER, X, IntegratedGradients,
                         baselines=lambda x: torch.zeros(1, 2), progress=False),
             ShapeMismatchError, ["baselines callable returned", "(1, 2)"], e),
        Case("GradientShap baselines of another feature shape",
             lambda: lfa(ENCODER, X, GradientShap, baselines=torch.zeros(4, 6),
                         progress=False),
             ShapeMismatchError, ["baselines", "(K, 5)", "(4, 6)"], e),
        Case("per-unit attribution with baselines of another shape",
             lambda: per_unit(ENCODER, X, IntegratedGradients, baselines=torch.zeros(1, 7),
                              progress=False),
             ShapeMismatchError, ["baselines", "(1, 7)"], e),
        Case("GradientShap with n_samples=0",
             lambda: lfa(ENCODER, X, GradientShap, baselines=torch.zeros(3, 5), n_samples=0,
                         progress=False),
             InvalidParameterError, ["n_samples", ">= 1", "0"], e),
        Case("NoiseTunnel with n_samples=-1",
             lambda: lfa(ENCODER, X, lambda f: NoiseTunnel(IntegratedGradients(f)),
                         n_samples=-1, progress=False),
             InvalidParameterError, ["n_samples", "-1"], e),
        Case("IntegratedGradients with n_steps=0",
             lambda: lfa(ENCODER, X, IntegratedGradients, n_steps=0, progress=False),
             InvalidParameterError, ["n_steps", ">= 1", "0"], e),
        Case("a float n_steps", lambda: per_unit(ENCODER, X, IntegratedGradients, n_steps=2.5,
                                                 progress=False),
             InvalidParameterError, ["n_steps", "2.5"], e),
        Case("GradientShap without baselines",
             lambda: lfa(ENCODER, X, GradientShap, progress=False),
             InvalidParameterError, ["baselines", "GradientShap needs baselines", "none"], e),
        Case("label-free attribution of inputs on the meta device",
             lambda: lfa(ENCODER, X.to("meta"), IntegratedGradients, progress=False),
             InvalidParameterError, ["data", "'meta' device"], e),
        Case("label-free attribution of a model on the meta device",
             lambda: lfa(nn.Linear(5, 3, device="meta"), X, IntegratedGradients,
                         progress=False),
             InvalidParameterError, ["model", "'meta' device", "to_empty"]),
        Case("an encoder whose representation is detached from the inputs",
             lambda: lfa(_Thresholded(), X, IntegratedGradients, progress=False),
             InvalidParameterError, ["encoder", "does not depend differentiably"]),
        Case("a layer attribution class as method",
             lambda: lfa(ENCODER, X, LayerIntegratedGradients, progress=False),
             InvalidParameterError, ["method", "IntegratedGradients", "LayerIntegratedGradients",
                                     "layer attribution"], e),
        Case("a layer attribution instance as method",
             lambda: lfa(ENCODER, X, LayerConductance(ENCODER, ENCODER[0]), progress=False),
             InvalidParameterError, ["method", "LayerConductance", "layer attribution"], e),
        Case("a neuron attribution class as method (per unit)",
             lambda: per_unit(ENCODER, X, NeuronGradient, progress=False),
             InvalidParameterError, ["method", "NeuronGradient", "neuron attribution"], e),
    ]


def _singular() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A linear classifier on inputs whose last four features are always 0: the weights of
    those features do not change the loss, so the Hessian is singular."""
    torch.manual_seed(0)
    inputs = torch.zeros(10, 5)
    inputs[:, 0] = torch.linspace(-1, 1, 10)
    return nn.Linear(5, 3), (inputs, Y)


SINGULAR, SINGULAR_DATA = _singular()


def cases() -> list[Case]:
    cnn = (CNN,)
    return _shape_cases() + _feature_cases() + [
        # -- the methods table and its helpers ----------------------------------------------------
        Case("top examples by an unknown method", lambda: top_examples_by_method(
            MODEL, "0", (X, Y), X[:3], methods=("nope",)), InvalidParameterError,
             ["methods must be a non-empty subset", "tracin", "('nope',)"], (MODEL,)),
        Case("top examples, more than the training set holds", lambda: top_examples_by_method(
            MODEL, "0", (X, Y), X[:3], k=50), InvalidParameterError,
             ["k must be at most the number of training examples (10)", "50"], (MODEL,)),
        Case("top examples at a misspelt layer", lambda: top_examples_by_method(
            MODEL, "zz", (X, Y), X[:3]), LayerNotFoundError, ["zz"], (MODEL,)),
        Case("flagged share of no indices", lambda: flagged_share(
            torch.zeros(0, dtype=torch.long), torch.zeros(5)), InvalidParameterError,
             ["top holds no indices"]),
        Case("flagged share of indices beyond the flags", lambda: flagged_share(
            torch.tensor([7]), torch.zeros(5)), ShapeMismatchError,
             ["indices up to 7", "flags has 5 entries"]),
        # -- reading and solving ------------------------------------------------------------------
        Case("simplex_weights with an empty corpus",
             lambda: simplex_weights(torch.randn(2, 3), torch.zeros(0, 3)),
             InvalidParameterError, ["train_reps holds no samples", "(0, 3)"]),
        Case("simplex_weights of 1-D test representations",
             lambda: simplex_weights(torch.randn(3), torch.randn(4, 3)),
             ShapeMismatchError, ["test_reps", "(n, d)", "(3,)"]),
        Case("simplex_weights of NaN representations",
             lambda: simplex_weights(torch.full((2, 3), float("nan")), torch.randn(4, 3)),
             NonFiniteError, ["test_reps", "nan"]),
        Case("top_examples of NaN scores",
             lambda: top_examples(torch.tensor([[float("nan"), 1.0, 2.0]]), 2),
             NonFiniteError, ["scores", "nan"]),
        # -- influence functions ----------------------------------------------------------------
        Case("InfluenceFunctions with damping=0 on a singular Hessian",
             lambda: InfluenceFunctions("cross_entropy", damping=0.0, solver="exact",
                                        progress=False).fit(SINGULAR, SINGULAR_DATA),
             InvalidParameterError, ["damping=0.0", "singular", "damping > 0"], (SINGULAR,)),
        # -- checkpoints ----------------------------------------------------------------------
        Case("TracIn: a checkpoint of another architecture (same names, other shapes)",
             lambda: _tracin([OTHER_CNN.state_dict()]).fit(CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "classifier", "(32,", "(64,"], cnn),
        Case("TracIn: a checkpoint file of another architecture",
             lambda: _tracin([_saved(OTHER_CNN)]).fit(CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "other.pt", "shape"], cnn),
        Case("TracIn: a checkpoint on the meta device",
             lambda: _tracin([{k: v.to("meta") for k, v in CNN.state_dict().items()}]).fit(
                 CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "'meta' device"], cnn),
        Case("TracIn: a checkpoint with an integer tensor for a float parameter",
             lambda: _tracin([{k: v.long() for k, v in CNN.state_dict().items()}]).fit(
                 CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "torch.int64", "torch.float32"], cnn),
    ]


_TMP: list = []


def _saved(model: nn.Module) -> str:
    path = _TMP[0] / "other.pt"
    torch.save({"state_dict": model.state_dict(), "lr": 0.1}, path)
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def _tmp(tmp_path_factory):
    _TMP[:] = [tmp_path_factory.mktemp("checkpoints")]


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case) -> None:
    check(case)


# -- dtypes: every entry point casts floating inputs to the model's floating dtype ----------------
DTYPES = [torch.float64, torch.bfloat16]


@pytest.mark.parametrize("name", list(EXPLAINERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_explainers_run_on_models_of_any_floating_dtype(name: str, dtype: torch.dtype) -> None:
    """A float64 or bfloat16 model given float32 inputs scores as if given inputs of its
    dtype (the activation path's cast), finite."""
    model = _classifier(dtype).eval()
    scores = EXPLAINERS[name]().scores(model, X, X[:3])
    same = EXPLAINERS[name]().scores(model, X.to(dtype), X[:3].to(dtype))
    assert scores.shape == (3, 10) and bool(torch.isfinite(scores).all())
    torch.testing.assert_close(scores, same, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_explainers_cast_float64_inputs_to_a_float32_model(name: str) -> None:
    scores = EXPLAINERS[name]().scores(MODEL, X.double(), X[:3].double())
    torch.testing.assert_close(scores, EXPLAINERS[name]().scores(MODEL, X, X[:3]),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES], ids=str)
@pytest.mark.parametrize("method", [IntegratedGradients, GradientShap], ids=lambda m: m.__name__)
def test_label_free_attribution_casts_to_the_model_dtype(dtype, method) -> None:
    encoder = nn.Sequential(nn.Linear(5, 3), nn.Tanh()).to(dtype)
    kwargs = {"baselines": torch.zeros(2, 5)} if method is GradientShap else {}
    got = label_free_attribution(encoder, X.double(), method, progress=False, **kwargs)
    want = label_free_attribution(encoder, X.to(dtype), method, progress=False, **kwargs)
    assert got.shape == X.shape and bool(torch.isfinite(got).all())
    # the attribution is taken in the inputs' dtype; the model computes in its own
    loose = {"rtol": 2e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got.to(want.dtype), want, **loose)


# -- all-zero results warn, naming the likely cause ------------------------------------------------
def _constant_loss(output: torch.Tensor, batch) -> torch.Tensor:
    return (output * 0).sum()  # reaches the graph, depends on no parameter


@pytest.mark.parametrize("make", [
    lambda: TracIn("current", _constant_loss, progress=False),
    lambda: InfluenceFunctions(_constant_loss, progress=False),
], ids=["TracIn", "InfluenceFunctions"])
def test_a_loss_independent_of_the_parameters_warns(make) -> None:
    with pytest.warns(UserWarning, match="all zero.*does not depend on the parameters"):
        scores = make().scores(MODEL, X, X[:3])
    assert not scores.any()


def test_informative_scores_do_not_warn(recwarn) -> None:
    TracIn("current", "predicted", progress=False).scores(_classifier(), X, X[:3])
    label_free_attribution(ENCODER, X, IntegratedGradients, progress=False)
    assert not [w for w in recwarn.list if "all zero" in str(w.message)]


@pytest.mark.parametrize("attribute", [label_free_attribution, label_free_attribution_per_unit])
def test_a_step_function_encoder_warns(attribute) -> None:
    with pytest.warns(UserWarning, match="all zero.*step function"):
        attributions = attribute(_Rounded(), X, IntegratedGradients, progress=False)
    assert not attributions.any()
