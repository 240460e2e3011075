"""Activation patching on plain modules: exact recovery, no-ops, ablations, batching, state."""

from __future__ import annotations

import logging
import math

import matplotlib
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.activations import capture
from latentsurgeon.errors import (
    LatentSurgeonError,
    LayerNotFoundError,
    NonFiniteError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import hook_count
from latentsurgeon.intervene import (
    PatchingResult,
    interpolate,
    mean_ablation,
    patch,
    zero_ablation,
)

matplotlib.use("Agg")


def logit_diff(out: torch.Tensor) -> torch.Tensor:
    return (out[:, 0] - out[:, 1]).mean()


def identity(out: torch.Tensor) -> torch.Tensor:
    return out


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_complete_cut_reproduces_clean_output_exactly(cnn, images):
    clean, corrupted = images
    # Every path from input to output runs through features.5: patching it is a complete cut.
    res = patch(cnn, ["features.5"], clean, corrupted, identity, per_layer=False)
    assert torch.equal(res.patched_raw["features.5"], run(cnn, clean).double())
    assert torch.equal(res.clean_raw, run(cnn, clean).double())
    assert torch.equal(res.corrupted_raw, run(cnn, corrupted).double())
    # All conv-block outputs together, as one group, also reproduce the clean output.
    res = patch(cnn, "re:features\\.[0-9]", clean, corrupted, logit_diff, per_layer=False)
    assert res.layers == [" + ".join(f"features.{i}" for i in range(6))]
    assert res.patched[res.layers[0]] == res.clean
    assert res.effect[res.layers[0]] == 1.0


def test_per_layer_rows_in_model_order_and_cuts_score_one(cnn, images):
    clean, corrupted = images
    res = patch(cnn, ["classifier.3", "features.5", "features.0"], clean, corrupted, logit_diff)
    assert isinstance(res, PatchingResult)
    assert res.layers == ["features.0", "features.5", "classifier.3"]
    assert res.clean != res.corrupted
    # Each of these single layers is a complete cut of a feed-forward net.
    for row in res.layers:
        assert res.effect[row] == 1.0
        assert res.groups[row] == [row]


def test_partial_patch_lands_between(cnn, images):
    clean, corrupted = images
    # Patching one channel subset of features.3: neither clean nor corrupted.
    def half(name, target, source):
        out = target.clone()
        out[:, :16] = source[:, :16]
        return out

    res = patch(cnn, "features.3", clean, corrupted, identity, patch_fn=half)
    patched = res.patched_raw["features.3"]
    assert not torch.equal(patched, res.clean_raw)
    assert not torch.equal(patched, res.corrupted_raw)


def test_noop_patch_keeps_target_run(cnn, images):
    clean, corrupted = images
    res = patch(cnn, ["features.0", "classifier.1"], clean, corrupted, identity,
                patch_fn=lambda name, target, source: target)
    for row in res.layers:
        assert torch.equal(res.patched_raw[row], res.corrupted_raw)
    res = patch(cnn, ["features.0", "classifier.1"], clean, corrupted, logit_diff,
                patch_fn=lambda name, target, source: target)
    assert all(e == 0.0 for e in res.effect.values())


def test_same_inputs_give_nan_effect_and_warning(cnn, images, caplog):
    clean, _ = images
    with caplog.at_level(logging.WARNING, logger="latentsurgeon"):
        res = patch(cnn, "features.3", clean, clean, logit_diff)
    assert math.isnan(res.effect["features.3"])
    assert res.patched["features.3"] == res.clean
    assert "undefined" in caplog.text


def test_corrupted_to_clean_direction(cnn, images):
    clean, corrupted = images
    fwd = patch(cnn, "classifier.3", clean, corrupted, logit_diff)
    back = patch(cnn, "classifier.3", clean, corrupted, identity, direction="corrupted_to_clean")
    assert back.direction == "corrupted_to_clean"
    # Corrupted activations at the last layer turn the clean run into the corrupted one.
    assert torch.equal(back.patched_raw["classifier.3"], back.corrupted_raw)
    back = patch(cnn, "classifier.3", clean, corrupted, logit_diff, direction="corrupted_to_clean")
    assert back.clean == fwd.clean and back.corrupted == fwd.corrupted
    assert back.effect["classifier.3"] == 0.0
    with pytest.raises(LatentSurgeonError, match="direction"):
        patch(cnn, "classifier.3", clean, corrupted, logit_diff, direction="sideways")


def test_zero_ablation_matches_manual(cnn, images):
    clean, corrupted = images
    res = patch(cnn, "features.5", clean, corrupted, identity, patch_fn=zero_ablation)
    expected = run(cnn.classifier, torch.zeros(6, 32, 4, 4))
    assert torch.equal(res.patched_raw["features.5"], expected.double())


def test_mean_ablation_per_sample_and_per_channel(cnn, images):
    clean, corrupted = images
    reference = torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), capture(cnn, "features.3") as cap:
        cnn(reference)
    full_mean = cap["features.3"].mean(0)  # (32, 8, 8)
    channel_mean = full_mean.mean((1, 2))  # (32,)
    tail = nn.Sequential(*list(cnn.features)[4:], cnn.classifier)
    for mean, view in ((full_mean, full_mean), (channel_mean, channel_mean[:, None, None])):
        res = patch(cnn, "features.3", clean, corrupted, identity,
                    patch_fn=mean_ablation({"features.3": mean}))
        expected = run(tail, view.expand(6, 32, 8, 8).contiguous())
        assert torch.allclose(res.patched_raw["features.3"], expected.double(), atol=1e-6, rtol=0)
    with pytest.raises(ShapeMismatchError, match=r"expected a vector of shape \(32,\).*got shape \(5,\)"):
        patch(cnn, "features.3", clean, corrupted, identity, patch_fn=mean_ablation(torch.zeros(5)))
    with pytest.raises(LatentSurgeonError, match="no mean for layer 'features.3'"):
        patch(cnn, "features.3", clean, corrupted, identity,
              patch_fn=mean_ablation({"features.0": full_mean}))


