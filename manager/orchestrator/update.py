"""Rolling updates (SK: manager/orchestrator/update/updater.go): out-of-date slots replaced
``Parallelism`` at a time, stop-first or start-first, with ``Delay``, ``Monitor``,
``MaxFailureRatio`` and ``FailureAction`` (pause | continue | rollback), and the service's
``UpdateStatus``. See :mod:`manager.orchestrator` for the whole model."""

from __future__ import annotations

import copy
from collections.abc import Callable

from manager.orchestrator.plan import (
    OLD_TASK_TIMEOUT,
    Obj,
    Plan,
    UpdateProgress,
    WriteBudget,
    new_task,
    packed_size,
)
from manager.orchestrator.restart import node_lost
from manager.specs import service_spec_with_defaults
from shoal.base.taskstate import RUNNING, STATE_ORDER, TERMINAL_STATES
from shoal.base.views import (
    Node,
    Service,
    endpoint_spec_key,
    task_desired_order,
    task_spec_version,
    task_state,
)

__all__ = ["Ctx", "rolling_update", "launch", "watch", "complete", "fail", "update_config", "set_update_status"]


def update_config(service: Obj, rollback: bool) -> Obj:
    """The service's ``UpdateConfig`` (or ``RollbackConfig`` when ``rollback``) with swarmkit's
    defaults (SWARM-FACTS 1.5): ``Parallelism`` (0 = all), ``Delay``/``Monitor`` (ns),
    ``FailureAction``, ``MaxFailureRatio``, ``Order``."""
    spec = service_spec_with_defaults(Service(service).spec)
    return dict(spec["RollbackConfig" if rollback else "UpdateConfig"])



def set_update_status(svc: Obj, plan: Plan, status: Obj) -> None:
    """Set ``svc["UpdateStatus"]`` and have ``plan`` write the service (once)."""
    svc["UpdateStatus"] = status
    if not any(s is svc for s in plan.services):
        plan.services.append(svc)


class Ctx:
    """What one reconcile pass shares with the rolling-update step."""

    def __init__(self, plan: Plan, now: float, ts_now: str, id_gen: Callable[[], str],
                 node_by_id: dict[str, Node], set_desired: Callable[[Obj, str], None],
                 budget: WriteBudget) -> None:
        self.plan, self.now, self.ts_now, self.id_gen = plan, now, ts_now, id_gen
        self.node_by_id, self.set_desired = node_by_id, set_desired
        self.budget = budget
        self.usable_nodes = {nid for nid, n in node_by_id.items() if not n.down and n.availability != "drain"}
        """IDs of the nodes that may run tasks: not down, not drained."""
        self.old_progress: dict[str, UpdateProgress] = {}
        """The rolling updates' progress from the previous pass (a copy: reconcilers may change it)."""
        self.service: Obj = {}
        self._task_size: int | None = None

    def start_service(self, svc: Obj) -> None:
        self.service, self._task_size = svc, None

    @property
    def task_size(self) -> int:
        """msgpack bytes of one task of the service being reconciled (computed when first needed)."""
        if self._task_size is None:
            self._task_size = packed_size(new_task(self.service, 1, self.ts_now, lambda: "x" * 25))
        return self._task_size


def launch(ctx: Ctx, svc: Obj, slot: int, occupied: dict[int, Obj], prog: UpdateProgress) -> None:
    """Create the new task of ``slot`` for the update (into ``ctx.plan.create`` and ``occupied``)
    and follow it in ``prog`` (in flight, monitored)."""
    nt = new_task(svc, slot, ctx.ts_now, ctx.id_gen)
    ctx.plan.create.append(nt)
    occupied[slot] = nt
    tid = str(nt["ID"])
    prog.in_flight[slot] = tid
    prog.monitored[tid] = None


