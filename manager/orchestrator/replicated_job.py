"""The replicated-job reconciler (``Mode.ReplicatedJob {MaxConcurrent, TotalCompletions}``,
SK: manager/orchestrator/jobs/replicated): slots 0..TotalCompletions-1 (numbered from 0 as
swarmkit's, which the docker CLI's job progress counts on) each run to ``complete``,
at most ``MaxConcurrent`` tasks at a time (see :mod:`manager.orchestrator.jobs`)."""

from __future__ import annotations

from manager.orchestrator.jobs import as_job_task, current_iteration, job_counts
from manager.orchestrator.nodes import pick_current, restart_due
from manager.orchestrator.plan import Obj, new_task
from manager.orchestrator.update import Ctx
from shoal.base.taskstate import COMPLETE, TERMINAL_STATES
from shoal.base.views import task_state

__all__ = ["reconcile_replicated_job"]


def reconcile_replicated_job(ctx: Ctx, svc: Obj, tasks: list[Obj]) -> None:
    """Reconcile one replicated job: ``tasks`` are all its tasks; the changes go into
    ``ctx.plan`` within ``ctx.budget``. Order of work: tasks on drained or removed nodes are
    replaced, then failed slots restarted (lowest first), then slots never run are started
    (lowest first), while fewer than ``MaxConcurrent`` tasks are unfinished."""
    ctx.start_service(svc)
    it, mine = current_iteration(ctx, svc, tasks)
    max_concurrent, total = job_counts(svc)
    slots: dict[int, list[Obj]] = {}
    for t in mine:
        slots.setdefault(int(t.get("Slot") or 0), []).append(t)
    active = 0
    lost: list[tuple[int, Obj]] = []
    restart: list[tuple[int, Obj]] = []
    empty: list[int] = []
    for slot in range(total):
        ts = slots.get(slot, [])
        cur = pick_current(ctx, ts, COMPLETE)
        if cur is None:
            empty.append(slot)
            continue
        state = task_state(cur)
        if state == "complete":
            continue
        if state in TERMINAL_STATES:
            if restart_due(ctx, cur, [t for t in ts if t is not cur]):
                restart.append((slot, cur))
            continue
        node = str(cur.get("NodeID") or "")
        if node and (node not in ctx.node_by_id or ctx.node_by_id[node].availability == "drain"):
            lost.append((slot, cur))
        active += 1
    for slot, old in lost:  # replacing does not change how many run
        if not ctx.budget.take(2, ctx.task_size):
            return
        ctx.set_desired(old, "shutdown")
        ctx.plan.create.append(as_job_task(new_task(svc, slot, ctx.ts_now, ctx.id_gen), it))
    free = max_concurrent - active
    for slot, old in restart:
        if free <= 0 or not ctx.budget.take(2, ctx.task_size):
            return
        ctx.set_desired(old, "shutdown")
        ctx.plan.create.append(as_job_task(new_task(svc, slot, ctx.ts_now, ctx.id_gen), it))
        free -= 1
    for slot in empty:
        if free <= 0 or not ctx.budget.take(1, ctx.task_size):
            return
        ctx.plan.create.append(as_job_task(new_task(svc, slot, ctx.ts_now, ctx.id_gen), it))
        free -= 1
