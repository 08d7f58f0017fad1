"""The global-service reconciler (``Mode.Global``, SK: manager/orchestrator/global): one task
on every eligible node, the node being the task's slot.

- A node that is active, not down and meets the service's constraints gets one task, created
  with its ``NodeID`` already set (the scheduler then only checks that the node can take it, and
  leaves it ``pending`` with the reason when it cannot). Nodes joining or being labelled get
  theirs in the next pass.
- Drained, removed, or no longer matching (a label removed): the node's task gets desired
  ``shutdown``. Paused: the existing task is kept, none is created or restarted. Down: the task
  is left alone (as swarmkit; the node may come back).
- An ended task is replaced on its node per the restart policy (history per node).
- A new task waits until the node's previous task has stopped (host ports, volumes).
- Rolling updates (:mod:`.global_update`): out-of-date tasks are replaced ``Parallelism`` nodes
  at a time, stop-first or start-first, waiting ``Delay`` after a new task runs before taking
  the next node; each new task is watched for ``Monitor`` and ``FailureAction`` (pause |
  continue | rollback) applies past ``MaxFailureRatio``, with replicated services'
  ``UpdateStatus`` states and messages.
"""

from __future__ import annotations

from manager.orchestrator.global_update import update_global, watch_global
from manager.orchestrator.nodes import (
    Verdict,
    new_node_task,
    node_verdict,
    pick_current,
    restart_due,
    stopping,
)
from manager.orchestrator.plan import Obj
from manager.orchestrator.update import Ctx
from manager.specs import task_spec_with_defaults
from shoal.base.taskstate import RUNNING, STATE_ORDER, TERMINAL_STATES
from shoal.base.views import (
    Service,
    endpoint_spec_key,
    task_desired_order,
    task_spec_version,
    task_state,
)

__all__ = ["reconcile_global", "out_of_date"]


def out_of_date(task: Obj, sv: Service, template: Obj) -> bool:
    """Whether ``task`` was made from another task spec (or endpoint spec) than the service's
    current one (as swarmkit's ``IsTaskDirty``); a task of the stored version is up to date."""
    if sv.version is not None and task_spec_version(task) == sv.version:
        return False
    if task.get("Spec") != template:
        return True
    ep = task.get("Endpoint")
    return isinstance(ep, dict) and endpoint_spec_key(ep.get("Spec")) != endpoint_spec_key(
        sv.spec.get("EndpointSpec"))


def reconcile_global(ctx: Ctx, svc: Obj, tasks: list[Obj]) -> None:
    """Reconcile one global service (see the module docstring): ``tasks`` are all its tasks;
    the changes go into ``ctx.plan`` within ``ctx.budget``."""
    sv = Service(svc)
    template = task_spec_with_defaults(sv.task_template)
    ctx.start_service(svc)
    prog, stopped = watch_global(ctx, sv, template, tasks)  # before any task is changed
    by_node: dict[str, list[Obj]] = {}
    for t in tasks:
        by_node.setdefault(str(t.get("NodeID") or ""), []).append(t)
    dirty: list[Obj] = []
    fresh_running: list[Obj] = []
    busy = 0
    for nid in sorted(set(ctx.node_by_id) | set(by_node)):
        ts = by_node.get(nid, [])
        verdict = node_verdict(ctx.node_by_id.get(nid), template)
        if verdict is Verdict.STOP:
            for t in ts:
                if task_desired_order(t) <= RUNNING and ctx.budget.take(1, ctx.task_size):
                    ctx.set_desired(t, "shutdown")
            continue
        if verdict is Verdict.KEEP:
            continue
        current = sorted((t for t in ts if task_desired_order(t) <= RUNNING), key=lambda t: str(t.get("CreatedAt")))
        if len(current) > 1 and STATE_ORDER.get(task_state(current[-1]), 0) < RUNNING:
            busy += 1  # start-first: the new task is starting beside the old one
            continue
        cur = pick_current(ctx, ts, RUNNING)
        if cur is None:
            if stopping(ts):
                busy += 1  # stop-first: the old task is stopping
                continue
            if ctx.budget.take(1, ctx.task_size):
                ctx.plan.create.append(new_node_task(svc, nid, ctx.ts_now, ctx.id_gen))
            busy += 1  # starting
            continue
        state = task_state(cur)
        if state in TERMINAL_STATES:
            if restart_due(ctx, cur, [t for t in ts if t is not cur]):
                if ctx.budget.take(2, ctx.task_size):
                    ctx.set_desired(cur, "shutdown")
                    ctx.plan.create.append(new_node_task(svc, nid, ctx.ts_now, ctx.id_gen))
            elif out_of_date(cur, sv, template):
                dirty.append(cur)  # as replicated slots: the update replaces it (no restart wait)
            continue
        if out_of_date(cur, sv, template):
            dirty.append(cur)
        elif STATE_ORDER.get(state, 0) < RUNNING:
            busy += 1
        else:
            fresh_running.append(cur)
    if not stopped:
        update_global(ctx, sv, template, prog, dirty, busy, fresh_running)

