"""Seeds of the corrections: one validator (None, an int >= 0, a ``torch.Generator``); a
generator seed is reproducible (the same state gives the same correction) and int seeds draw
exactly what they drew before."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.correct import AClarc, ExplanationRegularization, RRClarc
from latentsurgeon.correct._base import random_stream
from latentsurgeon.errors import InvalidParameterError


def test_random_stream_of_an_int_is_its_seed_sequence():
    state = np.random.SeedSequence([7, 2]).generate_state(1, dtype=np.uint64)[0]
    expected = torch.rand(4, generator=torch.Generator().manual_seed(int(state)))
    assert torch.equal(torch.rand(4, generator=random_stream(7, 2)), expected)
    assert not torch.equal(torch.rand(4, generator=random_stream(7, 1)), expected)


def test_random_stream_of_a_generator_is_reproducible_and_advances_it():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = torch.rand(4, generator=random_stream(g1, 1))
    assert torch.equal(a, torch.rand(4, generator=random_stream(g2, 1)))
    assert not torch.equal(g1.get_state(), torch.Generator().manual_seed(3).get_state())
    assert not torch.equal(torch.rand(4, generator=random_stream(g1, 1)), a)  # it advanced


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("cls", [AClarc, RRClarc])
def test_trained_clarcs_take_a_generator_seed(cls, nets):
    x, y, artifact = nets.tiny_data()
    torch.manual_seed(0)
    template = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))

    def run(seed):
        model = copy.deepcopy(template)
        cls("1", epochs=2, batch_size=16, progress=False, cav_samples="all",
            seed=seed).fit(model, (x, y, artifact))
        return _weights(model)

    a = run(torch.Generator().manual_seed(4))
    assert torch.equal(a, run(torch.Generator().manual_seed(4)))
    assert not torch.equal(a, run(torch.Generator().manual_seed(5)))


def test_rrr_takes_a_generator_seed(nets):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    masks = torch.zeros(20, 4, 4)
    masks[:, :2, :2] = 1.0
    template = nets.Linear2d()

    def run(seed):
        model = copy.deepcopy(template)
        ExplanationRegularization(epochs=2, batch_size=5, progress=False, seed=seed).fit(
            model, x, y, masks)
        return _weights(model)

    a = run(torch.Generator().manual_seed(1))
    assert torch.equal(a, run(torch.Generator().manual_seed(1)))
    assert not torch.equal(a, run(torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, np.float64(2.0)])
def test_bad_seeds_are_refused_naming_the_seed(seed, nets):
    x, y, artifact = nets.tiny_data()
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidParameterError, match="seed must be None, an int >= 0 or a torch"):
        AClarc("1", epochs=1, progress=False, seed=seed).fit(model, (x, y, artifact))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
