"""The ranking of eligible nodes and the tree of placement preferences (pure).

Ranking (SK: manager/scheduler/scheduler.go ``scheduleTaskGroup``'s ``nodeLess``): a node where
this service version failed :data:`~manager.scheduler.nodeinfo.MAX_FAILURES` times within the
monitor window ranks last (more failures, lower); then fewest active tasks of the service; then
fewest active tasks in all; then hostname and ID (so placements are deterministic).

Preferences (``Placement.Preferences: [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]``,
SK: nodeset.go ``tree`` and scheduler.go ``scheduleNTasksOnSubtree``): every node goes into a
tree with one level per preference, a branch per value of its descriptor (nodes without the
label share the branch ``""``). Each branch counts the service's active tasks on all its nodes
(eligible or not); a leaf holds its eligible nodes in a heap by rank. A task goes down the branch
with the fewest tasks of the service among those that still have an eligible node, then to the
best node of the leaf — so the counts per value stay within one of each other while every value
has room, then fill the values that still have room. Placing one task at a time keeps this true
for any batch size (swarmkit divides a batch among branches; the outcome is the same).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from manager.scheduler.nodeinfo import FailureKey, NodeInfo
from manager.specs import SPREAD_PREFIXES

__all__ = ["rank", "spread_descriptors", "descriptor_value", "Branch", "build_tree", "SPREAD_PREFIXES"]

Obj = dict[str, Any]
RankKey = tuple[int, int, int, str, str]



def rank(node: NodeInfo, service_id: str, key: FailureKey, now: float) -> RankKey:
    """The sort key of ``node`` for a task of ``service_id`` (version ``key``) at ``now``; lower is
    better."""
    return (node.faulty(key, now), node.service_tasks.get(service_id, 0), node.total_tasks, node.hostname, node.id)


def spread_descriptors(task: Obj) -> list[str]:
    """The ``SpreadDescriptor`` of each spread preference of the task dict ``task``
    (``Spec.Placement.Preferences``), in order; other entries are skipped."""
    prefs = ((task.get("Spec") or {}).get("Placement") or {}).get("Preferences") or []
    out = []
    for p in prefs if isinstance(prefs, list) else ():
        spread = p.get("Spread") if isinstance(p, dict) else None
        desc = spread.get("SpreadDescriptor") if isinstance(spread, dict) else None
        if isinstance(desc, str) and any(desc.lower().startswith(x) and len(desc) > len(x) for x in SPREAD_PREFIXES):
            out.append(desc)
    return out


def descriptor_value(descriptor: str, node: NodeInfo) -> str:
    """The node's value for a spread descriptor (``node.labels.zone`` → its ``zone`` label);
    ``""`` when it has none."""
    d = descriptor.lower()
    for prefix, labels in ((SPREAD_PREFIXES[0], node.labels), (SPREAD_PREFIXES[1], node.engine_labels)):
        if d.startswith(prefix):
            return labels.get(descriptor[len(prefix):], "")
    return ""


@dataclass
class Branch:
    """One branch of the preference tree: ``tasks`` (active tasks of the service on its nodes),
    ``room`` (eligible nodes below it), ``children`` by descriptor value (None at a leaf), and at
    a leaf ``heap`` of ``(rank, node ID)`` of its eligible nodes."""

    tasks: int = 0
    room: int = 0
    children: dict[str, Branch] | None = None
    heap: list[tuple[RankKey, str]] = field(default_factory=list)

    def choose(self) -> list[Branch]:
        """The path from this branch to the leaf where the next task goes (this branch first):
        at each level the child with room and the fewest tasks (then the least value)."""
        path = [self]
        b = self
        while b.children is not None:
            b = min(((c.tasks, v, c) for v, c in b.children.items() if c.room > 0), key=lambda x: (x[0], x[1]))[2]
            path.append(b)
        return path


def build_tree(nodes: list[NodeInfo], eligible: set[str], descriptors: list[str], service_id: str,
               key: FailureKey, now: float) -> Branch:
    """The preference tree over ``nodes`` (all of them, for the task counts) with the ``eligible``
    node IDs in the leaves' heaps; no descriptors give a single leaf."""
    root = Branch()
    for n in nodes:
        b = root
        here = n.service_tasks.get(service_id, 0)
        ok = n.id in eligible
        for d in descriptors:
            b.tasks += here
            b.room += ok
            if b.children is None:
                b.children = {}
            b = b.children.setdefault(descriptor_value(d, n), Branch())
        b.tasks += here
        b.room += ok
        if ok:
            b.heap.append((rank(n, service_id, key, now), n.id))
    _heapify(root)
    return root


def _heapify(b: Branch) -> None:
    if b.children is None:
        heapq.heapify(b.heap)
        return
    for c in b.children.values():
        _heapify(c)
