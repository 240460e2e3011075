"""The one table of example-importance methods: name -> explainer, sign convention, needs.

Every caller that picks an example-importance method by name reads :data:`METHODS`:
:func:`top_examples_by_method`, the command line (``latentsurgeon explain examples
--method``, which spells the names with hyphens), the demo and the consistency experiment.
The sign convention is a column of the table and :meth:`ExampleMethod.top` is where it is
applied, so no caller has to know that influence functions rank helpful examples lowest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain._base import ExampleExplainer
from latentsurgeon.explain.influence import InfluenceFunctions
from latentsurgeon.explain.neighbours import NearestNeighbours
from latentsurgeon.explain.ranking import top_examples
from latentsurgeon.explain.simplex import SimplEx
from latentsurgeon.explain.tracin import TracIn

__all__ = ["DEFAULT_METHODS", "METHODS", "ExampleMethod", "cli_name", "method_from_cli",
           "top_examples_by_method"]

#: What a method can need, beyond the model and the data: ``"representation"``: the output of
#: ``layer`` (its only access to the model); ``"loss"``: per-sample losses differentiated at
#: the parameters of ``layer`` (training labels for ``loss="cross_entropy"``);
#: ``"checkpoints"``: optional saved weights it sums over (default: the present ones);
#: ``"hessian"``: the Hessian of the training loss at those parameters (memory ``P^2`` for the
#: exact solver: keep ``layer`` small).
NEEDS = ("representation", "loss", "checkpoints", "hessian")


@dataclass(frozen=True)
class ExampleMethod:
    """One example-importance method.

    Attributes:
        name: its name (underscores; the command line writes them with hyphens).
        label: how reports name it.
        explainer: the estimator class :meth:`build` returns.
        higher_is_helpful: the sign convention of its ``(n_test, n_train)`` scores. True: the
            highest score is the training example that supports the test example most
            (similarity, TracIn's gradient agreement). False: the lowest is (influence
            functions follow Koh & Liang: a negative score means upweighting the example
            lowers the test loss).
        needs: a subset of :data:`NEEDS`.
        default: whether :func:`top_examples_by_method` runs it when no ``methods`` are given
            (influence functions are left out: their Hessian is costly for a large layer).
        description: one line for help texts.
    """

    name: str
    label: str
    explainer: type[ExampleExplainer]
    higher_is_helpful: bool
    needs: tuple[str, ...]
    default: bool
    description: str
    _make: Callable[[str, dict[str, Any]], ExampleExplainer]

    def build(self, layer: str, *, loss: str = "cross_entropy",
              test_loss: str | None = "predicted", checkpoints: Any = "current",
              damping: float = 0.01, batch_size: int = 64, progress: bool = True
              ) -> ExampleExplainer:
        """The explainer at ``layer``: its output is the representation, or its parameters
        are differentiated. ``loss``/``test_loss`` (training and test losses), ``checkpoints``
        and ``damping`` reach the methods that use them; the others ignore them."""
        return self._make(layer, {"loss": loss, "test_loss": test_loss,
                                  "checkpoints": checkpoints, "damping": damping,
                                  "batch_size": batch_size, "progress": progress})

    def top(self, scores: torch.Tensor, k: int, *, least: bool = False) -> torch.Tensor:
        """``(n_test, k)`` training indices, most helpful first (``least=True``: least helpful
        first), by this method's sign convention; ties go to the lower index."""
        return top_examples(scores, k, largest=self.higher_is_helpful != least)


def _tracin(normalize: bool) -> Callable[[str, dict[str, Any]], ExampleExplainer]:
    def make(layer: str, o: dict[str, Any]) -> ExampleExplainer:
        return TracIn(o["checkpoints"], o["loss"], test_loss=o["test_loss"], params=layer,
                      normalize=normalize, batch_size=o["batch_size"], progress=o["progress"])
    return make


