"""The bad-input corpus of K-FAC and EK-FAC influence (``InfluenceFunctions(solver="kfac" /
"ekfac")``): unsupported modules named, loss callables, options out of range, non-finite data,
singular curvature without damping, factor files of other weights. Every case raises our
exception naming the argument and leaves the model as it was (``_harness.check``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, ModelMismatchError, NonFiniteError
from latentsurgeon.explain import InfluenceFunctions

from ._harness import Case, check

G = torch.Generator().manual_seed(0)
X = torch.randn(12, 5, generator=G)
Y = torch.randint(0, 3, (12,), generator=G)
IMAGES = torch.randn(8, 1, 6, 6, generator=G)
DIGITS = torch.randint(0, 3, (8,), generator=G)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model.train()  # the state a failed call must leave alone
    return model


def _with_norm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                         nn.Linear(32, 3))


def _depthwise() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(),
                         nn.Linear(8, 3))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(x, x, x)
        return self.head(out.mean(dim=1))


MLP = _mlp()
NORM = _with_norm()
DEPTHWISE = _depthwise()
ATTENTION = Attention()
TOKENS = torch.randn(6, 5, 4, generator=G)


def _ekfac(**kw) -> InfluenceFunctions:
    return InfluenceFunctions("cross_entropy", solver="ekfac", progress=False, **kw)


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[3, 0] = float("nan")
    return out


def _changed_weights_load(tmp_path) -> None:
    model = _mlp()
    _ekfac().fit(model, (X, Y)).save(tmp_path / "factors.pt")
    with torch.no_grad():
        model[2].bias.add_(1e-3)
    InfluenceFunctions.load(tmp_path / "factors.pt", model=model)


CASES = [
    Case("ekfac over a BatchNorm2d layer names it",
         lambda: _ekfac().fit(NORM, (IMAGES, DIGITS)), InvalidParameterError,
         ("params=", "1 (BatchNorm2d)", "nn.Linear", "solver='cg'"), (NORM,)),
    Case("ekfac over a grouped convolution names it",
         lambda: _ekfac().fit(DEPTHWISE, (IMAGES, DIGITS)), InvalidParameterError,
         ("params=", "1 (Conv2d)", "groups=1"), (DEPTHWISE,)),
    Case("ekfac over nn.MultiheadAttention names it",
         lambda: _ekfac().fit(ATTENTION, (TOKENS, DIGITS[:6])), InvalidParameterError,
         ("params=", "attention (MultiheadAttention)", "functionally"), (ATTENTION,)),
    Case("kfac with a loss callable",
         lambda: InfluenceFunctions(lambda out, batch: out.sum(), solver="kfac",
                                    progress=False).fit(MLP, (X, Y)),
         InvalidParameterError, ("solver='kfac'", "named loss", "callable", "solver='cg'"),
         (MLP,)),
    Case("ekfac with an unknown fisher",
         lambda: _ekfac(fisher="monte-carlo").fit(MLP, (X, Y)), InvalidParameterError,
         ("fisher", "true", "empirical", "monte-carlo"), (MLP,)),
    Case("ekfac with a negative relative_damping",
         lambda: _ekfac(relative_damping=-0.1).fit(MLP, (X, Y)), InvalidParameterError,
         ("relative_damping", "-0.1"), (MLP,)),
    Case("ekfac with an unknown solver spelling",
         lambda: InfluenceFunctions("cross_entropy", solver="ek-fac").fit(MLP, (X, Y)),
         InvalidParameterError, ("solver", "ekfac", "ek-fac"), (MLP,)),
    Case("ekfac on NaN training inputs",
         lambda: _ekfac().fit(MLP, (_with_nan(X), Y)), NonFiniteError, ("nan",), (MLP,)),
    Case("kfac without damping on a layer the loss does not reach (zero curvature)",
         lambda: InfluenceFunctions("cross_entropy", solver="kfac", relative_damping=None,
                                    damping=0.0, progress=False).fit(
             MLP, (torch.zeros(12, 5), Y)),
         InvalidParameterError, ("damping", "singular", "relative_damping"), (MLP,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case):
    check(case)


def test_factor_file_of_other_weights_is_refused(tmp_path):
    check(Case("load of EK-FAC factors after the weights changed",
               lambda: _changed_weights_load(tmp_path), ModelMismatchError,
               ("model", "other weights", "fingerprint")))
