"""The replicated-service orchestrator: desired state vs actual tasks → store changes.

Follows swarmkit (SK: manager/orchestrator/replicated/*, restart/restart.go, allocator;
design/task_model.md; SWARM-FACTS 1.1, 1.5):

- A replicated service has slots 1..Replicas. Each slot has at most one *current* task
  (``DesiredState`` ≤ running); older tasks of the slot are history (desired ``shutdown``).
- Too few slots → new tasks (``Status.State = new``, ``DesiredState = running``) in the lowest
  free slots. Too many → the highest slots' tasks get desired ``remove``.
- A current task that ended (``complete``/``failed``/``rejected``, or ``shutdown`` nobody asked
  for) is replaced in the same slot if the restart policy says so (condition ``any`` |
  ``on-failure`` | ``none``; ``MaxAttempts`` within ``Window``), once ``Delay`` has passed since
  it ended; the old task gets desired ``shutdown``.
- A current task on a node that is ``down``, gone, or ``drain`` is replaced at once elsewhere;
  the old task gets desired ``shutdown``.
- Rolling updates (SK: manager/orchestrator/update/updater.go): when the task template (or
  ``ForceUpdate``) changes, out-of-date slots are replaced ``Parallelism`` at a time (0 = all
  at once). ``Order`` stop-first: the old task gets desired ``shutdown`` and its replacement is
  created only once it has stopped (or its node is down); start-first: the replacement is
  created first and the old task shut down once it runs. A lane waits ``Delay`` after its
  slot's new task runs before taking the next slot. A new task that ends within ``Monitor`` of
  running (or before running) is a failure; above ``MaxFailureRatio`` the ``FailureAction``
  applies: ``pause`` (``UpdateStatus.State = paused``), ``continue``, ``rollback`` (``Spec`` =
  ``PreviousSpec``, state ``rollback_started``, then rolled out with ``RollbackConfig``; a
  failing rollback pauses as ``rollback_paused``). ``UpdateStatus`` = ``{State, StartedAt,
  CompletedAt, Message}``: ``updating`` "update in progress" → ``completed`` "update
  completed" one ``Monitor`` after the last slot (``rollback_completed`` "rollback completed").
  A paused update stays paused until the next ``service update`` clears ``UpdateStatus``;
  a newer spec restarts the update toward it. Scale changes alone do not update. The
  progress of an update lives in memory (:class:`UpdateProgress`, as swarmkit's
  ``Updater``); after a manager restart it resumes from the store.
- Tasks of a removed service get desired ``remove``.
- Allocator step: ``new`` → ``pending`` (nothing to allocate before placement for the local
  bridge; overlay allocation will go here).
- Bounded passes (as swarmkit batches its store writes, SK: manager/state/store/batch.go,
  ``MaxChangesPerTransaction`` and ``MaxTransactionBytes``): a pass writes at most
  :data:`MAX_TASK_WRITES_PER_PASS` tasks and about :data:`manager.store.MAX_TRANSACTION_BYTES`
  bytes. Work that does not fit (a scale-up to thousands of slots, a service removal, a node
  loss) is left for the next pass (``Plan.more``), which the loop runs once the store is quiet
  again: the leader's event loop gets back control between batches, and every Raft entry stays
  small enough to replicate.

:func:`reconcile` is the pure core; :class:`Orchestrator` is the loop over the store.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from manager.loop import reconcile_loop
from manager.specs import service_spec_with_defaults, task_spec_with_defaults
from manager.store import MAX_TRANSACTION_BYTES, Store, WriteTx
from shoal.base.taskstate import STATE_ORDER, TERMINAL_STATES
from shoal.base.util import new_id, now_rfc3339, parse_rfc3339

__all__ = ["Plan", "UpdateProgress", "WriteBudget", "OLD_TASK_TIMEOUT", "MAX_TASK_WRITES_PER_PASS", "update_config",
           "reconcile", "service_status", "parse_rfc3339", "Orchestrator", "task_name", "new_task"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_ORDER = STATE_ORDER
_ENDED = TERMINAL_STATES


def task_name(service_name: str, slot: int, task_id: str) -> str:
    """Docker's task name: ``<service>.<slot>.<task id>``."""
    return f"{service_name}.{slot}.{task_id}"


