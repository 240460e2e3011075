"""latentsurgeon: look inside a trained PyTorch model and operate on it through its latent space."""

from latentsurgeon.errors import (
    LatentSurgeonError,
    LayerNotFoundError,
    ShapeMismatchError,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "LatentSurgeonError",
    "LayerNotFoundError",
    "ShapeMismatchError",
    "StoreError",
    "__version__",
]
