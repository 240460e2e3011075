"""A-ClArC: parameters trained, state restored, seeds, the augmentation, several layers, the
criterion, and the quality goal."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from latentsurgeon.concepts import CAV
from latentsurgeon.correct import AClarc
from latentsurgeon.correct.projection import clarc_projection
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import HookGroup, hook_count
from latentsurgeon.metrics import gap_closed, shortcut_gap


def test_fit_trains_only_above_and_restores_flags(base_model, watermark):
    before = copy.deepcopy(base_model.state_dict())
    base_model.classifier[3].bias.requires_grad_(False)
    base_model.train()
    ac = AClarc("features", epochs=1, progress=False).fit(base_model, watermark.train)
    # the layers above, less the parameter the user froze
    assert ac.trainable_params_ == ["classifier.1.weight", "classifier.1.bias",
                                    "classifier.3.weight"]
    after = base_model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same == (key.startswith("features") or key == "classifier.3.bias"), key
    assert not base_model.classifier[3].bias.requires_grad
    assert all(p.requires_grad for n, p in base_model.named_parameters() if n != "classifier.3.bias")
    assert base_model.training  # mode restored: a correction's fit changes weights only
    assert hook_count(base_model) == 0
    assert ac.history_["loss"] and len(ac.history_["loss"]) == 1
    # the correction lives in the weights: attach is a no-op, export a plain copy
    x = watermark.test.images[:8]
    with ac.applied(base_model):
        torch.testing.assert_close(base_model(x), ac.export(base_model)(x))


def test_weights_restored_when_fit_raises(base_model, watermark):
    before = copy.deepcopy(base_model.state_dict())
    steps = []

    class Boom(torch.optim.Adam):
        def step(self, closure=None):
            steps.append(1)
            if len(steps) == 3:
                raise RuntimeError("boom")
            return super().step(closure)

    with pytest.raises(RuntimeError, match="boom"):
        AClarc("features", epochs=1, optimizer=lambda p: Boom(p, lr=1e-2), progress=False).fit(
            base_model, watermark.train)
    for key, value in base_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert hook_count(base_model) == 0
    assert all(p.requires_grad for p in base_model.parameters())


def run(nets, template=None, data=None, **kw):
    x, y, artifact = data if data is not None else nets.tiny_data()
    if template is None:
        torch.manual_seed(0)
        template = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    model = copy.deepcopy(template)
    params = {"epochs": 2, "batch_size": 16, "progress": False, "cav_samples": "all", **kw}
    AClarc("1", **params).fit(model, (x, y, artifact))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_seeded_and_fraction_matters(nets):
    torch.testing.assert_close(run(nets), run(nets))
    torch.testing.assert_close(run(nets, augment_fraction=0.0), run(nets, alpha=0.0))
    assert not torch.allclose(run(nets, augment_fraction=0.5), run(nets, augment_fraction=0.0))
    assert not torch.allclose(run(nets, seed=1), run(nets, seed=0))
    with pytest.raises(InvalidParameterError, match="augment_fraction must be a number in"):
        run(nets, augment_fraction=1.5)
    with pytest.raises(InvalidParameterError, match="epochs"):
        run(nets, epochs=-1)
    with pytest.raises(InvalidParameterError, match="optimizer"):
        run(nets, optimizer="lbfgs")


def test_seed_none_is_fresh_randomness(nets):
    """seed=None draws fresh randomness every call (before, None behaved as 0)."""
    a, b = run(nets, seed=None), run(nets, seed=None)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, run(nets, seed=0))


def test_augmentation_touches_the_configured_share(nets):
    x, y, artifact = nets.tiny_data(n=40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    cav = CAV(method="mass_mean").fit(model[1](model[0](x)).detach(), artifact)
    seen = []

    def record(name, module, inputs, output):
        if module.training:
            seen.append(inputs[0].detach().clone())

    plain = model[1](model[0](x)).detach()
    with HookGroup() as group:
        group.forward(model, "2", record)
        AClarc("1", cav=cav, epochs=1, batch_size=40, augment_fraction=0.25, lr=1e-12,
               progress=False).fit(model, (x, y))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    changed = (seen[0] - plain[order]).abs().sum(1) > 1e-6
    assert int(changed.sum()) == 10
    proj = seen[0][changed] @ cav.direction_
    torch.testing.assert_close(proj, (cav.mean_concept_ @ cav.direction_).expand(10))


def test_augmentation_gradient_is_exact_by_default(nets):
    """With trainable="all" the layers below receive the augmentation's derivative: the same
    step as differentiating the augmented forward by hand (gradcheck-verified projection)."""
    x, y, artifact = nets.tiny_data(n=16)
    torch.manual_seed(0)
    template = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    exact = run(nets, template, (x, y, artifact), trainable="all", augment_fraction=1.0,
                batch_size=16, epochs=1, optimizer="sgd")
    straight = run(nets, template, (x, y, artifact), trainable="all", augment_fraction=1.0,
                   batch_size=16, epochs=1, optimizer="sgd", gradient="straight_through")
    # the head gets the same gradient either way; the first layer does not
    assert torch.allclose(exact[-15:], straight[-15:])
    assert not torch.allclose(exact[:24], straight[:24])
    v, z = torch.randn(4).double(), torch.randn(4).double()
    v = v / v.norm()
    h = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: clarc_projection(t, v, z, sample_weight=torch.ones(16)), (h,))


def test_several_layers_and_class_weighted_criterion(nets):
    x, y, artifact = nets.tiny_data(n=48)
    torch.manual_seed(0)
    template = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                             nn.Linear(4, 3))
    model = copy.deepcopy(template)
    ac = AClarc(layers=["1", "3"], epochs=1, batch_size=16, cav_samples="all",
                progress=False).fit(model, (x, y, artifact))
    assert ac.layers_ == ["1", "3"] and ac.trainable_params_ == ["4.weight", "4.bias"]
    weights = torch.tensor([1.0, 5.0, 0.2])
    a = run(nets, template, (x, y, artifact), criterion=nn.CrossEntropyLoss(weight=weights))
    b = run(nets, template, (x, y, artifact))
    assert not torch.allclose(a, b)
    with pytest.raises(InvalidParameterError, match="scalar loss"):
        run(nets, template, (x, y, artifact), criterion=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(InvalidParameterError, match="criterion must be"):
        run(nets, template, (x, y, artifact), criterion="focal")


def test_layer_followed_by_functional_in_place_add(nets, watermark):
    """A functional ``out += h`` after the layer: the CAV reads the layer's true output."""
    torch.manual_seed(0)
    model = nets.FunctionalResidual()
    ac = AClarc("conv2", epochs=1, progress=False, cav_samples="all").fit(model, watermark.train)
    assert ac.trainable_params_ == ["head.weight", "head.bias"]


def test_save_load(tmp_path, base_model, watermark):
    ac = AClarc("features", epochs=1, progress=False).fit(base_model, watermark.train)
    ac.save(tmp_path / "a.pt")
    loaded = AClarc.load(tmp_path / "a.pt")
    torch.testing.assert_close(loaded.mean_concept_, ac.mean_concept_)
    assert loaded.history_ == ac.history_ and loaded.trainable_params_ == ac.trainable_params_


def test_quality_closes_half_the_gap_at_3_points(base_model, base_gap, watermark):
    AClarc("features", progress=False).fit(base_model, watermark.train)
    after = shortcut_gap(base_model, watermark.test, watermark.poisoned)
    assert gap_closed(base_gap, after) >= 0.5
    assert base_gap["clean_acc"] - after["clean_acc"] <= 0.03
