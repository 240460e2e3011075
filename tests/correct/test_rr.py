"""RR-ClArC's pieces: masked outputs, the latent gradient's space, the penalties."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.correct import RRLossType, RRMaskingPattern
from latentsurgeon.correct.rr import latent_gradient, masked_output, rr_penalty
from latentsurgeon.errors import InvalidParameterError


def test_masked_output_values():
    logits = torch.tensor([[1.0, 3.0, -1.0], [0.0, -2.0, 5.0]])
    torch.testing.assert_close(masked_output(logits, "max_logit"), torch.tensor([3.0, 5.0]))
    torch.testing.assert_close(masked_output(logits, "target_logit", 0), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(masked_output(logits, "all_logits"), torch.tensor([3.0, 3.0]))
    logp = torch.log(torch.softmax(logits, 1) + 1e-5).mean(1)
    torch.testing.assert_close(masked_output(logits, RRMaskingPattern.LOGPROBS), logp)
    a = masked_output(logits, "all_logits_random", generator=torch.Generator().manual_seed(1))
    b = masked_output(logits, "all_logits_random", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_masked_output_errors():
    logits = torch.zeros(2, 3)
    with pytest.raises(InvalidParameterError, match="needs target="):
        masked_output(logits, "target_logit")
    with pytest.raises(InvalidParameterError, match=r"target must lie in \[0, 2\].*got 7"):
        masked_output(logits, "target_logit", 7)
    with pytest.raises(InvalidParameterError, match="masking must be one of 'max_logit'"):
        masked_output(logits, "top")


def test_latent_gradient_space():
    grad = torch.randn(5, 2, 3, 3)
    torch.testing.assert_close(latent_gradient(grad, "max"), grad.sum((2, 3)))
    torch.testing.assert_close(latent_gradient(grad, "mean"), grad.sum((2, 3)))
    torch.testing.assert_close(latent_gradient(grad, "flatten"), grad.reshape(5, -1))


def test_penalties():
    g = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    v = torch.tensor([1.0, 0.0])
    assert float(rr_penalty(g, v, "l2")) == pytest.approx((9 + 0) / 2)
    assert float(rr_penalty(g, v, RRLossType.L1)) == pytest.approx(1.5)
    assert float(rr_penalty(g, v, "cosine")) == pytest.approx((0.6 + 0.0) / 2, abs=1e-6)
    with pytest.raises(InvalidParameterError, match="'l2', 'l1', 'cosine'"):
        rr_penalty(g, v, "l3")
