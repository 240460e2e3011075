"""Steering vectors and activation addition on plain modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.activations import capture
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import HookGroup, hook_count
from latentsurgeon.intervene import ActivationAddition, SteeringVector


def run(model: nn.Module, *args, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(*args, **kwargs)


def steered_capture(model, sv, layer, x, alpha=None):
    """The layer's output as the rest of the network sees it while ``sv`` is applied."""
    with torch.no_grad(), sv.applied(model, alpha=alpha), capture(model, layer) as cap:
        out = model(x)
    return cap[layer], out


def test_alpha_zero_is_exactly_the_identity(cnn, images):
    x, _ = images
    base = run(cnn, x)
    sv = SteeringVector.from_vector("features.3", 100 * torch.randn(32), alpha=0.0)
    with sv.applied(cnn):
        assert torch.equal(run(cnn, x), base)
    sv = SteeringVector("features.3", alpha=3.0).fit(cnn, x, images[1])
    with sv.applied(cnn, alpha=0):
        assert torch.equal(run(cnn, x), base)
    # A custom steer_fn is not even called at alpha = 0.
    sv = SteeringVector.from_vector("features.3", torch.ones(32), alpha=0.0,
                                    steer_fn=lambda *a: pytest.fail("called"))
    with sv.applied(cnn):
        assert torch.equal(run(cnn, x), base)


def test_channel_vector_broadcasts_over_pixels(cnn, images):
    x, _ = images
    with torch.no_grad(), capture(cnn, "features.3") as cap:
        cnn(x)
    v = torch.randn(32)
    act, _ = steered_capture(cnn, SteeringVector.from_vector("features.3", v, alpha=2.5),
                             "features.3", x)
    assert torch.equal(act, cap["features.3"] + 2.5 * v[:, None, None])
    full = torch.randn(32, 8, 8)
    act, _ = steered_capture(cnn, SteeringVector.from_vector("features.3", full), "features.3", x)
    assert torch.equal(act, cap["features.3"] + full)


def test_steering_the_last_layer_shifts_outputs_by_alpha_v(tiny_seq):
    ids = torch.randint(0, 12, (3, 4), generator=torch.Generator().manual_seed(0))
    v = torch.randn(5)
    sv = SteeringVector.from_vector("head", v, alpha=-1.5)
    base = run(tiny_seq, ids)
    with sv.applied(tiny_seq):
        out = run(tiny_seq, ids)
    assert torch.allclose(out - base, (-1.5 * v).expand(3, 4, 5), atol=1e-6, rtol=0)


def test_shape_mismatch_says_expected_and_got(cnn, images, tiny_seq):
    x, _ = images
    sv = SteeringVector.from_vector("features.3", torch.ones(5))
    with pytest.raises(ShapeMismatchError, match=r"expected .*\(32,\).*\(32, 8, 8\).*got shape \(5,\)"):
        with sv.applied(cnn):
            run(cnn, x)
    assert hook_count(cnn) == 0
    sv = SteeringVector.from_vector("emb", torch.ones(7))
    with pytest.raises(ShapeMismatchError, match=r"\(6,\).*got shape \(7,\)"):
        with sv.applied(tiny_seq):
            run(tiny_seq, torch.zeros(2, 3, dtype=torch.long))


def test_fit_is_the_mean_difference(cnn, images):
    pos, neg = images
    with torch.no_grad(), capture(cnn, ["features.3", "classifier.1"], accumulate=True) as cap:
        cnn(pos)
        a_pos = dict(cap.activations)
        cap.clear()
        cnn(neg)
        a_neg = dict(cap.activations)
    sv = SteeringVector(["features.3", "classifier.1"]).fit(cnn, pos, neg, batch_size=4)
    assert sv.n_positive_ == 6 and sv.n_negative_ == 6
    expected = a_pos["features.3"].mean((0, 2, 3)) - a_neg["features.3"].mean((0, 2, 3))
    assert sv.vectors_["features.3"].shape == (32,)
    assert torch.allclose(sv.vectors_["features.3"], expected, atol=1e-6, rtol=0)
    expected = a_pos["classifier.1"].mean(0) - a_neg["classifier.1"].mean(0)
    assert torch.allclose(sv.vectors_["classifier.1"], expected, atol=1e-6, rtol=0)
    full = SteeringVector("features.3", token="none").fit(cnn, pos, neg)
    expected = a_pos["features.3"].mean(0) - a_neg["features.3"].mean(0)
    assert torch.allclose(full.vectors_["features.3"], expected, atol=1e-6, rtol=0)
    with pytest.raises(ShapeMismatchError, match="token='last' needs"):
        SteeringVector("features.3", token="last").fit(cnn, pos, neg)
    with pytest.raises(LatentSurgeonError, match="token must be one of"):
        SteeringVector("features.3", token="max").fit(cnn, pos, neg)


