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
- A current task whose spec differs from the service's task template (a ``service update``
  that changed it) is replaced (stop-first), ``UpdateConfig.Parallelism`` slots at a time
  (default 1; 0 = all at once): the next slot starts when the replacements run. (``Delay``,
  ``FailureAction``, ``Monitor`` and ``start-first`` are not implemented yet.)
- Tasks of a removed service get desired ``remove``.
- Allocator step: ``new`` → ``pending`` (nothing to allocate before placement for the local
  bridge; overlay allocation will go here).

:func:`reconcile` is the pure core; :class:`Orchestrator` is the loop over the store.
"""

from __future__ import annotations

import logging
import time
from calendar import timegm
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from manager.specs import task_spec_with_defaults
from manager.store import Store, WriteTx
from shoal.taskstate import STATE_ORDER, TERMINAL_STATES
from shoal.util import new_id, now_rfc3339, wait_timeout

__all__ = ["Plan", "reconcile", "service_status", "parse_rfc3339", "Orchestrator", "task_name", "new_task"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_ORDER = STATE_ORDER
_ENDED = TERMINAL_STATES


def parse_rfc3339(ts: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 UTC timestamp such as
    ``2026-11-29T16:56:02.123456789Z``; 0.0 if missing or malformed."""
    if not ts:
        return 0.0
    try:
        main, _, rest = ts.partition(".")
        frac = rest.rstrip("Z")
        if not rest:
            main = main.rstrip("Z")
        secs = timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
        return secs + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return 0.0


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


@dataclass
class Plan:
    """What :func:`reconcile` decided: objects to create and to update (full objects), and
    the time (epoch s) at which to look again for delayed restarts (None = no timer)."""

    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    wake_at: float | None = None

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


