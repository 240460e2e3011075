"""Pooling of layer activations to one vector (or tensor) per sample, and its inverse for
gradients (:func:`lift`).

Two layouts, told apart by one explicit rule:

* **channels first** ``(N, C, *spatial)`` (conv layers, time series ``(N, C, L)``): pooling acts
  on the dims after ``C``;
* **tokens** ``(N, T, D)`` (transformer layers): pooling acts on the token axis ``T`` and keeps
  the hidden size ``D``.

A 3-D activation is read as tokens when the batch carried an attention mask ``(N, T)`` (a dict
input with an ``attention_mask`` key: :func:`~latentsurgeon.activations.batching.attention_mask_of`
finds it) whose shape is the activation's ``(N, T)``, or when a token mode is asked for; else it
is channels first (the behaviour for images and time series, unchanged).

Modes, for channels first ``(N, C, *spatial)``:

* ``"max"``     -> ``(N, C)``: spatial maximum per channel
* ``"mean"``    -> ``(N, C)``: spatial mean per channel
* ``"flatten"`` -> ``(N, C * prod(spatial))``
* ``"none"``    -> unchanged

and for tokens ``(N, T, D)`` (padding tokens, ``mask == 0``, never count):

* ``"mean"`` (with a mask), ``"token_mean"`` -> ``(N, D)``: mean over the unmasked tokens
* ``"max"`` (with a mask), ``"token_max"``   -> ``(N, D)``: maximum over the unmasked tokens
* ``"cls"``          -> ``(N, D)``: token 0 (BERT's ``[CLS]``, a ViT's class token)
* ``"last"``         -> ``(N, D)``: the last unmasked token (GPT-style models; token ``T - 1``
  without a mask)
* ``"position:K"``   -> ``(N, D)``: token ``K`` (negative ``K`` counts from the end, as in Python)
* ``"flatten"``      -> ``(N, T * D)``; ``"none"`` -> unchanged

``"token_mean"``/``"token_max"`` are how a mask-less sequence (a ViT on image tensors) says
"over tokens": plain ``"mean"`` on a 3-D activation without a mask stays the channels-first mean
(over the last dim) it always was. 2-D activations ``(N, D)`` are returned unchanged by every mode.
"""

from __future__ import annotations

from typing import Any

import torch

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

#: The modes of every layout (channels first; tokens when a mask says so).
POOLINGS = ("max", "mean", "flatten", "none")
#: Modes that only make sense on the token axis: they read a 3-D activation as ``(N, T, D)``;
#: ``"position:K"`` (an int ``K``) is one too.
TOKEN_POOLINGS = ("cls", "last", "token_mean", "token_max")
ALL_POOLINGS = POOLINGS + TOKEN_POOLINGS
_POSITION = "position:"


class PoolingError(InvalidParameterError):
    """An unknown pooling mode."""


def _position(mode: str) -> int | None:
    """``K`` of ``"position:K"``, else None."""
    if not isinstance(mode, str) or not mode.startswith(_POSITION):
        return None
    text = mode[len(_POSITION):]
    try:
        return int(text)
    except ValueError:
        return None


def check_pooling(mode: Any) -> str:
    """``mode`` if it is a pooling mode (see the module doc), else :class:`PoolingError`."""
    if isinstance(mode, str) and (mode in ALL_POOLINGS or _position(mode) is not None):
        return mode
    raise PoolingError(
        f"Unknown pooling {mode!r}; expected one of {', '.join(ALL_POOLINGS)} or 'position:K' "
        "(an int K, the token index).")


class PoolingOption:
    """A constructor constraint (:mod:`latentsurgeon._validation`): any pooling mode."""

    def accepts(self, value: Any) -> bool:
        try:
            check_pooling(value)
        except PoolingError:
            return False
        return True

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(p) for p in ALL_POOLINGS) + " or 'position:K'"


def is_token_mode(mode: str) -> bool:
    """Whether ``mode`` reads a 3-D activation as tokens whether or not a mask is given."""
    return mode in TOKEN_POOLINGS or _position(mode) is not None


def _mask_for(activations: torch.Tensor, attention_mask: torch.Tensor | None
              ) -> torch.Tensor | None:
    """The ``(N, T)`` bool mask when it fits ``activations (N, T, D)``, else None."""
    if attention_mask is None or activations.dim() != 3:
        return None
    if tuple(attention_mask.shape) != tuple(activations.shape[:2]):
        return None
    return attention_mask.to(activations.device) != 0


