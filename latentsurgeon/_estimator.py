"""The estimator contract shared by every fitted object: parameters, learned state, save/load."""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from latentsurgeon.errors import LatentSurgeonError, NotFittedError

E = TypeVar("E", bound="Estimator")
_FORMAT = "latentsurgeon-estimator/1"


def _to_storable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
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

    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names if hasattr(self, name)}

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
            "params": _to_storable(self.get_params()),
            "learned": _to_storable(self.learned_state()),
        }
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"
