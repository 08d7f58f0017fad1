"""Rolling updates of global services (node-bound: the node is the slot), with the same
``UpdateConfig`` meanings and ``UpdateStatus`` states and messages as replicated services
(:mod:`manager.orchestrator.update`, SK: manager/orchestrator/update/updater.go, which serves
both modes): out-of-date tasks replaced ``Parallelism`` nodes at a time, stop-first or
start-first, ``Delay`` after each new task runs, each new task watched for ``Monitor`` and the
``FailureAction`` (pause | continue | rollback) taken once the failures exceed
``MaxFailureRatio``; completion one ``Monitor`` window after the last node is done.

What is carried between passes is an :class:`~manager.orchestrator.plan.UpdateProgress` of
which only ``target``, ``rollback``, ``total``, ``monitored``, ``failures``, ``nodes`` and
``idle_since`` are used (the rest is read from the tasks, as before)."""

from __future__ import annotations

import copy

from manager.orchestrator.nodes import new_node_task
from manager.orchestrator.plan import Obj, UpdateProgress
from manager.orchestrator.update import Ctx, complete, set_update_status, update_config, watch
from shoal.base.util import parse_rfc3339
from shoal.base.views import Service, Task

__all__ = ["watch_global", "update_global"]


def _state(sv: Service) -> tuple[str | None, bool]:
    """``(UpdateStatus.State or None, whether a rollback is running)``."""
    status = sv.update_status
    ustate = status.get("State") if isinstance(status, dict) else None
    return (str(ustate) if ustate is not None else None), ustate == "rollback_started"


def watch_global(ctx: Ctx, sv: Service, template: Obj, tasks: list[Obj]) -> tuple[UpdateProgress | None, bool]:
    """Before the pass changes anything: the running update's progress (None = none, or one
    for another ``template``/direction) with its new tasks watched
    (:func:`manager.orchestrator.update.watch`; ``tasks``: all the service's tasks). Returns
    ``(progress, stopped)``; ``stopped``: a failure just paused or rolled back the update (the
    pass then hands out no more nodes)."""
    ustate, rollback = _state(sv)
    if ustate in ("paused", "rollback_paused"):
        return None, False
    prog = ctx.old_progress.get(str(sv.raw["ID"]))
    if prog is None or prog.target != template or prog.rollback != rollback:
        return None, False
    by_id = {str(t["ID"]): t for t in tasks}
    if watch(ctx, sv, prog, by_id, update_config(sv.raw, rollback), rollback):
        return None, True
    return prog, False


def update_global(ctx: Ctx, sv: Service, template: Obj, prog: UpdateProgress | None,
                  dirty: list[Obj], busy: int, fresh_running: list[Obj]) -> None:
    """Replace the out-of-date tasks ``dirty`` ``Parallelism`` nodes at a time (``busy``: nodes
    whose task is being replaced or starting; a node whose new task, made during this update,
    has run for less than ``Delay`` counts as busy too); set ``UpdateStatus``; keep ``prog``
    (from :func:`watch_global`) in ``ctx.plan.progress`` while the update runs."""
    svc = sv.raw
    ustate, rollback = _state(sv)
    if ustate in ("paused", "rollback_paused"):
        return  # stays paused until the next `service update` resets UpdateStatus
    if prog is None:
        if not dirty:
            if ustate in ("updating", "rollback_started") and busy == 0:
                complete(ctx, svc, rollback)  # e.g. resumed after a manager restart
            return
        prog = UpdateProgress(target=copy.deepcopy(template), rollback=rollback, total=len(dirty))
    if dirty and (ustate is None or ustate in ("completed", "rollback_completed")):
        set_update_status(svc, ctx.plan, {"State": "updating", "StartedAt": ctx.ts_now,
                                           "Message": "update in progress"})
    cfg = update_config(svc, rollback)
    monitor = int(cfg.get("Monitor") or 0) / 1e9
    # stop-first: the new task made in this pass on a node the update stopped is watched
    for t in ctx.plan.create:
        nid = str(t.get("NodeID") or "")
        if t.get("ServiceID") == svc["ID"] and nid in prog.nodes:
            prog.nodes.discard(nid)
            prog.monitored[str(t["ID"])] = None
    delay = int(cfg.get("Delay") or 0) / 1e9
    status = sv.update_status
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
            break
        nid = str(old["NodeID"])
        if str(cfg.get("Order") or "stop-first") == "start-first":
            nt = new_node_task(svc, nid, ctx.ts_now, ctx.id_gen)
            ctx.plan.create.append(nt)
            prog.monitored[str(nt["ID"])] = None
        else:
            ctx.set_desired(old, "shutdown")  # its replacement comes once it has stopped
            prog.nodes.add(nid)
    ctx.plan.progress[str(svc["ID"])] = prog
    if dirty or busy or prog.nodes:
        prog.idle_since = None
        return
    # done once no node is out of date or busy, after one more Monitor window
    if prog.idle_since is None:
        prog.idle_since = ctx.now
    if ctx.now >= prog.idle_since + monitor:
        del ctx.plan.progress[str(svc["ID"])]
        complete(ctx, svc, rollback)
        return
    ctx.plan._wake(prog.idle_since + monitor)
