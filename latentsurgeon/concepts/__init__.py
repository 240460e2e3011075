"""Concept directions (CAVs, LEACE), TCAV scores and probes."""

from latentsurgeon.concepts.cav import CAV, METHODS

__all__ = ["CAV", "METHODS"]