def reconcile(services: Iterable[Obj], tasks: Iterable[Obj], nodes: Iterable[Obj], now: float,
              id_gen: Callable[[], str] = new_id) -> Plan:
    """Compute the store changes that move replicated services toward their specs.

    ``now`` is epoch seconds (timestamps written are ``now`` in RFC 3339). Pure apart from
    modifying the task dicts it is given (pass copies, as ``tx.list`` returns); ``id_gen``
    makes task IDs.
    """
    plan = Plan()
    ts_now = now_rfc3339(now)
    svc_by_id = {str(s["ID"]): s for s in services}
    node_by_id = {str(n["ID"]): n for n in nodes}
    by_service: dict[str, list[Obj]] = {}
    updated: dict[str, Obj] = {}

    def set_desired(t: Obj, desired: str) -> None:
        if _ORDER[desired] > _desired(t):
            t = updated.get(str(t["ID"]), t)
            t["DesiredState"] = desired
            updated[str(t["ID"])] = t

    for t in tasks:
        sid = str(t.get("ServiceID", ""))
        if sid not in svc_by_id:
            # service removed: every task of it goes away
            if _desired(t) < _ORDER["remove"]:
                set_desired(t, "remove")
            continue
        by_service.setdefault(sid, []).append(t)

    for sid, svc in svc_by_id.items():
        if "Replicated" not in ((svc.get("Spec") or {}).get("Mode") or {}):
            continue
        want = _replicas(svc)
        template = _comparable_spec(((svc.get("Spec") or {}).get("TaskTemplate")) or {})
        slots: dict[int, list[Obj]] = {}
        for t in by_service.get(sid, []):
            slots.setdefault(int(t.get("Slot") or 0), []).append(t)
        occupied: dict[int, Obj] = {}
        for slot, ts in slots.items():
            current = [t for t in ts if _desired(t) <= _ORDER["running"]]
            if not current:
                continue
            current.sort(key=lambda t: parse_rfc3339(t.get("CreatedAt")))
            for extra in current[:-1]:  # at most one current task per slot
                set_desired(extra, "shutdown")
            occupied[slot] = current[-1]

        # scale down: remove the highest slots
        if len(occupied) > want:
            for slot in sorted(occupied)[want:]:
                for t in slots[slot]:
                    set_desired(t, "remove")
                del occupied[slot]

        # rolling update budget (UpdateConfig.Parallelism, 0 = all at once): slots whose
        # up-to-date task replaced an older one and is not running yet are still updating
        parallelism = int((((svc.get("Spec") or {}).get("UpdateConfig")) or {}).get("Parallelism", 1) or 0)
        updating = sum(
            1 for slot, cur in occupied.items()
            if cur.get("Spec") == template and _state(cur) not in _ENDED
            and _ORDER.get(_state(cur), 0) < _ORDER["running"]
            and any(t is not cur and t.get("Spec") != template for t in slots.get(slot, []))
        )
        budget = parallelism - updating if parallelism > 0 else len(occupied)

        for slot, cur in sorted(occupied.items()):
            history = [t for t in slots[slot] if t is not cur]
            state = _state(cur)
            node = node_by_id.get(str(cur.get("NodeID") or "")) if cur.get("NodeID") else None
            replace = False
            if cur.get("NodeID") and state not in _ENDED:
                node_gone = node is None or ((node.get("Status") or {}).get("State") == "down")
                drained = node is not None and ((node.get("Spec") or {}).get("Availability") == "drain")
                if node_gone or drained:
                    replace = True
            if not replace and state in _ENDED:
                ok, delay = _should_restart(cur, history, now)
                if not ok:
                    continue
                ended = parse_rfc3339((cur.get("Status") or {}).get("Timestamp"))
                if now < ended + delay:
                    plan._wake(ended + delay)
                    continue
                replace = True
            if not replace and cur.get("Spec") != template:
                if budget <= 0:
                    continue  # wait for the slots being updated to run
                budget -= 1
                replace = True
            if replace:
                set_desired(cur, "shutdown")
                plan.create.append(new_task(svc, slot, ts_now, id_gen))

        # scale up: lowest free slot numbers
        missing = want - len(occupied)
        slot = 1
        while missing > 0:
            if slot not in occupied:
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
        if _state(t) == "new" and _desired(t) <= _ORDER["running"] and tid not in updated:
            t["Status"] = dict(pending_status)
            updated[tid] = t
    plan.update = list(updated.values())
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
    (``debounce`` s, default 0.02), and commits each :func:`reconcile` plan in one update.
    Wakes itself for delayed restarts. ``await run()`` until cancelled."""

    def __init__(self, store: Store, debounce: float = 0.02, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.debounce = debounce
        self.clock = clock
        self._wake_at: float | None = None
        self.passes = 0

    def _pass(self, tx: WriteTx) -> Plan:
        plan = reconcile(tx.list("services"), tx.list("tasks"), tx.list("nodes"), self.clock())
        for t in plan.create:
            tx.create("tasks", t)
        for t in plan.update:
            tx.update("tasks", t)
        return plan

    async def tick(self) -> Plan:
        """Run one reconcile pass now and commit it."""
        self.passes += 1
        plan = await self.store.update(self._pass)
        self._wake_at = plan.wake_at
        return plan

    async def run(self) -> None:
        """Watch and reconcile until cancelled."""
        watch = self.store.watch(["services", "tasks", "nodes"])
        try:
            await self._safe_tick()
            while True:
                timeout = None if self._wake_at is None else max(0.0, self._wake_at - self.clock()) + 0.01
                try:
                    await wait_timeout(watch.__anext__(), timeout)
                except TimeoutError:
                    pass
                while True:
                    try:
                        await wait_timeout(watch.__anext__(), self.debounce)
                    except TimeoutError:
                        break
                await self._safe_tick()
        except StopAsyncIteration:
            return
        finally:
            watch.close()

    async def _safe_tick(self) -> None:
        try:
            await self.tick()
        except Exception:
            log.exception("orchestrator pass failed; retrying in 1 s")
            self._wake_at = self.clock() + 1.0
