"""Deterministic simulation of a Raft cluster of :mod:`raft.core` nodes; see
:mod:`raft.sim.cluster`. ``python -m raft.sim --help`` runs it from the command line."""

from raft.sim.cluster import SafetyViolation, SimParams, Simulation, run

__all__ = ["SafetyViolation", "SimParams", "Simulation", "run"]