def test_interpolate_endpoints_exact_and_midpoint_linear(cnn, images):
    clean, corrupted = images
    zero = patch(cnn, "features.5", clean, corrupted, identity, patch_fn=interpolate(0.0))
    one = patch(cnn, "features.5", clean, corrupted, identity, patch_fn=interpolate(1.0))
    assert torch.equal(zero.patched_raw["features.5"], zero.corrupted_raw)
    assert torch.equal(one.patched_raw["features.5"], one.clean_raw)
    # The last layer's output is the logits, and the metric is linear in them.
    half = patch(cnn, "classifier.3", clean, corrupted, logit_diff, patch_fn=interpolate(0.5))
    assert half.effect["classifier.3"] == pytest.approx(0.5, abs=1e-4)  # float32 logits
    with pytest.raises(LatentSurgeonError, match="finite number"):
        interpolate(float("nan"))


def test_batched_equals_unbatched(cnn, images):
    clean, corrupted = images
    layers = ["features.0", "features.3"]
    whole = patch(cnn, layers, clean, corrupted, logit_diff)
    batched = patch(cnn, layers, clean, corrupted, logit_diff, batch_size=4)
    for row in whole.layers:
        assert batched.patched[row] == pytest.approx(whole.patched[row], abs=1e-6)
    per_sample = patch(cnn, layers, clean, corrupted, lambda o: o[:, 0] - o[:, 1], batch_size=4)
    assert per_sample.patched_raw["features.3"].shape == (6,)
    assert per_sample.patched["features.3"] == pytest.approx(whole.patched["features.3"], abs=1e-6)
    logits = patch(cnn, layers, clean, corrupted, identity, batch_size=4)
    assert torch.allclose(logits.clean_raw, run(cnn, clean).double(), atol=1e-6, rtol=0)
    loaders = patch(cnn, layers, DataLoader(TensorDataset(clean, torch.zeros(6)), batch_size=4),
                    DataLoader(TensorDataset(corrupted, torch.zeros(6)), batch_size=4),
                    logit_diff)
    for row in whole.layers:
        assert loaders.patched[row] == pytest.approx(whole.patched[row], abs=1e-6)
    with pytest.raises(LatentSurgeonError, match="scalar"):
        patch(cnn, layers, clean, corrupted, lambda o: o.sum(0), batch_size=4)


