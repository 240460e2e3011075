"""Activations: the one model-access object (ModelAccess), in-memory capture, the one read path
with early exit, and the on-disk store."""

from latentsurgeon.activations.access import LayerOffsets, ModelAccess
from latentsurgeon.activations.batching import as_loader
from latentsurgeon.activations.capture import Captured, capture
from latentsurgeon.activations.fingerprint import model_fingerprint
from latentsurgeon.activations.pooling import POOLINGS, pool
from latentsurgeon.activations.read import LayerReader, layer_outputs
from latentsurgeon.activations.store import ActivationStore

__all__ = ["POOLINGS", "ActivationStore", "Captured", "LayerOffsets", "LayerReader", "ModelAccess",
           "as_loader", "capture", "layer_outputs", "model_fingerprint", "pool"]
