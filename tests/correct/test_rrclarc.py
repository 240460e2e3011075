"""RR-ClArC: the latent gradient and penalty checked analytically for every masking pattern and loss."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from latentsurgeon.concepts import CAV
from latentsurgeon.correct import RRClarc, RRLossType, RRMaskingPattern
from latentsurgeon.correct.clarc import _stream, latent_gradient, masked_output, rr_penalty
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import hook_count
from latentsurgeon.metrics import artifact_relevance_change, gap_closed, shortcut_gap

N, D, K = 12, 4, 3


def linear_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, D), nn.Linear(D, K))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    cav = CAV().fit(torch.randn(20, D, generator=g), torch.arange(20) % 2)
    return model, x, y, cav


def analytic_gradients(model, x, pattern, target_class, signs):
    """d m / d a for a linear head: rows (N, D)."""
    W = model[1].weight.detach()
    logits = model(x).detach()
    if pattern == "max_logit":
        return W[logits.argmax(1)]
    if pattern == "target_logit":
        return W[target_class].expand(len(x), -1)
    if pattern == "all_logits":
        return W.sum(0).expand(len(x), -1)
    if pattern == "all_logits_random":
        return signs.float() @ W
    p = torch.softmax(logits, 1)
    mean_w = p @ W  # (N, D)
    per_class = (p / (p + 1e-5))[:, :, None] * (W[None] - mean_w[:, None])  # (N, K, D)
    return per_class.mean(1)


def analytic_penalty(G, v, loss):
    dot = G @ v
    if loss == "l2":
        return (dot ** 2).mean()
    if loss == "l1":
        return dot.abs().mean()
    return (dot.abs() / (G.norm(dim=1) * v.norm())).mean()


@pytest.mark.parametrize("pattern", [p.value for p in RRMaskingPattern])
@pytest.mark.parametrize("loss", [t.value for t in RRLossType])
def test_penalty_matches_the_analytic_gradient(pattern, loss):
    model, x, y, cav = linear_setup()
    template = copy.deepcopy(model)
    seed = 3
    # the one batch is the whole data in the seeded order; random signs follow that order
    order = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    signs = torch.randint(0, 2, (N, K), generator=_stream(seed, 2)) * 2 - 1
    rr = RRClarc("0", cav=cav, lambda_rr=0.5, loss=loss, masking=pattern, target_class=1,
                 epochs=1, batch_size=N, seed=seed, progress=False).fit(model, (x, y))
    G = analytic_gradients(template, x[order], pattern, 1, signs)
    expected = analytic_penalty(G, cav.direction_, loss)
    assert rr.history_["rr"][0] == pytest.approx(float(expected), rel=1e-4, abs=1e-7)
    ce = nn.functional.cross_entropy(template(x), y)
    assert rr.history_["loss"][0] == pytest.approx(float(ce + 0.5 * expected), rel=1e-4)
    # only the head trained
    assert torch.equal(model[0].weight, template[0].weight)
    assert not torch.equal(model[1].weight, template[1].weight)
    assert hook_count(model) == 0


def test_penalty_trains_the_gradient_away_from_the_direction():
    model, x, y, cav = linear_setup()
    W0 = model[1].weight.detach().clone()
    RRClarc("0", cav=cav, lambda_rr=100.0, masking="all_logits", epochs=50, batch_size=N, lr=1e-2,
            progress=False).fit(model, (x, y))
    v = cav.direction_
    assert float((model[1].weight.sum(0) @ v).abs()) < 0.1 * float((W0.sum(0) @ v).abs())


def test_channel_pooled_direction_uses_the_spatially_summed_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 9, K))
    x = torch.randn(N, 1, 3, 3)
    y = torch.arange(N) % K
    cav = CAV(pooling="mean").fit(torch.randn(20, 2, 3, 3), torch.arange(20) % 2)
    template = copy.deepcopy(model)
    rr = RRClarc("0", cav=cav, epochs=1, batch_size=N, progress=False).fit(model, (x, y))
    W = template[2].weight.detach().reshape(K, 2, 9).sum(2)  # d logit / d (channel shift)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    G = W[template(x[order]).argmax(1)]
    assert rr.history_["rr"][0] == pytest.approx(float(((G @ cav.direction_) ** 2).mean()), rel=1e-4)
    grad = torch.randn(5, 2, 3, 3)
    torch.testing.assert_close(latent_gradient(grad, "max"), grad.sum((2, 3)))
    torch.testing.assert_close(latent_gradient(grad, "flatten"), grad.reshape(5, -1))


def test_target_logit_without_class_is_a_clear_error():
    model, x, y, cav = linear_setup()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(LatentSurgeonError, match="target_class"):
        RRClarc("0", cav=cav, masking=RRMaskingPattern.TARGET_LOGIT).fit(model, (x, y))
    with pytest.raises(LatentSurgeonError, match="out of range"):
        RRClarc("0", cav=cav, masking="target_logit", target_class=7, progress=False).fit(
            model, (x, y))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(LatentSurgeonError, match="Unknown masking pattern 'top'"):
        RRClarc("0", cav=cav, masking="top").fit(model, (x, y))
    with pytest.raises(LatentSurgeonError, match="'l2', 'l1', 'cosine'"):
        rr_penalty(torch.randn(2, 3), torch.randn(3), "l3")


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


def test_save_load_keeps_enums(tmp_path):
    model, x, y, cav = linear_setup()
    rr = RRClarc("0", cav=cav, loss=RRLossType.COSINE, masking="logprobs", epochs=1,
                 progress=False).fit(model, (x, y))
    rr.save(tmp_path / "rr.pt")
    loaded = RRClarc.load(tmp_path / "rr.pt")
    assert RRLossType(loaded.loss) is RRLossType.COSINE
    assert RRMaskingPattern(loaded.masking) is RRMaskingPattern.LOGPROBS
    torch.testing.assert_close(loaded.direction_, cav.direction_)


@pytest.fixture
def corrected(base_model, watermark):
    """The uncorrected model and a copy corrected with RR-ClArC's defaults."""
    before = copy.deepcopy(base_model)
    start = time.perf_counter()
    RRClarc("features", progress=False).fit(base_model, watermark.train)
    assert time.perf_counter() - start < 20
    return before, base_model


