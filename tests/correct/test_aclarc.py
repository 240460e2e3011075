"""A-ClArC and the shared fine-tuning machinery (trainable parameters, state restoration)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from latentsurgeon.concepts import CAV
from latentsurgeon.correct import AClarc
from latentsurgeon.correct._training import parameters_after, select_parameters
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import hook_count
from latentsurgeon.metrics import gap_closed, shortcut_gap


class Reordered(nn.Module):
    """Registers the head before the body but runs the body first; reuses ``shared`` twice."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.shared = nn.Linear(4, 4)
        self.body = nn.Linear(5, 4)
        self.mid = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(self.body(x))
        h = self.mid(h)
        return self.head(self.shared(h))


def tiny_data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    artifact = torch.arange(n) % 2 == 0
    x[artifact, 0] += 3.0
    return x, y, artifact


def test_above_follows_execution_order_not_registration_order():
    model = Reordered()
    names = [n for n, _ in parameters_after(model, "mid", torch.randn(1, 5))]
    # ``shared`` also runs before ``mid``: training it would change mid's input, so it is excluded
    assert names == ["head.weight", "head.bias"]
    names = [n for n, _ in parameters_after(model, "body", torch.randn(1, 5))]
    assert names == ["shared.weight", "shared.bias", "mid.weight", "mid.bias", "head.weight",
                     "head.bias"]
    assert hook_count(model) == 0
    with pytest.raises(LatentSurgeonError, match="No parameters run after"):
        select_parameters(model, "head", "above", torch.randn(1, 5))
    chosen = select_parameters(model, "mid", ["head.w*", "body.*"], torch.randn(1, 5))
    assert [n for n, _ in chosen] == ["head.weight", "body.weight", "body.bias"]
    with pytest.raises(LatentSurgeonError, match="match no parameter"):
        select_parameters(model, "mid", ["nothing.*"], torch.randn(1, 5))
    with pytest.raises(LatentSurgeonError, match="list of parameter-name globs"):
        select_parameters(model, "mid", "head.*", torch.randn(1, 5))


def test_fit_trains_only_above_and_restores_flags(base_model, watermark):
    before = copy.deepcopy(base_model.state_dict())
    base_model.classifier[3].bias.requires_grad_(False)
    base_model.train()
    ac = AClarc("features", epochs=1, progress=False).fit(base_model, watermark.train)
    assert ac.trainable_params_ == ["classifier.1.weight", "classifier.1.bias",
                                    "classifier.3.weight", "classifier.3.bias"]
    after = base_model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same == key.startswith("features"), key
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


def test_seeded_and_fraction_matters():
    x, y, artifact = tiny_data()
    torch.manual_seed(0)
    template = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))

    def run(**kw):
        model = copy.deepcopy(template)
        params = {"epochs": 2, "batch_size": 16, "progress": False, "cav_samples": "all", **kw}
        AClarc("1", **params).fit(model, (x, y, artifact))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run(), run())
    torch.testing.assert_close(run(augment_fraction=0.0), run(alpha=0.0))
    assert not torch.allclose(run(augment_fraction=0.5), run(augment_fraction=0.0))
    assert not torch.allclose(run(seed=1), run(seed=0))
    with pytest.raises(LatentSurgeonError, match="augment_fraction"):
        run(augment_fraction=1.5)
    with pytest.raises(LatentSurgeonError, match="epochs"):
        run(epochs=-1)
    with pytest.raises(LatentSurgeonError, match="optimizer"):
        run(optimizer="lbfgs")


def test_augmentation_touches_the_configured_share():
    x, y, artifact = tiny_data(n=40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    cav = CAV(method="mass_mean").fit(model[1](model[0](x)).detach(), artifact)
    seen = []
    # a hook on the layer above records what A-ClArC's hook produced
    from latentsurgeon.hooks import HookGroup

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
