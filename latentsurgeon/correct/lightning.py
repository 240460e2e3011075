"""A Lightning callback that adds a correction's loss term to a ``LightningModule``'s training,
with no change to the module (``pip install latentsurgeon[lightning]``).

::

    term = RRClarcLoss.from_correction(RRClarc("model.features", epochs=0).fit(module, data))
    trainer = lightning.Trainer(callbacks=[CorrectionCallback(term)], max_epochs=5)
    trainer.fit(module, loader)

After the module's own loss is backpropagated, the callback runs the term on the same batch
(its own forward pass: the module's graph is gone by then) and backpropagates it too, before the
optimizer steps, so every step descends ``loss + term``. The term's gradients are added to the
module's (two backward passes instead of one: equal to ``fit`` up to floating-point rounding,
see ``tests/correct/test_loss_terms.py``). The penalty is divided by
``accumulate_grad_batches`` as Lightning divides the loss. 16-bit mixed precision (a gradient
scaler) is refused: the term's backward would bypass the scaler.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn

from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError

__all__ = ["CorrectionCallback"]

_SCALED_PRECISIONS = ("16-mixed", "16", 16)


class CorrectionCallback(pl.Callback):
    """Add ``term(network, batch)`` to every training step of a ``LightningModule``.

    Args:
        term: a loss term (:class:`~latentsurgeon.correct.RRClarcLoss`,
            :class:`~latentsurgeon.correct.RRRLoss`, or any ``nn.Module``/callable
            ``term(model, batch, outputs) -> scalar``; it is called with ``outputs=None`` and
            runs the forward pass it needs).
        network: the attribute of the LightningModule holding the network the term's layer
            names refer to (detoxai's modules keep it in ``.model``); None: the LightningModule
            itself.
    """

    def __init__(self, term: Any, *, network: str | None = None) -> None:
        super().__init__()
        if not callable(term):
            raise InvalidParameterError(
                f"CorrectionCallback: term must be a loss term term(model, batch, outputs); got "
                f"{type(term).__name__}.")
        if network is not None and (not isinstance(network, str) or not network):
            raise InvalidParameterError(
                f"CorrectionCallback: network must be an attribute name or None; got "
                f"{network!r}.")
        self.term = term
        self.network = network
        self._batch: Any = None

    def _model(self, pl_module: nn.Module) -> nn.Module:
        if self.network is None:
            return pl_module
        model = getattr(pl_module, self.network, None)
        if not isinstance(model, nn.Module):
            raise LatentSurgeonError(
                f"CorrectionCallback: the LightningModule has no network "
                f"{self.network!r} (an nn.Module attribute); pass network=<attribute> or None.")
        return model

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.precision in _SCALED_PRECISIONS:
            raise LatentSurgeonError(
                f"CorrectionCallback: precision={trainer.precision!r} scales the loss with a "
                "gradient scaler that the term's backward would bypass; train in 32-bit (or "
                "bf16), or add the term to training_step's loss yourself.")
        if not pl_module.automatic_optimization:
            raise LatentSurgeonError(
                "CorrectionCallback: the module uses manual optimization; add the term to the "
                "loss in training_step yourself (term(model, batch, outputs)).")
        self._model(pl_module)  # fail before the first step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch = batch

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None:
            return
        value = self.term(self._model(pl_module), self._batch, None)
        (value / trainer.accumulate_grad_batches).backward()
        self._batch = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch = None
