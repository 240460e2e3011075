"""Exported corrections on layers that take keyword arguments or several positional arguments and
return structured outputs: the exported model equals the hooked one exactly, the layer gets every
argument, only the primary tensor is replaced, and the copy survives ``torch.save``,
``state_dict``, ``torch.jit.trace`` and ``torch.export``."""

from __future__ import annotations

import io
from collections import namedtuple

import pytest
import torch
from torch import nn

from latentsurgeon.correct import ClarcProjection, PClarc
from latentsurgeon.hooks import Followed, hook_count

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace

D, T = 8, 5


def _flags(n: int) -> torch.Tensor:
    return (torch.arange(n) % 3 == 0).long()


class AttentionNet(nn.Module):
    """``nn.MultiheadAttention`` called with keyword arguments, its weights returned too."""

    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(D, 2, batch_first=True)
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor, need_weights: bool = True) -> tuple:
        out, weights = self.att(x, x, x, need_weights=need_weights,
                                average_attn_weights=False)
        return self.head(out.mean(1)), weights


class Mix(nn.Module):
    """A layer of several positional arguments and a keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.lin(a) * torch.sigmoid(b) * scale


Pair = namedtuple("Pair", "hidden total")


class Structured(nn.Module):
    """Returns a tuple, a named tuple or a dict (``kind``), primary tensor first."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> object:
        h = self.lin(x)
        if self.kind == "tuple":
            return h, h.sum(-1)
        if self.kind == "namedtuple":
            return Pair(h, h.sum(-1))
        return {"hidden": h, "total": h.sum(-1)}


