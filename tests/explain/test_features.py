"""Label-free feature importance: against lfxai, an independent auxiliary function, closed forms."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from captum.attr import (
    DeepLift,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import nn

from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError
from latentsurgeon.explain import label_free_attribution, label_free_attribution_per_unit
from latentsurgeon.hooks import hook_count

from .conftest import images, make_ae

HAS_LFXAI = importlib.util.find_spec("lfxai") is not None
needs_lfxai = pytest.mark.skipif(not HAS_LFXAI, reason="lfxai is not installed (reference only)")


def independent_ig(encoder: nn.Module, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """The auxiliary function built by hand, one sample at a time (no pairing to get wrong)."""
    out = []
    for xi in x:
        reference = encoder(xi[None]).detach()

        def aux(inputs: torch.Tensor, reference: torch.Tensor = reference) -> torch.Tensor:
            return (encoder(inputs) * reference).sum(dim=1)

        out.append(IntegratedGradients(aux).attribute(xi[None], baselines=baseline))
    return torch.cat(out).detach()


def linear_encoder(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(16, 3, bias=False).double()
    return nn.Sequential(nn.Flatten(), lin).eval(), lin.weight.detach()


def gram_grad(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d/dx~ <W x~, W x> = W^T W x, shaped like x: the closed form of every gradient below."""
    return (x.reshape(len(x), -1) @ weight.T @ weight).reshape(x.shape)


def test_integrated_gradients_equals_an_independent_auxiliary_function():
    encoder = make_ae().encoder
    x = images(9)
    baseline = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    ours = label_free_attribution(encoder, x, IntegratedGradients, baselines=baseline,
                                  batch_size=4, progress=False)
    assert ours.shape == x.shape and ours.dtype == torch.float64
    torch.testing.assert_close(ours, independent_ig(encoder, x, baseline), rtol=0, atol=1e-10)
    # completeness: attributions sum to g(x) - g(baseline) = |f(x)|^2 - <f(0), f(x)>
    with torch.no_grad():
        fx, f0 = encoder(x), encoder(baseline)
    expected = (fx * fx).sum(1) - (f0 * fx).sum(1)
    torch.testing.assert_close(ours.sum(dim=(1, 2, 3)), expected, rtol=1e-3, atol=1e-4)


@needs_lfxai
def test_integrated_gradients_matches_lfxai_attribute_auxiliary():
    from lfxai.explanations.features import attribute_auxiliary

    encoder = make_ae().encoder.float()
    x = images(23).float()
    baseline = torch.zeros(1, 1, 4, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(23)),
                                         batch_size=10)
    reference = attribute_auxiliary(encoder, loader, torch.device("cpu"),
                                    IntegratedGradients(encoder), baseline)
    ours = label_free_attribution(encoder, x, IntegratedGradients, baselines=baseline,
                                  batch_size=7, progress=False)
    assert float((ours - torch.from_numpy(reference)).abs().max()) <= 1e-5


@pytest.mark.parametrize("batch_size", [1, 7, 23])
def test_same_result_for_any_batch_size(batch_size):
    encoder = make_ae().encoder
    x = images(23)
    base = label_free_attribution(encoder, x, IntegratedGradients, batch_size=23, progress=False)
    other = label_free_attribution(encoder, x, IntegratedGradients, batch_size=batch_size,
                                   progress=False)
    torch.testing.assert_close(other, base, rtol=0, atol=1e-12)


def test_gradient_shap_pairs_each_row_with_its_own_reference():
    """Linear encoder, one baseline, no noise: GradientShap is (x - b) * W^T W x exactly, for
    every sample of a batch. Rows paired with another sample's f(x) would get W^T W x'."""
    encoder, weight = linear_encoder()
    x = images(6)
    baseline = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)
    ours = label_free_attribution(encoder, x, GradientShap, baselines=baseline, n_samples=4,
                                  stdevs=0.0, batch_size=6, progress=False)
    expected = (x - baseline) * gram_grad(weight, x)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


@needs_lfxai
def test_lfxai_pairs_gradient_shap_rows_wrongly():
    """The defect our construction removes: lfxai tiles f(x) while captum repeats each input."""
    from lfxai.explanations.features import attribute_auxiliary

    encoder, weight = linear_encoder()
    x = images(6)
    baseline = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(6)),
                                         batch_size=6)
    expected = (x - baseline) * gram_grad(weight, x)
    torch.manual_seed(0)
    theirs = torch.from_numpy(attribute_auxiliary(
        encoder, loader, torch.device("cpu"), GradientShap(encoder), baseline))
    assert float((theirs - expected).abs().max()) > 1e-3