def rolling_update(ctx: Ctx, sv: Service, template: Obj, prog: UpdateProgress | None,
                   slots: dict[int, list[Obj]], occupied: dict[int, Obj], replaced: set[int]) -> UpdateProgress | None:
    """One step of the rolling update of ``svc`` (SK: manager/orchestrator/update/updater.go).

    ``slots``: slot → the service's tasks in it; ``occupied``: slot → its current task.
    Mutates ``occupied`` (slots that got a new task) and ``ctx.plan``; returns the progress to
    keep (None = no update running)."""
    plan, now = ctx.plan, ctx.now
    svc = sv.raw
    status = sv.update_status
    ustate = status.get("State") if isinstance(status, dict) else None
    if ustate in ("paused", "rollback_paused"):
        return None  # stays paused until the next `service update` resets UpdateStatus
    rollback = ustate == "rollback_started"
    version = sv.version

    endpoint = endpoint_spec_key(sv.spec.get("EndpointSpec"))

    def out_of_date(t: Obj) -> bool:
        # a task made from the service at its current stored version has the current template
        # (the store gives every write a new index): skip the deep comparison for it
        if version is not None and task_spec_version(t) == version:
            return False
        if t.get("Spec") != template:
            return True
        # as swarmkit's IsTaskDirty: a task made with another endpoint spec (published ports,
        # endpoint mode) is out of date too; tasks without an Endpoint predate the copy
        ep = t.get("Endpoint")
        return isinstance(ep, dict) and endpoint_spec_key(ep.get("Spec")) != endpoint

    def dirty_slots(p: UpdateProgress | None) -> list[int]:
        busy = set() if p is None else set(p.stopping) | set(p.in_flight)
        return [s for s in sorted(occupied)
                if s not in busy and s not in replaced and out_of_date(occupied[s])]

    if prog is not None and (prog.target != template or prog.rollback != rollback or prog.endpoint != endpoint):
        prog = None  # superseded by a newer spec: start over toward it
    if prog is None:
        dirty = dirty_slots(None)
        if not dirty:
            if ustate in ("updating", "rollback_started"):
                complete(ctx, svc, rollback)
            return None
        prog = UpdateProgress(target=copy.deepcopy(template), rollback=rollback, total=len(dirty),
                              endpoint=copy.deepcopy(endpoint))
        if status is None or ustate in ("completed", "rollback_completed"):
            set_update_status(svc, plan, {"State": "updating", "StartedAt": ctx.ts_now,
                                           "Message": "update in progress"})
    by_id = {str(t["ID"]): t for ts in slots.values() for t in ts}
    cfg = update_config(svc, rollback)
    monitor = int(cfg.get("Monitor") or 0) / 1e9
    delay = int(cfg.get("Delay") or 0) / 1e9
    order = str(cfg.get("Order") or "stop-first")

    # 1. watch the tasks this update created
    if watch(ctx, sv, prog, by_id, cfg, rollback):
        return None

    # 2. stop-first slots whose old task stopped (or whose node is down): create the new task
    for slot, old_id in sorted(prog.stopping.items()):
        old = by_id.get(old_id)
        give_up_at = prog.stop_asked_at.get(slot, now) + OLD_TASK_TIMEOUT
        if old is None or task_state(old) in TERMINAL_STATES or not old.get("NodeID") \
                or node_lost(old, ctx.node_by_id) \
                or now >= give_up_at:
            if slot not in occupied and not ctx.budget.take(1, ctx.task_size):
                continue  # the next pass creates it
            del prog.stopping[slot]
            prog.stop_asked_at.pop(slot, None)
            if slot in occupied:  # something else (a restart) filled it meanwhile
                continue
            launch(ctx, svc, slot, occupied, prog)
        else:
            plan._wake(give_up_at)

    # 3. slots whose new task runs (or ended, or was replaced): start-first shuts the old
    #    task down now; the lane then waits `Delay` before taking the next slot
    fresh = {str(nt["ID"]) for nt in plan.create}
    for slot, new_tid in sorted(prog.in_flight.items()):
        if new_tid in fresh:
            continue  # created in this pass
        t = by_id.get(new_tid)
        st = task_state(t) if t is not None else "remove"
        if t is not None and STATE_ORDER.get(st, 0) < RUNNING and task_desired_order(t) <= RUNNING \
                and not node_lost(t, ctx.node_by_id):
            continue
        if st == "running" and not ctx.budget.take(len(prog.start_first_old.get(slot, [])), ctx.task_size):
            continue  # the old tasks are shut down in the next pass
        del prog.in_flight[slot]
        for old_id in prog.start_first_old.pop(slot, []):
            old = by_id.get(old_id)
            if old is not None and st == "running":
                ctx.set_desired(old, "shutdown")
        if delay > 0:
            prog.cooling[slot] = now + delay
    for slot, until in list(prog.cooling.items()):
        if now >= until:
            del prog.cooling[slot]
        else:
            plan._wake(until)

    # 4. hand out more out-of-date slots, Parallelism at a time (0 = all at once)
    dirty = dirty_slots(prog)
    parallelism = int(cfg.get("Parallelism") or 0)
    free = (parallelism - prog.busy()) if parallelism > 0 else len(dirty)
    for slot in dirty[:max(free, 0)]:
        old = occupied[slot]
        others = [t for t in slots.get(slot, []) if t is not old and task_desired_order(t) <= RUNNING]
        if not ctx.budget.take(2 + len(others), ctx.task_size):
            break  # the next pass hands out more
        if order == "start-first":
            launch(ctx, svc, slot, occupied, prog)
            prog.start_first_old[slot] = [str(old["ID"]), *(str(o["ID"]) for o in others)]
            continue
        ctx.set_desired(old, "shutdown")
        for o in others:
            ctx.set_desired(o, "shutdown")
        if task_state(old) in TERMINAL_STATES or not old.get("NodeID") or node_lost(old, ctx.node_by_id):
            launch(ctx, svc, slot, occupied, prog)  # nothing to wait for
        else:
            prog.stopping[slot] = str(old["ID"])
            prog.stop_asked_at[slot] = now
            plan._wake(now + OLD_TASK_TIMEOUT)
            del occupied[slot]  # reserved through prog.stopping until the old task stops

    # 5. done when no slot is out of date or busy, after one more Monitor window
    if dirty_slots(prog) or prog.busy():
        prog.idle_since = None
        return prog
    if prog.idle_since is None:
        prog.idle_since = now
    if now >= prog.idle_since + monitor:
        complete(ctx, svc, rollback)
        return None
    plan._wake(prog.idle_since + monitor)
    return prog


