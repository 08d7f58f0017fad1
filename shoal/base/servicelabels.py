"""Service labels Shoal gives a meaning to (beyond Swarm), shared by the CLI and the manager."""

from __future__ import annotations

__all__ = ["REBALANCE_LABEL", "label_true"]

REBALANCE_LABEL = "com.shoal.rebalance"
"""On a replicated service (``Spec.Labels``): ``true`` makes the orchestrator spread its tasks
evenly again over the nodes that can run them, one move at a time within its ``UpdateConfig``
(``shoal service update --rebalance``; manager.orchestrator.rebalance). Anything else: off."""


def label_true(value: object) -> bool:
    """Whether a label value means yes: ``true``, ``1``, ``yes`` or ``on`` (any case)."""
    return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on")
