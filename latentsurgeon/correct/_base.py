"""What every correction shares: the estimator contract, the artifact directions, attach/export."""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone
from torch import nn

from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Callable, Interval, Options, Seed, check_finite, draw_seed
from latentsurgeon.activations import layer_outputs
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    Samples,
    as_samples,
    to_tensor,
)
from latentsurgeon.activations.fingerprint import model_fingerprint
from latentsurgeon.concepts import CAV, METHODS
from latentsurgeon.correct.projection import GRADIENTS, TOKEN_POOLING
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    ModelMismatchError,
    NotFittedError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import (
    HookGroup,
    edited_copy,
    preserve_model_state,
    resolve_layer,
    resolve_layers,
)

logger = logging.getLogger(__name__)

__all__ = ["CAV_SAMPLES", "TOKEN_MODES", "ClarcCorrection", "Correction", "check_labels", "criterion_loss",
           "layer_activations", "random_stream"]

CAV_SAMPLES = ("artifact_classes", "all")
#: Per-token directions for sequence activations ``(N, T, D)`` (see :meth:`ClarcCorrection.
#: _fit_token_directions`): fitted on every token, or on the artifact-masked tokens only.
TOKEN_MODES = ("all", "masked")
#: Poolings a ClArC direction can be fitted with (``"none"`` gives no vector per sample).
CAV_POOLINGS = ("flatten", "max", "mean")
_GLOB_CHARS = set("*?[")
_MAX_POOLING_NEEDS_DATA = (
    "A CAV fitted with pooling='max' is applied at every spatial position and needs "
    "per-position reference means: pass the model and data (or activations= and "
    "artifact_labels=) to fit(), or use a CAV with pooling='mean' or 'flatten'.")


# -- constraints shared by the corrections ---------------------------------------------------------
class _Device:
    """None, a device string or a ``torch.device``."""

    def accepts(self, value: Any) -> bool:
        if value is None or isinstance(value, torch.device):
            return True
        if not isinstance(value, str):
            return False
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return "None, a device string ('cpu', 'cuda:0') or a torch.device"


class _CavLike:
    """A CAV (fitted: its vectors are used; unfitted: the recipe fitted here), an object with
    ``direction_``/``mean_clean_``/``mean_concept_`` tensors, or a dict ``{layer: such}``."""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, Mapping):
            return bool(value) and all(isinstance(k, str) and self.accepts(v)
                                       for k, v in value.items())
        return isinstance(value, CAV) or isinstance(getattr(value, "direction_", None),
                                                    torch.Tensor)

    def __str__(self) -> str:
        return "a CAV (fitted, or unfitted as the recipe to fit) or a dict {layer: CAV}"


class _LayerSelector:
    """A layer name or a list of them (globs, ``re:`` regexes and module classes included)."""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, type, nn.Module)):
            return not isinstance(value, type) or issubclass(value, nn.Module)
        if isinstance(value, (list, tuple)):
            return bool(value) and all(self.accepts(v) for v in value)
        return False

    def __str__(self) -> str:
        return "a layer name, glob, 're:' regex, module class, or a non-empty list of these"