_TABLE = (
    ExampleMethod(
        "nearest_neighbours", "nearest neighbours (cosine)", NearestNeighbours, True,
        ("representation",), True, "cosine similarity of the layer's outputs",
        lambda layer, o: NearestNeighbours("cosine", layer, batch_size=o["batch_size"],
                                           progress=o["progress"])),
    ExampleMethod(
        "simplex", "SimplEx", SimplEx, True, ("representation",), True,
        "SimplEx weights: the test representation as a mixture of training ones",
        # SimplEx solves one problem over all training examples: large batches cost nothing
        lambda layer, o: SimplEx(layer, batch_size=max(o["batch_size"], 1024),
                                 progress=o["progress"])),
    ExampleMethod(
        "tracin", "TracIn (raw gradients)", TracIn, True, ("loss", "checkpoints"), True,
        "TracIn: dot products of loss gradients at the layer's parameters", _tracin(False)),
    ExampleMethod(
        "tracin_normalized", "TracIn (unit-normalised gradients)", TracIn, True,
        ("loss", "checkpoints"), True,
        "TracIn with unit-normalised gradients (their cosine)", _tracin(True)),
    ExampleMethod(
        "influence", "influence functions", InfluenceFunctions, False, ("loss", "hessian"),
        False, "influence functions (Koh & Liang): the most negative score helps most",
        lambda layer, o: InfluenceFunctions(o["loss"], test_loss=o["test_loss"], params=layer,
                                            damping=o["damping"], batch_size=o["batch_size"],
                                            progress=o["progress"])),
)

#: ``{name: ExampleMethod}``, read-only, in the order reports show them.
METHODS: Mapping[str, ExampleMethod] = MappingProxyType({m.name: m for m in _TABLE})
#: The methods :func:`top_examples_by_method` runs by default.
DEFAULT_METHODS: tuple[str, ...] = tuple(m.name for m in _TABLE if m.default)


def cli_name(name: str) -> str:
    """The command line's spelling of a method name: hyphens for underscores."""
    return name.replace("_", "-")


def method_from_cli(spelling: str) -> ExampleMethod:
    """The table entry the command line's ``spelling`` names (hyphens or underscores)."""
    name = spelling.replace("-", "_")
    if name not in METHODS:
        raise InvalidParameterError(
            f"method must be one of {', '.join(cli_name(m) for m in METHODS)}; got "
            f"{spelling!r}.")
    return METHODS[name]


def top_examples_by_method(
    model: nn.Module,
    layer: str,
    train: Any,
    test: Any,
    *,
    k: int = 10,
    methods: Sequence[str] = DEFAULT_METHODS,
    checkpoints: Any = "current",
    loss: str = "cross_entropy",
    test_loss: str | None = "predicted",
    damping: float = 0.01,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The top-``k`` (most helpful) training examples of every test example by each method,
    at one layer (the methods of :data:`METHODS`; by default :data:`DEFAULT_METHODS`).

    * ``"nearest_neighbours"``: cosine similarity of ``layer``'s outputs.
    * ``"simplex"``: SimplEx weights over ``layer``'s outputs.
    * ``"tracin"``: TracIn with the gradients of ``loss`` (training) and ``test_loss`` (test;
      default: cross-entropy with the predicted class) with respect to ``layer``'s parameters,
      at ``checkpoints`` (default: the present weights).
    * ``"tracin_normalized"``: the same with unit-normalised gradients (cosine similarity).
    * ``"influence"``: influence functions with the same losses and parameters, damped by
      ``damping``; its most negative scores come first (Koh & Liang's sign).

    Args:
        model: a classifier (for the gradient methods) or any network (the others).
        layer: one exact layer name; its output represents a sample and, for the gradient
            methods, its parameters are differentiated.
        train, test: data :func:`~latentsurgeon.activations.batching.iter_batches` reads;
            ``train`` carries labels for ``loss="cross_entropy"``.
        k: how many training examples per test example.
        methods: a non-empty subset of :data:`METHODS`.

    Returns:
        ``{method: (n_test, k) training indices, most helpful first}``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or isinstance(methods, str):
        raise InvalidParameterError(
            f"methods must be a non-empty subset of {tuple(METHODS)}; got {methods!r}.")
    out: dict[str, torch.Tensor] = {}
    for name in methods:
        method = METHODS[name]
        explainer = method.build(layer, loss=loss, test_loss=test_loss, checkpoints=checkpoints,
                                 damping=damping, batch_size=batch_size, progress=progress)
        out[name] = method.top(explainer.scores(model, train, test), k)
    return out
