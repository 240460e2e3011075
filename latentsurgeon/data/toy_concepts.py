"""Generated concept data sets (the concept-model literature's toy problems), deterministic per seed.

Each set has inputs ``x``, binary concepts ``c`` computed from the same hidden variables, and a
task label ``y``. Nothing is downloaded; the same ``seed`` gives the same tensors.

=============  ========  ========  =====================================================  =========
name           features  concepts  task                                                   complete
=============  ========  ========  =====================================================  =========
``xor``        2         2         ``c1 XOR c2`` with ``c_i = x_i > 0.5``, ``x ~ U[0,1]^2``  yes
``trigonometry`` 7       3         ``h1 + h2 + h3 > 1``, ``c_i = h_i > 0``, ``h ~ N(0, 2^2)``   no
``dot``        4         2         ``v1 . v3 > 0``; ``c1 = v1 . (1,1) > 0``,               no
                                   ``c2 = v3 . (-1,-1) > 0``, ``x = [v1+v3, v1-v3]``
``checkmark``  3         3         ``D = A AND C`` with ``C = NOT B``; ``x = 2c - 1 + noise``  yes
=============  ========  ========  =====================================================  =========

"Complete" means the concepts determine the task. On the incomplete sets the best predictor that
sees only the concepts is capped: ``trigonometry`` at about 0.81 (the majority of the three signs,
a linear rule), ``dot`` at 0.75 (Bayes; ``y`` equals ``c1 XOR c2`` three times in four) and 0.625
for the best linear rule (three of the four concept patterns right). ``xor`` reaches 1.0 with a
non-linear rule and 0.75 with the best linear one.

Differences from pytorch_concepts' generators (whose formulas these follow): ``dot`` draws ``v1``
and ``v3`` independently (pytorch_concepts re-seeds before the second draw, so ``v3 = v1`` and
every label is 1); ``checkmark``'s inputs are the noisy concepts ``A, B, C`` only (pytorch_concepts
also feeds the task ``D`` in, which makes the bottleneck pointless), and its task is ``D``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from latentsurgeon._validation import Interval, Options, validate_params

__all__ = ["TOY_CONCEPT_SETS", "ConceptData", "ConceptSplit", "toy_concepts"]


class ConceptSplit(NamedTuple):
    """One split of a concept data set; a tuple ``(inputs, labels, concepts)``.

    The order puts the labels second, so a split passes for ``(inputs, labels)`` data wherever
    latentsurgeon reads labelled data (``metrics.accuracy(model, split)``).

    Attributes:
        inputs: ``(N, ...)`` float32 model inputs.
        labels: ``(N,)`` int64 task labels.
        concepts: ``(N, K)`` float32 concept labels in ``{0, 1}``.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    concepts: torch.Tensor


@dataclass
class ConceptData:
    """A concept data set: train and test splits and what their columns mean."""

    name: str
    train: ConceptSplit
    test: ConceptSplit
    concept_names: list[str]
    n_classes: int
    params: dict = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    @property
    def n_features(self) -> int:
        """Number of input values per sample (``prod(inputs.shape[1:])``)."""
        return int(math.prod(self.train.inputs.shape[1:]))

    def summary(self) -> dict:
        """Sizes and base rates (JSON-serialisable)."""
        return {
            "name": self.name,
            "n_train": len(self.train.labels),
            "n_test": len(self.test.labels),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "concepts": list(self.concept_names),
            "concept_rates": [round(float(v), 4) for v in self.train.concepts.mean(0)],
            "label_rates": [round(float((self.train.labels == k).float().mean()), 4)
                            for k in range(self.n_classes)],
            **self.params,
        }


Generated = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _xor(n: int, g: torch.Generator) -> Generated:
    x = torch.rand(n, 2, generator=g)
    c = x > 0.5
    y = c[:, 0] ^ c[:, 1]
    return x, c, y


