"""detoxai's ``CLARC`` base (``detoxai.methods.clarcs.clarc``) on latentsurgeon: activations
through the :class:`~latentsurgeon.activations.ActivationStore`, CAVs through
:class:`~latentsurgeon.concepts.CAV`.

A corrector takes a Lightning ``LightningModule`` (detoxai's form: the network is its ``.model``)
or a plain ``nn.Module``, and a data loader yielding ``(inputs, labels, artifact_labels)``
batches, ``artifact_labels`` 0/1 with 1 = artifact present (detoxai's "protected attribute").
"""

from __future__ import annotations

import abc
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations import ActivationStore
from latentsurgeon.activations.batching import as_samples
from latentsurgeon.concepts import CAV
from latentsurgeon.errors import InvalidParameterError, NotFittedError
from latentsurgeon.hooks import resolve_layer

__all__ = ["ACTIVATIONS_DIR", "CAV_TYPES", "CLARC", "require_activations_and_cav"]

#: Where activations are cached by default: ``$DETOXAI_ROOT_PATH/activations`` as in detoxai,
#: ``~/.detoxai/activations`` when the variable is unset (detoxai fails to import then). Nothing
#: is created at import time; ``extract_activations`` creates what it writes.
ACTIVATIONS_DIR = os.path.join(os.environ.get("DETOXAI_ROOT_PATH")
                               or os.path.join(os.path.expanduser("~"), ".detoxai"),
                               "activations")

#: detoxai's ``cav_type`` names -> ``CAV(method, C)``. detoxai picks the branch by substring
#: (``"svm" in cav_type``), in this order; ``"mmp"`` is its mass-mean probe and ``"mean-mass"``
#: its crashing mass-mean branch (both: the difference of the class means, here normalised).
CAV_TYPES: dict[str, dict[str, Any]] = {
    "svm": {"method": "svm", "C": "grid"},
    "ridge": {"method": "ridge", "C": "grid"},
    "lasso": {"method": "lasso", "C": "grid"},
    "logistic": {"method": "logistic", "C": "grid"},
    "signal": {"method": "signal"},
    "mean-mass": {"method": "mass_mean"},
}

_F = TypeVar("_F", bound=Callable[..., Any])


