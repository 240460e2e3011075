"""replace_primary: the container keeps its type and the original is never modified."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch

from latentsurgeon.hooks import primary_tensor, replace_primary

Pair = namedtuple("Pair", "hidden weights")


@pytest.mark.parametrize("make", [
    lambda h, w: (h, w), lambda h, w: [h, w], lambda h, w: Pair(h, w),
    lambda h, w: {"hidden": h, "weights": w}, lambda h, w: OrderedDict(hidden=h, weights=w)])
def test_replace_primary_keeps_the_container_and_the_original(make):
    hidden, weights, new = torch.zeros(2, 3), torch.ones(2, 2), torch.full((2, 3), 5.0)
    output = make(hidden, weights)
    replaced = replace_primary(output, new)
    assert type(replaced) is type(output)
    assert primary_tensor(replaced) is new and primary_tensor(output) is hidden
    rest = list(replaced.values())[1] if isinstance(replaced, dict) else replaced[1]
    assert rest is weights


def test_replace_primary_of_a_model_output_copies_it():
    outputs = pytest.importorskip("transformers.modeling_outputs")
    hidden, pooled, new = torch.zeros(2, 4, 3), torch.ones(2, 3), torch.full((2, 4, 3), 5.0)
    output = outputs.BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
    replaced = replace_primary(output, new)
    assert type(replaced) is type(output)
    assert replaced.last_hidden_state is new and replaced["last_hidden_state"] is new
    assert replaced.pooler_output is pooled
    assert output.last_hidden_state is hidden  # the layer's own output is left alone