def _state(t: Obj) -> str:
    return str((t.get("Status") or {}).get("State", "new"))


def _desired(t: Obj) -> int:
    return _ORDER.get(str(t.get("DesiredState", "running")), 0)


def _replicas(service: Obj) -> int:
    mode = (service.get("Spec") or {}).get("Mode") or {}
    rep = mode.get("Replicated")
    if rep is None:
        return 0
    return int(rep.get("Replicas", 1) or 0)


def new_task(service: Obj, slot: int, now: str, id_gen: Callable[[], str] = new_id) -> Obj:
    """A new task of ``service`` in ``slot`` (state ``new``, desired ``running``)."""
    tid = id_gen()
    spec = service.get("Spec") or {}
    return {
        "ID": tid,
        "Name": task_name(str(spec.get("Name", "")), slot, tid),
        "Labels": {},
        "Spec": task_spec_with_defaults(spec.get("TaskTemplate") or {}),
        "SpecVersion": {"Index": (service.get("Version") or {}).get("Index", 0)},
        "ServiceID": service["ID"],
        "Slot": slot,
        "NodeID": "",
        "Status": {"Timestamp": now, "State": "new", "Message": "created"},
        "DesiredState": "running",
        "NetworksAttachments": [],
    }


MAX_TASK_WRITES_PER_PASS = 200
"""Most tasks one orchestrator pass creates or updates (swarmkit's ``MaxChangesPerTransaction``
is 200 too). Measured in tests/bench/bench_orchestrator_batches.py (BENCHMARKS.md)."""


class WriteBudget:
    """How many task writes (``writes``) and about how many bytes (``nbytes``, msgpack size of
    the objects written) one :func:`reconcile` pass may still spend; None = unbounded.
    ``more`` is set once something was refused: the pass left work for the next one."""

    def __init__(self, writes: int | None = None, nbytes: int | None = None) -> None:
        self.writes, self.nbytes = writes, nbytes
        self.more = False
        self._spent = False

    def take(self, n: int, size: int) -> bool:
        """Spend ``n`` writes of about ``size`` bytes each, or refuse (False, ``more`` set).
        The first take of a pass is never refused for its size alone, so a pass always moves."""
        if n <= 0:
            return True
        if self.more:
            return False  # once something waits for the next pass, so does everything after it
        if (self.writes is not None and n > self.writes) or \
                (self.nbytes is not None and n * size > self.nbytes and self._spent):
            self.more = True
            return False
        if self.writes is not None:
            self.writes -= n
        if self.nbytes is not None:
            self.nbytes -= n * size
        self._spent = True
        return True


def _packed_size(obj: Obj) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


OLD_TASK_TIMEOUT = 60.0
"""Seconds a stop-first update waits for an old task to stop before creating its replacement
anyway (SK: manager/orchestrator/restart/restart.go ``defaultOldTaskTimeout`` = 1 min)."""


@dataclass
class UpdateProgress:
    """In-memory state of one service's rolling update (swarmkit keeps the same in its
    ``Updater``; after a manager restart an update resumes from what the store shows).

    ``target`` is the task spec (with defaults) the update moves slots to; ``rollback`` whether
    it runs with ``RollbackConfig``; ``total`` the number of out-of-date slots when it started
    (the denominator of ``MaxFailureRatio``). Per slot: ``stopping`` (stop-first: the old task ID
    being stopped before its replacement is created, at most ``OLD_TASK_TIMEOUT`` s after
    ``stop_asked_at``), ``in_flight`` (the new task ID, until it
    runs), ``start_first_old`` (start-first: old task IDs shut down once the new one runs),
    ``cooling`` (epoch s at which the slot's lane may take the next slot: ``Delay``).
    ``monitored``: new task ID → epoch s it was first seen running (None = not yet);
    ``failures``: task IDs counted as failed; ``idle_since``: when the last slot finished
    (completion comes ``Monitor`` later)."""

    target: Obj
    rollback: bool
    total: int
    stopping: dict[int, str] = field(default_factory=dict)
    stop_asked_at: dict[int, float] = field(default_factory=dict)
    in_flight: dict[int, str] = field(default_factory=dict)
    start_first_old: dict[int, list[str]] = field(default_factory=dict)
    cooling: dict[int, float] = field(default_factory=dict)
    monitored: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    idle_since: float | None = None

    def busy(self) -> int:
        """Lanes in use: slots stopping, in flight or cooling down."""
        return len(set(self.stopping) | set(self.in_flight) | set(self.cooling))

    def forget_slot(self, slot: int) -> None:
        """Drop every record of ``slot`` (scaled away)."""
        self.stopping.pop(slot, None)
        self.stop_asked_at.pop(slot, None)
        self.in_flight.pop(slot, None)
        self.start_first_old.pop(slot, None)
        self.cooling.pop(slot, None)


