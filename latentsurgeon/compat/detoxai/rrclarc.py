"""detoxai's ``RRCLARC``, ``RRMaskingPattern`` and ``RRLossType`` on
:class:`latentsurgeon.correct.RRClarc` (whose enums are reused: same members, same values)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from latentsurgeon.compat.detoxai.clarc import CLARC, require_activations_and_cav, training_kwargs
from latentsurgeon.correct import RRClarc, RRLossType, RRMaskingPattern
from latentsurgeon.correct.rr import as_enum, latent_gradient, masked_output, rr_penalty
from latentsurgeon.errors import InvalidParameterError

__all__ = ["RRCLARC", "RRLossType", "RRMaskingPattern"]

_log = logging.getLogger(__name__)
_CONFIG_KEYS = ("lambda_rr", "rr_loss_type", "masking_pattern", "target_class")


class RRCLARC(CLARC):
    """Right-Reason ClArC: fine-tune with ``criterion + lambda_rr * R``, ``R`` penalising the
    latent gradient of a masked output along the CAV (see :class:`latentsurgeon.correct.RRClarc`).

    Args:
        model, experiment_name, device: see :class:`~latentsurgeon.compat.detoxai.clarc.CLARC`.
        rr_config: detoxai's settings, each optional: ``lambda_rr`` (1.0), ``rr_loss_type``
            (:attr:`RRLossType.L2`), ``masking_pattern`` (:attr:`RRMaskingPattern.MAX_LOGIT`),
            ``target_class`` (None; required by ``TARGET_LOGIT``). Members or their values.
        kwargs: ignored, as in detoxai.
    """

    def __init__(self, model: Any, experiment_name: str, device: str,
                 rr_config: dict | None = None, **kwargs: Any) -> None:
        config = {} if rr_config is None else rr_config
        if not isinstance(config, dict):
            raise InvalidParameterError(f"RRCLARC: rr_config must be a dict; got "
                                        f"{type(config).__name__}.")
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise InvalidParameterError(
                f"RRCLARC: rr_config has unknown keys {unknown}; expected some of "
                f"{list(_CONFIG_KEYS)}.")
        self.lambda_rr = config.get("lambda_rr", 1.0)
        self.rr_loss_type = as_enum(RRLossType, config.get("rr_loss_type", RRLossType.L2),
                                    "rr_config['rr_loss_type']")
        self.masking = as_enum(RRMaskingPattern,
                               config.get("masking_pattern", RRMaskingPattern.MAX_LOGIT),
                               "rr_config['masking_pattern']")
        self.target_class = config.get("target_class", None)
        # settings are checked here, before the model is touched, by the estimator's own rules
        self._correction(["layer"], None, 1, 1e-3, None)._validate_params()
        if self.masking is RRMaskingPattern.TARGET_LOGIT and self.target_class is None:
            raise InvalidParameterError(
                "RRCLARC: masking_pattern TARGET_LOGIT needs rr_config['target_class'] (a class "
                "index); got none.")
        super().__init__(model, experiment_name, device)

    def _correction(self, cav_layers: list[str], dataloader: Any, fine_tune_epochs: int,
                    ft_lr: float, seed: Any, cav: Any = None) -> RRClarc:
        return RRClarc(layer=cav_layers[0], cav=cav, lambda_rr=self.lambda_rr,
                       loss=self.rr_loss_type, masking=self.masking, target=self.target_class,
                       epochs=fine_tune_epochs, lr=ft_lr, optimizer="adam",
                       **training_kwargs(self, dataloader, seed))

    @require_activations_and_cav
    def apply_model_correction(self, cav_layers: list[str], dataloader: Any,
                               logger: object | bool = False, fine_tune_epochs: int = 1,
                               ft_lr: float = 1e-3, *, seed: int | None = None,
                               **kwargs: Any) -> None:
        """Fine-tune every parameter with Adam (``ft_lr``) for ``fine_tune_epochs``.

        Args:
            cav_layers: one layer (RR-ClArC corrects one, as in detoxai).
            dataloader: ``(inputs, labels[, artifact_labels])`` batches; its batch size is used.
            logger: accepted for detoxai's signature (training runs on latentsurgeon's loop;
                per-epoch ``loss``, ``ce``, ``rr`` in ``correction_.history_``).
            fine_tune_epochs, ft_lr: epochs and Adam's learning rate.
            seed: batch order and the random signs of ``ALL_LOGITS_RANDOM`` (None: fresh).
            kwargs: ignored (detoxai's interface passes its configuration).
        """
        if len(cav_layers) != 1:
            raise InvalidParameterError(
                f"RRCLARC.apply_model_correction(): RR-ClArC corrects one layer; cav_layers "
                f"names {len(cav_layers)}: {cav_layers}.")
        if logger not in (False, None, True):
            _log.info("RRCLARC: the Lightning logger is not used; losses are in "
                      "correction_.history_")
        self.cav_layer = cav_layers[0]
        correction = self._correction(cav_layers, dataloader, fine_tune_epochs, ft_lr, seed,
                                      cav=self._cav_for(self.cav_layer))
        correction.fit(self.model, dataloader)
        self.model.eval()  # detoxai: "Go back to eval mode"
        self.correction_ = correction

    def masked_criterion(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The output RR-ClArC differentiates, one scalar per sample: ``(N, K)`` -> ``(N,)``."""
        return masked_output(y_hat, self.masking, self.target_class)

    def rr_loss(self, gradient: torch.Tensor) -> torch.Tensor:
        """The penalty of latent gradients ``(N, ...)`` against the CAV of ``cav_layer``."""
        layer = getattr(self, "cav_layer", None)
        if layer is None:
            cavs = getattr(self, "cav", None) or {}
            if len(cavs) != 1:
                raise InvalidParameterError(
                    "RRCLARC.rr_loss(): which CAV? apply_model_correction() sets cav_layer; "
                    f"CAVs were computed for {list(cavs)}.")
            layer = next(iter(cavs))
        return rr_penalty(latent_gradient(gradient, "flatten"), self.cav[layer].reshape(-1),
                          self.rr_loss_type)