ENDED_ALONE = frozenset({"complete", "failed", "rejected"})
"""Terminal states a worker reports only for a task that ended by itself (one it was asked to
stop ends ``shutdown``): a failure of the update even when this pass's restart has already
given the task desired ``shutdown`` (a restart ``Delay`` of 0)."""


def watch(ctx: Ctx, sv: Service, prog: UpdateProgress, by_id: dict[str, Obj], cfg: Obj, rollback: bool) -> bool:
    """Watch the tasks the update created (``prog.monitored``; ``by_id``: the service's tasks by
    ID; ``cfg``: :func:`update_config`): running → the start of its ``Monitor`` window; ended (or
    gone) within the window without being asked to stop (:data:`ENDED_ALONE`) → a failure, and once the failures
    exceed ``MaxFailureRatio`` of ``prog.total`` the ``FailureAction`` (:func:`fail`) unless it
    is ``continue``. Returns True when the update was stopped (paused or rolled back)."""
    now = ctx.now
    monitor = int(cfg.get("Monitor") or 0) / 1e9
    action = str(cfg.get("FailureAction") or "pause")
    ratio = float(cfg.get("MaxFailureRatio") or 0)
    for tid, ran_at in list(prog.monitored.items()):
        t = by_id.get(tid)
        st = task_state(t) if t is not None else "remove"
        if st == "running" and ran_at is None:
            prog.monitored[tid] = now
        elif t is None or (st in TERMINAL_STATES and (task_desired_order(t) <= RUNNING or st in ENDED_ALONE)):
            del prog.monitored[tid]
            if ran_at is None or now - ran_at <= monitor:
                prog.failures.append(tid)
                if len(prog.failures) / max(prog.total, 1) > ratio and action != "continue":
                    fail(ctx, sv, rollback, action, tid)
                    return True
        elif ran_at is not None and now - ran_at > monitor:
            del prog.monitored[tid]  # survived its monitor window
    return False


def complete(ctx: Ctx, svc: Obj, rollback: bool) -> None:
    """Mark the update of ``svc`` completed (``completed`` or ``rollback_completed``)."""
    status = dict(Service(svc).update_status or {})
    status.update({"State": "rollback_completed" if rollback else "completed", "CompletedAt": ctx.ts_now,
                   "Message": "rollback completed" if rollback else "update completed"})
    status.setdefault("StartedAt", ctx.ts_now)
    set_update_status(svc, ctx.plan, status)


def fail(ctx: Ctx, sv: Service, rollback: bool, action: str, task_id: str) -> None:
    """FailureAction ``pause`` or ``rollback`` after ``task_id`` failed (SK: updater.go)."""
    svc = sv.raw
    status = dict(sv.update_status or {})
    status.setdefault("StartedAt", ctx.ts_now)
    if rollback:  # never roll back a rollback
        status.update({"State": "rollback_paused",
                       "Message": f"rollback paused due to failure or early termination of task {task_id}"})
    elif action == "rollback" and sv.previous_spec:
        status.update({"State": "rollback_started",
                       "Message": f"update rolled back due to failure or early termination of task {task_id}"})
        svc["Spec"] = svc["PreviousSpec"]
        svc.pop("PreviousSpec", None)
    else:
        msg = f"update paused due to failure or early termination of task {task_id}"
        if action == "rollback":
            msg += " (no previous spec to roll back to)"
        status.update({"State": "paused", "Message": msg})
    set_update_status(svc, ctx.plan, status)


