"""The replicated-service reconciler (``Mode.Replicated``, SK: manager/orchestrator/replicated):
one service and its tasks in, changes into the pass's plan (see :mod:`manager.orchestrator`)."""

from __future__ import annotations

from collections.abc import Iterable

from manager.orchestrator.plan import Obj, new_task
from manager.orchestrator.rebalance import moving_ids, rebalance
from manager.orchestrator.restart import should_restart
from manager.orchestrator.slots import hold_slot, node_fate
from manager.orchestrator.update import Ctx, rolling_update
from manager.specs import task_spec_with_defaults
from shoal.base.taskstate import RUNNING, TERMINAL_STATES
from shoal.base.util import parse_rfc3339
from shoal.base.views import (
    Node,
    Service,
    Task,
    endpoint_spec_key,
    task_desired_order,
    task_needs_networks,
    task_state,
)

__all__ = ["reconcile_replicated", "service_status", "has_networks"]


def has_networks(task: Obj) -> bool:
    """Whether ``task`` is attached to overlay networks and waits in ``new`` for the network
    allocator: ``Spec.Networks`` non-empty, or ingress ports in its ``Endpoint``
    (:func:`shoal.base.views.task_needs_networks`)."""
    return task_needs_networks(task)


def reconcile_replicated(ctx: Ctx, svc: Obj, tasks: list[Obj]) -> None:
    """Reconcile one replicated service (``Mode.Replicated``): ``tasks`` are all its tasks;
    the changes go into ``ctx.plan`` within ``ctx.budget`` (see :mod:`manager.orchestrator`
    for the model: slots 1..Replicas, restarts, lost nodes, rolling updates, scaling)."""
    sv = Service(svc)
    sid = str(svc["ID"])
    plan, budget, now, ts_now, id_gen = ctx.plan, ctx.budget, ctx.now, ctx.ts_now, ctx.id_gen
    set_desired, usable_nodes = ctx.set_desired, ctx.usable_nodes
    want = sv.replicas
    template = task_spec_with_defaults(sv.task_template)
    ctx.start_service(svc)
    prog = ctx.old_progress.get(sid)
    if prog is not None and (prog.target != template
                             or prog.endpoint != endpoint_spec_key(sv.spec.get("EndpointSpec"))):
        prog = None
    slots: dict[int, list[Obj]] = {}
    for t in tasks:
        slots.setdefault(int(t.get("Slot") or 0), []).append(t)
    keep_old = {i for ids in (prog.start_first_old.values() if prog else []) for i in ids}
    moving = moving_ids(svc, tasks)  # rebalancing moves in flight (rebalance.py)
    keep_old |= moving
    crowded = False  # a slot with several current tasks (besides moves): not steady for rebalance
    occupied: dict[int, Obj] = {}
    for slot, ts in slots.items():
        if len(ts) == 1:  # the common case, kept cheap: a pass looks at every slot
            if task_desired_order(ts[0]) <= RUNNING:
                occupied[slot] = ts[0]
            continue
        current = [t for t in ts if task_desired_order(t) <= RUNNING]
        if not current:
            continue
        crowded = crowded or sum(1 for t in current if str(t.get("ID")) not in moving) > 1
        # at most one current task per slot (start-first: two for a while; lost nodes' parked)
        hold = hold_slot(current, ctx.node_by_id, now, keep_old)
        if hold.wake is not None:
            plan._wake(hold.wake)
        for extra in hold.shut:
            if budget.take(1, ctx.task_size):
                set_desired(extra, "shutdown")
        if hold.keep is not None:
            occupied[slot] = hold.keep

    # scale down: remove the highest slots (stop-first slots being updated count as used)
    reserved = set(prog.stopping) - set(occupied) if prog else set()
    used = sorted(set(occupied) | reserved)
    if len(used) > want:
        for slot in used[want:]:
            if not budget.take(len(slots.get(slot, [])), ctx.task_size):
                break
            for t in slots.get(slot, []):
                set_desired(t, "remove")
            occupied.pop(slot, None)
            reserved.discard(slot)
            if prog:
                prog.forget_slot(slot, (str(t.get("ID")) for t in slots.get(slot, [])))
        if len(set(occupied) | reserved) > want:
            # the rest of the scale-down is for the next pass; nothing else of this service now
            if prog is not None:
                plan.progress[sid] = prog
            return

    replaced: set[int] = set()
    for slot in sorted(occupied):  # (sorting the keys alone: much cheaper than the items)
        cur = occupied[slot]
        state = task_state(cur)
        node_id = cur.get("NodeID")
        replace = False
        if node_id and state not in TERMINAL_STATES and str(node_id) not in usable_nodes:
            replace = True  # its node is down, gone or drained
        if not replace and state in TERMINAL_STATES:
            history = [t for t in slots[slot] if t is not cur]
            ok, delay = should_restart(cur, history, now)
            if not ok:
                continue
            ended = parse_rfc3339(Task(cur).status_timestamp)
            if now < ended + delay:
                plan._wake(ended + delay)
                continue
            replace = True
        if replace:
            # a lost node's task is replaced but stays parked (manager.orchestrator.slots)
            parked = state not in TERMINAL_STATES and node_fate(cur, ctx.node_by_id) == "lost"
            if not budget.take(1 if parked else 2, ctx.task_size):
                continue  # replaced in the next pass
            if not parked:
                set_desired(cur, "shutdown")
            t = new_task(svc, slot, ts_now, id_gen)
            plan.create.append(t)
            occupied[slot] = t
            replaced.add(slot)

    # rolling update of out-of-date slots (task template or ForceUpdate changed)
    new_prog = rolling_update(ctx, sv, template, prog, slots, occupied, replaced)
    if new_prog is not None:
        plan.progress[sid] = new_prog
        reserved = set(new_prog.stopping) - set(occupied)
    else:
        reserved = set()

    # scale up: lowest free slot numbers
    missing = want - len(set(occupied) | reserved)
    slot = 1
    while missing > 0:
        if slot not in occupied and slot not in reserved:
            if not budget.take(1, ctx.task_size):
                break  # the next pass creates the rest
            plan.create.append(new_task(svc, slot, ts_now, id_gen))
            occupied[slot] = plan.create[-1]
            missing -= 1
        slot += 1

    # opt-in rebalancing (com.shoal.rebalance=true): move tasks to the emptier nodes
    rebalance(ctx, svc, tasks, occupied, updating=new_prog is not None or bool(replaced), crowded=crowded)


def service_status(service: Obj, tasks: Iterable[Obj], nodes: Iterable[Obj]) -> Obj:
    """``ServiceStatus`` for the API: ``RunningTasks`` (state running on a node that is not
    down), ``DesiredTasks`` (Replicas), ``CompletedTasks`` (0 for replicated services)."""
    down = {nv.id for nv in map(Node, nodes) if nv.down}
    running = sum(
        1 for t in tasks
        if t.get("ServiceID") == service["ID"] and task_state(t) == "running"
        and task_desired_order(t) <= RUNNING and str(t.get("NodeID")) not in down
    )
    return {"RunningTasks": running, "DesiredTasks": Service(service).replicas, "CompletedTasks": 0}