def is_sequence(activations: torch.Tensor, mode: str,
                attention_mask: torch.Tensor | None = None) -> bool:
    """The layout rule of the module doc: is this activation read as tokens ``(N, T, D)``?"""
    if activations.dim() != 3:
        return False
    return is_token_mode(mode) or _mask_for(activations, attention_mask) is not None


def _checked_mask(activations: torch.Tensor, mode: str,
                  attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if activations.dim() != 3 and is_token_mode(mode) and activations.dim() > 2:
        raise ShapeMismatchError(
            f"pooling={mode!r} pools the token axis of (N, T, D) activations; got activations "
            f"of shape {tuple(activations.shape)} (use 'max', 'mean' or 'flatten' for "
            "channels-first activations).")
    mask = _mask_for(activations, attention_mask)
    if attention_mask is not None and mask is None and is_token_mode(mode) \
            and activations.dim() == 3:
        raise ShapeMismatchError(
            f"The attention mask has shape {tuple(attention_mask.shape)} but the activations "
            f"{tuple(activations.shape)}; a mask for (N, T, D) activations is (N, T).")
    if mask is not None and mode in ("mean", "max", "token_mean", "token_max", "last"):
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten().tolist()[:10]
            raise InvalidParameterError(
                f"attention_mask has no unmasked token in rows {rows}; pooling={mode!r} needs "
                "at least one token per sample.")
    return mask


def _token_index(activations: torch.Tensor, mode: str, mask: torch.Tensor | None
                 ) -> torch.Tensor:
    """``(N,)`` the token each sample's ``"cls"``/``"last"``/``"position:K"`` pooling reads."""
    n, t = activations.shape[:2]
    if mode == "last" and mask is not None:
        # The last unmasked token: right padding (BERT) and left padding (GPT) alike.
        positions = torch.arange(t, device=activations.device).expand(n, t)
        return torch.where(mask, positions, -1).amax(dim=1)
    k = 0 if mode == "cls" else t - 1 if mode == "last" else _position(mode)
    assert k is not None
    if not -t <= k < t:
        raise ShapeMismatchError(
            f"pooling={mode!r} asks for token {k}, but the activations have {t} tokens "
            f"(shape {tuple(activations.shape)}).")
    return torch.full((n,), k % t, dtype=torch.long, device=activations.device)


def pool(activations: torch.Tensor, mode: str,
         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``activations`` as ``mode`` says (see the module doc).

    Args:
        activations: ``(N, C, *spatial)``, ``(N, T, D)`` or ``(N, D)``.
        mode: a pooling mode (:data:`ALL_POOLINGS` or ``"position:K"``).
        attention_mask: ``(N, T)`` (1 = token, 0 = padding) of a token batch; it makes a 3-D
            activation of that ``(N, T)`` a sequence, and padding tokens never count.

    Returns:
        ``(N, C)`` / ``(N, D)`` pooled, ``(N, prod(...))`` flattened, or ``activations``.

    Raises:
        PoolingError: an unknown mode.
        ShapeMismatchError: a token mode on activations that are not ``(N, T, D)``; a mask that
            does not fit them; a position outside the tokens.
        InvalidParameterError: a sample whose mask holds no token.
    """
    check_pooling(mode)
    if mode == "none" or activations.dim() <= 2:
        return activations
    if mode == "flatten":
        return activations.reshape(activations.shape[0], -1)
    mask = _checked_mask(activations, mode, attention_mask)
    if not is_sequence(activations, mode, attention_mask):
        dims = tuple(range(2, activations.dim()))
        if mode == "max":
            return activations.amax(dim=dims)
        return activations.mean(dim=dims)
    if mode in ("mean", "token_mean"):
        if mask is None:
            return activations.mean(dim=1)
        weights = mask.to(activations.dtype).unsqueeze(-1)
        return (activations * weights).sum(dim=1) / weights.sum(dim=1)
    if mode in ("max", "token_max"):
        if mask is None:
            return activations.amax(dim=1)
        low = torch.finfo(activations.dtype).min
        return activations.masked_fill(~mask.unsqueeze(-1), low).amax(dim=1)
    index = _token_index(activations, mode, mask)
    return activations[torch.arange(len(activations), device=activations.device), index]


def pooled_dim(activations: torch.Tensor, mode: str,
               attention_mask: torch.Tensor | None = None) -> int:
    """Size of one pooled vector of ``activations`` (the ``D`` of ``pool(...)`` as ``(N, D)``)."""
    check_pooling(mode)
    if activations.dim() <= 2 or mode in ("flatten", "none"):
        return int(torch.Size(activations.shape[1:]).numel())
    if is_sequence(activations, mode, attention_mask):
        return int(activations.shape[2])
    return int(activations.shape[1])


def lift(activations: torch.Tensor, delta: torch.Tensor, mode: str,
         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The smallest change of ``activations`` that moves ``pool(activations)`` by ``delta``
    ``(N, D)``: the one rule pooled gradients follow (TCAV's directional derivatives).

    * ``"flatten"``/``"none"``/2-D: ``delta`` reshaped;
    * channels-first ``"mean"``: ``delta_c`` at every position of channel ``c``;
    * ``"max"``: ``delta_c`` at channel ``c``'s maximum (first one on ties, like argmax);
    * tokens, mean: ``delta`` at every unmasked token (padding gets 0);
    * tokens, max: ``delta_d`` at the unmasked token holding the maximum of dim ``d``;
    * ``"cls"``/``"last"``/``"position:K"``: ``delta`` at the pooled token only.
    """
    check_pooling(mode)
    if activations.dim() <= 2 or mode in ("flatten", "none"):
        return delta.reshape(activations.shape)
    mask = _checked_mask(activations, mode, attention_mask)
    if not is_sequence(activations, mode, attention_mask):
        view = delta.reshape(*delta.shape, *([1] * (activations.dim() - 2)))
        if mode == "mean":
            return view.expand_as(activations)
        flat = activations.detach().flatten(2)
        onehot = torch.zeros_like(flat).scatter_(2, flat.argmax(2, keepdim=True), 1.0)
        return onehot.view_as(activations) * view
    acts = activations.detach()
    if mode in ("mean", "token_mean"):
        if mask is None:
            return delta.unsqueeze(1).expand_as(activations)
        return delta.unsqueeze(1) * mask.to(delta.dtype).unsqueeze(-1)
    if mode in ("max", "token_max"):
        if mask is not None:
            acts = acts.masked_fill(~mask.unsqueeze(-1), torch.finfo(acts.dtype).min)
        onehot = torch.zeros_like(acts).scatter_(1, acts.argmax(1, keepdim=True), 1.0)
        return onehot * delta.unsqueeze(1)
    index = _token_index(activations, mode, mask)
    onehot = torch.zeros(activations.shape[:2], dtype=delta.dtype, device=delta.device)
    onehot[torch.arange(len(activations), device=delta.device), index] = 1.0
    return onehot.unsqueeze(-1) * delta.unsqueeze(1)


def pooled_shape(shape: tuple[int, ...], mode: str, *, sequence: bool = False) -> tuple[int, ...]:
    """Per-sample shape after pooling a per-sample activation of ``shape`` (no batch dim);
    ``sequence`` says the activation is tokens ``(T, D)`` (see the layout rule)."""
    check_pooling(mode)
    if mode == "none" or len(shape) <= 1:
        return tuple(shape)
    if mode == "flatten":
        return (int(torch.Size(shape).numel()),)
    if len(shape) > 2 and is_token_mode(mode):
        raise ShapeMismatchError(
            f"pooling={mode!r} pools the token axis of (T, D) per-sample activations; got "
            f"{tuple(shape)}.")
    if len(shape) == 2 and (sequence or is_token_mode(mode)):
        return (shape[1],)
    return (shape[0],)


def same_pooled_space(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int],
                      mode: str) -> bool:
    """Whether activations of per-sample shapes ``a`` and ``b`` may pool into one space: equal
    shapes, or, for the reducing modes, two 3-D activations ``(T, D)`` of other lengths (padded
    token batches, series of another length), where only the pooled size must agree: callers
    check that size on the pooled vectors. Images keep their exact shape."""
    a, b = tuple(a), tuple(b)
    return a == b or (mode not in ("flatten", "none") and len(a) == len(b) == 2)