class StructuredNet(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.mix = Mix()
        self.block = Structured(kind)
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix(x, x.flip(1), scale=2.0)
        out = self.block(h)
        hidden, total = (out["hidden"], out["total"]) if isinstance(out, dict) else out
        return self.head(hidden.mean(1)) + total.mean(1, keepdim=True)


def _data(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, T, D, generator=torch.Generator().manual_seed(seed))


def _check_export(model: nn.Module, correction: PClarc, x: torch.Tensor, **kwargs) -> nn.Module:
    """Exported == hooked, bit for bit, and the original model is untouched."""
    with torch.no_grad():
        plain = model(x, **kwargs)
        with correction.applied(model):
            hooked = model(x, **kwargs)
        exported = correction.export(model)
        got = exported(x, **kwargs)
    assert hook_count(model) == 0 and hook_count(exported) == 0
    flat_hooked = hooked if isinstance(hooked, tuple) else (hooked,)
    flat_got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(flat_hooked, flat_got, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    first = plain[0] if isinstance(plain, tuple) else plain
    assert not torch.equal(first, flat_got[0]), "the correction changed nothing"
    return exported


@pytest.mark.parametrize("tokens", [None, "all"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_export_forwards_keywords(tokens, need_weights):
    torch.manual_seed(0)
    model = AttentionNet().eval()
    x = _data()
    pc = PClarc("att", tokens=tokens, cav_samples="all", progress=False).fit(
        model, (x, torch.zeros(len(x), dtype=torch.long), _flags(len(x))))
    exported = _check_export(model, pc, x[:6], need_weights=need_weights)
    assert isinstance(exported.att, Followed) and isinstance(exported.att[1], ClarcProjection)
    with torch.no_grad():
        _, weights = exported(x[:6], need_weights=need_weights)
        _, original = model(x[:6], need_weights=need_weights)
    # the attention weights (the output's second element) pass unchanged
    assert (weights is None) == (not need_weights)
    if need_weights:
        assert torch.equal(weights, original)


@pytest.mark.parametrize("kind", ["tuple", "namedtuple", "dict"])
def test_structured_outputs_and_positional_arguments(kind):
    torch.manual_seed(1)
    model = StructuredNet(kind).eval()
    x = _data(seed=1)
    data = (x, torch.zeros(len(x), dtype=torch.long), _flags(len(x)))
    for layer in ("mix", "block"):
        pc = PClarc(layer, cav_samples="all", progress=False).fit(model, data)
        exported = _check_export(model, pc, x[:6])
    with torch.no_grad():
        out = exported.block(exported.mix(x[:6], x[:6].flip(1), scale=2.0))
        raw = model.block(model.mix(x[:6], x[:6].flip(1), scale=2.0))
    # same container type; the second entry is the layer's own, not recomputed from the edit
    assert type(out) is type(raw)
    total = out["total"] if kind == "dict" else out[1]
    assert torch.equal(total, raw["total"] if kind == "dict" else raw[1])


def test_exported_attention_survives_save_state_dict_trace_and_torch_export():
    torch.manual_seed(2)
    model = AttentionNet().eval()
    x = _data(seed=2)
    pc = PClarc("att", tokens="all", cav_samples="all", progress=False).fit(
        model, (x, torch.zeros(len(x), dtype=torch.long), _flags(len(x))))
    exported = pc.export(model)
    with torch.no_grad():
        expected = exported(x[:4])[0]
    keys = set(exported.state_dict())
    assert {"att.0.in_proj_weight", "att.1.direction", "att.1.reference"} <= keys
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    fresh = pc.export(model)
    fresh.load_state_dict(again.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x[:4])[0], expected)
        assert torch.equal(fresh(x[:4])[0], expected)
        # MultiheadAttention itself fails jit.trace's sanity check (graphs differ between runs)
        traced = torch.jit.trace(exported, (x[:4],), check_trace=False)
        torch.testing.assert_close(traced(x[:4])[0], expected)
    program = torch.export.export(exported, (x[:4],), {"need_weights": False})
    torch.testing.assert_close(program.module()(x[:4], need_weights=False)[0],
                               exported(x[:4], need_weights=False)[0])


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    torch.manual_seed(3)
    return transformers.BertModel(config).eval()


def _bert_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.long)
    mask[::2, 5:] = 0  # padded rows: the mask must reach the attention
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("layer", ["encoder.layer.0", "encoder"])
def test_hugging_face_bert_export_equals_hooked(layer):
    """A real HF ``BertModel`` (random weights, built from a config, no download): a BERT layer
    (called with ``attention_mask=`` and friends) and the encoder (returning a ``ModelOutput``)."""
    model = _tiny_bert()
    batch = _bert_batch(12, 0)
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states
    acts = states[1] if layer == "encoder.layer.0" else states[-1]
    hooks_before = hook_count(model)
    for tokens in (None, "all"):
        pc = PClarc(layer, tokens=tokens, cav_samples="all", progress=False).fit(
            None, activations=acts, artifact_labels=_flags(len(acts)))
        test = _bert_batch(4, 1)
        with torch.no_grad():
            plain = model(**test)
            with pc.applied(model):
                hooked = model(**test)
            exported = pc.export(model)
            got = exported(**test)
        assert type(got) is type(hooked)
        assert torch.equal(got.last_hidden_state, hooked.last_hidden_state)
        assert torch.equal(got.pooler_output, hooked.pooler_output)
        assert not torch.equal(got.last_hidden_state, plain.last_hidden_state)
        # HF installed its own output-capturing hooks on the model (output_hidden_states
        # above); they stay, and the export forgets them so HF installs them again on it
        assert hook_count(model) == hooks_before and hook_count(exported) == 0
        with torch.no_grad():
            states_got = exported(**test, output_hidden_states=True).hidden_states
            with pc.applied(model):
                states_hooked = model(**test, output_hidden_states=True).hidden_states
        assert len(states_got) == len(states_hooked) == 3
        # HF records a layer's hidden state at the layer itself, i.e. inside the wrapper,
        # before the projection: only the corrected layer's own entry differs (documented)
        same = [torch.equal(a, b) for a, b in zip(states_got, states_hooked, strict=True)]
        assert same == ([True, False, True] if layer == "encoder.layer.0" else [True] * 3)
    buffer = io.BytesIO()
    torch.save(pc.export(model), buffer)
    buffer.seek(0)
    with torch.no_grad():
        again = torch.load(buffer, weights_only=False)(**test)
    assert torch.equal(again.last_hidden_state, got.last_hidden_state)