def _trigonometry(n: int, g: torch.Generator) -> Generated:
    h = 2.0 * torch.randn(n, 3, generator=g)
    x = torch.stack([f(h[:, i]) + h[:, i] for i in range(3) for f in (torch.sin, torch.cos)]
                    + [(h ** 2).sum(1)], 1)
    return x, h > 0, h.sum(1) > 1


def _dot(n: int, g: torch.Generator) -> Generated:
    # Two independent draws (pytorch_concepts re-seeds in between, so there v3 == v1).
    v1 = 2.0 * torch.randn(n, 2, generator=g)
    v3 = 2.0 * torch.randn(n, 2, generator=g)
    x = torch.cat([v1 + v3, v1 - v3], 1)
    c = torch.stack([v1.sum(1) > 0, -v3.sum(1) > 0], 1)
    return x, c, (v1 * v3).sum(1) > 0


def _checkmark(n: int, g: torch.Generator) -> Generated:
    a = torch.rand(n, generator=g) < 0.5
    b = torch.rand(n, generator=g) < 0.5
    c = torch.stack([a, b, ~b], 1)
    return 2.0 * c.float() - 1.0, c, a & ~b


_GENERATORS: dict[str, tuple[Callable[[int, torch.Generator], Generated], list[str], float]] = {
    # name: (generator, concept names, default input noise)
    "xor": (_xor, ["x1>0.5", "x2>0.5"], 0.0),
    "trigonometry": (_trigonometry, ["h1>0", "h2>0", "h3>0"], 0.0),
    "dot": (_dot, ["v1.(1,1)>0", "v3.(-1,-1)>0"], 0.0),
    "checkmark": (_checkmark, ["A", "B", "C=not B"], 0.1),
}

#: The names :func:`toy_concepts` accepts.
TOY_CONCEPT_SETS = tuple(_GENERATORS)

_CONSTRAINTS = {
    "name": Options(TOY_CONCEPT_SETS),
    "n_train": Interval(int, 1, None),
    "n_test": Interval(int, 1, None),
    "seed": Interval(int, 0, None),
    "noise": [None, Interval(float, 0, None)],
}


def toy_concepts(name: str, *, n_train: int = 2000, n_test: int = 1000, seed: int = 0,
                 noise: float | None = None) -> ConceptData:
    """Generate one of the toy concept sets (see the module docstring for the formulas).

    Args:
        name: ``"xor"``, ``"trigonometry"``, ``"dot"`` or ``"checkmark"``.
        n_train, n_test: samples per split (both drawn from the same stream, train first).
        seed: the data are a function of ``(name, n_train, n_test, seed, noise)`` only.
        noise: standard deviation of Gaussian noise added to the inputs (after the concepts and
            the task are computed, so it blurs what the inputs tell about the concepts). None:
            the reference's value (0.1 for ``checkmark``, 0 otherwise).

    Returns:
        A :class:`ConceptData` with float32 inputs ``(N, F)``, float32 concepts ``(N, K)`` in
        ``{0, 1}`` and int64 labels ``(N,)`` in ``{0, 1}``.

    Raises:
        InvalidParameterError: an unknown name or a parameter out of range.
    """
    validate_params({"name": name, "n_train": n_train, "n_test": n_test, "seed": seed,
                     "noise": noise}, _CONSTRAINTS, owner="toy_concepts()")
    generate, names, default_noise = _GENERATORS[name]
    noise = default_noise if noise is None else float(noise)
    g = torch.Generator().manual_seed(int(seed))
    n = n_train + n_test
    x, c, y = generate(n, g)
    x = x.float()
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    c, y = c.float(), y.long()
    train = ConceptSplit(x[:n_train].contiguous(), y[:n_train].contiguous(),
                         c[:n_train].contiguous())
    test = ConceptSplit(x[n_train:].contiguous(), y[n_train:].contiguous(),
                        c[n_train:].contiguous())
    return ConceptData(name, train, test, list(names), n_classes=2,
                       params={"seed": int(seed), "noise": noise})
