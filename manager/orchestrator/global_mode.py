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
- Rolling updates: out-of-date tasks are replaced ``Parallelism`` nodes at a time, stop-first
  or start-first, waiting ``Delay`` after a new task runs before taking the next node, with
  ``UpdateStatus`` updating → completed. ``Monitor`` and the failure action are not applied to
  global services yet (a task that keeps failing follows its restart policy instead).
"""

from __future__ import annotations

from manager.orchestrator.nodes import (
    Verdict,
    new_node_task,
    node_verdict,
    pick_current,
    restart_due,
    stopping,
)
from manager.orchestrator.plan import Obj
from manager.orchestrator.update import Ctx, complete, set_update_status, update_config
from manager.specs import task_spec_with_defaults
from shoal.base.taskstate import RUNNING, STATE_ORDER, TERMINAL_STATES
from shoal.base.util import parse_rfc3339
from shoal.base.views import (
    Service,
    Task,
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
            if restart_due(ctx, cur, [t for t in ts if t is not cur]) and ctx.budget.take(2, ctx.task_size):
                ctx.set_desired(cur, "shutdown")
                ctx.plan.create.append(new_node_task(svc, nid, ctx.ts_now, ctx.id_gen))
            continue
        if out_of_date(cur, sv, template):
            dirty.append(cur)
        elif STATE_ORDER.get(state, 0) < RUNNING:
            busy += 1
        else:
            fresh_running.append(cur)
    _update(ctx, sv, dirty, busy, fresh_running)


def _update(ctx: Ctx, sv: Service, dirty: list[Obj], busy: int, fresh_running: list[Obj]) -> None:
    """Replace out-of-date tasks ``Parallelism`` nodes at a time (``busy``: nodes whose task is
    being replaced or starting; a node whose new task, made during this update, has run for less
    than ``Delay`` counts as busy too); set ``UpdateStatus``."""
    svc = sv.raw
    status = sv.update_status
    ustate = status.get("State") if isinstance(status, dict) else None
    if ustate in ("paused", "rollback_paused"):
        return
    rollback = ustate == "rollback_started"
    if not dirty:
        if ustate in ("updating", "rollback_started") and busy == 0:
            complete(ctx, svc, rollback)
        return
    if status is None or ustate in ("completed", "rollback_completed"):
        set_update_status(svc, ctx.plan, {"State": "updating", "StartedAt": ctx.ts_now,
                                           "Message": "update in progress"})
    cfg = update_config(svc, rollback)
    delay = int(cfg.get("Delay") or 0) / 1e9
    started = parse_rfc3339(status.get("StartedAt") if isinstance(status, dict) else None) or ctx.now
    if delay > 0:
        for t in fresh_running:
            until = parse_rfc3339(Task(t).status_timestamp) + delay
            if parse_rfc3339(t.get("CreatedAt")) >= started and until > ctx.now:
                busy += 1
                ctx.plan._wake(until)
    parallelism = int(cfg.get("Parallelism") or 0)
    free = parallelism - busy if parallelism > 0 else len(dirty)
    for old in dirty[:max(free, 0)]:
        if not ctx.budget.take(2, ctx.task_size):
            return
        if str(cfg.get("Order") or "stop-first") == "start-first":
            ctx.plan.create.append(new_node_task(svc, str(old["NodeID"]), ctx.ts_now, ctx.id_gen))
        else:
            ctx.set_desired(old, "shutdown")  # its replacement comes once it has stopped
