"""lfxai's label-free example importance (``lfxai.explanations.examples``) on
latentsurgeon's explainers: :class:`latentsurgeon.explain.SimplEx`,
:class:`~latentsurgeon.explain.NearestNeighbours`, :class:`~latentsurgeon.explain.TracIn` and
:class:`~latentsurgeon.explain.InfluenceFunctions`.

Every explainer returns ``(n_test, n_train)`` scores, one row per test *example* and one column
per training *example*, whatever the loaders' batch sizes: every test example is explained (lfxai
leaves the rows of the last partial block of SimplEx and NearestNeighbours at zero, and its TracIn
and influence functions score whole batches, so only loaders of batch size 1 give per-example
scores there). Representations are those of ``model.encoder``; gradients are taken with
respect to ``model.encoder``'s parameters, of ``loss_f(x, model(x))``, as in lfxai. The model is
explained in eval mode and its weights, modes and hooks are left as they were (lfxai's TracIn
leaves the last checkpoint loaded into the model). ``device`` is accepted and the work runs where
the model is (an analysis never moves the model; lfxai's ``fit`` has put it on ``device``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations.batching import batch_inputs
from latentsurgeon.compat.lfxai.models._fitting import _directory
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain import InfluenceFunctions as _InfluenceFunctions
from latentsurgeon.explain import NearestNeighbours as _NearestNeighbours
from latentsurgeon.explain import SimplEx as _SimplEx
from latentsurgeon.explain import TracIn as _TracIn
from latentsurgeon.explain import simplex_weights

__all__ = ["ExampleBasedExplainer", "InfluenceFunctions", "NearestNeighbours", "SimplEx",
           "TracIn"]

#: the submodule whose representation and parameters lfxai's explainers use
ENCODER = "encoder"


def _check_model(model: Any, owner: str) -> nn.Module:
    if not isinstance(model, nn.Module) or not isinstance(
            getattr(model, ENCODER, None), nn.Module):
        kind = type(model).__name__
        raise InvalidParameterError(
            f"{owner}: model must be an nn.Module with an 'encoder' submodule (lfxai explains "
            f"model.encoder), such as AutoEncoderMnist; got {kind}"
            + (" without an 'encoder' submodule." if isinstance(model, nn.Module) else "."))
    return model


def _loss_spec(loss_f: Any, owner: str) -> Any:
    """lfxai's ``loss_f(x, model(x))`` as a per-sample loss of latentsurgeon's explainers:
    ``nn.MSELoss()`` (mean) is the named ``"reconstruction"`` loss, any other callable is
    evaluated one sample at a time."""
    if isinstance(loss_f, nn.MSELoss) and loss_f.reduction == "mean":
        return "reconstruction"
    if not callable(loss_f):
        raise InvalidParameterError(
            f"{owner}: loss_f must be a callable loss_f(inputs, outputs) -> scalar "
            f"(torch.nn.MSELoss()); got {type(loss_f).__name__}.")

    def per_sample(output: torch.Tensor, batch: Any) -> torch.Tensor:
        return loss_f(batch_inputs(batch), output)

    return per_sample


def _save_dir(save_dir: Any, owner: str) -> Path:
    path = _directory(save_dir, owner)
    path.mkdir(parents=True, exist_ok=True)  # lfxai creates it
    return path


def _count(value: Any, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{owner}: {name} must be an int >= 1; got {value!r}.")
    return value


class ExampleBasedExplainer:
    """lfxai's base: ``model``, ``X_train`` (the training inputs of :meth:`attribute`, indexed by
    ``train_idx``) and ``loss_f``."""

    def __init__(self, model: nn.Module, X_train: torch.Tensor | None, loss_f: Any,
                 **kwargs: Any) -> None:
        owner = type(self).__name__
        self.model = _check_model(model, owner)
        if X_train is not None and not isinstance(X_train, torch.Tensor):
            raise InvalidParameterError(
                f"{owner}: X_train must be a tensor of training inputs (N, ...) or None; got "
                f"{type(X_train).__name__}.")
        self.X_train = X_train
        self.loss_f = loss_f

    def _train_inputs(self, train_idx: Any) -> torch.Tensor:
        owner = f"{type(self).__name__}.attribute"
        if self.X_train is None:
            raise InvalidParameterError(
                f"{owner}: the explainer was built without X_train, which attribute() indexes "
                "with train_idx; pass X_train= to the constructor, or use attribute_loader().")
        index = torch.as_tensor(train_idx, dtype=torch.long).reshape(-1)
        n = len(self.X_train)
        if len(index) == 0 or bool(((index < -n) | (index >= n)).any()):
            raise InvalidParameterError(
                f"{owner}: train_idx must be a non-empty list of indices into X_train (of "
                f"{n} examples); got {list(train_idx)!r}.")
        return self.X_train[index]

    def __str__(self) -> str:
        return type(self).__name__


class SimplEx(ExampleBasedExplainer):
    """Each test representation as a convex combination of the training representations
    (``model.encoder``'s); the weights are solved to a certified tolerance."""

    def __init__(self, model: nn.Module, loss_f: Any = None,
                 X_train: torch.Tensor | None = None) -> None:
        super().__init__(model, X_train, loss_f)

    def _explainer(self, batch_size: int) -> _SimplEx:
        return _SimplEx(layer=ENCODER, batch_size=_count(batch_size, "batch_size", str(self)),
                        progress=False)

    def attribute(self, X_test: torch.Tensor, train_idx: list, learning_rate: float = 1,
                  batch_size: int = 50, **kwargs: Any) -> torch.Tensor:
        """``(len(X_test), len(train_idx))`` weights over ``X_train[train_idx]``.
        ``learning_rate`` is accepted and not used (lfxai does not use it either)."""
        return self._explainer(batch_size).scores(self.model, self._train_inputs(
            train_idx), X_test)

    def attribute_loader(self, device: torch.device, train_loader: Any, test_loader: Any,
                         batch_size: int = 50, **kwargs: Any) -> torch.Tensor:
        """``(n_test, n_train)`` weights of every training example for every test example."""
        return self._explainer(batch_size).scores(self.model, train_loader,
                                                           test_loader)

    @staticmethod
    def compute_weights(batch_representations: torch.Tensor,
                        train_representations: torch.Tensor, n_epoch: int = 1000
                        ) -> torch.Tensor:
        """Simplex weights ``(m, n)`` of ``m`` representations over ``n``, at most ``n_epoch``
        steps (:func:`latentsurgeon.explain.simplex_weights`)."""
        n_epoch = _count(n_epoch, "n_epoch", "SimplEx.compute_weights")
        weights, _, _ = simplex_weights(batch_representations.detach(),
                                        train_representations.detach(), max_iter=n_epoch)
        return weights.to(batch_representations.dtype)

    def __str__(self) -> str:
        return "SimplEx"


class NearestNeighbours(ExampleBasedExplainer):
    """``1 / ||f(x) - f(x_n)||^2`` between ``model.encoder``'s representations."""

    def __init__(self, model: nn.Module, loss_f: Any = None,
                 X_train: torch.Tensor | None = None) -> None:
        super().__init__(model, X_train, loss_f)

    def _explainer(self, batch_size: int) -> _NearestNeighbours:
        return _NearestNeighbours(
            "inverse_distance", layer=ENCODER,
            batch_size=_count(batch_size, "batch_size", "NearestNeighbours"), progress=False)

    def attribute(self, X_test: torch.Tensor, train_idx: list, batch_size: int = 500,
                  **kwargs: Any) -> torch.Tensor:
        """``(len(X_test), len(train_idx))`` scores against ``X_train[train_idx]``."""
        return self._explainer(batch_size).scores(self.model, self._train_inputs(
            train_idx), X_test)

    def attribute_loader(self, device: torch.device, train_loader: Any, test_loader: Any,
                         batch_size: int = 50, **kwargs: Any) -> torch.Tensor:
        """``(n_test, n_train)`` scores of every training example for every test example."""
        return self._explainer(batch_size).scores(self.model, train_loader,
                                                           test_loader)

    def __str__(self) -> str:
        return "DKNN"


class TracIn(ExampleBasedExplainer):
    """TracInCP over the checkpoints ``model.fit(..., checkpoint_interval=k)`` recorded in
    ``model.checkpoints_files``: ``sum_c lr <grad L_c(test), grad L_c(train)>`` with respect to
    the encoder's parameters. ``save_dir`` is created, as lfxai does; nothing is written there
    (latentsurgeon keeps the gradients in memory)."""

    def __init__(self, model: nn.Module, loss_f: Any, save_dir: Path,
                 X_train: torch.Tensor | None = None) -> None:
        super().__init__(model, X_train, loss_f)
        self._loss = _loss_spec(loss_f, "TracIn")
        self.save_dir = _save_dir(save_dir, "TracIn")

    def _explainer(self, learning_rate: float) -> _TracIn:
        files = list(getattr(self.model, "checkpoints_files", None) or [])
        if not files:
            raise InvalidParameterError(
                "TracIn: model.checkpoints_files is empty: TracIn sums over the checkpoints of "
                "training, which model.fit(..., checkpoint_interval=k) records (lfxai returns "
                "zeros here).")
        return _TracIn(files, self._loss, params=ENCODER, lr=float(learning_rate),
                       progress=False)

    def attribute(self, X_test: torch.Tensor, train_idx: list, learning_rate: float = 1,
                  **kwargs: Any) -> torch.Tensor:
        """``(len(X_test), len(train_idx))`` scores, times ``learning_rate``."""
        return self._explainer(learning_rate).scores(self.model, self._train_inputs(
            train_idx), X_test)

    def attribute_loader(self, device: torch.device, train_loader: Any, test_loader: Any,
                         **kwargs: Any) -> torch.Tensor:
        """``(n_test, n_train)`` scores (every checkpoint weighted 1, as lfxai's)."""
        return self._explainer(1.0).scores(self.model, train_loader, test_loader)

    def __str__(self) -> str:
        return "TracIn"


class InfluenceFunctions(ExampleBasedExplainer):
    """Koh and Liang's influence ``-grad L(test)^T (H + damp * scale * I)^-1 grad L(train)``
    with respect to the encoder's parameters, solved exactly (or by conjugate gradient for
    large encoders) where lfxai runs LiSSA's ``recursion_depth`` stochastic steps, whose limit
    is the same damped system.

    The sign is Koh and Liang's: positive means upweighting the training example *raises* the
    test loss (harmful). lfxai's score is ``-score / n_train`` (no minus sign, and a division
    by the number of training examples); see docs/compat.md. ``save_dir`` is created, as lfxai
    does; nothing is written there.
    """

    def __init__(self, model: nn.Module, loss_f: Any, save_dir: Path,
                 X_train: torch.Tensor | None = None) -> None:
        super().__init__(model, X_train, loss_f)
        self._loss = _loss_spec(loss_f, "InfluenceFunctions")
        self.save_dir = _save_dir(save_dir, "InfluenceFunctions")

    def _explainer(self, damp: float, scale: float) -> _InfluenceFunctions:
        for name, value in (("damp", damp), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidParameterError(
                    f"InfluenceFunctions: {name} must be a number > 0 (the damping solved for "
                    f"is damp * scale); got {value!r}.")
        return _InfluenceFunctions(self._loss, params=ENCODER, damping=float(damp * scale),
                                   progress=False)

    def attribute(self, X_test: torch.Tensor, train_idx: list, batch_size: int = 1,
                  damp: float = 1e-3, scale: float = 1000, recursion_depth: int = 100,
                  **kwargs: Any) -> torch.Tensor:
        """``(len(X_test), len(train_idx))`` influences of ``X_train[train_idx]``, with the
        Hessian of the loss over all of ``X_train`` (lfxai samples ``recursion_depth`` batches
        of ``batch_size`` from it)."""
        self._train_inputs(train_idx)  # checks X_train and train_idx
        assert self.X_train is not None
        index = torch.as_tensor(train_idx, dtype=torch.long).reshape(-1) % len(self.X_train)
        scores = self._explainer(damp, scale).scores(self.model, self.X_train, X_test)
        return scores[:, index]

    def attribute_loader(self, device: torch.device, train_loader: Any, test_loader: Any,
                         train_loader_replacement: Any = None, recursion_depth: int = 100,
                         damp: float = 1e-3, scale: float = 1000, **kwargs: Any
                         ) -> torch.Tensor:
        """``(n_test, n_train)`` influences, the Hessian that of the loss over the examples of
        ``train_loader`` (``train_loader_replacement``, from which lfxai samples LiSSA's
        batches, and ``recursion_depth`` are accepted and not used)."""
        return self._explainer(damp, scale).scores(self.model, train_loader,
                                                            test_loader)

    def __str__(self) -> str:
        return "Influence Functions"
