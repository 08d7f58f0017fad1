"""Shoal: a Swarm-style container orchestrator that speaks the Docker Engine API."""

__version__ = "0.1.0"
