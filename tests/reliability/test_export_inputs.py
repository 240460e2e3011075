"""The bad-input corpus of issue 23's export, per-token and loss-term pieces: P-ClArC's
``tokens=`` option, the gated per-token projection, the loss terms ``RRClarcLoss``/``RRRLoss``
and the Lightning ``CorrectionCallback``. Every case raises our exception with a message naming
the argument, what was expected and what was given, and leaves the model as it was (see
``_harness.check``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.correct import (
    ClarcProjection,
    ExplanationRegularization,
    PClarc,
    RRClarc,
    RRClarcLoss,
    RRRLoss,
)
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
)

from ._harness import Case, check

T, D = 5, 4
G = torch.Generator().manual_seed(0)
SEQ = torch.randn(12, T, D, generator=G)
FLAGS = (torch.arange(12) % 2).long()
MASKS = torch.zeros(12, T)
MASKS[FLAGS.bool(), 1] = 1


def _sequence_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, D), nn.Flatten(), nn.Linear(T * D, 3))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


SEQ_MODEL = _sequence_model()
MLP = _mlp()
X = torch.randn(8, 6, generator=G)
Y = torch.randint(0, 3, (8,), generator=G)


def _cases() -> list[Case]:
    seq = (SEQ, torch.zeros(12, dtype=torch.long), FLAGS)
    term = RRClarcLoss("0", torch.ones(8))
    return [
        Case("PClarc tokens= an unknown mode",
             lambda: PClarc("0", tokens="some", progress=False).fit(SEQ_MODEL, seq),
             InvalidParameterError, ["tokens", "'all'", "'some'"], [SEQ_MODEL]),
        Case("PClarc tokens='masked' without masks",
             lambda: PClarc("0", tokens="masked", progress=False).fit(SEQ_MODEL, seq),
             LatentSurgeonError, ["tokens='masked'", "masks", "tokens='all'"], [SEQ_MODEL]),
        Case("PClarc tokens='masked' with masks of another token count",
             lambda: PClarc("0", tokens="masked", progress=False).fit(
                 SEQ_MODEL, (*seq, torch.ones(12, T + 1))),
             ShapeMismatchError, ["masks", f"(N, {T})", f"(12, {T + 1})"], [SEQ_MODEL]),
        Case("PClarc tokens='masked' with masks that flag no artifact token",
             lambda: PClarc("0", tokens="masked", progress=False).fit(
                 SEQ_MODEL, (*seq, torch.zeros(12, T))),
             LatentSurgeonError, ["no artifact sample has a masked token"], [SEQ_MODEL]),
        Case("PClarc tokens= at a layer without a token axis",
             lambda: PClarc("2", tokens="all", progress=False).fit(SEQ_MODEL, seq),
             ShapeMismatchError, ["sequence activations (N, T, D)", "'2'", "(12, 3)"],
             [SEQ_MODEL]),
        Case("PClarc.fit_paired with tokens=",
             lambda: PClarc("0", tokens="all", progress=False).fit_paired(SEQ_MODEL, SEQ, SEQ),
             InvalidParameterError, ["fit_paired", "tokens='all'"], [SEQ_MODEL]),
        Case("ClarcProjection gate= with a flattened direction",
             lambda: ClarcProjection(torch.ones(4), torch.zeros(4), gate=0.5),
             InvalidParameterError, ["gate=", "pooling='token'", "'flatten'"]),
        Case("a token direction on activations of another width",
             lambda: ClarcProjection(torch.ones(D + 1), torch.zeros(D + 1),
                                     pooling="token")(SEQ),
             ShapeMismatchError, ["token space", f"{D + 1} entries", f"need {D}"]),
        Case("RRClarcLoss.from_correction of an unfitted RRClarc",
             lambda: RRClarcLoss.from_correction(RRClarc("0")), NotFittedError,
             ["not fitted", "epochs=0"]),
        Case("RRClarcLoss.from_correction of another correction",
             lambda: RRClarcLoss.from_correction(PClarc("0")), InvalidParameterError,
             ["RRClarc", "PClarc"]),
        Case("RRClarcLoss with an empty layer name",
             lambda: RRClarcLoss("", torch.ones(3)), InvalidParameterError, ["layer", "''"]),
        Case("RRClarcLoss with a direction that is not a tensor",
             lambda: RRClarcLoss("0", [1.0, 0.0]), InvalidParameterError,
             ["direction", "list"]),
        Case("RRClarcLoss with a zero direction",
             lambda: RRClarcLoss("0", torch.zeros(3)), InvalidParameterError,
             ["direction", "zero"]),
        Case("RRClarcLoss with a NaN direction",
             lambda: RRClarcLoss("0", torch.tensor([1.0, float("nan")])), NonFiniteError,
             ["direction"]),
        Case("RRClarcLoss with a negative weight",
             lambda: RRClarcLoss("0", torch.ones(3), lambda_rr=-1.0), InvalidParameterError,
             ["lambda_rr", ">= 0", "-1.0"]),
        Case("RRClarcLoss with an unknown masking",
             lambda: RRClarcLoss("0", torch.ones(3), masking="some"), InvalidParameterError,
             ["masking", "'max_logit'", "'some'"]),
        Case("RRClarcLoss target_logit without a target",
             lambda: RRClarcLoss("0", torch.ones(3), masking="target_logit"),
             InvalidParameterError, ["target_logit", "target", "None"]),
        Case("RRClarcLoss.tracking of something that is not a model",
             lambda: term.tracking("model").__enter__(), InvalidParameterError,
             ["model", "torch.nn.Module", "str"]),
        Case("RRClarcLoss at a layer the model lacks",
             lambda: RRClarcLoss("9", torch.ones(8))(MLP, (X, Y)), LatentSurgeonError,
             ["'9'"], [MLP]),
        Case("RRClarcLoss with outputs of an earlier pass",
             lambda: _stale(term), LatentSurgeonError, ["latest", "outputs=None"], [MLP]),
        Case("RRRLoss with a negative weight",
             lambda: RRRLoss(-0.5), InvalidParameterError, ["lambda_rrr", ">= 0", "-0.5"]),
        Case("RRRLoss with an unknown masking",
             lambda: RRRLoss(masking="max_logit"), InvalidParameterError,
             ["masking", "'true_label'", "'max_logit'"]),
        Case("RRRLoss with normalize= not a bool",
             lambda: RRRLoss(normalize=1), InvalidParameterError, ["normalize", "bool", "1"]),
        Case("RRRLoss.from_correction of another correction",
             lambda: RRRLoss.from_correction(PClarc("0")), InvalidParameterError,
             ["ExplanationRegularization", "PClarc"]),
        Case("RRRLoss without masks in the batch",
             lambda: RRRLoss()(MLP, (X, Y)), InvalidParameterError,
             ["batch", "masks", "element 2", "tuple of 2"], [MLP]),
        Case("RRRLoss with a batch that is a tensor",
             lambda: RRRLoss()(MLP, X), InvalidParameterError, ["batch", "inputs", "Tensor"],
             [MLP]),
        Case("RRRLoss with masks of another shape",
             lambda: RRRLoss()(MLP, (X, Y, torch.ones(8, 7))), LatentSurgeonError,
             ["masks", "(8, 7)"], [MLP]),
        Case("RRRLoss with outputs not computed from the inputs",
             lambda: RRRLoss()(MLP, (X.clone().requires_grad_(True), Y, torch.ones(8, 6)),
                               MLP(X)),
             LatentSurgeonError, ["outputs", "requires_grad_(True)", "outputs=None"], [MLP]),
        Case("ExplanationRegularization-derived RRRLoss keeps the checks",
             lambda: RRRLoss.from_correction(ExplanationRegularization(masking="true_label"))(
                 MLP, (X, Y)), InvalidParameterError, ["masks"], [MLP]),
    ]


def _stale(term: RRClarcLoss) -> None:
    with term.tracking(MLP):
        stale = MLP(X)
        MLP(X)
        term(MLP, (X, Y), stale.detach() + 0)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_bad_input(case):
    check(case)


def test_lightning_callback_bad_inputs():
    pytest.importorskip("lightning.pytorch")
    from latentsurgeon.correct.lightning import CorrectionCallback

    check(Case("CorrectionCallback with a term that is not callable",
               lambda: CorrectionCallback(3), InvalidParameterError, ["term", "int"]))
    check(Case("CorrectionCallback with an empty network name",
               lambda: CorrectionCallback(RRRLoss(), network=""), InvalidParameterError,
               ["network", "attribute name", "''"]))
    callback = CorrectionCallback(RRRLoss(), network="net")
    check(Case("CorrectionCallback naming a network the module lacks",
               lambda: callback._model(MLP), LatentSurgeonError, ["network", "'net'"]))
