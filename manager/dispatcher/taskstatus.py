"""Task status updates from workers (``session.status``): their validation, and the store
change that applies a batch of them (forward moves only: SWARM-FACTS 1.1, the state is a
Lamport clock)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from manager.store import WriteTx
from shoal.base.taskstate import COMPLETE, state_order
from shoal.base.util import now_rfc3339
from shoal.base.views import Task

__all__ = ["StatusBatch", "apply_status_updates", "host_port_status", "parse_status_updates"]


@dataclass
class StatusBatch:
    """Status updates waiting for one store transaction, and the callers waiting for it."""

    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (node_id, update)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


def parse_status_updates(node_id: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The updates of a ``session.status`` body from ``node_id`` as ``[(node_id, {"TaskID",
    "Status"})]``. Raises ``ValueError`` for a malformed update or an unknown task state."""
    updates = body.get("updates")
    if not isinstance(updates, list):
        raise ValueError("session.status: updates must be a list of {TaskID, Status}")
    clean: list[tuple[str, dict[str, Any]]] = []
    for u in updates:
        if not isinstance(u, dict) or not isinstance(u.get("TaskID"), str) or not isinstance(u.get("Status"), dict):
            raise ValueError("session.status: each update must be {TaskID: str, Status: map}")
        st = u["Status"].get("State")
        if state_order(st) < 0:
            raise ValueError(f"session.status: unknown task state {st!r} for task {u['TaskID']}")
        clean.append((node_id, u))
    return clean


def host_port_status(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The host-mode ports of ``task``'s ``Endpoint`` (``[{"Protocol", "TargetPort",
    "PublishedPort", "PublishMode": "host"}]``): what its node opens for it once it runs, shown as
    ``Status.PortStatus.Ports`` (the PORTS of ``docker service ps``, as swarmkit's worker reports
    them)."""
    ep = task.get("Endpoint")
    ports = ep.get("Ports") if isinstance(ep, dict) else None
    return [{k: p[k] for k in ("Name", "Protocol", "TargetPort", "PublishedPort", "PublishMode") if k in p}
            for p in ports or [] if isinstance(p, dict) and p.get("PublishMode") == "host" and p.get("PublishedPort")]


def apply_status_updates(tx: WriteTx, items: list[tuple[str, dict[str, Any]]]) -> int:
    """Apply ``items`` (``(node_id, {"TaskID", "Status"})``) in ``tx``: only to tasks assigned
    to the reporting node, only forward moves of ``Status.State``, never past a terminal state.
    Returns how many tasks changed."""
    changed = 0
    for node_id, u in items:
        task = tx.get_shallow("tasks", u["TaskID"])  # only top-level keys are set below
        if task is None or task.get("NodeID") != node_id:
            continue  # deleted meanwhile, or not this node's task: ignore
        cur = Task(task).status
        new = dict(u["Status"])
        if state_order(new.get("State")) <= state_order(cur.get("State")):
            continue  # forward moves only
        if state_order(cur.get("State")) >= COMPLETE:
            continue  # an ended task keeps its final state (a restarted agent may see it otherwise)
        new.setdefault("Timestamp", now_rfc3339())
        new.setdefault("Message", "")
        if "ContainerStatus" not in new and "ContainerStatus" in cur:
            new["ContainerStatus"] = cur["ContainerStatus"]
        if new.get("State") == "running":
            host = host_port_status(task)
            if host:
                new["PortStatus"] = {"Ports": host}
        elif "PortStatus" in cur:
            new["PortStatus"] = cur["PortStatus"]
        task["Status"] = new
        task.pop("Version", None)
        tx.update("tasks", task, shallow=True)
        changed += 1
    return changed
