"""Right for the Right Reasons (Ross et al. 2017): penalise input gradients on shortcut regions."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.activations.batching import as_samples, to_tensor
from latentsurgeon.correct._base import Correction
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks.outputs import classification_logits
from latentsurgeon.models.training import train

__all__ = ["RRR_TARGETS", "ExplanationRegularization", "prepare_masks"]

logger = logging.getLogger(__name__)

RRR_TARGETS = ("true_label", "sum_log_probs")


def prepare_masks(masks: Any, images: torch.Tensor) -> torch.Tensor:
    """Masks broadcastable to ``images`` ``(N, C, H, W)``: returns ``(N, 1 or C, H, W)`` float.

    Accepts ``(H, W)`` (one mask for every image), ``(N, H, W)``, or ``(N, 1 or C, H, W)``; numpy
    or tensor, bool or float (1 = shortcut region). Masks of another spatial size are resized to
    the images' with nearest-neighbour interpolation.
    """
    m = to_tensor(masks, "shortcut_masks").detach().float()
    if images.dim() != 4:
        raise ShapeMismatchError(
            f"RRR needs images of shape (N, C, H, W); got {tuple(images.shape)}.")
    n, c, h, w = images.shape
    if m.dim() == 2:
        m = m[None].expand(n, -1, -1)
    if m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[0] != n or m.shape[1] not in (1, c):
        raise ShapeMismatchError(
            f"shortcut_masks must be (H, W), (N, H, W) or (N, 1|C, H, W) with N={n}, C={c}; got "
            f"{tuple(to_tensor(masks, 'shortcut_masks').shape)}.")
    if tuple(m.shape[-2:]) != (h, w):
        logger.info("resizing shortcut masks from %s to %s (nearest)", tuple(m.shape[-2:]), (h, w))
        m = F.interpolate(m, size=(h, w), mode="nearest")
    return m.contiguous()


class ExplanationRegularization(Correction):
    """RRR: fine-tune with ``CE + lambda_rrr * sum(mask * (d s(x) / dx)^2)``.

    ``s(x)`` is ``log p(y|x)`` of the true label (``target="true_label"``, the default) or the sum
    over classes of ``log p_k(x)`` (``target="sum_log_probs"``, Ross et al.'s code). The penalty is
    summed over the batch, channels and pixels; ``normalize=True`` divides it by the number of
    masked input elements in the batch (``batch size x mean mask area x channels covered``), i.e.
    it becomes the mean squared input gradient over masked elements, so a lambda carries over
    between batch sizes, image sizes and artifact sizes.

    Input gradients of the whole batch come from one ``autograd.grad`` of the batch sum with
    ``create_graph=True``: each sample's own gradient because samples do not interact.
    BatchNorm layers therefore run in eval mode (frozen statistics) during ``fit``.

    Defaults (true label, lambda 1, 15 epochs, Adam 1e-3, batch 64) are the recipe for training
    a freshly initialised model, measured on decoy digits (``docs/correct.md``). To fine-tune an
    already trained model use ``target="sum_log_probs", normalize=True, lambda_rrr=0.1,
    n_epochs=10`` (:func:`latentsurgeon.correct.default_settings` ``("rrr_finetune")``): on
    confidently classified samples ``log p(y|x)`` is saturated and its input gradient vanishes,
    so the true-label penalty has nothing to act on (on the watermark decoys it then left the
    shortcut in place at lambda 1 to 100).

    Args:
        lambda_rrr: weight of the gradient penalty.
        lr: Adam learning rate.
        n_epochs: training epochs.
        batch_size: samples per step.
        head: which output holds the logits when the model returns a dict (key) or a tuple
            (int index); ignored for tensor outputs.
        device: where to train (the model is moved there); None = the model's device.
        random_state: seed of the batch order and of torch's RNG during ``fit``; None = random.
        target: ``"true_label"`` or ``"sum_log_probs"`` (see above).
        normalize: divide the penalty by the number of masked elements (see above).
        progress: progress bar over epochs.

    Learned attributes:
        history_: per-epoch means of ``loss``, ``ce`` and ``penalty``.
        n_samples_: training samples seen per epoch.
    """

    def __init__(self, lambda_rrr: float = 1.0, lr: float = 1e-3, n_epochs: int = 15,
                 batch_size: int = 64, head: str | int = "logits",
                 device: str | torch.device | None = None, random_state: int | None = 0,
                 target: str = "true_label", normalize: bool = False,
                 progress: bool = True) -> None:
        self.lambda_rrr = lambda_rrr
        self.lr = lr
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.head = head
        self.device = device
        self.random_state = random_state
        self.target = target
        self.normalize = normalize
        self.progress = progress

    def fit(self, model: nn.Module, images: Any, labels: Any = None,
            shortcut_masks: Any = None) -> ExplanationRegularization:
        """Fine-tune ``model`` **in place** with the RRR penalty.

        Args:
            model: a differentiable classifier ``(N, C, H, W) -> (N, K)`` logits (or a tuple/dict
                holding them, see ``head``).
            images: ``(N, C, H, W)`` inputs, or a split with ``.images``, ``.labels`` and
                ``.masks`` (e.g. ``decoy_digits(...).train``).
            labels: ``(N,)`` integer class labels (tensor or numpy); default ``images.labels``.
            shortcut_masks: 1 = shortcut region; ``(N, H, W)`` or ``(H, W)`` (numpy or tensor,
                resized to the images with nearest interpolation when needed); default
                ``images.masks``.

        Returns:
            self. The model is left in eval mode, with its previous hooks and ``requires_grad``
            flags; if fitting raised, its weights are as before.
        """
        if self.target not in RRR_TARGETS:
            raise LatentSurgeonError(f"target must be one of {RRR_TARGETS}, got {self.target!r}.")
        samples = as_samples(images, labels=labels, masks=shortcut_masks, need_labels=True,
                             what="images")
        if samples.masks is None:
            raise LatentSurgeonError(
                "RRR needs shortcut_masks (1 = shortcut region), (N, H, W) or (H, W).")
        assert samples.labels is not None
        masks = prepare_masks(samples.masks, samples.images)
        x_all, y_all = samples.images, samples.labels
        lam, true_label, normalize = float(self.lambda_rrr), self.target == "true_label", \
            bool(self.normalize)
        channels = x_all.shape[1]

        def step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            x, y, m = batch
            x = x.requires_grad_(True)
            logp = F.log_softmax(classification_logits(model(x), self.head), dim=1)
            ce = F.nll_loss(logp, y)
            score = logp.gather(1, y[:, None]).sum() if true_label else logp.sum()
            (grad,) = torch.autograd.grad(score, x, create_graph=True)
            penalty = (m * grad.pow(2)).sum()
            if normalize:
                covered = m.sum() * (channels if m.shape[1] == 1 else 1)
                penalty = penalty / covered.clamp_min(1.0)
            return {"loss": ce + lam * penalty, "ce": ce.detach(), "penalty": penalty.detach()}

        # Parameters the user froze stay frozen.
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not params:
            raise LatentSurgeonError("The model has no parameter with requires_grad=True to "
                                     "fine-tune.")
        history = train(
            model, (x_all, y_all, masks), step, params=params, epochs=self.n_epochs, lr=self.lr,
            optimizer="adam", batch_size=self.batch_size, seed=self.random_state,
            device=self.device, freeze_batchnorm=True, restore_mode=True,
            progress=self.progress, desc="RRR")
        self.history_ = history.metrics
        self.n_samples_ = len(samples)
        return self
