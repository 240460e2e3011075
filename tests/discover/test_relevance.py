"""relevance(): input x gradient and concept relevance of each sample's own class, one pass per
batch, independent of the batch size, the model left as it was."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients

from latentsurgeon.discover import relevance
from latentsurgeon.hooks import hook_count
from latentsurgeon.models import DigitCNN


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DigitCNN().train()
    x = torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 10
    return model, x, y


def test_input_relevance_is_captums_input_x_gradient_of_the_own_class(setup):
    model, x, y = setup
    out = relevance(model, (x, y), progress=False)
    model.eval()
    expected = InputXGradient(model).attribute(x.clone().requires_grad_(), target=y)
    model.train()
    assert torch.allclose(out.input_relevance, expected, atol=1e-6)
    assert torch.equal(out.target, y) and out.concepts is None and len(out) == 20


def test_concept_relevance_is_activation_times_gradient_summed_over_positions(setup):
    model, x, y = setup
    out = relevance(model, (x, y), layer="features.3", progress=False)
    model.eval()
    acts = model.features[:4](x).detach().requires_grad_()
    logits = model.classifier(model.features[4:](acts))
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), acts)
    model.train()
    assert torch.allclose(out.concepts, (acts * grad).sum((2, 3)), atol=1e-5)
    assert out.layer == "features.3" and out.concepts.shape == (20, 32)


def test_batch_size_does_not_change_the_result_and_the_model_is_restored(setup):
    model, x, y = setup
    a = relevance(model, (x, y), layer="features.3", batch_size=7, progress=False)
    b = relevance(model, (x, y), layer="features.3", batch_size=64, progress=False)
    assert torch.allclose(a.input_relevance, b.input_relevance, atol=1e-6)
    assert torch.allclose(a.concepts, b.concepts, atol=1e-5)
    assert model.training and hook_count(model) == 0


def test_without_labels_the_predicted_class_is_explained(setup):
    model, x, _ = setup
    out = relevance(model, x, progress=False)
    assert torch.equal(out.target, out.logits.argmax(1))


def test_integrated_gradients_is_captums_and_the_layer_still_comes_out(setup):
    model, x, y = setup
    out = relevance(model, (x[:6], y[:6]), layer="features.3", method="integrated_gradients",
                    progress=False)
    model.eval()
    expected = IntegratedGradients(model).attribute(x[:6], target=y[:6])
    model.train()
    assert torch.allclose(out.input_relevance, expected.float(), atol=1e-5)
    assert out.concepts.shape == (6, 32)
