"""The bad-input corpus of token pooling, the CAV's attention mask and steering units: every case
raises our exception with a message naming the argument, what was expected and what was given,
and leaves the model as it was (``_harness.check``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.activations import layer_outputs, pool
from latentsurgeon.concepts import CAV, probe_layers
from latentsurgeon.concepts.derivatives import pooled_gradients
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.intervene import SteeringVector

from ._harness import Case, check


class _Text(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.block(self.emb(input_ids)) * m).sum(1) / m.sum(1).clamp_min(1))


def _conv() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    model.train()
    return model


TEXT, CONV = _Text(), _conv()
IDS = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
BATCH = {"input_ids": IDS, "attention_mask": MASK}
EMPTY = {"input_ids": IDS, "attention_mask": torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])}
ACTS = torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(0))
IMAGES = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 0, 1, 0, 1])
GIVEN = SteeringVector.from_vector("block", torch.ones(4), units="activation_norm")
FITTED = SteeringVector("block").fit(TEXT, BATCH, BATCH)

CASES = [
    Case("pool: a position that is not an int", lambda: pool(ACTS, "position:first"),
         InvalidParameterError, ["position:first", "position:K", "cls"]),
    Case("pool: a token mode on images", lambda: pool(torch.zeros(2, 3, 4, 4), "cls"),
         ShapeMismatchError, ["cls", "(N, T, D)", "(2, 3, 4, 4)"]),
    Case("pool: a position outside the tokens", lambda: pool(ACTS, "position:9"),
         ShapeMismatchError, ["position:9", "token 9", "4 tokens"]),
    Case("pool: a mask of other tokens", lambda: pool(ACTS, "last", torch.ones(6, 7)),
         ShapeMismatchError, ["attention mask", "(6, 7)", "(6, 4, 5)"]),
    Case("pool: a sample without tokens", lambda: pool(ACTS, "mean", torch.tensor(
        [[1, 1, 0, 0], [0, 0, 0, 0]] * 3)), InvalidParameterError,
         ["attention_mask", "no unmasked token", "rows [1, 3, 5]"]),
    Case("layer_outputs: a misspelt token mode", lambda: layer_outputs(
        TEXT, "block", BATCH, pooling="token-mean", progress=False), InvalidParameterError,
         ["token-mean", "token_mean"], [TEXT]),
    Case("layer_outputs: a padded sample without tokens", lambda: layer_outputs(
        TEXT, "block", EMPTY, pooling="mean", progress=False), InvalidParameterError,
         ["attention_mask", "rows [0]"], [TEXT]),
    Case("layer_outputs: a token mode on a conv layer", lambda: layer_outputs(
        CONV, "0", IMAGES, pooling="last", progress=False), ShapeMismatchError,
         ["last", "(N, T, D)", "(4, 3, 4, 4)"], [CONV]),
    Case("CAV: an unknown pooling", lambda: CAV(pooling="position:x").fit(ACTS, Y),
         InvalidParameterError, ["pooling", "position:K", "position:x"]),
    Case("CAV: a mask that does not fit the activations", lambda: CAV(pooling="cls").fit(
        ACTS, Y, attention_mask=torch.ones(6, 2)), ShapeMismatchError,
         ["attention mask", "(6, 2)", "(6, 4, 5)"]),
    Case("CAV: project activations of another hidden size", lambda: CAV(
        "mass_mean", "token_mean").fit(ACTS, Y).project(torch.zeros(2, 4, 3)),
         ShapeMismatchError, ["per-sample shape", "(4, 5)", "(4, 3)"]),
    Case("probe_layers: an unknown pooling", lambda: probe_layers(
        TEXT, "block", BATCH, torch.tensor([0, 1]), pooling="tokens", progress=False),
         InvalidParameterError, ["pooling", "tokens"], [TEXT]),
    Case("pooled gradients: a token mode on a conv layer", lambda: pooled_gradients(
        CONV, "0", IMAGES, 1, pooling="cls"), ShapeMismatchError, ["cls", "(N, T, D)"], [CONV]),
    Case("steering: unknown units", lambda: SteeringVector("block", units="norm").fit(
        TEXT, BATCH, BATCH), InvalidParameterError, ["units", "activation_norm", "norm"],
         [TEXT]),
    Case("steering: activation-norm units of a vector never fitted",
         lambda: GIVEN.attach(TEXT), LatentSurgeonError,
         ["activation_norm", "from_vector", "units='difference'"], [TEXT]),
    Case("steering: relative strength of a vector never fitted",
         lambda: GIVEN.relative_strength(), LatentSurgeonError, ["from_vector", "fit"]),
    Case("steering: relative strength at a NaN alpha",
         lambda: FITTED.relative_strength(float("nan")), InvalidParameterError,
         ["alpha", "finite", "nan"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case):
    check(case)
