"""Intervention strategies: the values written into a concept layer's output where it is replaced.

A strategy is called with the layer's predictions ``(N, K)`` (and the context of the
:class:`~latentsurgeon.cbm.InterventionModule`) and returns the replacement values, shaped like
the predictions, **in the layer's output space**. A concept layer that outputs logits (a sigmoid
follows it) needs logits: a raw 0 there means probability 0.5, not "absent".

``space="output"`` (the default, as pytorch_concepts does) takes the values as given: they must
already be in the layer's output space. ``space="probs"`` says the values are probabilities and
converts them to the layer's logits, ``logit(clamp(p, eps, 1 - eps))``, so 0 and 1 become large
but finite logits (``eps=1e-6``: about -13.8 and 13.8).
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from latentsurgeon._validation import Interval, Options, Seed, check_finite, validate_params
from latentsurgeon.activations.batching import to_tensor
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = [
    "DistributionIntervention",
    "DoIntervention",
    "GroundTruthIntervention",
    "InterventionStrategy",
    "SPACES",
    "to_output_space",
]

#: What the values given to a strategy are: the layer's output as is, or probabilities.
SPACES = ("output", "probs")

_COMMON = {"space": Options(SPACES), "eps": Interval(float, 0, 0.5, closed="neither")}


def to_output_space(values: torch.Tensor, space: str, eps: float = 1e-6) -> torch.Tensor:
    """``values`` unchanged (``space="output"``) or probabilities turned into logits
    (``space="probs"``: ``logit(clamp(p, eps, 1 - eps))``, always finite).

    Raises:
        NonFiniteError: NaN or Inf values.
        InvalidParameterError: probabilities outside ``[0, 1]``.
    """
    if space not in ("output", "probs"):
        raise InvalidParameterError(
            f"to_output_space(): space must be one of 'output', 'probs'; got {space!r}.")
    check_finite(values, "the intervention values")
    if space == "output":
        return values
    dtype = values.dtype if values.is_floating_point() else torch.float32
    if bool(((values < 0) | (values > 1)).any()):
        bad = values[(values < 0) | (values > 1)][0].item()
        raise InvalidParameterError(
            f"space='probs' needs probabilities in [0, 1]; got the value {bad:g}. Pass values in "
            "the layer's output space with space='output'.")
    # float64: in float32, 1 - 1e-6 rounds and the two ends would not be symmetric
    return values.double().clamp(eps, 1 - eps).logit().to(dtype)


def _fit(values: torch.Tensor, predictions: torch.Tensor, what: str, *,
         per_sample: bool) -> torch.Tensor:
    """``values`` on the predictions' device and dtype, broadcast to their shape."""
    values = values.to(device=predictions.device, dtype=predictions.dtype)
    if per_sample and tuple(values.shape) != tuple(predictions.shape):
        raise ShapeMismatchError(
            f"{what} must have the shape of the layer's output for this batch, "
            f"{tuple(predictions.shape)}; got {tuple(values.shape)}. Set the values of each "
            "batch before its forward pass.")
    try:
        return values.expand_as(predictions)
    except RuntimeError:
        raise ShapeMismatchError(
            f"{what} of shape {tuple(values.shape)} do not broadcast to the layer's output "
            f"{tuple(predictions.shape)}; give a scalar, one value per concept "
            f"({tuple(predictions.shape[1:])}) or one row per sample.") from None


class InterventionStrategy(ABC):
    """Base class: ``strategy(predictions, **context) -> values`` shaped like ``predictions``,
    in the layer's output space. Subclasses implement :meth:`values`."""

    _parameter_constraints: dict[str, Any] = dict(_COMMON)

    def __init__(self, *, space: str = "output", eps: float = 1e-6) -> None:
        self.space = space
        self.eps = eps

    def _validate(self) -> None:
        validate_params(vars(self), self._parameter_constraints, owner=type(self).__name__)

    @abstractmethod
    def values(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        """``(N, K)`` replacement values for ``predictions (N, K)``."""

    def __call__(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        return to_output_space(self.values(predictions, **context), self.space, self.eps)

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        args = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
        return f"{type(self).__name__}({args})"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)}>"
    return repr(value)


