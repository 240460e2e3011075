"""``train(seed=...)`` with a ``torch.Generator``: one int drawn from it drives the run, so the same
generator state gives the same run; int seeds are unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.training import train


def _run(seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    history = train(model, (x, y), lambda m, b: F.cross_entropy(m(b[0]), b[1]), epochs=3,
                    batch_size=8, seed=seed, progress=False)
    return model, history


def test_a_generator_seed_trains_reproducibly():
    a, ha = _run(torch.Generator().manual_seed(9))
    b, hb = _run(torch.Generator().manual_seed(9))
    c, _ = _run(torch.Generator().manual_seed(10))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    assert ha.loss == hb.loss
    # the history records the int the generator gave, and that int reproduces the run
    assert isinstance(ha.seed, int)
    d, hd = _run(ha.seed)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), d.parameters(), strict=True))
    assert hd.loss == ha.loss


def test_the_generator_advances_and_a_refused_call_leaves_it_alone():
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    model = nn.Linear(3, 2)
    with pytest.raises(InvalidParameterError, match="epochs"):
        train(model, torch.randn(4, 3), lambda m, b: m(b).sum(), epochs=-1, seed=generator)
    assert torch.equal(generator.get_state(), state)
    train(model, torch.randn(4, 3), lambda m, b: m(b).sum(), epochs=1, seed=generator,
          progress=False)
    assert not torch.equal(generator.get_state(), state)
