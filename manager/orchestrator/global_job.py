"""The global-job reconciler (``Mode.GlobalJob``, SK: manager/orchestrator/jobs/global): one
task on every eligible node (as :mod:`.global_mode` chooses nodes: active, not down, meeting
the constraints; nodes joining later get theirs) that runs to ``complete`` (see
:mod:`manager.orchestrator.jobs`)."""

from __future__ import annotations

from manager.orchestrator.jobs import as_job_task, current_iteration
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
from shoal.base.taskstate import COMPLETE, TERMINAL_STATES
from shoal.base.views import Service, task_desired_order, task_state

__all__ = ["reconcile_global_job"]


def reconcile_global_job(ctx: Ctx, svc: Obj, tasks: list[Obj]) -> None:
    """Reconcile one global job: ``tasks`` are all its tasks; the changes go into ``ctx.plan``
    within ``ctx.budget``. Drained, removed or no longer matching nodes: unfinished tasks shut
    down; paused or down nodes: left alone; eligible nodes: a task created if the node has none
    of this iteration, a failed one restarted per the restart policy, a complete one left."""
    template = task_spec_with_defaults(Service(svc).task_template)
    ctx.start_service(svc)
    it, mine = current_iteration(ctx, svc, tasks)
    by_node: dict[str, list[Obj]] = {}
    for t in mine:
        by_node.setdefault(str(t.get("NodeID") or ""), []).append(t)
    for nid in sorted(set(ctx.node_by_id) | set(by_node)):
        ts = by_node.get(nid, [])
        verdict = node_verdict(ctx.node_by_id.get(nid), template)
        if verdict is Verdict.STOP:
            for t in ts:
                if task_desired_order(t) <= COMPLETE and task_state(t) not in TERMINAL_STATES \
                        and ctx.budget.take(1, ctx.task_size):
                    ctx.set_desired(t, "shutdown")
            continue
        if verdict is Verdict.KEEP:
            continue
        cur = pick_current(ctx, ts, COMPLETE)
        if cur is None:
            if not stopping(ts) and ctx.budget.take(1, ctx.task_size):
                ctx.plan.create.append(as_job_task(new_node_task(svc, nid, ctx.ts_now, ctx.id_gen), it))
            continue
        state = task_state(cur)
        if state in TERMINAL_STATES and state != "complete" \
                and restart_due(ctx, cur, [t for t in ts if t is not cur]) and ctx.budget.take(2, ctx.task_size):
            ctx.set_desired(cur, "shutdown")
            ctx.plan.create.append(as_job_task(new_node_task(svc, nid, ctx.ts_now, ctx.id_gen), it))
