"""Concept directions (CAVs, LEACE), TCAV scores and probes."""

from latentsurgeon.concepts.cav import CAV, METHODS
from latentsurgeon.concepts.leace import LeaceEraser
from latentsurgeon.concepts.probe import ProbeReport, probe_layers
from latentsurgeon.concepts.tcav import tcav
from latentsurgeon.concepts.tcav_result import TCAVResult

__all__ = ["CAV", "METHODS", "LeaceEraser", "ProbeReport", "TCAVResult", "probe_layers", "tcav"]