def relevance_cut(before, after, watermark):
    # Artifact relevance for the shortcut class's logit: how much of the evidence for class 0
    # on poisoned images comes from the watermark (the attribution of the true class also
    # counts the bright frame's pull on every other class, which no correction can remove).
    poisoned = watermark.poisoned
    return artifact_relevance_change(before, after, poisoned.images, poisoned.masks,
                                     targets=watermark.shortcut_class)["reduction"]


def test_quality_closes_half_the_gap_at_3_points(corrected, base_gap, watermark):
    after = shortcut_gap(corrected[1], watermark.test, watermark.poisoned)
    assert gap_closed(base_gap, after) >= 0.5
    assert base_gap["clean_acc"] - after["clean_acc"] <= 0.03


def test_quality_relevance_cut_beats_a_model_that_never_saw_the_artifact(
        corrected, clean_trained, watermark):
    """A DigitCNN trained on the same images without watermarks is the natural floor."""
    floor = relevance_cut(corrected[0], clean_trained, watermark)
    cut = relevance_cut(*corrected, watermark)
    assert cut > 0 and cut >= floor


def test_quality_relevance_halved(corrected, watermark):
    assert relevance_cut(*corrected, watermark) >= 0.5


class _Twice(nn.Module):
    """Applies the same block twice: its output exists twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.block(x))))


def test_a_layer_that_runs_twice_per_forward_is_refused():
    torch.manual_seed(0)
    model = _Twice()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    artifact = torch.arange(32) % 2 == 0
    acts = torch.randn(32, 4)
    rr = RRClarc("block", epochs=1, progress=False)
    with pytest.raises(LatentSurgeonError, match="more than once"):
        rr.fit(model, (x, y), artifact, activations=acts)
    assert hook_count(model) == 0


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return {"aux": x.sum(1), "scores": self.out(torch.relu(self.body(x)))}


@pytest.mark.parametrize("cls", ["AClarc", "RRClarc"])
def test_trained_clarcs_read_logits_from_dict_outputs(cls):
    import latentsurgeon.correct as correct

    torch.manual_seed(0)
    model = _DictOutput()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    artifact = torch.arange(32) % 2 == 0
    before = copy.deepcopy(model.out.weight)
    getattr(correct, cls)("body", epochs=1, head="scores", progress=False).fit(
        model, (x, y), artifact)
    assert not torch.equal(before, model.out.weight)  # the head trained on the dict's logits
    with pytest.raises(LatentSurgeonError, match="head"):
        getattr(correct, cls)("body", epochs=1, progress=False).fit(_DictOutput(), (x, y),
                                                                    artifact)
