"""P-ClArC's per-token projections (``tokens="all"``, ``tokens="masked"``) on a small sequence
model with a planted shortcut token: the uncorrected model demonstrably uses the token, and the
gated per-token projection removes it at no clean cost."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from latentsurgeon.correct import ClarcProjection, PClarc
from latentsurgeon.correct.projection import clarc_projection
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.training import train_classifier

T, V, D = 8, 20, 16
CORE = (1, 2)     # the class token: 1 for class 0, 2 for class 1
SHORTCUT = 3      # planted in 90% of class 1's training samples
SEEDS = range(10, 15)  # the thresholds were set on seeds 0-9


class TokenNet(nn.Module):
    """Embedding -> per-token MLP (``block``, output ``(N, T, D)``) -> mean over tokens -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.block = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, D))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(D, 2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # .long(): the corrections' data path hands integer inputs over as floats
        return self.head(self.block(self.embed(ids.long())).mean(1))


def token_data(n: int, seed: int, *, core_p: float = 0.9, poison: bool | None = None):
    """``(ids (N, T), labels, artifact flags, masks (N, T))``: the class token at one random
    position (right with probability ``core_p``), the shortcut token at another (``poison``:
    None = the training rule, True = in every sample, False = in none)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (n, T), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    core = torch.where(torch.rand(n, generator=g) < core_p, y, 1 - y)
    pos = torch.argsort(torch.rand(n, T, generator=g), dim=1)[:, :2]
    ids[torch.arange(n), pos[:, 0]] = torch.tensor(CORE)[core]
    if poison is None:
        artifact = torch.rand(n, generator=g) < torch.where(y == 1, 0.9, 0.0)
    else:
        artifact = torch.full((n,), poison)
    masks = torch.zeros(n, T)
    rows = torch.arange(n)[artifact]
    ids[rows, pos[artifact, 1]] = SHORTCUT
    masks[rows, pos[artifact, 1]] = 1
    return ids, y, artifact.long(), masks


def accuracy(model: nn.Module, ids: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(ids).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained():
    out = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = TokenNet()
        train = token_data(512, seed)
        train_classifier(model, (train[0], train[1]), epochs=15, lr=0.01, seed=seed,
                         progress=False)
        clean = token_data(400, 100 + seed, core_p=1.0, poison=False)
        poisoned = token_data(400, 100 + seed, core_p=1.0, poison=True)
        out.append((model, train, clean, poisoned))
    return out


def test_per_token_projection_closes_the_token_shortcut(trained):
    closed: dict[str | None, list[float]] = {None: [], "all": [], "masked": []}
    gaps = []
    clean_cost: dict[str | None, list[float]] = {None: [], "all": [], "masked": []}
    for model, train, clean, poisoned in trained:
        base_clean = accuracy(model, clean[0], clean[1])
        base_poisoned = accuracy(model, poisoned[0], poisoned[1])
        gap = base_clean - base_poisoned
        # the planted token is used: inserting it everywhere costs at least 10 points
        assert gap >= 0.1, f"uncorrected gap {gap:.3f}: the model ignores the shortcut"
        gaps.append(gap)
        for tokens in closed:
            pc = PClarc("block", tokens=tokens, progress=False).fit(model, train)
            with pc.applied(model):
                after_clean = accuracy(model, clean[0], clean[1])
                after_poisoned = accuracy(model, poisoned[0], poisoned[1])
            closed[tokens].append((after_poisoned - base_poisoned) / gap)
            clean_cost[tokens].append(base_clean - after_clean)
    assert statistics.mean(gaps) >= 0.15, gaps
    mean = {k: statistics.mean(v) for k, v in closed.items()}
    cost = {k: statistics.mean(v) for k, v in clean_cost.items()}
    # measured on seeds 0-9: masked 1.18 (no clean cost), all 0.49, flattened T*D 0.22
    # (docs/correct.md; above 1: the poisoned class-1 samples gain too)
    # seeds 10-14: masked 1.28, all 1.35 (it varies: 0.00 to 2.97 per seed), flattened 0.15
    assert mean["masked"] >= 0.8 and cost["masked"] <= 0.02, (mean, cost)
    assert min(mean["masked"], mean["all"]) > mean[None] + 0.2, mean


def test_token_directions_live_in_the_feature_space(trained):
    model, train, clean, _ = trained[0]
    pc = PClarc("block", tokens="masked", progress=False).fit(model, train)
    vec = pc.vectors_["block"]
    assert pc.direction_.shape == (D,) and pc.pooling_ == "token" and vec["gate"] > 0
    projection = pc.export(model).block[1]
    assert isinstance(projection, ClarcProjection) and float(projection.gate) == vec["gate"]
    acts = torch.randn(3, T, D)
    coef = (acts - pc.mean_clean_) @ pc.direction_
    out = clarc_projection(acts, pc.direction_, pc.mean_clean_, pooling="token",
                           gate=vec["gate"])
    untouched = coef <= vec["gate"]
    # tokens below the gate pass bit for bit; the others land on the clean mean's component
    assert torch.equal(out[untouched], acts[untouched])
    torch.testing.assert_close((out - pc.mean_clean_) @ pc.direction_,
                               torch.where(untouched, coef, torch.zeros_like(coef)))
    every = PClarc("block", tokens="all", progress=False).fit(model, train)
    assert "gate" not in every.vectors_["block"]
    assert every.export(model).block[1].gate is None
    # the export equals the hook
    with torch.no_grad(), pc.applied(model):
        hooked = model(clean[0][:16])
    with torch.no_grad():
        assert torch.equal(pc.export(model)(clean[0][:16]), hooked)


def test_token_options_refuse_what_they_cannot_use(trained):
    model, train, _, _ = trained[0]
    with pytest.raises(InvalidParameterError, match="tokens"):
        PClarc("block", tokens="every", progress=False).fit(model, train)
    with pytest.raises(Exception, match="masks"):
        PClarc("block", tokens="masked", progress=False).fit(model, train[:3])
    with pytest.raises(ShapeMismatchError, match="sequence activations"):
        PClarc("head", tokens="all", progress=False).fit(model, train)
    with pytest.raises(InvalidParameterError, match="fit_paired"):
        PClarc("block", tokens="all", progress=False).fit_paired(model, train[0], train[0])
