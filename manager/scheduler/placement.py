"""Placing a batch of pending tasks on an index of nodes (pure): :func:`schedule`.

Tasks are grouped as swarmkit groups them (same service and same placement-relevant spec:
constraints, preferences, max replicas, platforms, reservations, host ports); each group runs the filter
pipeline once over the nodes, builds the preference tree (:mod:`manager.scheduler.spread`) and
places its tasks one at a time on the best eligible node, updating the index
(:meth:`~manager.scheduler.nodeset.NodeSet.place`) so later tasks of the batch see them. A task
no node can take gets swarmkit's ``no suitable node (…)`` with the count of nodes each filter
removed (:class:`~manager.scheduler.pipeline.Pipeline`). A task is placed once and never
revisited (no preemption).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from manager.scheduler.nodeinfo import failure_key, host_ports, reservations
from manager.scheduler.nodeset import NodeSet
from manager.scheduler.pipeline import Pipeline, no_suitable_node
from manager.scheduler.spread import build_tree, rank, spread_descriptors

__all__ = ["Decisions", "schedule", "group_key"]

Obj = dict[str, Any]


@dataclass
class Decisions:
    """The output of :func:`schedule`: ``placed`` task ID → node ID; ``failed`` task ID → the
    ``Status.Err`` for a task left pending."""

    placed: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def group_key(task: Obj) -> tuple[str, str]:
    """The key of the tasks that place alike: ``(ServiceID, the JSON of what the filters and
    the ranking read of the task)``."""
    placement = (task.get("Spec") or {}).get("Placement") or {}
    what = [placement.get("Constraints"), placement.get("Preferences"), placement.get("MaxReplicas"),
            placement.get("Platforms"), list(reservations(task)), sorted(host_ports(task)), failure_key(task)[1]]
    return str(task.get("ServiceID", "")), json.dumps(what, sort_keys=True, default=str)


def schedule(nodes: NodeSet, tasks: Iterable[Obj], now: float = 0.0, pipeline: Pipeline | None = None,
             exclude: Collection[str] = ()) -> Decisions:
    """Place ``tasks`` (pending task dicts; one with a ``NodeID`` only on that node) on ``nodes``, which is updated with
    each placement; the node IDs in ``exclude`` are left out (not counted in explanations
    either: the loop leaves out nodes it has no bridge subnet for yet). ``now`` (seconds since
    the epoch) is the time the faulty-node rule measures failures against. Groups go in key
    order and tasks within a group by (Slot, ID), so the result depends on the inputs only."""
    pipe = pipeline or Pipeline()
    out = Decisions()
    groups: dict[tuple[str, str], list[Obj]] = {}
    for t in tasks:
        if t.get("NodeID"):
            _check_preassigned(nodes, t, pipe, exclude, out)
        else:
            groups.setdefault(group_key(t), []).append(t)
    node_list = sorted((n for n in nodes if n.id not in exclude), key=lambda n: (n.hostname, n.id))
    for gkey in sorted(groups):
        group = sorted(groups[gkey], key=lambda t: (int(t.get("Slot") or 0), str(t["ID"])))
        _schedule_group(nodes, node_list, group, pipe, now, out)
    return out


def _check_preassigned(nodes: NodeSet, task: Obj, pipe: Pipeline, exclude: Collection[str], out: Decisions) -> None:
    """A task whose node the orchestrator chose (a global service's): placed there if the node
    passes the filters, else left pending with the reason (SK: scheduler.go
    ``processPreassignedTasks``)."""
    nid = str(task["NodeID"])
    info = nodes.get(nid)
    pipe.set_task(task)
    if info is not None and nid not in exclude and pipe.process(info):
        nodes.place(task, nid)
        out.placed[str(task["ID"])] = nid
    else:
        out.failed[str(task["ID"])] = no_suitable_node(pipe.explain())


def _schedule_group(nodes: NodeSet, node_list: list[Any], group: list[Obj], pipe: Pipeline, now: float,
                    out: Decisions) -> None:
    first = group[0]
    sid = str(first.get("ServiceID", ""))
    fkey = failure_key(first)
    pipe.set_task(first)
    eligible = {n.id for n in node_list if pipe.process(n)}
    tree = build_tree(node_list, eligible, spread_descriptors(first), sid, fkey, now)
    left = 0
    for t in group:
        if tree.room <= 0:
            break
        path = tree.choose()
        leaf = path[-1]
        _, nid = heapq.heappop(leaf.heap)
        nodes.place(t, nid)
        out.placed[str(t["ID"])] = nid
        left += 1
        for b in path:
            b.tasks += 1
        info = nodes.nodes[nid]
        if pipe.check(info):
            heapq.heappush(leaf.heap, (rank(info, sid, fkey, now), nid))
        else:
            for b in path:
                b.room -= 1
    rest = group[left:]
    if rest:
        pipe.reset_counts()
        for n in node_list:
            pipe.process(n)
        msg = no_suitable_node(pipe.explain())
        for t in rest:
            out.failed[str(t["ID"])] = msg