class _Trainable:
    def accepts(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in ("above", "all")
        return (isinstance(value, (list, tuple)) and bool(value)
                and all(isinstance(v, str) for v in value))

    def __str__(self) -> str:
        return "'above', 'all' or a non-empty list of parameter-name globs"


class _Optimizer:
    def accepts(self, value: Any) -> bool:
        return value in ("adam", "adamw", "sgd") if isinstance(value, str) else callable(value) \
            or isinstance(value, torch.optim.Optimizer)

    def __str__(self) -> str:
        return "'adam', 'adamw', 'sgd', a callable params -> Optimizer or an Optimizer"


SEED = Seed()
TRAINABLE = _Trainable()
TRAINING_CONSTRAINTS: dict[str, Any] = {
    "epochs": Interval(int, 0, None),
    "lr": Interval(float, 0, None, closed="neither"),
    "optimizer": _Optimizer(),
    "seed": SEED,
    "batch_size": Interval(int, 1, None),
    "device": _Device(),
    "progress": bool,
    "head": [str, int, None],
    "criterion": [None, Callable()],
}


# -- helpers -----------------------------------------------------------------------------------
def random_stream(seed: int | torch.Generator | None, stream: int) -> torch.Generator:
    """An independent generator per purpose (augmentation, random signs): reproducible for an
    int ``seed`` (``SeedSequence([seed, stream])``), fresh randomness for None; a
    ``torch.Generator`` gives the int that seeds the stream (so its state advances by one draw,
    and the same generator state gives the same stream)."""
    generator = torch.Generator()
    seed = draw_seed(seed)
    if seed is None:
        generator.seed()
        return generator
    state = np.random.SeedSequence([int(seed), stream]).generate_state(1, dtype=np.uint64)[0]
    return generator.manual_seed(int(state))


def criterion_loss(criterion: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``criterion(logits, labels)`` (cross-entropy when None), checked to be a scalar."""
    if criterion is None:
        return F.cross_entropy(logits, labels)
    loss = criterion(logits, labels)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise InvalidParameterError(
            f"criterion(logits, labels) must return a scalar loss tensor; it returned {shape} "
            "(use reduction='mean').")
    return loss


def check_labels(model: nn.Module, samples: Samples, head: str | int | None) -> int:
    """Run the model on one sample and check ``samples.labels`` index its logits (before any
    training starts, so a bad label or ``head`` fails early). Returns the number of classes."""
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        logits = ModelAccess(model, head=head).logits(samples.images[:1])
    k = int(logits.shape[1])
    labels = samples.labels
    if labels is not None and len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= k:
            raise InvalidParameterError(
                f"labels must lie in [0, {k - 1}] for a model with {k} outputs; got values "
                f"from {low} to {high}.")
    return k


def layer_activations(model: nn.Module, layers: Sequence[str], inputs: torch.Tensor, *,
                      batch_size: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for every input, in eval mode without gradients, on CPU: the one
    read path (:func:`latentsurgeon.activations.layer_outputs`), so it runs where the model is,
    stops after the last layer needed, reads the true outputs whatever in-place op follows, and
    refuses NaN/Inf."""
    return layer_outputs(model, list(layers), inputs, batch_size=batch_size, progress=progress)


# -- the base classes --------------------------------------------------------------------------
class Correction(Estimator):
    """Base of the corrections, one protocol for all of them.

    * ``fit(model, data) -> self``: ``data`` carries what the method reads (class labels,
      artifact flags, masks) as a split, a :class:`~latentsurgeon.activations.batching.Samples`,
      a tuple, a Dataset or a DataLoader;
    * ``attach(model) -> HookGroup`` and ``applied(model)`` put the correction on a model;
    * ``export(model) -> nn.Module``: a corrected, hook-free copy;
    * ``corrected(model, data) -> nn.Module``: fit and export in one call; ``model`` is left as
      it was.

    Corrections that fine-tune weights (A-ClArC, RR-ClArC, RRR; ``modifies_weights = True``)
    change the model in ``fit``; for them ``attach`` returns an empty :class:`HookGroup` and
    ``applied`` does nothing, so code can treat every correction alike.

    ``fit`` records ``fingerprint_``, the fingerprint of the weights the correction applies to
    (the model as given for P-ClArC; the fine-tuned weights for the training corrections);
    ``attach``, ``applied`` and ``export`` refuse a model with other weights (a
    :class:`~latentsurgeon.errors.ModelMismatchError`), or warn with
    ``allow_other_weights=True``. A correction fitted without a model (from a CAV or
    activations) has ``fingerprint_ = None`` and is not checked.
    """

    #: True when ``fit`` changes the model's weights (the correction lives in them).
    modifies_weights: ClassVar[bool] = False
    #: ``Correction.load(path)`` loads any saved correction
    _loads_subclasses: ClassVar[bool] = True

    def _record_weights(self, model: nn.Module | None) -> None:
        self.fingerprint_ = None if model is None else model_fingerprint(model)

    def check_weights(self, model: nn.Module, *, allow_other_weights: bool = False) -> None:
        """Raise :class:`~latentsurgeon.errors.ModelMismatchError` unless ``model`` has the
        weights this correction applies to (warn instead with ``allow_other_weights=True``)."""
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"{type(self).__name__}: model must be a torch.nn.Module; got "
                f"{type(model).__name__}.")
        expected = self.__dict__.get("fingerprint_")
        if expected is None:
            return
        found = model_fingerprint(model)
        if found == expected:
            return
        which = ("the weights its fit() fine-tuned" if self.modifies_weights
                 else "the weights it was fitted on")
        message = (
            f"{type(self).__name__}: model has other weights than {which} (expected fingerprint "
            f"{expected[:16]}, got {found[:16]}); a correction fitted on one model's weights does "
            "not carry over to another's. Fit it on this model, or allow other weights "
            "(allow_other_weights=True; the CLI's --allow-other-weights) to apply it anyway.")
        if not allow_other_weights:
            raise ModelMismatchError(message)
        warnings.warn(message, UserWarning, stacklevel=3)

    def attach(self, model: nn.Module, *, allow_other_weights: bool = False) -> HookGroup:
        """Register the correction on ``model``; returns the removable handle group."""
        self._check_fitted()
        self.check_weights(model, allow_other_weights=allow_other_weights)
        return HookGroup()

    @contextmanager
    def applied(self, model: nn.Module, *, allow_other_weights: bool = False
                ) -> Iterator[nn.Module]:
        """``with correction.applied(model): ...`` runs the model corrected inside the block."""
        with self.attach(model, allow_other_weights=allow_other_weights):
            yield model

    def export(self, model: nn.Module, *, allow_other_weights: bool = False) -> nn.Module:
        """A deep copy of ``model`` (eval mode, no hooks) that carries the correction."""
        self._check_fitted()
        self.check_weights(model, allow_other_weights=allow_other_weights)
        return edited_copy(model)

    def corrected(self, model: nn.Module, data: Any, **fit_params: Any) -> nn.Module:
        """Fit on ``data`` and return the corrected model as a new module (eval mode, no hooks);
        ``model`` itself is left as it was (the training corrections fine-tune a copy).

        Args:
            model: the network to correct.
            data: the training data ``fit`` takes (labels, artifact flags, masks travel in it).
            fit_params: further keyword arguments of ``fit``.

        Returns:
            The corrected copy: ``export(model)`` after fitting.
        """
        target = copy.deepcopy(model) if self.modifies_weights else model
        self.fit(target, data, **fit_params)
        return self.export(target)


class ClarcCorrection(Correction):
    """Shared by the ClArC family: one artifact direction per corrected layer, from a CAV or
    fitted here on the layer's activations.

    Learned state: ``layers_`` (the corrected layers, in model order) and ``vectors_``
    (``{layer: {"direction", "mean_clean", "mean_concept", "pooling", "input_shape",
    "scores"}}``). With one layer, ``direction_``, ``mean_clean_``, ``mean_concept_``,
    ``pooling_``, ``input_shape_`` and ``cav_scores_`` read that layer's entries.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "layer": [None, str],
        "layers": [None, _LayerSelector()],
        "cav": [None, _CavLike()],
        "alpha": Interval(float, 0, None),
        "cav_method": Options(METHODS),
        "pooling": Options(CAV_POOLINGS),
        "cav_samples": [Options(CAV_SAMPLES), Interval(int, 0, None)],
        "batch_size": Interval(int, 1, None),
        "device": _Device(),
        "progress": bool,
        "gradient": Options(GRADIENTS),
    }

    layer: str | None
    cav: Any
    cav_method: str
    pooling: str
    cav_samples: str | int
    batch_size: int
    device: str | torch.device | None
    progress: bool

    # -- one layer's view of the learned state -----------------------------------------------------
    def _single(self, key: str) -> Any:
        vectors = self.__dict__.get("vectors_")
        if vectors is None:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit() "
                                 "first.")
        if len(vectors) != 1:
            raise AttributeError(
                f"{type(self).__name__} corrects {len(vectors)} layers ({list(vectors)}); read "
                f"vectors_[layer][{key!r}] instead.")
        return next(iter(vectors.values()))[key]

    @property
    def direction_(self) -> torch.Tensor:
        """``(D,)`` unit artifact direction of the one corrected layer."""
        return self._single("direction")

    @property
    def mean_clean_(self) -> torch.Tensor:
        """``(D,)`` mean activation without the artifact (one corrected layer)."""
        return self._single("mean_clean")

    @property
    def mean_concept_(self) -> torch.Tensor:
        """``(D,)`` mean activation with the artifact (one corrected layer)."""
        return self._single("mean_concept")

    @property
    def pooling_(self) -> str:
        return self._single("pooling")

    @property
    def input_shape_(self) -> list[int]:
        return self._single("input_shape")

    @property
    def cav_scores_(self) -> dict[str, float]:
        return self._single("scores")

    # -- layers ----------------------------------------------------------------------------------
    def _layer_names(self, model: nn.Module | None) -> list[str]:
        layer, layers = self.layer, getattr(self, "layers", None)
        if layer is not None and layers is not None:
            raise InvalidParameterError(
                f"{type(self).__name__}: pass layer= (one layer) or layers= (several), not both; "
                f"got layer={layer!r} and layers={layers!r}.")
        if layer is None and layers is None:
            several = " or layers= (several)" if hasattr(self, "layers") else ""
            raise InvalidParameterError(
                f"{type(self).__name__}: layer= (one exact layer name){several} is required; "
                "got None.")
        # Resolved once, here: what the correction stores, hooks and exports is the canonical
        # name, so a selector (a glob, "re:...") cannot mean one layer to attach and another
        # to export.
        if layer is not None:
            if model is not None:
                return [resolve_layer(model, layer)]
            names = [layer]
        elif model is not None:
            return list(resolve_layers(model, layers))
        else:
            names = [layers] if isinstance(layers, str) else list(layers)
        if not all(isinstance(n, str) and not (_GLOB_CHARS & set(n)) and not n.startswith("re:")
                   for n in names):
            raise InvalidParameterError(
                f"{type(self).__name__}: {'layer' if layer is not None else 'layers'}="
                f"{layer if layer is not None else layers!r} is a pattern; without a model, name "
                "the layers exactly.")
        return names

    def _cav_for(self, layer: str, n_layers: int) -> Any:
        cav = self.cav
        if isinstance(cav, Mapping):
            if layer not in cav:
                raise InvalidParameterError(
                    f"{type(self).__name__}: cav= holds CAVs for {list(cav)} but not for layer "
                    f"{layer!r}.")
            return cav[layer]
        if cav is not None and n_layers > 1:
            if _is_fitted_cav(cav):
                raise InvalidParameterError(
                    f"{type(self).__name__}: one fitted CAV cannot serve {n_layers} layers; pass "
                    "cav={layer: CAV, ...}.")
        return cav

    # -- the artifact directions -------------------------------------------------------------------
    def _sample_mask(self, labels: torch.Tensor | None, artifact: torch.Tensor
                     ) -> torch.Tensor | None:
        """Which samples the CAV is fitted on (see ``cav_samples``)."""
        spec = self.cav_samples
        if spec == "all":
            return None
        if labels is None:
            if isinstance(spec, str):
                logger.info("no class labels given: the CAV is fitted on all samples")
                return None
            raise LatentSurgeonError(
                f"cav_samples={spec} needs class labels; pass data with labels or labels=...")
        if isinstance(spec, str):  # "artifact_classes": the classes the artifact co-occurs with
            classes = torch.unique(labels[artifact])
            return torch.isin(labels, classes)
        return labels == int(spec)

    def _fit_directions(self, model: nn.Module | None, samples: Samples | None,
                        activations: Any, *, labels: Any = None, artifact_labels: Any = None,
                        cavs: dict[str, Any] | None = None, pooling: str | None = None) -> None:
        """Set ``layers_`` and ``vectors_`` from the constructor's CAVs (or ``cavs``, one per
        layer), or fit them (one CAV per layer) on the layers' activations (CAVs fitted here
        pool with ``pooling``, default the ``pooling`` parameter)."""
        if cavs is None:
            layers = self._layer_names(model)
            cavs = {layer: self._cav_for(layer, len(layers)) for layer in layers}
        layers = list(cavs)
        need = [layer for layer, cav in cavs.items()
                if not _is_fitted_cav(cav) or _pooling_of(cav) == "max"]
        acts: dict[str, torch.Tensor] = {}
        flags: Samples | None = None
        if need:
            if activations is None and (samples is None or model is None) \
                    and all(_is_fitted_cav(cavs[layer]) for layer in need):
                raise LatentSurgeonError(_MAX_POOLING_NEEDS_DATA)
            acts = self._activations(model, samples, activations, need)
            if samples is not None and activations is None:
                flags = samples
            else:  # the flags describe the given activations: validate them against those
                if samples is not None:
                    labels = samples.labels if labels is None else labels
                    artifact_labels = samples.artifact if artifact_labels is None \
                        else artifact_labels
                flags = as_samples(acts[need[0]], labels=labels, artifact=artifact_labels,
                                   what="activations")
            if flags.artifact is None:
                raise LatentSurgeonError(
                    "Fitting the artifact direction needs artifact labels (1 = artifact "
                    "present): pass artifact_labels=... or data with an .artifact attribute.")
        vectors: dict[str, dict[str, Any]] = {}
        for layer in layers:
            cav = cavs[layer]
            mask = None
            if not _is_fitted_cav(cav):
                assert flags is not None and flags.artifact is not None
                if len(acts[layer]) != len(flags.artifact):
                    raise ShapeMismatchError(
                        f"activations of layer {layer!r} hold {len(acts[layer])} samples but "
                        f"there are {len(flags.artifact)} artifact labels.")
                mask = self._sample_mask(flags.labels, flags.artifact)
                recipe = clone(cav) if isinstance(cav, CAV) else CAV(
                    method=self.cav_method, pooling=pooling or self.pooling,
                    seed=draw_seed(getattr(self, "seed", 0)))
                cav = recipe.fit(acts[layer], flags.artifact, sample_mask=mask)
                logger.info("%s: CAV at %s fitted on %d samples, held-out accuracy %.3f",
                            type(self).__name__, layer,
                            len(flags.artifact) if mask is None else int(mask.sum()),
                            cav.scores_.get("accuracy", float("nan")))
            vectors[layer] = _vectors_of(cav, layer)
            if vectors[layer]["pooling"] == "max":
                if layer not in acts or flags is None or flags.artifact is None:
                    raise LatentSurgeonError(_MAX_POOLING_NEEDS_DATA)
                if mask is None:
                    mask = self._sample_mask(flags.labels, flags.artifact)
                _per_position_means(vectors[layer], acts[layer], flags.artifact, mask)
        self.layers_ = list(layers)
        self.vectors_ = vectors

    def _fit_token_directions(self, model: nn.Module | None, samples: Samples | None,
                              activations: Any, mode: str, *, labels: Any = None,
                              artifact_labels: Any = None) -> None:
        """Per-token directions for sequence activations ``(N, T, D)`` (features last): each
        layer's direction ``v`` is ``(D,)`` and its reference the mean clean *token* vector, and
        the projection acts on every token's ``D``-vector (``pooling="token"``).

        ``mode="all"``: the CAV is fitted on each sample's mean over its ``T`` tokens (artifact
        samples against clean ones), and the projection acts at every token. ``mode="masked"``:
        on the artifact's own tokens, the tokens that ``masks`` (``(N, T)``, 1 = artifact token)
        flag in the artifact samples, against every token of the clean samples; the projection
        then acts only at the tokens that carry the artifact. The masks are not there when the
        model runs, so those tokens are found by the direction itself: a token is projected
        when its component along ``v`` lies beyond ``vectors_[layer]["gate"]``, halfway
        between the clean and the artifact tokens' mean component. The other tokens (the
        class evidence among them) pass unchanged.
        """
        layers = self._layer_names(model)
        cavs = {layer: self._cav_for(layer, len(layers)) for layer in layers}
        for layer, cav in cavs.items():
            if cav is not None and _pooling_of(cav) == "max":
                raise InvalidParameterError(
                    f"{type(self).__name__}: tokens={mode!r} needs a CAV in the tokens' feature "
                    f"space (pooling 'flatten' or 'mean'); the CAV for {layer!r} has "
                    "pooling='max'.")
        if all(_is_fitted_cav(cav) for cav in cavs.values()):
            self._fit_directions(None, None, None, cavs=cavs)
        else:
            acts = self._activations(model, samples, activations, layers)
            if samples is not None:
                labels = samples.labels if labels is None else labels
                artifact_labels = samples.artifact if artifact_labels is None \
                    else artifact_labels
            first = acts[layers[0]]
            flags = as_samples(first, labels=labels, artifact=artifact_labels,
                               what="activations")
            if flags.artifact is None:
                raise LatentSurgeonError(
                    "Fitting the artifact direction needs artifact labels (1 = artifact "
                    "present): pass artifact_labels=... or data with an .artifact attribute.")
            rows: dict[str, torch.Tensor] = {}
            row_labels, row_artifact = flags.labels, flags.artifact
            for layer in layers:
                tokens = _token_view(acts[layer], layer)  # (N, T, D)
                if mode == "all":
                    rows[layer] = tokens.mean(dim=1)
                    continue
                picked = _masked_token_rows(tokens, flags.artifact, samples, layer)
                rows[layer], keep_sample = picked
                row_artifact = torch.cat([torch.ones(int(keep_sample[0].numel()), dtype=torch.bool),
                                          torch.zeros(int(keep_sample[1].numel()),
                                                      dtype=torch.bool)])
                row_labels = None if flags.labels is None else \
                    flags.labels[torch.cat(keep_sample)]
            self._fit_directions(None, None, rows, labels=row_labels,
                                 artifact_labels=row_artifact, cavs=cavs, pooling="flatten")
        for vec in self.vectors_.values():
            vec["pooling"] = TOKEN_POOLING
            if mode == "masked":  # halfway between the clean and the artifact tokens' component
                shift = (vec["mean_concept"] - vec["mean_clean"]) @ vec["direction"]
                vec["gate"] = 0.5 * float(shift)
                if not math.isfinite(vec["gate"]) or vec["gate"] == 0:
                    raise LatentSurgeonError(
                        "tokens='masked': the artifact tokens' mean has no component along the "
                        "direction, so no token can be told to carry the artifact.")

    def _activations(self, model: nn.Module | None, samples: Samples | None, activations: Any,
                     layers: list[str]) -> dict[str, torch.Tensor]:
        if activations is None:
            if samples is None or model is None:
                raise LatentSurgeonError(
                    "Without a fitted cav=..., fit() needs the model and data (inputs with "
                    "artifact labels), or activations=... with artifact_labels=....")
            return layer_activations(model, layers, samples.images, batch_size=self.batch_size,
                                     progress=self.progress)
        from latentsurgeon.activations.store import ActivationStore

        out: dict[str, torch.Tensor] = {}
        for layer in layers:
            if isinstance(activations, ActivationStore):
                value: Any = activations.tensor(layer)
            elif isinstance(activations, Mapping):
                if layer not in activations:
                    raise InvalidParameterError(
                        f"activations= holds layers {list(activations)} but not {layer!r}.")
                value = activations[layer]
            elif len(layers) == 1:
                value = activations
            else:
                raise InvalidParameterError(
                    f"{len(layers)} layers are corrected: pass activations={{layer: tensor}} or "
                    "an ActivationStore.")
            tensor = to_tensor(value, "activations").detach().float().cpu()
            out[layer] = check_finite(tensor, f"activations of layer {layer!r}")
        return out

    def _samples(self, data: Any, labels: Any, artifact_labels: Any, *,
                 need_labels: bool) -> Samples | None:
        if data is None:
            if need_labels:
                raise LatentSurgeonError(
                    f"{type(self).__name__}.fit() needs training data: (inputs, labels) or a "
                    "split.")
            return None
        samples = as_samples(data, labels=labels, artifact=artifact_labels,
                             need_labels=need_labels)
        check_finite(samples.images, "the inputs")
        return samples


def _is_fitted_cav(cav: Any) -> bool:
    return cav is not None and isinstance(getattr(cav, "direction_", None), torch.Tensor)


def _pooling_of(cav: Any) -> str:
    return str(getattr(cav, "pooling", "flatten"))


def _vectors_of(cav: Any, layer: str) -> dict[str, Any]:
    for attr in ("direction_", "mean_clean_", "mean_concept_"):
        if not isinstance(getattr(cav, attr, None), torch.Tensor):
            raise LatentSurgeonError(
                f"The CAV for layer {layer!r} lacks {attr}: pass a fitted latentsurgeon CAV, or "
                "an unfitted one to have it fitted here.")
    direction = cav.direction_.detach().float().cpu().reshape(-1)
    check_finite(direction, f"the direction of layer {layer!r}")
    norm = float(direction.norm())
    if not math.isfinite(norm) or norm == 0:
        raise LatentSurgeonError(f"The direction for layer {layer!r} is zero.")
    scores = getattr(cav, "scores_", {}) or {}
    return {
        "direction": (direction / norm).clone(),
        "mean_clean": cav.mean_clean_.detach().float().cpu().reshape(-1).clone(),
        "mean_concept": cav.mean_concept_.detach().float().cpu().reshape(-1).clone(),
        "pooling": _pooling_of(cav),
        "input_shape": [int(s) for s in getattr(cav, "input_shape_", [])],
        "scores": {k: float(v) for k, v in scores.items()
                   if isinstance(v, (int, float, np.floating))},
    }


def _per_position_means(vectors: dict[str, Any], acts: torch.Tensor, artifact: torch.Tensor,
                        mask: torch.Tensor | None) -> None:
    """A max-pooled direction is applied at every spatial position, so the reference points
    must be means over samples *and positions*: the mean of per-channel maxima would push every
    position up to maximum level and insert the artifact instead of removing it."""
    if acts.dim() < 3:
        raise ShapeMismatchError(
            f"pooling='max' needs (N, C, *spatial) activations, got {tuple(acts.shape)}.")
    keep = torch.ones(len(acts), dtype=torch.bool) if mask is None else mask.cpu()
    per_sample = acts.float().mean(dim=tuple(range(2, acts.dim())))  # (N, C): spatial means
    vectors["mean_clean"] = per_sample[keep & ~artifact].mean(0)
    vectors["mean_concept"] = per_sample[keep & artifact].mean(0)


def _token_view(acts: torch.Tensor, layer: str) -> torch.Tensor:
    """``(N, T, D)`` sequence activations (``(N, *positions, D)`` flattened to ``(N, T, D)``)."""
    if acts.dim() < 3:
        raise ShapeMismatchError(
            f"tokens=... needs sequence activations (N, T, D) at layer {layer!r}; its output "
            f"has shape {tuple(acts.shape)}.")
    return acts.reshape(acts.shape[0], -1, acts.shape[-1])


def _masked_token_rows(tokens: torch.Tensor, artifact: torch.Tensor, samples: Samples | None,
                       layer: str) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The rows of ``tokens="masked"``: the masked tokens of the artifact samples, then every
    token of the clean samples; and the sample index of each row (artifact rows, clean rows)."""
    masks = None if samples is None else samples.masks
    if masks is None:
        raise LatentSurgeonError(
            "tokens='masked' fits the direction on the artifact's tokens and needs masks "
            "(N, T), 1 = artifact token: pass data with masks (e.g. (inputs, labels, artifact, "
            "masks)) or use tokens='all'.")
    n, t = tokens.shape[:2]
    flat = masks.reshape(masks.shape[0], -1) if masks.dim() > 1 else masks.reshape(1, -1)
    if flat.shape[1] != t or flat.shape[0] not in (1, n):
        raise ShapeMismatchError(
            f"tokens='masked': masks must flag the {t} tokens of layer {layer!r}'s output, "
            f"(N, {t}) or ({t},); got masks of shape {tuple(masks.shape)}.")
    token_mask = torch.broadcast_to(flat != 0, (n, t)).cpu()
    hit = token_mask & artifact.cpu().reshape(-1, 1)
    if not bool(hit.any()):
        raise LatentSurgeonError(
            "tokens='masked': no artifact sample has a masked token; the masks must flag the "
            "artifact's tokens (1) in the samples whose artifact label is 1.")
    sample_of = torch.arange(n).reshape(-1, 1).expand(n, t)
    clean = ~artifact.cpu()
    clean_rows = tokens[clean].reshape(-1, tokens.shape[-1])
    rows = torch.cat([tokens[hit], clean_rows])
    return rows, (sample_of[hit], sample_of[clean].reshape(-1))
