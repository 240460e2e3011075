"""Intervention policies: which concepts to replace first, scored for a whole batch at once.

A policy is called with the layer's predictions ``(N, K)`` and the context built by the
:class:`~latentsurgeon.cbm.InterventionModule` (``build_context``'s dict) and returns one score per
sample and concept, ``(N, K)``. **The lowest scores are replaced first**
(:func:`~latentsurgeon.cbm.build_mask`).

=====================  =====================================================================
policy                 score (lowest first)
=====================  =====================================================================
``UniformPolicy``      0 everywhere: no preference (with ``quantile=`` every concept ties, so
                       all are replaced; with ``k=`` the first ``k`` concepts by index)
``RandomPolicy``       uniform random numbers, drawn per sample (seeded)
``UncertaintyPolicy``  distance of the concept's probability from 0.5: the least certain first
``GradientPolicy``     ``-|d task / d concept|``: the concepts the task output is most sensitive
                       to first; zeros (= uniform) when no gradients are given
=====================  =====================================================================

pytorch_concepts 1.0.0a6 (its master branch) scored ``GradientPolicy`` with ``+|grad|``, which
replaces the *least* influential concepts first, contrary to its docstring; 1.0.0a7 returns
``-|grad|``, as here.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from latentsurgeon._aliases import aliased
from latentsurgeon._validation import Interval, Options, Seed, check_finite, validate_params
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.hooks.outputs import select_logits

__all__ = [
    "GradientPolicy",
    "InterventionPolicy",
    "RandomPolicy",
    "UncertaintyPolicy",
    "UniformPolicy",
    "task_gradients",
]


class InterventionPolicy(ABC):
    """Base class: ``policy(predictions, **context) -> scores (N, K)``, lowest first."""

    _parameter_constraints: dict[str, Any] = {}

    def _validate(self) -> None:
        validate_params(vars(self), self._parameter_constraints, owner=type(self).__name__)

    @abstractmethod
    def scores(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        """``(N, K)`` scores of the concepts ``predictions (N, K)``; the lowest are intervened on first."""

    def __call__(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        scores = self.scores(predictions, **context)
        return check_finite(scores, f"{type(self).__name__}'s scores")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class UniformPolicy(InterventionPolicy):
    """Every concept scores 0: no preference."""

    def scores(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        return torch.zeros(predictions.shape, dtype=_float(predictions), device=predictions.device)


class RandomPolicy(InterventionPolicy):
    """Independent uniform scores per sample and concept: a random order for every sample.

    Args:
        seed: None draws from torch's global RNG; an int (or a ``torch.Generator``) makes the
            stream of scores reproducible: each call draws the next scores, and :meth:`reset`
            restarts the stream. Scores are drawn on the CPU and moved to the predictions'
            device, so a seed gives the same order on every device.
    """

    _parameter_constraints = {"seed": Seed()}

    def __init__(self, seed: int | torch.Generator | None = None) -> None:
        self.seed = seed
        self._validate()
        self._generator: torch.Generator | None = None

    def reset(self) -> None:
        """Restart the seeded stream."""
        self._generator = None

    def _source(self) -> torch.Generator | None:
        if self.seed is None or isinstance(self.seed, torch.Generator):
            return self.seed
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.seed))
        return self._generator

    def scores(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        drawn = torch.rand(predictions.shape, generator=self._source())
        return drawn.to(device=predictions.device, dtype=_float(predictions))


class UncertaintyPolicy(InterventionPolicy):
    """The concepts whose predicted probability is closest to 0.5 first.

    Args:
        layer_output: what the concept layer outputs: ``"logits"`` (a sigmoid follows it; the
            score is ``|logit|``, which orders concepts as ``|p - 0.5|`` does) or ``"probs"``
            (the score is ``|p - 0.5|``; values outside ``[0, 1]`` are refused when called:
            they are not probabilities).
    """

    _parameter_constraints = {"layer_output": Options(["logits", "probs"])}

    def __init__(self, layer_output: str = "logits") -> None:
        self.layer_output = layer_output
        self._validate()

    def scores(self, predictions: torch.Tensor, **context: Any) -> torch.Tensor:
        if self.layer_output == "probs":
            _check_probabilities(predictions)
        centre = 0.0 if self.layer_output == "logits" else 0.5
        return (predictions.detach().to(_float(predictions)) - centre).abs()


class GradientPolicy(InterventionPolicy):
    """The concepts with the largest ``|d task / d concept|`` first: score ``-|concept_grads|``.

    ``concept_grads`` (shaped like the predictions) comes from the intervention's
    ``build_context`` (see :func:`task_gradients`, or pytorch_concepts' example in
    ``docs/cbm.md``). Without a context every score is 0, i.e. :class:`UniformPolicy`; a
    context without ``concept_grads`` (a misspelt key) is refused rather than read as uniform.

    Raises (when called):
        InvalidParameterError: a non-empty context without ``concept_grads``.
        ShapeMismatchError: ``concept_grads`` not shaped like the predictions.
    """

    def scores(self, predictions: torch.Tensor, concept_grads: torch.Tensor | None = None,
               **context: Any) -> torch.Tensor:
        if concept_grads is None:
            if context:
                # a context without the one key this policy reads (a misspelt key, another
                # policy's context) would silently rank like UniformPolicy
                raise InvalidParameterError(
                    "GradientPolicy: the context must hold 'concept_grads' (the (N, K) task "
                    "gradients it ranks by, e.g. from build_context=task_gradients(...)); got "
                    f"only the keys {sorted(context)}.")
            return torch.zeros(predictions.shape, dtype=_float(predictions),
                               device=predictions.device)
        if not isinstance(concept_grads, torch.Tensor):
            raise InvalidParameterError(
                "GradientPolicy: concept_grads must be an (N, K) tensor; got "
                f"{type(concept_grads).__name__}.")
        if tuple(concept_grads.shape) != tuple(predictions.shape):
            raise ShapeMismatchError(
                f"GradientPolicy: concept_grads must have the predictions' shape "
                f"{tuple(predictions.shape)}; got {tuple(concept_grads.shape)}.")
        check_finite(concept_grads, "concept_grads")
        return -concept_grads.detach().to(device=predictions.device,
                                          dtype=_float(predictions)).abs()


def _takes_more_than_one(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a second positional argument (or ``*args``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 1


def _check_probabilities(predictions: torch.Tensor) -> None:
    """Probabilities lie in [0, 1]: values outside are logits (or another space), whose distance
    from 0.5 would rank the concepts wrongly without a word."""
    values = predictions.detach()
    if values.numel() and bool(((values < 0) | (values > 1)).any()):
        raise InvalidParameterError(
            "UncertaintyPolicy(layer_output='probs'): the concept layer's output must be "
            f"probabilities in [0, 1]; got values in {float(values.min()):g}.."
            f"{float(values.max()):g}. If the layer outputs logits, use "
            "UncertaintyPolicy(layer_output='logits').")


def _float(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


BuildContext = Callable[..., dict]


@aliased(deprecated={"head": "task_head"})
def task_gradients(task_head: str | Callable[..., Any] = "task_head", *,
                   target: str | int = "predicted", output: str | int | None = "logits"
                   ) -> BuildContext:
    """A ``build_context`` for :class:`GradientPolicy`: the gradient of the task output with
    respect to the concept layer's output, per sample.

    Args:
        task_head: how to get task logits from the concept layer's output ``pred``: the name
            of a module registered on the :class:`~latentsurgeon.cbm.InterventionModule` (its
            ``extra_modules``; called as ``module.<task_head>(pred)``, as in pytorch_concepts'
            example), or a callable: ``task_head(pred)`` if it takes one argument, else
            ``task_head(pred, *layer_inputs, **layer_kwargs)`` (e.g. a CEM's ``predict_task``,
            which also needs what the concept layer received). ``head=`` is its deprecated
            spelling (``head`` means where the logits are, everywhere else).
        target: the output differentiated. ``"predicted"``: the log-probability of each sample's
            predicted class (``log_softmax``; a single-logit head is differentiated as it is); an
            int: the log-probability of that class.
        output: where the logits are if the task head returns a tuple or dict
            (``select_logits``; the concept other calls spell ``head``, which names the task head
            here until its deprecated alias is removed).

    Returns:
        ``build_context(module, predictions, *args, **kwargs) -> {"concept_grads": (N, K)}``.
        Gradients are computed under ``torch.enable_grad()`` (also inside ``torch.no_grad()``)
        on a detached copy of the predictions, so nothing else receives gradients. Samples must
        not interact in the head (BatchNorm in train mode would mix them).

    Raises (when called):
        NonFiniteError: NaN or Inf gradients.
        InvalidParameterError: an int ``target`` that is not a class of the task head.
    """
    validate_params({"target": target}, {"target": [Options(["predicted"]),
                                                   Interval(int, 0, None)]},
                    owner="task_gradients()")
    if not (isinstance(task_head, str) or callable(task_head)):
        raise InvalidParameterError(
            "task_gradients(): task_head must be a module name or a callable; got "
            f"{task_head!r}.")
    pass_inputs = not isinstance(task_head, str) and _takes_more_than_one(task_head)

    def build_context(module: nn.Module, predictions: torch.Tensor, *args: Any,
                      **kwargs: Any) -> dict:
        with torch.enable_grad():
            pred = predictions.detach().requires_grad_(True)
            if isinstance(task_head, str):
                if not hasattr(module, task_head):
                    raise InvalidParameterError(
                        f"task_gradients(): the intervention has no module {task_head!r}; "
                        f"register it with extra_modules={{{task_head!r}: task_head}}.")
                out = getattr(module, task_head)(pred)
            elif pass_inputs:
                out = task_head(pred, *args, **kwargs)
            else:
                out = task_head(pred)
            logits = select_logits(out, output)
            if logits.dim() == 1 or logits.shape[1] == 1:
                objective = logits.reshape(len(logits), -1)[:, 0]
            else:
                if target != "predicted" and int(target) >= logits.shape[1]:
                    raise InvalidParameterError(
                        f"task_gradients(): target must be a class of the task head, in [0, "
                        f"{logits.shape[1] - 1}] (it outputs {logits.shape[1]} logits); got "
                        f"{target}.")
                log_probs = logits.log_softmax(dim=1)
                index = (log_probs.argmax(dim=1, keepdim=True) if target == "predicted"
                         else torch.full((len(logits), 1), int(target), device=logits.device))
                objective = log_probs.gather(1, index)[:, 0]
            # Samples do not interact, so the gradient of the sum is each sample's own gradient.
            (grads,) = torch.autograd.grad(objective.sum(), pred)
        return {"concept_grads": check_finite(grads.detach(), "the task gradients")}

    return build_context
