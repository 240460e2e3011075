"""Exception hierarchy: one base class, specific errors that also inherit the matching builtin."""

from __future__ import annotations


class LatentSurgeonError(Exception):
    """Base class of every error raised on purpose by latentsurgeon."""


class LayerNotFoundError(LatentSurgeonError, KeyError):
    """A layer name, pattern or class matched no module of the model."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(LatentSurgeonError, ValueError, TypeError):
    """A parameter (of a constructor or a call) has a value or a type it does not accept.

    The message names the parameter, what it accepts and what was given. Like scikit-learn's, it
    is both a ``ValueError`` and a ``TypeError``, so code catching either keeps working.
    """


class ShapeMismatchError(LatentSurgeonError, ValueError):
    """A tensor has a shape other than the one the operation needs."""


class DeviceMismatchError(LatentSurgeonError, ValueError):
    """Tensors or model live on different devices."""


class NonFiniteError(LatentSurgeonError, ValueError):
    """Inputs, activations, gradients or results hold NaN or Inf: an error, never a result."""


class StoreError(LatentSurgeonError, ValueError):
    """An activation store on disk is damaged, incomplete or belongs to another model or data."""


class NotFittedError(LatentSurgeonError, AttributeError):
    """An estimator was used before ``fit``."""


class ModelMismatchError(LatentSurgeonError, ValueError):
    """An object fitted on one model's weights was applied to other weights."""