def require_activations_and_cav(func: _F) -> _F:
    """Decorate ``apply_model_correction(self, cav_layers, ...)``: refuse to run before
    ``compute_cavs`` (:class:`~latentsurgeon.errors.NotFittedError`), and refuse layers it did
    not compute a CAV for (:class:`~latentsurgeon.errors.InvalidParameterError`)."""

    @functools.wraps(func)
    def wrapped(self: CLARC, cav_layers: list[str], *args: Any, **kwargs: Any) -> Any:
        cavs = getattr(self, "cav", None)
        if not cavs:
            raise NotFittedError(
                f"{type(self).__name__}.apply_model_correction(): CAVs must be computed first: "
                "call extract_activations(dataloader, layers) and then compute_cavs(cav_type, "
                "cav_layers).")
        layers = _layer_list(cav_layers, "cav_layers")
        missing = [layer for layer in layers if layer not in cavs]
        if missing:
            raise InvalidParameterError(
                f"{type(self).__name__}.apply_model_correction(): cav_layers names {missing}, "
                f"for which no CAV was computed; compute_cavs computed {list(cavs)}.")
        return func(self, layers, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def _layer_list(layers: Any, name: str) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers \
            or not all(isinstance(layer, str) for layer in layers):
        raise InvalidParameterError(f"{name} must be a non-empty list of layer names; got "
                                    f"{layers!r}.")
    return list(layers)


def lightning_module_types() -> tuple[type, ...]:
    """The ``LightningModule`` classes of the Lightning packages already imported (a
    LightningModule cannot exist before its package is imported, so nothing is imported here)."""
    found = []
    for package in ("lightning", "pytorch_lightning"):
        module = sys.modules.get(package)
        cls = getattr(module, "LightningModule", None) if module is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def unwrap_model(model: Any, device: Any, owner: str) -> tuple[nn.Module, nn.Module | None]:
    """``(network, lightning_module or None)``, both moved to ``device`` (as detoxai does)."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidParameterError(
            f"{owner}: device must be a device string ('cpu', 'cuda:0') or a torch.device; got "
            f"{device!r}.") from None
    lightning = lightning_module_types()
    if lightning and isinstance(model, lightning):
        network = getattr(model, "model", None)
        if not isinstance(network, nn.Module):
            raise InvalidParameterError(
                f"{owner}: a LightningModule must hold its network as .model (detoxai's "
                f"convention); {type(model).__name__}.model is {type(network).__name__}.")
        return network.to(where), model.to(where)
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(
            f"{owner}: model must be a torch.nn.Module or a Lightning LightningModule; got "
            f"{type(model).__name__}.")
    return model.to(where), None


class CLARC(abc.ABC):
    """detoxai's ClArC corrector: ``extract_activations`` -> ``compute_cavs`` ->
    ``apply_model_correction`` (in :class:`~latentsurgeon.compat.detoxai.PCLARC`,
    :class:`~latentsurgeon.compat.detoxai.ACLARC`, :class:`~latentsurgeon.compat.detoxai.RRCLARC`).

    Args:
        model: a ``LightningModule`` whose network is ``.model``, or a plain ``nn.Module``;
            moved to ``device``.
        experiment_name: names the activation cache (``save_dir/experiment_name``).
        device: where the model runs (``"cpu"``, ``"cuda:0"``).

    Attributes (after ``compute_cavs``): ``cav`` ``{layer: (D,) unit direction}``,
    ``mean_act_na`` / ``mean_act_a`` ``{layer: (D,)}`` mean flattened activation of artifact-free
    / artifact samples, ``cav_type``, ``cavs_`` ``{layer: fitted CAV}`` (with held-out
    ``scores_``). ``hooks``: what ``apply_model_correction`` left registered.
    """

    def __init__(self, model: nn.Module, experiment_name: str, device: str) -> None:
        owner = type(self).__name__
        if not isinstance(experiment_name, str) or not experiment_name:
            raise InvalidParameterError(
                f"{owner}: experiment_name must be a non-empty string (it names the activation "
                f"cache); got {experiment_name!r}.")
        self.model, lightning_model = unwrap_model(model, device, owner)
        if lightning_model is not None:
            self.lightning_model = lightning_model
        self.experiment_name = experiment_name
        self.device = str(device)
        if "cuda" in self.device and ":" in self.device:
            self.devices_indices: list[int] | str = [int(self.device.split(":")[1])]
        else:
            self.devices_indices = "auto"
        self.hooks: list[Any] = []
        self.requires_cav = True
        self.requires_acts = True

    # -- detoxai's ModelCorrectionMethod ------------------------------------------------------------
    def get_model(self) -> nn.Module:
        """The network (corrected once ``apply_model_correction`` ran)."""
        return self.model

    def get_lightning_model(self) -> nn.Module:
        """The LightningModule given, if one was (``AttributeError`` otherwise, as detoxai)."""
        if hasattr(self, "lightning_model"):
            return self.lightning_model
        raise AttributeError("No Lightning model found")

    def remove_hooks(self) -> None:
        """Remove every hook ``apply_model_correction`` registered (detoxai only forgets them:
        they stay on the model)."""
        for group in self.hooks:
            for handle in group:
                handle.remove()
        self.hooks = []

    # -- activations and CAVs -----------------------------------------------------------------------
    def extract_activations(self, dataloader: Any, layers: list, use_cache: bool = True,
                            save_dir: str = ACTIVATIONS_DIR) -> None:
        """Activations of ``layers`` for every sample of ``dataloader``, through an
        :class:`~latentsurgeon.activations.ActivationStore` at ``save_dir/experiment_name``.

        Args:
            dataloader: yields ``(inputs, labels, artifact_labels)``; read once, in its order.
            layers: exact layer names (``model.named_modules()``).
            use_cache: reuse the store at that path when it holds these weights, data and
                layers (a store of other weights or data is refused, not reused); False
                re-extracts and replaces it.
            save_dir: the cache directory (created when missing).

        Sets ``activations``: ``{"labels": (N, 2) array [label, artifact], layer: (N, ...)
        array}``; the model is left in eval mode (detoxai's "freeze").
        """
        owner = f"{type(self).__name__}.extract_activations()"
        if not isinstance(use_cache, bool):
            raise InvalidParameterError(f"{owner}: use_cache must be True or False; got "
                                        f"{use_cache!r}.")
        if not isinstance(save_dir, (str, os.PathLike)):
            raise InvalidParameterError(f"{owner}: save_dir must be a directory path; got "
                                        f"{save_dir!r}.")
        layers = _layer_list(layers, "layers")
        # one exact layer per name (an unknown one fails here, before the data is read)
        canonical = {layer: resolve_layer(self.model, layer) for layer in layers}
        samples = as_samples(dataloader, need_labels=True, what="dataloader")
        if samples.artifact is None:
            raise InvalidParameterError(
                f"{owner}: dataloader must yield (inputs, labels, artifact_labels) batches "
                "(artifact_labels 0/1, 1 = artifact present); its batches hold no third tensor.")
        assert samples.labels is not None
        batch_size = getattr(dataloader, "batch_size", None) or 64
        store = ActivationStore.extract(
            self.model, samples.images, list(canonical.values()), Path(save_dir) / self.experiment_name,
            batch_size=batch_size, overwrite=not use_cache, progress=False)
        self.model.eval()
        self.store_ = store
        activations: dict[str, np.ndarray] = {"labels": np.stack(
            [samples.labels.numpy(), samples.artifact.long().numpy()], axis=1)}
        for layer, name in canonical.items():
            activations[layer] = store.tensor(name).numpy()
        self.activations = activations

    def compute_cavs(self, cav_type: str, cav_layers: list[str]) -> None:
        """Fit one CAV per layer on the flattened activations, artifact (1) vs not (0), over
        all samples (detoxai's choice); see :data:`CAV_TYPES`."""
        owner = f"{type(self).__name__}.compute_cavs()"
        recipe = _cav_recipe(cav_type, owner)
        acts = getattr(self, "activations", None)
        if not acts:
            raise NotFittedError(f"{owner}: no activations: call extract_activations("
                                 "dataloader, layers) first.")
        layers = _layer_list(cav_layers, "cav_layers")
        missing = [layer for layer in layers if layer not in acts]
        if missing:
            raise InvalidParameterError(
                f"{owner}: cav_layers names {missing}, whose activations were not extracted; "
                f"extract_activations read {[k for k in acts if k != 'labels']}.")
        artifact = torch.as_tensor(acts["labels"][:, 1])
        self.cavs_ = {layer: CAV(pooling="flatten", **recipe).fit(acts[layer], artifact)
                      for layer in layers}
        where = torch.device(self.device)
        self.cav = {k: c.direction_.float().to(where) for k, c in self.cavs_.items()}
        self.mean_act_na = {k: c.mean_clean_.float().to(where) for k, c in self.cavs_.items()}
        self.mean_act_a = {k: c.mean_concept_.float().to(where) for k, c in self.cavs_.items()}
        self.cav_type = cav_type
        self.activations = None  # as detoxai: the activations are released once used

    def _cav_for(self, layer: str) -> SimpleNamespace:
        """The state ``apply_model_correction`` uses for ``layer``: what ``cav``,
        ``mean_act_na`` and ``mean_act_a`` hold now (so edits to them count, as in detoxai)."""
        return SimpleNamespace(direction_=self.cav[layer].reshape(-1).cpu(),
                               mean_clean_=self.mean_act_na[layer].reshape(-1).cpu(),
                               mean_concept_=self.mean_act_a[layer].reshape(-1).cpu(),
                               pooling="flatten")

    @abc.abstractmethod
    def apply_model_correction(self, cav_layers: list[str], *args: Any, **kwargs: Any) -> None:
        """Correct the model at ``cav_layers`` (each corrector's own way; detoxai's base class
        is abstract too, so ``CLARC(...)`` itself cannot be built)."""


def _cav_recipe(cav_type: Any, owner: str) -> dict[str, Any]:
    if isinstance(cav_type, str):
        if cav_type == "mmp":
            return {"method": "mass_mean"}
        for key, recipe in CAV_TYPES.items():
            if key in cav_type:
                return recipe
    raise InvalidParameterError(
        f"{owner}: cav_type must be one of 'svm', 'ridge', 'lasso', 'logistic', 'signal', "
        f"'mmp' (or contain one of the first five); got {cav_type!r}.")


def training_kwargs(corrector: CLARC, dataloader: Any, seed: Any) -> dict[str, Any]:
    """What ACLARC and RRCLARC fine-tune with: the loader's batch size, the LightningModule's
    ``criterion`` when it has one (detoxai's RRCLARC calls it), every parameter (detoxai's
    optimizers cover them all), no progress bar (detoxai turns Lightning's off)."""
    lightning_model = getattr(corrector, "lightning_model", None)
    criterion = getattr(lightning_model, "criterion", None)
    return {"batch_size": getattr(dataloader, "batch_size", None) or 64,
            "criterion": criterion if callable(criterion) else None,
            "trainable": "all", "seed": seed, "progress": False}