def test_fit_on_sequences_mean_last_and_attention_mask(tiny_seq):
    emb = tiny_seq.emb.weight.detach()
    pos = torch.tensor([[1, 2, 3], [4, 5, 6]])
    neg = torch.tensor([[7, 8, 9]])
    sv = SteeringVector("emb", token="mean").fit(tiny_seq, pos, neg)
    assert torch.allclose(sv.vectors_["emb"], emb[pos].mean((0, 1)) - emb[neg].mean((0, 1)),
                          atol=1e-6)
    sv = SteeringVector("emb", token="last").fit(tiny_seq, pos, neg)
    assert torch.allclose(sv.vectors_["emb"], (emb[3] + emb[6]) / 2 - emb[9], atol=1e-6)
    # Left padding in row 0, right padding in row 1: masked positions are ignored.
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    batch = {"input_ids": pos, "attention_mask": mask}
    neg_batch = {"input_ids": neg, "attention_mask": torch.ones_like(neg)}
    sv = SteeringVector("emb", token="last").fit(tiny_seq, batch, neg_batch)
    assert torch.allclose(sv.vectors_["emb"], (emb[3] + emb[5]) / 2 - emb[9], atol=1e-6)
    sv = SteeringVector("emb", token="mean").fit(tiny_seq, batch, neg_batch)
    expected = (emb[[2, 3]].mean(0) + emb[[4, 5]].mean(0)) / 2 - emb[neg].mean((0, 1))
    assert torch.allclose(sv.vectors_["emb"], expected, atol=1e-6)


def test_positions_steer_only_selected_tokens(tiny_seq):
    ids = torch.randint(0, 12, (2, 5), generator=torch.Generator().manual_seed(1))
    base = run(tiny_seq, ids)
    v = torch.randn(5)
    sv = SteeringVector.from_vector("head", v, alpha=2.0, positions=[-1, 1])
    with sv.applied(tiny_seq):
        out = run(tiny_seq, ids)
    assert torch.equal(out[:, [0, 2, 3]], base[:, [0, 2, 3]])
    assert torch.allclose(out[:, [1, 4]] - base[:, [1, 4]], (2.0 * v).expand(2, 2, 5), atol=1e-6)
    with pytest.raises(LatentSurgeonError, match="positions must be"):
        SteeringVector.from_vector("head", v, positions="last")


def test_attach_returns_a_removable_handle(cnn, images):
    x, _ = images
    base = run(cnn, x)
    sv = SteeringVector.from_vector("features.0", torch.ones(16))
    handle = sv.attach(cnn)
    assert isinstance(handle, HookGroup) and len(handle) == 1
    assert not torch.equal(run(cnn, x), base)
    handle.remove()
    handle.remove()  # idempotent
    assert hook_count(cnn) == 0
    assert torch.equal(run(cnn, x), base)
    with pytest.raises(RuntimeError, match="boom"):
        with sv.applied(cnn):
            raise RuntimeError("boom")
    assert hook_count(cnn) == 0
    with pytest.raises(NotFittedError):
        SteeringVector("features.0").attach(cnn)


