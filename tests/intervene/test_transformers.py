"""Patching and steering on a tiny random-weight GPT-2 (no download)."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.hooks import hook_count, resolve_layers
from latentsurgeon.intervene import ActivationAddition, SteeringVector, patch

transformers = pytest.importorskip("transformers")

BLOCKS = r"re:transformer\.h\.[0-9]+"


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50,
                                     n_positions=16, bos_token_id=0, eos_token_id=0,
                                     pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture
def model(gpt2):
    gpt2.eval()
    return gpt2


@pytest.fixture
def prompts():
    g = torch.Generator().manual_seed(7)
    clean = torch.randint(1, 50, (4, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, 50, (4,), generator=g)  # one token changed per prompt
    return clean, corrupted


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def last_logit_diff(out) -> torch.Tensor:
    return (out.logits[:, -1, 3] - out.logits[:, -1, 7]).mean()


def unembed(model) -> torch.Tensor:
    return model.lm_head.weight.detach()  # (vocab, d_model), tied to wte


def test_layer_names_resolve(model):
    assert list(resolve_layers(model, BLOCKS)) == ["transformer.h.0", "transformer.h.1"]
    assert "transformer.ln_f" in resolve_layers(model, "transformer.ln_f")
    # A glob's '*' also crosses dots: it selects the blocks' submodules too.
    assert len(resolve_layers(model, "transformer.h.*")) > 2


def test_patching_all_blocks_recovers_clean_logits_exactly(model, prompts):
    clean, corrupted = prompts
    ident = lambda out: out.logits  # noqa: E731
    res = patch(model, BLOCKS, {"input_ids": clean}, {"input_ids": corrupted}, ident,
                per_layer=False)
    row = "transformer.h.0 + transformer.h.1"
    assert res.layers == [row]
    assert torch.equal(res.patched_raw[row], logits(model, clean).double())
    assert not torch.equal(res.corrupted_raw, res.clean_raw)
    res = patch(model, "transformer.ln_f", {"input_ids": clean}, {"input_ids": corrupted}, ident)
    assert torch.equal(res.patched_raw["transformer.ln_f"], res.clean_raw)


def test_patching_per_block_and_positions(model, prompts):
    clean, corrupted = prompts
    res = patch(model, BLOCKS, {"input_ids": clean}, {"input_ids": corrupted}, last_logit_diff)
    assert res.clean != res.corrupted
    # Each block's output is the whole residual stream: a complete cut on its own.
    assert res.effect == {"transformer.h.0": 1.0, "transformer.h.1": 1.0}
    # Positions before the changed token (index 2) are the same in both runs (causal attention):
    # patching them is a no-op; patching the changed position moves the metric.
    res = patch(model, "transformer.h.0", {"input_ids": clean}, {"input_ids": corrupted},
                lambda out: out.logits, positions=[0, 1])
    assert torch.equal(res.patched_raw["transformer.h.0"], res.corrupted_raw)
    res = patch(model, "transformer.h.0", {"input_ids": clean}, {"input_ids": corrupted},
                last_logit_diff, positions=[2])
    assert res.patched["transformer.h.0"] != res.corrupted
    # Only the last position of the last block: after it, every layer works per position.
    res = patch(model, "transformer.h.1", clean, corrupted, lambda out: out.logits, positions=-1,
                forward_fn=lambda m, ids: m(input_ids=ids))
    out = res.patched_raw["transformer.h.1"]
    assert torch.equal(out[:, -1], res.clean_raw[:, -1])
    assert torch.equal(out[:, :-1], res.corrupted_raw[:, :-1])


def test_dict_inputs_with_attention_mask_match_forward_fn(model, prompts):
    clean, corrupted = prompts
    mask = torch.ones_like(clean)
    as_dicts = patch(model, BLOCKS, {"input_ids": clean, "attention_mask": mask},
                     {"input_ids": corrupted, "attention_mask": mask}, last_logit_diff,
                     batch_size=3)
    as_fn = patch(model, BLOCKS, clean, corrupted, last_logit_diff,
                  forward_fn=lambda m, ids: m(input_ids=ids))
    for row in as_fn.layers:
        assert as_dicts.patched[row] == pytest.approx(as_fn.patched[row], abs=1e-5)


def test_steering_lm_head_input_shifts_logits_by_unembedded_vector(model, prompts):
    ids, _ = prompts
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    base = logits(model, ids)
    with SteeringVector.from_vector("transformer.ln_f", v, alpha=0.7).applied(model):
        steered = logits(model, ids)
    expected = 0.7 * (unembed(model) @ v)
    assert torch.allclose(steered - base, expected.expand_as(base), atol=1e-5, rtol=0)


def test_steering_a_block_favours_the_tokens_aligned_with_the_vector(model, prompts):
    ids, _ = prompts
    w = unembed(model)
    v = w[11] - w[11].mean()  # zero-mean, so ln_f keeps its direction
    base = logits(model, ids)
    with SteeringVector.from_vector("transformer.h.1", v, alpha=20.0).applied(model):
        steered = logits(model, ids)
    gain = (steered - base).mean((0, 1))
    assert int(gain.argmax()) == int((w @ v).argmax())
    with SteeringVector.from_vector("transformer.h.1", v, alpha=-20.0).applied(model):
        assert int((logits(model, ids) - base).mean((0, 1)).argmin()) == int((w @ v).argmax())


def test_alpha_zero_identity_hooks_gone_and_modes_kept(model, prompts):
    pos, neg = prompts
    base = logits(model, pos)
    hooks_before = hook_count(model)
    sv = SteeringVector(BLOCKS, alpha=5.0, token="last").fit(model, pos, neg)
    with sv.applied(model, alpha=0.0):
        assert torch.equal(logits(model, pos), base)
    assert hook_count(model) == hooks_before
    model.train()
    model.transformer.wte.weight.requires_grad_(False)
    try:
        SteeringVector("transformer.h.0").fit(model, pos, neg)
        patch(model, BLOCKS, pos, neg, lambda o: o.logits.mean(),
              forward_fn=lambda m, ids: m(input_ids=ids))
        assert all(m.training for m in model.modules())
        assert not model.transformer.wte.weight.requires_grad
        assert model.transformer.wpe.weight.requires_grad
        assert hook_count(model) == hooks_before
    finally:
        model.transformer.wte.weight.requires_grad_(True)
        model.eval()


def test_fit_last_token_honours_padding(model):
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    neg = torch.tensor([[12, 13, 14, 15]])
    sv = SteeringVector("transformer.h.0", token="last").fit(
        model, {"input_ids": ids, "attention_mask": mask}, {"input_ids": neg})
    with torch.no_grad():
        h_pos = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        h_neg = model(input_ids=neg, output_hidden_states=True).hidden_states
    # hidden_states[1] is block 0's output; the padded row's last attended token is index 2.
    last = torch.stack([h_pos[1][0, 3], h_pos[1][1, 2]]).mean(0)
    expected = last - h_neg[1][0, 3]
    assert torch.allclose(sv.vectors_["transformer.h.0"], expected, atol=1e-5, rtol=0)
    unmasked = SteeringVector("transformer.h.0", token="last").fit(model, ids, neg)
    assert not torch.allclose(unmasked.vectors_["transformer.h.0"], expected, atol=1e-3)


def test_activation_addition_front_positions_only(model):
    positive, negative = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])
    add = ActivationAddition("transformer.h.1", alpha=4.0).fit(model, positive, negative)
    assert add.vectors_["transformer.h.1"].shape == (3, 32)
    prompt = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    base = logits(model, prompt)
    with add.applied(model):
        steered = logits(model, prompt)
    # ln_f and lm_head act per position: positions after the vector's three rows are untouched.
    assert torch.equal(steered[:, 3:], base[:, 3:])
    assert not torch.allclose(steered[:, :3], base[:, :3])


def test_steering_during_generation(model):
    w = unembed(model)
    v = w[17]
    target = int((w @ v).argmax())
    prompt = torch.tensor([[1, 2, 3]])
    hooks_before = hook_count(model)
    sv = SteeringVector.from_vector("transformer.ln_f", v, alpha=1000.0)
    with sv.applied(model), torch.no_grad():
        # Steps after the first see one new token at a time (KV cache): a (D,) vector still fits.
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out[0, 3:].tolist() == [target] * 3
    assert hook_count(model) == hooks_before


def test_hidden_states_output_sees_interventions_and_keeps_working():
    torch.manual_seed(1)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 50, (2, 5), generator=torch.Generator().manual_seed(0))

    def hidden(**kwargs):
        with torch.no_grad():
            return model(input_ids=ids, output_hidden_states=True, **kwargs).hidden_states

    # transformers installs its own capture hooks lazily, at the first output_hidden_states
    # call; patching with such a forward must not leave the model without them.
    res = patch(model, "transformer.h.0", ids, ids.flip(0), lambda o: o.hidden_states[1],
                forward_fn=lambda m, x: m(input_ids=x, output_hidden_states=True))
    assert torch.equal(res.patched_raw["transformer.h.0"], res.clean_raw)
    base = hidden()
    assert len(base) == 3
    v = torch.randn(32)
    # The steering hook runs before transformers' capture hooks registered earlier.
    with SteeringVector.from_vector("transformer.h.0", v).applied(model):
        steered = hidden()
    assert torch.allclose(steered[1], base[1] + v, atol=1e-6, rtol=0)
