"""Pooled gradients of token activations follow the pooling rule: the attention mask of a dict
batch reaches the lift, so padding changes neither the activations nor the gradients."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.concepts import CAV
from latentsurgeon.concepts._activations import _layer_activations
from latentsurgeon.concepts.derivatives import directional_derivatives, pooled_gradients


class TokenModel(torch.nn.Module):
    """input_ids (N, T) + attention_mask -> block (N, T, D) -> masked mean -> 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(20, 6)
        self.block = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.block(self.embed(input_ids)))
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


IDS = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 1], [2, 2, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])


def _one(i: int) -> dict[str, torch.Tensor]:
    n = int(MASK[i].sum())
    return {"input_ids": IDS[i:i + 1, :n], "attention_mask": MASK[i:i + 1, :n]}


@pytest.mark.parametrize("pooling", ["mean", "last", "cls", "max"])
def test_gradients_ignore_padding(pooling):
    model = TokenModel()
    batch = {"input_ids": IDS, "attention_mask": MASK}
    grads, shape = pooled_gradients(model, "block", batch, 1, pooling=pooling, batch_size=3)
    assert grads.shape == (3, 6) and shape == (5, 6)
    for i in range(3):
        alone, _ = pooled_gradients(model, "block", _one(i), 1, pooling=pooling)
        torch.testing.assert_close(grads[i:i + 1], alone)


def test_mean_gradient_is_the_derivative_along_v_at_every_unmasked_token():
    model = TokenModel()
    batch = {"input_ids": IDS, "attention_mask": MASK}
    grads, _ = pooled_gradients(model, "block", batch, 2, pooling="mean")
    v = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eps = 1e-4

    def logit(e: float) -> torch.Tensor:
        def shift(module, inputs, output):
            return output + e * v.float() * MASK.unsqueeze(-1).float()
        handle = model.block.register_forward_hook(shift)
        try:
            with torch.no_grad():
                return model(IDS, MASK)[:, 2].double()
        finally:
            handle.remove()

    numeric = (logit(eps) - logit(-eps)) / (2 * eps)
    torch.testing.assert_close(grads @ v, numeric, rtol=1e-2, atol=1e-4)


def test_cav_of_masked_activations_matches_its_derivatives():
    model = TokenModel()
    batch = {"input_ids": IDS, "attention_mask": MASK}
    acts, shape = _layer_activations(model, "block", batch, "mean", 2, None)
    assert acts.shape == (3, 6) and shape == (5, 6)
    for i in range(3):
        alone, _ = _layer_activations(model, "block", _one(i), "mean", 2, None)
        torch.testing.assert_close(acts[i:i + 1], alone)
    raw = model.block(model.embed(IDS)).detach().repeat(2, 1, 1)
    cav = CAV("mass_mean", "mean", test_size=0.5).fit(
        raw, torch.tensor([0, 1, 0, 1, 0, 1]), attention_mask=MASK.repeat(2, 1))
    # another padding length pools into the same space
    torch.testing.assert_close(cav.project(raw[:1, :3], attention_mask=MASK[:1, :3]),
                               cav.project(raw[:1], attention_mask=MASK[:1]))
    d = directional_derivatives(model, "block", batch, 0, cav)
    assert d.shape == (1, 3) and bool(torch.isfinite(d).all())