@dataclass
class Plan:
    """What :func:`reconcile` decided: tasks to create and to update and services to update
    (full objects), the time (epoch s) at which to look again (None = no timer), the
    rolling-update progress to carry into the next pass (service ID → :class:`UpdateProgress`),
    and whether work was left for the next pass (``more``)."""

    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    wake_at: float | None = None
    progress: dict[str, UpdateProgress] = field(default_factory=dict)
    more: bool = False
    """The pass hit its :class:`WriteBudget`: run another pass soon to go on."""

    def _wake(self, t: float) -> None:
        self.wake_at = t if self.wake_at is None else min(self.wake_at, t)


def _should_restart(task: Obj, history: list[Obj], now: float) -> tuple[bool, float]:
    """(restart?, seconds of delay) for an ended current task, per its restart policy."""
    rp = (task.get("Spec") or {}).get("RestartPolicy") or {}
    cond = rp.get("Condition") or "any"
    state = _state(task)
    if cond == "none":
        return False, 0.0
    if cond == "on-failure" and state == "complete":
        return False, 0.0
    max_attempts = int(rp.get("MaxAttempts") or 0)
    if max_attempts > 0:
        window = int(rp.get("Window") or 0) / 1e9
        restarts = [
            h for h in history
            if window <= 0 or now - parse_rfc3339((h.get("Status") or {}).get("Timestamp")) <= window
        ]
        # the current task is itself a run; history holds the earlier runs of the slot
        if len(restarts) >= max_attempts:
            return False, 0.0
    return True, int(rp.get("Delay", 5_000_000_000) or 0) / 1e9


def _comparable_spec(ts: Obj) -> Obj:
    return task_spec_with_defaults(ts)


def update_config(service: Obj, rollback: bool) -> Obj:
    """The service's ``UpdateConfig`` (or ``RollbackConfig`` when ``rollback``) with swarmkit's
    defaults (SWARM-FACTS 1.5): ``Parallelism`` (0 = all), ``Delay``/``Monitor`` (ns),
    ``FailureAction``, ``MaxFailureRatio``, ``Order``."""
    spec = service_spec_with_defaults(service.get("Spec") or {})
    return dict(spec["RollbackConfig" if rollback else "UpdateConfig"])


def _node_lost(task: Obj, node_by_id: dict[str, Obj]) -> bool:
    nid = str(task.get("NodeID") or "")
    if not nid:
        return False
    node = node_by_id.get(nid)
    return node is None or (node.get("Status") or {}).get("State") == "down"


def _set_update_status(svc: Obj, plan: Plan, status: Obj) -> None:
    svc["UpdateStatus"] = status
    if not any(s is svc for s in plan.services):
        plan.services.append(svc)


class _Ctx:
    """What one reconcile pass shares with the rolling-update step."""

    def __init__(self, plan: Plan, now: float, ts_now: str, id_gen: Callable[[], str],
                 node_by_id: dict[str, Obj], set_desired: Callable[[Obj, str], None],
                 budget: WriteBudget) -> None:
        self.plan, self.now, self.ts_now, self.id_gen = plan, now, ts_now, id_gen
        self.node_by_id, self.set_desired = node_by_id, set_desired
        self.budget = budget
        self.service: Obj = {}
        self._task_size: int | None = None

    def start_service(self, svc: Obj) -> None:
        self.service, self._task_size = svc, None

    @property
    def task_size(self) -> int:
        """msgpack bytes of one task of the service being reconciled (computed when first needed)."""
        if self._task_size is None:
            self._task_size = _packed_size(new_task(self.service, 1, self.ts_now, lambda: "x" * 25))
        return self._task_size


