"""detoxai's ``PCLARC`` on :class:`latentsurgeon.correct.PClarc`."""

from __future__ import annotations

from typing import Any

from latentsurgeon.compat.detoxai.clarc import CLARC, require_activations_and_cav
from latentsurgeon.correct import PClarc

__all__ = ["PCLARC"]


class PCLARC(CLARC):
    """Projective ClArC: ``a' = a - alpha * v v^T (a - mean_act_na)`` at each CAV layer, as hooks
    that stay on the model (the correction lives in them; :meth:`remove_hooks` undoes it).

    ``PCLARC(model, experiment_name, device, **kwargs)``: further keyword arguments (detoxai's
    interface passes its whole configuration) are ignored, as in detoxai.
    """

    def __init__(self, model: Any, experiment_name: str, device: str, **kwargs: Any) -> None:
        super().__init__(model, experiment_name, device)

    @require_activations_and_cav
    def apply_model_correction(self, cav_layers: list[str], alpha: float = 1.0, *,
                               gradient: str = "exact", **kwargs: Any) -> None:
        """Hook the projection onto every layer of ``cav_layers``.

        Args:
            cav_layers: layers ``compute_cavs`` fitted a CAV for.
            alpha: strength (1 = every sample's artifact component set to the clean mean's).
            gradient: ``"exact"`` (default: the backward pass is the projection's derivative)
                or ``"straight_through"`` (detoxai's).
            kwargs: ignored (detoxai's interface passes its configuration).

        Sets ``correction_``, the fitted :class:`~latentsurgeon.correct.PClarc`
        (``correction_.export(model)`` gives a hook-free corrected copy).
        """
        correction = PClarc(layers=cav_layers, alpha=alpha, gradient=gradient, progress=False,
                            cav={layer: self._cav_for(layer) for layer in cav_layers})
        correction.fit(self.model)
        self.hooks.append(correction.attach(self.model))
        self.correction_ = correction
