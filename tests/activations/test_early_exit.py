"""Early exit changes nothing but the time: the same bits, later layers not run, state restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.activations import ActivationStore, capture, layer_outputs
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import hook_count
from latentsurgeon.hooks.stop import forget_calls

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


class Counter(nn.Module):
    """Counts its calls: proof that a layer after the requested ones did (not) run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8),  # 0
        nn.ReLU(),  # 1
        Counter(),  # 2
        nn.Linear(8, 8),  # 3
        nn.Tanh(),  # 4
        Counter(),  # 5
        nn.Linear(8, 3),  # 6
    ).eval()


def data(n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


def full_forward(model: nn.Module, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    with torch.no_grad(), capture(model, layers, copy=True) as cap:
        model(x)
    return cap.activations


def state(model: nn.Module) -> tuple:
    return (hook_count(model), [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [t.detach().clone() for t in model.state_dict().values()])


def assert_state(model: nn.Module, before: tuple) -> None:
    after = state(model)
    assert after[:3] == before[:3]
    assert all(torch.equal(a, b) for a, b in zip(after[3], before[3], strict=True))


# -- capture(..., stop_early=True) and Captured.run ---------------------------------------------

def test_run_stops_after_the_last_requested_layer_and_records_the_same_bits():
    model = chain()
    x = data()
    reference = full_forward(model, x, ["0", "3"])
    counters = model[2], model[5]
    assert (counters[0].calls, counters[1].calls) == (1, 1)
    before = state(model)
    with torch.no_grad(), capture(model, ["0", "3"], stop_early=True, accumulate=True) as cap:
        first = cap.run(model, x)   # the first pass of this layer set runs whole: it learns
        assert first is not None and not cap.stopped
        assert (counters[0].calls, counters[1].calls) == (2, 2)
        for _ in range(3):
            assert cap.run(model, x) is None and cap.stopped
        assert (counters[0].calls, counters[1].calls) == (5, 2)  # "5" never ran again
    for name in ("0", "3"):
        assert torch.equal(cap[name], reference[name].repeat(4, 1)), name
    assert_state(model, before)


def test_direct_calls_inside_a_stop_early_block_run_whole():
    model = chain()
    x = data()
    with torch.no_grad(), capture(model, "0", stop_early=True) as cap:
        cap.run(model, x)
        y = model(x)  # the user's own call: never stopped, never sees our signal
        assert y.shape == (10, 3) and model[5].calls == 2
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)


def test_without_stop_early_run_returns_the_output():
    model = chain()
    x = data()
    with torch.no_grad(), capture(model, "0") as cap:
        for _ in range(2):
            out = cap.run(model, x)
            assert out is not None and not cap.stopped
    assert model[5].calls == 2
    with pytest.raises(Exception, match="inside the `with capture"):
        cap.run(model, x)


def test_stop_early_refuses_gradients():
    model = chain()
    for option in ("gradients", "input_gradients"):
        with pytest.raises(InvalidParameterError, match="stop_early=True") as info:
            with capture(model, "0", stop_early=True, **{option: True}):
                pass  # pragma: no cover
        assert option in str(info.value)
    assert hook_count(model) == 0


def test_state_restored_when_the_stop_unwinds_the_forward():
    model = chain()
    model.train()
    model[3].eval()
    model[6].weight.requires_grad_(False)
    model[4].register_forward_hook(lambda *a: None)
    before = state(model)
    with capture(model, "1", stop_early=True) as cap:
        for _ in range(3):
            cap.run(model, data())
        assert cap.stopped and hook_count(model) == before[0] + 1
    assert_state(model, before)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad"])
def test_grad_modes(mode):
    model = chain()
    x = data()
    reference = full_forward(model, x, ["1", "4"])
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "grad": torch.enable_grad}[mode]
    forget_calls(model)
    with context():
        with capture(model, ["1", "4"], stop_early=True) as cap:
            cap.run(model, x)
            cap.run(model, x)
            assert cap.stopped
        values = {n: cap[n].clone() for n in ("1", "4")}
        read = layer_outputs(model, ["1", "4"], x, batch_size=None)
    # the reference pass and capture's learning pass; layer_outputs reuses what capture learned
    assert model[5].calls == 2
    for name in ("1", "4"):
        assert torch.equal(values[name], reference[name])
        torch.testing.assert_close(read[name], reference[name], rtol=0, atol=0)


class DictOut(nn.Module):
    """Blocks returning tuples, a model returning a dict (as transformers do)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = torch.tanh(self.lin(x))
            return h, {"norm": h.norm(dim=1)}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([self.Block() for _ in range(3)])
        self.after = Counter()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x, _ = block(x)
        return {"logits": self.head(self.after(x)), "hidden": x}


def test_tuple_and_dict_outputs():
    model = DictOut().eval()
    x = torch.randn(5, 4)
    reference = full_forward(model, x, ["blocks.0", "blocks.1"])
    forget_calls(model)
    for _ in range(2):
        read = layer_outputs(model, ["blocks.0", "blocks.1"], x)
    assert model.after.calls == 2  # the reference, and the pass that learned the counts
    for name, value in reference.items():
        assert torch.equal(read[name], value)


class Twice(nn.Module):
    """A layer that runs twice per pass (weight sharing); the second call is the one kept."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 4)
        self.middle = Counter()
        self.later = Counter()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.middle(torch.tanh(self.shared(x)))
        h = self.shared(h)
        return self.head(self.later(h))


def test_a_layer_that_runs_twice_stops_after_its_last_call():
    model = Twice().eval()
    x = torch.randn(6, 4)
    reference = full_forward(model, x, "shared")  # the last call's output
    with torch.no_grad(), capture(model, "shared", accumulate=True, copy=True) as whole:
        model(x)
    for _ in range(3):
        read = layer_outputs(model, "shared", x)
        assert torch.equal(read["shared"], reference["shared"])
    # 2 reference passes and 1 learning pass ran whole; in the 2 stopped ones `middle` (between
    # the two calls of `shared`) ran and `later` did not
    assert model.middle.calls == 5 and model.later.calls == 3
    with torch.no_grad(), capture(model, "shared", accumulate=True, stop_early=True) as cap:
        cap.run(model, x)  # reuses the learned counts of this model and layer
        assert cap.stopped
    assert torch.equal(cap["shared"], whole["shared"])  # both calls, as in a whole pass
    assert model.later.calls == 3


def test_the_models_own_hooks_run_as_in_a_whole_pass():
    model = chain()
    x = data()
    seen = []
    handles = [
        # on the requested layer, registered before: it runs (and its edit is what we read)
        model[3].register_forward_hook(lambda m, i, o: o * 2),
        # on a later layer: it does not run in a stopped pass
        model[6].register_forward_hook(lambda m, i, o: seen.append("late")),
        # always_call on the root: PyTorch runs it while the stop unwinds the pass
        model.register_forward_hook(lambda m, i, o: seen.append("always"), always_call=True),
    ]
    reference = full_forward(model, x, "3")
    seen.clear()
    forget_calls(model)
    layer_outputs(model, "3", x)  # learns
    seen.clear()
    read = layer_outputs(model, "3", x)
    assert torch.equal(read["3"], reference["3"])
    assert seen == ["always"]
    assert hook_count(model) == 3
    for handle in handles:
        handle.remove()
    assert hook_count(model) == 0


def test_real_errors_pass_through_and_stop_early_false_runs_whole():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            self.lin(x)
            raise ValueError("the model failed")

    model = Broken()
    before = state(model)
    with pytest.raises(ValueError, match="the model failed"):
        layer_outputs(model, "lin", torch.randn(3, 2))
    assert_state(model, before)
    model = chain()
    for _ in range(2):
        layer_outputs(model, "0", data(), stop_early=False)
    assert model[5].calls == 2


# -- the store -------------------------------------------------------------------------------------

def test_store_is_bit_identical_with_and_without_early_exit(tmp_path):
    model = chain()
    x = data(50)
    forget_calls(model)
    early = ActivationStore.extract(model, x, ["0", "3"], tmp_path / "early", batch_size=8,
                                    pooling={"0": "max"}, progress=False)
    assert model[5].calls == 1  # 7 batches: the first learned the counts, six stopped early
    whole = ActivationStore.extract(model, x, ["0", "3"], tmp_path / "whole", batch_size=8,
                                    pooling={"0": "max"}, progress=False, stop_early=False)
    assert model[5].calls == 8
    for layer in ("0", "3"):
        assert np.array_equal(np.asarray(early[layer]), np.asarray(whole[layer]))
        assert (early.manifest["layers"][layer]["fingerprint"]
                == whole.manifest["layers"][layer]["fingerprint"])
    assert early.manifest["data_fingerprint"] == whole.manifest["data_fingerprint"]


def test_layer_outputs_equals_a_whole_pass_per_batch_size():
    model = chain()
    x = data(23)
    reference = full_forward(model, x, ["1", "4"])
    for batch_size in (1, 7, None):
        read = layer_outputs(model, ["1", "4"], x, batch_size=batch_size)
        assert list(read) == ["1", "4"]
        for name in ("1", "4"):
            # One batch is the same computation; other batch shapes round alike (rows of a
            # Linear are independent), but the claim tested exactly is the single batch.
            if batch_size is None:
                assert torch.equal(read[name], reference[name])
            else:
                torch.testing.assert_close(read[name], reference[name], rtol=1e-6, atol=1e-7)


# -- HuggingFace transformers --------------------------------------------------------------------

def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=97,
                                     n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_hf_gpt2_stops_after_an_early_block_and_reads_its_hidden_state():
    model = _tiny_gpt2()
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    late = []
    handle = model.lm_head.register_forward_hook(lambda *a: late.append(1))
    before = state(model)
    for _ in range(2):
        read = layer_outputs(model, ["transformer.h.0", "transformer.h.1"], {"input_ids": ids})
    assert len(late) == 1  # the second read stopped before the LM head (and blocks 2-3)
    assert torch.equal(read["transformer.h.0"], hidden[1])
    assert torch.equal(read["transformer.h.1"], hidden[2])
    with torch.inference_mode(), capture(model, "transformer.h.1", stop_early=True) as cap:
        assert cap.run(model, input_ids=ids) is not None  # a new layer set: learns
        assert cap.run(model, input_ids=ids) is None
    assert torch.equal(cap["transformer.h.1"], hidden[2])
    assert_state(model, before)
    handle.remove()
    # The model still works as before: the unwound passes left nothing half-set.
    with torch.no_grad():
        again = model(input_ids=ids, output_hidden_states=True)
    for a, b in zip(again.hidden_states, hidden, strict=True):
        assert torch.equal(a, b)