def test_noise_tunnel_without_noise_equals_the_plain_method():
    encoder = make_ae().encoder
    x = images(6)
    plain = label_free_attribution(encoder, x, Saliency, abs=False, progress=False)
    for method in (lambda f: NoiseTunnel(Saliency(f)), NoiseTunnel(Saliency(encoder))):
        tunnel = label_free_attribution(encoder, x, method, nt_samples=3, stdevs=0.0,
                                        nt_type="smoothgrad", abs=False, progress=False)
        torch.testing.assert_close(tunnel, plain, rtol=0, atol=1e-12)


def test_closed_forms_on_a_linear_encoder():
    encoder, weight = linear_encoder()
    x = images(5)
    grad = gram_grad(weight, x)
    saliency = label_free_attribution(encoder, x, Saliency, progress=False)
    torch.testing.assert_close(saliency, grad.abs(), rtol=0, atol=1e-12)
    ixg = label_free_attribution(encoder, x, InputXGradient, progress=False)
    torch.testing.assert_close(ixg, x * grad, rtol=0, atol=1e-12)
    baseline = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    deeplift = label_free_attribution(encoder, x, DeepLift, baselines=baseline, progress=False)
    torch.testing.assert_close(deeplift, (x - baseline) * grad, rtol=0, atol=1e-12)


def test_deeplift_through_nonlinear_layers_is_complete():
    encoder = make_ae().encoder
    x = images(4)
    baseline = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    attr = label_free_attribution(encoder, x, DeepLift, baselines=baseline, progress=False)
    with torch.no_grad():
        fx, f0 = encoder(x), encoder(baseline)
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), (fx * fx).sum(1) - (f0 * fx).sum(1),
                               rtol=1e-8, atol=1e-10)


def test_a_layer_of_a_bigger_model_is_the_encoder():
    ae = make_ae()
    x = images(7)
    whole = label_free_attribution(ae, x, IntegratedGradients, layer="encoder", progress=False)
    alone = label_free_attribution(ae.encoder, x, IntegratedGradients, progress=False)
    torch.testing.assert_close(whole, alone, rtol=0, atol=0)


class Later(nn.Module):
    """Counts how often the part of the model after the explained layer runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_the_forward_pass_stops_at_the_layer():
    """The first pass of a model learns how often the layer runs (it runs whole, once); every
    later pass stops after the layer, and an in-place op after it changes nothing read."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    later = Later()
    model = nn.Sequential(head, nn.ReLU(inplace=True), later)
    x = images(5)
    ours = label_free_attribution(model, x, IntegratedGradients, layer="0", batch_size=2,
                                  progress=False)
    assert later.calls == 1
    torch.testing.assert_close(
        ours, label_free_attribution(head, x, IntegratedGradients, batch_size=2, progress=False),
        rtol=0, atol=0)


def test_per_unit_attribution_weights_each_unit_by_its_value():
    encoder = make_ae().encoder
    x = images(5)
    baseline = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    ours = label_free_attribution_per_unit(encoder, x, IntegratedGradients, baselines=baseline,
                                           batch_size=2, progress=False)
    assert ours.shape == (5, 3, 1, 4, 4)
    with torch.no_grad():
        z = encoder(x)
    for j in range(3):
        attr = IntegratedGradients(encoder).attribute(x, baselines=baseline, target=j)
        expected = (z[:, j].reshape(-1, 1, 1, 1) * attr).abs().detach()
        torch.testing.assert_close(ours[:, j], expected, rtol=0, atol=1e-10)
    signed = label_free_attribution_per_unit(encoder, x, IntegratedGradients, units=[2],
                                             baselines=baseline, signed=True, progress=False)
    attr = IntegratedGradients(encoder).attribute(x, baselines=baseline, target=2).detach()
    torch.testing.assert_close(signed[:, 0], z[:, 2].abs().reshape(-1, 1, 1, 1) * attr,
                               rtol=0, atol=1e-10)


