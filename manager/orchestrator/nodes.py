"""Pieces the mode reconcilers share beyond :mod:`.restart`: which nodes a node-bound service
(``Global``, ``GlobalJob``) runs on (SK: manager/orchestrator/global/global.go: a node's verdict
from its availability, status and the service's constraints), its pre-assigned tasks, and the
current task of a slot or node with its restart."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from manager.orchestrator.plan import Obj, new_task
from manager.orchestrator.restart import should_restart
from manager.orchestrator.update import Ctx
from manager.scheduler.filters import node_matches, parse_constraints
from manager.scheduler.nodeinfo import NodeInfo
from shoal.base.taskstate import COMPLETE, TERMINAL_STATES
from shoal.base.util import parse_rfc3339
from shoal.base.views import Node, Service, Task, task_desired_order, task_state

__all__ = ["Verdict", "node_verdict", "new_node_task", "pick_current", "restart_due", "stopping"]


class Verdict(Enum):
    """What a node-bound service does on one node."""

    RUN = "run"
    """Active, not down, constraints met: one task, created if missing, restarted per policy."""
    KEEP = "keep"
    """Paused, or down (as swarmkit): the existing task is left alone; no new task."""
    STOP = "stop"
    """Drained, gone, or no longer meeting the constraints: its tasks are shut down."""


def node_verdict(node: Node | None, template: Obj) -> Verdict:
    """The :class:`Verdict` for a node (None = removed from the cluster) and a task spec
    ``template`` (its ``Placement.Constraints`` are read). A down node keeps its task (swarmkit
    waits for it to come back rather than shutting down what it cannot reach)."""
    if node is None or node.availability == "drain":
        return Verdict.STOP
    constraints = parse_constraints({"Spec": template})
    if constraints and not node_matches(constraints, NodeInfo.from_node(node.raw)):
        return Verdict.STOP
    if node.down or node.availability == "pause":
        return Verdict.KEEP
    return Verdict.RUN


def new_node_task(service: Obj, node_id: str, now: str, id_gen: Callable[[], str]) -> Obj:
    """A new task of the node-bound ``service`` on ``node_id`` (pre-assigned: the scheduler only
    checks that the node can take it): ``Slot`` 0 and Docker's name ``<service>.<node>.<task>``
    (SK: global tasks have no slot; their node is their slot)."""
    t = new_task(service, 0, now, id_gen)
    t["NodeID"] = node_id
    t["Name"] = f"{Service(service).name}.{node_id}.{t['ID']}"
    return t


def pick_current(ctx: Ctx, tasks: list[Obj], final: int) -> Obj | None:
    """The current task among ``tasks`` (one slot's or one node's): the newest live one whose
    desired state is at most ``final`` (``RUNNING`` for services, ``COMPLETE`` for jobs), else the
    newest ended one; any other current task gets desired ``shutdown`` (within the budget).
    None when no task is current."""
    current = [t for t in tasks if task_desired_order(t) <= final]
    if len(current) <= 1:
        return current[0] if current else None
    current.sort(key=lambda t: (parse_rfc3339(t.get("CreatedAt")), str(t["ID"])))
    live = [t for t in current if task_state(t) not in TERMINAL_STATES]
    keep = (live or current)[-1]
    for extra in current:
        if extra is not keep and ctx.budget.take(1, ctx.task_size):
            ctx.set_desired(extra, "shutdown")
    return keep


def restart_due(ctx: Ctx, cur: Obj, history: list[Obj]) -> bool:
    """Whether the ended task ``cur`` is replaced now, per its restart policy
    (:func:`manager.orchestrator.restart.should_restart`; ``history``: the earlier tasks of its
    slot or node). A restart that waits for its ``Delay`` wakes the loop then."""
    ok, delay = should_restart(cur, history, ctx.now)
    if not ok:
        return False
    ended = parse_rfc3339(Task(cur).status_timestamp)
    if ctx.now < ended + delay:
        ctx.plan._wake(ended + delay)
        return False
    return True


def stopping(tasks: list[Obj]) -> bool:
    """Whether one of ``tasks`` was asked to stop and has not stopped yet (a new task on the
    same node waits for it: host ports, volumes)."""
    return any(task_desired_order(t) > COMPLETE and task_state(t) not in TERMINAL_STATES
               and task_state(t) not in ("new", "pending") for t in tasks)