def _rolling_update(ctx: _Ctx, svc: Obj, template: Obj, prog: UpdateProgress | None,
                    slots: dict[int, list[Obj]], occupied: dict[int, Obj], replaced: set[int]) -> UpdateProgress | None:
    """One step of the rolling update of ``svc`` (SK: manager/orchestrator/update/updater.go).

    Mutates ``occupied`` (slots that got a new task) and ``ctx.plan``; returns the progress to
    keep (None = no update running)."""
    plan, now = ctx.plan, ctx.now
    status = svc.get("UpdateStatus") or None
    ustate = status.get("State") if isinstance(status, dict) else None
    if ustate in ("paused", "rollback_paused"):
        return None  # stays paused until the next `service update` resets UpdateStatus
    rollback = ustate == "rollback_started"
    version = (svc.get("Version") or {}).get("Index")

    def out_of_date(t: Obj) -> bool:
        # a task made from the service at its current stored version has the current template
        # (the store gives every write a new index): skip the deep comparison for it
        if version is not None and (t.get("SpecVersion") or {}).get("Index") == version:
            return False
        return t.get("Spec") != template

    def dirty_slots(p: UpdateProgress | None) -> list[int]:
        busy = set() if p is None else set(p.stopping) | set(p.in_flight)
        return [s for s in sorted(occupied)
                if s not in busy and s not in replaced and out_of_date(occupied[s])]

    if prog is not None and (prog.target != template or prog.rollback != rollback):
        prog = None  # superseded by a newer spec: start over toward it
    if prog is None:
        dirty = dirty_slots(None)
        if not dirty:
            if ustate in ("updating", "rollback_started"):
                _complete(ctx, svc, rollback)
            return None
        prog = UpdateProgress(target=copy.deepcopy(template), rollback=rollback, total=len(dirty))
        if status is None or ustate in ("completed", "rollback_completed"):
            _set_update_status(svc, plan, {"State": "updating", "StartedAt": ctx.ts_now,
                                           "Message": "update in progress"})
    by_id = {str(t["ID"]): t for ts in slots.values() for t in ts}
    cfg = update_config(svc, rollback)
    monitor = int(cfg.get("Monitor") or 0) / 1e9
    delay = int(cfg.get("Delay") or 0) / 1e9
    action = str(cfg.get("FailureAction") or "pause")
    ratio = float(cfg.get("MaxFailureRatio") or 0)
    order = str(cfg.get("Order") or "stop-first")

    # 1. watch the tasks this update created: running → start of the monitor window;
    #    ended (or gone) within the window without being asked to stop → a failure
    for tid, ran_at in list(prog.monitored.items()):
        t = by_id.get(tid)
        st = _state(t) if t is not None else "remove"
        if st == "running" and ran_at is None:
            prog.monitored[tid] = now
        elif t is None or (st in _ENDED and _desired(t) <= _ORDER["running"]):
            del prog.monitored[tid]
            if ran_at is None or now - ran_at <= monitor:
                prog.failures.append(tid)
                if len(prog.failures) / max(prog.total, 1) > ratio and action != "continue":
                    _fail(ctx, svc, rollback, action, tid)
                    return None
        elif ran_at is not None and now - ran_at > monitor:
            del prog.monitored[tid]  # survived its monitor window

    # 2. stop-first slots whose old task stopped (or whose node is down): create the new task
    for slot, old_id in sorted(prog.stopping.items()):
        old = by_id.get(old_id)
        give_up_at = prog.stop_asked_at.get(slot, now) + OLD_TASK_TIMEOUT
        if old is None or _state(old) in _ENDED or not old.get("NodeID") or _node_lost(old, ctx.node_by_id) \
                or now >= give_up_at:
            if slot not in occupied and not ctx.budget.take(1, ctx.task_size):
                continue  # the next pass creates it
            del prog.stopping[slot]
            prog.stop_asked_at.pop(slot, None)
            if slot in occupied:  # something else (a restart) filled it meanwhile
                continue
            t = new_task(svc, slot, ctx.ts_now, ctx.id_gen)
            plan.create.append(t)
            occupied[slot] = t
            prog.in_flight[slot] = str(t["ID"])
            prog.monitored[str(t["ID"])] = None
        else:
            plan._wake(give_up_at)

    # 3. slots whose new task runs (or ended, or was replaced): start-first shuts the old
    #    task down now; the lane then waits `Delay` before taking the next slot
    fresh = {str(t["ID"]) for t in plan.create}
    for slot, new_tid in sorted(prog.in_flight.items()):
        if new_tid in fresh:
            continue  # created in this pass
        t = by_id.get(new_tid)
        st = _state(t) if t is not None else "remove"
        if t is not None and _ORDER.get(st, 0) < _ORDER["running"] and _desired(t) <= _ORDER["running"] \
                and not _node_lost(t, ctx.node_by_id):
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
        others = [t for t in slots.get(slot, []) if t is not old and _desired(t) <= _ORDER["running"]]
        if not ctx.budget.take(2 + len(others), ctx.task_size):
            break  # the next pass hands out more
        if order == "start-first":
            t = new_task(svc, slot, ctx.ts_now, ctx.id_gen)
            plan.create.append(t)
            occupied[slot] = t
            prog.in_flight[slot] = str(t["ID"])
            prog.start_first_old[slot] = [str(old["ID"]), *(str(o["ID"]) for o in others)]
            prog.monitored[str(t["ID"])] = None
            continue
        ctx.set_desired(old, "shutdown")
        for o in others:
            ctx.set_desired(o, "shutdown")
        if _state(old) in _ENDED or not old.get("NodeID") or _node_lost(old, ctx.node_by_id):
            t = new_task(svc, slot, ctx.ts_now, ctx.id_gen)  # nothing to wait for
            plan.create.append(t)
            occupied[slot] = t
            prog.in_flight[slot] = str(t["ID"])
            prog.monitored[str(t["ID"])] = None
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
        _complete(ctx, svc, rollback)
        return None
    plan._wake(prog.idle_since + monitor)
    return prog