def test_single_source_sample_is_broadcast(cnn, images):
    clean, corrupted = images
    res = patch(cnn, "classifier.3", clean[:1], corrupted, identity, batch_size=4)
    expected = run(cnn, clean[:1]).double().expand(6, 10)
    assert torch.equal(res.patched_raw["classifier.3"], expected)


class InplaceDouble(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)


def test_recorded_source_survives_inplace_ops_downstream():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), InplaceDouble(), nn.Linear(4, 2)).eval()
    clean, corrupted = torch.randn(1, 4), torch.randn(5, 4)
    # One source row reused for five batches: an in-place op after the patched layer must not
    # double the recorded source from batch to batch.
    res = patch(model, "0", clean, corrupted, identity, batch_size=1)
    assert torch.equal(res.patched_raw["0"], run(model, clean).double().expand(5, 2))


def test_shape_errors(cnn, images, tiny_seq):
    clean, corrupted = images
    with pytest.raises(ShapeMismatchError, match="6 source and 4 target"):
        patch(cnn, "features.3", clean, corrupted[:4], logit_diff)
    with pytest.raises(ShapeMismatchError, match=r"patch_fn .* must return .*\(6, 32, 8, 8\)"):
        patch(cnn, "features.3", clean, corrupted, logit_diff,
              patch_fn=lambda n, t, s: t[:, :4])
    with pytest.raises(ShapeMismatchError, match="positions= selects tokens"):
        patch(cnn, "features.3", clean, corrupted, logit_diff, positions=-1)
    ids_a, ids_b = torch.randint(0, 12, (2, 4)), torch.randint(0, 12, (2, 5))
    with pytest.raises(ShapeMismatchError, match="same number of tokens"):
        patch(tiny_seq, "emb", ids_a, ids_b, lambda o: o.mean())
    with pytest.raises(LayerNotFoundError, match="features.3"):
        patch(cnn, "features.33", clean, corrupted, logit_diff)


def test_positions_patch_only_selected_tokens(tiny_seq):
    g = torch.Generator().manual_seed(3)
    clean, corrupted = torch.randint(0, 12, (3, 5), generator=g), torch.randint(0, 12, (3, 5), generator=g)
    res = patch(tiny_seq, "mid", clean, corrupted, identity, positions=[0, -1])
    out, c, k = res.patched_raw["mid"], res.clean_raw, res.corrupted_raw
    assert torch.equal(out[:, [0, 4]], c[:, [0, 4]])
    assert torch.equal(out[:, 1:4], k[:, 1:4])
    res = patch(tiny_seq, "mid", clean, corrupted, identity, positions=slice(1, 3))
    assert torch.equal(res.patched_raw["mid"][:, 1:3], c[:, 1:3])
    assert torch.equal(res.patched_raw["mid"][:, [0, 3, 4]], k[:, [0, 3, 4]])


