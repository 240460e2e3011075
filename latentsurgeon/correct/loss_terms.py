"""The trained corrections' penalties as loss terms for the user's own training loop.

RR-ClArC and RRR fine-tune with ``task loss + lambda * penalty``. Their ``fit`` runs the library's
loop; these terms put the same penalty into any loop (a plain PyTorch loop, a Lightning
``training_step``, a HuggingFace ``Trainer.compute_loss``)::

    term = RRClarcLoss.from_correction(RRClarc("features", epochs=0).fit(model, data))
    with term.tracking(model):                       # the layer's gradient is recorded
        for x, y in loader:
            outputs = model(x)
            loss = F.cross_entropy(outputs, y) + term(model, (x, y), outputs)
            loss.backward(); opt.step(); opt.zero_grad()

    rrr = RRRLoss(lambda_rrr=1.0)
    for x, y, masks in loader:
        x.requires_grad_(True)                       # the input gradient is the penalised one
        outputs = model(x)
        loss = F.cross_entropy(outputs, y) + rrr(model, (x, y, masks), outputs)

Each term is an ``nn.Module`` called as ``term(model, batch, outputs) -> scalar`` (``lambda *
penalty``); ``outputs=None`` (or outputs the term cannot differentiate: not computed inside
``tracking``, inputs without ``requires_grad``) makes it run the forward pass it needs itself.
The penalty is the one implementation the corrections' ``fit`` uses
(:func:`~latentsurgeon.correct.rr.rr_gradient_penalty`,
:func:`~latentsurgeon.correct.rrr.rrr_penalty`), so a loop that adds a term on the batches
``fit`` would see trains the same weights as ``fit`` (``tests/correct/test_loss_terms.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from latentsurgeon._validation import check_finite
from latentsurgeon.activations.access import LayerOffsets, ModelAccess
from latentsurgeon.activations.batching import batch_inputs
from latentsurgeon.activations.masks import prepare_masks
from latentsurgeon.correct._base import random_stream
from latentsurgeon.correct.rr import (
    RRLossType,
    RRMaskingPattern,
    as_enum,
    rr_gradient_penalty,
)
from latentsurgeon.correct.rrr import RRR_MASKINGS, rrr_penalty
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NotFittedError
from latentsurgeon.hooks.outputs import classification_logits

__all__ = ["RRClarcLoss", "RRRLoss"]


def _weight(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(float(value)) or float(value) < 0:
        raise InvalidParameterError(f"{name} must be a finite number >= 0; got {value!r}.")
    return float(value)


def _batch_part(batch: Any, index: int, what: str, owner: str) -> torch.Tensor:
    if not isinstance(batch, (tuple, list)) or len(batch) <= index \
            or not isinstance(batch[index], torch.Tensor):
        raise InvalidParameterError(
            f"{owner}: batch must be a tuple (inputs, labels{', masks' if index == 2 else ''}, "
            f"...) of tensors; {what} (element {index}) is missing in a "
            f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}.")
    return batch[index]


class RRClarcLoss(nn.Module):
    """RR-ClArC's penalty ``lambda_rr * R(d m(y_hat) / d a, v)`` as a loss term (see
    :class:`~latentsurgeon.correct.RRClarc` for ``R``, ``m`` and the options).

    ``a`` is the output of ``layer`` in the pass that produced ``outputs``: run the forward
    passes inside ``with term.tracking(model):``, which adds a zero offset to the layer's output
    (nothing changes in the forward) so its gradient can be taken. Outside ``tracking`` (or
    with ``outputs=None``) the term runs ``model`` on the batch's inputs itself.

    Args:
        layer: the exact layer name.
        direction: ``v``, ``(D,)`` (flattened, ``pooling="flatten"``), ``(C,)`` (channel space,
            ``"max"``/``"mean"``) or ``(D,)`` per token (``"token"``); normalised here.
        lambda_rr: the weight (>= 0).
        loss, masking, target, head: as for :class:`~latentsurgeon.correct.RRClarc`.
        pooling: the space ``direction`` lives in.
        seed: draws the signs of ``masking="all_logits_random"`` (the correction's stream).

    ``last_penalty`` holds the latest unweighted penalty (detached), for logging.
    """

    def __init__(self, layer: str, direction: torch.Tensor, *, lambda_rr: float = 10.0,
                 loss: RRLossType | str = RRLossType.L2,
                 masking: RRMaskingPattern | str = RRMaskingPattern.MAX_LOGIT,
                 target: int | None = None, head: str | int | None = "logits",
                 pooling: str = "flatten", seed: int | torch.Generator | None = 0) -> None:
        super().__init__()
        if not isinstance(layer, str) or not layer:
            raise InvalidParameterError(
                f"RRClarcLoss: layer must be an exact layer name; got {layer!r}.")
        if not isinstance(direction, torch.Tensor) or direction.numel() == 0:
            raise InvalidParameterError(
                "RRClarcLoss: direction must be a non-empty tensor (the artifact direction at "
                f"the layer); got {type(direction).__name__}.")
        v = check_finite(direction.detach().float().reshape(-1), "RRClarcLoss: direction")
        norm = float(v.norm())
        if norm == 0:
            raise InvalidParameterError("RRClarcLoss: direction is zero.")
        self.masking = as_enum(RRMaskingPattern, masking, "masking")
        if self.masking is RRMaskingPattern.TARGET_LOGIT and target is None:
            raise InvalidParameterError(
                "RRClarcLoss: masking='target_logit' needs target=<class index>; got None.")
        self.loss = as_enum(RRLossType, loss, "loss")
        self.layer = layer
        self.lambda_rr = _weight(lambda_rr, "lambda_rr")
        self.target = target
        self.head = head
        self.pooling = pooling
        self.register_buffer("direction", v / norm)
        self._generator = random_stream(seed, 2)
        self._probes: dict[int, LayerOffsets] = {}
        self.last_penalty: torch.Tensor | None = None

    @classmethod
    def from_correction(cls, correction: Any) -> RRClarcLoss:
        """The term of a fitted :class:`~latentsurgeon.correct.RRClarc` (its direction and
        options; ``RRClarc(..., epochs=0).fit(model, data)`` fits the direction alone)."""
        from latentsurgeon.correct.rrclarc import RRClarc

        if not isinstance(correction, RRClarc):
            raise InvalidParameterError(
                f"RRClarcLoss.from_correction takes a fitted RRClarc; got "
                f"{type(correction).__name__}.")
        if "vectors_" not in correction.__dict__:
            raise NotFittedError(
                "RRClarcLoss.from_correction: the RRClarc is not fitted; fit it first "
                "(epochs=0 fits the direction without training).")
        layer = correction.layers_[0]
        vec = correction.vectors_[layer]
        return cls(layer, vec["direction"], lambda_rr=correction.lambda_rr,
                   loss=correction.loss, masking=correction.masking, target=correction.target,
                   head=correction.head, pooling=vec["pooling"], seed=correction.seed)

    @contextmanager
    def tracking(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block every forward pass of ``model`` records the offset at ``layer``
        that the term differentiates (the hooks go at the end, also after an exception)."""
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"RRClarcLoss.tracking: model must be a torch.nn.Module; got "
                f"{type(model).__name__}.")
        access = ModelAccess(model, [self.layer], head=self.head)
        # any number of passes: the term reads the latest and forgets the others
        outer = self._probes.get(id(model))
        with access.offsets(max_calls=None) as probe:
            self._probes[id(model)] = probe
            try:
                yield model
            finally:  # a nested block (the term's own pass) hands the outer one back
                if outer is None:
                    del self._probes[id(model)]
                else:
                    self._probes[id(model)] = outer

    def forward(self, model: nn.Module, batch: Any, outputs: Any = None) -> torch.Tensor:
        """``lambda_rr * penalty`` of the latest pass (scalar)."""
        probe = self._probes.get(id(model))
        if outputs is None or probe is None or not probe.offsets[probe.layers[0]]:
            with self.tracking(model):
                probe = self._probes[id(model)]
                outputs = probe.call(batch_inputs(batch))
                return self._penalty(probe, outputs)
        return self._penalty(probe, outputs)

    def _penalty(self, probe: LayerOffsets, outputs: Any) -> torch.Tensor:
        logits = classification_logits(outputs, self.head)
        try:
            penalty = rr_gradient_penalty(
                logits, probe.offset(), self.direction.to(logits.device), pooling=self.pooling,
                masking=self.masking, loss=self.loss, target=self.target,
                generator=self._generator)
        except RuntimeError as exc:  # outputs from a pass the offset is not part of
            raise LatentSurgeonError(
                "RRClarcLoss: the outputs do not depend on the latest pass through layer "
                f"{self.layer!r} ({exc}); pass the outputs of the latest forward pass inside "
                "tracking(model), or outputs=None.") from exc
        finally:
            probe.clear()
        self.last_penalty = penalty.detach()
        return self.lambda_rr * penalty

    def extra_repr(self) -> str:
        return (f"layer={self.layer!r}, lambda_rr={self.lambda_rr:g}, "
                f"masking={self.masking.value!r}, loss={self.loss.value!r}")


