"""Steering vectors: add a direction to a layer's activation at inference time.

A :class:`SteeringVector` holds one vector per layer, learned as the difference between the mean
activation on *positive* inputs and on *negative* inputs (Turner et al. 2023; Rimsky et al. 2024,
"contrastive activation addition"), or given directly. While attached, the layer's output ``a``
becomes ``a + alpha * v`` (or whatever ``steer_fn`` returns). :class:`ActivationAddition` is the
same estimator with the defaults of Turner et al.'s "ActAdd": one positive and one negative prompt,
their activation difference kept *per position* and added to the first positions of the prompt
being steered.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable as CallableT
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from latentsurgeon._aliases import moved
from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Callable, Options, check_finite
from latentsurgeon.activations.batching import (
    attention_mask_of,
    batch_inputs,
    batch_size_of,
    iter_batches,
)
from latentsurgeon.activations.pooling import pool
from latentsurgeon.activations.read import LayerReader
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, replace_primary
from latentsurgeon.hooks.resolve import LayerSelector, resolve_layers
from latentsurgeon.intervene._common import (
    ForwardFn,
    Positions,
    broadcast_vector,
    check_positions,
    merge_positions,
)

logger = logging.getLogger(__name__)

SteerFn = CallableT[[str, torch.Tensor, torch.Tensor, float], torch.Tensor]
TOKENS = ("mean", "last", "none")
#: What ``alpha=1`` adds: the fitted (or given) vector itself (``"difference"``: for a fitted
#: vector, moves the negative mean onto the positive mean), or a step along it as long as a
#: typical activation of the layer (``"activation_norm"``: ``alpha`` is then a multiple of the
#: mean norm measured on the fit inputs).
UNITS = ("difference", "activation_norm")


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise InvalidParameterError(f"alpha must be a finite number, got {alpha!r}.")
    return float(alpha)


def _check_positions_param(positions: Any) -> Positions:
    """Token positions as patching takes them: None, an int, a non-empty list of ints (negative
    counts from the end), a slice, or a 1-D integer or bool index tensor."""
    if positions is None or isinstance(positions, slice) or (
            isinstance(positions, int) and not isinstance(positions, bool)):
        return positions
    if isinstance(positions, torch.Tensor):
        if positions.dim() == 1 and (positions.dtype == torch.bool
                                     or not positions.is_floating_point()) and positions.numel():
            return positions
    elif isinstance(positions, Sequence) and not isinstance(positions, str) and positions \
            and all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        return list(positions)
    raise InvalidParameterError(
        f"positions must be None, an int, a non-empty list of ints (token indices, negative "
        f"counting from the end), a slice or a 1-D index tensor; got {positions!r}."
    )


def _reduce(activation: torch.Tensor, token: str, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample vectors from a layer's activation ``(N, ...)``, by the pooling rule of
    :mod:`latentsurgeon.activations.pooling` (a steered 3-D activation is a token sequence).

    ``"mean"``: ``(N, T, D) -> (N, D)`` over (unmasked) tokens, ``(N, C, H, W) -> (N, C)`` over
    pixels; ``"last"``: ``(N, T, D) -> (N, D)``, the last (unmasked) token; ``"none"``: as is.
    ``(N, D)`` activations are kept as they are.
    """
    if token == "none" or activation.dim() <= 2:
        return activation
    if activation.dim() == 3:
        return pool(activation, "token_mean" if token == "mean" else "last", mask)
    if token == "last":
        raise ShapeMismatchError(
            f"token='last' needs (N, T, D) sequence activations, got shape "
            f"{tuple(activation.shape)}; use token='mean' (average over positions) or 'none'."
        )
    return pool(activation, "mean")


