"""Declarative parameter checks (scikit-learn's idea, our own small implementation).

A class lists what each constructor parameter accepts in ``_parameter_constraints``; the
estimator contract (:class:`latentsurgeon._estimator.Estimator`) checks them when ``fit`` (or any
public method that uses the parameters) runs, so ``set_params`` and ``clone`` see exactly what was
given. Functions check their arguments with :func:`validate_params`. Every violation raises one
:class:`~latentsurgeon.errors.InvalidParameterError` naming the parameter, what it accepts and what
was given.

Constraints: a Python type (``int`` excludes ``bool``), ``None``, :class:`Interval`,
:class:`Options`, :class:`Callable`, :class:`Seed`, or a list of those (any may match).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from latentsurgeon.errors import InvalidParameterError, NonFiniteError

__all__ = ["Callable", "Interval", "Options", "Seed", "check_finite", "check_seed", "draw_seed",
           "describe", "validate_params"]


class Interval:
    """Numbers of a ``kind`` (``int`` or ``float``/``"real"``) in a range.

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``; ``None`` bounds are open.
    A float interval rejects NaN and (unless a bound is infinite) Inf.
    """

    def __init__(self, kind: type | str, low: float | None, high: float | None, *,
                 closed: str = "both") -> None:
        self.kind = {"real": float, float: float, int: int}[kind]
        self.low, self.high, self.closed = low, high, closed

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or isinstance(value, (torch.Tensor, np.ndarray)):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or math.isnan(float(value)):
            return False
        v = float(value)
        if math.isinf(v) and not ((v > 0 and self.high is None) or (v < 0 and self.low is None)):
            return False
        if self.low is not None:
            if v < self.low or (v == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if v > self.high or (v == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        kind = "an int" if self.kind is int else "a number"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{kind} in {left}{low}, {high}{right}"


class Options:
    """One of a fixed set of values (strings usually); ``deprecated`` ones still pass."""

    def __init__(self, options: Iterable[Any], *, deprecated: Iterable[Any] = ()) -> None:
        self.options = list(options)
        self.deprecated = list(deprecated)

    def accepts(self, value: Any) -> bool:
        try:
            return value in self.options or value in self.deprecated
        except TypeError:  # unhashable or incomparable
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Callable:
    """Any callable."""

    def accepts(self, value: Any) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return "a callable"


class Seed:
    """``None`` (fresh randomness), a non-negative int, or a ``torch.Generator``."""

    def accepts(self, value: Any) -> bool:
        if value is None or isinstance(value, torch.Generator):
            return True
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0

    def __str__(self) -> str:
        return "None, an int >= 0 or a torch.Generator"


class _Type:
    def __init__(self, kind: type) -> None:
        self.kind = kind

    def accepts(self, value: Any) -> bool:
        if self.kind in (int, float) and isinstance(value, bool):
            return False
        if self.kind is float:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)
        if self.kind is int:
            return isinstance(value, numbers.Integral)
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        return {str: "a string", int: "an int", float: "a number", bool: "a bool",
                list: "a list", dict: "a dict"}.get(self.kind, f"a {self.kind.__name__}")


class _NoneConstraint:
    def accepts(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


def _as_constraint(spec: Any) -> Any:
    if spec is None:
        return _NoneConstraint()
    if isinstance(spec, type):
        return _Type(spec)
    return spec


def describe(value: Any) -> str:
    """A short description of a given value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _accepts(constraints: Sequence[Any], value: Any) -> bool:
    return any(_as_constraint(c).accepts(value) for c in constraints)


def validate_params(params: Mapping[str, Any], constraints: Mapping[str, Any], *,
                    owner: str) -> None:
    """Raise :class:`InvalidParameterError` for the first value its constraints reject.

    Args:
        params: ``{name: value}``.
        constraints: ``{name: constraint or [constraints]}``; names without one are not checked.
        owner: the class or function named in the message (``"PClarc"``, ``"tcav()"``).
    """
    for name, spec in constraints.items():
        if name not in params:
            continue
        options = spec if isinstance(spec, list) else [spec]
        value = params[name]
        if not _accepts(options, value):
            expected = " or ".join(str(_as_constraint(c)) for c in options)
            raise InvalidParameterError(
                f"{owner}: {name} must be {expected}; got {describe(value)}.")


def check_seed(seed: Any, what: str = "seed") -> None:
    """Raise unless ``seed`` is None, an int >= 0 or a ``torch.Generator``."""
    if not Seed().accepts(seed):
        raise InvalidParameterError(f"{what} must be {Seed()}; got {describe(seed)}.")


def draw_seed(seed: int | torch.Generator | None) -> int | None:
    """The int a seed stands for: None stays None (fresh randomness), an int is itself, a
    ``torch.Generator`` gives one draw in ``[0, 2**32)`` (its state advances; the same state gives
    the same int; 32 bits, so NumPy and scikit-learn take it too). Where a seed feeds several
    draws, each takes its own int from the generator."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**32, (1,), generator=seed, device=seed.device))
    return None if seed is None else int(seed)


def check_finite(value: Any, what: str) -> Any:
    """Return ``value`` unchanged if every float entry is finite, else raise NonFiniteError.

    Accepts a tensor, a numpy array, or a (nested) tuple/list/dict of them; integer and bool
    tensors always pass. The message says how many entries (and which rows) are NaN or Inf.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{what}[{key!r}]")
        return value
    if isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            check_finite(item, f"{what}[{index}]")
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fc" or bool(np.isfinite(value).all()):
            return value
        bad = ~np.isfinite(value)
        rows = np.flatnonzero(bad.reshape(len(value), -1).any(1)) if value.ndim else []
        _raise_nonfinite(what, int(np.isnan(value).sum()), int(bad.sum()), value.size, rows)
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return value
        finite = torch.isfinite(value)
        if bool(finite.all()):
            return value
        bad = ~finite
        rows = (torch.nonzero(bad.reshape(len(value), -1).any(1)).flatten().tolist()
                if value.dim() else [])
        _raise_nonfinite(what, int(torch.isnan(value).sum()), int(bad.sum()), value.numel(), rows)
    return value


def _raise_nonfinite(what: str, n_nan: int, n_bad: int, size: int, rows: Sequence[int]) -> None:
    shown = ", ".join(str(int(r)) for r in list(rows)[:8]) + (" ..." if len(rows) > 8 else "")
    where = f" (samples {shown})" if len(rows) else ""
    raise NonFiniteError(
        f"{what} holds {n_bad} non-finite values of {size} ({n_nan} NaN, {n_bad - n_nan} Inf)"
        f"{where}; NaN or Inf is an error, never a result. Check the inputs and the model "
        "(an fp16 overflow, a division by zero, a diverged training).")
