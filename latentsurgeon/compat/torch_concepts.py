"""pytorch_concepts 1.0's interventions (``torch_concepts.nn``) with the calling conventions of its
code (1.0.0a6 and 1.0.0a7), on :mod:`latentsurgeon.cbm`.

Code written for pytorch_concepts runs with its import line changed to
``from latentsurgeon.compat.torch_concepts import InterventionModule, DoIntervention, ...``.
Everything here is an adapter: the mask is :func:`latentsurgeon.cbm.build_mask`, the strategies
and policies are latentsurgeon.cbm's, and the intervention is
:class:`latentsurgeon.cbm.InterventionModule`'s. What the adapters add are pytorch_concepts'
conventions, where they differ from the seed document that latentsurgeon.cbm follows:

* ``build_context(preds, original_module, inputs_by_name, extra_tensors, extra_modules)``
  (latentsurgeon.cbm: ``build_context(module, predictions, *args, **kwargs)``, the
  GradientPolicy docstring's form);
* ``module(x, extra_tensors={...})``: tensors given at call time reach ``build_context``;
* a layer output ``(..., F)`` is intervened on per leading-dimension slice: every slice of ``F``
  concepts gets its own mask (1.0.0a7), and ``out_concepts_to_intervene_on`` may give the
  candidates per slice (``[*lead, K]``);
* ``DistributionIntervention`` takes a list of per-concept distributions;
* ``RandomPolicy(scale=)``, ``UncertaintyInterventionPolicy(max_uncertainty_point=)``;
* strategies and policies are ``nn.Module`` s (they move and save with the model) and policies
  have ``build_mask(policy_scores, sel_idx, quantile, eps)``.

``docs/compat.md`` lists every difference from pytorch_concepts with its reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from latentsurgeon import cbm
from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.cbm.intervention import _attached
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = [
    "DistributionIntervention",
    "DoIntervention",
    "GradientPolicy",
    "GroundTruthIntervention",
    "InterventionModule",
    "RandomPolicy",
    "UncertaintyInterventionPolicy",
    "UniformPolicy",
    "intervene",
    "intervention",
]

Selection = Sequence[int] | Sequence[str] | Sequence[Sequence[int]] | torch.Tensor | None


# -- masks per leading-dimension slice -------------------------------------------------------------
def _selection_tensor(selection: Selection, layer: nn.Module | None = None) -> torch.Tensor | None:
    """``out_concepts_to_intervene_on`` as a LongTensor ``[K]`` or ``[*lead, K]`` (None: all).

    Names are looked up in ``layer.out_concepts`` (pytorch_concepts' ``Annotations``, read
    through its ``get_slice``).

    Raises:
        InvalidParameterError: names without annotations, floats, ragged nested lists.
    """
    if selection is None:
        return None
    if isinstance(selection, torch.Tensor):
        if selection.is_floating_point() or selection.is_complex() or selection.dtype == torch.bool:
            raise InvalidParameterError(
                "out_concepts_to_intervene_on as a tensor must hold integer positions ([K] or "
                f"[*lead, K]); got dtype {selection.dtype}.")
        return selection.to(torch.long)
    if isinstance(selection, str) or not isinstance(selection, Sequence):
        raise InvalidParameterError(
            "out_concepts_to_intervene_on must be a list of positions, of names, of per-slice "
            f"position lists, or a LongTensor; got {type(selection).__name__} {selection!r}.")
    if len(selection) == 0:
        return torch.empty(0, dtype=torch.long)
    if all(isinstance(s, str) for s in selection):
        annotations = getattr(layer, "out_concepts", None)
        if not callable(getattr(annotations, "get_slice", None)):
            raise InvalidParameterError(
                "out_concepts_to_intervene_on gives names " f"{list(selection)}, but the layer "
                "has no annotated 'out_concepts' (an object with get_slice(names)) to look them "
                "up in; give positions instead.")
        indices = annotations.get_slice(list(selection))
        if isinstance(indices, slice):
            indices = list(range(indices.start, indices.stop, indices.step or 1))
        return torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    try:
        flat = torch.as_tensor(selection)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidParameterError(
            "out_concepts_to_intervene_on must be positions (ints), names (strs) or per-slice "
            f"lists of positions of one length; got {selection!r}.") from None
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise InvalidParameterError(
            "out_concepts_to_intervene_on must hold integer positions (or names); got "
            f"{selection!r}.")
    return flat.to(torch.long)


def _slice_mask(scores: torch.Tensor, selection: torch.Tensor | None, quantile: float
                ) -> torch.Tensor:
    """pytorch_concepts 1.0.0a7's mask of ``scores`` ``(..., F)``: one mask per slice of ``F``.

    ``selection`` is None (all ``F``), ``[K]`` (the same candidates in every slice) or
    ``[*lead, K]`` (broadcast, right-aligned, against the leading dimensions: candidates per
    slice). An empty selection keeps everything. Each group of slices that shares candidates
    is masked by one :func:`latentsurgeon.cbm.build_mask` call.

    Returns:
        ``(..., F)`` mask in the scores' dtype: 1 kept, 0 replaced.
    """
    if scores.dim() < 1:
        raise ShapeMismatchError(
            f"An intervention needs scores of shape (..., F); got a scalar {tuple(scores.shape)}.")
    lead, n_concepts = tuple(scores.shape[:-1]), scores.shape[-1]
    flat = scores.reshape(-1, n_concepts)
    if selection is None:
        return cbm.build_mask(flat, None, quantile).reshape(scores.shape)
    selection = selection.to(device=scores.device)
    if selection.shape[-1] == 0:  # nothing selected: nothing replaced (k = 0 keeps all)
        return cbm.build_mask(flat, None, quantile, k=0).reshape(scores.shape)
    if selection.dim() == 1:
        return cbm.build_mask(flat, selection.tolist(), quantile).reshape(scores.shape)
    try:
        per_slice = torch.broadcast_to(selection, (*lead, selection.shape[-1]))
    except RuntimeError:
        raise ShapeMismatchError(
            f"out_concepts_to_intervene_on has leading dimensions {tuple(selection.shape[:-1])}, "
            f"which do not broadcast against the layer output's {lead}; give [K], or "
            "[*lead, K] with 1 where a dimension is shared.") from None
    rows = per_slice.reshape(len(flat), -1)
    groups, which = torch.unique(rows, dim=0, return_inverse=True)
    mask = torch.empty(flat.shape, dtype=flat.dtype if flat.is_floating_point() else
                       torch.float32, device=flat.device)
    for g, candidates in enumerate(groups):
        members = which == g
        mask[members] = cbm.build_mask(flat[members], candidates.tolist(), quantile)
    return mask.reshape(scores.shape)


# -- strategies ------------------------------------------------------------------------------------
class _Strategy(nn.Module):
    """pytorch_concepts' ``ConceptInterventionStrategy``: ``strategy(x, *args, **context)``
    returns new values shaped like the layer output ``x``; the work is latentsurgeon.cbm's
    strategy in ``_core``."""

    _core: cbm.InterventionStrategy

    def forward(self, x: torch.Tensor, *args: Any, **context: Any) -> torch.Tensor:
        # the layer's own inputs (args) are not part of our strategies' inputs
        return self._core(x, **context)


class GroundTruthIntervention(_Strategy):
    """Replace outputs with the true values ``ground_truth`` (shaped like the layer output, in
    its output space: logits where a sigmoid follows the layer). Set ``ground_truth`` anew
    before each batch."""

    def __init__(self, ground_truth: torch.Tensor) -> None:
        super().__init__()
        self._core = cbm.GroundTruthIntervention(ground_truth)

    @property
    def ground_truth(self) -> torch.Tensor:
        return self._core.ground_truth

    @ground_truth.setter
    def ground_truth(self, value: torch.Tensor) -> None:
        self._core.ground_truth = value


class DoIntervention(_Strategy):
    """Set outputs to constants, ``do(C = c)``: a scalar, ``[F]``, or any shape that broadcasts
    to the layer output ``[..., F]``. ``constants`` is a buffer (moved and saved with the
    module)."""

    constants: torch.Tensor

    def __init__(self, constants: torch.Tensor | float) -> None:
        super().__init__()
        cbm.DoIntervention(constants)  # validates: a number or a tensor, finite
        self.register_buffer("constants", torch.as_tensor(constants).clone()
                             if isinstance(constants, torch.Tensor) else torch.tensor(constants))

    def forward(self, x: torch.Tensor, *args: Any, **context: Any) -> torch.Tensor:
        # built per call from the buffer, so that .to(device) and load_state_dict are honoured
        return cbm.DoIntervention(self.constants)(x, **context)


class DistributionIntervention(_Strategy):
    """Sample the new values from ``dist``: one distribution for every output (any shape that
    ends the layer output's), or a list of ``F`` scalar distributions, one per output.

    Args:
        dist: a ``torch.distributions.Distribution`` or a list of them.
        seed: (latentsurgeon's addition) None draws from torch's global RNG; an int makes the
            stream of samples reproducible and leaves the global RNG alone.
    """

    def __init__(self, dist: torch.distributions.Distribution
                 | Sequence[torch.distributions.Distribution], *,
                 seed: int | torch.Generator | None = None) -> None:
        super().__init__()
        self._core = cbm.DistributionIntervention(dist, seed=seed)
        self.dist = dist


# -- policies --------------------------------------------------------------------------------------
class _Policy(nn.Module):
    """pytorch_concepts' ``InterventionPolicy``: ``policy(x, *args, **context)`` scores the layer
    output ``x`` (the lowest are intervened on first); ``build_mask`` turns scores into a mask."""

    _core: cbm.InterventionPolicy

    def forward(self, x: torch.Tensor, *args: Any, **context: Any) -> torch.Tensor:
        return self._core(x)

    def build_mask(self, policy_scores: torch.Tensor, sel_idx: Selection = None,
                   quantile: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
        """The mask of ``policy_scores`` ``(..., F)``, per leading-dimension slice: 1 kept, 0
        replaced; ``sel_idx`` the candidates (``[K]`` or ``[*lead, K]``; None: all; empty:
        none). ``eps`` is accepted for pytorch_concepts' signature (it belongs to its
        straight-through proxy, which latentsurgeon does not build)."""
        validate_params({"quantile": quantile}, {"quantile": Interval(float, 0, 1)},
                        owner=f"{type(self).__name__}.build_mask()")
        return _slice_mask(policy_scores, _selection_tensor(sel_idx), quantile)


class UniformPolicy(_Policy):
    """Every output scores 0: no preference (with a quantile, every candidate ties and all are
    intervened on)."""

    def __init__(self) -> None:
        super().__init__()
        self._core = cbm.UniformPolicy()


class RandomPolicy(_Policy):
    """Uniform random scores in ``[0, scale)``.

    Args:
        scale: the scores' scale (>= 0; 0 makes every score 0, i.e. uniform).
        seed: (latentsurgeon's addition) None draws from torch's global RNG; an int makes the
            stream of scores reproducible.
    """

    def __init__(self, scale: float = 1.0, *, seed: int | torch.Generator | None = None) -> None:
        super().__init__()
        validate_params({"scale": scale}, {"scale": Interval(float, 0, None)},
                        owner="RandomPolicy")
        self.scale = float(scale)
        self._core = cbm.RandomPolicy(seed=seed)

    def forward(self, x: torch.Tensor, *args: Any, **context: Any) -> torch.Tensor:
        return self._core(x) * self.scale


class UncertaintyInterventionPolicy(_Policy):
    """Score ``|x - max_uncertainty_point|``: the outputs closest to the point of maximum
    uncertainty first (0 for logits, 0.5 for probabilities)."""

    def __init__(self, max_uncertainty_point: float = 0.0) -> None:
        super().__init__()
        validate_params({"max_uncertainty_point": max_uncertainty_point},
                        {"max_uncertainty_point": Interval(float, None, None)},
                        owner="UncertaintyInterventionPolicy")
        self.max_uncertainty_point = float(max_uncertainty_point)
        # |x - point| is latentsurgeon's logit uncertainty, |z - 0|, of the shifted z = x - point
        self._core = cbm.UncertaintyPolicy(layer_output="logits")

    def forward(self, x: torch.Tensor, *args: Any, **context: Any) -> torch.Tensor:
        return self._core(x - self.max_uncertainty_point)


class GradientPolicy(_Policy):
    """Score ``-|concept_grads|``: the outputs the task is most sensitive to first; zeros
    (uniform) without ``concept_grads`` in the context (``build_context`` gives them)."""

    def __init__(self) -> None:
        super().__init__()
        self._core = cbm.GradientPolicy()

    def forward(self, x: torch.Tensor, *args: Any, concept_grads: torch.Tensor | None = None,
                **context: Any) -> torch.Tensor:
        # one context serves the policy and the strategy: keys for the strategy are not ours
        return self._core(x, concept_grads=concept_grads)


# -- the module ------------------------------------------------------------------------------------
BuildContext = Callable[[torch.Tensor, nn.Module, dict, dict, dict], Mapping[str, Any] | None]


class InterventionModule(cbm.InterventionModule):
    """Wrap a layer so that calling it returns intervened outputs (pytorch_concepts 1.0).

    Args:
        original_module: the layer; its output ``[..., F]`` is intervened on per slice of ``F``.
        intervention_strategy: the new values (a strategy of this module, or latentsurgeon.cbm's).
        intervention_policy: the scores, lowest intervened on first.
        out_concepts_to_intervene_on: the candidates: positions, names (if the layer has
            annotated ``out_concepts``), per-slice positions ``[*lead, K]`` (nested lists or a
            LongTensor); ``[]`` intervenes on nothing; None (1.0.0a6's default): all. 1.0.0a7
            requires the argument; here it may be left out.
        quantile: how many candidates, ``k = max(1, min(K, 1 + floor(quantile (K - 1))))`` and
            ties at the threshold.
        eps: kept for the signature (pytorch_concepts' straight-through proxy's constant).
        build_context: ``build_context(original_module_predictions, original_module,
            original_module_inputs, extra_tensors, extra_modules) -> dict`` of extra inputs of
            the policy and the strategy; ``original_module_inputs`` is the layer call's
            arguments by name, ``extra_tensors`` what the call passed as ``extra_tensors=``,
            ``extra_modules`` the ``extra_modules`` below. Or override :meth:`build_context`.
        extra_modules: ``{name: module}`` registered on this module and given to
            ``build_context``.

    Call it as the layer, plus ``extra_tensors={...}``: ``module(x, extra_tensors={"y": y})``.

    Raises:
        InvalidParameterError: a parameter out of range, a ``build_context`` that is not
            callable, a selection of names without annotations or of floats.
    """

    def __init__(self, original_module: nn.Module, intervention_strategy: Callable[..., Any],
                 intervention_policy: Callable[..., Any],
                 out_concepts_to_intervene_on: Selection = None, quantile: float = 1.0,
                 eps: float = 1e-12, build_context: BuildContext | None = None,
                 extra_modules: Mapping[str, nn.Module] | None = None) -> None:
        if build_context is not None and not callable(build_context):
            raise InvalidParameterError(
                "InterventionModule: build_context must be a callable (original_module_"
                "predictions, original_module, original_module_inputs, extra_tensors, "
                f"extra_modules) -> dict; got {type(build_context).__name__}.")
        selection = _selection_tensor(out_concepts_to_intervene_on, original_module)
        super().__init__(original_module, intervention_strategy, intervention_policy,
                         quantile=quantile, extra_modules=extra_modules)
        # latentsurgeon.cbm keeps its callable in this attribute; here build_context is the
        # method below (pytorch_concepts lets a subclass override it)
        del self.build_context
        self._build_context_fn = build_context
        self.out_concepts_to_intervene_on = out_concepts_to_intervene_on
        self.eps = eps
        self._selection = selection
        self._extra_names = tuple(extra_modules or {})
        self._call_extra: dict[str, Any] = {}
        self._hooked = False  # inside intervention(): the layer's hook intervenes
        self._forwarding = False
        self._done = False

    # pytorch_concepts' attribute names
    @property
    def original_module(self) -> nn.Module:
        return self.module

    @property
    def intervention_strategy(self) -> Callable[..., Any]:
        return self.strategy

    @property
    def intervention_policy(self) -> Callable[..., Any]:
        return self.policy

    @property
    def sel_idx(self) -> torch.Tensor | None:
        """``out_concepts_to_intervene_on`` as a LongTensor of positions (None: all)."""
        return self._selection

    def build_context(self, original_module_inputs: dict, original_module: nn.Module,
                      original_module_predictions: torch.Tensor,
                      extra_tensors: dict | None = None,
                      extra_modules: dict | None = None) -> Mapping[str, Any]:
        """Extra inputs of the policy and the strategy: the ``build_context`` callable's, called
        as ``build_context(original_module_predictions, original_module,
        original_module_inputs, extra_tensors, extra_modules)``; ``{}`` without one."""
        if self._build_context_fn is None:
            return {}
        return self._build_context_fn(original_module_predictions, original_module,
                                      original_module_inputs, extra_tensors, extra_modules)

    def forward(self, *args: Any, extra_tensors: Mapping[str, Any] | None = None,
                **kwargs: Any) -> Any:
        if extra_tensors is not None and not isinstance(extra_tensors, Mapping):
            raise InvalidParameterError(
                "InterventionModule: extra_tensors must be a dict {name: tensor}; got "
                f"{type(extra_tensors).__name__}.")
        saved = (self._call_extra, self._forwarding, self._done)
        self._call_extra, self._forwarding, self._done = dict(extra_tensors or {}), True, False
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._call_extra, self._forwarding, self._done = saved

    def intervene(self, predictions: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._hooked and self._forwarding and self._done:
            # inside intervention(), calling this module runs the hooked layer, whose hook
            # already intervened on this output: once is enough
            return predictions
        result = super().intervene(predictions, *args, **kwargs)
        self._done = True
        return result

    # the conventions, plugged into latentsurgeon.cbm.InterventionModule
    def _check_output(self, predictions: torch.Tensor, layer: str | None = None) -> None:
        if predictions.dim() < 1:
            raise ShapeMismatchError(
                "An intervention needs a layer output of shape [..., F] (concepts last); got a "
                f"scalar of shape {tuple(predictions.shape)}.")

    def _context(self, predictions: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        extras = {name: getattr(self, name) for name in self._extra_names}
        context = self.build_context(_inputs_by_name(self.module, args, kwargs), self.module,
                                     predictions, self._call_extra, extras)
        return dict(context or {})

    def _mask(self, scores: torch.Tensor) -> torch.Tensor:
        return _slice_mask(scores, self._selection, self.quantile)

    def extra_repr(self) -> str:
        # the strategy and the policy are listed as submodules when they are modules
        return (f"out_concepts_to_intervene_on={self.out_concepts_to_intervene_on}, "
                f"quantile={self.quantile}")


def _inputs_by_name(layer: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The layer call's arguments by the names of its ``forward`` (``{}`` where they do not
    bind, as pytorch_concepts does)."""
    try:
        bound = inspect.signature(layer.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


def intervene(original_module: nn.Module, intervention_strategy: Callable[..., Any],
              intervention_policy: Callable[..., Any],
              out_concepts_to_intervene_on: Selection = None, quantile: float = 1.0,
              eps: float = 1e-12, build_context: BuildContext | None = None,
              extra_modules: Mapping[str, nn.Module] | None = None) -> InterventionModule:
    """1.0.0a6's factory: the :class:`InterventionModule` of these arguments."""
    return InterventionModule(original_module, intervention_strategy, intervention_policy,
                              out_concepts_to_intervene_on, quantile, eps,
                              build_context=build_context, extra_modules=extra_modules)


@contextmanager
def intervention(target: nn.Module, intervention_strategy: Callable[..., Any] | None = None,
                 intervention_policy: Callable[..., Any] | None = None,
                 out_concepts_to_intervene_on: Selection = None, quantile: float = 1.0,
                 eps: float = 1e-12, build_context: BuildContext | None = None,
                 extra_modules: Mapping[str, nn.Module] | None = None
                 ) -> Iterator[InterventionModule]:
    """Intervene on the layer ``target`` for the duration of a ``with`` block.

    Inside the block the layer returns intervened outputs to every caller (1.0.0a7; through
    latentsurgeon's one hook mechanism, removed on exit, also after an exception). ``target``
    may be an :class:`InterventionModule` (then no other argument is taken). The block yields
    the :class:`InterventionModule` (1.0.0a6 code writes ``with intervention(...) as m:
    m(x)``; calling it inside the block intervenes once).

    Raises:
        InvalidParameterError: ``target`` is not a module; arguments next to an
            InterventionModule target; no strategy or policy for a layer target.
    """
    if isinstance(target, InterventionModule):
        given = (intervention_strategy, intervention_policy, out_concepts_to_intervene_on,
                 build_context, extra_modules)
        if any(a is not None for a in given) or (quantile, eps) != (1.0, 1e-12):
            raise InvalidParameterError(
                "intervention(): with an InterventionModule as target, no other argument is "
                "taken; set them on the InterventionModule.")
        wrapper = target
    elif isinstance(target, nn.Module):
        if intervention_strategy is None or intervention_policy is None:
            raise InvalidParameterError(
                "intervention(): a layer target needs intervention_strategy and "
                f"intervention_policy; got {intervention_strategy!r} and {intervention_policy!r}.")
        wrapper = InterventionModule(target, intervention_strategy, intervention_policy,
                                     out_concepts_to_intervene_on, quantile, eps,
                                     build_context=build_context, extra_modules=extra_modules)
    else:
        raise InvalidParameterError(
            "intervention(): target must be the layer (an nn.Module) or an InterventionModule; "
            f"got {type(target).__name__}. A ProbabilisticModel target is not supported.")
    wrapper._hooked = True
    try:
        with _attached(wrapper.module, "", wrapper):  # "" is the layer itself
            yield wrapper
    finally:
        wrapper._hooked = False

