"""P-ClArC: project the artifact out of one or several layers' activations, no training."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from latentsurgeon._aliases import aliased
from latentsurgeon._validation import Options, check_finite
from latentsurgeon.activations.batching import analysis_device, to_tensor
from latentsurgeon.concepts import CAV
from latentsurgeon.correct._base import TOKEN_MODES, ClarcCorrection, layer_activations
from latentsurgeon.correct.modules import ClarcProjection
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import HookGroup, edited_copy
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["PClarc"]


class PClarc(ClarcCorrection):
    """Projective ClArC: remove the artifact's component at a layer (or several), no training.

    ``a' = a - alpha * v v^T (a - mean_clean)`` on the layer's flattened output ``(N, D)``; for a
    channel-pooled CAV (``pooling="max"``/``"mean"``, ``v`` of shape ``(C,)``) the same projection
    is applied in channel space at every spatial position of ``(N, C, H, W)``. The backward pass
    is the projection's exact derivative (``gradient="exact"``), so explanations of the corrected
    model explain the corrected function; ``gradient="straight_through"`` passes gradients as if
    there were no correction (detoxai's behaviour).

    Measured on decoy digits (watermark, DigitCNN at ``"features"``, defaults): see
    :func:`latentsurgeon.correct.default_settings` and ``docs/correct.md``.

    Args:
        layer: the exact name of the layer whose output is corrected (``"features"``); detoxai's
            ``layer_name=`` is accepted.
        cav: the artifact's CAV at ``layer``: fitted (its vectors are used), or unfitted (the
            recipe ``fit`` fits on the layer's activations; what ``sklearn.base.clone`` of a
            fitted one gives); for several layers a dict ``{layer: CAV}``. None: ``fit`` fits
            ``CAV(cav_method, pooling)`` per layer.
        alpha: strength (1 = the artifact component is set exactly to the clean mean's).
        layers: several layers at once (a list of names or a selector: globs, ``re:`` regexes,
            module classes), one direction each; detoxai's ``cav_layers=``/``layer_names=`` are
            accepted. Give ``layer`` or ``layers``, not both.
        cav_method: CAV method when fitting here (``"mass_mean"``: mean(artifact) - mean(clean)).
        pooling: CAV pooling when fitting here (``"flatten"``, ``"max"``, ``"mean"``).
        cav_samples: samples the CAV is fitted on: ``"artifact_classes"`` (default: samples of the
            classes in which the artifact occurs; the whole data when it occurs in every class or
            no class labels are given), ``"all"``, or a class index.
        batch_size: samples per forward pass when extracting activations.
        device: None (the model's device) or the model's device: fitting is an analysis pass
            and never moves the model (another device is a ``DeviceMismatchError``).
        progress: show a progress bar.
        gradient: ``"exact"`` or ``"straight_through"`` (see above).
        tokens: per-token projection for sequence activations ``(N, T, D)`` (features last, as
            transformer blocks return them): the direction is a ``(D,)`` vector and the
            projection acts on every token's ``D``-vector, with the mean clean token as the
            reference. ``"all"``: the direction is fitted on each sample's mean over its
            tokens and projected out at every token. ``"masked"``: it is fitted on the tokens
            that the data's ``masks`` (``(N, T)``, 1 = artifact token) flag in the artifact
            samples, against the clean samples' tokens, and projected out only at the tokens
            that carry the artifact (found when the model runs by their component along the
            direction: beyond ``vectors_[layer]["gate"]``, halfway between the clean and the
            artifact tokens' mean); the other tokens pass unchanged.
            None (default): the projection acts on the flattened ``T*D`` activations (or in
            channel space, see ``pooling``). See ``docs/correct.md`` for what each closes.

    Learned attributes:
        layers_: the corrected layers. vectors_: ``{layer: {"direction", "mean_clean",
        "mean_concept", "pooling", "input_shape", "scores"}}``.
        direction_, mean_clean_, mean_concept_, pooling_, input_shape_, cav_scores_: the same for
        the one corrected layer (``direction_``: ``(D,)`` unit vector ``v``).
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {"tokens": [None, Options(TOKEN_MODES)]}

    @aliased(supported={"layer_name": "layer", "cav_layers": "layers", "layer_names": "layers"})
    def __init__(self, layer: str | None = None, cav: Any = None, alpha: float = 1.0, *,
                 layers: LayerSelector | None = None, cav_method: str = "mass_mean",
                 pooling: str = "flatten", cav_samples: str | int = "artifact_classes",
                 batch_size: int = 256, device: str | torch.device | None = None,
                 progress: bool = True, gradient: str = "exact",
                 tokens: str | None = None) -> None:
        self.layer = layer
        self.cav = cav
        self.alpha = alpha
        self.layers = layers
        self.cav_method = cav_method
        self.pooling = pooling
        self.cav_samples = cav_samples
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.gradient = gradient
        self.tokens = tokens

    def fit(self, model: nn.Module | None, data: Any = None, artifact_labels: Any = None, *,
            labels: Any = None, activations: Any = None) -> PClarc:
        """Fit (or take from ``cav``) the artifact direction and the clean reference point.

        Args:
            model: the network (may be None when ``cav`` or ``activations`` is given).
            data: inputs with labels and artifact flags: a split (``decoy_digits(...).train``),
                an ``(inputs, labels[, artifact])`` tuple, a Dataset or DataLoader, or an inputs
                tensor ``(N, ...)``.
            artifact_labels: ``(N,)`` 0/1, 1 = artifact present (default: ``data.artifact``).
            labels: ``(N,)`` class labels when ``data`` has none or ``activations`` are given
                (used by ``cav_samples``).
            activations: ``(N, ...)`` precomputed outputs of ``layer`` (a dict ``{layer: ...}``
                for several layers, or an ActivationStore) instead of running the model.

        Returns:
            self
        """
        self._validate_params()
        if model is not None:
            analysis_device(model, self.device)
        samples = self._samples(data, labels, artifact_labels, need_labels=False)
        if self.tokens is not None:
            self._fit_token_directions(model, samples, activations, self.tokens, labels=labels,
                                       artifact_labels=artifact_labels)
        else:
            self._fit_directions(model, samples, activations, labels=labels,
                                 artifact_labels=artifact_labels)
        self._record_weights(model)
        return self

    def fit_paired(self, model: nn.Module | None, with_artifact: Any, without_artifact: Any
                   ) -> PClarc:
        """Fit the direction on paired inputs: row ``i`` of both is the same input with and
        without the artifact (e.g. ``data.train.images[a]`` and ``data.train_clean.images[a]``
        for ``a = data.train.artifact``). The direction is the mean activation difference
        (:meth:`CAV.fit_paired <latentsurgeon.concepts.CAV.fit_paired>`); the reference point is
        the mean activation of the artifact-free inputs. Ignores ``cav`` and ``cav_samples``.

        Args:
            model: the network.
            with_artifact, without_artifact: ``(N, ...)`` inputs, or (``model=None``, one layer)
                ``(N, ...)`` activations of ``layer``.

        Returns:
            self
        """
        self._validate_params()
        if self.tokens is not None:
            raise InvalidParameterError(
                f"PClarc.fit_paired does not take tokens={self.tokens!r}; fit() fits per-token "
                "directions (tokens='all' or 'masked').")
        if model is not None:
            analysis_device(model, self.device)
        layers = self._layer_names(model)
        pair = []
        for name, value in (("with_artifact", with_artifact),
                            ("without_artifact", without_artifact)):
            x = to_tensor(getattr(value, "images", value), name).float()
            if model is None:
                if len(layers) != 1:
                    raise InvalidParameterError(
                        "fit_paired(None, ...) takes the activations of one layer; pass the "
                        "model to fit several layers.")
                pair.append({layers[0]: x})
            else:
                pair.append(layer_activations(model, layers, x, batch_size=self.batch_size,
                                              progress=self.progress))
        cavs = {layer: CAV(method=self.cav_method, pooling=self.pooling).fit_paired(
            pair[0][layer], pair[1][layer]) for layer in layers}
        self._fit_directions(None, None, None, cavs=cavs)
        self._record_weights(model)
        return self

    def _projections(self) -> dict[str, ClarcProjection]:
        # a loaded or hand-edited state must not turn into NaN logits
        for layer, vec in self.vectors_.items():
            for key in ("direction", "mean_clean"):
                check_finite(vec[key], f"PClarc: vectors_[{layer!r}][{key!r}]")
        return {layer: ClarcProjection(vec["direction"], vec["mean_clean"], float(self.alpha),
                                       vec["pooling"], self.gradient, vec.get("gate"))
                for layer, vec in self.vectors_.items()}

    def attach(self, model: nn.Module, *, allow_other_weights: bool = False) -> HookGroup:
        """Register the projection on ``model`` at each corrected layer; ``remove()`` the
        returned group (idempotent) to undo it, or use :meth:`applied`. ``model`` must have the
        weights ``fit`` saw (see :meth:`Correction.check_weights`)."""
        self._check_fitted()
        self.check_weights(model, allow_other_weights=allow_other_weights)
        group = HookGroup()
        try:
            for layer, projection in self._projections().items():
                # the same module the export inserts, so hooked and exported models agree
                def project(name: str, module: nn.Module, inputs: tuple, output: Any,
                            projection: ClarcProjection = projection) -> Any:
                    return projection(output)

                # prepend: observers registered earlier (captures) see the corrected output
                group.forward(model, layer, project, prepend=True)
        except BaseException:
            group.remove()
            raise
        return group

    def export(self, model: nn.Module, *, allow_other_weights: bool = False) -> nn.Module:
        """A hook-free deep copy of ``model`` in which each corrected layer is replaced by
        :class:`~latentsurgeon.hooks.Followed` ``(layer, ClarcProjection(v, mean_clean, alpha,
        pooling, gradient))``: the layer is called with every positional and keyword argument it
        is given (``attention_mask=``, ``need_weights=``, several tensors), and in a tuple, named
        tuple, dict or HuggingFace ``ModelOutput`` output only the primary tensor (the first) is
        projected; the rest passes unchanged.

        Outputs and gradients equal the hooked model's; the copy survives ``torch.save``,
        ``state_dict`` round-trips (load into another export), ``torch.jit.trace`` and
        ``torch.export``. Parameter names under a corrected layer gain a ``.0``
        (``features.3.weight`` -> ``features.0.3.weight``), the projection's buffers sit under
        ``.1`` (``features.1.direction``). ``model`` must have the weights ``fit`` saw.
        """
        self._check_fitted()
        self.check_weights(model, allow_other_weights=allow_other_weights)
        return edited_copy(model, self._projections())

