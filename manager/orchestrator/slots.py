"""Which task holds a slot when its node blips (pure helpers, shared by every mode's reconciler).

Swarm (SK: manager/orchestrator/replicated/tasks.go, restart/restart.go) shuts down every task
of a node marked down and replaces it; when the node comes back with its containers still
running, the worker stops them (their desired state is ``shutdown``) — or, if it was only cut
off, both copies ran meanwhile. Shoal's rule (docs/architecture.md, "Nodes that blip"):

- A node that misses its heartbeats for less than the node-down time (``misses`` × heartbeat
  period, 3 × 5 s by default) is never marked down: nothing here runs, its tasks are untouched.
- A node marked down by the dispatcher ("heartbeat failure") is **lost**: its tasks are replaced
  elsewhere, but the originals keep desired ``running`` (*parked*): they may still run on a node
  that was only cut off. Parked tasks hold no slot and are not in DNS or VIPs (the dispatcher's
  :class:`~manager.dispatcher.assignments.TaskIndex` leaves out tasks of down nodes).
- A node removed from the swarm, one that left (``Status.Message`` :data:`LEFT_MESSAGE`) or one
  drained is **gone** for its tasks: they get desired ``shutdown`` at once, as in Swarm.
- When a lost node comes back, its node object is written (``session.open``) and so gets a new
  ``UpdatedAt``; :data:`SETTLE` seconds later (time for the worker to report tasks that died
  meanwhile) a slot with several live tasks keeps exactly one: the oldest task that is
  ``running`` with the same spec as the newest (the original, when it is still running),
  else the newest; the others get desired ``shutdown``.

:func:`node_fate` classifies a task's node; :func:`hold_slot` picks a slot's task. Both are pure
(time comes in as ``now``, epoch seconds).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Literal

from shoal.base.taskstate import TERMINAL_STATES
from shoal.base.util import parse_rfc3339
from shoal.base.views import Node, Obj, task_state

__all__ = ["SETTLE", "LEFT_MESSAGE", "Fate", "node_fate", "settled_at", "SlotHold", "hold_slot", "created_at"]

SETTLE = 2.0
"""Seconds after a node's object was last written (its session opened) before the orchestrator
trusts the states its tasks show (the worker sends what happened while it was away within
about 0.2 s of reconnecting: its batch 20 ms, the dispatcher's 100 ms)."""

LEFT_MESSAGE = "node left the swarm"
"""``Status.Message`` of a node that left (the dispatcher's ``session.leave``)."""

Fate = Literal["unplaced", "usable", "lost", "gone"]
"""What a task's node means for it: ``unplaced`` (no ``NodeID``), ``usable`` (present, not down,
not drained), ``lost`` (down after missing heartbeats, not drained: may come back), ``gone``
(removed, left, or drained)."""


def node_fate(task: Obj, node_by_id: Mapping[str, Node]) -> Fate:
    """The :data:`Fate` of ``task``'s node, from ``node_by_id`` (node ID → view, every node)."""
    nid = str(task.get("NodeID") or "")
    if not nid:
        return "unplaced"
    node = node_by_id.get(nid)
    if node is None or node.availability == "drain":
        return "gone"
    if node.down:
        return "gone" if node.status.get("Message") == LEFT_MESSAGE else "lost"
    return "usable"


def settled_at(task: Obj, node_by_id: Mapping[str, Node]) -> float:
    """Epoch seconds from which the states reported for ``task`` by its node can be trusted:
    the node's ``UpdatedAt`` + :data:`SETTLE` (0.0 for an unplaced task or an unknown node)."""
    nid = str(task.get("NodeID") or "")
    node = node_by_id.get(nid) if nid else None
    if node is None:
        return 0.0
    return parse_rfc3339(node.raw.get("UpdatedAt")) + SETTLE


def created_at(task: Obj) -> float:
    """``CreatedAt`` of ``task`` in epoch seconds (0.0 when missing: not yet stored)."""
    return parse_rfc3339(task.get("CreatedAt"))


@dataclass
class SlotHold:
    """What :func:`hold_slot` decided for one slot: ``keep`` holds the slot (None: no current
    task), ``shut`` get desired ``shutdown``, ``parked`` are left running on lost nodes, and
    ``wake`` is when to look again (epoch s; None = no timer)."""

    keep: Obj | None = None
    shut: list[Obj] = field(default_factory=list)
    parked: list[Obj] = field(default_factory=list)
    wake: float | None = None


def hold_slot(current: list[Obj], node_by_id: Mapping[str, Node], now: float,
              exempt: Container[str] = ()) -> SlotHold:
    """Pick the task that holds a slot among ``current``, the slot's tasks whose desired state is
    at most ``running`` (see the module docstring for the rule).

    ``exempt``: IDs of tasks never shut here (a start-first update's old tasks, shut down by
    the updater once their replacement runs); they may still hold the slot. Tasks on lost nodes that have not ended are
    parked, unless every other task of the slot is parked or gone too: then the newest of them
    holds the slot (the caller replaces it, parking or shutting it down by its :func:`node_fate`).
    Tasks on gone nodes are shut down. Several live candidates (a lost node came back): nothing
    is decided until every candidate's node has settled (``wake``), then the oldest running task
    with the newest one's ``Spec`` is kept (else the newest)."""
    if len(current) == 1:  # the common case (a slot with history): a pass looks at every slot
        return SlotHold(keep=current[0])
    hold = SlotHold()
    away: list[Obj] = []
    cands: list[Obj] = []
    for t in sorted(current, key=created_at):
        fate = node_fate(t, node_by_id)
        ended = task_state(t) in TERMINAL_STATES
        if not ended and fate == "lost":
            hold.parked.append(t)
            away.append(t)
        elif not ended and fate == "gone":
            hold.shut.append(t)
            away.append(t)
        else:
            cands.append(t)
    if not cands:
        if away:
            hold.keep = away[-1]
            hold.shut = [t for t in hold.shut if t is not hold.keep]
            hold.parked = [t for t in hold.parked if t is not hold.keep]
        return _spare(hold, exempt)
    live = [t for t in cands if task_state(t) not in TERMINAL_STATES]
    if len(live) <= 1:
        hold.keep = (live or cands)[-1]
    else:
        newest = live[-1]
        settle = max(settled_at(t, node_by_id) for t in live)
        if now < settle:
            # a node just came back: keep everything live until its reports are in
            hold.keep = newest
            hold.wake = settle
            hold.shut.extend(t for t in cands if task_state(t) in TERMINAL_STATES)
            return _spare(hold, exempt)
        spec = newest.get("Spec")
        running = [t for t in live if task_state(t) == "running" and t.get("Spec") == spec]
        hold.keep = running[0] if running else newest
    hold.shut.extend(t for t in cands if t is not hold.keep)
    return _spare(hold, exempt)


def _spare(hold: SlotHold, exempt: Container[str]) -> SlotHold:
    """``hold`` without the ``exempt`` task IDs in ``shut``."""
    hold.shut = [t for t in hold.shut if str(t.get("ID")) not in exempt]
    return hold