def _complete(ctx: _Ctx, svc: Obj, rollback: bool) -> None:
    status = dict(svc.get("UpdateStatus") or {})
    status.update({"State": "rollback_completed" if rollback else "completed", "CompletedAt": ctx.ts_now,
                   "Message": "rollback completed" if rollback else "update completed"})
    status.setdefault("StartedAt", ctx.ts_now)
    _set_update_status(svc, ctx.plan, status)


def _fail(ctx: _Ctx, svc: Obj, rollback: bool, action: str, task_id: str) -> None:
    """FailureAction ``pause`` or ``rollback`` after ``task_id`` failed (SK: updater.go)."""
    status = dict(svc.get("UpdateStatus") or {})
    status.setdefault("StartedAt", ctx.ts_now)
    if rollback:  # never roll back a rollback
        status.update({"State": "rollback_paused",
                       "Message": f"rollback paused due to failure or early termination of task {task_id}"})
    elif action == "rollback" and svc.get("PreviousSpec"):
        status.update({"State": "rollback_started",
                       "Message": f"update rolled back due to failure or early termination of task {task_id}"})
        svc["Spec"] = svc["PreviousSpec"]
        svc.pop("PreviousSpec", None)
    else:
        msg = f"update paused due to failure or early termination of task {task_id}"
        if action == "rollback":
            msg += " (no previous spec to roll back to)"
        status.update({"State": "paused", "Message": msg})
    _set_update_status(svc, ctx.plan, status)


