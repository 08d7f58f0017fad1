"""The task reaper: deletes tasks nobody needs any more (pure core + an async loop).

Follows swarmkit (SK: manager/orchestrator/taskreaper/task_reaper.go; SWARM-FACTS 1.6):

- Tasks whose ``DesiredState`` is ``remove`` (scale-down, service removed) are deleted once
  they are no longer running: their observed state is terminal, or they were never placed, or
  their node is down or gone.
- Task history: per (service, slot) — per (service, node) for global services and global jobs,
  whose tasks have no slot — at most ``TaskHistoryRetentionLimit`` tasks are kept
  (cluster spec ``Orchestration``, default 5; more if the service's restart policy has
  ``MaxAttempts`` + 1 above it; negative = keep everything). Only dead tasks are deleted
  (desired ``shutdown`` or later and terminal or never placed), oldest first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from manager.loop import reconcile_loop
from manager.store import Event, Store, WriteTx
from shoal.base.taskstate import ASSIGNED, REMOVE, SHUTDOWN, STATE_ORDER, TERMINAL_STATES
from shoal.base.util import parse_rfc3339
from shoal.base.views import Node, Service, task_desired_order, task_state

__all__ = ["reap", "TaskReaper", "DEFAULT_RETENTION"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
DEFAULT_RETENTION = 5


def _retention(cluster: Obj | None) -> int:
    if not cluster:
        return DEFAULT_RETENTION
    orch = (cluster.get("Spec") or {}).get("Orchestration") or {}
    v = orch.get("TaskHistoryRetentionLimit")
    return DEFAULT_RETENTION if v is None else int(v)


def reap(tasks: Iterable[Obj], nodes: Iterable[Obj], services: Iterable[Obj], cluster: Obj | None) -> list[str]:
    """Return the IDs of the tasks to delete (see the module docstring)."""
    limit = _retention(cluster)
    node_list = [Node(n) for n in nodes]
    down = {n.id for n in node_list if n.down}
    known_nodes = {n.id for n in node_list}
    svc = {str(s["ID"]): Service(s) for s in services}
    out: list[str] = []
    slots: dict[tuple[str, int, str], list[Obj]] = {}

    def stopped(t: Obj) -> bool:
        state = task_state(t)
        node = str(t.get("NodeID") or "")
        return (
            state in TERMINAL_STATES
            or STATE_ORDER.get(state, 0) < ASSIGNED
            or not node
            or node in down
            or node not in known_nodes
        )

    for t in tasks:
        if task_desired_order(t) >= REMOVE:
            if stopped(t):
                out.append(str(t["ID"]))
            continue
        sid = str(t.get("ServiceID", ""))
        slot = int(t.get("Slot") or 0)
        s = svc.get(sid)  # a global service's or global job's tasks: their node is their slot
        node_bound = s is not None and ("Global" in s.mode or "GlobalJob" in s.mode)
        slots.setdefault((sid, slot, str(t.get("NodeID") or "") if node_bound else ""), []).append(t)

    if limit >= 0:
        for (sid, _slot, _node), ts in slots.items():
            keep = limit
            s = svc.get(sid)
            if s is not None:
                attempts = int(s.restart_policy.get("MaxAttempts") or 0)
                if attempts > 0:
                    keep = max(keep, attempts + 1)
            if len(ts) <= keep:
                continue
            ts.sort(key=lambda t: parse_rfc3339(t.get("CreatedAt")))
            excess = len(ts) - keep
            for t in ts:
                if excess <= 0:
                    break
                if task_desired_order(t) >= SHUTDOWN and stopped(t):
                    out.append(str(t["ID"]))
                    excess -= 1
    return out


class TaskReaper:
    """The reaper loop over ``store``: after task, node or service changes (debounced by
    ``debounce`` s, default 0.1), deletes what :func:`reap` returns in one update. A pass reads
    only the tasks of the services that changed (whole after a node or cluster change)."""

    def __init__(self, store: Store, debounce: float = 0.1) -> None:
        self.store = store
        self.debounce = debounce
        self._dirty: set[str] | None = None
        """IDs of the services whose tasks or spec changed since the last pass (None: all)."""

    def observe(self, ev: Event) -> None:
        """Note the service a store event concerns; a node's or the cluster's change (a node
        going down, the history limit) may concern every service: the next pass is whole."""
        if self._dirty is None:
            return
        if ev.table in ("nodes", "cluster"):
            self._dirty = None
        elif ev.table == "services":
            self._dirty.add(str(ev.obj["ID"]))
        else:
            for t in (ev.obj, ev.old):
                sid = (t or {}).get("ServiceID")
                if isinstance(sid, str):
                    self._dirty.add(sid)

    def _pass(self, tx: WriteTx) -> int:
        dirty, self._dirty = self._dirty, set()
        clusters = tx.list("cluster")
        # read-only: shallow copies (ReadTx.list_shallow) spare a deep copy of every task per pass
        if dirty is None:
            tasks = tx.list_shallow("tasks")
        else:  # only the tasks of the services that changed (the store's ServiceID index)
            tasks = [t for sid in dirty for t in tx.list_by("tasks", "ServiceID", sid)]
        ids = reap(tasks, tx.list_shallow("nodes"), tx.list_shallow("services"), clusters[0] if clusters else None)
        for tid in ids:
            tx.delete("tasks", tid)
        return len(ids)

    async def tick(self, whole: bool = True) -> int:
        """Run one pass now; returns how many tasks were deleted. ``whole``: over every task
        (False: over the tasks of the services :meth:`observe` saw change, as :meth:`run` does)."""
        if whole:
            self._dirty = None
        try:
            return await self.store.update(self._pass)
        except Exception:
            self._dirty = None  # nothing was deleted: look at everything again next time
            raise

    async def run(self) -> None:
        """Watch and reap until cancelled (see :func:`manager.loop.reconcile_loop`)."""
        await reconcile_loop(self.store, ["tasks", "nodes", "services", "cluster"], lambda: self.tick(whole=False),
                             self.debounce, log, "task reaper", observe=self.observe)