def test_custom_steer_fn_gets_name_activation_vector_alpha(cnn, images):
    x, _ = images
    seen = {}

    def scale(name, activation, vector, alpha):
        seen.update(name=name, shape=tuple(activation.shape), vector=vector.clone(), alpha=alpha)
        return activation * (1 + alpha)

    v = torch.randn(32)
    sv = SteeringVector.from_vector("features.3", v, alpha=0.5, steer_fn=scale)
    with torch.no_grad(), capture(cnn, "features.3") as cap:
        cnn(x)
    act, _ = steered_capture(cnn, sv, "features.3", x)
    assert seen["name"] == "features.3" and seen["shape"] == (6, 32, 8, 8)
    assert torch.equal(seen["vector"], v) and seen["alpha"] == 0.5
    assert torch.equal(act, cap["features.3"] * 1.5)
    bad = SteeringVector.from_vector("features.3", v, steer_fn=lambda n, a, v, al: a.mean(0))
    with pytest.raises(ShapeMismatchError, match="steer_fn at layer 'features.3' must return"):
        steered_capture(cnn, bad, "features.3", x)


def test_save_load_round_trip(cnn, images, tmp_path):
    pos, neg = images
    sv = SteeringVector(nn.Conv2d, alpha=1.5, token="mean").fit(cnn, pos, neg)
    assert list(sv.vectors_) == ["features.0", "features.3"]
    sv.save(tmp_path / "sv.pt")
    loaded = SteeringVector.load(tmp_path / "sv.pt")
    assert loaded.alpha == 1.5 and loaded.token == "mean"
    assert loaded.layers == ["features.0", "features.3"]  # the class selector stored as names
    assert sv.layers is nn.Conv2d
    for name, v in sv.vectors_.items():
        assert torch.equal(loaded.vectors_[name], v)
    with sv.applied(cnn):
        a = run(cnn, pos)
    with loaded.applied(cnn):
        b = run(cnn, pos)
    assert torch.equal(a, b)
    # a custom steer_fn is code: refused unless excluded, then given back to load()
    sv.steer_fn = lambda n, act, v, al: act + 2 * al * v.reshape(-1, 1, 1)
    with pytest.raises(InvalidParameterError, match=r"steer_fn.*exclude=\('steer_fn',\)"):
        sv.save(tmp_path / "fn.pt")
    assert not (tmp_path / "fn.pt").exists()
    sv.save(tmp_path / "fn.pt", exclude="steer_fn")
    with pytest.warns(UserWarning, match="steer_fn was excluded"):
        assert SteeringVector.load(tmp_path / "fn.pt").steer_fn is None
    again = SteeringVector.load(tmp_path / "fn.pt", steer_fn=sv.steer_fn)
    with sv.applied(cnn):
        a = run(cnn, pos)
    with again.applied(cnn):
        assert torch.equal(run(cnn, pos), a)


def test_fit_runs_in_eval_mode_and_restores_the_mode(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    pos, neg = images
    a = SteeringVector("2").fit(model, pos, neg).vectors_["2"]
    b = SteeringVector("2").fit(model, pos, neg).vectors_["2"]
    assert torch.equal(a, b)  # no dropout noise
    assert model.training and all(m.training for m in model.modules())
    assert hook_count(model) == 0


def test_activation_addition_is_per_position_and_front_aligned(tiny_seq):
    emb = tiny_seq.emb.weight.detach()
    positive, negative = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])
    add = ActivationAddition("emb", alpha=2.0).fit(tiny_seq, positive, negative)
    assert isinstance(add, SteeringVector) and add.token == "none"
    assert torch.allclose(add.vectors_["emb"], emb[[1, 2, 3]] - emb[[4, 5, 6]], atol=1e-6)
    prompt = torch.tensor([[7, 8, 9, 10, 11], [0, 1, 2, 3, 4]])
    with torch.no_grad(), capture(tiny_seq, "emb") as cap:
        base = tiny_seq(prompt)
    act, out = steered_capture(tiny_seq, add, "emb", prompt)
    assert torch.equal(act[:, 3:], cap["emb"][:, 3:])
    assert torch.equal(out[:, 3:], base[:, 3:])
    assert torch.allclose(act[:, :3], cap["emb"][:, :3] + 2.0 * add.vectors_["emb"], atol=1e-6)
    with pytest.raises(ShapeMismatchError, match="cannot steer shorter inputs"):
        steered_capture(tiny_seq, add, "emb", prompt[:, :2])
    # Averaged over tokens it is the same estimator as SteeringVector.
    mean_add = ActivationAddition("emb", token="mean").fit(tiny_seq, positive, negative)
    mean_sv = SteeringVector("emb", token="mean").fit(tiny_seq, positive, negative)
    assert torch.equal(mean_add.vectors_["emb"], mean_sv.vectors_["emb"])
    with pytest.raises(ShapeMismatchError, match="same number of tokens"):
        ActivationAddition("emb").fit(tiny_seq, positive, torch.tensor([[4, 5]]))


