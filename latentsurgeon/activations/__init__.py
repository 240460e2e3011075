"""Activations: in-memory capture and the streamed, resumable, integrity-checked store."""

from latentsurgeon.activations.batching import as_loader
from latentsurgeon.activations.capture import Captured, capture
from latentsurgeon.activations.fingerprint import model_fingerprint
from latentsurgeon.activations.pooling import POOLINGS, pool
from latentsurgeon.activations.store import ActivationStore

__all__ = ["POOLINGS", "ActivationStore", "Captured", "as_loader", "capture", "model_fingerprint",
           "pool"]
