"""What the dispatcher pushes to a node: its assignment set, the fingerprint that tells whether
the node must hear of a change, and the per-session outbox that writes pushes one at a time."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import msgpack

from shoal.base.taskstate import ASSIGNED, COMPLETE, REMOVE, state_order
from shoal.base.views import Node, Task
from shoal.rpc import wire

__all__ = ["assignment_set", "manager_addr", "fingerprint", "Session", "send_outbox"]

log = logging.getLogger("manager.dispatcher")

_VOLATILE = ("Status", "Version", "UpdatedAt")


def assignment_set(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the tasks a node must know about, sorted by ID, from all tasks with its ``NodeID``.

    A task is included once the scheduler has assigned it (``Status.State`` ≥ ``assigned``) and
    until it is finished with nothing left to do: a task whose ``DesiredState`` is ``remove``
    and whose state is terminal drops out, which tells the worker to remove its container.
    Terminal tasks kept as history (desired ``shutdown``) stay in the set.
    """
    out = []
    for raw in tasks:
        t = Task(raw)
        st = state_order(t.status.get("State"))
        if st < ASSIGNED:
            continue
        if state_order(raw.get("DesiredState")) >= REMOVE and st >= COMPLETE:
            continue
        out.append(raw)
    out.sort(key=lambda t: str(t.get("ID")))
    return out


def manager_addr(node: dict[str, Any] | None) -> str | None:
    """``ManagerStatus.Addr`` of ``node`` (None for a worker or no node)."""
    return None if node is None else Node(node).manager_addr


def fingerprint(node: dict[str, Any], tasks: list[dict[str, Any]]) -> bytes:
    """Bytes that change iff something the worker acts on changed (not status/version/timestamps)."""
    n = {k: v for k, v in node.items() if k not in _VOLATILE + ("Description", "ManagerStatus")}
    # a demoted manager acts when the leader has taken it out of Raft (ManagerStatus removed)
    n["_raft_member"] = bool(node.get("ManagerStatus"))
    # tasks entering or leaving the set change the list, so they push even if nothing else changed
    ts = [{k: v for k, v in t.items() if k not in _VOLATILE} for t in tasks]
    data: bytes = msgpack.packb([n, ts], use_bin_type=True)
    return data


@dataclass
class Session:
    """One node's session: its ID, its connection (None once lost), the fingerprint of the last
    assignment set sent, and what waits to be written (:func:`send_outbox`)."""

    node_id: str
    session_id: str
    peer: wire.Peer | None
    last_sent: bytes | None = None
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Push type → the newest body not yet written (one per type: a newer one replaces it)."""
    sender: asyncio.Task[None] | None = None


async def send_outbox(s: Session) -> None:
    """Write ``s.outbox`` to the session's connection, oldest type first, until it is empty; on
    a lost connection or a write error drop what is left (and ``last_sent``, so the next
    connection gets everything again)."""
    while s.outbox:
        peer = s.peer
        if peer is None:
            s.outbox.clear()
            s.last_sent = None
            return
        type = next(iter(s.outbox))
        body = s.outbox.pop(type)
        try:
            await peer.send(type, body)
        except wire.WireError as e:
            s.outbox.clear()
            s.last_sent = None  # resend everything to the next connection
            log.info("could not push %s to node %s: %s", type, s.node_id, e)
            return