def test_activation_addition_save_load_keeps_the_class(tiny_seq, tmp_path):
    add = ActivationAddition("emb", alpha=3.0).fit(tiny_seq, torch.tensor([[1, 2]]),
                                                   torch.tensor([[3, 4]]))
    add.save(tmp_path / "add.pt")
    loaded = ActivationAddition.load(tmp_path / "add.pt")
    assert type(loaded) is ActivationAddition and loaded.token == "none"
    assert torch.equal(loaded.vectors_["emb"], add.vectors_["emb"])
    with pytest.raises(LatentSurgeonError, match="ActivationAddition"):
        SteeringVector.load(tmp_path / "add.pt")


class PairBlock(nn.Module):
    """A transformer-like block: returns ``(hidden, attention-like extra)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lin(h)
        return out, out.detach().clone()


def test_tuple_block_output_is_steered_and_extras_pass_through():
    torch.manual_seed(0)
    block = PairBlock().eval()
    x = torch.randn(2, 3, 4)
    hidden, extra = run(block, x)
    v = torch.randn(4)
    with SteeringVector.from_vector("", v, alpha=2.0).applied(block):  # "" = the module itself
        s_hidden, s_extra = run(block, x)
    assert torch.equal(s_hidden, hidden + 2.0 * v)
    assert torch.equal(s_extra, extra)


def test_positions_accept_slices_and_index_tensors_as_patching_does(tiny_seq):
    ids = torch.randint(0, 12, (2, 5), generator=torch.Generator().manual_seed(2))
    base = run(tiny_seq, ids)
    v = torch.randn(5)
    for positions, steered in ((slice(1, 3), [1, 2]), (torch.tensor([0, -1]), [0, 4]),
                               (torch.tensor([False, True, False, False, True]), [1, 4])):
        with SteeringVector.from_vector("head", v, alpha=1.0, positions=positions).applied(
                tiny_seq):
            out = run(tiny_seq, ids)
        kept = [i for i in range(5) if i not in steered]
        assert torch.equal(out[:, kept], base[:, kept]), positions
        assert torch.allclose(out[:, steered] - base[:, steered],
                              v.expand(2, len(steered), 5), atol=1e-6), positions
    with pytest.raises(InvalidParameterError, match="positions must be"):
        SteeringVector.from_vector("head", v, positions=torch.tensor([0.5]))


def test_applied_yields_the_model(cnn):
    sv = SteeringVector.from_vector("features.3", torch.ones(32))
    with sv.applied(cnn) as steered:
        assert steered is cnn
        assert hook_count(cnn) == 1
    assert hook_count(cnn) == 0


def test_non_finite_vectors_are_refused(cnn, images):
    x, _ = images
    bad = torch.ones(32)
    bad[3] = float("nan")
    with pytest.raises(NonFiniteError, match="steering vector"):
        SteeringVector.from_vector("features.3", bad)
    nan_inputs = x.clone()
    nan_inputs[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="features.3"):
        SteeringVector("features.3").fit(cnn, nan_inputs, x)
    # a steer_fn that produces NaN is refused at run time, and the hook is still removed
    sv = SteeringVector.from_vector("features.3", torch.ones(32),
                                    steer_fn=lambda n, a, v, al: a * float("nan"))
    with pytest.raises(NonFiniteError), sv.applied(cnn):
        run(cnn, x)
    assert hook_count(cnn) == 0


def test_sklearn_contract():
    from sklearn.base import clone

    sv = SteeringVector("features.3", alpha=2.0, token="last")
    copy = clone(sv)
    assert copy is not sv and copy.get_params() == sv.get_params()
    assert sv.set_params(alpha=3.0).alpha == 3.0
    with pytest.raises(InvalidParameterError, match="token"):
        SteeringVector("features.3", token="first").fit(None, None, None)


def test_a_positional_alpha_still_steers_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(6, 4)
    sv = SteeringVector(layers="0").fit(model, x + 1.0, x)
    with torch.no_grad(), sv.applied(model, alpha=2.0):
        new = model(x)
    with pytest.warns(FutureWarning, match=r"positional arguments in the order \(model, alpha\)"):
        with torch.no_grad(), sv.applied(model, 2.0):
            old = model(x)
    assert torch.equal(new, old)
    with pytest.warns(FutureWarning):
        handle = sv.attach(model, 2.0)
    with torch.no_grad():
        assert torch.equal(model(x), new)
    handle.remove()


# -- what alpha counts -----------------------------------------------------------------------------
class MaskedText(nn.Module):
    """input_ids + attention_mask -> block (N, T, 6) -> masked mean -> 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(16, 6)
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.block(self.emb(input_ids)))
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def _prompts(seed: int, n: int, low: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, low + 8, (n, 7), generator=g)
    lengths = torch.randint(3, 8, (n,), generator=g)
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_activation_norms_are_the_mean_norm_at_unmasked_tokens():
    model = MaskedText()
    pos, neg = _prompts(0, 10, 0), _prompts(1, 12, 8)
    sv = SteeringVector("block").fit(model, pos, neg, batch_size=4)
    with torch.no_grad():
        norms = [model.block(model.emb(p["input_ids"])).norm(dim=2)[p["attention_mask"] != 0]
                 for p in (pos, neg)]
    expected = float(torch.cat(norms).double().mean())
    assert sv.activation_norms_["block"] == pytest.approx(expected, rel=1e-6)
    assert sv.vector_norms_["block"] == pytest.approx(float(sv.vectors_["block"].norm()))
    # the fitted vector is the attention-masked mean difference (padding never counts)
    with torch.no_grad():
        means = [torch.stack([model.block(model.emb(p["input_ids"][i:i + 1,
                              :int(p["attention_mask"][i].sum())]))[0].mean(0)
                              for i in range(len(p["input_ids"]))]).mean(0) for p in (pos, neg)]
    torch.testing.assert_close(sv.vectors_["block"], means[0] - means[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_units_activation_norm_takes_a_step_of_alpha_typical_norms(alpha):
    model = MaskedText()
    pos, neg = _prompts(0, 10, 0), _prompts(1, 12, 8)
    diff = SteeringVector("block", alpha=alpha).fit(model, pos, neg)
    scaled = SteeringVector("block", alpha=alpha, units="activation_norm").fit(model, pos, neg)
    typical = scaled.activation_norms_["block"]
    with torch.no_grad(), capture(model, "block") as cap:
        model(**neg)
    with torch.no_grad(), scaled.applied(model), capture(model, "block") as steered:
        model(**neg)
    step = steered["block"] - cap["block"]                                  # (N, T, 6)
    torch.testing.assert_close(step.norm(dim=2), torch.full(step.shape[:2], alpha * typical),
                               rtol=1e-4, atol=1e-5)
    unit = diff.vectors_["block"] / diff.vectors_["block"].norm()
    torch.testing.assert_close(step[0, 0] / step[0, 0].norm(), unit, rtol=1e-4, atol=1e-5)
    assert scaled.relative_strength() == {"block": pytest.approx(alpha)}
    # in the default units alpha=1 is the mean difference: its size next to an activation
    ratio = diff.vector_norms_["block"] / diff.activation_norms_["block"]
    assert diff.relative_strength(1.0) == {"block": pytest.approx(ratio)}
    assert diff.relative_strength() == {"block": pytest.approx(alpha * ratio)}


def test_units_survive_save_and_load(tmp_path):
    model = MaskedText()
    sv = SteeringVector("block", alpha=2.0, units="activation_norm").fit(
        model, _prompts(0, 6, 0), _prompts(1, 6, 8))
    sv.save(tmp_path / "sv")
    back = SteeringVector.load(tmp_path / "sv")
    assert back.units == "activation_norm"
    assert back.activation_norms_ == pytest.approx(sv.activation_norms_)
    assert back.relative_strength() == pytest.approx(sv.relative_strength())