def reconcile(services: Iterable[Obj], tasks: Iterable[Obj], nodes: Iterable[Obj], now: float,
              id_gen: Callable[[], str] = new_id,
              progress: dict[str, UpdateProgress] | None = None,
              budget: WriteBudget | None = None) -> Plan:
    """Compute the store changes that move replicated services toward their specs.

    ``now`` is epoch seconds (timestamps written are ``now`` in RFC 3339). Deterministic given
    its inputs: ``id_gen`` makes task IDs, ``progress`` is the rolling-update state returned
    by the previous pass as ``Plan.progress`` (not modified; None = none). ``budget`` bounds
    the task writes of the pass (None = unbounded); what does not fit is left for the next pass
    (``Plan.more``), each unit (a slot's replacement, a slot scaled away, a new slot) whole.
    Sets keys of the task and service dicts it is given but never changes a value inside them
    (pass copies, at least of the top level, as ``tx.list_shallow`` returns).
    """
    budget = budget if budget is not None else WriteBudget()
    plan = Plan()
    ts_now = now_rfc3339(now)
    svc_by_id = {str(s["ID"]): s for s in services}
    node_by_id = {str(n["ID"]): n for n in nodes}
    by_service: dict[str, list[Obj]] = {}
    updated: dict[str, Obj] = {}
    old_progress = copy.deepcopy(progress or {})

    def set_desired(t: Obj, desired: str) -> None:
        if _ORDER[desired] > _desired(t):
            t = updated.get(str(t["ID"]), t)
            t["DesiredState"] = desired
            updated[str(t["ID"])] = t

    ctx = _Ctx(plan, now, ts_now, id_gen, node_by_id, set_desired, budget)

    for t in tasks:
        sid = str(t.get("ServiceID", ""))
        if sid not in svc_by_id:
            # service removed: every task of it goes away
            if _desired(t) < _ORDER["remove"] and budget.take(1, _packed_size(t)):
                set_desired(t, "remove")
            continue
        by_service.setdefault(sid, []).append(t)

    for sid, svc in svc_by_id.items():
        if "Replicated" not in ((svc.get("Spec") or {}).get("Mode") or {}):
            continue
        want = _replicas(svc)
        template = _comparable_spec(((svc.get("Spec") or {}).get("TaskTemplate")) or {})
        ctx.start_service(svc)
        prog = old_progress.get(sid)
        if prog is not None and prog.target != template:
            prog = None
        slots: dict[int, list[Obj]] = {}
        for t in by_service.get(sid, []):
            slots.setdefault(int(t.get("Slot") or 0), []).append(t)
        keep_old = {i for ids in (prog.start_first_old.values() if prog else []) for i in ids}
        occupied: dict[int, Obj] = {}
        running_order = _ORDER["running"]
        for slot, ts in slots.items():
            if len(ts) == 1:  # the common case, kept cheap: a pass looks at every slot
                if _desired(ts[0]) <= running_order:
                    occupied[slot] = ts[0]
                continue
            current = [t for t in ts if _desired(t) <= running_order]
            if not current:
                continue
            if len(current) > 1:
                current.sort(key=lambda t: parse_rfc3339(t.get("CreatedAt")))
            live = [t for t in current if _state(t) not in _ENDED]
            keep = (live or current)[-1]
            for extra in current:  # at most one current task per slot (start-first: two for a while)
                if extra is not keep and str(extra["ID"]) not in keep_old and budget.take(1, ctx.task_size):
                    set_desired(extra, "shutdown")
            occupied[slot] = keep

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
                    prog.forget_slot(slot)
            if len(set(occupied) | reserved) > want:
                # the rest of the scale-down is for the next pass; nothing else of this service now
                if prog is not None:
                    plan.progress[sid] = prog
                continue

        replaced: set[int] = set()
        for slot in sorted(occupied):  # (sorting the keys alone: much cheaper than the items)
            cur = occupied[slot]
            state = _state(cur)
            node_id = cur.get("NodeID")
            replace = False
            if node_id and state not in _ENDED:
                node = node_by_id.get(str(node_id))
                node_gone = node is None or ((node.get("Status") or {}).get("State") == "down")
                drained = node is not None and ((node.get("Spec") or {}).get("Availability") == "drain")
                if node_gone or drained:
                    replace = True
            if not replace and state in _ENDED:
                history = [t for t in slots[slot] if t is not cur]
                ok, delay = _should_restart(cur, history, now)
                if not ok:
                    continue
                ended = parse_rfc3339((cur.get("Status") or {}).get("Timestamp"))
                if now < ended + delay:
                    plan._wake(ended + delay)
                    continue
                replace = True
            if replace:
                if not budget.take(2, ctx.task_size):
                    continue  # replaced in the next pass
                set_desired(cur, "shutdown")
                t = new_task(svc, slot, ts_now, id_gen)
                plan.create.append(t)
                occupied[slot] = t
                replaced.add(slot)

        # rolling update of out-of-date slots (task template or ForceUpdate changed)
        new_prog = _rolling_update(ctx, svc, template, prog, slots, occupied, replaced)
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

    # allocator: new -> pending (nothing to allocate for the local bridge before placement)
    pending_status = {"Timestamp": ts_now, "State": "pending", "Message": "pending task scheduling"}
    for t in plan.create:
        t["Status"] = dict(pending_status)
    for t in tasks_list(by_service):
        tid = str(t["ID"])
        if _state(t) == "new" and _desired(t) <= _ORDER["running"] and tid not in updated \
                and budget.take(1, _packed_size(t)):
            t["Status"] = dict(pending_status)
            updated[tid] = t
    plan.update = list(updated.values())
    plan.more = budget.more
    return plan


