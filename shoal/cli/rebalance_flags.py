"""``shoal service update --rebalance | --no-rebalance`` (beyond Swarm; moby#24103): sets or
removes the service label :data:`~shoal.base.servicelabels.REBALANCE_LABEL`, which makes the
orchestrator spread the service's tasks evenly again over the nodes that can run them, one move
at a time within its update config (docs/architecture.md, "Nodes that blip")."""

from __future__ import annotations

import argparse
from typing import Any

from shoal.base.servicelabels import REBALANCE_LABEL

__all__ = ["add_rebalance_args", "apply_rebalance"]


def add_rebalance_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--rebalance`` / ``--no-rebalance`` (``args.rebalance``: True, False or None)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--rebalance", dest="rebalance", action="store_true", default=None,
                   help="spread the tasks evenly over the nodes again (e.g. after nodes joined), one "
                        "at a time within the update config; stays on (label " + REBALANCE_LABEL + "=true)")
    g.add_argument("--no-rebalance", dest="rebalance", action="store_false",
                   help="stop rebalancing (removes the label)")


def apply_rebalance(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``spec`` (a ServiceSpec, changed in place and returned) with the label set (``--rebalance``)
    or removed (``--no-rebalance``); unchanged when neither flag was given. Raises ValueError
    (a usage error) for ``--rebalance`` on a service that is not replicated (a global service
    has one task per node, a job's tasks end: there is nothing to spread)."""
    on = getattr(args, "rebalance", None)
    if on is None:
        return spec
    if on and "Replicated" not in (spec.get("Mode") or {"Replicated": {}}):
        raise ValueError("--rebalance applies to replicated services only")
    labels = dict(spec.get("Labels") or {})
    if on:
        labels[REBALANCE_LABEL] = "true"
    else:
        labels.pop(REBALANCE_LABEL, None)
    spec["Labels"] = labels
    return spec
