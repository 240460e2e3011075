"""The estimator contract shared by every fitted object (scikit-learn's, completely).

* The constructor stores each parameter under its own name, unchanged; nothing is checked there.
* ``get_params(deep=True)`` reads the parameter names from the constructor's signature;
  ``set_params(**params)`` sets them (``cav__method=...`` reaches a nested estimator);
  ``sklearn.base.clone`` therefore works and gives an unfitted copy.
* Parameters are validated against ``_parameter_constraints`` (see
  :mod:`latentsurgeon._validation`) when ``fit`` runs: subclasses call
  :meth:`Estimator._validate_params` first thing in ``fit``.
* ``fit`` returns ``self``; learned state ends in ``_``; ``save``/``load`` round-trip it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from latentsurgeon._io import torch_save_atomic
from latentsurgeon._validation import validate_params
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NotFittedError

E = TypeVar("E", bound="Estimator")
_FORMAT = "latentsurgeon-estimator/1"


def _to_storable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {k: _to_storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_storable(v) for v in value)
    if hasattr(value, "value") and type(value).__module__.startswith("latentsurgeon"):
        return value.value  # enums are stored by value and rebuilt by the constructor
    return value


class Estimator:
    """Base class: the constructor stores parameters only; ``fit`` sets attributes ending in ``_``.

    ``save(path)`` writes parameters and learned state with ``torch.save`` (tensors, numbers,
    strings, lists and dicts only, so ``load`` can use ``weights_only=True``).
    """

    #: ``{parameter: constraint or [constraints]}``, checked by :meth:`_validate_params`.
    _parameter_constraints: ClassVar[dict[str, Any]] = {}

    @classmethod
    def _get_param_names(cls) -> list[str]:
        init = cls.__init__
        if init is object.__init__:
            return []
        params = inspect.signature(init).parameters.values()  # follows @aliased's __wrapped__
        return [p.name for p in params if p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, ``{name: value}``; with ``deep``, also
        ``{name__sub: value}`` for parameters that are estimators themselves."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            if not hasattr(self, name):
                raise LatentSurgeonError(
                    f"{type(self).__name__} does not store its constructor parameter {name!r} "
                    "under that name; every estimator must (scikit-learn's contract).")
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            out[name] = value
        return out

    def set_params(self: E, **params: Any) -> E:
        """Set constructor parameters (``name__sub=`` for a nested estimator); returns self.

        Raises:
            InvalidParameterError: a name that is not a parameter of this estimator.
        """
        valid = self.get_params(deep=True)
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise InvalidParameterError(
                    f"{type(self).__name__} has no parameter {name!r}; its parameters are "
                    f"{', '.join(self._get_param_names())}.")
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
                valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self

    def _validate_params(self) -> None:
        """Check every parameter against ``_parameter_constraints`` (raises
        :class:`InvalidParameterError` naming the parameter, what it accepts and what it got)."""
        constraints: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            constraints.update(getattr(klass, "_parameter_constraints", {}) or {})
        validate_params(self.get_params(deep=False), constraints, owner=type(self).__name__)

    def learned_state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()
                if k.endswith("_") and not k.startswith("_") and not callable(v)}

    def is_fitted(self) -> bool:
        return bool(self.learned_state())

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit() first.")

    def save(self, path: str | Path) -> None:
        """Save parameters and learned state (atomically: a crash leaves the old file)."""
        self._check_fitted()
        payload = {
            "format": _FORMAT,
            "class": type(self).__name__,
            "params": _to_storable(self.get_params(deep=False)),
            "learned": _to_storable(self.learned_state()),
        }
        torch_save_atomic(payload, path)

    @classmethod
    def load(cls: type[E], path: str | Path) -> E:
        """Load an estimator saved by :meth:`save`; the class must match."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise LatentSurgeonError(f"Cannot load {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise LatentSurgeonError(f"{path} is not a saved latentsurgeon estimator.")
        if payload["class"] != cls.__name__:
            raise LatentSurgeonError(
                f"{path} holds a {payload['class']}, not a {cls.__name__}; "
                f"use {payload['class']}.load()."
            )
        obj = cls(**payload["params"])
        for key, value in payload["learned"].items():
            setattr(obj, key, value)
        return obj

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({params})"
