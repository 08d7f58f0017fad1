"""The orchestrator's pass, the pure core: services, tasks and nodes in, a
:class:`~manager.orchestrator.plan.Plan` out. Each service goes to the reconciler of its mode
(:data:`manager.orchestrator.modes.RECONCILERS`); what all modes share is here: tasks of removed
services, and the allocator step ``new`` → ``pending`` (see :mod:`manager.orchestrator`)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

from manager.orchestrator.modes import RECONCILERS, mode_of
from manager.orchestrator.plan import Obj, Plan, UpdateProgress, WriteBudget, packed_size
from manager.orchestrator.update import Ctx
from shoal.base.taskstate import COMPLETE, REMOVE, STATE_ORDER
from shoal.base.util import new_id, now_rfc3339
from shoal.base.views import Node, task_desired_order, task_needs_networks, task_state

__all__ = ["reconcile"]


def reconcile(services: Iterable[Obj], tasks: Iterable[Obj], nodes: Iterable[Obj], now: float,
              id_gen: Callable[[], str] = new_id,
              progress: dict[str, UpdateProgress] | None = None,
              budget: WriteBudget | None = None) -> Plan:
    """Compute the store changes that move every service toward its spec.

    ``now`` is epoch seconds (timestamps written are ``now`` in RFC 3339). Deterministic given
    its inputs: ``id_gen`` makes task IDs, ``progress`` is the rolling-update state returned
    by the previous pass as ``Plan.progress`` (not modified; None = none). ``budget`` bounds
    the task writes of the pass (None = unbounded); what does not fit is left for the next pass
    (``Plan.more``; the services it cut short in ``Plan.unfinished``), each unit (a slot's
    replacement, a slot scaled away, a new slot) whole.
    Sets keys of the task and service dicts it is given but never changes a value inside them
    (pass copies, at least of the top level, as ``tx.list_shallow`` returns). A service whose
    mode has no reconciler is left alone (its spec was refused at the API).
    """
    budget = budget if budget is not None else WriteBudget()
    plan = Plan()
    ts_now = now_rfc3339(now)
    svc_by_id = {str(s["ID"]): s for s in services}
    node_by_id = {str(n["ID"]): Node(n) for n in nodes}
    by_service: dict[str, list[Obj]] = {}
    updated: dict[str, Obj] = {}

    def set_desired(t: Obj, desired: str) -> None:
        if STATE_ORDER[desired] > task_desired_order(t):
            t = updated.get(str(t["ID"]), t)
            t["DesiredState"] = desired
            updated[str(t["ID"])] = t

    ctx = Ctx(plan, now, ts_now, id_gen, node_by_id, set_desired, budget)
    ctx.old_progress = copy.deepcopy(progress or {})

    for t in tasks:
        sid = str(t.get("ServiceID", ""))
        if sid not in svc_by_id:
            # service removed: every task of it goes away
            if task_desired_order(t) < REMOVE:
                if budget.take(1, packed_size(t)):
                    set_desired(t, "remove")
                else:
                    plan.unfinished.add(sid)
            continue
        by_service.setdefault(sid, []).append(t)

    for sid, svc in svc_by_id.items():
        reconciler = RECONCILERS.get(mode_of(svc))
        if reconciler is not None:
            reconciler(ctx, svc, by_service.get(sid, []))
        if budget.more:  # this service's work (and every later one's) was cut short
            plan.unfinished.add(sid)

    # new -> pending for tasks without overlay networks (nothing to allocate for the local bridge
    # before placement); tasks with networks stay new for the network allocator
    # (manager.allocator.loop), which gives them their addresses and moves them to pending
    pending_status = {"Timestamp": ts_now, "State": "pending", "Message": "pending task scheduling"}
    for t in plan.create:
        if not task_needs_networks(t):
            t["Status"] = dict(pending_status)
    for t in itertools.chain.from_iterable(by_service.values()):
        if task_state(t) == "new" and task_desired_order(t) <= COMPLETE and (tid := str(t["ID"])) not in updated \
                and not task_needs_networks(t):
            if budget.take(1, packed_size(t)):
                t["Status"] = dict(pending_status)
                updated[tid] = t
            else:
                plan.unfinished.add(str(t.get("ServiceID", "")))
    plan.update = list(updated.values())
    plan.more = budget.more
    return plan