class GroundTruthIntervention(InterventionStrategy):
    """Replace concepts with their true values (Koh et al.'s test-time intervention).

    Args:
        ground_truth: ``(N, K)`` true concepts of the batch about to be run; set
            ``strategy.ground_truth`` anew before each batch. With a concept layer that outputs
            logits, give 0/1 labels with ``space="probs"`` (or logits with ``space="output"``).
        space: ``"output"`` (values as given) or ``"probs"`` (probabilities to logits).
        eps: clamp of ``space="probs"``.

    Raises (when called):
        LatentSurgeonError: no ground truth was set.
        ShapeMismatchError: ground truth of another shape than the batch's concepts.
    """

    def __init__(self, ground_truth: torch.Tensor | None = None, *, space: str = "output",
                 eps: float = 1e-6) -> None:
        super().__init__(space=space, eps=eps)
        self.ground_truth = ground_truth
        self._validate()

    def values(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        if self.ground_truth is None:
            raise InvalidParameterError(
                "GroundTruthIntervention has no ground truth: set strategy.ground_truth to the "
                "batch's (N, K) concepts before the forward pass.")
        truth = to_tensor(self.ground_truth, "GroundTruthIntervention: ground_truth")
        return _fit(truth, predictions, "the ground truth", per_sample=True)


class DoIntervention(InterventionStrategy):
    """Set concepts to constants: ``do(C = value)``.

    Args:
        constants: a number, one value per concept ``(K,)``, ``(1, K)`` or a full ``(N, K)``
            tensor; broadcast to the layer's output (pytorch_concepts' name and shapes).
        space: ``"output"`` (values as given) or ``"probs"`` (probabilities to logits).
        eps: clamp of ``space="probs"``.
    """

    def __init__(self, constants: float | torch.Tensor, *, space: str = "output",
                 eps: float = 1e-6) -> None:
        super().__init__(space=space, eps=eps)
        self.constants = constants
        if not isinstance(constants, (numbers.Real, torch.Tensor)) or isinstance(constants, bool):
            raise InvalidParameterError(
                "DoIntervention: constants must be a number or a tensor; got "
                f"{type(constants).__name__}.")
        check_finite(torch.as_tensor(constants), "DoIntervention: constants")
        self._validate()

    def values(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        constants = torch.as_tensor(self.constants, dtype=predictions.dtype)
        return _fit(constants, predictions, "DoIntervention's constants", per_sample=False)


class DistributionIntervention(InterventionStrategy):
    """Replace concepts with samples of a distribution (e.g. the concepts' marginals).

    Args:
        distribution: a ``torch.distributions.Distribution`` whose samples are the new values,
            of a shape that ends the layer output's: ``()`` (one distribution for every
            concept), ``(K,)`` (one per concept) or ``(N, K)``; or a list of ``K`` scalar
            distributions, one per concept (pytorch_concepts' list form; each may be of another
            family).
        space: ``"output"`` (samples as given) or ``"probs"`` (probabilities to logits; e.g.
            ``Bernoulli(probs=rates)`` samples 0/1).
        eps: clamp of ``space="probs"``.
        seed: None draws from torch's global RNG; an int or a ``torch.Generator`` makes the
            stream of samples reproducible (each call draws the next samples; torch's global
            RNG state is left as it was). :meth:`reset` restarts the stream.
    """

    _parameter_constraints = {**_COMMON, "seed": Seed()}

    def __init__(self, distribution: torch.distributions.Distribution
                 | Sequence[torch.distributions.Distribution], *, space: str = "output",
                 eps: float = 1e-6, seed: int | torch.Generator | None = None) -> None:
        super().__init__(space=space, eps=eps)
        if isinstance(distribution, (list, tuple)):
            distribution = list(distribution)
            _check_per_concept(distribution)
        elif not isinstance(distribution, torch.distributions.Distribution):
            raise InvalidParameterError(
                "DistributionIntervention: distribution must be a torch.distributions."
                "Distribution or a list of one scalar distribution per concept; got "
                f"{type(distribution).__name__}.")
        self.distribution = distribution
        self.seed = seed
        self._validate()
        self._generator: torch.Generator | None = None

    def reset(self) -> None:
        """Restart the seeded stream of samples."""
        self._generator = None

    def _draw_seed(self) -> int:
        if isinstance(self.seed, torch.Generator):
            generator = self.seed
        else:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(int(self.seed))
            generator = self._generator
        return int(torch.randint(0, 2 ** 62, (1,), generator=generator))

    def values(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        draw = self._sampler(tuple(predictions.shape))
        if self.seed is None:
            sample = draw()
        else:
            cuda = [predictions.device.index or 0] if predictions.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self._draw_seed())
                sample = draw()
        return _fit(sample, predictions, "the samples", per_sample=False)

    def _sampler(self, shape: tuple[int, ...]) -> Callable[[], torch.Tensor]:
        """A function drawing one sample per value of a layer output of ``shape`` ``(..., K)``."""
        if isinstance(self.distribution, list):
            if len(self.distribution) != shape[-1]:
                raise ShapeMismatchError(
                    f"DistributionIntervention: {len(self.distribution)} per-concept "
                    f"distributions for a layer output of shape {shape}, whose last dimension "
                    f"holds {shape[-1]} concepts; give one distribution per concept.")
            lead = torch.Size(shape[:-1])
            return lambda: torch.stack([d.sample(lead) for d in self.distribution], dim=-1)
        dist_shape = tuple(self.distribution.batch_shape + self.distribution.event_shape)
        # The distribution's shape must end the output's; the dimensions before it are drawn.
        cut = len(shape) - len(dist_shape)
        if cut < 0 or shape[cut:] != dist_shape:
            raise ShapeMismatchError(
                f"DistributionIntervention: a distribution of shape {dist_shape} cannot give "
                f"values for a layer output of shape {shape}; use shape (), {shape[-1:]} or "
                f"{shape} (a shape that ends the output's).")
        return lambda: self.distribution.sample(torch.Size(shape[:cut]))


def _check_per_concept(distributions: list[Any]) -> None:
    """A list form holds one scalar distribution per concept (their samples are stacked)."""
    if not distributions:
        raise InvalidParameterError(
            "DistributionIntervention: distribution as a list needs one distribution per "
            "concept; got an empty list.")
    for i, d in enumerate(distributions):
        if not isinstance(d, torch.distributions.Distribution):
            raise InvalidParameterError(
                "DistributionIntervention: distribution must be a torch.distributions."
                "Distribution or a list of one scalar distribution per concept; got a list "
                f"whose item {i} is a {type(d).__name__}.")
        if tuple(d.batch_shape + d.event_shape) != ():
            raise ShapeMismatchError(
                "DistributionIntervention: each distribution of the list gives one concept's "
                f"values and must be scalar (shape ()); item {i} has shape "
                f"{tuple(d.batch_shape + d.event_shape)}.")
