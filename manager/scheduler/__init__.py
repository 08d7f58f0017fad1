"""The scheduler: places pending tasks on nodes, and says why when it cannot.

Follows swarmkit's design (SK: design/scheduler.md, manager/scheduler/; SWARM-FACTS 1.2). The
package, by responsibility (everything but :mod:`.loop` is pure and mypy-strict):

- :mod:`.nodeinfo`: :class:`NodeInfo`, one node as the filters see it (attributes, active tasks
  per service, reservations, host ports, recent failures);
- :mod:`.nodeset`: :class:`NodeSet`, the index of nodes kept up to date one task at a time;
- :mod:`.filters`: one class per filter (ready/active, resources, constraints, image platforms,
  host-mode ports, max replicas per node), each with ``set_task`` / ``check`` / ``explain``;
- :mod:`.pipeline`: :class:`Pipeline`, the filters in order and the ``no suitable node (…)``
  explanation counting the nodes each removed;
- :mod:`.spread`: the ranking (faulty nodes last, fewest tasks of the service, fewest tasks)
  and the tree of spread preferences;
- :mod:`.placement`: :func:`schedule`, a batch of pending tasks onto a :class:`NodeSet`;
- :mod:`.loop`: :class:`Scheduler`, the loop over the store (events → index → passes).

Import from ``manager.scheduler``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from manager.scheduler.filters import (
    ConstraintFilter,
    Filter,
    HostPortFilter,
    MaxReplicasFilter,
    PlatformFilter,
    ReadyFilter,
    ResourceFilter,
    default_filters,
    node_matches,
    parse_constraints,
)
from manager.scheduler.loop import BRIDGE_NETWORK_ID, Scheduler, bridge_attachment, is_pending
from manager.scheduler.nodeinfo import (
    MAX_FAILURES,
    MONITOR_FAILURES,
    NodeInfo,
    host_ports,
    task_is_active,
)
from manager.scheduler.nodeset import NodeSet
from manager.scheduler.pipeline import Pipeline, no_suitable_node
from manager.scheduler.placement import Decisions, schedule
from manager.scheduler.spread import SPREAD_PREFIXES, rank, spread_descriptors

__all__ = [
    "NodeInfo",
    "NodeSet",
    "Filter",
    "ReadyFilter",
    "ResourceFilter",
    "ConstraintFilter",
    "PlatformFilter",
    "HostPortFilter",
    "MaxReplicasFilter",
    "default_filters",
    "node_matches",
    "parse_constraints",
    "Pipeline",
    "no_suitable_node",
    "rank",
    "spread_descriptors",
    "SPREAD_PREFIXES",
    "Decisions",
    "schedule",
    "host_ports",
    "task_is_active",
    "is_pending",
    "build_node_infos",
    "MAX_FAILURES",
    "MONITOR_FAILURES",
    "Scheduler",
    "BRIDGE_NETWORK_ID",
    "bridge_attachment",
]


def build_node_infos(nodes: Iterable[dict[str, Any]], tasks: Iterable[dict[str, Any]],
                     now: float | None = None) -> NodeSet:
    """The :class:`NodeSet` of the API ``Node`` objects ``nodes`` with the active ``tasks``
    counted (:meth:`NodeSet.from_objects`)."""
    return NodeSet.from_objects(nodes, tasks, now)
