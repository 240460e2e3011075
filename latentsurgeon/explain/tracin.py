"""TracIn (Pruthi et al., 2020): a training example's influence on a test example, traced over the
checkpoints of training, ``sum_c lr_c <grad L_c(test), grad L_c(train)>``."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Callable, Interval, Options
from latentsurgeon.activations.access import LOSSES, LossSpec, ModelAccess
from latentsurgeon.activations.batching import analysis_device, iter_batches, to_device
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.explain._base import Block, ExampleExplainer
from latentsurgeon.explain._gradients import (
    CheckpointSpec,
    CountSketch,
    GradientSpec,
    NotFactorable,
    gradient_matrix,
    gradients_from_data,
    gradients_to_data,
    inner,
    linear_layers,
    load_checkpoints,
    parameter_names,
    per_sample_gradients,
)
from latentsurgeon.hooks import preserve_model_state, resolve_layer
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["TracIn"]

logger = logging.getLogger(__name__)


class TracIn(ExampleExplainer):
    """TracInCP: ``score(test, train) = sum_c lr_c <g_c(test), g_c(train)>``, ``g_c`` the gradient
    of a sample's loss at checkpoint ``c`` with respect to the chosen parameters.

    Per-sample gradients come from ``torch.func`` (``vmap(grad(loss))`` through
    ``functional_call``): one vectorised call per batch, with each checkpoint's weights swapped in
    functionally, so the model's own weights are never touched. When every differentiated
    parameter belongs to an ``nn.Linear`` layer (and there is no projection and no loss
    callable), the gradients stay factored instead: a sample's weight gradient is the outer
    product of the layer's output gradient and input, so inner products need only those
    (:class:`~latentsurgeon.explain._gradients.LinearFactors`; the same numbers, ``in + out``
    floats per sample and layer instead of ``in * out``). Training gradients are computed once
    per checkpoint and reused for every test batch (and kept after ``fit`` when they take at
    most ``cache_mb``).

    Args:
        checkpoints: the checkpoints to sum over: the directory ``train(checkpoint_dir=...)``
            wrote (its ``epoch_*.pt``, which hold ``"state_dict"`` and ``"lr"``), a list of such
            files, of checkpoint dicts or of plain state dicts, or ``"current"`` for the model's
            present weights (gradient similarity at the final weights, lr 1 unless ``lr`` says
            otherwise). None or an empty list is an error (lfxai returns zeros).
        loss: the per-sample loss: ``"reconstruction"`` (an autoencoder's mean squared error,
            label-free), ``"cross_entropy"`` (a classifier's, with the data's labels),
            ``"predicted"`` (cross-entropy with the predicted class) or a callable
            ``loss(output, batch) -> scalar`` of the output (or of ``layer``'s output) for a
            batch of one sample.
        test_loss: the loss of test examples (default: ``loss``); e.g. ``"predicted"`` to
            explain the model's prediction when training examples use ``"cross_entropy"``.
        params: a layer selector; the gradients are taken with respect to the parameters of
            the selected modules (``"encoder"``, ``"classifier.1"``). Default: every parameter
            that requires grad.
        layer: the loss is a function of this layer's output (the forward pass stops there);
            None: of the model's output.
        head: where the logits are in a structured output.
        lr: replaces the checkpoints' recorded learning rates (needed for plain state dicts).
        normalize: unit-normalise every gradient first, so scores sum cosine similarities.
            Raw dot products are dominated by the examples with the largest gradients (high-loss
            examples); normalised ones rank by direction only.
        projection_dim: project gradients to this many dimensions with a seeded CountSketch
            (inner products preserved in expectation) for models too large for ``(N, P)``
            gradient matrices. None: exact gradients.
        seed: the projection's seed.
        batch_size: samples per ``vmap`` call.
        cache_mb: keep the training gradients after ``fit`` if they take at most this much
            memory (MiB); otherwise every ``explain`` recomputes them, once per checkpoint.
        device: None or the model's device (an analysis never moves the model).
        progress: tqdm bars over checkpoints and batches.

    ``fit(train, model)``: ``train`` holds inputs (and labels for ``"cross_entropy"``) in any
    form :func:`~latentsurgeon.activations.batching.iter_batches` reads; ``model`` is required.

    Learned attributes:
        lrs_: the learning rate of each checkpoint.
        n_params_: number of parameters differentiated.
        n_train_: number of training examples.
        gradients_cached_: whether ``fit`` kept the training gradients (within ``cache_mb``).
        train_block_: the ``[start, end)`` training rows this process scores (all of them
            outside a process group).
    """

    _all_zero_cause = (
        "every per-sample gradient is zero, so the loss does not depend on the parameters "
        "differentiated (a loss callable that ignores the output, params= naming layers the "
        "loss does not reach, or a saturated model). Check loss=, test_loss= and params=.")
    _parameter_constraints = {
        "loss": [Options(LOSSES), Callable()],
        "test_loss": [Options(LOSSES), Callable(), None],
        "layer": [str, None],
        "lr": [Interval(float, 0, None, closed="neither"), None],
        "normalize": bool,
        "projection_dim": [Interval(int, 1, None), None],
        "seed": Interval(int, 0, None),
        "batch_size": Interval(int, 1, None),
        "cache_mb": Interval(float, 0, None),
        "progress": bool,
    }

    def __init__(self, checkpoints: CheckpointSpec = None, loss: LossSpec = "reconstruction", *,
                 test_loss: LossSpec | None = None, params: LayerSelector | None = None,
                 layer: str | None = None, head: str | int | None = "logits",
                 lr: float | None = None, normalize: bool = False,
                 projection_dim: int | None = None, seed: int = 0, batch_size: int = 64,
                 cache_mb: float = 512.0, device: str | torch.device | None = None,
                 progress: bool = True) -> None:
        self.checkpoints = checkpoints
        self.loss = loss
        self.test_loss = test_loss
        self.params = params
        self.layer = layer
        self.head = head
        self.lr = lr
        self.normalize = normalize
        self.projection_dim = projection_dim
        self.seed = seed
        self.batch_size = batch_size
        self.cache_mb = cache_mb
        self.device = device
        self.progress = progress

    # -- setup -----------------------------------------------------------------------------------
    def _specs(self, model: nn.Module, device: torch.device) -> tuple[GradientSpec, GradientSpec]:
        names = parameter_names(model, self.params)
        layer = None if self.layer is None else resolve_layer(model, self.layer)
        projector = None
        if self.projection_dim is not None:
            sizes = [dict(model.named_parameters())[n].numel() for n in names]
            projector = CountSketch(sizes, self.projection_dim, self.seed, device)
        test_loss = self.loss if self.test_loss is None else self.test_loss
        linear = None
        if projector is None and not callable(self.loss) and not callable(test_loss):
            linear = linear_layers(model, names)
        train = GradientSpec(ModelAccess(model, head=self.head, loss=self.loss), names,
                             self.normalize, projector, linear, layer)
        test = GradientSpec(ModelAccess(model, head=self.head, loss=test_loss), names,
                            self.normalize, projector, linear, layer)
        return train, test

    def _fit(self, train: Any, local: Block, model: nn.Module | None) -> None:
        if model is None:
            raise LatentSurgeonError("TracIn.fit needs the model: fit(train, model=model).")
        device = analysis_device(model, self.device)
        self._device = device
        self._states = load_checkpoints(self.checkpoints, self.lr, model, device)
        self._train_spec, self._test_spec = self._specs(model, device)
        self._train_block = local
        if self._train_spec.linear is not None and not self._factorable(model):
            self._train_spec.linear = self._test_spec.linear = None
        self.lrs_ = [rate for _, rate in self._states]
        self.n_params_ = sum(dict(model.named_parameters())[n].numel()
                             for n in self._train_spec.names)
        width = self.projection_dim or self.n_params_
        if self._train_spec.linear is not None:  # factored: inputs and output gradients
            modules = dict(model.named_modules())
            width = sum(modules[n].in_features + modules[n].out_features
                        for n, _ in self._train_spec.linear)
        itemsize = torch.empty((), dtype=next(iter(self._states[0][0].values())).dtype
                               ).element_size()
        needed_mb = len(self._states) * (local.end - local.start) * width * itemsize / 2**20
        self._train_gradients: list[Any] | None = None
        self._train_bounds: list[tuple[int, int]] = []
        self.gradients_cached_ = needed_mb <= self.cache_mb
        if self.gradients_cached_:
            self._train_gradients = []
            for state, _ in self._checkpoint_bar("TracIn: training gradients"):
                grads, bounds = self._compute_train_gradients(state, model)
                self._train_gradients.append(grads)
                self._train_bounds = bounds
        else:
            logger.info("TracIn: training gradients need %.0f MiB (> cache_mb=%.0f); each "
                        "explain() recomputes them once per checkpoint", needed_mb, self.cache_mb)

    def _factorable(self, model: nn.Module) -> bool:
        """Whether factored gradients work on this model (tried on the first training batch)."""
        for batch in iter_batches(self._train_block.data, self.batch_size):
            try:
                with preserve_model_state(model):
                    model.eval()
                    per_sample_gradients(self._train_spec, self._states[0][0],
                                         to_device(batch, self._device))
            except NotFactorable as exc:
                logger.info("TracIn: flat per-sample gradients (%s)", exc)
                return False
            break
        return True

    def _checkpoint_bar(self, desc: str) -> Any:
        return tqdm(self._states, desc=desc, unit="checkpoint", leave=False,
                    disable=None if self.progress else True)

    def _compute_train_gradients(self, state: dict, model: nn.Module
                         ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        with preserve_model_state(model):
            model.eval()
            return gradient_matrix(self._train_spec, state, self._train_block.data,
                                   self.batch_size, self._device, desc="training gradients",
                                   progress=self.progress)

    # -- saving ----------------------------------------------------------------------------------
    def _explainer_state(self) -> dict[str, Any]:
        """The checkpoints' weights and the training gradients (a saved TracIn needs neither
        the checkpoint files nor the training data)."""
        if not self.gradients_cached_:
            raise LatentSurgeonError(
                f"TracIn.save: the training gradients were not kept after fit (they need more "
                f"than cache_mb={self.cache_mb} MiB), and without them a loaded TracIn could not "
                "explain: every explain() recomputes them from the training data. Fit with a "
                "larger cache_mb (or projection_dim) to save it.")
        assert self._train_gradients is not None
        return {"states": [{k: v.detach().cpu() for k, v in state.items()}
                           for state, _ in self._states],
                "linear": self._train_spec.linear,
                "gradients": [gradients_to_data(g) for g in self._train_gradients],
                "bounds": [list(b) for b in self._train_bounds]}

    def _reattach(self, state: dict[str, Any], model: nn.Module) -> None:
        device = analysis_device(model, self.device)
        self._device = device
        self._states = [({k: v.to(device) for k, v in weights.items()}, rate)
                        for weights, rate in zip(state["states"], self.lrs_, strict=True)]
        self._train_spec, self._test_spec = self._specs(model, device)
        self._train_spec.linear = self._test_spec.linear = state["linear"]  # as fit found
        self._train_gradients = [gradients_from_data(g, device) for g in state["gradients"]]
        self._train_bounds = [(int(a), int(b)) for a, b in state["bounds"]]

    # -- scoring ---------------------------------------------------------------------------------
    def _explain(self, test: Any) -> torch.Tensor:
        model = self._model
        assert model is not None  # explain() refuses a TracIn loaded without its model
        scores: torch.Tensor | None = None
        with preserve_model_state(model):
            model.eval()
            for c, (state, rate) in enumerate(self._checkpoint_bar("TracIn")):
                if self._train_gradients is not None:
                    train_grads, bounds = self._train_gradients[c], self._train_bounds
                else:
                    train_grads, bounds = self._compute_train_gradients(state, model)
                rows = []
                for batch in iter_batches(test, self.batch_size):
                    g = per_sample_gradients(self._test_spec, state,
                                             to_device(batch, self._device))
                    blocks = [inner(g, train_grads[s:e]) for s, e in bounds] or [
                        g.new_zeros(len(g), 0)]
                    rows.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1))
                block = (rows[0] if len(rows) == 1 else torch.cat(rows)) * rate
                scores = block if scores is None else scores + block
        assert scores is not None  # at least one checkpoint (load_checkpoints raises otherwise)
        return scores.to("cpu")