def tasks_list(by_service: dict[str, list[Obj]]) -> list[Obj]:
    """Flatten tasks grouped by service."""
    return [t for ts in by_service.values() for t in ts]


def service_status(service: Obj, tasks: Iterable[Obj], nodes: Iterable[Obj]) -> Obj:
    """``ServiceStatus`` for the API: ``RunningTasks`` (state running on a node that is not
    down), ``DesiredTasks`` (Replicas), ``CompletedTasks`` (0 for replicated services)."""
    down = {str(n["ID"]) for n in nodes if (n.get("Status") or {}).get("State") == "down"}
    running = sum(
        1 for t in tasks
        if t.get("ServiceID") == service["ID"] and _state(t) == "running"
        and _desired(t) <= _ORDER["running"] and str(t.get("NodeID")) not in down
    )
    return {"RunningTasks": running, "DesiredTasks": _replicas(service), "CompletedTasks": 0}


class Orchestrator:
    """The orchestration loop over ``store``: watches services, tasks and nodes, debounces
    (``debounce`` s, default 0.02), and commits each :func:`reconcile` plan in one update of at
    most ``max_writes`` tasks (:data:`MAX_TASK_WRITES_PER_PASS`) and about
    :data:`manager.store.MAX_TRANSACTION_BYTES`; when a pass leaves work (``Plan.more``) the next
    one follows as soon as the store is quiet for ``debounce``. Wakes itself for delayed
    restarts, update delays and monitor windows; keeps the rolling update progress between
    passes (``progress``). ``clock`` gives epoch seconds (injected in tests). ``await run()``
    until cancelled."""

    def __init__(self, store: Store, debounce: float = 0.02, clock: Callable[[], float] = time.time,
                 max_writes: int = MAX_TASK_WRITES_PER_PASS) -> None:
        self.store = store
        self.debounce = debounce
        self.clock = clock
        self.max_writes = max_writes
        self._wake_at: float | None = None
        self.progress: dict[str, UpdateProgress] = {}
        self.passes = 0

    def _pass(self, tx: WriteTx) -> Plan:
        # headroom under the transaction limit for the service objects a pass may also write
        budget = WriteBudget(self.max_writes, MAX_TRANSACTION_BYTES * 3 // 4)
        plan = reconcile(tx.list_shallow("services"), tx.list_shallow("tasks"), tx.list_shallow("nodes"),
                         self.clock(), progress=self.progress, budget=budget)
        for t in plan.create:
            tx.create("tasks", t)
        for t in plan.update:
            tx.update("tasks", t)
        for s in plan.services:
            tx.update("services", s)
        return plan

    async def tick(self) -> Plan:
        """Run one reconcile pass now and commit it; the new update progress is kept only
        once the pass is committed."""
        self.passes += 1
        plan = await self.store.update(self._pass)
        self._wake_at = self.clock() if plan.more else plan.wake_at
        self.progress = plan.progress
        return plan

    async def run(self) -> None:
        """Watch and reconcile until cancelled (see :func:`manager.loop.reconcile_loop`); a failed
        pass is retried after 1 s, and a pass that has a timer due (restart delay, update delay,
        monitor window) wakes the loop when it falls due."""

        async def tick() -> None:
            try:
                await self.tick()
            except Exception:
                self._wake_at = self.clock() + 1.0
                raise

        def wake_in() -> float | None:
            return None if self._wake_at is None else max(0.0, self._wake_at - self.clock()) + 0.01

        await reconcile_loop(self.store, ["services", "tasks", "nodes"], tick, self.debounce, log,
                             "orchestrator", wake_in)
