"""Right for the Right Reasons (Ross et al. 2017): penalise input gradients on shortcut regions."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._aliases import aliased
from latentsurgeon._validation import Interval, Options, check_finite
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import as_samples
from latentsurgeon.activations.masks import prepare_masks
from latentsurgeon.correct._base import (
    TRAINING_CONSTRAINTS,
    Correction,
    check_labels,
    criterion_loss,
)
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.training import train

__all__ = ["RRR_MASKINGS", "ExplanationRegularization", "rrr_penalty"]

logger = logging.getLogger(__name__)

#: What RRR differentiates: the true label's log-probability, or the sum over classes.
RRR_MASKINGS = ("true_label", "sum_log_probs")


def rrr_penalty(logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                masks: torch.Tensor, *, masking: str = "true_label",
                normalize: bool = False) -> torch.Tensor:
    """RRR's penalty of one batch: ``sum(masks * (d s(x) / dx)^2)`` (scalar, differentiable
    w.r.t. the parameters).

    Args:
        logits: ``(N, K)``, computed from ``inputs`` (which must require grad).
        inputs: ``(N, ...)`` the batch's inputs.
        labels: ``(N,)`` class labels (``masking="true_label"``).
        masks: 1 = shortcut element, the inputs' shape or broadcastable to it.
        masking: ``"true_label"`` (``s = log p(y|x)``) or ``"sum_log_probs"``.
        normalize: divide by the number of masked input elements.

    The one implementation: :class:`ExplanationRegularization`'s ``fit`` and the loss term
    :class:`~latentsurgeon.correct.RRRLoss` both call it.
    """
    logp = F.log_softmax(logits, dim=1)
    score = logp.gather(1, labels[:, None]).sum() if masking == "true_label" else logp.sum()
    (grad,) = torch.autograd.grad(score, inputs, create_graph=True)
    penalty = (masks * grad.pow(2)).sum()
    if normalize:
        covered = torch.broadcast_to(masks, grad.shape).sum()
        penalty = penalty / covered.clamp_min(1.0)
    return penalty


class ExplanationRegularization(Correction):
    """RRR: fine-tune with ``criterion + lambda_rrr * sum(mask * (d s(x) / dx)^2)``.

    ``s(x)`` is ``log p(y|x)`` of the true label (``masking="true_label"``, the default) or the
    sum over classes of ``log p_k(x)`` (``masking="sum_log_probs"``, Ross et al.'s code). The
    penalty is summed over the batch and the masked input elements; ``normalize=True`` divides it
    by the number of masked input elements in the batch, i.e. it becomes the mean squared input
    gradient over masked elements, so a lambda carries over between batch sizes, input sizes and
    artifact sizes.

    Inputs of any rank work (images ``(N, C, H, W)``, tabular rows ``(N, D)``, sequences): masks
    have the input's shape or its per-sample shape (see :func:`~latentsurgeon.activations.masks.
    prepare_masks`; images also take ``(H, W)``, ``(1, H, W)`` and ``(N, H, W)``).

    Input gradients of the whole batch come from one ``autograd.grad`` of the batch sum with
    ``create_graph=True``: each sample's own gradient because samples do not interact.
    BatchNorm layers therefore run in eval mode (frozen statistics) during ``fit``.

    Defaults (true label, lambda 1, 15 epochs, Adam 1e-3, batch 64) are the recipe for training
    a freshly initialised model, measured on decoy digits (``docs/correct.md``). To fine-tune an
    already trained model use ``masking="sum_log_probs", normalize=True, lambda_rrr=0.1,
    epochs=10`` (:func:`latentsurgeon.correct.default_settings` ``("rrr_finetune")``): on
    confidently classified samples ``log p(y|x)`` is saturated and its input gradient vanishes,
    so the true-label penalty has nothing to act on.

    shortcut_detect's spellings are accepted: ``n_epochs`` for ``epochs``, ``random_state`` for
    ``seed`` (the positional order is theirs too); ``target=`` (our earlier name of ``masking``)
    still works with a ``FutureWarning``.

    Args:
        lambda_rrr: weight of the gradient penalty (>= 0).
        lr: Adam learning rate.
        epochs: training epochs.
        batch_size: samples per step.
        head: which output holds the logits when the model returns a dict (key) or a tuple
            (int index; ``"logits"`` on a plain tuple takes element 0); ignored for tensors.
        device: where to train; None = the model's device (the model is moved there for the
            training and back afterwards).
        seed: seed of the batch order and of torch's RNG during ``fit``; None = fresh randomness.
        masking: ``"true_label"`` or ``"sum_log_probs"`` (see above).
        normalize: divide the penalty by the number of masked elements (see above).
        progress: progress bar over epochs.
        criterion: the task loss ``criterion(logits, labels) -> scalar`` (e.g. class-weighted
            ``nn.CrossEntropyLoss``); None = cross-entropy.

    Learned attributes:
        history_: per-epoch means of ``loss``, ``ce`` (the criterion's value) and ``penalty``.
        n_samples_: training samples seen per epoch.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        **TRAINING_CONSTRAINTS,
        "lambda_rrr": Interval(float, 0, None),
        "masking": Options(RRR_MASKINGS),
        "normalize": bool,
    }

    @aliased(supported={"n_epochs": "epochs", "random_state": "seed"},
             deprecated={"target": "masking"})
    def __init__(self, lambda_rrr: float = 1.0, lr: float = 1e-3, epochs: int = 15,
                 batch_size: int = 64, head: str | int | None = "logits",
                 device: str | torch.device | None = None,
                 seed: int | torch.Generator | None = 0,
                 masking: str = "true_label", normalize: bool = False,
                 progress: bool = True, *, criterion: Any = None) -> None:
        self.lambda_rrr = lambda_rrr
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.head = head
        self.device = device
        self.seed = seed
        self.masking = masking
        self.normalize = normalize
        self.progress = progress
        self.criterion = criterion

    modifies_weights: ClassVar[bool] = True

    @aliased(deprecated={"images": "data"})
    def fit(self, model: nn.Module, data: Any, labels: Any = None,
            shortcut_masks: Any = None) -> ExplanationRegularization:
        """Fine-tune ``model`` **in place** with the RRR penalty.

        The protocol every correction shares is ``fit(model, data)`` with the labels and masks
        travelling in ``data``; shortcut_detect's positional form ``fit(model, images, labels,
        masks)`` is the same call with the overrides given positionally.

        Args:
            model: a differentiable classifier ``(N, ...) -> (N, K)`` logits (or a tuple/dict
                holding them, see ``head``).
            data: a split or :class:`~latentsurgeon.activations.batching.Samples` with
                ``.images``, ``.labels`` and ``.masks`` (e.g. ``decoy_digits(...).train``), an
                ``(inputs, labels)`` tuple, a Dataset or DataLoader, or ``(N, ...)`` inputs
                (images, tabular rows ...) with ``labels`` and ``shortcut_masks`` given.
                ``images=`` (its earlier name) still works with a ``FutureWarning``.
            labels: ``(N,)`` integer class labels (tensor or numpy); default ``data.labels``.
            shortcut_masks: 1 = shortcut element; the inputs' shape or their per-sample shape;
                for images also ``(H, W)``, ``(1, H, W)`` or ``(N, H, W)`` (numpy or tensor,
                resized to the images with nearest interpolation when needed); default
                ``data.masks``.

        Returns:
            self. The model keeps its mode, hooks, ``requires_grad`` flags and device; if
            fitting raised, its weights are as before.
        """
        self._validate_params()
        samples = as_samples(data, labels=labels, masks=shortcut_masks, need_labels=True,
                             what="data")
        check_finite(samples.images, "RRR: the inputs")
        if samples.masks is None:
            raise LatentSurgeonError(
                "RRR needs shortcut_masks (1 = shortcut element) of the inputs' shape, their "
                "per-sample shape, or for images (H, W) / (N, H, W).")
        assert samples.labels is not None
        masks = prepare_masks(samples.masks, samples.images, name="shortcut_masks", owner="RRR")
        check_labels(model, samples, self.head)
        lam, masking, normalize = float(self.lambda_rrr), self.masking, bool(self.normalize)

        access = ModelAccess(model, head=self.head)

        def step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            x, y, m = batch
            x = x.detach().requires_grad_(True)
            logits = access.logits(x)
            task = criterion_loss(self.criterion, logits, y)
            penalty = rrr_penalty(logits, x, y, m, masking=masking, normalize=normalize)
            return {"loss": task + lam * penalty, "ce": task.detach(),
                    "penalty": penalty.detach()}

        # Parameters the user froze stay frozen.
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not params:
            raise LatentSurgeonError("The model has no parameter with requires_grad=True to "
                                     "fine-tune.")
        history = train(
            model, (samples.images, samples.labels, masks), step, params=params,
            epochs=self.epochs, lr=self.lr, optimizer="adam", batch_size=self.batch_size,
            seed=self.seed, device=self.device, freeze_batchnorm=True, restore_mode=True,
            progress=self.progress, desc="RRR")
        self.history_ = history.metrics
        self.n_samples_ = len(samples)
        self._record_weights(model)
        return self
