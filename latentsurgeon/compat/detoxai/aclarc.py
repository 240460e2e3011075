"""detoxai's ``ACLARC`` on :class:`latentsurgeon.correct.AClarc`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from latentsurgeon.compat.detoxai.clarc import CLARC, require_activations_and_cav, training_kwargs
from latentsurgeon.correct import AClarc

__all__ = ["ACLARC"]

_log = logging.getLogger(__name__)  # not ``logger``: that is a parameter of detoxai's signature


def lightning_optimizer(lightning_model: Any) -> torch.optim.Optimizer | None:
    """The optimizer a LightningModule's own ``configure_optimizers`` builds (what detoxai's
    A-ClArC fine-tunes with), or None when it defines none."""
    method = getattr(type(lightning_model), "configure_optimizers", None)
    base = next((getattr(cls, "configure_optimizers", None) for cls in type(lightning_model).__mro__
                 if cls.__name__ == "LightningModule"), None)
    if method is None or method is base:
        return None
    configured = lightning_model.configure_optimizers()
    if isinstance(configured, dict):
        configured = configured.get("optimizer")
    while isinstance(configured, (list, tuple)) and configured:
        configured = configured[0]
    return configured if isinstance(configured, torch.optim.Optimizer) else None


class ACLARC(CLARC):
    """Augmentative ClArC: fine-tune while every sample gets the artifact's component at the CAV
    layers (``a' = a - alpha * v v^T (a - mean_act_a)``), then remove the hooks: the correction
    lives in the weights.

    ``ACLARC(model, experiment_name, device, **kwargs)``: further keyword arguments are ignored,
    as in detoxai.
    """

    def __init__(self, model: Any, experiment_name: str, device: str, **kwargs: Any) -> None:
        super().__init__(model, experiment_name, device)

    @require_activations_and_cav
    def apply_model_correction(self, cav_layers: list[str], dataloader: Any,
                               logger: object | bool = False, fine_tune_epochs: int = 1,
                               alpha: float = 1.0, *, ft_lr: float = 1e-3,
                               seed: int | None = None, gradient: str = "exact",
                               **kwargs: Any) -> None:
        """Fine-tune every parameter for ``fine_tune_epochs`` with the augmentation in place.

        Args:
            cav_layers: layers ``compute_cavs`` fitted a CAV for.
            dataloader: ``(inputs, labels[, artifact_labels])`` batches; its batch size is used.
            logger: accepted for detoxai's signature; training runs on latentsurgeon's loop
                (per-epoch losses in ``correction_.history_``), not on a Lightning Trainer.
            fine_tune_epochs: epochs.
            alpha: strength of the augmentation.
            ft_lr: Adam's learning rate when the LightningModule defines no
                ``configure_optimizers`` (or a plain ``nn.Module`` was given); otherwise its own
                optimizer is used, as in detoxai.
            seed: batch order (None: fresh randomness, as detoxai).
            gradient: ``"exact"`` (default) or ``"straight_through"`` (detoxai's).
            kwargs: ignored (detoxai's interface passes its configuration).

        Sets ``correction_``, the fitted :class:`~latentsurgeon.correct.AClarc`.
        """
        if logger not in (False, None, True):
            _log.info("ACLARC: the Lightning logger is not used; losses are in "
                      "correction_.history_")
        optimizer = lightning_optimizer(getattr(self, "lightning_model", None))
        correction = AClarc(
            layers=cav_layers, alpha=alpha, epochs=fine_tune_epochs, lr=ft_lr,
            optimizer=optimizer if optimizer is not None else "adam", augment_fraction=1.0,
            gradient=gradient, cav={layer: self._cav_for(layer) for layer in cav_layers},
            **training_kwargs(self, dataloader, seed))
        correction.fit(self.model, dataloader)
        self.model.eval()  # detoxai: "Go back to eval mode"
        self.correction_ = correction
        self.remove_hooks()

