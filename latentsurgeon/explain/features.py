"""Label-free feature importance (Crabbe & van der Schaar, 2022): which input features an
encoder's representation of a sample rests on, with any captum attribution method.

An encoder ``f`` maps ``x`` to a representation with no label to choose an output. The
*auxiliary function* ``g_x(x~) = <f(x~), f(x)>``, with ``f(x)`` held fixed, is a scalar, so any
ordinary attribution method explains it; its attributions are the label-free feature importance
of ``x``. The per-unit variant explains each unit ``f_j`` and weights it by ``|f_j(x)|``.

Pairing is right by construction: ``f(x)`` reaches the auxiliary function as an
``additional_forward_arg``, which captum expands exactly as it expands the inputs (repeated for
IntegratedGradients' steps, repeated per sample for GradientShap's and NoiseTunnel's draws,
doubled for DeepLift's baselines). lfxai tiles ``f(x)`` itself and pairs rows with the wrong
``f(x)`` whenever a method expands each sample in place (GradientShap, NoiseTunnel) and a batch
holds more than one sample.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import captum.attr
import numpy as np
import torch
from captum.attr import Attribution, LayerAttribution, NeuronAttribution
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval, Seed, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    analysis_device,
    batch_inputs,
    iter_batches,
    n_batches,
    to_device,
)
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.explain._checks import check_samples, no_samples, warn_all_zero
from latentsurgeon.hooks import preserve_model_state

__all__ = ["FEATURE_METHODS", "AuxiliaryFunction", "FeatureMethod", "label_free_attribution",
           "label_free_attribution_per_unit"]

logger = logging.getLogger(__name__)

#: A captum attribution class (``IntegratedGradients``), an instance (its settings are kept, its
#: forward function replaced), or a factory ``forward_func -> attribution`` (``lambda f:
#: NoiseTunnel(IntegratedGradients(f))``).
@dataclass(frozen=True)
class FeatureMethod:
    """One attribution method by name: the captum class and the label figures and reports use."""

    attribution: type[Attribution]
    label: str


#: The attribution methods by name, one table: the CLI's ``explain features --method`` spells
#: them with hyphens, the experiments run a subset of them.
FEATURE_METHODS: dict[str, FeatureMethod] = {
    "integrated_gradients": FeatureMethod(captum.attr.IntegratedGradients, "Integrated Gradients"),
    "saliency": FeatureMethod(captum.attr.Saliency, "Saliency"),
    "gradient_shap": FeatureMethod(captum.attr.GradientShap, "GradientShap"),
    "deeplift": FeatureMethod(captum.attr.DeepLift, "DeepLift"),
    "input_x_gradient": FeatureMethod(captum.attr.InputXGradient, "Input x Gradient"),
}

MethodSpec = type | Attribution | Callable[[nn.Module], Attribution]
Baselines = torch.Tensor | float | int | Callable[[torch.Tensor], torch.Tensor] | None

_CONSTRAINTS = {"batch_size": Interval(int, 1, None), "seed": Seed()}


class Representation(nn.Module):
    """``x -> f(x)`` flattened to ``(N, D)``: the output of ``layer`` of ``model`` (or of the
    whole model), as a module, so attribution methods that hook modules (DeepLift) see the
    model's layers as its submodules. The pass stops after ``layer``
    (:meth:`~latentsurgeon.activations.access.ModelAccess.forward_to`)."""

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self._access = ModelAccess(model, head=None)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self._access.forward_to(inputs, self.layer)
        return out.reshape(out.shape[0], -1)


def _representation(encoder: nn.Module, layer: str | None, device: Any) -> Representation:
    """The representation of ``encoder`` at ``layer`` (a selector of one layer, resolved here to
    its canonical name), checked to run where the encoder is."""
    access = ModelAccess(encoder, head=None, device=device)
    return Representation(encoder, None if layer is None else access.layer(layer))


class AuxiliaryFunction(nn.Module):
    """``g(x~, f(x)) = <f(x~), f(x)>`` per row: ``(N, ...) x (N, D) -> (N,)``.

    ``reference`` is ``f(x)`` of the sample each row belongs to, detached (held fixed).
    """

    def __init__(self, representation: nn.Module) -> None:
        super().__init__()
        self.representation = representation

    def forward(self, inputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        z = self.representation(inputs)
        if z.shape != reference.shape:
            raise ShapeMismatchError(
                f"The representation of {z.shape[0]} rows has shape {tuple(z.shape)} but the "
                f"reference f(x) has shape {tuple(reference.shape)}; the attribution method "
                "expanded its inputs without expanding additional_forward_args.")
        return (z * reference).sum(dim=1)


_ACCEPTED = ("a captum attribution of the inputs: a class such as "
             + ", ".join(m.attribution.__name__ for m in FEATURE_METHODS.values())
             + ", an instance of one, or a factory forward_func -> Attribution")


def _refuse_layer_method(method: Any) -> None:
    """Layer and neuron attributions explain a layer's activations or one neuron, not the input
    features, and take other constructor arguments: refuse them by name."""
    kind = method if isinstance(method, type) else type(method)
    if isinstance(kind, type) and issubclass(kind, (LayerAttribution, NeuronAttribution)):
        what = "layer" if issubclass(kind, LayerAttribution) else "neuron"
        raise InvalidParameterError(
            f"method must be {_ACCEPTED}; got {kind.__name__}, a {what} attribution (it "
            "attributes a layer's activations, not the input features). Use the input-feature "
            "method it is built on, and layer= to choose the representation.")


def _bind(method: MethodSpec, forward: nn.Module) -> Attribution:
    """An attribution object explaining ``forward``."""
    _refuse_layer_method(method)
    if isinstance(method, type):
        if not issubclass(method, Attribution):
            raise InvalidParameterError(
                f"method must be a captum attribution class, instance or factory; got the class "
                f"{method.__name__}.")
        return method(forward)
    if isinstance(method, Attribution):
        bound = copy.copy(method)  # the caller's object keeps its own forward function
        inner = getattr(bound, "attribution_method", None)
        if isinstance(inner, Attribution):  # NoiseTunnel and other wrappers
            bound.attribution_method = _bind(inner, forward)
        bound.forward_func = forward
        if isinstance(getattr(bound, "model", None), nn.Module):  # DeepLift, GuidedBackprop, LRP
            bound.model = forward
        return bound
    if callable(method):
        made = method(forward)
        if not isinstance(made, Attribution):
            raise InvalidParameterError(
                "method, when a factory, must return a captum Attribution; it returned a "
                f"{type(made).__name__}.")
        return made
    raise InvalidParameterError(
        f"method must be a captum attribution class (IntegratedGradients), an instance or a "
        f"factory forward_func -> Attribution; got {type(method).__name__}.")


def _baselines(baselines: Baselines, inputs: torch.Tensor, explainer: Attribution) -> Any:
    """The baselines of one batch, checked to be shaped like its samples: ``(1, ...)`` (one
    for every sample), ``(N, ...)`` (one each) or, for GradientShap's distribution, ``(K, ...)``;
    a number or a 0-d tensor is one value for every feature."""
    given = baselines(inputs) if callable(baselines) and not isinstance(
        baselines, torch.Tensor) else baselines
    if not isinstance(given, torch.Tensor):
        return given
    sample = tuple(inputs.shape[1:])
    n = int(inputs.shape[0])
    distribution = any(isinstance(e, captum.attr.GradientShap)  # NoiseTunnel wraps one
                       for e in (explainer, getattr(explainer, "attribution_method", None)))
    ok = given.dim() == 0 or (tuple(given.shape[1:]) == sample
                              and (distribution or given.shape[0] in (1, n)))
    if not ok:
        source = "the baselines callable returned" if given is not baselines else "got"
        expected = (f"(K, {', '.join(map(str, sample))})" if distribution else
                    f"(1, {', '.join(map(str, sample))}) or ({n}, "
                    f"{', '.join(map(str, sample))})")
        raise ShapeMismatchError(
            f"baselines must be shaped like the samples, {expected} for inputs of shape "
            f"{tuple(inputs.shape)}; {source} shape {tuple(given.shape)}.")
    return given.to(device=inputs.device, dtype=inputs.dtype)


#: attribute() arguments that count draws or steps: 0 or fewer is a division by zero in captum
_COUNTS = ("n_samples", "n_steps")


def _check_counts(method_kwargs: dict[str, Any]) -> None:
    for key in _COUNTS:
        if key in method_kwargs:
            value = method_kwargs[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(
                    f"{key} must be an int >= 1 (the attribution averages over that many "
                    f"{'draws' if key == 'n_samples' else 'steps'}); got {value!r}.")


def _attribute(explainer: Attribution, inputs: torch.Tensor, baselines: Baselines,
               kwargs: dict[str, Any]) -> torch.Tensor:
    accepted = inspect.signature(explainer.attribute).parameters
    call = dict(kwargs)
    needed = accepted.get("baselines")
    if baselines is None and needed is not None and needed.default is inspect.Parameter.empty:
        raise InvalidParameterError(
            f"baselines: {type(explainer).__name__} needs baselines (a tensor shaped like the "
            "samples, (K, ...) for a distribution of K references, e.g. torch.zeros(1, ...) or "
            "a sample of the training inputs); got None.")
    if baselines is not None:
        if "baselines" not in accepted:
            raise InvalidParameterError(
                f"{type(explainer).__name__} takes no baselines; got baselines="
                f"{type(baselines).__name__}. Leave baselines=None for this method.")
        call["baselines"] = _baselines(baselines, inputs, explainer)
    # gradient methods need inputs that require grad (captum would set it and warn)
    inputs = inputs.detach().requires_grad_(inputs.is_floating_point())
    try:
        out = explainer.attribute(inputs, **call)
    except RuntimeError as exc:
        if "does not require grad" not in str(exc):
            raise
        raise InvalidParameterError(
            "encoder: its representation does not depend differentiably on the inputs (no "
            "gradient reaches them: a comparison, round, argmax, .detach() or torch.no_grad() "
            f"inside the forward), so {type(explainer).__name__} has nothing to attribute; "
            f"explain a differentiable representation (another layer=). ({exc})") from exc
    if isinstance(out, tuple):
        raise InvalidParameterError(
            "The attribution method returned a tuple (return_convergence_delta=True?); pass "
            "only arguments that keep its output a tensor shaped like the inputs.")
    if out.shape != inputs.shape:
        raise ShapeMismatchError(
            f"{type(explainer).__name__} returned attributions of shape {tuple(out.shape)} for "
            f"inputs of shape {tuple(inputs.shape)}.")
    return out.detach()


@contextmanager
def _seeded(seed: int | torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Seed torch's and numpy's global RNGs inside the block and restore the caller's states
    afterwards (captum draws noise and baselines from torch's, GradientShap's interpolation
    points from numpy's)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            if isinstance(seed, torch.Generator):
                seed = int(torch.randint(2**31, (1,), generator=seed))
            if seed is not None:
                torch.manual_seed(int(seed))
                np.random.seed(int(seed) % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)


def _check_kwargs(method_kwargs: dict[str, Any]) -> None:
    _check_counts(method_kwargs)
    for key in ("inputs", "additional_forward_args", "baselines"):
        if key in method_kwargs:
            raise InvalidParameterError(
                f"{key}= is set by label-free attribution itself; pass the data as data= and "
                "baselines as baselines=.")


def _batches(data: Any, batch_size: int, dev: torch.device, progress: bool,
             desc: str) -> Iterator[torch.Tensor]:
    for batch in tqdm(iter_batches(data, batch_size), total=n_batches(data, batch_size),
                      desc=desc, unit="batch", leave=False, disable=None if progress else True):
        inputs = batch_inputs(batch)
        if not isinstance(inputs, torch.Tensor):
            raise LatentSurgeonError(
                f"Feature attribution needs tensor inputs; a batch gave {type(inputs).__name__}.")
        yield to_device(inputs, dev)

#: why label-free attributions would be all zero (the warning both functions give then)
_ZERO_CAUSE = ("the representation's gradient with respect to the inputs is zero everywhere "
               "(an encoder that is a step function: round, sign, a threshold; or saturated "
               "units), or the baselines equal the inputs. Explain a differentiable "
               "representation (another layer=) or other baselines.")


def label_free_attribution(
    encoder: nn.Module,
    data: Any,
    method: MethodSpec,
    *,
    baselines: Baselines = None,
    layer: str | None = None,
    batch_size: int = 64,
    seed: int | torch.Generator | None = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    **method_kwargs: Any,
) -> torch.Tensor:
    """Label-free feature importance of every sample of ``data``.

    For each sample ``x`` this attributes ``g_x(x~) = <f(x~), f(x)>`` at ``x~ = x`` with
    ``method``, where ``f`` is the encoder's output (or the output of ``layer``), flattened.

    Args:
        encoder: the network; with ``layer`` a bigger model of which the representation is that
            layer's output (the forward pass stops there). Run in eval mode; its mode, hooks and
            flags are restored.
        data: inputs: a tensor ``(N, ...)``, a tuple ``(inputs, labels, ...)``, a split, a
            Dataset or a DataLoader (the first element of a batch is the input).
        method: a captum attribution class (``IntegratedGradients``, ``GradientShap``,
            ``Saliency``, ``DeepLift``, ``InputXGradient``, ...), an instance of one (its settings
            are kept, its forward function is replaced on a copy), or a factory
            ``forward_func -> attribution`` such as ``lambda f: NoiseTunnel(Saliency(f))``.
        baselines: the method's baselines: a tensor (``(1, ...)`` broadcast to every sample, or
            GradientShap's distribution of baselines), a number, a callable
            ``inputs -> baselines`` applied to each batch, or None (the method's default; methods
            without baselines need None).
        layer: one exact layer name of ``encoder`` whose output is the representation.
        batch_size: samples per attribution call (``internal_batch_size`` may be passed on too).
        seed: seeds torch's RNG for methods that draw (GradientShap, NoiseTunnel); the caller's
            RNG state is restored. None: fresh randomness.
        device: None or the encoder's device (an analysis never moves the model).
        progress: a tqdm bar over batches.
        **method_kwargs: passed to ``attribute`` (``n_steps``, ``n_samples``, ``stdevs``,
            ``internal_batch_size``, ``nt_type``, ...).

    Returns:
        A CPU tensor shaped like the inputs, ``(N, ...)``.

    Raises:
        InvalidParameterError: a bad method, baselines for a method without them, a bad
            ``batch_size`` or ``seed``.
        NonFiniteError: an attribution is NaN or Inf.
    """
    validate_params({"batch_size": batch_size, "seed": seed}, _CONSTRAINTS,
                    owner="label_free_attribution()")
    check_samples(data, "data", "label_free_attribution")
    _check_kwargs(method_kwargs)
    representation = _representation(encoder, layer, device)
    dev = analysis_device(encoder, device)
    explainer = _bind(method, AuxiliaryFunction(representation))
    parts = []
    with preserve_model_state(encoder), _seeded(seed, dev):
        encoder.eval()
        for inputs in _batches(data, batch_size, dev, progress, "label-free attribution"):
            with torch.no_grad():
                reference = representation(inputs).detach()
            attr = _attribute(explainer, inputs, baselines,
                              {**method_kwargs, "additional_forward_args": (reference,)})
            parts.append(attr.to("cpu"))
    if not parts:
        raise no_samples(data, "data", "label_free_attribution")
    result = check_finite(torch.cat(parts), "the label-free attributions")
    warn_all_zero(result, "the label-free attributions", _ZERO_CAUSE, stacklevel=2)
    return result


def label_free_attribution_per_unit(
    encoder: nn.Module,
    data: Any,
    method: MethodSpec,
    *,
    units: Sequence[int] | None = None,
    baselines: Baselines = None,
    layer: str | None = None,
    signed: bool = False,
    batch_size: int = 64,
    seed: int | torch.Generator | None = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    **method_kwargs: Any,
) -> torch.Tensor:
    """Feature importance of each latent unit, weighted by the unit's value (lfxai's
    ``attribute_individual_dim``).

    For unit ``j`` of the (flattened) representation ``f(x)``, ``a_j`` attributes ``f_j`` with
    ``method``; the result is ``|f_j(x) * a_j(x)|`` (or ``|f_j(x)| * a_j(x)`` with ``signed``), so
    units the sample barely activates contribute little.

    Args:
        units: indices of the units to explain (default: all ``D``).
        signed: keep the sign of the attribution (weight by ``|f_j|`` only).
        Others: as :func:`label_free_attribution`.

    Returns:
        A CPU tensor ``(N, n_units, *input_shape)``; ``[:, k]`` belongs to ``units[k]``. (lfxai
        concatenates the units along the channel axis instead: ``(N, n_units * C, H, W)``.)
    """
    validate_params({"batch_size": batch_size, "seed": seed}, _CONSTRAINTS,
                    owner="label_free_attribution_per_unit()")
    check_samples(data, "data", "label_free_attribution_per_unit")
    _check_kwargs(method_kwargs)
    if "target" in method_kwargs:
        raise InvalidParameterError("target= is set per unit; choose the units with units=.")
    representation = _representation(encoder, layer, device)
    dev = analysis_device(encoder, device)
    explainer = _bind(method, representation)
    parts = []
    chosen: list[int] | None = None
    with preserve_model_state(encoder), _seeded(seed, dev):
        encoder.eval()
        for inputs in _batches(data, batch_size, dev, progress, "per-unit attribution"):
            with torch.no_grad():
                z = representation(inputs).detach()
            if chosen is None:
                chosen = _units(units, z.shape[1])
            per_unit = []
            for j in chosen:
                attr = _attribute(explainer, inputs, baselines, {**method_kwargs, "target": j})
                weight = z[:, j].reshape(-1, *([1] * (inputs.dim() - 1)))
                per_unit.append((weight.abs() * attr if signed else (weight * attr).abs())
                                .to("cpu"))
            parts.append(torch.stack(per_unit, dim=1))
    if not parts:
        raise no_samples(data, "data", "label_free_attribution_per_unit")
    result = check_finite(torch.cat(parts), "the per-unit attributions")
    warn_all_zero(result, "the per-unit attributions", _ZERO_CAUSE, stacklevel=2)
    return result


def _units(units: Sequence[int] | None, n_units: int) -> list[int]:
    if units is None:
        return list(range(n_units))
    chosen = [int(u) for u in units]
    if not chosen or any(u < 0 or u >= n_units for u in chosen):
        raise InvalidParameterError(
            f"units must be a non-empty list of indices in [0, {n_units - 1}] (the "
            f"representation has {n_units} units); got {list(units)!r}.")
    return chosen