class RRRLoss(nn.Module):
    """RRR's penalty ``lambda_rrr * sum(masks * (d s(x) / dx)^2)`` as a loss term (see
    :class:`~latentsurgeon.correct.ExplanationRegularization` for ``s`` and the options).

    Called as ``term(model, (inputs, labels, masks), outputs)``. The input gradient needs
    ``outputs`` computed from inputs that require grad (``x.requires_grad_(True)`` before the
    forward); otherwise (or with ``outputs=None``) the term runs the model on a copy of the
    inputs that does. Masks: 1 = shortcut element, of the inputs' shape or a per-sample shape
    (as for RRR's ``fit``).

    ``last_penalty`` holds the latest unweighted penalty (detached), for logging.
    """

    def __init__(self, lambda_rrr: float = 1.0, *, masking: str = "true_label",
                 normalize: bool = False, head: str | int | None = "logits") -> None:
        super().__init__()
        if masking not in RRR_MASKINGS:
            raise InvalidParameterError(
                f"RRRLoss: masking must be one of {', '.join(map(repr, RRR_MASKINGS))}; got "
                f"{masking!r}.")
        if not isinstance(normalize, bool):
            raise InvalidParameterError(
                f"RRRLoss: normalize must be a bool; got {normalize!r}.")
        self.lambda_rrr = _weight(lambda_rrr, "lambda_rrr")
        self.masking = masking
        self.normalize = normalize
        self.head = head
        self.last_penalty: torch.Tensor | None = None

    @classmethod
    def from_correction(cls, correction: Any) -> RRRLoss:
        """The term with an :class:`~latentsurgeon.correct.ExplanationRegularization`'s
        options (``lambda_rrr``, ``masking``, ``normalize``, ``head``)."""
        from latentsurgeon.correct.rrr import ExplanationRegularization

        if not isinstance(correction, ExplanationRegularization):
            raise InvalidParameterError(
                f"RRRLoss.from_correction takes an ExplanationRegularization; got "
                f"{type(correction).__name__}.")
        return cls(correction.lambda_rrr, masking=correction.masking,
                   normalize=correction.normalize, head=correction.head)

    def forward(self, model: nn.Module, batch: Any, outputs: Any = None) -> torch.Tensor:
        """``lambda_rrr * penalty`` of the batch (scalar)."""
        x = _batch_part(batch, 0, "the inputs", "RRRLoss")
        y = _batch_part(batch, 1, "the labels", "RRRLoss")
        masks = prepare_masks(_batch_part(batch, 2, "the masks", "RRRLoss"), x,
                              name="masks", owner="RRRLoss")
        if outputs is None or not x.requires_grad:
            x = x.detach().requires_grad_(True)
            outputs = ModelAccess(model, head=self.head).logits(x)
        logits = classification_logits(outputs, self.head)
        try:
            penalty = rrr_penalty(logits, x, y, masks.to(x.device), masking=self.masking,
                                  normalize=self.normalize)
        except RuntimeError as exc:
            raise LatentSurgeonError(
                "RRRLoss: the outputs were not computed from the batch's inputs "
                f"({exc}); pass the outputs of model(inputs) with inputs.requires_grad_(True), "
                "or outputs=None.") from exc
        self.last_penalty = penalty.detach()
        return self.lambda_rrr * penalty

    def extra_repr(self) -> str:
        return (f"lambda_rrr={self.lambda_rrr:g}, masking={self.masking!r}, "
                f"normalize={self.normalize}")