@needs_lfxai
def test_per_unit_matches_lfxai_attribute_individual_dim():
    from lfxai.explanations.features import attribute_individual_dim

    encoder = make_ae().encoder.float()
    x = images(12).float()
    baseline = torch.zeros(1, 1, 4, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(12)),
                                         batch_size=5)
    reference = attribute_individual_dim(encoder, 3, loader, torch.device("cpu"),
                                         IntegratedGradients(encoder), baseline)
    ours = label_free_attribution_per_unit(encoder, x, IntegratedGradients, baselines=baseline,
                                           progress=False)
    # lfxai concatenates the units along the (single) channel axis
    assert float((ours[:, :, 0] - torch.from_numpy(reference)).abs().max()) <= 1e-5


def test_model_state_and_the_callers_method_are_left_as_they_were():
    ae = make_ae().train()
    flags = [p.requires_grad for p in ae.parameters()]
    method = IntegratedGradients(ae, multiply_by_inputs=False)
    x = images(4)
    out = label_free_attribution(ae, x, method, layer="encoder", progress=False)
    assert method.forward_func is ae  # the caller's instance is untouched
    assert ae.training and all(m.training for m in ae.modules())
    assert [p.requires_grad for p in ae.parameters()] == flags
    assert hook_count(ae) == 0
    # the instance's settings are kept: without multiplying by inputs, IG is the path-mean grad
    multiplied = label_free_attribution(ae, x, IntegratedGradients, layer="encoder",
                                        progress=False)
    torch.testing.assert_close(out * x, multiplied, rtol=1e-8, atol=1e-12)


def test_seeded_draws_are_reproducible_and_leave_the_global_rng_alone():
    encoder = make_ae().encoder
    x = images(4)
    baselines = images(10, seed=9)
    state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = label_free_attribution(encoder, x, GradientShap, baselines=baselines, seed=3,
                                   progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert (np.random.get_state()[1] == numpy_state).all()
    second = label_free_attribution(encoder, x, GradientShap, baselines=baselines, seed=3,
                                    progress=False)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_callable_baselines_get_each_batch():
    encoder = make_ae().encoder
    x = images(6)
    seen = []

    def blur(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(len(inputs))
        return inputs * 0.5

    out = label_free_attribution(encoder, x, IntegratedGradients, baselines=blur, batch_size=4,
                                 progress=False)
    assert seen == [4, 2]
    expected = independent_ig(encoder, x[:1], x[:1] * 0.5)
    torch.testing.assert_close(out[:1], expected, rtol=0, atol=1e-10)


def test_bad_arguments_are_refused():
    encoder = make_ae().encoder
    x = images(3)
    with pytest.raises(InvalidParameterError, match="takes no baselines"):
        label_free_attribution(encoder, x, Saliency, baselines=torch.zeros(1, 1, 4, 4),
                               progress=False)
    with pytest.raises(InvalidParameterError, match="method"):
        label_free_attribution(encoder, x, 42, progress=False)
    with pytest.raises(InvalidParameterError, match="method"):
        label_free_attribution(encoder, x, nn.Linear, progress=False)
    with pytest.raises(LayerNotFoundError):
        label_free_attribution(make_ae(), x, Saliency, layer="encoderr", progress=False)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        label_free_attribution(encoder, x, Saliency, batch_size=0, progress=False)
    with pytest.raises(InvalidParameterError, match="additional_forward_args"):
        label_free_attribution(encoder, x, Saliency, additional_forward_args=(1,),
                               progress=False)
    with pytest.raises(InvalidParameterError, match="units"):
        label_free_attribution_per_unit(encoder, x, Saliency, units=[3], progress=False)


def test_one_table_of_feature_methods_behind_the_cli_and_the_experiments():
    from latentsurgeon.cli.explain import FEATURE_CHOICES
    from latentsurgeon.experiments._features import LABELS, STUDIED_METHODS
    from latentsurgeon.explain import FEATURE_METHODS

    assert FEATURE_CHOICES == tuple(n.replace("_", "-") for n in FEATURE_METHODS)
    assert set(STUDIED_METHODS) <= set(FEATURE_METHODS)
    assert {LABELS[n] for n in STUDIED_METHODS} == {FEATURE_METHODS[n].label
                                                   for n in STUDIED_METHODS}
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(4, 1, 3, 4)
    for name, method in FEATURE_METHODS.items():
        extra = {"baselines": torch.zeros_like(x[:1])} if name == "gradient_shap" else {}
        scores = label_free_attribution(encoder, x, method.attribution, progress=False, **extra)
        assert scores.shape == x.shape and torch.isfinite(scores).all(), name
