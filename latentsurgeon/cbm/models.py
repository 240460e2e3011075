"""Concept bottleneck and concept embedding models, and a black box of the same size.

All three are plain ``nn.Module`` s that also follow the estimator contract: the constructor
stores its parameters and builds the layers from a seeded initialisation; ``fit`` trains from that
initialisation through :func:`latentsurgeon.training.train` (the one loop) and returns
``self``; ``get_params``, ``set_params``, ``sklearn.base.clone``, ``save`` and ``load`` work.

Output structure. The concept models return a :class:`ConceptOutput` ``(logits, concept_logits)``:
``logits`` ``(N, n_classes)`` are the task logits (first, so ``metrics.accuracy(model, data)``
reads them), ``concept_logits`` ``(N, K)`` what the concept layer produced, after any
intervention. The concept layer is the submodule ``concepts``; its output is the concept logits
(a sigmoid follows it), so interventions with :func:`~latentsurgeon.cbm.intervention` on
``"concepts"`` take ground truth with ``space="probs"``. ``model.predict_task(concept_logits,
*concept_layer_inputs)`` runs the part of the network after the concept layer (what
:func:`~latentsurgeon.cbm.task_gradients` differentiates); ``model.gradient_context()`` is that
``build_context``. :class:`BlackBoxModel` returns the task logits tensor only.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._aliases import aliased
from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Interval, Options, Seed, check_finite, draw_seed
from latentsurgeon.activations.access import ModelAccess, cast_floating, floating_dtype
from latentsurgeon.activations.batching import model_device, to_tensor
from latentsurgeon.cbm.policies import task_gradients
from latentsurgeon.errors import (
    InvalidParameterError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.training import TrainingHistory, train

__all__ = ["BlackBoxModel", "ConceptBottleneckModel", "ConceptEmbeddingModel", "ConceptOutput"]

logger = logging.getLogger(__name__)


class ConceptOutput(NamedTuple):
    """What a concept model returns.

    Attributes:
        logits: ``(N, n_classes)`` task logits.
        concept_logits: ``(N, K)`` concept logits as the concept layer produced them (after an
            intervention, if one is active); ``sigmoid`` gives the concept probabilities.
    """

    logits: torch.Tensor
    concept_logits: torch.Tensor


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _encoder(n_features: int, hidden: Sequence[int]) -> nn.Sequential:
    """Flatten, then Linear + ReLU for each hidden width: ``(N, ...) -> (N, hidden[-1])``."""
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip([n_features, *hidden[:-1]], hidden, strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


def _head(n_in: int, n_classes: int, kind: str, head_hidden: int) -> nn.Sequential:
    return _mlp([n_in, n_classes] if kind == "linear" else [n_in, head_hidden, n_classes])


class _Hidden:
    """Constraint: a non-empty tuple/list of positive ints (layer widths)."""

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (tuple, list)) and len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))

    def __str__(self) -> str:
        return "a non-empty tuple of positive ints"


_TRAINING_CONSTRAINTS = {
    "epochs": Interval(int, 1, None),
    "lr": Interval(float, 0, None, closed="neither"),
    "batch_size": Interval(int, 1, None),
    "weight_decay": Interval(float, 0, None),
    "seed": Seed(),
    "progress": bool,
}


class _ConceptModelBase(nn.Module, Estimator, ABC):
    """Shared machinery: seeded initialisation, data checks, the fitted state (saved and loaded
    as every estimator's, the weights as extra state: a loaded model is in eval mode)."""

    #: ``_ConceptModelBase.load(path)`` loads any of the concept models
    _loads_subclasses = True

    _parameter_constraints: dict[str, Any] = {
        "n_features": Interval(int, 1, None),
        "n_classes": Interval(int, 2, None),
        "hidden": _Hidden(),
        "head_kind": Options(["linear", "mlp"]),
        "head_hidden": Interval(int, 1, None),
        **_TRAINING_CONSTRAINTS,
    }

    @abstractmethod
    def _build(self) -> None:
        """Create the layers from the constructor's parameters."""

    #: Parameters that shape the layers (``set_params`` of one of them rebuilds them at ``fit``).
    _ARCHITECTURE = ("n_features", "n_concepts", "n_classes", "head_kind", "hidden", "head_hidden",
                     "embedding_size")

    def _architecture(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._ARCHITECTURE if hasattr(self, k)}

    def _init_layers(self) -> None:
        """Build the layers and give them the initialisation ``fit`` starts from: a function of
        ``seed`` (torch's global RNG is left as it was), or fresh with ``seed=None``. A
        ``torch.Generator`` seed is read, not advanced, here (the constructor changes no state
        of the caller's); each ``fit`` draws its initialisation from it."""
        self._validate_params()
        with torch.random.fork_rng(devices=[]):
            self._build()  # these draws are discarded: _reinitialise sets every weight
        self._built_for = self._architecture()
        self._reinitialise(advance=False)

    def _start(self) -> None:
        """What ``fit`` starts from: the seeded initialisation, of rebuilt layers (on the
        model's device) if ``set_params`` changed the architecture since they were built."""
        if self._architecture() != self._built_for:
            device = model_device(self)
            self._init_layers()
            if isinstance(self.seed, torch.Generator):  # fit draws from it (see _init_layers)
                self._reinitialise()
            self.to(device)
        else:
            self._reinitialise()

    def _reinitialise(self, advance: bool = True) -> None:
        """Reset every layer to the seeded initialisation (fresh draws with ``seed=None``; with
        a ``torch.Generator``, from an int drawn from it, or from a copy of it when not
        ``advance``)."""
        layers = [m for m in self.modules() if m is not self and hasattr(m, "reset_parameters")]
        seed = self.seed
        if isinstance(seed, torch.Generator) and not advance:
            seed = torch.Generator(device=seed.device).set_state(seed.get_state())
        seed = draw_seed(seed)
        if seed is None:
            for layer in layers:
                layer.reset_parameters()
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in layers:
                layer.reset_parameters()

    # -- all or nothing --------------------------------------------------------------------------
    @contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Run a ``fit`` as one transaction: if the block raises, the model is put back exactly
        as it was before the call (the layers, the values of the weights and buffers in their
        own tensors, ``training`` and ``requires_grad`` flags, ``history_`` and every other
        learned attribute, the architecture the layers were built for and a generator seed's
        state), then the error propagates. ``fit`` resets the weights before training, so
        without this a failure would lose the trained model."""
        learned = self.learned_state()
        built_for = self._built_for
        generator = self.seed if isinstance(self.seed, torch.Generator) else None
        generator_state = generator.get_state() if generator is not None else None
        try:
            # the layers (rebound ones too: set_params may make fit rebuild them), the weights'
            # values in their own tensors and the flags: the one state guard, on error only
            with preserve_model_state(self, restore_weights=True, only_on_error=True):
                yield
        except BaseException:
            for key in self.learned_state():
                if key not in learned:
                    delattr(self, key)
            for key, value in learned.items():
                setattr(self, key, value)
            self._built_for = built_for
            if generator is not None and generator_state is not None:
                generator.set_state(generator_state)
            logger.warning("%s.fit failed; the model is as it was before the call",
                           type(self).__name__)
            raise

    # -- data ------------------------------------------------------------------------------------
    def _check_data(self, inputs: Any, labels: Any, concepts: Any, *, need_concepts: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The checked training tensors: floating inputs and concepts in the model's floating
        dtype (the one dtype rule of :meth:`ModelAccess.call`; integer inputs become floats
        first), labels as ``long``. Everything is checked before any weight is touched.

        Raises:
            InvalidParameterError: a ``meta``-device model, missing labels or concepts, empty
                data, labels or concepts out of range.
            ShapeMismatchError: inputs of another width than ``n_features``, or lengths or
                concept shapes that do not match.
        """
        name = type(self).__name__
        ModelAccess(self, head=None)  # refuses a model on the meta device, naming what to do
        dtype = floating_dtype(self)
        if labels is None and concepts is None and isinstance(inputs, (tuple, list)):
            if len(inputs) not in (2, 3):
                raise InvalidParameterError(
                    f"{name}.fit: pass (inputs, labels, concepts) (a ConceptSplit) "
                    f"or the three tensors; got a sequence of {len(inputs)}.")
            inputs, labels, *rest = inputs
            concepts = rest[0] if rest and need_concepts else None
        x = _floating(to_tensor(inputs, "inputs"), dtype)
        if labels is None:
            raise InvalidParameterError(f"{name}.fit needs task labels.")
        y = _class_labels(to_tensor(labels, "labels"))
        n = len(x) if x.dim() else 0
        if n == 0:
            raise InvalidParameterError(
                f"{name}.fit: data must hold at least one sample; got inputs of shape "
                f"{tuple(x.shape)}.")
        check_finite(x, "the inputs")
        if len(y) != n:
            raise ShapeMismatchError(f"{n} inputs but {len(y)} labels.")
        if int(math.prod(x.shape[1:])) != self.n_features:
            raise ShapeMismatchError(
                f"{name}.fit: the inputs do not match n_features: the model was built for "
                f"n_features={self.n_features} input values per sample (inputs of shape "
                f"(N, {self.n_features}) or (N, ...) with {self.n_features} values); got inputs "
                f"of shape {tuple(x.shape)}, {int(math.prod(x.shape[1:]))} values per sample.")
        if bool(((y < 0) | (y >= self.n_classes)).any()):
            raise InvalidParameterError(
                f"labels must lie in [0, {self.n_classes - 1}]; got {int(y.min())}..{int(y.max())}.")
        c = None
        if concepts is not None:
            c = _floating(to_tensor(concepts, "concepts"), dtype)
            check_finite(c, "the concepts")
            if tuple(c.shape) != (n, self.n_concepts):
                raise ShapeMismatchError(
                    f"concepts must have shape ({n}, {self.n_concepts}); got {tuple(c.shape)}.")
            if bool(((c < 0) | (c > 1)).any()):
                raise InvalidParameterError(
                    "concepts must be probabilities (0/1 labels) in [0, 1]; got values in "
                    f"{float(c.min()):g}..{float(c.max()):g}.")
        elif need_concepts:
            raise InvalidParameterError(
                f"{name}.fit needs concept labels: fit(inputs, labels, concepts).")
        return x, y, c

    def _train(self, data: Any, loss_fn: Any, *, params: Any = None, desc: str) -> TrainingHistory:
        return train(self, data, loss_fn, epochs=self.epochs, lr=self.lr,
                     batch_size=self.batch_size, seed=self.seed, params=params,
                     weight_decay=self.weight_decay, progress=self.progress, desc=desc)

    # -- the fitted state ------------------------------------------------------------------------
    def learned_state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()
                if k.endswith("_") and not k.startswith("_")}

    def _extra_state(self) -> dict[str, Any]:
        """The weights (CPU copies), stored beside the parameters and ``history_``."""
        return {"state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    def _restore_extra_state(self, state: dict[str, Any], **arguments: Any) -> None:
        self.load_state_dict(state["state_dict"])
        self.eval()

    __repr__ = nn.Module.__repr__

    def n_parameters(self) -> int:
        """Number of trainable weights."""
        return sum(p.numel() for p in self.parameters())


def _floating(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in the model's floating ``dtype`` (integer and bool tensors become floats)."""
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return cast_floating(tensor, dtype)


def _class_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(N,)`` long class labels; floating labels must hold whole numbers (a cast would
    truncate 0.7 to class 0 without a word)."""
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise InvalidParameterError(
            "labels must be class indices (whole numbers); got floating-point labels with "
            "fractional values, e.g. " f"{float(labels[labels != labels.round()][0])}.")
    return labels.reshape(-1).long()


def _concept_loss(logits: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, concepts)


class ConceptBottleneckModel(_ConceptModelBase):
    """Concept bottleneck model (Koh et al. 2020): inputs -> concepts -> task.

    ``encoder`` (an MLP on the flattened inputs) feeds ``concepts``, a linear layer whose output
    is the concept logits; ``task_head`` (linear, or an MLP with one hidden layer) predicts the
    task from the concept probabilities ``sigmoid(concept_logits)``.

    Args:
        n_features: input values per sample (``prod(inputs.shape[1:])``).
        n_concepts: concepts ``K``.
        n_classes: task classes (2 for a binary task; the head outputs one logit per class).
        head_kind: the task head, ``"linear"`` or ``"mlp"`` (``head=`` is the deprecated
            spelling: ``head`` means where the logits are, everywhere else).
        scheme: how it is trained (Koh et al.'s three): ``"joint"`` (task and concept losses
            together, ``task CE + concept_weight * concept BCE``), ``"sequential"`` (the concept
            predictor first, then the head on its frozen predicted probabilities) or
            ``"independent"`` (the concept predictor, and the head on the *true* concepts; at
            test time the head reads the predicted probabilities).
        hidden: widths of the encoder's hidden layers.
        head_hidden: width of the MLP head's hidden layer.
        concept_weight: weight of the concept loss in joint training.
        epochs, lr, batch_size, weight_decay: Adam's training (each of the two stages of the
            sequential and independent schemes runs ``epochs``).
        seed: the initial weights, the batch order and any dropout are a function of it
            (None: fresh randomness; a ``torch.Generator``: each ``fit`` draws from it, so the
            same generator state gives the same model).
        progress: tqdm bars while training.
    """

    _parameter_constraints = {
        **_ConceptModelBase._parameter_constraints,
        "n_concepts": Interval(int, 1, None),
        "scheme": Options(["joint", "sequential", "independent"]),
        "concept_weight": Interval(float, 0, None),
    }

    @aliased(deprecated={"head": "head_kind"})
    def __init__(self, n_features: int, n_concepts: int, n_classes: int, *,
                 head_kind: str = "linear",
                 scheme: str = "joint", hidden: Sequence[int] = (64, 64), head_hidden: int = 64,
                 concept_weight: float = 1.0, epochs: int = 60, lr: float = 5e-3,
                 batch_size: int = 128, weight_decay: float = 0.0,
                 seed: int | torch.Generator | None = 0,
                 progress: bool = True) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_concepts = n_concepts
        self.n_classes = n_classes
        self.head_kind = head_kind
        self.scheme = scheme
        self.hidden = hidden
        self.head_hidden = head_hidden
        self.concept_weight = concept_weight
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.progress = progress
        self._init_layers()

    def _build(self) -> None:
        self.encoder = _encoder(self.n_features, self.hidden)
        self.concepts = nn.Linear(self.hidden[-1], self.n_concepts)
        self.task_head = _head(self.n_concepts, self.n_classes, self.head_kind, self.head_hidden)

    def forward(self, x: torch.Tensor) -> ConceptOutput:
        concept_logits = self.concepts(self.encoder(x))
        return ConceptOutput(self.predict_task(concept_logits), concept_logits)

    def predict_task(self, concept_logits: torch.Tensor, *concept_layer_inputs: Any
                     ) -> torch.Tensor:
        """Task logits ``(N, n_classes)`` from concept logits ``(N, K)``: the network after
        the concept layer (its inputs are not needed here)."""
        return self.task_head(torch.sigmoid(concept_logits))

    def gradient_context(self) -> Any:
        """The ``build_context`` of :class:`GradientPolicy` on the ``concepts`` layer."""
        return task_gradients(self.predict_task)

    @aliased(deprecated={"inputs": "data"})
    def fit(self, data: Any, labels: Any = None, concepts: Any = None
            ) -> ConceptBottleneckModel:
        """Train from the seeded initialisation (a second ``fit`` starts over).

        Args:
            data: ``(N, ...)`` inputs, or an ``(inputs, labels, concepts)`` triple such as a
                :class:`~latentsurgeon.data.ConceptSplit` (then leave the others None).
            labels: ``(N,)`` task labels in ``0..n_classes-1``.
            concepts: ``(N, K)`` concept labels in ``[0, 1]``.

        Returns:
            self, in eval mode, with ``history_``: the per-epoch losses of each stage.
        """
        with self._all_or_nothing():
            self._validate_params()
            x, y, c = self._check_data(data, labels, concepts, need_concepts=True)
            assert c is not None
            self._start()
            history: dict[str, Any] = {}
            if self.scheme == "joint":
                weight = float(self.concept_weight)

                def joint(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
                    xb, yb, cb = batch
                    out = model(xb)
                    task = F.cross_entropy(out.logits, yb)
                    concept = _concept_loss(out.concept_logits, cb)
                    return {"loss": task + weight * concept, "task": task, "concept": concept}

                history["joint"] = self._train((x, y, c), joint, desc="cbm joint").to_dict()
            else:
                predictor = [*self.encoder.parameters(), *self.concepts.parameters()]

                def concept_stage(model: nn.Module, batch: Any) -> torch.Tensor:
                    xb, cb = batch
                    return _concept_loss(model.concepts(model.encoder(xb)), cb)

                history["concepts"] = self._train((x, c), concept_stage, params=predictor,
                                                  desc="cbm concepts").to_dict()
                if self.scheme == "sequential":
                    with torch.no_grad():
                        head_inputs = torch.sigmoid(self.concepts(self.encoder(x)))
                else:
                    head_inputs = c

                def head_stage(model: nn.Module, batch: Any) -> torch.Tensor:
                    pb, yb = batch
                    return F.cross_entropy(model.task_head(pb), yb)

                history["head"] = self._train((head_inputs, y), head_stage,
                                              params=list(self.task_head.parameters()),
                                              desc="cbm head").to_dict()
            self.history_ = history
        return self


class ConceptEmbeddingModel(_ConceptModelBase):
    """Concept embedding model (Espinosa Zarlenga et al. 2022) with RandInt training.

    For every concept ``i`` the ``embeddings`` layer makes two embeddings of size ``m`` from the
    encoder's features, ``c_i+`` (concept present) and ``c_i-`` (absent), LeakyReLU-activated;
    ``concepts``, the concept layer, scores each pair with one shared linear map to the concept
    logit ``s_i``; the task head reads the mixtures ``p_i c_i+ + (1 - p_i) c_i-`` with
    ``p_i = sigmoid(s_i)``, concatenated. Intervening on ``s_i`` moves the mixture to one of the
    two embeddings, so ground truth still steers the task, while the embeddings carry what the
    concepts leave out (the bottleneck need not be complete).

    RandInt: during training each concept probability is replaced by its true value with
    probability ``rand_int`` (independently per sample and concept), so the head learns to use
    interventions (0.25 as the paper recommends). Training is joint: ``task CE +
    concept_weight * concept BCE`` (the concept loss on the predicted logits).

    Args:
        n_features, n_concepts, n_classes, head_kind, hidden, head_hidden, concept_weight, epochs,
            lr, batch_size, weight_decay, seed, progress: as :class:`ConceptBottleneckModel`.
        embedding_size: ``m``, the size of each concept embedding.
        rand_int: probability of a ground-truth intervention per concept during training.
    """

    _parameter_constraints = {
        **_ConceptModelBase._parameter_constraints,
        "n_concepts": Interval(int, 1, None),
        "embedding_size": Interval(int, 1, None),
        "rand_int": Interval(float, 0, 1),
        "concept_weight": Interval(float, 0, None),
    }

    @aliased(deprecated={"head": "head_kind"})
    def __init__(self, n_features: int, n_concepts: int, n_classes: int, *,
                 head_kind: str = "linear",
                 embedding_size: int = 16, rand_int: float = 0.25,
                 hidden: Sequence[int] = (64, 64), head_hidden: int = 64,
                 concept_weight: float = 1.0, epochs: int = 60, lr: float = 5e-3,
                 batch_size: int = 128, weight_decay: float = 0.0,
                 seed: int | torch.Generator | None = 0,
                 progress: bool = True) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_concepts = n_concepts
        self.n_classes = n_classes
        self.head_kind = head_kind
        self.embedding_size = embedding_size
        self.rand_int = rand_int
        self.hidden = hidden
        self.head_hidden = head_hidden
        self.concept_weight = concept_weight
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.progress = progress
        self._init_layers()

    def _build(self) -> None:
        k, m = self.n_concepts, self.embedding_size
        self.encoder = _encoder(self.n_features, self.hidden)
        self.embeddings = nn.Sequential(nn.Linear(self.hidden[-1], k * 2 * m), nn.LeakyReLU(),
                                        nn.Unflatten(1, (k, 2, m)))
        self.concepts = _PairScorer(m)
        self.task_head = _head(k * m, self.n_classes, self.head_kind, self.head_hidden)

    def forward(self, x: torch.Tensor) -> ConceptOutput:
        embeddings = self.embeddings(self.encoder(x))
        concept_logits = self.concepts(embeddings)
        return ConceptOutput(self.predict_task(concept_logits, embeddings), concept_logits)

    def mix(self, probs: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` probabilities and ``(N, K, 2, m)`` embeddings -> ``(N, K * m)``."""
        p = probs.unsqueeze(-1)
        return (p * embeddings[:, :, 0] + (1 - p) * embeddings[:, :, 1]).flatten(1)

    def predict_task(self, concept_logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Task logits from concept logits ``(N, K)`` and the concept layer's input, the
        embeddings ``(N, K, 2, m)``."""
        return self.task_head(self.mix(torch.sigmoid(concept_logits), embeddings))

    def gradient_context(self) -> Any:
        """The ``build_context`` of :class:`GradientPolicy` on the ``concepts`` layer."""
        return task_gradients(self.predict_task)

    @aliased(deprecated={"inputs": "data"})
    def fit(self, data: Any, labels: Any = None, concepts: Any = None
            ) -> ConceptEmbeddingModel:
        """Train jointly with RandInt from the seeded initialisation (arguments as
        :meth:`ConceptBottleneckModel.fit`). Returns self, in eval mode, with ``history_``."""
        with self._all_or_nothing():
            self._validate_params()
            x, y, c = self._check_data(data, labels, concepts, need_concepts=True)
            assert c is not None
            self._start()
            weight, rate = float(self.concept_weight), float(self.rand_int)

            def joint(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
                xb, yb, cb = batch
                embeddings = model.embeddings(model.encoder(xb))
                logits = model.concepts(embeddings)
                probs = torch.sigmoid(logits)
                # RandInt: ground-truth interventions at random (torch's RNG, seeded by train()).
                replaced = torch.rand(probs.shape, device=probs.device) < rate
                probs = torch.where(replaced, cb, probs)
                task = F.cross_entropy(model.task_head(model.mix(probs, embeddings)), yb)
                concept = _concept_loss(logits, cb)
                return {"loss": task + weight * concept, "task": task, "concept": concept}

            self.history_ = {"joint": self._train((x, y, c), joint, desc="cem joint").to_dict()}
        return self


class _PairScorer(nn.Module):
    """CEM's shared scoring function: ``(N, K, 2, m)`` embedding pairs -> ``(N, K)`` logits."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(2 * embedding_size, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.score(embeddings.flatten(2)).squeeze(-1)


class BlackBoxModel(_ConceptModelBase):
    """The baseline without concepts: the same encoder and head sizes, trained on the task only.

    ``encoder`` (as in the concept models) feeds ``task_head`` (linear, or an MLP with one
    hidden layer of ``head_hidden``) directly. It returns the task logits ``(N, n_classes)``.

    Args:
        n_features, n_classes, head_kind, hidden, head_hidden, epochs, lr, batch_size,
            weight_decay, seed, progress: as :class:`ConceptBottleneckModel`.
    """

    @aliased(deprecated={"head": "head_kind"})
    def __init__(self, n_features: int, n_classes: int, *,
                 head_kind: str = "mlp",
                 hidden: Sequence[int] = (64, 64), head_hidden: int = 64, epochs: int = 60,
                 lr: float = 5e-3, batch_size: int = 128, weight_decay: float = 0.0,
                 seed: int | torch.Generator | None = 0, progress: bool = True) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_classes = n_classes
        self.head_kind = head_kind
        self.hidden = hidden
        self.head_hidden = head_hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.progress = progress
        self._init_layers()

    def _build(self) -> None:
        self.encoder = _encoder(self.n_features, self.hidden)
        self.task_head = _head(self.hidden[-1], self.n_classes, self.head_kind, self.head_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task_head(self.encoder(x))

    @aliased(deprecated={"inputs": "data"})
    def fit(self, data: Any, labels: Any = None, concepts: Any = None) -> BlackBoxModel:
        """Train on the task from the seeded initialisation; ``concepts`` are ignored (so a
        :class:`~latentsurgeon.data.ConceptSplit` can be passed as it is). Returns self."""
        with self._all_or_nothing():
            self._validate_params()
            x, y, _ = self._check_data(data, labels, None, need_concepts=False)

            def task(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
                xb, yb = batch
                logits = model(xb)
                return {"loss": F.cross_entropy(logits, yb),
                        "acc": (logits.detach().argmax(1) == yb).float().mean()}

            self._start()
            self.history_ = {"task": self._train((x, y), task, desc="black box").to_dict()}
        return self
