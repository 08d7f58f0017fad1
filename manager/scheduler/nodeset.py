"""The scheduler's index of nodes (pure): :class:`NodeSet`.

Every node's :class:`~manager.scheduler.nodeinfo.NodeInfo`, with its active tasks counted per
service, kept up to date one task at a time from the store's events (:meth:`NodeSet.observe_task`)
and from the scheduler's own placements (:meth:`NodeSet.place`). A placement therefore reads the
counts it needs from the index and never rescans the tasks (SK: manager/scheduler/nodeset.go,
``NodeInfo.addTask`` / ``removeTask``). Failures (a task of the service turning ``failed`` or
``rejected`` on a node) are recorded as they are observed, for the faulty-node rule.

Every update is idempotent per task ID: observing the same task twice, or an older copy after
a newer one's placement, leaves the same counts (what counts is whether the latest copy is
active, :func:`~manager.scheduler.nodeinfo.task_is_active`, and on which node).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from manager.scheduler.nodeinfo import (
    FAILED_STATES,
    MONITOR_FAILURES,
    NodeInfo,
    failure_key,
    host_ports,
    reservations,
    task_is_active,
)
from shoal.base.util import parse_rfc3339
from shoal.base.views import task_state

__all__ = ["NodeSet", "Placed"]

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Placed:
    """What an active task holds on its node (enough to take it off again)."""

    node_id: str
    service_id: str
    cpus: int
    memory: int
    ports: frozenset[tuple[str, int]]


class NodeSet:
    """Nodes by ID (``nodes``) and the active tasks counted on them (``placed``: task ID →
    :class:`Placed`). Tasks on a node the set does not know yet are kept and counted once the
    node is added."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.placed: dict[str, Placed] = {}
        self._by_node: dict[str, set[str]] = {}

    @classmethod
    def from_objects(cls, nodes: Iterable[Obj], tasks: Iterable[Obj], now: float | None = None) -> NodeSet:
        """The index of the API ``Node`` objects ``nodes`` with the active ``tasks`` counted. With
        ``now`` (seconds since the epoch), failed/rejected tasks whose ``Status.Timestamp`` is
        within :data:`~manager.scheduler.nodeinfo.MONITOR_FAILURES` before it seed the failure
        record (a new leader remembers what the store shows)."""
        ns = cls()
        for n in nodes:
            ns.set_node(n)
        for t in tasks:
            ns.observe_task(t)
            if now is not None and task_state(t) in FAILED_STATES and t.get("NodeID"):
                at = parse_rfc3339(str((t.get("Status") or {}).get("Timestamp") or ""))
                if at and 0 <= now - at < MONITOR_FAILURES:
                    ns.task_failed(t, at)
        return ns

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[NodeInfo]:
        return iter(self.nodes.values())

    def get(self, node_id: str) -> NodeInfo | None:
        """The node ``node_id``, or None."""
        return self.nodes.get(node_id)

    def set_node(self, node: Obj) -> NodeInfo:
        """Add the API ``Node`` object ``node``, or update its attributes (labels, availability,
        status, resources …) keeping its counts."""
        nid = str(node["ID"])
        info = self.nodes.get(nid)
        if info is not None:
            info.describe(node)
            return info
        info = NodeInfo.from_node(node)
        self.nodes[nid] = info
        for tid in self._by_node.get(nid, ()):
            p = self.placed[tid]
            info.add_task(p.service_id, p.cpus, p.memory, p.ports)
        return info

    def remove_node(self, node_id: str) -> None:
        """Forget the node (its tasks stay counted for it should it come back)."""
        self.nodes.pop(node_id, None)

    def observe_task(self, task: Obj, old: Obj | None = None, now: float | None = None) -> None:
        """Bring the index in line with the task dict ``task`` (its latest committed copy): count
        it on its node while it is active, uncount it once it is not. When ``old`` (the copy
        before this change) was not failed/rejected and ``task`` is, and ``now`` is given, record
        a failure on the task's node at ``now``."""
        tid = str(task["ID"])
        if task_is_active(task):
            cpus, memory = reservations(task)
            p = Placed(str(task["NodeID"]), str(task.get("ServiceID", "")), cpus, memory, host_ports(task))
            if self.placed.get(tid) != p:
                self._unplace(tid)
                self._place(tid, p)
        else:
            self._unplace(tid)
        if (now is not None and task.get("NodeID") and task_state(task) in FAILED_STATES
                and (old is None or task_state(old) not in FAILED_STATES)):
            self.task_failed(task, now)

    def forget_task(self, task_id: str) -> None:
        """The task was deleted: uncount it."""
        self._unplace(task_id)

    def place(self, task: Obj, node_id: str) -> None:
        """Count the task dict ``task`` (pending) as placed on ``node_id`` (the scheduler's own
        decision, before its event comes back)."""
        cpus, memory = reservations(task)
        tid = str(task["ID"])
        self._unplace(tid)
        self._place(tid, Placed(node_id, str(task.get("ServiceID", "")), cpus, memory, host_ports(task)))

    def task_failed(self, task: Obj, at: float) -> None:
        """Record a failure of ``task``'s service version on its node at ``at``."""
        info = self.nodes.get(str(task.get("NodeID") or ""))
        if info is not None:
            info.task_failed(failure_key(task), at)

    def _place(self, tid: str, p: Placed) -> None:
        self.placed[tid] = p
        self._by_node.setdefault(p.node_id, set()).add(tid)
        info = self.nodes.get(p.node_id)
        if info is not None:
            info.add_task(p.service_id, p.cpus, p.memory, p.ports)

    def _unplace(self, tid: str) -> None:
        p = self.placed.pop(tid, None)
        if p is None:
            return
        on_node = self._by_node.get(p.node_id)
        if on_node is not None:
            on_node.discard(tid)
            if not on_node:
                del self._by_node[p.node_id]
        info = self.nodes.get(p.node_id)
        if info is not None:
            info.remove_task(p.service_id, p.cpus, p.memory, p.ports)