def test_model_state_restored_also_after_errors(cnn, images):
    clean, corrupted = images
    cnn.train()
    cnn.features[0].weight.requires_grad_(False)
    before = hook_count(cnn)
    patch(cnn, ["features.0", "features.3"], clean, corrupted, logit_diff)
    assert hook_count(cnn) == before
    assert all(m.training for m in cnn.modules())
    assert not cnn.features[0].weight.requires_grad and cnn.features[3].weight.requires_grad

    calls = []

    def failing(out):
        calls.append(1)
        if len(calls) == 3:  # fails inside the first patched run
            raise RuntimeError("metric failed")
        return logit_diff(out)

    with pytest.raises(RuntimeError, match="metric failed"):
        patch(cnn, ["features.0", "features.3"], clean, corrupted, failing)
    assert hook_count(cnn) == before
    assert all(m.training for m in cnn.modules())


def test_layer_that_does_not_run_is_reported():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    x = torch.randn(4, 3)
    with pytest.raises(LatentSurgeonError, match="'spare' did not run"):
        patch(Unused(), "spare", x, x + 1, lambda o: o.sum())


def test_table_records_and_plot(cnn, images):
    clean, corrupted = images
    res = patch(cnn, ["features.0", "classifier.3"], clean, corrupted, logit_diff)
    text = res.table()
    assert "clean -> corrupted" in text and "features.0" in text and "classifier.3" in text
    assert str(res) == text
    recs = res.records()
    assert [r["layer"] for r in recs] == res.layers
    assert recs[1]["effect"] == 1.0
    ax = res.plot()
    assert len(ax.patches) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == res.layers


class TupleBlocks(nn.Module):
    """Blocks returning ``(hidden, extra)`` tuples and ``{"hidden": ..., "aux": ...}`` dicts, like
    transformer layers; the extras must pass through untouched."""

    class Block(nn.Module):
        def __init__(self, as_dict: bool) -> None:
            super().__init__()
            self.lin, self.as_dict = nn.Linear(4, 4), as_dict

        def forward(self, h: torch.Tensor):
            out = torch.tanh(self.lin(h))
            return {"hidden": out, "aux": out.sum(-1)} if self.as_dict else (out, out.sum(-1))

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([self.Block(False), self.Block(True)])
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, aux0 = self.blocks[0](x)
        d = self.blocks[1](h)
        return self.head(d["hidden"]) + 0.0 * (aux0 + d["aux"])[:, None]


def test_tuple_and_dict_outputs_are_patched_in_place():
    torch.manual_seed(0)
    model = TupleBlocks().eval()
    clean, corrupted = torch.randn(3, 4), torch.randn(3, 4)
    res = patch(model, ["blocks.0", "blocks.1"], clean, corrupted, identity)
    for row in res.layers:  # each block's hidden state is a complete cut
        assert torch.equal(res.patched_raw[row], res.clean_raw)
    res = patch(model, "blocks.1", clean, corrupted, identity, patch_fn=zero_ablation)
    assert torch.equal(res.patched_raw["blocks.1"], run(model.head, torch.zeros(3, 4)).double())


def test_patch_fn_returning_none_means_the_source(cnn, images):
    clean, corrupted = images
    default = patch(cnn, ["features.0", "features.3"], clean, corrupted, logit_diff,
                    progress=False)
    seen = []

    def observe(name, target, source):
        seen.append(name)
        return None

    res = patch(cnn, ["features.0", "features.3"], clean, corrupted, logit_diff, patch_fn=observe,
                progress=False)
    assert seen == ["features.0", "features.3"]
    assert res.patched == default.patched


def test_a_non_finite_metric_is_an_error(cnn, images):
    clean, corrupted = images
    with pytest.raises(NonFiniteError, match="metric"):
        patch(cnn, "features.3", clean, corrupted, lambda out: out.sum() * float("nan"),
              progress=False)
    assert hook_count(cnn) == 0


def test_earlier_order_gives_the_same_result_with_a_warning(cnn, images):
    clean, corrupted = images
    new = patch(cnn, "features.3", clean, corrupted, logit_diff)
    with pytest.warns(FutureWarning, match=r"patch: positional arguments in the order"):
        old = patch(cnn, clean, corrupted, "features.3", logit_diff)
    assert old.patched == new.patched and old.layers == new.layers