def _position_norms(activation: torch.Tensor, token: str,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """Norms of what a steering vector is added to, one per place it is added: the ``D``-vector
    of every (unmasked) token of ``(N, T, D)``, the ``C``-vector of every pixel of
    ``(N, C, H, W)``, a row of ``(N, D)``; with ``token="none"`` the whole per-sample tensor."""
    if token == "none" or activation.dim() <= 2:
        return activation.reshape(len(activation), -1).norm(dim=1)
    if activation.dim() == 3:
        norms = activation.norm(dim=2)                                  # (N, T)
        return norms[mask != 0] if mask is not None else norms.reshape(-1)
    return activation.norm(dim=1).reshape(-1)                           # (N * H * W,)


def _default_steer(name: str, activation: torch.Tensor, vector: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """``activation + alpha * vector``, the vector broadcast over tokens/pixels; a per-position
    vector ``(T_v, D)`` on ``(N, T, D)`` with ``T_v < T`` goes to the first ``T_v`` positions."""
    if activation.dim() == 3 and vector.dim() == 2 and tuple(vector.shape) != tuple(activation.shape[1:]):
        t_v, d = vector.shape
        if d != activation.shape[2] or t_v > activation.shape[1]:
            raise ShapeMismatchError(
                f"SteeringVector at layer {name!r}: expected a per-position vector of shape "
                f"(T_v <= {activation.shape[1]}, {activation.shape[2]}) (or ({activation.shape[2]},)) "
                f"for activations of shape {tuple(activation.shape)}, got {tuple(vector.shape)}. "
                "A per-position vector cannot steer shorter inputs (e.g. generation steps with a "
                "KV cache); use token='mean' or 'last' for a single vector."
            )
        out = activation.clone()
        out[:, :t_v] = out[:, :t_v] + alpha * vector
        return out
    return activation + alpha * broadcast_vector(vector, activation,
                                                 f"SteeringVector at layer {name!r}")


class SteeringVector(Estimator):
    """One steering vector per layer, added to the layer's output while attached.

    Args:
        layers: the layers to steer (names, globs, ``re:`` regexes, classes; resolved at
            :meth:`fit`). Ignored by :meth:`from_vector`, which names its layer.
        alpha: default strength; ``attach``/``applied`` may override it. ``alpha=0`` is exactly
            the identity (the hook returns the output untouched).
        steer_fn: ``steer_fn(name, activation, vector, alpha) -> new_activation`` instead of the
            default ``activation + alpha * vector``. ``activation`` is the layer's primary tensor
            ``(N, ...)`` (transformer tuples/dicts are rebuilt around the result); ``vector`` is the
            stored vector as is, on the activation's device and dtype.
        positions: steer only these token positions of ``(N, T, D)`` activations, as
            :func:`~latentsurgeon.intervene.patch` takes them: an int, a list of ints (negative
            counts from the end, so ``-1`` is the last token), a slice or an index tensor.
            ``None``: every position.
        token: how :meth:`fit` turns activations into one vector per sample before averaging:
            ``"mean"`` (default) averages ``(N, T, D)`` over tokens (over the ``attention_mask``
            when the inputs are a dict that has one) and ``(N, C, H, W)`` over pixels, giving
            ``(D,)``/``(C,)`` vectors added at every position/pixel; ``"last"`` takes the last
            (attended) token of ``(N, T, D)``; ``"none"`` keeps the full per-sample shape
            (``(T, D)``, ``(C, H, W)``).
        units: what ``alpha`` counts. ``"difference"`` (default): ``alpha=1`` adds the vector
            itself, for a fitted vector the mean difference, which moves the negative inputs'
            mean activation onto the positive one; that is often a small step next to the
            spread of single activations (a text model's predictions moved at ``alpha=4``, not
            at 1), so check :meth:`relative_strength`. ``"activation_norm"``: ``alpha=1`` adds
            a step along the vector as long as a typical activation of the layer
            (``activation_norms_``): ``alpha`` is a multiple of the layer's own scale, comparable
            across layers and models (needs :meth:`fit`).

    Learned attributes:
        vectors_: ``{layer name: vector}``, CPU float32; shape ``(D,)``, ``(C,)`` or per-sample.
        n_positive_, n_negative_: number of samples the means were taken over (0 when the vector
            was given with :meth:`from_vector`).
        vector_norms_: ``{layer name: ||vector||}``.
        activation_norms_: ``{layer name: typical activation norm}``: the mean norm, over the fit
            inputs (positive and negative), of what a vector is added to: each unmasked token's
            ``D``-vector of ``(N, T, D)``, each pixel's ``C``-vector of ``(N, C, H, W)``, each row
            of ``(N, D)``, the whole per-sample tensor with ``token="none"``. Empty for a vector
            given with :meth:`from_vector`.

    Example::

        sv = SteeringVector("transformer.h.1", alpha=4.0).fit(model, happy_ids, sad_ids)
        with sv.applied(model):
            logits = model(input_ids=ids).logits
    """

    def __init__(
        self,
        layers: LayerSelector | None = None,
        alpha: float = 1.0,
        steer_fn: SteerFn | None = None,
        positions: Positions = None,
        token: str = "mean",
        *,
        units: str = "difference",
    ) -> None:
        self.layers = layers
        self.alpha = alpha
        self.steer_fn = steer_fn
        self.positions = positions
        self.token = token
        self.units = units

    # -- construction ----------------------------------------------------------------------------
    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "token": Options(TOKENS),
        "units": Options(UNITS),
        "steer_fn": [None, Callable()],
    }

    def _validate(self) -> None:
        self._validate_params()
        _check_alpha(self.alpha)
        _check_positions_param(self.positions)

    def _mean_activations(
        self,
        model: nn.Module,
        inputs: Any,
        names: list[str],
        *,
        forward_fn: ForwardFn | None,
        batch_size: int | None,
        device: str | torch.device | None,
        what: str,
    ) -> tuple[dict[str, torch.Tensor], int]:
        sums: dict[str, torch.Tensor] = {}
        norm_sums: dict[str, float] = {}
        norm_counts: dict[str, int] = {}
        count = 0
        # The one read path: early exit after the last steered layer, true outputs whatever runs
        # later, the model's device and dtype.
        with LayerReader(model, names, forward_fn=forward_fn, device=device) as reader:
            for batch in iter_batches(inputs, batch_size):
                batch = batch_inputs(batch)
                n = batch_size_of(batch)
                acts = reader.read(batch)
                for name in names:
                    act = acts[name]
                    if act.shape[0] != n:
                        raise LatentSurgeonError(
                            f"Layer {name!r} produced {act.shape[0]} rows for {n} samples: it runs "
                            "more than once per forward pass; steer a layer that runs once."
                        )
                    mask = attention_mask_of(batch)
                    if mask is not None and (act.dim() != 3
                                             or tuple(mask.shape) != tuple(act.shape[:2])):
                        mask = None  # the mask of other tokens (or of no token layer)
                    per_sample = _reduce(act, self.token, mask)
                    norms = _position_norms(act, self.token, mask).to(torch.float64)
                    norm_sums[name] = norm_sums.get(name, 0.0) + float(norms.sum())
                    norm_counts[name] = norm_counts.get(name, 0) + norms.numel()
                    total = per_sample.to(torch.float64).sum(0).cpu()
                    if name in sums and sums[name].shape != total.shape:
                        raise ShapeMismatchError(
                            f"Layer {name!r}: the {what} inputs give per-sample vectors of shapes "
                            f"{tuple(sums[name].shape)} and {tuple(total.shape)} in different "
                            "batches; with token='none' every input needs the same shape (for "
                            "text: the same number of tokens)."
                        )
                    sums[name] = sums[name] + total if name in sums else total
                count += n
        if count == 0:
            raise LatentSurgeonError(f"The {what} inputs yielded no samples.")
        self._norm_parts.append((norm_sums, norm_counts))
        return {name: s / count for name, s in sums.items()}, count

    def fit(
        self,
        model: nn.Module,
        positive_inputs: Any,
        negative_inputs: Any,
        *,
        forward_fn: ForwardFn | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
    ) -> SteeringVector:
        """Learn ``vector = mean(positive activations) - mean(negative activations)`` per layer.

        Args:
            model: the network (run in eval mode under ``torch.no_grad``; mode, hooks and
                ``requires_grad`` flags are restored).
            positive_inputs: inputs showing the behaviour to steer towards: ``(N, ...)`` tensor,
                dict of tensors (``model(**inputs)``; its ``attention_mask`` is honoured by
                ``token="mean"``/``"last"``), Dataset or DataLoader.
            negative_inputs: inputs showing the opposite (any number of samples).
            forward_fn: ``forward_fn(model, batch) -> output`` instead of the default.
            batch_size: run tensor/dict inputs in batches of this size (``None``: one batch).
            device: move inputs there (default: the device of the model's parameters).

        Returns:
            self, with ``vectors_`` set.
        """
        self._validate()
        if self.layers is None:
            raise LatentSurgeonError("SteeringVector.fit needs layers=...; "
                                     "use SteeringVector.from_vector to give a vector directly.")
        names = list(resolve_layers(model, self.layers))
        run = {"forward_fn": forward_fn, "batch_size": batch_size, "device": device}
        self._norm_parts: list[tuple[dict[str, float], dict[str, int]]] = []
        with preserve_model_state(model), torch.no_grad():
            model.eval()  # dropout would add noise to the means
            pos, n_pos = self._mean_activations(model, positive_inputs, names, what="positive",
                                                **run)
            neg, n_neg = self._mean_activations(model, negative_inputs, names, what="negative",
                                                **run)
        vectors = {}
        for name in names:
            if pos[name].shape != neg[name].shape:
                raise ShapeMismatchError(
                    f"Layer {name!r}: positive inputs give vectors of shape "
                    f"{tuple(pos[name].shape)}, negative inputs {tuple(neg[name].shape)}; "
                    "expected equal shapes (with token='none', prompts need the same number of "
                    "tokens)."
                )
            vectors[name] = check_finite((pos[name] - neg[name]).to(torch.float32),
                                         f"the steering vector at layer {name!r}")
            logger.debug("steering vector at %s: shape %s, norm %.4g", name,
                         tuple(vectors[name].shape), float(vectors[name].norm()))
        self.vectors_ = vectors
        self.n_positive_ = n_pos
        self.n_negative_ = n_neg
        parts = self._norm_parts
        del self._norm_parts
        # the typical activation norm over both sets, every place a vector is added
        self.activation_norms_ = {
            name: sum(p[0][name] for p in parts) / max(sum(p[1][name] for p in parts), 1)
            for name in names}
        self.vector_norms_ = {name: float(v.norm()) for name, v in vectors.items()}
        for name in names:
            logger.info("steering vector at %s: norm %.4g, typical activation norm %.4g "
                        "(alpha=1 adds %.3g of it)", name, self.vector_norms_[name],
                        self.activation_norms_[name],
                        self.vector_norms_[name] / max(self.activation_norms_[name], 1e-30))
        return self

    @classmethod
    def from_vector(cls, layer: str, vector: torch.Tensor, alpha: float = 1.0,
                    **params: Any) -> SteeringVector:
        """A steering vector given directly: ``vector`` added at ``layer`` (an exact name).

        ``vector`` may be ``(D,)`` (added at every token of ``(N, T, D)`` or to ``(N, D)``),
        ``(C,)`` (every pixel of ``(N, C, H, W)``), or the layer's per-sample shape. ``params``
        are the other constructor arguments (``steer_fn``, ``positions``).
        """
        return cls.from_vectors({layer: vector}, alpha=alpha, **params)

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, torch.Tensor], alpha: float = 1.0,
                     **params: Any) -> SteeringVector:
        """Like :meth:`from_vector` with several layers: ``{layer name: vector}``."""
        if not vectors:
            raise LatentSurgeonError("from_vectors needs at least one {layer: vector} pair.")
        for layer, vector in vectors.items():
            if not isinstance(layer, str) or layer.startswith("re:") or set("*?[") & set(layer):
                raise LatentSurgeonError(
                    f"A given vector needs an exact layer name, got {layer!r} (globs and "
                    "regexes are resolved by fit, not here)."
                )
            if not isinstance(vector, torch.Tensor):
                raise TypeError(f"The vector for {layer!r} must be a tensor, "
                                f"got {type(vector).__name__}.")
        obj = cls(layers=list(vectors), alpha=alpha, **params)
        obj._validate()
        obj.vectors_ = {k: check_finite(v.detach().to("cpu", torch.float32).clone(),
                                        f"the steering vector for layer {k!r}")
                        for k, v in vectors.items()}
        obj.n_positive_ = 0
        obj.n_negative_ = 0
        obj.vector_norms_ = {k: float(v.norm()) for k, v in obj.vectors_.items()}
        obj.activation_norms_ = {}  # not measured: no inputs were seen
        return obj

    # -- use -------------------------------------------------------------------------------------
    @moved(("model", "alpha"))
    def attach(self, model: nn.Module, *, alpha: float | None = None) -> HookGroup:
        """Steer ``model`` until the returned handle's ``remove()`` (idempotent) is called.

        ``attach(model)`` is every attachable's form; a positional ``alpha`` (the earlier form)
        still works, with a ``FutureWarning``.

        Args:
            model: the network; the layers of ``vectors_`` must exist in it.
            alpha: strength for this attachment (default ``self.alpha``).

        Returns:
            A :class:`~latentsurgeon.hooks.HookGroup` (also a context manager).
        """
        self._check_fitted()
        self._validate()
        strength = _check_alpha(self.alpha if alpha is None else alpha)
        positions = _check_positions_param(self.positions)
        steer = self.steer_fn or _default_steer
        on_device: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        vectors = self._vectors_in_units()

        def steer_hook(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
            if strength == 0.0:
                return None  # exactly the identity, whatever steer_fn would compute
            activation = primary_tensor(output)
            key = (name, activation.device, activation.dtype)
            if key not in on_device:
                on_device[key] = vectors[name].to(activation.device, activation.dtype)
            vector = on_device[key]
            if positions is not None:
                check_positions(positions, activation, f"SteeringVector at layer {name!r}")
                if vector.dim() == 2 and self.steer_fn is None:
                    raise LatentSurgeonError(
                        f"Layer {name!r}: positions= cannot be combined with a per-position "
                        f"vector of shape {tuple(vector.shape)} (its rows go to the first "
                        "positions); use a (D,) vector or positions=None."
                    )
            new = steer(name, activation, vector, strength)
            if not isinstance(new, torch.Tensor) or new.shape != activation.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ShapeMismatchError(
                    f"steer_fn at layer {name!r} must return a tensor of the activation's shape "
                    f"{tuple(activation.shape)}, got {got}."
                )
            check_finite(new, f"the steered activation at layer {name!r}")
            return replace_primary(output, merge_positions(activation, new, positions))

        group = HookGroup()
        group.forward(model, list(self.vectors_), steer_hook, prepend=True)
        return group

    def _vectors_in_units(self) -> dict[str, torch.Tensor]:
        """What ``alpha=1`` adds per layer (see ``units``)."""
        if self.units == "difference":
            return self.vectors_
        norms = getattr(self, "activation_norms_", {})
        missing = [name for name in self.vectors_ if name not in norms]
        if missing:
            raise LatentSurgeonError(
                "units='activation_norm' counts alpha in typical activation norms, measured by "
                f"fit on its inputs; no norm is known for {missing} (a vector given with "
                "from_vector): fit the vector, or use units='difference'.")
        out = {}
        for name, vector in self.vectors_.items():
            length = float(vector.norm())
            if length == 0:
                raise LatentSurgeonError(
                    f"The steering vector at layer {name!r} is zero; it has no direction to "
                    "take a step of the typical activation norm along.")
            out[name] = vector * (norms[name] / length)
        return out

    def relative_strength(self, alpha: float | None = None) -> dict[str, float]:
        """``{layer: ||alpha * added vector|| / typical activation norm}``: how large a step
        ``alpha`` (default ``self.alpha``) takes next to the layer's own activations (1.0: as
        long as a typical activation). With ``units="activation_norm"`` this is ``|alpha|``.

        Raises:
            LatentSurgeonError: a vector given with :meth:`from_vector` (no norm measured).
        """
        self._check_fitted()
        strength = _check_alpha(self.alpha if alpha is None else alpha)
        norms = getattr(self, "activation_norms_", {})
        missing = [name for name in self.vectors_ if name not in norms]
        if missing:
            raise LatentSurgeonError(
                f"No typical activation norm is known for {missing} (a vector given with "
                "from_vector); fit the vector on inputs to measure it.")
        vectors = self._vectors_in_units()
        return {name: abs(strength) * float(v.norm()) / max(norms[name], 1e-30)
                for name, v in vectors.items()}

    @contextmanager
    @moved(("model", "alpha"))
    def applied(self, model: nn.Module, *, alpha: float | None = None) -> Iterator[nn.Module]:
        """Steer ``model`` inside a ``with`` block (which yields the model, as every
        ``applied`` does); the hooks are removed on exit, also on error."""
        group = self.attach(model, alpha=alpha)
        try:
            yield model
        finally:
            group.remove()

    # -- persistence -----------------------------------------------------------------------------
    def _params_to_save(self) -> dict[str, Any]:
        """Layer selectors that are not strings (classes, modules) are stored as the layer names
        they resolved to at ``fit``. A custom ``steer_fn`` is code: ``save`` refuses it unless
        excluded (``save(path, exclude="steer_fn")``, then ``load(path, steer_fn=...)``)."""
        params = super()._params_to_save()
        layers = self.layers
        if not (isinstance(layers, str) or (isinstance(layers, (list, tuple))
                                            and all(isinstance(x, str) for x in layers))):
            params["layers"] = list(getattr(self, "vectors_", {}))
        return params


class ActivationAddition(SteeringVector):
    """Activation addition ("ActAdd", Turner et al. 2023; tdhook's ``ActivationAddition``).

    The vector is ``activation(positive) - activation(negative)`` for a positive and a negative
    prompt (e.g. the token ids of "Love" and "Hate") at each layer, kept **per position** by
    default (``token="none"``: a ``(T_v, D)`` vector) and added to the first ``T_v`` positions of
    the input being steered, scaled by ``alpha``. It is a :class:`SteeringVector` with that default:
    ``fit(model, positive, negative)`` with several prompts averages them (they then need the same
    length); ``token="mean"`` or ``"last"`` gives a single ``(D,)`` vector added at every position,
    which is exactly ``SteeringVector(..., token=...)``; a per-position vector cannot steer inputs
    shorter than the prompts (e.g. cached generation steps). Everything else (``attach``,
    ``applied``, ``steer_fn``, ``save``/``load``) is inherited.

    Example::

        add = ActivationAddition("transformer.h.0", alpha=5.0).fit(model, love_ids, hate_ids)
        with add.applied(model):
            logits = model(input_ids=prompt_ids).logits
    """

    def __init__(
        self,
        layers: LayerSelector | None = None,
        alpha: float = 1.0,
        steer_fn: SteerFn | None = None,
        positions: Positions = None,
        token: str = "none",
        *,
        units: str = "difference",
    ) -> None:
        super().__init__(layers=layers, alpha=alpha, steer_fn=steer_fn, positions=positions,
                         token=token, units=units)
