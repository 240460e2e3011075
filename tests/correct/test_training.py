"""trainable="above" by data flow: the parameters that receive gradient through the layer's
output (residual blocks, weight sharing, several layers), and the other selections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.correct._training import parameters_above, select_parameters
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import hook_count


def names(chosen):
    return [n for n, _ in chosen]


def test_weight_shared_with_a_module_before_the_layer_is_excluded(nets):
    model = nets.Reordered()
    # ``shared`` also runs before ``mid``: training it would change mid's input
    assert names(parameters_above(model, "mid", torch.randn(1, 5))) == ["head.weight",
                                                                       "head.bias"]
    assert names(parameters_above(model, "body", torch.randn(1, 5))) == [
        "head.weight", "head.bias", "shared.weight", "shared.bias", "mid.weight", "mid.bias"]
    assert hook_count(model) == 0


def test_residual_block_skip_branch_is_not_above_bn2(nets):
    """Correcting block.bn2: the skip branch (downsample) runs after bn2 but does not consume
    its output, so it is not fine-tuned; the head is."""
    model = nets.ResNetTiny()
    model.block.downsample[0].weight.requires_grad_(False)
    model.train()
    chosen = names(parameters_above(model, "block.bn2", torch.rand(1, 1, 16, 16)))
    assert chosen == ["fc.weight", "fc.bias"]
    # stem: everything after it, skip branch included (it consumes the stem's output)
    after_stem = names(parameters_above(model, "stem", torch.rand(1, 1, 16, 16)))
    assert after_stem == [n for n, _ in model.named_parameters() if not n.startswith("stem")]
    # bn1 inside the block: conv2, bn2 and the head, not the skip branch
    assert names(parameters_above(model, "block.bn1", torch.rand(1, 1, 16, 16))) == [
        "block.conv2.weight", "block.bn2.weight", "block.bn2.bias", "fc.weight", "fc.bias"]
    # the state is as before: flags, mode, hooks
    assert not model.block.downsample[0].weight.requires_grad and model.training
    assert hook_count(model) == 0


def test_execution_order_would_include_the_skip_branch(nets):
    """The old definition (everything that runs after the layer) is what the data flow fixes:
    the downsample branch runs after bn2 in this block."""
    model = nets.ResNetTiny()
    order = []
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: order.append(n))
               for n, m in model.named_modules() if n]
    model(torch.rand(1, 1, 16, 16))
    for h in handles:
        h.remove()
    assert order.index("block.downsample") > order.index("block.bn2")


def test_several_layers_and_dict_outputs(nets):
    model = nets.DictOutput()
    assert names(parameters_above(model, "body", torch.randn(1, 4))) == ["out.weight", "out.bias"]
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    # above both layers: what consumes the later one's output (the earlier one's downstream
    # includes layer 2, which the later layer depends on)
    assert names(parameters_above(chain, ["0", "2"], torch.randn(1, 3))) == ["3.weight", "3.bias"]


def test_a_layer_that_does_not_run_is_an_error():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(2, 2)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(LatentSurgeonError, match="did not run"):
        parameters_above(Skips(), "unused", torch.randn(1, 2))


def test_select_parameters(nets):
    model = nets.Reordered()
    with pytest.raises(LatentSurgeonError, match="No parameter receives gradient"):
        select_parameters(model, "head", "above", torch.randn(1, 5))
    chosen = select_parameters(model, "mid", ["head.w*", "body.*"], torch.randn(1, 5))
    assert names(chosen) == ["head.weight", "body.weight", "body.bias"]
    assert len(select_parameters(model, "mid", "all", torch.randn(1, 5))) == 8
    with pytest.raises(LatentSurgeonError, match="match no parameter"):
        select_parameters(model, "mid", ["nothing.*"], torch.randn(1, 5))
    with pytest.raises(LatentSurgeonError, match="list of parameter-name globs"):
        select_parameters(model, "mid", "head.*", torch.randn(1, 5))
